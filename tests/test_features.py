"""Per-video feature extraction on real MotionShapes videos: every video once, the documented
features, a shared on-disk cache, identical results under two-process gloo DDP, strict on
undecodable videos."""

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import evaluation.features as features_mod
from backbones import create_backbone
from evaluation.features import (
    FeatureSet,
    conv5_maxpool,
    conv5_maxpool_dim,
    encoder_fingerprint,
    extract_features,
    feature_cache_path,
)
from evaluation.protocols import FeatureProtocol
from core.data.datasets import VideoDataset, open_dataset
from core.data.loader import ClipDataset
from core.data.request import LoadRequest
from core.data.modalities import compute_flow_cache
from core.data.sampling import uniform_clips
from core.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from core.data.video import CorruptVideo
from tests.helpers import free_port, truncate

P = FeatureProtocol(clips=3, frames=4, stride=1, resize=(32, 43), crop=32, modality="rgb", normalize_input=True, value_range=(0.0, 1.0))
WORLD = 2


def _encoder(in_channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone("r3d_tiny", in_channels=in_channels)


def _extract(encoder, videos, protocol=P, **kw) -> FeatureSet:
    kw = {"device": "cpu", "batch_size": 5, "workers": 0, "progress": False, **kw}
    return extract_features(encoder, videos, protocol, **kw)


@pytest.fixture(scope="module")
def train(motionshapes_tiny):
    return open_dataset(motionshapes_tiny, split=1, subset="train", progress=False)


@pytest.fixture(scope="module")
def test_set(motionshapes_tiny):
    return open_dataset(motionshapes_tiny, split=1, subset="test", progress=False)


@pytest.fixture(scope="module")
def encoder():
    return _encoder()


@pytest.fixture(scope="module")
def reference(encoder, train):
    """Single process, batch 5 over 36 videos (5+5+...+1): the feature set the others must match."""
    return _extract(encoder, train)


def _same(a: FeatureSet, b: FeatureSet, exact: bool = False) -> None:
    assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels) and a.keys == b.keys
    if exact:
        assert torch.equal(a.features, b.features)
    else:
        torch.testing.assert_close(a.features, b.features, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- every video once


def test_every_video_once_with_a_batch_size_that_does_not_divide_the_split(reference, train):
    assert len(train) == 36
    fs = reference
    assert fs.features.dtype == torch.float32 and fs.features.device.type == "cpu"
    assert fs.features.shape == (36, 128) and torch.isfinite(fs.features).all()
    assert fs.indices.dtype == fs.labels.dtype == torch.int64
    assert torch.equal(fs.indices, torch.arange(36))
    assert fs.labels.tolist() == [r.label for r in train.records]
    assert fs.keys == [r.key for r in train.records]
    assert len(set(map(tuple, fs.features.tolist()))) == 36  # 36 different videos, 36 different vectors


def test_extraction_is_deterministic_across_runs_and_worker_counts(encoder, train, reference):
    again = _extract(encoder, train, batch_size=8, workers=2)
    _same(again, reference)
    assert torch.equal(_extract(encoder, train).features, reference.features)


def test_encoder_mode_is_restored(train):
    enc = _encoder().train()
    _extract(enc, VideoDataset(train.name, train.root, train.classes, train.records[:2], train.split, train.subset))
    assert enc.training


def test_video_feature_is_the_mean_of_its_clip_features_computed_by_hand(encoder, train, reference):
    i = 7
    rec = train.records[i]
    item = ClipDataset(train, LoadRequest(frames=4, clips=3, mode="uniform", decode_size=(32, 43)), strict=True)[i]
    assert item["frame_indices"].tolist() == uniform_clips(rec.num_frames, 4, 3).tolist()
    rgb = item["rgb"]  # uint8 (3 clips, 4, 32, 43, 3)
    assert rgb.shape == (3, 4, 32, 43, 3)
    left = int(round((43 - 32) / 2))
    x = rgb[:, :, :, left : left + 32].permute(0, 4, 1, 2, 3).float() / 255  # (3, 3, 4, 32, 32)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    encoder.eval()
    with torch.no_grad():
        per_clip = encoder((x - mean) / std)  # (3, 128)
    torch.testing.assert_close(reference.features[i], per_clip.mean(0), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(per_clip[0], per_clip[2], atol=1e-4)  # the clips do differ


# ---------------------------------------------------------------------------- layers and modalities


def test_conv5_maxpool_has_the_documented_dimension(encoder, test_set):
    q = dataclasses.replace(P, layer="conv5_maxpool", frames=8, resize=(64, 86), crop=64)
    with torch.no_grad():
        layer4 = encoder.eval().forward_stages(torch.zeros(1, 3, 8, 64, 64), ("layer4",))["layer4"]
    assert tuple(layer4.shape[1:]) == (128, 1, 4, 4)
    fs = _extract(encoder, test_set, q)
    assert fs.features.shape == (12, conv5_maxpool_dim((128, 1, 4, 4))) == (12, 512)
    assert fs.features.shape[1] != encoder.feature_dim
    small = _extract(encoder, test_set, dataclasses.replace(P, layer="conv5_maxpool"))
    assert small.features.shape == (12, 128)  # 4x32x32: layer4 128x1x2x2 -> 128x1x1x1


def test_conv5_maxpool_of_r3d_at_16x112_is_9216():
    with torch.device("meta"):
        net = create_backbone("r3d_vcop")
        layer4 = net.eval().forward_stages(torch.empty(2, 3, 16, 112, 112), ("layer4",))["layer4"]
    assert tuple(layer4.shape[1:]) == (512, 2, 7, 7)
    assert conv5_maxpool(layer4).shape == (2, 9216) and conv5_maxpool_dim((512, 2, 7, 7)) == 9216


def test_residual_and_merge(encoder, test_set):
    rgb = _extract(encoder, test_set)
    res = _extract(encoder, test_set, dataclasses.replace(P, modality="residual"))
    assert res.features.shape == rgb.features.shape and not torch.allclose(res.features, rgb.features)
    merged = _extract(encoder, test_set, dataclasses.replace(P, merge="residual"))
    assert merged.features.shape == (12, 128 + 128)
    torch.testing.assert_close(merged.features[:, :128], F.normalize(rgb.features, dim=1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(merged.features[:, 128:], F.normalize(res.features, dim=1), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        _extract(encoder, test_set, dataclasses.replace(P, merge="flow"), flow_root="/nonexistent")


def test_flow_modality_reads_the_flow_cache(test_set, tmp_path):
    flow_root = tmp_path / "flow"
    report = compute_flow_cache([(r.path, Path(r.path).stem) for r in test_set.records], flow_root, workers=2, progress=False)
    assert not report["failed"]
    q = dataclasses.replace(P, modality="flow")
    with pytest.raises(ValueError, match="flow_root"):
        _extract(_encoder(2), test_set, q)
    fs = _extract(_encoder(2), test_set, q, flow_root=flow_root)
    assert fs.features.shape == (12, 128) and torch.isfinite(fs.features).all()
    assert torch.equal(fs.indices, torch.arange(12))


def test_split_mismatch_is_refused(encoder, test_set):
    with pytest.raises(ValueError, match="split"):
        _extract(encoder, test_set, dataclasses.replace(P, split=2))


# ---------------------------------------------------------------------------- cache


def test_cache_is_written_once_and_shared(encoder, train, reference, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = _extract(encoder, train, cache_dir=cache)
    _same(first, reference, exact=True)
    file = feature_cache_path(cache, train, P, encoder_fingerprint(encoder))
    assert file.is_file() and [p.name for p in cache.iterdir()] == [file.name]  # no temp file left
    stamp = file.stat().st_mtime_ns

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(features_mod, "make_loader", no_decoding)
    second = _extract(encoder, train, cache_dir=cache, workers=2, batch_size=3)
    _same(second, reference, exact=True)
    assert file.stat().st_mtime_ns == stamp
    monkeypatch.undo()

    other = dataclasses.replace(P, clips=2)
    assert other.hash() != P.hash()
    _extract(encoder, train, other, cache_dir=cache)
    other_file = feature_cache_path(cache, train, other, encoder_fingerprint(encoder))
    assert other_file != file and other_file.is_file() and file.stat().st_mtime_ns == stamp
    saved = torch.load(file, weights_only=True)
    assert saved["keys"] == reference.keys and saved["meta"]["protocol_hash"] == P.hash()


def test_cache_key_follows_the_encoder_and_bad_files_are_recomputed(encoder, test_set, tmp_path):
    enc = _encoder()
    h0 = encoder_fingerprint(enc)
    assert h0 == encoder_fingerprint(encoder) and len(h0) == 16
    with torch.no_grad():
        enc.stem[0].weight[0, 0, 0, 0, 0] += 1.0
    assert encoder_fingerprint(enc) != h0
    cache = tmp_path / "cache"
    file = feature_cache_path(cache, test_set, P, "mine")
    cache.mkdir()
    file.write_bytes(b"not a torch file")
    fs = _extract(encoder, test_set, cache_dir=cache, encoder_hash="mine")
    assert torch.equal(torch.load(file, weights_only=True)["features"], fs.features)


# ---------------------------------------------------------------------------- undecodable videos


@pytest.fixture
def data_copy(motionshapes_tiny, tmp_path):
    return Path(shutil.copytree(motionshapes_tiny, tmp_path / "copy"))


def test_a_video_known_to_be_corrupt_stops_extraction_by_name(encoder, data_copy, monkeypatch):
    victim = data_copy / "UCF-101" / open_dataset(data_copy, subset="test", progress=False).records[4].key
    victim = truncate(victim.with_suffix(".avi"), 0.3)
    videos = open_dataset(data_copy, subset="test", progress=False)
    monkeypatch.setattr(features_mod, "make_loader", lambda *a, **k: pytest.fail("decoded a data set with a corrupt video"))
    with pytest.raises(CorruptVideo) as err:
        _extract(encoder, videos)
    assert err.value.path == str(victim)


def test_a_video_that_breaks_after_indexing_stops_extraction_by_name(encoder, data_copy):
    videos = open_dataset(data_copy, subset="test", progress=False)
    victim = truncate(Path(videos.records[6].path), 0.3)
    for workers in (0, 2):
        with pytest.raises(CorruptVideo) as err:
            _extract(encoder, videos, workers=workers)
        assert err.value.path == str(victim), workers


# ---------------------------------------------------------------------------- two-process DDP


def _ddp_worker(rank: int, port: int, root: str, state: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    local_indices = []
    real = features_mod._extract_local

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        local_indices.append(result[2].tolist())
        return result

    features_mod._extract_local = spy
    try:
        enc = create_backbone("r3d_tiny")
        enc.load_state_dict(state)
        train = open_dataset(root, split=1, subset="train", progress=False)
        odd = VideoDataset(train.name, train.root, train.classes, train.records[:35], train.split, train.subset)
        results = {
            "even_b4": _extract(enc, train, batch_size=4),
            "odd_b5": _extract(enc, odd, batch_size=5),
            "cached": _extract(enc, train, batch_size=5, cache_dir=os.path.join(os.path.dirname(out), "cache")),
            "cached_again": _extract(enc, train, batch_size=5, cache_dir=os.path.join(os.path.dirname(out), "cache")),
            "local": local_indices,
        }
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp(motionshapes_tiny, encoder, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ddp_features") / "results.pt")
    mp.spawn(_ddp_worker, args=(free_port(), str(motionshapes_tiny), encoder.state_dict(), out), nprocs=WORLD, join=True)
    return [torch.load(f"{out}.{r}", weights_only=False) for r in range(WORLD)]


@pytest.mark.slow  # two spawned gloo workers
def test_ddp_gives_the_single_process_features_with_every_video_once(ddp, encoder, train, reference):
    odd = VideoDataset(train.name, train.root, train.classes, train.records[:35], train.split, train.subset)
    single_odd = _extract(encoder, odd)
    for r in range(WORLD):
        _same(ddp[r]["even_b4"], reference)
        _same(ddp[r]["odd_b5"], single_odd)
        assert torch.equal(ddp[r]["odd_b5"].indices, torch.arange(35))
        _same(ddp[r]["cached"], reference)
        _same(ddp[r]["cached_again"], ddp[r]["cached"], exact=True)
    # each rank extracted its own disjoint slice: 18 + 18, then 18 + 17 (the cached call extracts once)
    r0, r1 = ddp[0]["local"], ddp[1]["local"]
    assert len(r0) == len(r1) == 3
    assert r0[0] == list(range(0, 36, 2)) and r1[0] == list(range(1, 36, 2))
    assert r0[1] == list(range(0, 35, 2)) and r1[1] == list(range(1, 35, 2))
    assert (len(r0[1]), len(r1[1])) == (18, 17)
