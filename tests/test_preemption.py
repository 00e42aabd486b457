"""A scheduler's stop signal (SLURM preemption, time limit) in the middle of an epoch: the run saves at
the step boundary, hands over, and resumes to the same parameters as a run never stopped."""

import os
import signal

import pytest
import torch
from mlflow.tracking import MlflowClient

from core import preemption
from core.config import PretrainConfig
from harness.train import CHECKPOINT, load_checkpoint, pretrain
from methods.moco import MoCo
from tests.helpers import registered_method

SIGNAL_AT: list[int | None] = [None]  # the optimizer step after which the test method signals its own process


class _MoCoSignalling(MoCo):
    """MoCo (shuffle BN draws from the torch generator: a resume must restore it exactly) that sends
    this process SIGUSR2 after step ``SIGNAL_AT[0]``, as SLURM does ahead of a preemption."""

    def after_optimizer_step(self, state) -> None:
        super().after_optimizer_step(state)
        if state.step == SIGNAL_AT[0]:
            os.kill(os.getpid(), signal.SIGUSR2)


@pytest.fixture
def moco_signalling():
    preemption.install(signal.SIGUSR2)
    try:
        with registered_method("moco_signalling", _MoCoSignalling):
            yield "moco_signalling"
    finally:
        preemption.uninstall()
        SIGNAL_AT[0] = None


def _config(data, folder, workers: int) -> PretrainConfig:
    cfg = PretrainConfig(method="moco_signalling", backbone="r3d_tiny", epochs=2, batch_size=4, steps_per_epoch=5, device="cpu",
                         output_dir=str(folder), tracking_uri=f"sqlite:///{folder}/mlflow.db",
                         method_args={"frames": 4, "crop": 32, "queue_size": 16}, decode_size=(32, 43), log_every=1, progress=False)
    cfg.data.path, cfg.data.workers = str(data), workers
    return cfg


@pytest.mark.parametrize("stop_after,workers", [(7, 2), (5, 0)])  # mid-epoch 1 with loader processes; the last step of epoch 0
def test_a_stopped_run_resumes_mid_epoch_to_the_same_parameters(motionshapes_tiny, tmp_path, moco_signalling, stop_after, workers):
    full = pretrain(_config(motionshapes_tiny, tmp_path / "full", workers))
    SIGNAL_AT[0] = stop_after
    config = _config(motionshapes_tiny, tmp_path / "stopped", workers)
    with pytest.raises(preemption.Preempted):
        pretrain(config, resume=True)
    [run_dir] = [p for p in (tmp_path / "stopped").iterdir() if p.is_dir() and p.name != "mlartifacts"]
    saved = load_checkpoint(run_dir / CHECKPOINT)
    epoch, done = divmod(stop_after - 1, 5)  # 5 steps per epoch; a stop after an epoch's last step is still in that epoch
    assert (saved["step"], saved["epoch"], saved["epoch_steps"], saved["finished"]) == (stop_after, epoch, done + 1, False)
    assert saved["epoch_batches"] == done + 1  # one batch per step: nothing undecodable, no accumulation
    client = MlflowClient(config.tracking_uri)
    [killed] = client.search_runs([client.get_experiment_by_name("vsbench").experiment_id])
    assert killed.info.status == "KILLED"  # a requeued segment, not a failure

    SIGNAL_AT[0] = None
    resumed = pretrain(config, resume=True)
    assert resumed.steps == full.steps == 10
    a, b = load_checkpoint(full.run_dir / CHECKPOINT), load_checkpoint(resumed.run_dir / CHECKPOINT)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    [run] = client.search_runs([client.get_experiment_by_name("vsbench").experiment_id])
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"  # the same MLflow run, continued
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, 11))


def test_a_signal_outside_the_training_loop_hands_over_at_once():
    preemption.install(signal.SIGUSR2)
    try:
        with pytest.raises(preemption.Preempted):
            os.kill(os.getpid(), signal.SIGUSR2)
        with preemption.deferred():
            os.kill(os.getpid(), signal.SIGUSR2)  # inside the loop: only recorded
            assert preemption.stop_requested(step=1)
    finally:
        preemption.uninstall()
    assert not preemption.stop_requested(step=2)
