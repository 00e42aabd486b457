"""Deviations from the official code whose effect is "none": the values are the original's.

Each test backs one row of a "Deviations" table in docs/methods/*.md; the measured effects are
printed by benchmarks/deviations.py, the trained ones by benchmarks/suites/deviations.toml.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
import torch

import methods.iic  # registers "iic"
import methods.mlfo  # noqa: F401  (registers "mlfo")
from backbones import create_backbone
from core.config import load_toml
from core.data.loader import EpochSampler
from core.data.transforms import VideoAugment, gaussian_blur
from harness.suite import load_suite
from methods.base import TrainState, create_method
from methods.dclr import DCLR
from methods.losses import MemoryBank
from methods.mlfo import level_positions

ROOT = Path(__file__).resolve().parents[1]
SUITES = ROOT / "benchmarks" / "suites"


# ------------------------------------------------------------------ DCLR: the blur sigma range, the deviations suite


def test_dclr_blur_sigma_option_reaches_the_augmentation():
    torch.manual_seed(0)
    default = create_method("dclr", create_backbone("r3d_tiny"), dataset_size=64, overrides={"frames": 4, "crop": 32})
    assert default.config.blur_sigma == (0.1, 2.0) and default.data_spec().augment.blur_sigma == (0.1, 2.0)
    # a suite's TOML list, as benchmarks/suites/deviations.toml sets it: one sigma for the whole run
    fixed = create_method("dclr", create_backbone("r3d_tiny"), dataset_size=64,
                          overrides={"frames": 4, "crop": 32, "blur_sigma": [1.05, 1.05]})
    cfg = fixed.data_spec().augment
    assert cfg.blur_sigma == (1.05, 1.05) and cfg.blur_kernel == 3  # int(0.1 * 32) // 2 * 2 + 1
    # through the pipeline: every clip blurred (p 1) with sigma 1.05 exactly; the crop is the identity here
    only_blur = dataclasses.replace(cfg, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grey_p=0.0,
                                    blur_p=1.0, normalize=False)
    x = torch.rand(6, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    out = VideoAugment(only_blur)(x, torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, gaussian_blur(x, torch.full((6,), 1.05), 3), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="blur_sigma"):
        DCLR.Config(blur_sigma=(2.0, 1.0))


def test_deviations_suite_is_cpu_toml_with_dclr_and_its_two_deviation_rows():
    cpu, dev = load_toml(SUITES / "cpu.toml"), load_toml(SUITES / "deviations.toml")
    for key in ("seeds", "backbones", "data", "eval"):
        assert dev[key] == cpu[key], key
    assert {k: v for k, v in dev["pretrain"].items() if k != "output_dir"} == \
        {k: v for k, v in cpu["pretrain"].items() if k != "output_dir"}
    assert dev["pretrain"]["output_dir"] == "runs/deviations" and dev["name"] == dev["experiment"] == "deviations"
    assert dev["methods"] == ["dclr"] and "references" not in dev and dev["overrides"] == {"dclr": cpu["overrides"]["dclr"]}
    suite = load_suite(SUITES / "deviations.toml")
    rows = {a.name: a.method_args for a in suite.ablations}
    assert rows == {"dclr-official-key-maps": {"official_key_maps": True}, "dclr-one-blur-sigma": {"blur_sigma": [1.05, 1.05]}}
    for args in rows.values():  # every row builds, with the suite's shared method_args and DCLR's overrides
        merged = {**suite.pretrain["method_args"], **suite.overrides["dclr"]["method_args"], **args}
        m = create_method("dclr", create_backbone("r3d_tiny"), dataset_size=960, overrides=merged)
        assert m.config.warmup_iterations == 10 and m.config.frames == 8


# ------------------------------------------------------------------ IIC


def test_iic_intra_negative_under_no_grad_gives_the_original_gradients(monkeypatch):
    """The original computes the intra-negative feature with gradient; nothing differentiates
    through it (it enters only the bank, after the logits), so the gradients are the same."""
    def step(with_grad: bool):
        torch.manual_seed(0)
        m = create_method("iic", create_backbone("r3d_tiny"), dataset_size=64, overrides={"frames": 4, "crop": 32, "nce_k": 16})
        g = torch.Generator().manual_seed(1)
        batch = {"rgb": torch.rand(8, 1, 3, 4, 32, 32, generator=g), "index": torch.arange(8) * 3}
        outputs = []
        m.backbone.register_forward_hook(lambda mod, inp, out: outputs.append(out.requires_grad))
        torch.manual_seed(5)  # the same negatives and intra-negative draws in both runs
        with monkeypatch.context() as patch:
            if with_grad:
                patch.setattr(torch, "no_grad", contextlib.nullcontext)
            out = m(batch, TrainState())
        assert outputs == [True, True, with_grad]  # rgb, residual, intra-negative
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    loss_ours, grads_ours = step(with_grad=False)
    loss_orig, grads_orig = step(with_grad=True)
    assert loss_ours == loss_orig and grads_ours.keys() == grads_orig.keys() and grads_ours
    for name, g in grads_ours.items():
        assert torch.equal(g, grads_orig[name]), name


def test_iic_negatives_are_uniform_over_all_videos_including_the_anchor():
    """``torch.randint`` draws what the original's alias sampler with uniform weights draws: every
    video with probability 1/N, the anchor itself included."""
    n, rows, k = 10, 4000, 25
    bank = MemoryBank(n, 4)
    idx = bank.sample_indices(torch.zeros(rows, dtype=torch.long), k, torch.Generator().manual_seed(0))
    counts = torch.bincount(idx[:, 1:].reshape(-1), minlength=n).double()
    expected = rows * k / n
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 27.9  # the 0.001 quantile of chi-square with 9 degrees of freedom
    assert counts[0] > 0  # the anchor (index 0) is drawn as a negative, as in the original


def test_iic_one_process_training_epoch_visits_each_video_once():
    """No index repeats within an epoch (so within a batch) in one process: the "last write wins"
    rule for repeated indices never fires there."""
    sampler = EpochSampler(37, shuffle=True, seed=3)
    for epoch in (0, 1, 5):
        sampler.set_epoch(epoch)
        assert sorted(i for i, _ in sampler) == list(range(37))


# ------------------------------------------------------------------ MLFO


def test_mlfo_paper_backbone_levels_are_the_originals_constants():
    """On R3D-18 with 16 frames, the harness-derived numbers are the original's hard-coded ones:
    channels 128/256/512, time positions 8/4/2 (its AdaptiveAvgPool sizes), ME widths 128 // 16 and 256 // 16."""
    torch.manual_seed(0)
    backbone = create_backbone("r3d_18_mlfo")
    ch = backbone.stage_channels
    assert (ch["layer2"], ch["layer3"], ch["layer4"]) == (128, 256, 512)
    with torch.no_grad():
        maps = backbone.eval().forward_stages(torch.zeros(1, 3, 16, 32, 32), ("layer2", "layer3", "layer4"))
    assert [level_positions(maps[s].shape[2]) for s in ("layer2", "layer3", "layer4")] == [8, 4, 2]
    m = create_method("mlfo", backbone, dataset_size=9537, overrides={})
    eff = m.effective_settings()
    assert (eff["me_low_channels"], eff["me_mid_channels"]) == (8, 16)
    assert eff["proto_queue_size"] == 1024  # UCF101 split 1: the original's queue, uncapped
