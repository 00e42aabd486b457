"""Data set indexes: UCF101, HMDB51 (official split files), Kinetics-style CSV and generic CSV.

A data set here is a list of :class:`VideoRecord` (path, label, verified frame count) for one
split and subset, plus its class names. Reading the official files is strict: a malformed
line, an unknown class or a missing video raises :class:`DatasetError` naming the file and
line, so a typo never turns into a silently smaller data set.

Frame counts are verified once (:func:`core.data.video.probe_video`) and cached in an index
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
import posixpath
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from core.data.video import VIDEO_EXTENSIONS, CorruptVideo, probe_video
from core.io import write_json_atomic

INDEX_NAME = "vsbench_index.json"
INDEX_VERSION = 2  # 2: files without a stated frame count (Matroska/WebM) hold their decoded count
FORMATS = ("auto", "ucf101", "hmdb51", "csv")
SUBSETS = ("train", "test", "all")
CSV_COLUMNS = ("path", "label", "split", "num_frames")  # the columns a CSV header may name


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


def _normalise(rel: str, file: Path, n: int, video_root: Path) -> str:
    """A list entry as a normalised relative path (``A/../B/x.avi`` -> ``B/x.avi``), so that two
    spellings of one file compare equal; an entry that leaves the video folder is an error."""
    norm = posixpath.normpath(rel.replace("\\", "/"))
    if norm == ".." or norm.startswith("../") or posixpath.isabs(norm):
        raise DatasetError(f"{file}:{n}: {rel!r} points outside the video folder; entries are paths inside {video_root}")
    return norm


@dataclass(frozen=True)
class _Listed:
    """One line of a list file: the video it names (normalised), its label and its part."""

    file: Path
    line: int
    video: str
    label: str
    part: str  # "train", "test", or another name (HMDB51's "unused", "" for a list without splits)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _check_listed(entries: Iterable[_Listed]) -> None:
    """Every video listed once, with one label, and never in both the train and test part.

    A test video also in the train list makes retrieval find itself (R@1 near 1.0), and a
    duplicate weighs one video twice: both change a result, so both are errors.
    """
    first: dict[str, _Listed] = {}
    both: list[tuple[_Listed, _Listed]] = []
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


def _require_videos(records: list, source: Path | str, what: str) -> None:
    """An empty subset trains or evaluates on nothing: an error naming the list it came from."""
    if not records:
        raise DatasetError(f"{source}: lists no videos for {what}; expected at least one video")


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


def _ucf_entries(file: Path, part: str, classes: list[str], video_root: Path) -> list[tuple[VideoRecord, _Listed]]:
    lookup = {c: i for i, c in enumerate(classes)}
    out = []
    for n, fields in _lines(file):
        if len(fields) > 2 or (len(fields) == 2 and not fields[1].isdigit()):
            raise DatasetError(f"{file}:{n}: expected '<Class>/<video> [<label>]', got {' '.join(fields)!r}")
        rel = _normalise(fields[0], file, n, video_root)
        cls = rel.split("/")[0] if "/" in rel else None
        if cls not in lookup:
            raise DatasetError(f"{file}:{n}: unknown class {cls!r} in {fields[0]!r}; known classes are those of classInd.txt")
        label = lookup[cls]
        if len(fields) == 2 and int(fields[1]) != label + 1:
            raise DatasetError(f"{file}:{n}: label {fields[1]} does not match class {cls} of {rel!r} (index {label + 1} in classInd.txt)")
        path = _resolve_video(video_root, rel)
        if path is None:
            raise DatasetError(f"{file}:{n}: video {fields[0]!r} not found under {video_root}")
        out.append((VideoRecord(str(path), label, _key(path, video_root)), _Listed(file, n, rel, cls, part)))
    return out


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
    override where each is looked for. Both lists of the split are read whatever the subset (the
    other one when it exists): a video in both, a line listed twice or a requested list with no
    video raises :class:`DatasetError`.
    """
    _check_split_subset(split, subset)
    ann, video_root = _locate(root, annotations, videos, ("ucfTrainTestlist",), ("UCF-101",))
    classes = read_class_index(_first_existing([ann / "classInd.txt"], "classInd.txt", ann))
    wanted = ("train", "test") if subset == "all" else (subset,)
    parts: dict[str, list[tuple[VideoRecord, _Listed]]] = {}
    for part in ("train", "test"):
        lst = ann / f"{part}list{split:02d}.txt"
        if part in wanted:
            _first_existing([lst], lst.name, ann)
            parts[part] = _ucf_entries(lst, part, classes, video_root)
            _require_videos(parts[part], lst, f"the {part} subset of split {split}")
        elif lst.exists():
            parts[part] = _ucf_entries(lst, part, classes, video_root)
    _check_listed(listed for entries in parts.values() for _, listed in entries)
    records = _with_counts([r for part in wanted for r, _ in parts[part]], video_root, progress)
    return VideoDataset("ucf101", str(video_root), classes, records, split, subset, extra=_generator(Path(root)))


def _generator(root: Path) -> dict:
    """``{"generator": "MotionShapes v<N>"}`` for a generated data set (its motionshapes.json;
    folders without a version were written by version 1), else nothing."""
    try:
        info = json.loads((root / "motionshapes.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {"generator": f"MotionShapes v{info.get('generator_version', 1)}"} if isinstance(info, dict) else {}


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

    Classes are the sorted class names of the split files (so ``climb`` is before ``climb_stairs``,
    as torchvision's ``HMDB51`` numbers its class folders); videos live in ``<class>/<video>.avi``
    (or frame folders of the same name).
    """
    _check_split_subset(split, subset)
    ann, video_root = _locate(root, annotations, videos, ("testTrainMulti_7030_splits",), ("hmdb51_org",))
    suffix = f"_test_split{split}.txt"
    # Sort by class name, not by file name: "climb_stairs_test..." sorts before "climb_test..."
    # ('_' < 't'), but the class "climb" comes before "climb_stairs".
    files = sorted(ann.glob(f"*{suffix}"), key=lambda f: f.name[: -len(suffix)])
    if not files:
        raise DatasetError(f"{ann}: no '<class>{suffix}' files")
    classes = [f.name[: -len(suffix)] for f in files]
    wanted = {"train": {"train"}, "test": {"test"}, "all": {"train", "test"}}[subset]
    listed = [entry for cls, file in zip(classes, files) for entry in _hmdb_lines(file, cls, video_root)]
    _check_listed(listed)
    lookup = {c: i for i, c in enumerate(classes)}
    records = []
    for entry in listed:
        if entry.part in wanted:
            path = _resolve_video(video_root, entry.video)
            if path is None:
                raise DatasetError(f"{entry.where}: video {entry.video} not found under {video_root}")
            records.append(VideoRecord(str(path), lookup[entry.label], _key(path, video_root)))
    _require_videos(records, ann / f"*_test_split{split}.txt", f"the {subset} subset of split {split}")
    records = _with_counts(records, video_root, progress)
    return VideoDataset("hmdb51", str(video_root), classes, records, split, subset)


_HMDB_PARTS = {"0": "unused", "1": "train", "2": "test"}


def _hmdb_lines(file: Path, cls: str, video_root: Path) -> list[_Listed]:
    """The lines of one ``<class>_test_splitN.txt`` as listed videos of class ``cls``."""
    out = []
    for n, fields in _lines(file):
        if len(fields) != 2 or fields[1] not in _HMDB_PARTS:
            raise DatasetError(f"{file}:{n}: expected '<video>.avi <0|1|2>', got {' '.join(fields)!r}")
        video = _normalise(f"{cls}/{fields[0]}", file, n, video_root)
        if posixpath.dirname(video) != cls:
            raise DatasetError(
                f"{file}:{n}: {fields[0]!r} leaves the folder of class {cls}; a line names a video of this class: '<video>.avi <0|1|2>'"
            )
        out.append(_Listed(file, n, video, cls, _HMDB_PARTS[fields[1]]))
    return out


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
    - Generic, with a header row naming some of :data:`CSV_COLUMNS`: ``path`` (required),
      ``label``, ``split`` (values ``train``/``test``, selected with ``subset``; a list with a
      ``split`` column must have a ``label`` column) and ``num_frames`` (ignored). Without a
      ``label`` column every video is unlabelled (label -1), as pretraining lists are.

    Labels are all integers (0-based) or all class names (then classes are the sorted names,
    unless ``classes`` is given); classes come from every row, whatever the subset, so train and
    test map a name to the same index. Relative paths are relative to ``root`` (default: the
    CSV's folder). A video listed twice, with two labels, or in both train and test raises
    :class:`DatasetError`, as does a subset with no video.
    """
    if subset not in SUBSETS:
        raise DatasetError(f"subset must be one of {SUBSETS}, got {subset!r}")
    csv_file = Path(csv_file)
    base = Path(root) if root else csv_file.parent
    rows = _csv_rows(csv_file)
    classes, to_label = _label_mapping([(n, lab) for n, _, lab, _ in rows if lab is not None], classes, csv_file)
    paths = {n: Path(os.path.normpath(base / path_text)) for n, path_text, _, _ in rows}
    _check_listed(_Listed(csv_file, n, _shown(paths[n], base), lab or "", part or "") for n, _, lab, part in rows)
    records = []
    for n, path_text, lab, part in rows:
        if subset != "all" and part is not None and part != subset:
            continue
        path = paths[n]
        if not path.exists():
            raise DatasetError(f"{csv_file}:{n}: video {path_text!r} not found (relative paths are taken from {base})")
        records.append(VideoRecord(str(path), to_label(lab, n), _key(path, base) if path.is_relative_to(base) else str(path)))
    _require_videos(records, csv_file, f"subset {subset!r}")
    records = _with_counts(records, base, progress)
    return VideoDataset(csv_file.stem, str(base), classes, records, None, subset)


def _shown(path: Path, base: Path) -> str:
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


_Row = tuple[int, str, str | None, str | None]  # (line, path, label or None, split or None)


def _csv_rows(file: Path) -> list[_Row]:
    """Every row of a CSV list, header checked; the first row is a header when it names a column."""
    with open(file, newline="", encoding="utf-8-sig") as f:
        rows = [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(f), 1) if any(c.strip() for c in row)]
    if not rows:
        raise DatasetError(f"{file}: empty CSV")
    header = [c.lower() for c in rows[0][1]]
    if set(header) & set(CSV_COLUMNS):
        return _generic_rows(file, rows[0][0], header, rows[1:])
    out = []
    for n, row in rows:
        if len(row) not in (2, 3):
            raise DatasetError(f"{file}:{n}: expected 'path,label' or 'path,num_frames,label', got {len(row)} columns")
        if len(row) == 3:
            _check_frame_count(file, n, row[1])
        out.append((n, row[0], row[-1], None))
    return out


def _check_header(file: Path, n: int, header: list[str]) -> None:
    valid = f"valid columns are {', '.join(CSV_COLUMNS)} (path required; label required with split)"
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if unknown:
        raise DatasetError(f"{file}:{n}: unknown column(s) {', '.join(map(repr, unknown))} in the header; {valid}")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DatasetError(f"{file}:{n}: column(s) {', '.join(map(repr, repeated))} appear twice in the header; {valid}")
    if "path" not in header:
        raise DatasetError(f"{file}:{n}: the header has no 'path' column; {valid}")
    if "split" in header and "label" not in header:
        raise DatasetError(
            f"{file}:{n}: the header has a 'split' column but no 'label' column "
            f"(train/test lists are for evaluation, which needs labels); {valid}"
        )


def _check_frame_count(file: Path, n: int, text: str) -> None:
    if not text.isdigit():
        raise DatasetError(f"{file}:{n}: num_frames must be an integer, got {text!r}")


def _generic_rows(file: Path, header_line: int, header: list[str], rows) -> list[_Row]:
    _check_header(file, header_line, header)
    col = {name: i for i, name in enumerate(header)}
    out = []
    for n, row in rows:
        if len(row) != len(header):
            raise DatasetError(f"{file}:{n}: expected {len(header)} columns ({','.join(header)}), got {len(row)}")
        if "split" in col and row[col["split"]] not in ("train", "test"):
            raise DatasetError(f"{file}:{n}: split must be 'train' or 'test', got {row[col['split']]!r}")
        if "num_frames" in col:
            _check_frame_count(file, n, row[col["num_frames"]])
        label = row[col["label"]] if "label" in col else None
        out.append((n, row[col["path"]], label, row[col["split"]] if "split" in col else None))
    return out


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _label_kinds(labels: list[tuple[int, str]], file: Path) -> bool:
    """True when every label is an integer >= 0, False when every label is a class name.

    Anything else raises, naming the line: a number that is not a whole non-negative integer
    (``1.0``, ``-1``), or integers mixed with names (sorted as text they would scramble the class
    indices: ``0, 1, 10, 11, 2, ...``).
    """
    for n, lab in labels:
        if _NUMBER.fullmatch(lab) and not lab.isdigit():
            raise DatasetError(f"{file}:{n}: label {lab!r} is not an integer >= 0; integer labels are 0, 1, 2, ... (or use class names throughout)")
    first_n, first = labels[0]
    for n, lab in labels:
        if lab.isdigit() != first.isdigit():
            kind = ("an integer", "a class name") if lab.isdigit() else ("a class name", "an integer")
            raise DatasetError(
                f"{file}:{n}: label {lab!r} is {kind[0]}, but label {first!r} at line {first_n} is {kind[1]}; "
                "labels must be all integers or all class names"
            )
    return first.isdigit()


def _label_mapping(labels: list[tuple[int, str]], classes: list[str] | None, file: Path):
    """(classes, label function) for the (line, label) of every labelled row."""
    if not labels:
        return classes or [], lambda lab, n: -1
    for n, lab in labels:
        if not lab:
            raise DatasetError(f"{file}:{n}: empty label; every row needs a label: an integer >= 0 or a class name")
    if classes is None and _label_kinds(labels, file):
        return [str(i) for i in range(max(int(lab) for _, lab in labels) + 1)], lambda lab, n: int(lab)
    classes = classes or sorted({lab for _, lab in labels})
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
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder; give the root of a UCF101/HMDB51 copy or a CSV list")
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
