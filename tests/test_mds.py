"""Motion Differential Sampling (harness/data/mds.py): scoring, the median rule, mds.json, the sampler."""

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from harness.data.mds import (
    MDS_NAME,
    _snap,
    _sobel,
    attention_map,
    choose_starts,
    clip_scores,
    compute_mds,
    differential_scores,
    load_mds,
    mds_clips,
    motion_map,
    video_chosen_starts,
)
from harness.data.modalities import dequantize_flow, quantize_flow, read_flow
from harness.data.sampling import ClipSpec, build_sampler, list_samplers


# ------------------------------------------------------------------ scoring pieces


def test_sobel_of_a_ramp_is_eight_inside_and_four_at_mirrored_borders():
    ramp = np.tile(np.arange(6, dtype=np.float64), (5, 1))  # u = x
    gx, gy = _sobel(ramp, -1), _sobel(ramp, 0)
    # [-1, 0, 1] gives 2 per pixel, [1, 2, 1] smoothing multiplies by 4; a mirrored border repeats the edge value
    assert np.all(gx[:, 1:-1] == 8) and np.all(gx[:, [0, -1]] == 4)
    assert np.all(gy == 0)
    np.testing.assert_allclose(motion_map(ramp, 2 * ramp), np.sqrt(gx**2 + (2 * gx) ** 2))


def test_attention_averages_blocks_and_scales_to_max_one():
    m = np.zeros((8, 8))
    m[:4, :4] = 2.0  # one hot block of four
    att = attention_map(m, block=4)
    assert att.max() == pytest.approx(1.0)
    assert att[0, 0] == pytest.approx(1.0) and att[7, 7] == pytest.approx(0.0)
    assert np.all(attention_map(np.zeros((8, 8)), block=4) == 0)  # no NaN for a static frame
    assert attention_map(m, block=28).shape == (8, 8)  # block clamped to the frame


def test_clip_score_averages_strided_terms_and_drops_out_of_range_ones():
    diffs = np.array([1.0, 2, 3, 4, 5, 6])
    scores = clip_scores(diffs, clip_len=2, stride=2)
    np.testing.assert_allclose(scores, [2, 3, 4, 5, 2.5, 3])  # (D_s + D_{s+2}) / 2; only D_s near the end, still / 2
    assert choose_starts(scores) == [2, 3]  # strictly above the median 3
    assert choose_starts(np.ones(5)) == []  # nothing above the median of equal scores


def _square_flow(n: int, directions: list[tuple[float, float]], size: int = 32) -> np.ndarray:
    """(n, size, size, 2) flow: an 8x8 square moving by 3 px in the given direction, zero around it."""
    flow = np.zeros((n, size, size, 2), np.float32)
    for t, (du, dv) in enumerate(directions):
        flow[t, 12:20, 12:20] = (3 * du, 3 * dv)
    return flow


def test_frame_differences_are_zero_for_steady_motion_and_positive_when_it_changes():
    steady = differential_scores(_square_flow(4, [(1, 0)] * 4), block=8)
    assert np.allclose(steady, 0)
    turning = differential_scores(_square_flow(3, [(1, 0), (0, 1), (1, 0)]), block=8)
    assert turning[0] > 1 and turning[1] > 1 and turning[2] == 0  # the last map is duplicated
    dirs = [(1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (1, 0), (0, 1)]
    np.testing.assert_allclose(differential_scores(_square_flow(7, dirs), block=8, chunk=2),
                               differential_scores(_square_flow(7, dirs), block=8))  # chunking changes nothing


def test_mds_keeps_the_more_dynamic_half_of_the_clips():
    # 20 frames: steady rightward motion for 10, then the direction flips every frame
    dirs = [(1, 0)] * 10 + [(1, 0) if t % 2 else (-1, 0) for t in range(10)]
    chosen = video_chosen_starts(_square_flow(20, dirs), clip_len=2, stride=2, block=8)
    # clips starting in the steady half only see zero differences (starts 0..6 have both terms steady)
    assert chosen and min(chosen) >= 7
    assert set(range(9, 17)) <= set(chosen)  # both terms inside the flipping part
    assert len(chosen) <= 10  # at most half (strictly above the median)


# ------------------------------------------------------------------ the data-set pass and mds.json


def _write_cache(root, videos: dict[str, np.ndarray]) -> None:
    """A flow cache in the harness layout: flow_meta.json and quantised u/v JPEGs (n - 1 per video)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "flow_meta.json").write_text(json.dumps({"algorithm": "dis", "bound": 20.0, "short_side": None, "version": 1}))
    for key, flow in videos.items():
        q = quantize_flow(flow)
        for channel, name in ((0, "u"), (1, "v")):
            folder = root / name / key
            folder.mkdir(parents=True)
            for k, frame in enumerate(q[..., channel], start=1):
                cv2.imwrite(str(folder / f"frame{k:06d}.jpg"), np.ascontiguousarray(frame), [cv2.IMWRITE_JPEG_QUALITY, 100])


def test_compute_mds_writes_chosen_starts_and_settings(tmp_path):
    dirs = [(1, 0)] * 10 + [(1, 0) if t % 2 else (-1, 0) for t in range(9)]
    _write_cache(tmp_path / "flow", {"v_a": _square_flow(19, dirs), "v_b": _square_flow(19, dirs[::-1])})
    result = compute_mds(["v_a", "v_b", "v_missing"], tmp_path / "flow", clip_len=2, stride=2, block=8, workers=1, progress=False)
    on_disk = load_mds(tmp_path / "flow")
    assert on_disk == json.loads(json.dumps(result))
    assert on_disk["settings"]["clip_len"] == 2 and on_disk["settings"]["stride"] == 2 and on_disk["settings"]["block"] == 8
    assert set(on_disk["videos"]) == {"v_a", "v_b"} and list(on_disk["failed"]) == ["v_missing"]
    a = on_disk["videos"]["v_a"]
    assert a["num_frames"] == 20  # 19 flow frames -> 20 RGB frames
    # the same as scoring the flow read back from the cache (RGB index t -> flow t -> t+1, last one repeated)
    flow = dequantize_flow(read_flow(tmp_path / "flow", "v_a", np.arange(20)))
    assert a["chosen"] == video_chosen_starts(flow, clip_len=2, stride=2, block=8)
    assert a["chosen"] and min(a["chosen"]) >= 7
    assert min(on_disk["videos"]["v_b"]["chosen"]) < 7  # reversed video: the dynamic part comes first


def test_a_missing_mds_file_names_the_file_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mds\.json.*vsbench data mds"):
        load_mds(tmp_path)
    videos = SimpleNamespace(records=[SimpleNamespace(path="/x/v_a.avi", ok=True)])
    request = SimpleNamespace(flow_root=str(tmp_path))
    assert "mds" in list_samplers()
    with pytest.raises(FileNotFoundError, match="vsbench data mds"):
        build_sampler("mds", videos, request)


# ------------------------------------------------------------------ the sampler


def test_key_snaps_to_the_nearest_chosen_start_scanning_from_zero():
    chosen = np.array([10, 20])
    assert [_snap(t, chosen) for t in (-3, 2, 5, 6, 15, 16, 40)] == [0, 0, 0, 10, 10, 20, 20]


def test_sampler_puts_the_query_on_chosen_starts_with_the_originals_retry_rule():
    spec = ClipSpec(frames=4, stride=2, clips=2)
    chosen = [10, 20, 30]
    rng = np.random.default_rng(0)
    queries, keys = [], []
    for _ in range(400):
        idx = mds_clips(100, chosen, spec, rng)
        assert idx.shape == (2, 4) and idx.dtype == np.int64
        assert np.all(np.diff(idx, axis=1) == 2)
        queries.append(int(idx[0, 0]))
        keys.append(int(idx[1, 0]))
    assert set(queries) == {10, 20, 30}
    # 11 uniform draws over the 93 legal starts, else chosen[0]: P(10) = 1/3 p + (1 - p), p = 1 - (90/93)^11
    p = 1 - (90 / 93) ** 11
    assert abs(queries.count(10) / 400 - (p / 3 + 1 - p)) < 0.08
    # key: query + U{-8..8} snapped to the nearest of [0, 10, 20, 30]
    assert set(keys) <= {0, 10, 20, 30} and all(abs(k - q) <= 10 for q, k in zip(queries, keys))
    assert any(k != q for q, k in zip(queries, keys))


def test_sampler_fallback_first_chosen_start_loops_and_empty_list_is_random():
    spec = ClipSpec(frames=4, stride=2, clips=2)
    idx = mds_clips(100, [95], spec, np.random.default_rng(1))  # 95 can never be drawn (room = 93)
    assert idx[0].tolist() == [95, 97, 99, 1]  # the original's chosen_idx[0], looping past the end
    free = mds_clips(100, [], spec, np.random.default_rng(2))
    assert free.shape == (2, 4)
    with pytest.raises(ValueError, match="clips must be 2"):
        mds_clips(100, [1], ClipSpec(frames=4, stride=2, clips=3), np.random.default_rng(0))


def test_registered_sampler_reads_mds_json_by_video_key(tmp_path):
    (tmp_path / MDS_NAME).write_text(json.dumps({"videos": {"v_a": {"num_frames": 100, "chosen": [40]},
                                                            "v_b": {"num_frames": 100, "chosen": [4]}}}))
    videos = SimpleNamespace(records=[SimpleNamespace(path=f"/d/{k}.avi", ok=True) for k in ("v_a", "v_b")])
    sampler = build_sampler("mds", videos, SimpleNamespace(flow_root=str(tmp_path)))
    spec = ClipSpec(frames=2, stride=3, clips=2)
    assert sampler(0, 100, spec, np.random.default_rng(0))[0, 0] == 40
    assert sampler(1, 100, spec, np.random.default_rng(0))[0, 0] == 4
    videos.records.append(SimpleNamespace(path="/d/v_c.avi", ok=True))
    with pytest.raises(ValueError, match="v_c"):
        build_sampler("mds", videos, SimpleNamespace(flow_root=str(tmp_path)))
