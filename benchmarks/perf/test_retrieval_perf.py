"""Time of class-level retrieval: 10k test queries against a 10k train gallery, 512-d, k = 50.

Run: ``.venv/bin/python -m pytest benchmarks/perf/test_retrieval_perf.py --benchmark-only``
(the plain test run only collects ``tests/``). Each benchmark times
:func:`~evaluation.retrieval.topk_neighbours` followed by :func:`~evaluation.retrieval.recall_at_k`
for ks = (1, 5, 10, 20, 50) and records ``extra_info["queries_per_s"]``. The features live on the
device being measured (as they do after :mod:`evaluation.features` on that device); the CUDA case
is skipped without a GPU.

The baseline is the naive version: one float32 similarity matrix and a plain ``torch.topk`` —
no chunking (the whole Nq x Ng matrix exists at once), no tie rule and a result that depends on
chunk size and device in its last bits. Its time shows what the float64, chunked,
tie-broken search costs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evaluation.retrieval import recall_at_k, topk_neighbours

N, D, K, CLASSES = 10_000, 512, 50, 101
KS = (1, 5, 10, 20, 50)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


def _data(device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    test_labels, train_labels = torch.randint(0, CLASSES, (N,), generator=g), torch.randint(0, CLASSES, (N,), generator=g)
    centres = torch.randn(CLASSES, D, generator=g)
    test = centres[test_labels] + 2.0 * torch.randn(N, D, generator=g)
    train = centres[train_labels] + 2.0 * torch.randn(N, D, generator=g)
    return tuple(t.to(device) for t in (test, test_labels, train, train_labels))


def _record(benchmark) -> None:
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["queries_per_s"] = N / benchmark.stats.stats.mean


@pytest.mark.parametrize("device", DEVICES)
def test_retrieval(benchmark, device):
    test, test_labels, train, train_labels = _data(device)

    def run() -> dict[str, float]:
        _, idx = topk_neighbours(test, train, K)
        return recall_at_k(test_labels, train_labels, idx, KS)  # .item() synchronises CUDA

    recall = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert 0.0 < recall["R1"] <= recall["R50"] <= 1.0
    _record(benchmark)


@pytest.mark.parametrize("device", DEVICES)
def test_retrieval_naive_baseline(benchmark, device):
    test, test_labels, train, train_labels = _data(device)

    def run() -> dict[str, float]:
        idx = (F.normalize(test, dim=1) @ F.normalize(train, dim=1).T).topk(K, dim=1).indices
        return recall_at_k(test_labels, train_labels, idx, KS)

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    _record(benchmark)
