"""What the dashboard shows, read from the repo's committed results: plain pandas, no Streamlit.

Kept apart from the rendering so every table the app draws can be checked in a unit test. Every loader
tolerates a stage that has not run yet (its files are absent) and says which stage to run, because a fresh
clone, a new experiment or a partly run pipeline is the normal state of a DVC repo, not an error. Files are
read fresh on every call: the app caches by file modification time, so the page follows `dvc repro` live.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from peftlab.compare.rank import LOWER_IS_BETTER as LOWER_IS_BETTER  # the app's default sort order, re-exported
from peftlab.compare.rank import weighted_score
from peftlab.config.params import CompareParams
from peftlab.core import paths

# The composite score is the compare stage's (same rule, same default weights), computed live from metrics/
# when reports/results.json is missing or stale.
DEFAULT_WEIGHTS = dict(CompareParams().weights)
BENCH_COLUMNS = ["latency_ms_p50", "latency_ms_p99", "samples_per_s", "peak_mem_mb", "adapter_mb",
                 "trainable_params"]
KINDS = {"majority": "dummy", "stratified": "dummy", "llm_zeroshot": "zero-shot", "llm_generate": "zero-shot",
         "encoder_zeroshot": "zero-shot"}
COUNT_SETTING = re.compile(r"^count(\d+)-n(\d+)$")


def not_run(stage: str) -> str:
    """The one message every section shows for a stage whose outputs are missing."""
    return f"The `{stage}` stage has not run yet: run `dvc repro {stage}`."


class DataError(Exception):
    """A results file exists but cannot be read (truncated, hand-edited): shown as one line, not a trace."""


def read_json(path: Path) -> dict | list | None:
    """The parsed file, or None when it does not exist (the stage has not run)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); rerun the stage that writes it") from e


def is_metrics(value: object) -> bool:
    return isinstance(value, dict) and "accuracy" in value


@dataclass
class Method:
    """One evaluated thing: a fine-tuned run or a baseline, with its metrics and where its predictions live."""
    name: str
    kind: str
    metrics: dict
    predictions: Path
    curves_dir: Path | None     # plots/<...>/ with roc.json and pr.json (committed, so present in fresh clones)


def sweep_runs(repo: Path) -> list[str]:
    root = repo / paths.SWEEP_METRICS
    return sorted(p.name for p in root.iterdir() if (repo / paths.eval_metrics(p.name)).is_file()) \
        if root.is_dir() else []


def methods(repo: Path) -> list[Method]:
    """Every evaluated method: the main run, the sweep runs, then the baselines, in that order."""
    out = []
    main = read_json(repo / paths.eval_metrics(paths.MAIN))
    if is_metrics(main):
        out.append(Method("main", "fine-tuned", main, repo / paths.predictions(paths.MAIN),
                          repo / paths.eval_plots(paths.MAIN)))
    for run in sweep_runs(repo):
        m = read_json(repo / paths.eval_metrics(run))
        if is_metrics(m):
            out.append(Method(run, "fine-tuned", m, repo / paths.predictions(run),
                              repo / paths.eval_plots(run)))
    for name, m in (read_json(repo / paths.BASELINE_METRICS) or {}).items():
        if is_metrics(m):
            kind = KINDS.get(name) or ("classical" if name.startswith(("tfidf_", "emb_")) else "baseline")
            out.append(Method(name, kind, m, repo / paths.baseline_predictions(name), None))
    return out


def model_names(repo: Path) -> dict[str, str]:
    """method -> the base model it runs on, from params.yaml (the same file the stages read)."""
    path = repo / "params.yaml"
    if not path.is_file():
        return {}
    p = yaml.safe_load(path.read_text()) or {}
    main = (p.get("model") or {}).get("name", "")
    out = {"main": main}
    for run, over in (p.get("sweep") or {}).items():
        out[run] = ((over or {}).get("model") or {}).get("name", main)
    base = p.get("baseline") or {}
    for m in base.get("methods") or []:
        if m.startswith(("llm_",)):
            out[m] = base.get("llm", "")
        elif m.startswith(("emb_", "encoder_")):
            out[m] = base.get("encoder", "")
        elif m.startswith("tfidf_"):
            out[m] = "tf-idf"
    return out


def reported_composite(repo: Path) -> dict[str, float] | None:
    """The compare stage's composite (reports/results.json: {"methods": [{"method", "score", ...}]}), so both
    show one ranking when it has run; poisoned models (no score: not ranked) are left out."""
    data = read_json(repo / "reports" / "results.json")
    rows = data.get("methods") if isinstance(data, dict) else None
    out = {r["method"]: float(r["score"]) for r in rows or []
           if isinstance(r, dict) and isinstance(r.get("score"), (int, float))}
    return out or None


def leaderboard(repo: Path, weights: dict[str, float] | None = None) -> tuple[pd.DataFrame, str]:
    """One row per method with quality, speed and memory, ranked by the composite; and where it came from."""
    ms = methods(repo)
    bench = {k: v for k, v in (read_json(repo / "metrics" / "benchmark.json") or {}).items() if k != "environment"}
    models = model_names(repo)
    rows = []
    for m in ms:
        ci = (m.metrics.get("ci95") or {}).get("accuracy") or [None, None]
        b = bench.get(m.name) or {}
        rows.append({"method": m.name, "kind": m.kind, "model": models.get(m.name, ""),
                     "accuracy": m.metrics.get("accuracy"), "acc_ci_low": ci[0], "acc_ci_high": ci[1],
                     "f1_macro": m.metrics.get("f1_macro"), "roc_auc": m.metrics.get("roc_auc"),
                     "pr_auc": m.metrics.get("pr_auc"), "n": m.metrics.get("n"),
                     **{c: b.get(c) for c in BENCH_COLUMNS}})
    cols = ["method", "kind", "model", "accuracy", "acc_ci_low", "acc_ci_high", "f1_macro", "roc_auc", "pr_auc",
            "n", *BENCH_COLUMNS]
    df = pd.DataFrame(rows, columns=cols)
    for c in cols[3:]:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    weights = weights or DEFAULT_WEIGHTS
    score, df["coverage"] = weighted_score(df, weights)
    reported = reported_composite(repo)
    if reported and set(reported) >= set(df["method"]):
        df["composite"], source = df["method"].map(reported), "reports/results.json (the compare stage)"
    else:
        df["composite"], source = score, "computed here from metrics/"
    df = df.sort_values(["composite", "accuracy"], ascending=False, na_position="last").reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    return df, source


def confusion(metrics: dict) -> pd.DataFrame:
    """Long form (actual, predicted, count) of a metrics file's confusion matrix, in label order."""
    labels = list(metrics.get("support") or metrics.get("f1") or [])
    cm = metrics.get("confusion_matrix") or []
    if not labels or len(labels) != len(cm):
        labels = [str(i) for i in range(len(cm))]
    return pd.DataFrame([{"actual": labels[i], "predicted": labels[j], "count": int(v)}
                         for i, row in enumerate(cm) for j, v in enumerate(row)],
                        columns=["actual", "predicted", "count"])


def roc_pr(method: Method) -> tuple[pd.DataFrame, pd.DataFrame, str] | None:
    """ROC and PR points (positive class, or each class one-vs-rest), from the per-row predictions when they are
    checked out, else from the curves the stage committed under plots/; None when neither exists.

    Uses peftlab.metrics.curves, the same code the evaluate stage plots with."""
    if method.predictions.is_file():
        from peftlab.core.metrics import curves

        df = pd.read_parquet(method.predictions)
        prob_cols = [c for c in df.columns if c.startswith("prob_")]
        if prob_cols and "label" in df:
            c = curves(df["label"].to_numpy(), df[prob_cols].to_numpy(), [p[5:] for p in prob_cols])
            return pd.DataFrame(c["roc"]), pd.DataFrame(c["pr"]), str(method.predictions)
    if method.curves_dir is not None:
        roc, pr = read_json(method.curves_dir / "roc.json"), read_json(method.curves_dir / "pr.json")
        if roc and pr:
            return pd.DataFrame(roc), pd.DataFrame(pr), str(method.curves_dir)
    return None


def training_curves(repo: Path) -> pd.DataFrame:
    """Every dvclive series of every run, long form: run, metric (e.g. `loss`, `eval/accuracy`), step, value."""
    frames = []
    for run_dir in sorted((repo / "dvclive").glob("*/plots/metrics")):
        run = run_dir.parent.parent.name
        for tsv in sorted(run_dir.rglob("*.tsv")):
            t = pd.read_csv(tsv, sep="\t")
            if "step" not in t or len(t.columns) < 2:
                continue
            value = [c for c in t.columns if c not in ("step", "timestamp")][0]
            frames.append(pd.DataFrame({"run": run, "metric": tsv.relative_to(run_dir).with_suffix("").as_posix(),
                                        "step": t["step"], "value": pd.to_numeric(t[value], errors="coerce")}))
    if not frames:
        return pd.DataFrame(columns=["run", "metric", "step", "value"])
    return pd.concat(frames, ignore_index=True)


def poison_settings(repo: Path) -> pd.DataFrame:
    """One row per poisoning setting (attack, budget, CACC, ASR), from metrics/poison.json or, before the
    poison_report stage has run, from the per-setting files in metrics/poison/."""
    merged = read_json(repo / "metrics" / "poison.json")
    if not isinstance(merged, dict):
        merged = {p.stem: read_json(p) for p in sorted((repo / "metrics" / "poison").glob("*.json"))}
    rows = [dict(v, setting=k) for k, v in merged.items() if isinstance(v, dict) and "asr" in v and "cacc" in v]
    cols = ["setting", "attack", "count", "rate", "train_rows", "cacc", "asr", "ref_asr", "asr_gain", "mcnemar_p",
            "flip_rate", "clean_cacc", "cacc_drop"]
    df = pd.DataFrame(rows).reindex(columns=cols)
    match = df["setting"].astype(str).str.extract(COUNT_SETTING)
    df["count_sweep"] = match[0].notna()
    return df


def defenses(repo: Path) -> pd.DataFrame:
    """One row per defense against the chosen setting: rows flagged, precision/recall, CACC and ASR after it."""
    d = read_json(repo / "metrics" / "poison" / "defenses.json")
    if not isinstance(d, dict):
        d = (read_json(repo / "metrics" / "poison.json") or {}).get("defenses")
    if not isinstance(d, dict):
        return pd.DataFrame()
    rows = [{"defense": "none (poisoned model)", **(d.get("before") or {})}]
    rows += [{"defense": k, **v} for k, v in d.items() if isinstance(v, dict) and k != "before"]
    df = pd.DataFrame(rows)
    df.attrs["setting"] = d.get("setting", "")
    return df.drop(columns=[c for c in ("tokens",) if c in df])


def split_summary(repo: Path) -> pd.DataFrame | None:
    """Rows per split and class from metrics/split.json, plus what cleaning dropped (df.attrs['counts'])."""
    s = read_json(repo / "metrics" / "split.json")
    if not isinstance(s, dict):
        return None
    trunc = s.get("truncation") if isinstance(s.get("truncation"), dict) else {}
    cut = f"truncated at {trunc.get('max_length')} tokens"
    df = pd.DataFrame([{"split": k, **v,
                        **({cut: trunc[k].get("truncated_share")} if isinstance(trunc.get(k), dict) else {})}
                       for k, v in s.items() if k not in ("counts", "truncation") and isinstance(v, dict)])
    df.attrs["counts"] = s.get("counts") or {}
    return df


def mtime_key(repo: Path) -> tuple:
    """Changes whenever a results file changes: the app's cache key, so the page follows `dvc repro`."""
    stamps = []
    for sub in ("metrics", "reports", "dvclive", "plots", "params.yaml", "data/predictions"):
        p = repo / sub
        files = [p] if p.is_file() else (sorted(p.rglob("*")) if p.is_dir() else [])
        stamps += [(str(f), f.stat().st_mtime_ns) for f in files if f.is_file()]
    return tuple(stamps)
