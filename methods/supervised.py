"""Supervised classification with labels: the "supervised" reference row and the fine-tune protocol.

Not a self-supervised method: it trains the backbone plus a linear classifier with cross-entropy
on the data set's labels, through the same training loop as every method (so AMP, DDP,
checkpoints and tracking are shared). Started from random weights it is the "supervised"
reference row (the ceiling of a table); started from a pretrained encoder (``init_encoder``) it is
the fine-tune protocol. It is marked ``reference = True`` so suites do not list it as a method.

Augmentation follows the fine-tune recipes of the seed papers (IIC, VCOP): random crop and
horizontal flip, no colour augmentation. The clips are then fed as the config's input convention
says (``modality``, ``value_range``, ``normalize``: by default ImageNet-normalised RGB), through the
same :func:`~core.data.encoder_input.to_encoder_input` the evaluation protocols use, so a
fine-tuned encoder sees what it was pretrained on (IIC's: [0, 1] RGB, not normalised).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.data.encoder_input import InputConvention, to_encoder_input
from core.data.transforms import AugmentConfig
from methods.base import DataSpec, Method, Recipe, StepOutput, TrainState, register_method


@dataclass(frozen=True)
class SupervisedConfig:
    """Classifier settings; ``num_classes`` must be given (the data set's class count)."""

    num_classes: int = 0
    frames: int = 16
    stride: int = 1
    crop: int = 112
    dropout: float = 0.5
    flip: bool = True  # random horizontal flip (the papers' fine-tune recipes); off for data a flip relabels
    crop_scale: tuple[float, float] = (0.5, 1.0)  # area fraction of the random crop
    modality: str = "rgb"  # rgb | residual: what the backbone is fed (core.data.encoder_input)
    value_range: tuple[float, float] = (0.0, 1.0)
    normalize: bool = True  # ImageNet mean/std

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be the data set's class count (>= 2), got {self.num_classes}")
        if self.modality not in ("rgb", "residual"):
            raise ValueError(f"modality must be 'rgb' or 'residual' (computed from the RGB frames), got {self.modality!r}")
        InputConvention(self.modality, tuple(self.value_range), self.normalize)  # raises naming a bad value_range


@register_method("supervised")
class Supervised(Method):
    """Backbone + linear classifier trained with labels (reference row and fine-tuning)."""

    Config = SupervisedConfig
    reference = True
    recipe = Recipe(optimizer="sgd", lr=0.01, weight_decay=5e-4, sgd_momentum=0.9, schedule="multistep",
                    milestones=(20, 25), gamma=0.1, epochs=30, batch_size=32)

    def __init__(self, config: SupervisedConfig, backbone: nn.Module, *, dataset_size: int):
        super().__init__(config, backbone, dataset_size=dataset_size)
        self.classifier = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(backbone.feature_dim, config.num_classes))

    def data_spec(self) -> DataSpec:
        c = self.config
        augment = AugmentConfig(size=(c.crop, c.crop), scale=tuple(c.crop_scale), flip_p=0.5 if c.flip else 0.0, jitter_p=0.0, grey_p=0.0,
                                blur_p=0.0, normalize=False)  # [0, 1] clips: the input convention is applied in training_step
        return DataSpec(clips=1, frames=c.frames, stride=c.stride, augment=augment, decode_size=(128, 171))

    def encoder_input(self) -> InputConvention:
        c = self.config
        return InputConvention(c.modality, tuple(c.value_range), c.normalize)

    def logits(self, clips: torch.Tensor) -> torch.Tensor:
        """Class logits of (B, C, T, H, W) clips."""
        return self.classifier(self.backbone(clips))

    def training_step(self, batch: dict[str, torch.Tensor], state: TrainState) -> StepOutput:
        logits = self.logits(to_encoder_input(batch["rgb"][:, 0], self.encoder_input()))
        loss = F.cross_entropy(logits, batch["label"])
        accuracy = (logits.argmax(dim=1) == batch["label"]).float().mean()
        return StepOutput(loss, {"supervised/acc": accuracy.detach()})
