"""Low-shot training sets: ``n`` labelled videos of a split, drawn class-balanced by a fixed rule.

A low-shot protocol (SEVERE, Thoker et al. ECCV 2022, fine-tunes on 1000 UCF101 videos) is only
one protocol when every run, seed and machine trains on the same videos, so the draw uses no
random number generator (whose streams differ across torch/numpy/Python versions). Instead each
video has a rank, the SHA-256 of ``f"{seed}:{key}"`` (``key``: the path relative to the data root,
with ``/`` separators), and the draw is:

1. Only readable videos take part (``record.ok``); a corrupt video is never drawn.
2. Every class gets the same number ``L`` of videos, or all of its videos when it has fewer, with
   ``L`` the largest level that fits in ``n`` (class by class this is ``floor(n / C)`` first, the
   slots small classes leave going to the classes that still have videos, one each in turn).
3. The slots left over (fewer than the classes that still have videos) go one each to the
   classes whose next video ranks lowest.
4. Within a class, videos are taken in rank order.

The drawn videos keep their order in the data set. Since keys do not depend on where the data
lies, the subset is the same on every machine. (A CSV list naming files outside its own folder has
absolute paths as keys; such a list draws the same subset only where the paths are the same.)
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict

from core.config import ConfigError
from core.data.datasets import VideoDataset

__all__ = ["draw_videos", "video_rank"]


def video_rank(key: str, seed: int) -> str:
    """The rank of the video with ``key`` in the draw of ``seed`` (lower is drawn first)."""
    key = key.replace("\\", "/")  # a key read on Windows
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def _level(sizes: list[int], n: int) -> int:
    """The largest ``L`` with ``sum(min(size, L)) <= n``, for ``n <= sum(sizes)``."""
    level = 0
    for size in sorted(set(sizes)):  # the total grows linearly between two class sizes
        below = sum(min(s, size) for s in sizes)
        if below > n:
            above = sum(1 for s in sizes if s > level)  # classes still filling between level and size
            return level + (n - sum(min(s, level) for s in sizes)) // above
        level = size
    return level


def draw_videos(dataset: VideoDataset, n: int, seed: int = 0) -> VideoDataset:
    """``dataset`` cut to ``n`` of its readable videos, class-balanced, the same for a given
    ``seed`` on every machine (see the module's docstring for the rule).

    Raises :class:`~core.config.ConfigError` (a ValueError) when ``n`` is not a positive integer or is more than the readable videos of
    ``dataset`` (a low-shot protocol that quietly used the whole split would be labelled wrongly)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"train_videos must be a positive integer, got {n!r}")
    readable = [r for r in dataset.records if r.ok]
    if n > len(readable):
        corrupt = len(dataset.records) - len(readable)
        raise ConfigError(f"train_videos = {n} is more than the {len(readable)} readable videos of the {dataset.subset} split of {dataset.root}"
                         + (f" ({corrupt} more are corrupt)" if corrupt else "") + f": set train_videos to at most {len(readable)}")
    by_class: dict[int, list[tuple[str, int]]] = defaultdict(list)  # label -> (rank, index) of its videos, in rank order
    for i, record in enumerate(dataset.records):
        if record.ok:
            by_class[record.label].append((video_rank(record.key, seed), i))
    for ranked in by_class.values():
        ranked.sort()
    level = _level([len(v) for v in by_class.values()], n)
    chosen = {i for ranked in by_class.values() for _, i in ranked[:level]}
    next_up = sorted(ranked[level] for ranked in by_class.values() if len(ranked) > level)
    chosen |= {i for _, i in next_up[: n - len(chosen)]}
    records = [r for i, r in enumerate(dataset.records) if i in chosen]
    return dataclasses.replace(dataset, records=records, extra={**dataset.extra, "train_videos": n, "train_videos_seed": seed})
