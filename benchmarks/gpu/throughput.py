"""Train-step throughput per method on real data: the seed repositories' pipeline against vsbench's
(stage 3 of the GPU run), the profile of the slowest method, and retrieval time at UCF101 size.

Each method runs through the harness's own ``Pretraining`` (its DataSpec, recipe, optimizer and
hooks) on MotionShapes read from disk by the loader's workers, in two set-ups:

- ``seed``: the seed repositories' way: fp32 (PyTorch's defaults, so cuDNN may use TF32 for
  convolutions, as in their code), contiguous NCDHW tensors, no ``cudnn.benchmark``, and every
  video augmented on the CPU inside the loader workers, one frame at a time
  (:class:`~benchmarks.perf.naive_pipeline.SeedStyleClips`) with PyTorch's default prefetch of 2;
- ``vsbench``: the defaults: uint8 clips from the workers, batched augmentation on the device,
  bf16 autocast, ``channels_last_3d``, ``cudnn.benchmark``.

Per set-up, two measurements:

- :func:`measure_step`: the optimizer step alone, on a batch of random content held on the host in
  the form the path's loader delivers it (so it needs no data and runs while the data stage keeps
  the CPU cores busy): seconds, FLOPs, peak memory;
- :func:`measure_e2e`: ``steps`` optimizer steps after ``warmup`` through the loader on the
  generated videos, with every CPU core free: clips/s (every view counted), the share of the time
  the training loop waited for the loader (``data_wait``), peak memory.

"Fraction of peak" divides a FLOP rate by the measured bf16
matmul rate, with two FLOP counts: the 3x rule, 3x the backbone's forward FLOPs per clip
per view, and the FLOPs ``FlopCounterMode`` counts in the step the method really runs (key
encoders forward only, heads and losses included).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from backbones import create_backbone
from benchmarks.gpu.checks import random_batch, synchronize
from benchmarks.perf.naive_pipeline import SeedStyleClips, ToDevice
from core.config import PretrainConfig
from core.data.loader import make_loader
from evaluation.retrieval import recall_at_k, topk_neighbours
from harness.train import DeviceAugment, Pretraining, peak_memory_mb
from methods.base import create_method

PATHS = ("seed", "vsbench")


def backbone_forward_flops(backbone: str, frames: int, crop: int) -> float:
    """FLOPs of one forward pass of ``backbone`` on one RGB (3, frames, crop, crop) clip."""
    with torch.device("meta"):
        model = create_backbone(backbone)
        x = torch.empty(1, 3, frames, crop, crop)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def build_run(method: str, path: str, *, data: str, workers: int, backbone: str, batch: int, frames: int, crop: int,
              steps: int, device: str, output_dir: Path, backend: str, method_args: dict | None = None,
              channels_last: bool | None = None) -> Pretraining:
    """A ``Pretraining`` of ``method`` set up for ``path`` ("seed" or "vsbench") with an epoch of
    ``steps`` steps; ``channels_last`` overrides the path's memory format."""
    vsbench = path == "vsbench"
    cfg = PretrainConfig(method=method, backbone=backbone, device=device, epochs=1, batch_size=batch, progress=False,
                         method_args={"frames": frames, "crop": crop, **(method_args or {})}, steps_per_epoch=steps,
                         output_dir=str(output_dir / f"{method}-{path}"), amp=vsbench,
                         channels_last=vsbench if channels_last is None else channels_last, cudnn_benchmark=vsbench)
    cfg.data.path, cfg.data.workers, cfg.data.backend = data, workers, backend
    run = Pretraining(cfg)
    if not vsbench:
        run.loader = make_loader(run.videos, run.spec, run.micro_batch, train=True, workers=workers, seed=cfg.seed,
                                 dataset_class=SeedStyleClips, prefetch_factor=2)
        run.augment = ToDevice(run.dist.device)
    return run


def needs_flow(method: str, method_args: dict | None = None) -> bool:
    """Whether ``method`` reads the flow cache or MSCL's screening (which the data stage makes last)."""
    spec = create_method(method, create_backbone("r3d_tiny"), dataset_size=1024, overrides=method_args).data_spec()
    return "flow" in spec.modalities or spec.sampler == "mds"


def host_batch(run: Pretraining, path: str) -> dict:
    """One batch of random content as the path's loader delivers it: uint8 clips at the decode size
    (vsbench), or float clips already augmented (seed; augmented here on the device, then copied back)."""
    spec = run.spec
    batch = random_batch(spec, run.micro_batch, torch.Generator().manual_seed(0), tuple(spec.decode_size or (128, 171)))
    if path == "vsbench":
        return batch
    augmented = DeviceAugment(spec, run.dist.device, seed=0, channels_last=False)(batch)
    pin = run.dist.device.type == "cuda"
    return {k: (v.cpu().pin_memory() if pin else v.cpu()) for k, v in augmented.items()}


def time_steps(run: Pretraining, batch: dict, steps: int) -> float:
    """Seconds per optimizer step on one batch held on the host (no loader), after one warm-up step."""
    device = run.dist.device
    run.train_step([batch])
    synchronize(device)
    t = time.perf_counter()
    for _ in range(steps):
        run.train_step([batch])
    synchronize(device)
    return (time.perf_counter() - t) / steps


def step_flops(run: Pretraining, batch: dict) -> float:
    with FlopCounterMode(display=False) as counter:
        run.train_step([batch])
    return float(counter.get_total_flops())


def _views(run: Pretraining) -> int:
    return run.spec.clips * len(run.spec.modalities)


def measure_step(method: str, path: str, *, step_only: int, peak_flops: float, clip_flops: float, **run_args) -> dict:
    """The optimizer step alone on a host batch: seconds, clips/s, FLOPs (both counts), peak fraction and memory."""
    run = build_run(method, path, steps=1, **run_args)
    device = run.dist.device
    batch = host_batch(run, path)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_step = time_steps(run, batch, step_only)
    memory = peak_memory_mb(device) / 1024
    counted = step_flops(run, batch)
    clips = run.micro_batch * _views(run)
    flops_3x = 3 * clip_flops * clips
    return {"method": method, "path": path, "batch": run.micro_batch, "views": _views(run), "step_s": per_step,
            "step_clips_per_s": clips / per_step, "step_tflop_counted": counted / 1e12, "step_tflop_3x": flops_3x / 1e12,
            "peak_fraction_3x": flops_3x / per_step / peak_flops, "peak_fraction_counted": counted / per_step / peak_flops,
            "step_peak_memory_gb": memory}


def measure_e2e(method: str, path: str, *, warmup: int, steps: int, peak_flops: float, clip_flops: float, **run_args) -> dict:
    """``steps`` optimizer steps after ``warmup`` through the loader: clips/s, data-wait share, peak memory."""
    run = build_run(method, path, steps=warmup + steps, **run_args)
    device = run.dist.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run.run_epoch(None)
    step_times, data_times = run.step_times[warmup:], run.data_times[warmup:]
    if len(step_times) < steps:
        raise RuntimeError(f"{method}/{path}: only {len(run.step_times)} steps ran (skipped videos: {len(run.loader.skipped)})")
    seconds, clips = sum(step_times), run.micro_batch * _views(run) * len(step_times)
    return {"method": method, "path": path, "views": _views(run), "steps": len(step_times), "clips_per_s": clips / seconds,
            "data_wait": sum(data_times) / seconds, "peak_memory_gb": peak_memory_mb(device) / 1024,
            "e2e_peak_fraction_3x": 3 * clip_flops * clips / seconds / peak_flops, "skipped_videos": len(run.loader.skipped)}


def channels_last_ab(method: str, *, batch_steps: int, **run_args) -> dict:
    """Step-only seconds of the vsbench path with and without ``channels_last_3d`` (where it helps)."""
    out = {}
    for channels_last in (True, False):
        run = build_run(method, "vsbench", steps=1, channels_last=channels_last, **run_args)
        out["step_s_channels_last" if channels_last else "step_s_contiguous"] = time_steps(run, host_batch(run, "vsbench"), batch_steps)
    return out


def profile_steps(method: str, *, steps: int, row_limit: int = 25, **run_args) -> str:
    """torch.profiler table of ``steps`` step-only optimizer steps of ``method`` on the vsbench path."""
    from torch.profiler import ProfilerActivity, profile

    run = build_run(method, "vsbench", steps=1, **run_args)
    batch = host_batch(run, "vsbench")
    time_steps(run, batch, 1)  # warm-up: cudnn.benchmark picks its algorithms outside the profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.dist.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run.train_step([batch])
        synchronize(run.dist.device)
    sort = "cuda_time_total" if run.dist.device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=row_limit)


def retrieval_time(device: torch.device, *, queries: int, gallery: int, dim: int, k: int, classes: int, rounds: int) -> dict:
    """Seconds of class-level retrieval (float64 chunked top-k with the tie rule, then R@1..50) of
    ``queries`` test features against a ``gallery`` of train features on ``device``."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, dim, generator=g)
    q_labels, g_labels = torch.randint(0, classes, (queries,), generator=g), torch.randint(0, classes, (gallery,), generator=g)
    q = (centres[q_labels] + 2 * torch.randn(queries, dim, generator=g)).to(device)
    gal = (centres[g_labels] + 2 * torch.randn(gallery, dim, generator=g)).to(device)

    def once() -> dict:
        _, idx = topk_neighbours(q, gal, k)
        return recall_at_k(q_labels.to(device), g_labels.to(device), idx, (1, 5, 10, 20, 50))

    once()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        once()
        synchronize(device)
        times.append(time.perf_counter() - t)
    return {"queries": queries, "gallery": gallery, "dim": dim, "k": k, "seconds": min(times), "seconds_all": times}
