"""Output locations come from one module (peftlab.core.paths), and dvc.yaml declares the same ones.

If a stage wrote somewhere its `outs` do not name, DVC would neither cache nor restore it; if the code and
dvc.yaml disagreed on a path, `dvc repro` would report a missing output. So every path the code builds for a
stage is checked against that stage's outs, as DVC itself expands dvc.yaml (foreach over sweep runs included).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from peftlab.core import paths

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def outs() -> dict[str, set[str]]:
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return {s.addressing: {o.def_path.rstrip("/") for o in s.outs} for s in repo.index.stages}


def _p(path: Path) -> str:
    return path.as_posix()


def test_every_run_writes_where_its_stages_declare(outs):
    sweep = yaml.safe_load((REPO / "params.yaml").read_text()).get("sweep") or {}
    assert sweep, "the default params have sweep runs: the sweep/<run> rule is exercised"
    for run in [paths.MAIN, *sweep]:
        main = run == paths.MAIN
        train, evaluate = ("train", "evaluate") if main else (f"train_sweep@{run}", f"evaluate_sweep@{run}")
        rp, ep = paths.RunPaths.for_run(run), paths.EvalPaths.for_run(run)
        assert {_p(rp.adapter), _p(rp.checkpoints), _p(rp.live), _p(rp.metrics)} <= outs[train], run
        assert {_p(ep.metrics), _p(ep.plots), _p(ep.predictions), _p(ep.tables) + ".csv",
                _p(ep.tables) + ".tex"} <= outs[evaluate], run
        assert ep.adapter == rp.adapter


def test_stage_level_outputs_match(outs):
    assert {_p(paths.SPLITS_DIR), _p(paths.SPLIT_METRICS)} <= outs["split"]
    assert _p(paths.RAW) in outs["fetch_data"]
    assert {_p(paths.BASELINE_METRICS), _p(paths.BASELINE_PLOTS), _p(paths.BASELINE_PREDICTIONS),
            _p(paths.BASELINE_TABLES) + ".csv"} <= outs["baseline"]
    assert {_p(paths.BENCHMARK_METRICS), _p(paths.BENCHMARK_PLOTS)} <= outs["benchmark"]
    assert {_p(paths.POISON_SUMMARY), _p(paths.POISON_PLOTS)} <= outs["poison_report"]
    assert _p(paths.defenses_metrics()) in outs["poison_defend"]
    assert _p(paths.COMPARE_PLOTS) in outs["compare"] and _p(paths.REPORTS / "report.md") in outs["compare"]
    for name in ("minilm-l6", "smollm2-135m-instruct"):
        assert _p(paths.base_model(name)) in outs[f"fetch_model@{name}"]


def test_poison_settings_write_where_their_stages_declare(outs):
    params = yaml.safe_load((REPO / "params.yaml").read_text())["poison"]
    for name in params["attacks"]:
        assert {_p(paths.poison_data(name)), _p(paths.poison_adapter(name)),
                _p(paths.poison_metrics(name))} <= outs[f"poison@{name}"]
    count, size = params["counts"][-1], params["sizes"][-1]
    setting = f"count{count}-n{size}"
    stage = next(s for s, o in outs.items() if s.startswith("poison_count@") and _p(paths.poison_data(setting)) in o)
    assert {_p(paths.poison_adapter(setting)), _p(paths.poison_metrics(setting))} <= outs[stage]


def test_the_sweep_rule_is_written_once():
    """metrics/ for main, metrics/sweep/<run>/ for a sweep run: only core/paths.py spells it out."""
    import re

    built = re.compile(r'f"metrics/sweep/\{|"metrics" */ *"sweep"|Path\("metrics/sweep|"sweep" */ *run')
    hits = [p.relative_to(REPO).as_posix() for p in (REPO / "peftlab").rglob("*.py")
            if built.search(p.read_text()) and p.name != "paths.py"]
    assert hits == []
