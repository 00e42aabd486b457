"""Train-step throughput per method: the seed repositories' way against vsbench's default path.

Run: ``.venv/bin/python -m pytest benchmarks/perf/test_method_step_perf.py --benchmark-only``.

For every registered method, one optimizer step (augmentation, forward, backward, optimizer,
the method's hooks) through the harness's ``Pretraining.train_step``, in two set-ups:

- ``naive``: fp32, no ``channels_last_3d``, no ``cudnn.benchmark``, augmentation on the CPU one
  frame at a time (``naive_pipeline.NaiveAugment``), as the seed repositories do;
- ``vsbench``: the defaults -- batched augmentation on the device, bf16 autocast and
  ``channels_last_3d`` on CUDA, ``cudnn.benchmark``.

On CUDA: R3D-18, 16x112x112 (each method's own clip layout), batch 64. On the CPU (any machine,
to keep the code honest): r3d_tiny, 8x64x64, batch 4. The loader is bypassed (random uint8 clips
in memory): this measures the step, not decoding; ``test_data_wait`` measures the loader.

Recorded per benchmark (``extra_info``): ``clips_per_s`` (clips of the step's batch, all of a
video's clips counted, per second), ``step_tflop`` (FLOPs of one step as counted by
``FlopCounterMode``: every forward, backward and no-grad key forward the method really runs) and,
on CUDA, ``peak_fraction`` = achieved FLOP rate / the GPU's measured bf16 matmul rate
(``test_bf16_matmul_peak``).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from core.config import PretrainConfig
from core.data.mds import compute_mds
from core.data.synthetic import PRESETS, generate_motionshapes
from harness.train import Pretraining
from methods.base import get_method, list_methods
from benchmarks.perf.naive_pipeline import NaiveAugment

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
BACKBONE, BATCH, FRAMES, CROP = ("r3d_18", 64, 16, 112) if CUDA else ("r3d_tiny", 4, 8, 64)
METHODS = list_methods()
_PEAK: dict[str, float] = {}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """MotionShapes tiny with its flow cache and MDS screening (MSCL reads both)."""
    from pathlib import Path

    from core.data.datasets import open_dataset
    from core.data.modalities import compute_flow_cache

    root = generate_motionshapes(tmp_path_factory.mktemp("data") / "ms", PRESETS["tiny"], workers=2, progress=False)
    videos = open_dataset(root, split=1, subset="train", progress=False)
    compute_flow_cache([(r.path, Path(r.path).stem) for r in videos.records], Path(root) / "flow", workers=2, progress=False)
    stride = get_method("mscl").Config().stride  # screened at the stride MSCL samples at
    compute_mds([Path(r.path).stem for r in videos.records], Path(root) / "flow", stride=stride, workers=2, progress=False)
    return root


def _run(data, tmp_path, method: str, naive: bool) -> Pretraining:
    decode = None if CUDA else (72, 96)
    cfg = PretrainConfig(method=method, backbone=BACKBONE, device=DEVICE, epochs=1, batch_size=BATCH, progress=False,
                         method_args={"frames": FRAMES, "crop": CROP}, decode_size=decode, output_dir=str(tmp_path),
                         amp=not naive, channels_last=not naive, cudnn_benchmark=not naive)
    cfg.data.path, cfg.data.workers = str(data), 0
    run = Pretraining(cfg)
    if naive:
        run.augment = NaiveAugment(run.spec, run.dist.device)
    return run


def _micro_batch(run: Pretraining) -> list[dict]:
    """One loader-shaped uint8 batch for the method's DataSpec (random content)."""
    spec, g = run.spec, torch.Generator().manual_seed(0)
    h, w = spec.decode_size or (128, 171)
    batch = {"index": torch.arange(BATCH), "label": torch.zeros(BATCH, dtype=torch.long)}
    channels = {"rgb": 3, "flow": 2}
    for m in spec.modalities:
        batch[m] = torch.randint(0, 256, (BATCH, spec.clips, spec.frames, h, w, channels[m]), dtype=torch.uint8, generator=g)
    return [batch]


def _step_flops(run: Pretraining, micro: list[dict]) -> float:
    with FlopCounterMode(display=False) as counter:
        run.train_step(micro)
    return float(counter.get_total_flops())


def _bench(benchmark, run: Pretraining, rounds: int) -> None:
    micro = _micro_batch(run)

    def step():
        run.train_step(micro)
        if CUDA:
            torch.cuda.synchronize()

    flops = _step_flops(run, micro)
    for _ in range(2 if CUDA else 1):
        step()  # warm-up (cudnn.benchmark picks its algorithms here)
    benchmark.pedantic(step, rounds=rounds, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable
        return
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info.update(clips_per_s=round(BATCH * run.spec.clips / seconds, 2), step_tflop=round(flops / 1e12, 4))
    if "bf16" in _PEAK:
        benchmark.extra_info["peak_fraction"] = round(flops / seconds / _PEAK["bf16"], 4)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_bf16_matmul_peak(benchmark):
    """The GPU's achieved bf16 dense matmul rate (8192^3), the denominator of ``peak_fraction``."""
    benchmark.group = "bf16 matmul peak"
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def mm():
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()

    mm()
    benchmark.pedantic(mm, rounds=5, iterations=1)
    if benchmark.stats is not None:
        _PEAK["bf16"] = 10 * 2 * 8192**3 / benchmark.stats.stats.mean
        benchmark.extra_info["tflop_per_s"] = round(_PEAK["bf16"] / 1e12, 1)


@pytest.mark.parametrize("path", ["naive", "vsbench"])
@pytest.mark.parametrize("method", METHODS)
def test_method_step(benchmark, data, tmp_path, method, path):
    benchmark.group = f"train step {method}, {BACKBONE} {FRAMES}x{CROP}x{CROP}, batch {BATCH}, {DEVICE}"
    _bench(benchmark, _run(data, tmp_path, method, naive=path == "naive"), rounds=10 if CUDA else 2)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_data_wait(benchmark, data, tmp_path, method):
    """Share of step time spent waiting for the loader (real decoding, all CPU cores as workers)."""
    import os

    cfg = PretrainConfig(method=method, backbone=BACKBONE, device="cuda", epochs=1, batch_size=BATCH, progress=False,
                         method_args={"frames": FRAMES, "crop": CROP}, output_dir=str(tmp_path), steps_per_epoch=20)
    cfg.data.path, cfg.data.workers = os.environ.get("VSBENCH_PERF_DATA", str(data)), os.cpu_count()
    run = Pretraining(cfg)
    run.clips_done, run.step_times, run.data_times = 0, [], []
    benchmark.pedantic(lambda: run.run_epoch(None), rounds=1, iterations=1)
    skip = 3 if len(run.step_times) > 3 else 0  # the first steps wait for the workers to start
    benchmark.extra_info["data_wait_frac"] = round(sum(run.data_times[skip:]) / sum(run.step_times[skip:]), 4)
