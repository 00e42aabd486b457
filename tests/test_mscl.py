"""MSCL (methods/mscl.py): flow images, FRA, LMCL, MoCo queues and momentum, switches, DDP, a harness run."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import methods.mscl  # noqa: F401  (registers "mscl")
from backbones import create_backbone
from core.data.modalities import flow_colorwheel, flow_to_color, rotate_flow
from methods.base import TrainState, create_method, get_method
from methods.losses import capped_queue_size
from methods.mscl import MSCL, fra_angles, flow_images, lmcl_logits, lmcl_loss
from tests.helpers import free_port

WORLD = 2
ALL_PARTS = {"mscl/rgb", "mscl/flow", "mscl/flow_aug", "mscl/cross", "mscl/cross_aug", "mscl/lmcl"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Two cores shared with other test processes: one intra-op thread avoids oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mscl(dataset_size=64, **overrides) -> MSCL:
    torch.manual_seed(0)
    overrides = {"frames": 4, "crop": 32, **overrides}
    return create_method("mscl", create_backbone("r3d_tiny"), dataset_size=dataset_size, overrides=overrides)


def _batch(b=4, t=4, seed=1, size=32):
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randn(b, 2, 3, t, size, size, generator=g),
            "flow": (0.5 + 0.1 * torch.randn(b, 2, 2, t, size, size, generator=g)).clamp(0, 1),
            "index": torch.arange(b)}


def _state(step=0, steps=10):
    return TrainState(step=step, epochs=1, steps_per_epoch=steps)


# ------------------------------------------------------------------ registry, config, data spec


def test_builds_through_the_registry_with_the_r3d18_config_defaults():
    assert get_method("mscl") is MSCL
    c = MSCL.Config()
    assert (c.embed_dim, c.queue_size, c.temperature, c.lmcl_temperature) == (128, 65536, 0.07, 0.07)
    assert (c.momentum_base, c.queue_decay, c.frames, c.stride, c.crop) == (0.994, 0.99999, 8, 16, 112)
    assert c.lmcl and c.flow_rotation and c.mds and c.cross_modal and c.layout == "intended"
    r = MSCL.recipe
    assert (r.optimizer, r.lr, r.sgd_momentum, r.weight_decay, r.schedule, r.batch_size, r.epochs) == ("sgd", 0.02, 0.9, 1e-4, "cosine", 128, 400)
    assert r.clip_grad == 40
    assert capped_queue_size(65536, 219136, 1) == 65536 and capped_queue_size(65536, 9537, 1) == 8192
    m = _mscl()
    assert m.rgb_queue.size == m.flow_queue.size == 64 and m.rgb_queue.track_age
    assert type(m.flow_backbone).__name__ == "ResNet3D" and m.flow_backbone.feature_dim == 128
    with pytest.raises(ValueError, match="flow_rotation"):
        MSCL.Config(layout="shipped", flow_rotation=False)


def test_data_spec_two_clips_rgb_and_flow_unnegated_flip_and_the_mds_sampler():
    spec = _mscl().data_spec()
    assert (spec.clips, spec.frames, spec.stride, spec.modalities) == (2, 4, 16, ("rgb", "flow"))
    assert not spec.shared_crop and spec.sampler == "mds" and spec.flow_flip_negates_u is False
    a = spec.augment
    assert a.size == (32, 32) and a.jitter_per_frame and a.jitter == (0.4, 0.4, 0.4, 0.1) and a.jitter_p == 0.8
    assert (a.grey_p, a.blur_p, a.normalize, a.scale) == (0.2, 0.5, True, (0.2, 1.0))
    assert _mscl(mds=False).data_spec().sampler is None


def test_blur_draws_one_sigma_for_the_query_clips_and_one_for_the_key_clips():
    # ssl_aug.py's GaussianBlur draws one sigma per call; ssl_aug_v2.py calls it once on the q batch
    # and once on the k batch. Checked through the harness's DeviceAugment (its (B, clips) layout).
    import dataclasses

    from harness.train import DeviceAugment

    spec = _mscl().data_spec()
    assert (spec.augment.blur_sigma_per, spec.augment.blur_sigma_groups) == ("batch", spec.clips)
    identity = dataclasses.replace(spec.augment, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                                   grey_p=0.0, blur_p=1.0, normalize=False)
    augment = DeviceAugment(dataclasses.replace(spec, augment=identity), torch.device("cpu"), seed=3, channels_last=False)
    rgb = torch.zeros(5, 2, 1, 32, 32, 3, dtype=torch.uint8)
    rgb[:, :, :, 16, 16] = 255  # a delta: its blurred neighbour ratio is exp(-1 / (2 sigma^2))
    out = augment({"rgb": rgb, "flow": torch.full((5, 2, 1, 32, 32, 2), 128, dtype=torch.uint8)})["rgb"]
    ratio = out[:, :, 0, 0, 16, 17].double() / out[:, :, 0, 0, 16, 16].double()  # (B, clips)
    sigma = torch.sqrt(-0.5 / torch.log(ratio))
    assert ((sigma >= 0.1 - 1e-4) & (sigma <= 2.0 + 1e-4)).all()
    torch.testing.assert_close(sigma, sigma[:1].expand(5, 2), atol=1e-4, rtol=0)  # one per clip slot
    assert abs(float(sigma[0, 0] - sigma[0, 1])) > 1e-3  # q and k independent


# ------------------------------------------------------------------ flow images: rotation, colour coding


def test_rotation_turns_a_rightward_flow_down_by_90_degrees_and_keeps_magnitudes():
    u, v = torch.full((2, 3), 3.0), torch.zeros(2, 3)
    ru, rv = rotate_flow(u, v, math.pi / 2)
    torch.testing.assert_close(ru, torch.zeros(2, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(rv, torch.full((2, 3), 3.0))  # +v is down in image coordinates: clockwise on screen
    ru, rv = rotate_flow(u, v, -math.pi / 2)
    torch.testing.assert_close(rv, torch.full((2, 3), -3.0))  # up
    angles = fra_angles(torch.arange(8))
    torch.testing.assert_close(torch.rad2deg(angles), torch.arange(36.0, 289.0, 36.0))
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(8, 5, 5, generator=g), torch.randn(8, 5, 5, generator=g)
    ru, rv = rotate_flow(u, v, angles.view(8, 1, 1))
    torch.testing.assert_close(ru.hypot(rv), u.hypot(v))
    assert not torch.allclose(ru, u, atol=1e-3)


def test_middlebury_colours_of_known_flows():
    wheel = flow_colorwheel()
    assert wheel.shape == (55, 3)
    # hand values: entry 0 red, 15 yellow, 21 green, 25 cyan, 36 blue, 49 magenta
    for i, rgb in [(0, (255, 0, 0)), (15, (255, 255, 0)), (21, (0, 255, 0)), (25, (0, 255, 255)), (36, (0, 0, 255)), (49, (255, 0, 255))]:
        assert wheel[i].tolist() == list(rgb)
    assert wheel[14].tolist() == [255, 238, 0] and wheel[27].tolist() == [0, 209, 255]  # floor(255*14/15), 255-floor(255*2/11)
    u = torch.tensor([[0.0, 1.0, 0.0, -1.0, 0.5]])
    v = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]])
    col = flow_to_color(u, v) * 255  # (3, 1, 5)
    expected = [[255, 255, 255],   # zero motion: white
                [255, 0, 0],       # right: wheel entry 0, red
                [255, 229, 0],     # down: halfway between entries 13 and 14, G = floor((221 + 238) / 2)
                [0, 209, 255],     # left: entry 27
                [255, 127, 127]]   # right at half length: 1 - 0.5 (1 - red), floored
    torch.testing.assert_close(col[:, 0].t(), torch.tensor(expected, dtype=torch.float32), atol=1e-3, rtol=0)


# RAFT's make_colorwheel (the Middlebury wheel), worked out by hand: red -> yellow (15 entries)
# has G = floor(255 i / 15) = 17 i; yellow -> green (6 entries) has R = 255 - floor(255 i / 6)
# (255 i / 6 = 0, 42.5, 85, 127.5, 170, 212.5 -> R = 255, 213, 170, 128, 85, 43) and G = 255.
_RAFT_WHEEL_ROWS = {3: (255, 51, 0), 4: (255, 68, 0), 7: (255, 119, 0), 8: (255, 136, 0),
                    11: (255, 187, 0), 12: (255, 204, 0), 13: (255, 221, 0), 14: (255, 238, 0),
                    15: (255, 255, 0), 16: (213, 255, 0), 17: (170, 255, 0), 18: (128, 255, 0),
                    19: (85, 255, 0), 20: (43, 255, 0), 21: (0, 255, 0)}


def _raft_colour(degrees: float, radius: float) -> list[float]:
    """The 0..255 colour of a flow vector at ``degrees`` (image coordinates, +v down) of length
    ``radius`` < 1: wheel position ``degrees / 360 * 54``, linear interpolation between the two
    neighbouring hand-written rows, then desaturation ``255 - radius (255 - c)``."""
    fk = degrees / 360 * 54
    k0 = math.floor(fk)
    f = fk - k0
    mixed = [(1 - f) * a + f * b for a, b in zip(_RAFT_WHEEL_ROWS[k0], _RAFT_WHEEL_ROWS[k0 + 1])]
    return [255 - radius * (255 - c) for c in mixed]


def test_yellow_to_green_segment_lowers_red_as_in_raft():
    wheel = flow_colorwheel()
    assert wheel[15:22].tolist() == [[255, 255, 0], [213, 255, 0], [170, 255, 0], [128, 255, 0],
                                     [85, 255, 0], [43, 255, 0], [0, 255, 0]]
    for i, rgb in _RAFT_WHEEL_ROWS.items():
        assert wheel[i].tolist() == list(rgb), i


def test_flows_between_100_and_140_degrees_get_the_raft_colours():
    radius = 0.99  # inside the unit circle, away from the r <= 1 switch to darkening
    angles = [105.0, 110.0, 120.0, 130.0]
    lookalikes = [87.5, 75.0, 50.0, 25.0]  # where the old wheel (G falling in yellow -> green) repeated these colours
    rad = torch.tensor([math.radians(a) for a in angles + lookalikes], dtype=torch.float64)
    u, v = (radius * torch.cos(rad)).view(1, -1), (radius * torch.sin(rad)).view(1, -1)  # +v is down
    col = (flow_to_color(u, v, quantize=False) * 255)[:, 0].t()  # (8, 3)
    expected = torch.tensor([_raft_colour(a, radius) for a in angles + lookalikes], dtype=torch.float32)
    torch.testing.assert_close(col, expected, atol=0.02, rtol=0)
    # e.g. 110 degrees: halfway between rows 16 and 17, R = 191.5 before desaturation; G stays 255
    assert expected[1].tolist() == pytest.approx([255 - radius * (255 - 191.5), 255, 255 - radius * 255])
    for i in range(4):
        assert (col[i] - col[4 + i]).abs().max() > 30, (angles[i], lookalikes[i])

def test_flow_images_normalise_each_frame_and_keep_static_frames_white():
    flow = torch.full((1, 2, 2, 4, 4), 0.5)  # (B, 2, T, H, W): u, v; zero motion is 0.5
    flow[0, 0, 0, 1, 1] = 0.5 + 2 / 40  # frame 0: one pixel 2 px right
    fast = flow.clone()
    fast[0, 0, 0, 1, 1] = 0.5 + 8 / 40  # the same direction, 4x faster
    img = flow_images(flow)
    assert img.shape == (1, 3, 2, 4, 4)
    torch.testing.assert_close(img, flow_images(fast))  # per-frame normalisation removes the speed
    torch.testing.assert_close(img[0, :, 0, 1, 1], torch.tensor([1.0, 0.0, 0.0]))  # the fastest vector: saturated red
    assert torch.all(img[0, :, 1] == 1.0)  # a static frame (even quantised 128/255) is white
    quantised_static = torch.full((1, 2, 1, 3, 3), 128 / 255)
    assert torch.all(flow_images(quantised_static) == 1.0)


def test_flow_inputs_follow_the_layouts():
    batch = _batch(b=2)
    flow = batch["flow"]
    intended = _mscl()
    torch.manual_seed(5)
    views = intended.flow_inputs(flow)
    torch.manual_seed(5)
    chunk = torch.randint(8, (2,))
    rot = flow_images(flow, fra_angles(chunk).view(-1, 1, 1, 1, 1))
    base = flow_images(flow)
    for name, want in {"q_f": base[:, 0], "k_f": base[:, 1], "q_a": rot[:, 0], "k_a": rot[:, 1]}.items():
        torch.testing.assert_close(views[name], want, msg=name)
    shipped_method = _mscl(layout="shipped")
    torch.manual_seed(5)
    shipped = shipped_method.flow_inputs(flow)
    for name, want in {"q_f": base[:, 0], "k_f": rot[:, 0], "q_a": base[:, 1], "k_a": rot[:, 1]}.items():
        torch.testing.assert_close(shipped[name], want, msg=name)
    assert set(_mscl(flow_rotation=False).flow_inputs(flow)) == {"q_f", "k_f"}


# ------------------------------------------------------------------ LMCL


def test_lmcl_pairs_time_step_i_with_base_flow_step_i():
    # RGB step i is the one-hot e_i; base flow step j is e_j, rotated flow step j is e_{j+2}
    eye = torch.eye(4)
    rgb = eye[:, :2].reshape(1, 4, 2, 1, 1).expand(1, 4, 2, 3, 3)   # (B, C, t, H, W)
    base = eye[:, :2].reshape(1, 4, 2, 1, 1).expand(1, 4, 2, 2, 2)
    rot = eye[:, 2:].reshape(1, 4, 2, 1, 1).expand(1, 4, 2, 2, 2)
    logits = lmcl_logits(rgb, [base, rot], temperature=0.5)
    assert logits.shape == (2, 4)
    torch.testing.assert_close(logits, torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0]]))
    loss, _ = lmcl_loss(rgb, [base, rot], temperature=0.5)
    torch.testing.assert_close(loss, -torch.log_softmax(torch.tensor([2.0, 0, 0, 0]), 0)[0])
    # swapping the base flow's time steps makes the labels wrong: the loss rises
    swapped, _ = lmcl_loss(rgb, [base.flip(2), rot], temperature=0.5)
    assert swapped > loss + 1


def test_lmcl_matches_a_direct_computation_and_pools_time_to_the_shorter_map():
    g = torch.Generator().manual_seed(0)
    rgb, base, rot = (torch.randn(3, 8, 4, 2, 2, generator=g) for _ in range(3))
    loss, logits = lmcl_loss(rgb, [base, rot], 0.07)
    r = F.normalize(rgb.mean((3, 4)), dim=1)
    f = F.normalize(torch.cat([base.mean((3, 4)), rot.mean((3, 4))], 2), dim=1)
    want = torch.einsum("bci,bcj->bij", r, f).reshape(12, 8) / 0.07
    torch.testing.assert_close(logits, want)
    torch.testing.assert_close(loss, F.cross_entropy(want, torch.arange(4).repeat(3)))
    long_rgb = rgb.repeat_interleave(2, dim=2)  # T = 8 against flow T = 4: pooled back to 4
    torch.testing.assert_close(lmcl_loss(long_rgb, [base, rot], 0.07)[0], loss)


def test_rgb_level0_and_flow_layer4_have_the_same_time_steps():
    m = _mscl(frames=8)
    x = torch.randn(2, 3, 8, 32, 32)
    _, level0 = m._rgb_query(x)
    _, flow4 = m._flow_query(torch.rand(2, 3, 8, 32, 32))
    assert level0.shape[:3] == (2, 128, 4) and flow4.shape[:3] == (2, 128, 4)  # frames / 2 for both


# ------------------------------------------------------------------ queues and momentum


def test_rgb_loss_uses_the_age_decayed_queue_and_enqueue_resets_ages():
    m = _mscl()
    m.rgb_queue.age.fill_(50000)  # 0.99999^50000 = 0.61: clearly visible in the logits
    with torch.no_grad():  # a key encoder unlike the query one, so the positive does not swamp the queue
        for p in m.key_head.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    queue0 = m.rgb_queue["queue"].clone()
    batch = _batch()
    out = m(batch, _state())
    with torch.no_grad():
        q = m.head(m.backbone(batch["rgb"][:, 0]))
        k = m.key_head(m.key_backbone(batch["rgb"][:, 1]))
    decayed = queue0 * 0.99999 ** 50000
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ decayed.t()], 1) / 0.07
    torch.testing.assert_close(out.parts["mscl/rgb"], F.cross_entropy(logits, torch.zeros(4, dtype=torch.long)), rtol=1e-4, atol=1e-5)
    undecayed = torch.cat([(q * k).sum(1, keepdim=True), q @ queue0.t()], 1) / 0.07
    assert abs(float(F.cross_entropy(undecayed, torch.zeros(4, dtype=torch.long)) - out.parts["mscl/rgb"])) > 0.05
    # the 4 new keys sit in slots 0..3 with age 1, every other slot aged by one
    assert m.rgb_queue.age[:4].tolist() == [1] * 4 and bool((m.rgb_queue.age[4:] == 50001).all())
    torch.testing.assert_close(m.rgb_queue["queue"][:4], k)
    assert int(m.flow_queue.ptr) == 4


def test_momentum_is_cosine_annealed_from_0994_to_1():
    m = _mscl()
    with torch.no_grad():
        for p in list(m.backbone.parameters()) + list(m.flow_backbone.parameters()):
            p.add_(1.0)
    key0 = next(m.key_backbone.parameters()).clone()
    query = next(m.backbone.parameters()).clone()
    m.update_momentum(_state(step=0, steps=10))
    torch.testing.assert_close(next(m.key_backbone.parameters()), 0.994 * key0 + 0.006 * query)
    fkey0 = next(m.key_flow_backbone.parameters()).clone()
    m.update_momentum(_state(step=10, steps=10))  # the end of training: m = 1, keys frozen
    torch.testing.assert_close(next(m.key_flow_backbone.parameters()), fkey0)
    key1 = next(m.key_backbone.parameters()).clone()
    m.update_momentum(_state(step=5, steps=10))  # halfway: m = 0.997
    torch.testing.assert_close(next(m.key_backbone.parameters()), 0.997 * key1 + 0.003 * query)


def test_shipped_flow_momentum_updates_twice_at_double_schedule_speed():
    m = _mscl(flow_ema_per_step=2)
    with torch.no_grad():
        for p in m.flow_backbone.parameters():
            p.add_(1.0)
    fquery = next(m.flow_backbone.parameters()).clone()
    fkey0 = next(m.key_flow_backbone.parameters()).clone()
    m.update_momentum(_state(step=5, steps=10))  # flow counter at 10/10 and 11/10: frozen already
    torch.testing.assert_close(next(m.key_flow_backbone.parameters()), fkey0)
    m.update_momentum(_state(step=0, steps=10))  # two updates, m(0) = 0.994 and m(0.1)
    m1 = 1 - 0.003 * (math.cos(math.pi * 0.1) + 1)
    want = m1 * (0.994 * fkey0 + 0.006 * fquery) + (1 - m1) * fquery
    torch.testing.assert_close(next(m.key_flow_backbone.parameters()), want)


# ------------------------------------------------------------------ switches and learning


@pytest.mark.parametrize(("switch", "removed"), [
    ({}, set()),
    ({"lmcl": False}, {"mscl/lmcl"}),
    ({"flow_rotation": False}, {"mscl/flow_aug", "mscl/cross_aug"}),
    ({"cross_modal": False}, {"mscl/cross", "mscl/cross_aug"}),
    ({"mds": False}, set()),
    ({"layout": "shipped"}, set()),
])
def test_each_switch_removes_exactly_its_loss_parts_and_every_parameter_gets_a_gradient(switch, removed):
    m = _mscl(**switch)
    out = m(_batch(), _state())
    losses = {k for k in out.parts if k != "mscl/rgb_acc"}
    assert losses == ALL_PARTS - removed
    torch.testing.assert_close(out.loss, sum(out.parts[k] for k in losses))
    assert (m.neck is None) == ("mscl/lmcl" in removed)
    out.loss.backward()
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all(m.get_parameter(n).grad is not None for n in trainable)  # find_unused_parameters=False holds
    assert not any(p.requires_grad for p in m.key_flow_backbone.parameters())


def _train(lr: float, steps: int = 24) -> list[float]:
    # two fixed half-batches alternate and the queues hold one half: each half's negatives are the other's keys
    m = _mscl(dataset_size=4)
    m.rgb_queue = type(m.rgb_queue)(4, 128, track_age=True, generator=0)
    m.flow_queue = type(m.flow_queue)(4, 128, track_age=True, generator=1)
    full = _batch(b=8, seed=3)
    torch.manual_seed(0)
    shared = torch.randn(8, 1, 3, 4, 32, 32)
    full["rgb"] = shared + 0.3 * full["rgb"]  # the two clips of a video look alike, in RGB and in flow
    shared_flow = 0.5 + 0.1 * torch.randn(8, 1, 2, 4, 32, 32)
    full["flow"] = (shared_flow + 0.03 * torch.randn(8, 2, 2, 4, 32, 32)).clamp(0, 1)
    halves = [{k: v[:4] for k, v in full.items()}, {k: v[4:] for k, v in full.items()}]
    optimizer = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
    losses = []
    for step in range(steps):
        torch.manual_seed(step % 2)  # the same FRA angles for a half every time
        out = m(halves[step % 2], _state(step, steps))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        m.update_momentum(_state(step + 1, steps))
        losses.append(float(out.loss.detach()))
    return losses


def test_loss_decreases_on_a_fixed_batch():
    losses = _train(lr=0.05)
    assert all(math.isfinite(v) for v in losses)
    late = sum(losses[-4:]) / 4
    assert late < 0.8 * sum(losses[:4]) / 4, losses
    # the queues and key encoders change by themselves; the gradient steps must beat that
    frozen = _train(lr=0.0)
    assert late < sum(frozen[-4:]) / 4 - 0.5, (losses, frozen)


# ------------------------------------------------------------------ DDP


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        method = _mscl()
        ddp = nn.parallel.DistributedDataParallel(method, broadcast_buffers=False, find_unused_parameters=MSCL.find_unused_parameters)
        local = {k: v[rank * 2 : (rank + 1) * 2] for k, v in _batch(b=4).items()}
        torch.manual_seed(100 + rank)
        step = ddp(local, TrainState(world_size=WORLD, rank=rank, epochs=1, steps_per_epoch=10))
        step.loss.backward()
        method.update_momentum(TrainState(step=1, world_size=WORLD, rank=rank, epochs=1, steps_per_epoch=10))
        state = torch.cat([method.rgb_queue["queue"].flatten(), method.flow_queue["queue"].flatten(),
                           next(method.key_flow_backbone.parameters()).flatten(), next(method.backbone.parameters()).grad.flatten()])
        gathered = [torch.empty_like(state) for _ in range(WORLD)]
        dist.all_gather(gathered, state)
        if rank == 0:
            torch.save({"state": gathered, "loss": step.loss.item(), "ptr": int(method.rgb_queue.ptr),
                        "parts": sorted(step.parts)}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_process_step_keeps_queues_and_key_encoders_identical(tmp_path):
    path = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(free_port(), path), nprocs=WORLD, join=True)
    r = torch.load(path, weights_only=False)
    assert torch.equal(r["state"][0], r["state"][1])  # queues, key encoders and averaged gradients agree
    assert math.isfinite(r["loss"]) and r["ptr"] == 4  # both ranks enqueued the 4 gathered keys
    assert set(r["parts"]) >= ALL_PARTS


# ------------------------------------------------------------------ through the harness


def test_two_training_steps_through_the_harness_with_flow_and_mds(motionshapes_tiny, tmp_path):
    from harness.cli import main
    from core.config import PretrainConfig
    from core.data.datasets import open_dataset
    from core.data.mds import load_mds
    from core.data.modalities import compute_flow_cache
    from harness.train import pretrain

    flow_root = tmp_path / "flow"
    videos = open_dataset(motionshapes_tiny, subset="all", progress=False)
    summary = compute_flow_cache([(r.path, Path(r.path).stem) for r in videos.records], flow_root, workers=2, progress=False)
    assert not summary["failed"]
    assert main(["data", "mds", str(motionshapes_tiny), "--flow-root", str(flow_root), "--clip-len", "4", "--stride", "2",
                 "--block", "16", "--workers", "2"]) == 0
    table = load_mds(flow_root)["videos"]
    assert len(table) == len(videos.records)
    # every video with motion keeps some starts; a Still video's flat flow may have none above its
    # median (the sampler then draws two random clips, as the original does)
    assert all(key.startswith("v_Still_") for key, v in table.items() if not v["chosen"])
    cfg = PretrainConfig(method="mscl", backbone="r3d_tiny", epochs=1, batch_size=4, steps_per_epoch=2, device="cpu",
                         output_dir=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                         method_args={"frames": 4, "crop": 32, "stride": 2}, decode_size=(32, 43), log_every=1, progress=False)
    cfg.data.path, cfg.data.workers, cfg.data.flow_root = str(motionshapes_tiny), 0, str(flow_root)
    result = pretrain(cfg)
    assert result.encoder_path.is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("vsbench").experiment_id])
    assert run.info.status == "FINISHED"
    assert {f"train/{p}" for p in ALL_PARTS} <= run.data.metrics.keys()
    assert np.isfinite(run.data.metrics["train/loss"])


# ------------------------------------------------------------------ precision under autocast, effective settings


def test_lmcl_and_queue_logits_are_float32_under_bf16_autocast():
    from methods.losses import moco_logits

    g = torch.Generator().manual_seed(0)
    rgb_map = 20 * torch.randn(2, 128, 4, 3, 3, generator=g)  # FPN level 0: (B, C, t, h, w)
    flows = [20 * torch.randn(2, 128, 4, 2, 2, generator=g) for _ in range(2)]  # base and rotated flow layer4
    q, k = (20 * F.normalize(torch.randn(4, 128, generator=g), dim=1) for _ in range(2))
    m = _mscl(queue_size=16)
    m.rgb_queue.age.fill_(1000)  # stale negatives: decayed to 0.99999^1000 of their length
    queue = m.rgb_queue.decayed(0.99999)
    T, tol = 0.07, 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lmcl = lmcl_logits(rgb_map, flows, T)
        logits, _ = moco_logits(q, k, queue, T)
    # LMCL: r_b[:, i] . F_b[:, j] / T with spatially averaged, channel-normalised time steps, in float64
    r = F.normalize(rgb_map.double().mean(dim=(3, 4)), dim=1)
    f = F.normalize(torch.cat([x.double().mean(dim=(3, 4)) for x in flows], dim=2), dim=1)
    ref_lmcl = torch.einsum("bci,bcj->bij", r, f).flatten(0, 1) / T
    # MoCo with the age-decayed queue: [q.k+, q.(queue * 0.99999^age)] / T
    qd = q.double()
    decayed = m.rgb_queue.queue.double() * 0.99999 ** 1000
    ref_moco = torch.cat([(qd * k.double()).sum(1, keepdim=True), qd @ decayed.t()], dim=1) / T
    for out, ref in ((lmcl, ref_lmcl), (logits, ref_moco)):
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())
    # the failure mode: the same LMCL product in bf16 is off by far more
    plain = torch.einsum("bci,bcj->bij", r.bfloat16(), f.bfloat16()).flatten(0, 1).double() / T
    assert (plain - ref_lmcl).abs().max() > 100 * tol * ref_lmcl.abs().max()


def test_training_step_runs_under_cpu_bf16_autocast():
    m = _mscl(queue_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(_batch(), _state())
    assert set(out.parts) >= ALL_PARTS
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    for queue in (m.rgb_queue, m.flow_queue):
        assert queue.queue.dtype == torch.float32 and torch.isfinite(queue.queue).all()


def test_effective_settings_report_both_capped_queues():
    # the cap: the largest power of two <= N (one video per slot), at least 16
    assert _mscl(dataset_size=100).effective_settings() == {"rgb_queue_size": 64, "flow_queue_size": 64}
    assert _mscl(dataset_size=10).effective_settings() == {"rgb_queue_size": 16, "flow_queue_size": 16}
    assert _mscl(dataset_size=9537).effective_settings() == {"rgb_queue_size": 8192, "flow_queue_size": 8192}  # UCF101
    assert _mscl(dataset_size=100, queue_size=32).effective_settings()["rgb_queue_size"] == 32  # below the cap: kept
