"""Regenerate .dvc/plots/offline.html: the `dvc plots show/diff` page with vega, vega-lite and vega-embed inlined.

DVC's default page loads the three libraries from a CDN, so without a network the plots render blank. This
template holds the libraries themselves and no `{scripts}` placeholder (so DVC's CDN tags are never inserted);
DVC fills `{plot_divs}`. Set once with `dvc config plots.html_template plots/offline.html` (relative to .dvc/).

    python scripts/build_plots_template.py                       # npm install the pinned versions into a temp dir
    python scripts/build_plots_template.py --node-modules DIR    # reuse an existing node_modules
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".dvc" / "plots" / "offline.html"
# Majors as DVC's renderer expects (its CDN tags name vega@5, vega-lite@5, vega-embed@6); exact versions so the
# committed file can be rebuilt byte for byte.
PACKAGES = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot (offline)</title>
    <!-- {versions}: inlined by scripts/build_plots_template.py, so the page renders without a network -->
{inlined}
    <style>
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def npm_install(dest: Path) -> Path:
    specs = [f"{name}@{version}" for name, version in PACKAGES.items()]
    subprocess.run(["npm", "init", "-y"], cwd=dest, check=True, capture_output=True)
    # vega-embed declares vega/vega-lite as peers with ranges npm 7+ refuses to resolve together.
    subprocess.run(["npm", "install", "--legacy-peer-deps", "--no-audit", "--no-fund", *specs], cwd=dest, check=True)
    return dest / "node_modules"


def build(node_modules: Path) -> str:
    scripts = []
    for name, version in PACKAGES.items():
        pkg = node_modules / name
        found = json.loads((pkg / "package.json").read_text())["version"]
        if found != version:
            sys.exit(f"error: {pkg} is version {found}; expected {version} (see PACKAGES)")
        js = (pkg / "build" / f"{name}.min.js").read_text(encoding="utf-8")
        # A literal </script> would end the tag early; a DVC placeholder would be replaced inside the code.
        bad = [p for p in ("</script", *PLACEHOLDERS) if p in js]
        if bad:
            sys.exit(f"error: {name}.min.js contains {bad[0]!r}; it cannot be inlined as is")
        scripts.append(f"    <script>/* {name}@{version} */\n{js}\n    </script>")
    versions = ", ".join(f"{n}@{v}" for n, v in PACKAGES.items())
    # The JS goes in last, so no later replace() can touch it.
    return PAGE.replace("{versions}", versions).replace("{inlined}", "\n".join(scripts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--node-modules", type=Path, help="a node_modules holding the pinned packages (skips npm)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        page = build(args.node_modules or npm_install(Path(tmp)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    part = args.out.with_suffix(".html.tmp")
    part.write_text(page, encoding="utf-8")
    part.replace(args.out)
    print(f"{args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}: {len(page):,} bytes, "
          f"sha256 {hashlib.sha256(page.encode()).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
