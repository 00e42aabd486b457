"""What to load per video, declared once: :class:`ClipSpec` (how to cut clips out of one video)
and :class:`LoadRequest` (those clips plus modalities, decode size and mode).

A method's ``DataSpec`` (:mod:`methods.base`) is a :class:`LoadRequest` with the device-side
augmentation added, so the harness hands it to the loader as it is; evaluation protocols build
uniform-mode requests. Samplers (:mod:`core.data.sampling`) read the :class:`ClipSpec` fields of
a request.
"""

from __future__ import annotations

from dataclasses import dataclass

SHORT_POLICIES = ("loop", "clamp")
MODALITIES = ("rgb", "flow")
MODES = ("random", "uniform")
Stride = float | tuple[float, float]  # a fixed stride, or a (min, max) range drawn uniformly per clip


def stride_range(stride: Stride) -> tuple[float, float]:
    """(min, max) of a fixed stride or a stride range."""
    if isinstance(stride, (tuple, list)):
        return float(stride[0]), float(stride[1])
    return float(stride), float(stride)


def clip_span(frames: int, stride: float) -> int:
    """Number of source frames a clip of ``frames`` frames at ``stride`` covers."""
    return int(round((frames - 1) * stride)) + 1


@dataclass(frozen=True)
class ClipSpec:
    """How to cut clips out of one video."""

    frames: int = 16
    stride: Stride = 1
    clips: int = 1
    short: str = "loop"  # indices past the end: "loop" or "clamp" (the loader refuses videos shorter than the window)

    def __post_init__(self) -> None:
        if not isinstance(self.frames, int) or not isinstance(self.clips, int):
            raise TypeError(f"frames and clips must be ints, got frames={self.frames!r}, clips={self.clips!r}")
        if self.frames < 1 or self.clips < 1:
            raise ValueError(f"frames and clips must be >= 1, got frames={self.frames}, clips={self.clips}")
        lo, hi = stride_range(self.stride)
        if not 0 < lo <= hi:
            raise ValueError(f"stride must be > 0 (and min <= max for a range), got {self.stride!r}")
        if self.short not in SHORT_POLICIES:
            raise ValueError(f"short must be one of {SHORT_POLICIES}, got {self.short!r}")


@dataclass(frozen=True)
class LoadRequest(ClipSpec):
    """What to load per video: its clips (the :class:`ClipSpec` fields), modalities and decode size."""

    mode: str = "random"  # "random" for training, "uniform" (evenly spaced, deterministic) for evaluation
    modalities: tuple[str, ...] = ("rgb",)
    decode_size: tuple[int, int] | None = None  # (H, W) to resize to while decoding; None keeps the file's size
    sampler: str | None = None  # named training sampler (core.data.sampling registry); None = independent random clips
    flow_root: str | None = None  # flow cache of `vsbench data flow`, needed to load "flow"
    backend: str = "decord"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {self.modalities!r}")
        if self.sampler is not None and self.mode != "random":
            raise ValueError(f"a named sampler ({self.sampler!r}) is for training (mode 'random'), not mode {self.mode!r}")
