"""Streaming fetch: a source of any size becomes capped, sharded contract parquet, in bounded memory.

Local parquet/jsonl (a file, or a folder in Hub layout) is scanned by DuckDB (peftlab/data/scan.py), with the
caps as queries. What this module reads itself, in record batches, is the rest: the Hub through `datasets`
streaming in Arrow format (DuckDB's hf:// reader would need an extension downloaded at first use), pypi
artifacts, and the local formats the scan does not cover (csv, tsv, JSON arrays, compressed files, other
encodings). Each batch is mapped onto the data contract by the same `to_contract` as the in-memory fetch, capped
per category and appended to parquet shards at once. Memory holds one batch plus, for the seeded sample, at most
2 x cap floats per category: it does not grow with the source.

Caps (`per_category`, `sample`):
- `first`: the first N rows of each category in source order; a config that reaches its cap is not read
  further, so capping the 571M-review Amazon corpus at 100k a category reads only what it keeps.
- `reservoir`: a uniform sample of N rows per category, fixed by the seed and independent of the source order
  (bottom-k sampling: each row gets a seeded hash of its id and the N smallest are kept; equivalent to a
  reservoir sample, but order-free). Rows that can still make the sample are written to candidate shards as
  they stream by (about N x (1 + ln(rows / N)) of them); a last pass keeps those under the final threshold.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from peftlab.core.errors import PeftlabError
from peftlab.core.io import atomic_path, stable_hash
from peftlab.data.scan import fetch_scan, report_fetch, scan_parts, write_manifest
from peftlab.data.sources import local_path, open_hub_dataset, parse_source, read_source_frame, read_table, to_contract

BATCH_ROWS = 50_000          # rows mapped at a time: a few tens of MB of review text
SHARD_ROWS = 1_000_000       # rows per output parquet shard
TEMPLATE_COLUMN = "__text__"


def wants_streaming(entry: dict) -> bool:
    """Streaming is chosen by the entry (`streaming: true`), or implied by several configs or a category cap."""
    return bool(entry.get("streaming") or entry.get("configs") or entry.get("per_category"))


# --- text from several columns ----------------------------------------------------------------------------

def _cell(v: Any) -> str:
    """A template field: nested values (OrgAccess' permissions) as JSON, missing values as empty text."""
    if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)):
        return ""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str, ensure_ascii=False)
    return str(v)


def apply_text_template(raw: pd.DataFrame, entry: dict) -> tuple[pd.DataFrame, dict]:
    """With `text_template` ('{title}\\n\\n{content}'), build the text column from several source columns."""
    template = entry.get("text_template")
    if not template:
        return raw, entry
    import string

    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    missing = [f for f in fields if f not in raw.columns]
    if missing or not fields:
        raise PeftlabError(f"data.text_template = {template!r} names column {missing[0] if missing else None!r}, "
                           f"which {entry['source']} lacks; columns: {', '.join(map(str, raw.columns))}")
    cols = {f: [_cell(v) for v in raw[f]] for f in fields}
    text = [template.format(**{f: cols[f][i] for f in fields}) for i in range(len(raw))]
    return raw.assign(**{TEMPLATE_COLUMN: text}), {**entry, "text_column": TEMPLATE_COLUMN}


# --- reading in batches ----------------------------------------------------------------------------------

def _hub_batches(target: str, entry: dict, revision: str | None, batch_rows: int, stop: set
                 ) -> Iterator[tuple[str | None, pd.DataFrame, dict]]:
    configs = entry.get("configs") or [entry.get("config")]
    prefix = entry.get("config_prefix") or ""
    for config in configs:
        ds, names = open_hub_dataset(target, entry, config, revision, streaming=True)
        category = config[len(prefix):] if entry.get("configs") and config.startswith(prefix) else \
            (config if entry.get("configs") else None)
        for table in ds.with_format("arrow").iter(batch_size=batch_rows):
            yield category, table.to_pandas(), names
            if category in stop:
                break


def _file_batches(path: Path, entry: dict, batch_rows: int) -> Iterator[pd.DataFrame]:
    yield from read_table(path, entry.get("format"), entry.get("encoding"), chunksize=batch_rows)


def iter_source_batches(entry: dict, batch_rows: int = BATCH_ROWS, stop: set | None = None
                        ) -> Iterator[tuple[str | None, pd.DataFrame, dict]]:
    """(category from the config or None, raw batch before column mapping, ClassLabel names).

    A config added to `stop` by the consumer is not read past the batch it was just given."""
    stop = stop if stop is not None else set()
    source = parse_source(entry["source"])
    if source.kind == "hf":
        yield from _hub_batches(source.target, entry, source.revision, batch_rows, stop)
        return
    if source.kind == "local":
        path = local_path(source)
        if path.is_dir():   # a folder in Hub layout
            yield from _hub_batches(str(path), entry, None, batch_rows, stop)
            return
        for df in _file_batches(path, entry, batch_rows):
            yield None, df, {}
        return
    raw, names = read_source_frame(entry)   # pypi artifacts are small, pinned files
    for start in range(0, max(len(raw), 1), batch_rows):
        yield None, raw.iloc[start:start + batch_rows], names


# --- caps ------------------------------------------------------------------------------------------------

class FirstN:
    """The first `cap` rows of each category, in source order."""

    def __init__(self, cap: float):
        self.cap, self.seen = cap, defaultdict(int)

    def full(self, category: str) -> bool:
        return self.seen[category] >= self.cap

    def offer(self, cats: np.ndarray, u: np.ndarray | None) -> np.ndarray:
        keep = np.zeros(len(cats), dtype=bool)
        for c in pd.unique(cats):
            idx = np.flatnonzero(cats == c)
            room = max(0, int(min(self.cap - self.seen[c], len(idx))))
            keep[idx[:room]] = True
            self.seen[c] += room
        return keep


class BottomK:
    """Per category, the `cap` rows with the smallest seeded hash u: a uniform sample, whatever the order.

    Holds at most 2 x cap floats per category: when the buffer doubles it is cut back to the cap smallest,
    and the largest of those becomes the bar a new row must pass to be written at all.
    """

    def __init__(self, cap: int):
        self.cap = cap
        self.kept: dict[str, np.ndarray] = {}
        self.bar: dict[str, float] = defaultdict(lambda: math.inf)

    def full(self, category: str) -> bool:
        return False

    def offer(self, cats: np.ndarray, u: np.ndarray) -> np.ndarray:
        keep = np.zeros(len(cats), dtype=bool)
        for c in pd.unique(cats):
            sel = (cats == c) & (u <= self.bar[c])
            keep |= sel
            arr = np.concatenate([self.kept.get(c, np.empty(0)), u[sel]])
            if len(arr) >= 2 * self.cap:
                arr = np.partition(arr, self.cap - 1)[: self.cap]
                self.bar[c] = float(arr.max())
            self.kept[c] = arr
        return keep

    def thresholds(self) -> dict[str, float]:
        """Final per-category bar: the cap-th smallest u (inf when a category has fewer rows)."""
        return {c: float(np.partition(a, self.cap - 1)[self.cap - 1]) if len(a) >= self.cap else math.inf
                for c, a in self.kept.items()}


def sample_key(seed: int, ids: pd.Series) -> np.ndarray:
    """Each row's place in the seeded sample, from its content id (so the same row always ranks the same)."""
    return np.array([int(stable_hash(str(seed), "sample", i, n=13), 16) / 16**13 for i in ids], dtype=np.float64)


# --- sharded output --------------------------------------------------------------------------------------

class ShardWriter:
    """Appends frames to parquet shards of at most `shard_rows` rows, one schema for all of them."""

    def __init__(self, folder: Path, prefix: str = "data", shard_rows: int = SHARD_ROWS):
        self.folder, self.prefix, self.shard_rows = folder, prefix, shard_rows
        self.names: list[str] = []
        self.schema: pa.Schema | None = None
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0

    def write(self, df: pd.DataFrame) -> None:
        if df.empty:
            return
        table = pa.Table.from_pandas(df, preserve_index=False)
        if self.schema is None:
            self.schema = table.schema.remove_metadata()
        table = table.cast(self.schema)
        start = 0
        while start < table.num_rows:
            if self._writer is None or self._rows >= self.shard_rows:
                self._open()
            n = min(table.num_rows - start, self.shard_rows - self._rows)
            self._writer.write_table(table.slice(start, n))
            self._rows += n
            start += n

    def _open(self) -> None:
        self.close()
        name = f"{self.prefix}-{len(self.names):05d}.parquet"
        self._writer = pq.ParquetWriter(self.folder / name, self.schema)
        self.names.append(name)
        self._rows = 0

    def close(self) -> list[str]:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.names


# --- the stage -------------------------------------------------------------------------------------------

def _add(total: dict, counts: dict) -> None:
    for k, v in counts.items():
        total[k] = total.get(k, 0) + int(v)


def fetch_streaming(entry: dict, seed: int, max_samples: int | None, out_dir: str | Path,
                    batch_rows: int = BATCH_ROWS, shard_rows: int = SHARD_ROWS, memory_limit_mb: int = 512,
                    threads: int | None = None) -> dict:
    """fetch stage, streaming: source -> data/raw/data-NNNNN.parquet shards + manifest.json (atomically).

    With `per_category`, each category (config or category column) is capped and `max_samples` caps the total
    on top; without it, `max_samples` caps the whole source as one bucket. Local parquet/jsonl (a file or a
    Hub-layout folder) is scanned by DuckDB (peftlab/data/scan.py); the rest is read here batch by batch."""
    from tqdm.auto import tqdm

    labels = entry["labels"]
    mode = entry.get("sample") or "first"
    if mode not in ("first", "reservoir"):
        raise PeftlabError(f"data.sample = {mode!r} is invalid; allowed: first | reservoir")
    cap = entry.get("per_category")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise PeftlabError(f"data.per_category = {cap!r} is invalid; allowed: an integer >= 1, or null (no cap)")
    parts = scan_parts(entry)
    if parts is not None:
        return fetch_scan(entry, parts, seed, max_samples, out_dir, memory_limit_mb, threads, shard_rows)
    bucket_cap = cap or max_samples
    overall = max_samples if cap else None
    reservoir = mode == "reservoir" and bucket_cap is not None
    sampler = BottomK(bucket_cap) if reservoir else FirstN(bucket_cap or math.inf)
    counts: dict[str, int] = {}
    stop: set[str] = set()   # configs whose first-N cap is full: not read any further
    started, read, kept = time.perf_counter(), 0, 0
    with atomic_path(out_dir, is_dir=True) as tmp:
        stage = tmp / ".candidates" if reservoir else tmp
        stage.mkdir(exist_ok=True)
        writer = ShardWriter(stage, "cand" if reservoir else "data", shard_rows)
        bar = tqdm(desc=f"fetch {entry['name']}", unit=" rows", unit_scale=True, mininterval=2.0)
        for category, raw, names in iter_source_batches(entry, batch_rows, stop):
            read += len(raw)
            bar.update(len(raw))
            raw, mapped = apply_text_template(raw, entry)
            df, c = to_contract(raw, mapped, labels, names, allow_empty=True)
            _add(counts, c)
            if category is not None:
                df["category"] = category
            buckets = (df["category"].to_numpy() if cap and "category" in df.columns
                       else np.full(len(df), "all", dtype=object))
            u = sample_key(seed, df["id"]) if reservoir else None
            keep = sampler.offer(buckets, u)
            if overall and not reservoir:
                keep &= np.cumsum(keep) <= overall - kept
            part = df[keep]
            if reservoir:
                part = part.assign(_u=u[keep], _b=buckets[keep])
            writer.write(part)
            kept += int(keep.sum())
            bar.set_postfix(kept=kept, refresh=False)
            if not reservoir:
                if category is not None and cap and sampler.full(category):
                    stop.add(category)
                if (overall and kept >= overall) or (not cap and sampler.full("all")):
                    break
        bar.close()
        writer.close()
        if reservoir:
            shards = _finish_reservoir(stage, writer.names, sampler, overall, tmp, shard_rows)
            shutil.rmtree(stage)
        else:
            shards = writer.names
        manifest = write_manifest(entry, tmp, shards, counts, labels, mode, cap)
    report_fetch(entry, manifest, shards, counts, read, started)
    return manifest


def _finish_reservoir(stage: Path, cands: list[str], sampler: BottomK, overall: int | None, out: Path,
                      shard_rows: int) -> list[str]:
    """Keep the candidates under their bucket's final bar (and under the overall bar for max_samples)."""
    bars = sampler.thresholds()
    top = math.inf
    if overall:
        survivors = np.concatenate([a[a <= bars[c]] for c, a in sampler.kept.items()] or [np.empty(0)])
        if len(survivors) > overall:
            top = float(np.partition(survivors, overall - 1)[overall - 1])
    writer = ShardWriter(out, "data", shard_rows)
    for name in cands:
        for batch in pq.ParquetFile(stage / name).iter_batches(batch_size=BATCH_ROWS):
            df = batch.to_pandas()
            u = df["_u"].to_numpy()
            keep = (u <= df["_b"].map(bars).to_numpy(dtype=np.float64)) & (u <= top)
            writer.write(df[keep].drop(columns=["_u", "_b"]))
    return writer.close()
