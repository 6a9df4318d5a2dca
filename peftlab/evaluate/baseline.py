"""baseline stage: what a fine-tuned model replaces, on the same test split and in the same metrics schema.

Zero-shot decoder (label-word scoring and free generation), zero-shot encoder (embedding similarity),
majority / stratified-random, TF-IDF and frozen-embedding classifiers. Every choice (prompt, prefill,
calibration, regularisation) is made on the validation split, never on test.
"""
from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from peftlab.config.params import BaselineParams, Params
from peftlab.core import paths
from peftlab.core.io import read_json, write_json, write_parquet
from peftlab.core.metrics import accuracy, classification_metrics, collapse_warning
from peftlab.data.split import read_labels, read_split, stratified_sample
from peftlab.evaluate.run import prediction_frame
from peftlab.modeling.load import choose_device, load_causal_lm, load_encoder
from peftlab.modeling.predict import (
    PromptSpec,
    calibrate,
    generate_answers,
    mean_pooled_embeddings,
    parse_label,
    score_labels,
    softmax_rows,
)
from peftlab.report.format import metrics_row, write_tables
from peftlab.report.plots import plot_bars


@dataclass
class Scored:
    """One method's test-split output: hard predictions (-1 = no answer), class scores, extras for metrics;
    `rows`: the test rows scored when a method runs on a subset (None: the whole test split)."""
    pred: np.ndarray
    probs: np.ndarray
    extra: dict
    rows: pd.DataFrame | None = None


# --- zero-shot decoder -----------------------------------------------------------------------------------

def candidate(bp: BaselineParams, prompt: int, prefill: str) -> PromptSpec:
    """One zero-shot candidate: prompt template `prompt` of baseline.prompts with answer prefix `prefill`."""
    spec = bp.prompts[prompt]
    return PromptSpec(spec.get("system"), spec["user"], prefill, bp.label_words)


def chosen_candidate(bp: BaselineParams, metrics_path: Path = paths.BASELINE_METRICS) -> tuple[PromptSpec, dict]:
    """The zero-shot candidate the baseline stage chose on val (and its grid row), so the benchmark and the
    speed scripts time the prompt the committed accuracy comes from; before any baseline run: prompt 0 with the
    first prefill, uncalibrated."""
    first = {"prompt": 0, "prefill": bp.prefills[0], "calibration": False}
    chosen = read_json(metrics_path).get("llm_zeroshot", {}).get("chosen", first) if metrics_path.exists() else first
    if chosen["prompt"] >= len(bp.prompts):   # metrics from a longer candidate list than params.yaml now has
        chosen = first
    return candidate(bp, chosen["prompt"], chosen["prefill"]), chosen


def draw_demos(train: pd.DataFrame, shots: int, seed: int) -> list[tuple[str, int]]:
    """k demonstrations from train, cycling through the labels so each appears, by seed."""
    if shots == 0:
        return []
    rng = np.random.default_rng(seed)
    by_label = {y: list(rng.permutation(g.index)) for y, g in train.groupby("label")}
    picks, labels = [], itertools.cycle(sorted(by_label))
    while len(picks) < shots:
        y = next(labels)
        if by_label[y]:
            picks.append(by_label[y].pop())
    order = rng.permutation(len(picks))
    return [(train.loc[picks[i], "text"], int(train.loc[picks[i], "label"])) for i in order]


def llm_baselines(bp: BaselineParams, seed: int, labels: list[str], train: pd.DataFrame, val: pd.DataFrame,
                  test: pd.DataFrame, methods: list[str]) -> dict[str, Scored]:
    device = choose_device(bp.device)
    model, tok = load_causal_lm(paths.base_model(bp.llm), device)
    tok.padding_side = "left"
    demos = draw_demos(train, bp.shots, seed)
    sel = stratified_sample(val, bp.select_rows, seed)
    cf_texts = list(bp.content_free)
    def score(spec: PromptSpec, texts: list[str]) -> np.ndarray:   # reviews cut to baseline.max_length tokens
        return score_labels(model, tok, spec, texts, labels, demos, bp.batch_size, device,
                            max_text_tokens=bp.max_length)

    grid = []
    for i, prefill in itertools.product(range(len(bp.prompts)), bp.prefills):
        spec = candidate(bp, i, prefill)
        raw, cf = score(spec, sel["text"].tolist()), score(spec, cf_texts)
        for cal in bp.calibration:
            scores = calibrate(raw, cf) if cal else raw
            grid.append({"prompt": i, "prefill": prefill, "calibration": bool(cal),
                         "val_accuracy": accuracy(sel["label"], scores.argmax(1))})
    chosen = max(grid, key=lambda g: g["val_accuracy"])   # first wins ties: the order of the params
    spec = candidate(bp, chosen["prompt"], chosen["prefill"])
    print(f"zero-shot selection on {len(sel)} val rows: best {chosen}")
    out: dict[str, Scored] = {}
    texts = test["text"].tolist()
    if "llm_zeroshot" in methods:
        scores = score(spec, texts)
        if chosen["calibration"]:
            scores = calibrate(scores, score(spec, cf_texts))
        out["llm_zeroshot"] = Scored(scores.argmax(1), softmax_rows(scores),
                                     {"chosen": chosen, "selection": grid, "shots": bp.shots})
    if "llm_generate" in methods:
        # Free generation costs max_new_tokens decoder steps a row where scoring costs one pass, to show an
        # accuracy far below scoring's: a fixed stratified sample of the test rows shows it (CI in the metrics).
        rows = stratified_sample(test, bp.generate_rows, seed) if bp.generate_rows else test
        prefill = spec.prefill if bp.generate_prefill else ""
        prompts = spec.render(tok, rows["text"].tolist(), labels, demos, prefill=prefill,
                              max_text_tokens=bp.max_length)
        words = [ws[0] for ws in spec.words(labels)]
        answers = generate_answers(model, tok, prompts, bp.max_new_tokens, bp.batch_size, device, stop_at=words)
        pred = np.array([parse_label(a, words) for a in answers])
        probs = np.zeros((len(pred), len(labels)))
        probs[pred >= 0, pred[pred >= 0]] = 1.0
        probs[pred < 0] = 1.0 / len(labels)
        out["llm_generate"] = Scored(pred, probs, {"prompt": chosen["prompt"], "prefill": prefill,
                                                   "max_new_tokens": bp.max_new_tokens,
                                                   "examples": answers[:5]}, rows=rows)
    return out


# --- encoders and classical models -----------------------------------------------------------------------

def encoder_baselines(bp: BaselineParams, seed: int, labels: list[str], train: pd.DataFrame, val: pd.DataFrame,
                      test: pd.DataFrame, methods: list[str]) -> dict[str, Scored]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    device = choose_device(bp.device)
    model, tok = load_encoder(paths.base_model(bp.encoder), device)

    def embed(texts: list[str]) -> np.ndarray:
        return mean_pooled_embeddings(model, tok, texts, bp.max_length, 64, device)

    out: dict[str, Scored] = {}
    x_test = embed(test["text"].tolist())
    if "encoder_zeroshot" in methods:
        desc = embed([bp.description_template.format(label=l) for l in labels])
        sims = x_test @ desc.T
        out["encoder_zeroshot"] = Scored(sims.argmax(1), softmax_rows(sims * 20.0),
                                         {"descriptions": [bp.description_template.format(label=l) for l in labels]})
    fits = {"emb_svm_rbf": lambda: SVC(kernel="rbf", C=bp.svm_c, random_state=seed),
            "emb_mlp": lambda: MLPClassifier(hidden_layer_sizes=(256,), early_stopping=True, max_iter=200,
                                             random_state=seed)}
    if any(m in methods for m in ("emb_logreg", *fits)):
        x_train = embed(train["text"].tolist())
        if "emb_logreg" in methods:
            out["emb_logreg"] = fit_with_c_on_val(lambda c: LogisticRegression(C=c, max_iter=3000), bp.c_grid,
                                                  x_train, train["label"], embed(val["text"].tolist()),
                                                  val["label"], x_test, len(labels))
        for name, make in fits.items():
            if name in methods:
                clf = make().fit(x_train, train["label"])
                out[name] = Scored(clf.predict(x_test), class_scores(clf, x_test, len(labels)), {})
    return out


def fit_with_c_on_val(make, grid: list[float], x_train, y_train, x_val, y_val, x_test, k: int) -> Scored:
    """Fit one model per regularisation strength C, keep the best on val, score test with it."""
    val_acc = {c: accuracy(y_val, make(c).fit(x_train, y_train).predict(x_val)) for c in grid}
    c = max(grid, key=lambda v: val_acc[v])   # first wins ties
    clf = make(c).fit(x_train, y_train)
    return Scored(clf.predict(x_test), class_scores(clf, x_test, k),
                  {"C": c, "val_accuracy_by_C": {f"{k_:g}": v for k_, v in val_acc.items()}})


def class_scores(clf, x, k: int) -> np.ndarray:
    """Probabilities where the model has them, else a softmax of decision scores (enough for ROC/PR)."""
    if hasattr(clf, "predict_proba"):
        return clf.predict_proba(x)
    d = clf.decision_function(x)
    if d.ndim == 1:
        d = np.stack([-d, d], axis=1)
    return softmax_rows(d)


def tfidf_baselines(bp: BaselineParams, seed: int, labels: list[str], train: pd.DataFrame, val: pd.DataFrame,
                    test: pd.DataFrame, methods: list[str]) -> dict[str, Scored]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_union
    from sklearn.svm import LinearSVC

    feats = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
                       TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2))
    x_train = feats.fit_transform(train["text"])
    x_val, x_test = feats.transform(val["text"]), feats.transform(test["text"])
    makers = {"tfidf_logreg": lambda c: LogisticRegression(C=c, max_iter=3000),
              "tfidf_svm": lambda c: LinearSVC(C=c, random_state=seed)}
    out: dict[str, Scored] = {}
    for name, make in makers.items():
        if name in methods:
            grid = bp.c_grid if name == "tfidf_logreg" else [c / 10 for c in bp.c_grid]  # hinge loss: ~10x less C
            out[name] = fit_with_c_on_val(make, grid, x_train, train["label"], x_val, val["label"], x_test,
                                          len(labels))
    return out


def dummy_baselines(seed: int, labels: list[str], train: pd.DataFrame, test: pd.DataFrame,
                    methods: list[str]) -> dict[str, Scored]:
    from sklearn.dummy import DummyClassifier

    out = {}
    for name, strategy in (("majority", "most_frequent"), ("stratified", "stratified")):
        if name in methods:
            clf = DummyClassifier(strategy=strategy, random_state=seed).fit(np.zeros((len(train), 1)), train["label"])
            x = np.zeros((len(test), 1))
            probs = np.zeros((len(test), len(labels)))
            probs[:, clf.classes_] = clf.predict_proba(x)
            out[name] = Scored(clf.predict(x), probs, {})
    return out


# --- the stage -------------------------------------------------------------------------------------------

def run_baseline(params: Params, splits: Path = paths.SPLITS_DIR, metrics_path: Path = paths.BASELINE_METRICS,
                 plots: Path = paths.BASELINE_PLOTS, predictions: Path = paths.BASELINE_PREDICTIONS,
                 tables: Path = paths.BASELINE_TABLES) -> dict:
    bp, seed = params.baseline, params.seed
    labels = read_labels(splits)
    train, val, test = (read_split(splits, s) for s in ("train", "val", "test"))
    methods = list(bp.methods)
    results: dict[str, Scored] = {}
    results.update(dummy_baselines(seed, labels, train, test, methods))
    results.update(tfidf_baselines(bp, seed, labels, train, val, test, methods))
    if any(m.startswith(("emb_", "encoder_")) for m in methods):
        results.update(encoder_baselines(bp, seed, labels, train, val, test, methods))
    if any(m.startswith("llm_") for m in methods):
        results.update(llm_baselines(bp, seed, labels, train, val, test, methods))

    metrics, rows = {}, []
    for name in methods:
        r = results[name]
        scored = test if r.rows is None else r.rows
        y = scored["label"].to_numpy()
        m = classification_metrics(y, r.pred, r.probs, labels, bootstrap=params.evaluate.bootstrap, seed=seed)
        metrics[name] = {**m, **r.extra}
        rows.append(metrics_row(name, m))
        write_parquet(paths.baseline_predictions(name, predictions), prediction_frame(scored, r.probs, r.pred, labels))
        print(f"baseline {name:17s} accuracy {m['accuracy']:.4f}  macro F1 {m['f1_macro']:.4f}"
              + (f"  on {len(scored)} of {len(test)} test rows" if r.rows is not None else "")
              + (f"  unparsed {m['unparsed']}" if m["unparsed"] else ""))
        warning = collapse_warning(f"baseline {name!r}", y, r.pred, labels) if name != "majority" else None
        if warning:          # the majority baseline predicts one class by construction: flagged, not warned
            print(warning, file=sys.stderr)
    write_json(metrics_path, metrics)
    table = pd.DataFrame(rows)
    write_tables(table, csv_path=tables.with_suffix(".csv"), tex_path=tables.with_suffix(".tex"),
                 caption=f"Baselines on the test split (n={len(test)})")
    write_json(plots / "accuracy.json", [{"method": r["method"], "accuracy": r["accuracy"]} for r in rows])
    plot_bars(table, plots / "accuracy.png", title=f"Baselines on the test split (n={len(test)})")
    if "llm_zeroshot" in metrics:
        write_json(plots / "zeroshot_selection.json", metrics["llm_zeroshot"]["selection"])
    return metrics
