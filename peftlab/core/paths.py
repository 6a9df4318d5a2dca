"""Every output location of the pipeline, in one place.

dvc.yaml declares the same paths (tests/test_paths.py checks that the two agree). The main run writes at the
top level (metrics/evaluate.json, plots/evaluate/); a sweep run `<run>` writes under sweep/ (metrics/sweep/<run>/,
plots/sweep/<run>/): `run_metrics_dir` is the one place that knows that rule. Paths are relative to the repo root,
where DVC runs every stage.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

MAIN = "main"                      # the run trained by the `train` stage; every other run is a key of `sweep`
SPLITS = ("train", "val", "test")

RAW = Path("data/raw")
SPLITS_DIR = Path("data/splits")
SPLIT_METRICS = Path("metrics/split.json")
BASE_MODELS = Path("models/base")
ADAPTERS = Path("models/adapters")
PREDICTIONS = Path("data/predictions")
BASELINE_METRICS = Path("metrics/baseline.json")
BASELINE_PLOTS = Path("plots/baseline")
BASELINE_PREDICTIONS = PREDICTIONS / "baseline"
BASELINE_TABLES = Path("reports/baseline")       # stem: .csv and .tex
BENCHMARK_METRICS = Path("metrics/benchmark.json")
BENCHMARK_PLOTS = Path("plots/benchmark")
POISON_DATA = Path("data/poison")
POISON_METRICS = Path("metrics/poison")          # one file per setting, and defenses.json
POISON_SUMMARY = Path("metrics/poison.json")
POISON_PLOTS = Path("plots/poison")
REPORTS = Path("reports")
COMPARE_PLOTS = Path("plots/compare")
LIVE = Path("dvclive")


def base_model(key: str) -> Path:
    """models/base/<key>: a fetched base model (a key of `models` in params.yaml)."""
    return BASE_MODELS / key


def adapter(run: str) -> Path:
    return ADAPTERS / run


def run_metrics_dir(run: str) -> Path:
    """metrics/ for the main run, metrics/sweep/<run>/ for a sweep run."""
    return Path("metrics") if run == MAIN else Path("metrics/sweep") / run


def train_metrics(run: str) -> Path:
    return run_metrics_dir(run) / "train.json"


def eval_metrics(run: str) -> Path:
    return run_metrics_dir(run) / "evaluate.json"


def predictions(run: str) -> Path:
    """Per-row test predictions of a trained run (the compare stage's paired tests read them)."""
    return PREDICTIONS / f"{run}.parquet"


def baseline_predictions(method: str) -> Path:
    return BASELINE_PREDICTIONS / f"{method}.parquet"


def live_dir(run: str) -> Path:
    """dvclive/<run>/: the Trainer's DVCLive logs; training curves are under plots/metrics/ there."""
    return LIVE / run


def poison_data(setting: str) -> Path:
    return POISON_DATA / setting


def poison_adapter(setting: str) -> Path:
    return ADAPTERS / f"poison-{setting}"


def poison_metrics(setting: str) -> Path:
    return POISON_METRICS / f"{setting}.json"


@dataclasses.dataclass
class RunPaths:
    """Where one training run reads and writes (all declared in dvc.yaml)."""
    splits: Path
    adapter: Path
    checkpoints: Path
    live: Path
    metrics: Path

    @classmethod
    def for_run(cls, run: str) -> "RunPaths":
        return cls(SPLITS_DIR, adapter(run), Path("checkpoints") / run, live_dir(run), train_metrics(run))


@dataclasses.dataclass
class EvalPaths:
    """Where evaluate reads a trained run and writes its test results."""
    adapter: Path
    splits: Path
    metrics: Path
    plots: Path
    predictions: Path
    tables: Path   # stem: .csv and .tex are written next to it

    @classmethod
    def for_run(cls, run: str) -> "EvalPaths":
        main = run == MAIN
        return cls(adapter(run), SPLITS_DIR, eval_metrics(run),
                   Path("plots/evaluate") if main else Path("plots/sweep") / run, predictions(run),
                   REPORTS / "evaluate" if main else REPORTS / "sweep" / run)
