"""The dashboard page (Streamlit): `streamlit run peftlab/dashboard/app.py -- --repo PATH`, or the launcher
`python -m peftlab.dashboard`, which also binds it to 127.0.0.1 and turns usage statistics off.

Only rendering lives here; what is shown comes from data.py and experiments.py. The leaderboard renders
first and the slow parts (dvc subprocesses for the experiment picker) last, so the table is on screen within
seconds. Loaders are cached by the modification times of the results files, so a `dvc repro` shows up on the
next rerun (the Refresh button) without restarting.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from peftlab.core import paths
from peftlab.dashboard import data as D
from peftlab.dashboard import experiments as X

START = time.perf_counter()
FMT3 = st.column_config.NumberColumn(format="%.3f")
FMT1 = st.column_config.NumberColumn(format="%.1f")


def repo_path() -> Path:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=os.environ.get("PEFTLAB_REPO", "."))
    args, _ = ap.parse_known_args(sys.argv[1:])
    return Path(args.repo).resolve()


def shown(text: str, repo: Path | None = None) -> str:
    """`text` with the repo's absolute path replaced by repo-relative paths (and the folder's name for the repo
    itself): the page, and screenshots of it, never show where on which machine the repo lives."""
    repo = repo or repo_path()
    return text.replace(f"{repo}{os.sep}", "").replace(str(repo), repo.name)


@contextlib.contextmanager
def guarded(what: str):
    """A results file that exists but cannot be read shows one line in its section, never a stack trace."""
    try:
        yield
    except (D.DataError, X.ExperimentsError) as e:
        st.error(shown(f"{what}: {e}"))
    except Exception as e:  # noqa: BLE001 - one broken file must not take the other sections down with it
        st.error(shown(f"{what} could not be shown: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))


# --- cached loaders (keyed by the results files' mtimes) ---------------------------------------------------

@st.cache_data(show_spinner=False)
def load_leaderboard(repo: str, key: tuple, weights: tuple) -> tuple[pd.DataFrame, str]:
    return D.leaderboard(Path(repo), dict(weights))


@st.cache_data(show_spinner=False)
def load_methods(repo: str, key: tuple) -> dict[str, D.Method]:
    return {m.name: m for m in D.methods(Path(repo))}


@st.cache_data(show_spinner=False)
def load_roc_pr(repo: str, key: tuple, name: str):
    return D.roc_pr(load_methods(repo, key)[name])


@st.cache_data(show_spinner=False)
def load_curves(repo: str, key: tuple) -> pd.DataFrame:
    return D.training_curves(Path(repo))


@st.cache_data(show_spinner="Asking dvc for experiments...", ttl=30)
def load_exp_show(repo: str):
    return X.dvc_json(Path(repo), ["exp", "show"])


@st.cache_data(show_spinner="Asking dvc for the differences...", ttl=30)
def load_diffs(repo: str, a: str, b: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    with ThreadPoolExecutor(2) as pool:  # two dvc processes at once: each spends most of its time starting up
        metrics = pool.submit(X.metrics_diff, Path(repo), a, b)
        params = pool.submit(X.params_diff, Path(repo), a, b)
        return metrics.result(), params.result()


# --- sections --------------------------------------------------------------------------------------------

def sidebar(kinds: list[str]) -> tuple[dict, dict[str, float]]:
    """Filters, sort order and composite weights; drawn before the table so the weights rank it."""
    sb = st.sidebar
    if sb.button("Refresh", help="reread every results file and ask dvc again"):
        st.cache_data.clear()
        st.rerun()
    sb.header("Filter")
    f = {"kinds": sb.multiselect("Kind", kinds, default=kinds),
         "text": sb.text_input("Method or model contains", ""),
         "min_acc": sb.slider("Minimum accuracy", 0.0, 1.0, 0.0, 0.01)}
    sb.header("Sort")
    f["by"] = sb.selectbox("Sort by", ["composite", "accuracy", "f1_macro", "roc_auc", "latency_ms_p50",
                                       "samples_per_s", "peak_mem_mb"])
    f["asc"] = sb.toggle("Ascending", value=f["by"] in D.LOWER_IS_BETTER)
    sb.header("Composite weights")
    names = ["accuracy", "macro F1", "throughput", "latency (lower is better)"]
    weights = {c: sb.number_input(label, 0.0, 1.0, w, 0.05)
               for (c, w), label in zip(D.DEFAULT_WEIGHTS.items(), names)}
    sb.caption("Used unless reports/results.json (the compare stage) holds the composite.")
    return f, weights


def filtered(board: pd.DataFrame, f: dict) -> pd.DataFrame:
    view = board[board["kind"].isin(f["kinds"]) & (board["accuracy"].fillna(0) >= f["min_acc"])]
    if f["text"]:
        hay = view["method"].str.cat(view["model"].fillna(""), sep=" ").str.lower()
        view = view[hay.str.contains(f["text"].lower(), regex=False)]
    return view.sort_values(f["by"], ascending=f["asc"], na_position="last")


def leaderboard_section(repo: Path, board: pd.DataFrame, view: pd.DataFrame, source: str) -> None:
    st.header("Leaderboard")
    if not (repo / paths.eval_metrics(paths.MAIN)).is_file():
        st.warning(D.not_run("evaluate"))
    if not (repo / paths.BASELINE_METRICS).is_file():
        st.info(D.not_run("baseline"))
    if len(board) and not (repo / paths.BENCHMARK_METRICS).is_file():
        st.info(D.not_run("benchmark") + " Latency, throughput and memory stay empty until then.")
    if not len(board):
        return
    n = board["n"].max()
    st.caption(f"{len(view)} of {len(board)} methods on the test split{f' (n = {int(n)})' if pd.notna(n) else ''}. "
               f"Composite: {source}; a method without speed numbers is scored on the metrics it has "
               f"(`coverage` = its share of the weight). Click a column header to sort.")
    cfg = {c: FMT3 for c in ("accuracy", "acc_ci_low", "acc_ci_high", "f1_macro", "roc_auc", "pr_auc", "coverage")}
    cfg.update({c: FMT1 for c in ("latency_ms_p50", "latency_ms_p99", "samples_per_s", "peak_mem_mb")})
    cfg.update(adapter_mb=st.column_config.NumberColumn(format="%.2f"), n=st.column_config.NumberColumn(format="%d"),
               trainable_params=st.column_config.NumberColumn(format="localized"),
               composite=st.column_config.ProgressColumn(format="%.3f", min_value=0.0, max_value=1.0))
    order = ["rank", "method", "kind", "model", "composite", "accuracy", "acc_ci_low", "acc_ci_high", "f1_macro",
             "roc_auc", "pr_auc", "latency_ms_p50", "latency_ms_p99", "samples_per_s", "peak_mem_mb", "adapter_mb",
             "trainable_params", "n", "coverage"]
    st.dataframe(view, hide_index=True, column_config=cfg, column_order=order, height="content", key="leaderboard")


def tradeoff_section(view: pd.DataFrame) -> None:
    st.header("Accuracy against latency")
    timed = view.dropna(subset=["latency_ms_p50", "accuracy"])
    if not len(timed):
        st.info(D.not_run("benchmark"))
        return
    base = alt.Chart(timed).encode(
        x=alt.X("latency_ms_p50:Q", scale=alt.Scale(type="log"), title="latency p50, batch 1 (ms, log)"),
        y=alt.Y("accuracy:Q", scale=alt.Scale(zero=False), title="test accuracy"))
    points = base.mark_circle(opacity=0.7).encode(
        size=alt.Size("peak_mem_mb:Q", title="peak memory (MB)", scale=alt.Scale(range=[80, 1200])),
        color=alt.Color("kind:N"),
        tooltip=["method", "model", alt.Tooltip("accuracy:Q", format=".3f"), alt.Tooltip("f1_macro:Q", format=".3f"),
                 alt.Tooltip("latency_ms_p50:Q", format=".1f"), alt.Tooltip("samples_per_s:Q", format=".1f"),
                 alt.Tooltip("peak_mem_mb:Q", format=".0f")])
    bars = base.mark_rule().encode(y="acc_ci_low:Q", y2="acc_ci_high:Q")
    labels = base.mark_text(align="left", dx=10, dy=-8).encode(text="method:N")
    st.altair_chart((bars + points + labels).interactive(), width="stretch")
    untimed = sorted(set(view["method"]) - set(timed["method"]))
    if untimed:
        st.caption(f"Not benchmarked (no latency): {', '.join(untimed)}. Marker size: peak memory; "
                   f"vertical bars: 95% CI of accuracy. Drag to pan, scroll to zoom.")


def confusion_section(methods: dict[str, D.Method], default: list[str]) -> None:
    chosen = st.multiselect("Methods", list(methods), default=default, key="cm_methods")
    share = st.toggle("Share of each actual class", value=False)
    cols = st.columns(3)
    for i, name in enumerate(chosen):
        m = methods[name]
        cm = D.confusion(m.metrics)
        if share:
            cm["count"] = cm["count"] / cm.groupby("actual")["count"].transform("sum").clip(lower=1)
        heat = alt.Chart(cm).encode(x=alt.X("predicted:N", sort=None), y=alt.Y("actual:N", sort=None))
        chart = (heat.mark_rect().encode(color=alt.Color("count:Q", legend=None, scale=alt.Scale(scheme="blues")))
                 + heat.mark_text(fontSize=14).encode(
                     text=alt.Text("count:Q", format=".2f" if share else "d"),
                     color=alt.condition(alt.datum.count > cm["count"].max() / 2, alt.value("white"),
                                         alt.value("black"))))
        with cols[i % 3]:
            unparsed = m.metrics.get("unparsed") or 0
            st.markdown(f"**{name}** · accuracy {m.metrics.get('accuracy', 0):.3f}"
                        + (f" · {unparsed} unparsed answers (not in the matrix)" if unparsed else ""))
            st.altair_chart(chart.properties(height=220), width="stretch")


def roc_pr_section(repo: str, key: tuple, methods: dict[str, D.Method], default: list[str]) -> None:
    chosen = st.multiselect("Methods", list(methods), default=default, key="roc_methods")
    rocs, prs, missing = [], [], []
    for name in chosen:
        got = load_roc_pr(repo, key, name)
        if got is None:
            missing.append(name)
            continue
        roc, pr, _ = got
        rocs.append(roc.assign(method=name))
        prs.append(pr.assign(method=name))
    if missing:
        st.info(f"No per-row predictions for {', '.join(missing)}: `data/predictions/` is tracked by DVC; "
                f"run `dvc pull` (or `dvc repro baseline` / `dvc repro evaluate`) to get them.")
    if not rocs:
        return
    roc, pr = pd.concat(rocs), pd.concat(prs)
    dash = alt.StrokeDash("class:N") if roc["class"].nunique() > 1 else alt.value([1, 0])
    left, right = st.columns(2)
    left.altair_chart(alt.Chart(roc).mark_line().encode(
        x=alt.X("fpr:Q", title="false positive rate"), y=alt.Y("tpr:Q", title="true positive rate"),
        color="method:N", strokeDash=dash, tooltip=["method", "class"]).properties(title="ROC").interactive(),
        width="stretch")
    right.altair_chart(alt.Chart(pr).mark_line(interpolate="step-after").encode(
        x=alt.X("recall:Q"), y=alt.Y("precision:Q", scale=alt.Scale(zero=False)), color="method:N",
        strokeDash=dash, tooltip=["method", "class"]).properties(title="Precision-recall").interactive(),
        width="stretch")


def training_section(curves: pd.DataFrame) -> None:
    if not len(curves):
        st.info(D.not_run("train"))
        return
    runs = sorted(curves["run"].unique())
    chosen = st.multiselect("Runs", runs, default=runs, key="train_runs")
    metrics = sorted(curves["metric"].unique())
    pick = [m for m in ("loss", "eval/loss", "eval/accuracy") if m in metrics] or metrics[:1]
    shown = st.multiselect("Series", metrics, default=pick, key="train_series")
    cols = st.columns(max(1, min(3, len(shown))))
    for i, metric in enumerate(shown):
        d = curves[(curves["metric"] == metric) & curves["run"].isin(chosen)]
        cols[i % len(cols)].altair_chart(alt.Chart(d).mark_line(point=bool(d.groupby("run").size().min() < 3)).encode(
            x="step:Q", y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)), color="run:N",
            tooltip=["run", "step", alt.Tooltip("value:Q", format=".4f")]).properties(title=metric).interactive(),
            width="stretch")
    st.caption("From dvclive/<run>/plots/metrics/ (the Trainer's DVCLiveCallback), one line per run.")


def poison_section(repo: Path) -> None:
    settings = D.poison_settings(repo)
    if not len(settings):
        st.info(D.not_run("poison_report"))
        return
    if not (repo / paths.POISON_SUMMARY).is_file():
        st.info(D.not_run("poison_report") + " Showing the per-setting files of metrics/poison/.")
    sweep = settings[settings["count_sweep"]]
    if len(sweep):
        x = st.radio("Poisoned rows as", ["count", "rate"], horizontal=True)
        long = sweep.melt(id_vars=["setting", "count", "rate", "train_rows"], value_vars=["asr", "cacc"],
                          var_name="metric", value_name="value")
        st.altair_chart(alt.Chart(long).mark_line(point=True).encode(
            x=alt.X(f"{x}:Q", title=f"poisoned training rows ({x})"), y=alt.Y("value:Q", title=None),
            color=alt.Color("train_rows:N", title="training rows"),
            tooltip=["setting", "count", alt.Tooltip("rate:Q", format=".4f"), alt.Tooltip("value:Q", format=".3f")],
        ).properties(height=260).facet(column=alt.Column("metric:N", title="ASR and CACC")), width="stretch")
    st.dataframe(settings.drop(columns=["count_sweep"]), hide_index=True, key="poison_table",
                 column_config={c: FMT3 for c in ("cacc", "asr", "ref_asr", "asr_gain",
                                                     "flip_rate", "clean_cacc", "cacc_drop")})
    d = D.defenses(repo)
    if len(d):
        st.subheader(f"Defenses against {d.attrs.get('setting', '')}")
        st.dataframe(d, hide_index=True, key="defenses_table",
                     column_config={c: FMT3 for c in d.columns if d[c].dtype.kind == "f" and c != "train_seconds"})


def experiments_section(repo: Path) -> None:
    X.check_repo(repo)
    shown = load_exp_show(str(repo))
    revs = X.revisions(repo, shown)
    labels = {r.label: r for r in revs}
    names = list(labels)
    commits = [i for i, r in enumerate(revs) if r.kind == "commit"]
    c1, c2 = st.columns(2)
    a = c1.selectbox("A (old)", names, index=commits[0] if commits else 0, key="exp_a")
    b = c2.selectbox("B (new)", names, index=0, key="exp_b")
    metric_diff, param_diff = load_diffs(str(repo), labels[a].rev, labels[b].rev)
    st.subheader("Metric deltas (B - A)")
    if len(metric_diff):
        st.dataframe(metric_diff, hide_index=True, key="metric_diff",
                     column_config={"B - A": st.column_config.NumberColumn(format="%+.4f")})
    else:
        st.caption("No metric differs.")
    st.subheader("Param deltas")
    if len(param_diff):
        st.dataframe(param_diff, hide_index=True, key="param_diff")
    else:
        st.caption("No param differs.")
    with st.expander("Every experiment (dvc exp show)"):
        st.dataframe(X.exp_table(shown), hide_index=True)
    st.caption("Run more with `dvc exp run -S lora.r=16`; commits come from `git log`.")


def split_section(repo: Path) -> None:
    s = D.split_summary(repo)
    if s is None:
        st.info(D.not_run("split"))
        return
    st.dataframe(s, hide_index=True, key="split_table")
    st.caption(" · ".join(f"{k.replace('_', ' ')}: {v:,}" for k, v in s.attrs["counts"].items()))


def main() -> None:
    st.set_page_config(page_title="peftlab results", layout="wide")
    repo = repo_path()
    st.title("peftlab results")
    st.caption(f"`{repo.name}` · live from metrics/, reports/, dvclive/, plots/ and `dvc exp show`")
    key = D.mtime_key(repo)
    with guarded("Leaderboard"):
        kinds = sorted(load_leaderboard(str(repo), key, tuple(D.DEFAULT_WEIGHTS.items()))[0]["kind"].unique())
        f, weights = sidebar(kinds)
        board, source = load_leaderboard(str(repo), key, tuple(weights.items()))
        view = filtered(board, f)
        leaderboard_section(repo, board, view, source)
        tradeoff_section(view)
    methods = {}
    with guarded("Results"):
        methods = load_methods(str(repo), key)
    fine = [n for n, m in methods.items() if m.kind == "fine-tuned"]
    default = fine + [n for n in ("llm_zeroshot", "tfidf_logreg") if n in methods]
    # Lazy tabs: only the open one runs, so the dvc subprocesses of the experiment picker cost nothing until
    # it is opened; `?tab=Experiments` in the URL opens one directly.
    names = ["Confusion matrices", "ROC and PR", "Training curves", "Poisoning", "Experiments", "Data split"]
    tabs = dict(zip(names, st.tabs(names, key="tab", on_change="rerun", bind="query-params")))
    sections = {
        "Confusion matrices": lambda: (confusion_section(methods, default) if methods
                                       else st.info(D.not_run("evaluate"))),
        "ROC and PR": lambda: (roc_pr_section(str(repo), key, methods, default) if methods
                               else st.info(D.not_run("evaluate"))),
        "Training curves": lambda: training_section(load_curves(str(repo), key)),
        "Poisoning": lambda: poison_section(repo),
        "Experiments": lambda: experiments_section(repo),
        "Data split": lambda: split_section(repo),
    }
    for name, tab in tabs.items():
        if tab.open:
            with tab, guarded(name):
                sections[name]()
    st.caption(f"Page rendered in {time.perf_counter() - START:.1f} s.", help="time of this script run")


main()
