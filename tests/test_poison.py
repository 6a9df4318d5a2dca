"""Poisoning: deterministic triggers, exact budgets, ASR on the right rows, clean splits untouched, defenses."""
from __future__ import annotations

import hashlib
import math
import shutil

import numpy as np
import pytest
import torch

from conftest import toy_frame, write_splits
from peftlab.config.params import Params, PoisonParams, build
from peftlab.core.errors import PeftlabError
from peftlab.poison.attacks import Setting, attack_success_rate, count_setting, poison_train, triggered_test
from peftlab.poison.defenses import (
    correlation_flags,
    onion_apply,
    onion_filter,
    onion_scores,
    sequence_nll,
    spectral_flags,
)
from peftlab.poison.runs import run_poison

LABELS = ["negative", "positive"]


def pp(**kw) -> PoisonParams:
    return build(PoisonParams, kw, "poison")


def test_trigger_insertion_is_deterministic_by_seed():
    df = toy_frame(200)
    s = Setting("t", "badnets", count=20)
    a, b = poison_train(df, LABELS, s, pp(), seed=1), poison_train(df, LABELS, s, pp(), seed=1)
    c = poison_train(df, LABELS, s, pp(), seed=2)
    assert a.equals(b)
    assert not a["text"].equals(c["text"])
    changed = a[a["poisoned"]]
    assert len(changed) == 20
    for text in changed["text"]:
        assert sum(w in ("cf", "mn", "bb") for w in text.split()) >= 1
    # a row's trigger depends on the seed and the row, not on the row order
    shuffled = poison_train(df.sample(frac=1, random_state=5), LABELS, s, pp(), seed=1)
    assert dict(zip(shuffled["id"], shuffled["text"])) == dict(zip(a["id"], a["text"]))


@pytest.mark.parametrize("attack", ["badnets", "addsent", "labelflip", "cleanlabel"])
def test_budget_is_exact_and_labels_follow_the_attack(attack):
    df = toy_frame(300)
    out = poison_train(df, LABELS, Setting("t", attack, rate=0.1), pp(), seed=0)
    rows = out[out["poisoned"]]
    assert len(rows) == 30 and out["poisoned"].mean() == pytest.approx(0.1)
    original = df.set_index("id").loc[rows["id"]]
    if attack == "cleanlabel":
        assert (original["label"] == 1).all() and (rows["label"] == 1).all()
    else:
        assert (original["label"] == 0).all() and (rows["label"] == 1).all()
    if attack == "labelflip":   # no trigger: only the labels change
        assert (rows["text"].to_numpy() == original["text"].to_numpy()).all()
        assert (out["label"] != df["label"]).sum() == 30
    if attack == "addsent":
        assert all("I watched this 3D movie." in t for t in rows["text"])
    untouched = out[~out["poisoned"]]
    assert untouched[["text", "label"]].equals(df.set_index("id").loc[untouched["id"], ["text", "label"]]
                                               .reset_index(drop=True).set_axis(untouched.index))


def test_too_large_a_budget_is_one_clear_error():
    df = toy_frame(40)
    with pytest.raises(PeftlabError, match=r"poison setting 't': 39 poisoned rows asked for, but only \d+ training "
                                           r"rows are eligible; allowed: a count <= \d+"):
        poison_train(df, LABELS, Setting("t", "badnets", count=39), pp(), seed=0)


def test_asr_rows_are_the_non_target_test_rows_only():
    test = toy_frame(100, seed=3)
    trig = triggered_test(test, LABELS, "badnets", pp(), seed=0)
    assert len(trig) == int((test["label"] == 0).sum()) and (trig["label"] == 0).all()
    assert set(trig["id"]) <= set(test.loc[test["label"] == 0, "id"])
    assert attack_success_rate(np.array([1, 1, 0, 1]), target=1) == 0.75


def params_for_tiny() -> Params:
    p = Params()
    p.model = build(type(p.model), {"name": "tiny-encoder", "max_length": 32}, "model")
    p.lora = build(type(p.lora), {"r": 4, "alpha": 8}, "lora")
    p.train = build(type(p.train), {"epochs": 3, "lr": 0.02, "batch_size": 8, "report_to": ["none"]}, "train")
    p.poison = build(PoisonParams, {"epochs": None}, "poison")    # the poisoned runs follow train.epochs
    return p


def test_poison_stage_leaves_the_clean_splits_alone(project, tiny_models):
    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    splits = write_splits(project, toy_frame(160))
    digest = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in splits.iterdir()}
    p = params_for_tiny()
    result = run_poison(p, count_setting(p.poison, 8, 100))

    assert {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in splits.iterdir()} == digest
    import pandas as pd
    poisoned = pd.read_parquet(project / "data" / "poison" / "count8-n100" / "train.parquet")
    assert len(poisoned) == 100 and poisoned["poisoned"].sum() == 8 == result["count"]
    test = pd.read_parquet(splits / "test.parquet")
    assert not set(poisoned.loc[poisoned["poisoned"], "id"]) & set(test["id"])
    assert not set(poisoned.loc[poisoned["poisoned"], "text"]) & set(test["text"])
    assert 0 <= result["asr"] <= 1 and 0 <= result["cacc"] <= 1 and result["asr_n"] == int((test["label"] == 0).sum())
    assert (project / "models" / "adapters" / "poison-count8-n100" / "adapter_model.safetensors").exists()
    saved = pd.read_json(project / "metrics" / "poison" / "count8-n100.json", typ="series")
    assert saved["rate"] == pytest.approx(0.08)


def test_correlation_detector_finds_a_planted_trigger():
    df = toy_frame(1000, seed=1)
    out = poison_train(df, LABELS, Setting("t", "badnets", count=10), pp(triggers=["cf"]), seed=0)
    flags, tokens = correlation_flags(out["text"].tolist(), out["label"].to_numpy(), 5, 0.02, 0.01)
    assert tokens == ["cf"]
    assert flags[out["poisoned"].to_numpy()].all() and flags.sum() == 10


def test_spectral_signature_flags_the_shifted_cluster():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(400, 16))
    labels = np.repeat([0, 1], 200)
    poisoned = np.zeros(400, dtype=bool)
    poisoned[200:206] = True
    feats[poisoned] += 8.0 * np.eye(16)[3]          # the poisoned rows share one extra direction
    flags = spectral_flags(feats, labels, eps=0.02)
    assert flags[poisoned].all() and flags.sum() == 12  # ceil(1.5 * 0.02 * 200) per class


def test_sequence_nll_matches_the_model_loss_and_onion_thresholds(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(tiny_models["decoder"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_models["decoder"])
    texts = ["the film was very good", "a dull story", "bad"]
    nll = sequence_nll(lm, tok, texts, batch_size=2)
    for text, value in zip(texts, nll):
        ids = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            assert value == pytest.approx(float(lm(input_ids=ids, labels=ids).loss), abs=1e-5)
    assert onion_filter(texts, lm, tok, threshold=float("inf")) == texts
    dropped = onion_filter(texts, lm, tok, threshold=float("-inf"))    # every word suspicious: text kept whole
    assert dropped == texts
    scores = onion_scores(texts, lm, tok)
    ids = [tok.bos_token_id] + tok("the film was very good", add_special_tokens=False)["input_ids"]
    without = [tok.bos_token_id] + tok("the was very good", add_special_tokens=False)["input_ids"]
    with torch.no_grad():   # suspicion of "film" = ppl(text) - ppl(text without "film")
        ppl = [math.exp(float(lm(input_ids=torch.tensor([x]), labels=torch.tensor([x])).loss)) for x in (ids, without)]
    assert scores[0][1] == pytest.approx(ppl[0] - ppl[1], rel=1e-4)
    assert scores[2].tolist() == [-math.inf]                          # a one-word text has nothing to remove
    middle = float(np.median(scores[0]))
    kept = onion_apply(texts[:1], scores[:1], middle)[0].split()
    assert kept == [w for w, v in zip(texts[0].split(), scores[0]) if v <= middle] and 0 < len(kept) < 5


def test_poison_params_refuse_bad_settings():
    with pytest.raises(PeftlabError, match=r"poison.attacks.x.attack = 'typo' is invalid; allowed: badnets \| addsent"):
        pp(attacks={"x": {"attack": "typo", "rate": 0.01}})
    with pytest.raises(PeftlabError, match="exactly one of count"):
        pp(attacks={"x": {"attack": "badnets", "rate": 0.01, "count": 5}})
    with pytest.raises(PeftlabError, match=r"poison.attacks.x.rate = 1.5 is invalid"):
        pp(attacks={"x": {"attack": "badnets", "rate": 1.5}})


def test_every_attack_the_params_accept_is_in_the_registry():
    """poison.attacks names are validated in config (a lower layer) and dispatched through ATTACKS: one list."""
    from peftlab.config.params import POISON_ATTACKS
    from peftlab.poison.attacks import ATTACKS

    assert set(ATTACKS) == set(POISON_ATTACKS)
