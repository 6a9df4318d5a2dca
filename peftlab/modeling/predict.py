"""Fast batched scoring, shared by evaluate, baseline and benchmark, and the `predict` command.

Texts are sorted by length so each batch pads only to its own longest member (dynamic padding), run under
`torch.inference_mode`, and put back in the caller's order. Three ways to turn a model into class scores:
classifier logits; label-word log-probabilities after a prompt (decoders, one forward pass per batch when
every label word is one token); and free generation parsed for a label word (unparsable answers are -1).

    python -m peftlab.modeling.predict "a gorgeous, witty film" "a tedious mess" [--adapter models/adapters/main]
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from peftlab.core.errors import PeftlabError, run_cli
from peftlab.modeling.truncation import encode_truncated, truncate_texts


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Index batches of similar length, longest first (so a memory problem shows up at once)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def padded_batches(tokenizer, enc, batch_size: int, device: torch.device, desc: str,
                   progress: bool = True) -> Iterator[tuple[np.ndarray, dict]]:
    """(row indices, tensors on device) for tokenised texts: length-sorted batches, each padded only to its
    own longest row (dynamic padding)."""
    batches = list(length_sorted_batches([len(x) for x in enc["input_ids"]], batch_size))
    for idx in tqdm(batches, desc=desc, unit="batch", disable=not progress):
        yield idx, tokenizer.pad([{k: enc[k][i] for k in enc.keys()} for i in idx], return_tensors="pt").to(device)


def rows_from_batches(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int,
                      device: torch.device | None, desc: str, progress: bool,
                      per_batch: Callable[[dict], torch.Tensor]) -> np.ndarray:
    """(n, d) float32 array with row i = `per_batch`'s output for text i: the one truncate, length-sort, pad,
    run and scatter-back loop that classifier scores and encoder embeddings share."""
    device = device or next(model.parameters()).device
    enc = encode_truncated(tokenizer, texts, max_length)
    out = None
    with torch.inference_mode():
        for idx, batch in padded_batches(tokenizer, enc, batch_size, device, desc, progress):
            rows = per_batch(batch).float().cpu().numpy()
            if out is None:
                out = np.zeros((len(texts), rows.shape[1]), dtype=np.float32)
            out[idx] = rows
    if out is None:
        raise PeftlabError(f"nothing to score ({desc}): no texts given")
    return out


def classifier_logits(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 64,
                      device: torch.device | None = None, progress: bool = True) -> np.ndarray:
    """Class logits (n, k) from a sequence-classification model (what in-training validation's loss needs)."""
    return rows_from_batches(model, tokenizer, texts, max_length, batch_size, device, "scoring", progress,
                             lambda batch: model(**batch).logits.float())


def classifier_probs(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 64,
                     device: torch.device | None = None, progress: bool = True) -> np.ndarray:
    """Class probabilities (n, k) from a sequence-classification model."""
    return rows_from_batches(model, tokenizer, texts, max_length, batch_size, device, "scoring", progress,
                             lambda batch: torch.softmax(model(**batch).logits.float(), dim=-1))


def left_pad(seqs: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Left-padded ids, mask and position ids, so every sequence ends at the last column.

    Position ids come from the mask's cumulative sum: with left padding a decoder would otherwise give the
    first real token the position of the padding before it, and scores would depend on the batch.
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[row, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": pos.to(device)}


def chat_prompt(tokenizer, system: str | None, user: str, prefill: str = "",
                demos: Sequence[tuple[str, str]] = ()) -> str:
    """The prompt string: the tokenizer's chat template when it has one, plain text otherwise."""
    messages = [{"role": "system", "content": system}] if system else []
    for u, a in demos:
        messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": user})
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # jinja2's TemplateError: templates raise on roles they do not know
            if not system or "system" not in str(e).lower():
                raise
            # Gemma-style templates have no system role: the system text opens the first user turn instead.
            first = next(i for i, m in enumerate(messages) if m["role"] == "user")
            folded = [dict(m) for m in messages[1:]]
            folded[first - 1]["content"] = f"{system}\n\n{folded[first - 1]['content']}"
            text = tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)
    else:
        text = "".join(f"{m['content']}\n\n" for m in messages)
    return text + prefill


def label_token_ids(tokenizer, words: Sequence[str]) -> list[list[int]]:
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
    for w, i in zip(words, ids):
        if not i:
            raise PeftlabError(f"label word {w!r} is empty after tokenization; allowed: a non-empty word")
    return ids


def shared_prefix(seqs: Sequence[Sequence[int]]) -> list[int]:
    """The longest token prefix all sequences share, leaving every sequence at least one token of its own."""
    if not seqs:
        return []
    prefix = list(seqs[0])
    for s in seqs[1:]:
        n = 0
        for a, b in zip(prefix, s):
            if a != b:
                break
            n += 1
        prefix = prefix[:n]
    return prefix[: max(0, min(len(s) for s in seqs) - 1)]


def prefix_cache(model, prefix: list[int], device: torch.device):
    """The key/value cache of the prompts' shared first tokens (run once), or None when there are none."""
    if not prefix:
        return None
    return model(input_ids=torch.tensor([prefix], device=device), use_cache=True, logits_to_keep=1).past_key_values


def repeated_cache(cache, n: int):
    """A copy of `cache` for a batch of n rows (the model extends the cache it is given, so each batch gets its own)."""
    import copy

    past = copy.deepcopy(cache)
    past.batch_repeat_interleave(n)
    return past


def label_logprobs(model, tokenizer, prompts: Sequence[str], label_ids: list[list[int]], batch_size: int = 32,
                   device: torch.device | None = None, progress: bool = True, reuse_prefix: bool = True) -> np.ndarray:
    """(n, k) log-probability of each label's word(s) right after each prompt, summed over its tokens.

    Prompts built from one template share their first tokens (chat markers, system prompt: ~40% of a
    SmolLM2 prompt here). With `reuse_prefix` those are run once and their key/value cache is reused by
    every batch; suffixes are left-padded after the prefix, so padding sits between the two and the mask and
    position ids skip it. transformers has no batched shared-prefix scoring, hence this function.
    """
    import copy

    device = device or next(model.parameters()).device
    enc = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.zeros((len(enc), len(label_ids)), dtype=np.float64)
    prefix = shared_prefix(enc) if reuse_prefix else []
    p = len(prefix)
    batches = list(length_sorted_batches([len(x) for x in enc], batch_size))
    with torch.inference_mode():
        cache = prefix_cache(model, prefix, device)

        def forward(seqs: list[list[int]], keep: int):
            batch = left_pad([s[p:] for s in seqs], pad, device)
            if cache is not None:
                past = repeated_cache(cache, len(seqs))
                ones = torch.ones((len(seqs), p), dtype=batch["attention_mask"].dtype, device=device)
                batch["attention_mask"] = torch.cat([ones, batch["attention_mask"]], dim=1)
                batch["position_ids"] = batch["position_ids"] + p
                batch["past_key_values"] = past
            return batch, model(**batch, use_cache=True, logits_to_keep=keep)

        # Multi-token labels: each prompt runs once; its cache, repeated once per label, then takes the labels'
        # tokens but the last, one pass per continuation length (so no label is padded: the tokens computed per
        # prompt are its own plus the sum over labels of len - 1, not k full prompt passes).
        firsts = [ids[0] for ids in label_ids]
        by_length: dict[int, list[int]] = {}
        for j, ids in enumerate(label_ids):
            if len(ids) > 1:
                by_length.setdefault(len(ids) - 1, []).append(j)
        for idx in tqdm(batches, desc="label scoring", unit="batch", disable=not progress):
            batch, res = forward([enc[i] for i in idx], 1)
            lp = torch.log_softmax(res.logits[:, -1].float(), dim=-1)
            out[idx] = lp[:, firsts].cpu().numpy()
            b, groups = len(idx), list(by_length.items())
            for g, (m, js) in enumerate(groups):
                past = res.past_key_values if g == len(groups) - 1 else copy.deepcopy(res.past_key_values)
                past.batch_repeat_interleave(len(js))          # rows: prompt 0's labels js, prompt 1's, ...
                feed = torch.tensor([label_ids[j][:-1] for j in js], device=device).repeat(b, 1)
                mask = batch["attention_mask"].repeat_interleave(len(js), 0)
                mask = torch.cat([mask, torch.ones((b * len(js), m), dtype=mask.dtype, device=device)], dim=1)
                pos = batch["position_ids"][:, -1:].repeat_interleave(len(js), 0) + 1 + torch.arange(m, device=device)
                logits = model(input_ids=feed, attention_mask=mask, position_ids=pos, past_key_values=past).logits
                lp = torch.log_softmax(logits.float(), dim=-1).view(b, len(js), m, -1)
                target = torch.tensor([label_ids[j][1:] for j in js], device=lp.device).expand(b, len(js), m)
                out[np.ix_(idx, js)] += lp.gather(-1, target.unsqueeze(-1)).squeeze(-1).sum(-1).cpu().numpy()
    return out


def calibrate(logprobs: np.ndarray, content_free: np.ndarray) -> np.ndarray:
    """Contextual calibration (Zhao et al. 2021): subtract the label bias the model shows on content-free
    inputs ("N/A", "", "[MASK]"), averaged, from each normalised score."""
    from scipy.special import logsumexp

    norm = logprobs - logsumexp(logprobs, axis=1, keepdims=True)
    bias = (content_free - logsumexp(content_free, axis=1, keepdims=True)).mean(axis=0)
    return norm - bias


def softmax_rows(scores: np.ndarray) -> np.ndarray:
    from scipy.special import softmax

    return softmax(np.asarray(scores, dtype=np.float64), axis=1)


@dataclass
class PromptSpec:
    """How a text becomes a prompt and each label an answer: one definition for zero-shot scoring,
    generative fine-tuning and its evaluation, so their numbers compare point for point."""
    system: str | None
    user: str
    prefill: str = ""
    label_words: dict | None = None   # label -> word or list of words; null: the label name

    @classmethod
    def from_dict(cls, d: dict) -> "PromptSpec":
        return cls(d.get("system"), d["user"], d.get("prefill") or "", d.get("label_words"))

    def words(self, labels: Sequence[str]) -> list[list[str]]:
        words = self.label_words or {}
        return [[words.get(l, l)] if isinstance(words.get(l, l), str) else list(words[l]) for l in labels]

    def surface_forms(self, labels: Sequence[str], prefill: str | None = None) -> tuple[list[str], list[int]]:
        """The strings scored per label: after a prefill they follow a space; at the start of the answer the
        model may capitalise, so both forms count (their probabilities are summed per label)."""
        prefill = self.prefill if prefill is None else prefill
        forms, owner = [], []
        for i, ws in enumerate(self.words(labels)):
            for w in ws:
                w = w.strip()
                variants = [" " + w] if prefill.strip() else sorted({w, w.capitalize()})
                forms += variants
                owner += [i] * len(variants)
        return forms, owner

    def answer(self, labels: Sequence[str], label: int) -> str:
        """The assistant's answer for `label` as it follows the prefill (the first surface form)."""
        forms, owner = self.surface_forms(labels)
        return forms[owner.index(label)]

    def render(self, tok, texts: Sequence[str], labels: Sequence[str], demos: Sequence[tuple[str, int]] = (),
               prefill: str | None = None, max_text_tokens: int | None = None) -> list[str]:
        joined = " or ".join(labels)
        system = self.system.format(labels=joined) if self.system else None
        prefill = self.prefill if prefill is None else prefill
        """The prompt strings; with max_text_tokens each review (demonstrations included) is cut by the one rule
        of peftlab.truncation: its own first max_text_tokens tokens, the template on top."""
        demo_texts = truncate_texts(tok, [t for t, _ in demos], max_text_tokens)
        shots = [(self.user.format(text=t, labels=joined), (prefill + self.answer(labels, y)).strip() + ".")
                 for t, (_, y) in zip(demo_texts, demos)]
        texts = truncate_texts(tok, texts, max_text_tokens)
        return [chat_prompt(tok, system, self.user.format(text=t, labels=joined), prefill, shots) for t in texts]


def score_labels(model, tok, spec: PromptSpec, texts: Sequence[str], labels: Sequence[str],
                 demos: Sequence[tuple[str, int]] = (), batch_size: int = 32, device: torch.device | None = None,
                 progress: bool = True, max_text_tokens: int | None = None) -> np.ndarray:
    """(n, k) label log-scores of a decoder: each label's surface forms after the prompt, summed in probability."""
    from scipy.special import logsumexp

    forms, owner = spec.surface_forms(labels)
    prompts = spec.render(tok, texts, labels, demos, max_text_tokens=max_text_tokens)
    lp = label_logprobs(model, tok, prompts, label_token_ids(tok, forms), batch_size, device, progress)
    owner = np.asarray(owner)
    return np.stack([logsumexp(lp[:, owner == i], axis=1) for i in range(len(labels))], axis=1)


def seq2seq_scores(model, tok, spec: PromptSpec, texts: Sequence[str], labels: Sequence[str], max_length: int,
                   batch_size: int = 32, device: torch.device | None = None, progress: bool = True) -> np.ndarray:
    """(n, k) label log-scores of an encoder-decoder: log p(label word + eos | input), the encoder run once
    per batch and reused for every label."""
    from scipy.special import logsumexp

    device = device or next(model.parameters()).device
    inputs = spec.render(tok, texts, labels, prefill="", max_text_tokens=max_length)
    enc = tok(inputs)
    forms, owner = spec.surface_forms(labels, prefill="")
    form_ids = [tok(f)["input_ids"] for f in forms]
    out = np.zeros((len(inputs), len(forms)))
    with torch.inference_mode():
        for idx, batch in padded_batches(tok, enc, batch_size, device, "seq2seq scoring", progress):
            encoded = model.get_encoder()(**batch)
            for j, ids in enumerate(form_ids):
                target = torch.tensor([ids] * len(idx), device=device)
                logits = model(encoder_outputs=encoded, attention_mask=batch["attention_mask"], labels=target).logits
                lp = torch.log_softmax(logits.float(), -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
                out[idx, j] = lp.sum(-1).cpu().numpy()
    owner = np.asarray(owner)
    return np.stack([logsumexp(out[:, owner == i], axis=1) for i in range(len(labels))], axis=1)


def predict_probs(model, tok, setup, texts: Sequence[str], batch_size: int = 64, device: torch.device | None = None,
                  progress: bool = True) -> np.ndarray:
    """Class probabilities (n, k) from a trained model of any head: the one inference path of the project."""
    if setup.head == "classifier":
        return classifier_probs(model, tok, texts, setup.max_length, batch_size, device, progress)
    spec = PromptSpec.from_dict(setup.extra["prompt"])
    if setup.head == "generative":
        scores = score_labels(model, tok, spec, texts, setup.labels, batch_size=batch_size, device=device,
                              progress=progress, max_text_tokens=setup.max_length)
    else:
        scores = seq2seq_scores(model, tok, spec, texts, setup.labels, setup.max_length, batch_size, device, progress)
    return softmax_rows(scores)


def generate_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 10, batch_size: int = 32,
                     device: torch.device | None = None, progress: bool = True,
                     stop_at: Sequence[str] | None = None, reuse_prefix: bool = True) -> list[str]:
    """Greedy free generation, batched; returns only the new text of each answer.

    `stop_at` (label words): a row stops once its answer holds a whole label word that `parse_label` can no
    longer change (`answer_settled`), and the batch once every row has stopped or ended; the parsed label is
    the same as after `max_new_tokens` tokens (tested), at a fraction of the steps (a one-word answer ends after
    2-3 of the 10 tokens).

    `reuse_prefix`: as in `label_logprobs`, the prompts' shared first tokens run once and each batch starts from
    their key/value cache; the rows are laid out prefix, padding, own tokens (generate() takes the positions
    from the mask's running count, so padding in the middle shifts nothing). Same answers as without (tested)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    device = device or next(model.parameters()).device
    enc = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = [""] * len(enc)
    batches = list(length_sorted_batches([len(x) for x in enc], batch_size))
    prefix = shared_prefix(enc) if reuse_prefix else []
    p = len(prefix)

    class Settled(StoppingCriteria):
        """Per-row stop (transformers pads a stopped row from then on): the answer's label is settled."""

        def __init__(self, width: int):
            self.width = width

        def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
            texts = tokenizer.batch_decode(input_ids[:, self.width:], skip_special_tokens=True)
            return torch.tensor([answer_settled(t, stop_at) for t in texts], device=input_ids.device)

    with torch.inference_mode():
        cache = prefix_cache(model, prefix, device)
        for idx in tqdm(batches, desc="generating", unit="batch", disable=not progress):
            batch = left_pad([enc[i][p:] for i in idx], pad, device)
            batch.pop("position_ids")  # generate() derives them from the mask
            if cache is not None:
                b = len(idx)
                batch["input_ids"] = torch.cat([torch.tensor([prefix], device=device).expand(b, p),
                                                batch["input_ids"]], dim=1)
                batch["attention_mask"] = torch.cat([torch.ones((b, p), dtype=batch["attention_mask"].dtype,
                                                                device=device), batch["attention_mask"]], dim=1)
                batch["past_key_values"] = repeated_cache(cache, b)
            width = batch["input_ids"].shape[1]
            stop = StoppingCriteriaList([Settled(width)]) if stop_at else None
            new = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                 stopping_criteria=stop)
            for row, i in enumerate(idx):
                answers[i] = tokenizer.decode(new[row, width:], skip_special_tokens=True)
    return answers


def _label_matches(answer: str, label_words: Sequence[str]) -> list[tuple[int, int, int]]:
    """(start, end, label index) of the first whole-word match of each label word in `answer`."""
    low = answer.lower()
    out = []
    for i, w in enumerate(label_words):
        m = re.search(rf"\b{re.escape(w.strip().lower())}\b", low)
        if m:
            out.append((m.start(), m.end(), i))
    return out


def answer_settled(answer: str, label_words: Sequence[str]) -> bool:
    """True when more generated text cannot change `parse_label(answer)`: its first label match ends before the
    answer does (a match touching the end could still grow into another word: "positive" -> "positively"), and
    no label word could still be completed by new text from a start before it (multi-word label words)."""
    found = _label_matches(answer, label_words)
    if not found:
        return False
    start, end, _ = min(found, key=lambda f: (f[0], f[2]))
    if end >= len(answer):
        return False
    low = answer.lower()
    for w in (w.strip().lower() for w in label_words):
        if any(low.endswith(w[:k]) and len(low) - k < start for k in range(1, len(w))):
            return False
    return True


def parse_label(answer: str, label_words: Sequence[str]) -> int:
    """Index of the label word that appears first in `answer` (case-insensitive, whole word), or -1."""
    found = _label_matches(answer, label_words)
    return min(found, key=lambda f: (f[0], f[2]))[2] if found else -1


def mean_pooled_embeddings(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 64,
                           device: torch.device | None = None, progress: bool = True) -> np.ndarray:
    """L2-normalised mean of the last hidden states over real tokens (sentence-transformers pooling)."""
    def pooled(batch: dict) -> torch.Tensor:
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)

    return rows_from_batches(model, tokenizer, texts, max_length, batch_size, device, "embedding", progress, pooled)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m peftlab.modeling.predict",
                                 description="Label texts with a trained adapter.")
    ap.add_argument("texts", nargs="+", help="texts to classify")
    ap.add_argument("--adapter", default="models/adapters/main", help="adapter folder (default: %(default)s)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    args = ap.parse_args()
    from peftlab.modeling.load import choose_device, load_trained

    device = choose_device(args.device)
    model, tok, setup = load_trained(args.adapter, device)
    probs = predict_probs(model, tok, setup, args.texts, device=device, progress=False)
    for text, p in zip(args.texts, probs):
        i = int(np.argmax(p))
        print(f"{setup.labels[i]}\t{p[i]:.3f}\t{text}")


if __name__ == "__main__":
    run_cli(main)
