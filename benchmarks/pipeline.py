"""Seconds per stage of the default `dvc repro -f`, in a temporary clone, so the repository you work in is untouched.

    python benchmarks/pipeline.py [--rev HEAD] [--target evaluate] [--json out.json] [--keep]

The clone shares this repository's DVC cache (so nothing is copied) and the fetched PyPI artifacts (the
`PEFTLAB_CACHE` folder, so the fetch stages read and re-check files already downloaded, never the network twice).
`--rev` runs another commit (compare two commits in the same session: run it once per commit, one after the
other, never at the same time on a 2-core machine). `--target` reruns one stage and its upstream only
(`--target evaluate` is a newcomer's first metric). Each stage's time runs from DVC's "Running stage" line to the
next one (or to the end), so it includes DVC hashing and saving that stage's outputs: what a user waits for.
Prints one row per stage (seconds, share of the total) and the total.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"^Running stage '([^']+)':")


def clone(rev: str, dest: Path) -> None:
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
    subprocess.run(["git", "checkout", "-q", rev], cwd=dest, check=True)
    subprocess.run(["dvc", "cache", "dir", str(REPO / ".dvc" / "cache"), "--local"], cwd=dest, check=True)


def timed_repro(cwd: Path, target: str | None, log: Path) -> tuple[list[tuple[str, float]], float, int]:
    """(stage, seconds) in run order, the total and dvc's exit status; dvc's output streams to `log` and stdout."""
    cmd = ["dvc", "repro", "-f"] + ([target] if target else [])
    # The clone's own peftlab first: an editable install (`pip install -e .`) would otherwise import this
    # checkout's package, so `--rev OLD` ran today's code with OLD's params.
    path = os.pathsep.join(filter(None, [str(cwd), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1", "PYTHONPATH": path}
    marks: list[tuple[str, float]] = []
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            m = STAGE_LINE.match(line.strip())
            if m:
                marks.append((m[1], time.perf_counter()))
                print(f"[{marks[-1][1] - start:7.1f} s] {m[1]}", flush=True)
        rc = proc.wait()
    end = time.perf_counter()
    stages = [(name, (marks[i + 1][1] if i + 1 < len(marks) else end) - t) for i, (name, t) in enumerate(marks)]
    return stages, end - start, rc


def table(stages: list[tuple[str, float]], total: float) -> str:
    width = max([len("stage")] + [len(s) for s, _ in stages])
    rows = [f"| {'stage':<{width}} | seconds | share |", f"|{'-' * (width + 2)}|--------:|------:|"]
    rows += [f"| {s:<{width}} | {t:7.1f} | {t / total:5.1%} |" for s, t in stages]
    other = total - sum(t for _, t in stages)     # dvc reading dvc.yaml/lock and hashing deps before stage one
    rows.append(f"| {'(dvc start)':<{width}} | {other:7.1f} | {other / total:5.1%} |")
    rows.append(f"| {'total':<{width}} | {total:7.1f} | 100.0% |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD", help="commit to run (default HEAD)")
    ap.add_argument("--target", default=None, help="one stage and its upstream (default: the whole pipeline)")
    ap.add_argument("--json", type=Path, default=None, help="write the table as JSON here too")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone (its path is printed)")
    args = ap.parse_args()
    if shutil.which("dvc") is None:
        sys.exit("error: dvc is not on PATH; allowed: run from the project's venv (. .venv/bin/activate)")
    tmp = Path(tempfile.mkdtemp(prefix="peftlab-pipeline-"))
    try:
        work = tmp / "repo"
        clone(args.rev, work)
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=work, capture_output=True,
                             text=True).stdout.strip()
        print(f"dvc repro -f {args.target or ''} at {rev} in {work} ({os.cpu_count()} CPUs)", flush=True)
        stages, total, rc = timed_repro(work, args.target, tmp / "repro.log")
        if rc != 0:
            tail = (tmp / "repro.log").read_text().strip().splitlines()[-5:]
            sys.exit("error: dvc repro failed (exit %d); last lines:\n%s" % (rc, "\n".join(tail)))
        print(table(stages, total))
        if args.json:
            args.json.write_text(json.dumps({"rev": rev, "target": args.target, "cpus": os.cpu_count(),
                                             "total_s": round(total, 1),
                                             "stages": [{"stage": s, "seconds": round(t, 1)} for s, t in stages]},
                                            indent=2) + "\n")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
