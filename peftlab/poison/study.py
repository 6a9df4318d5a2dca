"""The poisoning study's grid as `poison.attacks` settings: counts x training sizes x seeds, in one regime.

    dvc repro study/dvc.yaml                              # the full study: study/params.yaml's grid
    python -m peftlab.poison.study --sync study/params.yaml   # after editing that grid: rewrite its `attacks`
    python -m peftlab.poison.study --run main --regime epochs --counts 0,25,50 --sizes 1000,4000 --seeds 1,2,3
    python -m peftlab.poison.study --recipes all --counts 20 --sizes 2000 --seeds 1,2,3    # the recipe table

The study is its own pipeline (study/dvc.yaml): every setting of its grid is one stage writing under data/study,
metrics/study and models/adapters/study, recorded in study/dvc.lock as it finishes, so a stopped study resumes
where it stopped and a grown grid runs only its new settings; its report stage writes reports/poison_study.md
from whatever has run. The printing form (one YAML flow mapping) is for a quick look through the default
pipeline: `dvc exp run -S '~poison.attacks' -S "+poison.attacks=$(...)"`.

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
import dataclasses
import math
from pathlib import Path

import yaml

from peftlab.config.params import Params, read_params_file
from peftlab.core import paths
from peftlab.core.errors import PeftlabError

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
        "lr3e-3": {"train": {"lr": 3.0e-3}},               # 3x it: larger steps on the few poisoned rows
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


def chosen_recipes(names: str | list[str] | None, attention: str = ATTENTION, embeddings: str = EMBEDDINGS,
                   key: str = "--recipes") -> dict[str, dict] | None:
    """`all`, a list or a comma-separated string of recipe names -> their specs (None: no recipes)."""
    if not names:
        return None
    table = recipes(attention, embeddings)
    names = list(table) if names == "all" else names.split(",") if isinstance(names, str) else list(names)
    bad = [n for n in names if n not in table]
    if bad:
        raise PeftlabError(f"{key} has {bad[0]!r}; allowed: {', '.join(table)} or all")
    return {n: table[n] for n in names}


BLOCK_KEYS = ("run", "regime", "counts", "sizes", "seeds", "attack", "test_rows", "recipes", "attention", "embeddings")


def expand(blocks: list[dict], batch_size: int, where: str = str(paths.STUDY_PARAMS)) -> dict[str, dict]:
    """The study file's `grid` blocks (one family, regime or recipe set each: the chunks a session runs) ->
    poison.attacks, in the blocks' order, so `dvc repro` runs the first block's settings first."""
    attacks: dict[str, dict] = {}
    for i, b in enumerate(blocks):
        key = f"{where}: grid[{i}]"
        if not isinstance(b, dict) or sorted(set(b) - set(BLOCK_KEYS)):
            raise PeftlabError(f"{key} = {b!r} is invalid; allowed: a mapping of {', '.join(BLOCK_KEYS)}")
        missing = [k for k in ("counts", "sizes", "seeds") if not b.get(k)]
        if missing:
            raise PeftlabError(f"{key}.{missing[0]} is missing; allowed: a non-empty list of integers")
        chosen = chosen_recipes(b.get("recipes"), b.get("attention", ATTENTION), b.get("embeddings", EMBEDDINGS),
                                f"{key}.recipes")
        try:
            grid = study_grid(b.get("run", "main"), b.get("regime", "epochs"), list(b["counts"]), list(b["sizes"]),
                              list(b["seeds"]), batch_size, b.get("attack", "badnets"), b.get("test_rows"), chosen)
        except ValueError as e:
            raise PeftlabError(f"{key}: {e}") from None
        again = sorted(set(grid) & set(attacks))
        if again:
            raise PeftlabError(f"{key} repeats setting {again[0]!r} of an earlier block; allowed: each setting once")
        attacks.update(grid)
    return attacks


def study_params(params: Params, path: str | Path = paths.STUDY_PARAMS) -> Params:
    """The default's params with poison.attacks replaced by the study's settings and no count sweep. The file's
    `attacks` (what DVC's foreach reads) must be its `grid` expanded, or a grid edit would run stale settings."""
    raw = read_params_file(path)
    attacks = raw.get("attacks") or {}
    if attacks != expand(raw.get("grid") or [], params.poison.batch_size, str(path)):
        raise PeftlabError(f"{path}: attacks is not the expansion of grid; allowed: the output of "
                           f"`python -m peftlab.poison.study --sync {path}`")
    return dataclasses.replace(params, poison=dataclasses.replace(params.poison, attacks=attacks, counts=[], sizes=[]))


def sync(path: str | Path, batch_size: int) -> int:
    """Rewrite the study file's `attacks:` section from its `grid` (everything above `attacks:` is kept, comments
    included), one setting per line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    head = text.split("\nattacks:", 1)[0].rstrip("\n") + "\n"
    attacks = expand(read_params_file(path).get("grid") or [], batch_size, str(path))
    flow = lambda v: yaml.safe_dump(v, default_flow_style=True, width=float("inf"), sort_keys=False).strip()  # noqa: E731
    body = "".join(f"  {name}: {flow(spec)}\n" for name, spec in attacks.items())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(head + "attacks:                 # generated from grid by --sync: do not edit\n" + body)
    tmp.replace(path)
    return len(attacks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]   # noqa: E731
    ap.add_argument("--run", default="main", help="main or a sweep key (the attacked run)")
    ap.add_argument("--regime", default="epochs", choices=REGIMES)
    ap.add_argument("--counts", type=ints)
    ap.add_argument("--sizes", type=ints)
    ap.add_argument("--seeds", type=ints)
    ap.add_argument("--batch-size", type=int, default=8, help="poison.batch_size (for the steps regime)")
    ap.add_argument("--attack", default="badnets")
    ap.add_argument("--test-rows", type=int, default=None, help="a stratified test subset (decoders)")
    ap.add_argument("--recipes", default=None, help=f"comma-separated names or 'all' (the recipe table): "
                                                     f"{', '.join(recipes())}")
    ap.add_argument("--attention", default=ATTENTION, help="the attention-only recipe's target modules")
    ap.add_argument("--embeddings", default=EMBEDDINGS, help="the embeddings recipe's modules_to_save")
    ap.add_argument("--sync", metavar="FILE", help=f"rewrite FILE's attacks from its grid (the study: "
                                                   f"{paths.STUDY_PARAMS}; then `dvc repro study/dvc.yaml`)")
    args = ap.parse_args()
    if args.sync:
        print(f"{args.sync}: {sync(args.sync, args.batch_size)} settings")
        return
    if not (args.counts and args.sizes and args.seeds):
        ap.error("--counts, --sizes and --seeds are required (or --sync FILE)")
    try:
        chosen = chosen_recipes(args.recipes, args.attention, args.embeddings)
    except PeftlabError as e:
        ap.error(str(e))
    grid = study_grid(args.run, args.regime, args.counts, args.sizes, args.seeds, args.batch_size, args.attack,
                      args.test_rows, chosen)
    # one line of flow YAML: what `dvc exp run -S key=value` parses
    print(yaml.safe_dump(grid, default_flow_style=True, width=float("inf"), sort_keys=False).strip())


if __name__ == "__main__":
    main()
