"""Benchmark: percentiles, device synchronisation around clock reads, and the stage's JSON on tiny models."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import toy_frame, write_splits
from peftlab.config.params import Params, build
from peftlab.core.paths import RunPaths
from peftlab.evaluate.benchmark import percentiles, run_benchmark, timed
from peftlab.train.run import run_train


def test_percentiles_on_known_samples():
    samples = list(range(1, 101))                        # 1..100 ms
    p = percentiles(samples)
    assert p == pytest.approx({"latency_ms_p50": 50.5, "latency_ms_p90": 90.1, "latency_ms_p99": 99.01})
    assert percentiles([7.0] * 5) == {"latency_ms_p50": 7.0, "latency_ms_p90": 7.0, "latency_ms_p99": 7.0}


@pytest.mark.parametrize("device,hook", [("cuda", "torch.cuda.synchronize"), ("mps", "torch.mps.synchronize"),
                                         ("cpu", None)])
def test_clock_reads_wait_for_the_device(device, hook, monkeypatch):
    # No CUDA or MPS here: record the synchronize hooks themselves and check which one each device type calls.
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("torch.cuda.synchronize"))
    monkeypatch.setattr(torch.mps, "synchronize", lambda *a: calls.append("torch.mps.synchronize"))
    out, seconds = timed(lambda: calls.append("work") or 42, torch.device(device))
    assert out == 42 and seconds >= 0
    assert calls == ([hook, "work", hook] if hook else ["work"])


def test_benchmark_writes_positive_numbers_for_every_model(project, tiny_models):
    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    shutil.copytree(tiny_models["decoder"], project / "models" / "base" / "tiny-decoder")
    write_splits(project, toy_frame(80))
    p = Params()
    p.model = build(type(p.model), {"name": "tiny-encoder", "max_length": 32}, "model")
    p.lora = build(type(p.lora), {"r": 4, "alpha": 8}, "lora")
    p.train = build(type(p.train), {"max_steps": 2, "batch_size": 8, "report_to": ["none"]}, "train")
    run_train(p, RunPaths.for_run("main"))
    p.baseline = build(type(p.baseline), {"llm": "tiny-decoder", "encoder": "tiny-encoder"}, "baseline")
    p.benchmark = build(type(p.benchmark), {"rows": 12, "latency_samples": 6, "warmup": 1, "batch_sizes": [1, 4],
                                            "threads": 1}, "benchmark")

    results = run_benchmark(p, runs=["main"])

    saved = json.loads((project / "metrics" / "benchmark.json").read_text())
    assert set(results) == {"main", "llm_zeroshot"} and set(saved) == {"main", "llm_zeroshot", "environment"}
    for name in ("main", "llm_zeroshot"):
        m = saved[name]
        for key in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "samples_per_s", "tokens_per_s",
                    "peak_mem_mb", "base_mb"):
            assert m[key] > 0, (name, key)
        assert m["latency_ms_p50"] <= m["latency_ms_p90"] <= m["latency_ms_p99"]
        assert m["best_batch_size"] in (1, 4)
    assert saved["main"]["adapter_mb"] > 0 and saved["main"]["trainable_params"] > 0
    assert saved["main"]["train_samples_per_s"] > 0
    assert saved["llm_zeroshot"]["ttft_ms"] > 0 and "ttft_ms" not in saved["main"]
    assert saved["environment"]["device"] == "cpu" and saved["environment"]["threads"] == 1
    assert saved["environment"]["torch"] == torch.__version__
    curve = json.loads((project / "plots" / "benchmark" / "throughput.json").read_text())
    assert sorted((c["model"], c["batch_size"]) for c in curve) == [("llm_zeroshot", 1), ("llm_zeroshot", 4),
                                                                   ("main", 1), ("main", 4)]
    lat = json.loads((project / "plots" / "benchmark" / "latency.json").read_text())
    assert len(lat) == 12 and all(r["latency_ms"] > 0 for r in lat)
    for png in ("throughput.png", "latency.png"):
        assert (project / "plots" / "benchmark" / png).read_bytes()[:4] == b"\x89PNG"
