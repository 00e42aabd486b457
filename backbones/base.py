"""The interface every video backbone implements, and the registry that builds them by name.

A backbone maps a clip ``x`` of shape (B, C, T, H, W) to a globally average-pooled feature (B, D)
and, on request, to the feature maps of its five stages. The stage names are the same for every
architecture, so that methods (multi-level losses, as in MLFO and MSCL) and evaluation (IIC's
"conv5 max-pooled" retrieval feature) can ask for "layer3" or "layer4" without knowing which
network they hold:

    stem -> layer1 -> layer2 -> layer3 -> layer4 -> global average pool -> "pooled" (B, D)

A subclass builds one module per stage, as attributes named after the stages, fills in
``stage_channels`` and calls :func:`init_weights` with the scheme it was given; the base class
does the rest. Pooling is a plain mean over (T, H, W), so ``pooled == layer4.mean((2, 3, 4))``
holds exactly, any input size gives (B, D), and the result does not depend on the memory format
(``channels_last_3d`` or not).

The registry follows timm: factories are decorated with ``@register_backbone("name")`` and
built with ``create_backbone("name", in_channels=3, init="kaiming_fan_out", **variant_kwargs)``.

The initialisation is part of the spec, because the seed papers differ in it: torchvision's
VideoResNet and MLFO's R3D-18 draw convolutions kaiming-normal (fan_out), IIC's R3DNet keeps
PyTorch's per-module defaults. ``INIT_SCHEMES`` names the choices; the default is the former.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.flop_counter import FlopCounterMode

from core.config import UnknownNameError


STAGE_NAMES: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4")
POOLED = "pooled"


class VideoBackbone(nn.Module):
    """Base class: five named stages, global average pooling, and stage maps on request.

    Attributes:
        feature_dim: D, the size of the pooled feature (the channels of ``layer4``).
        stage_names: ``("stem", "layer1", "layer2", "layer3", "layer4")``, in forward order.
        stage_channels: the channel count of each stage's output map.
    """

    stage_names: tuple[str, ...] = STAGE_NAMES
    stage_channels: dict[str, int]
    feature_dim: int

    def _set_stage_channels(self, channels: Sequence[int]) -> None:
        """Record the output channels of the five stages (in order); D is the last one."""
        if len(channels) != len(self.stage_names):
            raise ValueError(f"need {len(self.stage_names)} stage widths, got {list(channels)}")
        self.stage_channels = dict(zip(self.stage_names, (int(c) for c in channels)))
        self.feature_dim = self.stage_channels[self.stage_names[-1]]

    @staticmethod
    def global_pool(x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, C): the mean over time and space (any memory format)."""
        return x.mean(dim=(2, 3, 4))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) float -> (B, D) globally average-pooled ``layer4`` features."""
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.global_pool(x)

    def forward_stages(self, x: Tensor, stages: Sequence[str] | str = ("layer4",)) -> dict[str, Tensor]:
        """The requested stage maps, keyed by stage name, plus ``"pooled"`` when ``layer4`` is run.

        Only the stages up to the deepest one requested are computed. ``"pooled"`` (B, D) is
        returned whenever ``layer4`` is computed (so with the default request), and asking for
        ``"pooled"`` alone runs the whole network and returns only it. Each map is
        (B, C_s, T_s, H_s, W_s) with ``C_s == stage_channels[s]``. Unknown names raise ValueError.
        """
        wanted = {stages} if isinstance(stages, str) else set(stages)
        if not wanted:
            raise ValueError(f"request at least one of {[*self.stage_names, POOLED]}")
        unknown = wanted - set(self.stage_names) - {POOLED}
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; valid: {[*self.stage_names, POOLED]}")
        last = len(self.stage_names) - 1 if POOLED in wanted else max(self.stage_names.index(s) for s in wanted)

        out: dict[str, Tensor] = {}
        for name in self.stage_names[: last + 1]:
            x = getattr(self, name)(x)
            if name in wanted:
                out[name] = x
        if last == len(self.stage_names) - 1:
            out[POOLED] = self.global_pool(x)
        return out


INIT_SCHEMES: tuple[str, ...] = ("kaiming_fan_out", "pytorch_default")
DEFAULT_INIT = "kaiming_fan_out"


def check_init_scheme(scheme: str) -> str:
    """``scheme`` if it is one of ``INIT_SCHEMES``; otherwise an UnknownNameError naming them."""
    if scheme not in INIT_SCHEMES:
        raise UnknownNameError(f"unknown init scheme {scheme!r}; valid init schemes: {', '.join(INIT_SCHEMES)}")
    return scheme


def init_weights(module: nn.Module, scheme: str = DEFAULT_INIT) -> None:
    """Initialise every parameter of ``module`` by the named scheme (one of ``INIT_SCHEMES``).

    * ``"kaiming_fan_out"``: kaiming-normal convolutions (fan_out, ReLU), zero conv biases, norm
      weight 1 and bias 0; torchvision's VideoResNet (and MLFO's R3D) initialisation. Linear
      layers keep their defaults.
    * ``"pytorch_default"``: each submodule's own ``reset_parameters()``, i.e. exactly what its
      constructor draws (convolutions and linears kaiming-uniform with a = sqrt(5), so
      U(-1/sqrt(fan_in), 1/sqrt(fan_in)); norms weight 1, bias 0); IIC's R3DNet, which sets no
      initialisation of its own.

    Both work on the "meta" device, where they draw nothing.
    """
    if check_init_scheme(scheme) == "pytorch_default":
        _reset_to_pytorch_defaults(module)
    else:
        _kaiming_fan_out(module)


def _kaiming_fan_out(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs with zero biases; affine norms at weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.Conv2d, nn.Conv1d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (_BatchNorm, nn.GroupNorm)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _reset_to_pytorch_defaults(module: nn.Module) -> None:
    """Redraw every submodule that defines ``reset_parameters`` as its constructor would."""
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()


# --------------------------------------------------------------------------------------------
# Registry


class UnknownBackboneError(UnknownNameError):
    """An unregistered backbone name; catchable as KeyError or ValueError. Lists the valid names."""


_REGISTRY: dict[str, Callable[..., VideoBackbone]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., VideoBackbone]], Callable[..., VideoBackbone]]:
    """Decorator: register a factory ``fn(in_channels=3, init=..., **kwargs) -> VideoBackbone``.

    The factory must accept ``init`` (one of ``INIT_SCHEMES``), which ``create_backbone`` always
    passes, and apply it with :func:`init_weights`.
    """

    def decorator(fn: Callable[..., VideoBackbone]) -> Callable[..., VideoBackbone]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"backbone {name!r} is already registered (by {_REGISTRY[name].__module__})")
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_backbones() -> list[str]:
    """The registered backbone names, sorted."""
    return sorted(_REGISTRY)


def create_backbone(name: str, *, init: str = DEFAULT_INIT, **kwargs) -> VideoBackbone:
    """Build the backbone registered as ``name``, initialised by the scheme ``init``.

    ``init`` is one of ``INIT_SCHEMES`` (see :func:`init_weights`); the other kwargs
    (``in_channels`` ...) go to the factory. An unknown name or scheme raises UnknownNameError
    listing the valid ones. Honours the ambient ``torch.device(...)`` context, so
    ``with torch.device("meta"):`` builds a weightless copy for shape and cost checks.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; registered backbones: {', '.join(list_backbones())}"
        ) from None
    return factory(init=check_init_scheme(init), **kwargs)


# --------------------------------------------------------------------------------------------
# Cost


def count_params(model: nn.Module) -> int:
    """The number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: nn.Module, input_size: Sequence[int] = (16, 112, 112), in_channels: int = 3) -> float:
    """Forward GMACs for one clip of ``input_size`` (T, H, W): FlopCounterMode's FLOPs / 2.

    The same convention as torchvision's ``_ops`` metadata (multiply-accumulates of convolutions
    and matrix products; BN, ReLU and pooling are not counted). Runs on the model's device, so a
    model built on "meta" costs no compute.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, in_channels, *input_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2e9


def describe_backbones(
    names: Iterable[str] | None = None, input_size: Sequence[int] = (16, 112, 112), in_channels: int = 3
) -> list[dict]:
    """One row per backbone: name, params, gmacs (forward, batch 1), feature_dim, layer4_shape.

    Models are built on the "meta" device, so this needs no memory for weights and little time.
    ``layer4_shape`` is (C, T, H, W) of the ``layer4`` map for ``input_size``.
    """
    rows = []
    for name in list_backbones() if names is None else names:
        with torch.device("meta"):
            model = create_backbone(name, in_channels=in_channels)
        gmacs = count_gmacs(model, input_size, in_channels)
        with torch.no_grad():
            layer4 = model.eval().forward_stages(torch.empty(1, in_channels, *input_size, device="meta"))["layer4"]
        rows.append(
            {
                "name": name,
                "params": count_params(model),
                "gmacs": round(gmacs, 2),
                "feature_dim": model.feature_dim,
                "layer4_shape": tuple(layer4.shape[1:]),
            }
        )
    return rows

