"""Speed and memory of trained models, measured the way serving engineers do.

Each model is measured in its own process (`python -m peftlab.evaluate.benchmark`), so its peak resident memory is
its own and not the high-water mark of every model before it. Device work is synchronised before each clock read.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from peftlab.config.params import Params
from peftlab.core import paths
from peftlab.core.errors import PeftlabError, run_cli
from peftlab.core.io import read_json, write_json
from peftlab.data.split import read_labels, read_split
from peftlab.modeling.load import choose_device, load_causal_lm, load_trained, synchronize

PERCENTILES = (50, 90, 99)


def percentiles(samples_ms: list[float], qs=PERCENTILES) -> dict[str, float]:
    """Latency percentiles (linear interpolation, numpy's default) keyed latency_ms_p<q>."""
    arr = np.asarray(samples_ms, dtype=float)
    return {f"latency_ms_p{q}": float(np.percentile(arr, q)) for q in qs}


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """Run fn and return (result, seconds), with queued device work finished before both clock reads."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux reports KiB


def dir_mb(path: str | Path) -> float:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def environment(device: torch.device) -> dict:
    libs = {name: md.version(name) for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes")
            if _installed(name)}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"device": device.type, "device_name": name, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), **libs}


def _installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def measure(name: str, predict: Callable[[list[str], int], object], count_tokens: Callable[[list[str]], int],
            texts: list[str], device: torch.device, latency_samples: int, warmup: int,
            batch_sizes: list[int], first_token: Callable[[str], object] | None = None) -> dict:
    """Latency at batch 1, throughput per batch size, and (for generative models) time to first token."""
    for t in texts[:warmup]:
        predict([t], 1)
    lat = [timed(lambda t=t: predict([t], 1), device)[1] * 1000 for t in texts[:latency_samples]]
    out: dict = {**percentiles(lat), "latency_ms_mean": float(np.mean(lat))}
    if first_token is not None:
        ttft = [timed(lambda t=t: first_token(t), device)[1] * 1000 for t in texts[:latency_samples]]
        out["ttft_ms"] = float(np.percentile(ttft, 50))
    n_tokens = count_tokens(texts)
    curve = []
    for bs in batch_sizes:
        _, sec = timed(lambda bs=bs: predict(texts, bs), device)
        curve.append({"model": name, "batch_size": bs, "samples_per_s": len(texts) / sec,
                      "tokens_per_s": n_tokens / sec})
    best = max(curve, key=lambda c: c["samples_per_s"])
    out.update(samples_per_s=best["samples_per_s"], tokens_per_s=best["tokens_per_s"],
               best_batch_size=best["batch_size"], throughput=curve, latency_samples_ms=lat)
    return out


def bench_one(spec: dict) -> dict:
    """Measure one model described by `spec` (kind: adapter | zeroshot) in this process."""
    from peftlab.modeling.predict import PromptSpec, predict_probs, score_labels
    from peftlab.modeling.truncation import encode_truncated

    device = choose_device(spec["device"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    texts = read_split(spec["splits"], "test")["text"].tolist()[: spec["rows"]]
    labels = read_labels(spec["splits"])
    if spec["kind"] == "adapter":
        model, tok, setup = load_trained(spec["path"], device, merge=spec["merge"])
        prompt = PromptSpec.from_dict(setup.extra["prompt"]) if setup.head == "generative" else None
        max_length = setup.max_length
        sizes = {"base_mb": dir_mb(setup.base_dir), "adapter_mb": dir_mb(spec["path"])}

        def predict(batch: list[str], bs: int):
            return predict_probs(model, tok, setup, batch, bs, device, progress=False)
    else:
        model, tok = load_causal_lm(spec["path"], device)
        prompt = PromptSpec.from_dict(spec["prompt"])
        max_length = spec.get("max_length")   # baseline.max_length: the zero-shot baseline's cut
        sizes = {"base_mb": dir_mb(spec["path"]), "adapter_mb": 0.0}

        def predict(batch: list[str], bs: int):
            return score_labels(model, tok, prompt, batch, labels, batch_size=bs, device=device, progress=False,
                                max_text_tokens=max_length)

    first_token = None
    if prompt is None:
        def count(ts: list[str]) -> int:
            return sum(len(x) for x in encode_truncated(tok, ts, max_length)["input_ids"])
    else:
        def count(ts: list[str]) -> int:
            return sum(len(x) for x in tok(prompt.render(tok, ts, labels, max_text_tokens=max_length),
                                           add_special_tokens=False)["input_ids"])

        def first_token(text: str):
            enc = tok(prompt.render(tok, [text], labels, max_text_tokens=max_length)[0], add_special_tokens=False,
                      return_tensors="pt").to(device)
            with torch.inference_mode():
                return model.generate(**enc, max_new_tokens=1, do_sample=False, pad_token_id=tok.pad_token_id)

    result = measure(spec["name"], predict, count, texts, device, spec["latency_samples"], spec["warmup"],
                     spec["batch_sizes"], first_token)
    return {**result, **sizes, "peak_mem_mb": peak_memory_mb(device), "environment": environment(device)}


def run_benchmark(params: Params, runs: list[str], out_metrics: Path = paths.BENCHMARK_METRICS,
                  plots: Path = paths.BENCHMARK_PLOTS) -> dict:
    """benchmark stage: every trained run and the zero-shot LLM, each measured in a fresh process."""
    from peftlab.evaluate.baseline import chosen_candidate
    from peftlab.report.plots import plot_latency, plot_throughput

    bp = params.benchmark
    common = {"device": bp.device, "threads": bp.threads, "rows": bp.rows, "latency_samples": bp.latency_samples,
              "warmup": bp.warmup, "batch_sizes": list(bp.batch_sizes), "splits": str(paths.SPLITS_DIR),
              "merge": params.evaluate.merge_lora}
    specs = []
    for run in runs:
        specs.append({**common, "name": run, "kind": "adapter", "path": str(paths.adapter(run))})
    if bp.zeroshot:
        prompt, _ = chosen_candidate(params.baseline)
        specs.append({**common, "name": "llm_zeroshot", "kind": "zeroshot", "prompt": asdict(prompt),
                      "path": str(paths.base_model(params.baseline.llm)),
                      "max_length": params.baseline.max_length})
    results = {}
    for spec in specs:
        print(f"benchmark {spec['name']}: measuring in a fresh process ...", flush=True)
        proc = subprocess.run([sys.executable, "-m", "peftlab.evaluate.benchmark", json.dumps(spec, default=str)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise PeftlabError(f"benchmark of {spec['name']} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        train_metrics = paths.train_metrics(spec["name"])
        if train_metrics.exists():
            t = read_json(train_metrics)
            r.update(trainable_params=t["trainable_params"], train_seconds=t["train_seconds"],
                     train_samples_per_s=t["train_samples_per_s"])
        results[spec["name"]] = r
        print(f"benchmark {spec['name']:20s} p50 {r['latency_ms_p50']:7.1f} ms  p99 {r['latency_ms_p99']:7.1f} ms  "
              f"{r['samples_per_s']:7.1f} samples/s (batch {r['best_batch_size']})  peak {r['peak_mem_mb']:.0f} MB")
    curves = [c for r in results.values() for c in r.pop("throughput")]
    latencies = {name: r.pop("latency_samples_ms") for name, r in results.items()}
    env = next(iter(results.values()))["environment"] if results else {}
    for r in results.values():
        r.pop("environment")
    write_json(out_metrics, {**results, "environment": env})
    write_json(plots / "throughput.json", curves)
    write_json(plots / "latency.json", [{"model": m, "latency_ms": v} for m, vs in latencies.items() for v in vs])
    plot_throughput(curves, plots / "throughput.png")
    plot_latency(latencies, plots / "latency.png")
    return results


def main() -> None:
    """Entry point of the per-model measuring process: one JSON spec in, one JSON result line out."""
    print(json.dumps(bench_one(json.loads(sys.argv[1]))))


if __name__ == "__main__":
    run_cli(main)
