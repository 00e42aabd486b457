"""Clip samplers: which frame indices of a video make up each clip.

All samplers return an int64 array of shape (clips, frames) with indices in [0, num_frames).

- :func:`random_clips`: training clips at random starts; the temporal stride is fixed or drawn
  per clip from a range (multi-rate sampling, fractional rates rounded per frame, as MLFO does).
- :func:`uniform_clips`: evaluation clips whose centres are evenly spaced over the video, the
  VCOP/IIC retrieval convention ``centres = linspace(span/2, n - span/2, N)``,
  ``start = int(centre - span/2)``. Deterministic: no randomness at test time.

A clip spans ``(frames - 1) * stride + 1`` frames. When a video is shorter than that, indices
either loop around (``short="loop"``, the default, as VCOP and mmaction do) or repeat the last
frame (``short="clamp"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHORT_POLICIES = ("loop", "clamp")
Stride = float | tuple[float, float]


@dataclass(frozen=True)
class ClipSpec:
    """How to cut clips out of one video."""

    frames: int = 16
    stride: Stride = 1  # a fixed stride, or a (min, max) range drawn uniformly per clip
    clips: int = 1
    short: str = "loop"

    def __post_init__(self) -> None:
        if self.frames < 1 or self.clips < 1:
            raise ValueError(f"frames and clips must be >= 1, got frames={self.frames}, clips={self.clips}")
        lo, hi = stride_range(self.stride)
        if not 0 < lo <= hi:
            raise ValueError(f"stride must be > 0 (and min <= max for a range), got {self.stride!r}")
        if self.short not in SHORT_POLICIES:
            raise ValueError(f"short must be one of {SHORT_POLICIES}, got {self.short!r}")


def stride_range(stride: Stride) -> tuple[float, float]:
    """(min, max) of a fixed stride or a stride range."""
    if isinstance(stride, (tuple, list)):
        return float(stride[0]), float(stride[1])
    return float(stride), float(stride)


def clip_span(frames: int, stride: float) -> int:
    """Number of source frames a clip of ``frames`` frames at ``stride`` covers."""
    return int(round((frames - 1) * stride)) + 1


def _offsets(frames: int, stride: float) -> np.ndarray:
    return np.round(np.arange(frames) * stride).astype(np.int64)


def _fit(indices: np.ndarray, num_frames: int, short: str) -> np.ndarray:
    if short == "loop":
        return indices % num_frames
    return np.minimum(indices, num_frames - 1)


def random_clips(num_frames: int, spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
    """``spec.clips`` independent random clips; stride drawn per clip when ``spec.stride`` is a range.

    The start is uniform over all positions where the clip fits; a clip longer than the video
    starts at a random frame and loops (or starts at 0 and clamps).
    """
    if num_frames < 1:
        raise ValueError("cannot sample clips from a video with no frames")
    lo, hi = stride_range(spec.stride)
    out = np.empty((spec.clips, spec.frames), dtype=np.int64)
    for c in range(spec.clips):
        stride = lo if lo == hi else rng.uniform(lo, hi)
        offsets = _offsets(spec.frames, stride)
        room = num_frames - offsets[-1]
        if room > 0:
            start = int(rng.integers(0, room))
        else:
            start = int(rng.integers(0, num_frames)) if spec.short == "loop" else 0
        out[c] = _fit(start + offsets, num_frames, spec.short)
    return out


def uniform_clips(num_frames: int, frames: int = 16, clips: int = 10, stride: float = 1, short: str = "loop") -> np.ndarray:
    """``clips`` clips with evenly spaced centres (VCOP/IIC retrieval and test sampling).

    For stride 1 this is exactly the reference rule: centres ``linspace(frames/2, n - frames/2,
    clips)`` and starts ``int(centre - frames/2)``. A video shorter than one clip gives clips
    that all start at 0.
    """
    if num_frames < 1:
        raise ValueError("cannot sample clips from a video with no frames")
    span = clip_span(frames, stride)
    offsets = _offsets(frames, stride)
    if num_frames < span:
        starts = np.zeros(clips, dtype=np.int64)
    else:
        centres = np.linspace(span / 2, num_frames - span / 2, clips)
        starts = (centres - span / 2).astype(np.int64)
    return _fit(starts[:, None] + offsets[None, :], num_frames, short)
