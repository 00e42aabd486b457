"""The loader: uint8 batches, skip-and-count in training, strict and complete in evaluation."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.datasets import load_ucf101
from core.data.loader import ClipDataset, EpochSampler, make_loader
from core.data.request import LoadRequest
from core.data.video import CorruptVideo
from tests.helpers import frame_level, truncate, write_ucf_like

TRAIN = LoadRequest(frames=4, stride=2, clips=2, mode="random", decode_size=(16, 32))
EVAL = LoadRequest(frames=4, clips=3, mode="uniform")


@pytest.fixture
def ucf(tmp_path):
    root = write_ucf_like(tmp_path / "ucf", {"A": 4, "B": 4, "C": 3})
    return load_ucf101(root, subset="all", progress=False)


def test_training_batches_are_uint8_clips_with_the_sampled_frames(ucf):
    loader = make_loader(ucf, TRAIN, batch_size=4, train=True, workers=0, seed=3)
    batch = next(iter(loader))
    assert batch["rgb"].dtype == torch.uint8 and batch["rgb"].shape == (4, 2, 4, 16, 32, 3)
    for b in range(4):
        for c in range(2):
            expected = [i % 30 for i in batch["frame_indices"][b, c].tolist()]
            assert [frame_level(f) for f in batch["rgb"][b, c].numpy()] == expected


def test_training_skips_counts_and_names_undecodable_videos(ucf, caplog):
    bad = next(r for r in ucf.records if r.key.endswith("B_g02_c01"))
    truncate(Path(bad.path), 0.5)  # broken after indexing: found at read time
    loader = make_loader(ucf, TRAIN, batch_size=3, train=True, workers=2, seed=0)
    with caplog.at_level(logging.WARNING):
        seen = [i for batch in loader for i in batch["index"].tolist()]
    assert loader.skipped.keys() == {bad.path}
    assert bad.path in caplog.text
    assert ucf.records.index(bad) not in seen
    assert len(seen) == 9 - 1  # 11 videos, batches of 3, tail dropped in training, one skipped


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_refuses_undecodable_videos_by_name(ucf, workers):
    bad = ucf.records[5]
    truncate(Path(bad.path), 0.5)
    loader = make_loader(ucf, EVAL, batch_size=4, train=False, workers=workers)
    with pytest.raises(CorruptVideo) as err:  # a real CorruptVideo, with its fields, from worker processes too
        list(loader)
    assert err.value.path == bad.path and err.value.reason


def test_evaluation_visits_every_video_once_without_dropping_the_tail(ucf):
    loader = make_loader(ucf, EVAL, batch_size=4, train=False, workers=2)  # 11 videos: 4 + 4 + 3
    seen = [i for batch in loader for i in batch["index"].tolist()]
    assert seen == list(range(11))
    ranks = [list(EpochSampler(11, shuffle=False, rank=r, world_size=2, pad=False)) for r in (0, 1)]
    assert sorted(i for part in ranks for i, _ in part) == list(range(11))


def test_evaluation_clips_are_deterministic_and_uniform(ucf):
    ds = ClipDataset(ucf, EVAL, strict=True)
    a, b = ds[0], ds[0]
    assert torch.equal(a["rgb"], b["rgb"])
    n = ucf.records[0].num_frames
    assert a["frame_indices"][:, 0].tolist() == [int(c - 2) for c in np.linspace(2, n - 2, 3)]


def test_training_clips_depend_on_seed_epoch_and_index_only(ucf):
    one = make_loader(ucf, TRAIN, batch_size=4, train=True, workers=0, seed=5)
    two = make_loader(ucf, TRAIN, batch_size=4, train=True, workers=2, seed=5)
    for loader in (one, two):
        loader.set_epoch(1)
    a, b = next(iter(one)), next(iter(two))
    assert torch.equal(a["index"], b["index"]) and torch.equal(a["frame_indices"], b["frame_indices"])
    one.set_epoch(2)
    assert not torch.equal(next(iter(one))["index"], a["index"])


def test_training_sampler_pads_ranks_to_equal_length():
    parts = [list(EpochSampler(11, shuffle=True, seed=1, rank=r, world_size=4)) for r in range(4)]
    assert [len(p) for p in parts] == [3, 3, 3, 3]
    assert {i for p in parts for i, _ in p} == set(range(11))
