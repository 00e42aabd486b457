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
import torchvision.transforms.v2.functional as TF

from harness.data.transforms import AugmentConfig, VideoAugment, sample_crop_params

T, H, W = 16, 128, 171
CFG = AugmentConfig()


def _clips(batch: int, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, T, H, W, 3), dtype=torch.uint8, generator=g).to(device)


def _record(benchmark, batch: int) -> None:
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["batch"] = batch
        benchmark.extra_info["clips_per_s"] = batch / benchmark.stats.stats.mean


def _per_frame_clip(clip: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One uint8 (T, H, W, 3) clip, frame by frame, with per-clip parameters -> (3, T, 112, 112)."""
    box = sample_crop_params(1, CFG, g, (H, W))
    top, left = int(round(box.y0.item() * H)), int(round(box.x0.item() * W))
    h, w = int(round(box.h.item() * H)), int(round(box.w.item() * W))
    u = torch.rand(8, generator=g).tolist()
    jitter = u[0] < CFG.jitter_p
    b, c, s = (1 - x + 2 * x * r for x, r in zip(CFG.jitter[:3], u[1:4]))
    hue = CFG.jitter[3] * (2 * u[4] - 1)
    sigma = CFG.blur_sigma[0] + (CFG.blur_sigma[1] - CFG.blur_sigma[0]) * u[7]
    frames = []
    for frame in clip.permute(0, 3, 1, 2):  # (3, H, W) uint8
        f = TF.resized_crop(frame, top, left, h, w, list(CFG.size))
        if box.flip.item():
            f = TF.horizontal_flip(f)
        f = TF.to_dtype(f, torch.float32, scale=True)
        if jitter:
            f = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(f, b), c), s), hue)
        if u[5] < CFG.grey_p:
            f = TF.rgb_to_grayscale(f, num_output_channels=3)
        if u[6] < CFG.blur_p:
            f = TF.gaussian_blur(f, [CFG.blur_kernel] * 2, [sigma, sigma])
        frames.append(TF.normalize(f, list(CFG.mean), list(CFG.std)))
    return torch.stack(frames, dim=1)


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
        return torch.stack([_per_frame_clip(clip, g) for clip in x])

    out = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert out.shape == (batch, 3, T, *CFG.size)
    _record(benchmark, batch)
