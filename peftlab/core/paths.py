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
POISON_REPORT = Path("reports/poison.md")          # the default's settings: seed groups (if any), count or rate
# The full poisoning study (study/dvc.yaml): the same layout under its own roots, so its runs never touch the default's
STUDY_PARAMS = Path("study/params.yaml")           # its grid, and the poison.attacks it expands to
STUDY_DATA = Path("data/study")
STUDY_METRICS = Path("metrics/study")
STUDY_ADAPTERS = Path("models/adapters/study")
STUDY_SUMMARY = Path("metrics/study.json")
STUDY_PLOTS = Path("plots/study")
POISON_STUDY_REPORT = Path("reports/poison_study.md")   # the study's seed groups, smallest count, count or rate
ONION_SCORES = Path("data/onion/scores.parquet")   # ONION's per-word LM scores (poison_onion), read by poison_defend
REPORTS = Path("reports")
COMPARE_PLOTS = Path("plots/compare")
LIVE = Path("dvclive")


def base_model(key: str) -> Path:
    """models/base/<key>: a fetched base model (a key of `models` in params.yaml)."""
    return BASE_MODELS / key


def adapter(run: str) -> Path:
    return ADAPTERS / run


SWEEP_METRICS = Path("metrics/sweep")


def run_metrics_dir(run: str) -> Path:
    """metrics/ for the main run, metrics/sweep/<run>/ for a sweep run."""
    return Path("metrics") if run == MAIN else SWEEP_METRICS / run


def train_metrics(run: str) -> Path:
    return run_metrics_dir(run) / "train.json"


def eval_metrics(run: str) -> Path:
    return run_metrics_dir(run) / "evaluate.json"


MAIN_EVAL_METRICS = eval_metrics(MAIN)   # metrics/evaluate.json: the clean reference of whole-split attacks


def predictions(run: str) -> Path:
    """Per-row test predictions of a trained run (the compare stage's paired tests read them)."""
    return PREDICTIONS / f"{run}.parquet"


def baseline_predictions(method: str, root: Path = BASELINE_PREDICTIONS) -> Path:
    return Path(root) / f"{method}.parquet"


def live_dir(run: str) -> Path:
    """dvclive/<run>/: the Trainer's DVCLive logs; training curves are under plots/metrics/ there."""
    return LIVE / run


def curves_dir(run: str) -> Path:
    """The training curves (loss.tsv, eval/accuracy.tsv) of a run, as the Trainer's DVCLiveCallback writes them."""
    return live_dir(run) / "plots" / "metrics"


def eval_plots(run: str) -> Path:
    return Path("plots/evaluate") if run == MAIN else Path("plots/sweep") / run


def eval_tables(run: str) -> Path:
    """Stem of the evaluate tables (.csv and .tex are written next to it)."""
    return REPORTS / "evaluate" if run == MAIN else REPORTS / "sweep" / run


# Poisoning: `root` lets a defense retrain into a temporary folder with the same layout.
def poison_data(setting: str, root: Path = POISON_DATA) -> Path:
    """data/poison/<setting>/: the poisoned train split beside copies of the clean val split and manifest."""
    return Path(root) / setting


def poison_predictions(setting: str, root: Path = POISON_DATA) -> Path:
    """Per-row predictions of the setting's model on the clean and triggered test rows (the paired tests' input)."""
    return poison_data(setting, root) / "predictions.parquet"


def poison_adapter(setting: str, root: Path = ADAPTERS) -> Path:
    return Path(root) / f"poison-{setting}"


def poison_metrics(setting: str, root: Path = POISON_METRICS) -> Path:
    return Path(root) / f"{setting}.json"


def defenses_metrics(root: Path = POISON_METRICS) -> Path:
    return Path(root) / "defenses.json"


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
        return cls(adapter(run), SPLITS_DIR, eval_metrics(run), eval_plots(run), predictions(run), eval_tables(run))
