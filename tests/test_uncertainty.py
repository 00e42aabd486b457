"""The percentile bootstrap interval against cases whose resampled means are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.uncertainty import bootstrap_interval, with_interval


def _binomial_quantile(n: int, q: float) -> float:
    """The q-quantile of Binomial(n, 1/2) / n: the smallest m / n with P(X <= m) >= q."""
    cdf = 0.0
    for m in range(n + 1):
        cdf += math.comb(n, m) / 2**n
        if cdf >= q:
            return m / n
    return 1.0


def test_constant_values_give_a_point_interval():
    assert bootstrap_interval(np.ones(7)) == (1.0, 1.0)
    assert bootstrap_interval(np.zeros(3)) == (0.0, 0.0)
    assert bootstrap_interval([0.25]) == (0.25, 0.25)  # a single video: every resample is that video


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("level", [0.95, 0.5])
def test_resampled_means_of_half_hits_follow_the_binomial(seed, level):
    # Five hits among ten videos: a resample's hit count is Binomial(10, 1/2). Its exact quantiles
    # at 2.5% / 97.5% are 2 and 8 (P(X <= 1) = 1.1%, P(X <= 2) = 5.5%), at 25% / 75% they are 4
    # and 6 (P(X <= 3) = 17%, P(X <= 4) = 38%). With 2000 resamples the empirical CDF is within
    # about 0.005 of the exact one, at least 5 standard errors from any of those jumps, so the
    # empirical quantiles (and np.quantile's interpolation between neighbours) land exactly on them.
    values = np.array([0.0, 1.0] * 5)
    tail = (1 - level) / 2
    expected = (_binomial_quantile(10, tail), _binomial_quantile(10, 1 - tail))
    assert expected == ((0.2, 0.8) if level == 0.95 else (0.4, 0.6))
    assert bootstrap_interval(values, level=level, seed=seed) == pytest.approx(expected, abs=1e-12)


def test_tiny_sample_matches_exact_enumeration():
    # Two videos, one hit: resampled means 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4; the 2.5%
    # and 97.5% points of that distribution are 0 and 1.
    assert bootstrap_interval(np.array([1.0, 0.0])) == (0.0, 1.0)


def test_deterministic_and_independent_of_input_type():
    values = np.random.default_rng(3).random(300) < 0.4
    first = bootstrap_interval(values)
    assert bootstrap_interval(values) == first
    assert bootstrap_interval(torch.as_tensor(values)) == first
    assert bootstrap_interval(values.astype(float).tolist()) == first
    assert bootstrap_interval(values, seed=1) != first  # the seed is what fixes the resamples


def test_level_widens_the_interval_and_brackets_the_mean():
    values = np.random.default_rng(4).random(200) < 0.3
    mean = values.mean()
    narrow, wide = bootstrap_interval(values, level=0.5), bootstrap_interval(values, level=0.99)
    default = bootstrap_interval(values)
    assert wide[0] < default[0] < narrow[0] < mean < narrow[1] < default[1] < wide[1]
    # the normal approximation of a proportion: mean +- 1.96 sqrt(p (1 - p) / n), within 1.5 points
    half = 1.96 * math.sqrt(mean * (1 - mean) / len(values))
    assert default == pytest.approx((mean - half, mean + half), abs=0.015)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_interval(np.array([]))
    with pytest.raises(ValueError, match="at least one value"):
        with_interval("top1", torch.empty(0))
    for level in (0.0, 1.0, 95):
        with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
            bootstrap_interval(np.ones(3), level=level)
    with pytest.raises(ValueError, match="1 of 3 values are NaN or infinite"):
        bootstrap_interval(np.array([1.0, float("nan"), 0.0]))


def test_with_interval_names_the_keys_after_the_metric():
    values = torch.tensor([1.0, 0.0, 1.0, 1.0])
    result = with_interval("R1", values)
    assert list(result) == ["R1", "R1_ci_low", "R1_ci_high"]
    assert result["R1"] == 0.75
    assert (result["R1_ci_low"], result["R1_ci_high"]) == bootstrap_interval(values)
