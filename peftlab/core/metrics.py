"""Classification metrics in the one schema every evaluated thing writes (DESIGN.md), by scikit-learn,
with bootstrap 95% CIs by scipy, and curves for ROC/PR plots."""
from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def _auc_scores(y: np.ndarray, probs: np.ndarray, k: int) -> tuple[float | None, float | None]:
    """ROC AUC and PR AUC (average precision); one-vs-rest macro when multi-class; None if undefined."""
    if probs is None or len(np.unique(y)) < 2:
        return None, None
    if k == 2:
        return float(skm.roc_auc_score(y, probs[:, 1])), float(skm.average_precision_score(y, probs[:, 1]))
    present = np.unique(y)
    onehot = np.eye(k)[y][:, present]
    p = probs[:, present]
    roc = float(skm.roc_auc_score(onehot, p, average="macro")) if len(present) > 1 else None
    return roc, float(skm.average_precision_score(onehot, p, average="macro"))


def bootstrap_ci(y: np.ndarray, pred: np.ndarray, statistic, n_resamples: int, seed: int) -> list[float] | None:
    """Percentile bootstrap 95% CI of statistic(y, pred), resampling rows in pairs."""
    if n_resamples <= 0 or len(y) < 2:
        return None
    res = stats.bootstrap((y, pred), statistic, paired=True, vectorized=False, n_resamples=n_resamples,
                          method="percentile", confidence_level=0.95, random_state=seed)
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def proportion_ci(successes: int, n: int) -> list[float] | None:
    """Wilson 95% CI of a proportion (statsmodels): unlike the normal approximation it stays inside [0, 1] and
    is not zero-width at 0 or n successes, which detection rates near 0 or 1 on a few hundred rows hit."""
    from statsmodels.stats.proportion import proportion_confint

    if n <= 0:
        return None
    lo, hi = proportion_confint(int(successes), int(n), alpha=0.05, method="wilson")
    # exact at the ends: statsmodels gives ~1e-17 for the lower bound of 0 of n, which is 0
    return [0.0 if successes == 0 else float(lo), 1.0 if successes == n else float(hi)]


def accuracy(y, pred) -> float:
    return float(np.mean(np.asarray(y) == np.asarray(pred)))


def f1_macro(y, pred, k: int | None = None) -> float:
    labels = list(range(k)) if k else None
    return float(skm.f1_score(y, pred, average="macro", labels=labels, zero_division=0))


# A model "collapsed" when its predictions put at least this share of the rows in one class while that class
# holds less than this share of the true labels: predicting the majority of a 95/5 set is not a collapse.
COLLAPSE_PRED_SHARE = 0.95
COLLAPSE_LABEL_SHARE = 0.80


def collapse(y, pred, labels: list[str], pred_share: float = COLLAPSE_PRED_SHARE,
             label_share: float = COLLAPSE_LABEL_SHARE) -> dict:
    """Whether predictions collapsed onto one class: {collapsed, collapsed_class, pred_share, label_share}.

    Why: a model that learned nothing predicts the majority class and scores the majority share as accuracy,
    which on an imbalanced set looks like a result. `pred_share` is the most predicted class's share of all
    rows (unparsed answers, -1, count in the total but in no class); `label_share` that class's share of the
    true labels. collapsed_class is None unless collapsed.
    """
    y, pred = np.asarray(y, dtype=int), np.asarray(pred, dtype=int)
    if len(pred) == 0:
        return {"collapsed": False, "collapsed_class": None, "pred_share": 0.0, "label_share": 0.0}
    counts = np.bincount(pred[pred >= 0], minlength=len(labels))
    top = int(np.argmax(counts))
    share, held = float(counts[top] / len(pred)), float(np.mean(y == top))
    collapsed = share >= pred_share and held < label_share
    return {"collapsed": bool(collapsed), "collapsed_class": labels[top] if collapsed else None,
            "pred_share": share, "label_share": held}


def collapse_warning(name: str, y, pred, labels: list[str]) -> str | None:
    """The one-line warning evaluate and baseline print to stderr for a collapsed model, else None."""
    c = collapse(y, pred, labels)
    if not c["collapsed"]:
        return None
    return (f"WARNING: {name} collapsed: it predicts {c['collapsed_class']!r} for {c['pred_share']:.1%} of the "
            f"{len(pred)} test rows, a class holding {c['label_share']:.1%} of their labels (flagged at >= "
            f"{COLLAPSE_PRED_SHARE:.0%} of predictions on a class under {COLLAPSE_LABEL_SHARE:.0%} of labels); "
            f"its accuracy is the class share, not learning (too few steps, lr, or imbalance: see train.min_steps, "
            f"train.class_weights)")


def classification_metrics(y: np.ndarray, pred: np.ndarray, probs: np.ndarray | None, labels: list[str],
                           bootstrap: int = 1000, seed: int = 42) -> dict:
    """The DESIGN.md schema: flat headline numbers, per-class dicts, confusion matrix, CIs.

    `pred` may hold -1 for "no answer" (an unparsable generation): it counts as wrong everywhere and is
    reported as `unparsed`, never silently turned into a class.
    """
    y, pred = np.asarray(y, dtype=int), np.asarray(pred, dtype=int)
    k = len(labels)
    idx = list(range(k))
    p, r, f, support = skm.precision_recall_fscore_support(y, pred, labels=idx, zero_division=0)
    roc, pr = _auc_scores(y, probs, k)
    c = collapse(y, pred, labels)
    out = {
        "accuracy": accuracy(y, pred),
        "f1_macro": float(np.mean(f)),
        "precision_macro": float(np.mean(p)),
        "recall_macro": float(np.mean(r)),
        "roc_auc": roc,
        "pr_auc": pr,
        "n": int(len(y)),
        "unparsed": int(np.sum(pred < 0)),
        "collapsed": c["collapsed"],
        "collapsed_class": c["collapsed_class"],
        "f1": {l: float(v) for l, v in zip(labels, f)},
        "precision": {l: float(v) for l, v in zip(labels, p)},
        "recall": {l: float(v) for l, v in zip(labels, r)},
        "support": {l: int(v) for l, v in zip(labels, support)},
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=idx).tolist(),
        "ci95": {
            "accuracy": bootstrap_ci(y, pred, accuracy, bootstrap, seed),
            "f1_macro": bootstrap_ci(y, pred, lambda a, b: f1_macro(a, b, k), bootstrap, seed),
        },
    }
    return out


def curves(y: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict[str, list[dict]]:
    """ROC and PR points for the positive class (binary) or each class one-vs-rest, as plot rows."""
    y = np.asarray(y, dtype=int)
    classes = [1] if len(labels) == 2 else range(len(labels))
    roc_rows, pr_rows = [], []
    for c in classes:
        yc = (y == c).astype(int)
        if yc.min() == yc.max():
            continue
        fpr, tpr, _ = skm.roc_curve(yc, probs[:, c])
        prec, rec, _ = skm.precision_recall_curve(yc, probs[:, c])
        roc_rows += [{"class": labels[c], "fpr": float(a), "tpr": float(b)} for a, b in zip(fpr, tpr)]
        pr_rows += [{"class": labels[c], "recall": float(a), "precision": float(b)} for a, b in zip(rec, prec)]
    return {"roc": roc_rows, "pr": pr_rows}
