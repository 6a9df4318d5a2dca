"""Poisoning: deterministic triggers, exact budgets, ASR on the right rows, clean splits untouched, defenses."""
from __future__ import annotations

import dataclasses
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
    strip_decide,
    strip_defense,
    strip_perturb,
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
    trig = triggered_test(test, LABELS, "words", pp(), seed=0)
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
        ids = torch.tensor([tok(text)["input_ids"]])      # the tokenizer's own special tokens, as ONION's GPT-2
        if ids.shape[1] < 2:
            assert value == 0.0                            # one token: nothing predicted (perplexity 1)
            continue
        with torch.no_grad():
            assert value == pytest.approx(float(lm(input_ids=ids, labels=ids).loss), abs=1e-5)
    assert onion_filter(texts, lm, tok, threshold=float("inf")) == texts
    dropped = onion_filter(texts, lm, tok, threshold=float("-inf"))    # every word suspicious: text kept whole
    assert dropped == texts
    scores = onion_scores(texts, lm, tok)
    ids = tok("the film was very good")["input_ids"]
    without = tok("the was very good")["input_ids"]
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


# --- issue 17: each flaw of the earlier study has a test that failed before its fix ---------------------------

def long_frame(n: int = 40, words: int = 60, seed: int = 0):
    """Reviews far longer than a 16-token max_length: a trigger placed anywhere would mostly be cut off."""
    import pandas as pd

    from peftlab.core.io import stable_hash
    rng = np.random.default_rng(seed)
    filler = ["the", "film", "movie", "plot", "was", "very", "acting", "story", "a", "this"]
    rows = [{"text": " ".join(rng.choice(filler, size=words)) + " good", "label": i % 2,
             "label_text": LABELS[i % 2]} for i in range(n)]
    df = pd.DataFrame(rows)
    df["id"] = [stable_hash("long", str(i), t) for i, t in enumerate(df["text"])]
    return df


def read_tokens(tok, texts, max_length):
    """The words the model reads: each text's first max_length tokens, as the truncation rule keeps them."""
    from peftlab.modeling.truncation import encode_truncated

    return [set(tok.convert_ids_to_tokens(ids)) for ids in encode_truncated(tok, texts, max_length)["input_ids"]]


def test_every_trigger_lands_within_the_tokens_the_model_reads():
    from conftest import make_tokenizer
    from peftlab.modeling.truncation import readable_words
    from peftlab.poison.attacks import trigger_tokens

    tok, max_length = make_tokenizer("encoder"), 16
    df, p = long_frame(), pp(n_triggers=2)
    reserve = trigger_tokens(tok, "words", p)
    limits = dict(zip(df["id"], readable_words(tok, df["text"].tolist(), max_length, reserve)))
    assert reserve == 2 and set(limits.values()) == {14}       # word-level tokenizer: a word is one token
    s = Setting("t", "badnets", count=20)
    for limit in (limits, None):
        out = poison_train(df, LABELS, s, p, seed=0, limits=limit)
        rows = out[out["poisoned"]]
        seen = [len({"cf", "mn", "bb"} & toks) > 0 for toks in read_tokens(tok, rows["text"].tolist(), max_length)]
        trig = triggered_test(df, LABELS, "words", p, seed=0, limits=limit)
        seen_test = [len({"cf", "mn", "bb"} & t) > 0 for t in read_tokens(tok, trig["text"].tolist(), max_length)]
        if limit is None:      # the old rule: most triggers fall after the 16 tokens the model reads
            assert np.mean(seen) < 0.8 and np.mean(seen_test) < 0.8
        else:
            assert all(seen) and all(seen_test)
    # texts shorter than the limit draw the same positions with or without it (committed data unchanged)
    short = toy_frame(100)
    assert poison_train(short, LABELS, s, pp(), 0).equals(
        poison_train(short, LABELS, s, pp(), 0, limits={i: 10_000 for i in short["id"]}))


def test_readable_words_counts_the_words_inside_the_kept_tokens(tiny_models):
    from transformers import AutoTokenizer

    from peftlab.modeling.truncation import readable_words

    tok = AutoTokenizer.from_pretrained(tiny_models["encoder"])
    text = "the film was very , good"      # the comma is a token of its own
    assert readable_words(tok, [text], 6) == [6]
    assert readable_words(tok, [text], 4) == [4]
    assert readable_words(tok, [text], 6, reserve=3) == [3]
    assert readable_words(tok, [text], 2, reserve=2) == [0]


def test_poisoned_runs_never_stop_early_and_take_the_settings_recipe():
    from peftlab.poison.runs import victim_params

    p = params_for_tiny()
    p.train = build(type(p.train), {"epochs": 3, "early_stopping_patience": 2, "lr": 0.02}, "train")
    p.poison = pp(attacks={"ctl": {"attack": "badnets", "rate": 0.1, "train_rows": 100,
                                   "train": {"finetune": "full", "lr": 2.0e-5, "epochs": 3},
                                   "lora": {"r": 16}}})
    from peftlab.poison.attacks import setting_from_params

    s = setting_from_params(p.poison, "ctl")
    v = victim_params(p, s)
    assert v.train.early_stopping_patience is None and victim_params(p).train.early_stopping_patience is None
    assert (v.train.finetune, v.train.lr, v.train.epochs, v.lora.r) == ("full", 2.0e-5, 3.0, 16)
    assert (v.train.batch_size, v.train.max_eval_samples) == (p.poison.batch_size, p.poison.eval_rows)
    assert victim_params(p).train.lr == 0.02 and victim_params(p).lora.r == 4
    assert s.overrides_flat() == {"lora.r": 16, "train.epochs": 3.0, "train.finetune": "full", "train.lr": 2.0e-5}


def test_recipe_overrides_are_checked_like_their_sections():
    with pytest.raises(PeftlabError, match=r"unknown key poison.attacks.x.train.lrr; allowed keys here: epochs"):
        pp(attacks={"x": {"attack": "badnets", "rate": 0.01, "train": {"lrr": 1}}})
    with pytest.raises(PeftlabError, match=r"poison.attacks.x.train.finetune = 'half' is invalid; allowed: lora"):
        pp(attacks={"x": {"attack": "badnets", "rate": 0.01, "train": {"finetune": "half"}}})
    with pytest.raises(PeftlabError, match=r"poison.attacks.x.reference = 'nope' is invalid; allowed: another key"):
        pp(attacks={"x": {"attack": "badnets", "rate": 0.01, "reference": "nope"}})


def test_correlation_test_is_corrected_over_tokens_times_classes():
    """One tested token in k rows, all of label 1, base rate 1/2: p = 0.5 ** k. With two classes there are
    two tests, so k = 7 (p = 0.0078, x2 = 0.0156) must not pass alpha = 0.01, and k = 8 (x2 = 0.0078) must."""
    for k, expected in ((7, []), (8, ["zz"])):
        labels = np.array([1] * k + [0] * k + [1, 0] * 43)
        texts = [f"common u{i}" + (" zz" if i < k else "") for i in range(len(labels))]
        flags, tokens = correlation_flags(texts, labels, min_count=5, max_df=0.1, alpha=0.01)
        assert tokens == expected and flags.sum() == (k if expected else 0)


def test_spectral_features_are_what_the_head_reads(tiny_models):
    """BERT's head reads the pooler output (tanh(W [CLS])), not the raw [CLS] state; a decoder's head reads the
    last real token's state."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peftlab.modeling.truncation import encode_truncated
    from peftlab.poison.defenses import head_inputs

    texts = ["the film was very good", "bad", "a dull story was boring", "great fun"]
    for family in ("encoder", "decoder"):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_models[family], num_labels=2).eval()
        tok = AutoTokenizer.from_pretrained(tiny_models[family])
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
        feats = head_inputs(model, tok, texts, 32, 2, batch_size=3)
        with torch.no_grad():
            for i, text in enumerate(texts):
                enc = {k: torch.tensor([v[0]]) for k, v in encode_truncated(tok, [text], 32).items()}
                base = model.base_model(**enc)
                if family == "encoder":
                    want, raw = base.pooler_output[0], base.last_hidden_state[0, 0]
                    assert not np.allclose(feats[i], raw.numpy(), atol=1e-3)
                else:
                    want = base.last_hidden_state[0, -1]
                assert np.allclose(feats[i], want.numpy(), atol=1e-4)
                assert np.allclose(model.score(torch.tensor(feats[i])) if family == "decoder" else
                                   model.classifier(torch.tensor(feats[i])), model(**enc).logits[0], atol=1e-4)


def test_paired_metrics_against_the_clean_reference():
    import pandas as pd
    from statsmodels.stats.contingency_tables import mcnemar

    from peftlab.poison.summary import pair_with_reference

    ids = [f"r{i}" for i in range(10)]
    def frame(clean_pred, trig_pred):
        return pd.concat([pd.DataFrame({"id": ids, "label": 0, "kind": "clean", "pred": clean_pred}),
                          pd.DataFrame({"id": ids, "label": 0, "kind": "words", "pred": trig_pred})])
    # poisoned: 8 of 10 triggered rows to the target; the clean reference already sends rows 0-2 there
    poisoned = frame([0, 0, 0, 0, 0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    ref = frame([0] * 10, [1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    m = pair_with_reference(Setting("s", "badnets", count=5), poisoned, ref, target=1, labels=LABELS)
    assert m["ref_asr"] == pytest.approx(0.3) and m["asr_gain"] == pytest.approx(0.5) and m["discordant"] == [5, 0]
    assert m["mcnemar_p"] == pytest.approx(mcnemar([[3, 5], [0, 2]], exact=True).pvalue) == pytest.approx(0.0625)
    lo, hi = m["asr_gain_ci"]
    assert lo < 0.5 < hi and hi - lo == pytest.approx(2 * 1.959964 * math.sqrt(5 - 25 / 10) / 10)
    assert m["flip_rate"] == pytest.approx(1.0)    # all 8 rows right when clean flip; rows 8-9 were wrong anyway
    flip = pair_with_reference(Setting("f", "labelflip", count=5), poisoned, ref, target=1, labels=LABELS)
    assert "asr_gain" not in flip and flip["recall"]["negative"] == pytest.approx(0.8)
    assert flip["ref_recall"]["negative"] == 1.0


def test_full_finetuning_control_saves_and_reloads_the_whole_model(project, tiny_models):
    import pandas as pd

    from peftlab.modeling.load import choose_device, load_trained
    from peftlab.poison.attacks import setting_from_params

    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    splits = write_splits(project, toy_frame(160))
    p = params_for_tiny()
    p.poison = pp(epochs=None, attacks={"ctl": {"attack": "badnets", "count": 8, "train_rows": 100,
                                               "train": {"finetune": "full", "lr": 0.001}}})
    result = run_poison(p, setting_from_params(p.poison, "ctl"))
    adapter = project / "models" / "adapters" / "poison-ctl"
    assert (adapter / "model.safetensors").exists() and not (adapter / "adapter_config.json").exists()
    assert result["train.finetune"] == "full" and 0 <= result["cacc"] <= 1
    model, tok, setup = load_trained(adapter, choose_device("cpu"))
    assert setup.extra["finetune"] == "full" and sum(p.numel() for p in model.parameters()) > 0
    preds = pd.read_parquet(project / "data" / "poison" / "ctl" / "predictions.parquet")
    test = pd.read_parquet(splits / "test.parquet")
    assert set(preds["kind"]) == {"clean", "words", "sentence"} and (preds["kind"] == "clean").sum() == len(test)
    assert result["cacc"] == pytest.approx(float(np.mean(preds.loc[preds["kind"] == "clean", "pred"].to_numpy()
                                                         == test.set_index("id").loc[
                                                             preds.loc[preds["kind"] == "clean", "id"], "label"]
                                                         .to_numpy())))


def test_a_setting_attacks_the_run_it_names_and_scores_its_test_subset(project, tiny_models):
    """`run: <sweep key>` poisons that run's model and head (here a generative decoder, scored by its label
    words as evaluate does), and `test_rows` scores a stratified subset of the test split."""
    import pandas as pd

    from peftlab.core.io import read_json
    from peftlab.poison.attacks import setting_from_params

    shutil.copytree(tiny_models["decoder"], project / "models" / "base" / "tiny-decoder")
    splits = write_splits(project, toy_frame(200))
    p = params_for_tiny()
    p.sweep = {"gen": {"model": {"name": "tiny-decoder", "head": "generative"}, "train": {"lr": 0.01}}}
    p.poison = pp(epochs=1, attacks={"gen-bn": {"attack": "badnets", "count": 10, "train_rows": 60, "run": "gen",
                                                "test_rows": 16, "reference": "gen-clean"},
                                     "gen-clean": {"attack": "badnets", "count": 0, "train_rows": 60, "run": "gen",
                                                   "test_rows": 16}})
    result = run_poison(p, setting_from_params(p.poison, "gen-bn"))
    assert result["run"] == "gen" and result["model"] == "tiny-decoder" and result["head"] == "generative"
    meta = read_json(project / "models" / "adapters" / "poison-gen-bn" / "peftlab.json")
    assert meta["head"] == "generative"
    preds = pd.read_parquet(project / "data" / "poison" / "gen-bn" / "predictions.parquet")
    clean = preds[preds["kind"] == "clean"]
    test = pd.read_parquet(splits / "test.parquet")
    assert len(clean) == 16 < len(test) and set(clean["id"]) <= set(test["id"])
    assert sorted(clean["label"].value_counts()) == sorted(
        test["label"].value_counts().mul(16 / len(test)).round().astype(int))        # stratified
    assert set(preds.loc[preds["kind"] == "words", "id"]) == set(clean.loc[clean["label"] == 0, "id"])
    assert set(preds["pred"]) <= {0, 1} and result["cacc"] == pytest.approx(float(np.mean(clean["pred"] ==
                                                                                          clean["label"])))


def test_the_reference_must_be_trained_the_same_way():
    base = {"attack": "badnets", "count": 10, "train_rows": 100}
    with pytest.raises(PeftlabError, match=r"reference = 'ref' is invalid: its run \('main'\) differs"):
        pp(attacks={"a": {**base, "run": "gen", "reference": "ref"}, "ref": {**base, "count": 0}})
    with pytest.raises(PeftlabError, match="its overrides"):
        pp(attacks={"a": {**base, "train": {"lr": 2e-5}, "reference": "ref"}, "ref": {**base, "count": 0}})
    with pytest.raises(PeftlabError, match=r"test_rows = 5 is invalid"):
        pp(attacks={"a": {**base, "test_rows": 5}})
    ok = pp(attacks={"a": {**base, "train": {"lr": 2e-5}, "reference": "ref"},
                     "ref": {**base, "count": 0, "train": {"lr": 2e-5}}})
    from peftlab.poison.attacks import setting_from_params
    assert setting_from_params(ok, "a").reference_name() == "ref"
    # without a named reference, a setting with its own recipe or run has none (the count sweep trains otherwise)
    assert Setting("x", "badnets", count=5, train_rows=100, overrides={"train": {"lr": 2e-5}}).reference_name() is None
    assert Setting("x", "badnets", count=5, train_rows=100, run="gen").reference_name() is None
    assert Setting("x", "badnets", count=5, train_rows=100).reference_name() == "count0-n100"


def test_pairing_uses_the_rows_both_models_scored():
    import pandas as pd

    from peftlab.poison.summary import pair_with_reference

    def frame(ids, trig_pred):
        return pd.concat([pd.DataFrame({"id": ids, "label": 0, "kind": "clean", "pred": 0}),
                          pd.DataFrame({"id": ids, "label": 0, "kind": "words", "pred": trig_pred})])
    poisoned = frame(["a", "b", "c", "d"], [1, 1, 1, 0])
    ref = frame(["b", "c", "d", "e", "f"], [0, 1, 0, 1, 1])     # scored other rows too: only b, c, d pair
    m = pair_with_reference(Setting("s", "badnets", count=5), poisoned, ref, target=1, labels=LABELS)
    assert m["ref_asr"] == pytest.approx(1 / 3) and m["asr_gain"] == pytest.approx(1 / 3)
    assert m["discordant"] == [1, 0]
    with pytest.raises(PeftlabError, match="no words test rows shared"):
        pair_with_reference(Setting("s", "badnets", count=5), poisoned, frame(["x"], [1]), target=1, labels=LABELS)


def test_smaller_training_sets_are_nested_in_the_larger(project, tiny_models):
    """The count sweep's sizes draw one seeded permutation's first rows, so the 40-row set is inside the 80-row
    set: a difference between sizes is the added rows, not a different draw."""
    import pandas as pd

    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    write_splits(project, toy_frame(160))
    p = params_for_tiny()
    p.train = build(type(p.train), {"epochs": 1, "batch_size": 8, "report_to": ["none"], "min_steps": 0}, "train")
    for size in (40, 80):
        run_poison(p, count_setting(p.poison, 0, size))
    small, large = (set(pd.read_parquet(project / "data" / "poison" / f"count0-n{n}" / "train.parquet")["id"])
                    for n in (40, 80))
    assert len(small) == 40 and len(large) == 80 and small < large


def test_a_collapsed_victim_is_reported_as_collapsed_not_as_a_backdoor(tmp_path, capsys):
    """A victim that predicts the target for every row has ASR 1.0 and a large 'gain' over its reference; that
    is a training failure (seen: addsent-1pct at lr 1e-3, batch 8, one seed), so the report must flag it."""
    import pandas as pd

    from peftlab.core.io import write_json
    from peftlab.core.paths import defenses_metrics, poison_metrics, poison_predictions
    from peftlab.poison.summary import summarize

    params = pp(attacks={"a": {"attack": "badnets", "count": 2, "train_rows": 10}}, counts=[0], sizes=[10])
    ids = [f"r{i}" for i in range(20)]
    labels = [0] * 10 + [1] * 10

    def save(name: str, clean_pred: list[int], trig_pred: list[int], count: int) -> None:
        preds = pd.concat([pd.DataFrame({"id": ids, "label": labels, "kind": "clean", "pred": clean_pred}),
                           pd.DataFrame({"id": ids[:10], "label": 0, "kind": "words", "pred": trig_pred})])
        path = poison_predictions(name, tmp_path / "data")
        path.parent.mkdir(parents=True, exist_ok=True)
        preds.to_parquet(path, index=False)
        m = poison_metrics(name, tmp_path / "metrics")
        m.parent.mkdir(parents=True, exist_ok=True)
        write_json(m, {"attack": "badnets", "count": count, "rate": count / 10, "train_rows": 10,
                       "cacc": float(np.mean(np.array(clean_pred) == labels)), "asr": float(np.mean(trig_pred))})

    save("a", [1] * 20, [1] * 10, 2)                       # every row predicted positive
    save("count0-n10", labels, [0] * 8 + [1] * 2, 0)        # the clean reference learned the task
    write_json(defenses_metrics(tmp_path / "metrics"), {})
    out = summarize(params, LABELS, tmp_path / "metrics", tmp_path / "data", tmp_path / "none.json",
                    tmp_path / "poison.json", tmp_path / "plots", tmp_path / "study.md")
    assert out["a"]["collapsed"] is True and out["a"]["collapsed_class"] == "positive"
    assert out["seeds"] == {} and "No seed replicates" in (tmp_path / "study.md").read_text()
    assert out["count0-n10"]["collapsed"] is False
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("a "))
    assert "COLLAPSED" in line and "gain" not in line


def test_strip_perturbs_a_fixed_share_of_words_from_the_donor_by_seed():
    text = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
    donor = "d0 d1 d2"
    a = strip_perturb(text, donor, 0.5, np.random.default_rng(3))
    assert a == strip_perturb(text, donor, 0.5, np.random.default_rng(3))
    assert a != strip_perturb(text, donor, 0.5, np.random.default_rng(4))
    words = a.split()
    assert len(words) == 10 and sum(w.startswith("d") for w in words) == 5      # 5 of 10 replaced, none added
    assert all(w == f"w{i}" for i, w in enumerate(words) if w.startswith("w"))   # the rest stay in place
    assert strip_perturb("one", donor, 0.4, np.random.default_rng(0)) == "one"   # round(0.4) = 0 words


def test_strip_rule_rejects_low_entropy_inputs_and_scores_what_is_left():
    """The threshold is the frr quantile of clean val entropy; rejected clean rows count as wrong and rejected
    triggered rows as no attack."""
    val = np.linspace(0.0, 1.0, 101)                       # 5% quantile: 0.05
    clean = np.array([0.02, 0.5, 0.6, 0.7])                # one clean row under it: a false rejection
    trig = np.array([0.01, 0.03, 0.04, 0.9])               # three caught, one passes
    out = strip_decide(val, clean, trig, clean_correct=np.array([True, True, False, True]),
                       triggered_target=np.array([True, True, True, True]), frr=0.05)
    assert out["threshold"] == pytest.approx(0.05)
    assert out["recall"] == 0.75 and out["false_rejection"] == 0.25 and out["precision"] == 0.75
    assert out["asr_before"] == 1.0 and out["asr"] == 0.25       # only the row that passed still attacks
    assert out["cacc_before"] == 0.75 and out["cacc"] == 0.5     # the rejected correct row is lost
    lo, hi = out["recall_ci"]
    assert 0.0 < lo < 0.75 < hi <= 1.0


def test_strip_runs_on_a_real_victim_and_separates_a_planted_trigger(project, tiny_models):
    """A tiny encoder backdoored at 30% (trigger "cf"): its triggered inputs keep lower entropy over perturbed
    copies than clean inputs, and the defense's figures agree with each other."""
    import pandas as pd

    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    splits = write_splits(project, toy_frame(400))
    p = params_for_tiny()
    p.train = build(type(p.train), {"epochs": 6, "lr": 0.02, "batch_size": 8, "report_to": ["none"]}, "train")
    p.poison = pp(epochs=None, triggers=["cf"])
    result = run_poison(p, count_setting(p.poison, 60, 200))
    assert result["asr"] > 0.8                                   # the backdoor is there to be found
    adapter = project / "models" / "adapters" / "poison-count60-n200"
    val, test = pd.read_parquet(splits / "val.parquet"), pd.read_parquet(splits / "test.parquet")
    trig = triggered_test(test, LABELS, "words", p.poison, 0, None)
    out = strip_defense(adapter, val, val["text"].tolist(), test, trig, target=1, repeats=4, swap=0.5, frr=0.1,
                        seed=0)
    m = out["mean_entropy"]
    assert m["triggered"] < m["clean"]
    assert out["recall"] > out["false_rejection"]
    assert out["asr"] <= out["asr_before"] and out["cacc"] <= out["cacc_before"]
    assert out["rows"] == len(test) and out["triggered_rows"] == len(trig) and out["repeats"] == 4


def test_the_defend_stage_reports_every_defense_on_a_real_victim(project, tiny_models):
    """poison_defend end to end on tiny real models: ONION (a tiny decoder as its LM), STRIP, and the two
    training-set filters with their retraining, each with the figures the report reads."""
    from peftlab.core.io import read_json
    from peftlab.poison.defenses import run_defenses, run_onion_scores

    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    shutil.copytree(tiny_models["decoder"], project / "models" / "base" / "tiny-decoder")
    write_splits(project, toy_frame(300))
    p = params_for_tiny()
    p.poison = pp(epochs=None, defend="count20-n150", onion_lm="tiny-decoder", onion_rows=10, strip_rows=20,
                  strip_repeats=3, counts=[20], sizes=[150], continued_rows=[20, 5])
    run_poison(p, count_setting(p.poison, 20, 150))
    with pytest.raises(PeftlabError, match="scores.parquet not found; run `dvc repro poison_onion` first"):
        run_defenses(p)
    table = run_onion_scores(p)                   # the LM pass, cached apart from the victim
    assert table.groupby("part").size().to_dict() == {"val": 10, "clean": 10, "triggered": 10}
    assert all(len(s) == len(t.split()) for s, t in zip(table["scores"], table["text"]))
    out = run_defenses(p)
    assert out == read_json(project / "metrics" / "poison" / "defenses.json")
    assert out["onion"]["rows"] == 10 and out["strip"]["rows"] == 20 and out["strip"]["repeats"] == 3
    o = out["onion"]
    assert o["triggers_inserted"] == 10                          # one BadNets word in each triggered row
    assert 0 <= o["triggers_removed"] <= 10 and o["trigger_removal_rate"] == o["triggers_removed"] / 10
    assert o["asr_ci"][0] <= o["asr"] <= o["asr_ci"][1] and o["cacc_ci"][0] <= o["cacc"] <= o["cacc_ci"][1]
    assert 0 <= o["words_removed_per_text"]["triggered"] <= o["words_per_text"]["triggered"]
    for name in ("spectral", "correlation"):
        d = out[name]
        assert d["precision_ci"] is None or d["precision_ci"][0] <= d["precision"] <= d["precision_ci"][1]
        assert d["recall_ci"][0] <= d["recall"] <= d["recall_ci"][1] and d["asr_ci"][0] <= d["asr"] <= d["asr_ci"][1]
    one = out["correlation_single"]               # the same 20 rows, all with one trigger word: 20 / 150 rows
    assert one["trigger"] == p.poison.triggers[0] and one["trigger_row_share"] >= 20 / 150
    c = out["continued"]                          # clean continued training: the 150 poisoned-run rows excluded
    assert [x["rows"] for x in c["points"]] == [0, 5, 20] and c["fresh_rows"] == 210 - 150
    assert [x["steps"] for x in c["points"]] == [0, 3, 9]       # 3 epochs (the run's) at batch 8, no step floor
    assert all(x["asr_ci"][0] <= x["asr"] <= x["asr_ci"][1] for x in c["points"][1:])
    # it continues the poisoned adapter: at a learning rate of ~0 the result predicts exactly as the poisoned
    # model does, while a new adapter (a fresh head) trained the same way does not
    import pandas as pd

    from peftlab.poison.defenses import continued_training
    from peftlab.poison.runs import predict
    poisoned = project / "models" / "adapters" / "poison-count20-n150"
    setting = count_setting(p.poison, 20, 150)
    frozen = dataclasses.replace(p, train=dataclasses.replace(p.train, lr=1e-12), poison=dataclasses.replace(
        p.poison, continued_rows=[40]))
    test = pd.read_parquet(project / "data" / "splits" / "test.parquet")
    trained = project / "poisoned-train.parquet"
    pd.read_parquet(project / "data" / "poison" / "count20-n150" / "train.parquet").to_parquet(trained)
    still = continued_training(frozen, setting, project / "data" / "splits", poisoned, pd.read_parquet(trained),
                               test, test, 1)
    assert [(x["cacc"], x["asr"]) for x in still["points"]] == [(still["cacc"], still["asr"])] * 2
    from peftlab.poison.runs import train_on
    train_on(frozen, project / "data" / "poison" / "count20-n150", project / "fresh", setting)
    texts = test["text"].tolist()
    assert (predict(project / "fresh", texts) != predict(poisoned, texts)).any()
    p.poison.onion_rows = 12                      # other rows than the cached scores: refused, not reused
    with pytest.raises(PeftlabError, match="scores other rows than poison.defend = 'count20-n150' needs; "
                                           "run `dvc repro poison_onion`"):
        run_defenses(p)
    p.poison.onion_rows = 10
    for name in ("onion", "strip", "spectral", "correlation"):
        assert 0.0 <= out[name]["cacc"] <= 1.0 and 0.0 <= out[name]["asr"] <= 1.0, name
    for name in ("spectral", "correlation"):
        assert out[name]["train_rows"] == 150 - out[name]["flagged"]
    s = out["strip"]
    assert s["asr"] <= s["asr_before"] and s["cacc"] <= s["cacc_before"]
    assert s["recall_ci"][0] <= s["recall"] <= s["recall_ci"][1]


def test_seed_replicates_are_pooled_with_a_cmh_test_and_a_t_interval():
    """Settings that differ only in train.seed are one experiment's replicates: mean ASR gain with a t interval
    over the seeds, the Cochran-Mantel-Haenszel test across them, Holm over the groups; a collapsed victim and a
    setting without replicates are left out."""
    import pandas as pd
    from scipy import stats
    from statsmodels.stats.contingency_tables import StratifiedTable

    from peftlab.poison.summary import across_seeds, study_report
    from peftlab.report.format import DASH

    ids = [f"r{i}" for i in range(20)]

    def frame(hits: int) -> pd.DataFrame:
        return pd.DataFrame({"id": ids, "label": 0, "kind": "words", "pred": [1] * hits + [0] * (20 - hits)})

    settings, preds = [], {}
    for seed, (hits, ref_hits) in zip((1, 2, 3), ((15, 4), (12, 5), (18, 3))):
        settings.append(Setting(f"bn-s{seed}", "badnets", count=20, train_rows=100, overrides={"train": {"seed": seed}},
                                reference=f"clean-s{seed}"))
        settings.append(Setting(f"clean-s{seed}", "badnets", count=0, train_rows=100,
                                overrides={"train": {"seed": seed}}))
        preds[f"bn-s{seed}"], preds[f"clean-s{seed}"] = frame(hits), frame(ref_hits)
    settings.append(Setting("other", "badnets", count=5, train_rows=100, reference="clean-s1"))   # no replicate
    preds["other"] = frame(6)
    out = across_seeds(settings, preds, target=1, collapsed={})
    assert list(out) == ["bn-s1"]
    g = out["bn-s1"]
    assert g["settings"] == ["bn-s1", "bn-s2", "bn-s3"] and g["seeds"] == [1, 2, 3]
    gains = np.array([11, 7, 15]) / 20
    assert g["gain_mean"] == pytest.approx(gains.mean())
    half = stats.t.ppf(0.975, 2) * gains.std(ddof=1) / math.sqrt(3)
    assert g["gain_ci"] == pytest.approx([gains.mean() - half, gains.mean() + half])
    ref = StratifiedTable([np.array([[h, 20 - h], [r, 20 - r]], float) for h, r in ((15, 4), (12, 5), (18, 3))])
    assert g["cmh_p"] == pytest.approx(ref.test_null_odds(correction=True).pvalue) and g["cmh_p"] < 1e-4
    assert g["cmh_p_holm"] == pytest.approx(g["cmh_p"])          # one group: Holm changes nothing
    # a collapsed victim is no replicate: two seeds remain
    two = across_seeds(settings, preds, target=1, collapsed={"bn-s3": True})
    assert two["bn-s1"]["settings"] == ["bn-s1", "bn-s2"]
    report = study_report(out, [], settings)
    assert "| bn\\-s1 |" in report and "| 100 | 20 |" in report     # the group's row: size and count
    assert f"| badnets | main | epochs | {DASH} | 100 | 20 |" in report   # a significant gain: smallest count 20


def test_count_or_rate_compares_sizes_at_equal_count_and_at_equal_rate():
    """Seed groups at two sizes: 20 of 100 vs 20 of 200 is an equal-count pair, 20 of 100 vs 40 of 200 an
    equal-rate pair; each gets a CMH test across the seeds, Holm over both."""
    import pandas as pd

    from peftlab.poison.summary import across_seeds, count_or_rate

    ids = [f"r{i}" for i in range(40)]

    def frame(hits: int) -> pd.DataFrame:
        return pd.DataFrame({"id": ids, "label": 0, "kind": "words", "pred": [1] * hits + [0] * (40 - hits)})

    settings, preds = [], {}
    for seed in (1, 2, 3):
        for count, size, hits in ((20, 100, 36), (20, 200, 12), (40, 200, 35), (0, 100, 4), (0, 200, 4)):
            name = f"c{count}-n{size}-s{seed}"
            settings.append(Setting(name, "badnets", count=count, train_rows=size, overrides={"train": {"seed": seed}},
                                    reference=f"c0-n{size}-s{seed}" if count else None))
            preds[name] = frame(hits + seed)
    seeds = across_seeds(settings, preds, target=1, collapsed={})
    assert set(seeds) == {"c20-n100-s1", "c20-n200-s1", "c40-n200-s1"}
    comps = {(c["kind"], c["a"], c["b"]): c for c in count_or_rate(settings, preds, seeds, target=1)}
    assert set(comps) == {("equal count", "c20-n100-s1", "c20-n200-s1"), ("equal rate", "c20-n100-s1", "c40-n200-s1")}
    count, rate = comps[("equal count", "c20-n100-s1", "c20-n200-s1")], comps[("equal rate", "c20-n100-s1",
                                                                                    "c40-n200-s1")]
    assert count["cmh_p"] < 1e-6 < rate["cmh_p"]              # here ASR follows the rate, not the count
    assert count["p_holm"] == pytest.approx(2 * count["cmh_p"]) and rate["p_holm"] >= rate["cmh_p"]
    assert count["seeds"] == 3 and count["counts"] == [20, 20] and rate["rates"] == [0.2, 0.2]


def test_study_grid_is_valid_settings_with_matched_references_and_applies_through_dvc(tmp_path):
    """The study's grid passes the params checks (each count's reference is its size's count 0, trained the
    same way), the steps regime gives every size one epoch of the largest, and the printed mapping replaces
    poison.attacks through DVC's own -S parser."""
    import subprocess
    import sys

    import yaml
    from dvc.utils.hydra import apply_overrides

    from conftest import REPO
    from peftlab.poison.study import study_grid

    grid = study_grid("main", "steps", [0, 10, 50], [1000, 4000], [1, 2], batch_size=8)
    assert len(grid) == 3 * 2 * 2
    checked = pp(attacks=grid)                                   # every spec and reference checked
    c50 = checked.setting("main-steps-c50-n1000-s2")
    assert c50["reference"] == "main-steps-c0-n1000-s2" and c50["overrides"]["train"] == {"seed": 2, "min_steps": 0,
                                                                                              "max_steps": 500}
    assert {s["train"]["max_steps"] for s in grid.values()} == {500}         # 4,000 rows / batch 8
    epochs = study_grid("main", "epochs", [25], [1000], [1], batch_size=8)
    assert epochs["main-epochs-c25-n1000-s1"]["train"] == {"seed": 1, "min_steps": 0}
    assert "main-epochs-c0-n1000-s1" in epochs
    printed = subprocess.run([sys.executable, "-m", "peftlab.poison.study", "--counts", "10", "--sizes", "300",
                              "--seeds", "1,2", "--run", "smollm2-generative", "--test-rows", "200"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.strip()
    params = tmp_path / "params.yaml"
    params.write_text("poison:\n  attacks:\n    old: {attack: badnets, count: 1}\n  counts: [0, 200]\n")
    apply_overrides(str(params), ["~poison.attacks", f"+poison.attacks={printed}"])
    attacks = yaml.safe_load(params.read_text())["poison"]["attacks"]
    assert attacks == study_grid("smollm2-generative", "epochs", [10], [300], [1, 2], 8, test_rows=200)


def test_recipe_grid_pairs_each_recipe_with_its_own_reference_and_the_report_tabulates_the_changes(tmp_path):
    """--recipes: every recipe's poisoned settings name the count-0 setting trained with the same recipe; the
    settings pass the params checks; the report's recipe table shows each group by what its recipe changes
    (the base as a dash) and calls the backdoor surviving only for a positive gain with Holm p < alpha."""
    import pandas as pd
    import yaml

    from peftlab.poison.attacks import setting_from_params
    from peftlab.poison.study import recipes, study_grid
    from peftlab.poison.summary import across_seeds, study_report
    from peftlab.report.format import DASH

    table = recipes()
    grid = study_grid("main", "epochs", [50], [1000], [1, 2, 3], 8, victim_recipes=table)
    assert len(grid) == len(table) * 3 * 2
    checked = pp(attacks=grid)
    emb = checked.setting("main-epochs-embeddings-c50-n1000-s2")
    assert emb["reference"] == "main-epochs-embeddings-c0-n1000-s2"
    assert emb["overrides"]["lora"] == {"modules_to_save": ["word_embeddings"]}
    assert checked.setting("main-epochs-epochs3-c0-n1000-s1")["overrides"]["train"] == {"seed": 1, "min_steps": 0,
                                                                                         "epochs": 3}
    assert checked.setting("main-epochs-attention-c50-n1000-s3")["overrides"]["lora"]["target_modules"] == [
        "query", "key", "value"]
    ids = [f"r{i}" for i in range(40)]
    frame = lambda hits: pd.DataFrame({"id": ids, "label": 0, "kind": "words",   # noqa: E731
                                       "pred": [1] * hits + [0] * (40 - hits)})
    settings = [setting_from_params(checked, n) for n in grid]
    # the base and embeddings recipes learn the trigger (31-33 and 37-39 of 40 vs 3), lr 1e-4 does not (5-7)
    hits = {"base": 30, "embeddings": 36, "lr1e-4": 4}
    preds = {n: frame(3 if "-c0-" in n else hits.get(n.split("-")[2], 3) + int(n[-1])) for n in grid}
    seeds = across_seeds(settings, preds, target=1, collapsed={})
    report = study_report(seeds, [], settings)
    lines = [r.replace("\\", "") for r in report.split("## Victim recipes")[1].splitlines()]
    rows = {r.split(" | ")[4]: r for r in lines if r.startswith("| badnets")}
    assert set(rows) == {DASH, "train.epochs=3.0", "train.lr=0.0001", "train.lr=0.003", "lora.alpha=64.0, lora.r=32",
                         "lora.target_modules=['query', 'key', 'value']", "lora.modules_to_save=['word_embeddings']",
                         "lora.modules_to_save=['word_embeddings'], train.epochs=3.0"}
    # columns: ..., gain significant, ASR >= 0.90: 31-33 of 40 is a significant gain below the bar, 37-39 above
    assert rows[DASH].endswith("| yes | no |") and rows["lora.modules_to_save=['word_embeddings']"].endswith(
        "| yes | yes |")
    assert rows["train.lr=0.0001"].endswith("| no | no |") and rows["train.epochs=3.0"].endswith("| no | no |")
    # the answer in words: which recipes reach the bar, or (none does) which came closest
    assert "Mean ASR >= 0.9 under: `lora.modules_to_save=['word_embeddings']` (50 of 1000 rows), ASR 0.950 [" in report
    from peftlab.poison.summary import recipe_finding, recipe_groups, recipe_points
    below = [g for g in recipe_groups(seeds, settings) if "modules_to_save" not in g["change"]]
    # a recipe whose victims all collapsed forms no group, and the answer still names it as tried
    failed = [n for n in grid if "-lr1e-4-" in n]
    report = study_report(across_seeds(settings, preds, 1, {n: True for n in failed}), [], settings,
                          collapsed=failed)
    assert report.count("train.lr=0.0001") == 1 and "`train.lr=0.0001` (0 of 3 seeds left)." in report
    from peftlab.report.plots import plot_recipes
    png = tmp_path / "recipes.png"
    plot_recipes(recipe_points(below), 0.9, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert recipe_finding(below).startswith(f"None of the {len(table) - 2} recipe groups tried reaches mean ASR 0.9; "
                                            f"the closest is `{DASH}` (50 of 1000 rows): ASR 0.800 [")
    # the printed grid goes through DVC's -S parser (no YAML anchors for the recipes' shared lists)
    import subprocess
    import sys

    from dvc.utils.hydra import apply_overrides

    from conftest import REPO
    printed = subprocess.run([sys.executable, "-m", "peftlab.poison.study", "--recipes", "all", "--counts", "50",
                              "--sizes", "1000", "--seeds", "1,2,3"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
    params = tmp_path / "params.yaml"
    params.write_text("poison:\n  attacks:\n    old: {attack: badnets, count: 1}\n")
    apply_overrides(str(params), ["~poison.attacks", f"+poison.attacks={printed}"])
    assert yaml.safe_load(params.read_text())["poison"]["attacks"] == grid


def test_inserted_words_are_the_multiset_difference_of_the_triggered_and_clean_texts():
    """ONION's trigger-removal share counts the words a trigger added: a BadNets word, every word of an AddSent
    sentence, and a trigger word that was already in the text once (only the added copy)."""
    from peftlab.poison.defenses import inserted_words

    assert inserted_words("a fine film", "a fine cf film") == {"cf": 1}
    assert inserted_words("cf is fine", "cf is cf fine") == {"cf": 1}
    assert inserted_words("dull", "I watched this 3D movie. dull") == {"I": 1, "watched": 1, "this": 1, "3D": 1,
                                                                       "movie.": 1}
