"""MoCo v2 on RGB clips: the reference row, and the worked example of adding a method.

MoCo (He et al., CVPR 2020) with the v2 changes (Chen et al., 2020: MLP head, stronger
augmentation): two clips of the same video are query and key; the query encoder is trained
with InfoNCE against the key and a queue of keys from earlier batches; the key encoder is an
exponential moving average of the query encoder.

Choices, as the video SSL papers built on MoCo make them (VideoMoCo, DCLR):

- two clips per video at different random times, 16 frames at stride 2, 112 px crops;
- augmentation per clip: random resized crop (0.2-1), flip, colour jitter (0.4, 0.4, 0.4, 0.1;
  p 0.8), greyscale (p 0.2), Gaussian blur (p 0.5), ImageNet normalisation;
- MLP head D -> D -> 128, T = 0.07, m = 0.999;
- the logits (query . key, query . queue) are computed in float32 with autocast off
  (:func:`~methods.losses.moco_logits`); the encoders run under the harness's bf16 autocast;
- queue length: ``queue_size`` capped at the largest power of two not above a quarter of the
  data set (DCLR's choice for UCF101: 2048 for its 9,537 training videos), so the queue never
  holds several stale copies of the same video;
- shuffle BN for the key encoder under DDP (MoCo's ``_batch_shuffle_ddp``); with ``sync_bn``
  the harness synchronises BatchNorm instead and the shuffle is skipped.

The key-encoder EMA runs in :meth:`after_optimizer_step`, i.e. between steps, which is the same
update the original makes at the start of the next forward pass.

Adding a method: subclass :class:`~methods.base.Method`, give it a ``Config`` dataclass with the
paper's defaults and a ``recipe``, implement ``data_spec`` and ``training_step``, and decorate
it with ``@register_method("name")``. Shared pieces come from :mod:`methods.losses`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.data.transforms import AugmentConfig
from core.distributed import all_gather, has_sync_bn, shuffle_bn_forward
from methods.base import DataSpec, Method, Recipe, StepOutput, TrainState, register_method
from methods.losses import MLPHead, MoCoQueue, capped_queue_size, ema_update, moco_logits


@dataclass(frozen=True)
class MoCoConfig:
    """MoCo v2 hyperparameters (paper defaults)."""

    embed_dim: int = 128
    queue_size: int = 65536  # capped by the data set size, see methods.losses.capped_queue_size
    temperature: float = 0.07
    momentum: float = 0.999
    shuffle_bn: bool = True  # shuffle the key batch across ranks (ignored in one process or with sync_bn)
    frames: int = 16
    stride: int = 2
    crop: int = 112


@register_method("moco")
class MoCo(Method):
    """MoCo v2 on RGB clips (He et al. 2020; Chen et al. 2020): the plain contrastive baseline."""

    Config = MoCoConfig
    paper_backbone = "r3d_18"
    recipe = Recipe(optimizer="sgd", lr=0.01, weight_decay=1e-4, momentum=0.9, schedule="multistep",
                    milestones=(120, 160), gamma=0.1, epochs=200, batch_size=40)

    def __init__(self, config: MoCoConfig, backbone: nn.Module, *, dataset_size: int):
        super().__init__(config, backbone, dataset_size=dataset_size)
        dim = backbone.feature_dim
        self.head = MLPHead(dim, dim, config.embed_dim, normalize=True)
        self.key_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.key_head = copy.deepcopy(self.head).requires_grad_(False)
        self.queue = MoCoQueue(capped_queue_size(config.queue_size, dataset_size, videos_per_slot=4), config.embed_dim)

    def data_spec(self) -> DataSpec:
        c = self.config
        return DataSpec(clips=2, frames=c.frames, stride=c.stride, augment=AugmentConfig(size=(c.crop, c.crop)))

    def effective_settings(self) -> dict[str, int]:
        """``queue_size``: the queue length used, ``queue_size`` capped by the data set
        (``capped_queue_size(..., videos_per_slot=4)``: 65536 -> 2048 on UCF101)."""
        return {"queue_size": self.queue.size}

    @torch.no_grad()
    def keys(self, clips: torch.Tensor) -> torch.Tensor:
        """L2-normalised key embeddings; the batch is shuffled across ranks around the key encoder (shuffle BN)."""
        enabled = self.config.shuffle_bn and not has_sync_bn(self.key_backbone)
        return shuffle_bn_forward(lambda x: self.key_head(self.key_backbone(x)), clips, enabled=enabled)

    def training_step(self, batch: dict[str, torch.Tensor], state: TrainState) -> StepOutput:
        clips = batch["rgb"]  # (B, 2, C, T, H, W)
        q = self.head(self.backbone(clips[:, 0]))
        k = self.keys(clips[:, 1])
        logits, labels = moco_logits(q, k, self.queue["queue"].clone(), self.config.temperature)
        loss = F.cross_entropy(logits, labels)
        self.queue.enqueue(all_gather(k))
        accuracy = (logits.argmax(dim=1) == 0).float().mean()
        return StepOutput(loss, {"moco/loss": loss.detach(), "moco/acc": accuracy})

    def after_optimizer_step(self, state: TrainState) -> None:
        # parameters only: the key encoder's BN statistics come from its own forward passes, as in MoCo
        ema_update(self.key_backbone, self.backbone, self.config.momentum, copy_buffers=False)
        ema_update(self.key_head, self.head, self.config.momentum, copy_buffers=False)
