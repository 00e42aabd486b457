"""What transforms do to a data set's labels, and the guard that stops a recipe from breaking them.

Paper recipes flip clips horizontally at random. That is harmless when a flip keeps every label
(UCF101's actions, MotionShapes since version 2), and wrong when the data set has mirror-image classes: on
MotionShapes v1 a flipped MoveLeft clip *is* a MoveRight clip, so a supervised or fine-tuned
classifier is trained on wrong labels (capped at 75% on its 12 classes) and a contrastive method
pairs mirror motions as positives.

A MotionShapes data set states its symmetries in ``motionshapes.json`` (``"symmetries"``:
the class pairs a horizontal flip, a vertical flip and time reversal swap); version 1 folders,
written before that key existed, get the pairs of their class list. Other data sets state
nothing and are not checked (the papers treat their actions as flip-invariant).

:func:`check_flip` refuses a flip in a run that trains with labels on data whose labels a flip
changes, and warns (once per data set) in a self-supervised run, which has no labels to break
but learns that mirror motions are the same.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
CONFIG_FILE = "motionshapes.json"

# MotionShapes version 1 (no "symmetries" key in its motionshapes.json): its mirror pairs.
_V1_HFLIP = (("MoveLeft", "MoveRight"), ("RotateClockwise", "RotateCounterclockwise"), ("OrbitClockwise", "OrbitCounterclockwise"))
_V1_VFLIP = (("MoveUp", "MoveDown"), ("RotateClockwise", "RotateCounterclockwise"), ("OrbitClockwise", "OrbitCounterclockwise"))
_V1_TIME = (("MoveLeft", "MoveRight"), ("MoveUp", "MoveDown"), ("RotateClockwise", "RotateCounterclockwise"),
            ("Grow", "Shrink"), ("OrbitClockwise", "OrbitCounterclockwise"))
_warned: set[str] = set()


class SymmetryError(ValueError):
    """A recipe applies a transform that changes the labels of the data set it trains on."""


@dataclass(frozen=True)
class Symmetries:
    """The class pairs each transform swaps (classes not listed map to themselves)."""

    source: str  # the file the symmetries were read from
    hflip_pairs: tuple[tuple[str, str], ...]
    vflip_pairs: tuple[tuple[str, str], ...]
    time_reversal_pairs: tuple[tuple[str, str], ...]

    @property
    def hflip_keeps_labels(self) -> bool:
        return not self.hflip_pairs


def _pairs(values, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(values, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(c, str) for c in p) for p in values):
        raise ValueError(f"{where}: expected a list of [class, class] pairs, got {values!r}")
    return tuple((a, b) for a, b in values)


def read_symmetries(data_path: str | Path) -> Symmetries | None:
    """The symmetries a data set states (MotionShapes), or None when it states none."""
    file = Path(data_path) / CONFIG_FILE
    if not file.is_file():
        return None
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from err
    stated = info.get("symmetries")
    if stated is not None:
        return Symmetries(str(file), *(_pairs(stated.get(f"{k}_pairs", []), f"{file}: symmetries.{k}_pairs")
                                       for k in ("hflip", "vflip", "time_reversal")))
    present = set(info.get("class_names", []))

    def among(pairs):
        return tuple(p for p in pairs if set(p) <= present)

    return Symmetries(str(file), among(_V1_HFLIP), among(_V1_VFLIP), among(_V1_TIME))


def check_flip(data_path: str | Path, flip_p: float, *, uses_labels: bool, what: str) -> None:
    """Refuse (``uses_labels``) or warn about a random horizontal flip on data a flip relabels."""
    symmetries = read_symmetries(data_path)
    if symmetries is None or flip_p <= 0 or symmetries.hflip_keeps_labels:
        return
    pairs = ", ".join("/".join(p) for p in symmetries.hflip_pairs)
    message = (f"{data_path}: a horizontal flip turns classes into each other ({pairs}; see {symmetries.source}), "
               f"but {what} flips clips at random (flip_p = {flip_p:g})")
    if uses_labels:
        raise SymmetryError(message + ": its labels would be wrong for the flipped clips. Switch the flip off "
                            "(fine-tune protocol: eval.finetune.flip = false) or regenerate the data with "
                            "`vsbench data synth` (MotionShapes has had no mirror classes since version 2)")
    if str(data_path) not in _warned:
        _warned.add(str(data_path))
        log.warning("%s: mirrored motions become positives of each other; regenerate the data with `vsbench data synth` "
                    "(no mirror classes since MotionShapes version 2)", message)
