"""Nearest-neighbour video retrieval: class-level recall@k of test queries against the train gallery.

Protocol (VCOP/IIC "top-k retrieval accuracy", :class:`~evaluation.protocols.RetrievalProtocol`):
every test-split video is a query, every train-split video is in the gallery, similarity is the
cosine of the per-video features, and a query scores at k when ANY of its k nearest gallery
videos has the query's class. This is *class-level* recall: a query has many relevant gallery
videos (its whole class), unlike *instance-level* recall, where exactly one gallery item (the
same video, another view) is relevant. Class-level recall is what the UCF101/HMDB51 retrieval
tables of VCOP, IIC, CoCLR and MSCL report, so those numbers are comparable with ours. Every
R@k comes with its 95% bootstrap interval over test videos (``R<k>_ci_low``, ``R<k>_ci_high``,
:mod:`core.uncertainty`), which resamples the per-query hit/miss outcomes at that k.

``center=True`` is the CoCLR/MSCL variant: before normalising, each set (gallery, queries) has its
OWN mean feature subtracted, which removes an offset shared by a whole split; results under the
two settings carry different protocol hashes and never share a column.

Determinism at test time: the neighbour list depends on nothing but the features. Ties (equal
cosine similarity, e.g. duplicated videos or all-zero features) are broken by the smaller gallery
index, i.e. neighbours are ranked by the key ``(-similarity, gallery index)``. ``torch.topk`` does
not promise an order among ties, so :func:`topk_neighbours` re-sorts ties itself. For that rule to
mean anything the similarities themselves must not depend on how they were computed: a float32
matmul gives the same pair a different last bit depending on the chunk size (gemv vs gemm), on
the pair's column (BLAS tail kernels) and on the device (and TF32, if a training loop enabled
it). So similarities are computed in float64 — a product of two float32 numbers is exact there —
and ranked after rounding to float32: two computations of one similarity then agree bit for bit
except in the rare case that they straddle a float32 rounding boundary (about 1e-16 apart), so
duplicates tie exactly and CPU, GPU and every chunk size return the same neighbours. The cost is
a float64 matmul (about 2.5x the float32 time on a CPU; little on data-centre GPUs).

``ties="numpy_argsort"`` reproduces VCOP/IIC's ``retrieve_clips.py`` instead: float64 cosine
distances (scikit-learn's ``cosine_distances``) ranked by ``np.argsort``, whose default quicksort
puts equal distances in an order of its own, so duplicated or constant features can score
differently from the shared rule. It exists to reproduce a paper's number, not for comparisons.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.protocols import RetrievalProtocol
from core.uncertainty import with_interval

Array = torch.Tensor | np.ndarray


def topk_neighbours(
    queries: Array, gallery: Array, k: int, *, chunk: int = 4096, device: str | torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most cosine-similar gallery rows of every query: (similarity (Nq, k), indices (Nq, k)).

    Both sets are L2-normalised here. Queries are processed ``chunk`` rows at a time, so at most
    one (chunk, Ng) float64 similarity block exists at once (8 * chunk * Ng bytes: 330 MB for the
    default chunk and a 10k gallery; lower ``chunk`` for Kinetics-size galleries). ``device`` is
    where the work runs (default: that of ``queries``; pass ``"cuda"`` to use a GPU); the results,
    float32 similarities and int64 indices, come back on ``queries``' device. Rows are sorted by
    decreasing similarity; equal similarities rank the smaller gallery index first, and the
    result does not depend on ``chunk`` or ``device`` (see the module docstring).
    """
    queries, gallery = _features(queries, "queries"), _features(gallery, "gallery")
    _check_search(queries, gallery, k, chunk)
    run_on = torch.device(device) if device is not None else queries.device
    dtype = torch.float32 if run_on.type == "mps" else torch.float64  # MPS has no float64
    gallery_n = F.normalize(gallery.to(run_on, dtype), dim=1)
    sims, idxs = [], []
    with torch.no_grad():
        for start in range(0, len(queries), chunk):
            q = F.normalize(queries[start : start + chunk].to(run_on, dtype), dim=1)
            s, i = _block_topk(q @ gallery_n.T, k)
            sims.append(s.to(queries.device))
            idxs.append(i.to(queries.device))
    if not sims:
        return torch.empty(0, k, device=queries.device), torch.empty(0, k, dtype=torch.long, device=queries.device)
    return torch.cat(sims), torch.cat(idxs)


def recall_hits(
    query_labels: Array, gallery_labels: Array, neighbour_indices: torch.Tensor, ks: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Per-query outcomes {k: bool (Nq,)}: True where a same-class video is among the query's k nearest.

    ``neighbour_indices`` (Nq, >= max(ks)) index ``gallery_labels``, best first, as returned by
    :func:`topk_neighbours`. A k larger than the gallery is an error, not a silently capped k.
    """
    gallery_labels = torch.as_tensor(gallery_labels).long()
    neighbour_indices = torch.as_tensor(neighbour_indices).long()
    query_labels = torch.as_tensor(query_labels, device=neighbour_indices.device).long()
    _check_recall(query_labels, gallery_labels, neighbour_indices, ks)
    same = gallery_labels.to(neighbour_indices.device)[neighbour_indices] == query_labels[:, None]
    return {k: same[:, :k].any(dim=1) for k in ks}


def recall_at_k(
    query_labels: Array, gallery_labels: Array, neighbour_indices: torch.Tensor, ks: Sequence[int]
) -> dict[str, float]:
    """Class-level recall: {"R<k>": fraction of queries with a same-class video among their k nearest}.

    The mean of :func:`recall_hits` (same arguments, same errors).
    """
    hits = recall_hits(query_labels, gallery_labels, neighbour_indices, ks)
    return {f"R{k}": hit.double().mean().item() for k, hit in hits.items()}


def evaluate_retrieval(
    protocol: RetrievalProtocol,
    train_feats: Array,
    train_labels: Array,
    test_feats: Array,
    test_labels: Array,
    *,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Recall@k for ``protocol.ks``: test videos query the train gallery (optionally mean-centred).

    Returns ``R<k>`` and its 95% bootstrap interval over test videos, ``R<k>_ci_low`` and
    ``R<k>_ci_high`` (:func:`core.uncertainty.with_interval` of the per-query hits).
    """
    gallery, queries = _features(train_feats, "train_feats"), _features(test_feats, "test_feats")
    if protocol.center:
        gallery, queries = _center(gallery), _center(queries)
    if protocol.ties == "numpy_argsort":
        neighbours = numpy_argsort_neighbours(queries, gallery, max(protocol.ks))
    else:
        _, neighbours = topk_neighbours(queries, gallery, max(protocol.ks), device=device)
    hits = recall_hits(test_labels, train_labels, neighbours, protocol.ks)
    return {key: value for k, hit in hits.items() for key, value in with_interval(f"R{k}", hit.double()).items()}


def numpy_argsort_neighbours(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> torch.Tensor:
    """The k nearest gallery rows of every query as VCOP/IIC's retrieval script ranks them: float64
    cosine distances (1 - cosine, clipped to [0, 2], as scikit-learn computes them), ``np.argsort``."""
    from sklearn.metrics.pairwise import cosine_distances

    distances = cosine_distances(queries.double().cpu().numpy(), gallery.double().cpu().numpy())
    return torch.from_numpy(np.argsort(distances, axis=1)[:, :k].copy()).to(queries.device)


def _block_topk(sim: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of a (B, Ng) similarity block, ranked by (-float32 similarity, column).

    Fast path: ``topk`` of k + 1 values, rounded to float32 (rounding is monotone, so the order
    survives up to new ties). When the (k+1)-th value is strictly below the k-th, the top-k SET is
    unambiguous and only the order inside it may need fixing. Rows where the k-th value recurs
    beyond the top k (a tie across the boundary) are rare; they get a full stable sort.
    """
    vals, idx = sim.topk(min(k + 1, sim.shape[1]), dim=1)
    vals = vals.float()
    if k < sim.shape[1]:
        boundary_tie = vals[:, k] == vals[:, k - 1]
        vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()
        if boundary_tie.any():
            rows = boundary_tie.nonzero().squeeze(1)
            full = torch.sort(sim[rows].float(), dim=1, descending=True, stable=True)
            vals[rows], idx[rows] = full.values[:, :k], full.indices[:, :k]
    return _order_ties(vals, idx)


def _order_ties(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder each (B, k) row by (-value, index): sort by index, then stably by decreasing value."""
    by_index = idx.argsort(dim=1)
    vals, idx = vals.gather(1, by_index), idx.gather(1, by_index)
    by_value = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return vals.gather(1, by_value), idx.gather(1, by_value)


def _center(x: torch.Tensor) -> torch.Tensor:
    """Subtract the set's own mean feature (in float64, like the similarities)."""
    x = x.double()
    return x - x.mean(dim=0, keepdim=True)


def _features(x: Array, what: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach()
    if x.ndim != 2:
        raise ValueError(f"{what} must be (N, D), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return x


def _check_search(queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk: int) -> None:
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries have dimension {queries.shape[1]} but gallery {gallery.shape[1]}")
    if not 1 <= k <= len(gallery):
        raise ValueError(f"k={k} must be between 1 and the gallery size {len(gallery)}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")


def _check_recall(query_labels: torch.Tensor, gallery_labels: torch.Tensor, neighbours: torch.Tensor, ks: Sequence[int]) -> None:
    if neighbours.ndim != 2 or len(neighbours) != len(query_labels):
        raise ValueError(f"neighbour_indices {tuple(neighbours.shape)} must be (Nq={len(query_labels)}, k)")
    if len(query_labels) == 0:
        raise ValueError("no queries")
    for k in ks:
        if not 1 <= k <= len(gallery_labels):
            raise ValueError(f"recall@{k}: k={k} must be between 1 and the gallery size {len(gallery_labels)}")
        if k > neighbours.shape[1]:
            raise ValueError(f"recall@{k}: only {neighbours.shape[1]} neighbours per query were given")

