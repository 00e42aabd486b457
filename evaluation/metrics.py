"""Classification metrics shared by the kNN classifier and the linear probe.

Both classifiers produce one score per class and per test video; turning scores into numbers
happens here, once, so that ``top1``/``top5``/``mean_class_acc`` mean the same thing under every
protocol. Ranking is deterministic: among equal scores the smaller class index ranks first
(a stable sort, not ``torch.topk``, whose order of ties is unspecified), so a tie cannot make a
number differ between two runs or between CPU and GPU.

``mean_class_acc`` is the mean over the classes present in ``labels`` of each class's top-1
accuracy; it differs from ``top1`` on imbalanced test sets (HMDB51, UCF101 splits are mildly
imbalanced).
"""

from __future__ import annotations

import numpy as np
import torch

TOPK = 5


def rank_classes(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(N, C) scores -> (N, min(k, C)) class indices, best first, ties broken by smaller index."""
    k = min(k, scores.shape[1])
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def classification_metrics(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Top-1, top-5 (top-C when there are fewer than 5 classes) and mean per-class accuracy.

    ``scores`` is (N, C), higher is better (probabilities, logits or vote weights); ``labels`` is
    (N,) with values in [0, C). Returns fractions in [0, 1].
    """
    scores = torch.as_tensor(scores).detach().cpu()  # small; the CPU gives the same numbers everywhere
    labels = torch.as_tensor(labels).detach().cpu().long()
    _check(scores, labels)
    ranked = rank_classes(scores, TOPK)
    hits = ranked == labels[:, None]
    top1 = hits[:, 0].double()
    per_class_total = torch.bincount(labels, minlength=scores.shape[1]).double()
    per_class_right = torch.bincount(labels, weights=top1, minlength=scores.shape[1])
    present = per_class_total > 0
    return {
        "top1": top1.mean().item(),
        "top5": hits.any(dim=1).double().mean().item(),
        "mean_class_acc": (per_class_right[present] / per_class_total[present]).mean().item(),
    }


def top1_hits(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per-sample top-1 outcome, float64 (N,): 1.0 where the best-ranked class is the label, else 0.0.

    Ranked as :func:`classification_metrics` ranks (ties: smaller class index), so its mean is that
    function's ``top1``; it is the vector the bootstrap interval of ``top1`` resamples."""
    scores = torch.as_tensor(scores).detach().cpu()
    labels = torch.as_tensor(labels).detach().cpu().long()
    _check(scores, labels)
    return (rank_classes(scores, 1)[:, 0] == labels).double()


def _check(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.ndim != 2 or labels.ndim != 1 or len(scores) != len(labels):
        raise ValueError(f"expected scores (N, C) and labels (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}")
    if len(labels) == 0:
        raise ValueError("no samples to score")
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}), got [{labels.min().item()}, {labels.max().item()}]")
