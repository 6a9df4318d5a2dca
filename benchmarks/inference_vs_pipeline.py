"""Our inference path against a plain `transformers.pipeline("text-classification")`: same merged model, same
test reviews, same machine, one run.

Ours (peftlab.predict.predict_probs, used by evaluate, baseline and benchmark): tokenise once, length-sorted
batches, dynamic padding, inference_mode. The plain pipeline is called the way its documentation shows,
`clf(texts)` (one review per forward pass); a batched pipeline call (`batch_size=`) is printed too, for context.

    python benchmarks/inference_vs_pipeline.py [--adapter models/adapters/main] [--rows 0] [--repeats 3]

Needs a trained adapter and the splits (`dvc repro evaluate`). Prints seconds, reviews/s and accuracy per side,
the agreement of their predictions, and the ratio plain/ours.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftlab.data.split import read_split  # noqa: E402
from peftlab.modeling.load import load_trained  # noqa: E402
from peftlab.modeling.predict import predict_probs  # noqa: E402


def best_of(repeats: int, fn) -> tuple[object, float]:
    """The result and the fastest of `repeats` wall-clock runs (after one warm-up call on a few rows)."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", default="models/adapters/main")
    ap.add_argument("--rows", type=int, default=0, help="test rows (0: all)")
    ap.add_argument("--batch-size", type=int, default=64, help="ours, and the batched pipeline row")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from transformers import pipeline

    device = torch.device("cpu")
    model, tok, setup = load_trained(args.adapter, device, merge=True)
    if setup.head != "classifier":
        sys.exit(f"error: {args.adapter} has head {setup.head!r}; allowed: a classifier adapter "
                 f"(text-classification pipeline)")
    test = read_split("data/splits", "test")
    if args.rows:
        test = test.head(args.rows)
    texts, y = test["text"].tolist(), test["label"].to_numpy()
    label_index = {l: i for i, l in enumerate(setup.labels)}
    clf = pipeline("text-classification", model=model, tokenizer=tok, device=device)
    kw = {"truncation": True, "max_length": setup.max_length}

    def ours():
        return predict_probs(model, tok, setup, texts, args.batch_size, device, progress=False).argmax(1)

    def plain():
        return np.array([label_index[r["label"]] for r in clf(texts, **kw)])

    def plain_batched():
        return np.array([label_index[r["label"]] for r in clf(texts, batch_size=args.batch_size, **kw)])

    predict_probs(model, tok, setup, texts[:16], args.batch_size, device, progress=False)  # warm-up
    clf(texts[:16], **kw)
    print(f"{len(texts)} test reviews, {setup.info['name']} merged, torch threads {torch.get_num_threads()}, "
          f"best of {args.repeats}")
    rows = {}
    for name, fn in (("ours (length-sorted, dynamic padding)", ours), ("pipeline, plain call", plain),
                     (f"pipeline, batch_size={args.batch_size}", plain_batched)):
        pred, sec = best_of(args.repeats, fn)
        rows[name] = (pred, sec)
        print(f"  {name:40s} {sec:7.2f} s  {len(texts) / sec:8.1f} reviews/s  accuracy {np.mean(pred == y):.4f}")
    ours_pred, ours_sec = rows["ours (length-sorted, dynamic padding)"]
    plain_pred, plain_sec = rows["pipeline, plain call"]
    batched_sec = rows[f"pipeline, batch_size={args.batch_size}"][1]
    print(f"agreement ours vs pipeline: {np.mean(ours_pred == plain_pred):.4f}")
    print(f"speed-up over the plain pipeline: {plain_sec / ours_sec:.2f}x "
          f"(over the batched pipeline: {batched_sec / ours_sec:.2f}x)")


if __name__ == "__main__":
    main()
