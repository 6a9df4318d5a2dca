"""No module uses another module's `_private` name.

An underscore name is a module's own business: its owner may change or remove it without looking for callers.
A use from elsewhere is a hidden coupling that the layers contract cannot see as an interface, so it fails here.
The walk is static (AST) over the project's code folders; modules are found by path from the repo root, so the
check holds for any package layout. Flagged:

- `from m import _x` (multi-line parenthesised imports too) and `import m._x` where m is a project module;
- `m._x` where `m` is bound to a project module by `import m`, `import a.m as m`, `from a import m` or a
  relative import, and `Name._x` where `Name` was imported from a project module (a class's private member);
- `getattr(m, "_x")` with a literal name.

Not flagged: dunder and sunder names (`__version__`, `__file__`, enum `_value_`), the namedtuple API
(`_replace`, `_asdict`...), a module's use of its own names, a private submodule imported from inside its own
package, a name that a local variable or argument shadows, and third-party modules (reported separately by
`third_party_uses`, not asserted: their privates are their maintainers' concern and version pins guard them).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from importwalk import module_file, module_name, python_files, resolve_relative

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ["peftlab", "stages", "benchmarks", "scripts"]
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}   # namedtuple's API


def is_private(name: str) -> bool:
    """`_x` is private; `__x__` (dunder) and `_x_` (sunder, enum machinery) are not."""
    return name.startswith("_") and not name.endswith("_") and name not in PUBLIC_UNDERSCORE


@dataclass(frozen=True)
class Use:
    """One use of a private name: where, what, and whose it is."""
    file: str
    line: int
    name: str       # dotted, e.g. peftlab.data._unit
    owner: str      # the module the name belongs to
    project: bool   # False: a third-party module's private

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.name} (private to {self.owner})"


@dataclass(frozen=True)
class Binding:
    """What a local name refers to: a module, or `attr` of a module (a class, function or constant)."""
    module: str
    attr: str | None = None


class PrivateUses:
    """Finds private-name uses in one file. `root` is the repo root; the file's own folder is searched first
    (a script's imports of its siblings), as Python does for scripts."""

    def __init__(self, path: Path, root: Path):
        self.path, self.root = path.resolve(), root.resolve()
        self.search = [self.path.parent, self.root]
        self.me = module_name(self.path, self.root)
        self.uses: list[Use] = []

    # -- what names are -------------------------------------------------------------------------------------

    def is_module(self, name: str) -> bool:
        return module_file(name, self.search) is not None

    def is_project(self, module: str) -> bool:
        """A project module is one found under the repo root; anything else is third party (or builtin)."""
        top = module.split(".")[0]
        return self.is_module(top)

    def inside(self, package: str) -> bool:
        """This file is the module `package` or lies within it."""
        return self.me == package or self.me.startswith(package + ".")

    def report(self, line: int, name: str, owner: str) -> None:
        if owner == self.me:
            return
        self.uses.append(Use(self.path.relative_to(self.root).as_posix(), line, name, owner,
                             self.is_project(owner)))

    def check_module_path(self, dotted: str, line: int) -> None:
        """`import a._b.c` / `from a._b import c`: a private submodule is fine from inside its parent package."""
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            if is_private(part):
                owner = ".".join(parts[:i])
                if not (owner and self.inside(owner)):
                    self.report(line, ".".join(parts[: i + 1]), owner or part)
                return

    # -- scopes ---------------------------------------------------------------------------------------------

    def run(self) -> list[Use]:
        tree = ast.parse(self.path.read_text(encoding="utf-8"), filename=str(self.path))
        self.scope(tree.body, {}, ())
        return self.uses

    @staticmethod
    def scope_nodes(body: list[ast.AST]):
        """The nodes of one scope: not the bodies of nested functions and classes (their decorators, defaults
        and bases belong to this scope), which are returned separately."""
        nodes, nested, stack = [], [], list(body)
        while stack:
            n = stack.pop()
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                nested.append(n)
                nodes.append(n)
                if isinstance(n, ast.ClassDef):
                    stack += n.decorator_list + n.bases + n.keywords
                else:
                    stack += getattr(n, "decorator_list", []) + n.args.defaults + [d for d in n.args.kw_defaults
                                                                                   if d is not None]
                continue
            nodes.append(n)
            stack.extend(ast.iter_child_nodes(n))
        return nodes, nested

    def bindings_of_import(self, node: ast.Import | ast.ImportFrom) -> dict[str, Binding]:
        out: dict[str, Binding] = {}
        if isinstance(node, ast.Import):
            for a in node.names:
                self.check_module_path(a.name, node.lineno)
                if a.asname:
                    out[a.asname] = Binding(a.name)
                else:
                    top = a.name.split(".")[0]
                    out[top] = Binding(top)
            return out
        base = resolve_relative(node.module, node.level, self.path, self.root)
        self.check_module_path(base, node.lineno)
        for a in node.names:
            if a.name == "*":
                continue
            full = f"{base}.{a.name}" if base else a.name
            if is_private(a.name):
                if self.is_module(full):
                    self.check_module_path(full, node.lineno)
                else:
                    self.report(node.lineno, full, base)
            out[a.asname or a.name] = Binding(full) if self.is_module(full) else Binding(base, a.name)
        return out

    def scope(self, body: list[ast.AST], outer: dict[str, Binding], args: tuple[str, ...]) -> None:
        nodes, nested = self.scope_nodes(body)
        imported: dict[str, Binding] = {}
        bound: set[str] = set(args)
        for n in nodes:
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                imported.update(self.bindings_of_import(n))
            elif isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                bound.add(n.id)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(n.name)
            elif isinstance(n, (ast.Global, ast.Nonlocal)):
                bound -= set(n.names)
        names = {k: v for k, v in outer.items() if k not in bound}
        names.update(imported)
        for n in nodes:
            if isinstance(n, ast.Attribute) and is_private(n.attr):
                self.check_attribute(n, names)
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "getattr" \
                    and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant) \
                    and isinstance(n.args[1].value, str) and is_private(n.args[1].value):
                self.check_attribute(ast.Attribute(value=n.args[0], attr=n.args[1].value, lineno=n.lineno), names)
        for fn in nested:
            if isinstance(fn, ast.ClassDef):
                self.scope(fn.body, names, ())
            else:
                a = fn.args
                params = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
                params += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
                self.scope(fn.body if isinstance(fn.body, list) else [fn.body], names, tuple(params))

    def check_attribute(self, node: ast.Attribute, names: dict[str, Binding]) -> None:
        """`<chain>._x` where the chain starts at an imported name and walks through modules and attributes."""
        chain: list[str] = []
        value = node.value
        while isinstance(value, ast.Attribute):
            chain.insert(0, value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in names:
            return
        b = names[value.id]
        module, attr_path = b.module, [b.attr] if b.attr else []
        for part in chain:
            if not attr_path and self.is_module(f"{module}.{part}"):
                module = f"{module}.{part}"
            else:
                attr_path.append(part)
        dotted = ".".join([module, *attr_path, node.attr])
        if not attr_path and self.is_module(f"{module}.{node.attr}"):
            self.check_module_path(f"{module}.{node.attr}", node.lineno)
        else:
            self.report(node.lineno, dotted, module)


def private_uses(root: Path, folders: list[str]) -> list[Use]:
    """Every private-name use in the .py files under `folders` of `root`."""
    out: list[Use] = []
    for path in python_files(root, folders):
        out += PrivateUses(path, root).run()
    return out


def project_uses(root: Path = REPO, folders: list[str] = FOLDERS) -> list[Use]:
    return [u for u in private_uses(root, folders) if u.project]


def third_party_uses(root: Path = REPO, folders: list[str] = FOLDERS) -> list[Use]:
    """Reported, not asserted: uses of third-party privates (fragile across the pinned upgrades)."""
    return [u for u in private_uses(root, folders) if not u.project]


def test_no_module_uses_another_modules_private_names():
    uses = project_uses()
    assert not uses, f"{len(uses)} use(s) of another module's private name:\n" + "\n".join(map(str, uses))


# --- the walker itself, on small projects it must get right ------------------------------------------------

SNIPPETS = {
    "pkg/__init__.py": '__version__ = "1"\n_pkg_secret = 1\n',
    "pkg/a.py": "_x = 1\n_y = 2\ndef f():\n    return _x + _y\nclass C:\n    _hidden = 1\n",
    "pkg/_impl.py": "z = 1\n",
    "pkg/sub/__init__.py": "",
    "pkg/sub/d.py": "from .. import _pkg_secret\n",                                   # bad: the package's private
    "pkg/multi.py": "from pkg.a import (\n    f,\n    _y,\n)\n",                      # bad: multi-line
    "pkg/alias.py": "import pkg.a as A\nprint(A._x)\n",                               # bad: alias attribute
    "pkg/fromimp.py": "from pkg import a\ndef g():\n    return a._y\n",               # bad: inside a function
    "pkg/chain.py": "import pkg.a\npkg.a._x\n",                                       # bad: dotted chain
    "pkg/rel.py": "from .a import _x\n",                                              # bad: relative
    "pkg/cls.py": "from pkg.a import C\nC._hidden\n",                                 # bad: a class's private
    "pkg/get.py": "from pkg import a\ngetattr(a, '_x')\n",                            # bad: literal getattr
    "stages/s.py": "import pkg._impl\n",                                              # bad: private submodule
    "pkg/ok_impl.py": "from pkg import _impl\nfrom . import _impl as i2\n",           # ok: inside its package
    "pkg/ok_dunder.py": "import pkg\nfrom pkg import a\nprint(pkg.__version__, a.__file__, a.C.__name__)\n",
    "pkg/ok_shadow.py": "from pkg import a\ndef h(a):\n    return a._x\nfor a in []:\n    pass\n",
    "pkg/ok_third.py": "import os\nfrom collections import namedtuple\nos._exit\nnamedtuple('T', 'x')(1)._replace\n",
    "pkg/ok_local.py": "class _L:\n    _v = 1\n_L._v\n",
}
BAD = {("pkg/sub/d.py", "pkg._pkg_secret"), ("pkg/multi.py", "pkg.a._y"), ("pkg/alias.py", "pkg.a._x"),
       ("pkg/fromimp.py", "pkg.a._y"), ("pkg/chain.py", "pkg.a._x"), ("pkg/rel.py", "pkg.a._x"),
       ("pkg/cls.py", "pkg.a.C._hidden"), ("pkg/get.py", "pkg.a._x"), ("stages/s.py", "pkg._impl")}


@pytest.fixture()
def snippets(tmp_path: Path) -> Path:
    for rel, text in SNIPPETS.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_walker_flags_each_form_and_nothing_else(snippets):
    got = {(u.file, u.name) for u in project_uses(snippets, ["pkg", "stages"])}
    assert got == BAD


def test_walker_reports_third_party_privates_separately(snippets):
    got = {(u.file, u.name) for u in third_party_uses(snippets, ["pkg", "stages"])}
    assert got == {("pkg/ok_third.py", "os._exit")}


def test_walker_names_file_line_and_owner(snippets):
    (use,) = [u for u in project_uses(snippets, ["pkg"]) if u.file == "pkg/multi.py"]
    assert str(use) == "pkg/multi.py:1: pkg.a._y (private to pkg.a)"
