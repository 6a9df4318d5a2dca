"""Zero-shot scoring, calibration, the answer parser, and the baselines' determinism, on tiny real models."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch

from conftest import toy_frame
from peftlab.config.params import BaselineParams, build
from peftlab.core.io import write_json
from peftlab.evaluate.baseline import (
    chosen_candidate,
    dummy_baselines,
    encoder_baselines,
    llm_baselines,
    tfidf_baselines,
)
from peftlab.modeling.predict import (
    answer_settled,
    calibrate,
    chat_prompt,
    generate_answers,
    label_logprobs,
    label_token_ids,
    parse_label,
    shared_prefix,
)


@pytest.fixture(scope="module")
def tiny_lm(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["decoder"])
    tok.pad_token = tok.eos_token
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_models["decoder"]).eval()
    with torch.no_grad():  # sharper next-token distributions than the near-uniform init, so ranks are clear
        model.lm_head.weight.mul_(40.0)
    return model, tok


def brute_force(model, tok, prompt: str, ids: list[int]) -> float:
    """log p(ids | prompt) from one unpadded full forward pass, token by token."""
    seq = tok(prompt, add_special_tokens=False)["input_ids"] + ids
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)
    start = len(seq) - len(ids)
    return float(sum(lp[start - 1 + j, t] for j, t in enumerate(ids)))


@pytest.mark.parametrize("words", [["positive", "negative"], ["very good", "not fun at all"],
                                   ["good", "not fun at all", "so so", "neutral"]])
def test_scoring_picks_the_label_whose_words_are_more_probable(tiny_lm, words):
    model, tok = tiny_lm
    prompts = [chat_prompt(tok, "classify", t, "this review is") for t in
               ["the film was great", "awful", "a very very dull boring plot , the acting was bad", "fun"]]
    ids = label_token_ids(tok, words)
    got = label_logprobs(model, tok, prompts, ids, batch_size=3, progress=False)   # batched, left-padded
    want = np.array([[brute_force(model, tok, p, i) for i in ids] for p in prompts])
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(label_logprobs(model, tok, prompts, ids, 2, progress=False, reuse_prefix=False),
                               want, atol=1e-4)                              # no shared-prefix cache
    assert (got.argmax(1) == want.argmax(1)).all()


def test_calibration_moves_a_biased_prior():
    # the model prefers label 0 by a margin of 1.5 on content-free inputs; real inputs differ around that bias
    margins = np.array([2.0, 1.0, 0.5, -0.5])
    lp = np.stack([np.zeros(4), -margins], axis=1)          # log p(label0) - log p(label1) = margin
    cf = np.array([[0.0, -1.5], [0.0, -1.4], [0.0, -1.6]])
    assert list(lp.argmax(1)) == [0, 0, 0, 1]
    cal = calibrate(lp, cf)
    assert list(cal.argmax(1)) == [0, 1, 1, 1]
    np.testing.assert_allclose((cal[:, 0] - cal[:, 1]), margins - 1.5)


@pytest.mark.parametrize("answer,expected", [("Positive.", 1), (" negative", 0), ("The sentiment is positive", 1),
                                             ("banana", -1), ("", -1), ("not negative, but positive", 0),
                                             ("positively", -1)])
def test_parser(answer, expected):
    assert parse_label(answer, [" negative", "positive"]) == expected


def test_classical_baselines_are_deterministic_by_seed(project, tiny_models):
    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-bert")
    df = toy_frame(240, seed=3)
    train, val, test = df.iloc[:160], df.iloc[160:200], df.iloc[200:]
    bp = build(BaselineParams, {"encoder": "tiny-bert", "c_grid": [1.0, 10.0]}, "baseline")
    labels = ["negative", "positive"]
    methods = ["tfidf_logreg", "tfidf_svm", "emb_logreg", "emb_svm_rbf", "emb_mlp", "encoder_zeroshot",
               "majority", "stratified"]
    runs = []
    for _ in range(2):
        r = {**tfidf_baselines(bp, 7, labels, train, val, test, methods),
             **encoder_baselines(bp, 7, labels, train, val, test, methods),
             **dummy_baselines(7, labels, train, test, methods)}
        runs.append(r)
    for m in methods:
        np.testing.assert_array_equal(runs[0][m].pred, runs[1][m].pred)
        np.testing.assert_allclose(runs[0][m].probs, runs[1][m].probs)
    assert (runs[0]["majority"].pred == int(train["label"].mode()[0])).all()
    assert (runs[0]["tfidf_logreg"].pred == test["label"]).mean() > 0.8   # the cue words are learnable
    other = dummy_baselines(8, labels, train, test, ["stratified"])["stratified"].pred
    assert (other != runs[0]["stratified"].pred).any()                  # the seed matters


def test_llm_baselines_select_on_val_and_count_unparsed(project, tiny_models):
    shutil.copytree(tiny_models["decoder"], project / "models" / "base" / "tiny-llama")
    df = toy_frame(120, seed=4)
    train, val, test = df.iloc[:60], df.iloc[60:90], df.iloc[90:]
    bp = build(BaselineParams, {"llm": "tiny-llama", "select_rows": 20, "shots": 2, "max_new_tokens": 3,
                                "prompts": [{"system": "classify as {labels}", "user": "{text}"},
                                            {"system": None, "user": "review : {text} , {labels} ?"}]},
               "baseline")
    out = llm_baselines(bp, 0, ["negative", "positive"], train, val, test, ["llm_zeroshot", "llm_generate"])
    zs = out["llm_zeroshot"]
    assert len(zs.extra["selection"]) == 2 * 2 * 2      # prompts x prefills x calibration, all on val
    assert zs.extra["chosen"]["val_accuracy"] == max(g["val_accuracy"] for g in zs.extra["selection"])
    np.testing.assert_allclose(zs.probs.sum(1), 1.0)
    gen = out["llm_generate"]
    assert len(gen.pred) == len(test) and set(np.unique(gen.pred)) <= {-1, 0, 1}
    unparsed = gen.pred < 0
    np.testing.assert_allclose(gen.probs[unparsed], 0.5)


def test_answer_settled_never_changes_the_parsed_label():
    """Every prefix that `answer_settled` calls final parses like the whole answer, for words that grow
    ("positive" -> "positively"), multi-word label words and words sharing a start."""
    rng = np.random.default_rng(0)
    pool = ["positive", "positively", "negative", "not", "good", "not good", "it", "is", " ", ", ", ".", "\n", "pos"]
    for words in (["negative", "positive"], ["good", "not good"], ["pos", "positive"]):
        checked = 0
        for _ in range(300):
            answer = "".join(rng.choice(pool, size=rng.integers(1, 8)))
            for cut in range(1, len(answer) + 1):
                if answer_settled(answer[:cut], words):
                    assert parse_label(answer[:cut], words) == parse_label(answer, words), (answer, cut, words)
                    checked += 1
        assert checked > 100
    assert not answer_settled("this review is positive", ["negative", "positive"])    # could become "positively"
    assert answer_settled("this review is positive.", ["negative", "positive"])
    assert not answer_settled("it is not", ["good", "not good"]) and not answer_settled("", ["good"])


def test_generation_stopped_at_a_settled_answer_parses_the_same(tiny_lm):
    model, tok = tiny_lm
    prompts = [chat_prompt(tok, "classify", f"review number {i} was {w}", "") for i, w in
               enumerate(["fine", "bad", "great", "odd", "long", "short", "dull", "fun"] * 2)]
    full = generate_answers(model, tok, prompts, max_new_tokens=12, batch_size=5, progress=False)
    counts: dict[str, int] = {}
    for a in full:
        for w in set(re.findall(r"[a-z]{3,}", a.lower())):
            counts[w] = counts.get(w, 0) + 1
    # The tiny model's most produced word is one label, a word it never writes the other.
    words = [sorted(counts, key=lambda w: (-counts[w], w))[0], "zebra"]
    stopped = generate_answers(model, tok, prompts, max_new_tokens=12, batch_size=5, progress=False, stop_at=words)
    assert [parse_label(a, words) for a in stopped] == [parse_label(a, words) for a in full]
    assert any(len(s) < len(f) for s, f in zip(stopped, full))       # some rows did stop early
    assert all(f.startswith(s) for s, f in zip(stopped, full))       # greedy: the same text, cut


def test_generation_from_the_shared_prefix_cache_gives_the_same_answers(tiny_lm):
    import copy

    model, tok = tiny_lm
    # The tiny model's layers scaled up: its greedy answers then depend on the prompt (as built, the residual
    # stream is the last token's embedding and every answer repeats it, which would show nothing).
    model = copy.deepcopy(model)
    with torch.no_grad():
        for w in model.model.layers.parameters():
            w.mul_(4.0)
    prompts = [chat_prompt(tok, "classify the review", f"review number {i} was {w}" + " really" * (i % 4), "")
               for i, w in enumerate(["fine", "bad", "great", "odd", "long", "short", "dull", "fun"] * 2)]
    enc = tok(prompts, add_special_tokens=False)["input_ids"]
    assert len(shared_prefix(enc)) >= 3                    # there is a prefix to reuse, and rows of other lengths
    plain = generate_answers(model, tok, prompts, max_new_tokens=12, batch_size=5, progress=False, reuse_prefix=False)
    cached = generate_answers(model, tok, prompts, max_new_tokens=12, batch_size=5, progress=False)
    assert len(set(plain)) > 4, plain                      # the answers depend on the prompt
    assert cached == plain


def test_the_benchmark_times_the_prompt_the_baseline_chose(tmp_path):
    prompts = [{"system": "classify as {labels}", "user": "{text}"}, {"system": None, "user": "is {text} {labels}?"}]
    bp = build(BaselineParams, {"prompts": prompts, "prefills": ["this review is", ""]}, "baseline")
    metrics = tmp_path / "baseline.json"
    spec, chosen = chosen_candidate(bp, metrics)                        # no baseline run yet: the first of each
    assert (spec.user, spec.prefill, chosen["calibration"]) == ("{text}", "this review is", False)
    write_json(metrics, {"llm_zeroshot": {"chosen": {"prompt": 1, "prefill": "", "calibration": True}}})
    spec, chosen = chosen_candidate(bp, metrics)
    assert (spec.system, spec.user, spec.prefill, chosen["calibration"]) == (None, "is {text} {labels}?", "", True)
    short = build(BaselineParams, {"prompts": prompts[:1]}, "baseline")   # params now list fewer candidates
    assert chosen_candidate(short, metrics)[0].user == "{text}"
