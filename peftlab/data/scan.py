"""Fetch at size from local parquet/jsonl (one file, or a folder in Hub layout): DuckDB scans the source.

What the batch path (peftlab/data/stream.py) did row batch by row batch is here one query per step, out of
core: only the columns the entry names are read (projection), the label map is a CASE built from the label
column's distinct values mapped by `to_contract` itself (so its rules and errors are the same), drop_values a
filter, and the per-category caps are window queries:
- `first`: the first N rows of each category in source order (files in name order, rows in file order); a
  config is read only until its N mapped rows are found (LIMIT with insertion order kept);
- `reservoir`: per category the N rows with the smallest seeded md5 of (seed, source, text): a uniform sample
  that depends on neither the order nor the files' layout (md5 because DuckDB computes it; the batch path's key,
  a blake2b of the id, would cost a Python hash per source row).
Row ids stay `stable_hash(source, text)` (blake2b, computed in Python for the kept rows only, so the same file
gets the same ids on either path). The counts are over the whole source. Sources this path does not cover
(hf:, pypi:, csv/tsv/json arrays, compressed files, another encoding, a template over nested columns, `first`
by a category column of a jsonl file) keep the batch path.
"""
from __future__ import annotations

import fnmatch
import functools
import json
import string
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from peftlab.core.errors import PeftlabError
from peftlab.core.io import atomic_path, stable_hash, write_json
from peftlab.data.engine import connect, sql_str
from peftlab.data.pickles import refuse_pickle
from peftlab.data.sources import local_path, parse_source, table_format, to_contract, value_key

SCAN_FORMATS = ("parquet", "jsonl")
MAX_LABEL_VALUES = 10_000


@functools.lru_cache(maxsize=8)
def _hub_configs(root: Path) -> list[dict]:
    """README.md's `configs:` (parsed once per folder: a corpus has dozens)."""
    readme = root / "README.md"
    if not readme.is_file():
        return []
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return []
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return []
    return meta.get("configs") or [] if isinstance(meta, dict) else []


def _globs_for(config: dict, split: str) -> list[str] | None:
    files = config.get("data_files")
    if isinstance(files, str):
        return [files] if split == "train" else None
    if isinstance(files, list) and all(isinstance(f, str) for f in files):
        return files if split == "train" else None
    for item in files or []:
        if isinstance(item, dict) and item.get("split") == split:
            path = item.get("path")
            return [path] if isinstance(path, str) else list(path or [])
    return None


def hub_layout_files(root: Path, config: str | None, split: str) -> list[Path] | None:
    """The files of one config and split of a local folder in Hub layout (README `configs:`, else the usual
    `{split}-*` / `{split}/` names); None when the layout is not one this resolves with certainty."""
    configs = _hub_configs(root)
    if configs:
        chosen = [c for c in configs if c.get("config_name") == config] if config else \
            ([c for c in configs if c.get("default")] or (configs if len(configs) == 1 else []))
        globs = _globs_for(chosen[0], split) if chosen else None
        if not globs:
            return None
        found = sorted({p for g in globs for p in root.glob(g) if p.is_file()})
    elif config:
        return None
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(root).parts) and p.name != "README.md")
        found = [p for p in files if fnmatch.fnmatch(p.name, f"{split}[-._ 0-9]*")
                 or split in p.relative_to(root).parts[:-1]]
    return found or None


def scan_parts(entry: dict) -> list[tuple[str | None, list[Path], str]] | None:
    """(category from the config or None, files, format) per config, or None when the batch path must read it."""
    source = parse_source(entry["source"])
    if source.kind != "local" or (entry.get("encoding") or "utf-8").lower().replace("_", "-") not in \
            ("utf-8", "utf8"):
        return None
    path = local_path(source)
    if path.is_file():
        parts = [(None, [path])]
    else:
        configs = entry.get("configs") or [entry.get("config")]
        prefix = entry.get("config_prefix") or ""
        parts = []
        for config in configs:
            files = hub_layout_files(path, config, entry.get("split") or "train")
            if files is None:
                return None
            category = (config[len(prefix):] if config.startswith(prefix) else config) if entry.get("configs") \
                else None
            parts.append((category, files))
    out = []
    for category, files in parts:
        fmts = set()
        for f in files:
            refuse_pickle(f, "csv, tsv, jsonl, json, parquet")     # by content first: names and formats lie
            fmt, compression = table_format(f, entry.get("format") if path.is_file() else None)
            if compression:
                return None
            fmts.add(fmt)
        if len(fmts) != 1 or next(iter(fmts)) not in SCAN_FORMATS:
            return None
        out.append((category, files, fmts.pop()))
    return out


def _reader(files: list[Path], fmt: str) -> str:
    """The part's rows with `_file` and `file_row_number`, the source order `first` keeps."""
    if fmt == "parquet":
        listed = "[" + ", ".join(sql_str(f) for f in files) + "]"
        return f"read_parquet({listed}, union_by_name = true, filename = '_file', file_row_number = true)"
    # read_json has no row number: numbered per file in arrival order (insertion order is kept for `first`)
    return "(" + " UNION ALL BY NAME ".join(
        f"SELECT *, {sql_str(f)} AS _file, row_number() OVER () - 1 AS file_row_number "
        f"FROM read_json({sql_str(f)}, format = 'newline_delimited')" for f in files) + ")"


def _q(col: str) -> str:
    return '"' + str(col).replace('"', '""') + '"'


def _literal(v, sql_type: str) -> str:
    if isinstance(v, float) and v.is_integer() is False and v != v:   # NaN
        return f"CAST('nan' AS {sql_type})"
    return f"CAST({sql_str(v)} AS {sql_type})"


def _hf_class_names(files: list[Path], fmt: str) -> dict:
    """ClassLabel names that a Hub parquet file declares in its schema metadata (as `datasets` reads them)."""
    if fmt != "parquet":
        return {}
    meta = (pq.read_schema(files[0]).metadata or {}).get(b"huggingface")
    try:
        features = json.loads(meta)["info"]["features"] if meta else {}
    except (ValueError, KeyError, TypeError):
        return {}
    return {c: list(f["names"]) for c, f in features.items()
            if isinstance(f, dict) and f.get("_type") == "ClassLabel" and f.get("names")}


class _Query:
    """The SQL of one part (config): source, mapped label, text, contract columns and the filters, counted."""

    def __init__(self, con, entry: dict, category: str | None, files: list[Path], fmt: str, labels: list[str]):
        self.src = _reader(files, fmt)
        cur = con.execute(f"SELECT * FROM {self.src} LIMIT 0")
        types = {d[0]: str(d[1]) for d in cur.description}
        cols = [c for c in types if c not in ("_file", "file_row_number")]
        name = entry["name"]

        def col(field: str, required: bool) -> str | None:
            c = entry.get(field)
            if c is None and required:
                raise PeftlabError(f"dataset {name!r} has no {field}; set data.{field} (columns: {', '.join(cols)})")
            if c is not None and c not in cols:
                raise PeftlabError(f"column {c!r} (data.{field}) not found in {entry['source']}; "
                                   f"columns: {', '.join(cols)}")
            return c

        template = entry.get("text_template")
        if template:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
            missing = [f for f in fields if f not in cols]
            if missing or not fields:
                raise PeftlabError(f"data.text_template = {template!r} names column "
                                   f"{missing[0] if missing else None!r}, which {entry['source']} lacks; "
                                   f"columns: {', '.join(cols)}")
            pieces = []
            for lit, f, _, _ in string.Formatter().parse(template):
                if lit:
                    pieces.append(sql_str(lit))
                if f:
                    pieces.append(f"coalesce(CAST({_q(f)} AS VARCHAR), '')")
            self.text = "concat(" + ", ".join(pieces) + ")"
        else:
            text_col = col("text_column", True)
            self.text = f"CAST({_q(text_col)} AS VARCHAR)"
        label_col = col("label_column", True)
        extra = {k: col(f"{k}_column", False) for k in ("group", "category", "rating")}
        # drop_values: a filter per column, in order, each counted after the ones before
        self.drops: list[tuple[str, str]] = []
        for dcol, values in (entry.get("drop_values") or {}).items():
            if dcol not in cols:
                raise PeftlabError(f"column {dcol!r} (data.drop_values) not found; columns: {', '.join(cols)}")
            bad = {value_key(v) for v in values}
            got = [r[0] for r in con.execute(f"SELECT DISTINCT {_q(dcol)} FROM {self.src} "
                                             f"WHERE {_q(dcol)} IS NOT NULL").fetchall()]
            hit = [v for v in got if value_key(v) in bad]
            cond = " OR ".join(f"{_q(dcol)} = {_literal(v, types[dcol])}" for v in hit) or "FALSE"
            self.drops.append((f"dropped_{dcol}_values", f"coalesce({cond}, FALSE)"))
        kept_by_drops = " AND ".join(f"NOT ({c})" for _, c in self.drops) or "TRUE"
        # the label map: to_contract maps the distinct values (same rules, same errors)
        if types[label_col].endswith("[]") or types[label_col].startswith(("STRUCT", "MAP")):
            raise PeftlabError(f"column {label_col!r} (data.label_column) holds {types[label_col]} values; "
                               f"allowed: one string or number per row")
        values = [r[0] for r in con.execute(f"SELECT DISTINCT {_q(label_col)} FROM {self.src} WHERE "
                                            f"{_q(label_col)} IS NOT NULL AND {kept_by_drops} "
                                            f"LIMIT {MAX_LABEL_VALUES + 1}").fetchall()]
        if len(values) > MAX_LABEL_VALUES:
            raise PeftlabError(f"column {label_col!r} (data.label_column) has more than {MAX_LABEL_VALUES} "
                               f"distinct values; allowed: a label column (map it with data.label_map)")
        row = "__scan_row__" if label_col != "__scan_row__" else "__scan_row_2__"
        mapped, _ = to_contract(pd.DataFrame({label_col: pd.Series(values, dtype=object),
                                              row: [str(i) for i in range(len(values))]}),
                                {**entry, "text_column": row, "group_column": None, "category_column": None,
                                 "rating_column": None, "drop_values": None, "text_template": None},
                                labels, {label_col: _hf_class_names(files, fmt).get(label_col)}, allow_empty=True)
        lab = {int(t): int(l) for t, l in zip(mapped["text"], mapped["label"])}
        whens = " ".join(f"WHEN {_q(label_col)} = {_literal(values[i], types[label_col])} THEN {l}"
                         for i, l in lab.items())
        self.label = f"CAST(CASE {whens} END AS BIGINT)" if whens else "CAST(NULL AS BIGINT)"
        self.has_map = bool(entry.get("label_map"))
        self.label_col, self.kept_by_drops = _q(label_col), kept_by_drops
        self.labels = labels
        self.category = sql_str(category) if category is not None else \
            (f"CAST({_q(extra['category'])} AS VARCHAR)" if extra["category"] else None)
        self.one_bucket = category is not None or self.category is None    # a config, or no category at all
        self.extra = extra

    def where(self) -> str:
        return f"{self.kept_by_drops} AND _label IS NOT NULL AND _text IS NOT NULL"

    def select(self, seed: int, source: str, with_u: bool = True) -> str:
        """Rows before the cap: the contract columns (text, label, label_text, ...), the bucket, the sample key
        `_u` (with_u) and the source position (_file, file_row_number)."""
        names = "CASE _label " + " ".join(f"WHEN {i} THEN {sql_str(n)}" for i, n in enumerate(self.labels)) + " END"
        cols = ["_text AS text", "_label AS label", f"{names} AS label_text"]
        if self.extra["group"]:
            cols.append(f"CAST({_q(self.extra['group'])} AS VARCHAR) AS \"group\"")
        if self.category is not None:
            cols.append(f"{self.category} AS category")
        if self.extra["rating"]:
            cols.append(f"TRY_CAST({_q(self.extra['rating'])} AS DOUBLE) AS rating")
        u = (f"md5_number(concat_ws(chr(0), {sql_str(seed)}, 'sample', {sql_str(source)}, _text)) AS _u, "
             if with_u else "")
        return (f"SELECT {', '.join(cols)}, {self.category or sql_str('all')} AS _b, {u}_file, file_row_number "
                f"FROM (SELECT *, {self.text} AS _text, {self.label} AS _label FROM {self.src}) "
                f"WHERE {self.where()}")

    def count_sql(self) -> str:
        c = ["count(*) AS source_rows"]
        done = []
        for name, cond in self.drops:
            prior = " AND ".join(f"NOT ({d})" for d in done) or "TRUE"
            c.append(f"count(*) FILTER ({prior} AND ({cond})) AS {name}")
            done.append(cond)
        k = self.kept_by_drops
        c.append(f"count(*) FILTER ({k} AND {self.label_col} IS NULL) AS dropped_missing_label")
        if self.has_map:
            c.append(f"count(*) FILTER ({k} AND {self.label_col} IS NOT NULL AND _label IS NULL) "
                     f"AS dropped_label_map_null")
        c.append(f"count(*) FILTER ({k} AND _label IS NOT NULL AND _text IS NULL) AS dropped_missing_text")
        c.append(f"count(*) FILTER ({self.where()} AND contains(_text, '\ufffd')) AS replaced_invalid_bytes")
        return (f"SELECT {', '.join(c)} FROM (SELECT *, {self.text} AS _text, {self.label} AS _label "
                f"FROM {self.src})")


def fetch_scan(entry: dict, parts: list, seed: int, max_samples: int | None, out_dir: str | Path,
               memory_limit_mb: int, threads: int | None, shard_rows: int) -> dict:
    """fetch stage on DuckDB: local parquet/jsonl -> data/raw/data-NNNNN.parquet shards + manifest.json."""
    labels, mode, cap = entry["labels"], entry.get("sample") or "first", entry.get("per_category")
    bucket_cap = cap or max_samples
    overall = max_samples if cap else None
    reservoir = mode == "reservoir" and bucket_cap is not None
    started = time.perf_counter()
    with atomic_path(out_dir, is_dir=True) as tmp, connect(memory_limit_mb, threads, Path(out_dir).parent) as con:
        con.create_function("py_id", lambda t: pa.array([stable_hash(entry["source"], x) for x in t.to_pylist()]),
                            ["VARCHAR"], "VARCHAR", type="arrow", side_effects=False)
        queries = [_Query(con, entry, cat, files, fmt, labels) for cat, files, fmt in parts]
        counts: dict[str, int] = {}
        for group in (queries[i:i + 64] for i in range(0, len(queries), 64)):   # one scan for many configs
            cur = con.execute(" UNION ALL BY NAME ".join(q.count_sql() for q in group))
            for row in cur.fetchall():
                for d, v in zip(cur.description, row):
                    counts[d[0]] = counts.get(d[0], 0) + int(v or 0)
        present = _present(queries)
        # to_contract's column order; a category from the config comes last, as the batch path appends it
        last = ["category"] if parts[0][0] is not None else []
        cols = ", ".join(["text", "label", "label_text"] + [f'"{c}"' for c in ("group", "category", "rating")
                                                             if c in present and c not in last] + last)
        shards: list[str] = []

        def write(rows_sql: str, order: str | None) -> int:
            name = f"data-{len(shards):05d}.parquet"
            n = con.execute(f"COPY (SELECT py_id(text) AS id, {cols} FROM ({rows_sql})"
                            f"{' ORDER BY ' + order if order else ''}) TO {sql_str(tmp / name)} "
                            f"(FORMAT parquet)").fetchone()[0]
            if n:
                shards.append(name)
            else:
                (tmp / name).unlink(missing_ok=True)
            return int(n)

        jsonl = any(fmt == "jsonl" for _, _, fmt in parts)
        src = entry["source"]
        if not reservoir and (not cap or all(q.one_bucket for q in queries)):
            # first N of each config (per_category) and of all (max_samples): LIMIT in source order stops the scan
            con.execute("SET preserve_insertion_order = true")
            remaining = max_samples
            for q in queries:
                limit = min(x for x in (cap, remaining) if x is not None) if (cap or remaining) else None
                n = write(q.select(seed, src, with_u=False) + (f" LIMIT {int(limit)}" if limit else ""), None)
                if remaining is not None:
                    remaining -= n
                    if remaining <= 0:
                        break
        else:
            # the chosen rows first, on narrow rows (position, bucket, key), then their columns, part by part;
            # a tie in the key is between identical texts only, broken by position
            con.execute(f"SET preserve_insertion_order = {'true' if jsonl else 'false'}")
            rank = "_u, _file, file_row_number" if reservoir else "_part, _file, file_row_number"
            bucket = "_b" if cap else "'all'"
            body = " UNION ALL ".join(
                f"SELECT {i} AS _part, _file, file_row_number, {bucket} AS _bucket{', _u' if reservoir else ''} "
                f"FROM ({q.select(seed, src, reservoir)})" for i, q in enumerate(queries))
            sel = (f"SELECT * FROM ({body}) QUALIFY row_number() OVER (PARTITION BY _bucket ORDER BY {rank}) "
                   f"<= {int(bucket_cap)}")
            if overall:
                sel = f"SELECT * FROM ({sel}) QUALIFY row_number() OVER (ORDER BY {rank}) <= {int(overall)}"
            con.execute(f"CREATE TEMP TABLE chosen AS {sel}")
            for i, q in enumerate(queries):
                rows = (f"SELECT s.* FROM ({q.select(seed, src, reservoir)}) s SEMI JOIN "
                        f"(SELECT _file, file_row_number FROM chosen WHERE _part = {i}) c "
                        f"ON s._file = c._file AND s.file_row_number = c.file_row_number")
                write(rows, "_b, _u" if reservoir else "_file, file_row_number")
        manifest = write_manifest(entry, tmp, shards, counts, labels, mode, cap)
    report_fetch(entry, manifest, shards, counts, counts.get("source_rows", 0), started, ", DuckDB scan")
    return manifest


def write_manifest(entry: dict, folder: Path, shards: list[str], counts: dict, labels: list[str], mode: str,
                   cap: int | None) -> dict:
    """manifest.json of a fetch (both paths), refused when filtering left no row."""
    manifest = manifest_for(entry, folder, shards, counts, labels, mode, cap)
    if manifest["counts"]["rows"] == 0:
        raise PeftlabError(f"dataset {entry['name']!r} is empty after filtering ({counts}); check "
                           f"data.drop_values, data.label_map and data.labels")
    write_json(folder / "manifest.json", manifest)
    return manifest


def report_fetch(entry: dict, manifest: dict, shards: list[str], counts: dict, read: int, started: float,
                 how: str = "") -> None:
    """The one "fetched ..." line of both fetch paths: rows kept, source rows read, rate, what was dropped."""
    secs = time.perf_counter() - started
    dropped = ", ".join(f"{k}={v}" for k, v in counts.items() if k.startswith("dropped") and v)
    print(f"fetched {entry['name']}: {manifest['counts']['rows']} rows in {len(shards)} shards "
          f"{manifest['label_counts']} from {read} source rows in {secs:.1f} s ({read / max(secs, 1e-9):,.0f} "
          f"rows/s{how}; dropped: {dropped or 'none'})")


def _present(queries: list[_Query]) -> set[str]:
    got = set()
    for q in queries:
        got |= {k for k, v in q.extra.items() if v} | ({"category"} if q.category is not None else set())
    return got


def manifest_for(entry: dict, folder: Path, shards: list[str], counts: dict, labels: list[str], mode: str,
              cap: int | None) -> dict:
    """Counts come from the shards' own columns (label, category), read column by column."""
    label_counts = dict.fromkeys(labels, 0)
    cat_counts: dict[str, int] = defaultdict(int)
    rows, columns = 0, []
    for name in shards:
        pf = pq.ParquetFile(folder / name)
        columns = pf.schema_arrow.names
        rows += pf.metadata.num_rows
        want = ["label_text"] + (["category"] if "category" in columns else [])
        for batch in pf.iter_batches(columns=want, batch_size=500_000):
            for l, n in pd.Series(batch.column("label_text").to_pylist()).value_counts().items():
                label_counts[l] += int(n)
            if "category" in want:
                for c, n in pd.Series(batch.column("category").to_pylist()).value_counts().items():
                    cat_counts[c] += int(n)
    counts = {**counts, "capped_rows": int(counts.get("source_rows", 0) - sum(
        v for k, v in counts.items() if k.startswith("dropped")) - rows), "rows": rows}
    out = {"name": entry["name"], "source": entry["source"], "sha256": entry.get("sha256"), "labels": labels,
           "columns": columns, "counts": counts, "label_counts": label_counts, "shards": shards,
           "streaming": {"sample": mode, "per_category": cap, "configs": entry.get("configs")}}
    if cat_counts:
        out["category_counts"] = dict(sorted(cat_counts.items()))
    return out
