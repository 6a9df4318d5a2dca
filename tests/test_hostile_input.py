"""Hostile input through the real fetch and split stages (subprocesses, as DVC runs them).

Each case is either cleaned, with a count in data/raw/manifest.json or metrics/split.json, or refused with one
`error:` line that names the bad value and what is allowed, exit status 2, and the previous outputs untouched.
"""
from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pandas as pd
import pytest
import yaml
import zstandard

from conftest import REPO, toy_frame
from tinyproject import file_hashes

DATA = {"name": "toy", "source": "local:inputs/reviews.csv", "text_column": "review", "label_column": "sentiment",
        "label_map": {"neg": "negative", "pos": "positive"}, "labels": ["negative", "positive"]}


def good_rows(n: int = 120) -> pd.DataFrame:
    df = toy_frame(n, seed=5)
    return pd.DataFrame({"review_id": range(n), "review": df["text"],
                         "sentiment": df["label"].map({0: "neg", 1: "pos"})})


def project(root: Path, source: bytes, name: str = "reviews.csv", **data) -> Path:
    """A scratch project: catalog.yaml, params.yaml naming inputs/<name>, and that file's bytes."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "catalog.yaml", root / "catalog.yaml")
    (root / "inputs").mkdir(exist_ok=True)
    (root / "inputs" / name).write_bytes(source)
    params = {"seed": 1, "data": {**DATA, "source": f"local:inputs/{name}", **data},
              "split": {"val": 0.15, "test": 0.15, "min_words": 1, "max_words": 512}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def stage(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO / "stages" / args[0]), *args[1:]], cwd=root, env=env,
                          capture_output=True, text=True)


def fetch_and_split(root: Path) -> tuple[dict, dict]:
    """Both stages, which must succeed; the fetch counts (manifest) and the split counts (metrics)."""
    for args in (("fetch.py", "data"), ("split.py",)):
        proc = stage(root, *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((root / "data" / "raw" / "manifest.json").read_text())
    return manifest["counts"], json.loads((root / "metrics" / "split.json").read_text())["counts"]


def csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode("utf-8")


def split_texts(root: Path) -> list[str]:
    return [t for s in ("train", "val", "test")
            for t in pd.read_parquet(root / "data" / "splits" / f"{s}.parquet")["text"]]


# --- cleaned, with a count --------------------------------------------------------------------------------

def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    body = csv_bytes(good_rows()) + (b"900,a very good \xff\xfe film,pos\n901,bad \xc3( movie,neg\n"
                                     b"902,fine \x80 plot,pos\n")
    fetched, _ = fetch_and_split(project(tmp_path, body))
    assert fetched["replaced_invalid_bytes"] == 3 and fetched["rows"] == 123
    assert sum("\ufffd" in t for t in split_texts(tmp_path)) == 3


def test_nul_and_control_bytes_are_removed_and_counted(tmp_path):
    body = csv_bytes(good_rows()) + b"900,a good\x00 film\x00,pos\n901,dull \x07\x1b movie,neg\n"
    fetched, split = fetch_and_split(project(tmp_path, body))
    assert fetched["rows"] == 122 and split["cleaned_control_chars"] == 2
    texts = split_texts(tmp_path)
    assert "a good film" in texts and not any("\x00" in t or "\x1b" in t for t in texts)


def test_a_one_megabyte_review_is_dropped_by_the_length_filter(tmp_path):
    rows = pd.concat([good_rows(), pd.DataFrame({"review_id": [900], "review": ["good " * 200_000 + "film"],
                                                 "sentiment": ["pos"]})])
    body = csv_bytes(rows)
    assert len(body) > 1_000_000
    fetched, split = fetch_and_split(project(tmp_path, body))
    assert fetched["rows"] == 121 and split["dropped_too_long"] == 1
    assert max(len(t) for t in split_texts(tmp_path)) < 200


def test_empty_and_whitespace_only_texts_are_dropped_and_counted(tmp_path):
    extra = pd.DataFrame({"review_id": [900, 901, 902, 903], "review": [None, "", "   ", "\t \n  "],
                          "sentiment": ["pos", "neg", "pos", "neg"]})
    fetched, split = fetch_and_split(project(tmp_path, csv_bytes(pd.concat([good_rows(), extra]))))
    assert fetched["dropped_missing_text"] == 2        # None and "" are both empty fields in a csv
    assert split["dropped_empty_text"] == 2            # whitespace only: nothing left after cleaning
    assert split["kept_rows"] == 120


def test_nan_and_missing_labels_are_dropped_and_counted(tmp_path):
    rows = good_rows()
    lines = [json.dumps({"review": r, "sentiment": s}) for r, s in zip(rows["review"], rows["sentiment"])]
    lines += ['{"review": "good film", "sentiment": null}', '{"review": "bad film", "sentiment": NaN}',
              '{"review": "fine plot"}']
    fetched, _ = fetch_and_split(project(tmp_path, "\n".join(lines).encode(), name="reviews.jsonl"))
    assert fetched["dropped_missing_label"] == 3 and fetched["rows"] == 120


def test_duplicate_ids_and_texts_are_deduplicated_and_counted(tmp_path):
    rows = good_rows()
    dupes = rows.iloc[:5].copy()                                  # same ids, same texts, same labels
    conflict = rows.iloc[5:7].assign(sentiment=lambda d: d["sentiment"].map({"pos": "neg", "neg": "pos"}))
    case = rows.iloc[7:8].assign(review=lambda d: d["review"].str.upper() + "  ")   # same after normalising
    fetched, split = fetch_and_split(project(tmp_path, csv_bytes(pd.concat([rows, dupes, conflict, case]))))
    assert fetched["rows"] == 128
    assert split["dropped_duplicates"] == 6 and split["dropped_conflicting_labels"] == 4
    ids = [i for s in ("train", "val", "test")
           for i in pd.read_parquet(tmp_path / "data" / "splits" / f"{s}.parquet")["id"]]
    assert len(ids) == len(set(ids)) == 120 - 2


@pytest.mark.parametrize("name", ["reviews.csv", "reviews.jsonl"])
def test_a_byte_order_mark_is_ignored(tmp_path, name):
    rows = good_rows()
    if name.endswith(".csv"):
        body = csv_bytes(rows)
    else:
        body = "\n".join(json.dumps({"review": r, "sentiment": s})
                         for r, s in zip(rows["review"], rows["sentiment"])).encode()
    fetched, _ = fetch_and_split(project(tmp_path, b"\xef\xbb\xbf" + body, name=name))
    assert fetched["rows"] == 120


def test_labels_given_as_strings_map_like_numbers(tmp_path):
    rows = good_rows()
    given = {"pos": ["1", 1, "1.0", 1.0], "neg": ["0", 0, "0.0", 0.0]}     # strings, ints and floats mixed
    lines = [json.dumps({"review": r, "sentiment": given[s][i % 4]})
             for i, (r, s) in enumerate(zip(rows["review"], rows["sentiment"]))]
    root = project(tmp_path, "\n".join(lines).encode(), name="reviews.jsonl", label_map={0: "negative", 1: "positive"})
    fetched, _ = fetch_and_split(root)
    raw = pd.read_parquet(root / "data" / "raw" / "data.parquet")
    assert fetched["rows"] == 120
    assert (raw["label_text"] == rows["sentiment"].map(DATA["label_map"]).to_numpy()).all()


# --- refused, with one line, outputs untouched ----------------------------------------------------------

@pytest.fixture()
def fetched_before(tmp_path) -> Path:
    """A project whose data/raw, data/splits and metrics came from a good source."""
    root = project(tmp_path, csv_bytes(good_rows()))
    fetch_and_split(root)
    return root


def refuse(root: Path, source: bytes, name: str, stage_args: tuple[str, ...] = ("fetch.py", "data"), **data) -> str:
    """Swap in a hostile source, run a stage: exit 2, one error line, nothing under data/ or metrics/ changed."""
    before = file_hashes(root, skip=("inputs", "params.yaml"))
    project(root, source, name=name, **data)
    proc = stage(root, *stage_args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert file_hashes(root, skip=("inputs", "params.yaml")) == before        # no partial or temporary outputs
    return lines[0]


def test_a_label_column_of_lists_is_refused(fetched_before):
    lines = ['{"review": "good film", "sentiment": [1]}', '{"review": "bad film", "sentiment": [0]}']
    err = refuse(fetched_before, "\n".join(lines).encode(), "reviews.jsonl", label_map={0: "negative", 1: "positive"})
    assert err == ("error: column 'sentiment' (data.label_column) holds list values such as '[1]'; "
                   "allowed: one string or number per row")


def test_a_label_column_of_scores_is_refused(fetched_before):
    body = b"review,sentiment\ngood film,0.93\nbad film,0.12\n"
    err = refuse(fetched_before, body, "reviews.csv", label_map={0: "negative", 1: "positive"})
    assert err == ("error: value '0.93' of column 'sentiment' has no entry in data.label_map (keys: 0, 1); "
                   "map it, or map it to null to drop it")


def test_labels_outside_the_declared_ones_are_refused(fetched_before):
    body = b"review,sentiment\ngood film,pos\nbad film,neg\nso so film,mixed\n"
    err = refuse(fetched_before, body, "reviews.csv")
    assert err == ("error: value 'mixed' of column 'sentiment' has no entry in data.label_map (keys: neg, pos); "
                   "map it, or map it to null to drop it")


def test_a_table_that_cannot_be_parsed_is_refused(fetched_before):
    err = refuse(fetched_before, b'{"review": "good\x00 film", "sentiment": "pos"}\n{"review": ', "reviews.jsonl")
    assert err.startswith("error: cannot read reviews.jsonl as jsonl: ")


def test_split_refuses_data_with_no_text_left_and_keeps_its_outputs(fetched_before):
    before = file_hashes(fetched_before / "data" / "splits")
    project(fetched_before, b"review,sentiment\n\"   \",pos\n\"\t\",neg\n")
    assert stage(fetched_before, "fetch.py", "data").returncode == 0
    proc = stage(fetched_before, "split.py")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: no rows left after cleaning and filtering")
    assert file_hashes(fetched_before / "data" / "splits") == before


# --- pickle, refused by what the file is --------------------------------------------------------------------

def _zip(b: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("reviews.csv", b)
    return buf.getvalue()


COMPRESSIONS = {"none": lambda b: b, "gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
                "zstd": lambda b: zstandard.ZstdCompressor().compress(b), "zip": _zip, "zlib": zlib.compress}
LAYER = {"none": "", "zstd": " (inside its zstd layer)", "zip": " (inside its zip member reviews.csv layer)"}


@pytest.mark.parametrize("compression", list(COMPRESSIONS))
def test_a_pickled_table_is_refused_whatever_its_name_or_format(fetched_before, compression):
    """Protocol 0 (printable, starts like a CSV row) and 5, under a CSV's name, and again with data.format: csv."""
    for protocol, name, fmt in ((0, "reviews.csv", {}), (5, "reviews.txt", {"format": "csv"})):
        body = COMPRESSIONS[compression](pickle.dumps(good_rows(), protocol=protocol))
        err = refuse(fetched_before, body, name, **fmt)
        layer = LAYER.get(compression, f" (inside its {compression} layer)")
        assert err == (f"error: {name} is a pickle{layer}: pickle runs code when read and is refused from any data "
                       f"source; allowed: csv, tsv, jsonl, json, parquet")


@pytest.mark.parametrize("first", ["(", "c"])
def test_a_csv_that_starts_like_a_protocol_0_pickle_is_read(tmp_path, first):
    """`(` is pickle's MARK and `c` its GLOBAL: a first byte proves nothing, the opcode walk does."""
    df = good_rows()
    df.insert(0, f"{first}id", range(len(df)))
    fetched, _ = fetch_and_split(project(tmp_path, csv_bytes(df)))
    assert fetched["rows"] == len(df)
