"""Weighted kNN: a hand example where the exp(s/T) vote overrules the majority vote."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluation.knn import OnlineKNN, evaluate_knn, knn_classify
from evaluation.protocols import KNNProtocol
from core.uncertainty import bootstrap_interval

T = 0.07


def _at(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


# Train videos on the unit circle: angle (class)
#   t0: 0 (0)   t1: 60 (1)   t2: -60 (1)   t3: 180 (0)   t4: 90 (2)
TRAIN = torch.tensor([_at(0), _at(60), _at(-60), _at(180), _at(90)])
TRAIN_LABELS = torch.tensor([0, 1, 1, 0, 2])
# q0 at 0 deg: 3 nearest t0 (s=1, class 0), t1 and t2 (s=cos 60 = 0.5, class 1).
#   majority vote: class 1 (2 votes to 1); weighted: class 0 exp(1/T) = 1.6e6 > class 1 2 exp(0.5/T) = 2.5e3.
# q1 at 120 deg: 3 nearest t4 (cos 30, class 2), t1 (cos 60, class 1), t3 (cos 60, class 0): one vote each.
TEST = torch.tensor([_at(0), _at(120)])


def test_scores_are_sums_of_exp_similarity_over_temperature():
    scores = knn_classify(TRAIN, TRAIN_LABELS, TEST, 3, T, num_classes=4)
    w = lambda degrees: math.exp(math.cos(math.radians(degrees)) / T)  # noqa: E731
    expected = torch.tensor([[w(0), 2 * w(60), 0.0, 0.0], [w(60), w(60), w(30), 0.0]], dtype=torch.float64)
    assert torch.allclose(scores, expected, rtol=1e-5)  # similarities are float32: s/T loses ~1e-6 relative


def test_weighted_vote_differs_from_majority_vote():
    scores = knn_classify(TRAIN, TRAIN_LABELS, TEST[:1], 3, T)
    majority = torch.bincount(torch.tensor([0, 1, 1]), minlength=3)  # the classes of q0's 3 neighbours
    assert majority.argmax().item() == 1
    assert scores.argmax(dim=1).tolist() == [0]
    assert scores.shape == (1, 3)  # num_classes defaults to max(train label) + 1


def test_evaluate_knn_and_online_monitor():
    protocol = KNNProtocol(k=3, temperature=T)
    right = evaluate_knn(protocol, TRAIN, TRAIN_LABELS, TEST, torch.tensor([0, 2]))
    assert right == {"top1": 1.0, "top1_ci_low": 1.0, "top1_ci_high": 1.0, "top5": 1.0, "mean_class_acc": 1.0}
    # q0 labelled 1 (the majority class) is now wrong; class 1 is ranked second, so top-5 holds.
    mixed = evaluate_knn(protocol, TRAIN, TRAIN_LABELS, TEST, torch.tensor([1, 2]))
    # hits [0, 1]: a resample of 2 has mean 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4 -> interval (0, 1)
    assert mixed == {"top1": 0.5, "top1_ci_low": 0.0, "top1_ci_high": 1.0, "top5": 1.0, "mean_class_acc": 0.5}
    assert OnlineKNN(protocol).evaluate(TRAIN, TRAIN_LABELS, TEST, torch.tensor([1, 2])) == mixed


def test_top1_interval_is_resampled_from_the_prediction_hits():
    # q0 is predicted 0, q1 is predicted 2; q1 labelled 0 misses at top-1 (class 0 is its second choice).
    test = torch.cat([TEST, TEST])  # q0, q1, q0, q1 labelled 0, 0, 0, 2 -> hits [1, 0, 1, 1]
    result = evaluate_knn(KNNProtocol(k=3, temperature=T), TRAIN, TRAIN_LABELS, test, torch.tensor([0, 0, 0, 2]))
    assert result["top1"] == 0.75
    assert (result["top1_ci_low"], result["top1_ci_high"]) == bootstrap_interval(np.array([1.0, 0.0, 1.0, 1.0]))
    assert result["top1_ci_low"] < 0.75 and result["top1_ci_high"] == 1.0  # not top-5's hits [1, 1, 1, 1]


def test_online_knn_accepts_features_that_require_grad():
    train = TRAIN.clone().requires_grad_(True)
    result = OnlineKNN(KNNProtocol(k=3, temperature=T)).evaluate(train, TRAIN_LABELS, TEST, torch.tensor([0, 2]))
    assert result["top1"] == 1.0


def test_errors():
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(TRAIN, TRAIN_LABELS, TEST, 3, 0.0)
    with pytest.raises(ValueError, match=r"k=20 .*gallery size 5"):
        evaluate_knn(KNNProtocol(), TRAIN, TRAIN_LABELS, TEST, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="train labels"):
        knn_classify(TRAIN, TRAIN_LABELS[:4], TEST, 3, T)


def test_small_temperature_does_not_overflow():
    scores = knn_classify(TRAIN, TRAIN_LABELS, TEST, 3, 0.005)  # exp(1 / 0.005) = 7e86
    assert torch.isfinite(scores).all()
    assert scores.argmax(dim=1).tolist() == [0, 2]
