"""Clip samplers: the VCOP/IIC evaluation formula, random clips in bounds, multi-rate, short videos."""

import numpy as np
import pytest

from core.data.sampling import random_clips, uniform_clips
from core.data.request import ClipSpec


def test_uniform_clips_match_the_vcop_iic_formula_by_hand():
    # linspace(8, 92, 10) = 8, 17.33, 26.67, 36, 45.33, 54.67, 64, 73.33, 82.67, 92; start = int(c - 8)
    clips = uniform_clips(100, frames=16, clips=10)
    assert clips[:, 0].tolist() == [0, 9, 18, 28, 37, 46, 56, 65, 74, 84]
    assert (np.diff(clips, axis=1) == 1).all()
    assert clips[-1, -1] == 99


@pytest.mark.parametrize("n", [16, 17, 31, 175, 1000])
def test_uniform_clips_equal_reference_loop(n):
    reference = [int(c - 16 / 2) for c in np.linspace(16 / 2, n - 16 / 2, 10)]
    assert uniform_clips(n, 16, 10)[:, 0].tolist() == reference


def test_uniform_clips_with_stride_cover_the_video():
    clips = uniform_clips(200, frames=16, clips=5, stride=2)
    assert clips[0, 0] == 0 and clips[-1, -1] == 199
    assert (np.diff(clips, axis=1) == 2).all()


def test_short_video_loops_or_clamps():
    assert uniform_clips(10, frames=16, clips=2, short="loop")[0].tolist() == [i % 10 for i in range(16)]
    assert uniform_clips(10, frames=16, clips=2, short="clamp")[0].tolist() == [min(i, 9) for i in range(16)]
    rng = np.random.default_rng(0)
    looped = random_clips(5, ClipSpec(frames=8, short="loop"), rng)
    assert looped.max() < 5 and (np.diff(looped[0]) % 5 == 1).all()


def test_random_clips_stay_in_bounds_and_are_reproducible():
    spec = ClipSpec(frames=16, stride=2, clips=3)
    a = random_clips(100, spec, np.random.default_rng(7))
    b = random_clips(100, spec, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 16) and a.min() >= 0 and a.max() < 100
    assert (np.diff(a, axis=1) == 2).all()
    starts = {int(random_clips(100, spec, np.random.default_rng(s))[0, 0]) for s in range(200)}
    assert min(starts) == 0 and max(starts) == 100 - 31  # every start where the clip fits is reachable


def test_multi_rate_strides_are_drawn_per_clip_within_the_range():
    spec = ClipSpec(frames=16, stride=(1.0, 3.0), clips=50)
    clips = random_clips(400, spec, np.random.default_rng(1))
    spans = clips[:, -1] - clips[:, 0]
    assert spans.min() >= 15 and spans.max() <= 45
    assert len(set(spans.tolist())) > 10


def test_invalid_specs_name_the_field():
    with pytest.raises(ValueError, match="stride"):
        ClipSpec(stride=0)
    with pytest.raises(ValueError, match="short"):
        ClipSpec(short="wrap")


# ----------------------------------------------------------------------------- named samplers


def test_overview_clips_split_one_window_into_a_b_and_half_rate_g():
    from core.data.sampling import overview_clips

    for seed in range(20):
        a, b, g = overview_clips(200, 8, (1.0, 3.0), np.random.default_rng(seed))
        window = np.concatenate([a, b])
        steps = np.diff(window)
        assert (steps >= 1).all() and steps.max() - steps.min() <= 1  # one rate, rounded per frame
        assert g.tolist() == window[::2].tolist()  # position m of G = position 2m of [A | B]
        assert window[-1] < 200


def test_overview_rate_is_capped_by_the_video_length():
    from core.data.sampling import overview_clips

    # n = 40, 2 x 8 = 16 frames: sr <= 40 / 16 = 2.5 even though the range allows 3
    for seed in range(50):
        a, b, _ = overview_clips(40, 8, (1.0, 3.0), np.random.default_rng(seed))
        window = np.concatenate([a, b])
        assert window[-1] - window[0] <= round(2.5 * 15) and window[-1] < 40
    # too short for even rate 1: loops, still in range
    a, b, g = overview_clips(10, 8, (1.0, 3.0), np.random.default_rng(0))
    assert max(a.max(), b.max(), g.max()) < 10


def test_clips_with_static_repeat_one_frame_at_the_same_offset_of_two_different_windows():
    from core.data.sampling import clips_with_static

    spec = ClipSpec(frames=4, stride=2, clips=4)  # "span" windows of 7 raw frames
    offsets = set()
    for seed in range(40):
        q, k, sq, sk = clips_with_static(30, spec, np.random.default_rng(seed), window="span")
        assert q[0] != k[0]
        assert (np.diff(q) == 2).all() and (np.diff(k) == 2).all()
        assert len(set(sq)) == 1 and len(set(sk)) == 1
        assert sq[0] - q[0] == sk[0] - k[0]  # the same raw offset in both windows
        offsets.add(int(sq[0] - q[0]))
    assert offsets == set(range(7))  # any raw frame of the window, odd ones included


def _static_starts_and_offsets(n: int, spec: ClipSpec, window: str, seeds: int) -> tuple[set[int], set[int]]:
    """Every q/k start and static offset ``clips_with_static`` produced over ``seeds`` seeds."""
    from core.data.sampling import clips_with_static

    starts, offsets = set(), set()
    for seed in range(seeds):
        q, k, sq, sk = clips_with_static(n, spec, np.random.default_rng(seed), window=window)
        assert (np.diff(q) == spec.stride).all() and max(q.max(), k.max(), sq.max(), sk.max()) < n
        starts |= {int(q[0]), int(k[0])}
        offsets.add(int(sq[0] - q[0]))
    return starts, offsets


@pytest.mark.parametrize(("n", "frames", "seeds"), [(12, 4, 400), (40, 16, 2000)])
def test_with_static_window_matches_dclr_videoclips_by_hand(n, frames, seeds):
    # DCLR: VideoClips(frames * stride = L frames, step 1) on n frames has n - L + 1 clips, starts
    # 0 .. n - L; static_idx = randint(0, L) is 0 .. L - 1. Stride 2: L = 8 (n=12: starts 0..4,
    # offsets 0..7) and L = 32 (n=40: 9 = n - 31 starts 0..8, offsets 0..31).
    spec = ClipSpec(frames=frames, stride=2, clips=4)
    length = 2 * frames
    assert _static_starts_and_offsets(n, spec, "full", seeds) == (set(range(n - length + 1)), set(range(length)))
    # vsbench's earlier rule, still reachable: the window ends at the last sampled frame (L - 1).
    assert _static_starts_and_offsets(n, spec, "span", seeds) == (set(range(n - length + 2)), set(range(length - 1)))


def test_with_static_samplers_need_their_window_and_name_the_window_choices():
    from core.data.sampling import clips_with_static, frames_needed

    spec = ClipSpec(frames=16, stride=2, clips=4)
    assert frames_needed("with_static", spec) == 32  # DCLR drops videos without one 32-frame clip
    assert frames_needed("with_static_span", spec) == 31
    with pytest.raises(ValueError, match=r"window must be one of \('full', 'span'\), got 'nope'"):
        clips_with_static(40, spec, np.random.default_rng(0), window="nope")


def test_sampler_registry_names_valid_choices_and_checks_the_clip_count(motionshapes_tiny):
    from core.data.datasets import open_dataset
    from core.data.request import LoadRequest
    from core.data.sampling import build_sampler, list_samplers

    videos = open_dataset(motionshapes_tiny, split=1, subset="train")
    assert {"random", "overview", "with_static"} <= set(list_samplers())
    with pytest.raises(KeyError, match="unknown clip sampler 'nope'.*overview"):
        build_sampler("nope", videos, LoadRequest())
    sample = build_sampler("overview", videos, LoadRequest())
    assert sample(0, 100, ClipSpec(frames=4, stride=(1, 2), clips=3), np.random.default_rng(0)).shape == (3, 4)
    with pytest.raises(ValueError, match="clips must be 3"):
        sample(0, 100, ClipSpec(frames=4, clips=2), np.random.default_rng(0))


def test_loader_uses_the_named_sampler(motionshapes_tiny):
    from core.data.datasets import open_dataset
    from core.data.loader import ClipDataset
    from core.data.request import LoadRequest

    videos = open_dataset(motionshapes_tiny, split=1, subset="train")
    request = LoadRequest(frames=4, stride=2, clips=4, sampler="with_static", decode_size=(32, 43))
    item = ClipDataset(videos, request, seed=3)[(0, 0)]
    idx = item["frame_indices"].numpy()
    assert item["rgb"].shape == (4, 4, 32, 43, 3)
    assert len(set(idx[2])) == 1 and (item["rgb"][2] == item["rgb"][2, :1]).all()  # a static clip
    with pytest.raises(ValueError, match="for training"):
        LoadRequest(sampler="with_static", mode="uniform")
