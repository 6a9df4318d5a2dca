"""The chunked split: the same rows in train/val/test as the in-memory split, whatever the chunking."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from peftlab.config.params import Params, build
from peftlab.core.errors import PeftlabError
from peftlab.core.io import stable_hash
from peftlab.data.split import make_splits, run_split
from peftlab.data.split_scale import run_split_scaled

LABELS = ["negative", "positive"]


def messy_frame(n: int = 3000, seed: int = 0, groups: int | None = None) -> pd.DataFrame:
    """Imbalanced labels, exact and case/HTML duplicates, conflicting labels, empty and long texts."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    text = [f"review {i} {'nice' if v else 'poor'} " + "w " * int(rng.integers(0, 30)) for i, v in enumerate(y)]
    for i in range(0, n, 50):
        text[i + 1] = text[i].upper() + " <br />"          # a duplicate after normalisation
        y[i + 1] = y[i] if i % 100 else 1 - y[i]            # every other one with the other label
    text[7] = " \x00 "
    df = pd.DataFrame({"id": [stable_hash("t", t, str(i)) for i, t in enumerate(text)], "text": text, "label": y,
                       "label_text": np.where(y == 1, "positive", "negative")})
    if groups:
        df["group"] = [f"g{int(g)}" for g in rng.integers(0, groups, n)]
    return df


def write_shards(raw: Path, df: pd.DataFrame, n_shards: int) -> dict:
    raw.mkdir(parents=True)
    names = []
    for i, part in enumerate(np.array_split(np.arange(len(df)), n_shards)):
        names.append(f"data-{i:05d}.parquet")
        df.iloc[part].to_parquet(raw / names[-1], index=False)
    manifest = {"name": "toy", "labels": LABELS, "shards": names}
    (raw / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def params(**split) -> Params:
    p = Params()
    p.split = build(type(p.split), {"max_words": 25, **split}, "split")
    return p


@pytest.mark.parametrize("chunk_rows", [37, 100_000])
def test_chunked_split_equals_the_in_memory_split(tmp_path, chunk_rows):
    df = messy_frame()
    manifest = write_shards(tmp_path / "raw", df, 3)
    parts, stats = make_splits(df, LABELS, 0.1, 0.1, 42, False, 1, 25)
    got = run_split_scaled(params(), tmp_path / "raw", manifest, tmp_path / "splits", tmp_path / "split.json",
                           chunk_rows=chunk_rows)
    assert got == stats == json.loads((tmp_path / "split.json").read_text())
    c = stats["counts"]
    assert c["dropped_duplicates"] > 0 and c["dropped_conflicting_labels"] > 0 and c["dropped_too_long"] > 0
    for name in ("train", "val", "test"):
        out = pd.read_parquet(tmp_path / "splits" / f"{name}.parquet")
        assert sorted(out["id"]) == sorted(parts[name]["id"])
        assert list(out.columns) == list(parts[name].columns)
    assert json.loads((tmp_path / "splits" / "manifest.json").read_text())["split"] == stats
    assert not (tmp_path / "splits" / ".work").exists()


def test_run_split_takes_the_chunked_path_for_shards_and_keeps_the_in_memory_one_otherwise(tmp_path):
    df = messy_frame(600)
    write_shards(tmp_path / "raw", df, 2)
    run_split(params(), tmp_path / "raw", tmp_path / "a", tmp_path / "a.json")
    small = tmp_path / "raw-small"
    small.mkdir()
    df.to_parquet(small / "data.parquet", index=False)
    (small / "manifest.json").write_text(json.dumps({"name": "toy", "labels": LABELS}))
    run_split(params(), small, tmp_path / "b", tmp_path / "b.json")
    for name in ("train", "val", "test"):
        a, b = (pd.read_parquet(tmp_path / d / f"{name}.parquet") for d in ("a", "b"))
        assert list(b["id"]) == sorted(b["id"])             # in memory: sorted by id, as committed today
        assert sorted(a["id"]) == list(b["id"])


def test_grouped_chunked_split_keeps_groups_whole_and_sizes_in_expectation(tmp_path):
    df = messy_frame(4000, groups=400)
    manifest = write_shards(tmp_path / "raw", df, 4)
    stats = run_split_scaled(params(grouped=True), tmp_path / "raw", manifest, tmp_path / "s", tmp_path / "s.json",
                             chunk_rows=500)
    owner = {}
    for name in ("train", "val", "test"):
        for g in pd.read_parquet(tmp_path / "s" / f"{name}.parquet")["group"].unique():
            assert owner.setdefault(g, name) == name
    kept = stats["counts"]["kept_rows"]
    assert 0.05 < stats["test"]["n"] / kept < 0.16 and 0.05 < stats["val"]["n"] / kept < 0.16


def test_grouped_without_a_group_column_and_all_filtered_are_clear_errors(tmp_path):
    manifest = write_shards(tmp_path / "raw", messy_frame(200), 1)
    with pytest.raises(PeftlabError, match="split.grouped is true but the dataset has no group column"):
        run_split_scaled(params(grouped=True), tmp_path / "raw", manifest, tmp_path / "s", tmp_path / "s.json")
    with pytest.raises(PeftlabError, match="no rows left after cleaning"):
        run_split_scaled(params(min_words=100, max_words=200), tmp_path / "raw", manifest, tmp_path / "s",
                         tmp_path / "s.json")
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.json").exists()


def test_leakage_check_fails_when_one_text_lands_in_two_splits(tmp_path):
    import pyarrow as pa

    from peftlab.data.split_scale import _Buckets, _check_owners

    b = _Buckets(tmp_path / "owners", 2)
    keys = np.array([5, 6, 5], dtype=np.uint64)
    b.add(pa.table({"_key": keys, "split": np.array([0, 2, 2], dtype=np.int8)}), keys)
    with pytest.raises(PeftlabError, match=r"leakage: a text \(hash 0000000000000005\) is in both test and train"):
        _check_owners(b, "a text")
