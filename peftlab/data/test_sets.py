"""Several named test sets for evaluate: slices of the test split and extra labelled sources.

`evaluate.test_sets` in params.yaml maps a name to one of
- a slice of the test split: `{split_by: <column>, values: [...]}`, `{split_by: <column>, range: [lo, hi]}`
  (both bounds inclusive) or `{split_by: <column>, quantiles: [qlo, qhi]}` (columns of the data contract:
  category, group, rating, label_text, or `words`, the review's word count); no extra inference, the test
  split's predictions are reused. Quantiles are taken of the test split's own values (numpy's default, linear
  interpolation), so the cut follows the data rather than a number sized for one dataset: a row is in the set
  when lo <= value < hi, with hi inclusive at qhi = 1, so [0, 0.5] and [0.5, 1] partition the test split
  exactly. The resolved bounds go to the metrics (`bounds`, `bounds_rule`);
- an extra source: `{dataset: <catalog key>, ...overrides}` or `{source: hf:... | local:... | pypi:..., ...}`
  with the usual column mapping (text_column, label_column, label_map, text_template, ...), e.g. OrgAccess'
  `hard` split or the IMDB test split for a model trained on Rotten Tomatoes. Its rows are cleaned like the
  training data, and rows whose normalised text was in train or val are dropped (and counted), so an extra
  set never scores the model on what it learned from.

Results go to metrics/evaluate.json as `test_sets: {name: {n, accuracy, f1_macro, ...}}` (the main `test`
included) and, where a set has a category column, `categories: {set: {category: {n, accuracy, f1_macro}}}`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from peftlab.core.errors import PeftlabError
from peftlab.core.metrics import accuracy, classification_metrics, f1_macro


@dataclass
class TestSet:
    name: str
    frame: pd.DataFrame            # contract columns
    rows: np.ndarray | None        # positions in the test split (slices), None for an extra source
    info: dict


def _slice(name: str, spec: dict, test: pd.DataFrame) -> TestSet:
    col = spec["split_by"]
    if col == "words":
        values = test["text"].str.split().str.len()
    elif col in test.columns:
        values = test[col]
    else:
        raise PeftlabError(f"evaluate.test_sets.{name}: the test split has no {col!r} column (columns: "
                           f"{', '.join(test.columns)}); allowed: a column the data has, or words")
    info: dict = {"split_by": col}
    if "range" in spec:
        lo, hi = spec["range"]
        num = pd.to_numeric(values, errors="coerce")
        mask = (num >= lo) & (num <= hi)
    elif "quantiles" in spec:
        num = pd.to_numeric(values, errors="coerce")
        known = num.dropna().to_numpy(dtype=float)
        if len(known) == 0:
            raise PeftlabError(f"evaluate.test_sets.{name}: the test split's {col!r} has no numeric values; "
                               f"allowed: quantiles of a numeric column (words, rating)")
        qlo, qhi = spec["quantiles"]
        lo, hi = (float(np.quantile(known, q)) for q in (qlo, qhi))
        last = qhi >= 1
        mask = (num >= lo) & ((num <= hi) if last else (num < hi))
        info.update(quantiles=[qlo, qhi], bounds=[lo, hi],
                    bounds_rule=f"{lo:g} <= {col} {'<=' if last else '<'} {hi:g}")
    else:
        keys = {str(v) for v in spec["values"]}
        mask = values.map(lambda v: (str(int(v)) if isinstance(v, float) and float(v).is_integer() else str(v))
                          in keys)
    rows = np.flatnonzero(mask.to_numpy(dtype=bool))
    if len(rows) == 0:
        raise PeftlabError(f"evaluate.test_sets.{name} = {spec} selects no test rows; check the values/range "
                           f"against the test split's {col!r}")
    return TestSet(name, test.iloc[rows].reset_index(drop=True), rows, info)


def _seen_keys(splits_dir: Path) -> np.ndarray:
    """64-bit hashes of every normalised train and val text, read chunk by chunk."""
    from peftlab.data.clean import hash64, normalize_for_dedupe

    keys = []
    for s in ("train", "val"):
        path = Path(splits_dir) / f"{s}.parquet"
        if path.exists():
            for batch in pq.ParquetFile(path).iter_batches(columns=["text"], batch_size=100_000):
                keys.append(hash64(normalize_for_dedupe(t) for t in batch.column("text").to_pylist()))
    return np.unique(np.concatenate(keys)) if keys else np.empty(0, dtype=np.uint64)


def _source(name: str, spec: dict, labels: list[str], seen: np.ndarray, seed: int) -> TestSet:
    from peftlab.data.clean import clean_frame, dedupe, hash64, normalize_for_dedupe
    from peftlab.data.sources import load_catalog, read_source_frame, resolve_entry, to_contract
    from peftlab.data.split import stratified_sample
    from peftlab.data.stream import apply_text_template

    overrides = {k: v for k, v in spec.items() if k not in ("dataset", "max_rows")}
    if "dataset" in spec:
        entry = resolve_entry("datasets", spec["dataset"], overrides, load_catalog(),
                              f"evaluate.test_sets.{name}.dataset")
    else:
        entry = {**overrides, "name": name}
    entry.pop("streaming", None)    # a test set is read whole (a max_rows cap keeps it small)
    raw, names = read_source_frame(entry)
    raw, entry = apply_text_template(raw, entry)
    df, counts = to_contract(raw, entry, labels, names)
    df, c = clean_frame(df)
    counts.update(c)
    df, c = dedupe(df)
    counts.update(c)
    seen_rows = np.isin(hash64(normalize_for_dedupe(t) for t in df["text"]), seen)
    counts["dropped_seen_in_train_or_val"] = int(seen_rows.sum())
    df = df[~seen_rows].drop(columns=["_key"], errors="ignore").reset_index(drop=True)
    if spec.get("max_rows"):
        df = stratified_sample(df, spec["max_rows"], seed)
    if df.empty:
        raise PeftlabError(f"evaluate.test_sets.{name} has no rows left ({counts}); check its source and mapping")
    return TestSet(name, df.reset_index(drop=True), None, {"source": entry["source"], "counts": counts})


def per_category(frame: pd.DataFrame, pred: np.ndarray, k: int) -> dict:
    """{category: {n, accuracy, f1_macro}}: where a model fails, by product category or difficulty."""
    if "category" not in frame.columns or frame["category"].isna().all():
        return {}
    y = frame["label"].to_numpy()
    out = {}
    for cat, idx in sorted(frame.groupby(frame["category"].astype(str)).indices.items()):
        out[cat] = {"n": int(len(idx)), "accuracy": accuracy(y[idx], pred[idx]),
                    "f1_macro": f1_macro(y[idx], pred[idx], k)}
    return out


def evaluate_test_sets(spec: dict, test: pd.DataFrame, probs: np.ndarray, main: dict, labels: list[str],
                       splits_dir: str | Path, bootstrap: int, seed: int,
                       predict: Callable[[list[str]], np.ndarray]) -> dict:
    """The `test_sets` and `categories` keys for metrics/evaluate.json (empty when there is nothing to add)."""
    pred = probs.argmax(axis=1)
    results, cats = {}, {}
    test_cats = per_category(test, pred, len(labels))
    if test_cats:
        cats["test"] = test_cats
    if not spec:
        return {"categories": cats} if cats else {}
    results["test"] = {k: v for k, v in main.items() if k not in ("test_sets", "categories")}
    seen = _seen_keys(Path(splits_dir)) if any("split_by" not in s for s in spec.values()) else None
    for name, s in spec.items():
        ts = _slice(name, s, test) if "split_by" in s else _source(name, s, labels, seen, seed)
        p = probs[ts.rows] if ts.rows is not None else predict(ts.frame["text"].tolist())
        y = ts.frame["label"].to_numpy()
        m = classification_metrics(y, p.argmax(axis=1), p, labels, bootstrap=bootstrap, seed=seed)
        results[name] = {**m, **ts.info}
        c = per_category(ts.frame, p.argmax(axis=1), len(labels))
        if c:
            cats[name] = c
        cut = f" ({ts.info['bounds_rule']})" if "bounds_rule" in ts.info else ""
        print(f"  test set {name}{cut}: accuracy {m['accuracy']:.4f}, macro F1 {m['f1_macro']:.4f}, n={m['n']}")
    return {"test_sets": results, **({"categories": cats} if cats else {})}
