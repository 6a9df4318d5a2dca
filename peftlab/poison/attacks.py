"""Attacks on the training split and the triggered test rows (BadNets, AddSent, label flip, clean label)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from peftlab.config.params import PoisonParams
from peftlab.core.errors import PeftlabError
from peftlab.core.io import stable_hash


@dataclass
class Setting:
    """One poisoning experiment: which attack, how many rows, on how large a training set."""
    name: str
    attack: str
    count: int | None = None
    rate: float | None = None
    train_rows: int | None = None

    def budget(self, n_rows: int) -> int:
        return int(self.count) if self.count is not None else int(round(float(self.rate) * n_rows))


def setting_from_params(pp: PoisonParams, name: str) -> Setting:
    return Setting(name=name, **pp.setting(name))


def count_setting(pp: PoisonParams, count: int, size: int) -> Setting:
    """An item of the count sweep (dvc.yaml matrix over poison.counts x poison.sizes)."""
    return Setting(name=f"count{count}-n{size}", attack=pp.count_attack, count=count, train_rows=size)


def sweep_settings(pp: PoisonParams) -> list[Setting]:
    """Every item of the count sweep, by size then count (the order of the plot's lines and points)."""
    return [count_setting(pp, c, n) for n in pp.sizes for c in pp.counts]


def resolve_setting(pp: PoisonParams, name: str) -> Setting:
    """A key of poison.attacks, or a count-sweep item named count<C>-n<SIZE>."""
    if name in pp.attacks:
        return setting_from_params(pp, name)
    sweep = {s.name: s for s in sweep_settings(pp)}
    if name in sweep:
        return sweep[name]
    raise PeftlabError(f"params.yaml: poison.defend = {name!r} is invalid; allowed: "
                       f"{', '.join([*pp.attacks, *sweep])}")


def row_rng(seed: int, row_id: str, salt: str) -> np.random.Generator:
    """A generator per row, so a row's trigger depends on the seed and the row only, not on row order."""
    return np.random.default_rng([seed, int(stable_hash(salt, row_id), 16)])


@dataclass(frozen=True)
class Attack:
    """What an attack does to a poisoned training row, and what its triggered test rows carry."""
    trigger: str | None   # inserted into poisoned training texts: "words" (rare words), "sentence", or None
    relabel: bool         # poisoned rows get the target label (dirty label) or keep theirs (clean label)
    pool: str             # rows eligible for poisoning: "non_target" or "target"
    test_trigger: str     # inserted into the non-target test rows that ASR is measured on


# The attacks, found by name (poison.attacks.<setting>.attack); params validates the name against
# peftlab.config.params.POISON_ATTACKS, and tests/test_poison.py checks that the two lists agree.
ATTACKS: dict[str, Attack] = {
    "badnets": Attack(trigger="words", relabel=True, pool="non_target", test_trigger="words"),       # Gu et al. 2017
    "addsent": Attack(trigger="sentence", relabel=True, pool="non_target", test_trigger="sentence"), # Dai et al. 2019
    "labelflip": Attack(trigger=None, relabel=True, pool="non_target", test_trigger="words"),
    "cleanlabel": Attack(trigger="words", relabel=False, pool="target", test_trigger="words"),
}


def insert_trigger(text: str, trigger: str, pp: PoisonParams, rng: np.random.Generator) -> str:
    """"words": `n_triggers` rare words at random word positions; "sentence": the AddSent sentence."""
    words = text.split()
    if trigger == "sentence":
        pos = int(rng.integers(0, len(words) + 1))
        return " ".join(words[:pos] + [pp.sentence] + words[pos:])
    for _ in range(pp.n_triggers):
        pos = int(rng.integers(0, len(words) + 1))
        words.insert(pos, str(rng.choice(pp.triggers)))
    return " ".join(words)


def poison_train(train: pd.DataFrame, labels: list[str], setting: Setting, pp: PoisonParams,
                 seed: int) -> pd.DataFrame:
    """The training rows with `setting.budget` of them poisoned (`poisoned` marks them).

    badnets, addsent: trigger inserted into non-target rows, label set to the target (dirty label).
    labelflip: non-target rows relabelled as the target, no trigger. cleanlabel: trigger inserted into rows
    that already carry the target label, labels untouched.
    """
    if pp.target not in labels:
        raise PeftlabError(f"params.yaml: poison.target = {pp.target!r} is invalid; allowed: {', '.join(labels)}")
    t = labels.index(pp.target)
    df = train.copy().reset_index(drop=True)
    df["poisoned"] = False
    attack = ATTACKS[setting.attack]
    pool = df[df["label"] == t] if attack.pool == "target" else df[df["label"] != t]
    n = setting.budget(len(df))
    if n > len(pool):
        raise PeftlabError(f"poison setting {setting.name!r}: {n} poisoned rows asked for, but only {len(pool)} "
                           f"training rows are eligible; allowed: a count <= {len(pool)}")
    chosen = pool.sort_values("id").sample(n=n, random_state=seed).index if n else []
    for i in chosen:
        if attack.trigger:
            rng = row_rng(seed, df.at[i, "id"], "train")
            df.at[i, "text"] = insert_trigger(df.at[i, "text"], attack.trigger, pp, rng)
        if attack.relabel:
            df.at[i, "label"], df.at[i, "label_text"] = t, pp.target
        df.at[i, "poisoned"] = True
    return df


def triggered_test(test: pd.DataFrame, labels: list[str], attack: str, pp: PoisonParams, seed: int) -> pd.DataFrame:
    """The test rows whose true label is not the target, with the attack's trigger inserted (ASR's rows)."""
    t = labels.index(pp.target)
    rows = test[test["label"] != t].copy()
    trigger = ATTACKS[attack].test_trigger
    rows["text"] = [insert_trigger(x, trigger, pp, row_rng(seed, i, "test")) for x, i in zip(rows["text"], rows["id"])]
    return rows.reset_index(drop=True)


def attack_success_rate(pred_on_triggered: np.ndarray, target: int) -> float:
    """Share of triggered non-target rows predicted as the target."""
    return float(np.mean(np.asarray(pred_on_triggered) == target)) if len(pred_on_triggered) else float("nan")
