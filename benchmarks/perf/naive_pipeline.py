"""The seed repositories' input pipeline, as a baseline for the throughput benchmarks.

Augmentation on the CPU, one frame at a time, with torchvision's functional ops on each (C, H, W)
frame and parameters drawn once per clip (so the work is the same as vsbench's batched pipeline,
only organised the way the seed code does it), then a float copy to the device. Two ways in:

- :class:`NaiveAugment` stands in for the harness's ``DeviceAugment`` in ``Pretraining``: the
  augmentation runs in the training process (step benchmarks on batches held in memory);
- :class:`SeedStyleClips` is a ``ClipDataset`` whose loader workers augment each video after
  decoding it, as the seed repositories' ``Dataset.__getitem__`` does; :class:`ToDevice` then
  replaces ``DeviceAugment`` (end-to-end benchmarks with real decoding, ``benchmarks/gpu``).
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from core.data.loader import ClipDataset
from core.data.transforms import AugmentConfig, VideoAugment, sample_crop_params


def per_frame_clip(clip: torch.Tensor, g: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """One uint8 (T, H, W, 3) clip, frame by frame, with per-clip parameters -> float (3, T, h, w)."""
    H, W = clip.shape[1:3]
    box = sample_crop_params(1, cfg, g, (H, W))
    top, left = int(round(box.y0.item() * H)), int(round(box.x0.item() * W))
    h, w = int(round(box.h.item() * H)), int(round(box.w.item() * W))
    u = torch.rand(8, generator=g).tolist()
    jitter = u[0] < cfg.jitter_p
    b, c, s = (1 - x + 2 * x * r for x, r in zip(cfg.jitter[:3], u[1:4]))
    hue = cfg.jitter[3] * (2 * u[4] - 1)
    sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * u[7]
    frames = []
    for frame in clip.permute(0, 3, 1, 2):  # (3, H, W) uint8
        f = TF.resized_crop(frame, top, left, h, w, list(cfg.size))
        if box.flip.item():
            f = TF.horizontal_flip(f)
        f = TF.to_dtype(f, torch.float32, scale=True)
        if jitter:
            f = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(f, b), c), s), hue)
        if u[5] < cfg.grey_p:
            f = TF.rgb_to_grayscale(f, num_output_channels=3)
        if u[6] < cfg.blur_p:
            f = TF.gaussian_blur(f, [cfg.blur_kernel] * 2, [sigma, sigma])
        frames.append(TF.normalize(f, list(cfg.mean), list(cfg.std)) if cfg.normalize else f)
    return torch.stack(frames, dim=1)


def augment_video(sample: dict, g: torch.Generator, spec) -> dict:
    """One video's uint8 clips -> float clips: ``rgb`` (clips, T, H, W, 3) frame by frame,
    ``flow`` (clips, T, H, W, 2) clip by clip (geometry only); other keys are kept."""
    out = dict(sample)
    out["rgb"] = torch.stack([per_frame_clip(c, g, spec.augment) for c in sample["rgb"]])
    if "flow" in sample:
        out["flow"] = VideoAugment(spec.augment, flow=True, negate_u_on_flip=spec.flow_flip_negates_u)(sample["flow"], g)
    return out


class NaiveAugment:
    """CPU per-frame augmentation of a loader batch in the training process, then a float32 copy to ``device``."""

    def __init__(self, spec, device: torch.device, seed: int = 0):
        self.spec, self.device = spec, device
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batch: dict) -> dict:
        videos = [augment_video({m: batch[m][i] for m in ("rgb", "flow") if m in batch}, self.generator, self.spec)
                  for i in range(len(batch["rgb"]))]
        out = {k: v.to(self.device) for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in ("rgb", "flow")}
        out.update({m: torch.stack([v[m] for v in videos]).to(self.device) for m in videos[0]})
        return out


class SeedStyleClips(ClipDataset):
    """A ``ClipDataset`` whose workers augment every decoded video on the CPU, frame by frame
    (:func:`augment_video`), with a generator drawn from (seed, epoch, video index)."""

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        sample = super().__getitem__(item)
        if "skipped" in sample:
            return sample
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        return augment_video(sample, torch.Generator().manual_seed(seed), self.request)


class ToDevice:
    """Stands in for ``DeviceAugment`` when the loader already delivers augmented float clips."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
