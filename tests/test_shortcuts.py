"""The shortcut check (core.data.shortcuts): appearance must not tell the class, motion must."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.cli import main
from core.data.datasets import open_dataset
from core.data.shortcuts import ShortcutConfig, ShortcutReport, frame_input, frame_seen_groups, load_clips, motion_input
from core.data.synthetic import PRESETS, generate_motionshapes

# 6 classes x 10 groups (3 held out) x 4 clips: 168 train and 72 test videos of 32x32 frames
SMALL = dataclasses.replace(PRESETS["bench"], classes=6, groups=10, clips_per_group=4)
CHECK = ShortcutConfig(epochs=25, size=(32, 32))


@pytest.fixture(scope="module")
def current_data(tmp_path_factory):
    return generate_motionshapes(tmp_path_factory.mktemp("current"), SMALL, workers=2, progress=False)


def test_inputs_are_the_middle_frame_and_ordered_differences():
    clips = torch.arange(2 * 1 * 3 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 1, 3, 3, 2, 2) ** 2
    assert torch.equal(frame_input(clips), clips[:, :, 1])
    diffs = motion_input(clips)
    assert diffs.shape == (2, 1, 6, 2, 2)
    assert torch.equal(diffs[:, :, :3], clips[:, :, 1] - clips[:, :, 0])
    assert torch.equal(diffs[:, :, 3:], clips[:, :, 2] - clips[:, :, 1])


def test_verdict_rule():
    chance = 1 / 12
    clean = ShortcutReport(12, 0.1, (0.07, 0.13), 0.09, (0.05, 0.12), 0.9, (0.87, 0.93), 3.0)
    assert clean.passed and not clean.appearance_shortcut and clean.motion_learnable
    seen_leak = dataclasses.replace(clean, frame_seen_top1=0.9, frame_seen_interval=(0.85, 0.95))
    assert seen_leak.appearance_shortcut and not seen_leak.passed
    no_motion = dataclasses.replace(clean, motion_top1=2.9 * chance)
    assert not no_motion.motion_learnable and "MOTION NOT LEARNABLE" in no_motion.render()


def test_a_look_tied_to_the_class_in_train_is_caught(tmp_path):
    # scene bias 1.0: in the train groups the background family names the class (as v1's looks did)
    # (the classifier of shortcut_check that catches it: one frame, groups seen in training)
    biased = generate_motionshapes(tmp_path / "biased", dataclasses.replace(SMALL, scene_bias=1.0), workers=2, progress=False)
    train = open_dataset(biased, split=1, subset="train", progress=False)
    clips, labels = load_clips(train, CHECK)
    top1, interval = frame_seen_groups(train, clips, labels, CHECK)
    assert interval[0] > 2 / 6, (top1, interval)  # far above chance (1/6): the verdict rule (test_verdict_rule) fails it


def test_motionshapes_passes_through_the_command_line(current_data, capsys):
    # exit 0 = the verdict: both frame classifiers' intervals reach chance, frame differences >= 2.5x chance
    assert main(["data", "shortcuts", str(current_data), "--size", "32", "32", "--epochs", "12"]) == 0
    out = capsys.readouterr().out
    assert "one frame, unseen groups" in out and "one frame, seen groups" in out
    assert "verdict: no appearance shortcut, motion is learnable" in out
