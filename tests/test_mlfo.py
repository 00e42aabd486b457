"""MLFO (methods/mlfo.py): Sinkhorn codes, time reversal, ME block, timestamp alignment, instance
and motion contrast, graph target and loss, prototype freeze and queue, ablations, learning, DDP,
and two real training steps through the harness."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import methods.mlfo  # noqa: F401  (registers "mlfo")
from backbones import create_backbone
from methods.base import TrainState, create_method, get_method
from methods.losses import capped_queue_size
from methods.mlfo import (
    MLFO,
    MotionExcitation,
    alignment_logits,
    graph_loss,
    graph_target,
    instance_contrast,
    loss_weights,
    swapped_prediction,
    swav_codes,
    time_reversal_pair,
    timestamp_alignment,
)
from tests.helpers import FP32_TOL, assert_fp32_close, bf16_error, free_port, rows_of_norm

WORLD = 2
ALL_PARTS = {"high", "fine_high", "mid", "fine_mid", "low", "fine_low", "proto", "graph"}
LATE = TrainState(epoch=60, epochs=300)  # after split (50) and queue start (10) of the 300-epoch recipe


def _mlfo(dataset_size=48, **overrides) -> MLFO:
    torch.manual_seed(0)
    overrides = {"frames": 8, "crop": 32, **overrides}
    return create_method("mlfo", create_backbone("r3d_tiny"), dataset_size=dataset_size, overrides=overrides)


def _batch(b=4, t=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randn(b, 3, 3, t, 32, 32, generator=g), "index": torch.arange(b)}


def _loss_parts(out) -> dict[str, float]:
    return {k[len("mlfo/"):]: float(v) for k, v in out.parts.items() if k[len("mlfo/"):] in ALL_PARTS}


# ------------------------------------------------------------------ registry, config, data spec


def test_builds_with_the_paper_ucf101_recipe():
    assert get_method("mlfo") is MLFO
    m = MLFO(MLFO.Config(), create_backbone("r3d_tiny"), dataset_size=9537)
    c = m.config
    assert (c.embed_dim, c.temperature, c.proto_temperature, c.clusters, c.split, c.graph_threshold) == (128, 0.07, 0.1, 200, 50, 0.05)
    assert (c.sinkhorn_eps, c.sinkhorn_iterations, c.queue_start) == (0.05, 3, 10)
    assert (c.frames, c.crop, c.rate) == (16, 112, 3.0)
    assert c.level_weights == (1.0, 0.5, 0.3) and c.proto_weight == 0.5 and c.graph_mean_over_batch
    r = MLFO.recipe
    assert (r.optimizer, r.lr, r.weight_decay, r.betas, r.epochs, r.milestones, r.gamma, r.batch_size) == (
        "adam", 1e-3, 1e-5, (0.9, 0.999), 300, (200,), 0.1, 256)
    assert MLFO.find_unused_parameters
    assert m.proto_queue.shape == (1024, 2, 200)  # UCF101 scale keeps the original's 1024 rows
    assert capped_queue_size(1024, 48, 2) == 16 and capped_queue_size(1024, 300, 2) == 128
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(200))
    # heads follow the backbone's stage widths (r3d_tiny: 32 / 64 / 128)
    assert m.project_low[0].in_channels == 32 and m.project_mid[0].in_channels == 64 and m.project[0].in_channels == 128
    with pytest.raises(ValueError):
        _mlfo(gather="some")


def test_data_spec_is_three_overview_clips_with_per_frame_colour():
    spec = MLFO(MLFO.Config(), create_backbone("r3d_tiny"), dataset_size=64).data_spec()
    assert (spec.clips, spec.frames, spec.stride, spec.sampler, spec.shared_crop) == (3, 16, (1.0, 3.0), "overview", False)
    assert spec.decode_size == (150, 200)
    a = spec.augment
    assert (a.size, a.scale, a.flip_p, a.jitter, a.jitter_p, a.grey_p, a.blur_p) == (
        (112, 112), (0.5, 1.0), 0.5, (0.5, 0.5, 0.5, 0.25), 1.0, 0.5, 0.0)
    assert a.jitter_per_frame and a.grey_per_frame and a.grey_mode == "channel" and a.normalize
    per_clip = _mlfo(per_frame_colour=False, grey_mode="luma").data_spec()
    assert not per_clip.augment.jitter_per_frame and not per_clip.augment.grey_per_frame
    assert per_clip.augment.grey_mode == "luma" and per_clip.decode_size == (43, 57)


def test_data_spec_greys_before_the_jitter_as_train_py_composes_them():
    # train.py: Compose([RandomSizedCrop, RandomHorizontalFlip, RandomGray, ColorJitter, ToTensor, Normalize])
    assert MLFO(MLFO.Config(), create_backbone("r3d_tiny"), dataset_size=64).data_spec().augment.grey_before_jitter
    assert _mlfo(per_frame_colour=False, grey_mode="luma").data_spec().augment.grey_before_jitter


# ------------------------------------------------------------------ Sinkhorn codes


def _swav_reference(scores, eps, iters):
    """SwAV's loop, written out: Q = exp(S/eps).T, total 1, rows to 1/K, columns to 1/N, columns to 1."""
    q = torch.exp(scores.double() / eps - (scores.double() / eps).max()).t()
    q /= q.sum()
    k, n = q.shape
    for _ in range(iters):
        q *= (1 / k) / q.sum(dim=1, keepdim=True)
        q *= (1 / n) / q.sum(dim=0, keepdim=True)
    return (q / q.sum(dim=0, keepdim=True)).t()


def test_sinkhorn_codes_have_the_right_marginals():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 2, 8, generator=g) * 0.3  # a queue of 64 rows, K = 8 prototypes
    codes = swav_codes(scores, 64, epsilon=0.05, iterations=3)
    assert codes.shape == (64, 2, 8)
    torch.testing.assert_close(codes.sum(dim=2), torch.ones(64, 2))  # each sample: a distribution
    for c in range(2):
        torch.testing.assert_close(codes[:, c].double(), _swav_reference(scores[:, c], 0.05, 3), rtol=1e-4, atol=1e-6)
    # equipartition: with enough iterations each prototype gets N / K samples
    exact = swav_codes(scores, 64, epsilon=0.05, iterations=200)
    torch.testing.assert_close(exact.sum(dim=0), torch.full((2, 8), 64 / 8), rtol=1e-3, atol=1e-3)
    # the returned rows are the LAST `batch` rows (the current batch at the end of the queue)
    torch.testing.assert_close(swav_codes(scores, 16, 0.05, 3), codes[-16:])


def test_swapped_prediction_hand_value():
    logits = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]])
    codes = torch.tensor([[[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]]])
    p = torch.softmax(logits / 0.1, dim=2)
    expected = -0.5 * ((codes[0, 1] * p[0, 0].log()).sum() + (codes[0, 0] * p[0, 1].log()).sum())
    torch.testing.assert_close(swapped_prediction(logits, codes, 0.1), expected)


# ------------------------------------------------------------------ time reversal and ME block


def test_time_reversed_negative_is_the_exact_temporal_flip():
    x = torch.randn(3, 4, 5, 2, 2)
    pair = time_reversal_pair(x)
    assert pair.shape == (6, 4, 5, 2, 2) and torch.equal(pair[:3], x)
    for t in range(5):
        assert torch.equal(pair[3:, :, t], x[:, :, 4 - t])
    # inside the method: the reversed half of the motion embeddings is what the flipped map gives
    m = _mlfo().eval()
    feat = torch.randn(2 * 3, 64, 4, 4, 4)  # a layer3 map of 2 videos x 3 clips
    with torch.no_grad():
        out = m._level("mid", feat, m.me_mid, 2, 3, graph=False)["mid"]
        flipped = m._level("mid", torch.flip(feat, dims=(2,)), m.me_mid, 2, 3, graph=False)["mid"]
    torch.testing.assert_close(out[2:], flipped[:2])
    assert not torch.allclose(out[:2], out[2:])


def test_motion_excitation_equals_the_per_frame_2d_form():
    torch.manual_seed(0)
    me = MotionExcitation(32, reduction=16)
    for bn in (me.bn_reduce, me.bn_expand):  # non-trivial affine parameters
        nn.init.normal_(bn.weight, 1.0, 0.3), nn.init.normal_(bn.bias, 0.0, 0.3)
    x = torch.randn(3, 32, 4, 5, 5)
    out = me(x)
    # reference: the original's Conv2d / BatchNorm2d on (N*T, C, H, W) frames
    n, c, t, h, w = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
    r = F.batch_norm(F.conv2d(frames, me.reduce.weight[:, :, 0]), None, None, me.bn_reduce.weight, me.bn_reduce.bias,
                     training=True)
    rp = F.conv2d(r, me.spatial.weight[:, :, 0], padding=1, groups=r.shape[1])
    diff = rp.view(n, t, -1, h, w)[:, 1:] - r.view(n, t, -1, h, w)[:, :-1]
    diff = torch.cat([diff, torch.zeros_like(diff[:, :1])], dim=1).reshape(n * t, -1, h, w)
    mm = F.batch_norm(F.conv2d(diff.mean(dim=(2, 3), keepdim=True), me.expand.weight[:, :, 0]), None, None,
                      me.bn_expand.weight, me.bn_expand.bias, training=True)
    ref = (frames + (torch.sigmoid(mm) - 0.5) * frames).view(n, t, c, h, w).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    # a static map has no motion: the last step's difference is zero padding, m = BN(0) -> 0
    assert me.reduce.out_channels == 2 and MotionExcitation(8).reduce.out_channels == 1


# ------------------------------------------------------------------ timestamp alignment


def test_alignment_pairs_position_m_of_a_b_with_position_m_of_g():
    # A 32-frame window whose frame features are constant on blocks of 8 frames (4 orthogonal
    # directions): A = frames 0-15, B = 16-31, G = frames 0, 2, ..., 30, each with t = 4 positions.
    d, t = 6, 4
    block = torch.eye(d)[:4] * 3.0
    phi = block.repeat_interleave(8, dim=0)  # (32, d)
    def fine(frames):  # per-position means of a 16-frame clip -> (d, t)
        return phi[frames].view(t, -1, d).mean(1).t()
    A, B, G = fine(torch.arange(16)), fine(torch.arange(16, 32)), fine(torch.arange(0, 32, 2))
    x = torch.stack([A, B, G])[None]  # (1, 3, d, t)
    l2g, g2l = alignment_logits(x, 0.07)
    for logits in (l2g, g2l):
        assert logits.argmax(dim=2).tolist() == [[0, 1, 2, 3]]
        torch.testing.assert_close(torch.diagonal(logits[0]), torch.full((t,), 1 / 0.07))
    loss, acc = timestamp_alignment(x, 0.5)
    expected = math.log(1 + 3 * math.exp(-1 / 0.5))  # one aligned position (cos 1) vs three orthogonal ones
    assert loss.item() == pytest.approx(expected, rel=1e-4) and acc.item() == 1.0
    # G in another order: the targets are still the positions, so the loss jumps
    shuffled = torch.stack([A, B, G[:, [1, 0, 3, 2]]])[None]
    assert timestamp_alignment(shuffled, 0.07)[0].item() > 10


# ------------------------------------------------------------------ instance and motion contrast


def _contrast_reference(local, glob, offset, T, extra=None):
    losses = []
    b, n, _ = local.shape
    for i in range(b):
        for a in range(n):
            q = local[i, a]
            pos = sum(math.exp(float(q @ local[i, o]) / T) for o in range(n) if o != a)
            neg = sum(math.exp(float(q @ glob[j, c]) / T) for j in range(glob.shape[0]) if j != offset + i for c in range(n))
            if extra is not None:
                neg += sum(math.exp(float(q @ e) / T) for e in extra[i])
            losses.append(-math.log(pos / (pos + neg)))
    return sum(losses) / len(losses)


def test_instance_and_motion_contrast_match_hand_computation():
    torch.manual_seed(3)
    glob = F.normalize(torch.randn(5, 2, 4), dim=2)
    local = glob[2:4]  # this rank's videos sit at offset 2 of the global batch
    loss, _ = instance_contrast(local, glob, 2, 0.5)
    assert loss.item() == pytest.approx(_contrast_reference(local, glob, 2, 0.5), rel=1e-5)
    reversed_ = F.normalize(torch.randn(2, 2, 4), dim=2)  # each video's own reversed A and B
    loss_m, _ = instance_contrast(local, glob, 2, 0.5, extra_negatives=reversed_)
    assert loss_m.item() == pytest.approx(_contrast_reference(local, glob, 2, 0.5, reversed_), rel=1e-5)
    assert loss_m > loss  # extra negatives only add mass to the denominator
    # video 0's reversed clips are negatives of video 0 only
    changed = reversed_.clone()
    changed[1] = F.normalize(torch.randn(2, 4), dim=1)
    anchors0 = instance_contrast(local[:1], glob, 2, 0.5, extra_negatives=reversed_[:1])[0]
    assert instance_contrast(local[:1], glob, 2, 0.5, extra_negatives=changed[:1])[0] == anchors0


# ------------------------------------------------------------------ graph constraint


def test_graph_target_is_row_stochastic_keeps_diagonal_and_drops_weak_and_cross_cluster_edges():
    s = torch.tensor([[0.02, 0.50, 0.40, 0.08],
                      [0.30, 0.01, 0.04, 0.65],
                      [0.10, 0.10, 0.70, 0.10],
                      [0.06, 0.90, 0.03, 0.01]])
    labels = torch.tensor([0, 0, 1, 0])
    c = graph_target(s, labels, 0.05)
    torch.testing.assert_close(c.sum(dim=1), torch.ones(4))
    assert (torch.diagonal(c) > 0).all()  # kept although 0.02 and 0.01 < threshold
    assert c[1, 2] == 0 and c[3, 2] == 0  # below the threshold
    assert c[0, 2] == 0 and c[2, 0] == 0 and c[2, 1] == 0 and c[2, 3] == 0  # across clusters
    torch.testing.assert_close(c[0], torch.tensor([0.02, 0.50, 0.0, 0.08]) / 0.60)
    torch.testing.assert_close(c[2], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    # without prototypes: threshold only
    c_all = graph_target(s, None, 0.05)
    torch.testing.assert_close(c_all[0], torch.tensor([0.02, 0.50, 0.40, 0.08]) / 1.0)


def test_graph_loss_is_the_soft_cross_entropy_divided_by_the_global_batch():
    torch.manual_seed(0)
    glob = torch.randn(6, 2, 5)
    target = torch.softmax(torch.randn(6, 6), dim=1)
    rows = target[2:4]
    p = torch.softmax(F.normalize(glob[2:4, 0], dim=1) @ F.normalize(glob[:, 1], dim=1).t() / 0.07, dim=1)
    soft_ce = -(rows * p.log()).sum(1).mean()
    torch.testing.assert_close(graph_loss(glob[2:4], glob, rows, 0.07, mean_over_batch=False), soft_ce)
    torch.testing.assert_close(graph_loss(glob[2:4], glob, rows, 0.07, mean_over_batch=True), soft_ce / 6)


# ------------------------------------------------------------------ schedule, prototypes, queue


def test_split_and_queue_start_scale_with_the_budget():
    m = _mlfo()
    assert not m.graph_active(TrainState(epoch=49, epochs=300)) and m.graph_active(TrainState(epoch=50, epochs=300))
    assert not m.queue_active(TrainState(epoch=9, epochs=300)) and m.queue_active(TrainState(epoch=10, epochs=300))
    # a 2-epoch run: split 50/300 -> 0.33, queue 10/300 -> 0.07: both on from epoch 1
    assert not m.graph_active(TrainState(epoch=0, epochs=2)) and m.graph_active(TrainState(epoch=1, epochs=2))
    assert m.queue_active(TrainState(epoch=1, epochs=2)) and not m.queue_active(TrainState(epoch=0, epochs=2))
    k400 = _mlfo(split=20, reference_epochs=100)
    assert k400.graph_active(TrainState(epoch=20, epochs=100)) and not k400.graph_active(TrainState(epoch=19, epochs=100))


def test_prototypes_are_frozen_in_epoch_0_and_renormalised_after_each_step():
    m = _mlfo()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-5)
    w0 = m.prototypes.weight.detach().clone()
    m(_batch(), TrainState(epoch=0, epochs=300)).loss.backward()
    assert m.prototypes.weight.grad is None and m.project_global[0].weight.grad is not None
    opt.step()
    assert torch.equal(m.prototypes.weight, w0)  # untouched, weight decay included
    m.after_optimizer_step(TrainState())
    torch.testing.assert_close(m.prototypes.weight, w0)  # already unit rows
    opt.zero_grad(set_to_none=True)
    m(_batch(), TrainState(epoch=1, epochs=300)).loss.backward()
    assert m.prototypes.weight.grad is not None and m.prototypes.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.allclose(m.prototypes.weight.norm(dim=1), torch.ones(200))
    m.after_optimizer_step(TrainState())
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(200))


def test_queue_is_fifo_and_feeds_sinkhorn_after_queue_start():
    m = _mlfo()
    old = m.proto_queue.clone()  # 16 rows for 48 videos
    batch = _batch()
    out = m(batch, TrainState(epoch=0, epochs=300))  # queue not used yet, but filled
    assert torch.equal(m.proto_queue[:-4], old[4:])
    with torch.no_grad():
        logits = m.features(batch["rgb"], graph=False)["logits"]
    torch.testing.assert_close(m.proto_queue[-4:], logits)
    expected = swapped_prediction(logits, swav_codes(logits, 4, 0.05, 3), 0.1)
    assert out.parts["mlfo/proto"].item() == pytest.approx(expected.item(), rel=1e-5)
    # from the queue start on, the codes of the batch come from Sinkhorn over the whole queue
    queued = torch.cat([m.proto_queue[4:], logits])
    out = m(batch, TrainState(epoch=10, epochs=300))
    expected = swapped_prediction(logits, swav_codes(queued, 4, 0.05, 3), 0.1)
    assert out.parts["mlfo/proto"].item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------ total loss and ablations


def test_total_is_the_weighted_sum_and_each_switch_removes_exactly_its_terms():
    families = {"motion_contrast": {"mid", "low"}, "alignment": {"fine_high", "fine_mid", "fine_low"},
                "prototypes": {"proto"}, "graph": {"graph"}}
    batch = _batch()
    for off, removed in [(None, set()), *families.items()]:
        m = _mlfo(**({off: False} if off else {}))
        out = m(batch, LATE)
        parts = _loss_parts(out)
        assert set(parts) == ALL_PARTS - removed, off
        weights = loss_weights(m.config)
        assert out.loss.item() == pytest.approx(sum(weights[k] * v for k, v in parts.items()), rel=1e-5)
        assert all(math.isfinite(v) and v > 0 for v in parts.values())
        if off is None:  # the graph is off before the split epoch
            assert set(_loss_parts(m(batch, TrainState(epoch=49, epochs=300)))) == ALL_PARTS - {"graph"}


def test_loss_decreases_on_a_fixed_batch():
    m = _mlfo()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=1e-5)
    batch = _batch()
    losses = []
    for _ in range(6):
        out = m(batch, LATE)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        m.after_optimizer_step(LATE)
        losses.append(out.loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 1.0 and sum(losses[-2:]) < sum(losses[:2]) - 1.0, losses


# ------------------------------------------------------------------ DDP


def _two_steps(method: MLFO, batch: dict, world: int = 1, rank: int = 0, model: nn.Module | None = None) -> dict:
    """An epoch-0 step (prototypes frozen) and an epoch-60 step (queue and graph on), no optimizer step."""
    model = model or method
    result = {"loss": [], "frozen": None, "grads": None}
    for epoch in (0, 60):
        out = model(batch, TrainState(epoch=epoch, epochs=300, world_size=world, rank=rank))
        out.loss.backward()
        result["loss"].append(out.loss.item())
        if epoch == 0:
            result["frozen"] = [method.prototypes.weight.grad is None, method.project_graph[0].weight.grad is None]
        else:
            result["grads"] = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
        method.zero_grad(set_to_none=True)
    return result


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        results = {}
        full = _batch(4)
        local = {k: v[rank * 2 : (rank + 1) * 2] for k, v in full.items()}
        for gather in ("local", "full"):
            method = _mlfo(gather=gather)
            method.prepare_distributed()  # SyncBN, as the original
            ddp = nn.parallel.DistributedDataParallel(method, find_unused_parameters=True, broadcast_buffers=False)
            r = _two_steps(method, local, WORLD, rank, ddp)
            losses = torch.tensor(r["loss"])
            dist.all_reduce(losses)
            r["loss"] = (losses / WORLD).tolist()
            results[gather] = r
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_process_step_equals_one_process_on_the_global_batch(tmp_path):
    path = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(free_port(), path), nprocs=WORLD, join=True)
    ddp = torch.load(path, weights_only=False)
    for gather in ("local", "full"):
        single = _two_steps(_mlfo(gather=gather), _batch(4))
        assert ddp[gather]["loss"] == pytest.approx(single["loss"], rel=1e-4), gather
        assert ddp[gather]["frozen"] == [True, True]  # prototypes frozen, graph heads unused in epoch 0
    # with gradients through every rank's features, the DDP gradient is the single-process one
    grads = ddp["full"]["grads"]
    assert set(grads) == set(single["grads"])
    for name, g in single["grads"].items():
        torch.testing.assert_close(grads[name], g, rtol=2e-3, atol=1e-4, msg=name)


# ------------------------------------------------------------------ through the harness


def test_two_training_steps_through_the_harness(motionshapes_tiny, tmp_path):
    from core.config import PretrainConfig  # imported here: the DDP test's spawned workers need not load timm
    from harness.train import Pretraining

    cfg = PretrainConfig(method="mlfo", backbone="r3d_tiny", epochs=2, batch_size=4, steps_per_epoch=1, device="cpu",
                         output_dir=str(tmp_path / "runs"), method_args={"frames": 8, "crop": 32}, progress=False)
    cfg.data.path, cfg.data.workers = str(motionshapes_tiny), 0
    run = Pretraining(cfg)
    seen = []
    step = run.method.training_step

    def recording_step(batch, state):
        out = step(batch, state)
        seen.append((tuple(batch["rgb"].shape), state.epoch, set(_loss_parts(out))))
        return out

    run.method.training_step = recording_step
    w0 = run.method.prototypes.weight.detach().clone()
    result = run.run()
    assert result.steps == 2 and math.isfinite(result.final_loss)
    assert [s[0] for s in seen] == [(4, 3, 3, 8, 32, 32)] * 2
    # epoch 0: no graph; epoch 1 of 2 is past the scaled split (50 / 300 * 2)
    assert seen[0][2] == ALL_PARTS - {"graph"} and seen[1][2] == ALL_PARTS
    assert not torch.allclose(run.method.prototypes.weight, w0)  # trained in epoch 1 only
    torch.testing.assert_close(run.method.prototypes.weight.norm(dim=1), torch.ones(200))


# ------------------------------------------------------------------ precision under autocast, effective settings

TOL = FP32_TOL


def test_similarities_and_logits_are_float32_under_bf16_autocast():
    from methods.mlfo import instance_graph, prototype_logits

    T = 0.07
    z = rows_of_norm(8, 2, 128, seed=0, norm=20)  # global batch (N, clips, D) of norm 20
    extra = rows_of_norm(4, 2, 128, seed=1, norm=20)
    fine = rows_of_norm(4, 3, 4, 128, seed=2, norm=20).transpose(2, 3)  # (B, 3, D, t=4)
    unit = rows_of_norm(8, 2, 128, seed=3)  # the graph's unit-norm embeddings (a norm-20 softmax would be one-hot)
    target = torch.softmax(torch.randn(4, 8, generator=torch.Generator().manual_seed(4)), dim=1)
    protos = rows_of_norm(200, 128, seed=5)
    assert bf16_error(z[:, 0], z[:, 1]) > 100 * TOL  # the failure mode, on the same inputs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        contrast, _ = instance_contrast(z[:4], z, 0, T, extra_negatives=extra)
        l2g, g2l = alignment_logits(fine, T)
        graph = instance_graph(unit, T)
        g_loss = graph_loss(unit[:4], unit, target, T, mean_over_batch=False)
        p_logits = prototype_logits(unit[:, 0], protos)
    zd, ed, ud, td = z.double(), extra.double(), unit.double(), target.double()
    # instance / motion contrast (Sec. 3.2-3.3): -log(sum_pos e^{s/T} / (sum_pos + sum_neg)), mean over anchors
    ref = 0.0
    for i in range(4):
        for a in range(2):
            q = zd[i, a]
            pos = (q @ zd[i, 1 - a]) / T
            neg = torch.cat([zd[j, c] for j in range(8) if j != i for c in range(2)] + [ed[i, 0], ed[i, 1]])
            s = torch.cat([pos.view(1), neg.view(-1, 128) @ q / T])
            ref += (torch.logsumexp(s, 0) - pos) / 8
    assert contrast.dtype == torch.float32 and contrast.item() == pytest.approx(ref.item(), rel=TOL)
    # timestamp alignment: [A|B] pooled to t/2 each, <[A|B]_m, G_k> / T with unit channels
    fd = fine.double()
    ab = F.normalize(torch.cat([fd[:, 0].unflatten(2, (2, 2)).mean(3), fd[:, 1].unflatten(2, (2, 2)).mean(3)], 2), dim=1)
    gg = F.normalize(fd[:, 2], dim=1)
    assert_fp32_close(l2g, ab.transpose(1, 2) @ gg / T)
    assert_fp32_close(g2l, gg.transpose(1, 2) @ ab / T)
    # instance graph softmax(Z_A Z_B^T / T) and the graph loss -sum_j C_ij log softmax(g_A G_B^T / T)_ij
    assert_fp32_close(graph, torch.softmax(ud[:, 0] @ ud[:, 1].t() / T, dim=1))
    ref_g = -(td * torch.log_softmax(ud[:4, 0] @ ud[:, 1].t() / T, dim=1)).sum(1).mean()
    assert g_loss.dtype == torch.float32 and g_loss.item() == pytest.approx(ref_g.item(), rel=TOL)
    # prototype scores z . c_k (SwAV's prototype layer)
    assert_fp32_close(p_logits, ud[:, 0] @ protos.double().t())


def test_training_step_runs_under_cpu_bf16_autocast():
    m = _mlfo()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(_batch(), LATE)  # every term on: graph and queue active
    assert set(_loss_parts(out)) == ALL_PARTS
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())
    assert m.prototypes.weight.grad is not None
    assert m.proto_queue.dtype == torch.float32 and torch.isfinite(m.proto_queue).all()


def test_effective_settings_report_the_capped_queue_and_me_widths():
    # queue: the largest power of two <= N / 2, at least 16; ME width max(1, C // me_reduction)
    ch = create_backbone("r3d_tiny").stage_channels
    assert (ch["layer2"], ch["layer3"]) == (32, 64)
    assert _mlfo(dataset_size=48).effective_settings() == {
        "proto_queue_size": 16, "me_low_channels": 2, "me_mid_channels": 4}  # 24 -> 16; 32 // 16, 64 // 16
    assert _mlfo(dataset_size=300).effective_settings()["proto_queue_size"] == 128  # 150 -> 128
    assert _mlfo(dataset_size=9537).effective_settings()["proto_queue_size"] == 1024  # UCF101: kept
    wide = _mlfo(me_reduction=64).effective_settings()  # 32 // 64 = 0 and 64 // 64 = 1: floored at 1
    assert (wide["me_low_channels"], wide["me_mid_channels"]) == (1, 1)
