"""LoRA fine-tuning through the transformers Trainer, with dvclive curves and crash-safe checkpoints.

Checkpoints live in checkpoints/<run>/ (a persistent DVC out) next to a fingerprint of everything that
determines the run; a rerun with the same fingerprint resumes from the latest checkpoint, a different one
starts clean. On success the checkpoints are removed (the fingerprint stays, marking the run complete): only the adapter
is the product.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from peftlab.data import read_labels, read_split
from peftlab.errors import PeftlabError
from peftlab.io import atomic_path, read_json, sha256_file, stable_hash, write_json
from peftlab.metrics import accuracy, f1_macro
from peftlab.models import (ModelSetup, base_info, check_targets, choose_device, load_base, load_tokenizer,
                            lora_config)
from peftlab.params import Params

TRACKERS = ("dvclive", "tensorboard", "mlflow", "wandb", "none")


@dataclasses.dataclass
class RunPaths:
    """Where one training run reads and writes (all declared in dvc.yaml)."""
    splits: Path
    adapter: Path
    checkpoints: Path
    live: Path
    metrics: Path

    @classmethod
    def for_run(cls, run: str) -> "RunPaths":
        metrics = Path("metrics/train.json") if run == "main" else Path(f"metrics/sweep/{run}/train.json")
        return cls(Path("data/splits"), Path(f"models/adapters/{run}"), Path(f"checkpoints/{run}"),
                   Path(f"dvclive/{run}"), metrics)


def model_setup(params: Params, labels: list[str]) -> ModelSetup:
    base_dir = Path("models/base") / params.model.name
    info = base_info(base_dir)
    head = params.model.head or info.get("head") or "classifier"
    return ModelSetup(base_dir=str(base_dir), info=info, head=head, labels=labels,
                      max_length=params.model.max_length, quantization=params.model.quantization,
                      trust_remote_code=params.model.trust_remote_code)


def tokenize_frame(df: pd.DataFrame, tokenizer, max_length: int):
    """A datasets.Dataset of input_ids/attention_mask/label, unpadded (the collator pads per batch)."""
    import datasets

    ds = datasets.Dataset.from_pandas(df[["text", "label"]].reset_index(drop=True), preserve_index=False)
    return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True,
                  remove_columns=["text"], desc="tokenizing")


def _fingerprint(params: Params, paths: RunPaths) -> str:
    parts = {k: dataclasses.asdict(getattr(params, k)) for k in ("model", "lora", "train")}
    parts["seed"] = params.seed
    parts["data"] = sha256_file(paths.splits / "train.parquet")
    return stable_hash(json.dumps(parts, sort_keys=True))


def _prepare_checkpoints(paths: RunPaths, fingerprint: str) -> str | None:
    """The checkpoint to resume from, or None after clearing checkpoints of a different configuration."""
    from transformers.trainer_utils import get_last_checkpoint

    fp_file = paths.checkpoints / "fingerprint.json"
    if paths.checkpoints.exists():
        same = fp_file.exists() and read_json(fp_file).get("fingerprint") == fingerprint
        last = get_last_checkpoint(str(paths.checkpoints)) if same else None
        if last:
            return last
        shutil.rmtree(paths.checkpoints)
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    write_json(fp_file, {"fingerprint": fingerprint})
    return None


def _callbacks(params: Params, paths: RunPaths, resume: bool) -> tuple[list, list[str]]:
    """dvclive into dvclive/<run>/ (a declared out), and any other trackers the Trainer supports."""
    report_to = list(params.train.report_to)
    bad = [t for t in report_to if t not in TRACKERS]
    if bad:
        raise PeftlabError(f"train.report_to has {bad[0]!r}; allowed: {', '.join(TRACKERS)}")
    callbacks = []
    if "dvclive" in report_to:
        from dvclive import Live
        from transformers.integrations import DVCLiveCallback

        live = Live(dir=str(paths.live), resume=resume, save_dvc_exp=False, dvcyaml=None)
        callbacks.append(DVCLiveCallback(live=live))
    else:
        paths.live.mkdir(parents=True, exist_ok=True)
    others = [t for t in report_to if t not in ("dvclive", "none")]
    return callbacks, others or ["none"]


def run_train(params: Params, paths: RunPaths) -> dict:
    """train stage: LoRA-tune the base model on the train split; save the adapter and a summary."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    set_seed(params.seed)
    device = choose_device(params.model.device)
    labels = read_labels(paths.splits)
    setup = model_setup(params, labels)
    tok = load_tokenizer(setup.base_dir, setup.family, setup.trust_remote_code)
    train_df, val_df = read_split(paths.splits, "train"), read_split(paths.splits, "val")
    if params.train.max_train_samples and len(train_df) > params.train.max_train_samples:
        train_df = train_df.sample(n=params.train.max_train_samples, random_state=params.seed)
    train_ds = tokenize_frame(train_df, tok, setup.max_length)
    val_ds = tokenize_frame(val_df, tok, setup.max_length)

    model = load_base(setup, device)
    if setup.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    cfg = lora_config(setup, params.lora.r, params.lora.alpha, params.lora.dropout, params.lora.target_modules)
    check_targets(model, list(cfg.target_modules))
    model = get_peft_model(model, cfg)
    trainable, total = model.get_nb_trainable_parameters()

    resume_from = _prepare_checkpoints(paths, _fingerprint(params, paths))
    callbacks, report_to = _callbacks(params, paths, resume=resume_from is not None)
    tp = params.train
    k = len(labels)

    def compute_metrics(pred) -> dict:
        yhat = np.argmax(pred.predictions, axis=-1)
        return {"accuracy": accuracy(pred.label_ids, yhat), "f1_macro": f1_macro(pred.label_ids, yhat, k)}

    args = TrainingArguments(
        output_dir=str(paths.checkpoints),
        num_train_epochs=tp.epochs, max_steps=tp.max_steps, learning_rate=tp.lr,
        per_device_train_batch_size=tp.batch_size, per_device_eval_batch_size=max(tp.batch_size, 64),
        gradient_accumulation_steps=tp.grad_accum, weight_decay=tp.weight_decay, warmup_steps=tp.warmup_ratio,
        eval_strategy="steps" if tp.eval_steps else "epoch", eval_steps=tp.eval_steps,
        save_strategy="steps", save_steps=tp.save_steps, save_total_limit=1,
        logging_steps=tp.logging_steps, report_to=report_to, seed=params.seed, data_seed=params.seed,
        train_sampling_strategy="group_by_length" if tp.group_by_length else "random",
        use_cpu=device.type == "cpu", dataloader_num_workers=0, disable_tqdm=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tok,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=compute_metrics,
                      callbacks=callbacks)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - start
    val = trainer.evaluate()

    with atomic_path(paths.adapter, is_dir=True) as tmp:
        trainer.model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(tmp / "peftlab.json", setup.to_json())
    for ckpt in paths.checkpoints.glob("checkpoint-*"):
        shutil.rmtree(ckpt)

    summary = {
        "trainable_params": int(trainable), "total_params": int(total),
        "trainable_pct": 100.0 * trainable / total,
        "train_rows": int(len(train_df)), "epochs": float(trainer.state.epoch or 0.0),
        "steps": int(result.global_step),
        "train_loss": float(result.training_loss),
        "val_accuracy": float(val["eval_accuracy"]), "val_f1_macro": float(val["eval_f1_macro"]),
        "train_seconds": seconds, "train_samples_per_s": float(result.metrics["train_samples_per_second"]),
        "resumed": resume_from is not None, "device": device.type, "threads": torch.get_num_threads(),
    }
    write_json(paths.metrics, summary)
    print(f"trained {params.model.name} ({setup.head}): val accuracy {summary['val_accuracy']:.4f}, "
          f"{trainable:,} trainable params, {seconds:.0f}s")
    return summary
