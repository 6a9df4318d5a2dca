"""train and evaluate on tiny real models (built from configs) in a scratch project folder."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, toy_frame, write_splits
from peftlab.config.params import Params, build
from peftlab.core.paths import EvalPaths, RunPaths
from peftlab.evaluate.run import run_evaluate
from peftlab.train.run import run_train


def params_for(model: str, **train) -> Params:
    p = Params()
    p.model = build(type(p.model), {"name": model, "max_length": 32}, "model")
    p.lora = build(type(p.lora), {"r": 4, "alpha": 8, "dropout": 0.0}, "lora")
    p.train = build(type(p.train), {"epochs": 8, "lr": 0.02, "batch_size": 16, "save_steps": 20,
                                    "logging_steps": 5, "warmup_ratio": 0.0, **train}, "train")
    p.evaluate = build(type(p.evaluate), {"bootstrap": 50}, "evaluate")
    return p


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_lora_classifier_learns_the_toy_task_and_evaluates(project, tiny_models, family):
    name = f"tiny-{family}"
    shutil.copytree(tiny_models[family], project / "models" / "base" / name)
    write_splits(project, toy_frame(400, seed=1))
    # 16 epochs (288 steps): training loss near 0 under every kernel set tried; at 8 it ended at 0.002-0.1
    summary = run_train(params_for(name, epochs=16), RunPaths.for_run("main"))

    adapter = project / "models" / "adapters" / "main"
    assert (adapter / "adapter_model.safetensors").exists()
    meta = json.loads((adapter / "peftlab.json").read_text())
    assert meta["labels"] == ["negative", "positive"] and meta["head"] == "classifier"
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert [p.name for p in (project / "checkpoints" / "main").iterdir()] == ["fingerprint.json"]  # cleared
    loss_curve = (project / "dvclive" / "main" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
    losses = [float(l.split("\t")[-1]) for l in loss_curve[1:]]
    assert losses[-1] < losses[0]

    m = run_evaluate(params_for(name), EvalPaths.for_run("main"))
    # The cue word decides the label, so a model that learned the task is far above the majority class. The bar is
    # derived from the test rows (halfway from the majority share to 1, here 0.76), not set at the edge of what one
    # machine's floats reach: at 8 epochs, 0.88 on an AVX2 EPYC and 0.90 under AVX2 kernels on one thread here.
    majority = np.sum(m["confusion_matrix"], axis=1).max() / m["n"]     # rows of the confusion matrix: true labels
    assert m["accuracy"] >= (1 + majority) / 2, (m["accuracy"], majority)
    assert set(m) >= {"accuracy", "f1_macro", "precision", "recall", "f1", "roc_auc", "pr_auc", "n",
                      "confusion_matrix", "ci95"}
    lo, hi = m["ci95"]["accuracy"]
    assert lo <= m["accuracy"] <= hi
    assert np.sum(m["confusion_matrix"]) == m["n"]
    for f in ("confusion.png", "roc.png", "pr.png", "confusion.json", "roc.json"):
        assert (project / "plots" / "evaluate" / f).stat().st_size > 0
    tex = (project / "reports" / "evaluate.tex").read_text()
    assert r"\toprule" in tex and r"acc\_ci\_low" in tex

    # the predict command uses the same adapter
    proc = subprocess.run([sys.executable, "-m", "peftlab.modeling.predict", "the film was great fun #1",
                           "awful dull plot #2"], cwd=project, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert [l.split("\t")[0] for l in proc.stdout.strip().splitlines()] == ["positive", "negative"]


def test_training_twice_with_the_same_seed_gives_identical_adapters(project, tiny_models):
    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    write_splits(project, toy_frame(120, seed=2))
    adapter = project / "models" / "adapters" / "main" / "adapter_model.safetensors"

    def trained(top_seed: int, **train) -> bytes:
        p = params_for("tiny-encoder", epochs=1, **train)
        p.seed = top_seed
        run_train(p, RunPaths.for_run("main"))
        return adapter.read_bytes()

    first = trained(42)
    assert trained(42) == first
    # train.seed is the training randomness alone: another one is another run, the top-level seed then no part of it
    assert trained(42, seed=7) != first
    assert trained(7, seed=42) == first      # (the split is fixed here, and the top-level seed's other uses off)


def test_missing_target_module_is_a_clear_error(project, tiny_models):
    from peftlab.core.errors import PeftlabError

    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    write_splits(project, toy_frame(60))
    p = params_for("tiny-encoder")
    p.lora.target_modules = ["q_proj"]
    with pytest.raises(PeftlabError, match="'q_proj', which this model does not have; allowed: .*query"):
        run_train(p, RunPaths.for_run("main"))
    assert not (project / "models" / "adapters" / "main").exists()


def test_modules_to_save_trains_the_embeddings_in_full_and_evaluate_uses_them(project, tiny_models):
    """lora.modules_to_save (the poisoning study's "embeddings trained" recipe): the word embeddings are trained
    in full beside the adapter, saved with it, and the evaluated (merged) model reads the trained matrix, not the
    base one; a name the model lacks is refused naming the key."""
    import torch
    from safetensors.torch import load_file

    from peftlab.core.errors import PeftlabError
    from peftlab.modeling.load import load_trained

    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    write_splits(project, toy_frame(120, seed=3))
    p = params_for("tiny-encoder", epochs=2)
    frozen = run_train(p, RunPaths.for_run("main"))["trainable_params"]
    p.lora.modules_to_save = ["word_embeddings"]
    summary = run_train(p, RunPaths.for_run("main"))
    adapter = project / "models" / "adapters" / "main"
    saved = load_file(adapter / "adapter_model.safetensors")
    emb = [k for k in saved if "word_embeddings" in k]
    assert len(emb) == 1
    base = load_file(project / "models" / "base" / "tiny-encoder" / "model.safetensors")
    base_emb = next(v for k, v in base.items() if k.endswith("word_embeddings.weight"))
    assert summary["trainable_params"] - frozen == base_emb.numel()        # the whole matrix, nothing else added
    assert not torch.equal(saved[emb[0]], base_emb)                         # trained
    merged = load_trained(adapter, torch.device("cpu"))[0]
    assert torch.equal(merged.get_input_embeddings().weight, saved[emb[0]])
    assert 0 < run_evaluate(params_for("tiny-encoder"), EvalPaths.for_run("main"))["accuracy"] <= 1

    p.lora.modules_to_save = ["embed_tokens"]
    with pytest.raises(PeftlabError, match="lora.modules_to_save has 'embed_tokens', which this model does not "
                                           "have; allowed: .*word_embeddings"):
        run_train(p, RunPaths.for_run("main"))


@pytest.mark.parametrize("weights", [None, [0.7, 1.9]])
def test_fast_validation_matches_the_trainer_eval_loop(project, tiny_models, weights):
    """In-training validation on the inference path gives the eval loop's loss, accuracy and macro F1."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

    from peftlab.modeling.load import ModelSetup
    from peftlab.modeling.predict import classifier_logits
    from peftlab.train.run import collator, features, trainer_class

    tok = AutoTokenizer.from_pretrained(tiny_models["encoder"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["encoder"], num_labels=2).eval()
    val = toy_frame(45, seed=3)
    setup = ModelSetup(base_dir=str(tiny_models["encoder"]), info={"family": "encoder"}, head="classifier",
                       labels=["negative", "positive"], max_length=32, quantization="none",
                       trust_remote_code=False, extra={})
    ds = features(val, tok, setup)
    args = TrainingArguments(output_dir=str(project / "out"), per_device_eval_batch_size=8, report_to=["none"],
                             use_cpu=True)

    def compute_metrics(pred):
        from peftlab.core.metrics import accuracy, f1_macro
        yhat = np.argmax(pred.predictions, axis=-1)
        return {"accuracy": accuracy(pred.label_ids, yhat), "f1_macro": f1_macro(pred.label_ids, yhat, 2)}

    def fast(m):
        return (classifier_logits(m, tok, val["text"].tolist(), 32, 16, torch.device("cpu"), progress=False),
                val["label"].to_numpy(dtype=np.int64))

    made = {}
    for name, fe in (("loop", None), ("fast", fast)):
        trainer = trainer_class("classifier", weights, fe)(model=model, args=args, eval_dataset=ds,
                                                           processing_class=tok, data_collator=collator(setup, tok),
                                                           compute_metrics=compute_metrics)
        made[name] = trainer.evaluate()
        if fe is None:
            logits = torch.from_numpy(trainer.predict(ds).predictions)
    loop, fast_m = made["loop"], made["fast"]
    assert fast_m["eval_accuracy"] == loop["eval_accuracy"] and fast_m["eval_f1_macro"] == loop["eval_f1_macro"]
    # The loss over all rows (weighted: torch's weighted mean) from the eval loop's own logits. Unweighted it is
    # the loop's figure; weighted, the loop averages per-batch weighted means, which differs by ~1e-4 here.
    w = None if weights is None else torch.tensor(weights)
    exact = float(torch.nn.functional.cross_entropy(logits, torch.tensor(val["label"].to_numpy()), weight=w))
    assert abs(fast_m["eval_loss"] - exact) < 1e-5
    assert abs(fast_m["eval_loss"] - loop["eval_loss"]) < (1e-5 if weights is None else 1e-3)
    assert 0.2 < loop["eval_accuracy"] < 0.9      # an untrained head: not a degenerate all-one-class case either


def test_answer_loss_reads_only_the_answer_positions_and_equals_the_models_own_loss(tiny_models):
    """The generative loss gathers the positions that predict an answer token (a different count per row, left
    padding) and gives the loss and gradients of the model's full-vocabulary loss over every position."""
    import torch
    from transformers import AutoModelForCausalLM

    from peftlab.train.run import trainer_class

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_models["decoder"]).train()
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0                                    # left padding
    mask[2, :7] = 0
    labels = torch.full_like(ids, -100)
    for row, n in enumerate((1, 3, 2)):                # answers of 1, 3 and 2 tokens end each row
        labels[row, -n:] = ids[row, -n:]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    trainer = trainer_class("generative").__new__(trainer_class("generative"))   # compute_loss reads no state
    ours = trainer.compute_loss(model, {"input_ids": ids, "attention_mask": mask, "labels": labels.clone()})
    ours.backward()
    ours_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, labels=labels).loss
    ref.backward()
    assert abs(ours.item() - ref.item()) < 1e-6
    for mine, theirs in zip(ours_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
    # the LM head ran on the 6 answer-predicting positions only
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    trainer.compute_loss(model, {"input_ids": ids, "attention_mask": mask, "labels": labels.clone()})
    hook.remove()
    assert seen == [(6, model.config.hidden_size)]
