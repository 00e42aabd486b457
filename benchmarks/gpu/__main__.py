"""The GPU run: one command that measures vsbench on a GPU and writes every figure to files.

    python3 -m benchmarks.gpu           # on the GPU machine (benchmarks/gpu/run.sh): figures to results/gpu
    python3 -m benchmarks.gpu --tiny    # the same stages on the CPU at tiny sizes: figures to runs/gpu-tiny

Stages, each written to ``<out>/gpu.json`` as soon as it ends (a later failure loses nothing):

0. MotionShapes ``standard`` with its flow cache and MSCL's motion screening, generated in the
   background on all CPU cores but two while stages 1 and 2 use the GPU;
1. environment: device, driver, versions, measured bf16/fp32/TF32 matmul rates (:mod:`.checks`);
2. correctness: every Conv3d of R3D-18 in bf16 against fp32, and one training step of every method
   under autocast against fp32; then retrieval time at UCF101 size (:mod:`.throughput`);
3. throughput per method, seed-style path against vsbench's, the channels_last A/B and the
   profile of the slowest method (:mod:`.throughput`);
4. the reduced suite in the time left (:mod:`.reduced_suite`).

Every stage checks the deadline (``--budget-s`` from the start), so the run ends on time with
whatever it measured; the tables (``environment.md``, ``throughput.md``, ``suite.md``) are
rewritten from ``gpu.json`` at the end by :mod:`.report`, each naming device, commit and command.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.gpu import checks, reduced_suite, report, throughput
from core.io import write_text_atomic
from core.tracking import git_commit
from methods.base import list_methods


@dataclass(frozen=True)
class Sizes:
    """Every size the run uses: ``GPU`` on the GPU (R3D-18, 16x112x112, batch 64), ``TINY`` in the CPU dry run."""

    backbone: str
    batch: int
    frames: int
    crop: int
    preset: str
    matmul_n: int
    matmul_reps: int
    conv_batch: int
    check_batch: int
    warmup: int
    steps: int
    step_only: int
    profile_steps: int
    retrieval: tuple[int, int, int]  # queries, gallery, dim
    max_epochs: int
    eval_clips: int
    row_overhead_s: float


GPU = Sizes(backbone="r3d_18", batch=64, frames=16, crop=112, preset="standard", matmul_n=8192, matmul_reps=10, conv_batch=4,
            check_batch=8, warmup=4, steps=12, step_only=5, profile_steps=3, retrieval=(3783, 9537, 512), max_epochs=10,
            eval_clips=4, row_overhead_s=10.0)
TINY = Sizes(backbone="r3d_tiny", batch=8, frames=8, crop=64, preset="tiny", matmul_n=512, matmul_reps=3, conv_batch=2,
             check_batch=4, warmup=1, steps=2, step_only=1, profile_steps=1, retrieval=(300, 900, 128), max_epochs=1,
             eval_clips=2, row_overhead_s=30.0)
#: Method settings of the throughput runs: DCLR's optimizer steps from the first iteration (its warm-up
#: skips updates, which would time less than a training step); MSCL keeps the motionshapes suite's
#: stride, 3 (its 16 frames span 46 of the shortest `standard` video's 48).
METHOD_ARGS = {"mscl": {"stride": 3}, "dclr": {"warmup_iterations": 0}}


def free_memory() -> None:
    """Drop the last stage's runs (their loader workers end with them) and cached device memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Run:
    """The output folder, the figures so far and the deadline."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes):
        self.args, self.sizes = args, sizes
        self.out, self.work = args.out, args.work
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "data.log").unlink(missing_ok=True)
        self.start = time.monotonic()
        self.deadline = self.start + args.budget_s
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
        self.figures: dict = {"commit": git_commit(), "command": "python3 -m benchmarks.gpu " + shlex.join(sys.argv[1:]),
                              "sizes": asdict(sizes), "backend": args.backend, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "stages": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        write_text_atomic(self.out / "gpu.json", json.dumps(self.figures, indent=1, default=str))

    def stage(self, name: str, fn, *, needs_s: float = 0.0):
        """Run one stage, record its figures (or its error) and the seconds it took."""
        if self.left() < needs_s:
            log(f"{name}: skipped, {self.left():.0f} s left < {needs_s:.0f} s needed")
            self.figures["stages"][name] = {"skipped": f"{self.left():.0f} s left"}
            self.save()
            return None
        log(f"{name} ...")
        t = time.monotonic()
        try:
            result = fn()
            self.figures["stages"][name] = {"seconds": time.monotonic() - t, "result": result}
        except Exception as err:
            traceback.print_exc()
            result = None
            self.figures["stages"][name] = {"seconds": time.monotonic() - t, "error": f"{type(err).__name__}: {err}"}
        log(f"{name}: {time.monotonic() - t:.1f} s")
        self.save()
        free_memory()
        return result


def data_folder(run: Run) -> Path:
    return run.args.data or run.work / f"motionshapes-{run.sizes.preset}"


def start_data(run: Run, commands: list[str]) -> subprocess.Popen:
    """``vsbench data`` commands on the run's MotionShapes copy, one after another in the background,
    on all CPU cores but two (the training process and its GPU keep working meanwhile)."""
    folder, workers = shlex.quote(str(data_folder(run))), max(1, len(os.sched_getaffinity(0)) - 2)
    cli = f"{shlex.quote(sys.executable)} -m harness.cli data"
    steps = [f"{cli} {c.format(data=folder)} --workers {workers}" for c in commands]
    logfile = open(run.work / "data.log", "a")
    # its own process group, so that a step stopped at the deadline takes its worker processes with it
    return subprocess.Popen(" && ".join(steps), shell=True, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)


def wait_data(run: Run, process: subprocess.Popen | None) -> dict:
    """Wait for a background data step (none when --data names an existing copy)."""
    t = time.monotonic()
    if process is None:
        return {"waited_s": 0.0, "data": str(data_folder(run))}
    try:
        rc = process.wait(timeout=max(1.0, run.left() - 60))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the shell, the data command and its worker pool
        process.wait()
        raise RuntimeError("data generation did not finish in time") from None
    if rc != 0:
        raise RuntimeError(f"data generation failed (exit {rc}); see data.log in logs.tar.gz")
    return {"waited_s": time.monotonic() - t}


class Throughput:
    """The throughput stages' shared settings and rows (:mod:`.throughput`)."""

    def __init__(self, run: Run):
        s, a = run.sizes, run.args
        self.run, self.sizes = run, s
        self.peak = run.figures["stages"]["environment"]["result"]["bf16_tflops"] * 1e12
        self.clip_flops = throughput.backbone_forward_flops(s.backbone, s.frames, s.crop)
        self.common = dict(data=str(data_folder(run)), workers=a.workers, backbone=s.backbone, batch=s.batch, frames=s.frames,
                           crop=s.crop, device=run.device.type, output_dir=run.work / "throughput", backend=a.backend)

    def rows(self, measure, methods: list[str], **kwargs) -> list[dict]:
        """``measure`` for every (method, path); a failure or the deadline is recorded in its row."""
        rows = []
        for method in methods:
            for path in throughput.PATHS:
                if self.run.left() < 60:
                    rows.append({"method": method, "path": path, "skipped": "out of time"})
                    continue
                log(f"  {method} / {path}")
                try:
                    rows.append(measure(method, path, peak_flops=self.peak, clip_flops=self.clip_flops,
                                        method_args=METHOD_ARGS.get(method), **kwargs, **self.common))
                except Exception as err:
                    traceback.print_exc()
                    rows.append({"method": method, "path": path, "error": f"{type(err).__name__}: {err}"})
                free_memory()
        return rows

    def steps(self, flow: bool) -> dict:
        """The step alone of the methods that read no flow (``flow=False``: they can run while the
        flow cache is computed), or of those that do."""
        methods = [m for m in list_methods() if throughput.needs_flow(m, METHOD_ARGS.get(m)) == flow]
        out = {"rows": self.rows(throughput.measure_step, methods, step_only=self.sizes.step_only), "clip_gflop": self.clip_flops / 1e9}
        if "moco" in methods:
            out["channels_last_ab"] = {"method": "moco", **throughput.channels_last_ab("moco", batch_steps=self.sizes.step_only,
                                                                                          method_args=METHOD_ARGS.get("moco"), **self.common)}
        return out

    def e2e(self) -> dict:
        return {"rows": self.rows(throughput.measure_e2e, list_methods(), warmup=self.sizes.warmup, steps=self.sizes.steps)}

    def profile(self) -> dict:
        """The profile of the method whose step alone is slowest (clips/s) on the vsbench path."""
        rows = [r for r in step_rows(self.run.figures) if r["path"] == "vsbench" and "step_clips_per_s" in r]
        slowest = min(rows, key=lambda r: r["step_clips_per_s"])["method"]
        s = self.sizes
        table = throughput.profile_steps(slowest, steps=s.profile_steps, method_args=METHOD_ARGS.get(slowest), **self.common)
        write_text_atomic(self.run.out / "profile.txt", f"profile of {slowest}: {s.profile_steps} optimizer steps alone, vsbench path, "
                          f"{s.backbone} {s.frames}x{s.crop}x{s.crop}, batch {s.batch}\n\n{table}\n")
        return {"method": slowest}


def step_rows(figures: dict) -> list[dict]:
    """The rows of both step stages (flow-free methods first, then those reading flow)."""
    stages = figures["stages"]
    return [r for name in ("step_throughput", "step_throughput_flow") for r in (stages.get(name, {}).get("result") or {}).get("rows", [])]


def run_suite(run: Run) -> dict:
    s, a, data = run.sizes, run.args, data_folder(run)
    rows = [r for r in (run.figures["stages"].get("e2e_throughput", {}).get("result") or {}).get("rows", []) if r["path"] == "vsbench"]
    rates = {r["method"]: r["clips_per_s"] for r in rows if "clips_per_s" in r}
    views = {r["method"]: r["views"] for r in rows if "views" in r}
    if set(rates) != set(list_methods()):
        raise RuntimeError(f"no throughput figure for {sorted(set(list_methods()) - set(rates))}: the budget cannot be sized")
    from core.data.datasets import open_dataset

    counts = {sub: len(open_dataset(data, split=1, subset=sub, progress=False)) for sub in ("train", "test")}
    available = run.left() - 45  # the table, the archive and the markdown
    plan = reduced_suite.plan_suite(available, max_epochs=s.max_epochs, rates=rates, views=views, train_videos=counts["train"],
                                    test_videos=counts["test"], batch=s.batch, eval_clips=s.eval_clips, row_overhead_s=s.row_overhead_s)
    if plan is None:
        return {"skipped": f"even one epoch is predicted to take longer than the {available:.0f} s left", "rates": rates}
    log(f"  reduced suite: {plan.epochs} epochs, predicted {plan.seconds:.0f} s of {available:.0f} s")
    extra = [] if not a.tiny else ["--set", f"backbones=[\"{s.backbone}\"]", "--set", f"pretrain.batch_size={s.batch}",
                                   "--set", f"eval.finetune.batch_size={s.batch}", *tiny_suite_settings(s)]
    result = reduced_suite.run_reduced_suite(plan, timeout_s=available, data=str(data), work=run.work / "suite", workers=a.workers,
                                             device=run.device.type, backend=a.backend, log_file=run.work / "suite.log", extra_settings=extra)
    result.update(plan=asdict(plan), videos=counts, rates=rates, seconds_left_after=run.left())
    with tarfile.open(run.out / "suite-store.tar.gz", "w:gz") as tar:  # the MLflow store beside the table
        for src in [run.work / "suite" / "mlflow.db"] + [Path(result["report"]) / n for n in ("results.md", "results.csv", "recall_curves.png")]:
            if src.exists():
                tar.add(src, arcname=src.name)
    return result


def tiny_suite_settings(s: Sizes) -> list[str]:
    """The dry run's clip sizes for the suite (the motionshapes suite's are 16x112 from 128x171), and
    ranks that fit its 36-video gallery."""
    sets = {"pretrain.method_args": f"{{ frames = {s.frames}, crop = {s.crop} }}", "eval.features.frames": str(s.frames),
            "eval.retrieval.ks": "[1, 5, 10]", "eval.knn.k": "5",
            "eval.features.crop": str(s.crop), "eval.finetune.frames": str(s.frames), "eval.finetune.crop": str(s.crop)}
    return [part for k, v in sets.items() for part in ("--set", f"{k}={v}")]


def default_backend() -> str:
    import importlib.util

    return "decord" if importlib.util.find_spec("decord") else "pyav"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="where the figures and tables go (default results/gpu; with --tiny runs/gpu-tiny)")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "vsbench-gpu",
                   help="scratch folder: generated data, run folders, the suite's MLflow store (default $TMPDIR/vsbench-gpu)")
    p.add_argument("--data", type=Path, help="an existing MotionShapes copy to use (with flow and mds.json); default: generate one")
    p.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget from the start; every stage keeps to it (default 450)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="loader workers (default: all CPU cores)")
    p.add_argument("--backend", default=default_backend(), choices=("decord", "pyav"),
                   help="video decoder (default: decord when it can be imported, else pyav)")
    p.add_argument("--tiny", action="store_true", help="CPU dry run at tiny sizes: checks every stage end to end")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out or Path("runs/gpu-tiny" if args.tiny else "results/gpu")
    run = Run(args, TINY if args.tiny else GPU)
    s = run.sizes
    log(f"device {run.device}, budget {args.budget_s:.0f} s, out {args.out}, work {args.work}")
    synth = start_data(run, [f"synth --preset {s.preset} --out {{data}}"]) if args.data is None else None
    run.stage("environment", lambda: checks.environment(run.device, matmul_n=s.matmul_n, reps=s.matmul_reps))
    run.stage("conv3d_bf16", lambda: checks.conv3d_check(run.device, batch=s.conv_batch, frames=s.frames, crop=s.crop, backbone=s.backbone))
    run.stage("method_steps_bf16", lambda: checks.method_step_checks(
        run.device, batch=s.check_batch, frames=s.frames, crop=s.crop, backbone=s.backbone, loss_rtol=0.05,
        method_args={**METHOD_ARGS, "supervised": {"num_classes": 12}}))
    run.stage("data_synth", lambda: wait_data(run, synth))
    flow = start_data(run, [f"flow {{data}} --backend {args.backend}", "mds {data} --stride 3"]) if args.data is None else None
    if "result" not in run.figures["stages"]["environment"]:
        log("no environment figures (no peak rate): the throughput stages and the suite are skipped")
    else:
        tp = Throughput(run)
        run.stage("step_throughput", lambda: tp.steps(flow=False), needs_s=60)
        q, g, d = s.retrieval
        run.stage("retrieval", lambda: throughput.retrieval_time(run.device, queries=q, gallery=g, dim=d, k=50, classes=101, rounds=3))
        run.stage("data_flow", lambda: wait_data(run, flow))
        run.stage("step_throughput_flow", lambda: tp.steps(flow=True), needs_s=60)
        run.stage("profile", tp.profile, needs_s=60)
        run.stage("e2e_throughput", tp.e2e, needs_s=60)
        run.stage("suite", lambda: run_suite(run), needs_s=60)
    run.figures["ended"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    run.figures["wall_s"] = time.monotonic() - run.start
    run.save()
    report.write_all(run.out, run.figures, suite_table=run.work / "suite" / "runs" / "report" / "results.md")
    with tarfile.open(run.out / "logs.tar.gz", "w:gz") as tar:
        for name in ("data.log", "suite.log"):
            if (run.work / name).exists():
                tar.add(run.work / name, arcname=name)
    log(f"done in {run.figures['wall_s']:.0f} s; tables in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
