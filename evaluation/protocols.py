"""Evaluation protocols as data: frozen dataclasses with a short hash.

A number is comparable with another only when both came from the same protocol, so every
protocol is a frozen dataclass whose fields and :meth:`Protocol.hash` are logged next to each
metric (``eval/<protocol>/<metric>``), and tables put numbers with equal hashes in one column.
Change any field and the hash changes.

Defaults follow the VCOP/IIC convention for UCF101/HMDB51: split 1,
train split as gallery / training set, test split as queries / test set, 10 clips of 16
frames per video with evenly spaced centres, frames resized to 128x171 and centre-cropped to
112, per-video feature = mean over clips.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

LAYERS = ("pooled", "conv5_maxpool")  # global average pool of layer4, or IIC's (1,2,2) max-pooled, flattened conv5
MODALITIES = ("rgb", "residual", "flow")


@dataclass(frozen=True)
class Protocol:
    """Base of all protocols: a name and a stable short hash of every field."""

    name = "protocol"

    def fields(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        text = json.dumps({"name": self.name, **self.fields()}, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class FeatureProtocol(Protocol):
    """How per-video features are extracted (shared by retrieval, linear probe and kNN)."""

    name = "features"
    split: int = 1
    clips: int = 10  # uniformly spaced clips per video (VCOP/IIC centres)
    frames: int = 16
    stride: int | None = None  # None: the encoder's training stride (1 for reference rows); see resolve_stride
    resize: tuple[int, int] = (128, 171)  # (H, W) frames are decoded at
    crop: int = 112  # deterministic centre crop
    layer: str = "pooled"
    modality: str = "rgb"  # rgb | residual (IIC's rescaled residual frames) | flow
    merge: str | None = None  # a second modality whose features are concatenated (IIC's "merge")
    normalize_input: bool = True  # ImageNet mean/std after the crop (IIC-style methods train without it)

    def __post_init__(self) -> None:
        _check_stride(self.stride)
        if self.layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got {self.layer!r}")
        for m in (self.modality, self.merge):
            if m is not None and m not in MODALITIES:
                raise ValueError(f"modality must be one of {MODALITIES}, got {m!r}")


@dataclass(frozen=True)
class RetrievalProtocol(Protocol):
    """Class-level recall@k of test queries against the train gallery, cosine similarity."""

    name = "retrieval"
    features: FeatureProtocol = field(default_factory=FeatureProtocol)
    ks: tuple[int, ...] = (1, 5, 10, 20, 50)
    center: bool = False  # subtract the mean feature of each set first (CoCLR/MSCL variant)


@dataclass(frozen=True)
class KNNProtocol(Protocol):
    """Weighted kNN classification (InstDisc style) on the same features."""

    name = "knn"
    features: FeatureProtocol = field(default_factory=FeatureProtocol)
    k: int = 20
    temperature: float = 0.07


@dataclass(frozen=True)
class LinearProtocol(Protocol):
    """L2-regularised logistic regression on frozen, cached features; C chosen on a validation
    slice of the train split (never on the test split)."""

    name = "linear"
    features: FeatureProtocol = field(default_factory=FeatureProtocol)
    cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    val_fraction: float = 0.2  # of the train split, stratified by class
    standardize: bool = True
    max_iter: int = 2000
    seed: int = 0


@dataclass(frozen=True)
class FinetuneProtocol(Protocol):
    """Fine-tuning: the whole network plus a linear head, trained on the train split with labels
    through the harness's loop; tested on every test video with ``test_clips`` uniformly spaced
    clips (centre crop), softmax averaged over clips (video level) and per clip (clip level)."""

    name = "finetune"
    split: int = 1
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.01
    milestones: tuple[float, ...] = (20, 25)
    weight_decay: float = 5e-4
    frames: int = 16
    crop: int = 112
    resize: tuple[int, int] = (128, 171)
    test_clips: int = 10
    steps_per_epoch: int | None = None  # cap per epoch for small budgets
    optimizer: str = "sgd"  # sgd | adam | adamw
    flip: bool = True  # random horizontal flip in training (refused on data whose labels a flip changes)
    crop_scale: tuple[float, float] = (0.5, 1.0)  # area fraction of the random crop in training (IIC/VCOP)
    stride: int | None = None  # None: the encoder's training stride (1 for the supervised row)

    def __post_init__(self) -> None:
        _check_stride(self.stride)


def _check_stride(stride: int | None) -> None:
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1):
        raise ValueError(f"stride must be a positive integer or None (the encoder's training stride), got {stride!r}")


def resolve_stride(protocol, train_stride: int):
    """``protocol`` with ``stride = None`` replaced by the encoder's training stride.

    The hash of the unresolved protocol is what tables compare ("each encoder at its own training
    stride" is one protocol); the resolved copy is what extracts the clips."""
    if protocol.stride is not None:
        return protocol
    return dataclasses.replace(protocol, stride=int(train_stride))


def training_stride(stride: float | tuple[float, float]) -> int:
    """A method's DataSpec stride as one evaluation stride: the value itself, or the lower end of
    a multi-rate range (MLFO draws its rate from [1, rate]: 1 is its base rate)."""
    low = min(stride) if isinstance(stride, (tuple, list)) else stride
    return max(1, int(round(low)))
