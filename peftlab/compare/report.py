"""The compare stage's documents: reports/report.md (Markdown that GitHub and CML render), reports/results.tex
(booktabs tables for a paper), and the deltas against a git base from `dvc metrics diff` / `dvc params diff`.

Every string that did not come from our own number formatting (method, model, test-set and category names,
review texts, param values) passes through the escaper of its format: a review holding `|`, `<script>`, `*` or
`&%$#_{}~^\\` cannot break a table or inject markup into the pull-request comment or the paper.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from peftlab.core.errors import PeftlabError
from peftlab.report.format import DASH, as_number, escape_latex, escape_md, fmt, fmt_ci, fmt_p, md_table


@dataclass
class Report:
    """Everything the documents show, gathered by peftlab.compare.run_compare."""
    table: pd.DataFrame
    reference: str
    weights: dict[str, float]
    missing: str
    alpha: float
    test: dict = field(default_factory=dict)
    test_sets: pd.DataFrame = field(default_factory=pd.DataFrame)
    categories: pd.DataFrame = field(default_factory=pd.DataFrame)
    poison: list[dict] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)   # (title, path relative to report.md)
    base: str | None = None
    base_diff: str = ""


COLLAPSED = " (collapsed)"
COLLAPSE_LEGEND = ("(collapsed): its predictions put at least 95% of the test rows in one class that holds under "
                   "80% of the labels, so its accuracy is that class's share, not something learned (the majority "
                   "baseline is collapsed by construction).")


def is_collapsed(row) -> bool:
    """The `collapsed` flag evaluate and baseline write; absent (older metrics, poisoned models) reads False."""
    v = row.get("collapsed")
    return isinstance(v, (bool, np.bool_)) and bool(v)


def _score(row) -> str:
    s = fmt(row["score"])
    return s + " †" if s != DASH and as_number(row.get("coverage")) is not None and row["coverage"] < 0.999 else s


def paired_on(row: pd.Series, table: pd.DataFrame) -> str:
    """" on 200 rows" when a pair was tested on a subset of the rows the others were (paired on shared ids)."""
    n, full = as_number(row.get("paired_rows")), as_number(table["paired_rows"].max())
    return f" on {int(n):,} rows" if n is not None and full is not None and n < full else ""


def _headline_rows(r: Report, esc) -> tuple[list[str], list[list[str]]]:
    header = ["Rank", "Method", "Kind", "Model", "Accuracy [95% CI]", "Macro F1", "Samples/s", "p50 ms",
              "Peak MB", "Score", f"Δ acc ({esc(r.reference)} − row) [95% CI]", "McNemar p (Holm)"]
    rows = []
    for _, row in r.table[r.table["score"].notna()].iterrows():
        method = esc(row["method"]) + (COLLAPSED if is_collapsed(row) else "")
        model = esc(row["model"] if isinstance(row["model"], str) else DASH)
        rows.append([str(row["rank"]), method, esc(row["kind"]), model,
                     fmt_ci(row["accuracy"], row["acc_ci_low"], row["acc_ci_high"]), fmt(row["f1_macro"]),
                     fmt(row["samples_per_s"], 1), fmt(row["latency_ms_p50"], 1), fmt(row["peak_mem_mb"], 0),
                     _score(row), fmt_ci(row["acc_diff"], row["diff_ci_low"], row["diff_ci_high"], signed=True)
                     + paired_on(row, r.table),
                     f"{fmt_p(row['p_mcnemar'])} ({fmt_p(row['p_holm'])})"])
    return header, rows


def headline(r: Report) -> str:
    """Two sentences a reviewer reads first: the winner, and the most accurate method if that is another one."""
    t = r.table.set_index("method")
    w = t.loc[r.reference]
    place = "ranks first (" if w["rank"] == 1 else f"is the reference (rank {w['rank']}, "
    text = (f"**{escape_md(r.reference)}** {place}score {fmt(w['score'])}): accuracy "
            f"{fmt_ci(w['accuracy'], w['acc_ci_low'], w['acc_ci_high'])}, macro F1 {fmt(w['f1_macro'])}")
    if as_number(w["samples_per_s"]) is not None:
        text += f", {fmt(w['samples_per_s'], 1)} samples/s, p50 latency {fmt(w['latency_ms_p50'], 1)} ms"
    text += "."
    ranked = r.table[r.table["score"].notna()]
    best = ranked.loc[ranked["accuracy"].idxmax()] if ranked["accuracy"].notna().any() else None
    if best is not None and best["method"] != r.reference:
        sig = "significant" if as_number(best["p_holm"]) is not None and best["p_holm"] < r.alpha else "not significant"
        gain = [None if as_number(best[k]) is None else -best[k] for k in ("acc_diff", "diff_ci_high", "diff_ci_low")]
        text += (f" The most accurate is **{escape_md(best['method'])}** ({fmt(best['accuracy'])}, "
                 f"{fmt_ci(*gain, signed=True)} against {escape_md(r.reference)}; McNemar p = "
                 f"{fmt_p(best['p_mcnemar'])}, Holm {fmt_p(best['p_holm'])}: {sig} at α = {r.alpha:g}).")
    return text


def render_markdown(r: Report) -> str:
    esc = escape_md
    out = ["# peftlab results", ""]
    if r.test:
        classes = ", ".join(f"{esc(k)} {v}" for k, v in r.test.items() if k != "n")
        out += [f"Test split: {r.test.get('n', DASH)} rows ({classes}); every method below is scored on these "
                f"same rows.", ""]
    out += [headline(r), "", "## Ranking", ""]
    header, rows = _headline_rows(r, esc)
    out += [md_table(header, rows)]
    if any(is_collapsed(row) for _, row in r.table[r.table["score"].notna()].iterrows()):
        out += [esc(COLLAPSE_LEGEND), ""]
    weights = ", ".join(f"{esc(k)} {v:.0%}" for k, v in r.weights.items() if v)
    policy = {"renormalize": "scored on the weights of the metrics it has (marked †; the score column's "
                             "coverage in results.csv says how much weight that is)",
              "worst": "given the worst value (0) for each metric it lacks",
              "exclude": "left unranked (results.csv still lists it)"}[r.missing]
    tests = int(r.table["p_mcnemar"].notna().sum())
    out += [f"Score: weighted mean of min-max normalised metrics over the ranked methods ({weights}; 1 = best "
            f"of them, latency and memory inverted). A method without a metric (most baselines were never "
            f"benchmarked, so they have no speed) is {policy}. Poisoned models are listed under Poisoning, "
            f"not ranked. Δ acc and McNemar's exact test compare each method with {esc(r.reference)} on the "
            f"same test rows (a paired bootstrap gives the CI; Holm adjusts p for the {tests} comparisons).", ""]
    if not r.test_sets.empty:
        out += ["## Per test set", "", md_table(
            ["Method", "Test set", "n", "Accuracy", "Macro F1"],
            [[esc(x.method), esc(x.test_set), fmt(x.n, 0), fmt(x.accuracy), fmt(x.f1_macro)]
             for x in r.test_sets.itertuples()])]
    if not r.categories.empty:
        out += ["## Per category", "", md_table(
            ["Method", "Test set", "Category", "n", "Accuracy", "Macro F1"],
            [[esc(x.method), esc(x.test_set), esc(x.category), fmt(x.n, 0), fmt(x.accuracy), fmt(x.f1_macro)]
             for x in r.categories.itertuples()])]
    if r.poison:
        out += ["## Poisoning", "", "CACC: accuracy on the clean test split; ASR: share of non-target test rows "
                "labelled as the target once the trigger is inserted; clean ASR: the clean reference model's rate "
                "on the same rows; gain: the difference, with its 95% CI and McNemar's exact p (label flip has no "
                "trigger, so no ASR).", "", md_table(
                    ["Setting", "Run", "Attack", "Poisoned rows", "Train rows", "CACC", "ASR", "Clean ASR",
                     "Gain (95% CI)", "McNemar p"],
                    [[esc(p["setting"]), esc(p.get("run") or "main"), esc(p.get("attack") or DASH),
                      fmt(p.get("count"), 0),
                      fmt(p.get("train_rows"), 0), fmt(p.get("cacc")), fmt(p.get("asr")), fmt(p.get("ref_asr")),
                      fmt_ci(p.get("asr_gain"), *(p.get("asr_gain_ci") or [None, None]), signed=True),
                      fmt_p(p.get("mcnemar_p"))] for p in r.poison])]
    if r.examples:
        out += [f"## Example errors of {esc(r.reference)}", "",
                "Its most confident mistakes on the test split, and how many of the other ranked methods get each "
                "one right.", "", md_table(
                    ["Review", "True", "Predicted", "Confidence", "Right by"],
                    [[esc(e["text"]), esc(e["label"]), esc(e["pred"]), fmt(e["confidence"]),
                      f"{e['right_by']}/{e['others']}"] for e in r.examples])]
    if r.figures:
        out += ["## Figures", ""] + [f"![{esc(title)}]({path})\n" for title, path in r.figures]
    if r.base:
        out += [f"## Changes against {esc(r.base)}", "", r.base_diff or "No metric or param changed.", ""]
    return "\n".join(out).rstrip() + "\n"


def render_latex(r: Report) -> str:
    """The ranking as a booktabs table (and the example errors as a second one), every name escaped."""
    esc = escape_latex
    header, rows = _headline_rows(r, esc)
    header = [h.replace("Δ", r"$\Delta$").replace("−", "$-$") for h in header]
    collapsed = any(is_collapsed(row) for _, row in r.table[r.table["score"].notna()].iterrows())
    legend = " " + esc(COLLAPSE_LEGEND) if collapsed else ""
    rows = [[c.replace("†", r"$^\dagger$").replace("<", r"$<$").replace(DASH, "--") for c in row] for row in rows]
    out = [r"% generated by stages/compare.py; needs \usepackage{booktabs}", r"\begin{table*}[t]", r"\centering",
           r"\small", rf"\begin{{tabular}}{{rlll{'r' * (len(header) - 4)}}}", r"\toprule",
           " & ".join(header) + r" \\", r"\midrule", *[" & ".join(row) + r" \\" for row in rows], r"\bottomrule",
           r"\end{tabular}",
           rf"\caption{{Test-set results ({r.test.get('n', DASH)} rows). Score: weighted normalised metrics; "
           rf"$\Delta$ and McNemar's exact test against {esc(r.reference)}.{legend}}}", r"\label{tab:results}",
           r"\end{table*}", ""]
    if r.examples:
        out += [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{p{0.62\linewidth}llr}",
                r"\toprule", r"Review & True & Predicted & Conf. \\", r"\midrule",
                *[f"{esc(e['text'])} & {esc(e['label'])} & {esc(e['pred'])} & {fmt(e['confidence'])} \\\\"
                  for e in r.examples],
                r"\bottomrule", r"\end{tabular}", rf"\caption{{Most confident errors of {esc(r.reference)}.}}",
                r"\label{tab:errors}", r"\end{table}", ""]
    return "\n".join(out)


# --- deltas against a git base ------------------------------------------------------------------------------

def _dvc_json(args: list[str], cwd: Path) -> dict:
    proc = subprocess.run(["dvc", *args, "--json"], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise PeftlabError(f"`dvc {' '.join(args)}` failed: {lines[-1] if lines else 'no message'}")
    return json.loads(proc.stdout or "{}")


def _cell(v) -> str:
    if v is None:
        return DASH
    if isinstance(v, float):
        return f"{v:.5g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return escape_md(v if isinstance(v, str) else json.dumps(v))


def base_diff(base: str, cwd: Path) -> str:
    """`dvc metrics diff <base>` and `dvc params diff <base>` as escaped Markdown tables.

    Read as --json and rendered here rather than taken from `--md`: params hold prompts with newlines and `|`,
    which dvc's Markdown writer passes through and which would break the table in the PR comment."""
    metrics = _dvc_json(["metrics", "diff", base], cwd)
    params = _dvc_json(["params", "diff", base], cwd)
    out = []
    rows = [[escape_md(path), escape_md(key), _cell(v.get("old")), _cell(v.get("new")), _cell(v.get("diff"))]
            for path, keys in sorted(metrics.items()) for key, v in sorted(keys.items())]
    if rows:
        out += ["### Metrics", "", md_table(["Path", "Metric", escape_md(base), "workspace", "Change"], rows)]
    rows = [[escape_md(path), escape_md(key), _cell(v.get("old")), _cell(v.get("new"))]
            for path, keys in sorted(params.items()) for key, v in sorted(keys.items())]
    if rows:
        out += ["### Params", "", md_table(["Path", "Param", escape_md(base), "workspace"], rows)]
    return "\n".join(out)
