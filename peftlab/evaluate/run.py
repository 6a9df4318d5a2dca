"""evaluate stage: a trained adapter on the test split -> metrics, plots, predictions and tables."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from peftlab.config.params import Params
from peftlab.core.io import write_json, write_parquet
from peftlab.core.metrics import classification_metrics, collapse_warning, curves
from peftlab.core.paths import EvalPaths
from peftlab.data.split import read_split
from peftlab.data.test_sets import evaluate_test_sets
from peftlab.modeling.load import choose_device, load_trained
from peftlab.modeling.predict import predict_probs
from peftlab.report.format import metrics_row, write_tables
from peftlab.report.plots import plot_confusion, plot_curve


def prediction_frame(test: pd.DataFrame, probs: np.ndarray, pred: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """Per-row predictions keyed by id: what compare's paired tests (McNemar, bootstrap) join on."""
    out = pd.DataFrame({"id": test["id"].to_numpy(), "label": test["label"].to_numpy(), "pred": pred})
    for i, l in enumerate(labels):
        out[f"prob_{l}"] = probs[:, i]
    return out


def write_eval_outputs(name: str, m: dict, test: pd.DataFrame, probs: np.ndarray, pred: np.ndarray,
                       labels: list[str], paths: EvalPaths) -> None:
    """Everything evaluate writes for one method, shared by every method that is evaluated on the test split."""
    c = curves(test["label"].to_numpy(), probs, labels)
    write_json(paths.metrics, m)
    write_parquet(paths.predictions, prediction_frame(test, probs, pred, labels))
    write_json(paths.plots / "confusion.json",
               [{"actual": labels[a], "predicted": labels[p] if p >= 0 else "unparsed"}
                for a, p in zip(test["label"], pred)])
    write_json(paths.plots / "roc.json", c["roc"])
    write_json(paths.plots / "pr.json", c["pr"])
    plot_confusion(m["confusion_matrix"], labels, paths.plots / "confusion.png", title=f"{name}: test confusion")
    plot_curve(c["roc"], "fpr", "tpr", paths.plots / "roc.png", f"{name}: ROC (AUC {m['roc_auc'] or 0:.3f})",
               diagonal=True)
    plot_curve(c["pr"], "recall", "precision", paths.plots / "pr.png", f"{name}: PR (AP {m['pr_auc'] or 0:.3f})")
    table = pd.DataFrame([metrics_row(name, m)] + [metrics_row(f"{name} [{t}]", tm)
                                                   for t, tm in (m.get("test_sets") or {}).items() if t != "test"])
    write_tables(table, csv_path=paths.tables.with_suffix(".csv"), tex_path=paths.tables.with_suffix(".tex"),
                 caption=f"{name} on the test split (n={m['n']})")


def run_evaluate(params: Params, paths: EvalPaths, name: str = "main") -> dict:
    device = choose_device(params.model.device)
    model, tok, setup = load_trained(paths.adapter, device, merge=params.evaluate.merge_lora)
    test = read_split(paths.splits, "test")
    probs = predict_probs(model, tok, setup, test["text"].tolist(), params.evaluate.batch_size, device)
    pred = probs.argmax(axis=1)
    m = classification_metrics(test["label"].to_numpy(), pred, probs, setup.labels,
                               bootstrap=params.evaluate.bootstrap, seed=params.seed)
    m.update(evaluate_test_sets(
        params.evaluate.test_sets, test, probs, m, setup.labels, paths.splits, params.evaluate.bootstrap,
        params.seed, predict=lambda texts: predict_probs(model, tok, setup, texts, params.evaluate.batch_size, device)))
    write_eval_outputs(name, m, test, probs, pred, setup.labels, paths)
    warning = collapse_warning(f"run {name!r} ({params.model.name})", test["label"].to_numpy(), pred, setup.labels)
    if warning:
        print(warning, file=sys.stderr)
    ci = m["ci95"]["accuracy"] or [float("nan")] * 2
    print(f"evaluate {name}: accuracy {m['accuracy']:.4f} (95% CI {ci[0]:.4f}-{ci[1]:.4f}), "
          f"macro F1 {m['f1_macro']:.4f}, n={m['n']}")
    return m
