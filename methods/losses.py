"""Shared contrastive pieces: losses, queues, memory banks, Sinkhorn-Knopp, EMA, heads.

Small composable functions and modules that several methods use; a method never imports another
method, so anything two of them share lives here. Conventions:

- Embeddings are rows: ``(B, D)`` queries, ``(N, D)`` keys, ``(K, D)`` queues and banks.
- Losses expect inputs already L2-normalised where the method's paper does so; nothing here
  normalises a loss input behind the caller's back (IIC, for instance, keeps its query raw).
- Logits, similarities and queue / bank products are computed in float32 with autocast off
  (:func:`fp32_matmul`, :func:`fp32_einsum`), also inside a bf16 autocast region, where a plain
  product (``@``, ``einsum``, ``bmm``) runs in bf16 even on float32 operands. bf16 keeps 8
  significant bits: a norm-20 query (IIC's raw feature) against unit rows is off by up to 0.029,
  0.42 after 1/T with T = 0.07 (the command is in docs/methods/iic.md). The backbones and heads stay under autocast; only these small products leave it.
- Distributed: gathering features across ranks is the caller's job (``core.distributed``);
  the docstrings say what must be global. Only :func:`sinkhorn_knopp` talks to
  ``torch.distributed`` itself, because its marginals are sums over the global batch.
- State (queues, banks, pointers, ages) lives in buffers, so it is checkpointed by
  ``state_dict`` and moved by ``.to(device)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "autocast_off",
    "fp32_matmul",
    "fp32_einsum",
    "info_nce",
    "moco_logits",
    "moco_loss",
    "multi_positive_nce",
    "MoCoQueue",
    "capped_queue_size",
    "MemoryBank",
    "sinkhorn_knopp",
    "ema_update",
    "cosine_momentum",
    "MLPHead",
]

AllReduce = Callable[..., "Tensor | None"]


def _fp32(x: Tensor) -> Tensor:
    """Upcast half / bfloat16 to float32 (softmax and log-sum-exp want it); leave others alone."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def autocast_off(x: Tensor) -> torch.autocast:
    """A context in which autocast is disabled on ``x``'s device type: products inside it run in
    the dtype of their operands (autocast would run them in bf16 whatever the operands)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _at_least_fp32(*tensors: Tensor) -> list[Tensor]:
    """The operands in one dtype of at least float32: float64 when any is float64, else float32."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return [t.to(dtype) for t in tensors]


def fp32_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` (``torch.matmul``: 2-D or batched) in float32 with autocast off, for logits and
    similarities; bf16 / fp16 operands are upcast (gradients flow back through the cast).
    Precision is float32's only while TF32 matmuls are off (PyTorch's default)."""
    a, b = _at_least_fp32(a, b)
    with autocast_off(a):
        return torch.matmul(a, b)


def fp32_einsum(equation: str, *operands: Tensor) -> Tensor:
    """``torch.einsum(equation, *operands)`` in float32 with autocast off (see :func:`fp32_matmul`)."""
    if not operands:
        raise ValueError("fp32_einsum needs at least one operand")
    cast = _at_least_fp32(*operands)
    with autocast_off(cast[0]):
        return torch.einsum(equation, *cast)


def _generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    """An ``int`` is a seed for a fresh CPU generator; a generator or ``None`` passes through."""
    if isinstance(generator, int):
        g = torch.Generator()
        g.manual_seed(generator)
        return g
    return generator


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def info_nce(query: Tensor, keys: Tensor, temperature: float = 0.07, *, positive_offset: int = 0) -> Tensor:
    """InfoNCE with in-batch negatives (CPC, van den Oord et al. 2018, Eq. 4; SimCLR's NT-Xent
    in one direction; MLFO's high-level instance contrast).

    ``loss = mean_i -log( exp(q_i . k_{o+i} / T) / sum_j exp(q_i . k_j / T) )`` with
    ``o = positive_offset``: the positive of query ``i`` is ``keys[o + i]`` and every other key
    is a negative.

    Args:
        query: ``(B, D)``, L2-normalised by the caller (not normalised here).
        keys: ``(N, D)`` with ``N >= B``, L2-normalised by the caller. Under DDP this is usually
            the all-gathered global batch (gathered with gradient if keys should get one).
        temperature: ``T``; logits are ``query @ keys.T / T``, in float32 (:func:`fp32_matmul`).
        positive_offset: where this rank's positives start in ``keys``; with DDP and equal local
            batches, rank ``r`` passes ``r * B_local``.

    Returns:
        Scalar cross-entropy, mean over the ``B`` queries.
    """
    if query.dim() != 2 or keys.dim() != 2 or query.shape[1] != keys.shape[1]:
        raise ValueError(f"expected query (B, D) and keys (N, D), got {tuple(query.shape)} and {tuple(keys.shape)}")
    b, n = query.shape[0], keys.shape[0]
    if positive_offset < 0 or positive_offset + b > n:
        raise ValueError(f"positives keys[{positive_offset}:{positive_offset + b}] fall outside {n} keys")
    logits = fp32_matmul(query, keys.t()) / temperature
    labels = torch.arange(positive_offset, positive_offset + b, device=query.device)
    return F.cross_entropy(logits, labels)


def moco_logits(query: Tensor, positive_key: Tensor, queue: Tensor, temperature: float = 0.07) -> tuple[Tensor, Tensor]:
    """MoCo logits (He et al., CVPR 2020, Algorithm 1): ``[q . k+, q . Q^T] / T``, labels all 0.

    Column 0 of row ``i`` is the positive ``query[i] . positive_key[i]``; columns ``1..K`` are the
    queue's negatives. The queue is a constant: it is detached and copied, so that enqueueing into
    the same buffer (in place) before ``backward()`` does not invalidate the autograd graph.
    Nothing is normalised here: MoCo feeds L2-normalised ``q`` and ``k``. The positive key keeps
    whatever gradient the caller gave it (MoCo computes keys under ``no_grad``).

    Args:
        query: ``(B, D)``.
        positive_key: ``(B, D)``.
        queue: ``(K, D)``, e.g. ``MoCoQueue.queue`` or ``MoCoQueue.decayed()`` (MSCL).
        temperature: ``T``.

    Returns:
        ``(logits (B, 1 + K), labels (B,) long zeros)``; the logits are float32 (float64 for
        float64 inputs) and computed with autocast off (:func:`fp32_matmul`).
    """
    if query.shape != positive_key.shape or query.dim() != 2:
        raise ValueError(
            f"query and positive_key must both be (B, D), got {tuple(query.shape)}, {tuple(positive_key.shape)}"
        )
    if queue.dim() != 2 or queue.shape[1] != query.shape[1]:
        raise ValueError(f"queue must be (K, {query.shape[1]}), got {tuple(queue.shape)}")
    l_pos = fp32_einsum("nc,nc->n", query, positive_key).unsqueeze(1)
    l_neg = fp32_matmul(query, queue.detach().clone().t())  # a copy: enqueue may overwrite the buffer
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return logits, labels


def moco_loss(query: Tensor, positive_key: Tensor, queue: Tensor, temperature: float = 0.07) -> Tensor:
    """Cross-entropy of :func:`moco_logits` (the MoCo / MoCo v2 loss), mean over queries."""
    logits, labels = moco_logits(query, positive_key, queue, temperature)
    return F.cross_entropy(logits, labels)


def multi_positive_nce(logits: Tensor, positive_mask: Tensor) -> Tensor:
    """NCE with several positives per row: ``mean_i -log sum_{j in P_i} softmax(logits_i)_j``.

    This is DCLR's "MultiNCE" (ACM MM 2022): the MoCo logits of a query, with the positive set
    ``P`` = {the true key (column 0)} plus the top-k neighbours mined from a queue. With exactly
    one positive per row it is plain cross-entropy. Computed stably as
    ``logsumexp(logits_i) - logsumexp(logits_i[P_i])``.

    Args:
        logits: ``(B, L)``, already divided by the temperature.
        positive_mask: bool ``(B, L)``; every row must have at least one ``True``.

    Raises:
        ValueError: shape or dtype mismatch, or a row without positives (this check reads one
            value back from the device).
    """
    if logits.dim() != 2 or positive_mask.shape != logits.shape:
        raise ValueError(
            f"logits and positive_mask must both be (B, L), got {tuple(logits.shape)}, {tuple(positive_mask.shape)}"
        )
    if positive_mask.dtype != torch.bool:
        raise ValueError(f"positive_mask must be bool, got {positive_mask.dtype}")
    if not bool(positive_mask.any(dim=1).all()):
        raise ValueError("every row of positive_mask needs at least one positive")
    logits = _fp32(logits)
    positives = logits.masked_fill(~positive_mask, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(positives, dim=1)).mean()


# --------------------------------------------------------------------------------------------
# State: queues and memory banks
# --------------------------------------------------------------------------------------------


class MoCoQueue(nn.Module):
    """FIFO queue(s) of keys for MoCo-style negatives (He et al. 2020), with one shared pointer.

    ``dims`` is either an ``int`` (one queue, the buffer ``queue`` of shape ``(size, dims)``) or a
    mapping ``name -> dim`` for parallel queues that share one pointer, as DCLR's seven queues do
    (``vv, vs, vd, sv, dv, rs, rd``: a neighbour mined at position ``j`` of one queue indexes the
    same position in another). Parallel queues are buffers ``queue_<name>``, read with
    ``q[name]``, and are filled together with ``q.enqueue(**{name: keys})``.

    Every queue starts as L2-normalised ``randn`` drawn from ``generator`` (a seed or a
    ``torch.Generator``; the default seed 0 makes every rank start from the same queue). ``ptr``
    (long scalar buffer) is the next slot to write, i.e. the oldest key.

    ``track_age=True`` adds MSCL's (ECCV 2022) age buffer ``age`` (``(size,)`` long, 0 at
    start): each enqueue adds 1 to every slot's age and sets the written slots to 1;
    :meth:`decayed` returns ``queue * decay ** age`` for down-weighting stale negatives.

    Nothing here needs a host-device sync: slot indices are computed on the device.
    """

    def __init__(
        self,
        size: int,
        dims: int | Mapping[str, int],
        *,
        track_age: bool = False,
        generator: torch.Generator | int | None = 0,
    ) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue size must be positive, got {size}")
        self.size = int(size)
        self.single = isinstance(dims, int)
        self.dims: dict[str, int] = {"queue": dims} if isinstance(dims, int) else dict(dims)
        if not self.dims:
            raise ValueError("need at least one queue")
        g = _generator(generator)
        device = g.device if g is not None else None
        for name, dim in self.dims.items():
            if not name.isidentifier():
                raise ValueError(f"queue name {name!r} must be an identifier")
            keys = torch.randn(self.size, dim, generator=g, device=device)
            self.register_buffer(self._buffer(name), F.normalize(keys, dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long, device=device))
        self.track_age = track_age
        if track_age:
            self.register_buffer("age", torch.zeros(self.size, dtype=torch.long, device=device))

    def _buffer(self, name: str) -> str:
        return "queue" if self.single else f"queue_{name}"

    @property
    def names(self) -> tuple[str, ...]:
        """The queue names (``("queue",)`` for a single queue)."""
        return tuple(self.dims)

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.dims:
            raise KeyError(f"no queue named {name!r}; queues: {', '.join(self.dims)}")
        return getattr(self, self._buffer(name))

    @torch.no_grad()
    def enqueue(self, keys: Tensor | None = None, /, **named: Tensor) -> None:
        """Write ``n`` keys at ``ptr`` (wrapping around the end) and advance ``ptr`` by ``n`` mod size.

        The keys must already be gathered across ranks (every rank enqueues the same global
        batch); they are detached here anyway and cast to the queue's dtype. ``n`` need not
        divide the size. If ``n > size`` only the last ``size`` keys are kept, in the slots a
        one-by-one FIFO would leave them in. A single queue takes ``enqueue(keys)``; parallel
        queues take every name at once, ``enqueue(vv=..., vs=..., ...)``, same ``n`` for all.
        """
        if self.single:
            if keys is None or named:
                raise TypeError("a single queue takes enqueue(keys)")
            named = {"queue": keys}
        elif keys is not None or set(named) != set(self.dims):
            raise TypeError(f"parallel queues take enqueue(**keys) with exactly the names {sorted(self.dims)}")
        sizes = {t.shape[0] for t in named.values()}
        if len(sizes) != 1:
            raise ValueError(f"all queues must get the same number of keys, got {sorted(sizes)}")
        n = sizes.pop()
        for name, t in named.items():
            if t.dim() != 2 or t.shape[1] != self.dims[name]:
                raise ValueError(f"keys for {name!r} must be (n, {self.dims[name]}), got {tuple(t.shape)}")
        if n == 0:
            return
        slots = (self.ptr + torch.arange(n, device=self.ptr.device)) % self.size
        start = max(n - self.size, 0)  # n > size: earlier keys would be overwritten anyway
        slots = slots[start:]
        for name, t in named.items():
            buf = self[name]
            buf.index_copy_(0, slots.to(buf.device), t[start:].detach().to(buf.dtype))
        if self.track_age:
            self.age.add_(1)
            self.age.index_fill_(0, slots.to(self.age.device), 1)
        self.ptr.add_(n).remainder_(self.size)

    @torch.no_grad()
    def decayed(self, decay: float = 0.99999, *, name: str | None = None) -> Tensor:
        """MSCL's age-decayed queue ``queue * decay ** age[:, None]`` (a new tensor).

        ``name`` picks one of parallel queues (required then). Needs ``track_age=True``.
        """
        if not self.track_age:
            raise RuntimeError("decayed() needs MoCoQueue(..., track_age=True)")
        if name is None:
            if not self.single:
                raise ValueError("parallel queues: pass name=")
            name = "queue"
        queue = self[name]
        # float64 powers: ages grow to tens of thousands and decay is within 1e-5 of 1
        scale = torch.pow(torch.tensor(decay, dtype=torch.float64, device=queue.device), self.age.double())
        return queue * scale.to(queue.dtype)[:, None]

    def extra_repr(self) -> str:
        return f"size={self.size}, dims={self.dims}, track_age={self.track_age}"


def capped_queue_size(requested: int, dataset_size: int, videos_per_slot: float = 4) -> int:
    """``requested``, capped at the largest power of two <= ``dataset_size / videos_per_slot`` (at least 16).

    A queue much longer than the data set holds many keys of the same videos (and, for a while,
    the random initial rows), so small data sets get a shorter one: MoCo and DCLR use
    ``videos_per_slot = 4`` (UCF101's 9,537 videos give DCLR's 2048), MLFO 2, MSCL 1. At the scale
    the papers trained on, the requested size is kept.
    """
    cap = 2 ** max(4, int(math.floor(math.log2(max(dataset_size / videos_per_slot, 1)))))
    return min(requested, cap)


class MemoryBank(nn.Module):
    """A memory bank with one entry per training sample (Wu et al. 2018; CMC; IIC's ``NCEAverage``).

    The buffer ``bank`` ``(num_entries, dim)`` starts uniform in ``[-s, s]``,
    ``s = 1 / sqrt(dim / 3)`` (IIC/CMC's official init), drawn from ``generator`` (a seed or a
    ``torch.Generator``; default seed 0, the same on every rank).

    Order of use per step (as IIC): ``idx = sample_indices(y, k)``, ``w = gather(idx)``,
    logits from ``w`` and the query, and only THEN ``update(y, features)`` — the positive is the
    momentum-averaged memory from earlier steps, not the current feature.
    """

    def __init__(self, num_entries: int, dim: int, *, generator: torch.Generator | int | None = 0) -> None:
        super().__init__()
        if num_entries <= 0 or dim <= 0:
            raise ValueError(f"num_entries and dim must be positive, got {num_entries}, {dim}")
        self.num_entries, self.dim = int(num_entries), int(dim)
        g = _generator(generator)
        bound = 1.0 / math.sqrt(dim / 3)
        bank = torch.rand(num_entries, dim, generator=g, device=g.device if g is not None else None)
        self.register_buffer("bank", bank * (2 * bound) - bound)

    def sample_indices(self, targets: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """``(B, k + 1)`` long indices on the bank's device: column 0 is ``targets``, the other
        ``k`` uniform over ``[0, num_entries)``. As in the original, a sampled negative may be
        the target itself. ``generator`` (on any device) makes the draw reproducible."""
        if targets.dim() != 1:
            raise ValueError(f"targets must be (B,), got {tuple(targets.shape)}")
        device = generator.device if generator is not None else self.bank.device
        idx = torch.randint(self.num_entries, (targets.shape[0], k + 1), generator=generator, device=device)
        idx = idx.to(self.bank.device)
        idx[:, 0] = targets.to(device=self.bank.device, dtype=torch.long)
        return idx

    def gather(self, indices: Tensor) -> Tensor:
        """Bank rows for ``indices`` of shape ``(B, k + 1)``: ``(B, k + 1, dim)``, detached (a copy,
        so a later :meth:`update` does not disturb the autograd graph)."""
        return self.bank.index_select(0, indices.reshape(-1)).view(*indices.shape, self.dim).detach()

    @torch.no_grad()
    def update(self, targets: Tensor, features: Tensor, momentum: float = 0.5) -> None:
        """``bank[t] = normalize(momentum * bank[t] + (1 - momentum) * f)`` for each target ``t``.

        Call it after the logits are computed (see the class docstring). ``features`` ``(B, dim)``
        must be gathered across ranks by the caller, with ``targets``. If a target occurs more
        than once in the batch the last occurrence wins (each candidate mixes with the OLD bank
        row; written deterministically, also on CUDA, and without a device sync).
        """
        if targets.dim() != 1 or features.shape != (targets.shape[0], self.dim):
            raise ValueError(
                f"expected targets (B,) and features (B, {self.dim}), got {tuple(targets.shape)}, {tuple(features.shape)}"
            )
        targets = targets.to(device=self.bank.device, dtype=torch.long)
        mixed = momentum * self.bank.index_select(0, targets) + (1 - momentum) * features.detach().to(self.bank)
        new = F.normalize(mixed, dim=1)
        # for each row, the position of the last row with the same target: duplicates all write it
        order = torch.arange(targets.shape[0], device=targets.device)
        last = torch.where(targets[:, None] == targets[None, :], order[None, :], -1).amax(dim=1)
        self.bank.index_copy_(0, targets, new.index_select(0, last))

    def extra_repr(self) -> str:
        return f"num_entries={self.num_entries}, dim={self.dim}"


# --------------------------------------------------------------------------------------------
# Sinkhorn-Knopp (SwAV)
# --------------------------------------------------------------------------------------------


def _resolve_all_reduce(all_reduce: AllReduce | bool | None) -> AllReduce | None:
    if all_reduce is False:
        return None
    if all_reduce is None or all_reduce is True:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return dist.all_reduce
        if all_reduce is True:
            raise RuntimeError("all_reduce=True but torch.distributed is not initialised with world size > 1")
        return None
    return all_reduce


def _reduced(fn: AllReduce | None, t: Tensor, op: object) -> Tensor:
    if fn is None:
        return t
    out = fn(t, op=op)
    return out if isinstance(out, Tensor) else t


@torch.no_grad()
def sinkhorn_knopp(
    scores: Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    *,
    all_reduce: AllReduce | bool | None = None,
) -> Tensor:
    """SwAV's equal-partition soft codes by Sinkhorn-Knopp (Caron et al., NeurIPS 2020, Eq. 3 and
    its ``distributed_sinkhorn``; Cuturi 2013). Used by MLFO's prototype term.

    ``scores`` ``(N, K)``: N samples against K prototypes. In the ``(K, N)`` layout SwAV uses,
    ``Q = exp(scores / eps - max).T`` is normalised to total 1, then ``iterations`` times the rows
    (prototypes) are scaled to sum ``1/K`` and the columns (samples) to ``1/N``; finally each
    column is scaled to sum 1. Returns ``(N, K)`` float32 codes whose rows sum to 1 (each sample
    a distribution over prototypes); summed over samples each prototype gets about ``N/K``
    (exactly, as ``iterations`` grows). Runs in float32 without gradient (codes are targets),
    whatever the autocast state. ``+inf`` scores are replaced by the largest finite score (what
    MLFO's ``shoot_infs`` does to ``exp``'s infinities); ``-inf`` gives probability 0.

    Distributed: the prototype marginals are over the GLOBAL batch when each rank passes its own
    rows. ``all_reduce`` is a drop-in for ``torch.distributed.all_reduce`` (e.g.
    ``functools.partial(dist.all_reduce, group=pg)``), called as ``fn(t, op=ReduceOp.MAX)`` on
    the shift and ``fn(t, op=ReduceOp.SUM)`` on the total, the sample count and the row sums, in
    place (or returning the reduced tensor); ``N`` is then the global count. ``None`` (default)
    uses ``dist.all_reduce`` when torch.distributed is initialised with world size > 1.
    Pass ``all_reduce=False`` when ``scores`` already holds the global batch on every rank
    (e.g. computed from all-gathered features or a replicated queue, as MLFO does): reducing
    then would count every sample world-size times.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N, K), got {tuple(scores.shape)}")
    if epsilon <= 0 or iterations < 0:
        raise ValueError(f"need epsilon > 0 and iterations >= 0, got {epsilon}, {iterations}")
    reduce = _resolve_all_reduce(all_reduce)
    op_sum = dist.ReduceOp.SUM if dist.is_available() else "sum"
    op_max = dist.ReduceOp.MAX if dist.is_available() else "max"

    s = scores.detach().float() / epsilon  # float32, also under autocast
    n_local, k = s.shape
    finite = torch.isfinite(s)
    if s.numel():
        shift = s.masked_fill(~finite, float("-inf")).amax()
    else:
        shift = s.new_tensor(float("-inf"))
    shift = _reduced(reduce, shift, op_max)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    s = torch.where(s == float("inf"), shift, s)
    q = torch.exp(s - shift).t()  # (K, N)

    tiny = torch.finfo(torch.float32).tiny  # keeps an all-zero row / column at 0 instead of NaN
    total_count = _reduced(reduce, torch.stack([q.sum(), q.new_tensor(float(n_local))]), op_sum)
    q = q / total_count[0]
    n = total_count[1]
    for _ in range(iterations):
        rows = _reduced(reduce, q.sum(dim=1, keepdim=True), op_sum)
        q = q / rows.clamp_min(tiny) / k
        q = q / q.sum(dim=0, keepdim=True).clamp_min(tiny) / n
    q = q / q.sum(dim=0, keepdim=True).clamp_min(tiny)
    return q.t().contiguous()


# --------------------------------------------------------------------------------------------
# Momentum encoders and heads
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float, *, copy_buffers: bool = True) -> None:
    """Momentum (EMA) update of a key / teacher encoder (MoCo, He et al. 2020, Eq. 2).

    Parameters: ``target = momentum * target + (1 - momentum) * source``, with ``torch._foreach``
    ops (one kernel launch per group, not per tensor). ``momentum=1`` keeps the target,
    ``momentum=0`` copies the source. The two modules must have the same parameter (and buffer)
    structure, matched in registration order.

    Buffers (BatchNorm running stats, ``num_batches_tracked``) are copied from the source when
    ``copy_buffers`` (default), so an EMA encoder evaluated in eval mode has statistics that
    belong to weights close to its own. Note that official MoCo does NOT touch the key encoder's
    buffers (they come from its own train-mode forwards on key batches); pass
    ``copy_buffers=False`` for that behaviour.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    t_params, s_params = list(target.parameters()), list(source.parameters())
    if [p.shape for p in t_params] != [p.shape for p in s_params]:
        raise ValueError("target and source have different parameter shapes")
    if t_params:
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    if copy_buffers:
        t_bufs, s_bufs = list(target.buffers()), list(source.buffers())
        if [b.shape for b in t_bufs] != [b.shape for b in s_bufs]:
            raise ValueError("target and source have different buffer shapes")
        if t_bufs:
            torch._foreach_copy_(t_bufs, s_bufs)


def cosine_momentum(step: int, total_steps: int, base: float = 0.994, final: float = 1.0) -> float:
    """Cosine-annealed EMA momentum (BYOL, Grill et al. 2020; MSCL's MoCo v2 with base 0.994).

    ``final - (final - base) * (cos(pi * min(step / total_steps, 1)) + 1) / 2``: ``base`` at step
    0, ``final`` from ``total_steps`` on, ``(base + final) / 2`` halfway. MSCL counts ``step`` in
    samples seen (gathered batch size per forward) and ``total_steps`` = dataset size * epochs.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


class MLPHead(nn.Module):
    """Projection head ``Linear(in, hidden) [-> BatchNorm1d] -> ReLU -> Linear(hidden, out)``.

    MoCo v2's head (Chen et al. 2020) without BN; MLFO's ``project_global`` with BN. With
    ``normalize=True`` the output is L2-normalised (the embedding contrastive losses expect).
    """

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, *, batch_norm: bool = False, normalize: bool = False
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)]
        self.net = nn.Sequential(*layers)
        self.normalize = normalize

    def forward(self, x: Tensor) -> Tensor:
        x = self.net(x)
        return F.normalize(x, dim=-1) if self.normalize else x
