"""Suites are checked whole before the first run trains: every row's keys, overrides and backbones,
and the evaluation settings against the data (split, gallery size, clips that fit every video)."""

from __future__ import annotations

import pytest

from core.config import ConfigError
from core.data.datasets import DatasetError
from harness.suite import expand, load_suite
from methods.base import list_methods
from tests.helpers import write_ucf_like

BASE = """
name = "v"
seeds = [0]
backbones = ["r3d_tiny"]
methods = ["moco"]
[data]
path = "{data}"
[pretrain]
epochs = 1
[eval]
protocols = ["knn", "retrieval"]
[eval.knn]
k = 4
[eval.retrieval]
ks = [1, 4]
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 train videos (the gallery) and 2 test videos of 32 frames or more, in UCF101's layout: 16-frame
    evaluation clips at MoCo's stride 2 span 31 of them."""
    return write_ucf_like(tmp_path_factory.mktemp("suite") / "ucf", {"MoveLeft": 3, "MoveRight": 3}, frames=32)


def _suite(tmp_path, data, extra: str = ""):
    path = tmp_path / "suite.toml"
    path.write_text(BASE.format(data=data) + extra)
    return path


def _expand(tmp_path, data, extra: str):
    return expand(load_suite(_suite(tmp_path, data, extra)), list_methods())


def test_a_valid_suite_expands(tmp_path, data):
    runs = _expand(tmp_path, data, '[[ablations]]\nname = "iic-cmc"\nmethod = "iic"\nmethod_args = { intra_negative = false }\n')
    assert [r.row for r in runs] == ["moco", "iic-cmc"]


@pytest.mark.parametrize("extra, message", [
    ('[[ablations]]\nname = "typo"\nmethod = "iic"\nmethod_args = { intra_negatve = false }\n', r"row 'typo': .*intra_negatve: unknown key"),
    ('[overrides.moco]\nmethod_args = { queue_sise = 4 }\n', r"row 'moco': .*queue_sise: unknown key"),
    ('[overrides.mocco]\nlr = 0.1\n', r"\[overrides.mocco\]: no such method"),
    ('[pretrain.data]\npath = "x"\n', r"pretrain.data: set by the suite itself; use \[data\]"),
    ('[overrides.moco]\nseed = 3\n', r"overrides.moco.seed: set by the suite itself; use seeds"),
    ('[overrides.moco]\ninit = "xavier"\n', r"overrides.moco.init = 'xavier': unknown initialisation; valid: kaiming_fan_out, pytorch_default"),
])
def test_every_key_is_checked_before_training(tmp_path, data, extra, message):
    with pytest.raises(ConfigError, match=message):
        _expand(tmp_path, data, extra)


def test_pretrain_keys_the_suite_sets_itself_are_refused(tmp_path, data):
    path = tmp_path / "suite.toml"
    path.write_text(BASE.format(data=data).replace("epochs = 1", "epochs = 1\nrun_name = \"mine\""))
    with pytest.raises(ConfigError, match="pretrain.run_name: set by the suite itself"):
        expand(load_suite(path), list_methods())


def test_unknown_backbone_is_refused(tmp_path, data):
    path = tmp_path / "suite.toml"
    path.write_text(BASE.format(data=data).replace('backbones = ["r3d_tiny"]', 'backbones = ["r3d_tiiny"]'))
    with pytest.raises(ConfigError, match="unknown backbone 'r3d_tiiny'"):
        expand(load_suite(path), list_methods())


@pytest.mark.parametrize("old, new, message", [
    ("k = 4", "k = 5", r"eval.knn.k = 5: knn ranks the 4 videos of the train split 1 of .*ucf \(the gallery\); valid: every k at most 4"),
    ("ks = [1, 4]", "ks = [1, 5]", r"eval.retrieval.ks = \[1, 5\]: retrieval ranks the 4 videos .*at most 4"),
])
def test_a_k_larger_than_the_gallery_is_refused(tmp_path, data, old, new, message):
    path = tmp_path / "suite.toml"
    path.write_text(BASE.format(data=data).replace(old, new))
    with pytest.raises(ConfigError, match=f"{path}: {message}"):
        expand(load_suite(path), list_methods())


@pytest.mark.parametrize("extra", ['[overrides.moco]\nmethod_args = { stride = 3 }\n',  # the stride evaluation follows
                                   '[[ablations]]\nname = "slow-moco"\nmethod = "moco"\nmethod_args = { stride = 3 }\n'])
def test_evaluation_clips_longer_than_a_video_are_refused(tmp_path, data, extra):
    """16 frames at stride 3 span 46 frames: evaluating the row would fail on the first video shorter
    than that, after the row had trained (evaluation never loops a video)."""
    with pytest.raises(ConfigError, match=r"row '(moco|slow-moco)': its evaluation clips of eval.features.frames = 16 frames at "
                                          r"stride 3 span 46 frames, but .*\.avi has 3\d; .*at most 3\d"):
        _expand(tmp_path, data, extra)


def test_an_evaluation_stride_set_for_every_row_makes_them_fit(tmp_path, data):
    runs = _expand(tmp_path, data, '[overrides.moco]\nmethod_args = { stride = 3 }\n[eval.features]\nstride = 2\n')
    assert [r.row for r in runs] == ["moco"]


def test_settings_of_protocols_the_suite_does_not_run_are_not_checked(tmp_path, data):
    path = tmp_path / "suite.toml"
    text = BASE.format(data=data).replace('protocols = ["knn", "retrieval"]', 'protocols = ["linear"]').replace("k = 4", "k = 50")
    path.write_text(text + "[eval.finetune]\nsplit = 3\n")  # nothing fine-tunes: its split is not used
    assert [r.row for r in expand(load_suite(path), list_methods())] == ["moco"]


@pytest.mark.parametrize("prefix, extra, message", [
    ("", "[eval.features]\nsplit = 2\n", r"eval.features.split = 2 but data.split = 1: .*set eval.features.split = 1 \(or data.split = 2\)"),
    ('references = ["supervised"]\n', "[eval.finetune]\nsplit = 3\n", r"eval.finetune.split = 3 but data.split = 1"),  # it fine-tunes
])
def test_an_evaluation_split_other_than_data_split_is_refused(tmp_path, data, prefix, extra, message):
    path = tmp_path / "suite.toml"
    path.write_text(prefix + BASE.format(data=data) + extra)
    with pytest.raises(ConfigError, match=f"{path}: {message}"):
        expand(load_suite(path), list_methods())


def test_a_missing_data_set_is_refused_naming_data_path(tmp_path, data):
    path = tmp_path / "suite.toml"
    path.write_text(BASE.format(data=tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=r"suite.toml: data.path = '.*nowhere': no such file or folder"):
        expand(load_suite(path), list_methods())


@pytest.mark.parametrize("top, extra, message", [
    ("low_shot = [0]", "", r"low_shot = \[0\]: expected distinct positive integers"),
    ("low_shot = [2, 2]", "", r"low_shot = \[2, 2\]: expected distinct positive integers"),
    ("low_shot = [5]", "", r"low_shot = \[5\]: the train split of .* has 4 readable videos; valid: every N at most 4"),
    ("", "[data]\ntrain_videos = 2\n", r"data.train_videos: a suite pretrains and evaluates on the whole split"),
])
def test_low_shot_rows_are_checked_before_training(tmp_path, data, top, extra, message):
    text = BASE.format(data=data).replace('methods = ["moco"]', f'methods = ["moco"]\n{top}')
    if extra:
        text = text.replace("[data]\n", extra)
    path = tmp_path / "suite.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        expand(load_suite(path), list_methods())
