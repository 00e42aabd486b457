"""Uncertainty of a test-set metric: a percentile bootstrap interval over test videos.

With a few hundred test videos, one seed's top-1 or R@1 moves by several points from the
choice of test videos alone, so every single-seed number in a table carries a 95% interval.
The interval resamples the per-video outcomes (hit or miss, or any per-video score) with
replacement and takes the 2.5th and 97.5th percentiles of the resampled means (Efron's
percentile bootstrap). The resampling uses a fixed seed, so the same outcomes always give the
same interval: no randomness at test time.

Metrics are logged with their interval as ``<metric>_ci_low`` and ``<metric>_ci_high`` (same
units as the metric), see :func:`with_interval`.
"""

from __future__ import annotations

import numpy as np
import torch

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0


def bootstrap_interval(values: np.ndarray | torch.Tensor, *, level: float = LEVEL, resamples: int = RESAMPLES,
                       seed: int = SEED) -> tuple[float, float]:
    """The ``level`` percentile-bootstrap interval of the mean of per-video ``values``.

    ``values`` is one number per test video (1.0/0.0 for hit/miss). An empty input raises."""
    x = _as_array(values)
    if x.size == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    if not np.isfinite(x).all():
        raise ValueError(f"bootstrap_interval: {int((~np.isfinite(x)).sum())} of {x.size} values are NaN or infinite")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 256):  # chunks bound the memory at 256 x n
        n = min(256, resamples - start)
        means[start:start + n] = x[rng.integers(0, x.size, size=(n, x.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def with_interval(name: str, values: np.ndarray | torch.Tensor) -> dict[str, float]:
    """``{name: mean, name_ci_low: ..., name_ci_high: ...}`` of per-video ``values``."""
    x = _as_array(values)
    low, high = bootstrap_interval(x)
    return {name: float(x.mean()), f"{name}_ci_low": low, f"{name}_ci_high": high}


def _as_array(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-video values as a flat float64 array (tensors are moved to the host)."""
    return np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64).ravel()
