"""The GPU run's parts that can be checked without a GPU (benchmarks/gpu): the bf16 error rule,
the seed-style loader's worker augmentation, the reduced suite's budget arithmetic and the
throughput table's ratios and goals. The whole run is checked end to end with ``--tiny`` (see
benchmarks/gpu/README.md), which takes minutes and is not part of the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from backbones import create_backbone
from benchmarks.gpu import report
from benchmarks.gpu.checks import _conv_errors, conv3d_check
from benchmarks.gpu.reduced_suite import SuitePlan, dclr_warmup, finetune_milestones, plan_suite, suite_seconds
from benchmarks.perf.naive_pipeline import SeedStyleClips
from core.data.datasets import open_dataset
from core.data.loader import ClipDataset, make_loader
from core.data.transforms import AugmentConfig
from methods.base import DataSpec


def test_bf16_conv_error_is_what_rounding_explains():
    """A Conv3d in bf16 autocast is off fp32 by about what rounding its operands and result to bf16
    costs (2^-9 relative per value): more than 0, within the check's limit (2x rounding + 2^-8)."""
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv3d(4, 8, 3, padding=1)
    x = torch.randn(2, 4, 4, 8, 8, generator=g)
    e = _conv_errors(conv, x, g)
    for name in ("out", "grad_input", "grad_weight"):
        assert 1e-4 < e[f"{name}_rounding"] < 1e-2
        assert 0 < e[f"{name}_bf16"] <= 2 * e[f"{name}_rounding"] + 2**-8


def test_conv3d_check_visits_every_conv_layer():
    result = conv3d_check(torch.device("cpu"), batch=1, frames=4, crop=32, backbone="r3d_tiny")
    convs = [n for n, m in create_backbone("r3d_tiny").named_modules() if isinstance(m, nn.Conv3d)]
    assert sorted(layer["layer"] for layer in result["layers"]) == sorted(convs)
    assert result["ok"] and 0 < result["features_rel_error"] < 0.05


def test_seed_style_clips_augment_in_the_worker(motionshapes_tiny):
    """SeedStyleClips hands out augmented float clips, the same for the same (seed, epoch, video)
    and different across epochs; a loader over it yields float batches with every video's clips."""
    videos = open_dataset(motionshapes_tiny, split=1, subset="train", progress=False)
    spec = DataSpec(clips=2, frames=4, stride=2, decode_size=(48, 64), augment=AugmentConfig(size=(32, 32)))
    seed_style, plain = SeedStyleClips(videos, spec, seed=3), ClipDataset(videos, spec, seed=3)
    a, b, later = seed_style[(5, 0)], seed_style[(5, 0)], seed_style[(5, 1)]
    assert a["rgb"].dtype == torch.float32 and a["rgb"].shape == (2, 3, 4, 32, 32)
    assert torch.equal(a["rgb"], b["rgb"]) and not torch.equal(a["rgb"], later["rgb"])
    assert torch.equal(a["frame_indices"], plain[(5, 0)]["frame_indices"])  # the same clips, only augmented
    batch = next(iter(make_loader(videos, spec, 4, train=True, workers=0, dataset_class=SeedStyleClips)))
    assert batch["rgb"].shape == (4, 2, 3, 4, 32, 32)


COSTS = dict(rates={"a": 100.0, "b": 50.0}, views={"a": 2, "b": 4}, train_videos=130, test_videos=20, batch=64, eval_clips=2,
             row_overhead_s=10.0)


def test_suite_seconds_prices_every_row():
    # 2 full batches per epoch; a: 2*64*2/100 = 2.56 s, b: 2*64*4/50 = 10.24 s per epoch; extraction 150*2/50 = 6 s
    # for a, b and random init; supervised 2*64/50 + 20*2/50 = 3.36 s; 4 rows x 10 s
    assert suite_seconds(1, **COSTS) == pytest.approx(2.56 + 10.24 + 3 * 6 + 3.36 + 40)
    assert suite_seconds(3, **COSTS) - suite_seconds(1, **COSTS) == pytest.approx(2 * (2.56 + 10.24 + 2.56))


def test_plan_takes_the_largest_budget_that_fits():
    one, two = suite_seconds(1, **COSTS), suite_seconds(2, **COSTS)
    assert plan_suite(two, max_epochs=10, **COSTS) == SuitePlan(epochs=2, eval_clips=2, seconds=two)
    assert plan_suite(one - 0.01, max_epochs=10, **COSTS) is None
    assert plan_suite(1e9, max_epochs=3, **COSTS).epochs == 3


def test_dclr_warmup_keeps_its_share_of_training():
    """The motionshapes suite warms DCLR up for 30 iterations of 10 epochs."""
    assert [dclr_warmup(e) for e in (1, 5, 10)] == [3, 15, 30]


def test_supervised_milestones_keep_their_fractions_of_fine_tuning():
    """The motionshapes suite fine-tunes 10 epochs with milestones 6 and 8."""
    assert finetune_milestones(10) == [6, 8] and finetune_milestones(5) == [3, 4] and finetune_milestones(1) == [0.6, 0.8]


def test_throughput_table_ratios_and_goals():
    """b/a, the goals and the step-alone figures come from the rows of both stages, merged per (method, path)."""
    def e2e(method, path, clips, wait, peak=0.5):
        return {"method": method, "path": path, "clips_per_s": clips, "data_wait": wait, "peak_memory_gb": 1.0,
                "e2e_peak_fraction_3x": peak}

    def step(method, path, clips):
        return {"method": method, "path": path, "step_clips_per_s": clips, "peak_fraction_3x": 0.6, "peak_fraction_counted": 0.4}

    figures = {"stages": {
        "step_throughput": {"result": {"rows": [step("moco", "seed", 120), step("moco", "vsbench", 400)], "clip_gflop": 81.0}},
        "step_throughput_flow": {"result": {"rows": [step("iic", "seed", 110), {"method": "iic", "path": "vsbench", "error": "OOM"}]}},
        "e2e_throughput": {"result": {"rows": [e2e("moco", "seed", 100, 0.5), e2e("moco", "vsbench", 250, 0.05),
                                               e2e("iic", "seed", 100, 0.5), e2e("iic", "vsbench", 150, 0.2, peak=0.3)]}}}}
    text = report.throughput_md(figures)
    assert "| moco | 100 | 250 | 2.50 | 50.0% | 120 / 400 | 60.0% / 40.0% | 50.0% / 5.0% | 1.0 / 1.0 |" in text
    assert "| iic | 100 | 150 | 1.50 | 30.0% | 110 / - | - / - | 50.0% / 20.0% | 1.0 / 1.0 |" in text
    assert "b/a >= 2 for 1 of 2 methods; >= 40.0% of the bf16 rate end to end for 1; data wait < 10.0% for 1." in text
    assert "- iic / vsbench: step throughput flow: OOM" in text


def test_a_failed_stage_says_why():
    figures = {"stages": {"step_throughput": {"error": "RuntimeError: out of memory"}, "suite": {"skipped": "12 s left"}}}
    assert "step_throughput: RuntimeError: out of memory" in report.throughput_md(figures)
    assert "Not run: skipped: 12 s left" in report.suite_md(figures, table=Path("/nonexistent"))


def test_only_mscl_waits_for_the_flow_cache():
    """The step stage runs the methods that read neither flow nor MSCL's screening while the flow
    cache is computed (IIC's default second view is the residual clip, made from RGB)."""
    from benchmarks.gpu.__main__ import METHOD_ARGS
    from benchmarks.gpu.throughput import needs_flow
    from methods.base import list_methods

    assert [m for m in list_methods() if needs_flow(m, METHOD_ARGS.get(m))] == ["mscl"]
