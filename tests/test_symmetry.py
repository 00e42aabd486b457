"""Data-set symmetries (core.data.symmetry): what MotionShapes states, and the flip guard."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from evaluation.finetune import finetune_config
from evaluation.protocols import EncoderTraining, FinetuneProtocol, resolve
from core.config import DataConfig, PretrainConfig
from core.data.symmetry import SymmetryError, check_flip, read_symmetries
from core.data.synthetic import PRESETS, generate_motionshapes
from harness.train import Pretraining

V1_CLASSES = ["MoveLeft", "MoveRight", "MoveUp", "MoveDown", "RotateClockwise", "RotateCounterclockwise", "Grow", "Shrink",
              "OrbitClockwise", "OrbitCounterclockwise", "OscillateHorizontal", "OscillateVertical"]


@pytest.fixture(scope="module")
def current_data(tmp_path_factory):
    config = dataclasses.replace(PRESETS["tiny"], classes=2, groups=4, height=32, width=64)
    return generate_motionshapes(tmp_path_factory.mktemp("current"), config, workers=0, progress=False)


def as_version_1(folder):
    """Rewrite motionshapes.json as version 1 wrote it: no version, no symmetries, v1 class names."""
    info = json.loads((folder / "motionshapes.json").read_text())
    for key in ("generator_version", "symmetries"):
        info.pop(key)
    info["class_names"] = V1_CLASSES
    (folder / "motionshapes.json").write_text(json.dumps(info))
    return folder


@pytest.fixture()
def v1_data(current_data, tmp_path):
    import shutil

    return as_version_1(shutil.copytree(current_data, tmp_path / "v1"))


def test_the_current_version_states_flip_invariance_and_time_reversal_pairs(current_data):
    info = json.loads((current_data / "motionshapes.json").read_text())
    assert info["symmetries"]["label_preserving"] == ["hflip", "vflip", "time_reversal"]  # MoveHorizontal, MoveUp only
    full = generate_motionshapes(current_data.parent / "full", dataclasses.replace(PRESETS["tiny"], groups=2, clips_per_group=1, height=32, width=32),
                                 workers=2, progress=False)
    symmetries = read_symmetries(full)
    assert symmetries.hflip_keeps_labels
    assert symmetries.time_reversal_pairs == (("MoveUp", "MoveDown"), ("Grow", "Shrink"))
    assert symmetries.vflip_pairs == (("MoveUp", "MoveDown"),)


def test_version_1_gets_its_mirror_pairs(v1_data):
    symmetries = read_symmetries(v1_data)
    assert not symmetries.hflip_keeps_labels
    assert ("MoveLeft", "MoveRight") in symmetries.hflip_pairs and ("OrbitClockwise", "OrbitCounterclockwise") in symmetries.hflip_pairs
    assert ("Grow", "Shrink") in symmetries.time_reversal_pairs and ("Grow", "Shrink") not in symmetries.hflip_pairs


def test_other_data_sets_state_nothing(tmp_path):
    assert read_symmetries(tmp_path) is None
    check_flip(tmp_path, 0.5, uses_labels=True, what="test")  # nothing to check against: no error


def test_flip_guard_refuses_labelled_runs_and_warns_self_supervised_ones(v1_data, caplog):
    with pytest.raises(SymmetryError, match=r"MoveLeft/MoveRight.*eval\.finetune\.flip = false"):
        check_flip(v1_data, 0.5, uses_labels=True, what="method 'supervised'")
    check_flip(v1_data, 0.0, uses_labels=True, what="method 'supervised'")  # no flip: fine
    with caplog.at_level(logging.WARNING, logger="core.data.symmetry"):
        check_flip(v1_data, 0.5, uses_labels=False, what="method 'moco'")
        check_flip(v1_data, 0.5, uses_labels=False, what="method 'moco'")
    warnings = [r for r in caplog.records if "mirrored motions become positives" in r.message]
    assert len(warnings) == 1  # once per data set


def _supervised(data, tmp_path, flip: bool) -> PretrainConfig:
    return PretrainConfig(method="supervised", backbone="r3d_tiny", data=DataConfig(path=str(data), workers=0), device="cpu",
                          method_args={"num_classes": 2, "frames": 4, "crop": 32, "flip": flip}, epochs=1, batch_size=2,
                          output_dir=str(tmp_path / "runs"), progress=False)


def test_harness_refuses_a_flipping_supervised_run_before_training(v1_data, current_data, tmp_path):
    with pytest.raises(SymmetryError, match="horizontal flip"):
        Pretraining(_supervised(v1_data, tmp_path, flip=True))
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    Pretraining(_supervised(v1_data, tmp_path, flip=False))  # no flip: accepted
    Pretraining(_supervised(current_data, tmp_path, flip=True))  # since version 2 a flip keeps every label


def test_finetune_protocol_flip_optimizer_and_stride_reach_the_run_and_the_hash():
    base = FinetuneProtocol(stride=2)
    config = finetune_config(resolve(dataclasses.replace(base, flip=False, optimizer="adam"), EncoderTraining()), backbone="r3d_tiny", data=DataConfig(path="x"),
                             num_classes=12, init_encoder=None, seed=0, device="cpu", output_dir="runs", run_name="ft")
    assert config.method_args["flip"] is False and config.method_args["stride"] == 2 and config.optimizer == "adam"
    hashes = {base.hash(), dataclasses.replace(base, flip=False).hash(), dataclasses.replace(base, optimizer="adam").hash(),
              dataclasses.replace(base, stride=None).hash()}
    assert len(hashes) == 4


def test_generator_version_is_part_of_the_fingerprint(current_data, v1_data):
    from core.data.datasets import open_dataset

    current = open_dataset(current_data, split=1, subset="train", progress=False)
    v1 = open_dataset(v1_data, split=1, subset="train", progress=False)
    assert current.extra == {"generator": "MotionShapes v3"} and v1.extra == {"generator": "MotionShapes v1"}
    assert [r.key for r in v1.records] == [r.key for r in current.records]  # the same files...
    assert v1.fingerprint() != current.fingerprint()  # ...but never taken for the same data
