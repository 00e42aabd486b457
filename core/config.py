"""Typed configs (dataclasses), TOML loading and validation with errors that name the key.

Every config the harness reads is a dataclass; :func:`from_dict` fills one from plain data
(a TOML table, CLI overrides), rejecting unknown keys (listing the allowed ones) and values of
the wrong type (naming the expected type). ``where`` threads the dotted path of the key through
nested tables, so an error reads ``suite.toml: methods.moco.lr: expected float, got 'fast'``.
Numeric fields are checked against their valid range (:class:`Bound`) when a config is built,
from TOML, ``--set`` or Python alike: ``lr: expected a finite float > 0, got nan``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def merge_tables(base: dict, extra: dict) -> dict:
    """``base`` with ``extra``'s keys set, nested tables merged key by key (``extra`` wins)."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = merge_tables(merged.get(key, {}), value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


class UnknownNameError(KeyError, ValueError):
    """A name no registry holds (method, backbone, clip sampler); the message lists the valid
    names. Catchable as KeyError or ValueError; the CLI prints it as one error line."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        concrete = [o for o in options if o is not type(None)]
        if len(concrete) == 1:  # Optional[X]: X's own, more precise error
            return _coerce(value, concrete[0], where)
        for option in concrete:
            try:
                return _coerce(value, option, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(o) for o in options)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of {_type_name(tp)} fields, got {value!r}")
        return from_dict(tp, value, where=where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type, data: dict, *, where: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data``; missing keys take the class defaults."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(f"{path}: unknown key; allowed keys are {', '.join(sorted(fields))}")
        values[key] = _coerce(value, hints[key], path)
    try:
        return cls(**values)
    except ConfigError as err:  # a field's own range check: the message starts with the key
        raise ConfigError(f"{where}.{err}" if where else str(err)) from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


@dataclass(frozen=True)
class Bound:
    """The valid range of a numeric config field: ``low`` to ``high``, ends included unless
    open; floats must also be finite (a NaN or Inf learning rate trains nothing)."""

    low: float
    high: float = math.inf
    integer: bool = False
    open_low: bool = False
    open_high: bool = False

    def describe(self) -> str:
        """The range as an error message states it, e.g. ``int >= 1`` or ``a finite float in [0, 1)``."""
        kind = "int" if self.integer else "a finite float"
        if self.high == math.inf:
            return f"{kind} {'>' if self.open_low else '>='} {self.low:g}"
        return f"{kind} in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"

    def admits(self, value: Any) -> bool:
        """Whether ``value`` is a number of the right kind (no bool), finite and inside the range."""
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)) or not math.isfinite(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below


def check_bounds(config: Any, bounds: dict[str, Bound]) -> None:
    """Raise :class:`ConfigError` naming the first field of ``config`` (or item of a tuple field)
    outside its :class:`Bound`; None means "not set" and is always valid."""
    for name, bound in bounds.items():
        value = getattr(config, name)
        items = enumerate(value) if isinstance(value, (tuple, list)) else [(None, value)]
        for i, item in items:
            if item is not None and not bound.admits(item):
                key = name if i is None else f"{name}[{i}]"
                raise ConfigError(f"{key}: expected {bound.describe()}, got {item!r}")


def to_dict(config: Any) -> dict:
    """A (nested) dataclass config as plain data, without the fields of :data:`LATER_FIELDS` that
    hold the value every config had before the field existed (so earlier hashes stay the same)."""
    data = dataclasses.asdict(config)
    _drop_later_defaults(config, data)
    return data


#: Fields added to a config class after its hashes were published (run folders, checkpoints and
#: suite memos are keyed by them): class -> {field: values it is left out of :func:`to_dict` at}.
LATER_FIELDS: dict[type, dict[str, tuple]] = {}


def _drop_later_defaults(config: Any, data: dict) -> None:
    later = LATER_FIELDS.get(type(config), {})
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in later and value in later[f.name]:
            del data[f.name]
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            _drop_later_defaults(value, data[f.name])


def config_hash(data: Any) -> str:
    """A short, stable hash of plain config data (dataclasses are converted first)."""
    if dataclasses.is_dataclass(data):
        data = to_dict(data)
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def load_toml(path: str | Path) -> dict:
    """Read a TOML file; a syntax error names the file and position."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such file") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}): TOML files are UTF-8; save it as UTF-8") from err


# ----------------------------------------------------------------------------- pretraining config


@dataclass
class DataConfig:
    """Which data set to pretrain on, and how to read it."""

    path: str = ""  # a UCF101/HMDB51 root or a CSV list (see `vsbench data check`)
    format: str = "auto"  # auto | ucf101 | hmdb51 | csv | ssv2 | diving48 | kinetics (core.data.datasets.FORMATS)
    split: int = 1
    subset: str = "train"
    workers: int = 4  # DataLoader worker processes
    cache_gb: float = 0.0  # keep decoded videos in memory, up to this many GB (core.data.cache); 0 = off
    backend: str = "decord"  # decord | pyav
    flow_root: str | None = None  # flow cache for methods that use flow (default <path>/flow)
    # low-shot: train on this many readable videos of the subset, drawn class-balanced by
    # core.data.subset.draw_videos (the fine-tune protocol's train_videos); None: every video
    train_videos: int | None = None
    train_videos_seed: int = 0  # the draw's seed (a protocol constant, not the run's seed)
    missing: str = "skip"  # a listed video not on disk (Kinetics): skip | error; other formats always refuse one

    def __post_init__(self) -> None:
        check_bounds(self, {"split": Bound(1, integer=True), "workers": Bound(0, integer=True), "cache_gb": Bound(0),
                            "train_videos": Bound(1, integer=True), "train_videos_seed": Bound(0, integer=True)})
        if self.missing not in ("skip", "error"):
            raise ConfigError(f"data.missing: expected 'skip' or 'error', got {self.missing!r}")


LATER_FIELDS[DataConfig] = {"train_videos": (None,), "train_videos_seed": (0,), "missing": ("skip",)}


@dataclass(frozen=True)
class Recipe:
    """A paper's pretraining recipe; a suite may scale the budget (epochs) and the milestones follow."""

    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.01
    weight_decay: float = 1e-4
    sgd_momentum: float = 0.9  # SGD's momentum (a method's EMA momentum lives in its Config)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's
    schedule: str = "multistep"  # none | step | multistep | cosine
    milestones: tuple[float, ...] = ()  # epochs where lr is multiplied by gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    epochs: int = 200
    batch_size: int = 16
    clip_grad: float | None = None  # max L2 norm of the gradient (e.g. MSCL's 40); None = no clipping


@dataclass
class PretrainConfig:
    """Everything one pretraining run needs. Recipe fields left as None take the method's paper recipe."""

    method: str = "moco"
    backbone: str = "r3d_18"
    data: DataConfig = field(default_factory=DataConfig)
    method_args: dict = field(default_factory=dict)  # overrides of the method's Config (paper defaults)
    backbone_args: dict = field(default_factory=dict)
    init: str | None = None  # backbone initialisation (backbones.INIT_SCHEMES); None: the method's paper choice
    # overrides of the method's Recipe, one per Recipe field (checked below); None keeps the paper's
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    sgd_momentum: float | None = None
    betas: tuple[float, float] | None = None
    schedule: str | None = None
    milestones: tuple[float, ...] | None = None
    gamma: float | None = None
    warmup_epochs: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr_scaling: str = "none"  # none | linear: lr x batch_size / the recipe's batch_size when the batch is changed (Goyal et al. 2017)
    init_encoder: str | None = None  # encoder.pt of an earlier run to start the backbone from (fine-tuning)
    # budget and engine
    decode_size: tuple[int, int] | None = None  # (H, W) to decode at, overriding the method's DataSpec (e.g. small CPU runs)
    steps_per_epoch: int | None = None  # cap optimizer steps per epoch (small budgets); None = the whole data set
    accumulate: int = 1  # gradient accumulation: micro-batches per optimizer step
    clip_grad: float | None = None  # max gradient norm (overrides the method recipe's; 0 = off)
    amp: bool = True  # bf16 autocast on CUDA (CPU runs are fp32)
    channels_last: bool = True  # channels_last_3d memory format (faster convolutions on CUDA and on the CPU)
    cudnn_benchmark: bool = True
    compile: bool = False  # torch.compile the backbone only, in place (nn.Module.compile: state_dict keys unchanged); the
    # method's heads, momentum encoders, queues and loss run eagerly. The first step compiles (minutes on a CPU).
    sync_bn: bool = False  # synchronised BatchNorm across ranks
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # outputs
    output_dir: str = "runs"
    run_name: str | None = None
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch is always saved)
    knn_every: int = 0  # epochs between online kNN monitors (test split vs train split, 1 clip per video); 0 = off
    log_every: int = 10  # steps between metric records
    experiment: str = "vsbench"
    tracking_uri: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_bounds(self, PRETRAIN_BOUNDS)
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device: expected auto, cpu or cuda[:N], got {self.device!r}")
        if self.lr_scaling not in LR_SCALING:
            raise ConfigError(f"lr_scaling: expected one of {', '.join(LR_SCALING)}, got {self.lr_scaling!r}")


LR_SCALING = ("none", "linear")


_COUNT, _POSITIVE, _NON_NEGATIVE = Bound(1, integer=True), Bound(0, open_low=True), Bound(0)
PRETRAIN_BOUNDS: dict[str, Bound] = {  # PretrainConfig field -> valid range, checked when a config is built
    "epochs": _COUNT, "batch_size": _COUNT, "steps_per_epoch": _COUNT, "accumulate": _COUNT, "decode_size": _COUNT,
    "checkpoint_every": _COUNT, "log_every": _COUNT, "knn_every": Bound(0, integer=True), "seed": Bound(0, integer=True),
    "lr": _POSITIVE, "gamma": _POSITIVE, "weight_decay": _NON_NEGATIVE, "warmup_epochs": _NON_NEGATIVE,
    "milestones": _NON_NEGATIVE, "clip_grad": _NON_NEGATIVE, "sgd_momentum": Bound(0, 1, open_high=True), "betas": Bound(0, 1, open_high=True),
}


RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe))
_missing = set(RECIPE_FIELDS) - {f.name for f in dataclasses.fields(PretrainConfig)}
if _missing:  # a Recipe field a run could not override
    raise TypeError(f"PretrainConfig lacks an override for Recipe field(s) {sorted(_missing)}")


def resolve_recipe(recipe: Recipe, config: PretrainConfig) -> Recipe:
    """The method's recipe with the config's overrides. Milestones scale with an epoch override;
    with ``lr_scaling = "linear"`` and no explicit ``lr``, the paper's lr scales with the batch:
    ``lr * batch_size / recipe.batch_size`` (the linear scaling rule, Goyal et al. 2017)."""
    overrides = {name: getattr(config, name) for name in RECIPE_FIELDS if getattr(config, name) is not None}
    if "epochs" in overrides and "milestones" not in overrides and recipe.epochs:
        scale = overrides["epochs"] / recipe.epochs
        overrides["milestones"] = tuple(round(m * scale, 3) for m in recipe.milestones)
    if config.lr_scaling == "linear" and "lr" not in overrides and "batch_size" in overrides:
        overrides["lr"] = recipe.lr * overrides["batch_size"] / recipe.batch_size
    return dataclasses.replace(recipe, **overrides)
