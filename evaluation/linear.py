"""Linear probe: L2-regularised multinomial logistic regression on frozen, cached features.

Protocol (:class:`~evaluation.protocols.LinearProtocol`): the per-video features of the train
split are standardised (mean/std fitted on the part being trained on, never on held-out data),
and scikit-learn's ``LogisticRegression`` (lbfgs, L2; multinomial for three or more classes —
with two classes scikit-learn fits the equivalent binary model) is trained on them. The inverse
regularisation strength C is chosen from ``protocol.cs`` by top-1 accuracy on a stratified
validation slice of the TRAIN split (``val_fraction`` of each class, seeded by ``protocol.seed``;
a class with a single train video goes entirely to the fitting part; equal accuracies choose the
smaller C). The model is then refitted on the whole train split with that C, and the test split is
used exactly once, to score it. Choosing C on the test split would report the best of several
test numbers — an optimistic bias a fair comparison of methods must not have.

Deterministic: the split depends only on the train labels and the seed, lbfgs has no randomness,
and class ranking breaks ties by class index (:func:`evaluation.metrics.classification_metrics`).
Test top-1 comes with its 95% bootstrap interval over test videos (``top1_ci_low``,
``top1_ci_high``, :mod:`core.uncertainty`), resampled from the per-video hits.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from evaluation.metrics import classification_metrics, top1_hits
from evaluation.protocols import LinearProtocol
from core.uncertainty import with_interval

Array = torch.Tensor | np.ndarray

__all__ = ["classification_metrics", "evaluate_linear", "stratified_split"]


def evaluate_linear(
    protocol: LinearProtocol, train_feats: Array, train_labels: Array, test_feats: Array, test_labels: Array
) -> dict[str, float]:
    """Test ``top1``/``top5``/``mean_class_acc`` of the probe, plus ``chosen_C`` and its ``val_top1``.

    ``top1_ci_low``/``top1_ci_high``: the 95% bootstrap interval of test top-1 over test videos."""
    x_train, y_train = _numpy(train_feats, train_labels, "train")
    x_test, y_test = _numpy(test_feats, test_labels, "test")
    fit, val = stratified_split(y_train, protocol.val_fraction, protocol.seed)
    chosen_c, val_top1 = _select_c(protocol, x_train[fit], y_train[fit], x_train[val], y_train[val])
    model = _fit(protocol, x_train, y_train, chosen_c)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    scores = _scores(model, x_test, num_classes)  # the one use of the test split
    interval = with_interval("top1", top1_hits(scores, y_test))  # its top1 equals classification_metrics'
    return {**interval, **classification_metrics(scores, y_test), "chosen_C": float(chosen_c), "val_top1": val_top1}


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, val) of a per-class random split: round(val_fraction * n) of each class to val.

    Every class with two or more videos keeps at least one video on each side (when
    ``val_fraction > 0``); a single-video class goes entirely to the fitting part. Each class is
    shuffled by its own generator seeded with (seed, class), so the split is reproducible.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    fit, val = [], []
    for c in np.unique(labels):
        members = np.random.default_rng([seed, int(c)]).permutation(np.flatnonzero(labels == c))
        n_val = math.floor(val_fraction * len(members) + 0.5)
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        else:
            n_val = 0
        val.append(members[:n_val])
        fit.append(members[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def _select_c(
    protocol: LinearProtocol, x_fit: np.ndarray, y_fit: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
) -> tuple[float, float]:
    """(C with the best validation top-1, that top-1); ties -> smaller C. Sees no test data."""
    cs = sorted(protocol.cs)
    if len(y_val) == 0:
        if len(cs) == 1:
            return cs[0], float("nan")
        raise ValueError(f"no validation videos to choose C from {cs} (val_fraction={protocol.val_fraction})")
    best_c, best_acc = cs[0], -1.0
    for c in cs:
        acc = float(np.mean(_fit(protocol, x_fit, y_fit, c).predict(x_val) == y_val))
        if acc > best_acc:
            best_c, best_acc = c, acc
    return best_c, best_acc


def _fit(protocol: LinearProtocol, x: np.ndarray, y: np.ndarray, c: float) -> Pipeline:
    """Standardiser (fitted on x only) + logistic regression, fitted on (x, y)."""
    steps = [StandardScaler()] if protocol.standardize else []
    classifier = LogisticRegression(C=c, solver="lbfgs", max_iter=protocol.max_iter)  # L2 is the default penalty
    return make_pipeline(*steps, classifier).fit(x, y)


def _scores(model: Pipeline, x: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, num_classes) class probabilities; classes absent from training get -1 (ranked last)."""
    scores = np.full((len(x), num_classes), -1.0)
    scores[:, model.classes_] = model.predict_proba(x)
    return scores


def _numpy(feats: Array, labels: Array, split: str) -> tuple[np.ndarray, np.ndarray]:
    x = torch.as_tensor(feats).detach().cpu().double().numpy()
    y = torch.as_tensor(labels).detach().cpu().long().numpy()
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{split}: expected features (N, D) and labels (N,), got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{split} features contain NaN or infinite values")
    return x, y
