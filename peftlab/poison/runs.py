"""Data poisoning: backdoor and label-flip attacks on the training split, and three defenses.

The clean splits are only read. A poisoned training set is written next to them (data/poison/<setting>/, a
`poisoned` column marking its rows) and trained with the clean run's model, LoRA and train params, so the
only difference from the clean run is the poison. Metrics: clean accuracy (CACC) on the clean test split,
attack success rate (ASR) on the test rows whose true label is not the target, with the trigger inserted
within the tokens the model reads.

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

from peftlab.config.params import Params, apply_sweep
from peftlab.core import paths
from peftlab.core.io import atomic_path, write_json
from peftlab.core.metrics import accuracy, proportion_ci
from peftlab.data.split import read_labels, read_split, stratified_sample
from peftlab.poison.attacks import ATTACKS, Setting, attack_success_rate, poison_train, trigger_tokens, triggered_test

# --- training and scoring through the project's own paths ------------------------------------------------

def write_poisoned_splits(poisoned_train: pd.DataFrame, clean_splits: Path, out_dir: Path) -> None:
    """data/poison/<setting>/: the poisoned train split beside copies of the clean val split and manifest."""
    with atomic_path(out_dir, is_dir=True) as tmp:
        poisoned_train.to_parquet(tmp / "train.parquet", index=False)
        shutil.copy2(clean_splits / "val.parquet", tmp / "val.parquet")
        shutil.copy2(clean_splits / "manifest.json", tmp / "manifest.json")


def victim_params(params: Params, setting: Setting | None = None) -> Params:
    """The params a poisoned run (or its clean reference, or a defense's retraining) trains with: the clean
    run's, with the poison section's batch size, epochs and validation rows, the setting's recipe overrides on
    top, and early stopping always off: selecting the checkpoint with the best clean validation accuracy would
    select against the backdoor, so every poisoned run keeps its last step."""
    if setting is not None:
        params = apply_sweep(params, setting.run)     # the attacked run's model, head, recipe and prompt
    pp = params.poison
    tp = dataclasses.replace(params.train, report_to=["none"], max_train_samples=None, batch_size=pp.batch_size,
                             max_eval_samples=pp.eval_rows, epochs=pp.epochs or params.train.epochs)
    lp = params.lora
    if setting is not None:
        tp = dataclasses.replace(tp, **setting.overrides.get("train", {}))
        lp = dataclasses.replace(lp, **setting.overrides.get("lora", {}))
    tp = dataclasses.replace(tp, early_stopping_patience=None)
    return dataclasses.replace(params, train=tp, lora=lp)


def train_on(params: Params, splits: Path, adapter: Path, setting: Setting | None = None,
             init_adapter: Path | None = None) -> dict:
    """Training with `victim_params` on `splits` (from `init_adapter` when given); checkpoints stay in a temp
    folder."""
    from peftlab.train.run import run_train

    with tempfile.TemporaryDirectory(prefix="peftlab-poison-") as tmp:
        tmp = Path(tmp)
        run = paths.RunPaths(splits, adapter, tmp / "checkpoints", tmp / "live", tmp / "train.json")
        return run_train(victim_params(params, setting), run, init_adapter)


def predict_proba(adapter: Path, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """The trained run's class probabilities, (rows, classes), as evaluate computes them."""
    from peftlab.modeling.load import choose_device, load_trained
    from peftlab.modeling.predict import predict_probs

    device = choose_device("auto")
    model, tok, setup = load_trained(adapter, device)
    return predict_probs(model, tok, setup, texts, batch_size, device, progress=False)


def predict(adapter: Path, texts: list[str], batch_size: int = 64) -> np.ndarray:
    return predict_proba(adapter, texts, batch_size).argmax(1)


def trigger_limits(params: Params, frame: pd.DataFrame, trigger: str | None) -> dict[str, int] | None:
    """Row id -> leading words the model reads (model.max_length tokens of the text), less room for the
    trigger itself, so that no inserted trigger is truncated away; None when the attack inserts none."""
    from peftlab.modeling.load import base_info, load_tokenizer
    from peftlab.modeling.truncation import readable_words

    if trigger is None:
        return None
    base = paths.base_model(params.model.name)
    tok = load_tokenizer(base, base_info(base)["family"], params.model.trust_remote_code)
    reserve = trigger_tokens(tok, trigger, params.poison)
    return dict(zip(frame["id"], readable_words(tok, frame["text"].tolist(), params.model.max_length, reserve)))


TEST_TRIGGERS = ("words", "sentence")   # every run is scored with each, so any attack finds its clean reference


def triggered_sets(params: Params, test: pd.DataFrame, labels: list[str]) -> dict[str, pd.DataFrame]:
    """Trigger kind -> the non-target test rows with that trigger inserted (within the tokens the model reads)."""
    return {kind: triggered_test(test, labels, kind, params.poison, params.seed,
                                 trigger_limits(params, test, kind)) for kind in TEST_TRIGGERS}


def predictions(adapter: Path, test: pd.DataFrame, triggered: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per-row predictions (id, label, kind: clean or a trigger kind, pred): what every poisoning metric and
    paired test is computed from."""
    frames = [test.assign(kind="clean")] + [t.assign(kind=k) for k, t in triggered.items()]
    rows = pd.concat(frames, ignore_index=True)
    rows["pred"] = predict(adapter, rows["text"].tolist())
    return rows[["id", "label", "kind", "pred"]]


def score(adapter: Path, test: pd.DataFrame, triggered: pd.DataFrame, target: int) -> dict:
    """CACC on `test` and ASR on `triggered` under the adapter, each with its Wilson 95% interval."""
    pred = predict(adapter, test["text"].tolist() + triggered["text"].tolist())
    clean, trig = pred[: len(test)], pred[len(test):]
    right, hits = int((clean == test["label"].to_numpy()).sum()), int((trig == target).sum())
    return {"cacc": accuracy(test["label"], clean), "asr": attack_success_rate(trig, target),
            "asr_n": int(len(triggered)), "n": int(len(test)),
            "cacc_ci": proportion_ci(right, len(test)), "asr_ci": proportion_ci(hits, len(triggered))}


def run_poison(params: Params, setting: Setting, splits: Path = paths.SPLITS_DIR,
               data_root: Path = paths.POISON_DATA, adapter_root: Path = paths.ADAPTERS,
               metrics_root: Path = paths.POISON_METRICS) -> dict:
    """poison stage: poison the training split per `setting`, train, save per-row predictions on the clean and
    triggered test rows, report CACC and ASR (the paired comparison with the clean reference is poison_report's)."""
    pp, seed = params.poison, params.seed
    victim = victim_params(params, setting)
    labels = read_labels(splits)
    train, test = read_split(splits, "train"), read_split(splits, "test")
    if setting.train_rows and setting.train_rows < len(train):
        # a seeded permutation's first rows, so the smaller sizes of the count sweep are nested in the larger
        train = train.sort_values("id").sample(n=setting.train_rows, random_state=seed)
    if setting.test_rows:
        test = stratified_sample(test, setting.test_rows, seed).sort_values("id").reset_index(drop=True)
    attack = ATTACKS[setting.attack]
    poisoned = poison_train(train, labels, setting, pp, seed, trigger_limits(victim, train, attack.trigger))
    out_dir = paths.poison_data(setting.name, data_root)
    write_poisoned_splits(poisoned, splits, out_dir)
    adapter = paths.poison_adapter(setting.name, adapter_root)
    summary = train_on(params, out_dir, adapter, setting)
    target = labels.index(pp.target)
    preds = predictions(adapter, test, triggered_sets(victim, test, labels))
    with atomic_path(paths.poison_predictions(setting.name, data_root)) as tmp:
        preds.to_parquet(tmp, index=False)
    clean = preds[preds["kind"] == "clean"]
    trig = preds[preds["kind"] == attack.test_trigger]     # none for label flip: it has no trigger to test
    n_poison = int(poisoned["poisoned"].sum())
    result = {"attack": setting.attack, "run": setting.run, "model": victim.model.name, "head": summary["head"],
              "count": n_poison, "rate": n_poison / len(poisoned),
              "train_rows": int(len(poisoned)), "cacc": accuracy(clean["label"], clean["pred"]),
              "asr": attack_success_rate(trig["pred"].to_numpy(), target) if len(trig) else None,
              "asr_n": int(len(trig)), "n": int(len(clean)), "train_seconds": summary["train_seconds"],
              "steps": summary["steps"], "epochs": summary["epochs"],
              **setting.overrides_flat()}
    write_json(paths.poison_metrics(setting.name, metrics_root), result)
    asr = "" if result["asr"] is None else f", ASR {result['asr']:.4f} on {result['asr_n']} triggered test rows"
    print(f"poison {setting.name}: {n_poison} of {len(poisoned)} rows ({setting.attack}): "
          f"CACC {result['cacc']:.4f}{asr}")
    return result
