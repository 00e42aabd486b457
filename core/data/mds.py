"""Motion Differential Sampling (MDS): MSCL's offline screening of clip starts, and its sampler.

MSCL (Ni et al., ECCV 2022) trains only on clips whose motion *changes*: offline, every candidate
clip start of every video is scored from the optical flow, and only the starts scoring above the
video's median are kept (``tools/ssl/generate_mcl_samples.py``, output ``chosen_idx``).
The shipped setting is ``weight_type=rgb_map``,
``att_type=max``, average pooling::

    for every flow frame F_t (H x W x 2, pixels):
        M_t = sqrt(sobel_x(u)^2 + sobel_y(u)^2 + sobel_x(v)^2 + sobel_y(v)^2)    # flow-gradient map
        A_t = bilinear_upsample(avgpool(M_t, block x block)) / max             # attention in [0, 1]
        R_t = A_t * colour(F_t)        # Middlebury colour image of the per-frame-normalised flow, 0..255
    D_t = mean_hw || R_t - R_{t+1} ||_2 over channels      (the last R is duplicated, so D_last = 0)
    score(s) = (1 / clip_len) * sum_j D_{s + j * stride}   over the in-range terms, j < clip_len
    chosen = [s : score(s) > median_s score(s)]

:func:`compute_mds` does this for every video of a data set from the flow cache
(:mod:`core.data.modalities`), with worker processes, and writes ``<flow_root>/mds.json``
(atomically) with the chosen starts per video key and the settings used. ``vsbench data mds``
is the command.

The ``"mds"`` training sampler (:func:`mds_clips`) follows MSCL's
``TemporalShiftChosenSampleFrames(shift_range=1)`` (``mmaction/datasets/pipelines/loading_mscl.py``):
clip 0 (the query) redraws a uniform random start up to 11 times until it is a chosen start, then
falls back to the first chosen start, which is exactly the original's loop (not approximated by a
uniform draw over the chosen starts: those are equal in distribution only when every chosen start
is a legal random start and the fallback never fires). Clip 1 (the key) aims at
``target = query + U{-shift..shift}``, ``shift = frames * stride``, and is snapped to a chosen
start by the original's scan (``key_snap="official"``, the default): starting from the pick 0, the
chosen starts are visited in ascending order (the order ``generate_mcl_samples.py`` writes them)
and a start ``c`` replaces the current pick ``p`` when ``|c - target| < |c - p|``. This is not
the nearest chosen start: with chosen starts [3, 4, 5, 30, 31] the target 12 gives 30 (nearest:
5), with [20, 21, 22] the target 50 gives 0 (nearest: 22), and a target between 0 and the first
chosen start always moves to that start. The ``"mds_nearest"`` sampler (``key_snap="nearest"``)
snaps to the nearest of [0, *chosen] instead (ties to the earlier), an alternative that is not
the original's. Indices past the end loop.

Choices and deviations from the original (see also the docstring of ``methods/mscl.py``):

- Time units: the original scores on its "unit" grid (RGB every 2 raw frames, each paired with
  the RAFT flow to 8 raw frames later) with ``clip_stride=4`` units. Here candidates are every raw
  frame, the flow is the cache's consecutive-frame flow (t -> t + 1), and the scoring stride is in
  raw frames. Its default is the TRAINING stride (16 raw frames = 8 units): the shipped pickle was
  scored at 4 units while training samples at 8, which screens a different set of frames than
  the ones a clip is made of; ``score_stride`` reproduces the shipped choice when set to 8.
- ``block`` (28 in the original, on flow at its stored resolution) is clamped to the frame's
  short side so that small frames (MotionShapes) still get one block.
- A frame whose motion map is zero everywhere gets zero attention (the original divides by a zero
  maximum and yields NaN); a video whose scores are all equal has no starts above the median and
  gets an empty list: the sampler then draws both clips uniformly at random for it (the original
  would put both clips at frame 0).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.data.modalities import (
    DEFAULT_BOUND,
    dequantize_flow,
    flow_frame_count,
    flow_to_color,
    load_flow_meta,
    normalize_flow_per_frame,
    read_flow,
)
from core.data.sampling import random_clips, register_sampler
from core.data.request import ClipSpec, stride_range
from core.data.video import CorruptVideo
from core.io import write_json_atomic

__all__ = [
    "MDS_NAME",
    "compute_mds",
    "load_mds",
    "motion_map",
    "attention_map",
    "differential_scores",
    "clip_scores",
    "choose_starts",
    "video_chosen_starts",
    "mds_clips",
    "snap_official",
    "snap_nearest",
    "KEY_SNAPS",
]

MDS_NAME = "mds.json"
MDS_VERSION = 2  # 2: colours from the corrected Middlebury wheel (version 1 had yellow -> green wrong)
KEY_SNAPS = ("official", "nearest")  # how the key clip's target is snapped to a chosen start
QUERY_TRIES = 11  # the original redraws while attempt <= 10: 11 draws, then chosen_idx[0]
_CMD = "vsbench data mds <data path> [--flow-root FLOW_ROOT]"


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def _sobel(x: np.ndarray, axis: int) -> np.ndarray:
    """``scipy.ndimage.sobel(x, axis)`` on the last two axes (H, W) of (..., H, W): derivative
    [-1, 0, 1] along ``axis`` (-1 = x, -2 or 0 = y), smoothing [1, 2, 1] along the other, mirror
    ("reflect", d c b a | a b c d) borders. Leading axes are frames, handled independently."""
    x = np.asarray(x, dtype=np.float64)
    p = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], mode="symmetric")
    if axis in (-1, x.ndim - 1):
        d = p[..., :, 2:] - p[..., :, :-2]
        return d[..., :-2, :] + 2 * d[..., 1:-1, :] + d[..., 2:, :]
    d = p[..., 2:, :] - p[..., :-2, :]
    return d[..., :, :-2] + 2 * d[..., :, 1:-1] + d[..., :, 2:]


def motion_map(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """MSCL's flow-gradient map ``sqrt(sobel_x(u)^2 + sobel_y(u)^2 + sobel_x(v)^2 + sobel_y(v)^2)``,
    per frame of (..., H, W)."""
    return np.sqrt(_sobel(u, -1) ** 2 + _sobel(u, -2) ** 2 + _sobel(v, -1) ** 2 + _sobel(v, -2) ** 2)


def attention_map(motion: np.ndarray, block: int = 28) -> np.ndarray:
    """Per frame of (..., H, W): average over ``block x block`` tiles (floor: the ragged border is
    dropped), bilinear upsampling back to (H, W), divided by the frame's maximum ("max"
    attention); all zero for a frame whose motion map is zero. ``block`` is clamped to the short side."""
    motion = np.asarray(motion)
    h, w = motion.shape[-2:]
    b = max(1, min(block, h, w))
    m = torch.from_numpy(np.ascontiguousarray(motion, dtype=np.float32)).reshape(-1, 1, h, w)
    pooled = F.avg_pool2d(m, kernel_size=b, stride=b)
    att = F.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    top = att.amax(dim=(1, 2), keepdim=True)
    att = torch.where(top > 0, att / top.clamp_min(1e-30), torch.zeros_like(att))
    return att.reshape(motion.shape).numpy()


def _colour_image(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """RAFT's ``flow_to_image`` (per-frame normalised, Middlebury colours, uint8 values) as float
    (..., H, W, 3) for flow frames (..., H, W)."""
    nu, nv = normalize_flow_per_frame(torch.from_numpy(np.asarray(u, np.float32)), torch.from_numpy(np.asarray(v, np.float32)))
    return (flow_to_color(nu, nv) * 255).movedim(-3, -1).numpy().astype(np.float64)


def weighted_colour(u: np.ndarray, v: np.ndarray, block: int = 28) -> np.ndarray:
    """``R_t = A_t * colour(F_t)``: attention-weighted colour images of flow frames (..., H, W) -> (..., H, W, 3)."""
    return attention_map(motion_map(u, v), block)[..., None] * _colour_image(u, v)


def differential_scores(flow: np.ndarray, block: int = 28, chunk: int = 32) -> np.ndarray:
    """``D_t = mean_hw ||R_t - R_{t+1}||_2`` for every frame t of ``flow`` (T, H, W, 2) in pixels;
    the last map is duplicated, so ``D_{T-1} = 0``. Returns (T,) float64. Frames are processed
    ``chunk`` at a time to bound memory on long, large videos."""
    flow = np.asarray(flow, dtype=np.float32)
    out = np.zeros(flow.shape[0])
    prev = None  # the last map of the previous chunk
    for start in range(0, flow.shape[0], chunk):
        maps = weighted_colour(flow[start : start + chunk, ..., 0], flow[start : start + chunk, ..., 1], block)
        if prev is not None:
            maps = np.concatenate([prev, maps])
        diffs = np.linalg.norm(maps[:-1] - maps[1:], axis=-1).mean(axis=(1, 2))
        first = start - (1 if prev is not None else 0)
        out[first : first + diffs.shape[0]] = diffs
        prev = maps[-1:]
    return out


def clip_scores(diffs: np.ndarray, clip_len: int = 8, stride: int = 16) -> np.ndarray:
    """``score(s) = (1 / clip_len) * sum_{j < clip_len, s + j stride < T} D_{s + j stride}`` for
    every start s in [0, T): terms past the end are dropped, not looped, and the sum is still
    divided by ``clip_len`` (as the original), so late starts score low."""
    diffs = np.asarray(diffs, dtype=np.float64)
    n = diffs.shape[0]
    scores = np.zeros(n)
    for j in range(clip_len):
        offset = j * stride
        if offset < n:
            scores[: n - offset] += diffs[offset:]
    return scores / clip_len


def choose_starts(scores: np.ndarray) -> list[int]:
    """The starts whose score is strictly above the median (MDS keeps the more dynamic half)."""
    scores = np.asarray(scores)
    if scores.size == 0:
        return []
    return [int(i) for i in np.flatnonzero(scores > np.median(scores))]


def video_chosen_starts(flow: np.ndarray, clip_len: int = 8, stride: int = 16, block: int = 28) -> list[int]:
    """The chosen clip starts of one video from its flow (T, H, W, 2) in pixels, one frame per RGB frame."""
    return choose_starts(clip_scores(differential_scores(flow, block), clip_len, stride))


# --------------------------------------------------------------------------------------------
# The data-set pass
# --------------------------------------------------------------------------------------------


def _mds_one(task: tuple[str, str, dict]) -> tuple[str, list[int] | None, int, str | None]:
    """(key, chosen starts or None, RGB frame count, error) for one video of the flow cache."""
    root, key, job = task
    try:
        n = flow_frame_count(root, key) + 1  # RGB frames: one more than flow frames
        q = read_flow(root, key, np.arange(n))
        flow = dequantize_flow(q, job["bound"])
        chosen = video_chosen_starts(flow, job["clip_len"], job["stride"], job["block"])
        return key, chosen, n, None
    except CorruptVideo as err:  # missing or unreadable flow frames: reported per video, the run goes on
        return key, None, 0, str(err)
    except Exception as err:  # anything else is a bug or an I/O problem: stop, naming the video
        raise RuntimeError(f"MDS scoring of {key} (flow cache {root}) failed: {type(err).__name__}: {err}") from err


def _worker_init() -> None:
    torch.set_num_threads(1)


def _run(tasks: list, workers: int) -> Iterator[tuple[str, list[int] | None, int, str | None]]:
    if workers <= 1:
        yield from map(_mds_one, tasks)
        return
    with multiprocessing.get_context().Pool(workers, initializer=_worker_init) as pool:
        yield from pool.imap_unordered(_mds_one, tasks, chunksize=1)


def compute_mds(
    video_keys: Sequence[str],
    flow_root: str | os.PathLike,
    *,
    clip_len: int = 8,
    stride: int = 16,
    block: int = 28,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Score every candidate start of every video in the flow cache and write ``<flow_root>/mds.json``.

    ``clip_len`` frames per clip, ``stride`` (raw frames) between the scored frames (default the
    MSCL training stride, 16 raw frames = 8 of the original's units), ``block`` the attention tile.
    The file holds ``{"version", "settings": {clip_len, stride, block, bound, flow_algorithm},
    "videos": {key: {"num_frames": n, "chosen": [starts]}}, "failed": {key: reason}}``; it is
    written once at the end, atomically. Returns that dict.
    """
    if clip_len < 1 or stride < 1 or block < 1:
        raise ValueError(f"clip_len, stride and block must be >= 1, got {clip_len}, {stride}, {block}")
    root = Path(flow_root)
    meta = load_flow_meta(root)  # also checks that this is a flow cache
    bound = float(meta.get("bound", DEFAULT_BOUND))
    job = {"clip_len": int(clip_len), "stride": int(stride), "block": int(block), "bound": bound}
    keys = list(dict.fromkeys(str(k) for k in video_keys))
    tasks = [(str(root), k, job) for k in keys]
    workers = (os.cpu_count() or 1) if workers is None else workers
    videos: dict[str, dict] = {}
    failed: dict[str, str] = {}
    with tqdm(total=len(tasks), desc="motion differential sampling", unit="video", disable=not progress) as bar:
        for key, chosen, n, error in _run(tasks, min(max(workers, 1), max(len(tasks), 1))):
            if error is None:
                videos[key] = {"num_frames": n, "chosen": chosen}
            else:
                failed[key] = error
                bar.set_postfix(failed=len(failed))
            bar.update(1)
    result = {
        "version": MDS_VERSION,
        "settings": {**job, "flow_algorithm": meta.get("algorithm"), "rule": "score > median (rgb_map, max attention, mean pooling)"},
        "videos": {k: videos[k] for k in keys if k in videos},
        "failed": {k: failed[k] for k in keys if k in failed},
    }
    write_json_atomic(root / MDS_NAME, result)
    return result


def load_mds(flow_root: str | os.PathLike) -> dict:
    """The ``mds.json`` of a flow cache; a missing file raises naming it and the command that writes it."""
    import json

    path = Path(flow_root) / MDS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the 'mds' sampler (MSCL's motion differential sampling) needs the "
                                f"chosen clip starts; compute them once with `{_CMD}`")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------------


def _query_start(chosen: np.ndarray, chosen_set: set[int], room: int, rng: np.random.Generator) -> int:
    """The original's loop: up to 11 uniform random starts until one is chosen, else ``chosen[0]``."""
    for _ in range(QUERY_TRIES):
        start = int(rng.integers(0, room)) if room > 0 else 0
        if start in chosen_set:
            return start
    return int(chosen[0])


def snap_official(target: int, chosen: Sequence[int]) -> int:
    """The key start of MSCL's ``TemporalShiftChosenSampleFrames._sample_clips``: begin with the
    pick 0 and scan ``chosen`` in its order (ascending here and in the original's ``chosen_idx``);
    a start ``c`` replaces the pick ``p`` when ``|c - target| < |c - p|``. With ascending
    non-negative starts this means ``p < target < 2 c - p``, so it is not the nearest start."""
    pick = 0
    for c in chosen:
        if abs(int(c) - target) < abs(int(c) - pick):
            pick = int(c)
    return pick


def snap_nearest(target: int, chosen: Sequence[int]) -> int:
    """The nearest of [0, *chosen] to ``target``, the first one on ties (an alternative to the
    original's rule, kept as the ``"mds_nearest"`` sampler)."""
    candidates = np.concatenate([[0], np.asarray(chosen, dtype=np.int64)])
    return int(candidates[np.argmin(np.abs(candidates - target))])


_SNAPS = {"official": snap_official, "nearest": snap_nearest}


def mds_clips(num_frames: int, chosen: Sequence[int], spec: ClipSpec, rng: np.random.Generator,
              key_snap: str = "official") -> np.ndarray:
    """(2, frames) indices: the query at a chosen start, the key shifted by ``U{-shift..shift}``
    (``shift = frames * stride``) and snapped to a chosen start (or 0) by ``key_snap``:
    ``"official"`` (:func:`snap_official`, MSCL's scan) or ``"nearest"`` (:func:`snap_nearest`);
    indices loop (or clamp with ``spec.short="clamp"``). No chosen start: two independent random clips."""
    if key_snap not in _SNAPS:
        raise ValueError(f"key_snap must be one of {', '.join(KEY_SNAPS)}, got {key_snap!r}")
    if spec.clips != 2:
        raise ValueError(f"the mds sampler gives a query and a key clip: clips must be 2, got {spec.clips}")
    lo, hi = stride_range(spec.stride)
    if lo != hi:
        raise ValueError(f"the mds sampler needs a fixed stride, got the range {spec.stride!r}")
    chosen_arr = np.asarray(sorted(int(c) for c in chosen), dtype=np.int64)
    if chosen_arr.size == 0:
        return random_clips(num_frames, spec, rng)
    offsets = np.round(np.arange(spec.frames) * lo).astype(np.int64)
    room = num_frames - int(round(spec.frames * lo)) + 1  # mmaction: n - clip_len * interval + 1 offsets
    q = _query_start(chosen_arr, set(chosen_arr.tolist()), room, rng)
    shift = int(round(spec.frames * lo))
    k = _SNAPS[key_snap](q + int(rng.integers(-shift, shift + 1)), chosen_arr.tolist())
    idx = np.stack([q + offsets, k + offsets])
    return idx % num_frames if spec.short == "loop" else np.minimum(idx, num_frames - 1)


def _chosen_table(videos, request, name: str) -> list[list[int]]:
    """The chosen starts of every video of ``videos`` (by record order) from ``<flow_root>/mds.json``;
    a missing flow root, a file of another ``MDS_VERSION``, a file screened at another stride than
    ``request`` samples, or a listed video without an entry raises, naming the file and the command
    that (re)writes it."""
    if not request.flow_root:
        raise ValueError(f"the {name!r} sampler reads <flow_root>/{MDS_NAME}: set data.flow_root (or use the default <data>/flow) "
                         f"and compute it with `{_CMD}`")
    path = Path(request.flow_root) / MDS_NAME
    data = load_mds(request.flow_root)
    if data.get("version") != MDS_VERSION:
        raise ValueError(f"{path} has version {data.get('version')!r}, this vsbench reads version {MDS_VERSION} "
                         f"(earlier versions scored with a wrong colour wheel); recompute it with `{_CMD}`")
    screened, sampled = (data.get("settings") or {}).get("stride"), getattr(request, "stride", None)
    if screened is not None and sampled is not None and stride_range(sampled) != (screened, screened):
        raise ValueError(f"{path} was screened with clips {screened} frames apart, but this run samples them {sampled!r} apart: "
                         f"its chosen starts are the dynamic ones at another stride; recompute it with "
                         f"`vsbench data mds <data path> --stride {sampled}` (or train at stride {screened})")
    table = data["videos"]
    keys = [Path(rec.path).stem for rec in videos.records]
    missing = [k for k, rec in zip(keys, videos.records) if rec.ok and k not in table]  # corrupt videos are skipped anyway
    if missing:
        raise ValueError(f"{path} has no chosen starts for {len(missing)} of {len(keys)} videos "
                         f"(e.g. {', '.join(missing[:5])}); recompute it with `{_CMD}`")
    return [table[k]["chosen"] if k in table else [] for k in keys]


def _mds_sampler(videos, request, name: str, key_snap: str):
    chosen = _chosen_table(videos, request, name)

    def sample(index: int, num_frames: int, spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
        return mds_clips(num_frames, chosen[index], spec, rng, key_snap)

    return sample


@register_sampler("mds")
def _mds_factory(videos, request):
    """MSCL's sampler over the data set ``videos``, key snapped by the original's scan
    (:func:`snap_official`); chosen starts from ``<flow_root>/mds.json``."""
    return _mds_sampler(videos, request, "mds", "official")


@register_sampler("mds_nearest")
def _mds_nearest_factory(videos, request):
    """The MDS sampler with the key snapped to the nearest chosen start (:func:`snap_nearest`),
    not the original's rule; chosen starts from ``<flow_root>/mds.json``."""
    return _mds_sampler(videos, request, "mds_nearest", "nearest")
