import numpy as np
import pandas as pd
import pytest

from conftest import toy_frame
from peftlab.core.errors import PeftlabError
from peftlab.core.io import stable_hash
from peftlab.data.clean import dedupe, normalize_for_dedupe
from peftlab.data.split import run_split


def split(tmp_path, df, val=0.1, test=0.1, seed=0, grouped=False, min_words=1, max_words=512):
    """run_split on df written as data/raw: ({split: frame}, stats)."""
    import json

    from peftlab.config.params import Params, build

    raw = tmp_path / f"raw-{len(list(tmp_path.iterdir()))}"
    raw.mkdir()
    df.to_parquet(raw / "data.parquet", index=False)
    (raw / "manifest.json").write_text(json.dumps({"name": "toy", "labels": ["negative", "positive"]}))
    p = Params()
    p.seed = seed
    p.split = build(type(p.split), {"val": val, "test": test, "grouped": grouped, "min_words": min_words,
                                    "max_words": max_words}, "split")
    stats = run_split(p, raw, raw.with_suffix(".splits"), raw.with_suffix(".json"))
    return {s: pd.read_parquet(raw.with_suffix(".splits") / f"{s}.parquet") for s in ("train", "val", "test")}, stats


def which(df, parts):
    where = {i: s for s, part in parts.items() for i in part["id"]}
    return df["id"].map(where)


def frame(n=1000, seed=0, p_pos=0.3, groups=None):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < p_pos).astype(int)
    text = [f"review {i} {'nice' if v else 'poor'}" for i, v in enumerate(y)]
    df = pd.DataFrame({"id": [stable_hash("t", t) for t in text], "text": text, "label": y,
                       "label_text": np.where(y == 1, "positive", "negative")})
    if groups:
        df["group"] = [f"g{int(g)}" for g in rng.integers(0, groups, n)]
    return df


def test_stratified_split_keeps_class_proportions(tmp_path):
    df = frame(2000, p_pos=0.3)
    w = which(df, split(tmp_path, df, val=0.1, test=0.2, seed=1)[0])
    for name, frac in (("test", 0.2), ("val", 0.1)):
        part = df[w == name]
        assert abs(len(part) - frac * len(df)) <= 2
        assert abs(part["label"].mean() - df["label"].mean()) < 0.005   # exact up to rounding per class


def test_split_is_deterministic_and_independent_of_row_order(tmp_path):
    df = frame(500)
    a = which(df, split(tmp_path, df, seed=42)[0])
    b = which(df, split(tmp_path, df.sample(frac=1.0, random_state=3), seed=42)[0])
    assert (a == b).all()
    c = which(df, split(tmp_path, df, seed=43)[0])
    assert (a != c).any()   # the seed matters


def test_grouped_split_keeps_each_group_in_one_split(tmp_path):
    df = frame(1500, groups=120)
    w = which(df, split(tmp_path, df, grouped=True)[0])
    per_group = pd.DataFrame({"g": df["group"], "s": w}).groupby("g")["s"].nunique()
    assert per_group.max() == 1
    assert 0.05 < (w == "test").mean() < 0.2


def test_grouped_split_without_group_column_is_a_clear_error(tmp_path):
    with pytest.raises(PeftlabError, match="data.group_column"):
        split(tmp_path, frame(50), grouped=True)


def test_dedupe_normalises_case_whitespace_and_html_and_drops_conflicts():
    assert normalize_for_dedupe("Great <br /> FILM!&amp;") == normalize_for_dedupe("great   film!&")
    df = pd.DataFrame({"text": ["Great film", "great  <br/> FILM", "Bad film", "bad film", "ok"],
                       "label": [1, 1, 0, 1, 1]})
    kept, counts = dedupe(df)
    assert list(kept["text"]) == ["Great film", "ok"]
    assert counts == {"dropped_duplicates": 1, "dropped_conflicting_labels": 2}


def test_split_cleans_filters_and_reports_counts(tmp_path):
    df = toy_frame(300)
    extra = pd.DataFrame([{"id": "x1", "text": "  \x00 ", "label": 0, "label_text": "negative"},
                          {"id": "x2", "text": df.loc[0, "text"].upper(), "label": int(df.loc[0, "label"]),
                           "label_text": df.loc[0, "label_text"]},
                          {"id": "x3", "text": "word " * 50, "label": 1, "label_text": "positive"}])
    parts, stats = split(tmp_path, pd.concat([df, extra], ignore_index=True), max_words=40)
    c = stats["counts"]
    assert (c["dropped_empty_text"], c["dropped_duplicates"], c["dropped_too_long"]) == (1, 1, 1)
    assert sum(stats[s]["n"] for s in ("train", "val", "test")) == c["kept_rows"] == 300
    assert stats["test"]["negative"] + stats["test"]["positive"] == stats["test"]["n"]


def test_empty_after_filtering_is_refused(tmp_path):
    with pytest.raises(PeftlabError, match="no rows left"):
        split(tmp_path, toy_frame(50), min_words=100, max_words=200)
