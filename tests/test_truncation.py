"""One truncation rule on every path (training features, evaluate, zero-shot scoring, generation, encoder
embeddings, seq2seq), checked on the token ids that really reach each tiny model's embedding layer; and the
truncated share the split stage records in metrics/split.json, with its warning."""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import toy_frame, write_splits
from peftlab.config.params import BaselineParams, build
from peftlab.core.errors import PeftlabError
from peftlab.modeling.load import ModelSetup, load_base, load_tokenizer
from peftlab.modeling.predict import predict_probs
from peftlab.modeling.truncation import encode_truncated, split_truncation, truncation_stats
from peftlab.train.run import features

L = 12
VOCAB_WORDS = ["good", "great", "fine", "bad", "awful", "dull", "film", "movie", "plot", "the", "a", "very", "was",
               "not", "acting", "story", "fun", "boring"]
LONG = " ".join(np.random.default_rng(1).choice(VOCAB_WORDS, size=40))    # 40 tokens
SHORT = "very fun story"      # 3 tokens and another first word, so a shared-prefix cache stops before the texts
PROMPT = {"system": "classify as {labels}", "user": "{text}", "prefill": "this review is"}


@contextlib.contextmanager
def embedded_ids(vocab: int):
    """Every row of token ids that goes through an embedding of the vocabulary's size, in any module (a global
    forward pre-hook: the model runs for real, we only read its inputs)."""
    rows: list[list[int]] = []

    def hook(module, args):
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == vocab and args:
            rows.extend(args[0].reshape(-1, args[0].shape[-1]).tolist())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield rows
    finally:
        handle.remove()


def contains(row: list[int], seq: list[int]) -> bool:
    return any(row[i:i + len(seq)] == seq for i in range(len(row) - len(seq) + 1))


def assert_cut(rows: list[list[int]], ids: list[int], path: str) -> None:
    """The text's first L ids reach the model in one piece, and its (L+1)-th never follows them."""
    assert any(contains(r, ids[:L]) for r in rows), f"{path}: the kept tokens are not in the model's input"
    assert not any(contains(r, ids[:L + 1]) for r in rows), f"{path}: more than {L} tokens of the text were kept"


def setup_for(path, family: str, head: str) -> ModelSetup:
    return ModelSetup(str(path), {"name": path.name, "family": family}, head, ["negative", "positive"], L,
                      extra={} if head == "classifier" else {"prompt": PROMPT})


@pytest.mark.parametrize("family,head", [("encoder", "classifier"), ("decoder", "classifier"),
                                         ("decoder", "generative"), ("seq2seq", "seq2seq")])
def test_training_and_evaluate_cut_a_long_text_to_the_same_tokens(tiny_models, family, head):
    setup = setup_for(tiny_models[family], family, head)
    tok = load_tokenizer(tiny_models[family], family)
    ids = tok(LONG, add_special_tokens=False)["input_ids"]
    assert len(ids) == 40 and LONG.split()[0] != SHORT.split()[0]
    df = pd.DataFrame({"text": [LONG, SHORT], "label": [1, 0]})
    row = features(df, tok, setup)[0]["input_ids"]                     # training
    assert_cut([row], ids, f"train features ({head})")
    if head == "classifier":   # special tokens come on top of the L text tokens, not out of them
        specials = [tok.cls_token_id, tok.sep_token_id] if family == "encoder" else []
        assert row == specials[:1] + ids[:L] + specials[1:]
    model = load_base(setup, torch.device("cpu")).eval()
    with embedded_ids(len(tok)) as rows:                                # evaluate (and benchmark, poison)
        predict_probs(model, tok, setup, [LONG, SHORT], progress=False)
    assert_cut(rows, ids, f"predict_probs ({head})")


def test_zero_shot_generation_and_embeddings_of_the_baseline_cut_the_same_tokens(project, tiny_models):
    from peftlab.evaluate.baseline import encoder_baselines, llm_baselines

    for fam, name in (("decoder", "tiny-llama"), ("encoder", "tiny-bert")):
        shutil.copytree(tiny_models[fam], project / "models" / "base" / name)
    bp = build(BaselineParams, {"llm": "tiny-llama", "encoder": "tiny-bert", "max_length": L, "select_rows": 10,
                                "max_new_tokens": 2, "prompts": [{"system": "classify as {labels}", "user": "{text}"}],
                                "prefills": ["this review is"], "calibration": [False], "content_free": ["a"]},
               "baseline")
    val = toy_frame(12, seed=2)
    test = pd.DataFrame({"text": [LONG, SHORT], "label": [1, 0], "label_text": ["positive", "negative"]})
    labels = ["negative", "positive"]
    for fam, methods, run in (("decoder", ["llm_zeroshot"], llm_baselines),
                              ("decoder", ["llm_generate"], llm_baselines),
                              ("encoder", ["encoder_zeroshot"], encoder_baselines)):
        tok = load_tokenizer(tiny_models[fam], fam)
        ids = tok(LONG, add_special_tokens=False)["input_ids"]
        with embedded_ids(len(tok)) as rows:
            out = run(bp, 0, labels, val, val, test, methods)
        assert set(out) == set(methods)
        assert_cut(rows, ids, methods[0])


def test_a_max_length_past_the_model_positions_is_one_clear_line(tiny_models):
    tok = load_tokenizer(tiny_models["encoder"], "encoder")
    tok.model_max_length = 16
    assert len(encode_truncated(tok, [LONG], 14)["input_ids"][0]) == 16
    with pytest.raises(PeftlabError, match=r"max_length = 15 is invalid for this model; allowed: at most 14"):
        encode_truncated(tok, [LONG], 15)


def test_split_metrics_record_the_truncated_share_and_warn_past_5_percent(project, tiny_models, capsys):
    df = toy_frame(200, seed=4)
    df.loc[::10, "text"] = df.loc[::10, "text"] + " " + LONG     # every 10th review is long
    splits = write_splits(project, df)
    tok = load_tokenizer(tiny_models["encoder"], "encoder")
    stats = split_truncation(splits, tiny_models["encoder"], "tiny-bert", 20)
    for s in ("train", "val", "test"):
        n = np.array([len(i) for i in tok(pd.read_parquet(splits / f"{s}.parquet")["text"].tolist(),
                                          add_special_tokens=False)["input_ids"]])
        assert stats[s]["n"] == len(n) and stats[s]["truncated"] == int((n > 20).sum()) > 0
        assert stats[s]["truncated_share"] == round(float((n > 20).mean()), 6) and stats[s]["tokens_max"] == n.max()
    err = capsys.readouterr().err
    assert "warning: " in err and "of the train split's texts" in err and "model.max_length = 20" in err
    assert stats["model"] == "tiny-bert" and stats["max_length"] == 20
    assert stats["max_length_covering_99pct_train"] == 64                 # 40 + up to 10 words, rounded up to 32s
    split_truncation(splits, tiny_models["encoder"], "tiny-bert", 64)
    assert "warning" not in capsys.readouterr().err


def test_the_split_files_do_not_depend_on_the_model(tmp_path):
    """Only metrics/split.json gets the truncation share: the parquet files stay byte for byte the same."""
    from peftlab.config.params import Params
    from peftlab.data.split import run_split

    raw = tmp_path / "raw"
    raw.mkdir()
    toy_frame(120, seed=8).to_parquet(raw / "data.parquet", index=False)
    (raw / "manifest.json").write_text(json.dumps({"labels": ["negative", "positive"]}))
    digests = []
    def with_share(d):
        return {"truncation": truncation_stats({"train": np.array([3, 50])}, 32, "m")}

    for i, extra in enumerate((None, with_share)):
        out = tmp_path / f"splits{i}"
        stats = run_split(Params(), raw, out, tmp_path / f"split{i}.json", extra_metrics=extra)
        digests.append({p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())})
        assert json.loads((tmp_path / f"split{i}.json").read_text()) == stats
    assert digests[0] == digests[1]
    assert "truncation" in json.loads((tmp_path / "split1.json").read_text())
    assert "truncation" not in json.loads((tmp_path / "splits1" / "manifest.json").read_text())["split"]
