"""IIC: Inter-intra contrastive learning (Tao, Wang, Yamasaki, ACM MM 2020).

IIC is CMC (contrastive multiview coding with memory banks) over two views of the same clip,
plus *intra-negatives*: the anchor's own RGB clip with its temporal structure destroyed.
Reimplemented from the description of the official code (``BestJuly/IIC``, ``train_ssl.py``,
``lib/NCEAverage.py``, ``gen_neg.py``).

Per step, for a batch of B videos with dataset indices ``y`` (one clip each)::

    f1 = E(rgb)                     # view 1, gradient
    f2 = E(view2)                   # view 2, gradient (same backbone: one network for all views)
    fn = E(intra_negative(rgb))     # no gradient; its forward still updates BN statistics
    idx = [y, K uniform draws from [0, N)]            # (B, K+1), shared by the three banks
    logits_rgb   = [M2[idx], Mn[idx]] . f1 / T        # (B, 2K+2), label 0 = M2[y]
    logits_view2 = [M1[idx], Mn[idx]] . f2 / T        # (B, 2K+2), label 0 = M1[y]
    loss = CE(logits_rgb, 0) + CE(logits_view2, 0)
    then (after the logits):  M[y] = normalize(0.5 M[y] + 0.5 f) for (M1, f1), (M2, f2), (Mn, fn)

Defaults are the paper's: K = 1024, T = 0.07, memory momentum 0.5, softmax (InfoNCE) loss,
view 2 = residual frames, intra-negative = frame repeating, SGD lr 0.01 (momentum 0.9, wd 1e-4),
batch 16, multistep [45, 90, 125, 160] x 0.2, 240 epochs. The paper's backbone is ``r3d_vcop``
(R3D with one BasicBlock per stage, 512-d); the harness chooses the backbone, the banks take its
``feature_dim``.

Options (config fields):

- ``view2``: ``"residual"`` (default; ``residual_frames(rgb, rescale=True)``, i.e.
  ``(x - roll(x, 1, T) + 1) / 2`` on the [0, 1] clip, frame 0 wrapping to ``x0 - x_{T-1}``),
  ``"u"`` / ``"v"`` (one channel of the cached TV-L1 flow, replicated to 3 channels as the
  original's greyscale flow JPEGs are; the DataSpec then asks for ("rgb", "flow")), or ``"rgb"``:
  the original's degenerate case where view 2 *is* view 1's feature (``f2 = f1``, no second
  forward; both banks are updated with ``f1``). Kept as the original does it.
- ``intra_negative``: False gives the CMC baseline (two banks, K+1 logits per direction).
- ``negative``: ``"repeat"`` (one random frame repeated over T: a static clip) or ``"shuffle"``
  (the clip cut into 4 equal temporal chunks and two different chunks swapped; T must be a
  multiple of 4).
- ``normalize_query``: False (default, as the original) dots the UNNORMALISED post-ReLU pooled
  feature with the normalised bank rows and mixes the raw feature into the bank; True
  L2-normalises the features first (CMC-style) for both the logits and the bank update.

Intra-negatives enter only through the bank (``Mn``), so their features are computed under
``no_grad``. The banks (start, update order, DDP, precision): docs/methods/iic.md, "Momentum,
queues and banks".

Deviations from the official code, and why:

- ``K`` is capped at ``N - 1`` (N = ``dataset_size``) so that tiny data sets (CPU suites) have
  no more negatives than other videos; at UCF101 scale (N = 9,537) K stays 1024.
- Negatives are drawn uniformly with ``torch.randint`` (the original uses an alias sampler with
  uniform weights: the same distribution; as there, a negative may be the anchor itself).
- Randomness inside the method (negative indices, the repeated frame, the swapped chunks) comes
  from torch's global RNG of the batch's device, which the harness seeds and checkpoints, so
  no generator of its own is stored. Under DDP each rank draws its own negatives and its own
  intra-negative frames/chunks (the original is single-GPU).
- Banks under DDP (gathered updates, identical on every rank) and with a repeated index in one
  batch (the last occurrence wins): docs/methods/iic.md.
- Data: the original decodes at 128x171 and takes a RandomCrop(112). Here the frames are decoded
  at ``decode_size`` (128x171 scaled by ``crop / 112``, so suites that shrink ``crop`` keep the
  same crop-to-frame proportion) and the crop is a RandomResizedCrop whose area and aspect are
  pinned (``scale = crop^2 / (H W)``, ``ratio = 1``), i.e. a fixed crop x crop pixel window at a
  uniform position, with no resize. No flip, colour jitter, greyscale, blur or normalisation:
  values stay in [0, 1]. If a run overrides ``decode_size`` in the harness config, the pinned
  area no longer matches and the crop becomes a fixed-proportion crop resized to ``crop``.
- The separate ``softmax=False`` NCE path of the original (not its default) is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.data.modalities import residual_frames, static_view
from core.data.transforms import AugmentConfig
from core.distributed import all_gather
from methods.base import DataSpec, Method, Recipe, StepOutput, TrainState, decode_size_for_crop, register_method
from methods.losses import MemoryBank, fp32_matmul

__all__ = ["IICConfig", "IIC", "repeat_negative", "shuffle_negative", "iic_logits", "iic_loss", "effective_k"]

VIEW2 = ("residual", "u", "v", "rgb")
NEGATIVES = ("repeat", "shuffle")
_T = 2  # time axis of (B, C, T, H, W)


@dataclass(frozen=True)
class IICConfig:
    """IIC hyperparameters (paper / official-code defaults)."""

    nce_k: int = 1024  # sampled negatives per anchor, capped at dataset_size - 1
    temperature: float = 0.07
    memory_momentum: float = 0.5  # M[y] = normalize(m M[y] + (1 - m) f)
    intra_negative: bool = True  # False = CMC baseline (two banks, K + 1 logits)
    negative: str = "repeat"  # repeat | shuffle
    view2: str = "residual"  # residual | u | v | rgb
    normalize_query: bool = False  # False = the original's raw post-ReLU query
    bank_seed: int = 0  # the three banks start from seeds bank_seed, +1, +2 (same on every rank)
    frames: int = 16
    stride: int = 1
    crop: int = 112

    def __post_init__(self) -> None:
        if self.view2 not in VIEW2:
            raise ValueError(f"view2 must be one of {VIEW2}, got {self.view2!r}")
        if self.negative not in NEGATIVES:
            raise ValueError(f"negative must be one of {NEGATIVES}, got {self.negative!r}")
        if self.nce_k < 1 or self.temperature <= 0 or not 0 <= self.memory_momentum < 1:
            raise ValueError(f"need nce_k >= 1, temperature > 0 and 0 <= memory_momentum < 1, got {self}")
        if self.intra_negative and self.negative == "shuffle" and self.frames % 4:
            raise ValueError(f"shuffle intra-negatives cut the clip into 4 chunks: frames must be a multiple of 4, got {self.frames}")


def effective_k(requested: int, dataset_size: int) -> int:
    """Negatives per anchor: ``requested`` capped at ``dataset_size - 1`` (at least 1)."""
    return max(1, min(requested, dataset_size - 1))


# --------------------------------------------------------------------------------------------
# Intra-negatives
# --------------------------------------------------------------------------------------------


def repeat_negative(x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """Frame repeating: clip ``b`` becomes its frame ``index[b]`` repeated over T (a static clip).

    ``x`` is (B, C, T, H, W); ``index`` (B,) long, drawn uniformly from [0, T) with the global RNG
    of ``x``'s device when None."""
    if x.dim() != 5:
        raise ValueError(f"expected (B, C, T, H, W), got {tuple(x.shape)}")
    if index is None:
        index = torch.randint(x.shape[_T], (x.shape[0],), device=x.device)
    return static_view(x, index)


def shuffle_permutation(frames: int, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(B, frames) frame order that swaps chunks ``first[b]`` and ``second[b]`` of 4 equal chunks."""
    if frames % 4:
        raise ValueError(f"chunk shuffling needs T divisible by 4, got {frames}")
    size = frames // 4
    chunk = torch.arange(4, device=first.device).expand(first.shape[0], 4).clone()
    rows = torch.arange(first.shape[0], device=first.device)
    chunk[rows, first] = second
    chunk[rows, second] = first
    offset = torch.arange(size, device=first.device)
    return (chunk[:, :, None] * size + offset).reshape(first.shape[0], frames)


def shuffle_negative(
    x: torch.Tensor, first: torch.Tensor | None = None, second: torch.Tensor | None = None
) -> torch.Tensor:
    """Chunk shuffling (the original's ``adjacent_shuffle``): cut T into 4 equal chunks and swap
    chunks ``first[b]`` and ``second[b]`` (different) of clip ``b``.

    When not given, ``first`` is uniform in [0, 4) and ``second = (first + 1 + U{0,1,2}) % 4``
    (any other chunk), drawn with the global RNG of ``x``'s device."""
    if x.dim() != 5:
        raise ValueError(f"expected (B, C, T, H, W), got {tuple(x.shape)}")
    b, c, t, h, w = x.shape
    if first is None:
        first = torch.randint(4, (b,), device=x.device)
    if second is None:
        second = (first + 1 + torch.randint(3, (b,), device=x.device)) % 4
    first, second = first.to(x.device, torch.long), second.to(x.device, torch.long)
    if bool((first == second).any()):
        raise ValueError("shuffle_negative: the two chunks must differ")
    perm = shuffle_permutation(t, first, second)
    return torch.gather(x, _T, perm.view(b, 1, t, 1, 1).expand(b, c, t, h, w))


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def iic_logits(
    query: torch.Tensor, other_rows: torch.Tensor, negative_rows: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """IIC/CMC memory-bank logits of one direction, float32, label 0.

    The product runs in float32 with autocast off (:func:`~methods.losses.fp32_matmul`): the raw
    query has a norm around 20, where a bf16 product with the unit bank rows is off by up to
    0.029, i.e. 0.42 in the logit after 1/T (T = 0.07; the command is in docs/methods/iic.md).

    Args:
        query: (B, D) features of this view (raw or normalised: not normalised here).
        other_rows: (B, K+1, D) rows of the OTHER view's bank at ``idx`` (column 0 = the positive).
        negative_rows: (B, K+1, D) rows of the intra-negative bank at the same ``idx``, or None
            (CMC baseline).
        temperature: T.

    Returns:
        (B, 2K+2) logits ``[other . q, neg . q] / T`` ((B, K+1) without intra-negatives).
    """
    rows = other_rows if negative_rows is None else torch.cat([other_rows, negative_rows], dim=1)
    if query.dim() != 2 or rows.dim() != 3 or rows.shape[0] != query.shape[0] or rows.shape[2] != query.shape[1]:
        raise ValueError(f"expected query (B, D) and rows (B, L, D), got {tuple(query.shape)}, {tuple(rows.shape)}")
    logits = fp32_matmul(rows.detach(), query.unsqueeze(2)).squeeze(2)
    return logits / temperature


def iic_loss(
    query: torch.Tensor, other_rows: torch.Tensor, negative_rows: torch.Tensor | None, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax cross-entropy of :func:`iic_logits` with label 0, mean over the batch; returns
    ``(loss, logits)``."""
    logits = iic_logits(query, other_rows, negative_rows, temperature)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels), logits


# --------------------------------------------------------------------------------------------
# Method
# --------------------------------------------------------------------------------------------


def fixed_crop_augment(crop: int, decode_size: tuple[int, int]) -> AugmentConfig:
    """A RandomCrop(crop) of a ``decode_size`` frame, as an AugmentConfig: area and aspect pinned,
    no flip / colour / blur / normalisation (values stay in [0, 1])."""
    h, w = decode_size
    if crop > min(h, w):
        raise ValueError(f"crop {crop} does not fit in decoded frames of {decode_size}")
    area = crop * crop / (h * w)
    return AugmentConfig(size=(crop, crop), scale=(area, area), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                         grey_p=0.0, blur_p=0.0, normalize=False)


@register_method("iic")
class IIC(Method):
    """IIC (Tao et al., ACM MM 2020): CMC over RGB + residual/flow with intra-negative memory."""

    Config = IICConfig
    paper_backbone = "r3d_vcop"
    backbone_init = "pytorch_default"
    recipe = Recipe(optimizer="sgd", lr=0.01, sgd_momentum=0.9, weight_decay=1e-4, batch_size=16, schedule="multistep",
                    milestones=(45, 90, 125, 160), gamma=0.2, epochs=240)

    def __init__(self, config: IICConfig, backbone: nn.Module, *, dataset_size: int):
        super().__init__(config, backbone, dataset_size=dataset_size)
        if dataset_size < 2:
            raise ValueError(f"IIC needs at least 2 training videos, got dataset_size={dataset_size}")
        dim = backbone.feature_dim
        self.k = effective_k(config.nce_k, dataset_size)
        self.bank_rgb = MemoryBank(dataset_size, dim, generator=config.bank_seed)
        self.bank_view2 = MemoryBank(dataset_size, dim, generator=config.bank_seed + 1)
        self.bank_neg = MemoryBank(dataset_size, dim, generator=config.bank_seed + 2) if config.intra_negative else None

    def data_spec(self) -> DataSpec:
        c = self.config
        decode = decode_size_for_crop(c.crop)
        modalities = ("rgb", "flow") if c.view2 in ("u", "v") else ("rgb",)
        return DataSpec(clips=1, frames=c.frames, stride=c.stride, modalities=modalities,
                        augment=fixed_crop_augment(c.crop, decode), decode_size=decode)

    def view2_input(self, batch: dict[str, torch.Tensor], rgb: torch.Tensor) -> torch.Tensor | None:
        """View 2's clip (B, 3, T, H, W), or None for ``view2="rgb"`` (f2 = f1)."""
        v = self.config.view2
        if v == "residual":
            return residual_frames(rgb, rescale=True)
        if v == "rgb":
            return None
        flow = batch["flow"][:, 0]  # (B, 2, T, H, W): u, v
        ch = 0 if v == "u" else 1
        return flow[:, ch : ch + 1].expand(-1, 3, -1, -1, -1).contiguous()

    def intra_negative_clip(self, rgb: torch.Tensor) -> torch.Tensor:
        return repeat_negative(rgb) if self.config.negative == "repeat" else shuffle_negative(rgb)

    def _query(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f, dim=1) if self.config.normalize_query else f

    def effective_settings(self) -> dict[str, int]:
        """``nce_k``: the negatives per anchor actually drawn, ``min(nce_k, N - 1)`` (:func:`effective_k`)."""
        return {"nce_k": self.k}

    def training_step(self, batch: dict[str, torch.Tensor], state: TrainState) -> StepOutput:
        c = self.config
        rgb = batch["rgb"][:, 0]  # (B, 3, T, H, W) in [0, 1]
        y = batch["index"].to(device=self.bank_rgb.bank.device, dtype=torch.long).view(-1)
        f1 = self._query(self.backbone(rgb))
        x2 = self.view2_input(batch, rgb)
        f2 = f1 if x2 is None else self._query(self.backbone(x2))
        fn = None
        if self.bank_neg is not None:
            with torch.no_grad():  # enters only through the bank; BN statistics still update
                fn = self._query(self.backbone(self.intra_negative_clip(rgb)))

        idx = self.bank_rgb.sample_indices(y, self.k)  # shared by the three banks
        w1, w2 = self.bank_rgb.gather(idx), self.bank_view2.gather(idx)
        wn = self.bank_neg.gather(idx) if self.bank_neg is not None else None
        loss_rgb, logits_rgb = iic_loss(f1, w2, wn, c.temperature)
        loss_view2, logits_view2 = iic_loss(f2, w1, wn, c.temperature)
        loss = loss_rgb + loss_view2

        # bank updates AFTER the logits, with the global batch so every rank stays identical
        with torch.no_grad():
            y_all = all_gather(y)
            m = c.memory_momentum
            self.bank_rgb.update(y_all, all_gather(f1.detach().float()), m)
            self.bank_view2.update(y_all, all_gather(f2.detach().float()), m)
            if self.bank_neg is not None:
                self.bank_neg.update(y_all, all_gather(fn.float()), m)
            acc_rgb = (logits_rgb.argmax(dim=1) == 0).float().mean()
            acc_view2 = (logits_view2.argmax(dim=1) == 0).float().mean()
        return StepOutput(loss, {
            "iic/loss_rgb": loss_rgb.detach(),
            "iic/loss_view2": loss_view2.detach(),
            "iic/acc": (acc_rgb + acc_view2) / 2,
            "iic/acc_rgb": acc_rgb,
            "iic/acc_view2": acc_view2,
        })
