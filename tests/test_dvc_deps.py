"""`dvc repro` reruns exactly what a change makes stale only if each stage's `deps` list all the code it runs.

For every stage of dvc.yaml (foreach and matrix expanded with params.yaml's values, as DVC expands them), the
stage's `cmd` is followed to the script or module it runs, and the transitive closure of project files that
code can import (module level and inside functions, package __init__ files on the way) must be covered by a
declared dep: the file itself or a folder above it. Nothing here lists today's modules: files are found by
path from the repo root, so the check holds for any package layout.
"""
from __future__ import annotations

import ast
import itertools
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from importwalk import import_closure, module_file

REPO = Path(__file__).resolve().parents[1]

# ${name}, ${item.x}, ${key}, ${a.b[0]}: DVC's interpolation syntax (the dict-unpacking ${{...}} form is unused)
INTERP = re.compile(r"\$\{\s*([^${}]+?)\s*\}")


def _to_str(value: Any) -> str:
    """A value as DVC writes it inside a string (booleans in YAML spelling)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _lookup(ctx: dict, expr: str) -> Any:
    """`a.b[0].c` in `ctx`; a name that is not there fails loudly (DVC would refuse the file too)."""
    value: Any = ctx
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", expr):
        if part.startswith("["):
            value = value[int(part[1:-1])]
        else:
            if not isinstance(value, dict) or part not in value:
                raise KeyError(f"dvc.yaml interpolates ${{{expr}}}, but {part!r} is not defined")
            value = value[part]
    return value


def interpolate(value: Any, ctx: dict) -> Any:
    """Resolve ${...} in every string of `value`; a string that is one ${...} keeps the value's type (as in DVC)."""
    if isinstance(value, dict):
        return {interpolate(k, ctx): interpolate(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, ctx) for v in value]
    if isinstance(value, str):
        whole = INTERP.fullmatch(value)
        if whole:
            return _lookup(ctx, whole.group(1))
        return INTERP.sub(lambda m: _to_str(_lookup(ctx, m.group(1))), value)
    return value


def _foreach_items(iterable: Any) -> list[tuple[str, dict]]:
    """DVC's foreach naming: a mapping gives `name@<key>` with ${key} and ${item}; a list of scalars gives
    `name@<value>`, a list of mappings or lists `name@<index>` (both with ${item} only)."""
    if isinstance(iterable, dict):
        return [(_to_str(k), {"key": _to_str(k), "item": v}) for k, v in iterable.items()]
    if any(isinstance(v, (dict, list)) for v in iterable):
        return [(str(i), {"item": v}) for i, v in enumerate(iterable)]
    return [(_to_str(v), {"item": v}) for v in iterable]


def _matrix_items(matrix: dict) -> list[tuple[str, dict]]:
    """DVC's matrix naming: one stage per combination, `name@<v1>-<v2>` (a composite value is `<dim><index>`),
    with ${item.<dim>} for each dimension and ${key} for the combined name."""
    out = []
    dims = list(matrix)
    for combo in itertools.product(*(list(enumerate(matrix[d])) for d in dims)):
        item = {d: v for d, (_, v) in zip(dims, combo)}
        key = "-".join(f"{d}{i}" if isinstance(v, (dict, list)) else _to_str(v) for d, (i, v) in zip(dims, combo))
        out.append((key, {"key": key, "item": item}))
    return out


def expand_stages(dvc: dict, params: dict) -> dict[str, dict]:
    """Every stage of a parsed dvc.yaml by its DVC name, with all ${...} resolved from params.yaml and `vars`."""
    ctx = dict(params)
    for entry in dvc.get("vars", []) or []:
        if isinstance(entry, dict):
            ctx.update(entry)
    stages: dict[str, dict] = {}
    for name, spec in (dvc.get("stages") or {}).items():
        if "foreach" in spec:
            for suffix, local in _foreach_items(interpolate(spec["foreach"], ctx)):
                stages[f"{name}@{suffix}"] = interpolate(spec["do"], {**ctx, **local})
        elif "matrix" in spec:
            body = {k: v for k, v in spec.items() if k != "matrix"}
            matrix = {dim: interpolate(values, ctx) for dim, values in spec["matrix"].items()}
            for suffix, local in _matrix_items(matrix):
                stages[f"{name}@{suffix}"] = interpolate(body, {**ctx, **local})
        else:
            stages[name] = interpolate(spec, ctx)
    return stages


def _paths(entries: list | None) -> list[str]:
    """deps/outs entries as paths: `- path` or `- path: {options}`."""
    out = []
    for e in entries or []:
        out += [e] if isinstance(e, str) else list(e)
    return out


def declared_deps(stage: dict) -> list[str]:
    """The stage's deps as repo-relative POSIX paths (wdir applied, no trailing slash)."""
    wdir = stage.get("wdir", ".")
    return [(Path(wdir) / d).as_posix().removeprefix("./").rstrip("/") for d in _paths(stage.get("deps"))]


def entry_points(stage: dict) -> list[tuple[Path, list[Path]]]:
    """The project files a stage's cmd runs, each with the folders Python would search for its imports.

    `python path/x.py` puts the script's folder first on sys.path; `python -m pkg.mod` puts the working
    directory first; both then find the package through its editable install at the repo root."""
    wdir = (REPO / stage.get("wdir", ".")).resolve()
    cmds = stage.get("cmd", [])
    found = []
    for cmd in cmds if isinstance(cmds, list) else [cmds]:
        for segment in re.split(r"&&|\|\||;|\|", cmd):
            tokens = shlex.split(segment)
            for i, tok in enumerate(tokens):
                if tok == "-m" and i + 1 < len(tokens):
                    f = module_file(tokens[i + 1], [wdir, REPO])
                    if f is not None and REPO in f.parents:
                        found.append((f, [wdir, REPO]))
                elif tok.endswith(".py") and (wdir / tok).is_file():
                    f = (wdir / tok).resolve()
                    found.append((f, [f.parent, wdir, REPO]))
    return found


def is_inert(path: Path) -> bool:
    """A file of nothing but a docstring and `from __future__` imports cannot change any output."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    for node in body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        return False
    return True


def covered(rel: str, deps: list[str]) -> bool:
    """`rel` is a declared dep, or inside a declared folder."""
    return any(rel == d or rel.startswith(d + "/") for d in deps)


def missing_code_deps(stage: dict) -> tuple[list[str], list[str]]:
    """(the entry points found, the project files the stage can import that no declared dep covers)."""
    deps = declared_deps(stage)
    starts = entry_points(stage)
    need: set[Path] = set()
    for start, search in starts:
        need |= import_closure(start, REPO, search)
    rels = sorted(p.relative_to(REPO).as_posix() for p in need if REPO in p.parents and not is_inert(p))
    return [s.relative_to(REPO).as_posix() for s, _ in starts], [r for r in rels if not covered(r, deps)]


def _load() -> dict[str, dict]:
    """The root dvc.yaml's stages and those of every other dvc.yaml one folder down (study/dvc.yaml: DVC names
    them `study/dvc.yaml:<stage>`), each interpolated from the params.yaml beside it, its wdir made relative to
    the repo root."""
    stages: dict[str, dict] = {}
    for path in [REPO / "dvc.yaml", *sorted(REPO.glob("*/dvc.yaml"))]:
        dvc = yaml.safe_load(path.read_text(encoding="utf-8"))
        params_file = path.parent / "params.yaml"
        params = yaml.safe_load(params_file.read_text(encoding="utf-8")) if params_file.exists() else {}
        prefix = "" if path.parent == REPO else f"{path.parent.relative_to(REPO).as_posix()}/dvc.yaml:"
        for name, stage in expand_stages(dvc, params or {}).items():
            wdir = (path.parent / stage.get("wdir", ".")).resolve().relative_to(REPO).as_posix()
            stages[prefix + name] = {**stage, "wdir": wdir}
    return stages


STAGES = _load()


def test_dvc_yaml_has_stages():
    assert STAGES, "dvc.yaml defines no stages"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_the_code_it_imports(name):
    """A change to any project file a stage can import must make the stage stale."""
    starts, missing = missing_code_deps(STAGES[name])
    assert starts, f"{name}: no project script or module found in its cmd {STAGES[name].get('cmd')!r}"
    assert not missing, (f"{name} ({' '.join(starts)}) imports {len(missing)} file(s) its deps in dvc.yaml do not "
                         f"cover: {', '.join(missing)}")


def test_every_stage_depends_on_the_pinned_requirements():
    """Every stage's outputs come through pinned libraries (pyarrow writes the parquet of fetch and split,
    torch/transformers/peft the models, scikit-learn the metrics, matplotlib the plots), so upgrading one must
    make the stages stale: requirements.txt is a dep of each."""
    lacking = [n for n, st in sorted(STAGES.items()) if "requirements.txt" not in declared_deps(st)]
    assert not lacking, f"{len(lacking)} stage(s) do not list requirements.txt in deps: {', '.join(lacking)}"


def test_declared_deps_exist_or_are_produced():
    """A dep that names a moved or deleted module would silently cover nothing; each dep exists in the checkout
    or is (under) an output of some stage (data, models and metrics that `dvc repro` produces)."""
    outs: list[str] = []
    for st in STAGES.values():
        for key in ("outs", "metrics", "plots"):
            outs += [p.rstrip("/") for p in _paths(st.get(key))]
    stale = sorted({f"{n}: {d}" for n, st in STAGES.items() for d in declared_deps(st)
                    if not (REPO / d).exists() and not covered(d, outs)
                    and not any(covered(o, [d]) for o in outs)})
    assert not stale, "deps that neither exist nor are produced by a stage: " + "; ".join(stale)


# --- the walk and the expansion, checked on their own -------------------------------------------------------

def test_expansion_matches_dvcs_own(tmp_path):
    """The expansion above names the same stages, commands and deps as DVC's own parser of this dvc.yaml."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        theirs = {s.addressing: (s.cmd, sorted(d.def_path.rstrip("/") for d in s.deps
                                                 if not isinstance(d, ParamsDependency)))
                  for s in repo.index.stages}
    ours = {n: (st["cmd"], sorted(declared_deps(st))) for n, st in STAGES.items()}
    assert ours == theirs


def test_expansion_of_foreach_and_matrix():
    dvc = yaml.safe_load("""
stages:
  one:
    foreach: ${runs}
    do: {cmd: "python s.py ${key} ${item.n}", deps: ["m/${item.model}"]}
  two:
    foreach: [a, b]
    do: {cmd: "python s.py ${item}"}
  three:
    matrix: {count: "${counts}", size: [10, 20]}
    cmd: "python s.py ${item.count} ${item.size} ${key} ${seed}"
""")
    stages = expand_stages(dvc, {"runs": {"x": {"n": 1, "model": "p"}, "y": {"n": 2, "model": "q"}},
                                 "counts": [0, 5], "seed": 42})
    assert stages["one@x"] == {"cmd": "python s.py x 1", "deps": ["m/p"]}
    assert stages["one@y"]["cmd"] == "python s.py y 2"
    assert stages["two@b"] == {"cmd": "python s.py b"}
    assert sorted(n for n in stages if n.startswith("three@")) == ["three@0-10", "three@0-20", "three@5-10",
                                                                  "three@5-20"]
    assert stages["three@5-20"]["cmd"] == "python s.py 5 20 5-20 42"
    with pytest.raises(KeyError, match="nope"):
        expand_stages({"stages": {"s": {"cmd": "python ${nope}"}}}, {})


def test_walk_finds_imports_inside_functions_relative_and_submodules(tmp_path):
    """The walk follows every import form, so a test that passes cannot hide an undeclared module."""
    files = {
        "pkg/__init__.py": "from pkg.base import X\n",
        "pkg/base.py": "X = 1\n",
        "pkg/sub/__init__.py": '"""docstring only"""\n',
        "pkg/sub/a.py": "from . import b\nfrom ..base import X\n",
        "pkg/sub/b.py": "def f():\n    from pkg.sub import c\n",
        "pkg/sub/c.py": "import importlib\nimportlib.import_module('pkg.lazy')\n",
        "pkg/lazy.py": "import os\n",
        "pkg/unused.py": "",
        "stages/run.py": "import helper\nimport pkg.sub.a\n",
        "stages/helper.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    start = tmp_path / "stages/run.py"
    got = {p.relative_to(tmp_path).as_posix() for p in import_closure(start, tmp_path, [start.parent, tmp_path])}
    assert got == {"stages/run.py", "stages/helper.py", "pkg/__init__.py", "pkg/base.py", "pkg/sub/__init__.py",
                   "pkg/sub/a.py", "pkg/sub/b.py", "pkg/sub/c.py", "pkg/lazy.py"}
    assert is_inert(tmp_path / "pkg/sub/__init__.py") and not is_inert(tmp_path / "pkg/__init__.py")


def test_coverage_rule():
    deps = ["stages/train.py", "peftlab/config", "requirements.txt"]
    assert covered("peftlab/config/params.py", deps) and covered("stages/train.py", deps)
    assert not covered("peftlab/configx.py", deps) and not covered("peftlab/train.py", deps)
