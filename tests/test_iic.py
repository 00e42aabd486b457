"""IIC (methods/iic.py): views, intra-negatives, the memory-bank loss, bank updates, DDP."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import methods.iic  # noqa: F401  (registers "iic")
from backbones import create_backbone
from core.data.transforms import sample_crop_params
from methods.base import TrainState, create_method, get_method
from methods.iic import (
    IIC,
    effective_k,
    fixed_crop_augment,
    iic_logits,
    iic_loss,
    repeat_negative,
    shuffle_negative,
)
from tests.helpers import free_port

WORLD = 2


def _iic(dataset_size=64, **overrides) -> IIC:
    torch.manual_seed(0)
    overrides = {"frames": 4, "crop": 32, **overrides}
    return create_method("iic", create_backbone("r3d_tiny"), dataset_size=dataset_size, overrides=overrides)


def _batch(b=8, t=4, seed=1, flow=False):
    g = torch.Generator().manual_seed(seed)
    batch = {"rgb": torch.rand(b, 1, 3, t, 32, 32, generator=g), "index": torch.arange(b) * 3}
    if flow:
        batch["flow"] = torch.rand(b, 1, 2, t, 32, 32, generator=g)
    return batch


# ------------------------------------------------------------------ registry, config, data spec


def test_builds_through_the_registry_with_paper_defaults():
    assert get_method("iic") is IIC
    m = create_method("iic", create_backbone("r3d_tiny"), dataset_size=64, overrides={"frames": 8, "crop": 32})
    c = m.config
    assert (c.nce_k, c.temperature, c.memory_momentum, c.view2, c.negative) == (1024, 0.07, 0.5, "residual", "repeat")
    assert c.intra_negative and not c.normalize_query
    assert m.k == 63  # capped at N - 1
    assert effective_k(1024, 9537) == 1024
    r = IIC.recipe
    assert (r.optimizer, r.lr, r.sgd_momentum, r.weight_decay, r.batch_size) == ("sgd", 0.01, 0.9, 1e-4, 16)
    assert (r.milestones, r.gamma, r.epochs) == ((45, 90, 125, 160), 0.2, 240)
    for bank in (m.bank_rgb, m.bank_view2, m.bank_neg):
        assert bank.bank.shape == (64, 128)
        assert bank.bank.abs().max() <= 1 / math.sqrt(128 / 3)
    assert not torch.equal(m.bank_rgb.bank, m.bank_view2.bank)
    with pytest.raises(ValueError):
        create_method("iic", create_backbone("r3d_tiny"), dataset_size=64, overrides={"view2": "depth"})


def test_data_spec_is_a_fixed_112_crop_of_128x171_without_colour_or_normalisation():
    m = IIC(IIC.Config(), create_backbone("r3d_tiny"), dataset_size=64)
    spec = m.data_spec()
    assert (spec.clips, spec.frames, spec.stride, spec.modalities, spec.decode_size) == (1, 16, 1, ("rgb",), (128, 171))
    a = spec.augment
    assert a.size == (112, 112) and a.flip_p == a.jitter_p == a.grey_p == a.blur_p == 0 and not a.normalize
    crop = sample_crop_params(200, a, torch.Generator().manual_seed(0), (128, 171))
    torch.testing.assert_close(crop.w * 171, torch.full((200,), 112.0, dtype=torch.float64))
    torch.testing.assert_close(crop.h * 128, torch.full((200,), 112.0, dtype=torch.float64))
    assert (crop.x0 * 171).min() >= 0 and (crop.x0 * 171 + 112).max() <= 171 + 1e-9
    assert len(torch.unique(crop.x0)) > 20  # random position
    assert _iic(view2="u").data_spec().modalities == ("rgb", "flow")
    assert fixed_crop_augment(32, (37, 49)).scale[0] == pytest.approx(32 * 32 / (37 * 49))


# ------------------------------------------------------------------ views and intra-negatives


def test_residual_view_values():
    m = _iic()
    x = torch.rand(2, 3, 4, 5, 5)
    r = m.view2_input({}, x)
    assert r.shape == x.shape
    torch.testing.assert_close(r[:, :, 1], (x[:, :, 1] - x[:, :, 0] + 1) / 2)
    torch.testing.assert_close(r[:, :, 0], (x[:, :, 0] - x[:, :, 3] + 1) / 2)  # roll wraps
    assert 0 <= r.min() and r.max() <= 1


def test_flow_views_replicate_one_channel():
    batch = _batch(b=2, flow=True)
    for name, ch in (("u", 0), ("v", 1)):
        x = _iic(view2=name).view2_input(batch, batch["rgb"][:, 0])
        assert x.shape == (2, 3, 4, 32, 32)
        for c in range(3):
            assert torch.equal(x[:, c], batch["flow"][:, 0, ch])
    assert _iic(view2="rgb").view2_input(batch, batch["rgb"][:, 0]) is None


def test_repeat_negative_is_static_and_made_of_one_input_frame():
    x = torch.arange(2 * 3 * 4 * 2 * 2, dtype=torch.float32).view(2, 3, 4, 2, 2)
    y = repeat_negative(x, torch.tensor([2, 0]))
    assert y.shape == x.shape
    for t in range(4):
        assert torch.equal(y[0, :, t], x[0, :, 2]) and torch.equal(y[1, :, t], x[1, :, 0])
    torch.manual_seed(0)
    z = repeat_negative(torch.rand(5, 3, 8, 4, 4))
    assert torch.equal(z, z[:, :, :1].expand_as(z))  # static


def _chunks(x, b):
    return [x[b, :, 2 * i : 2 * i + 2] for i in range(4)]


def test_shuffle_negative_swaps_exactly_two_of_four_chunks():
    x = torch.rand(3, 3, 8, 2, 2)
    y = shuffle_negative(x, torch.tensor([0, 1, 3]), torch.tensor([2, 3, 0]))
    expected = {0: [2, 1, 0, 3], 1: [0, 3, 2, 1], 2: [3, 1, 2, 0]}
    for b, order in expected.items():
        for pos, src in enumerate(order):
            assert torch.equal(_chunks(y, b)[pos], _chunks(x, b)[src])
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 2, 2)
    y = shuffle_negative(x)
    for b in range(64):
        same = [torch.equal(a, c) for a, c in zip(_chunks(y, b), _chunks(x, b))]
        assert sum(same) == 2  # two chunks moved, two stayed
        # same frames, other order
        frames_x = sorted(x[b].permute(1, 0, 2, 3).reshape(8, -1).tolist())
        frames_y = sorted(y[b].permute(1, 0, 2, 3).reshape(8, -1).tolist())
        assert frames_x == frames_y
    with pytest.raises(ValueError):
        shuffle_negative(x, torch.zeros(64, dtype=torch.long), torch.zeros(64, dtype=torch.long))


# ------------------------------------------------------------------ loss and bank update


def test_memory_bank_loss_matches_a_hand_computed_value():
    torch.manual_seed(3)
    bank_other = F.normalize(torch.randn(6, 4), dim=1)
    bank_neg = F.normalize(torch.randn(6, 4), dim=1)
    query = torch.randn(2, 4) * 3  # raw (unnormalised) query, as the original
    idx = torch.tensor([[1, 4, 0], [5, 5, 2]])  # column 0 = target; K = 2
    T = 0.07
    loss, logits = iic_loss(query, bank_other[idx], bank_neg[idx], T)
    assert logits.shape == (2, 6)
    expected = 0.0
    for b in range(2):
        scores = [float(query[b] @ bank_other[j]) / T for j in idx[b]] + [float(query[b] @ bank_neg[j]) / T for j in idx[b]]
        m = max(scores)
        expected += -(scores[0] - m - math.log(sum(math.exp(s - m) for s in scores)))
    assert loss.item() == pytest.approx(expected / 2, rel=1e-5)
    # CMC baseline: K + 1 logits
    assert iic_logits(query, bank_other[idx], None, T).shape == (2, 3)


def test_logits_use_the_old_bank_rows_and_the_update_is_a_half_half_mix():
    m = _iic(nce_k=8)
    batch = _batch()
    y = batch["index"]
    old = {n: getattr(m, n).bank.clone() for n in ("bank_rgb", "bank_view2", "bank_neg")}
    captured = {}
    real_loss = methods.iic.iic_loss

    def spy(query, other, neg, t):
        captured.setdefault("calls", []).append((query.detach().clone(), other.clone(), neg.clone()))
        return real_loss(query, other, neg, t)

    methods.iic.iic_loss = spy
    feats = []
    hook = m.backbone.register_forward_hook(lambda mod, inp, out: feats.append(out.detach().clone()))
    try:
        torch.manual_seed(5)
        m(batch, TrainState())
    finally:
        methods.iic.iic_loss = real_loss
        hook.remove()
    f1, f2, fn = feats
    (q1, w2, wn), (q2, w1, wn2) = captured["calls"]
    # positives (column 0) are the OLD rows of the other view's bank; intra-negatives the old Mn
    assert torch.equal(w2[:, 0], old["bank_view2"][y]) and torch.equal(w1[:, 0], old["bank_rgb"][y])
    assert torch.equal(wn[:, 0], old["bank_neg"][y]) and torch.equal(wn, wn2)
    assert torch.equal(q1, f1) and torch.equal(q2, f2)  # raw query
    for name, f in (("bank_rgb", f1), ("bank_view2", f2), ("bank_neg", fn)):
        new = getattr(m, name).bank
        torch.testing.assert_close(new[y], F.normalize(0.5 * old[name][y] + 0.5 * f, dim=1))
        rest = torch.ones(64, dtype=torch.bool)
        rest[y] = False
        assert torch.equal(new[rest], old[name][rest])


def test_intra_negative_switch_changes_the_logit_count():
    for flag, count in ((True, 2 * 16 + 2), (False, 16 + 1)):
        m = _iic(nce_k=16, intra_negative=flag)
        shapes = []
        real = methods.iic.iic_logits
        methods.iic.iic_logits = lambda *a: (lambda lg: shapes.append(lg.shape) or lg)(real(*a))
        try:
            out = m(_batch(), TrainState())
        finally:
            methods.iic.iic_logits = real
        assert shapes == [(8, count), (8, count)]
        assert (m.bank_neg is not None) == flag
        assert {"iic/loss_rgb", "iic/loss_view2", "iic/acc"} <= out.parts.keys()
        torch.testing.assert_close(out.loss.detach(), out.parts["iic/loss_rgb"] + out.parts["iic/loss_view2"])


def test_intra_negative_gets_no_gradient_but_updates_bn_statistics():
    m = _iic(nce_k=8, negative="shuffle")
    bn = next(mod for mod in m.backbone.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm))
    before = int(bn.num_batches_tracked)
    m(_batch(), TrainState()).loss.backward()
    assert int(bn.num_batches_tracked) == before + 3  # rgb, residual, intra-negative
    assert all(p.grad is not None for p in m.backbone.parameters() if p.requires_grad)
    # view2="rgb": the original's degenerate case, f2 = f1 (no second forward)
    m2 = _iic(nce_k=8, view2="rgb")
    feats = []
    m2.backbone.register_forward_hook(lambda mod, inp, out: feats.append(out))
    m2(_batch(), TrainState())
    assert len(feats) == 2  # rgb and the intra-negative


def _train(normalize_query: bool, lr: float, steps: int = 20) -> list[float]:
    m = _iic(nce_k=32, normalize_query=normalize_query)
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    batch = _batch()  # 8 videos, N = 64 bank entries
    torch.manual_seed(0)
    losses = []
    for _ in range(steps):
        out = m(batch, TrainState())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    return losses


@pytest.mark.parametrize("normalize_query", [False, True])
def test_loss_decreases_on_a_fixed_batch(normalize_query):
    losses = _train(normalize_query, lr=0.01)
    assert all(math.isfinite(v) for v in losses)
    early, late = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert late < early - 0.5, losses
    # the banks move towards the batch's features by themselves; training must beat that
    frozen = _train(normalize_query, lr=0.0)
    assert late < sum(frozen[-5:]) / 5 - 0.1, (losses, frozen)


# ------------------------------------------------------------------ DDP


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        method = _iic(nce_k=16)
        old = method.bank_rgb.bank.clone()
        ddp = nn.parallel.DistributedDataParallel(method, broadcast_buffers=False)
        torch.manual_seed(100 + rank)  # ranks draw different negatives and intra-negative frames
        full = _batch()
        local = {k: v[rank * 4 : (rank + 1) * 4] for k, v in full.items()}
        step = ddp(local, TrainState(world_size=WORLD, rank=rank))
        step.loss.backward()
        banks = torch.cat([method.bank_rgb.bank, method.bank_view2.bank, method.bank_neg.bank])
        gathered = [torch.empty_like(banks) for _ in range(WORLD)]
        dist.all_gather(gathered, banks)
        if rank == 0:
            changed = (method.bank_rgb.bank != old).any(dim=1).nonzero().flatten()
            torch.save({"banks": gathered, "changed": changed, "index": full["index"],
                        "loss": step.loss.item()}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_process_step_keeps_banks_identical(tmp_path):
    path = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(free_port(), path), nprocs=WORLD, join=True)
    r = torch.load(path, weights_only=False)
    assert torch.equal(r["banks"][0], r["banks"][1])
    assert math.isfinite(r["loss"])
    # every video of the global batch (both ranks' indices) was written into the banks
    assert r["changed"].tolist() == sorted(r["index"].tolist())


# ------------------------------------------------------------------ precision under autocast, effective settings


def test_bank_logits_are_float32_under_bf16_autocast():
    # IIC's query is the raw post-ReLU feature (norm ~20 on R3D); bank rows are unit norm
    g = torch.Generator().manual_seed(0)
    query = 20 * F.normalize(torch.randn(8, 128, generator=g), dim=1)
    other = F.normalize(torch.randn(8, 33, 128, generator=g), dim=2)
    neg = F.normalize(torch.randn(8, 33, 128, generator=g), dim=2)
    T, tol = 0.07, 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = iic_logits(query, other, neg, T)
    # IIC / CMC (NCEAverage, softmax path): [M_other[idx] . q, M_neg[idx] . q] / T, in float64
    rows = torch.cat([other, neg], dim=1).double()
    ref = torch.einsum("bkd,bd->bk", rows, query.double()) / T
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())
    # the failure mode this guards: the same product in bf16 is off by far more
    plain = torch.einsum("bkd,bd->bk", rows.bfloat16(), query.bfloat16()).double() / T
    assert (plain - ref).abs().max() > 100 * tol * ref.abs().max()


def test_training_step_runs_under_cpu_bf16_autocast():
    m = _iic(nce_k=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(_batch(), TrainState())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in m.backbone.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(b.bank.dtype == torch.float32 and torch.isfinite(b.bank).all() for b in (m.bank_rgb, m.bank_view2, m.bank_neg))


def test_effective_settings_report_k_capped_at_n_minus_1():
    # the documented cap: K = min(nce_k, N - 1) with N the training videos
    assert _iic(dataset_size=10).effective_settings() == {"nce_k": 9}
    assert _iic(dataset_size=10, nce_k=4).effective_settings() == {"nce_k": 4}
    assert _iic(dataset_size=9537, nce_k=1024, frames=4).effective_settings() == {"nce_k": 1024}  # UCF101: kept
