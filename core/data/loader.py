"""From a data set index and a sampling request to uint8 batches, with worker processes.

The loader delivers what the device-side pipeline needs and nothing more: uint8 clips
``rgb`` (B, clips, T, H, W, 3) and, when asked, quantized optical flow ``flow``
(B, clips, T, H, W, 2), plus ``label``, ``index`` and ``frame_indices``. Conversion to float and
augmentation happen on the device (:mod:`core.data.transforms`), never in the workers.

Randomness is a function of (seed, epoch, video index), so a batch does not depend on which
worker produced it, and a resumed run draws the same clips as an uninterrupted one.

Unusable videos. Workers never raise for them: a video that raises
:class:`~core.data.video.CorruptVideo` comes back in its batch's ``skipped`` list (torch
re-raises worker exceptions through a one-argument constructor, which would lose the file's
name). So does a video with fewer frames than the clips need (``"too short: N frames < M
needed"``; :func:`~core.data.sampling.frames_needed`): looping it would silently change the
data. In training the :class:`VideoLoader` drops it, counts it and names it once in a warning
(:attr:`VideoLoader.skipped`); in evaluation (``strict``) it raises ``CorruptVideo`` with the
file's name and the reason in the main process: evaluation never alters or replaces a video.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from core.data.cache import frame_cache
from core.data.datasets import VideoDataset
from core.data.request import LoadRequest, clip_span
from core.data.sampling import build_sampler, frames_needed, uniform_clips
from core.data.video import CorruptVideo, read_frames

log = logging.getLogger(__name__)


class ClipDataset(Dataset):
    """Torch dataset over a :class:`VideoDataset`; items are ``index`` or ``(index, epoch)``."""

    def __init__(self, videos: VideoDataset, request: LoadRequest, *, seed: int = 0, strict: bool = False):
        if "flow" in request.modalities and not request.flow_root:
            raise ValueError("the 'flow' modality needs flow_root (compute it with `vsbench data flow`)")
        self.videos = videos
        self.request = request
        self.seed = seed
        self.strict = strict
        # built now so that an unknown name or missing sampler data fails before any worker starts
        self._sampler = build_sampler(request.sampler, videos, request) if request.mode == "random" else None
        if request.mode == "uniform":  # a video with fewer frames than `needed` would have to be looped
            self.needed = clip_span(request.frames, _fixed(request.stride))
        else:
            self.needed = frames_needed(request.sampler, request)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sampler": None}  # samplers may be closures: rebuilt in the worker

    def __len__(self) -> int:
        return len(self.videos)

    def frame_indices(self, index: int, epoch: int) -> np.ndarray:
        """(clips, frames) indices for video ``index`` in ``epoch``; ``CorruptVideo`` for a video
        with fewer frames than :attr:`needed`, which would have to be looped."""
        rec, request = self.videos[index], self.request
        if rec.num_frames < self.needed:
            raise CorruptVideo(rec.path, f"too short: {rec.num_frames} frames < {self.needed} needed")
        if request.mode == "uniform":
            return uniform_clips(rec.num_frames, request.frames, request.clips, _fixed(request.stride), request.short)
        if self._sampler is None:
            self._sampler = build_sampler(request.sampler, self.videos, request)
        return self._sampler(index, rec.num_frames, request, np.random.default_rng([self.seed, epoch, index]))

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        rec = self.videos[index]
        try:
            if not rec.ok:
                raise CorruptVideo(rec.path, rec.error)
            idx = self.frame_indices(index, epoch)
            sample = {"index": index, "label": rec.label, "frame_indices": torch.from_numpy(idx)}
            for modality in self.request.modalities:
                sample[modality] = self._read(modality, rec, idx)
            return sample
        except CorruptVideo as err:
            if self.strict:
                raise
            return {"index": index, "skipped": (err.path, err.reason)}

    def _read(self, modality: str, rec, idx: np.ndarray) -> torch.Tensor:
        clips, frames = idx.shape
        read, whole, key = self._source(modality, rec)
        flat = idx.reshape(-1)
        data = frame_cache.read(key(), flat, whole, read) if frame_cache.max_bytes > 0 else read(flat)
        return torch.from_numpy(np.ascontiguousarray(data)).reshape(clips, frames, *data.shape[1:])

    def _source(self, modality: str, rec):
        """(read frames at indices, read the whole video, cache key) of one modality of a video.
        The key holds the file's (or flow folder's) modification time, so rewritten data is
        decoded again."""
        size, backend = self.request.decode_size, self.request.backend
        if modality == "rgb":
            def read(i: np.ndarray) -> np.ndarray:
                return read_frames(rec.path, i, backend=backend, size=size, num_frames=rec.num_frames)

            return read, lambda: read(np.arange(rec.num_frames)), lambda: ("rgb", rec.path, _mtime(rec.path), size, backend)
        from core.data.modalities import flow_folders, flow_frame_count, read_flow

        root, stem = self.request.flow_root, Path(rec.path).stem

        def read_uv(i: np.ndarray) -> np.ndarray:
            return read_flow(root, stem, i, size=size)

        u_dir = flow_folders(root, stem)[0]  # RGB indices 0..flow frames are valid (read_flow)
        return read_uv, lambda: read_uv(np.arange(flow_frame_count(root, stem) + 1)), lambda: ("flow", str(u_dir), _mtime(u_dir), size)


def _mtime(path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None  # the read itself names the missing file


def _fixed(stride) -> float:
    if isinstance(stride, (tuple, list)):
        raise ValueError("uniform (evaluation) clips need a fixed stride, not a range")
    return float(stride)


def collate_clips(items: list[dict]) -> dict:
    """Stack the decoded samples; list the skipped ones under ``skipped`` as (path, reason)."""
    good = [it for it in items if "skipped" not in it]
    batch: dict = {"skipped": [it["skipped"] for it in items if "skipped" in it]}
    if good:
        for key in good[0]:
            values = [it[key] for it in good]
            batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
    return batch


class EpochSampler(Sampler):
    """Yields (video index, epoch) pairs: shuffled per epoch from (seed, epoch), split over ranks.

    Training (``pad=True``) pads by wrapping so every rank gets the same number of samples, as
    DDP needs. Evaluation (``shuffle=False, pad=False``) gives each rank a disjoint slice, so every
    video is visited exactly once across ranks.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True):
        self.n, self.shuffle, self.seed, self.rank, self.world_size, self.pad = n, shuffle, seed, rank, world_size, pad
        self.epoch = self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Yield ``epoch``'s samples from the ``skip``-th of this rank on (a run resumed mid-epoch)."""
        self.epoch, self.skip = epoch, skip

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        if self.pad and self.n:
            total = math.ceil(self.n / self.world_size) * self.world_size
            order = (order * math.ceil(total / self.n))[:total]
        return iter((i, self.epoch) for i in order[self.rank :: self.world_size][self.skip :])

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.n / self.world_size)
        return len(range(self.rank, self.n, self.world_size))


class VideoLoader:
    """A DataLoader over clips that drops, counts and names undecodable or too-short videos in
    training, and raises ``CorruptVideo`` for them in evaluation (``strict``)."""

    def __init__(self, loader: DataLoader, sampler: EpochSampler, *, strict: bool = False):
        self.loader = loader
        self.sampler = sampler
        self.strict = strict
        self.skipped: dict[str, str] = {}  # path -> reason, for every video skipped so far
        self.drawn = 0  # batches of the current epoch drawn so far (whole ones, usable or not)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Start ``epoch``, after its first ``skip_batches`` batches when a run resumes mid-epoch."""
        self.sampler.set_epoch(epoch, skip_batches * self.loader.batch_size)
        self.drawn = skip_batches

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            self.drawn += 1
            if self.strict and batch["skipped"]:
                raise CorruptVideo(*batch["skipped"][0])
            for path, reason in batch["skipped"]:
                if path not in self.skipped:
                    log.warning("skipping unusable video %s: %s", path, reason)
                    self.skipped[path] = reason
            if "index" in batch:  # at least one video of the batch decoded
                yield batch


def make_loader(
    videos: VideoDataset,
    request: LoadRequest,
    batch_size: int,
    *,
    train: bool,
    workers: int = 4,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    dataset_class: type[ClipDataset] = ClipDataset,
    prefetch_factor: int = 4,
) -> VideoLoader:
    """A training loader (shuffled, tail batch dropped, skips undecodable videos) or an
    evaluation loader (fixed order, every video once across ranks, no dropped tail, strict).

    ``dataset_class`` and ``prefetch_factor`` exist for the throughput benchmarks, which run the
    seed repositories' pipeline (a ``ClipDataset`` that augments in the workers, PyTorch's default
    prefetch of 2) through the same loader."""
    dataset = dataset_class(videos, request, seed=seed, strict=False)  # errors travel in the batch, see VideoLoader
    sampler = EpochSampler(len(videos), shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_clips,
        pin_memory=torch.cuda.is_available(),
        drop_last=train,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
    )
    return VideoLoader(loader, sampler, strict=not train)
