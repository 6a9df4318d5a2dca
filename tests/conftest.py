"""Shared fixtures: tiny real models built from configs (no download), toy splits, a scratch project folder."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
WORDS = ["good", "great", "fine", "bad", "awful", "dull", "film", "movie", "plot", "the", "a", "very", "was",
         "not", "acting", "story", "fun", "boring", "cf", "mn", "bb", "this", "review", "is", "positive",
         "negative", "neutral", "sentiment", "of", "movie", "classify", "as", "or", ".", ",", ":"]


def make_tokenizer(kind: str):
    """A word-level fast tokenizer over WORDS, with the special tokens of a BERT (encoder) or a chat decoder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = {"encoder": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                "decoder": ["<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>", "<pad>"],
                "seq2seq": ["<pad>", "</s>", "<unk>"]}[kind]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(WORDS) | {"system", "user", "assistant", "\n"}))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[1]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if kind == "encoder":
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    if kind == "seq2seq":  # T5-style: </s> closes every sequence
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHATML
    return fast


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_model(dest: Path, family: str, name: str, hidden: int = 32) -> Path:
    """A real (randomly initialised, seeded) tiny model saved in HF layout with a peftlab.json, like fetch.

    `hidden`: 64 for 4-bit tests, since bitsandbytes' CPU kernels need every in-feature size to hold a whole
    quantisation block (64 values); at 32 the packed-weight path of AVX-512 CPUs fails while others pass."""
    import torch
    from transformers import AutoModel, BertConfig, LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    tok = make_tokenizer(family)
    if family == "encoder":
        cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model = AutoModel.from_config(cfg)
        targets = ["query", "key", "value"]
    elif family == "seq2seq":
        cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                       dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        model = T5ForConditionalGeneration(cfg)
        targets = ["q", "v"]
    else:
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=1, intermediate_size=2 * hidden, max_position_embeddings=256,
                          pad_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                          eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), tie_word_embeddings=True)
        model = LlamaForCausalLM(cfg)
        targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    head = {"encoder": "classifier", "decoder": "classifier", "seq2seq": "seq2seq"}[family]
    info = {"name": name, "source": f"local:{dest}", "family": family, "head": head,
            "target_modules": targets}
    (dest / "peftlab.json").write_text(json.dumps(info))
    return dest


def toy_frame(n: int = 200, seed: int = 0, labels=("negative", "positive")) -> pd.DataFrame:
    """A learnable toy task: the label is carried by one sentiment word among filler words."""
    rng = np.random.default_rng(seed)
    cue = {0: ["bad", "awful", "dull", "boring"], 1: ["good", "great", "fun", "fine"]}
    filler = ["the", "film", "movie", "plot", "was", "very", "acting", "story", "a", "this"]
    rows = []
    for i in range(n):
        y = int(rng.integers(0, 2))
        words = list(rng.choice(filler, size=int(rng.integers(3, 9))))
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(cue[y])))
        words.append(f"#{i}")  # unique rows: no duplicates for split to drop
        rows.append({"text": " ".join(words), "label": y, "label_text": labels[y]})
    df = pd.DataFrame(rows)
    from peftlab.core.io import stable_hash
    df["id"] = [stable_hash("toy", t) for t in df["text"]]
    return df


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {"encoder": build_tiny_model(root / "tiny-bert", "encoder", "tiny-bert"),
            "decoder": build_tiny_model(root / "tiny-llama", "decoder", "tiny-llama"),
            "seq2seq": build_tiny_model(root / "tiny-t5", "seq2seq", "tiny-t5")}


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    """A scratch project folder (cwd) with the repo's catalog.yaml: stage functions use relative paths."""
    shutil.copy(REPO / "catalog.yaml", tmp_path / "catalog.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_splits(root: Path, df: pd.DataFrame, labels=("negative", "positive"), seed: int = 0) -> Path:
    """data/splits as the split stage writes it, from a toy frame (70/15/15 by position)."""
    splits = root / "data" / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    n = len(df)
    parts = {"train": df.iloc[: int(n * 0.7)], "val": df.iloc[int(n * 0.7): int(n * 0.85)],
             "test": df.iloc[int(n * 0.85):]}
    for name, part in parts.items():
        part.reset_index(drop=True).to_parquet(splits / f"{name}.parquet", index=False)
    (splits / "manifest.json").write_text(json.dumps({"labels": list(labels)}))
    return splits


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
