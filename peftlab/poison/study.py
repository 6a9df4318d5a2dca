"""The poisoning study's grid as `poison.attacks` settings: counts x training sizes x seeds, in one regime.

    python -m peftlab.poison.study --run main --regime epochs --counts 0,10,25,50,100,250 \
        --sizes 1000,4000,10000 --seeds 1,2,3
    python -m peftlab.poison.study --recipes all --counts 20 --sizes 2000 --seeds 1,2,3    # the recipe table

prints one YAML flow mapping (setting name -> spec) for `dvc exp run -S '~poison.attacks' -S
"+poison.attacks=$(...)"`, which replaces the default's settings by the grid. Every setting is its own item of
the `poison` foreach stage: dvc.lock records each one as it finishes, so a study run in the workspace resumes
where it stopped (persistent outputs skip DVC's run cache, so a `--temp` run that is stopped keeps nothing).

- Seeds are replicates: `train: {seed: s}` changes the init, dropout and batch order; the rows poisoned and the
  training subsets stay those of the top-level seed, so the smaller sizes are nested in the larger ones.
- Each count > 0 names the count-0 setting of its size, regime and seed as its clean reference (trained the
  same way), so `poison_report` pairs them row by row and pools the seeds (CMH, Holm: peftlab.poison.summary).
- Recipes (`--recipes`): which victim recipes a small backdoor survives. Each named recipe of `recipes()` changes one
  thing the victim chooses without knowing the trigger (epochs, learning rate, rank, target modules, embeddings
  trained or frozen); its count-0 reference is trained with the same recipe.
- Regimes: `epochs` trains every size for `poison.epochs` (as a user would; `train.min_steps` off); `steps`
  trains every size for the optimiser steps of one epoch of the largest size (`train.max_steps`), so the number
  of updates is equal and count is not confounded with steps.
"""
from __future__ import annotations

import argparse
import copy
import math

import yaml

REGIMES = ("epochs", "steps")

# Victim recipes, each one change from the attacked run's recipe (the poison section's batch and epochs on top):
# name -> {"train": {...}, "lora": {...}}. ATTENTION and EMBEDDINGS are MiniLM's module names (--attention and
# --embeddings give a decoder's: q_proj,k_proj,v_proj,o_proj and embed_tokens).
ATTENTION, EMBEDDINGS = "query,key,value", "word_embeddings"


def recipes(attention: str = ATTENTION, embeddings: str = EMBEDDINGS) -> dict[str, dict]:
    return {
        "base": {},
        "epochs3": {"train": {"epochs": 3}},               # three passes over the poisoned rows instead of one
        "lr1e-4": {"train": {"lr": 1.0e-4}},               # a tenth of the default learning rate
        "r32": {"lora": {"r": 32, "alpha": 64}},           # 4x the rank, alpha/r kept at 2
        "attention": {"lora": {"target_modules": attention.split(",")}},   # attention only, no FFN / output
        "embeddings": {"lora": {"modules_to_save": embeddings.split(",")}},  # the word embeddings trained in full
        # the two that give a rare trigger word the most room, together: its own embedding row, three passes
        "embeddings-epochs3": {"train": {"epochs": 3}, "lora": {"modules_to_save": embeddings.split(",")}},
    }


def setting_name(run: str, regime: str, count: int, size: int, seed: int, recipe: str | None = None) -> str:
    return f"{run}-{regime}{'-' + recipe if recipe else ''}-c{count}-n{size}-s{seed}"


def study_grid(run: str, regime: str, counts: list[int], sizes: list[int], seeds: list[int], batch_size: int,
               attack: str = "badnets", test_rows: int | None = None,
               victim_recipes: dict[str, dict] | None = None) -> dict[str, dict]:
    """Setting name -> poison.attacks spec for every (recipe, count, size, seed); the count-0 settings are the
    clean references (one per recipe) and are always included. No `victim_recipes`: the run's own recipe only,
    and the names carry no recipe."""
    if regime not in REGIMES:
        raise ValueError(f"regime = {regime!r} is invalid; allowed: {' | '.join(REGIMES)}")
    steps = math.ceil(max(sizes) / batch_size)          # one epoch of the largest size
    grid: dict[str, dict] = {}
    for tag, rec in (victim_recipes or {None: {}}).items():
        for size in sizes:
            for seed in seeds:
                for count in sorted(set(counts) | {0}):
                    # min_steps 0: train.min_steps would raise a small size's epochs, mixing the two regimes
                    train: dict = {"seed": seed, "min_steps": 0, **copy.deepcopy(rec.get("train", {}))}
                    if regime == "steps":
                        train["max_steps"] = steps
                    spec: dict = {"attack": attack, "count": count, "train_rows": size, "run": run, "train": train}
                    if rec.get("lora"):
                        spec["lora"] = copy.deepcopy(rec["lora"])   # shared lists would print as YAML aliases
                    if test_rows:
                        spec["test_rows"] = test_rows
                    if count:
                        spec["reference"] = setting_name(run, regime, 0, size, seed, tag)
                    grid[setting_name(run, regime, count, size, seed, tag)] = spec
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
    ap.add_argument("--recipes", default=None, help=f"comma-separated names or 'all' (the recipe table): "
                                                     f"{', '.join(recipes())}")
    ap.add_argument("--attention", default=ATTENTION, help="the attention-only recipe's target modules")
    ap.add_argument("--embeddings", default=EMBEDDINGS, help="the embeddings recipe's modules_to_save")
    args = ap.parse_args()
    table = recipes(args.attention, args.embeddings)
    chosen = None
    if args.recipes:
        names = list(table) if args.recipes == "all" else args.recipes.split(",")
        bad = [n for n in names if n not in table]
        if bad:
            ap.error(f"--recipes has {bad[0]!r}; allowed: {', '.join(table)} or all")
        chosen = {n: table[n] for n in names}
    grid = study_grid(args.run, args.regime, args.counts, args.sizes, args.seeds, args.batch_size, args.attack,
                      args.test_rows, chosen)
    # one line of flow YAML: what `dvc exp run -S key=value` parses
    print(yaml.safe_dump(grid, default_flow_style=True, width=float("inf"), sort_keys=False).strip())


if __name__ == "__main__":
    main()
