"""The split stage for data past memory: the same cleaning, dedupe, length filter and stratified split as
peftlab/data.py's `make_splits`, computed in chunks with pyarrow so memory does not grow with the rows.

Used when fetch wrote shards (a streamed source) or data.parquet holds more than IN_MEMORY_MAX_ROWS rows; the
default (rotten_tomatoes, 12.8k rows) keeps the in-memory path and its exact outputs.

How each step scales:
- cleaning, hashing: one chunk at a time; cleaned chunks go to a work folder beside the output.
- duplicates: every row's 64-bit hash of its normalised text (the in-memory path's key) goes, with its label
  and row number, to one of B bucket files by hash; one bucket at a time then finds repeated texts (keep the
  first row) and texts seen with two labels (drop them all). Rows removed are marked in a bitmap of one byte
  per row, the only structure that grows with the data (3.3 MB for 3.3M rows, against ~1 KB of text a row).
- split: each row's place is the in-memory path's seeded hash u of its id (or of its group). The in-memory
  path sends, within each class, the round(n*test) smallest u to test and the next round(n*val) to val. Here
  the same cut points are found without sorting everything: a 65,536-bin histogram of u per class locates the
  bin holding the k-th smallest, and a second pass reads the few u values in that bin. Rows are then assigned
  by comparing u with those per-class thresholds, so the result is the in-memory split exactly (the same rows
  in train/val/test, the same per-class counts), whatever the chunking or order of the shards.
  Grouped: a group's u (hash of the group) below `test` sends the whole group to test, below test+val to val:
  stratified and sized only in expectation (the in-memory path fills row targets group by group, which needs
  every group's size at once).
- the leakage check re-buckets (text hash, split) and (group hash, split) and fails if one lands in two splits.
Output rows keep the source order inside each split (the in-memory path sorts by id, which would need an
external sort); train/val/test.parquet are written as row groups, one chunk at a time.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from peftlab.config.params import Params
from peftlab.core.errors import PeftlabError
from peftlab.core.io import atomic_path, stable_hash, write_json
from peftlab.core.paths import SPLITS
from peftlab.data.clean import clean_frame, normalize_for_dedupe, unit_interval
from peftlab.data.stream import ShardWriter

IN_MEMORY_MAX_ROWS = 2_000_000
CHUNK_ROWS = 100_000
BUCKET_ROWS = 1_000_000
BINS = 1 << 16
_WORK_COLS = ["_row", "_key", "_u", "_words"]


def raw_files(raw_dir: Path, manifest: dict) -> list[Path]:
    return [raw_dir / n for n in manifest.get("shards") or ["data.parquet"]]


def wants_scaled(raw_dir: str | Path, manifest: dict) -> bool:
    if manifest.get("shards"):
        return True
    return pq.ParquetFile(Path(raw_dir) / "data.parquet").metadata.num_rows > IN_MEMORY_MAX_ROWS


def hash64(values) -> np.ndarray:
    return np.array([int(stable_hash(v), 16) for v in values], dtype=np.uint64)


def word_counts(text: pd.Series) -> np.ndarray:
    """len(t.split()) for each text, by pyarrow: Python's split would hold every word of the chunk as an object
    (half a GB for 100k reviews). Both split on Unicode whitespace."""
    arr = pc.utf8_trim_whitespace(pa.array(text.to_numpy(dtype=object), type=pa.large_string()))
    n = pc.list_value_length(pc.utf8_split_whitespace(arr)).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where(pc.utf8_length(arr).to_numpy(zero_copy_only=False) == 0, 0, n)


def _chunks(files: list[Path], chunk_rows: int, columns: list[str] | None = None):
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=chunk_rows, columns=columns):
            yield batch.to_pandas()


class _Buckets:
    """Small tables spread over B parquet files by a 64-bit hash, read back one bucket at a time."""

    def __init__(self, folder: Path, n: int):
        folder.mkdir(parents=True)
        self.folder, self.n = folder, n
        self.writers: dict[int, pq.ParquetWriter] = {}

    def add(self, table: pa.Table, key: np.ndarray) -> None:
        which = key % np.uint64(self.n)
        for b in np.unique(which):
            part = table.filter(pa.array(which == b))
            if int(b) not in self.writers:
                self.writers[int(b)] = pq.ParquetWriter(self.folder / f"{int(b):05d}.parquet", table.schema)
            self.writers[int(b)].write_table(part)

    def __iter__(self):
        for w in self.writers.values():
            w.close()
        for b in sorted(self.writers):
            yield pq.read_table(self.folder / f"{b:05d}.parquet").to_pandas()


def _clean_pass(files, work: Path, seed: int, grouped: bool, n_buckets: int, chunk_rows: int
                ) -> tuple[list[str], _Buckets, dict, int]:
    """Clean each chunk, key it (dedupe hash, split hash, word count) and bucket its (key, label, row)."""
    counts: dict[str, int] = {}
    clean = ShardWriter(work, "clean", shard_rows=10 * chunk_rows)
    buckets = _Buckets(work / "keys", n_buckets)
    row0 = 0
    for df in _chunks(files, chunk_rows):
        df = df.assign(_row=np.arange(row0, row0 + len(df), dtype=np.int64))
        row0 += len(df)
        if grouped and "group" not in df.columns:
            raise PeftlabError("split.grouped is true but the dataset has no group column; "
                               "set data.group_column (e.g. movie_name) or split.grouped: false")
        cleaned, c = clean_frame(df)
        for k, v in c.items():
            counts[k] = counts.get(k, 0) + int(v)
        key = hash64(normalize_for_dedupe(t) for t in cleaned["text"])
        by = cleaned["group"].fillna("").astype(str) if grouped else cleaned["id"]
        cache: dict[str, float] = {}
        u = np.array([cache[v] if v in cache else cache.setdefault(v, unit_interval(seed, v)) for v in by])
        cleaned = cleaned.assign(_key=key, _u=u, _words=word_counts(cleaned["text"]))
        clean.write(cleaned)
        buckets.add(pa.table({"_key": key, "label": cleaned["label"].to_numpy(dtype=np.int64),
                              "_row": cleaned["_row"].to_numpy()}), key)
    return clean.close(), buckets, counts, row0


def _dedupe_pass(buckets: _Buckets, n_rows: int) -> tuple[np.ndarray, dict]:
    """Per bucket: first row of each text kept; every row of a text seen with two labels dropped."""
    drop = np.zeros(n_rows, dtype=bool)
    dup = conflict = 0
    for t in buckets:
        g = t.groupby("_key", sort=False)
        bad = (g["label"].transform("nunique") > 1).to_numpy()
        first = (t["_row"] == g["_row"].transform("min")).to_numpy()
        drop[t["_row"].to_numpy()[bad | ~first]] = True
        conflict += int(bad.sum())
        dup += int((~bad & ~first).sum())
    return drop, {"dropped_duplicates": dup, "dropped_conflicting_labels": conflict}


def _final_mask(df: pd.DataFrame, drop: np.ndarray, min_words: int, max_words: int, counts: dict | None):
    alive = ~drop[df["_row"].to_numpy()]
    words = df["_words"].to_numpy()
    short, long_ = alive & (words < min_words), alive & (words > max_words)
    if counts is not None:
        counts["dropped_too_short"] = counts.get("dropped_too_short", 0) + int(short.sum())
        counts["dropped_too_long"] = counts.get("dropped_too_long", 0) + int(long_.sum())
    return alive & ~short & ~long_


def _thresholds(work: Path, clean: list[str], drop: np.ndarray, k: int, sp, counts: dict) -> np.ndarray:
    """Per class, the u of the round(n*test)-th and (round(n*test)+round(n*val))-th smallest kept row."""
    hist = np.zeros((k, BINS), dtype=np.int64)
    cols = ["_row", "label", "_u", "_words"]
    for df in _chunks([work / n for n in clean], CHUNK_ROWS, cols):
        m = _final_mask(df, drop, sp.min_words, sp.max_words, counts)
        bins = np.minimum((df["_u"].to_numpy()[m] * BINS).astype(np.int64), BINS - 1)
        np.add.at(hist, (df["label"].to_numpy()[m], bins), 1)
    n = hist.sum(axis=1)
    ranks = np.array([[int(round(x * sp.test)), int(round(x * sp.test)) + int(round(x * sp.val))] for x in n])
    cum = np.cumsum(hist, axis=1)
    want = {}   # (class, which cut) -> (bin, rank inside the bin)
    for c in range(k):
        for j, r in enumerate(ranks[c]):
            if r > 0:
                b = int(np.searchsorted(cum[c], r))
                want[(c, j)] = (b, r - (int(cum[c, b - 1]) if b else 0))
    found: dict[tuple[int, int], list[float]] = {cb: [] for cb in {(c, b) for (c, _), (b, _) in want.items()}}
    for df in _chunks([work / n for n in clean], CHUNK_ROWS, cols):
        m = _final_mask(df, drop, sp.min_words, sp.max_words, None)
        u, lab = df["_u"].to_numpy()[m], df["label"].to_numpy()[m]
        bins = np.minimum((u * BINS).astype(np.int64), BINS - 1)
        for (c, b), vals in found.items():
            vals.extend(u[(lab == c) & (bins == b)].tolist())
    cuts = np.full((k, 2), -np.inf)
    for (c, j), (b, r) in want.items():
        cuts[c, j] = sorted(found[(c, b)])[r - 1]
    return cuts


def run_split_scaled(params: Params, raw_dir: str | Path, manifest: dict, out_dir: str | Path,
                     metrics_path: str | Path, chunk_rows: int = CHUNK_ROWS,
                     extra_metrics: Callable[[Path], dict] | None = None) -> dict:
    """split stage, chunked: data/raw shards -> data/splits/{train,val,test}.parquet + metrics/split.json."""
    raw_dir, sp, labels = Path(raw_dir), params.split, manifest["labels"]
    files = raw_files(raw_dir, manifest)
    n_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    n_buckets = max(1, math.ceil(n_rows / BUCKET_ROWS))
    with atomic_path(out_dir, is_dir=True) as tmp:
        work = tmp / ".work"
        work.mkdir()
        clean, buckets, counts, _ = _clean_pass(files, work, params.seed, sp.grouped, n_buckets, chunk_rows)
        counts = {"input_rows": n_rows, **counts}
        drop, c = _dedupe_pass(buckets, n_rows)
        counts.update(c)
        if sp.grouped:
            cuts = np.tile([sp.test, sp.test + sp.val], (len(labels), 1))
            for df in _chunks([work / n for n in clean], chunk_rows, ["_row", "_words"]):
                _final_mask(df, drop, sp.min_words, sp.max_words, counts)
        else:
            cuts = _thresholds(work, clean, drop, len(labels), sp, counts)
        stats = _write_splits(work, clean, drop, cuts, sp, tmp, labels, n_buckets, chunk_rows)
        counts["kept_rows"] = sum(stats[s]["n"] for s in SPLITS)
        if counts["kept_rows"] == 0:
            raise PeftlabError(f"no rows left after cleaning and filtering ({counts}); "
                               f"check split.min_words / split.max_words")
        for name in SPLITS:
            if stats[name]["n"] == 0:
                raise PeftlabError(f"the {name} split is empty ({counts['kept_rows']} rows in all); "
                                   f"raise split.{name if name != 'train' else 'val/test'} or use more data")
        stats = {"counts": counts, **stats}
        shutil.rmtree(work)
        write_json(tmp / "manifest.json", {**manifest, "split": stats})
    stats = {**stats, **(extra_metrics(Path(out_dir)) if extra_metrics else {})}   # metrics only, see run_split
    write_json(metrics_path, stats)
    print("split (chunked): " + ", ".join(f"{n}={stats[n]['n']}" for n in SPLITS) + f" (from {n_rows};"
          f" dropped duplicates={counts['dropped_duplicates']}, conflicting={counts['dropped_conflicting_labels']})")
    return stats


def _write_splits(work: Path, clean: list[str], drop: np.ndarray, cuts: np.ndarray, sp, out: Path,
                  labels: list[str], n_buckets: int, chunk_rows: int) -> dict:
    writers: dict[str, pq.ParquetWriter] = {}
    label_counts = {s: np.zeros(len(labels), dtype=np.int64) for s in SPLITS}
    owners = _Buckets(work / "owners", n_buckets)          # by text hash
    group_owners = _Buckets(work / "group-owners", n_buckets)  # by group hash
    for df in _chunks([work / n for n in clean], chunk_rows):
        m = _final_mask(df, drop, sp.min_words, sp.max_words, None)
        df = df[m]
        u, lab = df["_u"].to_numpy(), df["label"].to_numpy()
        where = np.where(u <= cuts[lab, 0], 0, np.where(u <= cuts[lab, 1], 1, 2))  # test, val, train
        split_of = np.array(["test", "val", "train"])[where]
        owners.add(pa.table({"_key": df["_key"].to_numpy(), "split": where.astype(np.int8)}), df["_key"].to_numpy())
        if sp.grouped:
            g = hash64(df["group"].fillna("").astype(str))
            group_owners.add(pa.table({"_key": g, "split": where.astype(np.int8)}), g)
        out_df = df.drop(columns=_WORK_COLS)
        for s in SPLITS:
            part = out_df[split_of == s]
            if part.empty:
                continue
            table = pa.Table.from_pandas(part, preserve_index=False)
            if s not in writers:
                writers[s] = pq.ParquetWriter(out / f"{s}.parquet", table.schema)
            writers[s].write_table(table.cast(writers[s].schema))
            label_counts[s] += np.bincount(part["label"].to_numpy(), minlength=len(labels))
    for w in writers.values():
        w.close()
    _check_owners(owners, "a text")
    if sp.grouped:
        _check_owners(group_owners, "a group")
    return {s: {"n": int(label_counts[s].sum()), **{l: int(label_counts[s][i]) for i, l in enumerate(labels)}}
            for s in SPLITS}


def _check_owners(owners: _Buckets, what: str) -> None:
    """Leakage check: one normalised text (or one group) must sit in one split only."""
    names = np.array(["test", "val", "train"])
    for t in owners:
        n = t.groupby("_key")["split"].nunique()
        if (n > 1).any():
            h = n[n > 1].index[0]
            where = sorted(names[t.loc[t["_key"] == h, "split"].unique()])
            raise PeftlabError(f"leakage: {what} (hash {int(h):016x}) is in both {where[0]} and {where[1]}")
