"""The compare stage's PNG figures (matplotlib): the trade-off, the CIs, the confusion matrices, poisoning and
training curves, each saved atomically through peftlab.report.save_figure."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from peftlab.report import plot_bars, plot_poison_sweep, plt, save_figure


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
