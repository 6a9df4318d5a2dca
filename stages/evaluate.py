"""evaluate: score the test split with a trained adapter; metrics, plots, predictions, csv/tex table."""
import argparse

from peftlab.errors import run_cli
from peftlab.evaluate import EvalPaths, run_evaluate
from peftlab.params import load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", default="main", help="run name (adapter folder and output names)")
    args = ap.parse_args()
    run_evaluate(load_params(["seed", "model", "evaluate"]), EvalPaths.for_run(args.run), name=args.run)


if __name__ == "__main__":
    run_cli(main)
