"""train.report_to: the Trainer's trackers beside dvclive, checked before anything loads or is written."""
from __future__ import annotations

import importlib.util
import shutil
import struct

import pytest

from conftest import toy_frame, write_splits
from peftlab.config.params import Params, build
from peftlab.core.errors import PeftlabError
from peftlab.core.paths import RunPaths
from peftlab.train.run import check_report_to, run_train


def tiny_params(report_to: list[str]) -> Params:
    p = Params()
    p.model = build(type(p.model), {"name": "tiny-encoder", "max_length": 32}, "model")
    p.lora = build(type(p.lora), {"r": 4, "alpha": 8}, "lora")
    p.train = build(type(p.train), {"max_steps": 3, "batch_size": 8, "logging_steps": 1, "save_steps": 100,
                                    "report_to": report_to}, "train")
    return p


def scalars(event_file) -> dict[str, list[float]]:
    """Scalar summaries of a TensorBoard event file (TFRecord framing: u64 length, u32 crc, data, u32 crc)."""
    from tensorboardX.proto.event_pb2 import Event

    data, i, out = event_file.read_bytes(), 0, {}
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        event = Event.FromString(data[i + 12:i + 12 + n])
        i += 12 + n + 4
        for v in event.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, []).append(v.simple_value)
    return out


@pytest.mark.skipif(not (importlib.util.find_spec("tensorboardX") or importlib.util.find_spec("tensorboard")),
                    reason="tensorboardX (requirements-dev.txt) is not installed")
def test_tensorboard_writes_the_training_loss(project, tiny_models):
    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    write_splits(project, toy_frame(80))
    run_train(tiny_params(["dvclive", "tensorboard"]), RunPaths.for_run("main"))
    events = sorted((project / "checkpoints" / "main" / "runs").rglob("events.out.tfevents.*"))
    assert events, "TensorBoardCallback wrote no event file"
    found = {}
    for f in events:
        found.update(scalars(f))
    assert len(found["train/loss"]) == 3 and all(v > 0 for v in found["train/loss"])
    assert (project / "dvclive" / "main" / "plots" / "metrics" / "loss.tsv").is_file()   # dvclive still there


def test_unknown_tracker_lists_what_the_trainer_supports():
    with pytest.raises(PeftlabError, match=r"train.report_to has 'tensorbord'; allowed: none, .*tensorboard.*"
                                           r"wandb") as e:
        check_report_to(["dvclive", "tensorbord"])
    assert "mlflow" in str(e.value) and "dvclive" in str(e.value)


def test_tracker_without_its_package_fails_before_training(project, tiny_models):
    missing = next((t for t in ("mlflow", "wandb", "clearml", "neptune") if importlib.util.find_spec(t) is None), None)
    if missing is None:
        pytest.skip("every tracker package is installed here")
    shutil.copytree(tiny_models["encoder"], project / "models" / "base" / "tiny-encoder")
    write_splits(project, toy_frame(40))
    with pytest.raises(PeftlabError, match=rf"train.report_to has '{missing}' but its package is not installed "
                                           rf"\(pip install {missing}\)"):
        run_train(tiny_params([missing]), RunPaths.for_run("main"))
    assert not (project / "checkpoints").exists() and not (project / "dvclive").exists()
    assert not (project / "models" / "adapters").exists()
