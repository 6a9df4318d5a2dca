"""What makes a training run repeatable: a killed run resumes to the same result, and a rerun writes the same bytes.

The transformers Trainer already restores weights, optimizer, scheduler, RNG states and the data order from a
checkpoint. What it leaves to us, and this module fills in:
- a checkpoint is written file by file, so a kill during the save leaves a folder without its trainer_state.json
  (written last); resuming must skip it rather than crash on it;
- after a resume the Trainer reports `train_loss` over the resumed steps only;
- its logs carry wall-clock values (`*_runtime`, `*_per_second`), so dvclive's files differ on every run, and a
  resumed run appends to curves that already hold the steps after its checkpoint;
- peft keeps `target_modules` as a set, whose order in adapter_config.json follows the per-process string hash.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

# Wall-clock values differ on every run; the Trainer's final `train_loss` covers only the resumed steps (the
# corrected value is in metrics/train.json). Both stay out of dvclive's files.
UNREPEATABLE = re.compile(r"(runtime|_per_second)$|^train_loss$")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def last_complete_checkpoint(folder: str | Path) -> str | None:
    """The newest checkpoint-N whose trainer_state.json parses; incomplete ones (a kill mid-save) are removed."""
    folder = Path(folder)
    found = sorted(((int(m[1]), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))),
                   reverse=True)
    for _, path in found:
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            return str(path)
        except (OSError, ValueError):
            print(f"removing incomplete checkpoint {path} (no readable trainer_state.json)")
            shutil.rmtree(path)
    return None


def checkpoint_step(checkpoint: str | None) -> int:
    return int(_CHECKPOINT.match(Path(checkpoint).name)[1]) if checkpoint else 0


def whole_run_train_loss(log_history: list[dict], resumed_from: int, session_loss: float, global_step: int) -> float:
    """Mean training loss over every step of the run, also after a resume.

    The Trainer averages over the steps trained in this process only. The steps before the checkpoint are in its
    logged `loss` values (each the mean of its logging window), which give back their sum; this is exact up to
    float rounding when the checkpoint falls on a logging step (save_steps a multiple of logging_steps, as in the
    defaults) and otherwise misses the few steps between the last log and the checkpoint.
    """
    if not resumed_from:
        return session_loss
    before, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and entry["step"] <= resumed_from:
            before += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return (before + session_loss * (global_step - resumed_from)) / max(global_step, 1)


def sorted_adapter_config(model) -> None:
    """Give every peft config a sorted target_modules list so adapter_config.json is the same on every run."""
    for cfg in getattr(model, "peft_config", {}).values():
        if isinstance(cfg.target_modules, (set, frozenset)):
            cfg.target_modules = sorted(cfg.target_modules)


def dvclive_callback(live):
    """transformers' DVCLiveCallback without the UNREPEATABLE values, rebuilding the curves of a resumed run.

    The Live object starts a clean folder; on a resume the checkpoint's log history (the logs up to that step)
    is replayed into it first, so the files end exactly as those of a run that was never interrupted.
    """
    from transformers.integrations import DVCLiveCallback

    class ReproducibleDVCLiveCallback(DVCLiveCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            super().on_train_begin(args, state, control, model=model, **kwargs)
            for entry in state.log_history:     # empty unless resumed from a checkpoint
                self.on_log(args, state, control, logs={k: v for k, v in entry.items() if k != "step"})

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            # sorted: the checkpoint stores its log history with sorted keys, and dvclive's metrics.json keeps
            # the order in which keys first arrive
            logs = {k: logs[k] for k in sorted(logs or {}) if not UNREPEATABLE.search(k)}
            super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    return ReproducibleDVCLiveCallback(live=live)
