"""Weighted k-nearest-neighbour classification on frozen features (InstDisc style).

Protocol (:class:`~evaluation.protocols.KNNProtocol`, Wu et al. 2018, as in solo-learn and SVT):
every test video finds its k nearest train videos by cosine similarity s; each neighbour votes
for its class with weight exp(s / T); the class score is the sum of the votes for that class and
the prediction is the best-scoring class (equal scores: the smaller class index). Unlike a
majority vote, one very close neighbour can outvote several distant ones. The classifier has no
trained parameters and no hyper-parameter is chosen on any data (k and T are fixed by the
protocol), so the test split is only ever scored, and the same code doubles as a cheap monitor
during pretraining (:class:`OnlineKNN`).

Determinism: neighbours come from :func:`evaluation.retrieval.topk_neighbours` (ties: smaller
train index first), votes are accumulated one neighbour rank at a time (no two additions ever
race for the same score, so CUDA atomics cannot reorder a floating-point sum), and class ranking
breaks ties by class index (:func:`evaluation.metrics.classification_metrics`).

Top-1 comes with its 95% bootstrap interval over test videos (``top1_ci_low``, ``top1_ci_high``,
:mod:`core.uncertainty`), resampled from the per-video hits (prediction == label).
"""

from __future__ import annotations

import torch

from evaluation.metrics import classification_metrics, top1_hits
from evaluation.protocols import KNNProtocol
from evaluation.retrieval import Array, topk_neighbours
from core.uncertainty import with_interval


def knn_classify(
    train_feats: Array,
    train_labels: Array,
    test_feats: Array,
    k: int,
    temperature: float,
    *,
    num_classes: int | None = None,
    chunk: int = 4096,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Class scores (Nq, C) of the test features: sum over the k nearest train features of exp(s / T).

    ``num_classes`` defaults to ``max(train_labels) + 1``; classes no neighbour votes for score 0.
    Scores are float64 (exp(1 / T) exceeds the float32 range once T < 0.012).
    ``chunk`` and ``device`` are passed to :func:`~evaluation.retrieval.topk_neighbours`.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    labels = torch.as_tensor(train_labels).long()
    if len(labels) != len(train_feats):
        raise ValueError(f"{len(labels)} train labels for {len(train_feats)} train features")
    sims, neighbours = topk_neighbours(test_feats, train_feats, k, chunk=chunk, device=device)
    labels = labels.to(neighbours.device)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    votes, weights = labels[neighbours], torch.exp(sims.double() / temperature)  # float32 overflows for T < 0.012
    scores = torch.zeros(len(neighbours), num_classes, dtype=weights.dtype, device=weights.device)
    for rank in range(neighbours.shape[1]):  # one vote per row per step: a deterministic sum
        scores.scatter_add_(1, votes[:, rank : rank + 1], weights[:, rank : rank + 1])
    return scores


def evaluate_knn(
    protocol: KNNProtocol,
    train_feats: Array,
    train_labels: Array,
    test_feats: Array,
    test_labels: Array,
    *,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """{"top1", "top5", "mean_class_acc"} of the weighted kNN classifier of ``protocol`` on the test split,
    plus ``top1_ci_low``/``top1_ci_high``: the 95% bootstrap interval of top-1 over test videos."""
    train_labels, test_labels = torch.as_tensor(train_labels).long(), torch.as_tensor(test_labels).long()
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_classify(
        train_feats, train_labels, test_feats, protocol.k, protocol.temperature, num_classes=num_classes, device=device
    )
    # the interval comes from the per-video hits; the point values stay classification_metrics' own
    return {**with_interval("top1", top1_hits(scores, test_labels)), **classification_metrics(scores, test_labels)}


class OnlineKNN:
    """kNN accuracy as a pretraining monitor: the harness calls :meth:`evaluate` every few epochs.

    A thin wrapper over :func:`evaluate_knn` that remembers the protocol and the device, so the
    monitored numbers are computed exactly as the final kNN evaluation is.
    """

    def __init__(self, protocol: KNNProtocol | None = None, *, device: str | torch.device | None = None) -> None:
        self.protocol = protocol if protocol is not None else KNNProtocol()
        self.device = device

    def evaluate(self, train_feats: Array, train_labels: Array, test_feats: Array, test_labels: Array) -> dict[str, float]:
        """:func:`evaluate_knn`'s metrics of the current features (gradients are not tracked)."""
        return evaluate_knn(self.protocol, train_feats, train_labels, test_feats, test_labels, device=self.device)
