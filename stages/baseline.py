"""baseline: zero-shot, majority/random and classical baselines on the test split (metrics/baseline.json)."""
from peftlab.baseline import run_baseline
from peftlab.errors import run_cli
from peftlab.params import load_params


def main() -> None:
    run_baseline(load_params(["seed", "baseline", "evaluate"]))


if __name__ == "__main__":
    run_cli(main)
