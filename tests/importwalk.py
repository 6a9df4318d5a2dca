"""A static walk of a project's imports, shared by test_dvc_deps.py and test_private_names.py.

Static on purpose: importing the stage scripts would run heavy imports (torch, transformers) and would only
see the imports that one code path happens to execute, while `dvc repro` must rerun a stage whenever any code
it *can* import changes. So every import statement counts, at module level and inside functions, and modules
are found by path from a root folder, never from a list of today's modules, so the walk keeps working when
the package is reorganised.
"""
from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def module_file(name: str, search: list[Path]) -> Path | None:
    """The file that `import name` loads from the first folder of `search` that has it, or None (third party).

    Resolved like Python's path finder: `a.b` is `a/b.py` or `a/b/__init__.py`, and a folder earlier in
    `search` wins (a stage script's own folder comes first on sys.path, then the repo root)."""
    if not name:
        return None
    parts = name.split(".")
    for base in search:
        for cand in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
            if cand.is_file():
                return cand.resolve()
    return None


def module_name(path: Path, root: Path) -> str:
    """The dotted name of a file under `root`: peftlab/data/__init__.py -> peftlab.data, stages/x.py -> stages.x."""
    parts = list(path.resolve().relative_to(root.resolve()).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def current_package(path: Path, root: Path) -> str:
    """The package that relative imports in `path` start from (the module itself for an __init__.py)."""
    name = module_name(path, root)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def resolve_relative(module: str | None, level: int, path: Path, root: Path) -> str:
    """The absolute module named by `from <level dots><module> import ...` inside `path`."""
    if not level:
        return module or ""
    package = current_package(path, root)
    pkg = package.split(".") if package else []
    base = pkg[: len(pkg) - (level - 1)]
    return ".".join(base + ([module] if module else []))


@dataclass(frozen=True)
class ImportRef:
    """One module an import statement loads: `import a.b` gives `a` and `a.b`; `from a import b` gives `a`, and
    `a.b` too when b is a submodule (the caller decides, with module_file)."""
    module: str
    line: int
    names: tuple[str, ...] = ()   # for `from m import x, y`: the imported names


def import_statements(tree: ast.AST, path: Path, root: Path) -> Iterator[ImportRef]:
    """Every import in `tree` (module level, inside functions, classes, try/if blocks), absolute-resolved.

    importlib.import_module / __import__ calls with a literal name count as imports too; a computed name cannot
    be seen by any static walk, which is why the project's registries are plain imports."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield ImportRef(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = resolve_relative(node.module, node.level, path, root)
            yield ImportRef(base, node.lineno, tuple(a.name for a in node.names))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if fname in ("import_module", "__import__"):
                yield ImportRef(node.args[0].value, node.lineno)


def parents_and_self(name: str) -> list[str]:
    """a.b.c -> [a, a.b, a.b.c]: importing a submodule runs every package __init__ on the way."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def imported_files(path: Path, root: Path, search: list[Path]) -> set[Path]:
    """The project files that importing/running `path` loads directly (package __init__ files included)."""
    return set(_imported_files(path, root, tuple(search), path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=4096)
def _imported_files(path: Path, root: Path, search: tuple[Path, ...], mtime_ns: int) -> frozenset[Path]:
    """imported_files, cached per file version: every stage's walk goes through the same modules."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[Path] = set()
    for ref in import_statements(tree, path, root):
        names = [ref.module] + [f"{ref.module}.{n}" for n in ref.names if n != "*"]
        for name in names:
            for part in parents_and_self(name):
                f = module_file(part, list(search))
                if f is not None:
                    out.add(f)
    return frozenset(out)


def import_closure(start: Path, root: Path, search: list[Path]) -> set[Path]:
    """`start` and every project file it can import, transitively (a cycle is walked once)."""
    seen: set[Path] = set()
    todo = [start.resolve()]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo.extend(imported_files(p, root, search) - seen)
    return seen


def python_files(root: Path, folders: list[str]) -> list[Path]:
    """Every .py file under the given folders of `root` (those that exist), sorted, caches skipped."""
    out: list[Path] = []
    for folder in folders:
        base = root / folder
        if base.is_dir():
            out += [p for p in base.rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(out)
