"""Locks, with real processes: one process at a time trains in a run folder, a lock a killed
process left is taken over, and two processes opening a fresh sqlite MLflow store at once both
succeed."""

import contextlib
import logging
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
from mlflow.tracking import MlflowClient

from core import tracking, tracking_store
from core.io import RUN_LOCK, LockTimeout, RunFolderLocked, pid_alive, run_folder_lock
from harness.train import CHECKPOINT, Pretraining, pretrain
from methods.base import DataSpec, Method, Recipe, StepOutput, TrainState
from tests.helpers import registered_method
from tests.test_train import _config

HOST = socket.gethostname()

_HOLDER = """
import sys
from core.io import file_lock
with file_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def _held_by_another_process(path):
    """A process holding the lock file ``path`` until the block ends (or the test kills it)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


def _holder_of(path) -> list[str]:
    return path.read_text().split()


def test_a_held_run_folder_is_refused_at_once_naming_the_holder(tmp_path):
    folder = tmp_path / "run"
    with _held_by_another_process(folder / RUN_LOCK) as holder:
        start = time.monotonic()
        refused = rf"run folder {re.escape(str(folder))} is in use: \S+/{RUN_LOCK} is held by pid {holder.pid} on host {re.escape(HOST)}"
        with pytest.raises(RunFolderLocked, match=refused + "; wait for that run to end"), run_folder_lock(folder):
            pass
        assert time.monotonic() - start < 2  # refused, not queued
    with run_folder_lock(folder):  # the holder let go: the folder is free, and the file names its new holder
        assert _holder_of(folder / RUN_LOCK) == [str(os.getpid()), HOST]
    assert (folder / RUN_LOCK).read_text() == ""  # let go cleanly


def test_training_refuses_a_run_folder_another_process_holds(motionshapes_tiny, tmp_path):
    cfg = _config(motionshapes_tiny, tmp_path, run_name="busy", epochs=1, batch_size=4, steps_per_epoch=1)
    run_dir = tmp_path / "runs" / "busy"
    with _held_by_another_process(run_dir / RUN_LOCK) as holder:
        with pytest.raises(RunFolderLocked, match=rf"runs/busy is in use: .* pid {holder.pid} on host"):
            pretrain(cfg)
    assert not (run_dir / CHECKPOINT).exists()
    assert not (tmp_path / "mlflow.db").exists()  # refused before an MLflow run was opened


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "run"
    with _held_by_another_process(folder / RUN_LOCK) as holder:
        holder.kill()
        holder.wait()
    assert not pid_alive(holder.pid) and _holder_of(folder / RUN_LOCK) == [str(holder.pid), HOST]
    with caplog.at_level(logging.WARNING, logger="core.io"), run_folder_lock(folder):
        assert _holder_of(folder / RUN_LOCK) == [str(os.getpid()), HOST]
    assert f"taking over the lock left by pid {holder.pid} on host {HOST}" in caplog.text


@dataclass(frozen=True)
class _RaiseConfig:
    frames: int = 4
    crop: int = 32
    error: str = "RuntimeError"


class _RaiseAtFirstStep(Method):
    """A test method whose first step raises ``error`` (an exception, or a Ctrl-C)."""

    Config = _RaiseConfig
    recipe = Recipe(lr=0.01, epochs=1, batch_size=4, milestones=())

    def data_spec(self) -> DataSpec:
        return DataSpec(clips=1, frames=self.config.frames, augment=DataSpec().augment.__class__(size=(32, 32)))

    def training_step(self, batch, state: TrainState) -> StepOutput:
        raise {"RuntimeError": RuntimeError, "KeyboardInterrupt": KeyboardInterrupt}[self.config.error]("stopped by the test")


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_the_run_folder_lock_is_released_when_training_stops(motionshapes_tiny, tmp_path, error):
    with registered_method("raise_test", _RaiseAtFirstStep):
        _stop_training(motionshapes_tiny, tmp_path, error)


def _stop_training(motionshapes_tiny, tmp_path, error) -> None:
    cfg = _config(motionshapes_tiny, tmp_path, method="raise_test", method_args={"error": error.__name__}, run_name="stopped",
                  steps_per_epoch=1)
    with pytest.raises(error, match="stopped by the test"):
        pretrain(cfg)
    folder = tmp_path / "runs" / "stopped"
    assert (folder / RUN_LOCK).read_text() == ""
    with run_folder_lock(folder):  # a lock still held, even by this process, would refuse this
        pass


def test_a_run_refuses_a_checkpoint_written_after_it_read_the_folder(motionshapes_tiny, tmp_path):
    cfg = _config(motionshapes_tiny, tmp_path, run_name="raced", epochs=1, batch_size=4, steps_per_epoch=1)
    late = Pretraining(cfg, resume=True)  # set up while the folder held no checkpoint ...
    Pretraining(cfg, resume=True).run()  # ... then another run trained there to the end
    with pytest.raises(RunFolderLocked, match=r"raced/last.pt changed after this run read it: another process trained"):
        late.run()


_OPEN_STORE = """
import sys, time
from pathlib import Path
from core.tracking import Tracker, runtime_tags
import mlflow.tracking
db, go, ready, name = sys.argv[1:]
runtime_tags()  # imports and git calls done before the start signal: both open the store at once
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.002)
with Tracker("race", name, tracking_uri=f"sqlite:///{db}") as t:
    t.log_metrics({"m": 1.0}, step=1)
print(t.run_id, t.status)
"""


def test_two_processes_opening_a_fresh_store_at_once_both_succeed(tmp_path):
    db, go = tmp_path / "mlflow.db", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_STORE, str(db), str(go), str(tmp_path / f"ready{i}"), f"run{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0 and out.split()[1:] == ["FINISHED"] and out.split()[0] != "None", err
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run0", "run1"]
    assert all(r.info.status == "FINISHED" and r.data.metrics == {"m": 1.0} for r in runs)


def test_a_store_held_too_long_is_an_error_naming_the_store_and_the_holder(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    with tracking.Tracker("waits", "first", tracking_uri=f"sqlite:///{db}"):
        pass
    monkeypatch.setattr(tracking_store, "STORE_LOCK_TIMEOUT_S", 0.2)
    with _held_by_another_process(tmp_path / "mlflow.db.lock") as holder:
        held = rf"\S+mlflow.db.lock is held by pid {holder.pid} on host {re.escape(HOST)} \(waited 0.2 s\); that process is creating"
        with pytest.raises(LockTimeout, match=rf"cannot open the MLflow store sqlite:///{re.escape(str(db))}: {held}"):
            tracking.find_finished_runs("waits", "config_hash", "x", tracking_uri=f"sqlite:///{db}")
