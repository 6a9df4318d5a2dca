"""End to end: the real `dvc repro` in a temporary git copy of this repo, with the packaged MiniLM."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tinyproject import copy_repo_files, run

pytestmark = pytest.mark.slow
RESULTS = ("dvc.lock", "metrics/", "plots/", "reports/")


def copy_repo(dest: Path, params_override: dict) -> Path:
    """The repo's tracked and untracked-unignored files, minus committed results, as a fresh git repo."""
    copy_repo_files(dest, RESULTS)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for section, values in params_override.items():
        if isinstance(values, dict) and isinstance(params.get(section), dict) and section != "models":
            params[section].update(values)
        else:
            params[section] = values
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "copy"], dest)
    return dest


SMALL = {"data": {"max_samples": 1500}, "models": {"minilm-l6": {}},
         "train": {"epochs": 3, "lr": 0.002, "save_steps": 50, "min_steps": 100},   # 3 x 38 steps: not raised
         "evaluate": {"bootstrap": 200}}


def test_dvc_repro_end_to_end_then_nothing_to_do_then_refuses_bad_params(tmp_path):
    # The fine-tuning path (`dvc repro evaluate` and what it depends on); the LLM stages have their own tests.
    proj = copy_repo(tmp_path / "proj", SMALL)
    first = run([sys.executable, "-m", "dvc", "repro", "evaluate"], proj)
    for stage in ("fetch_data", "fetch_model@minilm-l6", "split", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout

    m = json.loads((proj / "metrics" / "evaluate.json").read_text())
    split = json.loads((proj / "metrics" / "split.json").read_text())
    assert m["n"] == split["test"]["n"] > 100
    assert m["accuracy"] > 0.65, m          # MiniLM + LoRA, 3 epochs on ~1,200 reviews
    assert (proj / "models" / "adapters" / "main" / "adapter_model.safetensors").exists()

    again = run([sys.executable, "-m", "dvc", "repro", "evaluate"], proj)
    assert "Running stage" not in again.stdout
    assert "up to date" in run([sys.executable, "-m", "dvc", "status", "evaluate"], proj).stdout

    # a bad value: one clear line, non-zero exit, earlier outputs left as they were
    before = (proj / "metrics" / "evaluate.json").read_bytes()
    adapter = (proj / "models" / "adapters" / "main" / "adapter_model.safetensors").read_bytes()
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["lora"]["r"] = 0
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bad = run([sys.executable, "-m", "dvc", "repro", "evaluate"], proj, check=False)
    assert bad.returncode != 0
    errors = [l for l in (bad.stdout + bad.stderr).splitlines() if l.startswith("error:")]
    assert errors == ["error: params.yaml: lora.r = 0 is invalid; allowed: a value >= 1 and <= 4096"]
    assert (proj / "metrics" / "evaluate.json").read_bytes() == before
    assert (proj / "models" / "adapters" / "main" / "adapter_model.safetensors").read_bytes() == adapter
