"""The in-memory frame cache: the frames a direct read gives, each video decoded once, a full cache
only slows reads down, rewritten files are decoded again."""

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.cache import FrameCache, frame_cache
from core.data.datasets import load_ucf101
from core.data.loader import make_loader
from core.data.request import LoadRequest
from core.data.modalities import compute_flow_cache
from core.data.video import write_video
from tests.helpers import frame_level, level_frames, write_ucf_like

VIDEO = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)


class Decoder:
    """Counts whole-video and partial decodes of VIDEO."""

    def __init__(self):
        self.whole = self.some = 0

    def all(self):
        self.whole += 1
        return VIDEO.copy()

    def at(self, idx):
        self.some += 1
        if idx.min() < 0 or idx.max() >= len(VIDEO):
            raise IndexError("outside the video")
        return VIDEO[idx]


def test_a_cached_video_is_decoded_once_and_indexed_like_a_direct_read():
    cache, dec = FrameCache(max_bytes=10_000), Decoder()
    for idx in ([0, 2, 4], [9, 9, 1], [3]):
        got = cache.read("v", np.array(idx), dec.all, dec.at)
        np.testing.assert_array_equal(got, VIDEO[idx])
    assert (dec.whole, dec.some) == (1, 0) and cache.used == VIDEO.nbytes


def test_no_capacity_reads_directly():
    cache, dec = FrameCache(), Decoder()
    cache.read("v", np.array([1, 2]), dec.all, dec.at)
    assert (dec.whole, dec.some, cache.used) == (0, 1, 0)


def test_indices_outside_a_cached_video_reach_the_direct_reader_and_its_error():
    cache, dec = FrameCache(max_bytes=10_000), Decoder()
    cache.read("v", np.array([0]), dec.all, dec.at)
    for bad in ([10], [-1]):  # numpy would wrap -1 silently
        with pytest.raises(IndexError):
            cache.read("v", np.array(bad), dec.all, dec.at)


def test_a_full_cache_warns_once_and_keeps_reading_correct_frames(caplog):
    cache, dec = FrameCache(max_bytes=VIDEO.nbytes + 1), Decoder()
    with caplog.at_level(logging.WARNING):
        for key in ("a", "b", "c", "b"):
            np.testing.assert_array_equal(cache.read(key, np.array([5, 1]), dec.all, dec.at), VIDEO[[5, 1]])
    assert cache.full and cache.used == VIDEO.nbytes
    assert caplog.text.count("frame cache full") == 1 and "data.cache_gb" in caplog.text
    assert (dec.whole, dec.some) == (2, 2)  # "a" cached; "b" decoded whole once (did not fit), then directly


@pytest.fixture
def process_cache():
    frame_cache.clear()
    frame_cache.max_bytes = 10**9
    yield frame_cache
    frame_cache.clear()
    frame_cache.max_bytes = 0


@pytest.fixture(scope="module")
def ucf_with_flow(tmp_path_factory):
    root = write_ucf_like(tmp_path_factory.mktemp("cache") / "ucf", {"A": 3, "B": 3})
    videos = load_ucf101(root, subset="all", progress=False)
    flow_root = root / "flow"
    compute_flow_cache([(r.path, Path(r.path).stem) for r in videos.records], flow_root, workers=0, progress=False)
    return videos, flow_root


def _batches(videos, flow_root, train: bool):
    request = LoadRequest(frames=4, stride=2, clips=2, mode="random" if train else "uniform", modalities=("rgb", "flow"), decode_size=(16, 24), flow_root=str(flow_root))
    return list(make_loader(videos, request, batch_size=2, train=train, workers=0, seed=1))


@pytest.mark.parametrize("train", [True, False])
def test_loader_batches_are_the_same_with_and_without_the_cache(ucf_with_flow, process_cache, train):
    videos, flow_root = ucf_with_flow
    process_cache.max_bytes = 0
    direct = _batches(videos, flow_root, train)
    process_cache.max_bytes = 10**9
    first, again = _batches(videos, flow_root, train), _batches(videos, flow_root, train)
    assert process_cache.used > 0
    for a, b, c in zip(direct, first, again, strict=True):
        for key in ("rgb", "flow", "frame_indices", "index"):
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]), key


def test_a_rewritten_video_is_decoded_again(ucf_with_flow, process_cache):
    videos, flow_root = ucf_with_flow
    record = videos.records[0]
    target = Path(record.path)
    saved, stat = target.read_bytes(), target.stat()
    before = _batches(videos, flow_root, train=False)
    try:
        write_video(target, level_frames(record.num_frames)[::-1])  # same length, frames in reverse order
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        after = _batches(videos, flow_root, train=False)
    finally:
        target.write_bytes(saved)
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    levels = [[frame_level(f) for f in batch["rgb"][0, 0].numpy()] for batch in (before[0], after[0])]
    assert levels[1] == [(record.num_frames - 1 - t) % 30 for t in before[0]["frame_indices"][0, 0].tolist()] != levels[0]
