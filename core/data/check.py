"""``vsbench data check``: what a data set holds, and what is wrong with it, as readable tables.

It reports videos per class for each split and subset, frame-count statistics, and every
video that is corrupt (with the reason) or too short for the clips a method will cut from it.
For Kinetics it also counts the listed videos that are not on disk, names the first ones and
writes the full list to ``<root>/vsbench_missing.txt`` when the root is writable; missing videos
are skipped by the reader, so they are reported, not counted as problems.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.datasets import VideoDataset, detect_format, open_dataset
from core.data.official import MISSING_LIST, ONE_SPLIT_FORMATS
from core.io import write_text_atomic

_SHOWN_MISSING = 5  # missing videos named in the report; the rest are in MISSING_LIST


@dataclass
class CheckReport:
    """Tables of a data set check; ``problems`` counts corrupt plus too-short videos."""

    title: str
    per_class: pd.DataFrame
    frame_stats: pd.DataFrame
    corrupt: pd.DataFrame
    too_short: pd.DataFrame
    missing: list[str] | None = None  # listed videos not on disk (Kinetics); None for formats that refuse them
    missing_file: str | None = None  # where the full list was written; None when the root is read-only

    @property
    def problems(self) -> int:
        return len(self.corrupt) + len(self.too_short)

    def render(self) -> str:
        parts = [self.title, "", "Videos per class:", self.per_class.to_string(), "", "Frame counts:", self.frame_stats.to_string()]
        for name, table in (("Corrupt videos", self.corrupt), ("Too-short videos", self.too_short)):
            parts += ["", f"{name}: {len(table)}"]
            if len(table):
                parts.append(table.to_string(index=False))
        if self.missing is not None:
            parts += ["", f"Missing videos (listed, not on disk; skipped): {len(self.missing)}"]
            parts += [f"  {m}" for m in self.missing[:_SHOWN_MISSING]]
            if len(self.missing) > _SHOWN_MISSING:
                parts.append(f"  ... and {len(self.missing) - _SHOWN_MISSING} more")
            if self.missing_file:
                parts.append(f"Full list: {self.missing_file}")
            elif self.missing:
                parts.append("The data root is read-only: the full list was not written.")
        return "\n".join(parts)


def _subsets(path: str, fmt: str, splits: list[int] | None, progress: bool) -> dict[str, VideoDataset]:
    if fmt == "csv":
        return {"all": open_dataset(path, format="csv", subset="all", progress=progress)}
    if fmt in ONE_SPLIT_FORMATS:  # one official split: "every split" is split 1, another number is refused by the reader
        return {
            sub: open_dataset(path, format=fmt, split=s, subset=sub, progress=progress)
            for s in (splits if splits not in (None, [1, 2, 3]) else [1])
            for sub in ("train", "test")
        }
    return {
        f"split{s}/{sub}": open_dataset(path, format=fmt, split=s, subset=sub, progress=progress)
        for s in splits or [1, 2, 3]
        for sub in ("train", "test")
    }


def check_dataset(path: str, *, format: str = "auto", splits: list[int] | None = None, min_frames: int = 16, progress: bool = True) -> CheckReport:
    """Scan the data set at ``path`` (every video is verified once, then cached in its index)."""
    fmt = detect_format(path) if format == "auto" else format
    parts = _subsets(path, fmt, splits or None, progress)
    first = next(iter(parts.values()))
    classes = first.classes or ["(unlabelled)"]
    per_class = pd.DataFrame(
        {name: np.bincount([max(r.label, 0) for r in ds.records], minlength=len(classes)) for name, ds in parts.items()},
        index=pd.Index(classes, name="class"),
    )
    per_class.loc["TOTAL"] = [len(ds) for ds in parts.values()]
    stats = {}
    for name, ds in parts.items():
        counts = np.array([r.num_frames for r in ds.records if r.ok] or [0])
        stats[name] = {"videos": len(ds), "readable": sum(r.ok for r in ds.records), "min": counts.min(), "median": float(np.median(counts)),
                       "mean": round(float(counts.mean()), 1), "max": counts.max()}
    records = {r.path: r for ds in parts.values() for r in ds.records}
    corrupt = pd.DataFrame([{"video": p, "reason": r.error} for p, r in sorted(records.items()) if not r.ok], columns=["video", "reason"])
    short = pd.DataFrame([{"video": p, "frames": r.num_frames} for p, r in sorted(records.items()) if r.ok and r.num_frames < min_frames],
                         columns=["video", "frames"])
    missing, missing_file = None, None
    if any("missing" in ds.extra for ds in parts.values()):
        missing = [m for ds in parts.values() for m in ds.extra.get("missing", [])]
        for name, ds in parts.items():
            stats[name]["missing"] = len(ds.extra.get("missing", []))
        missing_file = _write_missing(Path(path), missing)
    title = f"{first.name} at {first.root} ({fmt} format, {len(records)} distinct videos, {len(first.classes)} classes; too short = under {min_frames} frames)"
    return CheckReport(title, per_class, pd.DataFrame.from_dict(stats, orient="index"), corrupt, short, missing, missing_file)


def _write_missing(root: Path, missing: list[str]) -> str | None:
    """Write every missing video to ``root/vsbench_missing.txt`` (atomically; a list from an earlier
    check that found none is removed); None when nothing is missing or ``root`` is read-only."""
    file = root / MISSING_LIST
    if not root.is_dir() or not os.access(root, os.W_OK):
        return None
    if not missing:
        file.unlink(missing_ok=True)
        return None
    write_text_atomic(file, "\n".join(missing) + "\n")
    return str(file)
