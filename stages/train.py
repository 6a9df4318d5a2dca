"""train: LoRA-tune models/base/<model.name> on data/splits; writes models/adapters/<run>/ and its summary.

    python stages/train.py                    the main run (model, lora, train, prompt sections)
    python stages/train.py --run <name>       a sweep run: sweep.<name> overrides those sections
    accelerate launch --num_processes 2 stages/train.py     data-parallel (CPU gloo, or GPUs)
"""
import argparse

from peftlab.config.params import apply_sweep, load_params
from peftlab.core.errors import run_cli
from peftlab.core.paths import RunPaths
from peftlab.train.run import run_train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="main", help="run name: main, or a key of sweep")
    args = ap.parse_args()
    params = load_params(["seed", "model", "lora", "train", "prompt", "sweep"])
    run_train(apply_sweep(params, args.run), RunPaths.for_run(args.run))


if __name__ == "__main__":
    run_cli(main)
