"""MotionShapes (generator version 3): a generated video data set where the class is the motion.

MotionShapes stands in for UCF101 when testing what self-supervised video methods claim to
learn. Every video shows a random textured background (optionally drifting slowly in a random
direction) and one or more objects of random shape, colour and size. The *class* is the
motion pattern of the objects; nothing else predicts it, in the train split or the test split:

- **Appearance is drawn per group and shared by every class of that group.** Background family,
  texture, object count, shapes, colours and sizes come from ``(seed, group)`` only, so within
  any split each look appears once under every class and says nothing about the class. (Version
  1 drew the look per (class, group): inside the training split every look named its class, and a
  supervised network memorised looks instead of motion.)
- **Every class survives a horizontal flip.** Paper recipes flip clips at random; version 1 had
  left/right, clockwise/counter-clockwise pairs that a flip turns into each other. Since version
  2 there are direction-free classes for those (``MoveHorizontal``, ``Rotate``, ``Orbit``: the direction
  is drawn per object), so a flipped clip keeps its label. ``MoveUp``/``MoveDown`` and
  ``Grow``/``Shrink`` are time reversals of each other (a vertical flip also swaps the first pair):
  the methods that claim temporal-order sensitivity can show it on them.
- **Every motion is visible at 32 px** (version 3). ``Grow``/``Shrink`` sweep the size once over
  the whole video, from the smallest to the largest scale or back (version 2's sawtooth jumped
  back every few frames at the ``bench`` rates, and a network saw the jumps rather than the
  direction), and each object carries a half-disc mark in a second colour that makes a rotation
  move half its pixels (version 2's mark was a 2 px dot at 32 px).
- ``motionshapes.json`` states these symmetries (:func:`symmetries`) and the generator version;
  the harness reads them (:mod:`core.data.symmetry`) and refuses a labelled recipe that
  flips a data set whose labels a flip changes.

The layout on disk is exactly UCF101's (``UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` plus
``ucfTrainTestlist/``), with group-based splits: all clips of one group share the background
texture and object appearance (like UCF101's same actor and scene) and differ in start
positions, speeds, phases and directions, and a split never puts one group on both sides.

Scene-bias mode (``scene_bias = p``) ties the background family to the class
(``family = class_index % F``) with probability ``p`` per (class, group) in the train groups of
split 1, while test groups keep their group's family. ``motionshapes_meta.csv`` marks every
video ``bias_aligned`` when its family equals its class's tied family, so a probe can measure the
accuracy gap between bias-aligned and bias-conflicting test videos: the size of a method's
static (scene) bias.

Determinism: the appearance of group g comes from ``np.random.default_rng([seed, VERSION, g])``
(scene bias from ``[seed, VERSION, g, c]``) and the motion of clip k of class c from
``np.random.default_rng([seed, VERSION, c, g, k])`` (g and k 1-based as in the file names), so the
frames are bit-for-bit reproducible from the seed whatever the worker count or order.

Conventions: image coordinates, x to the right and y *down*; angles in degrees measured from
the +x axis towards +y, so an increasing angle turns *clockwise on screen*.
"""

from __future__ import annotations

import colorsys
import csv
import dataclasses
import io
import json
import math
import multiprocessing
import os
import pathlib
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm.auto import tqdm

import core
from core.data.video import write_video as encode_video
from core.io import pid_alive as _pid_alive
from core.io import write_text_atomic

GENERATOR_VERSION = 3  # part of motionshapes.json and of the data's fingerprint: versions never mix
CLASS_NAMES: tuple[str, ...] = (
    "MoveHorizontal",  # left or right (drawn per object): a flip keeps the label
    "MoveUp",
    "MoveDown",
    "Rotate",  # either way (drawn per object)
    "Grow",
    "Shrink",
    "Orbit",  # either way (drawn per object)
    "OscillateHorizontal",
    "OscillateVertical",
    "Pulse",  # the size swells and shrinks periodically
    "Shake",  # the position jitters at random around a fixed point
    "Still",  # nothing moves
)
# What a class's motion is made of: the kind selects the sampler and the pose function.
CLASS_KINDS: dict[str, str] = {
    "MoveHorizontal": "Move", "MoveUp": "Move", "MoveDown": "Move", "Rotate": "Rotate", "Grow": "Grow",
    "Shrink": "Shrink", "Orbit": "Orbit", "OscillateHorizontal": "Oscillate", "OscillateVertical": "Oscillate",
    "Pulse": "Pulse", "Shake": "Shake", "Still": "Still",
}
# Class pairs that a transform turns into each other (every other class is mapped to itself).
HFLIP_PAIRS: tuple[tuple[str, str], ...] = ()
VFLIP_PAIRS: tuple[tuple[str, str], ...] = (("MoveUp", "MoveDown"),)
TIME_REVERSAL_PAIRS: tuple[tuple[str, str], ...] = (("MoveUp", "MoveDown"), ("Grow", "Shrink"))
BACKGROUND_FAMILIES: tuple[str, ...] = ("stripes", "checkerboard", "blobs", "gradient", "dots", "noise")
SHAPES: tuple[str, ...] = ("circle", "ellipse", "square", "triangle", "pentagon", "hexagon", "star", "cross")
MIN_WINDOW_FRAMES = 32  # later methods sample 32-frame windows: no video is shorter (if frames >= 32)
VIDEO_DIR = "UCF-101"
SPLIT_DIR = "ucfTrainTestlist"
CONFIG_FILE = "motionshapes.json"
META_FILE = "motionshapes_meta.csv"
NUM_SPLITS = 3

# What the per-object ``rate`` of each class means (recorded in the metadata CSV).
MOTION_UNITS = {
    "Move": "px/frame",
    "Rotate": "deg/frame",
    "Grow": "ln(scale)/frame",
    "Shrink": "ln(scale)/frame",
    "Orbit": "deg/frame",
    "Oscillate": "deg/frame",
    "Pulse": "deg/frame",
    "Shake": "px",
    "Still": "-",
}


@dataclass(frozen=True)
class MotionShapesConfig:
    """Everything that determines a MotionShapes data set (with the seed, the bytes too).

    Sizes and amplitudes are fractions of ``min(height, width)`` unless noted, so a preset
    looks the same at any resolution. Ranges are ``(low, high)`` and drawn uniformly. The
    defaults are the ``small`` preset. Invalid values raise ValueError naming the field.
    """

    classes: int = 12  # how many of CLASS_NAMES to use, in order
    groups: int = 8
    clips_per_group: int = 2
    frames: int = 48  # nominal frames per video (see frame_jitter)
    height: int = 96
    width: int = 128
    fps: int = 25
    seed: int = 0
    max_objects: int = 2  # each (class, group) shows 1..max_objects objects
    background_drift: bool = False  # background translates slowly in a random per-clip direction
    scene_bias: float = 0.0  # P(family == class % F) in split-1 train groups
    frame_jitter: float = 0.25  # frame count uniform in frames * (1 +- jitter), never < min(frames, 32)
    flat_background: bool = False  # plain background of the group's base colour (for tests/debugging)
    object_radius: tuple[float, float] = (0.09, 0.14)  # base radius (group appearance)
    object_scale: tuple[float, float] = (0.6, 1.6)  # per-clip scale of the base radius; Grow/Shrink sweep it
    move_speed: tuple[float, float] = (0.012, 0.025)  # fraction of the travel-axis extent per frame
    rotate_speed: tuple[float, float] = (4.0, 10.0)  # degrees per frame
    orbit_radius: tuple[float, float] = (0.15, 0.28)
    orbit_speed: tuple[float, float] = (5.0, 12.0)  # degrees per frame
    oscillate_amplitude: tuple[float, float] = (0.15, 0.28)
    oscillate_period: tuple[float, float] = (12.0, 24.0)  # frames per cycle
    pulse_amplitude: tuple[float, float] = (0.25, 0.4)  # ln(scale) amplitude of Pulse's size swing
    pulse_period: tuple[float, float] = (12.0, 24.0)  # frames per cycle
    shake_amplitude: tuple[float, float] = (0.02, 0.04)  # largest per-axis jitter of Shake
    drift_speed: tuple[float, float] = (0.002, 0.005)  # background drift, fraction per frame
    bit_rate: int | None = None  # MPEG-4 bit rate in bit/s; None: scaled to the frame size (_bit_rate)

    def __post_init__(self) -> None:
        _check_int("classes", self.classes, 2, len(CLASS_NAMES))
        _check_int("groups", self.groups, 2, 10_000)
        _check_int("clips_per_group", self.clips_per_group, 1, 10_000)
        _check_int("frames", self.frames, 8, 100_000)
        _check_int("height", self.height, 32, 4096)
        _check_int("width", self.width, 32, 4096)
        _check_int("fps", self.fps, 1, 240)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("max_objects", self.max_objects, 1, 8)
        _check_float("scene_bias", self.scene_bias, 0.0, 1.0)
        _check_float("frame_jitter", self.frame_jitter, 0.0, 0.9)
        for name in ("background_drift", "flat_background"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"MotionShapesConfig.{name} must be True or False, got {getattr(self, name)!r}")
        for name, hi in _RANGE_LIMITS.items():
            _check_range(name, getattr(self, name), hi)
        if self.bit_rate is not None:
            _check_int("bit_rate", self.bit_rate, 10_000, 10**9)

    @classmethod
    def from_dict(cls, values: dict) -> MotionShapesConfig:
        """The config from ``dataclasses.asdict`` output (e.g. motionshapes.json's "config")."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"MotionShapesConfig: unknown field(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


_RANGE_LIMITS = {  # field -> largest allowed value (all must be > 0)
    "object_radius": 0.5,
    "object_scale": 10.0,
    "move_speed": 1.0,
    "rotate_speed": 90.0,
    "orbit_radius": 0.5,
    "orbit_speed": 90.0,
    "oscillate_amplitude": 0.5,
    "oscillate_period": 1000.0,
    "pulse_amplitude": 2.0,
    "pulse_period": 1000.0,
    "shake_amplitude": 0.5,
    "drift_speed": 0.1,
}


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"MotionShapesConfig.{name} must be an integer in [{lo}, {hi}], got {value!r}")


def _check_float(name: str, value: object, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValueError(f"MotionShapesConfig.{name} must be a number in [{lo}, {hi}], got {value!r}")


def _check_range(name: str, value: object, hi: float) -> None:
    ok = isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
    if not ok or not 0 < value[0] <= value[1] <= hi:
        raise ValueError(f"MotionShapesConfig.{name} must be a tuple (low, high) with 0 < low <= high <= {hi}, got {value!r}")


# ``bench``: the CPU benchmark (``make bench``). 32x32 frames seen whole at 32 px, one object of 7-10 px
# radius moving 2-3 px per frame (so motion survives the small size); 56 groups (16 held out per
# split) of 2 clips give 960 training and 384 test videos with 40 different training looks.
BENCH = MotionShapesConfig(groups=56, clips_per_group=2, frames=32, height=32, width=32, max_objects=1, object_radius=(0.22, 0.3),
                           move_speed=(0.07, 0.09), rotate_speed=(12.0, 20.0), orbit_speed=(18.0, 28.0),
                           oscillate_period=(10.0, 16.0), object_scale=(0.45, 1.6), pulse_amplitude=(0.45, 0.6),
                           pulse_period=(14.0, 20.0), shake_amplitude=(0.12, 0.16))
PRESETS: dict[str, MotionShapesConfig] = {
    "tiny": MotionShapesConfig(groups=4, clips_per_group=1, frames=32, height=64, width=86),
    "small": MotionShapesConfig(groups=8, clips_per_group=2, frames=48, height=96, width=128),
    "bench": BENCH,
    "standard": MotionShapesConfig(groups=25, clips_per_group=8, frames=64, height=128, width=171),
}


# --------------------------------------------------------------------------------------------
# Random draws: appearance (per class and group) and motion (per clip)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectLook:
    """The appearance of one object: shared by all clips of a (class, group)."""

    shape: str
    radius: float  # base radius in pixels (times the clip's scale)
    color: tuple[int, int, int]  # RGB
    mark_color: tuple[int, int, int]  # off-centre disc: makes rotations of round shapes visible


@dataclass(frozen=True)
class Appearance:
    """Background and objects of a group (shared by its classes); the class moves only the
    background family, and only in scene-bias mode."""

    family: int  # index into BACKGROUND_FAMILIES
    bias_aligned: bool  # family == class_index % len(BACKGROUND_FAMILIES)
    colors: tuple[tuple[int, int, int], tuple[int, int, int]]  # texture goes from colors[0] to colors[1]
    texture_seed: int
    objects: tuple[ObjectLook, ...]

    @property
    def family_name(self) -> str:
        return BACKGROUND_FAMILIES[self.family]


@dataclass(frozen=True)
class ObjectMotion:
    """How one object moves in one clip; ``rate``'s unit depends on the class (MOTION_UNITS)."""

    rate: float
    center: tuple[float, float]  # start / rotation / orbit / oscillation / shake centre (x, y) in px
    amplitude: float  # orbit radius, oscillation or shake amplitude in px; ln-scale swing for Pulse; else 0
    phase: float  # orbit angle or oscillation / pulse phase (deg); ln-scale offset for Grow/Shrink
    angle: float  # initial orientation (deg)
    log_scale: float  # ln of the static scale (classes other than Grow/Shrink)
    direction: int = 1  # +1 or -1: MoveHorizontal right/left, Rotate/Orbit clockwise/counter-clockwise
    jitter_seed: int = 0  # Shake's per-frame offsets come from default_rng([jitter_seed, t])


@dataclass(frozen=True)
class ClipMotion:
    """The per-clip draws: length, background drift and object motions."""

    frames: int
    drift: tuple[float, float]  # background velocity (px/frame); (0, 0) without background_drift
    objects: tuple[ObjectMotion, ...]


def class_family(class_index: int) -> int:
    """The background family tied to a class in scene-bias mode."""
    return class_index % len(BACKGROUND_FAMILIES)


def split_test_groups(groups: int, split: int) -> tuple[int, ...]:
    """The 1-based test groups of split 1..3: a contiguous block like UCF101's 7 of 25.

    The block has max(1, round(groups * 7 / 25)) groups (at most groups - 1, so every split
    keeps a train group) and starts at group (split - 1) * block + 1, wrapping around.
    """
    if not 1 <= split <= NUM_SPLITS:
        raise ValueError(f"split must be in [1, {NUM_SPLITS}], got {split!r}")
    if groups < 2:
        raise ValueError(f"groups must be >= 2 (one train and one test group), got {groups!r}")
    block = min(max(1, round(groups * 7 / 25)), groups - 1)
    start = (split - 1) * block
    return tuple(sorted((start + i) % groups + 1 for i in range(block)))


def _check_video_index(config: MotionShapesConfig, class_index: int, group: int, clip: int | None = None) -> None:
    if not 0 <= class_index < config.classes:
        raise ValueError(f"class_index must be in [0, {config.classes - 1}], got {class_index!r}")
    if not 1 <= group <= config.groups:
        raise ValueError(f"group must be in [1, {config.groups}] (1-based), got {group!r}")
    if clip is not None and not 1 <= clip <= config.clips_per_group:
        raise ValueError(f"clip must be in [1, {config.clips_per_group}] (1-based), got {clip!r}")


def sample_appearance(config: MotionShapesConfig, class_index: int, group: int) -> Appearance:
    """The background and object appearance of (class, group): the group's look, the same for
    every class; the class changes only the background family, and only in scene-bias mode."""
    _check_video_index(config, class_index, group)
    rng = np.random.default_rng([config.seed, GENERATOR_VERSION, group])
    family = int(rng.integers(len(BACKGROUND_FAMILIES)))
    texture_seed, color_seed, object_seed = (int(s) for s in rng.integers(0, 2**62, size=3))
    u_bias = np.random.default_rng([config.seed, GENERATOR_VERSION, group, class_index]).random()
    if u_bias < config.scene_bias and group not in split_test_groups(config.groups, 1):
        family = class_family(class_index)
    colors = _background_colors(np.random.default_rng(color_seed))
    objects = _object_looks(np.random.default_rng(object_seed), config, colors)
    return Appearance(family, family == class_family(class_index), colors, texture_seed, objects)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0


def _rgb(c: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(round(x)) for x in np.clip(c, 0, 255))
    return (r, g, b)


def _background_colors(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two muted colours with a visible but moderate contrast, so objects stand out."""
    base = _hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.3, 0.75))
    direction = rng.normal(size=3)
    other = base + direction / np.linalg.norm(direction) * rng.uniform(45.0, 90.0)
    return _rgb(base), _rgb(other)


def _object_looks(rng: np.random.Generator, config: MotionShapesConfig, bg: tuple) -> tuple[ObjectLook, ...]:
    n = int(rng.integers(1, config.max_objects + 1))
    unit = min(config.height, config.width)
    looks = []
    for _ in range(n):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        radius = rng.uniform(*config.object_radius) * unit
        color = _contrasting_color(rng, bg, saturation=(0.6, 1.0), value=(0.7, 1.0), min_dist=90.0)
        mark = _contrasting_color(rng, (_rgb(color), *bg), saturation=(0.0, 1.0), value=(0.1, 1.0), min_dist=80.0)
        looks.append(ObjectLook(shape, float(radius), _rgb(color), _rgb(mark)))
    return tuple(looks)


def _contrasting_color(rng: np.random.Generator, avoid: tuple, *, saturation: tuple, value: tuple, min_dist: float) -> np.ndarray:
    """A colour at least ``min_dist`` (RGB distance) from every colour in ``avoid`` (best of 32 tries)."""
    best, best_dist = None, -1.0
    for _ in range(32):
        c = _hsv(rng.random(), rng.uniform(*saturation), rng.uniform(*value))
        dist = min(float(np.linalg.norm(c - np.array(a, float))) for a in avoid)
        if dist > best_dist:
            best, best_dist = c, dist
        if dist >= min_dist:
            break
    return best


def _frame_count(rng: np.random.Generator, config: MotionShapesConfig) -> int:
    t = int(round(config.frames * (1.0 + rng.uniform(-config.frame_jitter, config.frame_jitter))))
    return max(t, min(config.frames, MIN_WINDOW_FRAMES))


def max_frames(config: MotionShapesConfig) -> int:
    """The longest video the config can produce."""
    return max(int(math.floor(config.frames * (1.0 + config.frame_jitter) + 0.5)), min(config.frames, MIN_WINDOW_FRAMES))


def sample_motion(config: MotionShapesConfig, class_index: int, group: int, clip: int) -> ClipMotion:
    """The motion draws of one clip: frame count, background drift and one motion per object."""
    _check_video_index(config, class_index, group, clip)
    look = sample_appearance(config, class_index, group)
    rng = np.random.default_rng([config.seed, GENERATOR_VERSION, class_index, group, clip])
    frames = _frame_count(rng, config)
    drift_angle, drift_speed = rng.uniform(0, 2 * math.pi), rng.uniform(*config.drift_speed)
    speed = drift_speed * min(config.height, config.width) if config.background_drift else 0.0
    drift = (speed * math.cos(drift_angle), speed * math.sin(drift_angle))
    sampler = _MOTION_SAMPLERS[_kind(CLASS_NAMES[class_index])]
    objects = tuple(sampler(rng, config, CLASS_NAMES[class_index], o.radius, frames) for o in look.objects)
    return ClipMotion(frames, drift, objects)


def _kind(class_name: str) -> str:
    return CLASS_KINDS[class_name]


def _direction(rng: np.random.Generator) -> int:
    return 1 if rng.random() < 0.5 else -1


def _fit(rng: np.random.Generator, margin: float, extent: float) -> float:
    """A uniform coordinate that keeps ``margin`` px from both borders (the middle if impossible).

    Object centres keep no margin for their own radius: every class shows objects cut by the
    frame's border as often as the wrapping Move classes do, so a cut object is no class cue."""
    if 2 * margin >= extent:
        return extent / 2.0
    return float(rng.uniform(margin, extent - margin))


def _common(rng: np.random.Generator, config: MotionShapesConfig) -> tuple[float, float]:
    """Initial orientation and static ln-scale: the same distribution for every class."""
    lo, hi = np.log(config.object_scale)
    return float(rng.uniform(0.0, 360.0)), float(rng.uniform(lo, hi))


def _sample_move(rng: np.random.Generator, config: MotionShapesConfig, name: str, radius: float, frames: int) -> ObjectMotion:
    angle, log_scale = _common(rng, config)
    r = radius * math.exp(log_scale)
    direction = _direction(rng) if name == "MoveHorizontal" else (1 if name == "MoveDown" else -1)
    horizontal = name == "MoveHorizontal"
    extent, across = (config.width, config.height) if horizontal else (config.height, config.width)
    speed = rng.uniform(*config.move_speed) * extent
    travel = speed * (frames - 1)
    if travel <= extent - 2 * r:  # the whole path fits: no wrap-around needed
        start = rng.uniform(r, extent - r - travel)
        start = start if direction > 0 else extent - start
    else:  # wrap around: leave on one side, come back on the other
        start = rng.uniform(-r, extent + r)
    other = _fit(rng, 0.0, across)
    center = (start, other) if horizontal else (other, start)
    return ObjectMotion(float(speed), (float(center[0]), float(center[1])), 0.0, 0.0, angle, log_scale, direction)


def _sample_rotate(rng: np.random.Generator, config: MotionShapesConfig, name: str, radius: float, frames: int) -> ObjectMotion:
    angle, log_scale = _common(rng, config)
    center = (_fit(rng, 0.0, config.width), _fit(rng, 0.0, config.height))
    return ObjectMotion(float(rng.uniform(*config.rotate_speed)), center, 0.0, 0.0, angle, log_scale, _direction(rng))


def _sample_grow(rng: np.random.Generator, config: MotionShapesConfig, name: str, radius: float, frames: int) -> ObjectMotion:
    """One monotone sweep of the size over the whole video, from the smallest to the largest scale of
    ``object_scale`` (Grow) or back (Shrink): the two are exact time reversals, with no jump."""
    angle, _ = _common(rng, config)
    lo, hi = np.log(config.object_scale)
    center = (_fit(rng, 0.0, config.width), _fit(rng, 0.0, config.height))
    return ObjectMotion(float(hi - lo) / max(frames - 1, 1), center, 0.0, 0.0, angle, float(lo if name == "Grow" else hi))


def _sample_orbit(rng: np.random.Generator, config: MotionShapesConfig, name: str, radius: float, frames: int) -> ObjectMotion:
    angle, log_scale = _common(rng, config)
    amp = rng.uniform(*config.orbit_radius) * min(config.height, config.width)
    center = (_fit(rng, amp, config.width), _fit(rng, amp, config.height))
    phase, speed = rng.uniform(0.0, 360.0), rng.uniform(*config.orbit_speed)
    return ObjectMotion(float(speed), center, float(amp), float(phase), angle, log_scale, _direction(rng))


def _sample_oscillate(rng: np.random.Generator, config: MotionShapesConfig, name: str, radius: float, frames: int) -> ObjectMotion:
    angle, log_scale = _common(rng, config)
    amp = rng.uniform(*config.oscillate_amplitude) * min(config.height, config.width)
    horizontal = name == "OscillateHorizontal"
    x = _fit(rng, amp if horizontal else 0.0, config.width)
    y = _fit(rng, 0.0 if horizontal else amp, config.height)
    phase, period = rng.uniform(0.0, 360.0), rng.uniform(*config.oscillate_period)
    return ObjectMotion(360.0 / float(period), (x, y), float(amp), float(phase), angle, log_scale)


def _sample_pulse(rng: np.random.Generator, config: MotionShapesConfig, name: str, radius: float, frames: int) -> ObjectMotion:
    """A size swing ``log_scale + amplitude * sin(phase + rate * t)`` kept inside object_scale."""
    angle, _ = _common(rng, config)
    lo, hi = np.log(config.object_scale)
    amp = min(float(rng.uniform(*config.pulse_amplitude)), (hi - lo) / 2)
    log_scale = float(rng.uniform(lo + amp, hi - amp))
    center = (_fit(rng, 0.0, config.width), _fit(rng, 0.0, config.height))
    phase, period = rng.uniform(0.0, 360.0), rng.uniform(*config.pulse_period)
    return ObjectMotion(360.0 / float(period), center, amp, float(phase), angle, log_scale)


def _sample_shake(rng: np.random.Generator, config: MotionShapesConfig, name: str, radius: float, frames: int) -> ObjectMotion:
    angle, log_scale = _common(rng, config)
    amp = rng.uniform(*config.shake_amplitude) * min(config.height, config.width)
    center = (_fit(rng, amp, config.width), _fit(rng, amp, config.height))
    return ObjectMotion(float(amp), center, float(amp), 0.0, angle, log_scale, jitter_seed=int(rng.integers(0, 2**62)))


def _sample_still(rng: np.random.Generator, config: MotionShapesConfig, name: str, radius: float, frames: int) -> ObjectMotion:
    angle, log_scale = _common(rng, config)
    center = (_fit(rng, 0.0, config.width), _fit(rng, 0.0, config.height))
    return ObjectMotion(0.0, center, 0.0, 0.0, angle, log_scale)


_MOTION_SAMPLERS = {
    "Move": _sample_move,
    "Rotate": _sample_rotate,
    "Grow": _sample_grow,
    "Shrink": _sample_grow,
    "Orbit": _sample_orbit,
    "Oscillate": _sample_oscillate,
    "Pulse": _sample_pulse,
    "Shake": _sample_shake,
    "Still": _sample_still,
}


# --------------------------------------------------------------------------------------------
# Poses: where each object is, how it is turned and how big it is at frame t
# --------------------------------------------------------------------------------------------


def object_pose(config: MotionShapesConfig, class_name: str, motion: ObjectMotion, radius: float, t: int) -> tuple[float, float, float, float]:
    """(x, y, angle in degrees, scale) of an object at frame t; see the module's conventions."""
    x, y = motion.center
    angle, scale = motion.angle, math.exp(motion.log_scale)
    kind = _kind(class_name)
    if kind == "Move":
        x, y = _move(config, class_name, motion, radius * scale, t)
    elif kind == "Rotate":
        angle += motion.rate * t * motion.direction
    elif kind in ("Grow", "Shrink"):
        scale = math.exp(motion.log_scale + motion.rate * (t if kind == "Grow" else -t))
    elif kind == "Orbit":
        phi = math.radians(motion.phase + motion.rate * t * motion.direction)
        x, y = x + motion.amplitude * math.cos(phi), y + motion.amplitude * math.sin(phi)
    elif kind == "Oscillate":
        offset = motion.amplitude * math.sin(math.radians(motion.phase + motion.rate * t))
        x, y = (x + offset, y) if class_name == "OscillateHorizontal" else (x, y + offset)
    elif kind == "Pulse":
        scale = math.exp(motion.log_scale + motion.amplitude * math.sin(math.radians(motion.phase + motion.rate * t)))
    elif kind == "Shake":
        dx, dy = np.random.default_rng([motion.jitter_seed, t]).uniform(-motion.amplitude, motion.amplitude, 2)
        x, y = x + float(dx), y + float(dy)
    return x, y, angle, scale


def _move(config: MotionShapesConfig, name: str, motion: ObjectMotion, r: float, t: int) -> tuple[float, float]:
    horizontal = name == "MoveHorizontal"
    extent = config.width if horizontal else config.height
    start = motion.center[0] if horizontal else motion.center[1]
    pos = (start + motion.direction * motion.rate * t + r) % (extent + 2 * r) - r  # wraps in [-r, extent + r)
    return (pos, motion.center[1]) if horizontal else (motion.center[0], pos)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _regular(n: int, inner: float | None = None) -> np.ndarray:
    """A polygon with a vertex on +x and max radius 1 (a star when ``inner`` is given)."""
    if inner is None:
        a = np.arange(n) * 2 * np.pi / n
        return np.stack([np.cos(a), np.sin(a)], 1)
    a = np.arange(2 * n) * np.pi / n
    r = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _cross(w: float = 0.33) -> np.ndarray:
    quarter = [(1, w), (w, w), (w, 1)]
    pts = []
    for k in range(4):  # rotate the quarter outline by k * 90 degrees
        c, s = round(math.cos(k * math.pi / 2)), round(math.sin(k * math.pi / 2))
        pts += [(c * x - s * y, s * x + c * y) for x, y in quarter]
    pts = np.array(pts, float)
    return pts / np.linalg.norm(pts, axis=1).max()


_SHAPE_POLYGONS = {
    "circle": _regular(48),
    "ellipse": _regular(48) * np.array([1.0, 0.6]),
    "square": _regular(4),
    "triangle": _regular(3),
    "pentagon": _regular(5),
    "hexagon": _regular(6),
    "star": _regular(5, inner=0.45),
    "cross": _cross(),
}
# The mark, a half disc on the +x side in a second colour: it turns with the object, so a rotation
# moves half the object's pixels even at 32 px (version 2's small off-centre disc was a 2 px dot there).
_MARK_POLYGON = np.concatenate([[[0.0, 0.0]], _regular(48)[np.r_[36:48, 0:13]] * 0.6])


def _draw_object(frame: np.ndarray, look: ObjectLook, x: float, y: float, angle: float, scale: float) -> None:
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * (look.radius * scale)
    for poly, color in ((_SHAPE_POLYGONS[look.shape], look.color), (_MARK_POLYGON, look.mark_color)):
        pts = (poly @ rot.T + np.array([x, y])) * 16.0  # 4 fractional bits for sub-pixel accuracy
        cv2.fillPoly(frame, [np.round(pts).astype(np.int32)], color, cv2.LINE_AA, 4)


def _texture_unit(config: MotionShapesConfig) -> float:
    return max(min(config.height, config.width) / 128.0, 0.5)


def render_background(config: MotionShapesConfig, look: Appearance) -> np.ndarray:
    """The uint8 RGB background of a (class, group), padded on every side when it drifts."""
    pad = _drift_pad(config)
    h, w = config.height + 2 * pad, config.width + 2 * pad
    c0, c1 = (np.array(c, np.float32) for c in look.colors)
    if config.flat_background:
        return np.broadcast_to(np.round(c0).astype(np.uint8), (h, w, 3)).copy()
    rng = np.random.default_rng(look.texture_seed)
    field = _TEXTURES[BACKGROUND_FAMILIES[look.family]](rng, h, w, _texture_unit(config))
    img = c0 + np.clip(field, 0.0, 1.0)[..., None] * (c1 - c0)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _drift_pad(config: MotionShapesConfig) -> int:
    if not config.background_drift:
        return 0
    return int(math.ceil(config.drift_speed[1] * min(config.height, config.width) * max_frames(config))) + 2


def _grid(h: int, w: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by ``angle`` (radians): (along, across)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    c, s = math.cos(angle), math.sin(angle)
    return x * c + y * s, -x * s + y * c


def _stripes(rng: np.random.Generator, h: int, w: int, unit: float) -> np.ndarray:
    u, _ = _grid(h, w, rng.uniform(0, np.pi))
    period, phase, sharp = rng.uniform(8, 28) * unit, rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 4.0)
    wave = np.sin(2 * np.pi * u / period + phase)
    return 0.5 + 0.5 * np.clip(wave * sharp, -1, 1)


def _checkerboard(rng: np.random.Generator, h: int, w: int, unit: float) -> np.ndarray:
    u, v = _grid(h, w, rng.uniform(0, np.pi / 2))
    cell = rng.uniform(7, 22) * unit
    board = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    return cv2.GaussianBlur(board, (0, 0), 0.7)


def _blobs(rng: np.random.Generator, h: int, w: int, unit: float) -> np.ndarray:
    step = rng.uniform(10, 30) * unit
    small = rng.random((int(h / step) + 2, int(w / step) + 2)).astype(np.float32)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return (big - big.min()) / max(float(big.max() - big.min()), 1e-6)


def _gradient(rng: np.random.Generator, h: int, w: int, unit: float) -> np.ndarray:
    u, _ = _grid(h, w, rng.uniform(0, 2 * np.pi))
    ramp = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    noise = cv2.GaussianBlur(rng.normal(0, 0.04, (h, w)).astype(np.float32), (0, 0), 1.0)
    return ramp ** rng.uniform(0.6, 1.6) + noise


def _dots(rng: np.random.Generator, h: int, w: int, unit: float) -> np.ndarray:
    spacing = rng.uniform(8, 20) * unit
    radius = max(1.0, rng.uniform(0.15, 0.35) * spacing)
    canvas = np.zeros((h, w), np.float32)
    n = int(h * w / spacing**2)
    for x, y in zip(rng.uniform(0, w, n), rng.uniform(0, h, n)):
        cv2.circle(canvas, (int(x * 16), int(y * 16)), int(radius * 16), 1.0, -1, cv2.LINE_AA, 4)
    return canvas


def _noise(rng: np.random.Generator, h: int, w: int, unit: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), rng.uniform(0.8, 1.5))
    return 0.5 + noise * rng.uniform(0.4, 0.8)


_TEXTURES = {
    "stripes": _stripes,
    "checkerboard": _checkerboard,
    "blobs": _blobs,
    "gradient": _gradient,
    "dots": _dots,
    "noise": _noise,
}


def _background_frame(config: MotionShapesConfig, bg: np.ndarray, drift: tuple[float, float], t: int) -> np.ndarray:
    """Frame t's view of the (padded) background, shifted by t * drift with sub-pixel accuracy."""
    if bg.shape[:2] == (config.height, config.width):
        return bg.copy()
    pad = _drift_pad(config)
    shift = np.float32([[1, 0, -(pad + drift[0] * t)], [0, 1, -(pad + drift[1] * t)]])
    return cv2.warpAffine(bg, shift, (config.width, config.height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def render_video(config: MotionShapesConfig, class_index: int, group: int, clip: int) -> np.ndarray:
    """The uint8 (T, H, W, 3) RGB frames of one video (group and clip 1-based), deterministic.

    Used by generate_motionshapes and by tests; rendering twice gives identical arrays.
    """
    look = sample_appearance(config, class_index, group)
    motion = sample_motion(config, class_index, group, clip)
    bg = render_background(config, look)
    name = CLASS_NAMES[class_index]
    frames = np.empty((motion.frames, config.height, config.width, 3), np.uint8)
    for t in range(motion.frames):
        frame = _background_frame(config, bg, motion.drift, t)
        for obj, mot in zip(look.objects, motion.objects):
            _draw_object(frame, obj, *object_pose(config, name, mot, obj.radius, t))
        frames[t] = frame
    return frames


# --------------------------------------------------------------------------------------------
# Writing: videos, split files, config and metadata
# --------------------------------------------------------------------------------------------


def video_name(class_index: int, group: int, clip: int) -> str:
    """``<Class>/v_<Class>_gXX_cYY.avi``, the path relative to UCF-101/."""
    name = CLASS_NAMES[class_index]
    return f"{name}/v_{name}_g{group:02d}_c{clip:02d}.avi"


def _bit_rate(config: MotionShapesConfig) -> int:
    """The configured bit rate, else 1 bit per pixel and second.

    At that rate the encoder sits at (or near) its finest quantiser for these scenes: the mean
    absolute error of decoded frames is ~2-6 on 0-255, mostly from yuv420p chroma subsampling.
    """
    if config.bit_rate is not None:
        return config.bit_rate
    return int(config.height * config.width * config.fps)


def write_video(path: str | os.PathLike, frames: np.ndarray, config: MotionShapesConfig) -> None:
    """Encode one MotionShapes video (MPEG-4 Part 2, XVID tag, AVI), atomically."""
    if frames.shape[1:] != (config.height, config.width, 3):
        raise ValueError(f"frames must be uint8 (T, {config.height}, {config.width}, 3), got {frames.dtype} {frames.shape}")
    encode_video(path, frames, fps=config.fps, bit_rate=_bit_rate(config))


def _remove_stale_temp_files(root: pathlib.Path) -> None:
    """Deletes temp videos left by killed runs (their process is gone), never a live run's."""
    for tmp in root.glob("*/.v_*.avi.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def video_records(config: MotionShapesConfig) -> list[dict]:
    """One metadata row per video (no rendering): the content of motionshapes_meta.csv."""
    test1 = split_test_groups(config.groups, 1)
    rows = []
    for c in range(config.classes):
        for g in range(1, config.groups + 1):
            look = sample_appearance(config, c, g)
            for k in range(1, config.clips_per_group + 1):
                rows.append(_record(config, c, g, k, look, "test" if g in test1 else "train"))
    return rows


def _record(config: MotionShapesConfig, c: int, g: int, k: int, look: Appearance, split1: str) -> dict:
    motion = sample_motion(config, c, g, k)
    first = motion.objects[0]
    return {
        "path": video_name(c, g, k),
        "class": CLASS_NAMES[c],
        "label": c,
        "group": g,
        "clip": k,
        "frames": motion.frames,
        "background_family": look.family_name,
        "bias_aligned": look.bias_aligned,
        "split1": split1,
        "n_objects": len(look.objects),
        "shapes": ";".join(o.shape for o in look.objects),
        "motion_unit": MOTION_UNITS[_kind(CLASS_NAMES[c])],
        "motion_rate": round(first.rate, 6),
        "motion_amplitude_px": round(first.amplitude, 4),
        "motion_phase": round(first.phase, 6),
        "drift_dx": round(motion.drift[0], 6) + 0.0,  # + 0.0: no "-0.0"
        "drift_dy": round(motion.drift[1], 6) + 0.0,
        "motion_json": json.dumps([dataclasses.asdict(o) for o in motion.objects], separators=(",", ":")),
    }


_WORKER: dict = {}


def _init_worker(config: MotionShapesConfig, video_root: str) -> None:
    cv2.setNumThreads(1)
    _WORKER.update(config=config, root=pathlib.Path(video_root))


def _make_video(config: MotionShapesConfig, root: pathlib.Path, job: tuple[int, int, int]) -> str:
    rel = video_name(*job)
    if not (root / rel).exists():
        write_video(root / rel, render_video(config, *job), config)
    return rel


def _worker_make_video(job: tuple[int, int, int]) -> str:
    return _make_video(_WORKER["config"], _WORKER["root"], job)


def _run_jobs(config: MotionShapesConfig, root: pathlib.Path, jobs: list, workers: int, bar: tqdm) -> None:
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _make_video(config, root, job)
            bar.update(1)
        return
    n = min(workers, len(jobs))
    with multiprocessing.get_context().Pool(n, _init_worker, (config, str(root))) as pool:
        for _ in pool.imap_unordered(_worker_make_video, jobs, chunksize=max(1, len(jobs) // (n * 16))):
            bar.update(1)


def generate_motionshapes(
    out_dir: str | os.PathLike,
    config: MotionShapesConfig,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> pathlib.Path:
    """Writes the data set (videos, split lists, config JSON, metadata CSV); returns out_dir as a Path.

    Resumable: a video already present under its final name is skipped (videos are written to
    a temporary name and renamed when complete, so a present video is a complete one); temp
    files of killed runs are removed. The split files, JSON and CSV are rewritten atomically on
    every call. Raises ValueError when out_dir holds a data set made with a different config.
    ``workers``: processes (default ``os.cpu_count()``; 0 or 1 renders in this process).
    """
    if not isinstance(config, MotionShapesConfig):
        raise TypeError(f"config must be a MotionShapesConfig, got {type(config).__name__}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers must be an integer >= 0 (0 or 1: in-process), got {workers!r}")
    out = pathlib.Path(out_dir)
    _check_same_config(out, config)
    root = out / VIDEO_DIR
    for name in CLASS_NAMES[: config.classes]:
        (root / name).mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(root)
    records = video_records(config)
    _write_config(out, config, records)  # first: a resumed run can tell which config the videos belong to
    jobs = [(r["label"], r["group"], r["clip"]) for r in records if not (root / r["path"]).exists()]
    with tqdm(total=len(records), initial=len(records) - len(jobs), disable=not progress, desc="MotionShapes", unit="video") as bar:
        _run_jobs(config, root, jobs, (os.cpu_count() or 1) if workers is None else workers, bar)
    _write_split_files(out, config, records)
    _write_config(out, config, records)
    _write_meta(out, records)
    return out


def symmetries(classes: tuple[str, ...] | list[str]) -> dict:
    """What transforms do to the labels of these classes (written to motionshapes.json).

    ``label_preserving``: transforms that keep every label; ``<transform>_pairs``: the class
    pairs a transform swaps (absent pairs: the class is mapped to itself)."""
    present = set(classes)

    def pairs(all_pairs):
        return [list(p) for p in all_pairs if set(p) <= present]

    table = {"hflip_pairs": pairs(HFLIP_PAIRS), "vflip_pairs": pairs(VFLIP_PAIRS), "time_reversal_pairs": pairs(TIME_REVERSAL_PAIRS)}
    table["label_preserving"] = [name for name in ("hflip", "vflip", "time_reversal") if not table[f"{name}_pairs"]]
    return table


def _check_same_config(out: pathlib.Path, config: MotionShapesConfig) -> None:
    """Refuses to resume into a folder generated with another config or generator version (it
    would mix two data sets)."""
    try:
        info = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
        previous = info["config"]
    except FileNotFoundError:
        return
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{out / CONFIG_FILE} is not a MotionShapes config ({exc}); use another out_dir") from exc
    version = info.get("generator_version", 1)
    if version != GENERATOR_VERSION:
        raise ValueError(f"{out} holds MotionShapes generator version {version}, this is version {GENERATOR_VERSION}: "
                         "the two never mix; use another out_dir or delete it")
    current = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples -> lists, as stored
    if previous != current:
        changed = sorted(k for k in previous.keys() | current.keys() if previous.get(k) != current.get(k))
        raise ValueError(f"{out} holds MotionShapes generated with another config (fields {changed} differ); "
                         "use another out_dir or delete it")


def _write_split_files(out: pathlib.Path, config: MotionShapesConfig, records: list[dict]) -> None:
    folder = out / SPLIT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    classes = "".join(f"{i + 1} {name}\n" for i, name in enumerate(CLASS_NAMES[: config.classes]))
    write_text_atomic(folder / "classInd.txt", classes)
    for split in range(1, NUM_SPLITS + 1):
        test = split_test_groups(config.groups, split)
        train_lines = [f"{r['path']} {r['label'] + 1}\n" for r in records if r["group"] not in test]
        test_lines = [f"{r['path']}\n" for r in records if r["group"] in test]
        write_text_atomic(folder / f"trainlist{split:02d}.txt", "".join(train_lines))
        write_text_atomic(folder / f"testlist{split:02d}.txt", "".join(test_lines))


def _write_config(out: pathlib.Path, config: MotionShapesConfig, records: list[dict]) -> None:
    splits = {}
    for split in range(1, NUM_SPLITS + 1):
        test = split_test_groups(config.groups, split)
        n_test = sum(r["group"] in test for r in records)
        splits[str(split)] = {"test_groups": list(test), "train": len(records) - n_test, "test": n_test}
    info = {
        "dataset": "MotionShapes",
        "generator_version": GENERATOR_VERSION,
        "vsbench_version": core.__version__,
        "config": dataclasses.asdict(config),
        "class_names": list(CLASS_NAMES[: config.classes]),
        "background_families": list(BACKGROUND_FAMILIES),
        "bias_family": {n: BACKGROUND_FAMILIES[class_family(i)] for i, n in enumerate(CLASS_NAMES[: config.classes])},
        "shapes": list(SHAPES),
        "motion_units": MOTION_UNITS,
        "symmetries": symmetries(CLASS_NAMES[: config.classes]),
        "counts": {"classes": config.classes, "groups": config.groups, "clips_per_group": config.clips_per_group,
                   "videos": len(records), "frames_min": min(r["frames"] for r in records),
                   "frames_max": max(r["frames"] for r in records), "splits": splits},
        "conventions": "image coordinates (x right, y down); angles increase clockwise on screen; "
                       "group and clip are 1-based; label is 0-based (split files use 1-based labels)",
    }
    write_text_atomic(out / CONFIG_FILE, json.dumps(info, indent=2) + "\n")


def _write_meta(out: pathlib.Path, records: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    write_text_atomic(out / META_FILE, buf.getvalue())
