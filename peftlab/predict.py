"""Fast batched scoring, shared by evaluate, baseline and benchmark, and the `predict` command.

Texts are sorted by length so each batch pads only to its own longest member (dynamic padding), run under
`torch.inference_mode`, and put back in the caller's order.

    python -m peftlab.predict "a gorgeous, witty film" "a tedious mess" [--adapter models/adapters/main]
"""
from __future__ import annotations

import argparse
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from peftlab.errors import PeftlabError, run_cli


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Index batches of similar length, longest first (so a memory problem shows up at once)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def classifier_probs(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 64,
                     device: torch.device | None = None, progress: bool = True) -> np.ndarray:
    """Class probabilities (n, k) from a sequence-classification model."""
    device = device or next(model.parameters()).device
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    ids = enc["input_ids"]
    out = None
    batches = list(length_sorted_batches([len(x) for x in ids], batch_size))
    with torch.inference_mode():
        for idx in tqdm(batches, desc="scoring", unit="batch", disable=not progress):
            feats = [{k: enc[k][i] for k in enc.keys()} for i in idx]
            batch = tokenizer.pad(feats, return_tensors="pt").to(device)
            logits = model(**batch).logits.float()
            probs = torch.softmax(logits, dim=-1).cpu().numpy()
            if out is None:
                out = np.zeros((len(texts), probs.shape[1]), dtype=np.float32)
            out[idx] = probs
    if out is None:
        raise PeftlabError("nothing to score: no texts given")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m peftlab.predict", description="Label texts with a trained adapter.")
    ap.add_argument("texts", nargs="+", help="texts to classify")
    ap.add_argument("--adapter", default="models/adapters/main", help="adapter folder (default: %(default)s)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    args = ap.parse_args()
    from peftlab.models import choose_device, load_trained

    device = choose_device(args.device)
    model, tok, setup = load_trained(args.adapter, device)
    probs = classifier_probs(model, tok, args.texts, setup.max_length, device=device, progress=False)
    for text, p in zip(args.texts, probs):
        i = int(np.argmax(p))
        print(f"{setup.labels[i]}\t{p[i]:.3f}\t{text}")


if __name__ == "__main__":
    run_cli(main)
