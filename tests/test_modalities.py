"""Tests for core.data.modalities: derived views and the optical-flow cache (real files, CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from core.data.modalities import (
    compute_flow_cache,
    dequantize_flow,
    dynamic_view,
    flow_folders,
    flow_frame_count,
    load_flow_meta,
    quantize_flow,
    read_flow,
    residual_frames,
    static_view,
)
from core.data.video import CorruptVideo, write_video

H, W, N = 96, 128, 10  # frame size and RGB frames per synthetic video

# --------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------


def _clip_batch() -> torch.Tensor:
    """(B=2, C=1, T=3, H=1, W=2) with distinct, hand-checkable values."""
    a = torch.tensor([[1.0, 2.0], [4.0, 8.0], [16.0, 32.0]])  # clip 0, frames x (W)
    b = -a
    return torch.stack([a, b]).view(2, 1, 3, 1, 2)


def test_residual_exact_values_with_wraparound():
    x = _clip_batch()
    raw = residual_frames(x, rescale=False)
    expected0 = torch.tensor([[1 - 16, 2 - 32], [4 - 1, 8 - 2], [16 - 4, 32 - 8]], dtype=torch.float32)
    assert torch.equal(raw[0, 0, :, 0], expected0)  # frame 0 = x0 - x_{T-1}
    assert torch.equal(raw[1, 0, :, 0], -expected0)
    assert torch.equal(residual_frames(x), (raw + 1) / 2)
    assert torch.equal(residual_frames(x)[0, 0, 0, 0], torch.tensor([(1 - 16 + 1) / 2, (2 - 32 + 1) / 2]))


def test_residual_of_constant_clip():
    x = torch.full((2, 3, 4, 5, 6), 0.3)
    assert torch.equal(residual_frames(x), torch.full_like(x, 0.5))
    assert torch.equal(residual_frames(x, rescale=False), torch.zeros_like(x))


def test_views_accept_single_clip_and_match_batched():
    x = torch.rand(2, 3, 5, 4, 4)
    assert torch.equal(residual_frames(x[1]), residual_frames(x)[1])
    assert torch.equal(dynamic_view(x[0]), dynamic_view(x)[0])
    assert torch.equal(static_view(x[0], 2), static_view(x, 2)[0])


def test_dynamic_view_is_unscaled_difference():
    x = _clip_batch()
    assert torch.equal(dynamic_view(x), x - torch.roll(x, 1, dims=2))
    assert torch.equal(dynamic_view(x)[0, 0, 0, 0], torch.tensor([1.0 - 16, 2.0 - 32]))


def test_static_view_int_index():
    x = torch.rand(2, 3, 5, 4, 4)
    s = static_view(x, 3)
    assert s.shape == x.shape and s.is_contiguous()
    for t in range(5):
        assert torch.equal(s[:, :, t], x[:, :, 3])
    assert torch.equal(static_view(x, -1), static_view(x, 4))
    with pytest.raises(IndexError):
        static_view(x, 5)


def test_static_view_per_clip_index():
    x = torch.rand(3, 2, 6, 4, 5)
    index = torch.tensor([0, 5, 2])
    s = static_view(x, index)
    assert s.shape == x.shape
    for b, i in enumerate(index.tolist()):
        for t in range(6):
            assert torch.equal(s[b, :, t], x[b, :, i])
    with pytest.raises(ValueError):
        static_view(x, torch.tensor([0, 1]))


def test_views_reject_integer_clips():
    with pytest.raises(TypeError):
        residual_frames(torch.zeros(1, 3, 4, 2, 2, dtype=torch.uint8))


# --------------------------------------------------------------------------------------------
# Quantization
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bound", [20.0, 5.0])
def test_quantize_round_trip_numpy_and_torch(bound):
    f = np.random.default_rng(0).uniform(-bound, bound, size=(1000, 2)).astype(np.float32)
    q = quantize_flow(f, bound)
    assert q.dtype == np.uint8
    assert np.abs(dequantize_flow(q, bound) - f).max() <= bound / 255 + 1e-5
    qt = quantize_flow(torch.from_numpy(f), bound)
    assert qt.dtype == torch.uint8 and torch.equal(qt, torch.from_numpy(q))
    back = dequantize_flow(qt, bound)
    assert back.dtype == torch.float32
    assert (back - torch.from_numpy(f)).abs().max().item() <= bound / 255 + 1e-5


def test_quantize_clips_to_bound():
    q = quantize_flow(np.array([-100.0, -20.0, 0.0, 20.0, 100.0]), 20.0)
    assert q.tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds to 128


# --------------------------------------------------------------------------------------------
# Synthetic videos with a known translation
# --------------------------------------------------------------------------------------------


def _texture(seed: int) -> np.ndarray:
    """Smooth periodic random RGB texture (H, W, 3) uint8: blurred in Fourier space, so np.roll has no seam."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(H)[:, None], np.fft.fftfreq(W)[None, :]
    gauss = np.exp(-2 * (np.pi * 2.5) ** 2 * (fy**2 + fx**2))  # sigma = 2.5 px
    chans = []
    for _ in range(3):
        t = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((H, W))) * gauss))
        chans.append((t - t.min()) / (t.max() - t.min()) * 255)
    return np.stack(chans, -1).astype(np.uint8)


def _moving_frames(dx: int, dy: int, seed: int = 0) -> list[np.ndarray]:
    tex = _texture(seed)
    return [np.roll(tex, (t * dy, t * dx), axis=(0, 1)) for t in range(N)]


def _write_avi(path: Path, frames: list[np.ndarray]) -> Path:
    write_video(path, np.stack(frames), bit_rate=4_000_000)
    return path


def _write_folder(path: Path, frames: list[np.ndarray]) -> Path:
    path.mkdir()
    for i, frame in enumerate(frames, start=1):
        cv2.imwrite(str(path / f"frame{i:06d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 98])
    return path


def _interior_median(flow: np.ndarray, bound: float = 20.0) -> tuple[float, float]:
    f = dequantize_flow(flow, bound)[:, 16:-16, 16:-16]
    return float(np.median(f[..., 0])), float(np.median(f[..., 1]))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    src = tmp_path_factory.mktemp("videos")
    corrupt = src / "v_Broken_g01_c01.avi"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {
        "v_RightDown_g01_c01": _write_avi(src / "v_RightDown_g01_c01.avi", _moving_frames(2, 1)),
        "v_Left_g01_c01": _write_folder(src / "v_Left_g01_c01", _moving_frames(-2, 0, seed=2)),
        "v_Broken_g01_c01": corrupt,
    }


@pytest.fixture(scope="module")
def flow_cache(videos, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("flow")
    report = compute_flow_cache([(str(p), k) for k, p in videos.items()], root, workers=2, progress=False)
    return root, report


def test_flow_cache_report_and_layout(flow_cache):
    root, report = flow_cache
    assert report["computed"] == ["v_RightDown_g01_c01", "v_Left_g01_c01"]
    assert report["skipped_existing"] == []
    assert list(report["failed"]) == ["v_Broken_g01_c01"] and "v_Broken_g01_c01.avi" in report["failed"]["v_Broken_g01_c01"]
    assert report["flow_frames"] == 2 * (N - 1)
    meta = load_flow_meta(root)
    assert (meta["algorithm"], meta["bound"], meta["version"], meta["short_side"]) == ("dis", 20.0, 1, None)
    u, v = flow_folders(root, "v_RightDown_g01_c01")
    assert sorted(os.listdir(u)) == [f"frame{i:06d}.jpg" for i in range(1, N)]
    assert len(os.listdir(v)) == N - 1
    assert cv2.imread(str(u / "frame000001.jpg"), cv2.IMREAD_UNCHANGED).shape == (H, W)  # single channel
    assert not (root / "u" / "v_Broken_g01_c01").exists()
    assert not [p for p in (root / "u").iterdir() if p.name.startswith(".")]  # no temp folders left


def test_known_translation_right_and_down(flow_cache):
    root, _ = flow_cache
    assert flow_frame_count(root, "v_RightDown_g01_c01") == N - 1
    flow = read_flow(root, "v_RightDown_g01_c01", range(N))
    assert flow.dtype == np.uint8 and flow.shape == (N, H, W, 2)
    u, v = _interior_median(flow)
    assert abs(u - 2.0) <= 0.3 and abs(v - 1.0) <= 0.3, (u, v)
    for t in range(N - 1):  # every frame pair, not only the pooled median
        ut, vt = _interior_median(flow[t : t + 1])
        assert abs(ut - 2.0) <= 0.3 and abs(vt - 1.0) <= 0.3, (t, ut, vt)


def test_left_translation_gives_negative_u(flow_cache):
    root, _ = flow_cache
    u, v = _interior_median(read_flow(root, "v_Left_g01_c01", range(N)))
    assert abs(u + 2.0) <= 0.3 and abs(v) <= 0.3, (u, v)


def test_read_flow_alignment(flow_cache):
    root, _ = flow_cache
    key = "v_RightDown_g01_c01"
    u_dir, v_dir = flow_folders(root, key)
    last = read_flow(root, key, [N - 1])
    assert np.array_equal(last, read_flow(root, key, [N - 2]))
    first = read_flow(root, key, [0])  # RGB 0 -> flow(0 -> 1) = file 1
    assert np.array_equal(first[0, ..., 0], cv2.imread(str(u_dir / "frame000001.jpg"), cv2.IMREAD_GRAYSCALE))
    assert np.array_equal(first[0, ..., 1], cv2.imread(str(v_dir / "frame000001.jpg"), cv2.IMREAD_GRAYSCALE))
    mid = read_flow(root, key, [4, 4, 1])  # RGB 4 -> file 5; repeats and any order allowed
    assert np.array_equal(mid[0, ..., 0], cv2.imread(str(u_dir / "frame000005.jpg"), cv2.IMREAD_GRAYSCALE))
    assert not np.array_equal(mid[0], read_flow(root, key, [3])[0])  # frames differ, so the checks above bite
    assert np.array_equal(mid[0], mid[1]) and np.array_equal(mid[2], read_flow(root, key, [1])[0])
    assert read_flow(root, key, [0, 4], size=(48, 64)).shape == (2, 48, 64, 2)
    with pytest.raises(IndexError):
        read_flow(root, key, [N])


def test_read_flow_missing_frames_raise(flow_cache, tmp_path):
    root, _ = flow_cache
    with pytest.raises(CorruptVideo, match="v_Nope"):
        read_flow(root, "v_Nope", [0])
    broken = tmp_path / "flow"
    for c in ("u", "v"):
        (broken / c / "vid").mkdir(parents=True)
        for i in (1, 2, 4):  # frame 3 missing
            cv2.imwrite(str(broken / c / "vid" / f"frame{i:06d}.jpg"), np.full((8, 8), 128, np.uint8))
    with pytest.raises(CorruptVideo, match="vid"):
        read_flow(broken, "vid", [0])


# --------------------------------------------------------------------------------------------
# Resumability and settings checks
# --------------------------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_resume_skips_existing_and_recovers_from_crash(videos, tmp_path):
    key, src = "v_RightDown_g01_c01", str(videos["v_RightDown_g01_c01"])
    root = tmp_path / "flow"
    assert compute_flow_cache([(src, key)], root, workers=0, progress=False)["computed"] == [key]
    before = _snapshot(root)
    again = compute_flow_cache([(src, key)], root, workers=0, progress=False)
    assert again["skipped_existing"] == [key] and again["computed"] == [] and again["failed"] == {}
    assert _snapshot(root) == before  # nothing rewritten, meta included

    # Simulated crash mid-video: a half-written temp folder and an incomplete final v/ folder.
    u_dir, v_dir = flow_folders(root, key)
    tmp_u = u_dir.with_name(f".{key}.tmp")
    tmp_u.mkdir()
    (tmp_u / "frame000001.jpg").write_bytes(b"junk")
    (v_dir / f"frame{N - 1:06d}.jpg").unlink()
    report = compute_flow_cache([(src, key)], root, workers=0, progress=False)
    assert report["computed"] == [key]
    assert not tmp_u.exists() and not v_dir.with_name(f".{key}.tmp").exists()
    assert flow_frame_count(root, key) == N - 1
    u, v = _interior_median(read_flow(root, key, range(N)))
    assert abs(u - 2.0) <= 0.3 and abs(v - 1.0) <= 0.3


def test_mismatched_settings_raise(videos, tmp_path):
    key, src = "v_RightDown_g01_c01", str(videos["v_RightDown_g01_c01"])
    root = tmp_path / "flow"
    compute_flow_cache([(src, key)], root, workers=0, progress=False)
    with pytest.raises(ValueError, match=r"'bound': 20\.0.*'bound': 10\.0"):
        compute_flow_cache([(src, key)], root, bound=10.0, workers=0, progress=False)
    with pytest.raises(ValueError, match="short_side"):
        compute_flow_cache([(src, key)], root, short_side=48, workers=0, progress=False)
    assert load_flow_meta(root)["bound"] == 20.0


def test_short_side_resizes_before_flow(videos, tmp_path):
    key, src = "v_RightDown_g01_c01", str(videos["v_RightDown_g01_c01"])
    root = tmp_path / "flow"
    compute_flow_cache([(src, key)], root, short_side=48, workers=0, progress=False)
    flow = read_flow(root, key, range(N))
    assert flow.shape == (N, 48, 64, 2)
    f = dequantize_flow(flow, 20.0)[:, 8:-8, 8:-8]
    assert abs(np.median(f[..., 0]) - 1.0) <= 0.3 and abs(np.median(f[..., 1]) - 0.5) <= 0.3  # half the pixels, half the motion


def test_foreign_flow_folders_without_meta_are_refused(videos, tmp_path):
    root = tmp_path / "flow"
    (root / "u" / "v_Other").mkdir(parents=True)
    with pytest.raises(ValueError, match="flow_meta.json"):
        compute_flow_cache([(str(videos["v_Left_g01_c01"]), "v_Left_g01_c01")], root, workers=0, progress=False)


def test_duplicate_keys_raise(videos, tmp_path):
    src = str(videos["v_RightDown_g01_c01"])
    with pytest.raises(ValueError, match="v_Same"):
        compute_flow_cache([(src, "v_Same"), (src, "v_Other"), (src, "v_Same")], tmp_path, workers=0, progress=False)
    assert not (tmp_path / "flow_meta.json").exists()  # checked before anything is written


@pytest.mark.skipif(hasattr(cv2, "optflow"), reason="opencv-contrib is installed, TV-L1 is available")
def test_tvl1_without_contrib_explains_how_to_get_it(videos, tmp_path):
    with pytest.raises(ImportError, match="opencv-contrib-python-headless"):
        compute_flow_cache([(str(videos["v_Left_g01_c01"]), "v_Left_g01_c01")], tmp_path, algorithm="tvl1", progress=False)
    assert not (tmp_path / "flow_meta.json").exists()


def test_meta_file_is_valid_json_written_once(flow_cache):
    root, _ = flow_cache
    with open(root / "flow_meta.json") as f:
        assert json.load(f)["bound"] == 20.0
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
