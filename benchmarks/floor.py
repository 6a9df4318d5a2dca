"""How close each engine path runs to the machine's floor: its achieved useful FLOP/s against the fp32 GEMM
peak at the models' own shapes, measured in one run, on the same machine, with the same (torch default) threads.

    python benchmarks/floor.py [--quick] [--json OUT] [--train-steps 200] [--gen-steps 4]

Needs the splits and both base models (`dvc repro split fetch_model@minilm-l6 fetch_model@smollm2-135m-instruct`);
reads seed, model, lora, train, prompt, sweep, evaluate and baseline from params.yaml. Trains nothing that stays:
the training paths run `run_train` (the train stage) on a seeded subset of train in a temporary folder.

The peak: `torch.matmul` fp32, (tokens x hidden) @ (hidden x out) for each linear layer shape of MiniLM-L6 and
SmolLM2-135M, at tokens = one typical batch (32 reviews x ~28 tokens = 896 rows) and 2048, in both weight layouts
(x @ W and x @ W.T, the one nn.Linear computes); best of several repeats after a warm-up; the peak is the max.
The paths, each through the project's own code, on real rows, timed after a warm-up (inference paths: best
of 3 calls, as the peak is a best of several; training paths: one run):
  a. MiniLM LoRA training       peftlab.train.run.run_train (main run's params), a fixed number of steps
  b. MiniLM scoring             peftlab.modeling.predict.predict_probs, base model with a fresh classifier head
  c. SmolLM2 zero-shot scoring  peftlab.modeling.predict.score_labels, the prompt + prefill the baseline chose
  c'. the same, 3 labels of several tokens each (very negative / neither good nor bad / very positive): the
      seconds ratio c'/c is the cost of multi-token labels (its prompts also name three labels, not two)
  d. SmolLM2 generative LoRA    run_train with the generative sweep run's params, a few steps
  e. SmolLM2 classifier scoring predict_probs, the classifier sweep run's setup, fresh score head
Prints the counting rule, the peak per shape, then per path: rows, tokens, seconds, useful GFLOP/s and its share
of the peak. Useful FLOPs are counted analytically (COUNTING_RULE below), never from a profiler, so padding,
recomputation and work nobody reads lower the share instead of inflating the numerator.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftlab.config.params import Params, apply_sweep, load_params  # noqa: E402
from peftlab.core import paths  # noqa: E402
from peftlab.core.paths import RunPaths  # noqa: E402
from peftlab.data.split import read_labels, read_split, stratified_sample  # noqa: E402
from peftlab.evaluate.baseline import chosen_candidate  # noqa: E402
from peftlab.evaluate.benchmark import timed as timed_call  # noqa: E402
from peftlab.modeling.load import (  # noqa: E402
    ModelSetup,
    choose_device,
    load_base,
    load_causal_lm,
    load_tokenizer,
    lora_config,
    synchronize,
)
from peftlab.modeling.predict import label_token_ids, predict_probs, score_labels, shared_prefix  # noqa: E402
from peftlab.modeling.truncation import encode_truncated  # noqa: E402
from peftlab.train.run import features, model_setup, run_train, steps_per_epoch  # noqa: E402

if TYPE_CHECKING:
    from peft import LoraConfig

# c': three labels whose words take several SmolLM2 tokens each (after the prefill's space)
MULTI_LABELS = ["negative", "mixed", "positive"]
MULTI_WORDS = ["very negative", "neither good nor bad", "very positive"]

COUNTING_RULE = """\
Useful FLOPs (one multiply-add = 2 FLOPs), counted from the parameters and the tokens, never measured:
  tokens    the real (non-pad) tokens the path feeds its model, made by the path's own code (features() for
            training, encode_truncated for classifiers, PromptSpec.render + the tokenizer for the zero-shot
            prompts), so each review is cut exactly as the path cuts it (peftlab.modeling.truncation: its own
            first max_length tokens; special and prompt tokens on top, all counted); the prompt prefix that
            label_logprobs runs once and caches (shared_prefix) counts once; padding counts never
  forward   2 x N_body x tokens              N_body: weights of the nn.Linear layers inside the blocks
                                             (biases, norms, activations, softmax, rotary, embeddings: 0)
          + 4 x layers x heads x head_dim x pairs     QK^T and AV; pairs = (query, key) pairs per sequence:
                                             L^2 (encoder), L(L+1)/2 (causal), S x P + S(S+1)/2 for S new
                                             tokens after P cached ones
          + 2 x N_head x positions read      pooler/classifier/score: 1 per sequence; LM head (V x hidden):
                                             only the positions whose logits are read (zero-shot: the last
                                             one per review; generative training: one per answer token)
  LoRA      adapters merged or absent when scoring (0); in training 2 x r x (in + out) x tokens per target
  training  forward + backward, frozen base: the backward of a frozen weight is its input gradient only
            (= its forward FLOPs); both operands of QK^T and AV carry gradients (2 x forward); LoRA A/B and the
            trained head add their weight gradients (2 x forward). So
            train = 2 x (body + frozen heads + LM head) + 3 x (attention + LoRA + trained head), forward FLOPs
  seconds   wall clock of the path's own call after a warm-up call: scoring = the whole predict_probs /
            score_labels call (tokenising included); training = run_train's train_seconds (trainer.train():
            collation and optimizer steps, plus the fixed end of every run: the Trainer's validation after the
            last step, here on 4 val rows, and one checkpoint save; not counted as useful)"""

BATCH_ROWS = 32 * 28   # a typical batch: 32 reviews x ~28 tokens (train p50 24 + special/padding) = 896 rows


# --- the peak ---------------------------------------------------------------------------------------------

def gemm_gflops(m: int, k: int, n: int, transposed: bool, repeats: int, min_s: float, device: torch.device) -> float:
    """Best GFLOP/s of an fp32 (m x k) @ (k x n) matmul: 2mkn FLOPs per call, each repeat a loop of calls
    lasting at least `min_s` (calibrated on the warm-up), after 3 warm-up calls."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=gen).to(device)
    w = torch.randn(n, k, generator=gen).to(device).t() if transposed else torch.randn(k, n, generator=gen).to(device)
    out = torch.empty(m, n, device=device)
    for _ in range(3):
        torch.matmul(x, w, out=out)
    synchronize(device)
    start = time.perf_counter()
    torch.matmul(x, w, out=out)
    synchronize(device)
    calls = max(1, int(min_s / max(time.perf_counter() - start, 1e-6)))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            torch.matmul(x, w, out=out)
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / calls)
    return 2 * m * k * n / best / 1e9


def model_shapes(model_dir: Path) -> list[tuple[int, int]]:
    """(in, out) of the model's linear layers: attention h -> h (and h -> kv width with grouped-query
    attention), FFN h -> intermediate and back."""
    cfg = json.loads((model_dir / "config.json").read_text())
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    shapes = [(h, h), (h, inter), (inter, h)]
    if cfg.get("num_key_value_heads", cfg["num_attention_heads"]) != cfg["num_attention_heads"]:
        head_dim = cfg.get("head_dim") or h // cfg["num_attention_heads"]
        shapes.insert(1, (h, cfg["num_key_value_heads"] * head_dim))   # SmolLM2: 3 kv heads x 64 = 192
    return shapes


def measure_peak(models: dict[str, Path], token_counts: list[int], repeats: int, min_s: float,
                 device: torch.device) -> list[dict]:
    rows = []
    for name, model_dir in models.items():
        for k, n in model_shapes(model_dir):
            for m in token_counts:
                rows.append({"model": name, "m": m, "k": k, "n": n,
                             "gflops_x_w": gemm_gflops(m, k, n, False, repeats, min_s, device),
                             "gflops_x_wt": gemm_gflops(m, k, n, True, repeats, min_s, device)})
    return rows


# --- counting ---------------------------------------------------------------------------------------------

@dataclass
class Arch:
    """The weights a forward pass multiplies, by where they run (counted from the loaded model)."""
    layers: int
    attn_width: int          # query heads x head_dim: the width of QK^T and AV
    body: int = 0            # nn.Linear weights inside the blocks: every token
    head_frozen: int = 0     # pooler etc.: once per sequence
    head_trained: int = 0    # the new classifier head (LoRA's modules_to_save): once per sequence
    lm_head: int = 0         # output embeddings (V x hidden): once per position whose logits are read
    lora: int = 0            # LoRA A + B parameters: every token (training only)


def model_arch(model: torch.nn.Module, lora_cfg: LoraConfig | None = None) -> Arch:
    """Arch of a base model; with a LoRA config, the adapter's parameters and the trained head too."""
    cfg = model.config
    width = cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    arch = Arch(layers=cfg.num_hidden_layers, attn_width=width)
    targets = set(lora_cfg.target_modules) if lora_cfg is not None else set()
    trained = set(lora_cfg.modules_to_save or ()) if lora_cfg is not None else set()
    try:
        lm = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        lm = None
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        w = module.in_features * module.out_features
        parts = name.split(".")
        if module is lm:
            arch.lm_head += w
        elif any(p.isdigit() for p in parts):          # inside a numbered block (encoder.layer.3, layers.17)
            arch.body += w
            if parts[-1] in targets:
                arch.lora += lora_cfg.r * (module.in_features + module.out_features)
        elif parts[-1] in trained:
            arch.head_trained += w
        else:
            arch.head_frozen += w
    return arch


@dataclass
class Work:
    """What a path must compute, summed over its rows."""
    rows: int = 0
    tokens: int = 0          # positions run through every block
    pairs: int = 0           # attention (query, key) pairs
    sequences: int = 0       # pooled positions a classifier head reads
    lm_positions: int = 0    # positions whose LM-head logits are read

    def add_sequence(self, length: int, causal: bool, past: int = 0) -> None:
        self.tokens += length
        self.pairs += length * past + (length * (length + 1) // 2 if causal else length * length)


def useful_flops(arch: Arch, work: Work, train: bool) -> float:
    """The counting rule (COUNTING_RULE) for one path."""
    body = 2 * arch.body * work.tokens
    attention = 4 * arch.layers * arch.attn_width * work.pairs
    frozen_heads = 2 * arch.head_frozen * work.sequences + 2 * arch.lm_head * work.lm_positions
    trained = 2 * arch.head_trained * work.sequences
    if not train:
        return float(body + attention + frozen_heads + trained)
    lora = 2 * arch.lora * work.tokens
    return float(2 * (body + frozen_heads) + 3 * (attention + lora + trained))


def classifier_work(tok, texts: list[str], max_length: int, causal: bool) -> Work:
    """Tokens of classifier_probs: encode_truncated, as the path cuts them; one pooled position per row."""
    work = Work(rows=len(texts), sequences=len(texts))
    for ids in encode_truncated(tok, texts, max_length)["input_ids"]:
        work.add_sequence(len(ids), causal)
    return work


def zeroshot_work(tok, prompts: list[str], forms: list[str]) -> Work:
    """Tokens of label_logprobs: the shared prefix once, then each prompt's own suffix after it; one read
    position per prompt, plus the label tokens teacher-forced when a label word has several tokens."""
    enc = tok(list(prompts), add_special_tokens=False)["input_ids"]
    p = len(shared_prefix(enc))
    label_ids = label_token_ids(tok, forms)
    work = Work(rows=len(enc))
    work.add_sequence(p, causal=True)                   # the cached prefix: once for the whole call
    for ids in enc:
        s = len(ids) - p
        work.add_sequence(s, causal=True, past=p)
        work.lm_positions += 1                          # the last prompt position predicts every label's 1st token
        for lab in label_ids:
            if len(lab) > 1:                            # its other tokens: m - 1 more positions, and their logits
                work.add_sequence(len(lab) - 1, causal=True, past=p + s)
                work.lm_positions += len(lab) - 1
    return work


def training_work(ds, head: str, causal: bool) -> Work:
    """Tokens of a training run from its own features(): every row once (one epoch); the classifier head reads
    one position per row, the generative loss one logit position per answer token (labels != -100)."""
    work = Work(rows=len(ds))
    for ids in ds["input_ids"]:
        work.add_sequence(len(ids), causal)
    if head == "classifier":
        work.sequences = len(ds)
    else:
        work.lm_positions = sum(sum(1 for t in labels if t != -100) for labels in ds["labels"])
    return work


# --- the paths --------------------------------------------------------------------------------------------

# Inference paths: best of this many timed calls, as the peak is a best of --repeats (a single call on a shared
# 2-core VM varied by ~10% from run to run); the training paths run once (200 steps already average over steps).
PATH_REPEATS = 3


def timed(fn: Callable[[], object], warmup: Callable[[], object], device: torch.device) -> float:
    """Best seconds of PATH_REPEATS calls of fn after one warm-up call, clocked as the benchmark stage clocks
    (device work synchronised)."""
    warmup()
    return min(timed_call(fn, device)[1] for _ in range(PATH_REPEATS))


def training_params(params: Params, device: str) -> Params:
    """The run's params for a timed run of exactly one epoch of the given subset (every row once: the counted
    work), no min_steps raise, no trackers. The Trainer still validates after the last step inside
    trainer.train() (also with step-based evaluation), so validation shrinks to 4 val rows (2 per class) and
    eval_steps goes past the end so that is the only one."""
    tp = dataclasses.replace(params.train, epochs=1.0, max_steps=-1, min_steps=0, max_train_samples=None,
                             max_eval_samples=4, eval_steps=10**9, early_stopping_patience=None, report_to=["none"])
    return dataclasses.replace(params, train=tp, model=dataclasses.replace(params.model, device=device))


def train_path(params: Params, labels: list[str], steps: int, warm_steps: int, tmp: Path,
               name: str) -> tuple[Work, float, Arch]:
    """run_train on steps x batch seeded train rows (after a warm-up run of warm_steps steps on other rows)."""
    batch = params.train.batch_size
    train = read_split(paths.SPLITS_DIR, "train").sample(frac=1.0, random_state=params.seed)
    timed_rows, warm_rows = train.iloc[:steps * batch], train.iloc[steps * batch:(steps + warm_steps) * batch]
    setup = model_setup(params, labels)
    seconds = 0.0
    for tag, rows in (("warmup", warm_rows), ("timed", timed_rows)):
        run = tmp / f"{name}-{tag}"
        splits = run / "splits"
        splits.mkdir(parents=True)
        rows.to_parquet(splits / "train.parquet", index=False)
        read_split(paths.SPLITS_DIR, "val").to_parquet(splits / "val.parquet", index=False)
        (splits / "manifest.json").write_text((paths.SPLITS_DIR / "manifest.json").read_text())
        summary = run_train(params, RunPaths(splits, run / "adapter", run / "ckpt", run / "live", run / "train.json"))
        seconds = summary["train_seconds"]
        if tag == "timed":
            tok = load_tokenizer(setup.base_dir, setup.family, setup.trust_remote_code)
            work = training_work(features(read_split(splits, "train"), tok, setup), setup.head,
                                 causal=setup.family == "decoder")
    lora = lora_config(setup, params.lora.r, params.lora.alpha, params.lora.dropout, params.lora.target_modules)
    arch = model_arch(load_base(setup, torch.device("cpu")), lora)
    return work, seconds, arch


def classifier_path(setup: ModelSetup, texts: list[str], batch_size: int, warm_rows: int,
                    device: torch.device) -> tuple[Work, float, Arch]:
    """predict_probs on a base model with a fresh classifier head (speed only)."""
    if setup.head != "classifier":
        raise SystemExit(f"error: head {setup.head!r} here; allowed: classifier")
    model = load_base(setup, device).to(device).eval()
    tok = load_tokenizer(setup.base_dir, setup.family, setup.trust_remote_code)
    seconds = timed(lambda: predict_probs(model, tok, setup, texts, batch_size, device, progress=False),
                    lambda: predict_probs(model, tok, setup, texts[:warm_rows], batch_size, device, progress=False),
                    device)
    work = classifier_work(tok, texts, setup.max_length, causal=setup.family == "decoder")
    return work, seconds, model_arch(model)


def zeroshot_path(params: Params, labels: list[str], texts: list[str], warm_rows: int,
                  device: torch.device, label_words: dict | None = None) -> tuple[Work, float, Arch]:
    """score_labels as the baseline stage calls it, with the prompt and prefill it chose on val (before a
    baseline run: the first of each), and `label_words` instead of the prompt's own for the multi-token case."""
    bp = params.baseline
    model, tok = load_causal_lm(paths.base_model(bp.llm), device)
    tok.padding_side = "left"
    spec, _ = chosen_candidate(bp)
    if label_words is not None:
        spec = dataclasses.replace(spec, label_words=label_words)

    def score(rows: list[str]):
        return score_labels(model, tok, spec, rows, labels, batch_size=bp.batch_size, device=device,
                            progress=False, max_text_tokens=bp.max_length)

    seconds = timed(lambda: score(texts), lambda: score(texts[:warm_rows]), device)
    forms, _ = spec.surface_forms(labels)
    work = zeroshot_work(tok, spec.render(tok, texts, labels, max_text_tokens=bp.max_length), forms)
    return work, seconds, model_arch(model)


def sweep_run(params: Params, head: str, wanted: str | None) -> tuple[str, Params]:
    """The sweep run named `wanted`, else the first one whose model is a decoder with `head`."""
    names = [wanted] if wanted else list(params.sweep)
    for name in names:
        run = apply_sweep(params, name)
        setup = model_setup(run, ["negative", "positive"])   # labels only fill the setup here
        if setup.family == "decoder" and setup.head == head:
            return name, run
    raise SystemExit(f"error: no sweep run of a decoder with head {head!r} among {', '.join(names)}; allowed: a "
                     f"run under sweep: in params.yaml")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shrink every size (a smoke run)")
    ap.add_argument("--json", type=Path, default=None, help="also write the table here")
    ap.add_argument("--device", default="cpu", help="cpu (default) | cuda | mps: the peak and every path")
    # 200 steps (6,400 rows): the Trainer's length grouping sorts within megabatches of min(rows // (4 x batch), 50)
    # batches, so 30 steps (960 rows) pad 19% more tokens than they hold, 200 steps 2.7%, as the stage's 10,201 rows
    # (2.8%); a shorter run would charge the path with padding the stage does not do
    ap.add_argument("--train-steps", type=int, default=200, help="a: optimiser steps at train.batch_size")
    # d: as long as the stage's own run (the Trainer's fixed cost, final validation and save, weighs on a short run
    # as it does in the stage: 4 steps charged it ~30% of the time)
    ap.add_argument("--gen-steps", type=int, default=None,
                    help="d: optimiser steps at train.batch_size (default: one epoch of the generative run's "
                         "max_train_samples, as the stage trains: 13 for the default)")
    ap.add_argument("--encoder-rows", type=int, default=512, help="b: stratified test reviews")
    ap.add_argument("--llm-rows", type=int, default=128, help="c, e: stratified test reviews")
    ap.add_argument("--repeats", type=int, default=5, help="peak: timed repeats per shape (best counts)")
    ap.add_argument("--classifier-run", default=None, help="e: sweep run (default: the first classifier decoder)")
    ap.add_argument("--generative-run", default=None, help="d: sweep run (default: the first generative one)")
    args = ap.parse_args()

    params = load_params(["seed", "model", "lora", "train", "prompt", "sweep", "evaluate", "baseline"])
    device = choose_device(args.device)
    batch = params.train.batch_size
    # --quick: batches of 8 rows, 2 steps (a) and 1 step (d) after a 1-step warm-up; 32 reviews (b), 16 (c, e);
    # 2 peak repeats of >= 0.02 s each
    if args.quick:
        args.train_steps, args.gen_steps, args.encoder_rows, args.llm_rows, args.repeats = 2, 1, 32, 16, 2
        batch = 8
    warm_rows, warm_steps, min_s = (4, 1, 0.02) if args.quick else (16, 2, 0.1)
    labels = read_labels(paths.SPLITS_DIR)
    test = read_split(paths.SPLITS_DIR, "test")
    encoder_texts = stratified_sample(test, args.encoder_rows, params.seed)["text"].tolist()
    llm_texts = stratified_sample(test, args.llm_rows, params.seed)["text"].tolist()
    main_run = dataclasses.replace(params, train=dataclasses.replace(params.train, batch_size=batch))
    gen_name, gen_run = sweep_run(main_run, "generative", args.generative_run)
    if args.gen_steps is None:
        args.gen_steps = steps_per_epoch(gen_run.train.max_train_samples or len(read_split(paths.SPLITS_DIR, "train")),
                                         batch)
    cls_name, cls_run = sweep_run(params, "classifier", args.classifier_run)
    if model_setup(params, labels).family != "encoder":
        raise SystemExit(f"error: model.name = {params.model.name!r} is not an encoder; paths a and b time the "
                         f"main run's encoder classifier")

    print(COUNTING_RULE)
    print(f"\ndevice {device.type}, torch {torch.__version__}, threads {torch.get_num_threads()} (torch default)")
    models = {params.model.name: paths.base_model(params.model.name), params.baseline.llm:
              paths.base_model(params.baseline.llm)}
    peak_rows = measure_peak(models, [BATCH_ROWS, 2048], args.repeats, min_s, device)
    peak = max(max(r["gflops_x_w"], r["gflops_x_wt"]) for r in peak_rows)
    print(f"\nfp32 GEMM peak (torch.matmul, best of {args.repeats}): (m x k) @ (k x n), GFLOP/s")
    print(f"  {'model':24s} {'m':>5s} {'k':>5s} {'n':>5s} {'x @ W':>8s} {'x @ W.T':>8s}")
    for r in peak_rows:
        print(f"  {r['model']:24s} {r['m']:5d} {r['k']:5d} {r['n']:5d} {r['gflops_x_w']:8.1f} {r['gflops_x_wt']:8.1f}")
    print(f"  peak (max): {peak:.1f} GFLOP/s")

    results = []

    def record(path: str, train: bool, measured: tuple[Work, float, Arch]) -> None:
        work, seconds, arch = measured
        flops = useful_flops(arch, work, train)
        results.append({"path": path, "rows": work.rows, "tokens": work.tokens, "seconds": seconds,
                        "useful_gflop": flops / 1e9, "useful_gflops": flops / seconds / 1e9,
                        "share_of_peak": flops / seconds / 1e9 / peak})
        print(f"  done: {path} ({seconds:.1f} s)", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="peftlab-floor-") as tmp:
        tmp = Path(tmp)
        record(f"a. {params.model.name} LoRA training (run_train, batch {batch}, {args.train_steps} steps)", True,
               train_path(training_params(main_run, device.type), labels, args.train_steps, warm_steps, tmp, "main"))
        record(f"b. {params.model.name} scoring (predict_probs, batch {params.evaluate.batch_size})", False,
               classifier_path(model_setup(params, labels), encoder_texts, params.evaluate.batch_size, warm_rows,
                               device))
        record(f"c. {params.baseline.llm} zero-shot (score_labels, batch {params.baseline.batch_size})", False,
               zeroshot_path(params, labels, llm_texts, warm_rows, device))
        # three labels of several tokens each (scored from the prompt's cache), against c's single-token labels
        multi = dict(zip(MULTI_LABELS, MULTI_WORDS))
        record(f"c'. {params.baseline.llm} zero-shot, 3 multi-token labels", False,
               zeroshot_path(params, MULTI_LABELS, llm_texts, warm_rows, device, label_words=multi))
        record(f"d. {gen_name} LoRA training (run_train, batch {batch}, {args.gen_steps} steps)", True,
               train_path(training_params(gen_run, device.type), labels, args.gen_steps, warm_steps, tmp,
                          "generative"))
        record(f"e. {cls_name} scoring (predict_probs, batch {params.evaluate.batch_size})", False,
               classifier_path(model_setup(cls_run, labels), llm_texts, params.evaluate.batch_size, warm_rows,
                               device))

    width = max(len(r["path"]) for r in results)
    print(f"\n{'path':{width}s} {'rows':>5s} {'tokens':>7s} {'seconds':>8s} {'GFLOP':>8s} {'GFLOP/s':>8s} "
          f"{'share':>6s}")
    for r in results:
        print(f"{r['path']:{width}s} {r['rows']:5d} {r['tokens']:7d} {r['seconds']:8.2f} {r['useful_gflop']:8.1f} "
              f"{r['useful_gflops']:8.2f} {r['share_of_peak']:6.1%}")
    single, multi = (next(r for r in results if r["path"].startswith(c)) for c in ("c.", "c'."))
    ratio = multi["seconds"] / single["seconds"]
    print(f"multi-token labels: c' takes {ratio:.2f}x the seconds of c on the same {single['rows']} reviews "
          f"({', '.join(MULTI_WORDS)} against the prompt's one-token words)")
    print(f"share: of the {peak:.1f} GFLOP/s fp32 GEMM peak above (same machine, same run, "
          f"{torch.get_num_threads()} threads)")
    if args.json:
        out = {"counting_rule": COUNTING_RULE, "device": device.type, "threads": torch.get_num_threads(),
               "multi_token_cost_ratio": ratio,
               "quick": args.quick, "peak_gflops": peak, "peak_shapes": peak_rows, "paths": results}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
