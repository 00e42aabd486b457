"""Train-step throughput per backbone: clips/s of one MoCo optimizer step (augmentation on the
device, forward, backward, optimizer), through the harness's own ``Pretraining.train_step``.

Run: ``.venv/bin/python -m pytest benchmarks/perf/test_train_step_perf.py --benchmark-only``.

- CPU (any machine): fp32, 8x64x64 clips; tiny backbones at batch 8, full-size ones at batch 2.
- CUDA (when available): 16x112x112, batch 64, bf16 autocast and channels_last_3d (the defaults).

A MoCo step processes two clips per video (query and key), so clips/s counts 2 per video.
The loader is bypassed (random uint8 clips already in memory): this is the model's cost only.
"""

from __future__ import annotations

import pytest
import torch

from core.config import PretrainConfig
from core.data.synthetic import PRESETS, generate_motionshapes
from harness.train import Pretraining

CPU_CASES = [("r3d_tiny", 8), ("r21d_tiny", 8), ("r3d_vcop", 2), ("r3d_18", 2), ("r2plus1d_18", 2), ("c3d", 2), ("s3d", 2)]
GPU_BACKBONES = ["r3d_18", "r2plus1d_18", "r3d_vcop", "r21d_vcop", "c3d", "s3d"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_motionshapes(tmp_path_factory.mktemp("data") / "ms", PRESETS["tiny"], workers=2, progress=False)


def _step_runner(data, tmp_path, backbone: str, batch: int, device: str, frames: int, crop: int, decode: tuple[int, int]):
    cfg = PretrainConfig(method="moco", backbone=backbone, device=device, epochs=1, batch_size=batch, progress=False,
                         method_args={"frames": frames, "crop": crop}, decode_size=decode, output_dir=str(tmp_path))
    cfg.data.path, cfg.data.workers = str(data), 0
    run = Pretraining(cfg)
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (batch, 2, frames, *decode, 3), dtype=torch.uint8, generator=g)
    micro = [{"rgb": clips, "index": torch.arange(batch), "label": torch.zeros(batch, dtype=torch.long)}]

    def step():
        run.train_step(micro)
        if device == "cuda":
            torch.cuda.synchronize()

    return step


@pytest.mark.parametrize("backbone,batch", CPU_CASES)
def test_train_step_cpu(benchmark, data, tmp_path, backbone, batch):
    benchmark.group = "train step, CPU fp32, 8x64x64"
    step = _step_runner(data, tmp_path, backbone, batch, "cpu", 8, 64, (72, 96))
    step()  # warm-up
    benchmark.pedantic(step, rounds=3, iterations=1)
    benchmark.extra_info["clips_per_s"] = round(2 * batch / benchmark.stats.stats.mean, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backbone", GPU_BACKBONES)
def test_train_step_gpu(benchmark, data, tmp_path, backbone):
    benchmark.group = "train step, CUDA bf16 channels_last_3d, 16x112x112, batch 64"
    step = _step_runner(data, tmp_path, backbone, 64, "cuda", 16, 112, (128, 171))
    for _ in range(3):
        step()
    benchmark.pedantic(step, rounds=10, iterations=1)
    benchmark.extra_info["clips_per_s"] = round(2 * 64 / benchmark.stats.stats.mean, 1)
