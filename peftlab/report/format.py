"""Tables (csv, LaTeX, Markdown) and the one number formatter (`fmt`, `fmt_ci`, `fmt_p`, `cell`).

Every string that reaches a table passes through an escaper for its format, so a method name or a review
with `|`, `<script>` or `_&%$#` cannot break (or inject into) a Markdown, HTML or LaTeX document.
"""
from __future__ import annotations

import html
import math
import re
from pathlib import Path

import pandas as pd

from peftlab.core.io import write_text

DASH = "–"


def as_number(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def fmt(v, digits: int = 3) -> str:
    f = as_number(v)
    return DASH if f is None else f"{f:.{digits}f}"


def fmt_p(p) -> str:
    f = as_number(p)
    return DASH if f is None else ("<0.001" if f < 0.001 else f"{f:.3f}")


def fmt_ci(v, lo, hi, digits: int = 3, signed: bool = False) -> str:
    f = as_number(v)
    if f is None:
        return DASH
    s = f"{f:+.{digits}f}" if signed else f"{f:.{digits}f}"
    if as_number(lo) is None or as_number(hi) is None:
        return s
    sign = "+" if signed else ""
    return f"{s} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"


def cell(v, digits: int = 4) -> str:
    """A table cell: numbers (None and NaN included) through fmt, anything else as its text."""
    return fmt(v, digits) if v is None or isinstance(v, float) else str(v)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """Cells arrive formatted; the caller escapes user text with escape_md (numbers need no escaping)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


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


def to_markdown(df: pd.DataFrame) -> str:
    cols = [escape_md(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(escape_md(cell(v)) for v in row) + " |")
    return "\n".join(lines) + "\n"


def to_latex(df: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs table, every cell and header escaped."""
    cols = "l" + "r" * (len(df.columns) - 1)
    body = [" & ".join(escape_latex(c) for c in df.columns) + r" \\", r"\midrule"]
    for _, row in df.iterrows():
        body.append(" & ".join(escape_latex(cell(v)) for v in row) + r" \\")
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

