"""Every model family and head on tiny real models: training lowers the loss, adapters round-trip, merged
weights agree, QLoRA trains on the CPU, and two processes train one adapter."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, build_tiny_model, toy_frame, write_splits
from peftlab.config.params import Params, apply_sweep, build
from peftlab.core.errors import PeftlabError
from peftlab.core.paths import RunPaths
from peftlab.modeling.load import ModelSetup, load_base, load_trained
from peftlab.modeling.predict import predict_probs
from peftlab.train.run import features, run_train

CASES = [("encoder", "classifier"), ("decoder", "classifier"), ("decoder", "generative"), ("seq2seq", "seq2seq")]


def params_for(name: str, head: str, **train) -> Params:
    p = Params()
    p.model = build(type(p.model), {"name": name, "head": head, "max_length": 32}, "model")
    p.lora = build(type(p.lora), {"r": 4, "alpha": 8, "dropout": 0.0}, "lora")
    p.train = build(type(p.train), {"max_steps": 5, "lr": 0.02, "batch_size": 8, "logging_steps": 1,
                                    "warmup_ratio": 0.0, "save_steps": 100, **train}, "train")
    p.prompt = build(type(p.prompt), {"system": "classify as {labels}", "prefill": "this review is"}, "prompt")
    return p


def fixed_batch_loss(model, tok, setup: ModelSetup, df) -> float:
    from peftlab.train.run import collator

    feats = features(df, tok, setup)
    batch = collator(setup, tok)([feats[i] for i in range(len(feats))])
    batch = {k: v for k, v in batch.items()}
    if "label" in batch:
        batch["labels"] = batch.pop("label")
    with torch.no_grad():
        return float(model(**batch).loss)


@pytest.mark.parametrize("family,head", CASES)
def test_five_steps_lower_the_loss_and_the_adapter_round_trips(project, tiny_models, family, head):
    from peft import PeftModel
    from transformers import set_seed

    name = f"tiny-{family}"
    shutil.copytree(tiny_models[family], project / "models" / "base" / name)
    df = toy_frame(160, seed=5)
    write_splits(project, df)
    params = params_for(name, head)
    summary = run_train(params, RunPaths.for_run("main"))
    assert summary["head"] == head and summary["steps"] == 5

    adapter = project / "models" / "adapters" / "main"
    probe = df.iloc[:16]
    model, tok, setup = load_trained(adapter, torch.device("cpu"), merge=False)
    set_seed(params.seed)                       # the same seeded head initialisation the run started from
    base = load_base(setup, torch.device("cpu")).eval()
    assert fixed_batch_loss(model, tok, setup, probe) < fixed_batch_loss(base, tok, setup, probe)

    texts = df["text"].tolist()[:40]
    unmerged = predict_probs(model, tok, setup, texts, batch_size=7, progress=False)
    model.save_pretrained(project / "resaved")
    reloaded = PeftModel.from_pretrained(load_base(setup, torch.device("cpu")), project / "resaved").eval()
    np.testing.assert_array_equal(predict_probs(reloaded, tok, setup, texts, batch_size=7, progress=False), unmerged)
    merged, _, _ = load_trained(adapter, torch.device("cpu"), merge=True)
    np.testing.assert_allclose(predict_probs(merged, tok, setup, texts, batch_size=7, progress=False), unmerged,
                               atol=1e-4)


def test_generative_loss_covers_the_answer_tokens_only(tiny_models):
    from peftlab.modeling.load import load_tokenizer

    setup = ModelSetup(str(tiny_models["decoder"]), {"name": "t", "family": "decoder"}, "generative",
                       ["negative", "positive"], 32, extra={"prompt": {"system": "s", "user": "{text}",
                                                                        "prefill": "this review is"}})
    tok = load_tokenizer(tiny_models["decoder"], "decoder")
    row = features(toy_frame(3), tok, setup)[0]
    answer = [t for t, l in zip(row["input_ids"], row["labels"]) if l != -100]
    assert tok.convert_ids_to_tokens(answer) == [toy_frame(3)["label_text"][0], "<|im_end|>"]
    assert row["labels"][: len(row["labels"]) - 2] == [-100] * (len(row["labels"]) - 2)


def test_qlora_4bit_step_on_cpu(project):
    build_tiny_model(project / "models" / "base" / "tiny-decoder", "decoder", "tiny-decoder", hidden=64)
    write_splits(project, toy_frame(80, seed=6))
    p = params_for("tiny-decoder", "classifier")
    p.model.quantization = "4bit"
    summary = run_train(p, RunPaths.for_run("main"))
    assert summary["steps"] == 5 and np.isfinite(summary["train_loss"])
    model, tok, setup = load_trained(project / "models" / "adapters" / "main", torch.device("cpu"))
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())     # really 4-bit
    probs = predict_probs(model, tok, setup, ["good film", "bad plot"], progress=False)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_paged_optimizer_needs_cuda(project, tiny_models):
    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    write_splits(project, toy_frame(40))
    p = params_for("tiny-encoder", "classifier", optim="paged_adamw_8bit")
    with pytest.raises(PeftlabError, match="needs a CUDA GPU"):
        run_train(p, RunPaths.for_run("main"))


def test_wrong_head_for_family_is_a_clear_error(project, tiny_models):
    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    write_splits(project, toy_frame(40))
    with pytest.raises(PeftlabError, match="model.head = 'generative' is not available for the encoder family"):
        run_train(params_for("tiny-encoder", "generative"), RunPaths.for_run("main"))


def test_early_stopping_keeps_the_best_checkpoint(project, tiny_models):
    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    write_splits(project, toy_frame(200, seed=7))
    p = params_for("tiny-encoder", "classifier", max_steps=200, eval_steps=5, early_stopping_patience=2,
                   lr=0.05)
    summary = run_train(p, RunPaths.for_run("main"))
    assert summary["steps"] < 200                                  # stopped early
    assert not list((project / "checkpoints" / "main").glob("checkpoint-*"))


def test_sweep_overrides_apply_per_run():
    p = Params()
    p.sweep = {"gen": {"model": {"name": "smollm2-135m-instruct", "head": "generative"}, "lora": {"r": 16}}}
    q = apply_sweep(p, "gen")
    assert (q.model.name, q.model.head, q.lora.r, q.lora.alpha) == ("smollm2-135m-instruct", "generative", 16, 16)
    assert apply_sweep(p, "main") is p
    with pytest.raises(PeftlabError, match="sweep.gen.lora.r = 0"):
        p.sweep["gen"]["lora"]["r"] = 0
        apply_sweep(p, "gen")
    with pytest.raises(PeftlabError, match="'nope' is not under sweep"):
        apply_sweep(p, "nope")


@pytest.mark.slow
def test_two_process_accelerate_run_gives_a_usable_adapter(project, tiny_models):
    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    write_splits(project, toy_frame(400, seed=8))
    (project / "params.yaml").write_text(yaml.safe_dump({
        "model": {"name": "tiny-encoder", "max_length": 32},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"epochs": 8, "lr": 0.02, "batch_size": 8, "warmup_ratio": 0.0, "logging_steps": 5}}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu", str(REPO / "stages" / "train.py")]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((project / "metrics" / "train.json").read_text())
    assert summary["processes"] == 2
    assert summary["steps"] == 8 * -(-280 // 16)           # each step sees 2 processes x 8 rows
    model, tok, setup = load_trained(project / "models" / "adapters" / "main", torch.device("cpu"))
    test = toy_frame(400, seed=8).iloc[340:]
    probs = predict_probs(model, tok, setup, test["text"].tolist(), progress=False)
    # a bar derived from the test rows, as in test_train_evaluate: halfway from the majority share to 1 (0.77)
    majority = test["label"].value_counts(normalize=True).max()
    assert (probs.argmax(1) == test["label"].to_numpy()).mean() >= (1 + majority) / 2
