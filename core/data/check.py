"""``vsbench data check``: what a data set holds, and what is wrong with it, as readable tables.

It reports videos per class for each split and subset, frame-count statistics, and every
video that is corrupt (with the reason) or too short for the clips a method will cut from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.data.datasets import VideoDataset, detect_format, open_dataset


@dataclass
class CheckReport:
    """Tables of a data set check; ``problems`` counts corrupt plus too-short videos."""

    title: str
    per_class: pd.DataFrame
    frame_stats: pd.DataFrame
    corrupt: pd.DataFrame
    too_short: pd.DataFrame

    @property
    def problems(self) -> int:
        return len(self.corrupt) + len(self.too_short)

    def render(self) -> str:
        parts = [self.title, "", "Videos per class:", self.per_class.to_string(), "", "Frame counts:", self.frame_stats.to_string()]
        for name, table in (("Corrupt videos", self.corrupt), ("Too-short videos", self.too_short)):
            parts += ["", f"{name}: {len(table)}"]
            if len(table):
                parts.append(table.to_string(index=False))
        return "\n".join(parts)


def _subsets(path: str, fmt: str, splits: list[int], progress: bool) -> dict[str, VideoDataset]:
    if fmt == "csv":
        return {"all": open_dataset(path, format="csv", subset="all", progress=progress)}
    return {
        f"split{s}/{sub}": open_dataset(path, format=fmt, split=s, subset=sub, progress=progress)
        for s in splits
        for sub in ("train", "test")
    }


def check_dataset(path: str, *, format: str = "auto", splits: list[int] | None = None, min_frames: int = 16, progress: bool = True) -> CheckReport:
    """Scan the data set at ``path`` (every video is verified once, then cached in its index)."""
    fmt = detect_format(path) if format == "auto" else format
    parts = _subsets(path, fmt, splits or [1, 2, 3], progress)
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
    title = f"{first.name} at {first.root} ({fmt} format, {len(records)} distinct videos, {len(first.classes)} classes; too short = under {min_frames} frames)"
    return CheckReport(title, per_class, pd.DataFrame.from_dict(stats, orient="index"), corrupt, short)
