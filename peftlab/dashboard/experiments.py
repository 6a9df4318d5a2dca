"""Experiments and commits to compare, and their metric and param deltas, from DVC's own commands.

`dvc exp show --json`, `dvc metrics diff --json` and `dvc params diff --json` already know how to read any
revision's metrics and params (from git or the run cache), so the dashboard asks them rather than reading git
objects itself. Each call runs `dvc` as a subprocess in the repo, with a timeout; a failure becomes one line.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

WORKSPACE = "workspace"


class ExperimentsError(Exception):
    """dvc or git could not answer (not a repo, no commits, a command failed): shown as one line."""


def _run(repo: Path, argv: list[str], timeout: float) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_TERMINAL_PROMPT="0")
    try:
        proc = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        raise ExperimentsError(f"`{' '.join(argv[-4:])}` took longer than {timeout:.0f} s") from e
    except FileNotFoundError as e:
        raise ExperimentsError(f"{argv[0]} is not installed") from e
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
        raise ExperimentsError(lines[-1] if lines else f"{' '.join(argv)} exited with {proc.returncode}")
    return proc.stdout


def _dvc() -> list[str]:
    """The dvc of this interpreter's environment (the venv's), falling back to the one on PATH."""
    local = Path(sys.executable).with_name("dvc")
    return [str(local)] if local.exists() else [shutil.which("dvc") or "dvc"]


def dvc_json(repo: Path, args: list[str], timeout: float = 60.0):
    out = _run(repo, [*_dvc(), *args, "--json"], timeout)
    try:
        return json.loads(out) if out.strip() else {}
    except json.JSONDecodeError as e:
        raise ExperimentsError(f"dvc {' '.join(args)} --json printed no JSON: {out.strip()[:200]}") from e


def check_repo(repo: Path) -> None:
    if not (repo / ".dvc").is_dir():
        raise ExperimentsError(f"{repo} is not a DVC repository (no .dvc/): experiments need `git init && dvc init`")
    if not (repo / ".git").exists():
        raise ExperimentsError(f"{repo} is not a git repository: experiments and commits need git")


@dataclass
class Rev:
    """A revision the picker offers: the workspace, a commit or an experiment."""
    rev: str          # what dvc accepts: "workspace", a commit sha, or an experiment name
    label: str        # what the picker shows
    kind: str         # workspace | commit | experiment


def revisions(repo: Path, exp_show: list | None, commits: int = 20) -> list[Rev]:
    """The workspace, each experiment of `dvc exp show --json`, then the last commits of `git log`."""
    out = [Rev(WORKSPACE, "workspace (uncommitted)", "workspace")]
    seen = {WORKSPACE}
    for base in exp_show or []:
        for exp in base.get("experiments") or []:
            for r in exp.get("revs") or []:
                name, sha = r.get("name"), r.get("rev")
                if sha and sha not in seen:
                    seen.add(sha)
                    out.append(Rev(name or sha, f"exp {name or sha[:7]} (on {str(base.get('rev'))[:7]})",
                                   "experiment"))
    log = _run(repo, ["git", "log", f"-n{commits}", "--format=%H%x09%h%x09%ad%x09%s", "--date=short"], 30)
    for line in log.splitlines():
        sha, short, date, subject = (line.split("\t") + ["", "", ""])[:4]
        if sha and sha not in seen:
            seen.add(sha)
            out.append(Rev(sha, f"{short} {date} {subject[:60]}", "commit"))
    return out


def exp_table(exp_show: list | None) -> pd.DataFrame:
    """A flat table of `dvc exp show --json`: one row per revision, metrics as `file:key` columns."""
    rows = []

    def add(entry: dict, kind: str, name: str | None) -> None:
        data = entry.get("data") or {}
        row = {"rev": name or str(entry.get("rev"))[:7], "kind": kind, "timestamp": data.get("timestamp")}
        for f, m in (data.get("metrics") or {}).items():
            for k, v in _flatten(m.get("data") or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    row[f"{f}:{k}"] = v
        rows.append(row)

    for base in exp_show or []:
        add(base, "workspace" if base.get("rev") == WORKSPACE else "commit", base.get("name") or base.get("rev"))
        for exp in base.get("experiments") or []:
            for r in exp.get("revs") or []:
                add(r, "experiment", r.get("name"))
    return pd.DataFrame(rows)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _diff_args(a: str, b: str) -> tuple[list[str], bool]:
    """dvc's `diff A B` compares A (old) to B (new); the workspace is only ever the implicit new side, so a
    picker with the workspace on the left asks the other way round and swaps old and new back."""
    if a == b:
        return [], False
    if b == WORKSPACE:
        return [a], False
    if a == WORKSPACE:
        return [b], True
    return [a, b], False


def _diff_frame(raw: dict, key: str, swapped: bool, numeric: bool) -> pd.DataFrame:
    rows = []
    for f, entries in (raw or {}).items():
        for name, d in (entries or {}).items():
            old, new = d.get("old"), d.get("new")
            if swapped:
                old, new = new, old
            if not numeric:    # params mix numbers, strings and lists: text (Arrow needs one type per column)
                old, new = _text(old), _text(new)
            row = {"file": f, key: name, "A": old, "B": new}
            if numeric:
                diff = d.get("diff")
                row["B - A"] = -diff if (swapped and isinstance(diff, (int, float))) else diff
            rows.append(row)
    cols = ["file", key, "A", "B"] + (["B - A"] if numeric else [])
    df = pd.DataFrame(rows, columns=cols)
    if numeric:
        for c in ("A", "B", "B - A"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.sort_values(["file", key]).reset_index(drop=True)


def _text(v) -> str:
    return "(absent)" if v is None else v if isinstance(v, str) else json.dumps(v)


def metrics_diff(repo: Path, a: str, b: str) -> pd.DataFrame:
    """Every metric that differs between revisions A and B (`dvc metrics diff --json`), with B - A."""
    args, swapped = _diff_args(a, b)
    raw = dvc_json(repo, ["metrics", "diff", *args]) if args else {}
    return _diff_frame(raw, "metric", swapped, numeric=True)


def params_diff(repo: Path, a: str, b: str) -> pd.DataFrame:
    """Every param that differs between revisions A and B (`dvc params diff --json`)."""
    args, swapped = _diff_args(a, b)
    raw = dvc_json(repo, ["params", "diff", *args]) if args else {}
    return _diff_frame(raw, "param", swapped, numeric=False)
