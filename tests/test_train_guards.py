"""A training run never reports a number it did not earn: nothing-trained runs fail, no
checkpoint holds NaN/Inf, re-runs report stored totals, killed writes leave no temp files."""

import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from mlflow.tracking import MlflowClient

from core.io import pid_alive, write_bytes_atomic
from harness.train import (CHECKPOINT, ENCODER, NonFiniteWeights, NothingTrained, Pretraining, load_checkpoint, pretrain,
                           save_checkpoint)
from methods.base import DataSpec, Method, Recipe, StepOutput, TrainState
from tests.helpers import registered_method
from tests.test_train import _config, _SkipFirstSteps


def _runs(cfg):
    client = MlflowClient(cfg.tracking_uri)
    return client.search_runs([client.get_experiment_by_name("vsbench").experiment_id], order_by=["attributes.start_time ASC"])


# ----------------------------------------------------------------------------- runs that train nothing


def test_a_run_whose_videos_are_all_skipped_fails_naming_the_run_and_the_reasons(motionshapes_tiny, tmp_path):
    # MSCL without its flow cache: every video is undecodable, as when `vsbench data flow` was not run
    cfg = _config(motionshapes_tiny, tmp_path, method="mscl", method_args={"frames": 4, "crop": 32, "stride": 2, "mds": False},
                  epochs=1, batch_size=4, steps_per_epoch=2)
    cfg.data.flow_root = str(tmp_path / "no-flow")
    with pytest.raises(NothingTrained, match=r"runs/mscl-r3d_tiny-s0-\w+: epoch 0 made no step: every one of its micro-batches "
                                             r"was undecodable; (\d+) of \1 videos were skipped as undecodable "
                                             r"\(first: \S+no-flow/u/v_\w+: .*; .*; .*\); the run trained nothing"):
        pretrain(cfg)
    [run] = _runs(cfg)
    assert run.info.status == "FAILED" and "pretrain/wall_time_s" not in run.data.metrics
    assert not list((tmp_path / "runs").glob(f"*/{CHECKPOINT}")) and not list((tmp_path / "runs").glob(f"*/{ENCODER}"))


def test_a_run_whose_every_step_skips_the_optimizer_fails(motionshapes_tiny, tmp_path):
    cfg = _config(motionshapes_tiny, tmp_path, method="skip_test", method_args={"skip_until": 100}, epochs=1, batch_size=4,
                  steps_per_epoch=2)
    with registered_method("skip_test", _SkipFirstSteps):
        with pytest.raises(NothingTrained, match=r"skip_test-r3d_tiny-s0-\w+: all 2 steps skipped the optimizer .*0 of \d+ videos"):
            pretrain(cfg)
    assert not list((tmp_path / "runs").glob(f"*/{CHECKPOINT}"))  # no "finished" checkpoint a re-run would trust


# ----------------------------------------------------------------------------- no NaN/Inf checkpoint


@dataclass(frozen=True)
class _DivergeConfig:
    frames: int = 4
    crop: int = 32
    diverge_at: int = 3


class _DivergeAtStep(Method):
    """A test method whose loss stays finite while its gradient is Inf at one step
    (d sqrt(x)/dx at x = 0): the optimizer step then makes weights Inf after the loss check."""

    Config = _DivergeConfig
    recipe = Recipe(lr=0.01, epochs=3, batch_size=8, milestones=())

    def data_spec(self) -> DataSpec:
        return DataSpec(clips=1, frames=self.config.frames, augment=DataSpec().augment.__class__(size=(32, 32)))

    def training_step(self, batch, state: TrainState) -> StepOutput:
        loss = self.backbone(batch["rgb"][:, 0]).pow(2).mean()
        if state.step == self.config.diverge_at:
            weight = next(self.backbone.parameters())
            loss = loss + (weight - weight.detach()).sum().sqrt()  # 0 forward, Inf backward
        return StepOutput(loss)


@pytest.fixture
def diverge_test():
    with registered_method("diverge_test", _DivergeAtStep):
        yield "diverge_test"


def test_a_divergence_on_an_epochs_last_step_keeps_the_earlier_good_checkpoint(motionshapes_tiny, tmp_path, diverge_test):
    # 2 steps per epoch: step index 3 is the last step of epoch 1, right before its checkpoint
    cfg = _config(motionshapes_tiny, tmp_path, method="diverge_test", method_args={"diverge_at": 3}, epochs=3, batch_size=4,
                  steps_per_epoch=2)
    with pytest.raises(NonFiniteWeights, match=r"non-finite weights after step 4: \d+ tensors hold NaN or Inf \(model\.backbone\.\S+"
                                               r".*\); \S+/last.pt was not written; last good checkpoint: \S+/last.pt \(epoch 1, step 2\)"):
        pretrain(cfg)
    [run_dir] = (tmp_path / "runs").glob("*")
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    assert (ckpt["step"], ckpt["epoch"], ckpt["finished"]) == (2, 1, False)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (run_dir / ENCODER).exists()
    assert [r.info.status for r in _runs(cfg)] == ["FAILED"]


def test_a_checkpoint_is_called_good_only_when_it_is(motionshapes_tiny, tmp_path, diverge_test):
    cfg = _config(motionshapes_tiny, tmp_path, method="diverge_test", method_args={"diverge_at": 100}, run_name="guarded")
    run = Pretraining(cfg)
    run.save()
    path = run.run_dir / CHECKPOINT
    good = path.read_bytes()
    first = next(run.method.backbone.parameters())
    with torch.no_grad():
        first[(0,) * first.dim()] = float("nan")
    with pytest.raises(NonFiniteWeights, match=r"after step 0: 1 tensors hold NaN or Inf \(model\.backbone\.\S+\); .*"
                                               r"last good checkpoint: \S+guarded/last.pt \(epoch 0, step 0\)"):
        run.save()
    assert path.read_bytes() == good
    with pytest.raises(NonFiniteWeights, match=rf"{ENCODER} was not written"):
        run.save_encoder()
    save_checkpoint(path, run._checkpoint_state(finished=False))  # a poisoned file, as an unguarded writer left it
    with pytest.raises(NonFiniteWeights) as err:
        run.save()
    assert "last good" not in str(err.value) and "last.pt is not a good checkpoint either: NaN/Inf in 1 tensors" in str(err.value)
    with pytest.raises(NonFiniteWeights, match=r"last.pt holds NaN/Inf in 1 tensors \(model\.backbone\.\S+\): resuming it would"):
        Pretraining(cfg, resume=True)


# ----------------------------------------------------------------------------- cost totals over segments


def test_resumed_and_finished_runs_report_totals_over_all_segments(motionshapes_tiny, tmp_path):
    cfg = _config(motionshapes_tiny, tmp_path, epochs=2, batch_size=4, steps_per_epoch=1)
    first = Pretraining(cfg)  # segment 1: epoch 0 and its checkpoint, then the process "dies"
    first.run_epoch(None)
    first.state.epoch = 1
    first.save()
    path = first.run_dir / CHECKPOINT
    seg1 = load_checkpoint(path)["totals"]
    clips_per_step = 4 * 2  # 4 videos x 2 clips (MoCo)
    assert seg1["clips"] == clips_per_step and seg1["updates"] == 1 and math.isfinite(seg1["final_loss"])
    assert 0 < seg1["step_time_s"] <= seg1["wall_time_s"] and seg1["peak_memory_mb"] > 0

    resumed = pretrain(cfg, resume=True)  # segment 2: epoch 1
    total = load_checkpoint(path)["totals"]
    assert resumed.steps == 2 and total["clips"] == 2 * clips_per_step and total["updates"] == 2
    assert total["wall_time_s"] > seg1["wall_time_s"] and total["step_time_s"] > seg1["step_time_s"]
    assert (resumed.wall_time_s, resumed.final_loss) == (total["wall_time_s"], total["final_loss"])
    assert resumed.clips_per_s == pytest.approx(total["clips"] / total["step_time_s"])

    again = pretrain(cfg, resume=True)  # finished before: no new step, the stored totals
    assert (again.steps, again.wall_time_s, again.clips_per_s, again.peak_memory_mb, again.final_loss) == (
        2, resumed.wall_time_s, resumed.clips_per_s, resumed.peak_memory_mb, resumed.final_loss)
    logged = _runs(cfg)[-1].data.metrics
    assert logged["pretrain/wall_time_s"] == pytest.approx(resumed.wall_time_s)
    assert logged["pretrain/clips_per_s"] == pytest.approx(resumed.clips_per_s) and logged["pretrain/final_loss"] == resumed.final_loss

    old = load_checkpoint(path)  # a checkpoint that stored no totals: nothing is known, nothing is logged
    del old["totals"]
    torch.save(old, path)
    unknown = pretrain(cfg, resume=True)
    assert math.isnan(unknown.wall_time_s) and math.isnan(unknown.clips_per_s) and math.isnan(unknown.final_loss)
    metrics = _runs(cfg)[-1].data.metrics
    assert "pretrain/params" in metrics
    assert not {"pretrain/wall_time_s", "pretrain/clips_per_s", "pretrain/peak_memory_mb", "pretrain/final_loss"} & metrics.keys()


# ----------------------------------------------------------------------------- stale temp files

_KILLED_WRITER = """
import os, signal, sys
from core.io import atomic_write
with atomic_write(sys.argv[1]) as f:
    f.write(b"half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_write(path) -> None:
    """An atomic write of ``path`` in a process killed (SIGKILL) mid-write: it leaves its temp file."""
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _temp_files(folder):
    return sorted(p.name for p in folder.glob(".*.tmp"))


def test_atomic_write_removes_temp_files_of_dead_writers_only(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"good")
    _killed_write(tmp_path / "last.pt")
    [stale] = _temp_files(tmp_path)
    pid = int(stale.split(".")[-3])
    assert stale.startswith(".last.pt.") and not pid_alive(pid)
    assert (tmp_path / "last.pt").read_bytes() == b"good"  # the interrupted write left the target as it was
    live = tmp_path / f".encoder.pt.{os.getpid()}.abcd1234.tmp"  # a write in progress in a living process
    live.write_bytes(b"")
    write_bytes_atomic(tmp_path / "table.csv", b"a,b\n")
    assert _temp_files(tmp_path) == [live.name]


def test_a_run_removes_stale_temp_files_from_its_folder_at_start(motionshapes_tiny, tmp_path):
    cfg = _config(motionshapes_tiny, tmp_path, run_name="stale")
    run_dir = tmp_path / "runs" / "stale"
    run_dir.mkdir(parents=True)
    _killed_write(run_dir / CHECKPOINT)
    assert len(_temp_files(run_dir)) == 1
    Pretraining(cfg)
    assert _temp_files(run_dir) == []


# ----------------------------------------------------------------------------- settings refused before training, in one line


@pytest.mark.parametrize("changes, message", [
    ({"batch_size": 5000}, r"batch_size 5000 is larger than the \d+ videos of .*: set batch_size to at most \d+"),
    ({"method_args": {"frames": 0, "crop": 32}}, r"method 'moco' with method_args \{'frames': 0, 'crop': 32\}: .*frames"),
    ({"method_args": {"frames": 4, "crop": 500}}, r"crop 500x500 \(method_args.crop\) is larger than the decoded frames 32x43"),
])
def test_settings_that_cannot_train_are_refused_before_training_naming_the_key(motionshapes_tiny, tmp_path, changes, message):
    from core.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        Pretraining(_config(motionshapes_tiny, tmp_path, **changes))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"not a checkpoint", "not a checkpoint vsbench wrote"),
    ({"weights": 1}, "not a vsbench encoder file (no backbone, state_dict)"),
])
def test_eval_of_a_file_that_is_no_encoder_is_one_line_naming_it(motionshapes_tiny, tmp_path, capsys, content, message):
    from harness.cli import main

    path = tmp_path / "encoder.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    assert main(["eval", str(path), "--data", str(motionshapes_tiny)]) == 2
    [line] = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("vsbench:")]
    assert line.startswith(f"vsbench: error: {path}: {message}")  # before the data is checked or a feature extracted
