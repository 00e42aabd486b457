"""Throughput (clips/s) of the batched video augmentation against a per-frame baseline.

Run: ``.venv/bin/python -m pytest benchmarks/perf/test_augment_perf.py --benchmark-only``
(the plain test run only collects ``tests/``). Every benchmark records
``extra_info["clips_per_s"] = batch / mean time per batch``. Input: uint8 (B, 16, 128, 171, 3)
clips -> float (B, 3, 16, 112, 112), the default :class:`AugmentConfig` (crop+flip, jitter p=0.8,
grey p=0.2, blur p=0.5, normalise).

The baseline mimics the seed repositories: a Python loop over clips and frames applying
torchvision.transforms.v2 functional ops to each (C, H, W) frame, with parameters drawn once per
clip (so the work is comparable; the crop resize there is antialiased, as with PIL).
"""

from __future__ import annotations

import pytest
import torch

from core.data.transforms import AugmentConfig, VideoAugment
from benchmarks.perf.naive_pipeline import per_frame_clip

T, H, W = 16, 128, 171
CFG = AugmentConfig()


def _clips(batch: int, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, T, H, W, 3), dtype=torch.uint8, generator=g).to(device)


def _record(benchmark, batch: int) -> None:
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["batch"] = batch
        benchmark.extra_info["clips_per_s"] = batch / benchmark.stats.stats.mean


def test_batched_pipeline_cpu(benchmark):
    batch = 16
    x, aug, g = _clips(batch), VideoAugment(CFG), torch.Generator().manual_seed(1)
    out = benchmark.pedantic(aug, args=(x, g), rounds=5, iterations=1, warmup_rounds=1)
    assert out.shape == (batch, 3, T, *CFG.size)
    _record(benchmark, batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
def test_batched_pipeline_cuda(benchmark, generator_device):
    """Data on the GPU; parameters drawn on a CPU generator (pinned copies) or a CUDA one."""
    batch = 64
    x, aug = _clips(batch, "cuda"), VideoAugment(CFG)
    g = torch.Generator(device=generator_device).manual_seed(1)

    def run() -> torch.Tensor:
        out = aug(x, g)
        torch.cuda.synchronize()
        return out

    out = benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=3)
    assert out.shape == (batch, 3, T, *CFG.size)
    _record(benchmark, batch)


def test_per_frame_baseline_cpu(benchmark):
    batch = 16
    x, g = _clips(batch), torch.Generator().manual_seed(1)

    def run() -> torch.Tensor:
        return torch.stack([per_frame_clip(clip, g, CFG) for clip in x])

    out = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert out.shape == (batch, 3, T, *CFG.size)
    _record(benchmark, batch)
