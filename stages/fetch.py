"""fetch: put one dataset (`data`) or one model (`model <key>`) on disk, from the catalog or an inline spec.

    python stages/fetch.py data            -> data/raw/{data.parquet,manifest.json}
    python stages/fetch.py model <key>     -> models/base/<key>/
"""
import argparse

from peftlab.config.params import load_params
from peftlab.core import paths
from peftlab.core.errors import run_cli
from peftlab.data.fetch import fetch_data, fetch_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["data", "model"])
    ap.add_argument("key", nargs="?", help="with `model`: a key of `models` in params.yaml")
    args = ap.parse_args()
    if args.what == "data":
        fetch_data(load_params(["seed", "data", "split"]), paths.RAW)   # split: DuckDB's memory limit, threads
    else:
        if not args.key:
            ap.error("`model` needs a key of `models` in params.yaml")
        fetch_model(load_params(["models"]), args.key, paths.base_model(args.key))


if __name__ == "__main__":
    run_cli(main)
