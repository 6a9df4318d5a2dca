"""LoRA/QLoRA fine-tuning through the transformers Trainer, with dvclive curves and crash-safe checkpoints.

Heads: `classifier` (sequence classification, head trained in full), `generative` (chat-format supervised
fine-tuning of a decoder, loss on the answer tokens only) and `seq2seq` (text-to-text with label words).

Checkpoints live in checkpoints/<run>/ (a persistent DVC out) next to a fingerprint of everything that
determines the run; a rerun with the same fingerprint resumes from the latest checkpoint, a different one
starts clean. On success the checkpoints are removed (the fingerprint stays, marking the run complete): only
the adapter is the product. Under `accelerate launch` every process trains, the main one writes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from peftlab.config.params import Params
from peftlab.core import paths
from peftlab.core.errors import PeftlabError
from peftlab.core.io import atomic_path, read_json, sha256_file, stable_hash, write_json
from peftlab.core.metrics import accuracy, f1_macro
from peftlab.core.paths import RunPaths
from peftlab.data.split import read_labels, read_split, stratified_sample
from peftlab.modeling.load import (
    ModelSetup,
    base_info,
    check_head,
    check_targets,
    choose_device,
    load_base,
    load_tokenizer,
    lora_config,
)
from peftlab.modeling.predict import PromptSpec, classifier_logits, predict_probs
from peftlab.modeling.truncation import encode_truncated
from peftlab.train.checkpoints import (
    checkpoint_step,
    dvclive_callback,
    last_complete_checkpoint,
    sorted_adapter_config,
    whole_run_train_loss,
)
from peftlab.train.dropout import use_fast_dropout

# pip packages of the Trainer's trackers, for the error when one is asked for but not installed
TRACKER_PACKAGES = {"tensorboard": "tensorboard (or tensorboardX)", "mlflow": "mlflow", "wandb": "wandb",
                    "comet_ml": "comet-ml", "neptune": "neptune", "clearml": "clearml", "codecarbon": "codecarbon"}


def check_report_to(report_to: list[str]) -> None:
    """Each tracker must be one the Trainer supports and importable here; checked before any model loads or
    any output is touched, so a typo or a missing package costs one line, not a crashed run."""
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    allowed = ["none", *INTEGRATION_TO_CALLBACK]
    for t in report_to:
        if t not in allowed:
            raise PeftlabError(f"params.yaml: train.report_to has {t!r}; allowed: {', '.join(allowed)}")
    installed = set(get_available_reporting_integrations())
    for t in report_to:
        if t != "none" and t not in installed:
            raise PeftlabError(f"params.yaml: train.report_to has {t!r} but its package is not installed "
                               f"(pip install {TRACKER_PACKAGES.get(t, t)}); installed trackers: "
                               f"{', '.join(sorted(installed)) or 'none'}")


def model_setup(params: Params, labels: list[str]) -> ModelSetup:
    base_dir = paths.base_model(params.model.name)
    info = base_info(base_dir)
    head = params.model.head or info.get("head") or "classifier"
    check_head(info["family"], head)
    extra = {} if head == "classifier" else {"prompt": dataclasses.asdict(params.prompt)}
    return ModelSetup(base_dir=str(base_dir), info=info, head=head, labels=labels,
                      max_length=params.model.max_length, quantization=params.model.quantization,
                      trust_remote_code=params.model.trust_remote_code, extra=extra)


# --- features --------------------------------------------------------------------------------------------

def _answer_text(spec: PromptSpec, labels: list[str], label: int, rationale) -> str:
    answer = spec.answer(labels, label)
    if isinstance(rationale, str) and rationale.strip():
        answer += ". " + rationale.strip()
    return answer


def features(df: pd.DataFrame, tok, setup: ModelSetup):
    """A datasets.Dataset the Trainer can batch: unpadded token ids (the collator pads per batch).

    classifier: text -> ids + label. generative: chat prompt + answer, with labels -100 on the prompt so the
    loss covers the answer only. seq2seq: prompt -> encoder ids, answer + eos -> decoder labels. Every head
    cuts the review by the one rule of peftlab.truncation (its own first max_length tokens), as inference does.
    """
    import datasets

    if setup.head == "classifier":
        ds = datasets.Dataset.from_pandas(df[["text", "label"]].reset_index(drop=True), preserve_index=False)
        return ds.map(lambda b: encode_truncated(tok, b["text"], setup.max_length), batched=True,
                      remove_columns=["text"], desc="tokenizing")
    spec = PromptSpec.from_dict(setup.extra["prompt"])
    rationale = df["rationale"] if "rationale" in df.columns else pd.Series([None] * len(df), index=df.index)
    answers = [_answer_text(spec, setup.labels, int(y), r) for y, r in zip(df["label"], rationale)]
    rows = []
    if setup.head == "generative":
        prompts = spec.render(tok, df["text"].tolist(), setup.labels, max_text_tokens=setup.max_length)
        for prompt, answer in zip(prompts, answers):
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            a_ids = tok(answer + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
            rows.append({"input_ids": p_ids + a_ids, "attention_mask": [1] * (len(p_ids) + len(a_ids)),
                         "labels": [-100] * len(p_ids) + a_ids})
    else:
        prompts = spec.render(tok, df["text"].tolist(), setup.labels, prefill="", max_text_tokens=setup.max_length)
        enc = tok(prompts)
        targets = tok([a.strip() for a in answers])["input_ids"]
        rows = [{"input_ids": i, "attention_mask": m, "labels": t}
                for i, m, t in zip(enc["input_ids"], enc["attention_mask"], targets)]
    return datasets.Dataset.from_list(rows)


def collator(setup: ModelSetup, tok):
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    if setup.head == "classifier":
        return DataCollatorWithPadding(tok)
    if setup.head == "generative":
        tok.padding_side = "left"   # as at inference (AnswerLossTrainer derives position ids from the mask)
    return DataCollatorForSeq2Seq(tok, label_pad_token_id=-100, padding=True)


# --- schedule and loss -----------------------------------------------------------------------------------

def steps_per_epoch(rows: int, batch_size: int, grad_accum: int = 1, processes: int = 1) -> int:
    """Optimiser steps in one epoch, counted as the Trainer counts them: batches per process (the last one
    partial), then one step per `grad_accum` batches (the last group partial)."""
    batches = math.ceil(rows / (batch_size * processes))
    return max(math.ceil(batches / grad_accum), 1)


def schedule(epochs: float, min_steps: int, max_steps: int, per_epoch: int) -> tuple[float, int]:
    """(epochs, optimiser steps) a run makes: `epochs`, raised to the fewest whole epochs that make at least
    `min_steps` steps when they make fewer; `max_steps` > 0 overrides both, as in the Trainer.

    Why: one epoch of a small set is a few dozen steps (782 rows at batch 32: 25), too few for LoRA to move off
    the majority class; raising whole epochs (not steps) shows every row equally often. A set already past
    `min_steps` in its epochs keeps them unchanged.
    """
    if max_steps > 0:
        return epochs, max_steps
    steps = math.ceil(epochs * per_epoch)
    if steps >= min_steps:
        return epochs, steps
    raised = math.ceil(min_steps / per_epoch)
    return float(raised), raised * per_epoch


def balanced_class_weights(y, k: int) -> list[float]:
    """scikit-learn's "balanced" weights n / (k_present * count) for each of the k classes; a class absent from
    the training labels gets 1.0 (no row is weighted by it)."""
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray(y, dtype=int)
    present = np.unique(y)
    w = dict(zip(present.tolist(), compute_class_weight("balanced", classes=present, y=y).tolist()))
    return [float(w.get(c, 1.0)) for c in range(k)]


def check_class_weights(class_weights: str, head: str) -> None:
    """Class weights act on the classifier's cross-entropy over the k classes; the generative and seq2seq heads
    learn label words among the vocabulary's tokens, where a weight per class has no loss term to act on."""
    if class_weights != "none" and head != "classifier":
        raise PeftlabError(f"params.yaml: train.class_weights = {class_weights!r} weights the loss of a classifier "
                           f"head; this run's head is {head!r}; allowed for the {head} head: none")


def trainer_class(head: str, class_weights: list[float] | None = None,
                  fast_eval: Callable[[torch.nn.Module], tuple[np.ndarray, np.ndarray]] | None = None):
    """The Trainer for a head: generative runs compute their loss on the answer positions only; classifier runs
    with class weights use a weighted cross-entropy; otherwise the plain Trainer (the model's own loss).

    `fast_eval(model) -> (val logits, val labels)`: classifier validation on the project's inference path
    (length-sorted batches, dynamic padding, inference mode) instead of the Trainer's eval loop, which pads
    batches in row order and runs under autograd bookkeeping (7.6 vs 33 reviews/s for SmolLM2's classifier);
    accuracy and macro F1 equal the eval loop's; the loss is the mean over all val rows (torch's weighted mean
    with class weights, where the loop averages per-batch means: ~1e-4 apart), tested against it."""
    from transformers import Trainer

    class FastEvalTrainer(Trainer):
        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
            if fast_eval is None or eval_dataset is not None:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            start = time.perf_counter()
            training = self.model.training
            self.model.eval()
            logits, y = fast_eval(self.model)
            self.model.train(training)
            seconds = time.perf_counter() - start
            weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
            loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y.copy()),
                                                     weight=weight)
            yhat = logits.argmax(1)
            p = metric_key_prefix
            metrics = {f"{p}_loss": float(loss), f"{p}_accuracy": accuracy(y, yhat),
                       f"{p}_f1_macro": f1_macro(y, yhat, logits.shape[1]), f"{p}_runtime": seconds,
                       f"{p}_samples_per_second": len(y) / seconds}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    class WeightedLossTrainer(FastEvalTrainer):
        """Classifier loss as torch's weighted cross-entropy (the weighted mean over the batch's rows), so a
        minority class's rows count as much in total as the majority's. Validation loss is weighted too."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # The loss is a per-batch mean, so the Trainer must divide it by the accumulation steps (it skips
            # that for models that take num_items_in_batch, whose loss it expects normalised already).
            self.model_accepts_loss_kwargs = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs.logits.float()
            weight = torch.tensor(class_weights, dtype=logits.dtype, device=logits.device)
            loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1),
                                                     weight=weight)
            return (loss, outputs) if return_outputs else loss

    class AnswerLossTrainer(Trainer):
        """Supervised fine-tuning whose loss reads only the answer tokens.

        The LM head (a vocabulary-wide matmul per position: 49k columns for SmolLM2) runs only over the positions
        that predict an answer token, gathered into one (answer tokens, hidden) matrix: a 2-D boolean
        `logits_to_keep`. Keeping the last k columns instead left a strided (batch, k, hidden) slice that
        matmul cannot fold to 2-D, so it ran as a batched matmul of m = k rows per review (9 GFLOP/s, ~1 s of a
        ~11 s SmolLM2 step at batch 32). Position ids come from the attention mask, as at inference (batches
        are left-padded). transformers computes the logits of every position when given labels, hence this
        subclass.
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            predicts = labels[:, 1:] != -100                  # position t predicts the answer token at t + 1
            keep = torch.nn.functional.pad(predicts, (0, 1), value=False)
            inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            outputs = model(**inputs, logits_to_keep=keep)
            target = labels[:, 1:][predicts]                  # row-major, as the mask gathers the positions
            loss = torch.nn.functional.cross_entropy(outputs.logits.float(), target, reduction="sum")
            loss = loss / (num_items_in_batch if num_items_in_batch is not None else target.numel())
            return (loss, outputs) if return_outputs else loss

    if head == "generative":
        return AnswerLossTrainer
    return WeightedLossTrainer if head == "classifier" and class_weights is not None else FastEvalTrainer


# --- checkpoints and trackers ----------------------------------------------------------------------------

def _fingerprint(params: Params, paths: RunPaths) -> str:
    parts = {k: dataclasses.asdict(getattr(params, k)) for k in ("model", "lora", "train", "prompt")}
    parts["seed"] = params.seed
    parts["data"] = sha256_file(paths.splits / "train.parquet")
    return stable_hash(json.dumps(parts, sort_keys=True))


def _prepare_checkpoints(paths: RunPaths, fingerprint: str) -> str | None:
    """The checkpoint to resume from, or None after clearing checkpoints of a different configuration."""
    fp_file = paths.checkpoints / "fingerprint.json"
    if paths.checkpoints.exists():
        same = fp_file.exists() and read_json(fp_file).get("fingerprint") == fingerprint
        last = last_complete_checkpoint(paths.checkpoints) if same else None
        if last:
            return last
        shutil.rmtree(paths.checkpoints)
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    write_json(fp_file, {"fingerprint": fingerprint})
    return None


def _callbacks(params: Params, paths: RunPaths, resume: bool, main_process: bool) -> tuple[list, list[str]]:
    """dvclive into dvclive/<run>/ (a declared out), early stopping, and any other trackers the Trainer
    supports (tensorboard, mlflow, wandb; installed by the user)."""
    from transformers import EarlyStoppingCallback

    report_to = list(params.train.report_to)
    check_report_to(report_to)
    callbacks = []
    if "dvclive" in report_to and main_process:
        from dvclive import Live

        # A clean folder even on a resume: the callback replays the checkpoint's log history into it.
        live = Live(dir=str(paths.live), resume=False, save_dvc_exp=False, dvcyaml=None)
        callbacks.append(dvclive_callback(live))
    elif main_process:
        paths.live.mkdir(parents=True, exist_ok=True)
    if params.train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=params.train.early_stopping_patience))
    others = [t for t in report_to if t not in ("dvclive", "none")]
    return callbacks, others or ["none"]


def _check_optim(optim: str, device: torch.device) -> None:
    if optim != "adamw_torch" and device.type != "cuda":
        raise PeftlabError(f"params.yaml: train.optim = {optim!r} needs a CUDA GPU (bitsandbytes 8-bit optimizer "
                           f"states); allowed here: adamw_torch")


# --- the stage -------------------------------------------------------------------------------------------

def run_train(params: Params, paths: RunPaths, init_adapter: Path | None = None) -> dict:
    """train stage: LoRA-tune the base model on the train split (or, with train.finetune: full, every weight);
    save the adapter (or the whole model) and a summary. `init_adapter`: continue training that adapter (its
    head included) instead of a new one: the clean continued-training defense against a poisoned run."""
    from accelerate import PartialState
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import TrainingArguments, set_seed

    state = PartialState()
    tp = params.train
    train_seed = tp.run_seed(params.seed)
    set_seed(train_seed)
    device = choose_device(params.model.device)
    _check_optim(tp.optim, device)
    check_report_to(tp.report_to)
    labels = read_labels(paths.splits)
    setup = model_setup(params, labels)
    check_class_weights(tp.class_weights, setup.head)
    tok = load_tokenizer(setup.base_dir, setup.family, setup.trust_remote_code)
    train_df, val_df = read_split(paths.splits, "train"), read_split(paths.splits, "val")
    if tp.max_train_samples and len(train_df) > tp.max_train_samples:
        train_df = train_df.sample(n=tp.max_train_samples, random_state=params.seed)
    if tp.max_eval_samples:
        val_df = stratified_sample(val_df, tp.max_eval_samples, params.seed)
    train_ds, val_ds = features(train_df, tok, setup), features(val_df, tok, setup)

    model = load_base(setup, device)
    if setup.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=tp.gradient_checkpointing)
    elif tp.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if tp.finetune == "full":
        # Every weight trained, no adapter: the poisoning study's positive control (the literature's recipe).
        if setup.quantization != "none":
            raise PeftlabError(f"train.finetune = 'full' is invalid with model.quantization = "
                               f"{setup.quantization!r}; allowed: model.quantization: none (quantized weights "
                               f"cannot be trained)")
        setup.extra["finetune"] = "full"
        trainable = total = sum(p.numel() for p in model.parameters())
    else:
        if init_adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
        else:
            cfg = lora_config(setup, params.lora.r, params.lora.alpha, params.lora.dropout,
                              params.lora.target_modules, params.lora.modules_to_save)
            check_targets(model, list(cfg.target_modules))
            check_targets(model, list(params.lora.modules_to_save or []), "lora.modules_to_save")
            model = get_peft_model(model, cfg)
        trainable, total = model.get_nb_trainable_parameters()
    use_fast_dropout(model)   # the same dropout rule, a quarter of the mask cost on CPU (peftlab.train.dropout)

    with state.main_process_first():  # the main process clears or keeps checkpoints; the others then agree
        resume_from = _prepare_checkpoints(paths, _fingerprint(params, paths))
    callbacks, report_to = _callbacks(params, paths, resume_from is not None, state.is_main_process)
    if resume_from and state.is_main_process:
        print(f"resuming from {resume_from} (step {checkpoint_step(resume_from)})")
    k = len(labels)
    classifier = setup.head == "classifier"
    weights = balanced_class_weights(train_df["label"], k) if tp.class_weights == "balanced" else None
    per_epoch = steps_per_epoch(len(train_ds), tp.batch_size, tp.grad_accum, state.num_processes)
    epochs, planned_steps = schedule(tp.epochs, tp.min_steps, tp.max_steps, per_epoch)
    if epochs != tp.epochs and state.is_main_process:
        print(f"train.min_steps = {tp.min_steps}: {len(train_ds)} rows make {per_epoch} steps per epoch, so "
              f"epochs raised from {tp.epochs:g} to {epochs:g} ({planned_steps} steps)")

    def compute_metrics(pred) -> dict:
        yhat = np.argmax(pred.predictions, axis=-1)
        return {"accuracy": accuracy(pred.label_ids, yhat), "f1_macro": f1_macro(pred.label_ids, yhat, k)}

    # Generative and seq2seq runs validate by loss during training (gathering full-vocabulary logits for every
    # position would cost more than the training step); accuracy comes from label scoring at the end.
    best_metric = tp.metric_for_best if classifier else "loss"
    eval_strategy = "steps" if tp.eval_steps else "epoch"
    early = bool(tp.early_stopping_patience)
    # Early stopping keeps the best checkpoint, so checkpoints follow the evaluations; otherwise they follow
    # save_steps, the crash-resume interval.
    args = TrainingArguments(
        output_dir=str(paths.checkpoints),
        num_train_epochs=epochs, max_steps=tp.max_steps, learning_rate=tp.lr,
        per_device_train_batch_size=tp.batch_size, per_device_eval_batch_size=64 if classifier else tp.batch_size,
        gradient_accumulation_steps=tp.grad_accum, weight_decay=tp.weight_decay, warmup_steps=tp.warmup_ratio,
        eval_strategy=eval_strategy, eval_steps=tp.eval_steps,
        save_strategy=eval_strategy if early else "steps", save_steps=tp.eval_steps if early else tp.save_steps,
        save_total_limit=2 if early else 1,
        load_best_model_at_end=early, metric_for_best_model=best_metric,
        greater_is_better=best_metric != "loss",
        logging_steps=tp.logging_steps, report_to=report_to,
        seed=train_seed, data_seed=train_seed,
        train_sampling_strategy="group_by_length" if tp.group_by_length else "random",
        use_cpu=device.type == "cpu", dataloader_num_workers=0, disable_tqdm=False, optim=tp.optim,
        prediction_loss_only=not classifier, ddp_find_unused_parameters=False,
    )
    def fast_eval(m) -> tuple[np.ndarray, np.ndarray]:
        logits = classifier_logits(m, tok, val_df["text"].tolist(), setup.max_length, 64, device, progress=False)
        return logits, val_df["label"].to_numpy(dtype=np.int64)

    # One process only: under a 2-process accelerate run the fast path left a worse adapter (accuracy 0.58 on the
    # toy task of test_two_process_accelerate_run_gives_a_usable_adapter, not yet understood), so DDP runs keep
    # the Trainer's eval loop.
    use_fast = classifier and state.num_processes == 1
    trainer = trainer_class(setup.head, weights, fast_eval if use_fast else None)(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tok,
        data_collator=collator(setup, tok), compute_metrics=compute_metrics if classifier else None,
        callbacks=callbacks)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - start
    evals = [l for l in trainer.state.log_history if "eval_loss" in l]
    if evals and evals[-1]["step"] == trainer.state.global_step and not early:
        val = evals[-1]                     # the final model was just validated: no second pass
    else:
        val = trainer.evaluate()
    if not state.is_main_process:
        return {}

    summary = {
        "head": setup.head, "trainable_params": int(trainable), "total_params": int(total),
        "trainable_pct": 100.0 * trainable / total,
        "train_rows": int(len(train_df)), "epochs": float(trainer.state.epoch or 0.0),
        "steps": int(result.global_step),
        "epochs_requested": float(tp.epochs), "min_steps": int(tp.min_steps), "steps_per_epoch": per_epoch,
        "epochs_raised": epochs != tp.epochs,
        "class_weights": None if weights is None else dict(zip(labels, weights)),
        "train_loss": whole_run_train_loss(trainer.state.log_history, checkpoint_step(resume_from),
                                           float(result.training_loss), int(result.global_step)),
        "val_loss": float(val["eval_loss"]),
        "train_seconds": seconds, "train_samples_per_s": float(result.metrics["train_samples_per_second"]),
        "resumed": resume_from is not None, "resumed_from_step": checkpoint_step(resume_from),
        "device": device.type, "threads": torch.get_num_threads(), "processes": state.num_processes,
    }
    model = trainer.model.eval()
    if classifier:
        summary.update(val_accuracy=float(val["eval_accuracy"]), val_f1_macro=float(val["eval_f1_macro"]))
    else:
        probs = predict_probs(model, tok, setup, val_df["text"].tolist(), batch_size=tp.batch_size, device=device)
        summary.update(val_accuracy=accuracy(val_df["label"], probs.argmax(1)),
                       val_f1_macro=f1_macro(val_df["label"], probs.argmax(1), k))
    with atomic_path(paths.adapter, is_dir=True) as tmp:
        sorted_adapter_config(model)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(tmp / "peftlab.json", setup.to_json())
    for ckpt in paths.checkpoints.glob("checkpoint-*"):
        shutil.rmtree(ckpt)
    write_json(paths.metrics, summary)
    print(f"trained {params.model.name} ({setup.head}): val accuracy {summary['val_accuracy']:.4f}, "
          f"{trainable:,} trainable params, {seconds:.0f}s")
    return summary
