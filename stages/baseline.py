"""baseline: zero-shot, majority/random and classical baselines on the test split (metrics/baseline.json)."""
from peftlab.config.params import load_params
from peftlab.core.errors import run_cli
from peftlab.evaluate.baseline import run_baseline


def main() -> None:
    run_baseline(load_params(["seed", "baseline", "evaluate"]))


if __name__ == "__main__":
    run_cli(main)
