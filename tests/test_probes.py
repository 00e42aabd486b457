"""Motion-sensitivity probes and the MotionShapes static-bias gap, on hand-built encoders and
clips whose answers are known, and on real MotionShapes videos."""

import csv
import dataclasses
import math

import pytest
import torch
from torch import nn

from backbones import create_backbone
from evaluation.features import crop_clips
from evaluation.probes import (
    _permutations,
    load_bias_alignment,
    motion_probe,
    motion_sensitivity,
    perturb_clips,
    probe_clips,
    static_bias_gap,
)
from evaluation.protocols import FeatureProtocol
from core.data.datasets import DatasetError, open_dataset
from core.data.loader import ClipDataset
from core.data.request import LoadRequest
from core.data.transforms import normalize

P = FeatureProtocol(clips=3, frames=4, stride=1, resize=(32, 43), crop=32, modality="rgb", normalize_input=True, value_range=(0.0, 1.0))


class TimeAverage(nn.Module):
    """Ignores the order of frames: mean over T, then a linear layer."""

    def __init__(self, c: int = 3, h: int = 8, w: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(c * h * w, 16)

    def forward(self, x):
        return self.fc(x.mean(dim=2).flatten(1))


class FirstFrame(nn.Module):
    """Sees only the first frame."""

    def forward(self, x):
        return x[:, :, 0].flatten(1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_time_averaging_encoder_ignores_shuffling_and_reversal():
    clips = torch.randn(10, 3, 6, 8, 8, generator=_gen(1))
    sims = motion_sensitivity(TimeAverage(), clips, generator=_gen(2))
    assert set(sims) == {"sim_shuffled", "sim_reversed", "sim_static"}
    assert sims["sim_shuffled"] == pytest.approx(1, abs=1e-5)
    assert sims["sim_reversed"] == pytest.approx(1, abs=1e-5)
    assert sims["sim_static"] < 0.99  # the frames differ, so one frozen frame is not their average


def test_static_clips_give_similarity_one_everywhere():
    frame = torch.randn(4, 3, 1, 8, 8, generator=_gen(1))
    clips = frame.expand(4, 3, 5, 8, 8).contiguous()
    for enc in (TimeAverage(), FirstFrame()):
        sims = motion_sensitivity(enc, clips, generator=_gen(0))
        for v in sims.values():
            assert v == pytest.approx(1, abs=1e-5)


def test_a_first_frame_encoder_by_hand():
    # channels as coordinates: clip 0 goes (1,0) -> (0,1); clip 1 goes (1,0) -> (1,1)
    clips = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 1.0]]]).view(2, 2, 2, 1, 1)
    sims = motion_sensitivity(FirstFrame(), clips, generator=_gen(0))
    # reversed / shuffled (the only non-identity permutation of 2 frames is the swap) / static (frame
    # T // 2 = 1) all show the second frame: cos((1,0),(0,1)) = 0 and cos((1,0),(1,1)) = 1/sqrt(2)
    for key in ("sim_reversed", "sim_shuffled", "sim_static"):
        assert sims[key] == pytest.approx((0 + 1 / math.sqrt(2)) / 2, abs=1e-6)


def test_reversal_changes_a_first_frame_encoder_on_a_moving_clip():
    clips = torch.randn(6, 3, 8, 8, 8, generator=_gen(3))
    sims = motion_sensitivity(FirstFrame(), clips, generator=_gen(0))
    assert sims["sim_reversed"] < 0.5 and sims["sim_static"] < 0.5 and sims["sim_shuffled"] < 1


def test_permutations_are_seeded_and_never_the_identity():
    a = _permutations(200, 3, _gen(7))
    assert not (a == torch.arange(3)).all(dim=1).any()
    assert torch.equal(a, _permutations(200, 3, _gen(7)))
    assert all(sorted(p.tolist()) == [0, 1, 2] for p in a)
    x = torch.arange(2 * 3).float().view(2, 1, 3, 1, 1)
    shuffled = perturb_clips(x, "shuffled", perms=a[:2])
    assert shuffled[0, 0, :, 0, 0].tolist() == x[0, 0, a[0], 0, 0].tolist()
    assert perturb_clips(x, "reversed", perms=None)[1, 0, :, 0, 0].tolist() == [5.0, 4.0, 3.0]
    assert perturb_clips(x, "static")[0, 0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]


def test_transform_is_applied_after_the_perturbation():
    clips = torch.rand(3, 3, 4, 8, 8, generator=_gen(1))
    seen = []

    def record(x):
        seen.append(x.clone())
        return x

    motion_sensitivity(TimeAverage(), clips, generator=_gen(0), transform=record)
    assert torch.equal(seen[0], clips) and torch.equal(seen[2], clips.flip(2))  # original, shuffled, reversed, static


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="2 frames"):
        motion_sensitivity(FirstFrame(), torch.zeros(2, 3, 1, 4, 4), generator=_gen(0))
    with pytest.raises(ValueError):
        motion_sensitivity(FirstFrame(), torch.zeros(2, 3, 4, 4), generator=_gen(0))


# ---------------------------------------------------------------------------- real clips


@pytest.fixture(scope="module")
def test_set(motionshapes_tiny):
    return open_dataset(motionshapes_tiny, split=1, subset="test", progress=False)


def test_probe_clips_are_the_first_evaluation_clip_of_each_video(test_set):
    clips = probe_clips(test_set, P, max_videos=5)
    assert clips.shape == (5, 3, 4, 32, 32) and clips.dtype == torch.float32
    assert torch.equal(clips, probe_clips(test_set, P, max_videos=5))
    ds = ClipDataset(test_set, LoadRequest(frames=4, clips=3, mode="uniform", decode_size=(32, 43)), strict=True)
    expected = normalize(crop_clips(ds[3]["rgb"][:1].unsqueeze(0), 32))
    torch.testing.assert_close(clips[3:4], expected)
    assert probe_clips(test_set, P, max_videos=100).shape[0] == 12
    even = probe_clips(test_set, P, max_videos=4, select="even")
    picked = [0, 4, 7, 11]  # linspace(0, 11, 4) rounded
    torch.testing.assert_close(even, probe_clips(test_set, P, max_videos=12)[picked])


def test_motion_probe_on_real_videos(test_set):
    torch.manual_seed(0)
    enc = create_backbone("r3d_tiny")
    sims = motion_probe(enc, test_set, P, generator=_gen(0), max_videos=6)
    assert sims == motion_probe(enc, test_set, P, generator=_gen(0), max_videos=6)
    assert all(-1 <= v <= 1 + 1e-6 for v in sims.values())
    assert sims["sim_static"] < 1 - 1e-4  # MotionShapes objects move: a frozen frame is a different clip
    res = motion_probe(enc, test_set, dataclasses.replace(P, modality="residual", normalize_input=False),
                       generator=_gen(0), max_videos=6)
    assert set(res) == set(sims) and res != sims


# ---------------------------------------------------------------------------- static bias


def test_static_bias_gap_by_hand():
    preds = torch.tensor([0, 1, 2, 3, 0, 1])
    labels = torch.tensor([0, 1, 2, 0, 1, 1])
    aligned = torch.tensor([True, True, True, False, False, False])
    out = static_bias_gap(preds, labels, aligned)
    assert out["acc_aligned"] == 1.0 and out["acc_conflicting"] == pytest.approx(1 / 3)
    assert out["gap"] == pytest.approx(2 / 3) and (out["n_aligned"], out["n_conflicting"]) == (3, 3)
    logits = torch.nn.functional.one_hot(preds, 4).float()
    assert static_bias_gap(logits, labels, aligned) == out
    empty = static_bias_gap(preds, labels, torch.ones(6, dtype=torch.bool))
    assert empty["acc_aligned"] == pytest.approx(4 / 6) and math.isnan(empty["acc_conflicting"]) and math.isnan(empty["gap"])
    with pytest.raises(TypeError):
        static_bias_gap(preds, labels, aligned.long())


def test_bias_alignment_follows_the_metadata_csv(motionshapes_tiny, test_set, tmp_path):
    with open(motionshapes_tiny / "motionshapes_meta.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_path = {r["path"]: r["bias_aligned"] == "True" for r in rows}
    mask = load_bias_alignment(motionshapes_tiny, test_set)
    assert mask.dtype == torch.bool and mask.shape == (12,)
    assert mask.tolist() == [by_path[r.key + ".avi"] for r in test_set.records]
    assert torch.equal(load_bias_alignment(motionshapes_tiny / "UCF-101", test_set), mask)
    # a video without a row is an error, not a silent False
    missing = tmp_path / "motionshapes_meta.csv"
    with open(missing, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["path"] != test_set.records[2].key + ".avi")
    with pytest.raises(DatasetError, match=test_set.records[2].key):
        load_bias_alignment(tmp_path, test_set)
