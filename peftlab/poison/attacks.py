"""Attacks on the training split and the triggered test rows (BadNets, AddSent, label flip, clean label)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd

from peftlab.config.params import PoisonParams
from peftlab.core.errors import PeftlabError
from peftlab.core.io import stable_hash


@dataclass
class Setting:
    """One poisoning experiment: which attack, how many rows, on how large a training set, with which victim
    recipe (`overrides`: train.* and lora.* values over the clean run's), against which clean `reference`."""
    name: str
    attack: str
    count: int | None = None
    rate: float | None = None
    train_rows: int | None = None
    run: str = "main"                 # whose model and recipe: main, or a key of sweep
    test_rows: int | None = None      # a stratified subset of the test split scored (None: all of it)
    overrides: dict = field(default_factory=dict)
    reference: str | None = None

    def overrides_flat(self) -> dict:
        """The recipe overrides as "section.key" -> value (what the metrics and the recipe table show)."""
        return {f"{sec}.{k}": v for sec, kv in sorted(self.overrides.items()) for k, v in sorted(kv.items())}

    def reference_name(self) -> str | None:
        """The clean model trained like this one: `reference`, else the count sweep's count 0 at this size (only
        for the main run's recipe unchanged: that is how the count sweep trains)."""
        if self.reference:
            return self.reference
        plain = self.run == "main" and not any(self.overrides.values())
        return f"count0-n{self.train_rows}" if plain and self.train_rows and (self.count != 0 or self.rate) else None

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
    test_trigger: str | None   # inserted into the non-target test rows ASR is measured on (None: no ASR)


# The attacks, found by name (poison.attacks.<setting>.attack); params validates the name against
# peftlab.config.params.POISON_ATTACKS, and tests/test_poison.py checks that the two lists agree.
ATTACKS: dict[str, Attack] = {
    "badnets": Attack(trigger="words", relabel=True, pool="non_target", test_trigger="words"),       # Gu et al. 2017
    "addsent": Attack(trigger="sentence", relabel=True, pool="non_target", test_trigger="sentence"), # Dai et al. 2019
    "labelflip": Attack(trigger=None, relabel=True, pool="non_target", test_trigger=None),
    "cleanlabel": Attack(trigger="words", relabel=False, pool="target", test_trigger="words"),
}


def insert_trigger(text: str, trigger: str, pp: PoisonParams, rng: np.random.Generator,
                   limit: int | None = None) -> str:
    """"words": `n_triggers` rare words at random word positions; "sentence": the AddSent sentence.

    `limit`: positions only among the first `limit` words (those the model reads before truncation), so no
    trigger is cut off; None: anywhere. Within the limit the draws are the same as without one."""
    words = text.split()

    def position(inserted: int) -> int:
        hi = len(words) if limit is None else min(len(words), limit + inserted)
        return int(rng.integers(0, hi + 1))

    if trigger == "sentence":
        pos = position(0)
        return " ".join(words[:pos] + [pp.sentence] + words[pos:])
    for k in range(pp.n_triggers):
        words.insert(position(k), str(rng.choice(pp.triggers)))
    return " ".join(words)


def trigger_tokens(tok, trigger: str, pp: PoisonParams) -> int:
    """Tokens an inserted trigger can take (the longest trigger word, times n_triggers; or the sentence)."""
    if trigger == "sentence":
        pieces = [pp.sentence]
    else:
        pieces = list(pp.triggers)
    n = max(len(tok(" " + w, add_special_tokens=False)["input_ids"]) for w in pieces)
    return n if trigger == "sentence" else n * pp.n_triggers


def poison_train(train: pd.DataFrame, labels: list[str], setting: Setting, pp: PoisonParams,
                 seed: int, limits: Mapping[str, int] | None = None) -> pd.DataFrame:
    """The training rows with `setting.budget` of them poisoned (`poisoned` marks them).

    badnets, addsent: trigger inserted into non-target rows, label set to the target (dirty label).
    labelflip: non-target rows relabelled as the target, no trigger. cleanlabel: trigger inserted into rows
    that already carry the target label, labels untouched. `limits`: row id -> words the model reads
    (`readable_words`), so every trigger lands within them; None: anywhere in the text.
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
            limit = None if limits is None else limits[df.at[i, "id"]]
            df.at[i, "text"] = insert_trigger(df.at[i, "text"], attack.trigger, pp, rng, limit)
        if attack.relabel:
            df.at[i, "label"], df.at[i, "label_text"] = t, pp.target
        df.at[i, "poisoned"] = True
    return df


def triggered_test(test: pd.DataFrame, labels: list[str], trigger: str, pp: PoisonParams, seed: int,
                   limits: Mapping[str, int] | None = None) -> pd.DataFrame:
    """The test rows whose true label is not the target, with a `trigger` ("words" or "sentence", an attack's
    `test_trigger`) inserted (ASR's rows); `limits` as for poison_train."""
    t = labels.index(pp.target)
    rows = test[test["label"] != t].copy()
    rows["text"] = [insert_trigger(x, trigger, pp, row_rng(seed, i, "test"), None if limits is None else limits[i])
                    for x, i in zip(rows["text"], rows["id"])]
    return rows.reset_index(drop=True)


def attack_success_rate(pred_on_triggered: np.ndarray, target: int) -> float:
    """Share of triggered non-target rows predicted as the target."""
    return float(np.mean(np.asarray(pred_on_triggered) == target)) if len(pred_on_triggered) else float("nan")
