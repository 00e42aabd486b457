"""The seed repositories' input pipeline, as a baseline for the throughput benchmarks.

Augmentation on the CPU, one frame at a time, with torchvision's functional ops on each (C, H, W)
frame and parameters drawn once per clip (so the work is the same as vsbench's batched pipeline,
only organised the way the seed code does it), then a float copy to the device.
:class:`NaiveAugment` stands in for the harness's ``DeviceAugment`` in ``Pretraining``.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF

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


class NaiveAugment:
    """CPU per-frame augmentation of a loader batch, then a float32 copy to ``device``."""

    def __init__(self, spec, device: torch.device, seed: int = 0):
        self.spec, self.device = spec, device
        self.generator = torch.Generator().manual_seed(seed)
        self.flow = VideoAugment(spec.augment, flow=True, negate_u_on_flip=spec.flow_flip_negates_u)

    def __call__(self, batch: dict) -> dict:
        out = {k: v.to(self.device) for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in ("rgb", "flow")}
        rgb = batch["rgb"]  # (B, clips, T, H, W, 3) uint8
        clips = [per_frame_clip(c, self.generator, self.spec.augment) for c in rgb.flatten(0, 1)]
        out["rgb"] = torch.stack(clips).unflatten(0, rgb.shape[:2]).to(self.device)
        if "flow" in batch:
            flow = batch["flow"]
            out["flow"] = self.flow(flow.flatten(0, 1), self.generator).unflatten(0, flow.shape[:2]).to(self.device)
        return out
