"""Cleaning, duplicate removal, length filtering and the train/val/test split, with a leakage check: one
implementation for every size, as DuckDB queries (out of core: memory limit plus spill to disk).

Why queries: the same code splits the 12.8k-row default and a 571M-row corpus, so there is no second path that
must agree with the first. Every decision is a function of the rows' content and the seed only, never of the
row order, the chunking of the source files or the engine's thread count:
- cleaning is `clean_text` in SQL (control characters removed, Python's whitespace collapsed);
- the duplicate key is `normalize_for_dedupe` of the cleaned text: in SQL for ASCII rows without `&` (where
  html.unescape, NFKC and casefold are the identity or `lower`), through the Python function only for the rows
  that need it (those with `&` or a non-ASCII character);
- of duplicates, the row with the smallest (id, text, ...) is kept; a text seen with two labels is dropped;
- per class, rows are ranked by `unit_interval(seed, id)`: the first round(n*test) go to test, the next
  round(n*val) to val (grouped: groups ranked by `unit_interval(seed, group)` fill test, then val, up to those
  row counts, so no group spans two splits);
- the leakage check is a query over the assigned rows; each split is written sorted by id.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow as pa

from peftlab.config.params import Params
from peftlab.core.errors import PeftlabError
from peftlab.core.io import atomic_path, read_json, write_json
from peftlab.core.paths import SPLITS
from peftlab.data.clean import clean_text, normalize_for_dedupe, unit_intervals
from peftlab.data.engine import connect, sql_str

_CTRL_CLASS = "[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]"
_TAG = "<[^>]{0,200}>"
CONTRACT_ORDER = ("id", "text", "label", "label_text", "group", "category", "rating")


def raw_files(raw_dir: Path, manifest: dict) -> list[Path]:
    """fetch's output: data.parquet, or the shards a streamed fetch wrote."""
    return [raw_dir / n for n in manifest.get("shards") or ["data.parquet"]]


def _py_norm(texts: pa.Array) -> pa.Array:
    """normalize_for_dedupe for the rows DuckDB cannot normalise itself (called on those rows only)."""
    return pa.array([normalize_for_dedupe(t) for t in texts.to_pylist()], type=pa.string())


def _py_clean(texts: pa.Array) -> pa.Array:
    """clean_text for non-ASCII rows: RE2's class of Unicode whitespace ran at ~20 us a row, Python's re at ~2."""
    return pa.array([clean_text(t) for t in texts.to_pylist()], type=pa.string())


def _py_unit(seed: int) -> Callable[[pa.Array], pa.Array]:
    # blake2b in Python over the kept rows (DuckDB has no blake2b): measured 2.1 s per million ids on a loaded
    # 2-core machine (~5% of the 5M-row benchmark's split), and it keeps the committed default split's membership.
    return lambda ids: pa.array(unit_intervals(seed, ids.to_pylist()), type=pa.float64())


def _register(con, seed: int) -> None:
    import duckdb

    varchar, double = duckdb.sqltype("VARCHAR"), duckdb.sqltype("DOUBLE")
    con.create_function("py_norm", _py_norm, [varchar], varchar, type="arrow", side_effects=False)
    con.create_function("py_clean", _py_clean, [varchar], varchar, type="arrow", side_effects=False)
    con.create_function("py_unit", _py_unit(seed), [varchar], double, type="arrow", side_effects=False)


def _clean_sql(col: str) -> str:
    """clean_text in SQL, on a subquery with `_wide` (non-ASCII) and `_dirty` (ASCII control, tab, newline,
    double or edge space): ASCII rows by RE2, only those with something to clean; non-ASCII rows by Python."""
    ascii_ = f"trim(regexp_replace(regexp_replace({col}, '{_CTRL_CLASS}', '', 'g'), '[\\t\\n\\r ]+', ' ', 'g'))"
    return f"CASE WHEN _wide THEN py_clean({col}) WHEN _dirty THEN {ascii_} ELSE {col} END"


def _norm_sql(col: str) -> str:
    """normalize_for_dedupe of a cleaned text (single spaces, trimmed): SQL for ASCII without `&`."""
    tags = f"trim(regexp_replace(lower(regexp_replace({col}, '{_TAG}', ' ', 'g')), ' +', ' ', 'g'))"
    return (f"CASE WHEN contains({col}, '&') OR strlen({col}) <> length({col}) THEN py_norm({col}) "
            f"WHEN contains({col}, '<') THEN {tags} ELSE lower({col}) END")


def _counts(con, sql: str) -> dict:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return {k: int(v or 0) for k, v in zip(names, cur.fetchone())}


def split_tables(con, files: list[Path], labels: list[str], val: float, test: float, seed: int, grouped: bool,
                 min_words: int, max_words: int) -> tuple[list[str], dict]:
    """The whole split as queries on `con`: leaves table `cleaned` (every source column, the text cleaned) and
    the narrow table `assigned` (`_r`: the row of `cleaned`, `_key1`/`_key2`, `_split`, id, label, group).

    Only the first query reads the texts; duplicates, lengths and the assignment work on narrow rows, and the
    texts are joined back when the splits are written. Returns the output columns and the counts."""
    _register(con, seed)
    src = f"read_parquet([{', '.join(sql_str(f) for f in files)}], union_by_name = true)"
    columns = [d[0] for d in con.execute(f"SELECT * FROM {src} LIMIT 0").description]
    out_cols = [c for c in CONTRACT_ORDER if c in columns] + [c for c in columns if c not in CONTRACT_ORDER]
    has_group = "group" in columns and grouped and con.execute(
        f'SELECT count("group") FROM {src}').fetchone()[0] > 0
    if grouped and not has_group:
        raise PeftlabError("split.grouped is true but the dataset has no group column; "
                           "set data.group_column (e.g. movie_name) or split.grouped: false")
    quoted = ", ".join(f'"{c}"' for c in out_cols if c != "text")
    # 1. clean, key and count words (the one pass over the texts). The duplicate key is two 64-bit DuckDB hashes
    # of the normalised text: used within this run only, so their version-stability does not matter.
    raw = "coalesce(text, '')"
    con.execute(f"""CREATE TEMP TABLE cleaned AS
        SELECT * EXCLUDE (_n), hash(_n) AS _key1, hash(_n || chr(1)) AS _key2,
               strlen(text) - strlen(replace(text, ' ', '')) + 1 AS _words
        FROM (SELECT *, CASE WHEN text = '' THEN '' ELSE {_norm_sql('text')} END AS _n
              FROM (SELECT {quoted}, {_clean_sql('_raw')} AS text,
                           (_wide OR _dirty) AND regexp_matches(_raw, '{_CTRL_CLASS}') AS _ctl
                    FROM (SELECT *, strlen(_raw) <> length(_raw) AS _wide,
                                 regexp_matches(_raw, '[\\x00-\\x1f\\x7f]|  |^ | $') AS _dirty
                          FROM (SELECT * EXCLUDE (text), {raw} AS _raw FROM {src}))))""")
    extra = [c for c in ("group", "category", "rating") if c in out_cols]
    narrow = ", ".join(['id', 'label'] + [f'"{c}"' for c in extra])
    counts = _counts(con, "SELECT count(*) AS input_rows, count(*) FILTER (_ctl AND text <> '') AS "
                          "cleaned_control_chars, count(*) FILTER (text = '') AS dropped_empty_text FROM cleaned")
    # 2. per key: conflicting labels, and the kept row, the smallest (id, group, category, rating)
    tie = ", ".join(['id'] + [f'"{c}"' for c in extra] + ["rowid"])
    con.execute(f"""CREATE TEMP TABLE keys AS
        SELECT _key1, _key2, min(label) <> max(label) AS _conflict, count(*) AS _n,
               arg_min(rowid, ({tie})) AS _r FROM cleaned WHERE text <> '' GROUP BY _key1, _key2""")
    counts.update(_counts(con, "SELECT coalesce(sum(_n - 1) FILTER (NOT _conflict), 0) AS dropped_duplicates, "
                               "coalesce(sum(_n) FILTER (_conflict), 0) AS dropped_conflicting_labels FROM keys"))
    con.execute(f"""CREATE TEMP TABLE deduped AS
        SELECT k._r, k._key1, k._key2, c._words, {', '.join('c.' + x for x in narrow.split(', '))}
        FROM keys k JOIN cleaned c ON c.rowid = k._r WHERE NOT k._conflict""")
    con.execute("DROP TABLE keys")
    counts.update(_counts(con, f"""SELECT count(*) FILTER (_words < {int(min_words)}) AS dropped_too_short,
        count(*) FILTER (_words > {int(max_words)}) AS dropped_too_long FROM deduped"""))
    # 3. length filter
    con.execute(f"""CREATE TEMP TABLE kept AS SELECT * EXCLUDE (_words) FROM deduped
        WHERE _words BETWEEN {int(min_words)} AND {int(max_words)}""")
    con.execute("DROP TABLE deduped")
    n = con.execute("SELECT count(*) FROM kept").fetchone()[0]
    if n == 0:
        raise PeftlabError(f"no rows left after cleaning and filtering ({counts}); "
                           f"check split.min_words / split.max_words")
    # 4. assignment
    if grouped:
        bound_test = test * n
        bound_val = bound_test + val * n     # the bounds the old row-target fill used, summed the same way
        con.execute(f"""CREATE TEMP TABLE owner AS
            WITH g AS (SELECT coalesce("group", '') AS _g, count(*) AS size FROM kept GROUP BY _g),
                 u AS (SELECT _g, size, py_unit(_g) AS _u FROM g),
                 c AS (SELECT _g, coalesce(sum(size) OVER (ORDER BY _u, _g ROWS BETWEEN UNBOUNDED PRECEDING
                                                            AND 1 PRECEDING), 0) AS filled FROM u)
            SELECT _g, CASE WHEN filled < {bound_test!r} THEN 'test' WHEN filled < {bound_val!r} THEN 'val'
                            ELSE 'train' END AS _split FROM c""")
        con.execute("""CREATE TEMP TABLE assigned AS SELECT k.*, o._split FROM kept k
                       JOIN owner o ON coalesce(k."group", '') = o._g""")
    else:
        per_class = dict(con.execute("SELECT label, count(*) FROM kept GROUP BY label").fetchall())
        cuts = pd.DataFrame([(int(c), int(round(m * test)), int(round(m * test)) + int(round(m * val)))
                             for c, m in per_class.items()], columns=["label", "n_test", "n_test_val"])
        con.register("cuts", cuts)
        con.execute("""CREATE TEMP TABLE assigned AS
            WITH u AS (SELECT *, py_unit(id) AS _u FROM kept),
                 r AS (SELECT *, row_number() OVER (PARTITION BY label ORDER BY _u, id) AS _pos FROM u)
            SELECT r.* EXCLUDE (_pos, _u), CASE WHEN _pos <= n_test THEN 'test' WHEN _pos <= n_test_val
                                                THEN 'val' ELSE 'train' END AS _split
            FROM r JOIN cuts USING (label)""")
    con.execute("DROP TABLE kept")
    check_leakage(con, "assigned", grouped)
    counts["kept_rows"] = n
    return out_cols, counts


def check_leakage(con, table: str, grouped: bool = False) -> None:
    """Fail if one normalised text (`_key1`, `_key2`) or, for grouped splits, one group sits in two splits."""
    row = con.execute(f"""SELECT any_value(_r), min(_split), max(_split) FROM {table} GROUP BY _key1, _key2
                          HAVING min(_split) <> max(_split) LIMIT 1""").fetchone()
    if row:
        text = con.execute("SELECT text FROM cleaned WHERE rowid = ?", [row[0]]).fetchone()[0]
        raise PeftlabError(f"leakage: the text {text[:60]!r} is in both {row[1]} and {row[2]}")
    if grouped:
        row = con.execute(f"""SELECT "group", min(_split), max(_split) FROM {table} WHERE "group" IS NOT NULL
                              GROUP BY "group" HAVING min(_split) <> max(_split) LIMIT 1""").fetchone()
        if row:
            raise PeftlabError(f"leakage: group {row[0]!r} is in both {row[1]} and {row[2]}")


def split_stats(con, labels: list[str]) -> dict:
    got = {(s, int(l)): int(c) for s, l, c in
           con.execute("SELECT _split, label, count(*) FROM assigned GROUP BY ALL").fetchall()}
    return {s: {"n": sum(c for (t, _), c in got.items() if t == s),
                **{l: got.get((s, i), 0) for i, l in enumerate(labels)}} for s in SPLITS}


def write_splits(params: Params, files: list[Path], labels: list[str], out: Path) -> dict:
    """The split stage's work into folder `out`: {train,val,test}.parquet; returns metrics/split.json's stats."""
    sp = params.split
    with connect(sp.memory_limit_mb, sp.threads, out.parent) as con:
        out_cols, counts = split_tables(con, files, labels, sp.val, sp.test, params.seed, sp.grouped,
                                        sp.min_words, sp.max_words)
        stats = {"counts": counts, **split_stats(con, labels)}
        for name in SPLITS:
            if stats[name]["n"] == 0:
                raise PeftlabError(f"the {name} split is empty ({counts['kept_rows']} rows in all); "
                                   f"raise split.{name if name != 'train' else 'val/test'} or use more data")
        cols = ", ".join(f'c."{c}"' for c in out_cols)
        for name in SPLITS:   # sorted by id: the files do not depend on the source order
            con.execute(f"COPY (SELECT {cols} FROM assigned a JOIN cleaned c ON c.rowid = a._r "
                        f"WHERE a._split = '{name}' ORDER BY c.id) TO {sql_str(out / f'{name}.parquet')} "
                        f"(FORMAT parquet)")
    return stats


def stratified_sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """About n rows with the class proportions of df, by seed (all rows when there are fewer)."""
    if len(df) <= n:
        return df
    return (df.groupby("label", group_keys=False).sample(frac=n / len(df), random_state=seed)
            .sort_values("id").reset_index(drop=True))


def read_labels(data_dir: str | Path) -> list[str]:
    """The label order every later stage uses, carried from fetch through split in manifest.json."""
    return read_json(Path(data_dir) / "manifest.json")["labels"]


def read_split(splits_dir: str | Path, name: str) -> pd.DataFrame:
    path = Path(splits_dir) / f"{name}.parquet"
    if not path.exists():
        raise PeftlabError(f"{path} not found; run `dvc repro split` first")
    return pd.read_parquet(path)


def run_split(params: Params, raw_dir: str | Path, out_dir: str | Path, metrics_path: str | Path,
              extra_metrics: Callable[[Path], dict] | None = None) -> dict:
    """split stage: data/raw -> data/splits/{train,val,test}.parquet + metrics/split.json.

    `extra_metrics(out_dir)` adds keys to metrics/split.json only (the stage's truncation share, which depends
    on the model), never to data/splits, so the split files stay byte for byte the same when the model changes.
    """
    raw_dir = Path(raw_dir)
    manifest = read_json(raw_dir / "manifest.json")
    with atomic_path(out_dir, is_dir=True) as tmp:
        stats = write_splits(params, raw_files(raw_dir, manifest), manifest["labels"], tmp)
        write_json(tmp / "manifest.json", {**manifest, "split": stats})
    stats = {**stats, **(extra_metrics(Path(out_dir)) if extra_metrics else {})}
    write_json(metrics_path, stats)
    print("split: " + ", ".join(f"{n}={stats[n]['n']}" for n in SPLITS) + f" (from {stats['counts']['input_rows']};"
          f" dropped duplicates={stats['counts']['dropped_duplicates']},"
          f" conflicting={stats['counts']['dropped_conflicting_labels']})", file=sys.stdout)
    return stats
