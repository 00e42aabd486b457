"""Suites beyond one process: jobs submitted through submitit (its local executor runs them here as
they would run on SLURM), a job preempted and requeued, the generated SLURM script, and how a second
`vsbench run` treats jobs done, under way and failed."""

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.launch import ATTEMPTS, JOBS_FILE, SlurmSettings
from harness.train import CHECKPOINT, load_checkpoint
from tests.helpers import write_suite

CPU_JOB = {"gpus_per_node": 0, "cpus_per_task": 1, "time_min": 10, "signal_delay_s": 30}


def _runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


PREEMPTED = {"references": ["random init"], "pretrain": {"epochs": 8, "steps_per_epoch": 3, "checkpoint_every": 1, "log_every": 1},
             "eval": {"protocols": []}, "slurm": {**CPU_JOB, "poll_s": 0.5}}
JOBS = ["moco-r3d_tiny-s0", "random-init-r3d_tiny-s0"]


def _preempted_suite_equals_an_uninterrupted_one(data, tmp_path, monkeypatch, capsys, launcher: str, preempt) -> None:
    """Submit a suite of two jobs (moco, random init) with ``launcher``, call ``preempt(attempt)`` once
    moco's first epoch is saved, wait, and compare with the same suite run here without interruption."""
    uninterrupted = tmp_path / "local"
    uninterrupted.mkdir()
    monkeypatch.chdir(uninterrupted)
    assert main(["run", str(write_suite(uninterrupted / "p.toml", data, "p", **PREEMPTED))]) == 0

    cluster = tmp_path / "cluster"
    cluster.mkdir()
    monkeypatch.chdir(cluster)
    suite = write_suite(cluster / "p.toml", data, "p", **PREEMPTED)
    capsys.readouterr()
    assert main(["run", str(suite), "--launcher", launcher]) == 0  # submits and returns
    assert f"2 job(s) submitted ({launcher})" in capsys.readouterr().out
    run_dir, store = cluster / "runs" / JOBS[0], cluster / "runs" / "slurm" / "stores" / JOBS[0]
    deadline = time.monotonic() + 300
    while not (run_dir / CHECKPOINT).exists() and time.monotonic() < deadline:  # the first epoch's checkpoint
        time.sleep(0.01)
    [attempt] = json.loads((store / ATTEMPTS).read_text())
    preempt(attempt)  # what SLURM sends ahead of a preemption or the time limit
    assert main(["run", str(suite), "--launcher", launcher, "--wait"]) == 0
    out = capsys.readouterr().out
    assert f"0 job(s) submitted ({launcher})" in out  # the job under way is not submitted twice
    table = out[out.index("row "):]
    assert "\nmoco " in table and "\nrandom init " in table  # the table, from the jobs' stores merged into the main one

    attempts = json.loads((store / ATTEMPTS).read_text())
    assert len(attempts) == 2 and attempts[0]["job_id"] == attempts[1]["job_id"]  # the same job, requeued
    text = "".join(log.read_text() for log in (cluster / "runs" / "slurm" / "logs").glob("*/*_0_log.*"))
    assert "for the scheduler; the checkpoint resumes it exactly" in text and "Requeued job" in text
    stopped_at = int(text.split("stopped at epoch ")[1].split(", step ")[1].split()[0])
    assert 3 <= stopped_at < 24, "the signal came after the run ended: make it longer"
    a, b = (load_checkpoint(folder / "runs" / JOBS[0] / CHECKPOINT) for folder in (uninterrupted, cluster))
    assert b["finished"] and b["step"] == a["step"] == 24
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key

    uri = f"sqlite:///{cluster}/mlflow.db"
    runs = _runs(uri, "p")
    parents = {r.info.run_id for r in runs if r.data.tags.get("kind") == "suite"}  # the submitting call's, and --wait's
    children = {r.data.tags["row"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") in parents}
    assert sorted(children) == ["moco", "random init"] and all(r.info.status == "FINISHED" for r in children.values())
    assert "pretrain/wall_time_s" in children["moco"].data.metrics  # the cost of both attempts, logged after the requeue
    history = MlflowClient(uri).get_metric_history(children["moco"].info.run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, 25))  # one MLflow run for both attempts, each step once
    for job in JOBS:  # each job wrote its own store, never the main one
        assert (cluster / "runs" / "slurm" / "stores" / job / "mlflow.db").exists()
    [book] = json.loads((cluster / "runs" / "slurm" / JOBS_FILE).read_text()).values()
    assert sorted(book) == JOBS

    assert main(["run", str(suite), "--launcher", launcher]) == 0
    assert f"0 job(s) submitted ({launcher}), 0 under way, 2 done before" in capsys.readouterr().out
    assert len([r for r in _runs(uri, "p") if r.data.tags.get("kind") != "suite"]) == 2  # merged once: no run copied twice


@pytest.mark.slow  # job processes and a local run to compare with
def test_a_suite_through_submitit_with_a_preempted_job_ends_as_if_uninterrupted(motionshapes_tiny, tmp_path, monkeypatch, capsys):
    _preempted_suite_equals_an_uninterrupted_one(motionshapes_tiny, tmp_path, monkeypatch, capsys, "submitit-local",
                                                 lambda attempt: os.kill(attempt["pid"], signal.SIGUSR2))


def _slurm_answers() -> bool:
    return shutil.which("sbatch") is not None and subprocess.run(["sinfo"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("VSBENCH_SLURM_TESTS") != "1" or not _slurm_answers(),
                    reason="needs a running SLURM (e.g. one node from the slurmctld and slurmd packages, docs/scale.md) and "
                    "VSBENCH_SLURM_TESTS=1; a requeued job waits about two minutes before SLURM starts it again")
def test_on_a_real_slurm_a_preempted_job_requeues_and_resumes_exactly(motionshapes_tiny, tmp_path, monkeypatch, capsys):
    _preempted_suite_equals_an_uninterrupted_one(motionshapes_tiny, tmp_path, monkeypatch, capsys, "slurm",
                                                 lambda attempt: subprocess.run(["scancel", "--signal=USR2", attempt["job_id"]],
                                                                                check=True))


def _stand_in(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def slurm_commands(tmp_path, monkeypatch):
    """Stand-ins for SLURM's sbatch (keeps each script it is given, answers a job id) and squeue
    (lists the array's two tasks while ``queue_state`` says RUNNING, nothing otherwise): no cluster
    runs here, so submitit's real SLURM path is exercised up to the scheduler's door."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "queue_state").write_text("RUNNING")
    _stand_in(bin_dir, "sbatch", f'n=$(ls {tmp_path}/scripts 2>/dev/null | wc -l)\nmkdir -p {tmp_path}/scripts\n'
              f'cp "$1" {tmp_path}/scripts/$n.sh\necho "Submitted batch job $((4200 + n))"\n')
    _stand_in(bin_dir, "squeue", f'[ "$(cat {tmp_path}/queue_state)" = RUNNING ] && ls {tmp_path}/scripts | '
              f'sed "s/.sh$//" | while read n; do echo "$((4200 + n))_0|RUNNING"; echo "$((4200 + n))_1|PENDING"; done; true\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path


def test_the_slurm_script_asks_for_the_suite_resources_and_jobs_under_way_are_not_resubmitted(motionshapes_tiny, slurm_commands,
                                                                                                monkeypatch, capsys):
    tmp_path = slurm_commands
    monkeypatch.chdir(tmp_path)
    resources = {"partition": "gpu", "account": "vision", "nodes": 2, "gpus_per_node": 4, "cpus_per_task": 10, "mem_gb": 64,
                 "time_min": 720, "constraint": "h100", "array_parallelism": 1, "signal_delay_s": 150,
                 "setup": ["source /opt/venv/bin/activate"]}
    suite = write_suite(tmp_path / "c.toml", motionshapes_tiny, "c", references=["random init"], slurm=resources)
    assert main(["run", str(suite), "--launcher", "slurm"]) == 0
    assert "2 job(s) submitted (slurm)" in capsys.readouterr().out
    [script] = list((tmp_path / "scripts").glob("*.sh"))
    lines = script.read_text().splitlines()
    for expected in ("#SBATCH --partition=gpu", "#SBATCH --account=vision", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
                     "#SBATCH --gpus-per-node=4", "#SBATCH --cpus-per-task=10", "#SBATCH --mem=65536M", "#SBATCH --time=720",
                     "#SBATCH --constraint=h100", "#SBATCH --signal=USR2@150", "#SBATCH --array=0-1%1",
                     "source /opt/venv/bin/activate"):
        assert expected in lines, f"{expected!r} not in the script:\n{script.read_text()}"

    assert main(["run", str(suite), "--launcher", "slurm"]) == 0  # squeue lists both tasks
    assert "0 job(s) submitted (slurm), 2 under way" in capsys.readouterr().out
    (tmp_path / "queue_state").write_text("GONE")  # both ended without a result: failed
    assert main(["run", str(suite), "--launcher", "slurm"]) == 0
    out = capsys.readouterr().out
    assert "job moco-r3d_tiny-s0 (scheduler job 4200_0) failed; its log: " in out and "4200_0_0_log.err" in out
    assert "2 job(s) submitted (slurm)" in out
    assert len(list((tmp_path / "scripts").glob("*.sh"))) == 2


def test_slurm_settings_are_checked():
    with pytest.raises(ValueError, match="slurm.signal_delay_s = 600 is not shorter than slurm.time_min = 10 minutes"):
        SlurmSettings(time_min=10, signal_delay_s=600)
    with pytest.raises(ValueError, match="gpus_per_node"):
        SlurmSettings(gpus_per_node=-1)


@pytest.mark.slow  # two job processes
def test_the_tasks_of_a_job_form_one_process_group(tmp_path):
    from harness.launch import make_executor
    from tests.job_tasks import ranks_and_sum

    settings = SlurmSettings(gpus_per_node=2, cpus_per_task=1, time_min=5, signal_delay_s=30)  # 2 tasks, gloo on the CPU
    job = make_executor("submitit-local", settings, tmp_path).submit(ranks_and_sum)
    assert sorted(job.results()) == [(0, 2, 3.0), (1, 2, 3.0)]
