"""The Method interface: what every self-supervised method provides to the harness.

A method is an ``nn.Module`` with a name, a config dataclass whose defaults are the paper's, a
training recipe (optimizer, schedule, epochs, batch size) with the paper's defaults, and three
obligations:

- :meth:`Method.data_spec` says what the loader must deliver per video (clips, frames, stride,
  modalities, augmentation, sampler);
- :meth:`Method.training_step` takes a batch that is already on the device, augmented and float,
  shaped (B, clips, C, T, H, W) per modality, and returns the loss and named parts;
- :attr:`Method.encoder` is the backbone that evaluation uses; ``encoder(x)`` gives (B, D).

Momentum encoders are declared, not updated by hand: :meth:`Method.momentum_pairs` names each
online module and its frozen copy (built with :func:`momentum_copy`), :meth:`Method.momentum`
gives the EMA coefficient per step, and the harness calls :meth:`Method.update_momentum` after
every optimizer step. :func:`key_pass` runs a batch through a momentum copy with shuffle BN.

Optional hooks: :meth:`after_optimizer_step` (e.g. prototype normalisation; it runs after the
momentum update), :meth:`param_groups`, :meth:`encoder_input` (what the encoder eats; default:
the first modality of the DataSpec, normalised as its augmentation normalises) and
:meth:`effective_settings` (values the method derived from its config, e.g. a queue capped by the
data set size, logged with the run). Queues and memory banks are buffers, so they checkpoint with
the model.

Class attributes describe the paper's setup: ``recipe`` (optimizer, schedule, batch, epochs),
``paper_backbone`` (the network the paper trained) and ``backbone_init`` (its initialisation, the
default of every run of the method; ``PretrainConfig.init`` overrides it). A suite with
``backbones = ["paper"]`` trains each method as its paper did (docs/paper-configurations.md).
``find_unused_parameters`` is passed to DDP: True when some trainable parameters get no gradient
in some steps (MLFO's graph heads before ``split``).

Every method's Config is a dataclass with ``frames`` (per clip) and ``crop`` (pixels) fields, so
a suite can shrink the input of every method at once for a CPU budget; registration refuses a
Config without them.

Registration: ``@register_method("name")`` on the class; methods that live in other packages
are found through the ``vsbench.methods`` entry-point group.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

import torch
import torch.nn as nn

from core.config import Recipe, UnknownNameError  # noqa: F401  (Recipe: part of the Method interface)
from core.data.encoder_input import InputConvention
from core.data.request import LoadRequest
from core.data.transforms import AugmentConfig
from core.distributed import has_sync_bn, shuffle_bn_forward
from methods.losses import ema_update

ENTRY_POINT_GROUP = "vsbench.methods"


@dataclass(frozen=True)
class DataSpec(LoadRequest):
    """What a method asks of the data: a :class:`~core.data.request.LoadRequest` (clips, frames,
    stride, modalities, decode size, sampler) plus how the device augments each clip. The harness
    adds the run's flow cache and decoding backend and hands it to the loader as it is."""

    clips: int = 2  # a method's default: query and key (a plain LoadRequest's is 1)
    decode_size: tuple[int, int] | None = (128, 171)  # the papers' frame size for 112-px crops (a LoadRequest's: the file's)
    shared_crop: bool = False  # one crop/flip for all clips of a video (RGB and flow of a clip always share)
    augment: AugmentConfig = AugmentConfig()  # per-clip device augmentation (the paper's recipe)
    flow_flip_negates_u: bool = True  # a flip negates u (flow as vectors); False flips the field only (colour-coded flow)


def decode_size_for_crop(crop: int, at_112: tuple[int, int] = (128, 171)) -> tuple[int, int]:
    """The (H, W) a paper decodes its frames to for 112-px crops (``at_112``), scaled to ``crop``,
    so a suite that shrinks the crop keeps each method's crop-to-frame proportion."""
    return round(at_112[0] * crop / 112), round(at_112[1] * crop / 112)


@dataclass
class TrainState:
    """Where training stands; passed to every step and hook."""

    step: int = 0  # optimizer steps done so far
    epoch: int = 0
    epochs: int = 1  # epochs of this run (after budget scaling)
    steps_per_epoch: int = 1
    world_size: int = 1
    rank: int = 0

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))


@dataclass
class StepOutput:
    """The loss to minimise and named parts/diagnostics (each logged as a metric)."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor | float] = field(default_factory=dict)
    skip_optimizer: bool = False  # backward runs but the optimizer does not step (e.g. DCLR's queue warm-up)


@dataclass(frozen=True)
class MomentumPair:
    """An online module and its momentum copy (a :func:`momentum_copy` of it).

    After every optimizer step the copy's parameters become ``m * copy + (1 - m) * online``
    (MoCo, He et al. 2020, Eq. 2). Its buffers are left alone: a key encoder's BatchNorm
    statistics come from its own train-mode forward passes, as in MoCo."""

    online: nn.Module
    copy: nn.Module


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` (same initial weights, ``requires_grad=False``): the
    momentum (key) encoder of a :class:`MomentumPair`. Frozen, so the optimizer never sees it."""
    return copy.deepcopy(module).requires_grad_(False)


@torch.no_grad()
def key_pass(encode: Callable[[torch.Tensor], Any], x: torch.Tensor, *, key_encoder: nn.Module, shuffle_bn: bool) -> Any:
    """``encode(x)`` through a momentum encoder, without gradient. With ``shuffle_bn`` the batch
    is shuffled across ranks around it (MoCo's shuffle BN, :func:`core.distributed.shuffle_bn_forward`),
    except in one process and when ``key_encoder`` holds SyncBN, which already removes the leak
    shuffle BN guards against. ``encode`` may return a tensor or a dict of tensors."""
    return shuffle_bn_forward(encode, x, enabled=shuffle_bn and not has_sync_bn(key_encoder))


class Method(nn.Module):
    """Base class of all methods. Subclasses set ``name``, ``Config`` and ``recipe``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    recipe: ClassVar[Recipe] = Recipe()
    reference: ClassVar[bool] = False  # True for label-using reference rows (not listed as methods by suites)
    paper_backbone: ClassVar[str] = "r3d_18"  # the backbone of the paper's main results (suites' "paper" rows)
    backbone_init: ClassVar[str] = "kaiming_fan_out"  # the paper's initialisation (backbones.INIT_SCHEMES)
    find_unused_parameters: ClassVar[bool] = False  # passed to DDP: True when some parameters may get no gradient in a step

    def __init__(self, config: Any, backbone: nn.Module, *, dataset_size: int):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.dataset_size = dataset_size

    @property
    def encoder(self) -> nn.Module:
        """The network evaluation uses: ``encoder(x)`` maps (B, C, T, H, W) to (B, D)."""
        return self.backbone

    def data_spec(self) -> DataSpec:
        raise NotImplementedError

    def encoder_input(self) -> InputConvention:
        """What :attr:`encoder` was trained on; every evaluation protocol feeds it the same.

        Default: the DataSpec's first modality, ImageNet-normalised when its augmentation
        normalises. A method whose encoder sees something else (a derived view only, another
        value range) overrides this."""
        spec = self.data_spec()
        modality = spec.modalities[0]
        return InputConvention(modality=modality, normalize=spec.augment.normalize and modality != "flow")

    def effective_settings(self) -> dict[str, Any]:
        """Values the method derived from its config and the data (a queue capped by the data set
        size, a K capped at N - 1, ...): logged as ``effective.*`` params next to the requested
        ones, so a run's record says what was used. Default: none."""
        return {}

    def training_step(self, batch: dict[str, torch.Tensor], state: TrainState) -> StepOutput:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor], state: TrainState) -> StepOutput:
        """DDP calls ``forward``: it is the training step, so gradients are synchronised."""
        return self.training_step(batch, state)

    def momentum_pairs(self) -> dict[str, Sequence[MomentumPair]]:
        """The method's momentum encoders, in named groups that share a momentum schedule
        (:meth:`momentum`): ``{"key": [MomentumPair(self.backbone, self.key_backbone), ...]}``.
        Default: none."""
        return {}

    def momentum(self, group: str, state: TrainState) -> float | tuple[float, ...]:
        """The EMA momentum of ``group`` after the optimizer step that brought training to
        ``state.step``; a tuple applies one update per value, in order (MSCL's shipped flow key
        encoder gets two per step). A method that names momentum pairs overrides this."""
        raise NotImplementedError(f"{type(self).__name__} names momentum pairs but no momentum schedule")

    @torch.no_grad()
    def update_momentum(self, state: TrainState) -> None:
        """EMA update of every :meth:`momentum_pairs` copy, parameters only. The harness calls it
        after every optimizer step (also one that ``skip_optimizer`` skipped), right before
        :meth:`after_optimizer_step`; the original MoCo updates at the start of the next forward
        pass, which is the same sequence of updates. Groups, momenta and pairs go in their
        declared order."""
        for group, pairs in self.momentum_pairs().items():
            momenta = self.momentum(group, state)
            for m in momenta if isinstance(momenta, tuple) else (momenta,):
                for pair in pairs:
                    ema_update(pair.copy, pair.online, m, copy_buffers=False)

    def after_optimizer_step(self, state: TrainState) -> None:
        """Called after every optimizer step, after :meth:`update_momentum` (e.g. prototype normalisation)."""

    def param_groups(self) -> list[dict] | None:
        """Parameter groups for the optimizer; None means all trainable parameters, one group."""
        return None

    def prepare_distributed(self) -> None:
        """Called once when the run is distributed, before DDP wraps the method (e.g. SyncBN)."""


# ----------------------------------------------------------------------------- registry

_METHODS: dict[str, type[Method]] = {}
_BUILTIN_MODULES = ("methods.dclr", "methods.iic", "methods.mlfo", "methods.moco", "methods.mscl", "methods.supervised")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a Method available under ``name``."""

    def add(cls: type[Method]) -> type[Method]:
        if not isinstance(cls.reference, bool):  # e.g. a method named `reference` shadowing the flag
            raise TypeError(f"{cls.__qualname__}.reference must stay the bool flag of Method, got {cls.reference!r}")
        _check_config(cls)
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered by {_METHODS[name].__module__}")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return add


SHARED_CONFIG_FIELDS = ("frames", "crop")  # every method's; a suite shrinks every method's input through them


def _check_config(cls: type[Method]) -> None:
    """A method's Config is a dataclass whose defaults are the paper's and which has the fields
    every suite may set (:data:`SHARED_CONFIG_FIELDS`)."""
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.__qualname__}.Config must be a dataclass (its defaults the paper's), got {cls.Config!r}")
    missing = [f for f in SHARED_CONFIG_FIELDS if f not in {f.name for f in dataclasses.fields(cls.Config)}]
    if missing:
        raise TypeError(f"{cls.__qualname__}.Config lacks field(s) {', '.join(missing)}: every method's Config has "
                        f"{' and '.join(SHARED_CONFIG_FIELDS)} (frames per clip, crop in pixels), which suites set for every method")


def _load_methods() -> None:
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _METHODS:
            ep.load()


def list_methods(*, include_reference: bool = False) -> list[str]:
    """Names of the registered self-supervised methods (built in and from entry points);
    ``include_reference`` adds label-using reference methods such as "supervised"."""
    _load_methods()
    return sorted(n for n, cls in _METHODS.items() if include_reference or not cls.reference)


def get_method(name: str) -> type[Method]:
    """The Method class registered as ``name``; an unknown name lists the valid ones."""
    _load_methods()
    if name not in _METHODS:
        raise UnknownNameError(f"unknown method {name!r}; registered methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def build_config(cls: type[Method], overrides: dict | None = None) -> Any:
    """The method's Config with the paper's defaults, updated by ``overrides`` (unknown keys are errors)."""
    from core.config import from_dict

    return from_dict(cls.Config, overrides or {}, where=f"method.{cls.name}")


def create_method(name: str, backbone: nn.Module, *, dataset_size: int, overrides: dict | None = None) -> Method:
    """Instantiate a registered method on ``backbone`` with its config overridden by ``overrides``."""
    cls = get_method(name)
    return cls(build_config(cls, overrides), backbone, dataset_size=dataset_size)


def config_dict(config: Any) -> dict:
    """A method config as a plain dict (for logging and hashing)."""
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
