"""A local results dashboard: `python -m peftlab.dashboard [--port N] [--repo PATH]`.

It runs the Streamlit app in app.py on 127.0.0.1 (nothing is exposed beyond this machine unless --address
says so), headless and with Streamlit's usage statistics off. It reads the repo's results live and needs no
service beyond itself. The launcher imports nothing heavy, so a bad argument fails at once.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

APP = Path(__file__).with_name("app.py")


def streamlit_argv(repo: Path, port: int, address: str = "127.0.0.1") -> list[str]:
    """The `streamlit run` command line; the app reads `--repo` after the `--`."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", address, "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "minimal", "--", "--repo", str(repo)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m peftlab.dashboard",
                                 description="Serve the peftlab results dashboard (Streamlit) on this machine.")
    ap.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    ap.add_argument("--repo", default=".", help="the peftlab repo whose results to show (default: .)")
    ap.add_argument("--address", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1: this machine only)")
    args = ap.parse_args(argv)
    repo = Path(args.repo).resolve()
    if not (1 <= args.port <= 65535):
        print(f"error: --port {args.port} is invalid; allowed: 1-65535", file=sys.stderr)
        return 2
    if not repo.is_dir():
        print(f"error: --repo {args.repo} is not a directory; allowed: the path of a peftlab repo",
              file=sys.stderr)
        return 2
    cmd = streamlit_argv(repo, args.port, args.address)
    print(f"peftlab dashboard for {repo}: http://{args.address}:{args.port}", flush=True)
    os.execv(cmd[0], cmd)  # replace this process: signals (Ctrl-C, terminate) reach Streamlit directly
    return 0  # not reached
