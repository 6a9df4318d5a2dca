"""evaluate: score the test split with a trained adapter; metrics, plots, predictions, csv/tex table."""
import argparse

from peftlab.config.params import apply_sweep, load_params
from peftlab.core.errors import run_cli
from peftlab.core.paths import EvalPaths
from peftlab.evaluate.run import run_evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", default="main", help="run name: main, or a key of sweep")
    args = ap.parse_args()
    params = load_params(["seed", "model", "evaluate", "sweep"])
    run_evaluate(apply_sweep(params, args.run), EvalPaths.for_run(args.run), name=args.run)


if __name__ == "__main__":
    run_cli(main)
