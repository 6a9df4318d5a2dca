"""train: LoRA-tune models/base/<model.name> on data/splits; writes models/adapters/<run>/ and its summary."""
import argparse

from peftlab.errors import run_cli
from peftlab.params import load_params
from peftlab.train import RunPaths, run_train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", default="main", help="run name (adapter folder and metrics file)")
    args = ap.parse_args()
    run_train(load_params(["seed", "model", "lora", "train"]), RunPaths.for_run(args.run))


if __name__ == "__main__":
    run_cli(main)
