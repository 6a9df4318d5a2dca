"""Our training path against a typical LoRA fine-tuning script: same base model, LoRA config, learning rate,
train rows and epochs, same machine, one run; both scored on the same test split by the same code.

Ours (peftlab.train.run_train, the `train` stage): dynamic padding per batch (length grouping optional).
Typical script: `tokenizer(..., padding="max_length", max_length=256)` up front and the Trainer's defaults
otherwise (batch 8, no length grouping), as in most tutorials. Ours runs at the same batch size (8) by default,
so both take the same optimiser steps and the difference is the padding; `--batch-size 32` uses ours as the
train stage does (fewer, larger steps: on 2,000 rows and one epoch that is too few steps to learn).

    python benchmarks/training_vs_padded.py [--train-rows 2000] [--epochs 1] [--batch-size 8]

Needs the splits and the base model (`dvc repro split fetch_model@minilm-l6`); reads model/lora/train from
params.yaml. Prints seconds, train samples/s and test accuracy per side, and the speed ratio typical/ours.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftlab.config.params import load_params  # noqa: E402
from peftlab.core.io import read_json  # noqa: E402
from peftlab.core.paths import RunPaths  # noqa: E402
from peftlab.data.split import read_labels, read_split  # noqa: E402
from peftlab.modeling.load import ModelSetup, load_base, load_tokenizer, load_trained, lora_config  # noqa: E402
from peftlab.modeling.predict import predict_probs  # noqa: E402
from peftlab.train.run import model_setup, run_train


def subset_splits(src: Path, dest: Path, rows: int, seed: int) -> Path:
    """A copy of the splits whose train part has `rows` seeded rows (the same rows for both sides)."""
    import shutil

    shutil.copytree(src, dest)
    if rows:
        train = read_split(src, "train")
        if len(train) > rows:
            train.sample(n=rows, random_state=seed).to_parquet(dest / "train.parquet", index=False)
    return dest


def test_accuracy(model, tok, setup: ModelSetup, splits: Path) -> float:
    test = read_split(splits, "test")
    pred = predict_probs(model.eval(), tok, setup, test["text"].tolist(), 64, torch.device("cpu"), progress=False)
    return float(np.mean(pred.argmax(1) == test["label"].to_numpy()))


def typical_script(params, setup: ModelSetup, splits: Path, out: Path, epochs: float) -> tuple[float, object, object]:
    """What most fine-tuning write-ups do: pad everything to 256, Trainer defaults, same LoRA and lr."""
    import datasets
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(params.seed)
    tok = load_tokenizer(setup.base_dir, setup.family)
    train = read_split(splits, "train")
    ds = datasets.Dataset.from_pandas(train[["text", "label"]], preserve_index=False)
    ds = ds.map(lambda b: tok(b["text"], padding="max_length", max_length=256, truncation=True), batched=True)
    model = get_peft_model(load_base(setup, torch.device("cpu")),
                           lora_config(setup, params.lora.r, params.lora.alpha, params.lora.dropout,
                                       params.lora.target_modules))
    args = TrainingArguments(output_dir=str(out), num_train_epochs=epochs, learning_rate=params.train.lr,
                             report_to="none", seed=params.seed, use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start, model, tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-rows", type=int, default=2000, help="seeded train rows (0: the whole train split)")
    ap.add_argument("--epochs", type=float, default=None, help="default: train.epochs from params.yaml")
    ap.add_argument("--batch-size", type=int, default=8, help="ours (default: the Trainer's default, 8)")
    ap.add_argument("--group-by-length", action="store_true",
                    help="ours also groups batches by length (faster; at batch 8 on 2,000 rows it cost accuracy)")
    args = ap.parse_args()

    params = load_params(["seed", "model", "lora", "train", "prompt"])
    epochs = args.epochs or params.train.epochs
    params.train = dataclasses.replace(params.train, epochs=epochs, report_to=["none"], max_train_samples=None,
                                       batch_size=args.batch_size, group_by_length=args.group_by_length)
    with tempfile.TemporaryDirectory(prefix="peftlab-bench-") as tmp:
        tmp = Path(tmp)
        splits = subset_splits(Path("data/splits"), tmp / "splits", args.train_rows, params.seed)
        n = len(read_split(splits, "train"))
        setup = model_setup(params, read_labels(splits))
        if setup.head != "classifier":
            sys.exit(f"error: model.head = {setup.head!r}; allowed: classifier (this script compares classifiers)")

        paths = RunPaths(splits, tmp / "adapter", tmp / "ckpt", tmp / "live", tmp / "train.json")
        run_train(params, paths)
        ours_sec = read_json(paths.metrics)["train_seconds"]   # trainer.train(), as timed for the other side
        model, tok, ours_setup = load_trained(paths.adapter, torch.device("cpu"))
        ours_acc = test_accuracy(model, tok, ours_setup, splits)

        typical_sec, typical_model, typical_tok = typical_script(params, setup, splits, tmp / "typical", epochs)
        typical_acc = test_accuracy(typical_model.merge_and_unload(), typical_tok, setup, splits)

    print(f"\n{n} train rows x {epochs:g} epoch(s), {setup.info['name']}, LoRA r={params.lora.r}, "
          f"lr {params.train.lr:g}, torch threads {torch.get_num_threads()}")
    grouped = ", grouped" if args.group_by_length else ""
    print(f"  {f'ours (dynamic padding{grouped}, batch {params.train.batch_size})':48s} "
          f"{ours_sec:7.1f} s  {n * epochs / ours_sec:7.1f} samples/s  test accuracy {ours_acc:.4f}")
    print(f"  {'typical (padded to 256, Trainer defaults)':48s} "
          f"{typical_sec:7.1f} s  {n * epochs / typical_sec:7.1f} samples/s  test accuracy {typical_acc:.4f}")
    print(f"speed-up: {typical_sec / ours_sec:.2f}x; accuracy ours - typical: {ours_acc - typical_acc:+.4f}")


if __name__ == "__main__":
    main()
