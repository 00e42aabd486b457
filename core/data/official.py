"""Readers for the official releases of Something-Something v2, Diving48 (V2) and Kinetics-400/600/700.

Each reader returns a :class:`~core.data.listing.VideoDataset`, as the UCF101 and HMDB51
readers do, and reads as strictly: a list that is not valid JSON, an entry without a key or
with a value of the wrong type, a template or label that is not in the class list, or a video
listed twice or in both subsets raises :class:`~core.data.listing.DatasetError` naming the
file and the entry (``file[index] (id '...')`` for a JSON entry, ``file:line`` for a CSV row)
and what would be valid. Frame counts are verified through the cached index.

These sets have one official split, so ``split`` must be 1. The subsets are:

- Something-Something v2: ``train`` = ``something-something-v2-train.json``, ``test`` =
  ``something-something-v2-validation.json`` (the official test list has no labels);
- Diving48: ``Diving48_V2_train.json`` / ``Diving48_V2_test.json`` (or the V1 names);
- Kinetics: ``train`` = ``train.csv``, ``test`` = ``validate.csv``, as papers report Kinetics'
  validation set as their test result (``test.csv`` has no labels and is not read).

A video named by SSv2's or Diving48's lists that is not on disk is an error, as for UCF101.
Kinetics is different: its videos are downloaded from YouTube and many are gone, so a missing
Kinetics video is skipped, counted and named in ``VideoDataset.extra["missing"]`` (``missing="error"``
refuses them instead).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from core.data.listing import (SUBSETS, DatasetError, Listed, VideoDataset, VideoRecord, check_listed, first_existing, require_videos,
                               video_folder, video_key, with_counts)

ONE_SPLIT_FORMATS = ("ssv2", "diving48", "kinetics")
MISSING = ("skip", "error")  # what a Kinetics reader does with a listed video that is not on disk
MISSING_LIST = "vsbench_missing.txt"  # where `vsbench data check` writes every missing video, in the data root
_ANN_DIRS = ("", "labels", "annotations")  # where the list files are looked for, relative to the root
_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a video id / name as the official lists write them (a file name, no path)

SSV2_LABELS = "something-something-v2-labels.json"
SSV2_LISTS = {"train": "something-something-v2-train.json", "test": "something-something-v2-validation.json"}
SSV2_VIDEO_DIRS = ("20bn-something-something-v2",)  # then videos/, then the root
_SSV2_ENTRY = '{"id": "<video id>", "template": "<a template of the labels file, with [something] brackets>", ...}'
_SSV2_LABELS_FORM = 'a JSON object mapping each template to its class id, e.g. {"Putting something on a surface": "138"}'

DIVING48_VOCAB = "Diving48_vocab.json"
DIVING48_LISTS = {
    "V2": {"train": "Diving48_V2_train.json", "test": "Diving48_V2_test.json"},
    "V1": {"train": "Diving48_train.json", "test": "Diving48_test.json"},
}
DIVING48_VIDEO_DIRS = ("rgb",)  # then videos/, then the root
_DIVING48_ENTRY = '{"vid_name": "<name of rgb/<vid_name>.mp4>", "label": <class index>, "start_frame": <int>, "end_frame": <int>}'
_DIVING48_VOCAB_FORM = 'a JSON list of [take-off, somersault, twist, flight position] lists, e.g. [["Back", "15som", "05Twis", "FREE"], ...]'

KINETICS_LISTS = {"train": "train.csv", "test": "validate.csv"}
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")  # all required
KINETICS_IGNORED_COLUMNS = ("is_cc",)  # Kinetics-700-2020's Creative Commons flag: accepted, not used
KINETICS_EXTENSIONS = (".mp4", ".webm", ".mkv")  # in order of preference when one name has several


def _check_one_split(name: str, split: int, subset: str) -> None:
    if split != 1:
        raise DatasetError(f"{name} has one official split: split must be 1, got {split!r}")
    if subset not in SUBSETS:
        raise DatasetError(f"subset must be one of {SUBSETS}, got {subset!r}")


def _wanted(subset: str) -> tuple[str, ...]:
    return ("train", "test") if subset == "all" else (subset,)


def missing_summary(missing: list[str], first: int = 5) -> str:
    """``"N listed video(s) not found: a; b; ..."`` naming the first ``first`` of them."""
    more = " ..." if len(missing) > first else ""
    return f"{len(missing)} listed video(s) not found: {'; '.join(missing[:first])}{more}"


# ----------------------------------------------------------------------------- JSON lists


class _Pairs(list):
    """The (key, value) pairs of a JSON object, in file order (so a repeated key can be refused)."""


def _read_json(file: Path, expected: str, *, pairs: bool = False):
    """The parsed JSON of ``file``; an error names file, line and column and what was expected."""
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{file}: not UTF-8 text (byte {err.start}); expected {expected}") from err
    try:
        return json.loads(text, object_pairs_hook=_Pairs if pairs else None)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{file}:{err.lineno}:{err.colno}: not valid JSON ({err.msg}); expected {expected}") from err


def _kind(value) -> str:
    return {dict: "an object", _Pairs: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _json_list(file: Path, expected_entry: str) -> list:
    data = _read_json(file, f"a JSON list of entries {expected_entry}")
    if not isinstance(data, list):
        raise DatasetError(f"{file}: the file holds {_kind(data)}; expected a JSON list of entries {expected_entry}")
    return data


@dataclass(frozen=True)
class _Entry(Listed):
    """One entry of a JSON list: ``line`` is its 0-based index in the list."""

    @property
    def where(self) -> str:
        return f"{self.file}[{self.line}]"


def _at(file: Path, i: int, ident: str | None = None) -> str:
    return f"{file}[{i}]" + (f" ({ident})" if ident else "")


def _field(file: Path, i: int, entry, key: str, types: tuple[type, ...], what: str, expected: str, ident: str | None = None):
    """``entry[key]``, which must exist and be of ``types`` (never a boolean), else an error naming the entry."""
    if not isinstance(entry, dict):
        raise DatasetError(f"{_at(file, i)}: the entry is {_kind(entry)}; expected an object {expected}")
    if key not in entry:
        raise DatasetError(f"{_at(file, i, ident)}: the entry has no {key!r} key; expected {expected}")
    value = entry[key]
    if not isinstance(value, types) or isinstance(value, bool):
        raise DatasetError(f"{_at(file, i, ident)}: {key!r} is {value!r}; expected {what} in {expected}")
    return value


def _name_field(file: Path, i: int, entry, key: str, expected: str, *, numbers: bool = False) -> str:
    """A video id / name: a string (or, with ``numbers``, an integer) of letters, digits, '_' and '-'."""
    value = _field(file, i, entry, key, (str, int) if numbers else (str,), "a video name", expected)
    text = str(value)
    if not _NAME.fullmatch(text):
        raise DatasetError(
            f"{_at(file, i)}: {key!r} is {value!r}; expected a video name of letters, digits, '_' and '-' in {expected}"
        )
    return text


def _annotation_folder(root: Path, name: str, *others: str) -> Path:
    """The first of ``root``, ``root/labels``, ``root/annotations`` that holds ``name`` (or one of ``others``)."""
    folders = [root / d for d in _ANN_DIRS]
    for folder in folders:
        if any((folder / n).is_file() for n in (name, *others)):
            return folder
    raise DatasetError(f"{root}: cannot find {name} (looked in {', '.join(str(f) for f in folders)})")


def _find_video(video_root: Path, name: str, extensions: tuple[str, ...]) -> Path | None:
    """``<name><ext>`` for the first extension that exists, else a frame folder ``<name>/``."""
    for ext in extensions:
        if (video_root / f"{name}{ext}").is_file():
            return video_root / f"{name}{ext}"
    folder = video_root / name
    return folder if folder.is_dir() else None


def _records(entries: list[tuple[int, Listed]], video_root: Path, extensions: tuple[str, ...]) -> list[VideoRecord]:
    """The records of list entries whose videos must all exist (SSv2, Diving48)."""
    out = []
    for label, entry in entries:
        path = _find_video(video_root, entry.video, extensions)
        if path is None:
            tried = " or ".join(f"{entry.video}{ext}" for ext in extensions) + f" or a frame folder {entry.video}/"
            raise DatasetError(f"{entry.where}: video {entry.video!r} not found under {video_root} (looked for {tried})")
        out.append(VideoRecord(str(path), label, video_key(path, video_root)))
    return out


def _read_lists(
    ann: Path, names: dict[str, str], subset: str, read
) -> dict[str, list[tuple[int, Listed]]]:
    """The entries of each list (the requested ones must exist; the others are read when present, so
    that a video in both subsets is refused whichever is asked for), checked with ``check_listed``."""
    parts = {}
    for part, name in names.items():
        file = ann / name
        if part in _wanted(subset):
            first_existing([file], name, ann)
        elif not file.is_file():
            continue
        parts[part] = read(file, part)
        if part in _wanted(subset):
            require_videos(parts[part], file, f"the {part} subset")
    check_listed(entry for entries in parts.values() for _, entry in entries)
    return parts


# ----------------------------------------------------------------------------- Something-Something v2


def ssv2_template_class(template: str) -> str:
    """The class name of a list entry's template: its text with the square brackets removed
    (``"Holding [something] next to [something]"`` -> ``"Holding something next to something"``)."""
    return template.replace("[", "").replace("]", "")


def read_ssv2_labels(file: Path) -> list[str]:
    """``something-something-v2-labels.json`` (template -> class id as a string) as class names in id order."""
    data = _read_json(file, _SSV2_LABELS_FORM, pairs=True)
    if not isinstance(data, _Pairs):
        raise DatasetError(f"{file}: the file holds {_kind(data)}; expected {_SSV2_LABELS_FORM}")
    names: dict[int, str] = {}
    seen: set[str] = set()
    for template, value in data:
        if template in seen:
            raise DatasetError(f"{file}: template {template!r} appears twice; each template has one class id")
        seen.add(template)
        if not (isinstance(value, str) and value.isdigit()) and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise DatasetError(f"{file}: template {template!r} has class id {value!r}; expected an integer >= 0 as a string, e.g. \"138\"")
        cid = int(value)
        if cid in names:
            raise DatasetError(f"{file}: class id {cid} is given to {names[cid]!r} and to {template!r}; each class has one id")
        names[cid] = template
    if not names:
        raise DatasetError(f"{file}: no classes; expected {_SSV2_LABELS_FORM}")
    if sorted(names) != list(range(len(names))):
        gaps = sorted(set(range(max(names) + 1)) - set(names))[:5]
        raise DatasetError(f"{file}: class ids must run 0..{len(names) - 1} without gaps (missing e.g. {gaps}, largest {max(names)})")
    return [names[i] for i in range(len(names))]


def _ssv2_entries(file: Path, part: str, lookup: dict[str, int], labels_file: Path) -> list[tuple[int, Listed]]:
    out = []
    for i, entry in enumerate(_json_list(file, _SSV2_ENTRY)):
        vid = _name_field(file, i, entry, "id", _SSV2_ENTRY, numbers=True)
        ident = f"id {vid!r}"
        template = _field(file, i, entry, "template", (str,), "a template string", _SSV2_ENTRY, ident)
        cls = ssv2_template_class(template)
        if cls not in lookup:
            raise DatasetError(
                f"{_at(file, i, ident)}: template {template!r} ({cls!r} without brackets) is not in {labels_file}; "
                f"expected one of its {len(lookup)} templates"
            )
        out.append((lookup[cls], _Entry(file, i, vid, cls, part)))
    return out


def load_ssv2(
    root: str | os.PathLike,
    *,
    split: int = 1,
    subset: str = "train",
    annotations: str | os.PathLike | None = None,
    videos: str | os.PathLike | None = None,
    progress: bool = True,
) -> VideoDataset:
    """Something-Something v2 from its official files.

    ``something-something-v2-labels.json`` (template -> class id) gives the classes, in class-id
    order; ``something-something-v2-train.json`` is the train subset and
    ``something-something-v2-validation.json`` the test subset (the official test list carries no
    templates and is not read). The json files are looked for in ``root``, ``root/labels`` or
    ``root/annotations``; the videos ``<id>.webm`` (or ``<id>.mp4``, or a frame folder ``<id>/``)
    in ``root/20bn-something-something-v2``, ``root/videos`` or ``root``. ``annotations`` and
    ``videos`` override where each is looked for.

    An entry's class is its ``template`` with the brackets removed, looked up in the labels
    file; its ``label`` (the caption with the objects filled in) is not the class and is not read.
    """
    _check_one_split("Something-Something v2", split, subset)
    root = Path(root)
    ann = Path(annotations) if annotations else _annotation_folder(root, SSV2_LABELS)
    video_root = video_folder(root, videos, SSV2_VIDEO_DIRS)
    labels_file = first_existing([ann / SSV2_LABELS], SSV2_LABELS, ann)
    classes = read_ssv2_labels(labels_file)
    lookup = {c: i for i, c in enumerate(classes)}
    parts = _read_lists(ann, SSV2_LISTS, subset, lambda file, part: _ssv2_entries(file, part, lookup, labels_file))
    records = _records([e for part in _wanted(subset) for e in parts[part]], video_root, (".webm", ".mp4"))
    return VideoDataset("ssv2", str(video_root), classes, with_counts(records, video_root, progress), 1, subset)


# ----------------------------------------------------------------------------- Diving48


def read_diving48_vocab(file: Path) -> list[str]:
    """``Diving48_vocab.json`` as class names in label order: the four parts joined with '_'
    (``["Back", "15som", "05Twis", "FREE"]`` -> ``"Back_15som_05Twis_FREE"``)."""
    data = _read_json(file, _DIVING48_VOCAB_FORM)
    if not isinstance(data, list) or not data:
        held = "an empty list" if data == [] else _kind(data)
        raise DatasetError(f"{file}: the file holds {held}; expected {_DIVING48_VOCAB_FORM}")
    names: list[str] = []
    for i, item in enumerate(data):
        if not (isinstance(item, list) and len(item) == 4 and all(isinstance(p, str) and p for p in item)):
            raise DatasetError(f"{file}[{i}]: class {i} is {item!r}; expected a list of 4 strings (take-off, somersault, twist, flight position)")
        name = "_".join(item)
        if name in names:
            raise DatasetError(f"{file}[{i}]: class {name!r} is also class {names.index(name)}; each class appears once")
        names.append(name)
    return names


def _diving48_entries(file: Path, part: str, classes: list[str], vocab: Path) -> list[tuple[int, Listed]]:
    out = []
    for i, entry in enumerate(_json_list(file, _DIVING48_ENTRY)):
        name = _name_field(file, i, entry, "vid_name", _DIVING48_ENTRY)
        ident = f"vid_name {name!r}"
        label = _field(file, i, entry, "label", (int,), "an integer class index", _DIVING48_ENTRY, ident)
        if not 0 <= label < len(classes):
            raise DatasetError(f"{_at(file, i, ident)}: label {label} is not a class of {vocab}; expected 0..{len(classes) - 1}")
        start = _field(file, i, entry, "start_frame", (int,), "an integer frame", _DIVING48_ENTRY, ident)
        end = _field(file, i, entry, "end_frame", (int,), "an integer frame", _DIVING48_ENTRY, ident)
        if not 0 <= start <= end:
            raise DatasetError(f"{_at(file, i, ident)}: start_frame {start}, end_frame {end}; expected 0 <= start_frame <= end_frame")
        out.append((label, _Entry(file, i, name, classes[label], part)))
    return out


def _diving48_release(ann: Path) -> str:
    for release, names in DIVING48_LISTS.items():
        if any((ann / n).is_file() for n in names.values()):
            return release
    expected = " or ".join(f"{n['train']} / {n['test']}" for n in DIVING48_LISTS.values())
    raise DatasetError(f"{ann}: no Diving48 lists; expected {expected}")


def load_diving48(
    root: str | os.PathLike,
    *,
    split: int = 1,
    subset: str = "train",
    annotations: str | os.PathLike | None = None,
    videos: str | os.PathLike | None = None,
    progress: bool = True,
) -> VideoDataset:
    """Diving48 from its official files: ``Diving48_vocab.json`` (the 48 classes) and
    ``Diving48_V2_train.json`` / ``Diving48_V2_test.json`` (the V1 names ``Diving48_train.json`` /
    ``Diving48_test.json`` when no V2 list is there), looked for in ``root``, ``root/labels`` or
    ``root/annotations``; videos ``rgb/<vid_name>.mp4`` (or ``videos/``, or ``root``; a frame
    folder ``<vid_name>/`` also serves).

    A class is its four vocabulary parts joined with '_'. ``start_frame``/``end_frame`` are
    validated (integers, 0 <= start <= end) but not used to cut: the released ``rgb`` videos are
    already trimmed to the dive, so the whole file is the clip.
    """
    _check_one_split("Diving48", split, subset)
    root = Path(root)
    lists = [n for names in DIVING48_LISTS.values() for n in names.values()]
    ann = Path(annotations) if annotations else _annotation_folder(root, DIVING48_VOCAB, *lists)
    video_root = video_folder(root, videos, DIVING48_VIDEO_DIRS)
    vocab = first_existing([ann / DIVING48_VOCAB], DIVING48_VOCAB, ann)
    classes = read_diving48_vocab(vocab)
    names = DIVING48_LISTS[_diving48_release(ann)]
    parts = _read_lists(ann, names, subset, lambda file, part: _diving48_entries(file, part, classes, vocab))
    records = _records([e for part in _wanted(subset) for e in parts[part]], video_root, (".mp4",))
    return VideoDataset("diving48", str(video_root), classes, with_counts(records, video_root, progress), 1, subset)


# ----------------------------------------------------------------------------- Kinetics


def is_kinetics_csv(file: Path) -> bool:
    """Whether ``file``'s first line is a Kinetics header (names youtube_id, time_start and time_end)."""
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return {"youtube_id", "time_start", "time_end"} <= {c.strip().lower() for c in header}


def kinetics_video_name(youtube_id: str, time_start: int, time_end: int) -> str:
    """The file name stem the public downloaders write: ``<youtube_id>_<start:06d>_<end:06d>``."""
    return f"{youtube_id}_{time_start:06d}_{time_end:06d}"


def _clip_time(file: Path, n: int, column: str, text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise DatasetError(f"{file}:{n}: {column} must be a whole number of seconds >= 0 (e.g. 10 or 10.0), got {text!r}")
    return int(value)


def _kinetics_columns(file: Path, n: int, header: list[str]) -> dict[str, int]:
    valid = f"valid columns are {', '.join(KINETICS_COLUMNS)} (all required) and {', '.join(KINETICS_IGNORED_COLUMNS)} (ignored)"
    unknown = [c for c in header if c not in KINETICS_COLUMNS + KINETICS_IGNORED_COLUMNS]
    if unknown:
        raise DatasetError(f"{file}:{n}: unknown column(s) {', '.join(map(repr, unknown))} in the header; {valid}")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DatasetError(f"{file}:{n}: column(s) {', '.join(map(repr, repeated))} appear twice in the header; {valid}")
    absent = [c for c in KINETICS_COLUMNS if c not in header]
    if absent:
        raise DatasetError(f"{file}:{n}: the header has no {', '.join(map(repr, absent))} column; {valid}")
    return {c: i for i, c in enumerate(header)}


def _kinetics_rows(file: Path, part: str) -> list[tuple[int, Listed]]:
    """The rows of ``train.csv``/``validate.csv`` as listed videos named as on disk; the label
    index is filled in later (classes come from both lists), here it is 0."""
    with open(file, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        rows = [(reader.line_num, [c.strip() for c in row]) for row in reader if any(c.strip() for c in row)]
    if not rows:
        raise DatasetError(f"{file}: empty CSV; expected the header {','.join(KINETICS_COLUMNS)} and one row per video")
    col = _kinetics_columns(file, rows[0][0], [c.lower() for c in rows[0][1]])
    out = []
    for n, row in rows[1:]:
        if len(row) != len(col):
            raise DatasetError(f"{file}:{n}: expected {len(col)} columns ({','.join(col)}), got {len(row)}")
        label, yid = row[col["label"]], row[col["youtube_id"]]
        if not label:
            raise DatasetError(f"{file}:{n}: empty label; every row of {file.name} names its class")
        if not _NAME.fullmatch(yid):
            raise DatasetError(f"{file}:{n}: youtube_id {yid!r} is not a YouTube id (letters, digits, '_' and '-')")
        start = _clip_time(file, n, "time_start", row[col["time_start"]])
        end = _clip_time(file, n, "time_end", row[col["time_end"]])
        if end <= start:
            raise DatasetError(f"{file}:{n}: time_end {end} is not after time_start {start}")
        out.append((0, Listed(file, n, kinetics_video_name(yid, start, end), label, part)))
    return out


def _walk_videos(folder: Path) -> dict[str, list[str]]:
    """Every ``.mp4``/``.webm``/``.mkv`` under ``folder`` by file name stem, in one walk (linked
    folders are followed once; hidden files, such as partial downloads, are skipped)."""
    found: dict[str, list[str]] = {}
    seen: set[tuple[int, int]] = set()
    stack = [str(folder)]
    while stack:
        current = stack.pop()
        try:
            st = os.stat(current)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(current))
        except OSError:
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir()
            except OSError:
                continue
            stem, ext = os.path.splitext(e.name)
            if is_dir:
                stack.append(e.path)
            elif ext.lower() in KINETICS_EXTENSIONS:
                found.setdefault(stem, []).append(e.path)
    return found


def _pick(paths: list[str], label: str) -> str:
    """One of the files of a name: the one in the class's folder (label with spaces or '_'), then
    by extension preference, then by path."""
    folders = {label, label.replace(" ", "_")}

    def rank(p: str):
        return (os.path.basename(os.path.dirname(p)) not in folders, KINETICS_EXTENSIONS.index(os.path.splitext(p)[1].lower()), p)

    return min(paths, key=rank)


def _kinetics_folder(root: Path) -> Path:
    folders = [root / d for d in _ANN_DIRS]
    for folder in folders:
        if any(is_kinetics_csv(folder / n) for n in KINETICS_LISTS.values()):
            return folder
    raise DatasetError(
        f"{root}: cannot find Kinetics' train.csv or validate.csv with the header {','.join(KINETICS_COLUMNS)} "
        f"(looked in {', '.join(str(f) for f in folders)})"
    )


def load_kinetics(
    root: str | os.PathLike,
    *,
    split: int = 1,
    subset: str = "train",
    annotations: str | os.PathLike | None = None,
    videos: str | os.PathLike | None = None,
    missing: str = "skip",
    progress: bool = True,
) -> VideoDataset:
    """Kinetics-400/600/700 from its official CSVs (``label,youtube_id,time_start,time_end,split``,
    plus Kinetics-700-2020's ``is_cc``, which is ignored): ``train.csv`` is the train subset,
    ``validate.csv`` the test subset, ``test.csv`` is not read. The CSVs are looked for in
    ``root``, ``root/labels`` or ``root/annotations``. The ``split`` column is not used: the file
    decides the subset.

    Videos are found by file name, as the public downloaders write it:
    ``<youtube_id>_<time_start:06d>_<time_end:06d>.mp4`` (or ``.webm``/``.mkv``), anywhere under
    ``videos`` (default ``root``): in class folders (``train/<label>/``), flat (``train/``) or in
    ``videos/``. The folder is walked once. Classes are the sorted labels of both lists.

    A listed video that is not on disk is skipped and named in ``extra["missing"]``
    (``"<csv>:<line>: <name>"``), unless ``missing="error"``, which raises :class:`DatasetError`
    naming how many and the first ones. A video on disk that cannot be decoded stays in the data
    set, marked with the reason, as in every reader.
    """
    _check_one_split("Kinetics", split, subset)
    if missing not in MISSING:
        raise DatasetError(f"missing must be one of {', '.join(MISSING)}, got {missing!r}")
    root = Path(root)
    ann = Path(annotations) if annotations else _kinetics_folder(root)
    video_root = Path(videos) if videos else root
    parts = _read_lists(ann, KINETICS_LISTS, subset, _kinetics_rows)
    classes = sorted({entry.label for entries in parts.values() for _, entry in entries})
    lookup = {c: i for i, c in enumerate(classes)}
    found = _walk_videos(video_root)
    records, absent = [], []
    for part in _wanted(subset):
        for _, entry in parts[part]:
            if entry.video in found:
                path = Path(_pick(found[entry.video], entry.label))
                records.append(VideoRecord(str(path), lookup[entry.label], video_key(path, video_root)))
            else:
                absent.append(f"{entry.where}: {entry.video}")
    if absent and missing == "error":
        raise DatasetError(f"{video_root}: {missing_summary(absent)} (expected files named <youtube_id>_<time_start:06d>_<time_end:06d>.mp4)")
    if not records:
        lists = ", ".join(str(ann / KINETICS_LISTS[p]) for p in _wanted(subset))
        raise DatasetError(
            f"{lists}: none of the {len(absent)} listed videos is under {video_root} (first: {absent[0]}); "
            "expected files named <youtube_id>_<time_start:06d>_<time_end:06d>.mp4"
        )
    records = with_counts(records, video_root, progress)
    return VideoDataset("kinetics", str(video_root), classes, records, 1, subset, extra={"missing": absent})


# ----------------------------------------------------------------------------- dispatch (called by core.data.datasets)


def detect_official(path: Path) -> str | None:
    """'ssv2', 'diving48' or 'kinetics' when the folder ``path`` (or its ``labels/``/``annotations/``)
    holds that release's files, else None."""
    if not path.is_dir():
        return None
    diving48 = [DIVING48_VOCAB] + [n for names in DIVING48_LISTS.values() for n in names.values()]
    for folder in (path / d for d in _ANN_DIRS):
        if (folder / SSV2_LABELS).is_file():
            return "ssv2"
        if any((folder / n).is_file() for n in diving48):
            return "diving48"
        if any(is_kinetics_csv(folder / n) for n in KINETICS_LISTS.values()):
            return "kinetics"
    return None


def open_official(fmt: str, path, *, split: int, subset: str, missing: str, progress: bool) -> VideoDataset:
    if fmt == "ssv2":
        return load_ssv2(path, split=split, subset=subset, progress=progress)
    if fmt == "diving48":
        return load_diving48(path, split=split, subset=subset, progress=progress)
    return load_kinetics(path, split=split, subset=subset, missing=missing, progress=progress)
