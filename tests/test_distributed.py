"""Real two-process gloo runs: a DDP MoCo step equals the single-process step on the global batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from backbones import create_backbone
from core.distributed import SyncBatchNorm, all_gather_with_grad, batch_shuffle, batch_unshuffle, convert_sync_batchnorm
from methods.base import TrainState, create_method
from tests.helpers import free_port

WORLD = 2


def _global_batch() -> torch.Tensor:
    return torch.randn(8, 2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))


def _moco() -> nn.Module:
    torch.manual_seed(0)
    return create_method("moco", create_backbone("r3d_tiny"), dataset_size=512, overrides={"queue_size": 64})


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        results = {"moco": _ddp_moco_step(rank), **_gather_checks(rank), "bn": _sync_bn_check(rank)}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _ddp_moco_step(rank: int) -> dict:
    method = convert_sync_batchnorm(_moco())
    ddp = nn.parallel.DistributedDataParallel(method, broadcast_buffers=False)
    local = _global_batch()[rank * 4 : (rank + 1) * 4]
    out = ddp({"rgb": local}, TrainState(world_size=WORLD, rank=rank))
    out.loss.backward()
    loss = out.loss.detach().clone()
    dist.all_reduce(loss)
    return {"grads": _grads(method), "loss": loss / WORLD, "queue": method.queue["queue"].clone(), "ptr": int(method.queue.ptr)}


def _gather_checks(rank: int) -> dict:
    x = torch.arange(6.0).view(3, 2) + 10 * rank
    shuffled, undo = batch_shuffle(x)
    roundtrip = batch_unshuffle(shuffled, undo)
    results = {"shuffle_roundtrip": bool(torch.equal(roundtrip, x))}
    for mode in ("full", "local"):
        z = (torch.randn(8, 5, generator=torch.Generator().manual_seed(3))[rank * 4 : (rank + 1) * 4]).requires_grad_()
        local = F.normalize(z, dim=1)
        everything = all_gather_with_grad(local, mode)
        # each rank's loss covers its own queries against every key, as a real DDP loss does
        loss = F.cross_entropy(local @ everything.T / 0.1, torch.arange(4) + 4 * rank)
        loss.backward()
        grads = [torch.empty_like(z.grad) for _ in range(WORLD)]
        dist.all_gather(grads, z.grad)
        results[f"gather_{mode}"] = torch.cat(grads)
    return results


def _sync_bn_check(rank: int) -> dict:
    bn = SyncBatchNorm(3)
    x = torch.randn(8, 3, 2, 4, 4, generator=torch.Generator().manual_seed(5))[rank * 4 : (rank + 1) * 4]
    y = bn(x)
    return {"y0": y.detach() if rank == 0 else None, "running_mean": bn.running_mean.clone(), "running_var": bn.running_var.clone()}


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ddp") / "results.pt")
    mp.spawn(_worker, args=(free_port(), out), nprocs=WORLD, join=True)
    return torch.load(out, weights_only=False)


@pytest.mark.slow  # the module's two spawned gloo workers (ddp_results)
def test_ddp_moco_gradient_equals_single_process_on_the_global_batch(ddp_results):
    method = _moco()
    out = method({"rgb": _global_batch()}, TrainState())
    out.loss.backward()
    single = _grads(method)
    ddp = ddp_results["moco"]
    assert ddp["grads"].keys() == single.keys() and len(single) > 10
    torch.testing.assert_close(ddp["loss"], out.loss.detach(), rtol=1e-5, atol=1e-6)
    for name, grad in single.items():
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=2e-3, atol=2e-5, msg=name)
    # both ranks enqueue the gathered keys: the queue equals the single-process queue
    torch.testing.assert_close(ddp["queue"], method.queue["queue"], rtol=1e-4, atol=1e-5)
    assert ddp["ptr"] == int(method.queue.ptr) == 8


@pytest.mark.slow  # the module's two spawned gloo workers (ddp_results)
def test_batch_shuffle_round_trips(ddp_results):
    assert ddp_results["shuffle_roundtrip"]


@pytest.mark.slow  # the module's two spawned gloo workers (ddp_results)
def test_full_gather_gives_the_single_process_gradient_and_local_does_not(ddp_results):
    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(3)).requires_grad_()
    n = F.normalize(z, dim=1)
    F.cross_entropy(n @ n.T / 0.1, torch.arange(8)).backward()
    # DDP averages the ranks' gradients: with "full" that average is the global-batch gradient
    torch.testing.assert_close(ddp_results["gather_full"] / WORLD, z.grad, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(ddp_results["gather_local"], z.grad, atol=1e-4)


@pytest.mark.slow  # the module's two spawned gloo workers (ddp_results)
def test_sync_batchnorm_uses_global_statistics(ddp_results):
    x = torch.randn(8, 3, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    bn = nn.BatchNorm3d(3)
    y = bn(x)
    torch.testing.assert_close(ddp_results["bn"]["y0"], y[:4].detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ddp_results["bn"]["running_mean"], bn.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ddp_results["bn"]["running_var"], bn.running_var, rtol=1e-4, atol=1e-6)


def test_sync_bn_conversion_keeps_frozen_parameters_frozen():
    method = _moco()
    key_params = [id(p) for p in method.key_backbone.parameters()]
    convert_sync_batchnorm(method)
    assert any(isinstance(m, SyncBatchNorm) for m in method.key_backbone.modules())
    assert not any(p.requires_grad for p in method.key_backbone.parameters())
    assert [id(p) for p in method.key_backbone.parameters()] == key_params  # same Parameter objects
