"""Tables (csv, LaTeX, Markdown) and PNG figures of results.

Every string that reaches a table passes through an escaper for its format, so a method name or a review
with `|`, `<script>` or `_&%$#` cannot break (or inject into) a Markdown, HTML or LaTeX document.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from peftlab.io import atomic_path, write_text  # noqa: E402

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  # not special to LaTeX, but without T1 fonts `<` prints as an inverted `!`
                  "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|>~])")


def escape_latex(text: str) -> str:
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group()], str(text))


def escape_md(text: str) -> str:
    """Markdown-safe and HTML-safe: markup characters backslashed, <, >, & as entities, no newlines."""
    t = html.escape(str(text), quote=False).replace("\n", " ").replace("\r", " ")
    return _MD_SPECIAL.sub(r"\\\1", t)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def to_markdown(df: pd.DataFrame) -> str:
    cols = [escape_md(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(escape_md(_fmt(v)) for v in row) + " |")
    return "\n".join(lines) + "\n"


def to_latex(df: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs table, every cell and header escaped."""
    cols = "l" + "r" * (len(df.columns) - 1)
    body = [" & ".join(escape_latex(c) for c in df.columns) + r" \\", r"\midrule"]
    for _, row in df.iterrows():
        body.append(" & ".join(escape_latex(_fmt(v)) for v in row) + r" \\")
    out = [r"\begin{table}[t]", r"\centering", rf"\begin{{tabular}}{{{cols}}}", r"\toprule", *body,
           r"\bottomrule", r"\end{tabular}"]
    if caption:
        out.append(rf"\caption{{{escape_latex(caption)}}}")
    if label:
        out.append(rf"\label{{{escape_latex(label)}}}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def write_tables(df: pd.DataFrame, csv_path: str | Path | None = None, tex_path: str | Path | None = None,
                 md_path: str | Path | None = None, caption: str = "") -> None:
    if csv_path:
        write_text(csv_path, df.to_csv(index=False))
    if tex_path:
        write_text(tex_path, to_latex(df, caption=caption))
    if md_path:
        write_text(md_path, to_markdown(df))


def metrics_row(name: str, m: dict) -> dict:
    """One table row from a metrics dict in the common schema."""
    ci = (m.get("ci95") or {}).get("accuracy") or [None, None]
    return {"method": name, "accuracy": m.get("accuracy"), "acc_ci_low": ci[0], "acc_ci_high": ci[1],
            "f1_macro": m.get("f1_macro"), "precision_macro": m.get("precision_macro"),
            "recall_macro": m.get("recall_macro"), "roc_auc": m.get("roc_auc"), "pr_auc": m.get("pr_auc"),
            "n": m.get("n")}


def save_figure(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_confusion(cm: list[list[int]], labels: list[str], path: str | Path, title: str = "") -> None:
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.1 * len(labels) + 1.5))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title or "confusion matrix")
    save_figure(fig, path)


def plot_curve(rows: list[dict], x: str, y: str, path: str | Path, title: str, diagonal: bool = False) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    df = pd.DataFrame(rows)
    for cls, part in (df.groupby("class") if not df.empty else []):
        ax.plot(part[x], part[y], label=str(cls))
    if diagonal:
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    if not df.empty:
        ax.legend(loc="lower right" if diagonal else "lower left")
    save_figure(fig, path)


def plot_bars(table: pd.DataFrame, path: str | Path, title: str, metric: str = "accuracy") -> None:
    """Horizontal bars of `metric` per method, with the 95% CI as error bars when the table has one."""
    t = table.sort_values(metric)
    fig, ax = plt.subplots(figsize=(6.5, 0.38 * len(t) + 1.2))
    err = None
    if metric == "accuracy" and {"acc_ci_low", "acc_ci_high"} <= set(t.columns):
        lo = (t[metric] - t["acc_ci_low"]).clip(lower=0).fillna(0)
        hi = (t["acc_ci_high"] - t[metric]).clip(lower=0).fillna(0)
        err = [lo.to_numpy(), hi.to_numpy()]
    ax.barh(t["method"].astype(str), t[metric], xerr=err, color="#4C72B0", capsize=3)
    for i, v in enumerate(t[metric]):
        ax.text(min(v + 0.01, 0.98), i, f"{v:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel(metric)
    ax.set_title(title)
    save_figure(fig, path)


def plot_throughput(curves: list[dict], path: str | Path) -> None:
    """Samples/s against batch size, one line per model (log-scaled batch axis)."""
    df = pd.DataFrame(curves)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, part in (df.groupby("model", sort=False) if not df.empty else []):
        ax.plot(part["batch_size"], part["samples_per_s"], marker="o", label=str(name))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples / s")
    ax.set_title("inference throughput")
    if not df.empty:
        ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_latency(latencies: dict[str, list[float]], path: str | Path) -> None:
    """Distribution of single-request latency per model (box: quartiles, whiskers: p5-p95, p99 marked)."""
    names = list(latencies)
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(names) + 1.5))
    if names:
        ax.boxplot([latencies[n] for n in names], vert=False, whis=(5, 95), showfliers=True)
        ax.set_yticks(range(1, len(names) + 1), names)
        for i, n in enumerate(names, start=1):
            ax.plot(np.percentile(latencies[n], 99), i, "r|", markersize=14)
    ax.set_xlabel("latency at batch 1 (ms); red tick: p99")
    ax.set_title("single-request latency")
    save_figure(fig, path)


def plot_poison_sweep(rows: list[dict], path: str | Path, attack: str = "badnets") -> None:
    """ASR and CACC against the poisoned-row count and against the poison rate, one line per training size:
    if ASR tracks the count, the lines meet in the left panel; if it tracks the rate, in the right one."""
    df = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, x, xlabel in ((axes[0], "count", "poisoned training rows"), (axes[1], "rate", "poison rate")):
        for size, part in (df.sort_values(x).groupby("size") if not df.empty else []):
            line, = ax.plot(part[x], part["asr"], marker="o", label=f"ASR, {size} rows")
            ax.plot(part[x], part["cacc"], marker="x", ls="--", color=line.get_color(), label=f"CACC, {size} rows")
        ax.set_xlabel(xlabel)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("attack success rate / clean accuracy")
    axes[1].xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.1%}"))
    if not df.empty:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"{attack}: does the backdoor follow the count or the rate?")
    save_figure(fig, path)
