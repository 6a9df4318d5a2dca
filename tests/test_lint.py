"""The linters are part of the test command: ruff (style, import order, unused names) and import-linter's
layers contract (a lower layer of peftlab never imports a higher one), both configured in pyproject.toml.

They run as the real tools, from the same environment as pytest, so `pytest` is the one command to run; a
failure carries the tool's own report. The contract is also run on a small package laid out like peftlab
with an upward and a sibling import, to show that it catches them (a contract that passes vacuously would be
worse than none).
"""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LINTED = ["peftlab", "stages", "tests", "benchmarks", "scripts"]


def run(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean():
    folders = [d for d in LINTED if (REPO / d).is_dir()]
    r = run([str(BIN / "ruff"), "check", "--no-cache", "--output-format", "concise", *folders])
    assert r.returncode == 0, f"ruff check (rc {r.returncode}); `ruff check --fix` fixes I001 and F401:\n" \
                              f"{r.stdout}{r.stderr}"


def test_layers_contract_holds():
    r = run([str(BIN / "lint-imports"), "--no-cache", "--no-logo"])
    assert r.returncode == 0, f"lint-imports (rc {r.returncode}):\n{r.stdout}{r.stderr}"


def _layers_contract() -> dict:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    (contract,) = [c for c in cfg["contracts"] if c["type"] == "layers"]
    return contract


def test_layers_contract_catches_upward_and_sibling_imports(tmp_path):
    """The repo's own layers, on a package `fakepkg` of empty layers plus two forbidden imports."""
    contract = _layers_contract()
    layers = contract["layers"]
    names = [n.strip(" ()") for layer in layers for n in layer.replace(":", "|").split("|")]
    top, bottom = names[0], names[-1]
    siblings = next([n.strip(" ()") for n in layer.split("|")] for layer in layers if "|" in layer)
    pkg = tmp_path / "fakepkg"
    for n in names:
        (pkg / n).mkdir(parents=True)
        (pkg / n / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_package = fakepkg\n\n[importlinter:contract:layers]\nname = layers\ntype = layers\n"
        "containers = fakepkg\nlayers =\n" + "".join(f"    {layer}\n" for layer in layers)
        + f"exhaustive = {contract.get('exhaustive', False)}\n")
    lint = [str(BIN / "lint-imports"), "--no-cache", "--no-logo", "--config", ".importlinter"]

    clean = run(lint, cwd=tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    (pkg / bottom / "low.py").write_text(f"import fakepkg.{top}\n")
    (pkg / siblings[0] / "side.py").write_text(f"from fakepkg import {siblings[1]}\n")
    broken = run(lint, cwd=tmp_path)
    out = broken.stdout + broken.stderr
    assert broken.returncode == 1, out
    assert f"fakepkg.{bottom}.low -> fakepkg.{top}" in out
    assert f"fakepkg.{siblings[0]}.side -> fakepkg.{siblings[1]}" in out
