"""A tiny copy of this repository's pipeline in a temporary git repo, for the guarantee tests.

It keeps the real dvc.yaml, stages/, peftlab/ and catalog.yaml, and swaps the data and model for a few
hundred toy reviews (a local CSV) and a tiny BERT built from a config (a local model folder), both committed
inside the copy under inputs/ and named by relative paths, so two copies in different folders produce the
same ids, splits and numbers, and a whole `dvc repro evaluate` takes seconds.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, build_tiny_model, toy_frame

# Committed results of the lead's run (the copy makes its own), and the tests (which hold the fake secrets that
# the copy is searched for).
SKIP = ("dvc.lock", "study/dvc.lock", "metrics/", "plots/", "reports/", "dvclive/", "checkpoints/", "data/", "models/",
        "tests/")
LABEL_MAP = {"neg": "negative", "pos": "positive"}
PARAMS = {
    "seed": 7,
    "data": {"name": "toy", "source": "local:inputs/reviews.csv", "text_column": "review",
             "label_column": "sentiment", "label_map": LABEL_MAP, "labels": ["negative", "positive"]},
    "models": {"tiny-bert": {"source": "local:inputs/tiny-bert", "family": "encoder", "head": "classifier",
                             "target_modules": ["query", "key", "value"]}},
    "model": {"name": "tiny-bert", "max_length": 32},
    "split": {"val": 0.15, "test": 0.15},
    # 8 epochs with a checkpoint every 10 steps: long enough to be killed between two checkpoints (min_steps 0: exactly
    # this schedule, whatever the default)
    "train": {"epochs": 8, "lr": 0.005, "batch_size": 8, "save_steps": 10, "logging_steps": 5, "min_steps": 0},
    "evaluate": {"bootstrap": 100},
    # the classical and frozen-embedding baselines on the tiny BERT (no decoder here, so no llm_* methods)
    "baseline": {"methods": ["majority", "stratified", "tfidf_logreg", "tfidf_svm", "emb_logreg", "emb_svm_rbf",
                             "emb_mlp", "encoder_zeroshot"], "llm": "tiny-bert", "encoder": "tiny-bert",
                 "c_grid": [1.0, 10.0], "batch_size": 16, "max_length": 32},
}


def git_env(proj: Path, extra: dict | None = None) -> dict:
    """The test's environment, a PATH that finds this venv's dvc, a git identity for commits, and the copy's
    own peftlab first on the import path (so the stages run the code that was copied, not an editable install)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(proj),
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t", "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1",
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **(extra or {})}


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env or git_env(cwd), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def dvc(proj: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], proj, env=env, check=check)


def commit(proj: Path, message: str) -> None:
    run(["git", "add", "-A"], proj)
    run(["git", "commit", "-qm", message, "--allow-empty"], proj)


def copy_repo_files(dest: Path, skip: tuple[str, ...]) -> None:
    """This repo's tracked and untracked-unignored files (what a commit would hold) minus the `skip` prefixes."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        if f.startswith(skip) or not (REPO / f).is_file():
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)


def make_project(dest: Path, rows: int = 240, params: dict | None = None) -> Path:
    """The repo's code and pipeline, toy inputs, PARAMS (plus `params`) on top of params.yaml; committed."""
    copy_repo_files(dest, SKIP)
    inputs = dest / "inputs"
    build_tiny_model(inputs / "tiny-bert", "encoder", "tiny-bert")
    df = toy_frame(rows, seed=3)
    df.assign(review_id=range(len(df)), review=df["text"],
              sentiment=df["label"].map({0: "neg", 1: "pos"}))[["review_id", "review", "sentiment"]].to_csv(
        inputs / "reviews.csv", index=False)
    values = yaml.safe_load((dest / "params.yaml").read_text())
    for section, new in {**PARAMS, **(params or {})}.items():
        if isinstance(new, dict) and isinstance(values.get(section), dict) and section not in ("models", "data"):
            values[section] = {**values[section], **new}
        else:
            values[section] = new
    if "test_sets" in values.get("evaluate", {}) and "test_sets" not in (params or {}).get("evaluate", {}):
        values["evaluate"]["test_sets"] = {}     # the defaults slice reviews by length; toy reviews are all short
    (dest / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    run(["git", "init", "-q"], dest)
    commit(dest, "tiny project")
    return dest


def declared_outs(proj: Path) -> list[str]:
    """Every out and metrics/plots file the pipeline declares (foreach and matrix expanded), relative paths."""
    from dvc.repo import Repo

    with Repo(str(proj)) as repo:
        return sorted({os.path.relpath(out.fs_path, proj) for stage in repo.index.stages for out in stage.outs})


def file_hashes(root: Path, skip: tuple[str, ...] = (".git", ".dvc")) -> dict[str, str]:
    """sha256 of every file under root (relative path -> hash), top-level folders in `skip` left out."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] in skip or not p.is_file():
            continue
        out[rel.as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def lock_outs(proj: Path) -> dict[str, str]:
    """`stage:path -> md5` for every out recorded in dvc.lock."""
    lock = yaml.safe_load((proj / "dvc.lock").read_text())
    return {f"{name}:{o['path']}": o["md5"] for name, st in lock["stages"].items() for o in st.get("outs", [])}
