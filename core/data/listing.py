"""What every data set reader shares: the records, the frame-count index, and the checks of list files.

A data set is a list of :class:`VideoRecord` (path, label, verified frame count) for one split and
subset, plus its class names (:class:`VideoDataset`). Frame counts are verified once
(:func:`core.data.video.probe_video`) and cached in an index file beside the data
(``vsbench_index.json`` in the data root, or under ``~/.cache/vsbench/index/`` when the root is
read-only); an entry is re-probed when its file's size or modification time changes. Videos that
fail the probe stay in the data set, marked with the reason: training skips and counts them,
evaluation refuses to run on them, and ``vsbench data check`` lists them.

The readers (:mod:`core.data.datasets` for UCF101, HMDB51 and CSV lists, :mod:`core.data.official`
for Something-Something v2, Diving48 and Kinetics) check their lists with :func:`check_listed`:
a video listed twice, with two labels, or in both the train and the test part is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from core.data.video import VIDEO_EXTENSIONS, CorruptVideo, probe_video
from core.io import write_json_atomic

INDEX_NAME = "vsbench_index.json"
INDEX_VERSION = 2  # 2: files without a stated frame count (Matroska/WebM) hold their decoded count
SUBSETS = ("train", "test", "all")


class DatasetError(ValueError):
    """A data set description (split file, CSV, class list) that cannot be used as it is."""


@dataclass(frozen=True)
class VideoRecord:
    """One video of a data set."""

    path: str  # absolute path of the video file or frame folder
    label: int  # 0-based class index; -1 when unlabelled
    key: str  # stable id: the path relative to the data root, without extension
    num_frames: int = 0  # verified decodable frames (0 when the video is corrupt)
    height: int = 0
    width: int = 0
    error: str | None = None  # why the video cannot be read, when it cannot

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class VideoDataset:
    """The videos of one split/subset of a data set, in a fixed order."""

    name: str
    root: str
    classes: list[str]
    records: list[VideoRecord]
    split: int | None = None
    subset: str = "all"
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> VideoRecord:
        return self.records[i]

    @property
    def corrupt(self) -> list[VideoRecord]:
        return [r for r in self.records if not r.ok]

    def fingerprint(self) -> str:
        """Short hash of (key, label, frame count) of every video and of the generator that made
        the data (MotionShapes' version, in ``extra``): equal data, equal fingerprint."""
        h = hashlib.sha1()
        if "generator" in self.extra:
            h.update(f"generator\t{self.extra['generator']}\n".encode())
        for r in self.records:
            h.update(f"{r.key}\t{r.label}\t{r.num_frames}\n".encode())
        return h.hexdigest()[:12]


# ----------------------------------------------------------------------------- frame-count index


def _index_path(root: Path) -> Path:
    if os.access(root, os.W_OK):
        return root / INDEX_NAME
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "vsbench" / "index" / f"{digest}.json"


def _stamp(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _probe_entry(path: str) -> dict:
    try:
        stamp = _stamp(path)
    except OSError as err:
        return {"stamp": None, "num_frames": 0, "height": 0, "width": 0, "error": f"cannot be read: {err}"}
    try:
        info = probe_video(path)
        return {"stamp": stamp, "num_frames": info.num_frames, "height": info.height, "width": info.width, "error": None}
    except CorruptVideo as err:
        return {"stamp": stamp, "num_frames": 0, "height": 0, "width": 0, "error": err.reason}


def _load_index(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
        return data["entries"] if data.get("version") == INDEX_VERSION else {}
    except (OSError, ValueError, KeyError):
        return {}


def index_videos(root: str | os.PathLike, paths: Iterable[str], *, progress: bool = True, workers: int = 4) -> dict[str, dict]:
    """Verified frame counts for ``paths`` (absolute), from the cached index of ``root``.

    Stale or missing entries are probed (in a thread pool: PyAV releases the GIL while
    demuxing) and the index file is rewritten atomically.
    """
    root = Path(root)
    file = _index_path(root)
    entries = _load_index(file)
    rel = {p: os.path.relpath(p, root) for p in paths}
    stale = [p for p, r in rel.items() if r not in entries or entries[r]["stamp"] != _safe_stamp(p)]
    if stale:
        bar = tqdm(total=len(stale), desc=f"indexing {root.name}", unit="video", disable=not progress or len(stale) < 50)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for p, entry in zip(stale, pool.map(_probe_entry, stale)):
                entries[rel[p]] = entry
                bar.update()
        bar.close()
        write_json_atomic(file, {"version": INDEX_VERSION, "entries": entries})
    return {p: entries[r] for p, r in rel.items()}


def _safe_stamp(path: str) -> list[int] | None:
    try:
        return _stamp(path)
    except OSError:
        return None


def with_counts(records: list[VideoRecord], root: Path, progress: bool) -> list[VideoRecord]:
    counts = index_videos(root, [r.path for r in records], progress=progress)
    out = []
    for r in records:
        e = counts[r.path]
        out.append(
            VideoRecord(r.path, r.label, r.key, e["num_frames"], e["height"], e["width"], e["error"])
        )
    return out


# ----------------------------------------------------------------------------- helpers for split files


def read_lines(file: Path) -> Iterable[tuple[int, list[str]]]:
    """(line number, whitespace-split fields) of non-empty lines; tolerates CRLF and a BOM."""
    with open(file, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if fields:
                yield n, fields


def first_existing(candidates: Iterable[Path], what: str, root: Path) -> Path:
    candidates = list(candidates)
    for c in candidates:
        if c.exists():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetError(f"{root}: cannot find {what} (looked for {tried})")


def locate(root, annotations, videos, ann_names: tuple[str, ...], video_names: tuple[str, ...]) -> tuple[Path, Path]:
    """(split-file folder, video folder): given explicitly, or the first of the official name,
    ``splits``/``annotations`` (``videos``), or ``root`` itself that exists."""
    root = Path(root)
    ann = Path(annotations) if annotations else first_existing(
        [root / n for n in (*ann_names, "splits", "annotations")] + [root], "the split files' folder", root
    )
    return ann, video_folder(root, videos, video_names)


def video_folder(root, videos, names: tuple[str, ...]) -> Path:
    """The video folder: ``videos`` when given, else the first of the official ``names``,
    ``videos`` or ``root`` itself that exists."""
    root = Path(root)
    return Path(videos) if videos else first_existing([root / n for n in (*names, "videos")] + [root], "video folder", root)


def resolve_video(video_root: Path, rel: str) -> Path | None:
    """A split-file entry ``Class/v_x.avi`` as a file, or as a frame folder with or without class dir."""
    p = video_root / rel
    stem = p.with_suffix("")
    for cand in (p, stem, video_root / stem.name):
        if cand.exists():
            return cand
    return None


def video_key(path: Path, video_root: Path) -> str:
    rel = path.relative_to(video_root)
    return str(rel.with_suffix("")) if rel.suffix.lower() in VIDEO_EXTENSIONS else str(rel)


def normalise_entry(rel: str, file: Path, n: int, video_root: Path) -> str:
    """A list entry as a normalised relative path (``A/../B/x.avi`` -> ``B/x.avi``), so that two
    spellings of one file compare equal; an entry that leaves the video folder is an error."""
    norm = posixpath.normpath(rel.replace("\\", "/"))
    if norm == ".." or norm.startswith("../") or posixpath.isabs(norm):
        raise DatasetError(f"{file}:{n}: {rel!r} points outside the video folder; entries are paths inside {video_root}")
    return norm


@dataclass(frozen=True)
class Listed:
    """One line of a list file: the video it names (normalised), its label and its part."""

    file: Path
    line: int
    video: str
    label: str
    part: str  # "train", "test", or another name (HMDB51's "unused", "" for a list without splits)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def check_listed(entries: Iterable[Listed]) -> None:
    """Every video listed once, with one label, and never in both the train and test part.

    A test video also in the train list makes retrieval find itself (R@1 near 1.0), and a
    duplicate weighs one video twice: both change a result, so both are errors.
    """
    first: dict[str, Listed] = {}
    both: list[tuple[Listed, Listed]] = []
    for cur in entries:
        prev = first.setdefault(cur.video, cur)
        if prev is cur:
            continue
        if prev.label != cur.label:
            raise DatasetError(
                f"{cur.where}: {cur.video!r} is listed with label {cur.label!r}, but with label {prev.label!r} "
                f"at {prev.where}; a video has one label: list it once"
            )
        if {prev.part, cur.part} == {"train", "test"}:
            both.append((prev, cur) if prev.part == "train" else (cur, prev))
        else:
            raise DatasetError(f"{cur.where}: {cur.video!r} is listed a second time (first at {prev.where}); list each video once")
    if both:
        train, test = both[0]
        names = ", ".join(t.video for t, _ in both[:5]) + (" ..." if len(both) > 5 else "")
        raise DatasetError(
            f"{len(both)} video(s) are in both the train list {train.file} and the test list {test.file} "
            f"(first: {train.where} and {test.where}): {names}; a test video must not be in the train list"
        )


def require_videos(records: list, source: Path | str, what: str) -> None:
    """An empty subset trains or evaluates on nothing: an error naming the list it came from."""
    if not records:
        raise DatasetError(f"{source}: lists no videos for {what}; expected at least one video")
