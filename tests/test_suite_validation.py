"""Suites are checked whole before the first run trains: every row's keys, overrides and backbones."""

from __future__ import annotations

import pytest

from harness.config import ConfigError
from harness.suite import expand, load_suite
from methods.base import list_methods

BASE = """
name = "v"
seeds = [0]
backbones = ["r3d_tiny"]
methods = ["moco"]
[data]
path = "data/none"
[pretrain]
epochs = 1
"""


def _expand(tmp_path, extra: str):
    path = tmp_path / "suite.toml"
    path.write_text(BASE + extra)
    return expand(load_suite(path), list_methods())


def test_a_valid_suite_expands(tmp_path):
    runs = _expand(tmp_path, '[[ablations]]\nname = "iic-cmc"\nmethod = "iic"\nmethod_args = { intra_negative = false }\n')
    assert [r.row for r in runs] == ["moco", "iic-cmc"]


@pytest.mark.parametrize("extra, message", [
    ('[[ablations]]\nname = "typo"\nmethod = "iic"\nmethod_args = { intra_negatve = false }\n', r"row 'typo': .*intra_negatve: unknown key"),
    ('[overrides.moco]\nmethod_args = { queue_sise = 4 }\n', r"row 'moco': .*queue_sise: unknown key"),
    ('[overrides.mocco]\nlr = 0.1\n', r"\[overrides.mocco\]: no such method"),
    ('[pretrain.data]\npath = "x"\n', r"pretrain.data: set by the suite itself; use \[data\]"),
    ('[overrides.moco]\nseed = 3\n', r"overrides.moco.seed: set by the suite itself; use seeds"),
])
def test_every_key_is_checked_before_training(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        _expand(tmp_path, extra)


def test_pretrain_keys_the_suite_sets_itself_are_refused(tmp_path):
    path = tmp_path / "suite.toml"
    path.write_text(BASE.replace("epochs = 1", "epochs = 1\nrun_name = \"mine\""))
    with pytest.raises(ConfigError, match="pretrain.run_name: set by the suite itself"):
        expand(load_suite(path), list_methods())


def test_unknown_backbone_is_refused(tmp_path):
    path = tmp_path / "suite.toml"
    path.write_text(BASE.replace('backbones = ["r3d_tiny"]', 'backbones = ["r3d_tiiny"]'))
    with pytest.raises(ConfigError, match="unknown backbone 'r3d_tiiny'"):
        expand(load_suite(path), list_methods())
