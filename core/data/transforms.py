"""Batched video augmentation on the device: uint8 (B, T, H, W, C) clips -> float (B, C, T, h, w).

The data loader delivers uint8 clips shaped ``(B, T, H, W, C)`` (C=3 for RGB, C=2 for optical flow
stored as quantized u/v with 128 ~ zero motion), already on the device. Everything here works on
the whole batch at once -- no Python loop over clips or frames -- and returns channels-first video
``(B, C, T, h, w)`` in float32, what 3D CNNs take.

Operations
----------
- :func:`to_float_video`: uint8 ``(B, T, H, W, C)`` -> float ``(B, C, T, H, W)`` in [0, 1], one copy.
- :func:`sample_crop_params` + :func:`apply_crop`: random resized crop (RandomResizedCrop semantics:
  area fraction ~ U(scale), log-uniform aspect ratio, up to 10 tries per clip, then the central
  crop at the clamped ratio) fused with a random horizontal flip into ONE bilinear resampling pass
  (``grid_sample``, ``align_corners=False``, border padding). Frames are folded into the channel
  dimension, ``(B, C*T, H, W)``, so one per-clip grid serves every frame. There is no antialiasing:
  fine for the mild downscales we use (128x171 -> 112), not for large ones.
- :func:`color_jitter`: brightness (multiply), contrast (blend with the mean grey level of the
  WHOLE clip), saturation (blend with the per-pixel grey image), hue (shift of the HSV hue). Factors
  follow torchvision (``U(max(0, 1-x), 1+x)``; hue ``U(-h, h)``, ``h <= 0.5``), applied with
  probability ``p`` per clip, always in the fixed order brightness, contrast, saturation, hue
  (torchvision randomises the order per call), clamped to [0, 1] after each op.
  Grey = 0.299 R + 0.587 G + 0.114 B.
- :func:`random_grayscale`: with probability ``p`` per clip, RGB -> grey repeated on 3 channels
  (per frame, or one random channel instead of the luma: see below). The pipeline greys after the
  jitter by default; ``grey_before_jitter`` swaps the two (MLFO's ``train.py`` and DCLR's
  ``moco/loader.py`` grey first). A grey frame stays grey under any jitter (brightness and contrast
  only move its level), but the two orders give different images: a clamp or a hue shift before
  the grey, or a channel-split grey that the luma-based contrast/saturation would otherwise mix.
- :func:`gaussian_blur` / :func:`random_gaussian_blur`: separable Gaussian, per-clip sigma
  (``U(sigma_min, sigma_max)``), fixed odd kernel size, reflect padding, one grouped convolution
  per direction for the whole batch. ``blur_sigma_per="batch"`` gives every clip of a call (or of
  one of ``blur_sigma_groups`` interleaved groups) one sigma, as MSCL's ``GaussianBlur`` draws one
  sigma per call on the selected clips of its query batch and again of its key batch.
- :func:`normalize`: ``(x - mean) / std`` per channel (ImageNet defaults; optional, IIC uses [0, 1]).
- :func:`center_crop_video`: the deterministic evaluation path (optional resize, centre crop).
- :class:`VideoAugment`: the configurable composition (crop+flip, jitter, grey, blur, normalise).
  It works in place on the one buffer the crop produces (the public ops return new tensors), turns
  the caller's autocast off (always float32), and moves per-clip parameters to the GPU with pinned
  non-blocking copies, so an augmentation step does not make the host wait for the GPU.

Per-clip consistency
--------------------
Random parameters are drawn PER CLIP (per batch element) and applied IDENTICALLY to every frame of
that clip, so a clip stays temporally consistent: a crop that moved or a brightness that flickered
from frame to frame would add motion that is not in the video, which the temporal pretext tasks and
the flow modality would then learn. This is the default. Some seed repositories jitter frames
independently, and a method that reproduces one asks for it in its ``AugmentConfig``:
``jitter_per_frame`` draws the jitter factors per frame (the apply/skip decision stays per clip, as
MSCL's kornia pipeline; contrast then blends with each frame's own mean grey), ``grey_per_frame``
draws the grey decision per frame, and ``grey_mode="channel"`` replaces the luma by one random RGB
channel copied to all three (MLFO's DPC-style ``RandomGray``). Randomness comes only from the
``torch.Generator`` passed in; parameters are drawn on that generator's device and then moved to the
data's device, and every random op draws the same amount whatever its probability, so runs are
reproducible and resumable.

Optical flow
------------
Flow gets geometric ops only (crop, flip; no colour ops, no blur). Dequantized flow ``q / 255``
lies in [0, 1] with zero motion at ``u_center = 0.5``. A horizontal flip mirrors the field, so the
horizontal component must change sign: flipped ``u`` is ``2 * u_center - u`` (``1 - u``), ``v`` is
unchanged. Colour-coded flow (MSCL) must not be negated: pass ``negate_u_on_flip=False``. (With
the default centre, the quantized zero 128 becomes 127/255 after a flip: one quantization step.)
Crop boxes are relative (fractions of width and height), so one :class:`CropParams` maps onto an
RGB clip and a flow clip of a different resolution alike. Flow values are not rescaled when a crop
is resized: they stay in the units they were stored in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: torchvision's Kinetics-400 video models (``R3D_18_Weights.KINETICS400_V1`` and siblings) expect these.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
GREY_WEIGHTS = (0.299, 0.587, 0.114)
GREY_MODES = ("luma", "channel")
BLUR_SIGMA_PER = ("clip", "batch")
CROP_TRIES = 10  # RandomResizedCrop's number of attempts before the central fallback

__all__ = [
    "AugmentConfig",
    "CropParams",
    "VideoAugment",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_crop",
    "center_crop_video",
    "color_jitter",
    "gaussian_blur",
    "grayscale",
    "normalize",
    "random_gaussian_blur",
    "random_grayscale",
    "sample_crop_params",
    "to_float_video",
]


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the training pipeline (:class:`VideoAugment`). Probabilities are per clip."""

    size: tuple[int, int] = (112, 112)  # output (h, w)
    scale: tuple[float, float] = (0.2, 1.0)  # crop area as a fraction of the frame area
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio w / h, in pixels
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    jitter_per_frame: bool = False  # jitter factors drawn per frame (MLFO, MSCL); apply/skip stays per clip
    grey_p: float = 0.2
    grey_per_frame: bool = False  # grey decision (and channel) drawn per frame (MLFO's RandomGray)
    grey_mode: str = "luma"  # luma: 0.299 R + 0.587 G + 0.114 B; channel: one random channel copied to all three
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 11
    blur_sigma_per: str = "clip"  # clip: own sigma per clip; batch: one sigma per call (per group, see below)
    blur_sigma_groups: int = 1  # with "batch": clip i of a call is in group i % groups, one sigma per group
    grey_before_jitter: bool = False  # random grey, then jitter (MLFO, DCLR originals); False: jitter, then grey
    normalize: bool = True
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not (0 < self.scale[0] <= self.scale[1]) or not (0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"need 0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1], got {self}")
        if self.grey_mode not in GREY_MODES:
            raise ValueError(f"grey_mode must be one of {GREY_MODES}, got {self.grey_mode!r}")
        if self.blur_sigma_per not in BLUR_SIGMA_PER:
            raise ValueError(f"blur_sigma_per must be one of {BLUR_SIGMA_PER}, got {self.blur_sigma_per!r}")
        if self.blur_sigma_groups < 1:
            raise ValueError(f"blur_sigma_groups must be >= 1, got {self.blur_sigma_groups}")
        if self.blur_kernel % 2 != 1:
            raise ValueError(f"blur_kernel must be odd, got {self.blur_kernel}")
        if not 0 <= self.jitter[3] <= 0.5:
            raise ValueError(f"hue jitter must lie in [0, 0.5], got {self.jitter[3]}")
        for name in ("flip_p", "jitter_p", "grey_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")


@dataclass
class CropParams:
    """Per-clip crop boxes in relative coordinates plus flip flags; every field has shape (B,).

    ``x0, y0`` is the top-left corner and ``w, h`` the size of the box, as fractions of the frame
    width and height (the full frame is ``0, 0, 1, 1``). Being relative, the same parameters
    crop the same region of an RGB clip and of its (maybe lower-resolution) flow clip.
    """

    x0: torch.Tensor
    y0: torch.Tensor
    w: torch.Tensor
    h: torch.Tensor
    flip: torch.Tensor  # bool

    def __len__(self) -> int:
        return self.x0.shape[0]

    def to(self, device: torch.device | str) -> CropParams:
        """The same parameters on ``device``."""
        fields = (self.x0, self.y0, self.w, self.h, self.flip)
        return CropParams(*(_to(t, torch.device(device)) for t in fields))

    @classmethod
    def full(cls, batch: int, flip: bool = False, device: torch.device | str = "cpu") -> CropParams:
        """Whole-frame boxes (identity crop), optionally all flipped."""
        zeros, ones = (torch.full((batch,), v, dtype=torch.float64, device=device) for v in (0.0, 1.0))
        return cls(zeros, zeros.clone(), ones, ones.clone(), torch.full((batch,), flip, device=device))


# --------------------------------------------------------------------------- helpers


def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    """U[0, 1) float64 draws on the generator's own device (CPU or CUDA generator alike)."""
    return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64)


def _to(
    t: torch.Tensor | float | Sequence[float], device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Move a small parameter tensor to ``device`` without blocking the host.

    A plain host -> GPU copy waits for the GPU stream to drain, which would stall the training
    loop's queued work at every augmentation; pinned, non-blocking copies keep it asynchronous.
    """
    t = torch.as_tensor(t)
    if dtype is not None and t.device.type == "cpu":
        t = t.to(dtype)
    if t.device.type == "cpu" and torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device=device, dtype=dtype)


def _per_clip(values: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Per-clip values (B,) (or one scalar for all) as (B, 1, 1, 1, 1), or per-frame values
    (B, T) as (B, 1, T, 1, 1), in ``x``'s dtype and device."""
    return _broadcastable(_to(values, x.device, x.dtype))


def _per_clip_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _broadcastable(_to(mask, x.device, torch.bool))


def _broadcastable(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], 1, t.shape[1], 1, 1) if t.dim() == 2 else t.reshape(-1, 1, 1, 1, 1)


def _video_hw(x: torch.Tensor) -> tuple[int, int]:
    """(H, W) of a uint8 loader clip (B, T, H, W, C) or of a float clip (B, C, T, H, W)."""
    return (x.shape[2], x.shape[3]) if x.dtype == torch.uint8 else (x.shape[3], x.shape[4])


def _as_float_video(x: torch.Tensor) -> torch.Tensor:
    """Accept the loader's uint8 (B, T, H, W, C) or an already converted float (B, C, T, H, W)."""
    if x.dim() != 5:
        raise ValueError(f"expected a 5-D clip batch, got shape {tuple(x.shape)}")
    return to_float_video(x) if x.dtype == torch.uint8 else x


def _check_rgb(x: torch.Tensor) -> None:
    if x.shape[1] != 3:
        raise ValueError(f"colour ops need RGB (B, 3, T, H, W), got shape {tuple(x.shape)}")


def to_float_video(x_uint8: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """uint8 (B, T, H, W, C) -> contiguous float32 (B, C, T, H, W) in [0, 1] (in [0, 255] without
    ``scale``), in one copy."""
    if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 5:
        raise ValueError(f"expected uint8 (B, T, H, W, C), got {x_uint8.dtype} {tuple(x_uint8.shape)}")
    x = x_uint8.permute(0, 4, 1, 2, 3).to(torch.float32, memory_format=torch.contiguous_format)
    return x.div_(255.0) if scale else x


# --------------------------------------------------------------------------- geometry


def sample_crop_params(
    batch: int, cfg: AugmentConfig, generator: torch.Generator, in_size: tuple[int, int]
) -> CropParams:
    """Draw per-clip RandomResizedCrop boxes and flip flags for frames of ``in_size = (H, W)``.

    Follows torchvision's sampling, vectorised over the batch: all ``CROP_TRIES`` tries are drawn
    at once and each clip keeps its first valid one; clips with none get the central crop at the
    clamped aspect ratio. Box sizes and offsets are whole pixels of ``in_size`` (as torchvision),
    returned as fractions of it. ``in_size`` is needed because ``ratio`` is a pixel aspect ratio;
    when two modalities share the crop, pass the size of either (they should have the same aspect).
    """
    H, W = in_size
    area = H * W
    u_area, u_ratio, u_top, u_left = (_rand(generator, batch, CROP_TRIES) for _ in range(4))
    flip = _rand(generator, batch) < cfg.flip_p
    log_lo, log_hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    target = area * (cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * u_area)
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = ok.to(torch.int8).argmax(dim=1, keepdim=True)  # index of the first valid try
    top = torch.floor(u_top * (H - h + 1)).clamp_max(H - h)
    left = torch.floor(u_left * (W - w + 1)).clamp_max(W - w)
    w, h, top, left = (t.gather(1, first).squeeze(1) for t in (w, h, top, left))
    fw, fh = _fallback_crop_size(H, W, cfg.ratio)
    found = ok.any(dim=1)
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    top = torch.where(found, top, torch.floor((H - h) / 2))
    left = torch.where(found, left, torch.floor((W - w) / 2))
    return CropParams(x0=left / W, y0=top / H, w=w / W, h=h / H, flip=flip)


def _fallback_crop_size(H: int, W: int, ratio: tuple[float, float]) -> tuple[float, float]:
    """torchvision's fallback: the whole frame, narrowed to the nearest allowed aspect ratio."""
    in_ratio = W / H
    if in_ratio < ratio[0]:
        return float(W), float(round(W / ratio[0]))
    if in_ratio > ratio[1]:
        return float(round(H * ratio[1])), float(H)
    return float(W), float(H)


def _crop_grid(
    params: CropParams, size: tuple[int, int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Per-clip sampling grids (B, h, w, 2) in grid_sample's normalised coordinates.

    Output pixel centre ``(j + 0.5) / w`` of the box maps to relative frame position
    ``x0 + w_box * (j + 0.5) / w`` (mirrored inside the box when flipped), i.e. to normalised
    ``2 * pos - 1`` with ``align_corners=False`` -- a box of the whole frame at the frame's own
    size samples exactly the pixel centres (identity).
    """
    p = params.to(device)
    h, w = size
    base_x = (torch.arange(w, device=device, dtype=torch.float64) * 2 + 1) / w - 1  # in (-1, 1)
    base_y = (torch.arange(h, device=device, dtype=torch.float64) * 2 + 1) / h - 1
    sign = 1.0 - 2.0 * p.flip.to(torch.float64)
    gx = (2 * p.x0 + p.w - 1)[:, None] + (p.w * sign)[:, None] * base_x  # (B, w)
    gy = (2 * p.y0 + p.h - 1)[:, None] + p.h[:, None] * base_y  # (B, h)
    gx, gy, B = gx.to(dtype), gy.to(dtype), len(p)
    return torch.stack((gx[:, None, :].expand(B, h, w), gy[:, :, None].expand(B, h, w)), dim=-1)


def apply_crop(
    x: torch.Tensor,
    params: CropParams,
    size: tuple[int, int],
    *,
    flow: bool = False,
    negate_u_on_flip: bool = True,
    u_center: float = 0.5,
) -> torch.Tensor:
    """Crop every clip to its box, resize to ``size = (h, w)`` and flip, in one bilinear pass.

    ``x`` is the loader's uint8 (B, T, H, W, C) or a float (B, C, T, H, W); returns float
    (B, C, T, h, w). Frames ride in the channel dimension so one grid per clip serves every frame.
    No antialiasing (mild downscales only). With ``flow=True`` and ``negate_u_on_flip``, channel 0
    (u) of flipped clips becomes ``2 * u_center - u``: mirroring the image reverses horizontal motion.
    """
    quantized = x.dtype == torch.uint8
    x = to_float_video(x, scale=False) if quantized else _as_float_video(x)  # scale the smaller output
    B, C, T, H, W = x.shape
    if len(params) != B:
        raise ValueError(f"{len(params)} crop parameters for a batch of {B}")
    grid = _crop_grid(params, size, x.device, x.dtype)
    with torch.autocast(x.device.type, enabled=False):
        out = F.grid_sample(x.reshape(B, C * T, H, W), grid, mode="bilinear", padding_mode="border",
                            align_corners=False).view(B, C, T, *size)
    if quantized:
        out.div_(255.0)
    if flow and negate_u_on_flip:
        _select_(out[:, 0:1], params.flip, 2 * u_center - out[:, 0:1])
    return out


# --------------------------------------------------------------------------- colour
#
# Each op has an out-of-place public form and an in-place core (``_name_``) that the pipeline runs
# on the buffer it owns: on the CPU a fresh allocation of a full batch (> 32 MB) costs more than the
# arithmetic (page faults), and on the GPU the cores keep peak memory at about one batch.


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Grey level (B, 1, T, H, W) of an RGB clip: 0.299 R + 0.587 G + 0.114 B."""
    _check_rgb(x)
    r, g, b = GREY_WEIGHTS
    grey = x[:, 0:1] * r
    return grey.add_(x[:, 1:2], alpha=g).add_(x[:, 2:3], alpha=b).clamp_(0, 1)


def _select_(y: torch.Tensor, apply: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Overwrite the clips of ``y`` where ``apply`` (B,) holds with ``new`` (broadcastable), in place."""
    return torch.where(_per_clip_mask(apply, y), new, y, out=y)


def _brightness_(y: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return y.mul_(_per_clip(factor, y)).clamp_(0, 1)


def _blend_(y: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``y <- clamp(f * y + (1 - f) * other, 0, 1)``; f = 1 leaves y bit-exact (lerp weight 0)."""
    return y.lerp_(other, _per_clip(1 - factor, y)).clamp_(0, 1)


def _contrast_(y: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the mean grey level: of the whole clip for per-clip factors (B,), of each frame
    for per-frame factors (B, T) (torchvision's per-image contrast)."""
    dims = (3, 4) if torch.as_tensor(factor).dim() == 2 else (2, 3, 4)
    channel_means = y.mean(dim=dims, keepdim=True)  # (B, 3, 1 or T, 1, 1)
    return _blend_(y, grayscale(channel_means), factor)  # grey is linear: grey of the means


def _saturation_(y: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend_(y, grayscale(y), factor)


def _hue6(y: torch.Tensor, maxc: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """HSV hue times 6, in [-1, 5) (sector + position in it; R, then G, then B wins ties)."""
    r, g, b = y[:, 0:1], y[:, 1:2], y[:, 2:3]
    num = torch.where(maxc == g, (b - r).add_(chroma, alpha=2), (r - g).add_(chroma, alpha=4))
    num = torch.where(maxc == r, g - b, num)
    return num.div_(torch.where(chroma > 0, chroma, 1.0))


def _hue_(y: torch.Tensor, shift: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Shift the hue of the clips where ``apply`` holds, channel by channel with the closed-form
    HSV -> RGB map ``c_n = max - chroma * clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6 hue) mod 6``,
    n = 5, 3, 1 for R, G, B, rewritten as ``c_n = min + chroma * clamp(|k - 2| - 1, 0, 1)``."""
    maxc, minc = y.amax(dim=1, keepdim=True), y.amin(dim=1, keepdim=True)
    chroma = maxc - minc
    hue6 = _hue6(y, maxc, chroma)  # everything below reads these, never y: safe to overwrite y
    offset = _per_clip(6 * shift, y)
    k = torch.empty_like(maxc)
    for c, n in enumerate((5.0, 3.0, 1.0)):
        torch.add(hue6, offset + n, out=k).remainder_(6.0).sub_(2).abs_().sub_(1).clamp_(0, 1)
        _select_(y[:, c:c + 1], apply, torch.addcmul(minc, chroma, k, out=k))
    return y


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply each clip by its factor (B,), clamped to [0, 1]."""
    return _brightness_(x.clone(), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each clip with its mean grey level over the WHOLE clip (all frames share one op)."""
    _check_rgb(x)
    return _contrast_(x.clone(), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each clip with its per-pixel grey image (0: grey, 1: unchanged)."""
    return _saturation_(x.clone(), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of each clip by its shift (B,), in turns (1 = full circle, cyclic).

    Saturation and value are untouched; grey pixels (chroma 0) stay grey.
    """
    _check_rgb(x)
    return _hue_(x.clone(), shift, torch.ones(x.shape[0], dtype=torch.bool, device=x.device))


def _draw_jitter(batch: int, strength: Sequence[float], p: float, generator: torch.Generator, frames: int | None = None):
    """Per-clip apply mask (B,) and factors (brightness, contrast, saturation, hue shift) in
    torchvision's ranges, one per clip (B,) or, given ``frames``, one per frame (B, T)."""
    apply = _rand(generator, batch) < p
    u = _rand(generator, 4, batch) if frames is None else _rand(generator, 4, batch, frames)
    factors = [max(0.0, 1.0 - s) + (1.0 + s - max(0.0, 1.0 - s)) * u[i] for i, s in enumerate(strength[:3])]
    factors.append(strength[3] * (2 * u[3] - 1))
    return apply, factors


def _jitter_(y: torch.Tensor, strength: Sequence[float], apply: torch.Tensor, factors) -> torch.Tensor:
    """In-place colour jitter of the selected clips; an op whose strength is 0 is skipped."""
    mask = apply.view(-1, *([1] * (factors[0].dim() - 1)))  # (B,) or (B, 1) against per-frame factors
    for op, factor, s in zip((_brightness_, _contrast_, _saturation_), factors, strength):
        if s > 0:  # factor 1 on unselected clips is an exact identity
            op(y, torch.where(mask, factor, torch.ones_like(factor)))
    if strength[3] > 0:
        _hue_(y, factors[3], apply)  # the HSV round trip is not bit-exact: select explicitly
    return y


def color_jitter(
    x: torch.Tensor,
    generator: torch.Generator,
    strength: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
    p: float = 0.8,
) -> torch.Tensor:
    """Random per-clip colour jitter: brightness, contrast, saturation, hue (this fixed order).

    ``strength = (b, c, s, h)``: factors ~ U(max(0, 1-x), 1+x), hue shift ~ U(-h, h). Each clip is
    jittered with probability ``p``; the others come back unchanged. Draws are made even for ops
    of strength 0, so the random stream does not depend on the config.
    """
    _check_rgb(x)
    return _jitter_(x.clone(), strength, *_draw_jitter(x.shape[0], strength, p, generator))


def random_grayscale(x: torch.Tensor, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """With probability ``p`` per clip, replace RGB by its grey level on all three channels."""
    return _random_grey_(x.clone(), _rand(generator, x.shape[0]) < p)


def _random_grey_(y: torch.Tensor, apply: torch.Tensor, channel: torch.Tensor | None = None) -> torch.Tensor:
    """Replace the selected clips (mask (B,)) or frames (mask (B, T)) by a grey image on all three
    channels, in place: the luma, or with ``channel`` (same shape as the mask, values 0..2) that
    channel of the image (the "channel split" greyscale of DPC/MLFO)."""
    if apply.device.type == "cpu" and not apply.any():  # no host check of a GPU mask (it would sync)
        return y
    grey = grayscale(y) if channel is None else _channel_image(y, channel)
    for c in range(3):
        _select_(y[:, c:c + 1], apply, grey)
    return y


def _channel_image(y: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, H, W): channel ``channel[b]`` (or ``channel[b, t]`` per frame) of each clip."""
    index = _broadcastable(_to(channel, y.device, torch.long)).expand(-1, 1, y.shape[2], *y.shape[3:])
    return torch.gather(y, 1, index)


# --------------------------------------------------------------------------- blur


def _gaussian_kernels(sigma: torch.Tensor, kernel_size: int, x: torch.Tensor) -> torch.Tensor:
    """Normalised 1-D Gaussians (B, kernel_size); sigma <= 1e-6 gives an exact delta."""
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float64)
    s = _to(sigma, x.device, torch.float64).reshape(-1, 1).clamp_min(1e-6)
    k = torch.exp(-0.5 * (offsets / s) ** 2)
    return (k / k.sum(dim=1, keepdim=True)).to(x.dtype)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int = 11) -> torch.Tensor:
    """Blur each clip with its own Gaussian (sigma (B,) or one float), odd ``kernel_size``, reflect padding.

    Separable: the frames are reflect-padded once, then one grouped (depthwise) convolution per
    direction runs over all B*C*T frames, each group carrying its clip's kernel. Always float32 math
    (autocast is switched off here); on CUDA, cuDNN may use TF32 (``torch.backends.cudnn.allow_tf32``).
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    B, C, T, H, W = x.shape
    r, n = kernel_size // 2, B * C * T
    kernels = _gaussian_kernels(sigma, kernel_size, x).expand(B, kernel_size).repeat_interleave(C * T, dim=0)
    with torch.autocast(x.device.type, enabled=False):
        y = F.pad(x.reshape(1, n, H, W), (r, r, r, r), mode="reflect")
        y = F.conv2d(y, kernels.view(n, 1, 1, kernel_size), groups=n)  # rows, on the padded height
        y = F.conv2d(y, kernels.view(n, 1, kernel_size, 1), groups=n)  # columns
    return y.view(B, C, T, H, W)


def _draw_blur(batch: int, p: float, sigma: tuple[float, float], generator: torch.Generator):
    apply = _rand(generator, batch) < p
    return apply, sigma[0] + (sigma[1] - sigma[0]) * _rand(generator, batch)


def _share_per_group(sigma: torch.Tensor, groups: int) -> torch.Tensor:
    """One sigma per interleaved group: clip i takes the sigma drawn for clip ``i % groups``.

    MSCL's ``GaussianBlur`` (``mmaction/models/common/ssl_aug.py``) draws one sigma per call for all
    clips it blurs, and the original augments its query and key batches in two calls. The harness
    augments the loader's (B, clips) flattened, clip index fastest, so ``groups = clips`` gives the
    query clips one sigma and the key clips another. The per-clip draws are still made (and the
    first ``groups`` of them used), so the random stream is the same in both modes.
    """
    first = torch.arange(sigma.shape[0], device=sigma.device) % groups
    return sigma[first]


def random_gaussian_blur(
    x: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
    kernel_size: int = 11,
) -> torch.Tensor:
    """With probability ``p`` per clip, blur with sigma ~ U(sigma); the other clips are unchanged."""
    return _blur_some_(x.clone(), *_draw_blur(x.shape[0], p, sigma, generator), kernel_size)


def _blur_some_(y: torch.Tensor, apply: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur the clips where ``apply`` holds, in place. A host-side mask (CPU generator) lets us
    blur only those clips; a GPU mask is not read back (that would sync): blur all, then select."""
    if apply.device.type != "cpu":
        return _select_(y, apply, gaussian_blur(y, sigma, kernel_size))
    idx = apply.nonzero().squeeze(1)
    if idx.numel() == 0:
        return y
    clips = _to(idx, y.device)
    return y.index_put_((clips,), gaussian_blur(y.index_select(0, clips), sigma[idx], kernel_size))


# --------------------------------------------------------------------------- normalisation / eval


def normalize(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """``(x - mean) / std`` per channel of a (B, C, T, H, W) clip."""
    return _normalize_(x.clone(), mean, std)


def _normalize_(y: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = _to(tuple(mean), y.device, y.dtype).view(1, -1, 1, 1, 1)
    s = _to(tuple(std), y.device, y.dtype).view(1, -1, 1, 1, 1)
    return y.sub_(m).div_(s)


def _resize_target(
    H: int, W: int, size: tuple[int, int], resize: int | tuple[int, int] | None
) -> tuple[int, int]:
    """Frame size before the centre crop: explicit (h, w), short side = int, or just big enough."""
    if isinstance(resize, Sequence):
        return int(resize[0]), int(resize[1])
    if resize is None:
        if H >= size[0] and W >= size[1]:
            return H, W
        short = math.ceil(max(size[0] / H, size[1] / W) * min(H, W))
    else:
        short = int(resize)
    return (short, int(short * W / H)) if H <= W else (int(short * H / W), short)


def center_crop_video(
    x: torch.Tensor,
    size: tuple[int, int],
    *,
    resize: int | tuple[int, int] | None = None,
    normalize_output: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Deterministic evaluation path: optional resize, then a centre crop to ``size``.

    ``x``: uint8 (B, T, H, W, C) or float (B, C, T, H, W). ``resize``: (h, w), or an int for the
    short side (aspect kept), or None to resize only if the frame is smaller than the crop. A frame
    already at the target size is not resampled, so the crop is then an exact slice (offsets as
    torchvision's ``center_crop``). Returns float (B, C, T, h, w) in [0, 1], normalised if asked.
    """
    H, W = _video_hw(x)
    target = _resize_target(H, W, size, resize)
    if target != (H, W):
        x = _as_float_video(x)
        B, C, T = x.shape[:3]
        x = F.interpolate(x.reshape(B, C * T, H, W), size=target, mode="bilinear", align_corners=False,
                          antialias=True).view(B, C, T, *target).clamp_(0, 1)
        H, W = target
    if size[0] > H or size[1] > W:
        raise ValueError(f"crop {size} larger than frame {(H, W)}")
    top, left = int(round((H - size[0]) / 2.0)), int(round((W - size[1]) / 2.0))
    rows, cols = slice(top, top + size[0]), slice(left, left + size[1])
    # Slice before converting: the eval path then copies only the crop.
    out = to_float_video(x[:, :, rows, cols]) if x.dtype == torch.uint8 else x[..., rows, cols].contiguous()
    return normalize(out, mean, std) if normalize_output else out


# --------------------------------------------------------------------------- pipeline


@dataclass
class VideoAugment:
    """The composed training pipeline: crop+flip, colour jitter, random grey, blur, normalise.

    ``__call__(x, generator, crop=None)`` takes the loader's uint8 (B, T, H, W, C) (or a float
    (B, C, T, H, W)) and returns float32 (B, C, T, h, w). To give two modalities of the same clips
    one crop+flip, draw it once with :meth:`sample_crop` and pass it as ``crop`` to both pipelines.
    With ``flow=True`` only the geometric part runs (output in [0, 1], never normalised; u negated
    on flip unless ``negate_u_on_flip=False``). The random stream consumed per call is fixed: crop
    (unless given), then jitter, grey, blur, whatever their probabilities.
    """

    cfg: AugmentConfig = field(default_factory=AugmentConfig)
    flow: bool = False
    negate_u_on_flip: bool = True

    def sample_crop(self, x: torch.Tensor, generator: torch.Generator) -> CropParams:
        """Per-clip crop boxes and flips for the batch ``x`` (its frame size sets the pixel ratio)."""
        return sample_crop_params(x.shape[0], self.cfg, generator, _video_hw(x))

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator, crop: CropParams | None = None
    ) -> torch.Tensor:
        """Augment a batch: per-clip crop+flip (``crop`` if given), then the colour part (RGB only)."""
        if crop is None:
            crop = self.sample_crop(x, generator)
        with torch.autocast(x.device.type, enabled=False):  # float32 whatever the caller's context
            y = apply_crop(x, crop, self.cfg.size, flow=self.flow, negate_u_on_flip=self.negate_u_on_flip)
            return y if self.flow else self._colour_(y, generator)

    def _colour_(self, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Jitter, grey (or grey, jitter: ``grey_before_jitter``), blur, normalise -- in place: ``y``
        is this call's own buffer."""
        cfg, B, T = self.cfg, y.shape[0], y.shape[2]
        _check_rgb(y)
        jitter = _draw_jitter(B, cfg.jitter, cfg.jitter_p, generator, T if cfg.jitter_per_frame else None)
        grey_shape = (B, T) if cfg.grey_per_frame else (B,)
        grey = _rand(generator, *grey_shape) < cfg.grey_p
        channel = (_rand(generator, *grey_shape) * 3).long().clamp_(max=2) if cfg.grey_mode == "channel" else None
        # Everything is drawn before anything is applied, so the order changes the image, not the stream.
        if cfg.grey_before_jitter:
            _random_grey_(y, grey, channel)
        if cfg.jitter_p > 0:
            _jitter_(y, cfg.jitter, *jitter)
        if not cfg.grey_before_jitter:
            _random_grey_(y, grey, channel)
        blur, sigma = _draw_blur(B, cfg.blur_p, cfg.blur_sigma, generator)
        if cfg.blur_sigma_per == "batch":
            sigma = _share_per_group(sigma, cfg.blur_sigma_groups)
        if cfg.blur_p > 0:
            _blur_some_(y, blur, sigma, cfg.blur_kernel)
        return _normalize_(y, cfg.mean, cfg.std) if cfg.normalize else y

    def evaluate(self, x: torch.Tensor, resize: int | tuple[int, int] | None = None) -> torch.Tensor:
        """The deterministic counterpart: :func:`center_crop_video` at ``cfg.size``."""
        return center_crop_video(x, self.cfg.size, resize=resize,
                                 normalize_output=self.cfg.normalize and not self.flow,
                                 mean=self.cfg.mean, std=self.cfg.std)

    def with_config(self, **changes) -> VideoAugment:
        """A copy with some config fields changed (``AugmentConfig`` is frozen)."""
        return replace(self, cfg=replace(self.cfg, **changes))
