"""MoCo v2 on RGB clips: the reference row, and the worked example of adding a method.

MoCo (He et al., CVPR 2020) with the v2 changes (Chen et al., 2020: MLP head, stronger
augmentation). Two clips of the same video, at different random times, are query and key: 16
frames at stride 2, 112 px crops, each with its own MoCo v2 augmentation (random resized crop
0.2-1, flip, colour jitter (0.4, 0.4, 0.4, 0.1) p 0.8, greyscale p 0.2, blur p 0.5, ImageNet
normalisation). One step::

    q = normalize(MLP(backbone(clip 0)))               # MLP D -> D -> 128, with gradient
    k = normalize(MLP_key(backbone_key(clip 1)))       # momentum encoder, shuffle BN under DDP
    loss = CE([q . k, q . queue^T] / 0.07, 0)          # positive in column 0
    enqueue(all_gather(k));  key <- 0.999 key + 0.001 query    (after the optimizer step)

The key encoder, the queue (its length capped by the data set size), shuffle BN and precision
follow the conventions in docs/methods/moco.md ("Momentum, queues and banks"). How this file maps
onto the Method interface: docs/adding-a-method.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.data.transforms import AugmentConfig
from core.distributed import all_gather
from methods.base import DataSpec, Method, MomentumPair, Recipe, StepOutput, TrainState, key_pass, momentum_copy, register_method
from methods.losses import MLPHead, MoCoQueue, capped_queue_size, moco_logits


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
    recipe = Recipe(optimizer="sgd", lr=0.01, weight_decay=1e-4, sgd_momentum=0.9, schedule="multistep",
                    milestones=(120, 160), gamma=0.1, epochs=200, batch_size=40)

    def __init__(self, config: MoCoConfig, backbone: nn.Module, *, dataset_size: int):
        super().__init__(config, backbone, dataset_size=dataset_size)
        dim = backbone.feature_dim
        self.head = MLPHead(dim, dim, config.embed_dim, normalize=True)
        self.key_backbone = momentum_copy(backbone)
        self.key_head = momentum_copy(self.head)
        self.queue = MoCoQueue(capped_queue_size(config.queue_size, dataset_size, videos_per_slot=4), config.embed_dim)

    def data_spec(self) -> DataSpec:
        c = self.config
        return DataSpec(clips=2, frames=c.frames, stride=c.stride, augment=AugmentConfig(size=(c.crop, c.crop)),
                        decode_size=(128, 171))

    def effective_settings(self) -> dict[str, int]:
        """``queue_size``: the queue length used, ``queue_size`` capped by the data set
        (``capped_queue_size(..., videos_per_slot=4)``: 65536 -> 2048 on UCF101)."""
        return {"queue_size": self.queue.size}

    def momentum_pairs(self) -> dict[str, list[MomentumPair]]:
        """The key encoder: backbone and head, each a momentum copy of the query side."""
        return {"key": [MomentumPair(self.backbone, self.key_backbone), MomentumPair(self.head, self.key_head)]}

    def momentum(self, group: str, state: TrainState) -> float:
        """A constant ``m`` (0.999)."""
        return self.config.momentum

    def keys(self, clips: torch.Tensor) -> torch.Tensor:
        """L2-normalised key embeddings; the batch is shuffled across ranks around the key encoder (shuffle BN)."""
        return key_pass(lambda x: self.key_head(self.key_backbone(x)), clips, key_encoder=self.key_backbone,
                        shuffle_bn=self.config.shuffle_bn)

    def training_step(self, batch: dict[str, torch.Tensor], state: TrainState) -> StepOutput:
        clips = batch["rgb"]  # (B, 2, C, T, H, W)
        q = self.head(self.backbone(clips[:, 0]))
        k = self.keys(clips[:, 1])
        logits, labels = moco_logits(q, k, self.queue["queue"].clone(), self.config.temperature)
        loss = F.cross_entropy(logits, labels)
        self.queue.enqueue(all_gather(k))
        accuracy = (logits.argmax(dim=1) == 0).float().mean()
        return StepOutput(loss, {"moco/loss": loss.detach(), "moco/acc": accuracy})
