"""Dashboard: the loaders on constructed results, DVC's diffs in a real temp repo, and the real app served on
127.0.0.1 and loaded in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

With PEFTLAB_SCREENSHOT=docs/dashboard.png the browser test saves the README screenshot of the committed
results (`PEFTLAB_SCREENSHOT=docs/dashboard.png pytest tests/test_dashboard.py -k committed`).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO
from peftlab.dashboard import data as D
from peftlab.dashboard import experiments as X
from peftlab.dashboard import streamlit_argv

CHROMIUM = os.environ.get("PEFTLAB_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PEFTLAB_CHROMEDRIVER", "/usr/bin/chromedriver")


def metrics(acc: float, f1: float, cm=((40, 10), (10, 40))) -> dict:
    return {"accuracy": acc, "f1_macro": f1, "roc_auc": 0.9, "pr_auc": 0.9, "n": 100,
            "support": {"negative": 50, "positive": 50}, "confusion_matrix": [list(r) for r in cm],
            "ci95": {"accuracy": [acc - 0.05, acc + 0.05]}}


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture()
def results(tmp_path) -> Path:
    """A repo folder with the results files of a small pipeline run: main, one sweep run, two baselines."""
    write(tmp_path / "metrics/evaluate.json", metrics(0.80, 0.80))
    write(tmp_path / "metrics/sweep/big/evaluate.json", metrics(0.90, 0.88))
    write(tmp_path / "metrics/baseline.json", {"majority": metrics(0.50, 0.33), "tfidf_logreg": metrics(0.85, 0.84),
                                               "note": "not a method"})
    write(tmp_path / "metrics/benchmark.json", {
        "main": {"latency_ms_p50": 10.0, "samples_per_s": 300.0, "peak_mem_mb": 700.0},
        "big": {"latency_ms_p50": 100.0, "samples_per_s": 30.0, "peak_mem_mb": 1500.0},
        "environment": {"device": "cpu"}})
    (tmp_path / "params.yaml").write_text("model: {name: tiny}\nsweep: {big: {model: {name: large}}}\n"
                                          "baseline: {methods: [majority, tfidf_logreg], llm: l, encoder: e}\n")
    return tmp_path


def test_leaderboard_ranks_every_method_by_the_composite(results):
    board, source = D.leaderboard(results)
    assert source.startswith("computed")
    assert list(board["method"]) == ["tfidf_logreg", "main", "big", "majority"]   # 0.90, 0.88, 0.60, 0
    row = board.set_index("method")
    # main: acc (0.80-0.50)/0.40 = 0.75, f1 (0.80-0.33)/0.55, fastest and highest throughput -> 1 and 1
    f1n = (0.80 - 0.33) / (0.88 - 0.33)
    assert row.loc["main", "composite"] == pytest.approx(0.3 * 0.75 + 0.3 * f1n + 0.2 + 0.2)
    # big: best quality, slowest: only the accuracy and F1 terms count
    assert row.loc["big", "composite"] == pytest.approx(0.6)
    # tfidf_logreg has no benchmark entry: scored on accuracy and F1 alone, with 60% of the weight
    assert row.loc["tfidf_logreg", "composite"] == pytest.approx((0.3 * 0.875 + 0.3 * (0.84 - 0.33) / 0.55) / 0.6)
    assert row.loc["tfidf_logreg", "coverage"] == pytest.approx(0.6) and row.loc["main", "coverage"] == 1.0
    assert row.loc["big", "model"] == "large" and row.loc["main", "model"] == "tiny"
    assert row.loc["tfidf_logreg", "kind"] == "classical" and row.loc["majority", "kind"] == "dummy"
    assert pd.isna(row.loc["majority", "latency_ms_p50"]) and row.loc["big", "peak_mem_mb"] == 1500.0
    assert row.loc["main", "acc_ci_low"] == pytest.approx(0.75)


def test_leaderboard_uses_the_compare_stage_composite_when_it_covers_every_method(results):
    # the shape peftlab/compare.py writes: {"methods": [{"method", "score", "rank", ...}]}, poison rows unranked
    rows = [{"method": m, "kind": "x", "score": s} for m, s in
            [("majority", 0.9), ("main", 0.1), ("big", 0.2), ("tfidf_logreg", 0.3), ("poison:count10", None)]]
    write(results / "reports/results.json", {"reference": "majority", "methods": rows})
    board, source = D.leaderboard(results)
    assert source.startswith("reports/results.json")
    assert list(board["method"]) == ["majority", "tfidf_logreg", "big", "main"]
    write(results / "reports/results.json", rows[:2])      # a partial table: our own ranking instead
    assert D.leaderboard(results)[1].startswith("computed")


def test_missing_stages_give_empty_results_not_errors(tmp_path):
    (tmp_path / "metrics").mkdir()
    board, _ = D.leaderboard(tmp_path)
    assert board.empty and "composite" in board
    assert D.training_curves(tmp_path).empty and D.poison_settings(tmp_path).empty and D.defenses(tmp_path).empty
    assert D.split_summary(tmp_path) is None
    assert D.not_run("benchmark") == "The `benchmark` stage has not run yet: run `dvc repro benchmark`."


def test_a_corrupt_metrics_file_is_named_in_one_line(results):
    (results / "metrics/benchmark.json").write_text('{"main": {"latency')
    with pytest.raises(D.DataError, match=r"metrics/benchmark.json is not valid JSON"):
        D.leaderboard(results)


def test_confusion_roc_pr_and_training_curves(results):
    main = D.methods(results)[0]
    cm = D.confusion(main.metrics)
    assert cm.to_dict("records")[1] == {"actual": "negative", "predicted": "positive", "count": 10}
    assert D.roc_pr(main) is None                           # neither predictions nor committed curves
    write(results / "plots/evaluate/roc.json", [{"class": "positive", "fpr": 0.0, "tpr": 0.0}])
    write(results / "plots/evaluate/pr.json", [{"class": "positive", "recall": 1.0, "precision": 0.5}])
    assert D.roc_pr(main)[2].endswith("plots/evaluate")
    preds = pd.DataFrame({"label": [0, 0, 1, 1], "prob_negative": [0.9, 0.4, 0.35, 0.2],
                          "prob_positive": [0.1, 0.6, 0.65, 0.8]})
    main.predictions.parent.mkdir(parents=True)
    preds.to_parquet(main.predictions)
    roc, pr, source = D.roc_pr(main)
    assert source.endswith("main.parquet") and set(roc["class"]) == {"positive"}
    assert roc[["fpr", "tpr"]].iloc[-1].tolist() == [1.0, 1.0] and pr["precision"].max() == 1.0
    tsv = results / "dvclive/main/plots/metrics"
    (tsv / "eval").mkdir(parents=True)
    (tsv / "loss.tsv").write_text("step\tloss\n0\t0.7\n1\t0.5\n")
    (tsv / "eval/accuracy.tsv").write_text("timestamp\tstep\taccuracy\n1\t1\t0.8\n")
    curves = D.training_curves(results)
    assert sorted(curves["metric"].unique()) == ["eval/accuracy", "loss"]
    assert curves[curves["metric"] == "eval/accuracy"]["value"].tolist() == [0.8]


def test_poison_settings_fall_back_to_the_per_setting_files(tmp_path):
    write(tmp_path / "metrics/poison/count10-n1000.json", {"attack": "badnets", "count": 10, "rate": 0.01,
                                                           "train_rows": 1000, "cacc": 0.7, "asr": 0.9})
    write(tmp_path / "metrics/poison/addsent-1pct.json", {"attack": "addsent", "count": 20, "cacc": 0.8, "asr": 0.2})
    write(tmp_path / "metrics/poison/defenses.json", {"setting": "count10-n1000", "before": {"cacc": 0.7, "asr": 0.9},
                                                      "spectral": {"flagged": 3, "cacc": 0.71, "asr": 0.5}})
    df = D.poison_settings(tmp_path).set_index("setting")
    assert df.loc["count10-n1000", "count_sweep"] and not df.loc["addsent-1pct", "count_sweep"]
    d = D.defenses(tmp_path)
    assert d["defense"].tolist() == ["none (poisoned model)", "spectral"] and d.attrs["setting"] == "count10-n1000"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
def test_experiment_deltas_come_from_dvc(tmp_path):
    """Two commits and a `dvc exp run` in a real git + DVC repo; the deltas are dvc's own diffs."""
    repo, dvc = tmp_path, X._dvc()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    subprocess.run([*dvc, "init", "-q"], cwd=repo, check=True)
    (repo / "score.py").write_text("import json, yaml\nr = yaml.safe_load(open('params.yaml'))['lora']['r']\n"
                                   "json.dump({'accuracy': r / 100}, open('m.json', 'w'))\n")
    (repo / "dvc.yaml").write_text(f"stages:\n  score:\n    cmd: {sys.executable} score.py\n    deps: [score.py]\n"
                                   "    params: [lora.r]\n    metrics:\n      - m.json: {cache: false}\n")
    revs = []
    for r in (8, 16):
        (repo / "params.yaml").write_text(f"lora: {{r: {r}}}\n")
        subprocess.run([*dvc, "repro", "-q"], cwd=repo, check=True)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", f"r={r}")
        revs.append(_git(repo, "rev-parse", "HEAD"))
    first, second = revs
    subprocess.run([*dvc, "exp", "run", "-q", "-S", "lora.r=32", "--name", "r32"], cwd=repo, check=True,
                   capture_output=True)                    # applied to the workspace: accuracy 0.32

    m = X.metrics_diff(repo, first, second)
    assert m[["file", "metric", "A", "B"]].values.tolist() == [["m.json", "accuracy", 0.08, 0.16]]
    assert m["B - A"].iloc[0] == pytest.approx(0.08)
    p = X.params_diff(repo, first, second)
    assert p[["param", "A", "B"]].values.tolist() == [["lora.r", "8", "16"]]
    back = X.metrics_diff(repo, X.WORKSPACE, first)          # workspace on the left: old and new swapped back
    assert back[["A", "B"]].values.tolist() == [[0.32, 0.08]] and back["B - A"].iloc[0] == pytest.approx(-0.24)
    assert X.metrics_diff(repo, "r32", second)[["A", "B"]].values.tolist() == [[0.32, 0.16]]
    assert X.metrics_diff(repo, second, second).empty
    shown = X.dvc_json(repo, ["exp", "show"])
    picker = X.revisions(repo, shown)
    assert [(r.rev, r.kind) for r in picker] == [(X.WORKSPACE, "workspace"), ("r32", "experiment"),
                                                 (second, "commit"), (first, "commit")]
    assert picker[1].label == f"exp r32 (on {second[:7]})" and picker[2].label.endswith("r=16")
    table = X.exp_table(shown).set_index("rev")
    assert table.loc["r32", "m.json:accuracy"] == 0.32 and table.loc["r32", "kind"] == "experiment"
    with pytest.raises(X.ExperimentsError, match="not a DVC repository"):
        X.check_repo(tmp_path / "elsewhere")


def test_launcher_refuses_a_missing_repo_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "peftlab.dashboard", "--repo", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: --repo {tmp_path / 'nope'} is not a directory; "
                                   f"allowed: the path of a peftlab repo")
    argv = streamlit_argv(tmp_path, 8600)
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert argv[argv.index("--browser.gatherUsageStats") + 1] == "false"


# --- the page script, run by Streamlit's own test harness (no browser) -----------------------------------

APP = REPO / "peftlab" / "dashboard" / "app.py"
TABS = ["Confusion matrices", "ROC and PR", "Training curves", "Poisoning", "Experiments", "Data split"]


def run_page(monkeypatch, repo: Path, tab: str | None = None):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(sys, "argv", [str(APP), "--repo", str(repo)])
    at = AppTest.from_file(str(APP), default_timeout=120)
    if tab:
        at.query_params["tab"] = tab
    return at.run()


def page_text(at) -> str:
    """Every piece of text the page script wrote (titles, captions, markdown, alerts), one string."""
    kinds = ("title", "header", "subheader", "caption", "markdown", "text", "info", "warning", "error", "success")
    return "\n".join(str(e.value) for k in kinds for e in getattr(at, k))


def absolute_paths_of(repo: Path) -> set[str]:
    return {str(repo), str(repo.resolve())}


@pytest.mark.slow
@pytest.mark.parametrize("tab", TABS)
def test_every_tab_renders_the_committed_results(monkeypatch, tab):
    at = run_page(monkeypatch, REPO, tab)
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    text = page_text(at)
    assert REPO.name in text and not [p for p in absolute_paths_of(REPO) if p in text]   # screenshots stay anonymous
    assert not [i.value for i in at.info if "has not run yet" in i.value]
    board = at.dataframe[0].value
    assert set(board["method"]) == {m.name for m in D.methods(REPO)}
    subheaders = [h.value for h in at.subheader]
    if tab == "Experiments":
        assert subheaders[:2] == ["Metric deltas (B - A)", "Param deltas"]
    if tab == "Poisoning":
        assert any(h.startswith("Defenses against") for h in subheaders) and len(at.dataframe) == 3


def test_sidebar_filters_and_sorts_the_leaderboard(monkeypatch, results):
    at = run_page(monkeypatch, results)
    assert at.dataframe[0].value["method"].tolist() == ["tfidf_logreg", "main", "big", "majority"]
    at.sidebar.selectbox[0].select("latency_ms_p50").run()          # ascending by default: lower is better
    assert at.dataframe[0].value["method"].tolist()[:2] == ["main", "big"]
    at.sidebar.text_input[0].input("BIG").run()
    assert at.dataframe[0].value["method"].tolist() == ["big"]
    at.sidebar.text_input[0].input("").run()
    at.sidebar.slider[0].set_value(0.82).run()
    assert set(at.dataframe[0].value["method"]) == {"big", "tfidf_logreg"}
    at.sidebar.slider[0].set_value(0.0).run()
    at.sidebar.multiselect[0].unselect("fine-tuned").run()
    assert set(at.dataframe[0].value["method"]) == {"tfidf_logreg", "majority"}


def test_errors_on_the_page_name_files_relative_to_the_repo(monkeypatch, results):
    (results / "metrics/benchmark.json").write_text('{"main": {"latency')
    at = run_page(monkeypatch, results)
    errors = [e.value for e in at.error]
    assert errors and errors[0].startswith("Leaderboard: metrics/benchmark.json is not valid JSON")
    assert not [p for p in absolute_paths_of(results) if p in page_text(at)]


@pytest.mark.parametrize("tab,stage", [("Confusion matrices", "evaluate"), ("Training curves", "train"),
                                       ("Poisoning", "poison_report"), ("Data split", "split")])
def test_each_section_names_the_stage_to_run(monkeypatch, tmp_path, tab, stage):
    (tmp_path / "metrics").mkdir()
    at = run_page(monkeypatch, tmp_path, tab)
    assert not at.exception and not at.error
    assert D.not_run(stage) in [i.value for i in at.info]
    assert D.not_run("evaluate") in [w.value for w in at.warning]


# --- the real app in headless Chromium ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listen_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port`, from /proc/net/tcp{,6} (Linux)."""
    found = set()
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        for line in path.read_text().splitlines()[1:] if path.exists() else []:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]) if len(addr) == 8 else addr)
    return found


@contextlib.contextmanager
def served(repo: Path):
    """`python -m peftlab.dashboard` on a free port; yields (url, launch time), stops it afterwards."""
    port = _free_port()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "peftlab.dashboard", "--port", str(port), "--repo", str(repo)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(300):
            if proc.poll() is not None:
                pytest.fail(f"the dashboard exited with {proc.returncode}: {proc.stdout.read()}")
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).status == 200:
                    break
            time.sleep(0.1)
        if Path("/proc/net/tcp").exists():
            assert _listen_addresses(port) == {"127.0.0.1"}
        yield f"http://127.0.0.1:{port}/", start
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.fail(f"headless Chromium is needed: {CHROMIUM} and {CHROMEDRIVER} (run scripts/install-test-browser.sh, "
                    f"or set PEFTLAB_CHROMIUM and PEFTLAB_CHROMEDRIVER)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1500,1250"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 60.0):
    """Poll a JavaScript expression until it returns something truthy (Streamlit renders asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    text = driver.execute_script("return document.body.innerText")
    pytest.fail(f"timed out waiting for: {script}\npage text: {text[:2000]}")


LEADERBOARD_ROWS = """
const grid = document.querySelector('[data-testid="stDataFrame"] table[role="grid"]');
if (!grid) return null;
const rows = Array.from(grid.querySelectorAll('tbody tr')).map(r => Array.from(r.children).map(c => c.textContent));
return rows.length ? rows : null;"""
PAGE_DONE = "return document.body.innerText.includes('Page rendered in')"
ALERTS = "return Array.from(document.querySelectorAll('[data-testid=stAlert]')).map(e => e.innerText)"
EXCEPTIONS = "return document.querySelectorAll('[data-testid=stException]').length"


@pytest.mark.slow
def test_committed_results_show_every_method_in_the_leaderboard(browser):
    expected = {m.name for m in D.methods(REPO)}
    assert len(expected) >= 3, "the committed metrics/ should hold the main run, the sweep and the baselines"
    with served(REPO) as (url, start):
        browser.get(url)
        rows = wait_for(browser, LEADERBOARD_ROWS)
        seconds = time.perf_counter() - start
        names = {r[1] for r in rows}                      # columns: rank, method, ...
        if names != expected:                             # rows arrive with the element; let the grid settle
            rows = wait_for(browser, LEADERBOARD_ROWS)
            names = {r[1] for r in rows}
        print(f"launch to leaderboard rows in Chromium: {seconds:.1f} s")   # shown, never asserted: speed is
        # a benchmark's job, and a loaded CI machine would fail a bound that an idle one meets
        assert names == expected and [r[0] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
        wait_for(browser, PAGE_DONE)
        assert wait_for(browser, "return document.querySelectorAll('[data-testid=stVegaLiteChart] canvas, "
                                 "[data-testid=stVegaLiteChart] svg').length")  # accuracy-latency chart drawn
        assert browser.execute_script(EXCEPTIONS) == 0
        assert not any("has not run yet" in a for a in browser.execute_script(ALERTS))
        text = browser.execute_script("return document.body.innerText")   # what the screenshot shows
        assert REPO.name in text and not [p for p in absolute_paths_of(REPO) if p in text]
        shot = os.environ.get("PEFTLAB_SCREENSHOT")
        if shot:
            browser.set_window_size(1500, 1750)           # the leaderboard and the accuracy-latency chart
            time.sleep(2.0)                               # let the layout and vega's transitions settle
            dest = Path(shot) if Path(shot).is_absolute() else REPO / shot
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".tmp.png")
            assert browser.save_screenshot(str(tmp))
            tmp.replace(dest)


@pytest.mark.slow
def test_empty_metrics_show_the_not_run_yet_message(browser, tmp_path):
    (tmp_path / "metrics").mkdir()
    with served(tmp_path) as (url, _):
        browser.get(url)
        wait_for(browser, PAGE_DONE)
        alerts = browser.execute_script(ALERTS)
        assert "The evaluate stage has not run yet: run dvc repro evaluate." in alerts
        assert "The benchmark stage has not run yet: run dvc repro benchmark." in alerts
        assert browser.execute_script(EXCEPTIONS) == 0
        assert browser.execute_script(LEADERBOARD_ROWS) is None
        browser.get(url + "?tab=Experiments")                # not a git/DVC repo: one line, no trace
        wait_for(browser, PAGE_DONE)
        assert any("is not a DVC repository" in a for a in browser.execute_script(ALERTS))
        assert browser.execute_script(EXCEPTIONS) == 0
