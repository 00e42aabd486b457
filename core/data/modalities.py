"""Extra input modalities derived from RGB clips: residual/static/dynamic views and optical flow.

Two kinds of modality live here.

**Views computed on the fly** from an (augmented, normalised) float clip tensor, on whatever
device it sits: IIC's residual clip, DCLR's static and dynamic views. They are cheap tensor
arithmetic, so they are computed per batch rather than stored. All of them work on dim -3 (= T),
so (B, C, T, H, W) batches and single (C, T, H, W) clips are both accepted.

**Optical flow, computed once per data set** and cached on disk, because dense flow costs far
more than a training step can afford. The cache uses the layout and quantization of the public
UCF101/HMDB51 flow releases, so a precomputed flow folder in that layout is read as it is::

    <flow_root>/u/<video_key>/frame000001.jpg ...   # horizontal component, single-channel JPEG
    <flow_root>/v/<video_key>/frame000001.jpg ...   # vertical component
    <flow_root>/flow_meta.json                      # how the cache was computed

Each component is clipped to [-bound, bound] pixels and mapped linearly to 0..255
(``q = round((f + bound) / (2 * bound) * 255)``, so 127.5 is zero motion); positive u is motion
to the right (+x), positive v is motion down (+y), OpenCV's convention.

Alignment. A video with n RGB frames has n - 1 flow frames; flow file k (1-based) holds the flow
from RGB frame k - 1 to RGB frame k (0-based). :func:`read_flow` takes *RGB* frame indices, so
clip samplers can use the same indices for both streams: RGB index t gets the forward flow
t -> t + 1 (file t + 1), and the last RGB frame, which has no forward flow, gets the last flow
frame (file n - 1).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch
from tqdm import tqdm

from core.data.video import CorruptVideo, probe_video, read_frames, read_image_frames, short_side_size
from core.io import write_json_atomic

__all__ = [
    "FLOW_ALGORITHMS",
    "DEFAULT_BOUND",
    "residual_frames",
    "static_view",
    "dynamic_view",
    "quantize_flow",
    "dequantize_flow",
    "compute_flow_cache",
    "read_flow",
    "flow_frame_count",
    "flow_folders",
    "load_flow_meta",
]

# --------------------------------------------------------------------------------------------
# Views on device tensors
# --------------------------------------------------------------------------------------------

_T = -3  # time axis of (B, C, T, H, W) and (C, T, H, W)


def _check_clip(x: torch.Tensor) -> None:
    if x.dim() not in (4, 5):
        raise ValueError(f"expected a (B, C, T, H, W) or (C, T, H, W) clip tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point clip tensor, got {x.dtype} (frame differences of integers wrap)")


def residual_frames(x: torch.Tensor, rescale: bool = True) -> torch.Tensor:
    """IIC's residual clip: each frame minus the previous one, along T (dim -3).

    Mirrors the official training code of IIC (Tao et al., "Self-supervised Video Representation
    Learning Using Inter-intra Contrastive Framework", ACM MM 2020):
    ``(x - roll(x, shifts=1, dims=T) + 1) / 2`` for pre-training (``rescale=True``, which maps
    differences of [0, 1] inputs back into [0, 1]) and the raw ``x - roll(x, 1, T)`` that IIC uses
    at fine-tune time (``rescale=False``).

    Quirk kept on purpose: ``roll`` wraps, so frame 0 becomes ``x[0] - x[T-1]`` (a difference
    between the clip's last and first frames), not zero.
    """
    _check_clip(x)
    diff = x - torch.roll(x, shifts=1, dims=_T)
    return (diff + 1) / 2 if rescale else diff


def static_view(x: torch.Tensor, index: int | torch.Tensor) -> torch.Tensor:
    """DCLR's static view: one frame of each clip repeated T times.

    Mirrors DCLR (Ding et al., "Dual Contrastive Learning for Spatio-temporal Representation",
    ACM MM 2022), whose static view repeats a single frame so that only appearance is left.
    ``index`` is an int (same frame for every clip, negative counts from the end) or an integer
    tensor of shape (B,) with one frame index per clip (values must lie in [0, T)). Returns a new
    contiguous tensor shaped like ``x``.
    """
    _check_clip(x)
    t = x.shape[_T]
    if isinstance(index, torch.Tensor) and index.dim() > 0:
        return _static_per_clip(x, index)
    i = int(index)
    if not -t <= i < t:
        raise IndexError(f"static_view: frame index {i} outside a clip of {t} frames")
    return x.narrow(_T, i % t, 1).expand_as(x).contiguous()


def _static_per_clip(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    if x.dim() != 5 or index.shape != (x.shape[0],):
        raise ValueError(f"static_view: a per-clip index needs x (B, C, T, H, W) and index (B,), got {tuple(x.shape)} and {tuple(index.shape)}")
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise TypeError(f"static_view: index must be an integer tensor, got {index.dtype}")
    b, c, _, h, w = x.shape
    idx = index.to(device=x.device, dtype=torch.long).view(b, 1, 1, 1, 1).expand(b, c, 1, h, w)
    return torch.gather(x, _T, idx).expand_as(x).contiguous()


def dynamic_view(x: torch.Tensor) -> torch.Tensor:
    """DCLR's dynamic view: ``x - roll(x, 1, T)``, unscaled.

    Mirrors DCLR (ACM MM 2022), which computes frame differences after augmentation, on the
    normalised tensors, so no rescaling is applied. Like IIC's residual clip, ``roll`` wraps:
    frame 0 is ``x[0] - x[T-1]``.
    """
    return residual_frames(x, rescale=False)


# --------------------------------------------------------------------------------------------
# Flow quantization
# --------------------------------------------------------------------------------------------

FLOW_ALGORITHMS = ("dis", "tvl1")
DEFAULT_BOUND = 20.0  # pixels; the bound of the public TV-L1 releases
META_NAME = "flow_meta.json"
META_VERSION = 1
JPEG_QUALITY = 95  # OpenCV's default, as used by the public releases
_CHUNK = 256  # RGB frames decoded at once, bounding memory on long videos
_FRAME = "frame{:06d}.jpg"
_FRAME_RE = re.compile(r"^frame\d{6}\.jpg$")

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def quantize_flow(flow: ArrayT, bound: float = DEFAULT_BOUND) -> ArrayT:
    """Flow in pixels -> uint8, clipped to [-bound, bound]; 127.5 is zero. Same type back."""
    if isinstance(flow, torch.Tensor):
        q = ((flow.float().clamp(-bound, bound) + bound) / (2 * bound) * 255).round()
        return q.to(torch.uint8)
    q = np.rint((np.clip(np.asarray(flow, dtype=np.float32), -bound, bound) + bound) / (2 * bound) * 255)
    return q.astype(np.uint8)


def dequantize_flow(q: ArrayT, bound: float = DEFAULT_BOUND) -> ArrayT:
    """uint8 flow -> float32 pixels (``q / 255 * 2 * bound - bound``). Same type (and device) back.

    The error against the original flow is at most ``bound / 255`` inside the bound (plus JPEG
    compression error for cached frames).
    """
    if isinstance(q, torch.Tensor):
        return q.float() / 255 * (2 * bound) - bound
    return (np.asarray(q, dtype=np.float32) / 255 * (2 * bound) - bound).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Flow cache: layout and metadata
# --------------------------------------------------------------------------------------------


def flow_folders(flow_root: str | os.PathLike, video_key: str) -> tuple[Path, Path]:
    """The (u, v) frame folders of one video in a flow cache."""
    root = Path(flow_root)
    return root / "u" / video_key, root / "v" / video_key


def _tmp_folder(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp")  # keys never start with "." (checked)


def load_flow_meta(flow_root: str | os.PathLike) -> dict:
    """The settings a flow cache was computed with (``flow_meta.json``)."""
    path = Path(flow_root) / META_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no flow metadata; this is not a flow cache written by compute_flow_cache")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _settings(algorithm: str, bound: float, short_side: int | None) -> dict:
    return {"algorithm": algorithm, "bound": float(bound), "short_side": None if short_side is None else int(short_side)}


def _ensure_meta(root: Path, algorithm: str, bound: float, short_side: int | None) -> None:
    """Write the metadata first; refuse to add to a cache computed with other settings."""
    wanted = _settings(algorithm, bound, short_side)
    if (root / META_NAME).exists():
        meta = load_flow_meta(root)
        found = {k: meta.get(k) for k in wanted}
        if found != wanted:
            raise ValueError(f"{root} holds flow computed with {found}; refusing to add flow computed with {wanted}. "
                             "Use another flow_root or delete the old cache.")
        return
    if any(_has_entries(root / c) for c in ("u", "v")):
        raise ValueError(f"{root} holds u/ v/ flow folders but no {META_NAME}, so their settings are unknown; "
                         f"refusing to mix them with flow computed with {wanted}. If they match, write {META_NAME} by hand.")
    root.mkdir(parents=True, exist_ok=True)
    meta = {**wanted, "version": META_VERSION, "jpeg_quality": JPEG_QUALITY, "layout": "u|v/<video_key>/frame%06d.jpg",
            "alignment": "file k (1-based) = flow from RGB frame k-1 to RGB frame k (0-based); n RGB frames -> n-1 files"}
    write_json_atomic(root / META_NAME, meta)


def _has_entries(folder: Path) -> bool:
    return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())


def _check_keys(videos: Sequence[tuple[str, str]]) -> None:
    seen: dict[str, list[str]] = {}
    for path, key in videos:
        if not key or key.startswith(".") or "/" in key or "\\" in key:
            raise ValueError(f"invalid video key {key!r} for {path}: keys are file stems (no '/', not starting with '.')")
        seen.setdefault(key, []).append(str(path))
    dups = {k: v for k, v in seen.items() if len(v) > 1}
    if dups:
        listing = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(dups.items())[:20])
        raise ValueError(f"{len(dups)} video keys are not unique in this data set (flow folders are named by key): {listing}")


def _complete(folder: Path, count: int) -> bool:
    """True when ``folder`` holds exactly frame000001.jpg .. frame{count}.jpg."""
    if not folder.is_dir():
        return False
    names = {n for n in os.listdir(folder) if _FRAME_RE.match(n)}
    return len(names) == count and all(_FRAME.format(i) in names for i in range(1, count + 1))


# --------------------------------------------------------------------------------------------
# Flow cache: computation
# --------------------------------------------------------------------------------------------

_CONTRIB_HINT = ("TV-L1 optical flow needs cv2.optflow, which only the opencv-contrib build has. Install it with: "
                 "pip uninstall opencv-python-headless && pip install opencv-contrib-python-headless "
                 "(same version), or use algorithm='dis'.")


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in FLOW_ALGORITHMS:
        raise ValueError(f"unknown flow algorithm {algorithm!r}; choose one of {', '.join(FLOW_ALGORITHMS)}")
    if algorithm == "tvl1" and not hasattr(cv2, "optflow"):
        raise ImportError(_CONTRIB_HINT)


def _flow_engine(algorithm: str):
    if algorithm == "dis":
        return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return cv2.optflow.DualTVL1OpticalFlow_create()


def _gray_frames(path: str, n: int, size: tuple[int, int] | None, backend: str) -> Iterator[np.ndarray]:
    """All n frames of a video as greyscale uint8, decoded in chunks to bound memory."""
    for start in range(0, n, _CHUNK):
        chunk = read_frames(path, range(start, min(start + _CHUNK, n)), backend=backend, size=size, num_frames=n)
        for frame in chunk:
            yield cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _write_flow(tmp_u: Path, tmp_v: Path, path: str, n: int, job: dict) -> None:
    engine = _flow_engine(job["algorithm"])
    frames = _gray_frames(path, n, job["size"], job["backend"])
    prev = next(frames)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    for k, cur in enumerate(frames, start=1):
        q = quantize_flow(engine.calc(prev, cur, None), job["bound"])
        for folder, channel in ((tmp_u, 0), (tmp_v, 1)):
            out = folder / _FRAME.format(k)
            if not cv2.imwrite(str(out), np.ascontiguousarray(q[..., channel]), params):
                raise OSError(f"cannot write {out}")
        prev = cur


def _flow_one(task: tuple[str, str, dict]) -> tuple[str, str, str | None, int]:
    """Compute one video's flow into temp folders and rename them into place.

    Returns (key, status, reason, flow frames written) with status "computed", "skipped" or "failed".
    """
    path, key, job = task
    final_u, final_v = flow_folders(job["root"], key)
    tmp_u, tmp_v = _tmp_folder(final_u), _tmp_folder(final_v)
    try:
        info = probe_video(path)
        n = info.num_frames
        if n < 2:
            return key, "failed", f"{path}: only {n} frame(s); flow needs at least 2", 0
        if _complete(final_u, n - 1) and _complete(final_v, n - 1):
            return key, "skipped", None, 0
        size = None if job["short_side"] is None else short_side_size(info.height, info.width, job["short_side"])
        for tmp in (tmp_u, tmp_v):
            shutil.rmtree(tmp, ignore_errors=True)  # leftover of a crashed run
            tmp.mkdir(parents=True)
        _write_flow(tmp_u, tmp_v, path, n, {**job, "size": size})
    except CorruptVideo as err:
        for tmp in (tmp_u, tmp_v):
            shutil.rmtree(tmp, ignore_errors=True)
        return key, "failed", str(err), 0
    except Exception as err:  # anything else is a bug or an I/O problem: stop, naming the video
        raise RuntimeError(f"flow for {key} ({path}) failed: {type(err).__name__}: {err}") from err
    for tmp, final in ((tmp_v, final_v), (tmp_u, final_u)):
        shutil.rmtree(final, ignore_errors=True)  # an incomplete earlier attempt
        os.rename(tmp, final)
    return key, "computed", None, n - 1


def _worker_init() -> None:
    cv2.setNumThreads(1)  # parallelism comes from the pool


def _run_tasks(tasks: list, workers: int) -> Iterator[tuple[str, str, str | None, int]]:
    if workers <= 1:
        _worker_init()
        yield from map(_flow_one, tasks)
        return
    with multiprocessing.get_context().Pool(workers, initializer=_worker_init) as pool:
        yield from pool.imap_unordered(_flow_one, tasks, chunksize=1)


def compute_flow_cache(
    videos: Sequence[tuple[str, str]],
    flow_root: str | os.PathLike,
    *,
    algorithm: str = "dis",
    bound: float = DEFAULT_BOUND,
    short_side: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    backend: str = "decord",
) -> dict:
    """Compute quantized optical flow for ``videos`` = [(video file or frame folder, video_key)].

    Writes ``<flow_root>/{u,v}/<video_key>/frame%06d.jpg`` (n - 1 frames for n RGB frames) and
    ``flow_meta.json``. ``algorithm`` is "dis" (OpenCV DIS, medium preset; default) or "tvl1"
    (needs opencv-contrib). ``short_side`` resizes frames before computing flow. Resumable: videos
    whose u/ and v/ folders are complete are skipped; each video is written to hidden temp folders
    and renamed into place when complete, so a crash never leaves a half-written video that looks
    complete. Refuses to add to a cache computed with other settings.

    Returns ``{"computed": [keys], "skipped_existing": [keys], "failed": {key: reason},
    "flow_frames": frames written}``; undecodable videos land in ``failed``, never silently dropped.
    """
    _check_algorithm(algorithm)
    if not bound > 0:
        raise ValueError(f"bound must be positive, got {bound}")
    videos = [(str(p), str(k)) for p, k in videos]
    _check_keys(videos)
    root = Path(flow_root)
    _ensure_meta(root, algorithm, bound, short_side)
    job = {"root": str(root), "backend": backend, **_settings(algorithm, bound, short_side)}
    tasks = [(p, k, job) for p, k in videos]
    workers = (os.cpu_count() or 1) if workers is None else workers
    return _collect(_run_tasks(tasks, min(workers, len(tasks))), len(tasks), progress, [k for _, k in videos])


def _collect(results: Iterator, total: int, progress: bool, order: list[str]) -> dict:
    status: dict[str, str] = {}
    failed: dict[str, str] = {}
    frames = 0
    with tqdm(total=total, desc="optical flow", unit="video", disable=not progress) as bar:
        for key, state, reason, n in results:
            status[key] = state
            frames += n
            if reason is not None:
                failed[key] = reason
                bar.set_postfix(failed=len(failed))
            bar.update(1)
    return {
        "computed": [k for k in order if status.get(k) == "computed"],
        "skipped_existing": [k for k in order if status.get(k) == "skipped"],
        "failed": {k: failed[k] for k in order if k in failed},
        "flow_frames": frames,
    }


# --------------------------------------------------------------------------------------------
# Flow cache: reading
# --------------------------------------------------------------------------------------------


def flow_frame_count(flow_root: str | os.PathLike, video_key: str) -> int:
    """Number of flow frames of one video (n - 1 for n RGB frames); u/ and v/ must agree."""
    u, v = flow_folders(flow_root, video_key)
    nu, nv = probe_video(u).num_frames, probe_video(v).num_frames  # CorruptVideo names a missing folder
    if nu != nv:
        raise CorruptVideo(v, f"holds {nv} flow frames but {u} holds {nu}")
    return nu


def read_flow(
    flow_root: str | os.PathLike, video_key: str, indices: Sequence[int] | np.ndarray, *, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Quantized flow (u, v) at RGB frame ``indices``: uint8 (T, H, W, 2).

    RGB index t gets the forward flow t -> t + 1 (file t + 1); the last RGB frame (t = n - 1)
    gets the last flow frame. Indices may range over [0, flow frames]. ``size`` = (height, width)
    resizes the flow images as images: the values are *not* scaled with the resize, as in the
    public flow pipelines. Raises :class:`CorruptVideo` naming the folder when frames are missing.
    """
    count = flow_frame_count(flow_root, video_key)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() > count):
        raise IndexError(f"{video_key}: RGB indices must lie in [0, {count}] for {count} flow frames, got {idx.min()}..{idx.max()}")
    files = np.minimum(idx, count - 1)  # 0-based position in the folder = file number - 1
    u_dir, v_dir = flow_folders(flow_root, video_key)
    u = read_image_frames(u_dir, files, size=size, gray=True)
    v = read_image_frames(v_dir, files, size=size, gray=True)
    if u.shape != v.shape:
        raise CorruptVideo(v_dir, f"flow frames are {v.shape[1:]} but {u_dir} holds {u.shape[1:]}")
    return np.stack([u, v], axis=-1)


# --------------------------------------------------------------------------------------------
# Flow as an image: per-frame normalisation, rotation, Middlebury colour coding (MSCL)
# --------------------------------------------------------------------------------------------
#
# MSCL (Ni et al., ECCV 2022) feeds its flow encoder colour-coded flow and screens clips offline by
# how much the colour-coded flow changes (core.data.mds); both use these helpers. They work on
# torch tensors whose last-but-two axes are anything and whose last two are (H, W): u and v are
# separate tensors of the same shape, in pixels, +u right and +v down (the cache's convention).

import functools  # noqa: E402  (this section is appended: its own imports)
import math  # noqa: E402

FLOW_NORM_EPS = 1e-5  # MSCL's ``norm_flow`` epsilon: u / (max radius + eps)
_WHEEL_SEGMENTS = ((15, (1, 0, 0), (0, 1, 0)),   # red -> yellow: G rises
                   (6, (1, 1, 0), (-1, 0, 0)),   # yellow -> green: R falls, G stays 255
                   (4, (0, 1, 0), (0, 0, 1)),    # green -> cyan: B rises
                   (11, (0, 1, 1), (0, -1, 0)),  # cyan -> blue: G falls
                   (13, (0, 0, 1), (1, 0, 0)),   # blue -> magenta: R rises
                   (6, (1, 0, 1), (0, 0, -1)))   # magenta -> red: B falls


def flow_colorwheel() -> torch.Tensor:
    """The 55-entry Middlebury colour wheel, (55, 3) float in 0..255 (a fresh copy; see :func:`_colorwheel`)."""
    return _colorwheel().clone()


@functools.lru_cache(maxsize=1)
def _colorwheel() -> torch.Tensor:
    """The Middlebury colour wheel (Baker et al., ICCV 2007), built once.

    Six hue segments of 15, 6, 4, 11, 13 and 6 entries (red, yellow, green, cyan, blue, magenta);
    within a segment of n entries the changing channel at entry i is ``floor(255 * i / n)`` rising,
    or ``255 - floor(255 * i / n)`` falling: the wheel of the Middlebury C++/Matlab code, which
    RAFT's ``make_colorwheel`` (``tools/RAFT/core/utils/flow_viz.py`` in MSCL's repository) and
    MSCL reuse. ``_WHEEL_SEGMENTS`` holds (entries, base colour, changing channel) per segment;
    e.g. yellow -> green (entries 15..20) lowers R from 255 while G stays 255.
    """
    rows = []
    for n, base, change in _WHEEL_SEGMENTS:
        ramp = np.floor(255 * np.arange(n) / n)
        for i in range(n):
            rows.append([255.0 * b + (ramp[i] if c > 0 else -ramp[i] if c < 0 else 0.0) for b, c in zip(base, change)])
    return torch.tensor(rows, dtype=torch.float32)


def normalize_flow_per_frame(u: torch.Tensor, v: torch.Tensor, eps: float = FLOW_NORM_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Divide each frame's flow by its largest magnitude (+ eps): MSCL's ``norm_flow``.

    The maximum radius is taken over the last two axes (H, W), so every frame's longest vector
    gets length ~1 whatever the speed; only directions and relative magnitudes remain.
    """
    rad_max = torch.sqrt(u.square() + v.square()).amax(dim=(-2, -1), keepdim=True)
    scale = 1.0 / (rad_max + eps)
    return u * scale, v * scale


def rotate_flow(u: torch.Tensor, v: torch.Tensor, angle: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate every flow vector by ``angle`` radians: ``(cos a u - sin a v, sin a u + cos a v)``.

    MSCL's Flow Rotation Augmentation formula. In image coordinates (+v down) a positive angle
    turns vectors clockwise on screen: a rightward flow rotated by pi/2 points down. ``angle`` is
    a float or a tensor broadcastable against ``u`` (e.g. (B, 1, 1, 1) for one angle per clip).
    Magnitudes are kept.
    """
    angle = torch.as_tensor(angle, dtype=u.dtype, device=u.device)
    c, s = torch.cos(angle), torch.sin(angle)
    return c * u - s * v, s * u + c * v


def flow_to_color(u: torch.Tensor, v: torch.Tensor, *, quantize: bool = True) -> torch.Tensor:
    """Middlebury colour coding of flow: hue = direction, saturation = magnitude; (..., 3, H, W).

    Reimplements ``flow_uv_to_colors`` (RAFT's ``flow_viz``, MSCL's ``FlowVisualizer``) for
    batched tensors: angle ``a = atan2(-v, -u) / pi`` indexes the wheel at ``(a + 1) / 2 * 54``
    with linear interpolation between neighbouring entries; inside the unit circle the colour is
    desaturated towards white by the radius (``1 - r (1 - col)``; zero flow is white), outside it
    is darkened to 75 %. Values are in [0, 1], floored to multiples of 1/255 when ``quantize``
    (the original builds a uint8 image and divides by 255). Expects flow already normalised
    (:func:`normalize_flow_per_frame`), as MSCL does; a rightward vector of length 1 is pure red,
    a downward one orange-yellow (1, 229/255, 0).
    """
    wheel = _colorwheel().to(u.device) / 255.0
    ncols = wheel.shape[0]
    u, v = u.float(), v.float()
    rad = torch.sqrt(u.square() + v.square())
    fk = (torch.atan2(-v, -u) / math.pi + 1) / 2 * (ncols - 1)
    k0 = fk.floor().long().clamp_(0, ncols - 1)
    k1 = (k0 + 1) % ncols
    f = (fk - k0.float()).unsqueeze(-3)
    col = (1 - f) * wheel[k0].movedim(-1, -3) + f * wheel[k1].movedim(-1, -3)  # (..., 3, H, W)
    r = rad.unsqueeze(-3)
    col = torch.where(r <= 1, 1 - r * (1 - col), col * 0.75)
    return torch.floor(255 * col) / 255 if quantize else col


def dequantize_flow01(x: torch.Tensor, bound: float = DEFAULT_BOUND, *, deadzone: bool = True) -> torch.Tensor:
    """Loader flow values in [0, 1] (``q / 255``, 0.5 = zero motion) -> pixels, ``(x - 0.5) * 2 bound``.

    The cache cannot store zero: 127.5 falls between the codes 127 and 128, i.e. +-bound/255 px
    (0.08 px at the default bound). With ``deadzone`` every value within that half step of 0.5
    (and bilinear mixes of the two codes) becomes exactly 0, so a static region stays static; this
    matters when the flow is then normalised per frame (a fully static frame would otherwise be
    blown up to a saturated diagonal field).
    """
    centred = x.float() - 0.5
    if deadzone:
        centred = torch.where(centred.abs() <= 0.5 / 255 + 1e-6, torch.zeros_like(centred), centred)
    return centred * (2 * bound)
