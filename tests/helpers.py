"""Small real data sets written by the tests: videos with known content, official split files;
suite files for CPU runs; test methods registered for one block."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.data.video import write_video


def level_frames(n: int, height: int = 32, width: int = 64) -> np.ndarray:
    """Frames whose grey level encodes the frame index (frame t has level 20 + 7 * (t % 30))."""
    levels = 20 + 7 * (np.arange(n) % 30)
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).astype(np.uint8).copy()


def frame_level(frame: np.ndarray) -> int:
    """The frame index a :func:`level_frames` frame encodes (mod 30)."""
    return int(round((float(frame.mean()) - 20) / 7))


def truncate(path: Path, fraction: float = 0.5) -> Path:
    """Cut a video file to ``fraction`` of its bytes: its header still claims every frame."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def write_ucf_like(root: Path, classes: dict[str, int], frames: int = 24) -> Path:
    """A UCF101-layout data set: ``classes`` maps class name -> number of groups (1 clip each).

    Group 1 of every class is the test split of split 1, the rest train. Lists use CRLF, as the
    official files do.
    """
    ann = root / "ucfTrainTestlist"
    ann.mkdir(parents=True)
    lines_ind, train, test = [], [], []
    for label, (name, groups) in enumerate(classes.items(), 1):
        lines_ind.append(f"{label} {name}")
        (root / "UCF-101" / name).mkdir(parents=True)
        for g in range(1, groups + 1):
            rel = f"{name}/v_{name}_g{g:02d}_c01.avi"
            write_video(root / "UCF-101" / rel, level_frames(frames + g))
            (test if g == 1 else train).append(rel if g == 1 else f"{rel} {label}")
    (ann / "classInd.txt").write_text("\r\n".join(lines_ind) + "\r\n")
    for k in (1, 2, 3):
        (ann / f"trainlist0{k}.txt").write_text("\r\n".join(train) + "\r\n")
        (ann / f"testlist0{k}.txt").write_text("\r\n".join(test) + "\r\n")
    return root


# ----------------------------------------------------------------------- test methods in the registry


@dataclass(frozen=True)
class TinyConfig:
    """The Config of a test method: only the fields every method Config must have, at test sizes."""

    frames: int = 4
    crop: int = 32


@contextlib.contextmanager
def registered_method(name: str, cls: type) -> Iterator[type]:
    """``cls`` registered as method ``name`` inside the block only: the registry is as before afterwards.

    A name that is registered already is refused (removing it afterwards would remove a method
    another test or the package registered)."""
    from methods import base

    base.list_methods()  # built-ins and entry points first: loading them later must not find the name taken
    if name in base._METHODS:
        raise ValueError(f"method name {name!r} is already registered by {base._METHODS[name].__module__}")
    base.register_method(name)(cls)
    try:
        yield cls
    finally:
        del base._METHODS[name]


# ----------------------------------------------------------------------- suite files


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_lines(table: dict, prefix: str = "") -> list[str]:
    """Plain keys first, then sub-tables ``[a.b]``, then arrays of tables ``[[a]]`` (their items inline)."""
    is_table_array = lambda v: isinstance(v, list) and v and all(isinstance(x, dict) for x in v)  # noqa: E731
    lines = [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict) and not is_table_array(v)]
    for key, value in table.items():
        if isinstance(value, dict):
            lines += ["", f"[{prefix}{key}]", *_toml_lines(value, f"{prefix}{key}.")]
    for key, value in table.items():
        if is_table_array(value):
            for item in value:
                lines += ["", f"[[{prefix}{key}]]", *(f"{k} = {_toml_value(v)}" for k, v in item.items())]
    return lines


def _merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_suite(data: Path | str, name: str, **changes) -> dict:
    """A suite for CPU tests: moco on r3d_tiny, seed 0, one 4-frame 32x32 step, kNN on 1 clip per video.

    ``changes`` are merged into it key by key (``pretrain={"batch_size": 8}`` changes that key only;
    a key given as None is dropped)."""
    suite = {
        "name": name, "seeds": [0], "backbones": ["r3d_tiny"], "methods": ["moco"],
        "data": {"path": str(data), "workers": 0},
        "pretrain": {"device": "cpu", "epochs": 1, "batch_size": 4, "steps_per_epoch": 1, "decode_size": [32, 43],
                     "output_dir": "runs", "method_args": {"frames": 4, "crop": 32}},
        "eval": {"protocols": ["knn"], "workers": 0, "features": {"clips": 1, "frames": 4, "resize": [32, 43], "crop": 32}},
    }
    return _merged(suite, changes)


def write_suite(path: Path, data: Path | str, name: str, **changes) -> Path:
    """:func:`tiny_suite` written as TOML to ``path``; returns ``path``."""
    path.write_text("\n".join(_toml_lines(tiny_suite(data, name, **changes))) + "\n")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a torch.distributed rendezvous or a server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------- precision under autocast

FP32_TOL = 1e-5  # relative: float32 products against a float64 reference


def rows_of_norm(*shape: int, seed: int, norm: float = 1.0) -> torch.Tensor:
    """Seeded float32 rows (last axis) of the given L2 norm."""
    return norm * F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def assert_fp32_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """``out`` is float32 and within FP32_TOL of the float64 ``ref`` (relative, and relative to its largest entry)."""
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=FP32_TOL, atol=FP32_TOL * ref.abs().max().item())


def bf16_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest error of the plain bf16 product ``a @ b.T`` against float64, relative to the largest entry."""
    ref = a.double() @ b.double().t()
    return ((a.bfloat16() @ b.bfloat16().t()).double() - ref).abs().max().item() / ref.abs().max().item()
