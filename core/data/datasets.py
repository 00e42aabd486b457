"""The readers of UCF101, HMDB51 (official split files), Kinetics-style and generic CSV lists, and
:func:`open_dataset`, which opens any supported data set by path (the official Something-Something
v2, Diving48 and Kinetics releases through :mod:`core.data.official`).

Reading the official files is strict: a malformed line, an unknown class or a missing video raises
:class:`~core.data.listing.DatasetError` naming the file and line, so a typo never turns into a
silently smaller data set. Records, the frame-count index and the list checks every reader shares
are in :mod:`core.data.listing`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import posixpath
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.config import DataConfig

from core.data import official
from core.data.listing import (SUBSETS, DatasetError, Listed, VideoDataset, VideoRecord, check_listed, first_existing,
                               locate, normalise_entry, read_lines, require_videos, resolve_video, video_key, with_counts)

FORMATS = ("auto", "ucf101", "hmdb51", "csv", "ssv2", "diving48", "kinetics")
CSV_COLUMNS = ("path", "label", "split", "num_frames")  # the columns a CSV header may name
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- UCF101


def read_class_index(file: Path) -> list[str]:
    """UCF101 ``classInd.txt`` ("1 ApplyEyeMakeup" per line) as class names in label order."""
    names: dict[int, str] = {}
    for n, fields in read_lines(file):
        if len(fields) != 2 or not fields[0].isdigit():
            raise DatasetError(f"{file}:{n}: expected '<index> <ClassName>', got {' '.join(fields)!r}")
        idx = int(fields[0])
        if idx in names:
            raise DatasetError(f"{file}:{n}: class index {idx} appears twice")
        names[idx] = fields[1]
    if sorted(names) != list(range(1, len(names) + 1)):
        raise DatasetError(f"{file}: class indices must run 1..{len(names)} without gaps")
    return [names[i] for i in range(1, len(names) + 1)]


def _ucf_entries(file: Path, part: str, classes: list[str], video_root: Path) -> list[tuple[VideoRecord, Listed]]:
    lookup = {c: i for i, c in enumerate(classes)}
    out = []
    for n, fields in read_lines(file):
        if len(fields) > 2 or (len(fields) == 2 and not fields[1].isdigit()):
            raise DatasetError(f"{file}:{n}: expected '<Class>/<video> [<label>]', got {' '.join(fields)!r}")
        rel = normalise_entry(fields[0], file, n, video_root)
        cls = rel.split("/")[0] if "/" in rel else None
        if cls not in lookup:
            raise DatasetError(f"{file}:{n}: unknown class {cls!r} in {fields[0]!r}; known classes are those of classInd.txt")
        label = lookup[cls]
        if len(fields) == 2 and int(fields[1]) != label + 1:
            raise DatasetError(f"{file}:{n}: label {fields[1]} does not match class {cls} of {rel!r} (index {label + 1} in classInd.txt)")
        path = resolve_video(video_root, rel)
        if path is None:
            raise DatasetError(f"{file}:{n}: video {fields[0]!r} not found under {video_root}")
        out.append((VideoRecord(str(path), label, video_key(path, video_root)), Listed(file, n, rel, cls, part)))
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
    ann, video_root = locate(root, annotations, videos, ("ucfTrainTestlist",), ("UCF-101",))
    classes = read_class_index(first_existing([ann / "classInd.txt"], "classInd.txt", ann))
    wanted = ("train", "test") if subset == "all" else (subset,)
    parts: dict[str, list[tuple[VideoRecord, Listed]]] = {}
    for part in ("train", "test"):
        lst = ann / f"{part}list{split:02d}.txt"
        if part in wanted:
            first_existing([lst], lst.name, ann)
            parts[part] = _ucf_entries(lst, part, classes, video_root)
            require_videos(parts[part], lst, f"the {part} subset of split {split}")
        elif lst.exists():
            parts[part] = _ucf_entries(lst, part, classes, video_root)
    check_listed(listed for entries in parts.values() for _, listed in entries)
    records = with_counts([r for part in wanted for r, _ in parts[part]], video_root, progress)
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
    ann, video_root = locate(root, annotations, videos, ("testTrainMulti_7030_splits",), ("hmdb51_org",))
    suffix = f"_test_split{split}.txt"
    # Sort by class name, not by file name: "climb_stairs_test..." sorts before "climb_test..."
    # ('_' < 't'), but the class "climb" comes before "climb_stairs".
    files = sorted(ann.glob(f"*{suffix}"), key=lambda f: f.name[: -len(suffix)])
    if not files:
        raise DatasetError(f"{ann}: no '<class>{suffix}' files")
    classes = [f.name[: -len(suffix)] for f in files]
    wanted = {"train": {"train"}, "test": {"test"}, "all": {"train", "test"}}[subset]
    listed = [entry for cls, file in zip(classes, files) for entry in _hmdb_lines(file, cls, video_root)]
    check_listed(listed)
    lookup = {c: i for i, c in enumerate(classes)}
    records = []
    for entry in listed:
        if entry.part in wanted:
            path = resolve_video(video_root, entry.video)
            if path is None:
                raise DatasetError(f"{entry.where}: video {entry.video} not found under {video_root}")
            records.append(VideoRecord(str(path), lookup[entry.label], video_key(path, video_root)))
    require_videos(records, ann / f"*_test_split{split}.txt", f"the {subset} subset of split {split}")
    records = with_counts(records, video_root, progress)
    return VideoDataset("hmdb51", str(video_root), classes, records, split, subset)


_HMDB_PARTS = {"0": "unused", "1": "train", "2": "test"}


def _hmdb_lines(file: Path, cls: str, video_root: Path) -> list[Listed]:
    """The lines of one ``<class>_test_splitN.txt`` as listed videos of class ``cls``."""
    out = []
    for n, fields in read_lines(file):
        if len(fields) != 2 or fields[1] not in _HMDB_PARTS:
            raise DatasetError(f"{file}:{n}: expected '<video>.avi <0|1|2>', got {' '.join(fields)!r}")
        video = normalise_entry(f"{cls}/{fields[0]}", file, n, video_root)
        if posixpath.dirname(video) != cls:
            raise DatasetError(
                f"{file}:{n}: {fields[0]!r} leaves the folder of class {cls}; a line names a video of this class: '<video>.avi <0|1|2>'"
            )
        out.append(Listed(file, n, video, cls, _HMDB_PARTS[fields[1]]))
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
    check_listed(Listed(csv_file, n, _shown(paths[n], base), lab or "", part or "") for n, _, lab, part in rows)
    records = []
    for n, path_text, lab, part in rows:
        if subset != "all" and part is not None and part != subset:
            continue
        path = paths[n]
        if not path.exists():
            raise DatasetError(f"{csv_file}:{n}: video {path_text!r} not found (relative paths are taken from {base})")
        records.append(VideoRecord(str(path), to_label(lab, n), video_key(path, base) if path.is_relative_to(base) else str(path)))
    require_videos(records, csv_file, f"subset {subset!r}")
    records = with_counts(records, base, progress)
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
    """'csv', 'ucf101', 'hmdb51', 'ssv2', 'diving48' or 'kinetics' from what lies at ``path``."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder; give the root of a data set copy or a CSV list")
    if p.is_file() and p.suffix.lower() in (".csv", ".txt"):
        if official.is_kinetics_csv(p):
            raise DatasetError(f"{p}: an official Kinetics list; give the folder that holds train.csv and validate.csv (format 'kinetics')")
        return "csv"
    for ann in (p / "ucfTrainTestlist", p / "splits", p / "annotations", p):
        if (ann / "classInd.txt").exists():
            return "ucf101"
        if ann.is_dir() and any(ann.glob("*_test_split1.txt")):
            return "hmdb51"
    if (p / "testTrainMulti_7030_splits").is_dir():
        return "hmdb51"
    fmt = official.detect_official(p)
    if fmt:
        return fmt
    raise DatasetError(
        f"{p}: cannot tell the data set format: expected a CSV file, a UCF101 layout (classInd.txt), "
        "an HMDB51 layout (<class>_test_split1.txt), Something-Something v2 (something-something-v2-labels.json), "
        "Diving48 (Diving48_vocab.json) or Kinetics (train.csv/validate.csv); pass the format explicitly"
    )


def open_dataset(
    path: str | os.PathLike, *, format: str = "auto", split: int = 1, subset: str = "train", missing: str = "skip", progress: bool = True
) -> VideoDataset:
    """Open a data set by path; ``format`` is one of :data:`FORMATS`.

    ``missing`` is what Kinetics does with a listed video that is not on disk: ``"skip"`` (named
    in ``extra["missing"]`` and in one warning) or ``"error"``; every other format refuses one.
    """
    if format not in FORMATS:
        raise DatasetError(f"unknown data set format {format!r}; choose one of {', '.join(FORMATS)}")
    if missing not in official.MISSING:
        raise DatasetError(f"missing must be one of {', '.join(official.MISSING)}, got {missing!r}")
    fmt = detect_format(path) if format == "auto" else format
    if fmt in official.ONE_SPLIT_FORMATS:
        ds = official.open_official(fmt, path, split=split, subset=subset, missing=missing, progress=progress)
        if ds.extra.get("missing"):
            log.warning("%s: %s; skipped (missing='error' refuses them)", ds.root, official.missing_summary(ds.extra["missing"]))
        return ds
    if fmt == "ucf101":
        return load_ucf101(path, split=split, subset=subset, progress=progress)
    if fmt == "hmdb51":
        return load_hmdb51(path, split=split, subset=subset, progress=progress)
    return load_csv(path, subset=subset, progress=progress)


def open_data(data: DataConfig, *, subset: str, split: int | None = None, progress: bool = False) -> VideoDataset:
    """The ``subset`` of the data set a :class:`~core.config.DataConfig` names (its path, format, split
    unless ``split`` is given, and what to do with missing videos)."""
    return open_dataset(data.path, format=data.format, split=data.split if split is None else split, subset=subset,
                        missing=data.missing, progress=progress)

