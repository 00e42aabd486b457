"""Evaluation protocols as data: frozen dataclasses with a short hash.

A number is comparable with another only when both came from the same protocol, so every
protocol is a frozen dataclass whose fields and :meth:`Protocol.hash` are logged next to each
metric (``eval/<protocol>/<metric>``), and tables put numbers with equal hashes in one column.
Change any field and the hash changes.

Defaults follow the VCOP/IIC convention for UCF101/HMDB51: split 1,
train split as gallery / training set, test split as queries / test set, 10 clips of 16
frames per video with evenly spaced centres, frames resized to 128x171 and centre-cropped to
112, per-video feature = mean over clips.

Fields left as None follow the encoder (:class:`EncoderTraining`, recorded in ``encoder.pt``):
the temporal stride it was trained at, and its input convention (modality, value range,
ImageNet normalisation; :class:`core.data.encoder_input.InputConvention`). "Each encoder fed
as it was trained" is one protocol, so the hash is that of the unresolved protocol;
:func:`resolve` gives the copy that extracts the clips, and its hash keys the feature cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from core.config import LATER_FIELDS, ConfigError, to_dict
from core.data.encoder_input import ENCODER_MODALITIES as MODALITIES, EncoderTraining, InputConvention

LAYERS = ("pooled", "conv5_maxpool")  # global average pool of layer4, or IIC's (1,2,2) max-pooled, flattened conv5
TIE_RULES = ("lowest_index", "numpy_argsort")
MERGE_RULES = ("l2", "concat")  # each part L2-normalised then concatenated, or raw concatenation (IIC's retrieval script)


@dataclass(frozen=True)
class Protocol:
    """Base of all protocols: a name and a stable short hash of every field."""

    name = "protocol"

    def fields(self) -> dict:
        """Every field, but those added later at the value every protocol had before (core.config.LATER_FIELDS)."""
        return to_dict(self)

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
    modality: str | None = None  # rgb | residual (IIC's rescaled residual frames) | flow; None: the encoder's
    merge: str | None = None  # a second modality whose features are concatenated (IIC's "merge")
    merge_rule: str = "l2"  # l2: [f / |f|, g / |g|] | concat: [f, g] as they are (IIC's retrieval script)
    normalize_input: bool | None = None  # mean/std after the crop; None: as the encoder was trained
    value_range: tuple[float, float] | None = None  # what [0, 1] pixels are mapped to; None: the encoder's
    normalize_stats: str | None = None  # imagenet | kinetics (whose mean/std); None: the encoder's

    def __post_init__(self) -> None:
        _check_stride(self.stride)
        _check_input(self)
        if self.layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got {self.layer!r}")
        if self.merge is not None and self.merge not in MODALITIES:
            raise ValueError(f"merge must be one of {MODALITIES}, got {self.merge!r}")
        if self.merge_rule not in MERGE_RULES:
            raise ValueError(f"merge_rule must be one of {MERGE_RULES}, got {self.merge_rule!r}")

    def input_convention(self, modality: str | None = None) -> InputConvention:
        """The convention clips of ``modality`` (default: the protocol's) are fed with; needs a
        resolved protocol (:func:`resolve`)."""
        return _convention(self, modality or self.modality)


@dataclass(frozen=True)
class RetrievalProtocol(Protocol):
    """Class-level recall@k of test queries against the train gallery, cosine similarity."""

    name = "retrieval"
    features: FeatureProtocol = field(default_factory=FeatureProtocol)
    ks: tuple[int, ...] = (1, 5, 10, 20, 50)
    center: bool = False  # subtract the mean feature of each set first (CoCLR/MSCL variant)
    ties: str = "lowest_index"  # lowest_index | numpy_argsort (VCOP/IIC retrieve_clips.py's order; see evaluation.retrieval)

    def __post_init__(self) -> None:
        if self.ties not in TIE_RULES:
            raise ValueError(f"ties must be one of {TIE_RULES}, got {self.ties!r}")


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
    clips (centre crop), softmax averaged over clips (video level) and per clip (clip level).

    Low-shot (SEVERE's 1000 UCF101 videos): ``train_videos`` trains on that many readable videos
    of the train split, drawn class-balanced with ``train_videos_seed``, the same subset for every
    run, seed and machine (:func:`core.data.subset.draw_videos`); the test split stays whole."""

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
    modality: str | None = None  # rgb | residual; None: the encoder's input convention
    normalize_input: bool | None = None  # None: as the encoder was trained
    value_range: tuple[float, float] | None = None  # None: the encoder's
    normalize_stats: str | None = None  # imagenet | kinetics; None: the encoder's
    train_videos: int | None = None  # low-shot: train on this many videos of the train split; None: all of them
    train_videos_seed: int = 0  # the draw's seed: a protocol constant, not the run's seed

    def __post_init__(self) -> None:
        _check_stride(self.stride)
        _check_input(self)
        if self.train_videos is not None and (isinstance(self.train_videos, bool) or not isinstance(self.train_videos, int) or self.train_videos < 1):
            raise ValueError(f"train_videos must be a positive integer or None (the whole train split), got {self.train_videos!r}")
        if isinstance(self.train_videos_seed, bool) or not isinstance(self.train_videos_seed, int) or self.train_videos_seed < 0:
            raise ValueError(f"train_videos_seed must be an integer >= 0, got {self.train_videos_seed!r}")
        if self.modality == "flow":
            raise ValueError("modality: fine-tuning reads RGB frames (rgb, or residual computed from them); flow is not supported")

    def input_convention(self) -> InputConvention:
        """The convention the classifier's clips are fed with; needs a resolved protocol (:func:`resolve`)."""
        return _convention(self, self.modality)


# Fields added after protocols were published, left out of a hash at these values (what every
# protocol did before the field existed), so every earlier hash stays what it was.
LATER_FIELDS[FeatureProtocol] = {"normalize_stats": (None, "imagenet")}
LATER_FIELDS[RetrievalProtocol] = {"ties": ("lowest_index",)}
LATER_FIELDS[FinetuneProtocol] = {"normalize_stats": (None, "imagenet"), "train_videos": (None,), "train_videos_seed": (0,)}


def _check_stride(stride: int | None) -> None:
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1):
        raise ValueError(f"stride must be a positive integer or None (the encoder's training stride), got {stride!r}")


def _check_input(protocol) -> None:
    """The explicit input fields of a protocol form a valid convention (None fields are the encoder's)."""
    if protocol.modality is not None and protocol.modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES} or None (the encoder's), got {protocol.modality!r}")
    if protocol.value_range is not None:
        InputConvention(value_range=tuple(protocol.value_range), normalize=False)  # raises naming the valid form
    if protocol.normalize_stats is not None:
        InputConvention(stats=protocol.normalize_stats)  # raises naming the valid names


def _convention(protocol, modality: str | None) -> InputConvention:
    if modality is None or protocol.normalize_input is None or protocol.value_range is None:
        raise ValueError(f"{protocol.name} protocol not resolved against its encoder: call evaluation.protocols.resolve first")
    return InputConvention(modality=modality, value_range=tuple(protocol.value_range), normalize=protocol.normalize_input and modality != "flow",
                           stats=protocol.normalize_stats or "imagenet")


_FOLLOWED = ("stride", "modality", "normalize_input", "value_range")  # protocol fields that None ties to the encoder


def resolve(protocol, trained: EncoderTraining | None):
    """``protocol`` with its None fields (stride, modality, normalize_input, value_range,
    normalize_stats) set from how the encoder was ``trained``.

    ``trained`` None (an ``encoder.pt`` from before vsbench recorded it) is accepted only when the
    protocol sets every one of those fields itself; otherwise a ConfigError names the keys to set."""
    open_fields = [f for f in _FOLLOWED if hasattr(protocol, f) and getattr(protocol, f) is None]
    if trained is not None and getattr(protocol, "normalize_stats", "") is None:  # None without a record: ImageNet's
        open_fields.append("normalize_stats")
    if not open_fields:
        return protocol
    if trained is None:
        raise ConfigError(f"the encoder does not record how it was trained (its stride and input convention): set "
                          f"{', '.join(f'{protocol.name}.{f}' for f in open_fields)} explicitly")
    values = {"stride": int(trained.stride), "modality": trained.input.modality, "normalize_input": trained.input.normalize,
              "value_range": tuple(trained.input.value_range), "normalize_stats": trained.input.stats}
    return dataclasses.replace(protocol, **{f: values[f] for f in open_fields})
