"""compare: every metrics file in one table, a composite ranking, paired tests against the winner.

Which model wins depends on what a reader weighs, so the ranking is a weighted sum of min-max normalised
metrics (weights in `compare.weights`); whether a difference is real is asked of the per-row predictions on the
shared test split: McNemar's exact test (statsmodels) on the discordant pairs, and a paired bootstrap CI (scipy)
of the accuracy difference. Rendering (Markdown, LaTeX) lives in peftlab/compare_report.py, figures in
peftlab/figures.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from peftlab.core import paths
from peftlab.core.errors import PeftlabError
from peftlab.core.io import read_json

# Metrics where less is better; everything else weighted in the composite is higher-is-better.
LOWER_IS_BETTER = frozenset({"latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "ttft_ms", "peak_mem_mb",
                             "adapter_mb", "base_mb", "train_seconds", "trainable_params"})
BENCH_KEYS = ("latency_ms_p50", "latency_ms_p99", "ttft_ms", "samples_per_s", "tokens_per_s", "peak_mem_mb",
              "adapter_mb", "base_mb", "trainable_params", "train_seconds")
RANKED_KINDS = ("lora", "baseline")


@dataclass
class Method:
    """One row of the table and where its per-row predictions and training curves are."""
    name: str
    kind: str                      # lora | baseline | poison
    metrics: dict
    model: str | None = None
    predictions: Path | None = None
    curves: Path | None = None
    bench: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


def _read(path: Path) -> dict | None:
    return read_json(path) if path.exists() else None


def baseline_model(method: str, llm: str | None, encoder: str | None) -> str | None:
    """What a baseline runs on, by its family prefix (see peftlab/baseline.py)."""
    if method.startswith("llm_"):
        return llm
    if method.startswith(("emb_", "encoder_")):
        return encoder
    return {"tfidf": "tf-idf", "majority": "dummy", "stratified": "dummy"}.get(method.split("_")[0])


def collect(root: Path, runs: dict[str, str | None], llm: str | None = None, encoder: str | None = None
            ) -> tuple[list[Method], dict]:
    """Every evaluated thing under `root`: the LoRA runs (`runs`: name -> model), the baselines (`llm`,
    `encoder`: the models they use), the poisoned models; plus the test split's description. Stages that have
    not run are simply absent."""
    root = Path(root)
    bench = _read(root / paths.BENCHMARK_METRICS) or {}
    methods = []
    for run, model in runs.items():
        m = _read(root / paths.eval_metrics(run))
        if m is None:
            continue
        methods.append(Method(run, "lora", m, model, root / paths.predictions(run),
                              root / paths.curves_dir(run), bench.get(run, {}),
                              _read(root / paths.train_metrics(run)) or {}))
    for name, m in (_read(root / paths.BASELINE_METRICS) or {}).items():
        methods.append(Method(name, "baseline", m, baseline_model(name, llm, encoder),
                              predictions=root / paths.baseline_predictions(name), bench=bench.get(name, {})))
    for name, m in (_read(root / paths.POISON_SUMMARY) or {}).items():
        if isinstance(m, dict) and "cacc" in m:   # settings; "defenses" is a report of its own
            methods.append(Method(f"poison:{name}", "poison", {"accuracy": m["cacc"], "asr": m.get("asr"),
                                                               "n": m.get("n"), **m}))
    split = _read(root / paths.SPLIT_METRICS) or {}
    return methods, split.get("test", {})


def _ci(m: dict, key: str) -> tuple[float | None, float | None]:
    ci = (m.get("ci95") or {}).get(key) or [None, None]
    return ci[0], ci[1]


def table(methods: list[Method]) -> pd.DataFrame:
    """One row per method, the metrics and speed columns the composite and the reports use."""
    rows = []
    for me in methods:
        m = me.metrics
        lo, hi = _ci(m, "accuracy")
        flo, fhi = _ci(m, "f1_macro")
        speed = {k: me.bench.get(k, me.train.get(k)) for k in BENCH_KEYS}
        rows.append({"method": me.name, "kind": me.kind, "model": me.model, "accuracy": m.get("accuracy"),
                     "acc_ci_low": lo, "acc_ci_high": hi, "f1_macro": m.get("f1_macro"), "f1_ci_low": flo,
                     "f1_ci_high": fhi, "roc_auc": m.get("roc_auc"), "pr_auc": m.get("pr_auc"), "n": m.get("n"),
                     "unparsed": m.get("unparsed"), **speed, "asr": m.get("asr"),
                     "collapsed": m.get("collapsed")})
    return pd.DataFrame(rows).astype({"n": "Int64", "unparsed": "Int64"}) if rows else pd.DataFrame()


def weighted_score(df: pd.DataFrame, weights: dict[str, float], missing: str = "renormalize",
                   ranked: pd.Series | None = None) -> tuple[pd.Series, pd.Series]:
    """(score, coverage) of each row by the rule `composite` documents, over the `ranked` rows (default: all);
    the dashboard reuses it so its live leaderboard and this stage rank alike."""
    ranked = pd.Series(True, index=df.index) if ranked is None else ranked
    total = sum(weights.values())
    num = pd.Series(0.0, index=df.index)
    have = pd.Series(0.0, index=df.index)
    for metric, w in weights.items():
        if w == 0:
            continue
        col = pd.to_numeric(df.get(metric), errors="coerce") if metric in df else pd.Series(np.nan, index=df.index)
        vals = col[ranked].dropna()
        span = vals.max() - vals.min() if len(vals) else np.nan
        norm = (col - vals.min()) / span if span and span > 0 else pd.Series(1.0, index=df.index)
        if metric in LOWER_IS_BETTER:
            norm = 1.0 - norm
        present = col.notna() & ranked
        num += np.where(present, w * norm, 0.0)
        have += np.where(present, w, 0.0)
    coverage = pd.Series(np.where(ranked, have / total, np.nan), index=df.index)
    if missing == "renormalize":
        score = num / have.replace(0, np.nan)
    elif missing == "worst":
        score = num / total
    else:
        score = (num / total).where(have >= total - 1e-12)
    return score.where(ranked), coverage


def composite(df: pd.DataFrame, weights: dict[str, float], missing: str = "renormalize") -> pd.DataFrame:
    """Add `score` (0-1), `coverage` (share of the weight the row has metrics for) and `rank`.

    Each weighted metric is min-max normalised over the ranked rows that have it (1 = best; lower-is-better
    metrics flipped; a metric equal everywhere gives 1). A row without a metric (baselines that were never
    benchmarked have no latency) is, by `missing`:
      renormalize: scored on the weights it has (score = sum w*x / sum of its w); `coverage` < 1 marks it;
      worst:       given 0 for that metric (as if it were the slowest);
      exclude:     not ranked.
    Poisoned models are listed but never ranked: they are attacks, not candidates.
    """
    df = df.copy()
    ranked = df["kind"].isin(RANKED_KINDS)
    score, df["coverage"] = weighted_score(df, weights, missing, ranked)
    df["score"] = score
    df["rank"] = df["score"].rank(ascending=False, method="min").astype("Int64")
    return df.sort_values(["rank", "accuracy"], ascending=[True, False], na_position="last").reset_index(drop=True)


# --- paired statistics on the shared test split ---------------------------------------------------------------

def load_predictions(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    missing = {"id", "label", "pred"} - set(df.columns)
    if missing:
        raise PeftlabError(f"{path}: predictions lack column {sorted(missing)[0]!r}; allowed: a file written by "
                           f"the evaluate or baseline stage (id, label, pred, prob_<label>...)")
    return df


def correct_vectors(ref: pd.DataFrame, other: pd.DataFrame, ref_name: str, other_name: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-row correctness of two methods on the rows both scored, matched by id. A pred of -1 (no answer) is
    wrong. One may cover a subset of the other's rows (a method scored on a fixed sample of the test split, such
    as free generation): the pair is then tested on those shared rows. Rows either lacks mean another split."""
    merged = ref[["id", "label", "pred"]].merge(other[["id", "label", "pred"]], on="id", suffixes=("_a", "_b"))
    if merged.empty or len(merged) not in (len(ref), len(other)):
        raise PeftlabError(f"predictions of {other_name!r} ({len(other)} rows) share {len(merged)} rows with the "
                           f"{len(ref)} of {ref_name!r}, and each has rows the other lacks; allowed: the same test "
                           f"split, or one method on a subset of the other's rows (rerun the stale stage)")
    if (merged["label_a"] != merged["label_b"]).any():
        raise PeftlabError(f"predictions of {other_name!r} and {ref_name!r} disagree on true labels; allowed: "
                           f"both scored on the same test split (rerun the stale stage)")
    return (merged["pred_a"] == merged["label_a"]).to_numpy(), (merged["pred_b"] == merged["label_b"]).to_numpy()


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> dict:
    """McNemar's exact test: only the discordant rows (one right, the other wrong) carry information."""
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    tbl = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    return {"a_only": tbl[0][1], "b_only": tbl[1][0], "p_mcnemar": float(mcnemar(tbl, exact=True).pvalue)}


def paired_bootstrap_diff(a_correct: np.ndarray, b_correct: np.ndarray, n_resamples: int, seed: int
                          ) -> tuple[float, float | None, float | None]:
    """Accuracy of a minus accuracy of b, with a percentile 95% CI from resampling rows in pairs."""
    a, b = np.asarray(a_correct, float), np.asarray(b_correct, float)
    diff = float(a.mean() - b.mean())
    if n_resamples <= 0 or len(a) < 2:
        return diff, None, None
    if np.array_equal(a, b):   # identical predictions: every resample gives 0
        return diff, 0.0, 0.0
    res = stats.bootstrap((a, b), lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis), paired=True,
                          vectorized=True, n_resamples=n_resamples, method="percentile", confidence_level=0.95,
                          random_state=seed)
    return diff, float(res.confidence_interval.low), float(res.confidence_interval.high)


def pairwise(df: pd.DataFrame, methods: list[Method], reference: str, n_resamples: int, seed: int
             ) -> pd.DataFrame:
    """Add, for each method with predictions, its accuracy difference to the reference (reference minus it),
    the paired CI, McNemar's p and Holm's adjustment over all comparisons made."""
    by_name = {m.name: m for m in methods}
    ref = by_name.get(reference)
    cols = ["acc_diff", "diff_ci_low", "diff_ci_high", "ref_only", "other_only", "p_mcnemar", "paired_rows", "p_holm"]
    df = df.assign(**{c: np.nan for c in cols})
    if ref is None or ref.predictions is None or not ref.predictions.exists():
        return df
    ref_pred = load_predictions(ref.predictions)
    for i, row in df.iterrows():
        me = by_name.get(row["method"])
        if me is None or me.name == reference or me.predictions is None or not me.predictions.exists():
            continue
        a, b = correct_vectors(ref_pred, load_predictions(me.predictions), reference, me.name)
        d, lo, hi = paired_bootstrap_diff(a, b, n_resamples, seed)
        t = mcnemar_exact(a, b)
        df.loc[i, cols[:-1]] = [d, lo, hi, t["a_only"], t["b_only"], t["p_mcnemar"], len(a)]
    tested = df["p_mcnemar"].notna()
    if tested.any():
        df.loc[tested, "p_holm"] = multipletests(df.loc[tested, "p_mcnemar"], method="holm")[1]
    return df


def choose_reference(df: pd.DataFrame, reference: str | None) -> str:
    """The top-ranked method, or the one named in compare.reference."""
    if reference:
        if reference not in set(df["method"]):
            raise PeftlabError(f"params.yaml: compare.reference = {reference!r} is not a method with metrics; "
                               f"allowed: null or one of {', '.join(df['method'])}")
        return reference
    ranked = df.dropna(subset=["score"])
    if ranked.empty:
        raise PeftlabError("no method has metrics to rank; run the evaluate or baseline stage first")
    return str(ranked.iloc[0]["method"])


# --- per-test-set and per-category results (metrics from evaluate.test_sets) ----------------------------------

def test_set_tables(methods: list[Method]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long tables from the optional `test_sets` and `categories` keys of each evaluate json."""
    sets, cats = [], []
    for me in methods:
        for ts, m in (me.metrics.get("test_sets") or {}).items():
            sets.append({"method": me.name, "test_set": str(ts), "n": m.get("n"), "accuracy": m.get("accuracy"),
                         "f1_macro": m.get("f1_macro")})
        for ts, by_cat in (me.metrics.get("categories") or {}).items():
            for cat, m in (by_cat or {}).items():
                cats.append({"method": me.name, "test_set": str(ts), "category": str(cat), "n": m.get("n"),
                             "accuracy": m.get("accuracy"), "f1_macro": m.get("f1_macro")})
    return pd.DataFrame(sets), pd.DataFrame(cats)


# --- example errors ---------------------------------------------------------------------------------------------

def example_errors(methods: list[Method], reference: str, test_path: Path, k: int) -> list[dict]:
    """The reference model's k most confident mistakes, with how many other ranked methods got each right:
    a reader sees what the winner still gets wrong, and whether anyone does better on it."""
    by_name = {m.name: m for m in methods}
    ref = by_name.get(reference)
    if k <= 0 or ref is None or ref.predictions is None or not ref.predictions.exists() or not test_path.exists():
        return []
    pred = load_predictions(ref.predictions)
    labels = [c.removeprefix("prob_") for c in pred.columns if c.startswith("prob_")]
    probs = pred[[f"prob_{label}" for label in labels]].to_numpy() if labels else None
    pred["confidence"] = [float(probs[i, p]) if probs is not None and 0 <= p < len(labels) else np.nan
                          for i, p in enumerate(pred["pred"])]
    wrong = pred[pred["pred"] != pred["label"]].sort_values(["confidence", "id"], ascending=[False, True],
                                                            na_position="last").head(k)
    others = [m for m in methods if m.kind in RANKED_KINDS and m.name != reference and m.predictions is not None
              and m.predictions.exists()]
    other_preds = [load_predictions(m.predictions).set_index("id")["pred"] for m in others]
    text = pd.read_parquet(test_path, columns=["id", "text"]).set_index("id")["text"]

    def name(i: int) -> str:
        return labels[i] if 0 <= i < len(labels) else "(no answer)"

    return [{"id": r.id, "text": str(text.get(r.id, "")), "label": name(int(r.label)), "pred": name(int(r.pred)),
             "confidence": None if np.isnan(r.confidence) else float(r.confidence),
             "right_by": int(sum(int(p.get(r.id, -2)) == int(r.label) for p in other_preds)),
             "others": len(other_preds)} for r in wrong.itertuples()]


# --- the stage ----------------------------------------------------------------------------------------------

def _labels(methods: list[Method]) -> list[str]:
    for m in methods:
        if isinstance(m.metrics.get("support"), dict):
            return list(m.metrics["support"])
    return []


def _figures(df: pd.DataFrame, methods: list[Method], poison: list[dict], out: Path) -> list[tuple[str, str]]:
    from peftlab.report import plots as fg

    ranked = df[df["score"].notna()]
    cms = [(m.name, m.metrics.get("confusion_matrix")) for m in methods if m.kind in RANKED_KINDS]
    order = {name: i for i, name in enumerate(ranked["method"])}
    cms.sort(key=lambda x: order.get(x[0], len(order)))
    made = [("Accuracy against latency (marker: peak memory)", "accuracy_latency.png",
             fg.accuracy_vs_latency(ranked, out / "accuracy_latency.png")),
            ("Accuracy with 95% CI", "accuracy_ci.png", fg.accuracy_ci(ranked, out / "accuracy_ci.png")),
            ("Confusion matrices", "confusion_grid.png", fg.confusion_grid(cms, _labels(methods),
                                                                          out / "confusion_grid.png")),
            ("Poisoning: ASR and CACC", "poison.png", fg.poison_curves(poison, out / "poison.png")),
            ("Training curves", "loss_curves.png", fg.loss_curves(
                {m.name: m.curves for m in methods if m.curves is not None}, out / "loss_curves.png"))]
    return [(title, name) for title, name, ok in made if ok]


def run_compare(cp, runs: dict[str, str | None], root: Path = Path("."), seed: int = 42, base: str | None = None,
                baseline_models: tuple[str | None, str | None] = (None, None), reports: Path = paths.REPORTS,
                plots: Path = paths.COMPARE_PLOTS):
    """Read every metrics file under `root`, rank, test, and write reports/results.{csv,json,tex}, report.md
    and plots/compare/. Everything is computed (and the base diff fetched) before the first file is replaced."""
    import os

    from peftlab.compare.report import Report, base_diff, render_latex, render_markdown
    from peftlab.core.io import atomic_path, write_json, write_text

    root, reports, plots = Path(root), root / reports, root / plots
    methods, test = collect(root, runs, *baseline_models)
    if not any(m.kind in RANKED_KINDS for m in methods):
        raise PeftlabError("nothing to compare: no metrics/evaluate.json, metrics/sweep/<run>/evaluate.json or "
                           "metrics/baseline.json; run `dvc repro evaluate` or `dvc repro baseline` first")
    df = composite(table(methods), cp.weights, cp.missing)
    ref = choose_reference(df, cp.reference)
    df = pairwise(df, methods, ref, cp.bootstrap, seed)
    test_sets, categories = test_set_tables(methods)
    examples = example_errors(methods, ref, root / paths.SPLITS_DIR / "test.parquet", cp.examples)
    poison = [{**m.metrics, "setting": m.name.removeprefix("poison:")} for m in methods if m.kind == "poison"]
    diff = base_diff(base, root) if base else ""
    with atomic_path(plots, is_dir=True) as tmp:
        figures = _figures(df, methods, poison, tmp)
    rel = Path(os.path.relpath(plots, reports))
    report = Report(df, ref, cp.weights, cp.missing, cp.alpha, test, test_sets, categories, poison, examples,
                    [(title, (rel / name).as_posix()) for title, name in figures], base, diff)
    write_text(reports / "results.csv", df.to_csv(index=False))
    write_json(reports / "results.json", {
        "reference": ref, "weights": cp.weights, "missing": cp.missing, "alpha": cp.alpha, "test": test,
        "methods": df.astype(object).where(df.notna(), None).to_dict(orient="records"),
        "test_sets": test_sets.to_dict(orient="records"), "categories": categories.to_dict(orient="records"),
        "examples": examples})
    write_text(reports / "results.tex", render_latex(report))
    write_text(reports / "report.md", render_markdown(report))
    return report
