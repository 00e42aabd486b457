"""Decoded clips/s, decord vs PyAV: random 16-frame clips, one decoder thread, as a loader worker reads them.

Run: ``.venv/bin/python -m pytest benchmarks/perf/test_decode_perf.py --benchmark-only``.
Each round opens a video and decodes one random clip (stride 1 or 2), 64 clips per round.
Videos: MotionShapes at the `standard` preset size (128x171, MPEG-4 AVI) and UCF101-sized
320x240 MPEG-4 AVI clips of 175 frames (7 s at 25 fps) with a moving texture.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from core.data.synthetic import PRESETS, generate_motionshapes
from core.data.video import list_videos, probe_video, read_frames, write_video

CLIPS_PER_ROUND = 64


def _moving_texture(n: int, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8), (0, 0), 3)
    return np.stack([base[t % height : t % height + height, (2 * t) % width : (2 * t) % width + width] for t in range(n)])


@pytest.fixture(scope="module")
def video_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    config = dataclasses.replace(PRESETS["standard"], groups=2, clips_per_group=1)
    generate_motionshapes(root / "motionshapes", config, workers=2, progress=False)
    ucf_like = []
    for i in range(8):
        path = root / f"ucf_like_{i}.avi"
        write_video(path, _moving_texture(175, 240, 320, i), bit_rate=600_000)
        ucf_like.append(path)
    shapes = list_videos(root / "motionshapes")
    return {"motionshapes_128x171": shapes, "mpeg4_320x240": ucf_like}


def _clip_reader(videos, backend: str, stride: int):
    counts = [probe_video(v).num_frames for v in videos]
    rng = np.random.default_rng(0)

    def run():
        for _ in range(CLIPS_PER_ROUND):
            i = int(rng.integers(len(videos)))
            start = int(rng.integers(0, counts[i] - 15 * stride))
            read_frames(videos[i], np.arange(16) * stride + start, backend=backend, num_frames=counts[i])

    return run


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize("videos", ["motionshapes_128x171", "mpeg4_320x240"])
def test_decode_clips_per_second(benchmark, video_sets, videos, backend, stride):
    benchmark.group = f"decode {videos} stride {stride}"
    benchmark.pedantic(_clip_reader(video_sets[videos], backend, stride), rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["clips_per_s"] = round(CLIPS_PER_ROUND / benchmark.stats.stats.mean, 1)


@pytest.mark.parametrize("cached", [False, True])
def test_loader_clips_per_second_with_the_frame_cache(benchmark, video_sets, cached, tmp_path):
    """One training epoch of the loader (workers = 0) over the MotionShapes videos at 32x32, batch 8,
    read directly or from a warm frame cache (core.data.cache)."""
    from core.data.cache import frame_cache
    from core.data.datasets import load_csv
    from core.data.loader import make_loader
    from core.data.request import LoadRequest

    listing = tmp_path / "videos.csv"
    listing.write_text("".join(f"{p},0\n" for p in video_sets["motionshapes_128x171"]))
    videos = load_csv(listing, progress=False)
    request = LoadRequest(frames=8, stride=2, decode_size=(32, 32))
    frame_cache.clear()
    frame_cache.max_bytes = 10**9 if cached else 0
    loader = make_loader(videos, request, batch_size=1, train=True, workers=0)

    def epoch():
        return sum(len(b["index"]) for b in loader)

    try:
        epoch()  # fills the cache
        benchmark.group = "loader epoch, 32x32, workers 0"
        benchmark.pedantic(epoch, rounds=5, iterations=1)
        benchmark.extra_info["clips_per_s"] = round(len(videos) / benchmark.stats.stats.mean, 1)
    finally:
        frame_cache.clear()
        frame_cache.max_bytes = 0
