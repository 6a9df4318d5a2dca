"""Issue 14: a schedule that trains on small data (train.min_steps), class weights for imbalanced labels
(train.class_weights), and collapsed models reported (metrics.collapse, evaluate's warning, the compare mark)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import toy_frame, write_splits
from peftlab.config.params import Params, TrainParams, build
from peftlab.core.errors import PeftlabError
from peftlab.core.metrics import classification_metrics, collapse, collapse_warning
from peftlab.core.paths import EvalPaths, RunPaths
from peftlab.evaluate.run import run_evaluate
from peftlab.train.run import balanced_class_weights, run_train, schedule, steps_per_epoch


def params_for(model: str, **train) -> Params:
    p = Params()
    p.model = build(type(p.model), {"name": model, "max_length": 32}, "model")
    p.lora = build(type(p.lora), {"r": 4, "alpha": 8, "dropout": 0.0}, "lora")
    p.train = build(TrainParams, {"epochs": 1, "lr": 0.02, "batch_size": 16, "save_steps": 50,
                                  "logging_steps": 5, "warmup_ratio": 0.0, "report_to": ["none"], "min_steps": 0,
                                  **train}, "train")
    p.evaluate = build(type(p.evaluate), {"bootstrap": 0}, "evaluate")
    return p


# --- the schedule ------------------------------------------------------------------------------------------

def test_steps_per_epoch_counts_partial_batches_and_accumulation_like_the_trainer():
    assert steps_per_epoch(1000, 32) == 32              # 31 full batches and one of 8
    assert steps_per_epoch(10201, 32) == 319            # the default run: one epoch is already 319 steps
    assert steps_per_epoch(100, 8, grad_accum=4) == 4   # 13 batches, the last group of one
    assert steps_per_epoch(100, 8, processes=2) == 7    # 50 rows per process
    assert steps_per_epoch(3, 32) == 1


def test_schedule_raises_whole_epochs_to_reach_min_steps_and_max_steps_wins():
    assert schedule(1.0, 200, -1, 32) == (7.0, 224)     # 1,000 rows at batch 32: 7 epochs
    assert schedule(1.0, 200, -1, 319) == (1.0, 319)    # enough already: unchanged
    assert schedule(3.0, 200, -1, 100) == (3.0, 300)
    assert schedule(0.5, 200, -1, 500) == (0.5, 250)    # fractional epochs that reach min_steps stay
    assert schedule(0.5, 200, -1, 100) == (2.0, 200)
    assert schedule(1.0, 200, 50, 32) == (1.0, 50)      # max_steps > 0 overrides, as in the Trainer
    assert schedule(1.0, 0, -1, 5) == (1.0, 5)          # 0: off


def test_new_train_params_are_validated_in_one_line():
    with pytest.raises(PeftlabError, match=r"train.class_weights = 'inverse' is invalid; allowed: none \| balanced"):
        build(TrainParams, {"class_weights": "inverse"}, "train")
    with pytest.raises(PeftlabError, match=r"train.min_steps = -5 is invalid; allowed: a value >= 0"):
        build(TrainParams, {"min_steps": -5}, "train")
    assert build(TrainParams, {"min_steps": "300"}, "train").min_steps == 300    # as `dvc exp run -S` gives it


def test_min_steps_raises_the_epochs_of_a_tiny_run(project, tiny_models):
    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    write_splits(project, toy_frame(60, seed=4))                  # 42 training rows: 3 steps per epoch at 16
    summary = run_train(params_for("tiny-encoder", min_steps=10), RunPaths.for_run("main"))
    assert summary["steps_per_epoch"] == 3 and summary["epochs_raised"] is True
    assert summary["epochs"] == pytest.approx(4.0) and summary["steps"] == 12 and summary["epochs_requested"] == 1.0
    # min_steps already met: the requested epochs run unchanged
    summary = run_train(params_for("tiny-encoder", min_steps=3), RunPaths.for_run("main"))
    assert summary["epochs_raised"] is False and summary["steps"] == 3 and summary["epochs"] == pytest.approx(1.0)
    # max_steps still wins
    summary = run_train(params_for("tiny-encoder", min_steps=10, max_steps=2), RunPaths.for_run("main"))
    assert summary["steps"] == 2


# --- class weights -----------------------------------------------------------------------------------------

def test_balanced_weights_are_sklearns_and_an_absent_class_gets_one():
    y = np.array([0] * 30 + [1] * 10 + [2] * 0)
    assert balanced_class_weights(y, 3) == pytest.approx([40 / (2 * 30), 40 / (2 * 10), 1.0])
    assert balanced_class_weights(np.array([0, 1, 1, 0]), 2) == pytest.approx([1.0, 1.0])


def _imbalanced(n: int, share_negative: float, seed: int) -> pd.DataFrame:
    df = toy_frame(n * 3, seed=seed)
    neg, pos = df[df["label"] == 0], df[df["label"] == 1]
    k = int(round(n * share_negative))
    return pd.concat([neg.head(k), pos.head(n - k)]).sample(frac=1, random_state=seed).reset_index(drop=True)


def test_balanced_class_weights_enter_the_classifier_loss(project, tiny_models):
    """The validation loss the Trainer reports is the weighted cross-entropy of the trained model's own
    probabilities (sum of w_y * nll / sum of w_y), not the unweighted one: the weights reach the loss."""
    from sklearn.metrics import log_loss

    from peftlab.modeling.load import choose_device, load_trained
    from peftlab.modeling.predict import predict_probs

    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    df = _imbalanced(100, 0.8, seed=5)                     # 80% negative
    write_splits(project, df)
    train = pd.read_parquet(project / "data/splits/train.parquet")
    val = pd.read_parquet(project / "data/splits/val.parquet")
    p = params_for("tiny-encoder", class_weights="balanced", min_steps=0, epochs=2)
    summary = run_train(p, RunPaths.for_run("main"))
    w = balanced_class_weights(train["label"], 2)
    assert w[0] < 1 < w[1]                                 # the minority class weighs more
    assert summary["class_weights"] == pytest.approx({"negative": w[0], "positive": w[1]})

    model, tok, setup = load_trained(project / "models/adapters/main", choose_device("cpu"), merge=False)
    probs = predict_probs(model, tok, setup, val["text"].tolist(), 64, choose_device("cpu"), progress=False)
    y = val["label"].to_numpy()
    weighted = log_loss(y, probs, sample_weight=np.asarray(w)[y], labels=[0, 1])
    plain = log_loss(y, probs, labels=[0, 1])
    assert abs(weighted - plain) > 1e-3                    # the two differ on this set, so the check can fail
    assert summary["val_loss"] == pytest.approx(weighted, abs=1e-4)

    # class_weights: none keeps the model's own (unweighted) loss
    summary = run_train(params_for("tiny-encoder", min_steps=0, epochs=2), RunPaths.for_run("main"))
    assert summary["class_weights"] is None


def test_balanced_class_weights_are_refused_for_a_generative_head(project, tiny_models):
    shutil.copytree(tiny_models["decoder"], project / "models" / "base" / "tiny-decoder")
    write_splits(project, toy_frame(40))
    p = params_for("tiny-decoder", class_weights="balanced")
    p.model.head = "generative"
    with pytest.raises(PeftlabError, match="train.class_weights = 'balanced' weights the loss of a classifier head; "
                                           "this run's head is 'generative'; allowed for the generative head: none"):
        run_train(p, RunPaths.for_run("main"))
    assert not (project / "models" / "adapters" / "main").exists()


# --- collapse ------------------------------------------------------------------------------------------------

LABELS = ["negative", "neutral", "positive"]


def test_collapse_flags_one_class_predictions_unless_that_class_dominates_the_labels():
    y = np.array([0] * 30 + [1] * 40 + [2] * 30)
    assert collapse(y, np.ones(100, int), LABELS) == {"collapsed": True, "collapsed_class": "neutral",
                                                      "pred_share": 1.0, "label_share": 0.4}
    at_95 = np.array([1] * 95 + [0] * 5)
    assert collapse(y, at_95, LABELS)["collapsed"] is True              # exactly 95% of predictions
    assert collapse(y, np.array([1] * 94 + [0] * 6), LABELS)["collapsed"] is False
    y80 = np.array([1] * 80 + [0] * 20)
    assert collapse(y80, np.ones(100, int), LABELS)["collapsed"] is False     # the class holds 80% of labels
    y79 = np.array([1] * 79 + [0] * 21)
    assert collapse(y79, np.ones(100, int), LABELS)["collapsed"] is True
    assert collapse(y, -np.ones(100, int), LABELS)["collapsed"] is False      # unparsed answers are no class
    assert collapse(y, y, LABELS) == {"collapsed": False, "collapsed_class": None, "pred_share": 0.4,
                                      "label_share": 0.4}


def test_metrics_carry_the_flag_and_the_warning_names_model_and_class():
    y = np.array([0] * 50 + [1] * 50)
    m = classification_metrics(y, np.zeros(100, int), None, ["negative", "positive"], bootstrap=0)
    assert m["collapsed"] is True and m["collapsed_class"] == "negative"
    m = classification_metrics(y, y, None, ["negative", "positive"], bootstrap=0)
    assert m["collapsed"] is False and m["collapsed_class"] is None
    msg = collapse_warning("run 'main' (minilm-l6)", y, np.zeros(100, int), ["negative", "positive"])
    assert msg.startswith("WARNING: run 'main' (minilm-l6) collapsed: it predicts 'negative' for 100.0% of the "
                          "100 test rows, a class holding 50.0% of their labels")
    assert collapse_warning("x", y, y, ["negative", "positive"]) is None


def test_a_forced_collapse_is_warned_about_and_flagged_by_evaluate(project, tiny_models, capsys):
    """lr 1e-7 leaves the tiny model as initialised, and every test review is the same known words plus an
    unknown id (one token sequence), so every prediction is the same class by construction, while the
    test labels are half and half: the collapse is certain on any machine."""
    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    df = _imbalanced(120, 0.75, seed=6)
    write_splits(project, df)
    test = pd.read_parquet(project / "data/splits/test.parquet")
    test = pd.DataFrame({"id": [f"t{i}" for i in range(40)], "text": [f"the film was a story #{i}" for i in range(40)],
                         "label": [0, 1] * 20, "label_text": ["negative", "positive"] * 20})
    test.to_parquet(project / "data/splits/test.parquet", index=False)
    p = params_for("tiny-encoder", lr=0.0000001)
    run_train(p, RunPaths.for_run("main"))
    capsys.readouterr()
    m = run_evaluate(p, EvalPaths.for_run("main"))
    err = capsys.readouterr().err
    assert m["collapsed"] is True and m["collapsed_class"] in ("negative", "positive")
    assert f"WARNING: run 'main' (tiny-encoder) collapsed: it predicts {m['collapsed_class']!r} for 100.0% of the " \
           f"40 test rows, a class holding 50.0% of their labels" in err
    written = json.loads((project / "metrics/evaluate.json").read_text())
    assert written["collapsed"] is True and written["collapsed_class"] == m["collapsed_class"]


def test_a_model_that_learned_is_not_flagged(project, tiny_models, capsys):
    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    write_splits(project, toy_frame(400, seed=1))
    p = params_for("tiny-encoder", epochs=8)
    run_train(p, RunPaths.for_run("main"))
    m = run_evaluate(p, EvalPaths.for_run("main"))
    # accuracy >= 0.7 on this near-balanced test split bounds any class's share of predictions below 95%
    test_y = pd.read_parquet(project / "data/splits/test.parquet")["label"]
    assert m["accuracy"] >= 0.7 and max(test_y.mean(), 1 - test_y.mean()) < 0.7
    assert m["collapsed"] is False and "collapsed" not in capsys.readouterr().err


def test_majority_baseline_is_flagged_but_not_warned(project, capsys):
    from peftlab.evaluate.baseline import run_baseline

    write_splits(project, toy_frame(200, seed=2))
    p = Params()
    p.baseline = build(type(p.baseline), {"methods": ["majority", "stratified"]}, "baseline")
    p.evaluate = build(type(p.evaluate), {"bootstrap": 0}, "evaluate")
    m = run_baseline(p)
    assert m["majority"]["collapsed"] is True and m["stratified"]["collapsed"] is False
    assert "WARNING" not in capsys.readouterr().err


def test_compare_report_marks_collapsed_methods(tmp_path):
    from peftlab.compare.rank import run_compare
    from peftlab.config.params import CompareParams
    from test_compare import _cls_metrics, _json, _mk, make_project

    root = make_project(tmp_path)
    test = pd.read_parquet(root / "data/splits/test.parquet")
    y = test["label"].to_numpy()
    pred = np.zeros(len(y), int)
    pd.DataFrame({"id": test["id"], "label": y, "pred": pred, "prob_negative": 0.9, "prob_positive": 0.1}) \
        .to_parquet(_mk(root / "data/predictions/baseline/majority.parquet"))
    baselines = json.loads((root / "metrics/baseline.json").read_text())
    _json(root / "metrics/baseline.json", {**baselines, "majority": _cls_metrics(y, pred)})
    run_compare(CompareParams(), {"main": "m", "r16": "m"}, root=root, seed=0)
    md = (root / "reports/report.md").read_text()
    tex = (root / "reports/results.tex").read_text()
    rows = {line.split(" | ")[1]: line for line in md.splitlines() if line.startswith("| ") and " | " in line}
    assert "majority (collapsed)" in rows and "main" in rows and "main (collapsed)" not in rows
    assert "\\(collapsed\\): its predictions put at least 95% of the test rows in one class" in md
    assert "majority (collapsed)" in tex and "at least 95\\% of the test rows" in tex
    res = json.loads((root / "reports/results.json").read_text())
    flags = {m["method"]: m["collapsed"] for m in res["methods"]}
    assert flags["majority"] is True and flags["main"] is False and flags["poison:count0-n100"] is None
