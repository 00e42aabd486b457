"""MoCo v2 (methods/moco.py): a step under bf16 autocast, and the queue size it logs."""

import torch

import methods.moco  # noqa: F401  (registers "moco")
from backbones import create_backbone
from methods.base import TrainState, create_method
from methods.moco import MoCo


def _moco(dataset_size: int = 64, **overrides) -> MoCo:
    torch.manual_seed(0)
    overrides = {"frames": 4, "crop": 32, **overrides}
    return create_method("moco", create_backbone("r3d_tiny"), dataset_size=dataset_size, overrides=overrides)


def test_training_step_runs_under_cpu_bf16_autocast():
    m = _moco()
    clips = torch.randn(4, 2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m({"rgb": clips, "index": torch.arange(4)}, TrainState())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.backbone.parameters() if p.requires_grad)
    assert m.queue["queue"].dtype == torch.float32 and torch.isfinite(m.queue["queue"]).all()


def test_effective_settings_report_the_capped_queue():
    # cap rule (docstring of methods.moco): the largest power of two <= N / 4, at least 16
    assert _moco(dataset_size=100).effective_settings() == {"queue_size": 16}  # 100 / 4 = 25 -> 16
    assert _moco(dataset_size=1000).effective_settings() == {"queue_size": 128}  # 250 -> 128
    assert _moco(dataset_size=9537).effective_settings() == {"queue_size": 2048}  # UCF101: 2384 -> 2048
    assert _moco(dataset_size=1000, queue_size=64).effective_settings() == {"queue_size": 64}  # below the cap: kept
