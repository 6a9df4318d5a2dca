"""Cleaning, duplicate removal, length filtering and the train/val/test split, with a leakage check.

The split is written by hand rather than with sklearn's splitters because it must give the same answer
however the data is chunked or ordered (so it scales past memory): each row's place is decided by a seeded
hash of its id (or of its group), ranked within its class, so only (id, label, group) are needed at once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from peftlab.config.params import Params
from peftlab.core.errors import PeftlabError
from peftlab.core.io import atomic_path, read_json, write_json
from peftlab.core.paths import SPLITS
from peftlab.data.clean import clean_frame, dedupe, length_filter, normalize_for_dedupe, unit_interval


def assign_splits(df: pd.DataFrame, val: float, test: float, seed: int, grouped: bool = False) -> pd.Series:
    """Stratified (and optionally grouped) assignment of each row to train/val/test.

    Ungrouped: within each class, rows ranked by their seeded hash; the first round(n*test) go to test, the
    next round(n*val) to val. Grouped: groups ranked by hash fill test, then val, up to the row targets, so no
    group spans two splits (stratification is then approximate: groups mix labels).
    """
    split = pd.Series("train", index=df.index, dtype=object)
    if grouped:
        if "group" not in df.columns or df["group"].isna().all():
            raise PeftlabError("split.grouped is true but the dataset has no group column; "
                               "set data.group_column (e.g. movie_name) or split.grouped: false")
        groups = df["group"].fillna("").astype(str)
        sizes = groups.value_counts()
        order = sorted(sizes.index, key=lambda g: unit_interval(seed, g))
        n = len(df)
        targets = [("test", test * n), ("val", val * n)]
        where, filled = {}, 0.0
        bound = 0.0
        for name, target in targets:
            bound += target
            for g in order:
                if g in where:
                    continue
                if filled >= bound:
                    break
                where[g] = name
                filled += sizes[g]
        split = groups.map(lambda g: where.get(g, "train"))
        return split.astype(object)
    u = df["id"].map(lambda i: unit_interval(seed, i))
    for _, idx in df.groupby("label").groups.items():
        ranked = u.loc[idx].sort_values(kind="stable").index
        n = len(ranked)
        n_test, n_val = int(round(n * test)), int(round(n * val))
        split.loc[ranked[:n_test]] = "test"
        split.loc[ranked[n_test:n_test + n_val]] = "val"
    return split


def check_leakage(parts: dict[str, pd.DataFrame], group: bool = False) -> None:
    """Fail if one normalised text (or, for grouped splits, one group) sits in two splits."""
    seen: dict[str, str] = {}
    for name, part in parts.items():
        for text in part["text"]:
            key = normalize_for_dedupe(text)
            other = seen.setdefault(key, name)
            if other != name:
                raise PeftlabError(f"leakage: the text {text[:60]!r} is in both {other} and {name}")
    if group:
        owner: dict[str, str] = {}
        for name, part in parts.items():
            for g in part["group"].dropna().unique():
                other = owner.setdefault(g, name)
                if other != name:
                    raise PeftlabError(f"leakage: group {g!r} is in both {other} and {name}")


def split_stats(parts: dict[str, pd.DataFrame], labels: list[str]) -> dict:
    stats: dict = {}
    for name, part in parts.items():
        counts = part["label"].value_counts()
        stats[name] = {"n": int(len(part)), **{l: int(counts.get(i, 0)) for i, l in enumerate(labels)}}
    return stats


def make_splits(df: pd.DataFrame, labels: list[str], val: float, test: float, seed: int, grouped: bool,
                min_words: int, max_words: int) -> tuple[dict[str, pd.DataFrame], dict]:
    """The whole split stage on an in-memory frame: clean, dedupe, filter, assign, check."""
    counts = {"input_rows": int(len(df))}
    for step in (clean_frame, dedupe, lambda d: length_filter(d, min_words, max_words)):
        df, c = step(df)
        counts.update(c)
    if df.empty:
        raise PeftlabError(f"no rows left after cleaning and filtering ({counts}); "
                           f"check split.min_words / split.max_words")
    df = df.drop(columns=["_key"], errors="ignore")
    which = assign_splits(df, val, test, seed, grouped)
    # A stable order inside each split (by id) so the written files do not depend on the source order.
    parts = {name: df[which == name].sort_values("id", kind="stable").reset_index(drop=True) for name in SPLITS}
    for name, part in parts.items():
        if part.empty:
            raise PeftlabError(f"the {name} split is empty ({len(df)} rows in all); "
                               f"raise split.{name if name != 'train' else 'val/test'} or use more data")
    check_leakage(parts, group=grouped)
    counts["kept_rows"] = int(len(df))
    stats = {"counts": counts, **split_stats(parts, labels)}
    return parts, stats


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
    from peftlab.data import split_scale  # streamed shards, or more rows than fit: the chunked path, same split

    if split_scale.wants_scaled(raw_dir, manifest):
        return split_scale.run_split_scaled(params, raw_dir, manifest, out_dir, metrics_path,
                                            extra_metrics=extra_metrics)
    df = pd.read_parquet(raw_dir / "data.parquet")
    sp = params.split
    parts, stats = make_splits(df, manifest["labels"], sp.val, sp.test, params.seed, sp.grouped,
                               sp.min_words, sp.max_words)
    with atomic_path(out_dir, is_dir=True) as tmp:
        for name, part in parts.items():
            part.to_parquet(tmp / f"{name}.parquet", index=False)
        write_json(tmp / "manifest.json", {**manifest, "split": stats})
    stats = {**stats, **(extra_metrics(Path(out_dir)) if extra_metrics else {})}
    write_json(metrics_path, stats)
    print("split: " + ", ".join(f"{n}={stats[n]['n']}" for n in SPLITS) + f" (from {stats['counts']['input_rows']};"
          f" dropped duplicates={stats['counts']['dropped_duplicates']},"
          f" conflicting={stats['counts']['dropped_conflicting_labels']})")
    return stats
