"""Clip samplers: which frame indices of a video make up each clip.

All samplers return an int64 array of shape (clips, frames) with indices in [0, num_frames).

- :func:`random_clips`: training clips at random starts; the temporal stride is fixed or drawn
  per clip from a range (multi-rate sampling, fractional rates rounded per frame, as MLFO does).
- :func:`uniform_clips`: evaluation clips whose centres are evenly spaced over the video, the
  VCOP/IIC retrieval convention ``centres = linspace(span/2, n - span/2, N)``,
  ``start = int(centre - span/2)``. Deterministic: no randomness at test time.
- :func:`overview_clips`: MLFO's two consecutive clips A, B plus the half-rate overview clip G
  that spans both.
- :func:`clips_with_static`: DCLR's two windows plus, per window, one raw frame repeated (the
  input of its static view). Sampler "with_static" uses DCLR's windows of ``frames * stride`` raw
  frames, "with_static_span" windows that end at the last sampled frame.

Training samplers are looked up by name (``DataSpec.sampler``) in a registry:
:func:`register_sampler` decorates a factory ``factory(videos, request) -> sampler`` and the
loader calls ``sampler(video_index, num_frames, spec, rng)``. A factory sees the data set and the
load request, so a sampler can read per-video data prepared offline (MSCL's motion-screened
starts, :mod:`core.data.mds`). Each sampler also states how many frames its window needs
(:func:`frames_needed`).

A clip spans ``(frames - 1) * stride + 1`` frames. The loader never hands a sampler a video
shorter than the sampler's window: training skips and names such a video, evaluation refuses it
(:mod:`core.data.loader`), because looping or clamping it would silently change the data.
The samplers' own ``short`` policy (loop around, ``short="loop"``, as VCOP and mmaction do, or
repeat the last frame, ``short="clamp"``) applies to direct calls and to indices a sampler aims
past the end of a long enough video (MSCL's key clip).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from core.config import UnknownNameError
from core.data.request import ClipSpec, LoadRequest, Stride, clip_span, stride_range

if TYPE_CHECKING:
    from core.data.datasets import VideoDataset

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


def overview_clips(num_frames: int, frames: int, rate: tuple[float, float], rng: np.random.Generator, short: str = "loop") -> np.ndarray:
    """MLFO's clips A, B and G (3, ``frames``) from one window of ``2 * frames`` indices.

    The rate is ``sr ~ U(lo, min(hi, n / (2 frames)))`` (never below ``lo``), the start
    ``s ~ randint(0, n - sr * 2 frames)`` and the window ``round(s + sr * arange(2 frames))``
    (MLFO's sampling rule, docs/methods/mlfo.md). A is its first half, B its second half and G every other index, so position
    m of G falls on the same frames as position m of the pooled [A | B]. A video too short for the
    window at rate ``lo`` loops (or clamps) like :func:`random_clips`.
    """
    lo, hi = rate
    window = 2 * frames
    sr = rng.uniform(lo, max(lo, min(hi, num_frames / window)))
    offsets = np.round(sr * np.arange(window)).astype(np.int64)
    room = num_frames - offsets[-1]
    start = int(rng.integers(0, room)) if room > 0 else (int(rng.integers(0, num_frames)) if short == "loop" else 0)
    idx = _fit(start + offsets, num_frames, short)
    return np.stack([idx[:frames], idx[frames:], idx[::2]])


STATIC_WINDOWS = ("full", "span")


def static_window(spec: ClipSpec, window: str = "full") -> int:
    """Raw frames of one ``clips_with_static`` window: ``frames * stride`` ("full", DCLR's) or the
    clip's own span ``(frames - 1) * stride + 1`` ("span", vsbench's earlier rule)."""
    if window not in STATIC_WINDOWS:
        raise ValueError(f"window must be one of {STATIC_WINDOWS}, got {window!r}")
    stride = _fixed_stride(spec.stride)
    return int(round(spec.frames * stride)) if window == "full" else clip_span(spec.frames, stride)


def clips_with_static(num_frames: int, spec: ClipSpec, rng: np.random.Generator, window: str = "full") -> np.ndarray:
    """DCLR's rows [clip q, clip k, static q, static k] of shape (4, frames).

    q and k are two random windows of ``L = static_window(spec, window)`` raw frames, read at a
    fixed stride from their start, different whenever the video has room for two; one raw offset
    ``o ~ U{0 .. L-1}`` (not necessarily a sampled frame) is shared by both windows, and each static
    row repeats that window's frame ``start + o``. With ``window="full"`` this is DCLR's
    (``dataset/ucf101_view.py``, ``dataset/kinetics.py``): ``VideoClips`` of ``frames * stride``
    frames at step 1 gives the starts ``0 .. n - L`` (``n - L + 1`` of them; two distinct ones from
    ``randperm``), the clip is ``[::stride]`` of the window and the static index is
    ``randint(0, L)``: for 16 frames at stride 2, ``n - 31`` starts and offsets 0..31.
    ``window="span"`` ends the window at the last sampled frame (``n - 30`` starts, offsets 0..30).
    """
    length = static_window(spec, window)
    offsets = _offsets(spec.frames, _fixed_stride(spec.stride))
    room = num_frames - length + 1
    if room >= 2:
        q, k = (int(v) for v in rng.choice(room, size=2, replace=False))
    else:
        q = k = int(rng.integers(0, num_frames)) if (room < 1 and spec.short == "loop") else 0
    o = int(rng.integers(0, length))
    rows = [q + offsets, k + offsets, np.full(spec.frames, q + o), np.full(spec.frames, k + o)]
    return _fit(np.stack(rows).astype(np.int64), num_frames, spec.short)


def _fixed_stride(stride: Stride) -> float:
    lo, hi = stride_range(stride)
    if lo != hi:
        raise ValueError(f"this sampler needs a fixed stride, got the range {stride!r}")
    return lo


# ----------------------------------------------------------------------------- registry

ClipSampler = Callable[[int, int, ClipSpec, np.random.Generator], np.ndarray]
SamplerFactory = Callable[["VideoDataset", "LoadRequest"], ClipSampler]
Needs = Callable[[ClipSpec], int]
_SAMPLERS: dict[str, SamplerFactory] = {}
_NEEDS: dict[str, Needs] = {}
_SAMPLER_MODULES = ("core.data.mds",)  # modules that register further samplers when imported


def one_clip_span(spec: ClipSpec) -> int:
    """Frames one clip of ``spec`` covers at its smallest stride: what most samplers need."""
    return clip_span(spec.frames, stride_range(spec.stride)[0])


def register_sampler(name: str, needs: Needs = one_clip_span) -> Callable[[SamplerFactory], SamplerFactory]:
    """Decorator: make ``factory(videos, request) -> sampler`` available as ``DataSpec.sampler = name``.

    ``needs(spec)`` is the fewest frames a video must hold for the sampler's window to fit
    without looping (default: one clip at the smallest stride).
    """

    def add(factory: SamplerFactory) -> SamplerFactory:
        if name in _SAMPLERS and _SAMPLERS[name] is not factory:
            raise ValueError(f"sampler name {name!r} is already registered")
        _SAMPLERS[name] = factory
        _NEEDS[name] = needs
        return factory

    return add


def frames_needed(name: str | None, spec: ClipSpec) -> int:
    """The fewest frames a video needs for the training sampler ``name`` (None = "random") and ``spec``."""
    name = name or "random"
    if name not in list_samplers():
        raise UnknownNameError(f"unknown clip sampler {name!r}; registered samplers: {', '.join(list_samplers())}")
    return _NEEDS[name](spec)


def list_samplers() -> list[str]:
    """The registered training-sampler names."""
    for module in _SAMPLER_MODULES:
        importlib.import_module(module)
    return sorted(_SAMPLERS)


def build_sampler(name: str | None, videos: VideoDataset, request: LoadRequest) -> ClipSampler:
    """The sampler registered as ``name`` (None = "random") for ``videos``; unknown names list the valid ones."""
    name = name or "random"
    if name not in list_samplers():
        raise UnknownNameError(f"unknown clip sampler {name!r}; registered samplers: {', '.join(list_samplers())}")
    return _SAMPLERS[name](videos, request)


@register_sampler("random")
def _random_factory(videos, request) -> ClipSampler:
    return lambda index, num_frames, spec, rng: random_clips(num_frames, spec, rng)


@register_sampler("overview", needs=lambda spec: clip_span(2 * spec.frames, stride_range(spec.stride)[0]))
def _overview_factory(videos, request) -> ClipSampler:
    def sample(index: int, num_frames: int, spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
        if spec.clips != 3:
            raise ValueError(f"the overview sampler gives clips A, B and G: clips must be 3, got {spec.clips}")
        return overview_clips(num_frames, spec.frames, stride_range(spec.stride), rng, spec.short)

    return sample


def _with_static_sampler(name: str, window: str) -> ClipSampler:
    def sample(index: int, num_frames: int, spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
        if spec.clips != 4:
            raise ValueError(f"the {name} sampler gives [q, k, static q, static k]: clips must be 4, got {spec.clips}")
        return clips_with_static(num_frames, spec, rng, window)

    return sample


@register_sampler("with_static", needs=lambda spec: static_window(spec, "full"))
def _with_static_factory(videos, request) -> ClipSampler:
    """DCLR's windows of ``frames * stride`` raw frames (:func:`clips_with_static`, ``window="full"``)."""
    return _with_static_sampler("with_static", "full")


@register_sampler("with_static_span", needs=lambda spec: static_window(spec, "span"))
def _with_static_span_factory(videos, request) -> ClipSampler:
    """vsbench's earlier rule: windows end at the last sampled frame (``window="span"``)."""
    return _with_static_sampler("with_static_span", "span")
