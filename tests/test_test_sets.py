"""Named test sets: slices of the test split and extra sources, per-set and per-category metrics in
metrics/evaluate.json (a real tiny model trained and evaluated), and the params grammar."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import toy_frame, write_splits
from peftlab.config.params import EvaluateParams, build
from peftlab.core.errors import PeftlabError


@pytest.mark.parametrize("sets,needle", [
    ({"test": {"split_by": "words", "range": [1, 5]}}, "evaluate.test_sets.test = .* another name"),
    ({"x": {"split_by": "colour", "values": ["red"]}}, "evaluate.test_sets.x.split_by = 'colour' is invalid; "
                                                       "allowed: category | group | rating | label_text | words"),
    ({"x": {"split_by": "words"}}, "exactly one of values"),
    ({"x": {"split_by": "words", "range": [9, 1]}}, r"x.range = \[9, 1\] is invalid"),
    ({"x": {"split_by": "words", "quantiles": [0.5, 0.5]}},
     r"x.quantiles = \[0.5, 0.5\] is invalid; allowed: \[qlo, qhi\]"),
    ({"x": {"split_by": "words", "quantiles": [0, 1.5]}}, r"x.quantiles = \[0, 1.5\] is invalid"),
    ({"x": {"split_by": "words", "range": [1, 5], "quantiles": [0, 1]}}, "exactly one of values"),
    ({"x": {"source": "local:a.csv", "txt_column": "t"}}, "unknown key evaluate.test_sets.x.txt_column"),
    ({"x": {"dataset": "orgaccess", "max_rows": 0}}, "x.max_rows = 0 is invalid"),
    ({"x": 3}, "evaluate.test_sets.x = 3 is invalid"),
    ({"x": {"rows": 3}}, "a mapping with split_by"),
])
def test_bad_test_set_specs_are_one_clear_line(sets, needle):
    with pytest.raises(PeftlabError, match=needle) as e:
        build(EvaluateParams, {"test_sets": sets}, "evaluate")
    assert "\n" not in str(e.value)


def test_quantile_slices_partition_the_test_split_at_its_own_median():
    from peftlab.data.test_sets import evaluate_test_sets

    test = toy_frame(101, seed=9)
    words = test["text"].str.split().str.len().to_numpy()
    probs = np.tile([0.3, 0.7], (len(test), 1))
    spec = {"short": {"split_by": "words", "quantiles": [0, 0.5]},
            "long": {"split_by": "words", "quantiles": [0.5, 1.0]},
            "top": {"split_by": "words", "quantiles": [0.9, 1]}}
    build(EvaluateParams, {"test_sets": spec}, "evaluate")            # the grammar accepts them
    sets = evaluate_test_sets(spec, test, probs, {"n": len(test)}, ["negative", "positive"], ".", 10, 0,
                              predict=None)["test_sets"]
    median = float(np.median(words))
    assert sets["short"]["bounds"] == [float(words.min()), median]
    assert sets["long"]["bounds"] == [median, float(words.max())]
    assert sets["short"]["n"] == int((words < median).sum()) and sets["long"]["n"] == int((words >= median).sum())
    assert sets["short"]["n"] + sets["long"]["n"] == len(test)        # every row in exactly one of the two
    assert sets["top"]["n"] == int((words >= np.quantile(words, 0.9)).sum())   # hi inclusive at 1: the longest in
    assert sets["long"]["bounds_rule"] == f"{median:g} <= words <= {words.max():g}"
    assert sets["short"]["bounds_rule"] == f"{words.min():g} <= words < {median:g}"


def test_named_test_sets_and_categories_reach_metrics_and_tables(project, tiny_models):
    import shutil

    from peftlab.core.paths import EvalPaths, RunPaths
    from peftlab.evaluate.run import run_evaluate
    from peftlab.train.run import run_train
    from test_train_evaluate import params_for

    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    df = toy_frame(400, seed=3)
    df["category"] = np.where(np.arange(len(df)) % 3 == 0, "Books", "Toys")
    write_splits(project, df)
    run_train(params_for("tiny-encoder", epochs=1), RunPaths.for_run("main"))   # metrics, not skill, are checked
    train_text = pd.read_parquet(project / "data" / "splits" / "train.parquet")["text"].iloc[0]
    extra = pd.DataFrame({"review": ["a great fun story #x1", "awful boring plot #x2", "good film #x3",
                                     "the dull acting #x4", train_text.upper()],
                          "stars": [5, 1, 4, 2, 5], "shelf": ["Books", "Books", "Games", "Games", "Games"]})
    extra.to_csv(project / "extra.csv", index=False)
    p = params_for("tiny-encoder")
    p.evaluate = build(EvaluateParams, {"bootstrap": 20, "test_sets": {
        "short": {"split_by": "words", "range": [1, 7]},
        "long": {"split_by": "words", "range": [8, 1000]},
        "books": {"split_by": "category", "values": ["Books"]},
        "other_shop": {"source": f"local:{project / 'extra.csv'}", "text_column": "review", "label_column": "stars",
                       "category_column": "shelf", "label_map": {"1-2": "negative", "4-5": "positive"}}}},
        "evaluate")
    m = run_evaluate(p, EvalPaths.for_run("main"))
    on_disk = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert on_disk["test_sets"] == json.loads(json.dumps(m["test_sets"]))
    sets = on_disk["test_sets"]
    assert list(sets) == ["test", "short", "long", "books", "other_shop"]
    for name, s in sets.items():
        assert {"n", "accuracy", "f1_macro", "ci95", "confusion_matrix"} <= set(s), name
    test = pd.read_parquet(project / "data" / "splits" / "test.parquet")
    words = test["text"].str.split().str.len()
    assert sets["short"]["n"] == int((words <= 7).sum()) and sets["short"]["n"] + sets["long"]["n"] == m["n"]
    assert sets["books"]["n"] == int((test["category"] == "Books").sum())
    assert sets["test"]["accuracy"] == m["accuracy"]
    # the extra source: mapped, cleaned, and the row the model trained on dropped
    assert sets["other_shop"]["n"] == 4 and sets["other_shop"]["counts"]["dropped_seen_in_train_or_val"] == 1
    cats = on_disk["categories"]
    assert set(cats) == {"test", "short", "long", "books", "other_shop"}   # every set with a category column
    assert sum(c["n"] for c in cats["test"].values()) == m["n"] and set(cats["test"]) == {"Books", "Toys"}
    assert cats["other_shop"] == {"Books": {"n": 2, **{k: cats["other_shop"]["Books"][k]
                                                       for k in ("accuracy", "f1_macro")}},
                                  "Games": {"n": 2, **{k: cats["other_shop"]["Games"][k]
                                                       for k in ("accuracy", "f1_macro")}}}
    books = test["category"] == "Books"
    preds = pd.read_parquet(project / "data" / "predictions" / "main.parquet")
    assert cats["test"]["Books"]["accuracy"] == pytest.approx(float((preds["pred"] == preds["label"])[books].mean()))
    table = pd.read_csv(project / "reports" / "evaluate.csv")
    assert list(table["method"]) == ["main", "main [short]", "main [long]", "main [books]", "main [other_shop]"]


def test_a_slice_that_selects_nothing_names_itself():
    from peftlab.data.test_sets import _slice

    test = toy_frame(20)
    with pytest.raises(PeftlabError, match="evaluate.test_sets.huge = .* selects no test rows"):
        _slice("huge", {"split_by": "words", "range": [500, 600]}, test)
    with pytest.raises(PeftlabError, match="the test split has no 'category' column"):
        _slice("cat", {"split_by": "category", "values": ["Books"]}, test)
