"""The pipeline's guarantees, each on the real `dvc repro` of a tiny copy of this repo (tests/tinyproject.py).

One reference run (fetch, split, train, evaluate, baseline) in a temp git repo serves every test in this module, in
order:
no stage writes outside its declared outs; `dvc repro -f` again gives the same hashes and metrics; a run killed
with SIGKILL during training resumes and ends as the reference ended; the outputs survive a round trip through
an S3 remote (moto's real S3 server on 127.0.0.1); and fake credentials in the environment leave no trace.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tinyproject import PARAMS, commit, declared_outs, dvc, file_hashes, git_env, lock_outs, make_project

pytestmark = pytest.mark.slow

# Fake credentials, in the environment of every run here; the last test looks for them in every file.
SECRETS = {"HF_TOKEN": "hf_FAKEpeftlabTOKEN0123456789abcdefXYZ",
           "AWS_ACCESS_KEY_ID": "AKIAFAKEPEFTLAB7KEY9",
           "AWS_SECRET_ACCESS_KEY": "fAkE/peftlab+Secret0123456789abcdefghijKLMN"}
# Wall-clock measurements: the only values that may differ between two runs of the same seed.
TIMING = {"train_seconds", "train_samples_per_s"}
CACHED_OUTS = ("data/raw", "data/splits", "models/base/tiny-bert", "models/adapters/main", "checkpoints/main")


@dataclass
class Reference:
    proj: Path
    env: dict
    before: dict[str, str]      # file hashes before the first run
    after: dict[str, str]       # ... and after it
    lock: dict[str, str]
    metrics: dict[str, dict]
    logs: list[str]             # stdout + stderr of every command, for the secrets check


def read_metrics(proj: Path) -> dict[str, dict]:
    return {p.relative_to(proj).as_posix(): json.loads(p.read_text())
            for p in sorted((proj / "metrics").rglob("*.json"))}


def files_with_secrets(root: Path) -> list[str]:
    needles = [v.encode() for v in SECRETS.values()]
    return [str(p) for p in root.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles)]


def without(d: dict, keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server, a real HTTP endpoint on 127.0.0.1 (in a thread of this process)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    proj = make_project(tmp_path_factory.mktemp("reference") / "proj")
    env = git_env(proj, SECRETS)
    before = file_hashes(proj)
    first = dvc(proj, "repro", "-f", "evaluate", "baseline", env=env)
    for stage in ("fetch_data", "fetch_model@tiny-bert", "split", "train", "evaluate", "baseline"):
        assert f"Running stage '{stage}'" in first.stdout
    return Reference(proj, env, before, file_hashes(proj), lock_outs(proj), read_metrics(proj),
                     [first.stdout, first.stderr])


def test_no_stage_writes_outside_its_declared_outs(reference):
    outs = declared_outs(reference.proj)
    assert "models/adapters/main" in outs and "metrics/evaluate.json" in outs

    def declared(path: str) -> bool:
        return any(path == o or path.startswith(o + "/") for o in outs)

    # DVC's own bookkeeping (dvc.lock, the .gitignore entries it adds for cached outs) and Python's bytecode
    # cache are the only other files allowed to appear.
    allowed = re.compile(r"^dvc\.lock$|(^|/)\.gitignore$|(^|/)__pycache__/")
    changed = [p for p, h in reference.after.items() if reference.before.get(p) != h]
    stray = [p for p in changed if not declared(p) and not allowed.search(p)]
    assert changed and not stray, stray
    assert set(reference.before) <= set(reference.after)        # nothing deleted either
    assert not [p for p in reference.after if p.endswith(".tmp")]  # no temporary file left by an atomic write


def test_repro_forced_twice_gives_identical_hashes_and_metrics(reference):
    again = dvc(reference.proj, "repro", "-f", "evaluate", "baseline", env=reference.env)
    reference.logs += [again.stdout, again.stderr]
    assert "Running stage 'train'" in again.stdout and "Running stage 'baseline'" in again.stdout
    lock = lock_outs(reference.proj)
    # the baseline stage's metrics, per-method prediction files, plots and tables are among the outs compared
    assert {"baseline:data/predictions/baseline", "baseline:metrics/baseline.json"} <= set(lock)
    assert set(reference.metrics["metrics/baseline.json"]) == set(PARAMS["baseline"]["methods"])
    # Every out identical, byte for byte, except metrics/train.json, which records training wall time.
    assert without(lock, {"train:metrics/train.json"}) == without(reference.lock, {"train:metrics/train.json"})
    metrics = read_metrics(reference.proj)
    assert without(metrics, {"metrics/train.json"}) == without(reference.metrics, {"metrics/train.json"})
    assert without(metrics["metrics/train.json"], TIMING) == without(reference.metrics["metrics/train.json"], TIMING)


def _wait_for_checkpoint(proj: Path, proc: subprocess.Popen, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = sorted((proj / "checkpoints" / "main").glob("checkpoint-*/trainer_state.json"))
        if done:
            return done[0].parent
        if proc.poll() is not None:
            raise AssertionError(f"dvc repro ended ({proc.returncode}) before any checkpoint was written")
        time.sleep(0.05)
    raise AssertionError("no checkpoint within the time limit")


def test_killed_training_resumes_to_the_same_metrics(reference, tmp_path):
    proj = make_project(tmp_path / "proj")
    env = git_env(proj, SECRETS)
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "evaluate"], cwd=proj, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ckpt = _wait_for_checkpoint(proj, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)       # dvc and the train stage under it, at once
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (proj / "models" / "adapters" / "main").exists()    # killed before the end of training
    assert not (proj / "metrics" / "evaluate.json").exists()

    resumed = dvc(proj, "repro", "evaluate", env=env)
    reference.logs += [(tmp_path / "killed.log").read_text(), resumed.stdout, resumed.stderr]
    m = re.search(r"resuming from checkpoints/main/checkpoint-(\d+) \(step (\d+)\)", resumed.stdout)
    assert m, resumed.stdout[-3000:]
    step = int(m[2])
    assert step >= int(ckpt.name.split("-")[1]) > 0
    metrics = read_metrics(proj)
    train, ref_train = metrics["metrics/train.json"], reference.metrics["metrics/train.json"]
    assert train["resumed"] is True and train["resumed_from_step"] == step
    assert step < train["steps"] == ref_train["steps"]
    # Same model, same numbers: every metric file as in the uninterrupted run, the adapter byte for byte.
    assert without(metrics, {"metrics/train.json"}) == without(reference.metrics, {"metrics/train.json",
                                                                                   "metrics/baseline.json"})
    # train_loss is rebuilt from the logged losses before the checkpoint: equal up to float rounding.
    assert train["train_loss"] == pytest.approx(ref_train["train_loss"], rel=1e-9)
    same = TIMING | {"resumed", "resumed_from_step", "train_loss"}
    assert without(train, same) == without(ref_train, same)
    lock = lock_outs(proj)
    for out in ("train:models/adapters/main", "train:dvclive/main", "evaluate:data/predictions/main.parquet"):
        assert lock[out] == reference.lock[out], out      # curves too: the resumed run's dvclive is rebuilt
    assert not list((proj / "checkpoints" / "main").glob("checkpoint-*"))   # cleaned up after success
    assert files_with_secrets(proj) == []


def test_s3_remote_push_wipe_pull_gives_a_clean_status(reference, s3_endpoint):
    import boto3

    proj, env = reference.proj, reference.env
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                 aws_access_key_id=SECRETS["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=SECRETS["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket="peftlab")
    # As the README says: the remote and its endpoint in .dvc/config, the credentials only in the environment.
    dvc(proj, "remote", "add", "-d", "storage", "s3://peftlab/cache", env=env)
    dvc(proj, "remote", "modify", "storage", "endpointurl", s3_endpoint, env=env)
    commit(proj, "results")                       # cache: false outs (metrics, plots, dvclive) live in git
    pushed = dvc(proj, "push", env=env)
    reference.logs += [pushed.stdout, pushed.stderr]
    assert re.search(r"\d+ files? pushed", pushed.stdout), pushed.stdout
    files = file_hashes(proj)

    for out in CACHED_OUTS:
        subprocess.run(["rm", "-rf", str(proj / out)], check=True)
    subprocess.run(["rm", "-rf", str(proj / ".dvc" / "cache")], check=True)
    assert "Data and pipelines are up to date" not in dvc(proj, "status", "evaluate", env=env).stdout

    pulled = dvc(proj, "pull", "--with-deps", "evaluate", env=env)   # the stages that ran (not baseline, poison...)
    reference.logs += [pulled.stdout, pulled.stderr]
    assert "Data and pipelines are up to date" in dvc(proj, "status", "evaluate", env=env).stdout
    assert "in sync" in dvc(proj, "status", "--cloud", "--with-deps", "evaluate", env=env).stdout
    assert file_hashes(proj) == files
    assert "Running stage" not in dvc(proj, "repro", "evaluate", env=env).stdout


def test_fake_credentials_leave_no_trace_in_any_file_or_log(reference, tmp_path):
    # Runs last: by now the reference repo holds two pipeline runs, a push and a pull; the logs of those and of
    # the killed-and-resumed run are in reference.logs.
    assert len([p for p in reference.proj.rglob("*") if p.is_file()]) > 50
    assert files_with_secrets(reference.proj) == []
    assert "endpointurl" in (reference.proj / ".dvc" / "config").read_text()
    text = "\n".join(reference.logs)
    assert "Running stage 'train'" in text
    assert not [v for v in SECRETS.values() if v in text]
