"""Data set indexes: UCF101, HMDB51 (official split files), Kinetics-style CSV and generic CSV.

A data set here is a list of :class:`VideoRecord` (path, label, verified frame count) for one
split and subset, plus its class names. Reading the official files is strict: a malformed
line, an unknown class or a missing video raises :class:`DatasetError` naming the file and
line, so a typo never turns into a silently smaller data set.

Frame counts are verified once (:func:`harness.data.video.probe_video`) and cached in an index
file beside the data (``vsbench_index.json`` in the data root, or under
``~/.cache/vsbench/index/`` when the root is read-only). An entry is re-probed when its file's
size or modification time changes. Videos that fail the probe stay in the data set, marked with
the reason: training skips and counts them, evaluation refuses to run on them, and
``vsbench data check`` lists them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from harness.data.video import VIDEO_EXTENSIONS, CorruptVideo, probe_video
from harness.io import write_json_atomic

INDEX_NAME = "vsbench_index.json"
INDEX_VERSION = 1
FORMATS = ("auto", "ucf101", "hmdb51", "csv")
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
        """Short hash of (key, label, frame count) of every video: equal data, equal fingerprint."""
        h = hashlib.sha1()
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


def _with_counts(records: list[VideoRecord], root: Path, progress: bool) -> list[VideoRecord]:
    counts = index_videos(root, [r.path for r in records], progress=progress)
    out = []
    for r in records:
        e = counts[r.path]
        out.append(
            VideoRecord(r.path, r.label, r.key, e["num_frames"], e["height"], e["width"], e["error"])
        )
    return out


# ----------------------------------------------------------------------------- helpers for split files


def _lines(file: Path) -> Iterable[tuple[int, list[str]]]:
    """(line number, whitespace-split fields) of non-empty lines; tolerates CRLF and a BOM."""
    with open(file, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if fields:
                yield n, fields


def _first_existing(candidates: Iterable[Path], what: str, root: Path) -> Path:
    candidates = list(candidates)
    for c in candidates:
        if c.exists():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetError(f"{root}: cannot find {what} (looked for {tried})")


def _locate(root, annotations, videos, ann_names: tuple[str, ...], video_names: tuple[str, ...]) -> tuple[Path, Path]:
    """(split-file folder, video folder): given explicitly, or the first of the official name,
    ``splits``/``annotations`` (``videos``), or ``root`` itself that exists."""
    root = Path(root)
    ann = Path(annotations) if annotations else _first_existing(
        [root / n for n in (*ann_names, "splits", "annotations")] + [root], "the split files' folder", root
    )
    video_root = Path(videos) if videos else _first_existing([root / n for n in (*video_names, "videos")] + [root], "video folder", root)
    return ann, video_root


def _resolve_video(video_root: Path, rel: str) -> Path | None:
    """A split-file entry ``Class/v_x.avi`` as a file, or as a frame folder with or without class dir."""
    p = video_root / rel
    stem = p.with_suffix("")
    for cand in (p, stem, video_root / stem.name):
        if cand.exists():
            return cand
    return None


def _key(path: Path, video_root: Path) -> str:
    rel = path.relative_to(video_root)
    return str(rel.with_suffix("")) if rel.suffix.lower() in VIDEO_EXTENSIONS else str(rel)


# ----------------------------------------------------------------------------- UCF101


def read_class_index(file: Path) -> list[str]:
    """UCF101 ``classInd.txt`` ("1 ApplyEyeMakeup" per line) as class names in label order."""
    names: dict[int, str] = {}
    for n, fields in _lines(file):
        if len(fields) != 2 or not fields[0].isdigit():
            raise DatasetError(f"{file}:{n}: expected '<index> <ClassName>', got {' '.join(fields)!r}")
        idx = int(fields[0])
        if idx in names:
            raise DatasetError(f"{file}:{n}: class index {idx} appears twice")
        names[idx] = fields[1]
    if sorted(names) != list(range(1, len(names) + 1)):
        raise DatasetError(f"{file}: class indices must run 1..{len(names)} without gaps")
    return [names[i] for i in range(1, len(names) + 1)]


def _ucf_entries(file: Path, classes: list[str], video_root: Path) -> list[VideoRecord]:
    lookup = {c: i for i, c in enumerate(classes)}
    records = []
    for n, fields in _lines(file):
        if len(fields) > 2 or (len(fields) == 2 and not fields[1].isdigit()):
            raise DatasetError(f"{file}:{n}: expected '<Class>/<video> [<label>]', got {' '.join(fields)!r}")
        rel = fields[0].replace("\\", "/")
        cls = rel.split("/")[0] if "/" in rel else None
        if cls not in lookup:
            raise DatasetError(f"{file}:{n}: unknown class {cls!r} in {rel!r}; known classes are those of classInd.txt")
        label = lookup[cls]
        if len(fields) == 2 and int(fields[1]) != label + 1:
            raise DatasetError(f"{file}:{n}: label {fields[1]} does not match class {cls} (index {label + 1} in classInd.txt)")
        path = _resolve_video(video_root, rel)
        if path is None:
            raise DatasetError(f"{file}:{n}: video {rel!r} not found under {video_root}")
        records.append(VideoRecord(str(path), label, _key(path, video_root)))
    return records


def load_ucf101(
    root: str | os.PathLike,
    *,
    split: int = 1,
    subset: str = "train",
    annotations: str | os.PathLike | None = None,
    videos: str | os.PathLike | None = None,
    progress: bool = True,
) -> VideoDataset:
    """UCF101 from its official files: ``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``.

    ``root`` holds the videos (``UCF-101/<Class>/v_*.avi``, or class folders directly, or frame
    folders) and the split files (``ucfTrainTestlist/``); ``annotations`` and ``videos``
    override where each is looked for.
    """
    _check_split_subset(split, subset)
    ann, video_root = _locate(root, annotations, videos, ("ucfTrainTestlist",), ("UCF-101",))
    classes = read_class_index(_first_existing([ann / "classInd.txt"], "classInd.txt", ann))
    records: list[VideoRecord] = []
    for part in ("train", "test") if subset == "all" else (subset,):
        lst = _first_existing([ann / f"{part}list{split:02d}.txt"], f"{part}list{split:02d}.txt", ann)
        records += _ucf_entries(lst, classes, video_root)
    records = _with_counts(records, video_root, progress)
    return VideoDataset("ucf101", str(video_root), classes, records, split, subset)


# ----------------------------------------------------------------------------- HMDB51


def load_hmdb51(
    root: str | os.PathLike,
    *,
    split: int = 1,
    subset: str = "train",
    annotations: str | os.PathLike | None = None,
    videos: str | os.PathLike | None = None,
    progress: bool = True,
) -> VideoDataset:
    """HMDB51 from its official ``<class>_test_split<N>.txt`` files (1 = train, 2 = test, 0 = unused).

    Classes are the sorted class names of the split files; videos live in ``<class>/<video>.avi``
    (or frame folders of the same name).
    """
    _check_split_subset(split, subset)
    ann, video_root = _locate(root, annotations, videos, ("testTrainMulti_7030_splits",), ("hmdb51_org",))
    files = sorted(ann.glob(f"*_test_split{split}.txt"))
    if not files:
        raise DatasetError(f"{ann}: no '<class>_test_split{split}.txt' files")
    classes = [f.name[: -len(f"_test_split{split}.txt")] for f in files]
    wanted = {"train": {"1"}, "test": {"2"}, "all": {"1", "2"}}[subset]
    records = []
    for label, (cls, file) in enumerate(zip(classes, files)):
        for n, fields in _lines(file):
            if len(fields) != 2 or fields[1] not in {"0", "1", "2"}:
                raise DatasetError(f"{file}:{n}: expected '<video>.avi <0|1|2>', got {' '.join(fields)!r}")
            if fields[1] in wanted:
                path = _resolve_video(video_root, f"{cls}/{fields[0]}")
                if path is None:
                    raise DatasetError(f"{file}:{n}: video {cls}/{fields[0]} not found under {video_root}")
                records.append(VideoRecord(str(path), label, _key(path, video_root)))
    records = _with_counts(records, video_root, progress)
    return VideoDataset("hmdb51", str(video_root), classes, records, split, subset)


# ----------------------------------------------------------------------------- CSV


def load_csv(
    csv_file: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    subset: str = "all",
    classes: list[str] | None = None,
    progress: bool = True,
) -> VideoDataset:
    """A CSV list of videos, in one of two forms.

    - Kinetics-style, no header: ``path,label`` or ``path,num_frames,label`` (the frame count
      column is ignored: counts are verified from the files).
    - Generic, with a header row: a ``path`` column, optional ``label`` and ``split`` columns
      (``split`` values ``train``/``test`` select with ``subset``).

    Labels are integers (0-based) or class names (then classes are the sorted names, unless
    ``classes`` is given). Relative paths are relative to ``root`` (default: the CSV's folder).
    """
    if subset not in SUBSETS:
        raise DatasetError(f"subset must be one of {SUBSETS}, got {subset!r}")
    csv_file = Path(csv_file)
    base = Path(root) if root else csv_file.parent
    rows = _csv_rows(csv_file, subset)
    raw_labels = [lab for _, _, lab in rows]
    classes, to_label = _label_mapping(raw_labels, classes, csv_file)
    records = []
    for n, path_text, lab in rows:
        path = Path(path_text) if os.path.isabs(path_text) else base / path_text
        if not path.exists():
            raise DatasetError(f"{csv_file}:{n}: video {path_text!r} not found (relative paths are taken from {base})")
        label = to_label(lab, n)
        records.append(VideoRecord(str(path), label, _key(path, base) if path.is_relative_to(base) else str(path)))
    records = _with_counts(records, base, progress)
    return VideoDataset(csv_file.stem, str(base), classes, records, None, subset)


def _csv_rows(file: Path, subset: str) -> list[tuple[int, str, str | None]]:
    with open(file, newline="", encoding="utf-8-sig") as f:
        rows = [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(f), 1) if any(c.strip() for c in row)]
    if not rows:
        raise DatasetError(f"{file}: empty CSV")
    header = [c.lower() for c in rows[0][1]]
    if "path" in header:
        return _generic_rows(file, header, rows[1:], subset)
    out = []
    for n, row in rows:
        if len(row) not in (2, 3):
            raise DatasetError(f"{file}:{n}: expected 'path,label' or 'path,num_frames,label', got {len(row)} columns")
        if len(row) == 3 and not row[1].isdigit():
            raise DatasetError(f"{file}:{n}: num_frames must be an integer, got {row[1]!r}")
        out.append((n, row[0], row[-1]))
    return out


def _generic_rows(file: Path, header: list[str], rows, subset: str) -> list[tuple[int, str, str | None]]:
    col = {name: i for i, name in enumerate(header)}
    out = []
    for n, row in rows:
        if len(row) != len(header):
            raise DatasetError(f"{file}:{n}: expected {len(header)} columns ({','.join(header)}), got {len(row)}")
        if "split" in col and row[col["split"]] not in ("train", "test"):
            raise DatasetError(f"{file}:{n}: split must be 'train' or 'test', got {row[col['split']]!r}")
        if subset != "all" and "split" in col and row[col["split"]] != subset:
            continue
        out.append((n, row[col["path"]], row[col["label"]] if "label" in col else None))
    return out


def _label_mapping(raw: list[str | None], classes: list[str] | None, file: Path):
    present = [r for r in raw if r is not None]
    if not present:
        return classes or [], lambda lab, n: -1
    if classes is None and all(r.lstrip("-").isdigit() for r in present):
        k = max(int(r) for r in present) + 1
        classes = [str(i) for i in range(k)]

        def to_int(lab, n):
            if int(lab) < 0:
                raise DatasetError(f"{file}:{n}: labels must be >= 0, got {lab}")
            return int(lab)

        return classes, to_int
    classes = classes or sorted(set(present))
    lookup = {c: i for i, c in enumerate(classes)}

    def to_label(lab, n):
        if lab not in lookup:
            raise DatasetError(f"{file}:{n}: unknown class {lab!r}; known: {', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}")
        return lookup[lab]

    return classes, to_label


# ----------------------------------------------------------------------------- dispatch


def _check_split_subset(split: int, subset: str) -> None:
    if split not in (1, 2, 3):
        raise DatasetError(f"split must be 1, 2 or 3, got {split!r}")
    if subset not in SUBSETS:
        raise DatasetError(f"subset must be one of {SUBSETS}, got {subset!r}")


def detect_format(path: str | os.PathLike) -> str:
    """'csv', 'ucf101' or 'hmdb51' from what lies at ``path``."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() in (".csv", ".txt"):
        return "csv"
    for ann in (p / "ucfTrainTestlist", p / "splits", p / "annotations", p):
        if (ann / "classInd.txt").exists():
            return "ucf101"
        if ann.is_dir() and any(ann.glob("*_test_split1.txt")):
            return "hmdb51"
    if (p / "testTrainMulti_7030_splits").is_dir():
        return "hmdb51"
    raise DatasetError(
        f"{p}: cannot tell the data set format: expected a CSV file, a UCF101 layout (classInd.txt) "
        "or an HMDB51 layout (<class>_test_split1.txt); pass the format explicitly"
    )


def open_dataset(
    path: str | os.PathLike, *, format: str = "auto", split: int = 1, subset: str = "train", progress: bool = True
) -> VideoDataset:
    """Open a data set by path; ``format`` is one of ``auto``, ``ucf101``, ``hmdb51``, ``csv``."""
    if format not in FORMATS:
        raise DatasetError(f"unknown data set format {format!r}; choose one of {', '.join(FORMATS)}")
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "ucf101":
        return load_ucf101(path, split=split, subset=subset, progress=progress)
    if fmt == "hmdb51":
        return load_hmdb51(path, split=split, subset=subset, progress=progress)
    return load_csv(path, subset=subset, progress=progress)
