"""Zero-shot label scoring against free generation: same model, same prompt, same test reviews.

Scoring reads the label words' log-probabilities after the prompt in one forward pass; generation decodes up
to `max_new_tokens` greedily and parses the answer for a label word (unparsed answers count as wrong). Both
run batched and one review at a time (the way most fine-tuning write-ups run their baseline).

    python benchmarks/zeroshot_scoring_vs_generation.py [--rows 200] [--batch-size 32]

Needs the fetched model and splits (`dvc repro split fetch_model@smollm2-135m-instruct`). Prints a table and
the ratios generation/scoring for time and scoring-generation for accuracy.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftlab.config.params import load_params  # noqa: E402
from peftlab.data.split import read_labels, read_split, stratified_sample  # noqa: E402
from peftlab.evaluate.baseline import chosen_candidate  # noqa: E402
from peftlab.modeling.load import load_causal_lm  # noqa: E402
from peftlab.modeling.predict import calibrate, generate_answers, parse_label, score_labels  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200, help="stratified test rows (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    args = ap.parse_args()

    params = load_params(["seed", "baseline"])
    bp = params.baseline
    spec, chosen = chosen_candidate(bp)
    labels = read_labels("data/splits")
    test = stratified_sample(read_split("data/splits", "test"), args.rows, params.seed)
    texts, y = test["text"].tolist(), test["label"].to_numpy()
    device = torch.device("cpu")
    torch.set_num_threads(torch.get_num_threads())
    model, tok = load_causal_lm(Path("models/base") / bp.llm, device)
    tok.padding_side = "left"
    max_new = args.max_new_tokens or bp.max_new_tokens
    words = [w[0] for w in spec.words(labels)]

    def scoring(bs: int):
        s = score_labels(model, tok, spec, texts, labels, batch_size=bs, device=device, progress=False)
        if chosen["calibration"]:
            cf = score_labels(model, tok, spec, list(bp.content_free), labels, batch_size=bs, device=device,
                              progress=False)
            s = calibrate(s, cf)
        return s.argmax(1)

    def generation(bs: int):
        prompts = spec.render(tok, texts, labels, prefill=spec.prefill if bp.generate_prefill else "")
        answers = generate_answers(model, tok, prompts, max_new, bs, device, progress=False)
        return np.array([parse_label(a, words) for a in answers])

    rows = []
    for mode, fn in (("scoring", scoring), ("generation", generation)):
        for bs in (args.batch_size, 1):
            start = time.perf_counter()
            pred = fn(bs)
            sec = time.perf_counter() - start
            rows.append({"mode": mode, "batch": bs, "seconds": sec, "ms_per_review": 1000 * sec / len(texts),
                         "accuracy": float(np.mean(pred == y)), "unparsed": int(np.sum(pred < 0))})
    print(f"\n{bp.llm} on {len(texts)} test reviews, prompt {chosen['prompt']}, prefill {spec.prefill!r}, "
          f"calibration {chosen['calibration']}, max_new_tokens {max_new}, {torch.get_num_threads()} threads")
    print(f"{'mode':<11}{'batch':>6}{'seconds':>10}{'ms/review':>11}{'accuracy':>10}{'unparsed':>10}")
    for r in rows:
        print(f"{r['mode']:<11}{r['batch']:>6}{r['seconds']:>10.1f}{r['ms_per_review']:>11.1f}"
              f"{r['accuracy']:>10.3f}{r['unparsed']:>10}")
    by = {(r["mode"], r["batch"]): r for r in rows}
    for bs in (args.batch_size, 1):
        s, g = by[("scoring", bs)], by[("generation", bs)]
        print(f"batch {bs:>2}: generation/scoring time ratio {g['seconds'] / s['seconds']:.2f}x, "
              f"accuracy scoring - generation {s['accuracy'] - g['accuracy']:+.3f}")
    print(f"one-at-a-time scoring / batched scoring time ratio "
          f"{by[('scoring', 1)]['seconds'] / by[('scoring', args.batch_size)]['seconds']:.2f}x")


if __name__ == "__main__":
    main()
