"""Feature extraction throughput (videos/s, clips/s): decode + crop + encoder + clip mean, end to end.

Run: ``.venv/bin/python -m pytest benchmarks/perf/test_features_perf.py --benchmark-only``.
Data: MotionShapes `small` preset (96x128 MPEG-4 AVI, 36-57 frames), generated once into a
temporary folder. Protocol: the VCOP/IIC default, 10 uniformly spaced clips of 16 frames per
video decoded at 128x171 and centre-cropped to 112, per-video mean. Each round is one
:func:`extract_features` call (loader start-up included, no cache), as an evaluation runs it.

- CPU: r3d_tiny (1.5 GMACs per clip) in float32 on 12 videos of the split-1 test list (the
  encoder dominates: decoding is under a tenth of the time on CPU).
- CUDA (skipped without a GPU): r3d_18 (40.7 GMACs per clip) in bf16 autocast on all 192 videos,
  with the loader's workers decoding in parallel; the first round (cuDNN autotuning, worker
  start) is a warm-up.
"""

from __future__ import annotations

import os

import pytest
import torch

from backbones import create_backbone
from evaluation.features import extract_features
from evaluation.protocols import FeatureProtocol
from core.data.datasets import VideoDataset, open_dataset
from core.data.synthetic import PRESETS, generate_motionshapes

PROTOCOL = FeatureProtocol(stride=1, modality="rgb", normalize_input=True, value_range=(0.0, 1.0))  # 10 clips x 16 frames, 128x171 -> 112


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("features") / "motionshapes-small"
    return generate_motionshapes(root, PRESETS["small"], workers=os.cpu_count(), progress=False)


def _subset(videos: VideoDataset, n: int) -> VideoDataset:
    step = max(1, len(videos) // n)
    return VideoDataset(videos.name, videos.root, videos.classes, videos.records[::step][:n], videos.split, videos.subset)


def _bench(benchmark, encoder, videos, device, *, batch_size, workers, rounds):
    def run():
        return extract_features(encoder, videos, PROTOCOL, device=device, batch_size=batch_size, workers=workers, progress=False)

    fs = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    assert fs.features.shape[0] == len(videos)
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        videos=len(videos),
        clips_per_video=PROTOCOL.clips,
        workers=workers,
        batch_size=batch_size,
        videos_per_s=round(len(videos) / seconds, 2),
        clips_per_s=round(len(videos) * PROTOCOL.clips / seconds, 1),
    )
    print(f"\n{benchmark.name}: {len(videos)} videos in {seconds:.2f} s = {len(videos) / seconds:.2f} videos/s, "
          f"{len(videos) * PROTOCOL.clips / seconds:.1f} clips/s")


def test_features_cpu_r3d_tiny(benchmark, shapes):
    benchmark.group = "features cpu r3d_tiny 10x16x112"
    videos = _subset(open_dataset(shapes, split=1, subset="test", progress=False), 12)
    torch.manual_seed(0)
    encoder = create_backbone("r3d_tiny")
    _bench(benchmark, encoder, videos, "cpu", batch_size=4, workers=2, rounds=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_features_cuda_r3d_18(benchmark, shapes):
    benchmark.group = "features cuda r3d_18 10x16x112 bf16"
    torch.backends.cudnn.benchmark = True
    videos = open_dataset(shapes, split=1, subset="all", progress=False)
    torch.manual_seed(0)
    encoder = create_backbone("r3d_18").cuda()
    workers = min(8, os.cpu_count() or 1)
    _bench(benchmark, encoder, videos, "cuda", batch_size=8, workers=workers, rounds=3)
