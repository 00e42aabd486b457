"""Clip samplers: the VCOP/IIC evaluation formula, random clips in bounds, multi-rate, short videos."""

import numpy as np
import pytest

from harness.data.sampling import ClipSpec, random_clips, uniform_clips


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
