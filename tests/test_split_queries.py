"""The split on DuckDB, the one path for every size: the rules of peftlab/data/clean.py, applied as queries,
and an assignment that is a function of the rows' content and the seed only."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from peftlab.config.params import Params, build
from peftlab.core.errors import PeftlabError
from peftlab.core.io import stable_hash
from peftlab.data.clean import clean_text, normalize_for_dedupe, unit_interval, unit_intervals
from peftlab.data.split import check_leakage, run_split

LABELS = ["negative", "positive"]
SPLITS = ("train", "val", "test")
# Texts whose normalisation needs each rule: HTML tags and entities, NFKC, casefold, Unicode spaces, controls.
TRICKY = ["Great <br /> FILM!&amp;", "great   film!&", "ＦＵＬＬ width", "full WIDTH", "Straße", "STRASSE",
          "tab\there\u00a0nbsp", "TAB here nbsp", "ideo\u3000space", "IDEO space", "ctl\x00\x07 char", "ctl char",
          "  lead and trail  ", "Lead AND trail", "<i>x</i> y", "X Y", "caf\u00e9", "cafe\u0301", "a&b", "A&amp;B",
          "sigma \u03a3\u03c3\u03c2", "Sigma \u03c3\u03c3\u03c3", "\u2028line sep", "line sep"]


def messy_frame(n: int = 3000, seed: int = 0, groups: int | None = None) -> pd.DataFrame:
    """Imbalanced labels, exact and case/HTML/Unicode duplicates, conflicting labels, empty and long texts."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    text = [f"review {i} {'nice' if v else 'poor'} " + "w " * int(rng.integers(0, 30)) for i, v in enumerate(y)]
    for i in range(0, n, 50):
        text[i + 1] = text[i].upper() + " <br />"          # a duplicate after normalisation
        y[i + 1] = y[i] if i % 100 else 1 - y[i]            # every other one with the other label
    for j, t in enumerate(TRICKY):
        text[n - 1 - j] = t
        y[n - 1 - j] = j % 3 == 0
    text[7] = " \x00 "
    df = pd.DataFrame({"id": [stable_hash("t", t) for t in text], "text": text, "label": y,
                       "label_text": np.where(y == 1, "positive", "negative")})
    df.loc[40, "id"] = df.loc[41, "id"] = stable_hash("t", "same id")          # one id twice, two texts
    if groups:
        df["group"] = [f"g{int(g)}" for g in rng.integers(0, groups, n)]
    return df


def write_raw(raw: Path, df: pd.DataFrame, n_shards: int = 1, row_group_size: int | None = None) -> Path:
    raw.mkdir(parents=True)
    manifest = {"name": "toy", "labels": LABELS}
    if n_shards == 1:
        df.to_parquet(raw / "data.parquet", index=False, row_group_size=row_group_size)
    else:
        manifest["shards"] = []
        for i, part in enumerate(np.array_split(np.arange(len(df)), n_shards)):
            manifest["shards"].append(f"data-{i:05d}.parquet")
            df.iloc[part].to_parquet(raw / manifest["shards"][-1], index=False, row_group_size=row_group_size)
    (raw / "manifest.json").write_text(json.dumps(manifest))
    return raw


def params(**split) -> Params:
    p = Params()
    p.split = build(type(p.split), {"max_words": 25, **split}, "split")
    return p


def split_of(tmp: Path, df: pd.DataFrame, name: str, n_shards: int = 1, row_group_size: int | None = None,
             **split) -> tuple[dict[str, pd.DataFrame], dict]:
    raw = write_raw(tmp / f"raw-{name}", df, n_shards, row_group_size)
    stats = run_split(params(**split), raw, tmp / f"splits-{name}", tmp / f"{name}.json")
    return {s: pd.read_parquet(tmp / f"splits-{name}" / f"{s}.parquet") for s in SPLITS}, stats


def reference(df: pd.DataFrame, val: float, test: float, seed: int, max_words: int) -> dict[str, set]:
    """The split's rules written plainly with the Python text functions: what the queries must reproduce."""
    df = df.assign(text=df["text"].map(clean_text))
    df = df[df["text"] != ""]
    df = df.assign(key=df["text"].map(normalize_for_dedupe))
    bad = df.groupby("key")["label"].transform("nunique") > 1
    df = df[~bad].sort_values(["id", "text"]).drop_duplicates("key")
    df = df[df["text"].str.split().str.len() <= max_words]
    out = {s: set() for s in SPLITS}
    for _, part in df.groupby("label"):
        ranked = part.assign(u=[unit_interval(seed, i) for i in part["id"]]).sort_values(["u", "id"])
        n_test, n_val = int(round(len(part) * test)), int(round(len(part) * val))
        out["test"] |= set(ranked["id"][:n_test])
        out["val"] |= set(ranked["id"][n_test:n_test + n_val])
        out["train"] |= set(ranked["id"][n_test + n_val:])
    return out


def test_the_queries_apply_the_python_rules_exactly(tmp_path):
    df = messy_frame()
    parts, stats = split_of(tmp_path, df, "a")
    want = reference(df, 0.1, 0.1, 42, 25)
    for s in SPLITS:
        assert set(parts[s]["id"]) == want[s]
        assert list(parts[s]["id"]) == sorted(parts[s]["id"])                   # sorted by id
        assert list(parts[s].columns) == ["id", "text", "label", "label_text"]
        assert all(clean_text(t) == t for t in parts[s]["text"])
    c = stats["counts"]
    assert c["dropped_duplicates"] > 0 and c["dropped_conflicting_labels"] > 0 and c["dropped_too_long"] > 0
    assert c["cleaned_control_chars"] == 1 and c["dropped_empty_text"] == 1
    assert list(c) == ["input_rows", "cleaned_control_chars", "dropped_empty_text", "dropped_duplicates",
                       "dropped_conflicting_labels", "dropped_too_short", "dropped_too_long", "kept_rows"]
    assert stats == json.loads((tmp_path / "a.json").read_text())
    assert json.loads((tmp_path / "splits-a" / "manifest.json").read_text())["split"] == stats
    assert not list(tmp_path.glob(".duckdb-spill-*")) and not list(tmp_path.glob(".splits-a.*"))


def test_the_kept_duplicate_is_the_smallest_id_whatever_the_order(tmp_path):
    df = pd.DataFrame({"text": ["Nice FILM", "nice film", "nice   <b>film</b>"] + [f"other {i}" for i in range(60)],
                       "label": [1, 1, 1] + [i % 2 for i in range(60)]})
    df["id"] = [stable_hash("t", t) for t in df["text"]]
    df["label_text"] = np.where(df["label"] == 1, "positive", "negative")
    smallest = min(df["id"][:3])
    for name, rows in (("in-order", df), ("reversed", df.iloc[::-1])):
        parts, stats = split_of(tmp_path, rows, name)
        kept = pd.concat(parts.values())
        assert smallest in set(kept["id"]) and not set(df["id"][:3]) - {smallest} & set(kept["id"])
        assert stats["counts"]["dropped_duplicates"] == 2


@pytest.mark.parametrize("grouped", [False, True])
def test_same_assignment_across_chunking_row_order_and_threads(tmp_path, grouped):
    df = messy_frame(2000, groups=150 if grouped else None)
    base, base_stats = split_of(tmp_path, df, "base", grouped=grouped)
    variants = {"shards-rg37": dict(rows=df, n_shards=3, row_group_size=37),
                "shuffled": dict(rows=df.sample(frac=1.0, random_state=5)),
                "shuffled-shards-1thread": dict(rows=df.sample(frac=1.0, random_state=9), n_shards=4, threads=1),
                "2threads-tiny-memory": dict(rows=df, threads=2, memory_limit_mb=64)}
    for name, v in variants.items():
        rows = v.pop("rows")
        parts, stats = split_of(tmp_path, rows, name, grouped=grouped, **v)
        assert stats == base_stats, name
        for s in SPLITS:
            assert parts[s].equals(base[s]), (name, s)          # the same rows, texts and order


def test_grouped_split_fills_test_then_val_with_whole_groups(tmp_path):
    df = messy_frame(4000, groups=400)
    parts, stats = split_of(tmp_path, df, "g", grouped=True)
    owner = {}
    for s in SPLITS:
        for g in parts[s]["group"].unique():
            assert owner.setdefault(g, s) == s
    kept = stats["counts"]["kept_rows"]
    for s in ("test", "val"):   # filled group by group up to 10% of the rows: at most one group over
        assert 0.1 * kept <= stats[s]["n"] < 0.1 * kept + 40
    assert parts["test"]["group"].nunique() > 20


def test_grouped_without_a_group_column_and_all_filtered_are_clear_errors(tmp_path):
    write_raw(tmp_path / "raw", messy_frame(200))
    with pytest.raises(PeftlabError, match="split.grouped is true but the dataset has no group column"):
        run_split(params(grouped=True), tmp_path / "raw", tmp_path / "s", tmp_path / "s.json")
    with pytest.raises(PeftlabError, match="no rows left after cleaning"):
        run_split(params(min_words=100, max_words=200), tmp_path / "raw", tmp_path / "s", tmp_path / "s.json")
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.json").exists()
    assert not list(tmp_path.glob(".duckdb-spill-*")) and not list(tmp_path.glob(".s.*"))


def test_leakage_check_fails_when_one_text_or_group_lands_in_two_splits():
    con = duckdb.connect()
    con.execute("CREATE TABLE cleaned AS SELECT * FROM (VALUES ('Same review.'), ('same  REVIEW.')) t(text)")
    con.execute("""CREATE TABLE a AS SELECT * FROM (VALUES (0, 1::UBIGINT, 2::UBIGINT, 'm1', 'train'),
                   (1, 1::UBIGINT, 2::UBIGINT, 'm2', 'test')) t(_r, _key1, _key2, "group", _split)""")
    with pytest.raises(PeftlabError, match=r"leakage: the text '(Same review.|same  REVIEW.)' is in both test "
                                           r"and train"):
        check_leakage(con, "a")
    con.execute("""CREATE TABLE b AS SELECT * FROM (VALUES (0, 1::UBIGINT, 2::UBIGINT, 'm1', 'train'),
                   (1, 1::UBIGINT, 3::UBIGINT, 'm1', 'test')) t(_r, _key1, _key2, "group", _split)""")
    check_leakage(con, "b")
    with pytest.raises(PeftlabError, match="leakage: group 'm1' is in both test and train"):
        check_leakage(con, "b", grouped=True)


def test_unit_intervals_are_unit_interval():
    keys = [stable_hash("t", str(i)) for i in range(500)] + ["", "é\u3000x"]
    assert list(unit_intervals(42, keys)) == [unit_interval(42, k) for k in keys]
