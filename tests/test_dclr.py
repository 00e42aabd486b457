"""DCLR (methods/dclr.py): views, activation maps, neighbour positives, ablations, DDP, a harness run."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import core.distributed
import methods.dclr  # noqa: F401  (registers "dclr")
from backbones import create_backbone
from core.distributed import convert_sync_batchnorm
from harness.train import build_optimizer
from methods.base import Recipe, TrainState, create_method, get_method
from methods.dclr import (
    DCLR,
    activation_map,
    map_regularizer,
    neighbour_mask,
    normalize_map,
    reference_similarity,
    reweighted_pool,
    warmup_active,
)
from methods.losses import capped_queue_size, moco_logits, multi_positive_nce
from tests.helpers import free_port

WORLD = 2
ALL_PARTS = {"dclr/vv", "dclr/vs", "dclr/sv", "dclr/vd", "dclr/dv", "dclr/map_reg"}


def _dclr(dataset_size=64, **overrides) -> DCLR:
    torch.manual_seed(0)
    overrides = {"frames": 4, "crop": 32, "warmup_iterations": 0, **overrides}
    return create_method("dclr", create_backbone("r3d_tiny"), dataset_size=dataset_size, overrides=overrides)


def _batch(b=4, t=4, seed=1) -> dict:
    """(B, 4, 3, T, 32, 32) = [q, k, static q, static k]: each video's frames plus noise per clip."""
    g = torch.Generator().manual_seed(seed)
    videos = torch.randn(b, 3, t, 32, 32, generator=g)
    static = videos[:, :, :1].expand(-1, -1, t, -1, -1)
    clips = [videos, videos, static, static]
    rgb = torch.stack([c + 0.3 * torch.randn(b, 3, t, 32, 32, generator=g) for c in clips], dim=1)
    rgb[:, 2:] = rgb[:, 2:, :, :1].expand(-1, -1, -1, t, -1, -1).clone()  # static clips stay static
    return {"rgb": rgb, "index": torch.arange(b)}


# ------------------------------------------------------------------ registry, config, data spec


def test_builds_through_the_registry_with_the_readme_recipe():
    assert get_method("dclr") is DCLR
    m = DCLR(DCLR.Config(), create_backbone("r3d_tiny"), dataset_size=9537)
    c = m.config
    assert (c.embed_dim, c.temperature, c.momentum, c.topk, c.map_reg_weight, c.warmup_iterations) == (128, 0.07, 0.999, 5, 0.1, 256)
    assert c.static_branch and c.dynamic_branch and c.reweight and c.neighbours and c.map_regularizer
    r = DCLR.recipe
    assert (r.optimizer, r.lr, r.sgd_momentum, r.weight_decay, r.batch_size) == ("sgd", 0.01, 0.9, 1e-4, 40)
    assert (r.schedule, r.milestones, r.gamma, r.epochs) == ("multistep", (120, 160), 0.1, 200)
    # queue: 2048 for UCF101-sized data (9,537 videos), 16384 for K400; 40 does not divide it (no assertion)
    assert m.queue.size == 2048 and capped_queue_size(16384, 240_000) == 16384 and capped_queue_size(16384, 64) == 16
    assert set(m.queue.names) == {"vv", "vs", "sv", "vd", "dv"} and set(m.heads) == {"vv", "vs", "sv", "vd", "dv"}
    assert not any(p.requires_grad for p in [*m.key_backbone.parameters(), *m.key_heads.parameters()])
    head = m.heads["vv"].net[0]
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.1) and not head.bias.any()  # view_resnet.py's init


def test_data_spec_is_four_independently_augmented_clips_from_the_with_static_sampler():
    spec = DCLR(DCLR.Config(), create_backbone("r3d_tiny"), dataset_size=64).data_spec()
    assert (spec.clips, spec.frames, spec.stride, spec.sampler, spec.shared_crop) == (4, 16, 2, "with_static", False)
    assert spec.decode_size == (128, 171) and spec.modalities == ("rgb",)
    a = spec.augment
    assert a.size == (112, 112) and a.scale == (0.2, 1.0) and a.blur_kernel == 11 and a.normalize
    assert (a.flip_p, a.jitter, a.jitter_p, a.grey_p, a.blur_p, a.blur_sigma) == (0.5, (0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.5, (0.1, 2.0))
    small = _dclr().data_spec()
    assert small.augment.size == (32, 32) and small.augment.blur_kernel == 3 and small.decode_size == (37, 49)


def test_data_spec_greys_before_jitter_and_needs_dclr_32_frame_windows():
    # moco/loader.py::MocoAugment_GPU: RandomGrayscale(p=0.2), then ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8).
    # dataset/ucf101_view.py: VideoClips of frame_per_clip * stride = 32 frames (videos without one are
    # dropped), clip = window[::2], static_idx = randint(0, 32): starts 0..n-32, offsets 0..31.
    import numpy as np

    from core.data.sampling import build_sampler, frames_needed
    from core.data.request import ClipSpec

    spec = DCLR(DCLR.Config(), create_backbone("r3d_tiny"), dataset_size=64).data_spec()
    assert spec.augment.grey_before_jitter
    clip_spec = ClipSpec(spec.frames, spec.stride, spec.clips)
    assert frames_needed(spec.sampler, clip_spec) == 32
    sample = build_sampler(spec.sampler, None, None)
    starts, offsets = set(), set()
    for seed in range(3000):
        q, k, sq, _ = sample(0, 40, clip_spec, np.random.default_rng(seed))
        starts |= {int(q[0]), int(k[0])}
        offsets.add(int(sq[0] - q[0]))
    assert starts == set(range(9)) and offsets == set(range(32))  # n - 31 = 9 starts


# ------------------------------------------------------------------ views and activation maps


def test_static_and_dynamic_views_on_hand_built_clips():
    m = _dclr()
    t = 4
    level = torch.tensor([1.0, 4.0, 9.0, 16.0])  # frame t of clip q has value level[t]
    rgb = torch.zeros(2, 4, 3, t, 2, 2)
    rgb[:, 0] = level.view(1, 1, t, 1, 1)
    rgb[:, 1] = -level.view(1, 1, t, 1, 1)
    rgb[:, 2] = 7.0  # static q: one frame repeated
    rgb[:, 3] = 5.0
    q, k = m.view_stack(rgb, 0), m.view_stack(rgb, 1)
    assert q.shape == (2, 3, 3, t, 2, 2)  # [RGB, static, dynamic]
    assert torch.equal(q[:, 0], rgb[:, 0]) and torch.equal(q[:, 1], rgb[:, 2])
    assert torch.equal(k[:, 0], rgb[:, 1]) and torch.equal(k[:, 1], rgb[:, 3])
    # dynamic = x - roll(x, 1, T), unscaled, frame 0 wraps to x0 - x_{T-1}
    expected = torch.tensor([1 - 16.0, 4 - 1.0, 9 - 4.0, 16 - 9.0])
    assert torch.equal(q[0, 2, 0, :, 0, 0], expected) and torch.equal(k[0, 2, 0, :, 0, 0], -expected)
    # switches drop views: static off -> [RGB, dynamic]; dynamic off -> [RGB, static]
    assert torch.equal(_dclr(static_branch=False).view_stack(rgb, 0)[:, 1], q[:, 2])
    assert _dclr(dynamic_branch=False).view_stack(rgb, 0).shape[1] == 2


def test_activation_map_is_the_channel_sum_and_its_normalisation_has_mean_one():
    x = torch.rand(3, 5, 2, 3, 3) * torch.tensor([1.0, 10.0, 100.0]).view(3, 1, 1, 1, 1)
    a = activation_map(x)
    assert a.shape == (3, 1, 2, 3, 3)
    torch.testing.assert_close(a[:, 0], x.sum(dim=1))
    w = normalize_map(a)
    torch.testing.assert_close(w.mean(dim=(1, 2, 3, 4)), torch.ones(3))
    torch.testing.assert_close(w[2], a[2] / a[2].mean())  # scale-free: the same map at any magnitude
    assert torch.isfinite(normalize_map(torch.zeros(1, 1, 2, 2, 2))).all()
    # re-weighted pooling: a uniform weight is plain GAP; a one-hot (mean-normalised) weight picks one position
    torch.testing.assert_close(reweighted_pool(x, torch.ones(3, 1, 2, 3, 3)), x.mean(dim=(2, 3, 4)))
    torch.testing.assert_close(reweighted_pool(x, None), x.mean(dim=(2, 3, 4)))
    one_hot = torch.zeros(3, 1, 2, 3, 3)
    one_hot[:, :, 1, 2, 0] = 1.0
    torch.testing.assert_close(reweighted_pool(x, normalize_map(one_hot)), x[:, :, 1, 2, 0])


def test_map_regulariser_value_and_gradient_path():
    rgb_map = torch.tensor([1.0, 3.0, 2.0, 2.0]).view(1, 1, 1, 2, 2).requires_grad_()
    target = torch.tensor([2.0, 2.0, 4.0, 0.0]).view(1, 1, 1, 2, 2).requires_grad_()
    reg = map_regularizer(rgb_map, target)
    # normalised: rgb / 2 = [.5, 1.5, 1, 1]; target / 2 = [1, 1, 2, 0]; squared errors .25 .25 1 1
    assert reg.item() == pytest.approx(2.5 / 4)
    reg.backward()
    assert rgb_map.grad is not None and target.grad is None  # the static + dynamic maps are a target
    assert map_regularizer(3 * target.detach(), target.detach()).item() == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------ neighbour positives and the loss


def _unit(degrees):
    rad = torch.tensor(degrees, dtype=torch.float32) * math.pi / 180
    return torch.stack([torch.cos(rad), torch.sin(rad)], dim=1)


def test_neighbour_mining_returns_the_top5_queue_indices_shifted_by_one():
    queue = _unit([170, 10, 100, 45, -20, 80, -60, 200])
    reference = _unit([0, 90])
    sim = reference_similarity(reference, queue)
    cos = reference @ queue.T
    torch.testing.assert_close(sim[0], torch.tensor([math.exp(c) for c in cos[0]]) / sum(math.exp(c) for c in cos[0]))
    mask = neighbour_mask(sim, topk=5)
    assert mask.shape == (2, 9)
    # row 0 (0 deg): nearest are 10, -20, 45, -60, 80 deg = queue rows 1, 4, 3, 6, 5 -> columns 2, 5, 4, 7, 6
    assert mask[0].nonzero().flatten().tolist() == [0, 2, 4, 5, 6, 7]
    # row 1 (90 deg): 80, 100, 45, 10, 170 deg = rows 5, 2, 3, 1, 0 -> columns 6, 3, 4, 2, 1
    assert mask[1].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 6]
    single = neighbour_mask(None, 5, batch=2, queue_size=8)
    assert single.sum(dim=1).tolist() == [1, 1] and single[:, 0].all()


def test_multi_positive_nce_equals_a_hand_computed_value():
    T = 0.07
    q = _unit([0, 30])
    k = _unit([20, 40])
    queue = _unit([90, 10, 180, -30])
    logits, _ = moco_logits(q, k, queue, T)
    mask = torch.tensor([[1, 0, 1, 0, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    expected = 0.0
    for row, (qa, ka) in enumerate(((0, 20), (30, 40))):
        angles = [ka, 90, 10, 180, -30]
        scores = [math.cos(math.radians(qa - a)) / T for a in angles]
        top = max(scores)
        total = sum(math.exp(s - top) for s in scores)
        pos = sum(math.exp(s - top) for s, p in zip(scores, mask[row].tolist()) if p)
        expected += -math.log(pos / total)
    assert multi_positive_nce(logits, mask).item() == pytest.approx(expected / 2, rel=1e-5)


def test_positive_sets_use_static_dynamic_and_summed_similarities():
    m = _dclr(queue_size=8, embed_dim=2)
    queue_s = _unit([170, 10, 100, 45, -20, 80, -60, 200])
    queue_d = _unit([20, 95, 90, 85, 180, 175, 185, 270])
    m.queue["sv"].copy_(queue_s)
    m.queue["dv"].copy_(queue_d)
    ref = {"r_s": _unit([0]), "r_d": _unit([90])}
    masks = m.positive_masks(ref, batch=1)
    assert masks["vs"][0].nonzero().flatten().tolist() == [0, 2, 4, 5, 6, 7] and torch.equal(masks["vs"], masks["sv"])
    cos_d = [math.cos(math.radians(90 - a)) for a in (20, 95, 90, 85, 180, 175, 185, 270)]
    top_d = sorted(range(8), key=lambda j: -cos_d[j])[:5]
    assert masks["vd"][0].nonzero().flatten().tolist() == [0] + sorted(j + 1 for j in top_d) and torch.equal(masks["vd"], masks["dv"])
    cos_s = [math.cos(math.radians(a)) for a in (170, 10, 100, 45, -20, 80, -60, 200)]
    soft = [math.exp(c) / sum(math.exp(x) for x in cos_s) + math.exp(d) / sum(math.exp(x) for x in cos_d) for c, d in zip(cos_s, cos_d)]
    top_v = sorted(range(8), key=lambda j: -soft[j])[:5]
    assert masks["vv"][0].nonzero().flatten().tolist() == [0] + sorted(j + 1 for j in top_v)
    off = _dclr(queue_size=8, embed_dim=2, neighbours=False).positive_masks(ref, batch=1)
    assert all(v.sum().item() == 1 and v[0, 0] for v in off.values())


# ------------------------------------------------------------------ the step and its switches


def test_the_step_pairs_heads_with_the_other_sides_queues_and_enqueues_every_key():
    m = _dclr(queue_size=16)
    batch = _batch(b=4)
    old = {n: m.queue[n].clone() for n in m.queue.names}
    out = m(batch, TrainState())
    assert out.parts.keys() == ALL_PARTS | {"dclr/acc"}
    total = sum(out.parts[p] for p in ALL_PARTS - {"dclr/map_reg"}) + 0.1 * out.parts["dclr/map_reg"]
    torch.testing.assert_close(out.loss.detach(), total)
    assert int(m.queue.ptr) == 4
    for n in m.queue.names:  # the first 4 slots now hold this step's keys, the rest is untouched
        assert not torch.equal(m.queue[n][:4], old[n][:4]) and torch.equal(m.queue[n][4:], old[n][4:])
        torch.testing.assert_close(m.queue[n][:4].norm(dim=1), torch.ones(4))
    # the enqueued vs keys are the key encoder's static-weighted RGB embeddings of clip k
    k = m.keys(m.view_stack(batch["rgb"], 1))
    torch.testing.assert_close(m.queue["vs"][:4], k["vs"])
    out.loss.backward()
    assert all(p.grad is not None for p in m.heads.parameters()) and all(p.grad is not None for p in m.backbone.parameters())


@pytest.mark.parametrize("switch, removed", [
    ("static_branch", {"dclr/vs", "dclr/sv"}),
    ("dynamic_branch", {"dclr/vd", "dclr/dv"}),
    ("map_regularizer", {"dclr/map_reg"}),
    ("reweight", set()),
    ("neighbours", set()),
])
def test_each_ablation_switch_removes_exactly_its_loss_parts(switch, removed):
    batch = _batch(b=4)
    full = _dclr(queue_size=16)(batch, TrainState()).parts
    ablated = _dclr(queue_size=16, **{switch: False})(batch, TrainState()).parts
    assert set(ablated) == (ALL_PARTS - removed) | {"dclr/acc"}
    if switch == "reweight":  # only the terms with a re-weighted query (vs, vd) or key (sv, dv) change
        for p in ("dclr/vv", "dclr/map_reg"):
            torch.testing.assert_close(ablated[p], full[p])
        for p in ("dclr/vs", "dclr/sv", "dclr/vd", "dclr/dv"):
            assert not torch.allclose(ablated[p], full[p]), p
    if switch == "neighbours":  # a single positive: every term is the plain (larger) MoCo NCE
        for p in ALL_PARTS - {"dclr/map_reg"}:
            assert ablated[p] > full[p]
    if switch == "map_regularizer":
        for p in ALL_PARTS - removed:
            torch.testing.assert_close(ablated[p], full[p])
    both = _dclr(queue_size=16, static_branch=False, dynamic_branch=False)(batch, TrainState()).parts
    assert set(both) == {"dclr/vv", "dclr/acc"}


def test_warmup_skips_the_optimizer_for_the_first_steps_of_epoch_zero():
    assert warmup_active(TrainState(step=255, epoch=0), 256) and not warmup_active(TrainState(step=256, epoch=0), 256)
    assert not warmup_active(TrainState(step=3, epoch=1), 256) and not warmup_active(TrainState(step=0), 0)
    m = _dclr(warmup_iterations=2, static_branch=False, dynamic_branch=False)
    assert [m(_batch(b=2), TrainState(step=s)).skip_optimizer for s in range(3)] == [True, True, False]


def test_key_encoder_is_an_ema_of_the_query_encoder():
    m = _dclr(momentum=0.9)
    with torch.no_grad():
        for p in [*m.backbone.parameters(), *m.heads.parameters()]:
            p.add_(1.0)
    before = [p.clone() for p in [*m.key_backbone.parameters(), *m.key_heads.parameters()]]
    m.update_momentum(TrainState(step=1))
    after = [*m.key_backbone.parameters(), *m.key_heads.parameters()]
    query = [*m.backbone.parameters(), *m.heads.parameters()]
    for b, a, q in zip(before, after, query):
        torch.testing.assert_close(a, 0.9 * b + 0.1 * q)


def _train(lr: float, steps: int) -> list[float]:
    # two fixed half-batches alternate and the queue holds one half: its negatives are the other half
    m = _dclr(queue_size=8)
    optimizer = build_optimizer(m.parameters(), Recipe(lr=lr))
    batch = _batch(b=16, seed=3)
    halves = [{k: v[:8] for k, v in batch.items()}, {k: v[8:] for k, v in batch.items()}]
    losses = []
    for step in range(steps):
        out = m(halves[step % 2], TrainState(step=step))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        m.update_momentum(TrainState(step=step + 1))
        losses.append(float(out.loss.detach()))
    return losses


def test_loss_decreases_on_a_fixed_batch():
    losses = _train(lr=0.003, steps=16)
    assert all(math.isfinite(v) for v in losses)
    early, late = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert late < 0.8 * early, losses
    frozen = _train(lr=0.0, steps=4)  # the queue fills by itself; training must beat that
    assert late < sum(frozen[2:]) / 2 - 0.3, (losses, frozen)


# ------------------------------------------------------------------ DDP


def _ddp_step(rank: int, sync_bn: bool) -> dict:
    method = _dclr(queue_size=16)
    if sync_bn:
        method = convert_sync_batchnorm(method)
    ddp = nn.parallel.DistributedDataParallel(method, broadcast_buffers=False)
    local = {k: v[rank * 2 : (rank + 1) * 2] for k, v in _batch(b=4).items()}
    shuffles = []
    real_shuffle = core.distributed.batch_shuffle  # what shuffle_bn_forward calls
    core.distributed.batch_shuffle = lambda x: shuffles.append(x.shape) or real_shuffle(x)
    try:
        out = ddp(local, TrainState(world_size=WORLD, rank=rank))
    finally:
        core.distributed.batch_shuffle = real_shuffle
    out.loss.backward()
    loss = out.loss.detach().clone()
    dist.all_reduce(loss)
    queues = torch.cat([method.queue[n] for n in method.queue.names])
    gathered = [torch.empty_like(queues) for _ in range(WORLD)]
    dist.all_gather(gathered, queues)
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    return {"loss": loss / WORLD, "queues": gathered, "ptr": int(method.queue.ptr), "shuffles": shuffles, "grads": grads}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        results = {"shuffle": _ddp_step(rank, sync_bn=False), "sync": _ddp_step(rank, sync_bn=True)}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ddp") / "dclr.pt")
    mp.spawn(_worker, args=(free_port(), out), nprocs=WORLD, join=True)
    return torch.load(out, weights_only=False)


@pytest.mark.slow
def test_ddp_step_with_shuffle_bn_keeps_queues_identical(ddp_results):
    r = ddp_results["shuffle"]
    assert r["shuffles"] == [(2, 3, 3, 4, 32, 32)]  # the key clip's three views, shuffled together
    assert math.isfinite(float(r["loss"])) and r["ptr"] == 4  # both ranks' keys enqueued
    assert torch.equal(r["queues"][0], r["queues"][1])


@pytest.mark.slow
def test_ddp_step_with_sync_bn_equals_the_single_process_step(ddp_results):
    r = ddp_results["sync"]
    assert r["shuffles"] == []  # SyncBN replaces the shuffle
    method = _dclr(queue_size=16)
    out = method(_batch(b=4), TrainState())
    out.loss.backward()
    torch.testing.assert_close(r["loss"], out.loss.detach(), rtol=1e-4, atol=1e-5)
    single = {n: p.grad for n, p in method.named_parameters() if p.grad is not None}
    assert r["grads"].keys() == single.keys()
    for name, grad in single.items():
        torch.testing.assert_close(r["grads"][name], grad, rtol=5e-3, atol=5e-5, msg=name)
    queues = torch.cat([method.queue[n] for n in method.queue.names])
    torch.testing.assert_close(r["queues"][0], queues, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ through the harness


def test_two_harness_steps_on_real_videos_with_the_queue_warmup(motionshapes_tiny, tmp_path):
    from core.config import PretrainConfig
    from harness.train import Pretraining

    cfg = PretrainConfig(method="dclr", backbone="r3d_tiny", epochs=1, batch_size=4, device="cpu", output_dir=str(tmp_path / "runs"),
                         method_args={"frames": 8, "crop": 32, "warmup_iterations": 1}, progress=False)
    cfg.data.path, cfg.data.workers = str(motionshapes_tiny), 0
    run = Pretraining(cfg)
    seen = []
    step = run.method.training_step
    run.method.training_step = lambda batch, state: seen.append(batch["rgb"].clone()) or step(batch, state)
    batches = iter(run.loader)
    params = lambda: [p.detach().clone() for p in run.method.backbone.parameters()]  # noqa: E731
    start = params()
    out = run.train_step([next(batches)])  # step 0: warm-up, backward but no optimizer step
    assert all(torch.equal(a, b) for a, b in zip(start, params()))
    assert int(run.method.queue.ptr) == 4
    out2 = run.train_step([next(batches)])  # step 1: a real update
    assert not all(torch.equal(a, b) for a, b in zip(start, params()))
    rgb = seen[0]
    assert rgb.shape == (4, 4, 3, 8, 32, 32)
    assert torch.equal(rgb[:, 2:], rgb[:, 2:, :, :1].expand_as(rgb[:, 2:]))  # static clips: one frame repeated
    assert not torch.equal(rgb[:, :2], rgb[:, :2, :, :1].expand_as(rgb[:, :2]))
    for o in (out, out2):
        assert ALL_PARTS <= o.parts.keys() and math.isfinite(float(o.loss))


# ------------------------------------------------------------------ precision under autocast, effective settings, released key maps


def test_logits_and_neighbour_similarities_are_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    q, k = 20 * F.normalize(torch.randn(8, 128, generator=g), dim=1), 20 * F.normalize(torch.randn(8, 128, generator=g), dim=1)
    queue = F.normalize(torch.randn(256, 128, generator=g), dim=1)
    ref_emb = F.normalize(torch.randn(8, 128, generator=g), dim=1)  # the reference embeddings are unit norm
    T, tol = 0.07, 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = moco_logits(q, k, queue, T)
        sim = reference_similarity(ref_emb, queue)
    qd, rd, Qd = q.double(), ref_emb.double(), queue.double()
    ref_logits = torch.cat([(qd * k.double()).sum(1, keepdim=True), qd @ Qd.t()], dim=1) / T  # [q.k+, q.Q] / T
    ref_sim = torch.softmax(rd @ Qd.t(), dim=1)  # calculate_similarity: softmax(r . Q), no temperature
    for out, ref in ((logits, ref_logits), (sim, ref_sim)):
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())
    # the failure mode: the same similarities from a bf16 product are off by far more
    plain = torch.softmax((ref_emb.bfloat16() @ queue.bfloat16().t()).double(), dim=1)
    assert ((plain - ref_sim).abs() / ref_sim).max() > 50 * tol  # measured 9e-4


def test_training_step_runs_under_cpu_bf16_autocast():
    m = _dclr(queue_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(_batch(b=4), TrainState())
    assert out.parts.keys() == ALL_PARTS | {"dclr/acc"}
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in [*m.backbone.parameters(), *m.heads.parameters()])
    assert all(m.queue[n].dtype == torch.float32 and torch.isfinite(m.queue[n]).all() for n in m.queue.names)


def test_effective_settings_report_the_capped_queue_and_topk():
    # the cap: the largest power of two <= N / 4, at least 16; top-k at most the queue length
    assert _dclr(dataset_size=64).effective_settings() == {"queue_size": 16, "topk": 5}  # 64 / 4 = 16
    assert _dclr(dataset_size=1000).effective_settings() == {"queue_size": 128, "topk": 5}  # 250 -> 128
    assert _dclr(dataset_size=64, topk=40).effective_settings() == {"queue_size": 16, "topk": 16}
    assert _dclr(dataset_size=9537).effective_settings()["queue_size"] == 2048  # UCF101, as the README


def test_official_key_maps_reweight_each_key_with_the_maps_of_the_clip_shuffled_into_its_row():
    # builder.py: maps of the unshuffled key clip (l. 411) re-weight the shuffled key batch (l. 420-421)
    aligned_m, official_m = _dclr(queue_size=16), _dclr(queue_size=16, official_key_maps=True)
    views = aligned_m.view_stack(_batch(b=8, seed=4)["rgb"], 1)
    torch.manual_seed(11)
    perm = torch.randperm(8)  # the draw the released pass makes after this seed: row i holds video perm[i]
    assert not torch.equal(perm, torch.arange(8))
    torch.manual_seed(11)
    with torch.no_grad():
        official = official_m.keys(views)
        aligned = aligned_m.keys(views)
        maps = aligned_m._layer4(aligned_m.key_backbone, views)
        w = aligned_m._weights(maps)
        inv = torch.argsort(perm)  # video j sits in shuffled row inv[j] and gets video inv[j]'s maps
        expected = aligned_m._embed(aligned_m.key_heads, maps, {v: w[v][inv] for v in ("s", "d")})
    for n in ("vv", "sv", "dv"):  # no re-weighting: the same as the aligned pass (BN sees the same batch)
        torch.testing.assert_close(official[n], aligned[n], rtol=1e-4, atol=1e-5)
    for n in ("vs", "vd"):
        torch.testing.assert_close(official[n], expected[n], rtol=1e-4, atol=1e-5)
        moved = inv != torch.arange(8)
        assert not torch.allclose(official[n][moved], aligned[n][moved], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="official_key_maps"):
        DCLR.Config(official_key_maps=True, reweight=False)
    with pytest.raises(ValueError, match="official_key_maps"):
        DCLR.Config(official_key_maps=1)
