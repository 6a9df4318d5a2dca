"""Defaults live in one place: the params dataclasses, with params.yaml showing the same values.

The dataclasses are the schema (types, ranges, docs) and what a stage gets for a section or key it does not
read from params.yaml, so they are the single source; params.yaml is the control panel that shows them. The
two must never disagree: a stage that reads only some sections, a test that builds Params(), or a new user
who deletes a line would otherwise silently get another value than the committed results used.

Rules checked, for every section:
- the same sections in both;
- each key params.yaml sets has the dataclass default's value (after the loader's own coercion, so `16` and
  `16.0` agree);
- each key whose default is not null appears in params.yaml (absent null-default keys, such as data's inline
  catalog overrides, mean the same null, so there is nothing to disagree about);
- tables (a mapping whose default is empty: sweep runs, poison attacks, extra test sets) are the experiment's
  contents, named by the user, not defaults of a setting: params.yaml fills them and only their parsing is
  checked (by load_params).
The params module is found by what it defines, not by path, so the test survives the package's move.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from importwalk import module_name, python_files

REPO = Path(__file__).resolve().parents[1]


def params_module() -> ModuleType:
    """The project module that defines both `class Params` and `def load_params` at top level."""
    hits = []
    for path in python_files(REPO, ["peftlab"]):
        top = ast.parse(path.read_text(encoding="utf-8")).body
        names = {n.name for n in top if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
        if {"Params", "load_params"} <= names:
            hits.append(path)
    assert len(hits) == 1, f"expected one module defining Params and load_params, found {hits}"
    return importlib.import_module(module_name(hits[0], REPO))


def _is_table(default: Any) -> bool:
    return isinstance(default, dict) and not default


def disagreements(params_file: Path) -> list[str]:
    """Every way `params_file` and the dataclass defaults disagree, one line each (empty: they agree)."""
    mod = params_module()
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    sections = [f.name for f in dataclasses.fields(mod.Params)]
    out = [f"section {s!r} is in params.yaml only" for s in raw if s not in sections]
    out += [f"section {s!r} is in the dataclasses only" for s in sections if s not in raw]
    present = [s for s in sections if s in raw]
    loaded, default = mod.load_params(present, params_file), mod.Params()
    for s in present:
        d, v = getattr(default, s), getattr(loaded, s)
        if not dataclasses.is_dataclass(d):
            if not _is_table(d) and d != v:
                out.append(f"{s}: code default {d!r}, params.yaml {v!r}")
            continue
        given = raw[s] or {}
        for f in dataclasses.fields(d):
            dv, yv = getattr(d, f.name), getattr(v, f.name)
            if _is_table(dv):
                continue
            if f.name not in given:
                if dv is not None:
                    out.append(f"{s}.{f.name}: default {dv!r} is not shown in params.yaml")
            elif dv != yv:
                out.append(f"{s}.{f.name}: code default {dv!r}, params.yaml {yv!r}")
    return out


def test_dataclass_defaults_equal_params_yaml():
    bad = disagreements(REPO / "params.yaml")
    assert not bad, "params.yaml and the dataclass defaults disagree:\n" + "\n".join(bad)


def test_a_disagreement_is_caught(tmp_path):
    """The check can fail: a changed value, a dropped key and an unknown section are each named."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["benchmark"]["rows"] = 32
    del raw["lora"]["r"]
    del raw["compare"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    bad = disagreements(tmp_path / "params.yaml")
    assert "benchmark.rows: code default 64, params.yaml 32" in bad
    assert "lora.r: default 8 is not shown in params.yaml" in bad
    assert "section 'compare' is in the dataclasses only" in bad
    assert len(bad) == 3
