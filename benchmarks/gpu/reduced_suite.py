"""The reduced GPU suite (stage 4 of the GPU run): ``benchmarks/suites/motionshapes.toml`` with one
seed, no ablation rows and the retrieval, linear and kNN protocols (the "supervised" reference row
still trains with the fine-tune protocol), at the largest epoch budget that fits the time left.

The budget is sized from figures measured earlier in the same run, never guessed:
:func:`suite_seconds` prices a budget of ``epochs`` with each method's end-to-end clips/s from the
throughput stage (every view counted), the slowest of those rates for feature extraction and the
supervised row, and a fixed cost per row (process set-up, loader start, checkpoints, MLflow, the
probes) that the CPU dry run bounds. The suite runs through ``vsbench run`` (the ``harness.cli``
module), so its table is the one a user would get.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SUITE = Path("benchmarks/suites/motionshapes.toml")
PROTOCOLS = ["retrieval", "linear", "knn"]


@dataclass(frozen=True)
class SuitePlan:
    """What the reduced suite runs and what it was priced at."""

    epochs: int
    eval_clips: int
    seconds: float  # predicted wall time of the suite


def suite_seconds(epochs: int, *, rates: dict[str, float], views: dict[str, int], train_videos: int, test_videos: int,
                  batch: int, eval_clips: int, row_overhead_s: float) -> float:
    """Predicted seconds of the reduced suite at ``epochs`` per run.

    ``rates``: end-to-end clips/s per method (vsbench path); ``views``: clips per video each method
    trains on. Each self-supervised row pretrains ``epochs`` epochs of ``train_videos // batch``
    full batches and extracts ``eval_clips`` clips of every train and test video; "random init"
    only extracts; "supervised" trains ``epochs`` epochs on one clip per video, then tests.
    Extraction and the supervised row are priced at the slowest method's rate.
    """
    slowest = min(rates.values())
    steps = epochs * (train_videos // batch)
    extract = (train_videos + test_videos) * eval_clips / slowest
    pretrain = sum(steps * batch * views[m] / rate for m, rate in rates.items())
    supervised = steps * batch / slowest + test_videos * eval_clips / slowest
    rows = len(rates) + 2
    return pretrain + (len(rates) + 1) * extract + supervised + rows * row_overhead_s


def plan_suite(available_s: float, *, max_epochs: int, **costs) -> SuitePlan | None:
    """The largest budget in 1..``max_epochs`` epochs whose predicted time fits ``available_s``; None if none does."""
    best = None
    for epochs in range(1, max_epochs + 1):
        seconds = suite_seconds(epochs, **costs)
        if seconds > available_s:
            break
        best = SuitePlan(epochs=epochs, eval_clips=costs["eval_clips"], seconds=seconds)
    return best


def dclr_warmup(epochs: int) -> int:
    """DCLR's warm-up iterations (no optimizer step) at ``epochs``: the motionshapes suite's count
    scaled by the budget, so the warm-up keeps its share of training (at least one iteration)."""
    from core.config import load_toml

    suite = load_toml(SUITE)
    full = suite["overrides"]["dclr"]["method_args"]["warmup_iterations"]
    return max(1, round(full * epochs / suite["pretrain"]["epochs"]))


def finetune_milestones(epochs: int) -> list[float]:
    """The supervised row's learning-rate milestones at ``epochs``: the motionshapes suite's, at the
    same fractions of its fine-tuning epochs (6 and 8 of 10 -> 0.6 and 0.8 of ``epochs``)."""
    from core.config import load_toml

    finetune = load_toml(SUITE)["eval"]["finetune"]
    return [m * epochs / finetune["epochs"] for m in finetune["milestones"]]


def suite_settings(plan: SuitePlan, *, data: str, work: Path, workers: int, device: str, backend: str) -> list[str]:
    """``--set`` options that turn the motionshapes suite into the reduced one."""
    settings = {
        "overrides.dclr.method_args.warmup_iterations": str(dclr_warmup(plan.epochs)),
        "name": '"gpu-reduced"', "seeds": "[0]", "ablations": "[]",
        "data.path": json.dumps(data), "data.workers": str(workers), "data.backend": json.dumps(backend),
        "pretrain.device": json.dumps(device), "pretrain.epochs": str(plan.epochs),
        "pretrain.checkpoint_every": str(plan.epochs), "pretrain.output_dir": json.dumps(str(work / "runs")),
        "eval.protocols": json.dumps(PROTOCOLS), "eval.workers": str(workers),
        "eval.features.clips": str(plan.eval_clips), "eval.finetune.epochs": str(plan.epochs),
        "eval.finetune.milestones": json.dumps(finetune_milestones(plan.epochs)), "eval.finetune.test_clips": str(plan.eval_clips),
    }
    return [part for key, value in settings.items() for part in ("--set", f"{key}={value}")]


def run_reduced_suite(plan: SuitePlan, *, timeout_s: float, data: str, work: Path, workers: int, device: str, backend: str,
                      log_file: Path, extra_settings: list[str] = ()) -> dict:
    """Run the reduced suite with ``vsbench run``; if it did not finish in ``timeout_s``, build the
    table of the runs that did with ``vsbench table``. Returns where the table is and how it ended."""
    work.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    command = [sys.executable, "-m", "harness.cli", "run", str(SUITE), *suite_settings(plan, data=data, work=work, workers=workers,
               device=device, backend=backend), *extra_settings, "--tracking-uri", store]
    status = "finished"
    with open(log_file, "w") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        try:
            rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, env=os.environ.copy()).returncode
            status = "finished" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"stopped at the time limit ({timeout_s:.0f} s)"
    report = work / "runs" / "report"
    if status != "finished":
        table = [sys.executable, "-m", "harness.cli", "table", "gpu-reduced", "--tracking-uri", store, "--out", str(report)]
        with open(log_file, "a") as log:
            log.write(f"$ {' '.join(table)}\n")
            log.flush()
            subprocess.run(table, stdout=log, stderr=subprocess.STDOUT, timeout=120)
    return {"status": status, "command": command, "report": str(report), "store": store}
