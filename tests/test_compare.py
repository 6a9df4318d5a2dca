"""compare: McNemar and the paired bootstrap against hand calculations, the composite ranking on constructed
metrics, escaping of hostile review text in every report, the deltas against a git base (real dvc in a temp
git repo), the ablation table from `dvc exp show --json`, and the offline plots page in headless Chromium."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO
from peftlab.compare.ablation import ablation_table, render
from peftlab.compare.rank import composite, correct_vectors, mcnemar_exact, paired_bootstrap_diff, run_compare
from peftlab.config.params import CompareParams, build
from peftlab.core.errors import PeftlabError

HOSTILE = "Great | *bold* <script>alert(1)</script> & 100% $5 #1 _x_ {y} ~z ^w \\ [link](http://x) `code`"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# --- statistics ---------------------------------------------------------------------------------------------

def test_mcnemar_exact_matches_hand_calculation():
    # 12 rows both right, 2 only A right, 8 only B right, 3 both wrong.
    a = np.array([1] * 12 + [1] * 2 + [0] * 8 + [0] * 3, bool)
    b = np.array([1] * 12 + [0] * 2 + [1] * 8 + [0] * 3, bool)
    t = mcnemar_exact(a, b)
    # exact test: two-sided binomial on the 10 discordant rows, p = 2 * P(X <= 2 | n=10, 1/2)
    # = 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024
    assert (t["a_only"], t["b_only"]) == (2, 8)
    assert t["p_mcnemar"] == pytest.approx(112 / 1024, abs=1e-12)
    assert mcnemar_exact(a, a)["p_mcnemar"] == pytest.approx(1.0)


def test_predictions_pair_by_id_and_no_answer_counts_as_wrong():
    ref = pd.DataFrame({"id": ["a", "b", "c", "d"], "label": [0, 1, 1, 0], "pred": [0, 1, 0, 0]})
    other = pd.DataFrame({"id": ["d", "c", "b", "a"], "label": [0, 1, 1, 0], "pred": [1, 1, -1, 0]})  # shuffled
    a, b = correct_vectors(ref, other, "ref", "other")
    assert a.tolist() == [True, True, False, True]
    assert b.tolist() == [True, False, True, False]        # a: right, b: -1 (no answer), c: right, d: wrong
    a3, b3 = correct_vectors(ref, other.iloc[:3], "ref", "other")     # scored on a subset: paired on its rows
    assert (a3.tolist(), b3.tolist()) == ([True, False, True], [False, True, False])  # rows b, c, d by id
    assert correct_vectors(other.iloc[:3], ref, "other", "ref")[1].tolist() == [True, False, True]   # d, c, b
    elsewhere = other.assign(id=["d", "c", "b", "e"])                   # "e" is in no row of ref: another split
    with pytest.raises(PeftlabError, match=r"of 'other' \(4 rows\) share 3 rows with the 4 of 'ref'"):
        correct_vectors(ref, elsewhere, "ref", "other")


def test_paired_bootstrap_ci_brackets_the_difference_and_is_seeded():
    rng = np.random.default_rng(0)
    a = rng.random(500) < 0.85
    b = rng.random(500) < 0.75
    d, lo, hi = paired_bootstrap_diff(a, b, 500, seed=1)
    assert d == pytest.approx(a.mean() - b.mean())
    assert lo < d < hi and hi - lo < 0.15
    assert paired_bootstrap_diff(a, b, 500, seed=1) == (d, lo, hi)
    assert paired_bootstrap_diff(a, a, 500, seed=1) == (0.0, 0.0, 0.0)


# --- composite ranking ----------------------------------------------------------------------------------------

def _metrics() -> pd.DataFrame:
    return pd.DataFrame([
        {"method": "A", "kind": "lora", "accuracy": 0.90, "latency_ms_p50": 10.0},
        {"method": "B", "kind": "lora", "accuracy": 0.80, "latency_ms_p50": 5.0},
        {"method": "C", "kind": "baseline", "accuracy": 0.70, "latency_ms_p50": 20.0},
        {"method": "D", "kind": "baseline", "accuracy": 0.86, "latency_ms_p50": None},   # never benchmarked
        {"method": "P", "kind": "poison", "accuracy": 0.99, "latency_ms_p50": 1.0},     # an attack, not ranked
    ])


def test_composite_ranks_constructed_metrics_by_hand():
    w = {"accuracy": 0.5, "latency_ms_p50": 0.5}
    # accuracy normalised over A-D (0.70..0.90): A 1, B .5, C 0, D .8; latency (5..20, lower is better):
    # A 1 - 5/15 = 2/3, B 1, C 0. Scores: A .5 + 1/3, B .75, C 0; D on accuracy alone: .8
    df = composite(_metrics(), w, "renormalize").set_index("method")
    assert df.loc["A", "score"] == pytest.approx(0.5 + 1 / 3)
    assert df.loc["B", "score"] == pytest.approx(0.75)
    assert df.loc["C", "score"] == pytest.approx(0.0)
    assert df.loc["D", "score"] == pytest.approx(0.8) and df.loc["D", "coverage"] == pytest.approx(0.5)
    assert [df.loc[m, "rank"] for m in "ADBC"] == [1, 2, 3, 4] and pd.isna(df.loc["P", "score"])

    worst = composite(_metrics(), w, "worst").set_index("method")
    assert worst.loc["D", "score"] == pytest.approx(0.4)       # latency counted as the worst (0)
    assert [worst.loc[m, "rank"] for m in "ABDC"] == [1, 2, 3, 4]

    excl = composite(_metrics(), w, "exclude").set_index("method")
    assert pd.isna(excl.loc["D", "score"]) and [excl.loc[m, "rank"] for m in "ABC"] == [1, 2, 3]


def test_compare_params_are_validated_in_one_line():
    p = build(CompareParams, {"weights": {"accuracy": 3, "latency_ms_p50": "1"}}, "compare")
    assert p.weights == {"accuracy": 0.75, "latency_ms_p50": 0.25}
    for raw, needle in [({"weights": {"speed": 1}}, "compare.weights has 'speed'; allowed: accuracy, f1_macro"),
                        ({"weights": {"accuracy": -1}},
                         "compare.weights.accuracy = -1 is invalid; allowed: a number >= 0"),
                        ({"weights": {"accuracy": 0}}, "allowed: at least one weight above 0"),
                        ({"missing": "skip"},
                         "compare.missing = 'skip' is invalid; allowed: renormalize | worst | exclude")]:
        with pytest.raises(PeftlabError) as e:
            build(CompareParams, raw, "compare")
        assert needle in str(e.value) and "\n" not in str(e.value)


# --- a constructed project: every input file compare reads ----------------------------------------------------

def _cls_metrics(y: np.ndarray, pred: np.ndarray, **extra) -> dict:
    from peftlab.core.metrics import classification_metrics

    return {**classification_metrics(y, pred, None, ["negative", "positive"], bootstrap=50, seed=0), **extra}


def make_project(root: Path, n: int = 60) -> Path:
    rng = np.random.default_rng(0)
    ids = [f"r{i:03d}" for i in range(n)]
    y = rng.integers(0, 2, n)
    texts = [f"review {i}" for i in range(n)]
    texts[0] = HOSTILE
    pd.DataFrame({"id": ids, "text": texts, "label": y, "label_text": np.where(y == 1, "positive", "negative")}
                 ).to_parquet(_mk(root / "data/splits/test.parquet"))
    preds = {"main": np.where(rng.random(n) < 0.85, y, 1 - y), "r16": np.where(rng.random(n) < 0.8, y, 1 - y),
             "tfidf_50%_&_co": np.where(rng.random(n) < 0.75, y, 1 - y)}
    preds["main"][0] = 1 - y[0]    # the hostile review is main's error (and its most confident one, below)
    for name, p in preds.items():
        prob = np.where(np.arange(n) == 0, 0.99, 0.7)
        path = (f"data/predictions/baseline/{name}.parquet" if name.startswith("tfidf") else
                f"data/predictions/{name}.parquet")
        pd.DataFrame({"id": ids, "label": y, "pred": p, "prob_negative": np.where(p == 0, prob, 1 - prob),
                      "prob_positive": np.where(p == 1, prob, 1 - prob)}).sample(frac=1, random_state=1) \
            .to_parquet(_mk(root / path))
    extra = {"test_sets": {"test": {"n": n, "accuracy": 0.85, "f1_macro": 0.84},
                           "easy|<b>hard</b>": {"n": 10, "accuracy": 0.5, "f1_macro": 0.4}},
             "categories": {"test": {"Beauty & <Care>_*": {"n": 7, "accuracy": 0.71, "f1_macro": 0.7}}}}
    _json(root / "metrics/evaluate.json", _cls_metrics(y, preds["main"], **extra))
    _json(root / "metrics/train.json", {"train_seconds": 12.0, "trainable_params": 1000})
    _json(root / "metrics/sweep/r16/evaluate.json", _cls_metrics(y, preds["r16"]))
    _json(root / "metrics/baseline.json", {"tfidf_50%_&_co": _cls_metrics(y, preds["tfidf_50%_&_co"])})
    _json(root / "metrics/benchmark.json", {"main": {"latency_ms_p50": 10.0, "samples_per_s": 200.0,
                                                     "peak_mem_mb": 700.0},
                                            "r16": {"latency_ms_p50": 12.0, "samples_per_s": 150.0,
                                                    "peak_mem_mb": 710.0}})
    _json(root / "metrics/poison.json", {
        f"count{c}-n100": {"attack": "badnets", "count": c, "rate": c / 100, "train_rows": 100, "cacc": 0.8,
                           "asr": 0.1 + c / 100, "n": n} for c in (0, 10)})
    _json(root / "metrics/split.json", {"test": {"n": n, "negative": int((y == 0).sum()),
                                                 "positive": int((y == 1).sum())}})
    curves = _mk(root / "dvclive/main/plots/metrics/loss.tsv")
    curves.write_text("step\tloss\n0\t0.69\n1\t0.5\n2\t0.4\n")
    return root


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _json(path: Path, obj) -> None:
    _mk(path).write_text(json.dumps(obj))


def test_reports_escape_review_text_and_names_in_every_format(tmp_path):
    root = make_project(tmp_path)
    r = run_compare(CompareParams(), {"main": "tiny|bert", "r16": "tiny|bert"}, root=root, seed=0)
    md = (root / "reports/report.md").read_text()
    tex = (root / "reports/results.tex").read_text()
    assert r.reference == "main" and r.examples[0]["text"] == HOSTILE
    # Markdown/HTML: no raw tag, no bare pipe inside a cell, emphasis and links neutralised
    assert "<script>" not in md and "&lt;script&gt;" in md and "<b>" not in md
    row = next(line for line in md.splitlines() if "alert" in line)
    assert row.count("|") - row.count("\\|") == 6          # the 5 cells' delimiters only
    assert "\\*bold\\*" in md and "\\[link\\]\\(http://x\\)" in md and "tfidf\\_50%\\_&amp;\\_co" in md
    assert "tiny\\|bert" in md
    # LaTeX: every special character escaped, the table intact
    for raw, escaped in [("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"), ("_", r"\_"), ("{y}", r"\{y\}"),
                         ("~", r"\textasciitilde{}"), ("^", r"\textasciicircum{}"), ("<script>", r"\textless{}script")]:
        assert escaped in tex, raw
    assert "tfidf\\_50\\%\\_\\&\\_co" in tex and "<script>" not in tex
    errors_row = next(line for line in tex.splitlines() if "alert" in line)
    assert errors_row.count(" & ") == 3                      # 4 columns: the review's & is escaped
    # csv and json keep the text as it is (their writers quote it)
    assert pd.read_csv(root / "reports/results.csv")["method"].tolist().count("tfidf_50%_&_co") == 1
    assert json.loads((root / "reports/results.json").read_text())["examples"][0]["text"] == HOSTILE
    # issue 8's per-test-set and per-category metrics get their own tables, names escaped
    assert "## Per test set" in md and "easy\\|&lt;b&gt;hard&lt;/b&gt;" in md
    assert "## Per category" in md and "Beauty &amp; &lt;Care&gt;\\_\\*" in md
    # figures written and linked relative to the report
    for name in ("accuracy_latency", "accuracy_ci", "confusion_grid", "poison", "loss_curves"):
        assert (root / f"plots/compare/{name}.png").stat().st_size > 1000
        assert f"(../plots/compare/{name}.png)" in md


def test_ranking_and_tests_in_results(tmp_path):
    root = make_project(tmp_path)
    run_compare(CompareParams(), {"main": "m", "r16": "m"}, root=root, seed=0)
    res = json.loads((root / "reports/results.json").read_text())
    rows = {m["method"]: m for m in res["methods"]}
    assert rows["main"]["rank"] == 1 and rows["poison:count10-n100"]["rank"] is None
    # the reference's difference to each other method, recomputed by hand from the predictions
    y = pd.read_parquet(root / "data/predictions/main.parquet").set_index("id")
    o = pd.read_parquet(root / "data/predictions/r16.parquet").set_index("id").loc[y.index]
    a, b = (y["pred"] == y["label"]).to_numpy(), (o["pred"] == o["label"]).to_numpy()
    assert rows["r16"]["acc_diff"] == pytest.approx(a.mean() - b.mean())
    assert rows["r16"]["p_mcnemar"] == pytest.approx(mcnemar_exact(a, b)["p_mcnemar"])
    assert rows["r16"]["p_holm"] >= rows["r16"]["p_mcnemar"]


def test_nothing_to_compare_is_one_clear_error(tmp_path):
    with pytest.raises(PeftlabError, match="nothing to compare.*dvc repro evaluate"):
        run_compare(CompareParams(), {"main": "m"}, root=tmp_path)
    assert not (tmp_path / "reports").exists()


# --- the deltas against a git base: real dvc in a temp git repo -----------------------------------------------

def _run(cmd, cwd, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert not check or proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_report_against_a_base_revision_shows_metric_and_param_deltas(tmp_path):
    root = make_project(tmp_path)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": {
        "cmd": "true", "params": ["lora.r", "prompt.system"],
        "metrics": [{"metrics/evaluate.json": {"cache": False}}]}}}))
    _run(["git", "init", "-q", "-b", "main"], root)
    _run([sys.executable, "-m", "dvc", "init", "-q"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "base"], root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["lora"]["r"] = 16
    params["prompt"]["system"] = "Rate | this <b>review</b>\nas {labels}."
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    m = json.loads((root / "metrics/evaluate.json").read_text())
    old_acc, m["accuracy"] = m["accuracy"], 0.9
    (root / "metrics/evaluate.json").write_text(json.dumps(m))
    out = _run([sys.executable, str(REPO / "stages/compare.py"), "--base", "main"], root)
    assert "reference main" in out.stdout
    md = (root / "reports/report.md").read_text()
    section = md[md.index("## Changes against main"):]
    line = next(x for x in section.splitlines() if "| accuracy |" in x)
    assert line == f"| metrics/evaluate\\.json | accuracy | {old_acc:.5g} | 0.9 | {0.9 - old_acc:.5g} |"
    assert "| params\\.yaml | lora\\.r | 8 | 16 |" in section
    prompt = next(x for x in section.splitlines() if "prompt\\.system" in x)
    assert "Rate \\| this &lt;b&gt;review&lt;/b&gt; as" in prompt and prompt.count(" | ") == 3   # one row
    bad = _run([sys.executable, str(REPO / "stages/compare.py"), "--base", "no-such-rev"], root, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: `dvc metrics diff no-such-rev` failed")


# --- ablation ---------------------------------------------------------------------------------------------------

def _exp_node(rev, name, r, modules, acc, experiments=None):
    return {"rev": rev, "name": name, "error": None, "experiments": experiments, "data": {
        "rev": rev, "params": {"params.yaml": {"data": {"seed": 42, "lora": {"r": r, "alpha": 16,
                                                                               "target_modules": modules},
                                                        "train": {"epochs": 1}, "compare": {"alpha": r}}}},
        # as `dvc exp show --json` gives them: list-valued metrics (ci95, confusion_matrix) are dropped
        "metrics": {"metrics/evaluate.json": {"data": {"accuracy": acc, "f1_macro": acc - 0.01}},
                    "metrics/train.json": {"data": {"train_seconds": 100.0 * r, "trainable_params": 1000 * r}}}}}


def test_ablation_table_from_exp_show_json():
    exps = [{"revs": [_exp_node("e1", "lora-r16", 16, None, 0.82)], "name": "lora-r16", "executor": None},
            {"revs": [_exp_node("e2", "lora-qv", 8, ["query", "value"], 0.80)], "name": "lora-qv", "executor": None}]
    show = [_exp_node("workspace", None, 16, None, 0.82),
            _exp_node("abc1234def", "main", 8, None, 0.815, experiments=exps)]
    commits = {rev: {"ci95": {"accuracy": [acc - 0.02, acc + 0.02]}} for rev, acc in
               [("e1", 0.82), ("e2", 0.80), ("abc1234def", 0.815)]}     # metrics/evaluate.json in each commit
    df = ablation_table(show, ["lora.r", "train.epochs"], lambda rev, path: commits[rev])
    assert df["experiment"].tolist() == ["lora-r16", "main", "lora-qv"]          # best first, no workspace row
    assert df["lora.r"].tolist() == ["16", "8", "8"] and df["base"].tolist() == ["main", "", "main"]
    assert df["lora.target_modules"].tolist() == ["null", "null", "query, value"]  # differs, so shown
    assert "lora.alpha" not in df and "seed" not in df                              # same everywhere
    assert "compare.alpha" not in df                                  # a report setting, not an ablation
    md, tex = render(df)
    assert "| lora\\-r16 | 16 | 1 | null | 0.820 [0.800, 0.840] |" in md
    assert r"lora.target\_modules" in tex and r"\toprule" in tex


# --- the offline plots page -------------------------------------------------------------------------------------

@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium) to render the page")
def test_offline_plots_template_renders_in_headless_chromium(tmp_path):
    template = REPO / ".dvc/plots/offline.html"
    assert "html_template = plots/offline.html" in (REPO / ".dvc/config").read_text()
    (tmp_path / "acc.json").write_text(json.dumps([{"method": m, "accuracy": a} for m, a in
                                                   [("main", 0.81), ("tfidf", 0.79)]]))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{"Accuracy": {
        "template": "bar_horizontal", "x": "accuracy", "y": {"acc.json": "method"}}}]}))
    _run(["git", "init", "-q"], tmp_path)
    _run([sys.executable, "-m", "dvc", "init", "-q"], tmp_path)
    _run([sys.executable, "-m", "dvc", "plots", "show", "--html-template", str(template), "-o", "out"], tmp_path)
    page = (tmp_path / "out/index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vegaEmbed" in page
    # --proxy-server to a closed port: any network fetch fails, so only inlined code can draw the chart
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--proxy-server=127.0.0.1:9", "--disable-background-networking", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                          (tmp_path / "out/index.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert 'class="marks"' in dom.stdout, dom.stderr[-2000:]       # vega-embed drew its canvas/svg
    assert "vega-embed" in dom.stdout


def test_a_method_scored_on_a_sample_of_the_test_rows_is_paired_on_those_rows(tmp_path):
    """Free generation on a fixed 200 of the test rows is compared with the others on the rows it scored, and
    the pair's row count is kept (the report says "on N rows") instead of the comparison being refused."""
    from peftlab.compare.rank import Method, pairwise
    from peftlab.compare.report import paired_on

    rng = np.random.default_rng(0)
    ids, label = [f"r{i}" for i in range(400)], rng.integers(0, 2, 400)
    full = pd.DataFrame({"id": ids, "label": label, "pred": np.where(rng.random(400) < 0.85, label, 1 - label)})
    part = full.sample(200, random_state=1).assign(pred=lambda d: np.where(rng.random(200) < 0.6, d.label, 1 - d.label))
    full.to_parquet(tmp_path / "ref.parquet")
    part.to_parquet(tmp_path / "gen.parquet")
    methods = [Method("ref", "lora", {}, predictions=tmp_path / "ref.parquet"),
               Method("gen", "baseline", {}, predictions=tmp_path / "gen.parquet"),
               Method("ref2", "lora", {}, predictions=tmp_path / "ref.parquet")]
    table = pairwise(pd.DataFrame({"method": ["ref", "gen", "ref2"]}), methods, "ref", 200, 0)
    gen = table.set_index("method").loc["gen"]
    shared = full.set_index("id").loc[part["id"]]
    assert gen["paired_rows"] == 200
    assert gen["acc_diff"] == pytest.approx((shared.pred == shared.label).mean() - (part.pred == part.label).mean())
    assert table.set_index("method").loc["ref2", "paired_rows"] == 400
    assert paired_on(gen, table) == " on 200 rows" and paired_on(table.iloc[2], table) == ""
