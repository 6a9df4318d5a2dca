"""The poison_report stage: every setting with its clean reference, and the count-sweep figure."""
from __future__ import annotations

from pathlib import Path

from peftlab.config.params import PoisonParams
from peftlab.core import paths
from peftlab.core.io import read_json, write_json
from peftlab.poison.attacks import setting_from_params, sweep_settings


def summarize(pp: PoisonParams, metrics_root: Path = paths.POISON_METRICS,
              clean_metrics: Path = paths.MAIN_EVAL_METRICS, out: Path = paths.POISON_SUMMARY,
              plots: Path = paths.POISON_PLOTS) -> dict:
    """poison_report stage: every setting keyed by its name (attack and budget), with its CACC drop against
    the clean model trained on the same rows (count 0 at that size, or the main run for the whole split)."""
    from peftlab.report.plots import plot_poison_sweep

    sweep = sweep_settings(pp)
    settings = [setting_from_params(pp, k) for k in pp.attacks] + sweep
    results = {s.name: read_json(paths.poison_metrics(s.name, metrics_root)) for s in settings}
    main_acc = read_json(clean_metrics)["accuracy"] if clean_metrics.exists() else None
    for s in settings:
        m = results[s.name]
        clean = results.get(f"count0-n{s.train_rows}", {}).get("cacc") if s.train_rows else main_acc
        m["clean_cacc"] = clean
        m["cacc_drop"] = None if clean is None else clean - m["cacc"]
    summary = {**results, "defenses": read_json(paths.defenses_metrics(metrics_root))}
    write_json(out, summary)
    rows = [{"size": s.train_rows, "count": results[s.name]["count"], "rate": results[s.name]["rate"],
             "asr": results[s.name]["asr"], "cacc": results[s.name]["cacc"]} for s in sweep]
    write_json(plots / "count_sweep.json", rows)
    plot_poison_sweep(rows, plots / "count_sweep.png", attack=pp.count_attack)
    for name, m in results.items():
        drop = "" if m["cacc_drop"] is None else f" (drop {m['cacc_drop'] * 100:+.1f} points)"
        print(f"{name:20s} {m['attack']:10s} {m['count']:5d} rows ({m['rate']:.2%} of {m['train_rows']}): "
              f"ASR {m['asr']:.3f}  CACC {m['cacc']:.4f}{drop}")
    return summary
