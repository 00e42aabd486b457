"""Motion Differential Sampling (core/data/mds.py): scoring, the median rule, mds.json, the sampler."""

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from core.data.mds import (
    MDS_NAME,
    MDS_VERSION,
    _sobel,
    attention_map,
    choose_starts,
    clip_scores,
    compute_mds,
    differential_scores,
    load_mds,
    mds_clips,
    motion_map,
    snap_nearest,
    snap_official,
    video_chosen_starts,
)
from core.data.modalities import dequantize_flow, quantize_flow, read_flow
from core.data.sampling import build_sampler, list_samplers
from core.data.request import ClipSpec


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


def test_official_key_snap_scans_from_zero_and_is_not_the_nearest_start():
    # MSCL's loading_mscl.py: pick = 0; for c in chosen (ascending): pick = c if |c - t| < |c - pick|
    # t = 12 over [3, 4, 5, 30, 31]: 3: 9 < 3 no; 4: 8 < 4 no; 5: 7 < 5 no; 30: 18 < 30 yes; 31: 19 < 1 no -> 30
    assert snap_official(12, [3, 4, 5, 30, 31]) == 30 and snap_nearest(12, [3, 4, 5, 30, 31]) == 5
    # t = 50 over [20, 21, 22]: 30 < 20, 29 < 21, 28 < 22 all false -> the pick stays 0
    assert snap_official(50, [20, 21, 22]) == 0 and snap_nearest(50, [20, 21, 22]) == 22
    # over [10, 20] (c replaces p exactly when p < t < 2c - p):
    #   t = -3: 13 < 10 no, 23 < 20 no -> 0      t = 2: 8 < 10 -> 10, 18 < 10 no -> 10
    #   t = 5: 5 < 10 -> 10, 15 < 10 no -> 10    t = 6: 4 < 10 -> 10, 14 < 10 no -> 10
    #   t = 15: 5 < 10 -> 10, 5 < 10 -> 20      t = 16: 6 < 10 -> 10, 4 < 10 -> 20
    #   t = 30: 20 < 10 no, 10 < 20 -> 20        t = 40: 30 < 10 no, 20 < 20 no -> 0
    targets = (-3, 2, 5, 6, 15, 16, 30, 40)
    assert [snap_official(t, [10, 20]) for t in targets] == [0, 10, 10, 10, 20, 20, 20, 0]
    # nearest of [0, 10, 20], the earlier on ties (5 -> 0, 15 -> 10)
    assert [snap_nearest(t, [10, 20]) for t in targets] == [0, 0, 0, 10, 10, 20, 20, 20]
    assert snap_official(20, [10, 20]) == 20 and snap_official(10, [10, 20]) == 10  # a chosen target stays
    assert snap_official(7, []) == 0 and snap_nearest(7, []) == 0


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
    # key: query + U{-8..8} snapped by the original's scan; from [q - 8, q + 8] it lands within 10 of q
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
    (tmp_path / MDS_NAME).write_text(json.dumps({"version": MDS_VERSION,
                                                 "videos": {"v_a": {"num_frames": 100, "chosen": [40]},
                                                            "v_b": {"num_frames": 100, "chosen": [4]}}}))
    videos = SimpleNamespace(records=[SimpleNamespace(path=f"/d/{k}.avi", ok=True) for k in ("v_a", "v_b")])
    sampler = build_sampler("mds", videos, SimpleNamespace(flow_root=str(tmp_path)))
    spec = ClipSpec(frames=2, stride=3, clips=2)
    assert sampler(0, 100, spec, np.random.default_rng(0))[0, 0] == 40
    assert sampler(1, 100, spec, np.random.default_rng(0))[0, 0] == 4
    videos.records.append(SimpleNamespace(path="/d/v_c.avi", ok=True))
    with pytest.raises(ValueError, match="v_c"):
        build_sampler("mds", videos, SimpleNamespace(flow_root=str(tmp_path)))


def _replayed_shift(seed: int, room: int, query: int, shift: int) -> int:
    """The key shift that ``mds_clips`` draws from ``default_rng(seed)`` when ``query`` is the only
    drawable chosen start: up to 11 draws in [0, room) until one is ``query``, then U{-shift..shift}."""
    rng = np.random.default_rng(seed)
    for _ in range(11):
        if int(rng.integers(0, room)) == query:
            break
    return int(rng.integers(-shift, shift + 1))


def test_sampler_end_to_end_snaps_the_key_by_the_chosen_rule():
    # 100 frames, 4 frames 2 apart: room 93 legal starts, so 95 is never drawn and the query is
    # always 60 (drawn, or the fallback chosen[0]); the key target is 60 + U{-8..8}.
    # official: 60 replaces 0 (0 < t < 120), then 95 replaces 60 when 60 < t < 130, i.e. shift > 0
    # nearest: 60 for every target in [52, 68]
    spec = ClipSpec(frames=4, stride=2, clips=2)
    keys = set()
    for seed in range(40):
        official = mds_clips(100, [60, 95], spec, np.random.default_rng(seed))
        nearest = mds_clips(100, [60, 95], spec, np.random.default_rng(seed), key_snap="nearest")
        assert official[0].tolist() == nearest[0].tolist() == [60, 62, 64, 66]
        shift = _replayed_shift(seed, 93, 60, 8)
        assert official[1].tolist() == ([95, 97, 99, 1] if shift > 0 else [60, 62, 64, 66]), (seed, shift)
        assert nearest[1].tolist() == [60, 62, 64, 66]
        keys.add(int(official[1, 0]))
    assert keys == {60, 95}
    with pytest.raises(ValueError, match="key_snap must be one of official, nearest"):
        mds_clips(100, [60], spec, np.random.default_rng(0), key_snap="closest")


def test_mds_and_mds_nearest_samplers_share_draws_and_differ_only_in_the_key(tmp_path):
    (tmp_path / MDS_NAME).write_text(json.dumps({"version": MDS_VERSION, "videos": {"v_a": {"num_frames": 100, "chosen": [60, 95]}}}))
    videos = SimpleNamespace(records=[SimpleNamespace(path="/d/v_a.avi", ok=True)])
    request = SimpleNamespace(flow_root=str(tmp_path))
    assert {"mds", "mds_nearest"} <= set(list_samplers())
    official, nearest = build_sampler("mds", videos, request), build_sampler("mds_nearest", videos, request)
    spec = ClipSpec(frames=4, stride=2, clips=2)
    a = [official(0, 100, spec, np.random.default_rng(s)) for s in range(40)]
    b = [nearest(0, 100, spec, np.random.default_rng(s)) for s in range(40)]
    assert all(x[0, 0] == y[0, 0] == 60 for x, y in zip(a, b))
    assert {int(x[1, 0]) for x in a} == {60, 95} and {int(y[1, 0]) for y in b} == {60}


def test_an_mds_file_of_another_version_is_refused_with_the_command(tmp_path):
    # version 1 files were scored with the wrong yellow -> green colours: their chosen starts are stale
    (tmp_path / MDS_NAME).write_text(json.dumps({"version": 1, "videos": {"v_a": {"num_frames": 100, "chosen": [40]}}}))
    videos = SimpleNamespace(records=[SimpleNamespace(path="/d/v_a.avi", ok=True)])
    for name in ("mds", "mds_nearest"):
        with pytest.raises(ValueError, match=r"mds\.json has version 1.*recompute it with `vsbench data mds"):
            build_sampler(name, videos, SimpleNamespace(flow_root=str(tmp_path)))


@pytest.mark.parametrize("stride, ok", [(4, True), (3, False), ((2, 4), False)])
def test_an_mds_file_screened_at_another_stride_is_refused(tmp_path, stride, ok):
    """Chosen starts are the dynamic ones for clips at the screening stride: sampling at another
    stride would silently use another clip's screening."""
    (tmp_path / MDS_NAME).write_text(json.dumps({"version": MDS_VERSION, "settings": {"clip_len": 8, "stride": 4, "block": 28},
                                                 "videos": {"v_a": {"num_frames": 100, "chosen": [40]}}}))
    videos = SimpleNamespace(records=[SimpleNamespace(path="/d/v_a.avi", ok=True)])
    request = SimpleNamespace(flow_root=str(tmp_path), stride=stride)
    if ok:
        assert build_sampler("mds", videos, request)(0, 100, ClipSpec(frames=8, stride=4, clips=2), np.random.default_rng(0))[0, 0] == 40
    else:
        with pytest.raises(ValueError, match=r"mds\.json was screened with clips 4 frames apart, but this run samples them .* apart.*"
                                             r"--stride"):
            build_sampler("mds", videos, request)


def test_mscl_key_snap_picks_the_sampler_and_is_validated():
    import methods.mscl  # also registers "mscl"
    from backbones import create_backbone
    from methods.base import create_method

    def sampler(**overrides):
        overrides = {"frames": 4, "crop": 32, **overrides}
        return create_method("mscl", create_backbone("r3d_tiny"), dataset_size=16, overrides=overrides).data_spec().sampler

    assert sampler() == "mds" and sampler(key_snap="nearest") == "mds_nearest"
    assert sampler(key_snap="nearest", mds=False) is None
    with pytest.raises(ValueError, match="key_snap must be one of official, nearest, got 'closest'"):
        methods.mscl.MSCL.Config(key_snap="closest")
