"""Text rules in Python: cleaning, normalisation for duplicate detection, the seeded unit hash.

The split (peftlab/data/split.py) runs the same rules as DuckDB queries and calls these only where SQL lacks a
rule; extra test sets (peftlab/data/test_sets.py) use them on their small frames directly.
"""
from __future__ import annotations

import html
import re
import unicodedata

import numpy as np
import pandas as pd

from peftlab.core.io import stable_hash

_TAG = re.compile(r"<[^>]{0,200}>")


_WS = re.compile(r"\s+")


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
CONTROL_CHARS = _CONTROL   # the class clean_text removes; split.py builds its SQL class beside it


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
    """Keep one row per normalised text; drop every copy of a text that appears with conflicting labels.

    Of duplicates, the row with the smallest (id, text) is kept, so the result does not depend on the row order
    (the split's rule); kept rows stay in their input order."""
    key = df["text"].map(lambda t: stable_hash(normalize_for_dedupe(t)))
    df = df.assign(_key=key)
    n_labels = df.groupby("_key")["label"].nunique()
    conflicting = set(n_labels[n_labels > 1].index)
    conflict_rows = df["_key"].isin(conflicting)
    by = [c for c in ("id", "text") if c in df.columns]
    kept = df[~conflict_rows].sort_values(by, kind="stable").drop_duplicates("_key", keep="first").sort_index()
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


def unit_intervals(seed: int, keys) -> np.ndarray:
    """unit_interval for many keys at once (the same numbers: the first 52 bits of the same blake2b digest)."""
    import hashlib

    prefix = f"{seed}\x00".encode()
    blake = hashlib.blake2b
    return np.array([int.from_bytes(blake(prefix + k.encode("utf-8", "surrogatepass") + b"\x00",
                                          digest_size=16).digest()[:7], "big") >> 4 for k in keys],
                    dtype=np.float64) / 16**13


def hash64(values) -> np.ndarray:
    """64-bit content hashes (stable_hash) of strings: the keys test sets compare with train and val."""
    return np.array([int(stable_hash(v), 16) for v in values], dtype=np.uint64)
