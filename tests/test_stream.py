"""Streaming fetch: per-category caps (first N, seeded sample), shards, early stop, local files in chunks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from peftlab.core.errors import PeftlabError
from peftlab.core.io import stable_hash
from peftlab.data.stream import BottomK, fetch_streaming

LABELS = ["negative", "positive"]


def reviews(n: int, cats: list[str], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    stars = rng.integers(1, 6, n)
    return pd.DataFrame({"body": [f"review {i} with {s} stars" for i, s in enumerate(stars)],
                         "stars": stars.astype(float), "cat": rng.choice(cats, n)})


def entry(path: Path, **kw) -> dict:
    return {"name": "toy", "source": f"local:{path}", "text_column": "body", "label_column": "stars",
            "rating_column": "stars", "category_column": "cat", "labels": LABELS, "streaming": True,
            "label_map": {"1-2": "negative", "3": None, "4-5": "positive"}, **kw}


def read_out(out: Path) -> tuple[pd.DataFrame, dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    return pd.concat([pd.read_parquet(out / s) for s in manifest["shards"]], ignore_index=True), manifest


def test_first_n_per_category_keeps_source_order(tmp_path):
    src = reviews(3000, ["a", "b", "c"])
    src.to_parquet(tmp_path / "src.parquet", row_group_size=100)
    manifest = fetch_streaming(entry(tmp_path / "src.parquet", per_category=200), 0, None, tmp_path / "out",
                               batch_rows=128, shard_rows=250)
    df, on_disk = read_out(tmp_path / "out")
    assert manifest == on_disk and manifest["shards"] == ["data-00000.parquet"]   # DuckDB: a file per config
    assert manifest["category_counts"] == {"a": 200, "b": 200, "c": 200}
    mapped = src[src["stars"] != 3]
    for c in "abc":
        assert list(df.loc[df["category"] == c, "text"]) == list(mapped.loc[mapped["cat"] == c, "body"][:200])
    c = manifest["counts"]
    assert c["source_rows"] == 3000 and c["rows"] == 600
    assert c["capped_rows"] == 3000 - c["dropped_label_map_null"] - 600


def test_seeded_sample_is_uniform_bounded_and_independent_of_order_and_batching(tmp_path):
    src = reviews(4000, ["a", "b"], seed=1)
    kept = {}
    # the same source (ids hash the source spec and the text), read in order and shuffled, in different batches
    for name, rows, batch, threads in [("ordered", src, 64, 1), ("shuffled", src.sample(frac=1.0, random_state=7),
                                                                   1000, 2)]:
        rows.to_parquet(tmp_path / "src.parquet", row_group_size=batch)
        fetch_streaming(entry(tmp_path / "src.parquet", per_category=300, sample="reservoir"), 42, None,
                        tmp_path / f"out-{name}", batch_rows=batch, threads=threads)
        df, manifest = read_out(tmp_path / f"out-{name}")
        assert manifest["category_counts"] == {"a": 300, "b": 300}
        kept[name] = set(df["text"])
    assert kept["ordered"] == kept["shuffled"]
    fetch_streaming(entry(tmp_path / "src.parquet", per_category=300, sample="reservoir"), 43, None,
                    tmp_path / "out-43")
    assert set(read_out(tmp_path / "out-43")[0]["text"]) != kept["ordered"]        # the seed matters
    # uniform: kept rows come from the whole source, not its start
    pos = src.reset_index().set_index("body").loc[sorted(kept["ordered"]), "index"]
    assert pos.min() < 400 and pos.max() > 3600 and abs(pos.mean() - 2000) < 250


def test_bottom_k_holds_at_most_twice_the_cap(tmp_path):
    rng = np.random.default_rng(0)
    s = BottomK(50)
    for _ in range(100):
        u = rng.random(1000)
        s.offer(np.array(["x"] * 1000, dtype=object), u)
        assert len(s.kept["x"]) < 100
    assert s.thresholds()["x"] < 0.001    # the 50 smallest of 100,000 uniforms


def test_max_samples_without_categories_caps_the_whole_source(tmp_path):
    src = reviews(1000, ["a"])
    src.drop(columns="cat").to_json(tmp_path / "src.jsonl", orient="records", lines=True)
    e = entry(tmp_path / "src.jsonl")
    del e["category_column"]
    m = fetch_streaming(e, 0, 120, tmp_path / "out", batch_rows=50)
    assert m["counts"]["rows"] == 120 and m["counts"]["source_rows"] == 1000     # counts cover the whole source
    mapped = src[src["stars"] != 3]
    assert list(read_out(tmp_path / "out")[0]["text"]) == list(mapped["body"][:120])   # the first 120, in order
    m = fetch_streaming({**e, "sample": "reservoir"}, 0, 120, tmp_path / "out2", batch_rows=50)
    assert m["counts"]["rows"] == 120 and m["counts"]["source_rows"] == 1000


def test_a_source_that_maps_to_nothing_leaves_no_output(tmp_path):
    src = reviews(200, ["a"])
    src["stars"] = 3.0
    src.to_parquet(tmp_path / "src.parquet")
    with pytest.raises(PeftlabError, match="'toy' is empty after filtering"):
        fetch_streaming(entry(tmp_path / "src.parquet", per_category=10), 0, None, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_bad_cap_and_sample_mode_are_clear_errors(tmp_path):
    reviews(10, ["a"]).to_parquet(tmp_path / "src.parquet")
    with pytest.raises(PeftlabError, match="data.per_category = 0 is invalid; allowed: an integer >= 1"):
        fetch_streaming(entry(tmp_path / "src.parquet", per_category=0), 0, None, tmp_path / "out")
    with pytest.raises(PeftlabError, match="data.sample = 'random' is invalid; allowed: first | reservoir"):
        fetch_streaming(entry(tmp_path / "src.parquet", sample="random"), 0, None, tmp_path / "out")


def test_streamed_pickle_is_refused(tmp_path):
    reviews(10, ["a"]).to_pickle(tmp_path / "src.pkl")
    with pytest.raises(PeftlabError, match="pickle"):
        fetch_streaming(entry(tmp_path / "src.pkl"), 0, None, tmp_path / "out")


def test_params_reject_a_bad_sample_mode_in_params_yaml():
    from peftlab.config.params import DataParams, build

    with pytest.raises(PeftlabError, match="data.sample = 'all' is invalid; allowed: "):
        build(DataParams, {"sample": "all"}, "data")
    with pytest.raises(PeftlabError, match="data.per_category = 0 is invalid"):
        build(DataParams, {"per_category": 0}, "data")


def test_hub_layout_folder_of_jsonl_streams_too(tmp_path):
    """Hub repos also hold csv/jsonl; the parquet-only scan option must not get in their way."""
    (tmp_path / "hub" / "data").mkdir(parents=True)
    reviews(300, ["a", "b"]).to_json(tmp_path / "hub" / "data" / "train-00000-of-00001.jsonl", orient="records",
                                     lines=True)
    m = fetch_streaming(entry(tmp_path / "hub", per_category=40), 0, None, tmp_path / "out", batch_rows=64)
    assert m["category_counts"] == {"a": 40, "b": 40}


def hub_folder(root: Path, src: pd.DataFrame, fmt: str) -> Path:
    """A Hub-layout folder: README configs, one config per category, each in two files."""
    readme = ["---", "configs:"]
    for c in sorted(src["cat"].unique()):
        (root / f"cfg_{c}").mkdir(parents=True)
        part = src[src["cat"] == c].drop(columns="cat").reset_index(drop=True)
        for i, half in enumerate(np.array_split(np.arange(len(part)), 2)):
            f = root / f"cfg_{c}" / f"full-{i:05d}-of-00002.{fmt}"
            if fmt == "parquet":
                part.iloc[half].to_parquet(f, index=False)
            else:
                part.iloc[half].to_json(f, orient="records", lines=True)
        readme += [f"- config_name: cfg_{c}", "  data_files:", "  - split: full", f"    path: cfg_{c}/full-*"]
    (root / "README.md").write_text("\n".join(readme + ["---", ""]))
    return root


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
@pytest.mark.parametrize("sample", ["first", "reservoir"])
def test_duckdb_scan_of_a_hub_layout_folder_matches_the_datasets_path(tmp_path, fmt, sample):
    """local:<folder> is scanned by DuckDB, hf:<folder> read by `datasets` in batches: the same rows (ids hash
    the source spec, so only they differ), and `first` keeps the source order."""
    src = reviews(3000, ["a", "b", "c"], seed=3)
    folder = hub_folder(tmp_path / "hub", src, fmt)
    e = {k: v for k, v in entry(folder).items() if k != "category_column"}
    e.update(configs=["cfg_a", "cfg_b", "cfg_c"], config_prefix="cfg_", split="full", per_category=150,
             sample=sample)
    scanned = fetch_streaming(e, 7, None, tmp_path / "scan")
    assert scanned["shards"] == ["data-00000.parquet", "data-00001.parquet", "data-00002.parquet"]
    batched = fetch_streaming({**e, "source": f"hf:{folder}"}, 7, None, tmp_path / "batch", batch_rows=64)
    a, b = read_out(tmp_path / "scan")[0], read_out(tmp_path / "batch")[0]
    assert "DuckDB" not in json.dumps(batched) and scanned["category_counts"] == {"a": 150, "b": 150, "c": 150}
    assert list(a.columns) == list(b.columns) == ["id", "text", "label", "label_text", "rating", "category"]
    key = ["category", "text"]
    if sample == "first":
        assert a[key + ["label", "label_text", "rating"]].equals(b[key + ["label", "label_text", "rating"]])
    else:   # the sample key differs (md5 in DuckDB, blake2b of the id in batches): same size, both seeded
        assert len(a) == len(b) and a["category"].value_counts().equals(b["category"].value_counts())
    assert scanned["label_counts"] == {"negative": int((a["label"] == 0).sum()), "positive": int(a["label"].sum())}
    assert a["id"].tolist() == [stable_hash(f"local:{folder}", t) for t in a["text"]]


def test_duckdb_scan_maps_templates_drop_values_and_refuses_unknown_labels(tmp_path):
    src = reviews(400, ["a", "b"], seed=4).assign(title=lambda d: [f"t{i}" for i in range(len(d))])
    src.to_parquet(tmp_path / "src.parquet")
    e = entry(tmp_path / "src.parquet", per_category=1000, text_template="{title}: {body}", drop_values={"cat": ["b"]})
    m = fetch_streaming(e, 0, None, tmp_path / "out")
    df = read_out(tmp_path / "out")[0]
    keep = src[(src["cat"] != "b") & (src["stars"] != 3)]
    assert list(df["text"]) == [f"{t}: {b}" for t, b in zip(keep["title"], keep["body"])]
    assert m["counts"]["dropped_cat_values"] == int((src["cat"] == "b").sum())
    with pytest.raises(PeftlabError, match="value '3' of column 'stars' has no entry in data.label_map"):
        fetch_streaming({**e, "label_map": {"1-2": "negative", "4-5": "positive"}}, 0, None, tmp_path / "out2")
    assert not (tmp_path / "out2").exists() and not list(tmp_path.glob(".duckdb-spill-*"))
