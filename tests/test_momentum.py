"""Declared momentum encoders (methods/base.py): the EMA the harness applies, the frozen copies,
the shuffle-BN key pass, and ``find_unused_parameters`` as a class attribute read by the harness."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import harness.train
from backbones import create_backbone
from methods.base import Method, MomentumPair, TrainState, create_method, get_method, key_pass, momentum_copy
from tests.helpers import TinyConfig


class _TwoGroups(Method):
    """A hand-built method: group "a" at a constant 0.9, group "b" with two updates per step (0.5, then 0.8)."""

    Config = TinyConfig

    def __init__(self):
        super().__init__(TinyConfig(), nn.Linear(2, 2), dataset_size=4)
        self.key_backbone = momentum_copy(self.backbone)
        self.head = nn.Linear(2, 1)
        self.key_head = momentum_copy(self.head)

    def momentum_pairs(self):
        return {"a": [MomentumPair(self.backbone, self.key_backbone)], "b": [MomentumPair(self.head, self.key_head)]}

    def momentum(self, group, state):
        return 0.9 if group == "a" else (0.5, 0.8)


def _fill(module: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)


def test_one_ema_step_on_hand_built_weights():
    m = _TwoGroups()
    _fill(m.key_backbone, 2.0)
    _fill(m.backbone, 12.0)
    _fill(m.key_head, 4.0)
    _fill(m.head, 8.0)
    m.update_momentum(TrainState(step=1))
    for p in m.key_backbone.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 3.0))  # 0.9 * 2 + 0.1 * 12
    for p in m.key_head.parameters():  # 0.5 * 4 + 0.5 * 8 = 6, then 0.8 * 6 + 0.2 * 8 = 6.4
        torch.testing.assert_close(p, torch.full_like(p, 6.4))
    for p in [*m.backbone.parameters(), *m.head.parameters()]:
        assert p.requires_grad  # the online side is untouched by the update
    torch.testing.assert_close(next(m.backbone.parameters()), torch.full((2, 2), 12.0))


def test_the_momentum_copy_is_frozen_gets_no_gradient_and_keeps_its_own_buffers():
    online = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    copy = momentum_copy(online)
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), online.state_dict().values()))  # same start
    assert not any(p.requires_grad for p in copy.parameters()) and all(p.requires_grad for p in online.parameters())
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(copy.parameters(), online.parameters()))  # its own storage
    x = torch.randn(4, 3)
    (online(x).sum() + copy(x).sum()).backward()
    assert all(p.grad is not None for p in online.parameters())
    assert all(p.grad is None for p in copy.parameters())
    # buffers: the copy's BatchNorm statistics come from its own forwards, the EMA leaves them alone
    online[1].running_mean.fill_(5.0)
    mean = copy[1].running_mean.clone()

    class _M(_TwoGroups):
        def momentum_pairs(self):
            return {"key": [MomentumPair(online, copy)]}

        def momentum(self, group, state):
            return 0.9

    _M().update_momentum(TrainState(step=1))
    torch.testing.assert_close(copy[1].running_mean, mean)


def test_a_method_without_pairs_updates_nothing_and_pairs_without_a_schedule_are_an_error():
    class _Plain(_TwoGroups):
        def momentum_pairs(self):
            return Method.momentum_pairs(self)

    plain = _Plain()
    before = [p.clone() for p in plain.parameters()]
    plain.update_momentum(TrainState(step=1))
    assert all(torch.equal(a, b) for a, b in zip(before, plain.parameters()))

    class _NoSchedule(_TwoGroups):
        momentum = Method.momentum

    with pytest.raises(NotImplementedError, match="no momentum schedule"):
        _NoSchedule().update_momentum(TrainState(step=1))


def test_key_pass_in_one_process_is_the_plain_encoding_without_gradient():
    encoder = nn.Linear(3, 2)
    x = torch.randn(5, 3)
    for shuffle_bn in (True, False):
        out = key_pass(encoder, x, key_encoder=encoder, shuffle_bn=shuffle_bn)
        assert not out.requires_grad
        torch.testing.assert_close(out, encoder(x).detach())


@pytest.mark.parametrize("name", ["moco", "dclr", "mscl"])
def test_every_frozen_parameter_of_a_momentum_method_belongs_to_a_declared_copy(name):
    # a key module left out of momentum_pairs would never follow its query side
    torch.manual_seed(0)
    m = create_method(name, create_backbone("r3d_tiny"), dataset_size=64, overrides={"frames": 4, "crop": 32})
    pairs = [pair for group in m.momentum_pairs().values() for pair in group]
    declared = {id(p) for pair in pairs for p in pair.copy.parameters()}
    frozen = {id(p) for p in m.parameters() if not p.requires_grad}
    assert declared == frozen and frozen
    assert all(p.requires_grad for pair in pairs for p in pair.online.parameters())
    assert isinstance(m.momentum(next(iter(m.momentum_pairs())), TrainState(step=1, epochs=1, steps_per_epoch=10)), float)


def test_find_unused_parameters_is_a_class_attribute_the_harness_passes_to_ddp(monkeypatch):
    assert Method.find_unused_parameters is False
    assert {n: get_method(n).find_unused_parameters for n in ("moco", "dclr", "mscl", "iic", "mlfo")} == {
        "moco": False, "dclr": False, "mscl": False, "iic": False, "mlfo": True}
    seen = {}
    monkeypatch.setattr(harness.train.nn.parallel, "DistributedDataParallel",
                        lambda module, **kwargs: seen.update(kwargs) or module)
    run = SimpleNamespace(dist=SimpleNamespace(world_size=2, local_rank=0, device=torch.device("cpu")))

    class _Unused(_TwoGroups):
        find_unused_parameters = True

    for method, expected in ((_TwoGroups(), False), (_Unused(), True)):
        harness.train.Pretraining._wrap_ddp(run, method)
        assert seen["find_unused_parameters"] is expected


def test_the_harness_updates_the_key_encoder_after_the_optimizer_step(motionshapes_tiny, tmp_path):
    from core.config import PretrainConfig

    cfg = PretrainConfig(method="moco", backbone="r3d_tiny", epochs=1, batch_size=4, device="cpu", output_dir=str(tmp_path / "runs"),
                         method_args={"frames": 4, "crop": 32, "momentum": 0.9}, decode_size=(32, 43), progress=False)
    cfg.data.path, cfg.data.workers = str(motionshapes_tiny), 0
    run = harness.train.Pretraining(cfg)
    m = run.method
    key0 = [p.clone() for p in m.key_backbone.parameters()]
    calls = []
    update, after = m.update_momentum, m.after_optimizer_step
    m.update_momentum = lambda state: calls.append(("momentum", state.step)) or update(state)
    m.after_optimizer_step = lambda state: calls.append(("after", state.step)) or after(state)
    run.train_step([next(iter(run.loader))])
    assert calls == [("momentum", 1), ("after", 1)]  # once, after the step counter moved, before the method's hook
    stepped = list(m.backbone.parameters())  # the query encoder after the optimizer step
    assert not all(torch.equal(a, b) for a, b in zip(key0, stepped))
    for k0, k, q in zip(key0, m.key_backbone.parameters(), stepped):
        torch.testing.assert_close(k, 0.9 * k0 + 0.1 * q)
