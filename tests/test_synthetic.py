"""MotionShapes (core.data.synthetic): layout, splits, determinism, motion semantics, bias."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

import core
from core.data.synthetic import (
    BACKGROUND_FAMILIES,
    CLASS_NAMES,
    GENERATOR_VERSION,
    PRESETS,
    MotionShapesConfig,
    class_family,
    generate_motionshapes,
    object_pose,
    render_video,
    sample_appearance,
    sample_motion,
    split_test_groups,
    video_records,
)

TINY = PRESETS["tiny"]
NAME_RE = re.compile(r"^v_([A-Za-z]+)_g(\d{2})_c(\d{2})\.avi$")


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def read_lines(path: Path) -> list[str]:
    text = path.read_text()
    assert "\r" not in text and text.endswith("\n")
    return text.splitlines()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    assert generate_motionshapes(out, TINY, workers=2, progress=False) == out
    return out


@pytest.fixture(scope="module")
def meta(tiny_dir) -> list[dict]:
    with open(tiny_dir / "motionshapes_meta.csv", newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- layout and splits


def test_layout_and_names(tiny_dir, meta):
    videos = sorted(p.relative_to(tiny_dir / "UCF-101").as_posix() for p in (tiny_dir / "UCF-101").rglob("*"))
    expected = sorted(
        f"{n}/v_{n}_g{g:02d}_c{c:02d}.avi" for n in CLASS_NAMES for g in range(1, 5) for c in range(1, 2)
    )
    assert len(expected) == 48
    assert [v for v in videos if v.endswith(".avi")] == expected
    assert set(videos) - set(expected) == set(CLASS_NAMES)  # nothing else: no temp files left behind
    assert read_lines(tiny_dir / "ucfTrainTestlist" / "classInd.txt") == [f"{i + 1} {n}" for i, n in enumerate(CLASS_NAMES)]
    assert sorted(r["path"] for r in meta) == expected


def test_config_json_and_meta(tiny_dir, meta):
    info = json.loads((tiny_dir / "motionshapes.json").read_text())
    assert info["vsbench_version"] == core.__version__
    assert info["generator_version"] == GENERATOR_VERSION == 3
    assert info["symmetries"] == {"hflip_pairs": [], "vflip_pairs": [["MoveUp", "MoveDown"]],
                                  "time_reversal_pairs": [["MoveUp", "MoveDown"], ["Grow", "Shrink"]], "label_preserving": ["hflip"]}
    assert info["class_names"] == list(CLASS_NAMES)
    assert info["counts"]["videos"] == 48
    assert MotionShapesConfig.from_dict(info["config"]) == TINY
    assert set(dataclasses.asdict(TINY)) == set(info["config"])
    for col in ("path", "class", "label", "group", "clip", "background_family", "bias_aligned", "split1", "motion_rate"):
        assert col in meta[0]
    for r in meta:
        m = NAME_RE.match(r["path"].split("/")[1])
        assert m and m.group(1) == r["class"] == CLASS_NAMES[int(r["label"])]
        assert (int(m.group(2)), int(m.group(3))) == (int(r["group"]), int(r["clip"]))
        assert r["background_family"] in BACKGROUND_FAMILIES and r["split1"] in ("train", "test")
        assert (r["split1"] == "test") == (int(r["group"]) in split_test_groups(TINY.groups, 1))
    assert meta == [{k: str(v) for k, v in r.items()} for r in video_records(TINY)]


def test_splits_partition_by_group(tiny_dir):
    lists = tiny_dir / "ucfTrainTestlist"
    everything = {f"{n}/v_{n}_g{g:02d}_c01.avi" for n in CLASS_NAMES for g in range(1, 5)}
    test_sets = []
    for k in (1, 2, 3):
        train = [line.split(" ") for line in read_lines(lists / f"trainlist0{k}.txt")]
        test = read_lines(lists / f"testlist0{k}.txt")
        assert all(len(t) == 2 and CLASS_NAMES[int(t[1]) - 1] == t[0].split("/")[0] for t in train)
        assert all(" " not in t for t in test)
        train_paths = [t[0] for t in train]
        assert len(train_paths) + len(test) == 48 and set(train_paths) | set(test) == everything
        group = lambda p: int(NAME_RE.match(p.split("/")[1]).group(2))  # noqa: E731
        train_groups, test_groups = {group(p) for p in train_paths}, {group(p) for p in test}
        assert train_groups and test_groups and not train_groups & test_groups
        test_sets.append(frozenset(test_groups))
    assert len(set(test_sets)) == 3


@pytest.mark.parametrize(
    "groups, expected",
    [(2, [(1,), (2,), (1,)]), (3, [(1,), (2,), (3,)]), (8, [(1, 2), (3, 4), (5, 6)]),
     (25, [tuple(range(1, 8)), tuple(range(8, 15)), tuple(range(15, 22))])],
)
def test_split_test_groups(groups, expected):
    assert [split_test_groups(groups, k) for k in (1, 2, 3)] == expected


def test_every_video_decodes(tiny_dir, meta):
    frames = {r["path"]: int(r["frames"]) for r in meta}
    assert min(frames.values()) >= 32
    for rel, n in frames.items():
        video = decode(tiny_dir / "UCF-101" / rel)
        assert video.shape == (n, TINY.height, TINY.width, 3), rel
    # the codec keeps shapes and textures: decoded frames are close to the rendered ones
    for c in (0, 5, 11):
        source = render_video(TINY, c, 2, 1)
        decoded = decode(tiny_dir / "UCF-101" / f"{CLASS_NAMES[c]}/v_{CLASS_NAMES[c]}_g02_c01.avi")
        assert np.abs(decoded.astype(np.int16) - source).mean() < 10


def test_presets_keep_32_frame_windows():
    assert (TINY.classes, TINY.groups, TINY.clips_per_group, TINY.frames, TINY.height, TINY.width) == (12, 4, 1, 32, 64, 86)
    small, standard = PRESETS["small"], PRESETS["standard"]
    assert (small.groups, small.clips_per_group, small.frames, small.height, small.width) == (8, 2, 48, 96, 128)
    bench = PRESETS["bench"]
    assert (bench.groups, bench.clips_per_group, bench.frames, bench.height, bench.width) == (56, 2, 32, 32, 32)
    assert sum(r["split1"] == "train" for r in video_records(bench)) == 960
    assert (standard.groups, standard.clips_per_group, standard.frames, standard.height, standard.width) == (25, 8, 64, 128, 171)
    for cfg in (TINY, small, bench):
        assert min(r["frames"] for r in video_records(cfg)) >= 32
    assert min(sample_motion(standard, c, g, 1).frames for c in range(12) for g in range(1, 26)) >= 32


# ----------------------------------------------------------------------------- determinism


def test_render_is_deterministic_and_seeded():
    a, b = render_video(TINY, 4, 2, 1), render_video(TINY, 4, 2, 1)
    assert a.dtype == np.uint8 and a.shape[1:] == (64, 86, 3)
    assert np.array_equal(a, b)
    other = render_video(dataclasses.replace(TINY, seed=1), 4, 2, 1)
    assert a.shape != other.shape or not np.array_equal(a, other)


def test_worker_count_does_not_change_the_data(tiny_dir, tmp_path):
    # a 3-class config draws the same videos as tiny for those classes (RNGs depend on (seed, c, g, k) only)
    out = generate_motionshapes(tmp_path, dataclasses.replace(TINY, classes=3), workers=1, progress=False)
    for n in CLASS_NAMES[:3]:
        for g in (1, 3):
            rel = f"{n}/v_{n}_g{g:02d}_c01.avi"
            assert np.array_equal(decode(out / "UCF-101" / rel), decode(tiny_dir / "UCF-101" / rel))
            assert (out / "UCF-101" / rel).read_bytes() == (tiny_dir / "UCF-101" / rel).read_bytes()


def test_resume_regenerates_only_missing_videos(tmp_path):
    cfg = dataclasses.replace(TINY, classes=2)
    generate_motionshapes(tmp_path, cfg, workers=0, progress=False)
    videos = sorted((tmp_path / "UCF-101").rglob("*.avi"))
    assert len(videos) == 8
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in videos}
    victim = videos[3]
    victim.unlink()
    (tmp_path / "ucfTrainTestlist" / "trainlist01.txt").write_text("garbage\n")
    generate_motionshapes(tmp_path, cfg, workers=0, progress=False)
    assert victim.read_bytes() == before[victim][1]
    assert all(p.stat().st_mtime_ns == before[p][0] for p in videos if p != victim)
    assert "garbage" not in (tmp_path / "ucfTrainTestlist" / "trainlist01.txt").read_text()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_resume_cleans_dead_temp_files_and_refuses_another_config(tmp_path):
    cfg = dataclasses.replace(TINY, classes=2, groups=2)
    generate_motionshapes(tmp_path, cfg, workers=0, progress=False)
    folder = tmp_path / "UCF-101" / "MoveHorizontal"
    dead = folder / ".v_MoveHorizontal_g01_c01.avi.999999999.tmp"  # no such process
    alive = folder / f".v_MoveHorizontal_g01_c01.avi.{os.getpid()}.tmp"  # a run in progress: keep
    dead.write_bytes(b"partial")
    alive.write_bytes(b"partial")
    generate_motionshapes(tmp_path, cfg, workers=0, progress=False)
    assert not dead.exists() and alive.exists()
    with pytest.raises(ValueError, match="seed"):
        generate_motionshapes(tmp_path, dataclasses.replace(cfg, seed=1), workers=0, progress=False)


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_version_folder_is_refused_not_mixed(tmp_path, version):
    cfg = dataclasses.replace(TINY, classes=2, groups=2)
    generate_motionshapes(tmp_path, cfg, workers=0, progress=False)
    info = json.loads((tmp_path / "motionshapes.json").read_text())
    if version == 1:
        del info["generator_version"]  # as version 1 wrote it
    else:
        info["generator_version"] = version
    (tmp_path / "motionshapes.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=f"generator version {version}, this is version 3"):
        generate_motionshapes(tmp_path, cfg, workers=0, progress=False)


# ----------------------------------------------------------------------------- the class is the motion


def _track(frames: np.ndarray, bg: tuple, mark: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: object centroid (x, y), object area, mark centroid (nan when not visible)."""
    diff = np.abs(frames.astype(np.int16) - np.array(bg)).sum(-1) > 40
    is_mark = np.abs(frames.astype(np.int16) - np.array(mark)).sum(-1) < 40
    ys, xs = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]]
    area = diff.sum((1, 2)).astype(float)
    centre = np.stack([(diff * xs).sum((1, 2)), (diff * ys).sum((1, 2))], 1) / np.maximum(area, 1)[:, None]
    n_mark = is_mark.sum((1, 2))
    mark_c = np.stack([(is_mark * xs).sum((1, 2)), (is_mark * ys).sum((1, 2))], 1) / np.maximum(n_mark, 1)[:, None]
    mark_c[n_mark == 0] = np.nan
    return centre, area, mark_c


def _median_step(values: np.ndarray, keep: np.ndarray) -> float:
    steps = np.diff(values)[keep[1:] & keep[:-1]]
    return float(np.median(steps))


def _angles(points: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Angle of each point around origin, image coordinates (increases clockwise on screen)."""
    return np.unwrap(np.arctan2(points[:, 1] - origin[..., 1], points[:, 0] - origin[..., 0]))


FLAT = dataclasses.replace(TINY, groups=40, frames=32, frame_jitter=0.0, height=96, width=128, max_objects=1, flat_background=True)


def check_motion(config: MotionShapesConfig, class_index: int, group: int) -> None:
    """Asserts that the rendered frames of (class, group, clip 1) show the class's motion."""
    name = CLASS_NAMES[class_index]
    look = sample_appearance(config, class_index, group)
    frames = render_video(config, class_index, group, 1)
    centre, area, mark = _track(frames, look.colors[0], look.objects[0].mark_color)
    whole = area >= 0.8 * area.max()  # object (nearly) fully in frame
    x, y = centre[:, 0], centre[:, 1]
    motion = sample_motion(config, class_index, group, 1).objects[0]
    if name.startswith("Move"):
        axis, sign = {"MoveHorizontal": (x, motion.direction), "MoveUp": (y, -1), "MoveDown": (y, 1)}[name]
        assert sign * _median_step(axis, whole) > 0.5, (name, group)
    elif name in ("Grow", "Shrink"):
        sign = 1 if name == "Grow" else -1
        assert sign * _median_step(area, np.ones_like(whole)) > 0, (name, group)
        assert area.max() > 1.5 * area.min(), (name, group)
    elif name == "Rotate":
        assert np.ptp(x) < 3 and np.ptp(y) < 3 and np.ptp(area) < 0.35 * area.mean(), (name, group)  # in place
        turn = np.degrees(np.polyfit(np.arange(len(mark)), _angles(mark, centre), 1)[0])  # deg/frame
        assert motion.direction * turn > 2.0, (name, group)
    elif name == "Orbit":
        turn = np.degrees(np.diff(_angles(centre, centre.mean(0))))
        assert motion.direction * np.median(turn) > 2.0 and np.all(motion.direction * turn > 0), (name, group)
    elif name.startswith("Oscillate"):
        along, across = (x, y) if name == "OscillateHorizontal" else (y, x)
        assert np.ptp(along) > 10 and np.ptp(across) < 1.0, (name, group)
        steps = np.diff(along)
        assert (steps > 0.5).any() and (steps < -0.5).any(), (name, group)  # goes back and forth
    elif name == "Pulse":
        assert np.ptp(x) < 2 and np.ptp(y) < 2 and area.max() > 1.4 * area.min(), (name, group)  # in place, swelling
        steps = np.diff(area)
        assert (steps > 0).sum() > 3 and (steps < 0).sum() > 3, (name, group)  # grows and shrinks by turns
    elif name == "Shake":
        assert 1.0 < np.abs(np.diff(centre, axis=0)).max() <= 2 * motion.amplitude + 1, (name, group)
        assert np.abs(centre - np.array(motion.center)).max() <= motion.amplitude + 1, (name, group)  # around one point
    else:
        assert name == "Still" and np.ptp(centre, axis=0).max() < 1e-6 and np.ptp(area) == 0, (name, group)


def test_direction_free_classes_draw_both_directions():
    cfg = dataclasses.replace(PRESETS["small"], groups=20)
    for c in (CLASS_NAMES.index(n) for n in ("MoveHorizontal", "Rotate", "Orbit")):
        directions = {sample_motion(cfg, c, g, 1).objects[0].direction for g in range(1, 21)}
        assert directions == {-1, 1}, CLASS_NAMES[c]


def _inside(config: MotionShapesConfig, class_index: int, group: int) -> bool:
    """The object of (class, group, clip 1) stays whole inside the frame in every frame."""
    look, motion = sample_appearance(config, class_index, group), sample_motion(config, class_index, group, 1)
    for t in range(motion.frames):
        x, y, _, scale = object_pose(config, CLASS_NAMES[class_index], motion.objects[0], look.objects[0].radius, t)
        r = look.objects[0].radius * scale + 1
        if not (r <= x <= config.width - r and r <= y <= config.height - r):
            return False
    return True


@pytest.mark.parametrize("class_index", range(12))
def test_class_is_the_motion(class_index):
    # centres keep no margin (objects are cut by the border in every class): the motion is measured
    # on clips whose object stays whole; a Move object wraps whatever its start
    groups = [g for g in range(1, FLAT.groups + 1) if CLASS_NAMES[class_index].startswith("Move") or _inside(FLAT, class_index, g)]
    assert len(groups) >= 3, CLASS_NAMES[class_index]
    for group in groups[:3]:
        check_motion(FLAT, class_index, group)


# ----------------------------------------------------------------------------- appearance vs class


def test_appearance_is_shared_by_every_class_of_a_group():
    for g in (1, 2, 3):
        looks = {dataclasses.replace(sample_appearance(PRESETS["small"], c, g), bias_aligned=False) for c in range(12)}
        assert len(looks) == 1, g  # one look per group, whatever the class
    assert sample_appearance(PRESETS["small"], 0, 1) != sample_appearance(PRESETS["small"], 0, 2)


def test_appearance_is_independent_of_class():
    cfg = dataclasses.replace(PRESETS["standard"], groups=240)
    F = len(BACKGROUND_FAMILIES)
    table = np.zeros((12, F))
    colour = np.zeros((12, 240, 3))
    radius, shapes = np.zeros((12, 240)), {c: Counter() for c in range(12)}
    for c in range(12):
        for g in range(1, 241):
            look = sample_appearance(cfg, c, g)
            table[c, look.family] += 1
            colour[c, g - 1] = np.mean(look.colors, 0)
            radius[c, g - 1] = look.objects[0].radius
            shapes[c][look.objects[0].shape] += 1
    expected = table.sum(0, keepdims=True) * table.sum(1, keepdims=True) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    assert chi2 < 100, chi2  # 55 degrees of freedom: independence is not rejected
    grand = colour.reshape(-1, 3).mean(0)
    assert np.abs(colour.mean(1) - grand).max() < 15
    assert np.abs(radius.mean(1) - radius.mean()).max() < 0.1 * radius.mean()
    assert all(len(s) >= 6 for s in shapes.values())


def test_scale_distribution_does_not_reveal_the_class():
    # Grow/Shrink sweep the scale range once per video, other classes draw a scale in it: over a
    # video's frames (what a single-frame classifier sees) size is no cue
    cfg = dataclasses.replace(PRESETS["small"], groups=60)
    lo, hi = np.log(cfg.object_scale)
    means = []
    for c in range(12):
        samples = []
        for g in range(1, 61):
            look, motion = sample_appearance(cfg, c, g), sample_motion(cfg, c, g, 1)
            samples += [math.log(object_pose(cfg, CLASS_NAMES[c], motion.objects[0], look.objects[0].radius, t)[3]) for t in range(motion.frames)]
        means.append(np.mean(samples))
    assert np.all(np.abs(np.array(means) - (lo + hi) / 2) < 0.15)


def test_scene_bias_ties_family_to_class_in_train_groups_only():
    cfg = dataclasses.replace(TINY, groups=25, scene_bias=1.0)
    rows = video_records(cfg)
    train = [r for r in rows if r["split1"] == "train"]
    test = [r for r in rows if r["split1"] == "test"]
    assert len(test) == 12 * 7
    assert all(r["background_family"] == BACKGROUND_FAMILIES[class_family(r["label"])] and r["bias_aligned"] for r in train)
    assert sum(r["bias_aligned"] for r in test) < len(test) / 2
    assert all(r["bias_aligned"] == (r["background_family"] == BACKGROUND_FAMILIES[r["label"] % 6]) for r in test)
    # scene_bias changes the family and nothing else
    unbiased = sample_appearance(TINY, 3, 2)
    biased = sample_appearance(dataclasses.replace(TINY, scene_bias=1.0), 3, 2)
    assert (biased.colors, biased.objects) == (unbiased.colors, unbiased.objects)
    neutral = video_records(dataclasses.replace(cfg, scene_bias=0.0))
    assert sum(r["bias_aligned"] for r in neutral if r["split1"] == "train") < 0.4 * len(train)


def test_background_drift_moves_the_background():
    cfg = dataclasses.replace(TINY, background_drift=True, max_objects=1)
    frames = render_video(cfg, 0, 1, 1)
    assert frames.shape[1:] == (64, 86, 3)
    assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 1.0
    assert np.array_equal(frames, render_video(cfg, 0, 1, 1))


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "field, value",
    [("classes", 13), ("classes", 1), ("groups", 1), ("clips_per_group", 0), ("frames", 4), ("height", 8),
     ("scene_bias", 1.5), ("seed", -1), ("max_objects", 0), ("object_radius", (0.2, 0.1)), ("move_speed", (0, 1))],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(TINY, **{field: value})


def test_bad_video_index_and_workers(tmp_path):
    with pytest.raises(ValueError, match="class_index"):
        render_video(TINY, 12, 1, 1)
    with pytest.raises(ValueError, match="group"):
        render_video(TINY, 0, 0, 1)
    with pytest.raises(ValueError, match="clip"):
        render_video(TINY, 0, 1, 2)
    with pytest.raises(ValueError, match="workers"):
        generate_motionshapes(tmp_path, TINY, workers=-1, progress=False)
    assert not os.listdir(tmp_path)
