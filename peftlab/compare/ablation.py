"""The ablation table: one row per DVC experiment (from `dvc exp show --json`), its params that matter and its
test metrics, so a queued sweep over lora.r, target modules or epochs reads as one table.

    for r in 8 16 32 64; do dvc exp run --queue -n lora-r$r -S lora.r=$r evaluate; done
    dvc queue start -j 1 && dvc queue status      # wait until every task is Success
    python stages/compare.py --ablation            # reports/ablation.{md,csv,tex}
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from peftlab.core import paths
from peftlab.core.errors import PeftlabError
from peftlab.report.format import escape_latex, escape_md, fmt, fmt_ci, md_table

METRICS_FILE = paths.eval_metrics(paths.MAIN).as_posix()
TRAIN_FILE = paths.train_metrics(paths.MAIN).as_posix()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _nodes(entries: list[dict], parent: str | None = None) -> Iterator[tuple[dict, str | None]]:
    """Every commit and experiment in exp show's tree: [{rev, name, data, experiments: [{revs: [...]}]}]."""
    for e in entries or []:
        yield e, parent
        for group in e.get("experiments") or []:
            yield from _nodes(group.get("revs") or [], e.get("name") or e.get("rev", "")[:7])


def _file(data: dict, kind: str, path: str) -> dict:
    return ((data.get(kind) or {}).get(path) or {}).get("data") or {}


def git_json(root: Path) -> Callable[[str, str], dict]:
    """Read a committed json at a revision: experiments are commits, and their metrics files are in them."""
    def read(rev: str, path: str) -> dict:
        proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True)
        return json.loads(proc.stdout) if proc.returncode == 0 else {}
    return read


def ablation_table(exp_show: list[dict], always: list[str],
                   read_at: Callable[[str, str], dict] | None = None) -> pd.DataFrame:
    """Rows: the base commit(s) and their experiments (the workspace row is left out: it repeats one of them).
    Columns: `always` params, any other param that differs between rows (but not `compare.*`, which changes
    the report, not the model), and the test metrics. `exp show` drops list-valued metrics such as the CI, so
    those are read from the experiment's commit with `read_at(rev, path)`."""
    rows = []
    for node, parent in _nodes(exp_show):
        data = node.get("data")
        if node.get("rev") == "workspace" or not isinstance(data, dict) or node.get("error"):
            continue
        m, t = _file(data, "metrics", METRICS_FILE), _file(data, "metrics", TRAIN_FILE)
        if not m:
            continue
        ci = (m.get("ci95") or {}).get("accuracy")
        if ci is None and read_at is not None and node.get("rev"):
            ci = (read_at(node["rev"], METRICS_FILE).get("ci95") or {}).get("accuracy")
        ci = ci or [None, None]
        rows.append({"experiment": node.get("name") or str(node.get("rev", ""))[:7], "base": parent or "",
                     "params": _flatten(_file(data, "params", "params.yaml")), "accuracy": m.get("accuracy"),
                     "acc_ci_low": ci[0], "acc_ci_high": ci[1], "f1_macro": m.get("f1_macro"),
                     "trainable_params": t.get("trainable_params"), "train_seconds": t.get("train_seconds")})
    if not rows:
        return pd.DataFrame()
    keys = sorted({k for r in rows for k in r["params"]})
    varying = [k for k in keys if not k.startswith("compare.")
               and len({json.dumps(r["params"].get(k), sort_keys=True) for r in rows}) > 1]
    shown = list(dict.fromkeys([*always, *varying]))
    out = pd.DataFrame([{"experiment": r["experiment"], "base": r["base"],
                         **{k: _show(r["params"].get(k)) for k in shown},
                         **{k: r[k] for k in ("accuracy", "acc_ci_low", "acc_ci_high", "f1_macro",
                                              "trainable_params", "train_seconds")}} for r in rows])
    return out.sort_values(["accuracy", "experiment"], ascending=[False, True]).reset_index(drop=True)


def _show(v: Any) -> str:
    if v is None:
        return "null"
    return ", ".join(map(str, v)) if isinstance(v, list) else str(v)


def exp_show(cwd: Path) -> list[dict]:
    proc = subprocess.run(["dvc", "exp", "show", "--json"], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise PeftlabError(f"`dvc exp show --json` failed: {lines[-1] if lines else 'no message'}")
    return json.loads(proc.stdout or "[]")


def render(df: pd.DataFrame) -> tuple[str, str]:
    """Markdown and LaTeX (booktabs) of the ablation table; param values and names escaped."""
    params = [c for c in df.columns if c not in ("experiment", "base", "accuracy", "acc_ci_low", "acc_ci_high",
                                                 "f1_macro", "trainable_params", "train_seconds")]
    header = ["Experiment", *params, "Accuracy [95% CI]", "Macro F1", "Trainable", "Train s"]

    def cells(r, esc) -> list[str]:
        return [esc(r["experiment"]), *[esc(r[p]) for p in params],
                fmt_ci(r["accuracy"], r["acc_ci_low"], r["acc_ci_high"]), fmt(r["f1_macro"]),
                fmt(r["trainable_params"], 0), fmt(r["train_seconds"], 0)]

    md = md_table([escape_md(h) for h in header], [cells(r, escape_md) for _, r in df.iterrows()])
    tex = "\n".join([r"\begin{table}[t]", r"\centering", r"\small",
                     rf"\begin{{tabular}}{{l{'l' * len(params)}rrrr}}", r"\toprule",
                     " & ".join(escape_latex(h) for h in header) + r" \\", r"\midrule",
                     *[" & ".join(cells(r, escape_latex)) + r" \\" for _, r in df.iterrows()], r"\bottomrule",
                     r"\end{tabular}", r"\caption{Ablation: test accuracy of each experiment.}",
                     r"\label{tab:ablation}", r"\end{table}", ""])
    return ("# Ablation\n\nOne row per DVC experiment (`dvc exp show`), best first, with the params of "
            "`compare.ablation_params` and any other param that differs between experiments.\n\n" + md), tex


def run_ablation(always: list[str], root: Path = Path("."), reports: Path = Path("reports")) -> pd.DataFrame:
    from peftlab.core.io import write_text

    df = ablation_table(exp_show(root), always, git_json(root))
    if df.empty:
        raise PeftlabError("no experiment with metrics/evaluate.json in `dvc exp show`; queue some first, e.g. "
                           "`dvc exp run --queue -S lora.r=16 evaluate` and `dvc queue start`")
    md, tex = render(df)
    write_text(root / reports / "ablation.csv", df.to_csv(index=False))
    write_text(root / reports / "ablation.tex", tex)
    write_text(root / reports / "ablation.md", md)
    return df
