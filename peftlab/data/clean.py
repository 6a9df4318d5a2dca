"""Text rules every split path shares: cleaning, normalisation for duplicate detection, the seeded unit hash."""
from __future__ import annotations

import html
import re
import unicodedata

import pandas as pd

from peftlab.core.io import stable_hash

_TAG = re.compile(r"<[^>]{0,200}>")


_WS = re.compile(r"\s+")


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str) -> str:
    """What the models see: control characters (NUL included) removed, whitespace runs collapsed."""
    return _WS.sub(" ", _CONTROL.sub("", text)).strip()


def normalize_for_dedupe(text: str) -> str:
    """Two reviews that differ only in case, spacing, HTML markup or Unicode form count as one."""
    t = html.unescape(_TAG.sub(" ", text))
    t = unicodedata.normalize("NFKC", t).casefold()
    return _WS.sub(" ", t).strip()


def clean_frame(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Clean texts and drop rows with nothing left; return counts of what was cleaned and dropped."""
    raw = df["text"].astype(str)
    text = raw.map(clean_text)
    empty = text.str.len() == 0
    control = raw.str.contains(_CONTROL) & ~empty     # NUL and other control characters removed from kept rows
    out = df.assign(text=text)[~empty].reset_index(drop=True)
    return out, {"cleaned_control_chars": int(control.sum()), "dropped_empty_text": int(empty.sum())}


def dedupe(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Keep one row per normalised text; drop every copy of a text that appears with conflicting labels."""
    key = df["text"].map(lambda t: stable_hash(normalize_for_dedupe(t)))
    df = df.assign(_key=key)
    n_labels = df.groupby("_key")["label"].nunique()
    conflicting = set(n_labels[n_labels > 1].index)
    conflict_rows = df["_key"].isin(conflicting)
    kept = df[~conflict_rows].drop_duplicates("_key", keep="first")
    counts = {"dropped_duplicates": int(len(df) - conflict_rows.sum() - len(kept)),
              "dropped_conflicting_labels": int(conflict_rows.sum())}
    return kept.reset_index(drop=True), counts


def length_filter(df: pd.DataFrame, min_words: int, max_words: int) -> tuple[pd.DataFrame, dict]:
    n_words = df["text"].str.split().str.len()
    keep = (n_words >= min_words) & (n_words <= max_words)
    return df[keep].reset_index(drop=True), {"dropped_too_short": int((n_words < min_words).sum()),
                                             "dropped_too_long": int((n_words > max_words).sum())}


def unit_interval(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by (seed, key): the row's (or group's) place in the shuffle."""
    return int(stable_hash(str(seed), key, n=13), 16) / 16**13
