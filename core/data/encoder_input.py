"""What an encoder eats: its input convention, and the one function that applies it.

Methods train their encoders on different inputs: MoCo, MLFO, DCLR and MSCL feed ImageNet-
normalised RGB; IIC feeds RGB in [0, 1] without normalisation (and residual frames as its second
view). An encoder evaluated on inputs it never saw is measured off its own distribution, so each
method declares its :class:`InputConvention` (:meth:`methods.base.Method.encoder_input`), the
pretraining run writes it into ``encoder.pt`` and logs it (``input.*`` params), and every protocol
(features, retrieval, linear, kNN, motion probes, fine-tuning) feeds the encoder through
:func:`to_encoder_input` with that convention unless the protocol names its own.

The convention, applied to a float clip batch in [0, 1] (the loader's uint8 frames / 255, after
crop and flip) in this order:

1. ``modality``: ``"rgb"`` keeps the frames; ``"residual"`` is IIC's rescaled residual clip
   ``(x - roll(x, 1, T) + 1) / 2`` (:func:`~core.data.modalities.residual_frames`), computed on
   the [0, 1] frames as IIC computes it; ``"flow"`` is the flow cache's (u, v) in [0, 1]
   (0.5 = no motion), returned as it is: ImageNet statistics are RGB statistics.
2. ``value_range`` (lo, hi): ``x * (hi - lo) + lo`` maps [0, 1] to the range the encoder was
   trained on ((0, 1) leaves it alone; C3D-style encoders trained on (0, 255)).
3. ``normalize``: ``(x - mean) / std`` per channel with the statistics ``stats`` names: ImageNet's
   (every vsbench method) or Kinetics-400's (torchvision's video models).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import Tensor

from core.data.modalities import residual_frames
from core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, KINETICS_STD, normalize

__all__ = ["ENCODER_MODALITIES", "EncoderTraining", "InputConvention", "to_encoder_input", "training_stride"]

ENCODER_MODALITIES = ("rgb", "residual", "flow")
NORMALIZE_STATS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "kinetics": (KINETICS_MEAN, KINETICS_STD)}


@dataclass(frozen=True)
class InputConvention:
    """The modality, value range and normalisation an encoder was trained on."""

    modality: str = "rgb"  # rgb | residual | flow
    value_range: tuple[float, float] = (0.0, 1.0)  # what [0, 1] pixel values are mapped to
    normalize: bool = True  # mean/std after the value range (never for flow)
    stats: str = "imagenet"  # whose mean/std: a key of NORMALIZE_STATS

    def __post_init__(self) -> None:
        if self.modality not in ENCODER_MODALITIES:
            raise ValueError(f"input modality must be one of {ENCODER_MODALITIES}, got {self.modality!r}")
        lo, hi = (float(v) for v in self.value_range)
        if not hi > lo:
            raise ValueError(f"input value_range must be (low, high) with high > low, got {tuple(self.value_range)!r}")
        object.__setattr__(self, "value_range", (lo, hi))
        if self.stats not in NORMALIZE_STATS:
            raise ValueError(f"input stats must be one of {sorted(NORMALIZE_STATS)}, got {self.stats!r}")
        if self.modality == "flow" and self.normalize:
            raise ValueError("flow inputs are never ImageNet-normalised (those are RGB statistics): set normalize = false")

    def to_dict(self) -> dict:
        """Plain values, for ``encoder.pt``, MLflow params and protocol hashes."""
        d = asdict(self)
        d["value_range"] = list(self.value_range)
        if self.stats == "imagenet":  # the statistics every convention had before there was a choice: hashes unchanged
            del d["stats"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "InputConvention":
        return cls(modality=d["modality"], value_range=tuple(d["value_range"]), normalize=bool(d["normalize"]),
                   stats=d.get("stats", "imagenet"))


def to_encoder_input(x: Tensor, convention: InputConvention) -> Tensor:
    """A float [0, 1] clip batch (B, C, T, H, W) of the convention's stream (RGB frames for rgb and
    residual, flow for flow) -> what the encoder gets (see the module docstring for the order)."""
    if convention.modality == "residual":
        x = residual_frames(x, rescale=True)
    lo, hi = convention.value_range
    if (lo, hi) != (0.0, 1.0):
        x = x * (hi - lo) + lo
    return normalize(x, *NORMALIZE_STATS[convention.stats]) if convention.normalize else x


@dataclass(frozen=True)
class EncoderTraining:
    """How an encoder was trained, as far as evaluation follows it: the temporal stride of its
    clips and its input convention. Written into ``encoder.pt`` (key ``"training"``)."""

    stride: int = 1
    input: InputConvention = field(default_factory=InputConvention)

    def to_dict(self) -> dict:
        return {"stride": int(self.stride), "input": self.input.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderTraining":
        return cls(stride=int(d["stride"]), input=InputConvention.from_dict(d["input"]))


def training_stride(stride: float | tuple[float, float]) -> int:
    """A method's DataSpec stride as one evaluation stride: the value itself, or the lower end of
    a multi-rate range (MLFO draws its rate from [1, rate]: 1 is its base rate)."""
    low = min(stride) if isinstance(stride, (tuple, list)) else stride
    return max(1, int(round(low)))
