"""The poisoning study's grid as `poison.attacks` settings: counts x training sizes x seeds, in one regime.

    python -m peftlab.poison.study --run main --regime epochs --counts 0,10,25,50,100,250 \
        --sizes 1000,4000,10000 --seeds 1,2,3

prints one YAML flow mapping (setting name -> spec) for `dvc exp run -S '~poison.attacks' -S
"+poison.attacks=$(...)"`, which replaces the default's settings by the grid. Every setting is its own item of
the `poison` foreach stage, so DVC caches each one (its run cache restores a setting already trained with the
same code, data and params) and a stopped study resumes where it stopped.

- Seeds are replicates: `train: {seed: s}` changes the init, dropout and batch order; the rows poisoned and the
  training subsets stay those of the top-level seed, so the smaller sizes are nested in the larger ones.
- Each count > 0 names the count-0 setting of its size, regime and seed as its clean reference (trained the
  same way), so `poison_report` pairs them row by row and pools the seeds (CMH, Holm: peftlab.poison.summary).
- Regimes: `epochs` trains every size for `poison.epochs` (as a user would; `train.min_steps` off); `steps`
  trains every size for the optimiser steps of one epoch of the largest size (`train.max_steps`), so the number
  of updates is equal and count is not confounded with steps.
"""
from __future__ import annotations

import argparse
import math

import yaml

REGIMES = ("epochs", "steps")


def setting_name(run: str, regime: str, count: int, size: int, seed: int) -> str:
    return f"{run}-{regime}-c{count}-n{size}-s{seed}"


def study_grid(run: str, regime: str, counts: list[int], sizes: list[int], seeds: list[int], batch_size: int,
               attack: str = "badnets", test_rows: int | None = None) -> dict[str, dict]:
    """Setting name -> poison.attacks spec for every (count, size, seed); the count-0 settings are the clean
    references and are always included."""
    if regime not in REGIMES:
        raise ValueError(f"regime = {regime!r} is invalid; allowed: {' | '.join(REGIMES)}")
    steps = math.ceil(max(sizes) / batch_size)          # one epoch of the largest size
    grid: dict[str, dict] = {}
    for size in sizes:
        for seed in seeds:
            for count in sorted(set(counts) | {0}):
                # min_steps 0: train.min_steps would raise a small size's epochs, mixing the two regimes
                train: dict = {"seed": seed, "min_steps": 0}
                if regime == "steps":
                    train["max_steps"] = steps
                spec: dict = {"attack": attack, "count": count, "train_rows": size, "run": run, "train": train}
                if test_rows:
                    spec["test_rows"] = test_rows
                if count:
                    spec["reference"] = setting_name(run, regime, 0, size, seed)
                grid[setting_name(run, regime, count, size, seed)] = spec
    return grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]   # noqa: E731
    ap.add_argument("--run", default="main", help="main or a sweep key (the attacked run)")
    ap.add_argument("--regime", default="epochs", choices=REGIMES)
    ap.add_argument("--counts", type=ints, required=True)
    ap.add_argument("--sizes", type=ints, required=True)
    ap.add_argument("--seeds", type=ints, required=True)
    ap.add_argument("--batch-size", type=int, default=8, help="poison.batch_size (for the steps regime)")
    ap.add_argument("--attack", default="badnets")
    ap.add_argument("--test-rows", type=int, default=None, help="a stratified test subset (decoders)")
    args = ap.parse_args()
    grid = study_grid(args.run, args.regime, args.counts, args.sizes, args.seeds, args.batch_size, args.attack,
                      args.test_rows)
    # one line of flow YAML: what `dvc exp run -S key=value` parses
    print(yaml.safe_dump(grid, default_flow_style=True, width=float("inf"), sort_keys=False).strip())


if __name__ == "__main__":
    main()
