"""Linear probe and the shared classification metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.linear import evaluate_linear, stratified_split
from evaluation.metrics import classification_metrics, top1_hits
from evaluation.protocols import LinearProtocol
from core.uncertainty import bootstrap_interval

PROTOCOL = LinearProtocol()


def _blobs(per_class: int, seed: int, classes: int = 5, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c is a Gaussian (std 1) around 6 * e_c in 16-D: linearly separable with a wide margin."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    means = 6.0 * torch.eye(classes, dim)
    return means[labels] + torch.randn(len(labels), dim, generator=g), labels


TRAIN = _blobs(40, seed=0)
TEST = _blobs(40, seed=1)  # 200 test videos


# ---- classification_metrics by hand ---------------------------------------------------------


def test_metrics_by_hand():
    scores = torch.tensor(
        [
            [0.7, 0.2, 0.1],  # label 0: rank 1
            [0.1, 0.3, 0.6],  # label 0: rank 3
            [0.5, 0.5, 0.0],  # label 1: tie with class 0 -> class 0 first, label at rank 2
            [0.2, 0.1, 0.7],  # label 2: rank 1
        ]
    )
    labels = torch.tensor([0, 0, 1, 2])
    # top1: 2/4. top5 with 3 classes is top-3: always 1. per class: 0 -> 1/2, 1 -> 0/1, 2 -> 1/1.
    assert classification_metrics(scores, labels) == pytest.approx({"top1": 0.5, "top5": 1.0, "mean_class_acc": 0.5})
    assert top1_hits(scores, labels).tolist() == [1.0, 0.0, 0.0, 1.0]  # the tie ranks class 0 first: a miss


def test_metrics_top5_of_many_classes_and_numpy_input():
    scores = np.tile(np.arange(10.0)[::-1], (3, 1))  # class 0 best ... class 9 worst
    labels = np.array([4, 5, 9])  # ranks 5, 6, 10
    metrics = classification_metrics(scores, labels)
    assert metrics["top1"] == 0.0
    assert metrics["top5"] == pytest.approx(1 / 3)


def test_metrics_reject_labels_outside_the_score_columns():
    with pytest.raises(ValueError, match="labels must lie"):
        classification_metrics(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="labels must lie"):
        top1_hits(torch.zeros(2, 3), torch.tensor([0, 3]))


# ---- the split ------------------------------------------------------------------------------


def test_stratified_split_is_per_class_seeded_and_keeps_singletons_in_fit():
    labels = np.array([0] * 10 + [1] * 5 + [2])
    fit, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 1, 0]
    assert 15 in fit  # the single video of class 2
    again = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(fit, again[0]) and np.array_equal(val, again[1])
    assert not np.array_equal(val, stratified_split(labels, 0.2, seed=1)[1])


# ---- the probe ------------------------------------------------------------------------------


def test_separable_features_are_classified_almost_perfectly():
    result = evaluate_linear(PROTOCOL, *TRAIN, *TEST)
    assert result["top1"] >= 0.95 and result["mean_class_acc"] >= 0.95 and result["top5"] == 1.0
    assert result["chosen_C"] in PROTOCOL.cs and result["val_top1"] >= 0.9
    assert evaluate_linear(PROTOCOL, *TRAIN, *TEST) == result  # deterministic, the interval too
    assert result["top1_ci_low"] <= result["top1"] <= result["top1_ci_high"]


def test_shuffled_training_labels_give_chance():
    feats, labels = TRAIN
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    result = evaluate_linear(PROTOCOL, feats, shuffled, *TEST)
    assert result["top1"] <= 1 / 5 + 0.15


def test_chosen_c_comes_from_train_data_only():
    feats, labels = TEST
    reference = evaluate_linear(PROTOCOL, *TRAIN, feats, labels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    permuted = evaluate_linear(PROTOCOL, *TRAIN, feats[order], labels[order])
    wrong = evaluate_linear(PROTOCOL, *TRAIN, feats, (labels + 1) % 5)
    for other in (permuted, wrong):
        assert (other["chosen_C"], other["val_top1"]) == (reference["chosen_C"], reference["val_top1"])
    assert permuted["top1"] == reference["top1"]
    assert wrong["top1"] <= 0.05


def test_mean_class_accuracy_on_an_imbalanced_test_set():
    # Three tight, far-apart clusters in 2-D; train: 10 videos per class.
    centres = torch.tensor([[-10.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    g = torch.Generator().manual_seed(0)
    train_labels = torch.arange(3).repeat_interleave(10)
    train = centres[train_labels] + 0.1 * torch.randn(30, 2, generator=g)
    # Test: class 0 has 6 videos, all at its centre (6/6 right); class 1 has 3, one of them at
    # class 0's centre (2/3 right); class 2 has 1, at class 1's centre (0/1 right).
    test_labels = torch.tensor([0] * 6 + [1, 1, 1, 2])
    test = centres[torch.tensor([0] * 6 + [1, 1, 0, 1])]
    result = evaluate_linear(PROTOCOL, train, train_labels, test, test_labels)
    assert result["top1"] == pytest.approx(8 / 10)
    assert result["mean_class_acc"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    # the top-1 interval resamples the per-video hits [1] * 8 + [0, 0], in test order
    hits = np.array([1.0] * 8 + [0.0, 0.0])
    assert (result["top1_ci_low"], result["top1_ci_high"]) == bootstrap_interval(hits)
    assert result["top1_ci_low"] < result["top1"] < result["top1_ci_high"] == 1.0
