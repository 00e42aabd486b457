"""Whole decoded videos kept in memory, so that a small data set is decoded once per process.

On a small data set (MotionShapes: 32x32 frames, a few thousand videos) decoding costs as much CPU
as training a tiny network, and a benchmark suite decodes the same videos again for every run,
every epoch and every evaluation. With a capacity set (``data.cache_gb``, :func:`reserve`), the
loader decodes each (video, modality, decode size) once, whole, and later reads index the array.

The frames are the ones a direct read returns (tested bit for bit), so the cache is not part of a
run's configuration hash. When the next video would not fit, it is read directly from then on,
with one warning: a full cache slows a run down, never changes it. Worker processes each hold
their own cache (forked workers start with a copy of the parent's), so the cache pays most with
``workers = 0``, which is the right setting for data this small. Loader workers are processes,
not threads, so the cache takes no lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

import numpy as np

log = logging.getLogger(__name__)


class FrameCache:
    """Decoded videos by key, up to ``max_bytes``; :meth:`read` serves indices from them."""

    def __init__(self, max_bytes: int = 0):
        self.max_bytes = max_bytes
        self.used = 0
        self.full = False
        self._videos: dict[Hashable, np.ndarray] = {}

    def reserve(self, max_bytes: int) -> None:
        """Raise the capacity to ``max_bytes`` (never lowers it: other users may rely on it)."""
        if max_bytes > self.max_bytes:
            self.max_bytes, self.full = max_bytes, False

    def clear(self) -> None:
        self._videos.clear()
        self.used, self.full = 0, False

    def read(self, key: Hashable, indices: np.ndarray, decode_all: Callable[[], np.ndarray],
             decode_some: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Frames at ``indices`` of the video ``key``: from memory when cached, else by decoding
        the whole video once (``decode_all``) and keeping it if it fits. ``decode_some`` reads
        directly: with no capacity, a full cache, or indices outside the cached video (so that
        the direct reader raises its own error for them)."""
        if self.max_bytes <= 0:
            return decode_some(indices)
        video = self._videos.get(key)
        if video is None:
            if self.full:
                return decode_some(indices)
            video = decode_all()
            self._keep(key, video)
        if indices.size and (indices.min() < 0 or indices.max() >= len(video)):
            return decode_some(indices)
        return video[indices]

    def _keep(self, key: Hashable, video: np.ndarray) -> None:
        if self.used + video.nbytes > self.max_bytes:
            self.full = True
            log.warning("frame cache full (%.2f GB of %.2f GB): videos not yet cached are decoded on every read from now on; "
                        "raise data.cache_gb to keep them all", self.used / 1e9, self.max_bytes / 1e9)
            return
        self._videos[key] = video
        self.used += video.nbytes


frame_cache = FrameCache()  # the process's cache; its capacity is 0 (off) until reserve() is called


def reserve(gigabytes: float) -> None:
    """Give the process's frame cache at least ``gigabytes`` of capacity (0 leaves it as it is)."""
    frame_cache.reserve(int(gigabytes * 1e9))
