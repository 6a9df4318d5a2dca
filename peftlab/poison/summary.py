"""The poison_report stage: every setting paired with its clean reference, and the count-sweep figure.

What each number means (one definition for every attack and family), from the saved per-row predictions:
- ASR: share of the triggered non-target test rows predicted as the target.
- ref_asr: the clean reference model's rate on the very same triggered rows (a model never poisoned also
  calls some negatives positive: that share is not the attack's doing).
- asr_gain = ASR - ref_asr, with McNemar's exact test on the paired rows and a 95% CI.
- flip_rate: of the non-target rows the poisoned model gets right without the trigger, the share the trigger
  turns into the target (the backdoor's own effect, free of the rows the model already got wrong).
Label flip inserts no trigger, so it gets no ASR: its effect is the CACC drop and the per-class recall.
- collapsed: the victim predicts one class for >= 95% of the clean test rows (core.metrics.collapse): its ASR is
  that class's share, not a backdoor, and the report says so instead of showing a gain.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from peftlab.config.params import PoisonParams
from peftlab.core import paths
from peftlab.core.errors import PeftlabError
from peftlab.core.io import read_json, write_json
from peftlab.core.metrics import collapse
from peftlab.poison.attacks import ATTACKS, Setting, setting_from_params, sweep_settings

Z95 = 1.959964   # two-sided 95% normal quantile


def paired_gain(hit: np.ndarray, ref_hit: np.ndarray) -> dict:
    """Paired difference of two rates on the same rows (hit: the poisoned model predicts the target; ref_hit:
    the clean reference does): McNemar's exact test (statsmodels) and the Wald interval of a paired difference,
    (b - c) / n +- z * sqrt(b + c - (b - c)^2 / n) / n with b, c the discordant counts (statsmodels gives the
    test but no interval for a paired difference of proportions)."""
    from statsmodels.stats.contingency_tables import mcnemar

    hit, ref_hit = np.asarray(hit, bool), np.asarray(ref_hit, bool)
    n = len(hit)
    b, c = int(np.sum(hit & ~ref_hit)), int(np.sum(~hit & ref_hit))
    both, neither = int(np.sum(hit & ref_hit)), int(np.sum(~hit & ~ref_hit))
    gain = (b - c) / n if n else float("nan")
    half = Z95 * math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n if n else float("nan")
    p = float(mcnemar([[both, b], [c, neither]], exact=True).pvalue) if b + c else 1.0
    return {"asr_gain": gain, "asr_gain_ci": [gain - half, gain + half], "mcnemar_p": p,
            "discordant": [b, c]}


def flip_rate(preds: pd.DataFrame, kind: str, target: int) -> float:
    """Of the triggered rows whose clean version the model predicts right, the share predicted as the target."""
    clean = preds[preds["kind"] == "clean"].set_index("id")
    trig = preds[preds["kind"] == kind].set_index("id")
    right = clean.loc[trig.index, "pred"] == trig["label"]
    return float(np.mean(trig.loc[right, "pred"] == target)) if right.any() else float("nan")


def class_recall(preds: pd.DataFrame, labels: list[str]) -> dict[str, float]:
    clean = preds[preds["kind"] == "clean"]
    return {name: float(np.mean(clean.loc[clean["label"] == i, "pred"] == i)) if (clean["label"] == i).any()
            else float("nan") for i, name in enumerate(labels)}


def pair_with_reference(setting: Setting, preds: pd.DataFrame, ref: pd.DataFrame | None, target: int,
                        labels: list[str]) -> dict:
    """The paired metrics of one setting against its clean reference's predictions (None: no reference)."""
    kind = ATTACKS[setting.attack].test_trigger
    out: dict = {}
    if kind is None:                                   # label flip: what it does to the classes
        out["recall"] = class_recall(preds, labels)
        if ref is not None:
            out["ref_recall"] = class_recall(ref, labels)
        return out
    out["flip_rate"] = flip_rate(preds, kind, target)
    if ref is not None:
        trig, ref_trig = shared_rows(preds, ref, kind)
        out["ref_asr"] = float(np.mean(ref_trig["pred"] == target))
        out.update(paired_gain(trig["pred"].to_numpy() == target, ref_trig["pred"].to_numpy() == target))
    return out


def shared_rows(preds: pd.DataFrame, ref: pd.DataFrame, kind: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of `kind` both models were scored on, aligned by id (a decoder setting may score a subset)."""
    a, b = preds[preds["kind"] == kind].set_index("id"), ref[ref["kind"] == kind].set_index("id")
    ids = a.index.intersection(b.index).sort_values()
    if not len(ids):
        raise PeftlabError(f"no {kind} test rows shared with the clean reference: score both on the same rows "
                           f"(poison.attacks.<name>.test_rows and the seed)")
    return a.loc[ids], b.loc[ids]


def summarize(pp: PoisonParams, labels: list[str], metrics_root: Path = paths.POISON_METRICS,
              data_root: Path = paths.POISON_DATA, clean_metrics: Path = paths.MAIN_EVAL_METRICS,
              out: Path = paths.POISON_SUMMARY, plots: Path = paths.POISON_PLOTS) -> dict:
    """poison_report stage: every setting keyed by its name, with its CACC drop and paired ASR gain against the
    clean model trained the same way (`Setting.reference_name`; the main run for whole-split settings)."""
    from peftlab.report.plots import plot_poison_sweep

    target = labels.index(pp.target)
    sweep = sweep_settings(pp)
    settings = [setting_from_params(pp, k) for k in pp.attacks] + sweep
    results = {s.name: read_json(paths.poison_metrics(s.name, metrics_root)) for s in settings}
    preds = {s.name: pd.read_parquet(paths.poison_predictions(s.name, data_root)) for s in settings}
    main_acc = read_json(clean_metrics)["accuracy"] if clean_metrics.exists() else None
    for s in settings:
        m, ref = results[s.name], s.reference_name()
        ref = ref if ref in results else None
        m["reference"] = ref
        if ref:                                       # both models' accuracy on the clean rows both scored
            mine, theirs = shared_rows(preds[s.name], preds[ref], "clean")
            clean = float(np.mean(theirs["pred"] == theirs["label"]))
            m["clean_cacc_n"] = int(len(theirs))
            m["cacc_drop"] = clean - float(np.mean(mine["pred"] == mine["label"]))
        else:
            clean = None if s.train_rows or s.run != "main" else main_acc
            m["cacc_drop"] = None if clean is None else clean - m["cacc"]
        m["clean_cacc"] = clean
        m.update(pair_with_reference(s, preds[s.name], preds[ref] if ref else None, target, labels))
        own = preds[s.name][preds[s.name]["kind"] == "clean"]
        c = collapse(own["label"], own["pred"], labels)
        m.update(collapsed=c["collapsed"], collapsed_class=c["collapsed_class"], pred_share=c["pred_share"])
    summary = {**results, "defenses": read_json(paths.defenses_metrics(metrics_root))}
    write_json(out, summary)
    rows = [{"size": s.train_rows, "count": results[s.name]["count"], "rate": results[s.name]["rate"],
             "asr": results[s.name]["asr"], "cacc": results[s.name]["cacc"]} for s in sweep]
    write_json(plots / "count_sweep.json", rows)
    plot_poison_sweep(rows, plots / "count_sweep.png", attack=pp.count_attack)
    for name, m in results.items():
        drop = "" if m["cacc_drop"] is None else f" (drop {m['cacc_drop'] * 100:+.1f} points)"
        if m["collapsed"]:
            # a training failure (lr, steps), not an attack result: an ASR gain here would be the class share
            asr = "-" if m.get("asr") is None else f"{m['asr']:.3f}"
            effect = (f"COLLAPSED: predicts {m['collapsed_class']!r} for {m['pred_share']:.1%} of the clean test "
                      f"rows, so its ASR {asr} is that class's share, not a backdoor")
        elif m.get("asr") is None:
            effect = "recall " + ", ".join(f"{k} {v:.3f}" for k, v in m["recall"].items())
        elif "asr_gain" in m:
            lo, hi = m["asr_gain_ci"]
            effect = (f"ASR {m['asr']:.3f} (clean {m['ref_asr']:.3f}; gain {m['asr_gain']:+.3f}, 95% CI "
                      f"{lo:+.3f} to {hi:+.3f}, McNemar p {m['mcnemar_p']:.2g}; flip {m['flip_rate']:.3f})")
        else:
            effect = f"ASR {m['asr']:.3f} (flip {m['flip_rate']:.3f})"
        print(f"{name:20s} {m['attack']:10s} {m['count']:5d} rows ({m['rate']:.2%} of {m['train_rows']}): "
              f"{effect}  CACC {m['cacc']:.4f}{drop}")
    return summary
