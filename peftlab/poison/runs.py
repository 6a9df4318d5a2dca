"""Data poisoning: backdoor and label-flip attacks on the training split, and three defenses.

The clean splits are only read. A poisoned training set is written next to them (data/poison/<setting>/, a
`poisoned` column marking its rows) and trained with the clean run's model, LoRA and train params, so the
only difference from the clean run is the poison. Metrics: clean accuracy (CACC) on the clean test split,
attack success rate (ASR) on the test rows whose true label is not the target, with the trigger inserted.

No library implements these text attacks and defenses for the Trainer/peft stack (OpenBackdoor pins old
transformers and trains its own models), so they are written here, each after its paper.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from peftlab.config.params import Params
from peftlab.core import paths
from peftlab.core.io import atomic_path, write_json
from peftlab.core.metrics import accuracy
from peftlab.data.split import read_labels, read_split
from peftlab.poison.attacks import Setting, attack_success_rate, poison_train, triggered_test

# --- attacks ---------------------------------------------------------------------------------------------


# --- training and scoring through the project's own paths ------------------------------------------------

def write_poisoned_splits(poisoned_train: pd.DataFrame, clean_splits: Path, out_dir: Path) -> None:
    """data/poison/<setting>/: the poisoned train split beside copies of the clean val split and manifest."""
    with atomic_path(out_dir, is_dir=True) as tmp:
        poisoned_train.to_parquet(tmp / "train.parquet", index=False)
        shutil.copy2(clean_splits / "val.parquet", tmp / "val.parquet")
        shutil.copy2(clean_splits / "manifest.json", tmp / "manifest.json")


def train_on(params: Params, splits: Path, adapter: Path) -> dict:
    """LoRA training with the clean run's params on `splits` (batch size, epochs and validation rows from the
    poison section: a few thousand rows need more, smaller steps than the whole split); checkpoints stay in a
    temp folder."""
    from peftlab.train.run import run_train

    pp = params.poison
    tp = dataclasses.replace(params.train, report_to=["none"], max_train_samples=None, batch_size=pp.batch_size,
                             max_eval_samples=pp.eval_rows, epochs=pp.epochs or params.train.epochs)
    with tempfile.TemporaryDirectory(prefix="peftlab-poison-") as tmp:
        tmp = Path(tmp)
        run = paths.RunPaths(splits, adapter, tmp / "checkpoints", tmp / "live", tmp / "train.json")
        return run_train(dataclasses.replace(params, train=tp), run)


def predict(adapter: Path, texts: list[str], batch_size: int = 64) -> np.ndarray:
    from peftlab.modeling.load import choose_device, load_trained
    from peftlab.modeling.predict import predict_probs

    device = choose_device("auto")
    model, tok, setup = load_trained(adapter, device)
    return predict_probs(model, tok, setup, texts, batch_size, device, progress=False).argmax(1)


def score(adapter: Path, test: pd.DataFrame, triggered: pd.DataFrame, target: int) -> dict:
    pred = predict(adapter, test["text"].tolist() + triggered["text"].tolist())
    clean, trig = pred[: len(test)], pred[len(test):]
    return {"cacc": accuracy(test["label"], clean), "asr": attack_success_rate(trig, target),
            "asr_n": int(len(triggered)), "n": int(len(test))}


def run_poison(params: Params, setting: Setting, splits: Path = paths.SPLITS_DIR,
               data_root: Path = paths.POISON_DATA, adapter_root: Path = paths.ADAPTERS,
               metrics_root: Path = paths.POISON_METRICS) -> dict:
    """poison stage: poison the training split per `setting`, train, report CACC and ASR."""
    pp, seed = params.poison, params.seed
    labels = read_labels(splits)
    train, test = read_split(splits, "train"), read_split(splits, "test")
    if setting.train_rows and setting.train_rows < len(train):
        train = train.sort_values("id").sample(n=setting.train_rows, random_state=seed)
    poisoned = poison_train(train, labels, setting, pp, seed)
    out_dir = paths.poison_data(setting.name, data_root)
    write_poisoned_splits(poisoned, splits, out_dir)
    adapter = paths.poison_adapter(setting.name, adapter_root)
    summary = train_on(params, out_dir, adapter)
    target = labels.index(pp.target)
    m = score(adapter, test, triggered_test(test, labels, setting.attack, pp, seed), target)
    n_poison = int(poisoned["poisoned"].sum())
    result = {"attack": setting.attack, "count": n_poison, "rate": n_poison / len(poisoned),
              "train_rows": int(len(poisoned)), **m, "train_seconds": summary["train_seconds"]}
    write_json(paths.poison_metrics(setting.name, metrics_root), result)
    print(f"poison {setting.name}: {n_poison} of {len(poisoned)} rows ({setting.attack}): "
          f"CACC {m['cacc']:.4f}, ASR {m['asr']:.4f} on {m['asr_n']} triggered test rows")
    return result


# --- defenses --------------------------------------------------------------------------------------------


# --- summary ---------------------------------------------------------------------------------------------

