"""Other people's weights in vsbench's backbones: the papers' released checkpoints, torchvision's
video models and plain state dicts, each read by a named :class:`CheckpointFormat`.

A format says where the backbone's tensors sit in the file and what they are called there:

1. ``containers``: the top-level keys that may hold the state dict (``state_dict``, ``model``),
   tried in order; a file that is itself a flat dict of tensors is used as it is.
2. ``strip``: wrappers removed from the front of every key wherever present (``module.`` of
   ``DataParallel``).
3. ``drop``: keys evaluation does not use (classifier and projection heads, a MoCo key encoder
   and queue), matched whole; they are dropped and listed in the :class:`LoadReport`.
4. ``prefix``: what every remaining key starts with (``encoder_q.``, ``backbone.``), removed.
5. ``renames[backbone]``: (pattern, replacement) pairs; the first pattern that matches a key whole
   renames it (``re.fullmatch``, ``\\1`` groups); a key no pattern matches keeps its name.

Then every key must name a tensor of the backbone with the same shape, and every tensor of the
backbone must be given: otherwise :class:`CheckpointMismatch` names each unused key, each missing
key and each shape that differs. Files are read with ``torch.load(weights_only=True)``: a
checkpoint is data, never code. A format also carries the encoder's input convention (modality,
value range, normalisation) from the paper's configuration, so evaluation feeds the encoder what
it was trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from core.config import UnknownNameError
from core.data.encoder_input import EncoderTraining, InputConvention

__all__ = ["CheckpointFormat", "CheckpointMismatch", "LoadReport", "SAFE_GLOBALS", "check_against", "file_sha256", "get_format", "list_formats",
           "load_external", "map_state_dict", "parse_key_map", "register_format"]


@dataclass(frozen=True)
class CheckpointFormat:
    """How one family of checkpoint files stores a backbone (module docstring)."""

    name: str
    description: str
    source: str  # where the layout comes from: repository @ commit and file, or library and version
    renames: Mapping[str, tuple[tuple[str, str], ...]]  # vsbench backbone ("*": any) -> ordered (pattern, replacement)
    input: InputConvention | None = None  # what the encoder was trained on; None: unknown (the protocols must say)
    stride: int | None = None  # the temporal stride of its training clips; None: unknown
    containers: tuple[str, ...] = ("state_dict", "model")
    strip: tuple[str, ...] = ("module.",)
    prefix: str = ""
    drop: str = ""  # regex of keys not used by evaluation, matched after ``strip``
    allowed_globals: tuple[str, ...] = ()  # non-tensor types the official save writes beside the weights (SAFE_GLOBALS)

    @property
    def backbones(self) -> tuple[str, ...]:
        return tuple(self.renames)

    def training(self) -> EncoderTraining | None:
        """How encoders of this format were trained, as evaluation follows it; None when unknown."""
        if self.input is None or self.stride is None:
            return None
        return EncoderTraining(stride=self.stride, input=self.input)

    def rules(self, backbone: str) -> tuple[tuple[str, str], ...]:
        """The renames for ``backbone``; an error naming the backbones this format describes."""
        rules = self.renames.get(backbone, self.renames.get("*"))
        if rules is None:
            raise CheckpointMismatch(f"format {self.name!r} describes backbones {', '.join(self.backbones)}, not {backbone!r}")
        return rules


class CheckpointMismatch(ValueError):
    """A checkpoint's keys or shapes do not fit the backbone; the message names every key at fault."""


class UnknownFormatError(UnknownNameError):
    """An unregistered checkpoint format; lists the registered ones."""


@dataclass
class LoadReport:
    """What loading did: the file, its SHA-256, the format, the backbone, the keys dropped (unused
    by evaluation) and how many tensors were loaded."""

    path: str
    sha256: str
    format: str
    backbone: str
    dropped: list[str] = field(default_factory=list)
    loaded: int = 0

    @property
    def label(self) -> str:
        """The file's name and the first 12 hex digits of its hash: how a table names the checkpoint."""
        return f"{Path(self.path).name}@{self.sha256[:12]}"


#: The only non-tensor types a format may let ``torch.load(weights_only=True)`` rebuild: plain
#: containers of values, no code. (IIC's train_ssl.py saves its argparse options under ``opt``.)
SAFE_GLOBALS = {"argparse.Namespace": argparse.Namespace}

_FORMATS: dict[str, CheckpointFormat] = {}


def register_format(fmt: CheckpointFormat) -> CheckpointFormat:
    """Add a format to the registry (its name must be new, its allowed globals in :data:`SAFE_GLOBALS`)."""
    unsafe = sorted(set(fmt.allowed_globals) - set(SAFE_GLOBALS))
    if unsafe:
        raise ValueError(f"checkpoint format {fmt.name!r}: allowed_globals {unsafe} are not among {sorted(SAFE_GLOBALS)}")
    if fmt.name in _FORMATS:
        raise ValueError(f"checkpoint format {fmt.name!r} is already registered")
    _FORMATS[fmt.name] = fmt
    return fmt


def list_formats() -> list[str]:
    """The registered checkpoint formats, sorted."""
    return sorted(_FORMATS)


def get_format(name: str) -> CheckpointFormat:
    if name not in _FORMATS:
        raise UnknownFormatError(f"unknown checkpoint format {name!r}; registered formats: {', '.join(list_formats())}")
    return _FORMATS[name]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_key_map(rules: list[str] | None) -> tuple[tuple[str, str], ...]:
    """``--key-map PATTERN=REPLACEMENT`` options as (pattern, replacement) pairs, each pattern compiled
    to check it (an empty replacement drops the matching keys)."""
    pairs = []
    for rule in rules or ():
        pattern, sep, replacement = rule.partition("=")
        if not sep or not pattern:
            raise ValueError(f"--key-map {rule!r}: expected PATTERN=REPLACEMENT (a regular expression matched against whole "
                             "keys, and what it becomes; an empty replacement drops the keys)")
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"--key-map {rule!r}: {pattern!r} is not a regular expression ({err})") from None
        pairs.append((pattern, replacement))
    return tuple(pairs)


def _unwrap(obj, fmt: CheckpointFormat, path: str) -> dict[str, Tensor]:
    """The state dict inside a loaded file: the first container key present, else the object itself."""
    for key in fmt.containers:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        found = sorted(obj)[:12] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointMismatch(f"{path}: no state dict found for format {fmt.name!r} (looked under {list(fmt.containers)} and "
                                 f"at the top level; the file holds {found})")
    return dict(obj)


def map_state_dict(state: Mapping[str, Tensor], fmt: CheckpointFormat, backbone: str,
                   extra: tuple[tuple[str, str], ...] = ()) -> tuple[dict[str, Tensor], list[str], dict[str, str]]:
    """Rename a checkpoint's keys to the backbone's (module docstring, steps 2-5; ``extra`` rules go
    first, an empty replacement drops); returns (renamed tensors, dropped keys, {new key: key in the file})."""
    rules = [(re.compile(p), r) for p, r in (*extra, *fmt.rules(backbone))]
    drop = re.compile(fmt.drop) if fmt.drop else None
    renamed, dropped, sources = {}, [], {}
    for original, tensor in state.items():
        key = original
        for wrapper in fmt.strip:
            key = key.removeprefix(wrapper)
        if drop is not None and drop.fullmatch(key):
            dropped.append(original)
            continue
        key = key.removeprefix(fmt.prefix) if fmt.prefix and key.startswith(fmt.prefix) else key
        key = next((m.expand(r) for p, r in rules if (m := p.fullmatch(key))), key)
        if not key:
            dropped.append(original)
            continue
        if key in renamed:
            raise CheckpointMismatch(f"keys {sources[key]!r} and {original!r} both map to {key!r}")
        renamed[key], sources[key] = tensor, original
    return renamed, dropped, sources


def check_against(model: torch.nn.Module, renamed: Mapping[str, Tensor], where: str, sources: Mapping[str, str] | None = None) -> None:
    """Every key used, none missing, every shape equal; else one error naming each key at fault (a
    renamed key also by its name in the file, from ``sources``)."""
    expected = model.state_dict()
    named = lambda k: k if not sources or sources.get(k, k) == k else f"{k} (in the file: {sources[k]})"
    unused = sorted(named(k) for k in set(renamed) - set(expected))
    missing = sorted(set(expected) - set(renamed))
    shapes = [f"{named(k)}: checkpoint {tuple(renamed[k].shape)}, backbone {tuple(expected[k].shape)}"
              for k in sorted(set(renamed) & set(expected)) if renamed[k].shape != expected[k].shape]
    problems = ([f"unused keys (not in the backbone): {', '.join(unused)}"] if unused else []) + (
        [f"missing keys (the backbone needs them): {', '.join(missing)}"] if missing else []) + (
        [f"shape mismatches: {'; '.join(shapes)}"] if shapes else [])
    if problems:
        raise CheckpointMismatch(f"{where}: " + " | ".join(problems))


def load_external(path: str | Path, format: str, backbone: str, *, key_map: tuple[tuple[str, str], ...] = (),
                    create: Callable[[str], torch.nn.Module] | None = None) -> tuple[torch.nn.Module, LoadReport]:
    """The backbone ``backbone`` with the weights of the checkpoint file ``path`` in ``format``, and
    what loading did. ``key_map``: the user's extra renames (:func:`parse_key_map`), tried first."""
    from backbones.base import create_backbone

    fmt, path = get_format(format), Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals([SAFE_GLOBALS[name] for name in fmt.allowed_globals]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointMismatch(f"{path}: cannot be read as weights only ({type(err).__name__}: {err})") from None
    renamed, dropped, sources = map_state_dict(_unwrap(obj, fmt, str(path)), fmt, backbone, key_map)
    model = (create or create_backbone)(backbone)
    check_against(model, renamed, f"{path} as {fmt.name!r} on {backbone}", sources)
    model.load_state_dict(renamed, strict=True)
    return model, LoadReport(str(path), file_sha256(path), fmt.name, backbone, dropped, len(renamed))
