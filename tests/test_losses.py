"""methods.losses: every piece against values worked out by hand (plain `math` arithmetic)."""

from __future__ import annotations

import math
import threading

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from methods.losses import (
    MemoryBank,
    MLPHead,
    MoCoQueue,
    cosine_momentum,
    ema_update,
    info_nce,
    moco_logits,
    moco_loss,
    multi_positive_nce,
    sinkhorn_knopp,
)
from tests.helpers import FP32_TOL, assert_fp32_close, bf16_error, rows_of_norm


def nll(logits: list[float], positive: int) -> float:
    """-log softmax(logits)[positive], by hand."""
    return -math.log(math.exp(logits[positive]) / sum(math.exp(v) for v in logits))


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------------------------ info_nce

# q0 = (1, 0), q1 = (0.6, 0.8); k0 = (0.8, 0.6), k1 = (0, 1); all unit norm.
# dot products: q0.k0 = 0.8, q0.k1 = 0, q1.k0 = 0.48 + 0.48 = 0.96, q1.k1 = 0.8
Q2 = [[1.0, 0.0], [0.6, 0.8]]
K2 = [[0.8, 0.6], [0.0, 1.0]]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 0.07])
def test_info_nce_2x2_by_hand(temperature):
    T = temperature
    row0 = -math.log(math.exp(0.8 / T) / (math.exp(0.8 / T) + math.exp(0.0 / T)))
    row1 = -math.log(math.exp(0.8 / T) / (math.exp(0.96 / T) + math.exp(0.8 / T)))
    loss = info_nce(t(Q2), t(K2), temperature=T)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-12)


def test_info_nce_temperature_scales_logits():
    # T = 0.5 is the same as T = 1 on inputs scaled by 2 (logits are q.k / T)
    assert info_nce(t(Q2), t(K2), 0.5).item() == pytest.approx(info_nce(2 * t(Q2), t(K2), 1.0).item(), rel=1e-12)


def test_info_nce_positive_offset_picks_keys_offset_plus_i():
    # keys: k0 = (0, 1), k1 = (1, 0), k2 = (0.8, 0.6), k3 = (0, 1); offset 2 -> positives k2, k3
    keys = [[0.0, 1.0], [1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]
    T = 0.5
    l0 = [v / T for v in (0.0, 1.0, 0.8, 0.0)]  # q0 = (1, 0) against k0..k3
    l1 = [v / T for v in (0.8, 0.6, 0.96, 0.8)]  # q1 = (0.6, 0.8)
    expected = (nll(l0, 2) + nll(l1, 3)) / 2
    assert info_nce(t(Q2), t(keys), T, positive_offset=2).item() == pytest.approx(expected, rel=1e-12)
    expected0 = (nll(l0, 0) + nll(l1, 1)) / 2
    assert info_nce(t(Q2), t(keys), T).item() == pytest.approx(expected0, rel=1e-12)
    with pytest.raises(ValueError):
        info_nce(t(Q2), t(keys), T, positive_offset=3)


def test_info_nce_bf16_gives_float32_loss_and_gradients():
    q = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1).requires_grad_()
    k = F.normalize(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    loss = info_nce(q.bfloat16(), k.bfloat16(), positive_offset=4)
    assert loss.dtype == torch.float32
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


# ---------------------------------------------------------------------------------------- MoCo


def test_moco_logits_layout_and_loss_by_hand():
    T = 0.1
    q = t([[1.0, 0.0], [0.0, 1.0]])
    k = t([[0.6, 0.8], [0.0, 1.0]])
    queue = t([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    logits, labels = moco_logits(q, k, queue, T)
    # row 0: q.k+ = 0.6, q.Q = (0, 1, -1); row 1: q.k+ = 1, q.Q = (1, 0, 0)
    expected = [[6.0, 0.0, 10.0, -10.0], [10.0, 10.0, 0.0, 0.0]]
    assert torch.allclose(logits, t(expected), atol=1e-12)
    assert labels.tolist() == [0, 0] and labels.dtype == torch.long
    by_hand = (nll(expected[0], 0) + nll(expected[1], 0)) / 2
    assert moco_loss(q, k, queue, T).item() == pytest.approx(by_hand, rel=1e-12)


def test_moco_loss_survives_enqueue_before_backward():
    q = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    k = F.normalize(torch.randn(3, 4), dim=1)
    queue = MoCoQueue(8, 4)
    loss = moco_loss(q, k, queue.queue)
    queue.enqueue(k)  # in place into the buffer the loss read
    loss.backward()
    assert q.grad is not None


# ------------------------------------------------------------------------------ multi-positive


def test_multi_positive_nce_two_positives_by_hand():
    row = [1.0, 2.0, 0.5, -1.0]
    z = sum(math.exp(v) for v in row)
    expected = -math.log(math.exp(1.0) / z + math.exp(0.5) / z)  # -log(p0 + p2)
    mask = torch.tensor([[True, False, True, False]])
    assert multi_positive_nce(t([row]), mask).item() == pytest.approx(expected, rel=1e-12)


def test_multi_positive_nce_one_positive_is_cross_entropy_and_rows_are_averaged():
    rows = [[1.0, 2.0, 0.5, -1.0], [0.0, 0.3, -0.2, 4.0]]
    mask = torch.tensor([[True, False, True, False], [False, True, False, False]])
    z0 = sum(math.exp(v) for v in rows[0])
    expected = (-math.log((math.exp(1.0) + math.exp(0.5)) / z0) + nll(rows[1], 1)) / 2
    assert multi_positive_nce(t(rows), mask).item() == pytest.approx(expected, rel=1e-12)
    one = torch.zeros(2, 4, dtype=torch.bool)
    one[:, 0] = True
    assert multi_positive_nce(t(rows), one).item() == pytest.approx(
        F.cross_entropy(t(rows), torch.zeros(2, dtype=torch.long)).item(), rel=1e-12
    )


def test_multi_positive_nce_rejects_rows_without_positive_and_is_stable():
    mask = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match="at least one positive"):
        multi_positive_nce(torch.zeros(2, 2), mask)
    with pytest.raises(ValueError):
        multi_positive_nce(torch.zeros(2, 2), mask.float())
    big = torch.tensor([[1000.0, 999.0, -1000.0]])
    loss = multi_positive_nce(big, torch.tensor([[False, True, False]]))
    # -log(e^-1 / (1 + e^-1)); float32 near 1000 resolves ~6e-5
    assert loss.item() == pytest.approx(math.log(1 + math.e), abs=2e-4)


# ---------------------------------------------------------------------------------- MoCoQueue


def keys(start: float, n: int, d: int = 2) -> torch.Tensor:
    """Key i is the constant row start + i (easy to spot in the queue)."""
    return (start + torch.arange(n, dtype=torch.float32))[:, None].expand(n, d).clone()


def test_queue_init_is_normalised_and_seeded():
    a, b, c = MoCoQueue(6, 3, generator=1), MoCoQueue(6, 3, generator=1), MoCoQueue(6, 3, generator=2)
    assert a.queue.shape == (6, 3) and torch.allclose(a.queue.norm(dim=1), torch.ones(6))
    assert torch.equal(a.queue, b.queue) and not torch.equal(a.queue, c.queue)
    assert a.ptr.dtype == torch.long and int(a.ptr) == 0
    assert set(a.state_dict()) == {"queue", "ptr"}


def test_queue_wraps_around():
    q = MoCoQueue(5, 2)
    first, second = keys(10, 3), keys(20, 3)
    q.enqueue(first)
    assert int(q.ptr) == 3 and torch.equal(q.queue[:3], first)
    q.enqueue(second)
    assert int(q.ptr) == 1
    # slots 3, 4, 0 hold the second batch; 1, 2 still the tail of the first
    assert torch.equal(q.queue[[3, 4, 0]], second)
    assert torch.equal(q.queue[[1, 2]], first[1:])


def test_queue_more_keys_than_slots_keeps_the_last_size():
    q = MoCoQueue(5, 2)
    many = keys(0, 7)  # key j would go to slot j % 5: keys 5, 6 overwrite slots 0, 1
    q.enqueue(many)
    assert int(q.ptr) == 2
    assert torch.equal(q.queue, many[[5, 6, 2, 3, 4]])


def test_queue_detaches_and_casts_keys():
    q = MoCoQueue(4, 2)
    k = keys(1, 2).requires_grad_()
    q.enqueue(k.double() * 2)
    assert not q.queue.requires_grad and q.queue.dtype == torch.float32
    assert torch.equal(q.queue[:2], keys(1, 2) * 2)


def test_queue_ages_and_decay_by_hand():
    q = MoCoQueue(4, 2, track_age=True)
    assert q.age.tolist() == [0, 0, 0, 0]
    q.enqueue(keys(1, 2))  # all +1 -> [1,1,1,1]; slots 0, 1 -> 1
    assert q.age.tolist() == [1, 1, 1, 1]
    q.enqueue(keys(3, 1))  # [2,2,2,2]; slot 2 -> 1
    assert q.age.tolist() == [2, 2, 1, 2]
    q.enqueue(keys(4, 2))  # [3,3,2,3]; slots 3, 0 -> 1
    assert q.age.tolist() == [1, 3, 2, 1]
    expected = q.queue * torch.tensor([0.5, 0.125, 0.25, 0.5])[:, None]
    assert torch.allclose(q.decayed(0.5), expected)
    # default decay 0.99999: slot 1 has age 3
    assert torch.allclose(q.decayed()[1], q.queue[1] * 0.99999**3)
    with pytest.raises(RuntimeError):
        MoCoQueue(4, 2).decayed()


def test_queue_state_dict_round_trip():
    q = MoCoQueue(5, 2, track_age=True, generator=3)
    q.enqueue(keys(10, 3))
    r = MoCoQueue(5, 2, track_age=True, generator=4)
    r.load_state_dict(q.state_dict())
    for name in ("queue", "ptr", "age"):
        assert torch.equal(getattr(q, name), getattr(r, name))
    q.enqueue(keys(20, 4))
    r.enqueue(keys(20, 4))
    assert torch.equal(q.queue, r.queue) and int(r.ptr) == 2 and torch.equal(q.age, r.age)


def test_parallel_queues_share_one_pointer():
    q = MoCoQueue(4, {"vv": 2, "rs": 3}, track_age=True)
    assert q.names == ("vv", "rs")
    assert q["vv"].shape == (4, 2) and q["rs"].shape == (4, 3)
    assert set(q.state_dict()) == {"queue_vv", "queue_rs", "ptr", "age"}
    q.enqueue(vv=keys(10, 3, 2), rs=keys(20, 3, 3))
    q.enqueue(vv=keys(30, 2, 2), rs=keys(40, 2, 3))  # slots 3, 0 in both
    assert int(q.ptr) == 1
    assert torch.equal(q["vv"][[3, 0]], keys(30, 2, 2)) and torch.equal(q["rs"][[3, 0]], keys(40, 2, 3))
    assert torch.equal(q["vv"][[1, 2]], keys(11, 2, 2)) and torch.equal(q["rs"][[1, 2]], keys(21, 2, 3))
    assert torch.allclose(q.decayed(0.5, name="rs"), q["rs"] * torch.tensor([0.5, 0.25, 0.25, 0.5])[:, None])
    with pytest.raises(TypeError):
        q.enqueue(vv=keys(0, 1, 2))  # every queue or none: the pointer is shared
    with pytest.raises(ValueError):
        q.enqueue(vv=keys(0, 1, 2), rs=keys(0, 2, 3))
    with pytest.raises(KeyError):
        q["vd"]


# ---------------------------------------------------------------------------------- MemoryBank


def test_memory_bank_init_range():
    bank = MemoryBank(500, 12, generator=0)  # s = 1 / sqrt(12 / 3) = 0.5
    assert bank.bank.shape == (500, 12)
    assert bank.bank.min() >= -0.5 and bank.bank.max() <= 0.5
    assert bank.bank.min() < -0.49 and bank.bank.max() > 0.49
    assert torch.equal(bank.bank, MemoryBank(500, 12, generator=0).bank)


def test_memory_bank_sample_indices():
    bank = MemoryBank(10, 4)
    targets = torch.tensor([3, 7, 0])
    idx = bank.sample_indices(targets, 6, torch.Generator().manual_seed(5))
    assert idx.shape == (3, 7) and idx.dtype == torch.long
    assert idx[:, 0].tolist() == [3, 7, 0]
    assert idx.min() >= 0 and idx.max() < 10
    again = bank.sample_indices(targets, 6, torch.Generator().manual_seed(5))
    assert torch.equal(idx, again)
    w = bank.gather(idx)
    assert w.shape == (3, 7, 4) and torch.equal(w[1, 0], bank.bank[7]) and not w.requires_grad


def test_memory_bank_update_by_hand():
    bank = MemoryBank(3, 2)
    bank.bank.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]))
    before = bank.gather(torch.tensor([[0, 1, 2]]))
    bank.update(torch.tensor([0]), torch.tensor([[0.0, 1.0]]))  # 0.5 * (1, 0) + 0.5 * (0, 1)
    r = 1 / math.sqrt(2)
    assert torch.allclose(bank.bank[0], torch.tensor([r, r]))
    assert torch.equal(bank.bank[1:], torch.tensor([[0.0, 2.0], [3.0, 4.0]]))
    assert torch.equal(before[0, 0], torch.tensor([1.0, 0.0]))  # gathered rows are a copy
    # momentum 0.75 on row 2: 0.75 * (3, 4) + 0.25 * (1, 0) = (2.5, 3) -> / sqrt(6.25 + 9)
    bank.update(torch.tensor([2]), torch.tensor([[1.0, 0.0]]), momentum=0.75)
    assert torch.allclose(bank.bank[2], torch.tensor([2.5, 3.0]) / math.sqrt(15.25))


def test_memory_bank_duplicate_targets_last_write_wins():
    bank = MemoryBank(3, 2)
    bank.bank.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    # target 1 twice: the last feature (0, 1) mixes with the OLD row (1, 0)
    bank.update(torch.tensor([1, 2, 1]), torch.tensor([[5.0, 5.0], [0.0, 1.0], [0.0, 1.0]]))
    r = 1 / math.sqrt(2)
    assert torch.allclose(bank.bank[1], torch.tensor([r, r]))
    assert torch.allclose(bank.bank[2], torch.tensor([0.0, 1.0]))
    assert torch.equal(bank.bank[0], torch.tensor([1.0, 0.0]))


# ------------------------------------------------------------------------------ Sinkhorn-Knopp


def test_sinkhorn_2x2_by_hand():
    # eps = 1, scores = log P with P = [[2, 1], [1, 1]] (symmetric, so the K x N layout is the same).
    # total 5: [[.4, .2], [.2, .2]]; rows to 1/2: [[1/3, 1/6], [1/4, 1/4]];
    # columns to 1/2: col 0 sums 7/12 -> (2/7, 3/14), col 1 sums 5/12 -> (1/5, 3/10);
    # columns to 1: col 0 = (4/7, 3/7), col 1 = (2/5, 3/5); transposed: sample i = column i.
    scores = torch.tensor([[2.0, 1.0], [1.0, 1.0]]).log()
    codes = sinkhorn_knopp(scores, epsilon=1.0, iterations=1)
    assert torch.allclose(codes, torch.tensor([[4 / 7, 3 / 7], [2 / 5, 3 / 5]]), atol=1e-6)


def test_sinkhorn_rows_are_distributions_and_prototypes_equally_used():
    g = torch.Generator().manual_seed(0)
    n, k = 24, 4
    scores = F.normalize(torch.randn(n, 8, generator=g), dim=1) @ F.normalize(torch.randn(k, 8, generator=g), dim=1).t()
    codes = sinkhorn_knopp(scores)  # eps 0.05, 3 iterations
    assert codes.shape == (n, k) and codes.dtype == torch.float32
    assert torch.allclose(codes.sum(dim=1), torch.ones(n), atol=1e-5)
    assert (codes >= 0).all()
    # each prototype gets about N / K samples after 3 iterations (eps = 0.05 on cosines is sharp,
    # so 3 iterations are still far from converged: 4.7 .. 7.6 here), much more evenly than a
    # plain softmax would give (3.7 .. 11.2) ...
    marginals, plain = codes.sum(dim=0), torch.softmax(scores / 0.05, dim=1).sum(dim=0)
    assert torch.allclose(marginals, torch.full((k,), n / k), rtol=0.3)
    assert marginals.max() - marginals.min() < (plain.max() - plain.min()) / 2
    # ... and exactly N / K as the iterations converge
    converged = sinkhorn_knopp(scores, iterations=500)
    assert torch.allclose(converged.sum(dim=0), torch.full((k,), n / k), rtol=1e-4)
    assert torch.allclose(converged.sum(dim=1), torch.ones(n), atol=1e-5)
    # a skewed problem: without Sinkhorn prototype 0 would take every sample
    skewed = scores.clone()
    skewed[:, 0] += 0.5
    assert torch.allclose(sinkhorn_knopp(skewed, iterations=500).sum(dim=0), torch.full((k,), n / k), rtol=1e-3)


def test_sinkhorn_large_epsilon_is_uniform():
    scores = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(sinkhorn_knopp(scores, epsilon=1e6), torch.full((6, 3), 1 / 3), atol=1e-5)


def test_sinkhorn_infinities():
    finite = torch.tensor([[0.1, 0.0, -0.2], [0.2, 0.3, 0.0], [-0.1, 0.05, 0.1]])
    with_inf = finite.clone()
    with_inf[0, 1] = float("inf")
    replaced = finite.clone()
    replaced[0, 1] = 0.3  # the largest finite score
    codes = sinkhorn_knopp(with_inf)
    assert torch.isfinite(codes).all()
    assert torch.allclose(codes, sinkhorn_knopp(replaced))
    with_neg_inf = finite.clone()
    with_neg_inf[2, 0] = float("-inf")
    codes = sinkhorn_knopp(with_neg_inf)
    assert torch.isfinite(codes).all() and codes[2, 0] == 0
    assert torch.allclose(codes.sum(dim=1), torch.ones(3), atol=1e-6)


def test_sinkhorn_float32_under_autocast():
    scores = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = sinkhorn_knopp(scores.bfloat16())
    assert codes.dtype == torch.float32
    assert torch.allclose(codes, sinkhorn_knopp(scores.bfloat16().float()))


class ThreadAllReduce:
    """all_reduce across threads standing in for ranks (in place, as torch.distributed's)."""

    def __init__(self, world: int) -> None:
        self.slots: list[torch.Tensor | None] = [None] * world
        self.barrier = threading.Barrier(world)
        self.calls = 0

    def for_rank(self, rank: int):
        def all_reduce(tensor, op=dist.ReduceOp.SUM):
            self.slots[rank] = tensor.clone()
            self.barrier.wait()
            stacked = torch.stack(self.slots)
            result = stacked.amax(dim=0) if op == dist.ReduceOp.MAX else stacked.sum(dim=0)
            self.barrier.wait()
            tensor.copy_(result)
            self.calls += rank == 0

        return all_reduce


def test_sinkhorn_sharded_over_ranks_equals_global():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(12, 5, generator=g) * 0.3
    scores[7] += 2.0  # rank 1 holds the global max: the shift must be reduced too
    shards = [scores[:5], scores[5:]]  # uneven local batches
    fake = ThreadAllReduce(2)
    out: list[torch.Tensor | None] = [None, None]

    def run(rank):
        out[rank] = sinkhorn_knopp(shards[rank], iterations=3, all_reduce=fake.for_rank(rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert fake.calls == 2 + 3  # shift (max), total and count, one per iteration
    assert torch.allclose(torch.cat(out), sinkhorn_knopp(scores, iterations=3, all_reduce=False), atol=1e-6)


# ------------------------------------------------------------------------------- EMA, momentum


def pair() -> tuple[nn.Module, nn.Module]:
    target, source = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        for p in target.parameters():
            p.fill_(2.0)
        for p in source.parameters():
            p.fill_(12.0)
    source[1].running_mean.copy_(torch.tensor([5.0, 6.0, 7.0]))
    source[1].num_batches_tracked.fill_(9)
    return target, source


def test_ema_update_momentum_by_hand():
    target, source = pair()
    ema_update(target, source, 0.9)  # 0.9 * 2 + 0.1 * 12 = 3
    for p in target.parameters():
        assert torch.allclose(p, torch.full_like(p, 3.0))
    assert torch.equal(target[1].running_mean, torch.tensor([5.0, 6.0, 7.0]))
    assert int(target[1].num_batches_tracked) == 9
    for p in source.parameters():
        assert torch.equal(p, torch.full_like(p, 12.0))
        assert p.grad is None


def test_ema_update_endpoints_and_buffer_switch():
    target, source = pair()
    ema_update(target, source, 1.0, copy_buffers=False)
    for p in target.parameters():
        assert torch.equal(p, torch.full_like(p, 2.0))
    assert torch.equal(target[1].running_mean, torch.zeros(3))
    ema_update(target, source, 0.0)
    for pt, ps in zip(target.parameters(), source.parameters()):
        assert torch.equal(pt, ps)
    with pytest.raises(ValueError):
        ema_update(nn.Linear(2, 3), nn.Linear(3, 2), 0.5)
    with pytest.raises(ValueError):
        ema_update(target, source, 1.5)


def test_cosine_momentum():
    assert cosine_momentum(0, 100) == pytest.approx(0.994)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(250, 100) == pytest.approx(1.0)
    assert cosine_momentum(50, 100) == pytest.approx(0.997)  # (base + final) / 2
    # a quarter of the way: 1 - 0.006 * (cos(pi / 4) + 1) / 2
    assert cosine_momentum(25, 100) == pytest.approx(1 - 0.006 * (math.sqrt(0.5) + 1) / 2)
    assert cosine_momentum(3, 6, base=0.9, final=0.99) == pytest.approx(0.945)


# ----------------------------------------------------------------------------------- MLPHead


def test_mlp_head():
    x = torch.randn(4, 8)
    assert MLPHead(8, 16, 3)(x).shape == (4, 3)
    z = MLPHead(8, 16, 3, batch_norm=True, normalize=True)(x)
    assert z.shape == (4, 3) and torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-6)
    assert any(isinstance(m, nn.BatchNorm1d) for m in MLPHead(8, 16, 3, batch_norm=True).modules())
    assert not any(isinstance(m, nn.BatchNorm1d) for m in MLPHead(8, 16, 3).modules())


def test_capped_queue_size_keeps_paper_sizes_and_shrinks_for_small_data():
    from methods.losses import capped_queue_size

    assert capped_queue_size(2048, 9537) == 2048  # DCLR on UCF101 (2048 <= 2^11 <= 9537 / 4)
    assert capped_queue_size(65536, 9537) == 2048 and capped_queue_size(65536, 9537, videos_per_slot=1) == 8192
    assert capped_queue_size(1024, 100, videos_per_slot=2) == 32 and capped_queue_size(1024, 10) == 16  # floor 16


# ------------------------------------------------------------------------ fp32 under autocast

TOL = FP32_TOL


def norm20(*shape: int, seed: int) -> torch.Tensor:
    """Float32 rows of norm 20, the feature norm the issue measured bf16 logits at."""
    return rows_of_norm(*shape, seed=seed, norm=20)


def test_fp32_helpers_are_float32_under_bf16_autocast_and_keep_gradients():
    from methods.losses import fp32_einsum, fp32_matmul

    a, b = norm20(8, 128, seed=0).requires_grad_(), norm20(64, 128, seed=1)
    assert bf16_error(a.detach(), b) > 100 * TOL  # the failure mode: a bf16 product is off by far more
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ b.t()).dtype == torch.bfloat16  # what autocast does to a plain product
        mm = fp32_matmul(a, b.t())
        es = fp32_einsum("nc,kc->nk", a, b)
        from_bf16 = fp32_matmul(a.bfloat16(), b.t())  # a bf16 operand is upcast, the result float32
    ref = a.detach().double() @ b.double().t()
    assert_fp32_close(mm, ref)
    assert_fp32_close(es, ref)
    assert from_bf16.dtype == torch.float32
    mm.sum().backward()
    torch.testing.assert_close(a.grad, b.sum(0).expand(8, -1), rtol=1e-5, atol=1e-4)  # d(sum a b^T)/da


def test_moco_logits_and_info_nce_are_float32_under_bf16_autocast():
    T = 0.07
    q, k, queue = norm20(8, 128, seed=0), norm20(8, 128, seed=1), norm20(256, 128, seed=2)
    assert bf16_error(q, queue) > 100 * TOL
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = moco_logits(q, k, queue, T)
        nce = info_nce(q, torch.cat([k, queue]), temperature=1.0)
    # MoCo (He et al. 2020, Algorithm 1): [q . k+, q . queue^T] / T, in float64
    qd, kd, Qd = q.double(), k.double(), queue.double()
    ref = torch.cat([(qd * kd).sum(1, keepdim=True), qd @ Qd.t()], dim=1) / T
    assert_fp32_close(logits, ref)
    # InfoNCE (CPC Eq. 4): mean_i -log softmax(q_i . keys^T)_i, in float64
    all_logits = qd @ torch.cat([kd, Qd]).t()
    ref_nce = (torch.logsumexp(all_logits, dim=1) - all_logits.diagonal()).mean()
    assert nce.dtype == torch.float32 and nce.item() == pytest.approx(ref_nce.item(), rel=TOL)
