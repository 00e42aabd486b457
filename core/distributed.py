"""torchrun / DDP helpers: process-group setup, gathers that keep gradients, SyncBN, shuffle BN.

Everything here is a no-op in a single process, so methods call these unconditionally.

Gathers. A loss over the global batch needs other ranks' features. :func:`all_gather` returns
them without gradient; :func:`all_gather_with_grad` keeps a gradient, in one of two forms:

- ``"local"``: only this rank's slice carries gradient (the convention of SimCLR-style code and
  of MLFO's official implementation);
- ``"full"``: the backward pass sums gradients from every rank's loss (a reduce-scatter), so a
  DDP step equals the single-process step on the global batch exactly.

SyncBN. ``torch.nn.SyncBatchNorm`` runs only on GPUs; :class:`SyncBatchNorm` here computes the
same global statistics with a differentiable ``all_reduce`` on any backend (gloo included), which
is what makes two-process CPU runs comparable with single-process ones. On CUDA
:func:`convert_sync_batchnorm` uses torch's fused version.
"""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn as nn

# torch.distributed.nn.functional is deprecated in favour of functional collectives, which carry
# no autograd; its differentiable all_gather/all_reduce are exactly what the losses here need.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.\w+ is deprecated", category=FutureWarning)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ...) and pick the device.

    Without torchrun's variables this is a single process. NCCL is used on CUDA, gloo on CPU.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        from core.config import ConfigError

        raise ConfigError(f"device = {device!r} was asked for, but torch finds no usable GPU here (torch.cuda.is_available() is "
                          "False); set device = \"cpu\" (or \"auto\", which picks the GPU when there is one)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    return DistInfo(rank(), world_size(), local_rank, dev)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@torch.no_grad()
def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (rank order), without gradient."""
    if not is_distributed():
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous.

    torch's differentiable ``all_gather`` sends gradients back into ``empty_like(grad)`` buffers,
    which keep a non-contiguous gradient's strides (einsum produces such gradients); gloo then
    reads the received data in the wrong order. A contiguous gradient avoids it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def all_gather_with_grad(x: torch.Tensor, mode: str = "full") -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping a gradient (``mode`` = "full" or "local")."""
    if mode not in ("full", "local"):
        raise ValueError(f"mode must be 'full' or 'local', got {mode!r}")
    if not is_distributed():
        return x
    if mode == "full":
        return _ContiguousGrad.apply(torch.cat(dist_fn.all_gather(x.contiguous())))
    parts = list(all_gather(x).chunk(world_size()))
    parts[rank()] = x
    return torch.cat(parts)


def batch_shuffle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's shuffle BN: gather the global batch, permute it, return this rank's share of the
    permutation and the indices that undo it. Identity in a single process."""
    if not is_distributed():
        return x, torch.arange(x.shape[0], device=x.device)
    gathered = all_gather(x)
    perm = torch.randperm(gathered.shape[0], device=x.device)
    dist.broadcast(perm, src=0)
    n = x.shape[0]
    return gathered[perm[rank() * n : (rank() + 1) * n]], torch.argsort(perm)


def batch_unshuffle(x: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    """Undo :func:`batch_shuffle` on the outputs: this rank's original samples, in order."""
    if not is_distributed():
        return x
    n = x.shape[0]
    return all_gather(x)[unshuffle[rank() * n : (rank() + 1) * n]]


def shuffle_bn_forward(fn, x: torch.Tensor, *, enabled: bool = True):
    """MoCo's shuffle BN (He et al. 2020, Sec. 3.3) around ``fn``: run it on this rank's share of
    a random permutation of the global batch, then undo the permutation on its output (a tensor or
    a dict of tensors), so a key's BatchNorm statistics never come from its own query's batch.
    Plain ``fn(x)`` in one process or when not ``enabled`` (e.g. under SyncBN, see :func:`has_sync_bn`)."""
    if not enabled or not is_distributed():
        return fn(x)
    shuffled, unshuffle = batch_shuffle(x)
    out = fn(shuffled)
    if isinstance(out, dict):
        return {k: batch_unshuffle(v, unshuffle) for k, v in out.items()}
    return batch_unshuffle(out, unshuffle)


def has_sync_bn(module: nn.Module) -> bool:
    """Whether ``module`` holds synchronised BatchNorm (torch's or :class:`SyncBatchNorm`)."""
    return any(isinstance(m, (nn.SyncBatchNorm, SyncBatchNorm)) for m in module.modules())


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are over the global batch, on any backend.

    Sums and sums of squares are combined with a differentiable all_reduce, so gradients flow
    through the global statistics exactly as in single-process BatchNorm on the whole batch.
    The sums are accumulated in float64: the one-pass variance ``E[x^2] - E[x]^2`` loses enough
    precision in float32 over a few thousand elements per channel to shift gradients by ~1%
    (measured on R3D at 32x32), which two-process runs would then disagree on.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        xd = x.double()  # one-pass sums in float64: E[x^2] - E[x]^2 cancels badly in float32
        count = torch.tensor([xd.numel() / xd.shape[1]], dtype=torch.float64, device=x.device)
        stats = dist_fn.all_reduce(torch.cat([xd.sum(dims), (xd * xd).sum(dims), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        self._update_running(mean.detach().float(), var.detach().float(), n.detach().float())
        shape = [1, c] + [1] * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps).float()
        y = (x.float() - mean.float().view(shape)) * scale.view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        if not self.track_running_stats:
            return
        self.num_batches_tracked += 1
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean, m)
        self.running_var.lerp_(var * n / (n - 1).clamp_min(1), m)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm by a synchronized one (torch's on CUDA, :class:`SyncBatchNorm` otherwise)."""
    if next(module.parameters()).is_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        # keep the very Parameter and buffer objects: a frozen BN (e.g. in a momentum encoder) stays frozen
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var, new.num_batches_tracked = module.running_mean, module.running_var, module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert(child))
    return module

