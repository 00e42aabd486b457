"""Read frames of a video as uint8 (T, H, W, 3) arrays, from video files or JPEG frame folders.

Sources:

- video files (``.avi``, ``.mp4``, ...): decoded with decord (default) or PyAV (``backend="pyav"``);
- frame folders, as the public UCF101/Kinetics frame releases ship them (``img_00001.jpg``,
  ``image_00001.jpg``, ``frame000001.jpg``, 1-based), read with OpenCV; flow releases use the same
  naming in single-channel ``u/`` and ``v/`` folders (read with ``gray=True``).

One function, :func:`read_frames`, serves every source: it returns the requested frame indices
(any order, repeats allowed) and can resize while decoding. When decord fails on a file that
PyAV verified (decord 0.6 mis-copies frames of some sizes, e.g. 48x32), that read falls back to
PyAV: the same file, bit-identical frames. The warning is logged once per (file, reason) and
process, and decord's own FFmpeg log is silenced, so a run prints it once, not once per read.

Never hang, never substitute. decord loops forever, holding the GIL, when a container claims
more frames than it holds (dmlc/decord#373), and no watchdog thread can interrupt that. So
before decord sees a file, :func:`probe_video` counts the packets that are really there with
PyAV's demuxer (which always stops at end of file) and compares them with the header's claim: a
file that is short of its claim, has no video stream, or cannot decode its first frame raises
:class:`CorruptVideo` naming the file. Containers that state no frame count (Matroska, WebM)
are decoded to the end and the frames compared with what their stated duration implies, so a
truncated ``.mkv``/``.webm`` is caught as well. Reads ask decord only for indices below the verified
count. Data set indexes store the verified count, so training pays for the probe once.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

VIDEO_EXTENSIONS = frozenset({".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv"})
BACKENDS = ("decord", "pyav")
log = logging.getLogger(__name__)

# 1-based frame names used by public frame releases, most common first.
_FRAME_NAME = re.compile(r"^(img_|image_|frame|flow_x_|flow_y_)?(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)

cv2.setNumThreads(1)  # DataLoader workers provide the parallelism; OpenCV's own pool would oversubscribe.


class CorruptVideo(RuntimeError):
    """A video (file or frame folder) that cannot be used: it cannot be decoded as its metadata
    promises, or (raised by the loader) it holds fewer frames than the clips asked of it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep both fields when crossing DataLoader worker processes
        return (CorruptVideo, (self.path, self.reason))


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` verified about a video."""

    num_frames: int  # frames that are really present and can be asked for
    height: int
    width: int
    header_frames: int | None = None  # what the container claims: its frame count, else what its duration implies
    fps: float | None = None


@functools.lru_cache(maxsize=4096)
def _frame_folder_layout(folder: str, mtime_ns: int) -> tuple[str, int, int]:
    """(name template, first index, count) of a frame folder; cached per folder version."""
    numbers: dict[tuple[str, str], list[int]] = {}
    for name in os.listdir(folder):
        m = _FRAME_NAME.match(name)
        if m:
            prefix, digits, ext = m.group(1) or "", m.group(2), m.group(3)
            numbers.setdefault((f"{prefix}{{:0{len(digits)}d}}.{ext}", prefix), []).append(int(digits))
    if not numbers:
        raise CorruptVideo(folder, "frame folder holds no img_00001.jpg / image_00001.jpg / frame000001.jpg frames")
    (template, _), idx = max(numbers.items(), key=lambda kv: len(kv[1]))
    idx.sort()
    first, count = idx[0], len(idx)
    if idx[-1] - first + 1 != count:
        missing = sorted(set(range(first, idx[-1] + 1)) - set(idx))[:5]
        raise CorruptVideo(folder, f"frame numbering has gaps (missing e.g. {missing})")
    return template, first, count


def _folder_layout(folder: str) -> tuple[str, int, int]:
    return _frame_folder_layout(folder, os.stat(folder).st_mtime_ns)


def _read_image(file: str, gray: bool) -> np.ndarray:
    img = cv2.imread(file, cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if img is None:
        raise CorruptVideo(file, "image cannot be decoded")
    return img if gray else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _probe_folder(folder: str) -> VideoInfo:
    template, first, count = _folder_layout(folder)
    h, w = _read_image(os.path.join(folder, template.format(first)), gray=False).shape[:2]
    return VideoInfo(num_frames=count, height=h, width=w, header_frames=count)


def _probe_file(path: str) -> VideoInfo:
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise CorruptVideo(path, "no video stream")
            stream = container.streams.video[0]
            header = int(stream.frames) or None
            fps = float(stream.average_rate) if stream.average_rate else None
            claimed = header or _frames_from_duration(container, stream, fps)
            present = _count_present(path, container, stream, decode=header is None)
        with av.open(path) as container:
            first = next(container.decode(video=0), None)
    except CorruptVideo:
        raise
    except (av.FFmpegError, OSError, StopIteration, ValueError) as err:
        raise CorruptVideo(path, f"cannot be opened as a video: {err}") from err
    if first is None or present == 0:
        raise CorruptVideo(path, "no decodable frame")
    if header is not None and present < header:
        raise CorruptVideo(path, f"header claims {header} frames but only {present} are present (truncated?)")
    if header is None and claimed is not None and present < claimed - 1:  # a duration rounds to +-1 frame
        raise CorruptVideo(path, f"header claims a duration of {claimed} frames at {fps:g} fps but only {present} frames decode (truncated?)")
    return VideoInfo(num_frames=present, height=first.height, width=first.width, header_frames=claimed, fps=fps)


def _frames_from_duration(container, stream, fps: float | None) -> int | None:
    """Frames implied by the container's duration (Matroska/WebM state a duration, not a frame count)."""
    if fps is None:
        return None
    if stream.duration is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / 1_000_000  # AV_TIME_BASE
    else:
        return None
    return round(seconds * fps)


def _count_present(path: str, container, stream, *, decode: bool) -> int:
    """Frames really in the file: non-empty packets, or decoded frames when the container states
    no frame count (a truncated Matroska/WebM file can end in packets that do not decode)."""
    import av

    try:
        if decode:
            return sum(1 for _ in container.decode(stream))
        return sum(1 for p in container.demux(stream) if p.size > 0)
    except av.FFmpegError as err:
        raise CorruptVideo(path, f"{'decoding' if decode else 'demuxing'} failed: {err}") from err


@functools.lru_cache(maxsize=65536)
def _probe_cached(path: str, mtime_ns: int, size: int) -> VideoInfo:
    return _probe_folder(path) if os.path.isdir(path) else _probe_file(path)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Verify a video file or frame folder and return its real frame count and size.

    Raises :class:`CorruptVideo` (naming the file) when it cannot be opened, holds no
    decodable frame, or holds fewer frames than its header claims. Results are cached per
    (path, modification time, size).
    """
    path = str(path)
    try:
        st = os.stat(path)
    except OSError as err:
        raise CorruptVideo(path, f"cannot be read: {err.strerror or err}") from err
    return _probe_cached(path, st.st_mtime_ns, st.st_size)


def _as_indices(indices: Sequence[int] | np.ndarray, path: str, num_frames: int) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError(f"{path}: no frame indices requested")
    if idx.min() < 0 or idx.max() >= num_frames:
        raise IndexError(f"{path}: frame indices must lie in [0, {num_frames - 1}], got {idx.min()}..{idx.max()}")
    return idx


def _resize(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or frame.shape[:2] == tuple(size):
        return frame
    h, w = size
    interp = cv2.INTER_AREA if h * w < frame.shape[0] * frame.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(frame, (w, h), interpolation=interp)


def read_image_frames(
    folder: str | os.PathLike, indices: Sequence[int] | np.ndarray, *, size: tuple[int, int] | None = None, gray: bool = False
) -> np.ndarray:
    """Frames of a JPEG/PNG folder at 0-based ``indices``: (T, H, W, 3) uint8, or (T, H, W) with ``gray``."""
    folder = str(folder)
    template, first, count = _folder_layout(folder)
    idx = _as_indices(indices, folder, count)
    cache: dict[int, np.ndarray] = {}
    for i in np.unique(idx):
        cache[int(i)] = _resize(_read_image(os.path.join(folder, template.format(first + int(i))), gray), size)
    return np.stack([cache[int(i)] for i in idx])


class _DecordFailed(Exception):
    """decord could not read a file that PyAV verified; the caller falls back to PyAV."""


def _read_decord(path: str, idx: np.ndarray, size: tuple[int, int] | None, num_frames: int) -> np.ndarray:
    decord = _decord()
    h, w = size if size is not None else (-1, -1)
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h, num_threads=1)
        if idx.max() >= min(len(reader), num_frames):  # never let decord seek past what is verified
            raise _DecordFailed(f"decord sees {len(reader)} of the {num_frames} verified frames")
        uniq, inverse = np.unique(idx, return_inverse=True)
        frames = reader.get_batch(uniq.tolist()).asnumpy()
    except (decord.DECORDError, RuntimeError, IndexError) as err:
        raise _DecordFailed(_DECORD_PREFIX.sub("", str(err).splitlines()[0])) from err
    return frames[inverse]


# decord's messages start with "[hh:mm:ss] /path/to/source.cc:123: "; without it equal failures read equal.
_DECORD_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\]\s*(\S+:\d+:\s*)?")


@functools.cache
def _decord():
    """decord, with its FFmpeg log silenced: it would print the same text on every read of a file,
    while the probe has verified the file and :func:`_warn_fallback` reports a failure once."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    return decord


_warned: set[tuple[str, str]] = set()  # (file, reason) pairs this process has warned about


def _warn_fallback(path: str, reason: str) -> None:
    """Warn about a decord failure once per (file, reason) and process, not once per read."""
    if (path, reason) not in _warned:
        _warned.add((path, reason))
        log.warning("decord cannot read %s (%s); decoding it with PyAV instead", path, reason)


def _frame_index(frame, stream, fps: float) -> int:
    start = stream.start_time or 0
    return int(round(float((frame.pts - start) * stream.time_base) * fps))


def _read_pyav(path: str, idx: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    import av

    wanted = set(int(i) for i in idx)
    last = int(idx.max())
    got: dict[int, np.ndarray] = {}
    h, w = size if size is not None else (None, None)
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate)
            target = int(min(wanted) / fps / stream.time_base) + (stream.start_time or 0)
            container.seek(target, stream=stream, backward=True, any_frame=False)
            for n, frame in enumerate(container.decode(stream)):
                i = _frame_index(frame, stream, fps) if frame.pts is not None else n
                if n == 0 and i > min(wanted):  # the seek overshot: decode from the start instead
                    container.seek(0, stream=stream)
                    return _read_pyav_from_start(container, stream, wanted, last, h, w, path, idx)
                if i in wanted:
                    got[i] = frame.to_ndarray(format="rgb24", width=w, height=h)
                if i >= last:
                    break
    except av.FFmpegError as err:
        raise CorruptVideo(path, f"PyAV failed: {err}") from err
    return _gather(got, idx, path)


def _read_pyav_from_start(container, stream, wanted, last, h, w, path, idx) -> np.ndarray:
    got: dict[int, np.ndarray] = {}
    for i, frame in enumerate(container.decode(stream)):
        if i in wanted:
            got[i] = frame.to_ndarray(format="rgb24", width=w, height=h)
        if i >= last:
            break
    return _gather(got, idx, path)


def _gather(got: dict[int, np.ndarray], idx: np.ndarray, path: str) -> np.ndarray:
    missing = sorted(set(int(i) for i in idx) - set(got))
    if missing:
        raise CorruptVideo(path, f"frames {missing[:5]} could not be decoded")
    return np.stack([got[int(i)] for i in idx])


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int] | np.ndarray,
    *,
    backend: str = "decord",
    size: tuple[int, int] | None = None,
    num_frames: int | None = None,
) -> np.ndarray:
    """Decode the frames at 0-based ``indices`` of a video file or frame folder.

    Returns uint8 (T, H, W, 3) RGB in the order of ``indices`` (repeats allowed). ``size`` =
    (height, width) resizes while decoding. ``num_frames`` is the verified frame count from a
    data set index; without it the file is probed first (cached). Raises :class:`CorruptVideo`
    for undecodable data and ``IndexError`` for indices outside the video.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown decoder backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = str(path)
    if os.path.isdir(path):
        return read_image_frames(path, indices, size=size)
    if num_frames is None:
        num_frames = probe_video(path).num_frames
    idx = _as_indices(indices, path, num_frames)
    if backend == "decord":
        try:
            return _read_decord(path, idx, size, num_frames)
        except _DecordFailed as err:  # e.g. decord's row-padding bug on some small frame sizes
            _warn_fallback(path, str(err))
    return _read_pyav(path, idx, size)


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) that scales the shorter side to ``short_side`` and keeps the aspect ratio."""
    if height <= width:
        return short_side, max(1, round(width * short_side / height))
    return max(1, round(height * short_side / width)), short_side


def list_videos(root: str | os.PathLike) -> list[Path]:
    """All video files under ``root`` (recursively), sorted."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())


def write_video(path: str | os.PathLike, frames: np.ndarray, *, fps: int = 25, codec: str = "mpeg4", bit_rate: int = 2_000_000, gop: int = 12) -> None:
    """Encode uint8 (T, H, W, 3) RGB frames as a video file (MPEG-4 Part 2 in AVI by default, as UCF101 ships).

    Encoding is single-threaded and bit-exact, so the same frames give the same bytes. The file
    appears under its name only when complete: it is written to a hidden, pid-tagged temporary
    sibling (``.<name>.<pid>.tmp``) and renamed, so an interrupted writer never leaves a
    truncated video behind.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{path}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _encode(tmp, frames, _CONTAINER.get(path.suffix.lower(), "avi"), fps, codec, bit_rate, gop)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_CONTAINER = {".avi": "avi", ".mp4": "mp4", ".mkv": "matroska", ".webm": "webm", ".mov": "mov"}


def _encode(file: Path, frames: np.ndarray, container_format: str, fps: int, codec: str, bit_rate: int, gop: int) -> None:
    import av

    with av.open(str(file), "w", format=container_format, container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=fps)
        ctx = stream.codec_context
        ctx.height, ctx.width = frames.shape[1:3]
        ctx.pix_fmt, ctx.bit_rate, ctx.gop_size, ctx.thread_count = "yuv420p", bit_rate, gop, 1
        ctx.flags |= av.codec.context.Flags.bitexact
        if codec == "mpeg4" and container_format == "avi":
            ctx.codec_tag = "XVID"  # what UCF101's files carry
        for img in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode(None))
