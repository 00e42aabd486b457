"""Retrieval: hand-checked recall@k on a 2-D example, tie-breaking, chunking, centring, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluation.protocols import RetrievalProtocol
from evaluation.retrieval import evaluate_retrieval, recall_at_k, recall_hits, topk_neighbours
from core.uncertainty import bootstrap_interval


def _at(degrees: float, norm: float = 1.0) -> list[float]:
    return [norm * math.cos(math.radians(degrees)), norm * math.sin(math.radians(degrees))]


# Gallery on the unit circle (norms differ on purpose: cosine similarity ignores them).
#   g0 at   0 deg, class 0     g1 at  90 deg, class 1
#   g2 at 270 deg, class 0     g3 at 180 deg, class 2 (a class with one video)
GALLERY = torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, -5.0], [-1.0, 0.0]])
GALLERY_LABELS = torch.tensor([0, 1, 0, 2])
# q0 at   0 deg, class 1: sims 1, 0, 0, -1 -> g1 and g2 TIE at 0; smaller index first: [g0, g1, g2, g3]
#                         labels 0, 1, ... -> first hit at rank 2
# q1 at 170 deg, class 2: sims g3 cos10 > g1 cos80 > g2 cos100 > g0 cos170 -> [g3, g1, g2, g0]
#                         labels 2, ... -> hit at rank 1
# q2 at 120 deg, class 0: sims g1 cos30 > g3 cos60 > g0 cos120 > g2 cos150 -> [g1, g3, g0, g2]
#                         labels 1, 2, 0 -> first hit at rank 3
QUERIES = torch.tensor([[2.0, 0.0], _at(170, 4.0), _at(120, 0.5)])
QUERY_LABELS = torch.tensor([1, 2, 0])


def test_hand_example_neighbours_and_tie_break():
    sims, idx = topk_neighbours(QUERIES, GALLERY, 4)
    assert idx.tolist() == [[0, 1, 2, 3], [3, 1, 2, 0], [1, 3, 0, 2]]
    assert sims[0].tolist() == [1.0, 0.0, 0.0, -1.0]  # exact tie between g1 and g2
    expected = [math.cos(math.radians(a)) for a in (10, 80, 100, 170)]
    assert sims[1].tolist() == pytest.approx([expected[0], expected[1], -expected[1], -expected[0]], abs=1e-6)


def test_hand_example_recall():
    _, idx = topk_neighbours(QUERIES, GALLERY, 3)
    # hit ranks 2, 1, 3 -> R1 = 1/3, R2 = 2/3, R3 = 3/3 (q1's class has one gallery video: a hit at
    # rank 1 counts for every k >= 1)
    recall = recall_at_k(QUERY_LABELS, GALLERY_LABELS, idx, (1, 2, 3))
    assert recall == pytest.approx({"R1": 1 / 3, "R2": 2 / 3, "R3": 1.0})


def test_recall_hits_per_query():
    _, idx = topk_neighbours(QUERIES, GALLERY, 3)
    hits = recall_hits(QUERY_LABELS, GALLERY_LABELS, idx, (1, 2, 3))
    assert {k: h.tolist() for k, h in hits.items()} == {1: [False, True, False], 2: [True, True, False], 3: [True, True, True]}


def test_boundary_tie_is_broken_by_index():
    # q0's top 2 cut through the g1/g2 tie: g1 (smaller index) is kept, so q0 (class 1) hits at k=2.
    sims, idx = topk_neighbours(QUERIES[:1], GALLERY, 2)
    assert idx.tolist() == [[0, 1]]
    assert recall_at_k(QUERY_LABELS[:1], GALLERY_LABELS, idx, (2,)) == {"R2": 1.0}


def test_all_tied_gallery_ranks_by_index():
    gallery = torch.randn(1, 3).repeat(10, 1)  # ten copies of one feature
    _, idx = topk_neighbours(torch.randn(5, 3), gallery, 4)
    assert idx.tolist() == [[0, 1, 2, 3]] * 5


def test_evaluate_retrieval_hand_example():
    protocol = RetrievalProtocol(ks=(1, 2, 3))
    result = evaluate_retrieval(protocol, GALLERY, GALLERY_LABELS, QUERIES, QUERY_LABELS)
    assert {k: result[k] for k in ("R1", "R2", "R3")} == pytest.approx({"R1": 1 / 3, "R2": 2 / 3, "R3": 1.0})


def test_evaluate_retrieval_intervals_come_from_the_per_query_hits():
    # The hand example four times over: per-query hits R1 [0, 1, 0] x 4, R2 [1, 1, 0] x 4, R3 all ones.
    queries, labels = QUERIES.repeat(4, 1), QUERY_LABELS.repeat(4)
    result = evaluate_retrieval(RetrievalProtocol(ks=(1, 2, 3)), GALLERY, GALLERY_LABELS, queries, labels)
    assert list(result) == ["R1", "R1_ci_low", "R1_ci_high", "R2", "R2_ci_low", "R2_ci_high", "R3", "R3_ci_low", "R3_ci_high"]
    for k, hits in ((1, [0.0, 1.0, 0.0] * 4), (2, [1.0, 1.0, 0.0] * 4)):
        assert (result[f"R{k}_ci_low"], result[f"R{k}_ci_high"]) == bootstrap_interval(np.array(hits))
        assert result[f"R{k}_ci_low"] < result[f"R{k}"] < result[f"R{k}_ci_high"]
    assert result["R1_ci_high"] < result["R2_ci_high"]  # different hit vectors, different intervals
    assert (result["R3_ci_low"], result["R3_ci_high"]) == (1.0, 1.0)  # every query hits: nothing to resample


def test_evaluate_retrieval_point_values_equal_recall_at_k():
    g = torch.Generator().manual_seed(2)
    gallery, queries = torch.randn(60, 6, generator=g), torch.randn(997, 6, generator=g)
    gallery_labels, query_labels = torch.randint(0, 7, (60,), generator=g), torch.randint(0, 7, (997,), generator=g)
    result = evaluate_retrieval(RetrievalProtocol(ks=(1, 5, 20)), gallery, gallery_labels, queries, query_labels)
    _, idx = topk_neighbours(queries, gallery, 20)
    recall = recall_at_k(query_labels, gallery_labels, idx, (1, 5, 20))
    assert {key: result[key] for key in recall} == recall  # exactly, not approximately
    for k in (1, 5, 20):
        assert result[f"R{k}_ci_low"] < result[f"R{k}"] < result[f"R{k}_ci_high"]


def _reference(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> list[list[int]]:
    """Rank the whole similarity matrix (float64, rounded to float32) by (-similarity, index) in Python."""
    normalize = torch.nn.functional.normalize
    sim = (normalize(queries.double(), dim=1) @ normalize(gallery.double(), dim=1).T).float()
    return [sorted(range(len(gallery)), key=lambda j: (-row[j].item(), j))[:k] for row in sim]


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_chunked_equals_unchunked(chunk):
    g = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn(50, 8, generator=g), torch.randn(37, 8, generator=g)
    sims, idx = topk_neighbours(queries, gallery, 10, chunk=chunk)
    full_sims, full_idx = topk_neighbours(queries, gallery, 10, chunk=len(queries))
    assert torch.equal(idx, full_idx)
    assert torch.equal(sims, full_sims)  # bit for bit: float64 similarities rounded to float32
    assert idx.tolist() == _reference(queries, gallery, 10)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_chunked_with_duplicates_follows_tie_rule(chunk):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(20, 8, generator=g)
    gallery = torch.cat([base, base[:10], base[:5]])  # exact duplicates: ties inside and across the top k
    queries = torch.cat([torch.randn(30, 8, generator=g), base[:3]])
    sims, idx = topk_neighbours(queries, gallery, 7, chunk=chunk)
    assert idx.tolist() == _reference(queries, gallery, 7)
    assert (sims[:, :-1] >= sims[:, 1:]).all()


def test_mean_centering_changes_the_result():
    # The query split is offset along x relative to the gallery. Uncentred, both queries are
    # nearest to g0 (class 0); centred (each set minus its own mean) q0 -> g1 and q1 -> g0.
    gallery = torch.tensor([[1.0, 0.0, 10.0], [-1.0, 0.0, 10.0]])
    queries = torch.tensor([[2.0, 0.0, 10.0], [4.0, 0.0, 10.0]])
    gallery_labels, query_labels = torch.tensor([0, 1]), torch.tensor([1, 0])
    plain = evaluate_retrieval(RetrievalProtocol(ks=(1,)), gallery, gallery_labels, queries, query_labels)
    centred = evaluate_retrieval(RetrievalProtocol(ks=(1,), center=True), gallery, gallery_labels, queries, query_labels)
    assert plain["R1"] == 0.5
    assert centred["R1"] == 1.0


def test_k_larger_than_gallery_raises():
    with pytest.raises(ValueError, match=r"k=5 .*gallery size 4"):
        topk_neighbours(QUERIES, GALLERY, 5)
    _, idx = topk_neighbours(QUERIES, GALLERY, 4)
    with pytest.raises(ValueError, match=r"k=5 .*gallery size 4"):
        recall_at_k(QUERY_LABELS, GALLERY_LABELS, idx, (1, 5))
    with pytest.raises(ValueError, match=r"k=50 .*gallery size 4"):
        evaluate_retrieval(RetrievalProtocol(), GALLERY, GALLERY_LABELS, QUERIES, QUERY_LABELS)


def test_too_few_neighbours_and_bad_features_raise():
    _, idx = topk_neighbours(QUERIES, GALLERY, 2)
    with pytest.raises(ValueError, match="only 2 neighbours"):
        recall_at_k(QUERY_LABELS, GALLERY_LABELS, idx, (3,))
    with pytest.raises(ValueError, match="NaN"):
        topk_neighbours(torch.full((2, 2), float("nan")), GALLERY, 1)
    with pytest.raises(ValueError, match="dimension"):
        topk_neighbours(torch.ones(2, 3), GALLERY, 1)


def test_results_follow_query_device_and_dtype():
    sims, idx = topk_neighbours(QUERIES.double().numpy(), GALLERY.half(), 2)
    assert sims.dtype == torch.float32 and idx.dtype == torch.long and sims.shape == (3, 2)
