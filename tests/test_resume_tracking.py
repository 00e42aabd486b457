"""One logical run is one MLflow run: a killed run, resumed, continues the MLflow run it started
(which then ends FINISHED instead of staying RUNNING forever); a run id the store does not hold,
or a finished run, gives a new run."""

import json
import logging
import signal
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from harness.cli import main
from core.tracking import ERROR_TAG, Tracker
from harness.train import CHECKPOINT, MLFLOW_RUN, Pretraining, load_checkpoint, pretrain, run_tracked
from tests.test_train import _RUN, _config


def _runs(db):
    client = MlflowClient(f"sqlite:///{db}")
    return client, client.search_runs([client.get_experiment_by_name("vsbench").experiment_id])


def _steps(client, run, key="train/loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.slow
def test_a_killed_and_resumed_run_is_one_finished_mlflow_run(motionshapes_tiny, tmp_path):
    out, db = tmp_path / "runs", tmp_path / "mlflow.db"
    args = [*_RUN[3:], "--epochs", "2", "--data", str(motionshapes_tiny), "--output-dir", str(out), "--tracking-uri", f"sqlite:///{db}"]
    proc = subprocess.Popen([*_RUN[:3], *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob(f"*/{CHECKPOINT}")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # right after the checkpoint of epoch 0 (steps 1-5)
    proc.wait()
    [run_dir] = list(out.glob("*"))
    assert not load_checkpoint(run_dir / CHECKPOINT)["finished"], "the run finished before it could be killed; make epochs longer"
    client, [killed] = _runs(db)
    assert killed.info.status == "RUNNING"
    assert _steps(client, killed)[:5] == [1, 2, 3, 4, 5]  # sent before the checkpoint was written

    assert main([*args, "--resume"]) == 0
    client, [run] = _runs(db)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert _steps(client, run) == list(range(1, 11))  # both segments, each step once
    assert {"pretrain/wall_time_s", "pretrain/final_loss", "pretrain/params"} <= run.data.metrics.keys()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "pretrain/final_loss")] == [10]
    assert json.loads((run_dir / MLFLOW_RUN).read_text())["run_id"] == run.info.run_id


def test_a_continued_run_keeps_one_value_per_step_and_loses_the_error_of_its_failed_segment(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(RuntimeError), Tracker("vsbench", "segmented", tracking_uri=uri) as first:
        first.log_params({"lr": 0.1})
        for step in (1, 2, 3):
            first.log_metrics({"train/loss": step}, step=step)
        raise RuntimeError("died at step 3")
    with Tracker("vsbench", "segmented", tracking_uri=uri, continue_run_id=first.run_id) as second:
        second.log_params({"lr": 0.1})  # the same params again: accepted
        for step in (2, 3, 4):  # resumed from the checkpoint of step 1: steps 2 and 3 come again
            second.log_metrics({"train/loss": 10 * step}, step=step)
    client, [run] = _runs(tmp_path / "mlflow.db")
    assert second.run_id == first.run_id == run.info.run_id and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    assert ERROR_TAG not in run.data.tags and run.data.params == {"lr": "0.1"}


def test_a_run_id_the_store_does_not_hold_gives_a_new_run_with_a_warning(motionshapes_tiny, tmp_path, caplog):
    cfg = _config(motionshapes_tiny, tmp_path, run_name="moved", epochs=1, batch_size=4, steps_per_epoch=1)
    run = Pretraining(cfg, resume=True)
    run.run_memo().remember("0" * 32)  # an id of another store
    with caplog.at_level(logging.WARNING, logger="core.tracking"):
        result = run_tracked(run)
    assert f"MLflow run {'0' * 32}, where 'moved' was tracked before, is not a run of experiment 'vsbench'" in caplog.text
    _, [new] = _runs(tmp_path / "mlflow.db")
    assert new.info.run_id == result.run_id != "0" * 32 and new.info.status == "FINISHED"
    assert json.loads((run.run_dir / MLFLOW_RUN).read_text())["run_id"] == new.info.run_id


def test_a_finished_run_run_again_is_a_new_mlflow_run(motionshapes_tiny, tmp_path):
    cfg = _config(motionshapes_tiny, tmp_path, run_name="again", epochs=1, batch_size=4, steps_per_epoch=1)
    first = pretrain(cfg, resume=True)
    second = pretrain(cfg, resume=True)  # nothing left to train; a new evaluation would be a new record
    _, runs = _runs(tmp_path / "mlflow.db")
    assert second.run_id != first.run_id and sorted(r.info.run_id for r in runs) == sorted([first.run_id, second.run_id])
    assert all(r.info.status == "FINISHED" for r in runs)
