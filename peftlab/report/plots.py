"""Every PNG figure of results (matplotlib, headless): the stages' plots and the compare report's trade-off,
CI, confusion-grid, poisoning and training-curve figures, each saved atomically through `save_figure`."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from peftlab.core.io import atomic_path  # noqa: E402


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


def plot_continued_training(points: list[dict], path: str | Path, setting: str) -> None:
    """ASR and CACC of the poisoned model against the clean rows it was trained on afterwards (log axis, 0 drawn
    at the left edge), with Wilson 95% intervals: where the backdoor fades, and what the clean accuracy does."""
    df = pd.DataFrame(points)
    positive = df["rows"][df["rows"] > 0]
    xs = df["rows"].where(df["rows"] > 0, positive.min() / 2 if len(positive) else 1.0)   # 0 at the left edge
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("asr", "o-"), ("cacc", "x--")):
        ax.plot(xs, df[key], style, label=key.upper())
        ci = df.get(f"{key}_ci")
        if ci is not None:
            for xv, c in zip(xs, ci):
                if isinstance(c, (list, tuple)):
                    ax.plot([xv, xv], c, color="grey", lw=1)
    ax.set_xscale("log")
    ax.set_xticks(list(xs), ["0" if r == 0 else f"{r:,}" for r in df["rows"]])
    ax.set_xlabel("clean rows trained on after the poisoned run")
    ax.set_ylabel("attack success rate / clean accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"clean continued training against {setting}")
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

def plot_count_law(rows: list[dict], path: str | Path) -> None:
    """The study's count law: mean ASR gain over the clean model (95% t interval over the seeds) against the
    poisoned-row count (top) and the poison rate (bottom), one line per training size, one column per attacked run
    and regime. Lines that meet on top: ASR follows the count; at the bottom: the rate."""
    df = pd.DataFrame(rows)
    panels = sorted({(r["run"], r["regime"]) for r in rows})
    fig, axes = plt.subplots(2, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 7), squeeze=False,
                             sharey=True)
    for j, (run, reg) in enumerate(panels):
        part = df[(df["run"] == run) & (df["regime"] == reg)]
        for i, (x, xlabel) in enumerate((("count", "poisoned training rows"), ("rate", "poison rate"))):
            ax = axes[i][j]
            for size, line in part.sort_values(x).groupby("size"):
                err = np.array([[g - lo for g, (lo, _) in zip(line["gain"], line["gain_ci"])],
                                [hi - g for g, (_, hi) in zip(line["gain"], line["gain_ci"])]])
                ax.errorbar(line[x], line["gain"], yerr=err, marker="o", capsize=3, label=f"{size} rows")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if x == "rate":
                ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.1%}"))
            if i == 0:
                ax.set_title(f"{run}, fixed {reg}", fontsize=10)
                ax.legend(fontsize=8)
        axes[0][j].set_ylim(-0.2, 1.02)
    axes[0][0].set_ylabel("ASR gain over the clean model")
    axes[1][0].set_ylabel("ASR gain over the clean model")
    fig.suptitle("count or rate? mean over seeds, 95% t interval")
    save_figure(fig, path)


def plot_recipes(rows: list[dict], bar: float, path: str | Path) -> None:
    """The recipe table as a picture: per victim recipe, the poisoned victims' mean ASR (left, with the bar a
    working backdoor must reach) and the gain over the clean model trained the same way (right), each with its
    95% t interval over the seeds. `rows`: label, asr, asr_ci, gain, gain_ci."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 1.6), sharey=True)
    y = np.arange(len(rows))
    for ax, (key, xlabel) in zip(axes, (("asr", "ASR (poisoned victims)"), ("gain", "ASR gain over the clean model"))):
        mean = np.array([r[key] for r in rows])
        err = np.array([[m - r[f"{key}_ci"][0] for m, r in zip(mean, rows)],
                        [r[f"{key}_ci"][1] - m for m, r in zip(mean, rows)]])
        ax.errorbar(mean, y, xerr=err, fmt="o", capsize=3, color="#4C72B0")
        ax.axvline(bar if key == "asr" else 0, color="grey", ls="--" if key == "asr" else "-", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_xlim(-0.05, 1.05)
    axes[0].set_yticks(y, [r["label"] for r in rows], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"victim recipes: mean over seeds, 95% t interval (dashed: ASR {bar})")
    save_figure(fig, path)


def accuracy_vs_latency(df: pd.DataFrame, path: Path) -> bool:
    """Accuracy against p50 latency (log axis), marker area by peak memory: the methods worth deploying sit
    top-left and small. Only benchmarked methods have a latency."""
    d = df.dropna(subset=["accuracy", "latency_ms_p50"])
    if d.empty:
        return False
    mem = d["peak_mem_mb"].fillna(d["peak_mem_mb"].median() if d["peak_mem_mb"].notna().any() else 500)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(d["latency_ms_p50"], d["accuracy"], s=mem / mem.max() * 900, alpha=0.45, color="#4C72B0",
               edgecolor="black")
    for _, r in d.iterrows():
        ax.annotate(f"{r['method']}\n{r['peak_mem_mb']:.0f} MB" if not math.isnan(r["peak_mem_mb"]) else r["method"],
                    (r["latency_ms_p50"], r["accuracy"]), fontsize=8, ha="center", va="center")
    ax.set_xscale("log")
    ax.set_xlabel("latency at batch 1, p50 (ms, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy against latency (marker area: peak memory)")
    ax.margins(0.2)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return True


def accuracy_ci(df: pd.DataFrame, path: Path) -> bool:
    d = df.dropna(subset=["accuracy"])
    if d.empty:
        return False
    plot_bars(d, path, title="test accuracy with 95% bootstrap CI")
    return True


def confusion_grid(items: list[tuple[str, list[list[int]]]], labels: list[str], path: Path) -> bool:
    """All confusion matrices side by side, row-normalised colours (counts printed), so the methods' error
    patterns compare at a glance whatever the class balance."""
    items = [(n, np.asarray(cm)) for n, cm in items if cm]
    if not items:
        return False
    cols = min(4, len(items))
    rows = math.ceil(len(items) / cols)
    k = len(labels)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.9 * rows), squeeze=False)
    for ax, (name, cm) in zip(axes.flat, items):
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), labels, fontsize=7)
        ax.set_yticks(range(k), labels, fontsize=7)
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    fig.supxlabel("predicted")
    fig.supylabel("actual")
    fig.tight_layout()
    save_figure(fig, path)
    return True


def poison_curves(settings: list[dict], path: Path, attack: str = "badnets") -> bool:
    """ASR and CACC against poisoned rows and poison rate (the count sweep), one line per training size."""
    rows = [{"count": s["count"], "rate": s["rate"], "size": s["train_rows"], "asr": s["asr"], "cacc": s["cacc"]}
            for s in settings if s.get("attack") == attack and s.get("setting", "").startswith("count")
            and s.get("train_rows") and s.get("asr") is not None]
    if not rows:
        return False
    plot_poison_sweep(rows, path, attack=attack)
    return True


def _tsv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, sep="\t") if path.exists() else None


def _by_epoch(df: pd.DataFrame | None, epochs: pd.DataFrame | None) -> pd.DataFrame | None:
    """dvclive counts steps per logged point, which differ between runs; the epoch (from epoch.tsv) does not."""
    if df is None or df.empty:
        return None
    if epochs is None or "epoch" not in epochs:
        return df.assign(x=df["step"])
    return df.merge(epochs[["step", "epoch"]], on="step", how="left").assign(x=lambda d: d["epoch"].fillna(d["step"]))


def loss_curves(curves: dict[str, Path], path: Path) -> bool:
    """Training loss (line) and validation loss (dashed, open markers) against the epoch, one colour per run,
    from the dvclive TSVs the train stage writes."""
    data = {}
    for name, d in curves.items():
        epochs = _tsv(d / "epoch.tsv")
        train = _by_epoch(_tsv(d / "loss.tsv"), epochs)
        if train is not None:
            data[name] = (train, _by_epoch(_tsv(d / "eval" / "loss.tsv"), epochs))
    if not data:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, (train, val) in data.items():
        line, = ax.plot(train["x"], train["loss"], marker=".", label=f"{name} train", lw=1.2)
        if val is not None:
            ax.plot(val["x"], val["loss"], ls="--", marker="o", mfc="none", color=line.get_color(),
                    label=f"{name} val")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (generative heads: answer tokens only)")
    ax.set_title("training curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True
