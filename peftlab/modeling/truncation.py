"""One truncation rule for every path that feeds a review to a model, and the token lengths of the splits.

The rule: a review keeps the first `max_length` tokens of its own text (the model's tokenizer on the text
alone, without special tokens), cut from the right. Special tokens ([CLS] ... [SEP], </s>) and the prompt
around the text (chat markers, system prompt, instruction, prefill, demonstrations) come on top and are not
counted. Why this one: `model.max_length` then means the same for an encoder classifier, a decoder classifier,
a generative or seq2seq run and the zero-shot LLM, whatever the prompt's length, so one number chosen from the
data's token lengths (and the truncated share the split stage records in metrics/split.json) holds for all of
them. Classifier paths cut the token ids directly; prompt paths insert the decoded kept tokens into the
template (an untruncated text is inserted as it is).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from peftlab.config.params import ModelParams
from peftlab.core import paths
from peftlab.core.errors import PeftlabError

WARN_SHARE = 0.05       # more than this share of a split truncated: a warning
COVER = 0.99            # the default max_length covers this share of the train texts...
MULTIPLE = 32           # ... rounded up to a multiple of this


def text_token_ids(tok, texts: Sequence[str]) -> list[list[int]]:
    """Each text's own token ids (no special tokens), untruncated."""
    texts = list(texts)
    return tok(texts, add_special_tokens=False)["input_ids"] if texts else []


def n_special(tok) -> int:
    """Special tokens the tokenizer adds around one text ([CLS] and [SEP]: 2; T5's </s>: 1; most decoders: 0)."""
    return len(tok("", add_special_tokens=True)["input_ids"]) - len(tok("", add_special_tokens=False)["input_ids"])


def encode_truncated(tok, texts: Sequence[str], max_length: int):
    """Model inputs (input_ids, attention_mask, ...) of a classifier or encoder: each text's first max_length
    tokens, the special tokens added on top."""
    extra = n_special(tok)
    limit = getattr(tok, "model_max_length", None)
    if isinstance(limit, int) and limit < 1_000_000 and max_length + extra > limit:
        raise PeftlabError(f"max_length = {max_length} is invalid for this model; allowed: at most "
                           f"{limit - extra} (its {limit} positions less {extra} special tokens)")
    side = tok.truncation_side
    tok.truncation_side = "right"
    try:
        return tok(list(texts), truncation=True, max_length=max_length + extra)
    finally:
        tok.truncation_side = side


def truncate_texts(tok, texts: Sequence[str], max_length: int | None) -> list[str]:
    """Texts as the prompt paths insert them: unchanged within max_length tokens, else their first max_length
    tokens decoded."""
    texts = list(texts)
    if not max_length or not texts:
        return texts
    ids = text_token_ids(tok, texts)
    return [t if len(i) <= max_length else tok.decode(i[:max_length]) for t, i in zip(texts, ids)]


def readable_words(tok, texts: Sequence[str], max_length: int, reserve: int = 0) -> list[int]:
    """For each text, how many of its leading whitespace-separated words lie wholly within the first
    `max_length - reserve` tokens the truncation rule keeps: a poisoning trigger inserted among those words
    (taking at most `reserve` tokens itself) is read by the model; one inserted later would be cut off."""
    import re

    if not getattr(tok, "is_fast", False):
        raise PeftlabError(f"{type(tok).__name__} is not a fast tokenizer; allowed: a fast (Rust) tokenizer, "
                           f"whose character offsets place words within the truncated tokens")
    texts, keep = list(texts), max(0, max_length - reserve)
    if not texts:
        return []
    enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for text, offsets in zip(texts, enc["offset_mapping"]):
        ends = [m.end() for m in re.finditer(r"\S+", text)]
        if len(offsets) <= keep:
            out.append(len(ends))
            continue
        last = offsets[keep - 1][1] if keep else 0      # the last kept token's end, in characters
        out.append(sum(e <= last for e in ends))
    return out


def covering_length(lengths: np.ndarray, cover: float = COVER, multiple: int = MULTIPLE) -> int:
    """The smallest multiple of `multiple` that covers `cover` of the texts: how the default max_length is chosen."""
    if len(lengths) == 0:
        return multiple
    need = float(np.quantile(lengths, cover, method="higher"))
    return max(multiple, int(math.ceil(need / multiple)) * multiple)


def split_token_lengths(splits_dir: str | Path, tok, splits: Sequence[str] = ("train", "val", "test"),
                        batch_rows: int = 50_000) -> dict[str, np.ndarray]:
    """Token count of every text of each split (the text alone, no special tokens), read chunk by chunk."""
    import pyarrow.parquet as pq

    out = {}
    for s in splits:
        parts = []
        for batch in pq.ParquetFile(Path(splits_dir) / f"{s}.parquet").iter_batches(columns=["text"],
                                                                                     batch_size=batch_rows):
            parts.append(np.fromiter((len(i) for i in text_token_ids(tok, batch.column("text").to_pylist())),
                                     dtype=np.int64))
        out[s] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return out


def truncation_stats(lengths: dict[str, np.ndarray], max_length: int, model: str) -> dict:
    """metrics/split.json's `truncation`: per split, how many texts `model.max_length` cuts, and token quantiles."""
    out: dict = {"model": model, "max_length": int(max_length),
                 "rule": "text tokens beyond max_length cut from the right; special and prompt tokens not counted"}
    for s, n in lengths.items():
        cut = int((n > max_length).sum())
        out[s] = {"n": int(len(n)), "truncated": cut, "truncated_share": round(cut / len(n), 6) if len(n) else 0.0,
                  **({f"tokens_p{q}": round(float(np.percentile(n, q)), 2) for q in (50, 90, 99)} if len(n) else {}),
                  "tokens_max": int(n.max()) if len(n) else 0}
    if "train" in lengths:
        out[f"max_length_covering_{round(COVER * 100)}pct_train"] = covering_length(lengths["train"])
    return out


def warn_truncation(stats: dict) -> list[str]:
    """One warning line per split where more than WARN_SHARE of the texts are truncated (printed to stderr)."""
    lines = []
    suggest = next((v for k, v in stats.items() if k.startswith("max_length_covering_")), None)
    for s, v in stats.items():
        if isinstance(v, dict) and v.get("truncated_share", 0) > WARN_SHARE:
            lines.append(f"warning: {v['truncated_share']:.1%} of the {s} split's texts ({v['truncated']} of "
                         f"{v['n']}) are longer than model.max_length = {stats['max_length']} tokens of "
                         f"{stats['model']} and are truncated on every path"
                         + (f"; model.max_length: {suggest} covers {COVER:.0%} of train" if suggest else ""))
    for line in lines:
        print(line, file=sys.stderr)
    return lines


def split_truncation(splits_dir: str | Path, model_dir: str | Path, model: str, max_length: int,
                     trust_remote_code: bool = False) -> dict:
    """The split stage's `truncation` entry for metrics/split.json (warnings printed): the token lengths of
    each split under `model`'s tokenizer, at `model.max_length`. Only this metric depends on the model; the
    split files never do."""
    from peftlab.modeling.load import base_info, check_remote_code, load_tokenizer

    info = base_info(model_dir)
    check_remote_code(info, trust_remote_code)
    tok = load_tokenizer(model_dir, info.get("family", "encoder"), trust_remote_code)
    stats = truncation_stats(split_token_lengths(splits_dir, tok), max_length, model)
    warn_truncation(stats)
    return stats


def split_truncation_metrics(model: ModelParams, splits_dir: str | Path) -> dict:
    """metrics/split.json's `truncation` entry for the split stage; empty, with a warning, when the stage is run
    by hand before models/base/<model.name> is fetched (`dvc repro` always fetches it first)."""
    base = paths.base_model(model.name)
    if not (base / "peftlab.json").is_file():
        print(f"warning: {base} is not fetched, so metrics/split.json has no truncation share; "
              f"run `dvc repro fetch_model@{model.name}` first", file=sys.stderr)
        return {}
    return {"truncation": split_truncation(splits_dir, base, model.name, model.max_length, model.trust_remote_code)}
