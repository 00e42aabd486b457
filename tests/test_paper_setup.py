"""Suites with ``backbones = ["paper"]``: each method on its paper's backbone, initialisation and
recipe (lr scaled linearly with the batch), its rows labelled and its changes listed."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from harness.cli import main
from core.config import ConfigError, PretrainConfig, resolve_recipe
from harness.suite import expand, load_suite, paper_changes
from methods.base import get_method, list_methods
from tests.helpers import write_suite


def _paper_suite(path, data, methods=("iic", "moco")):
    """Paper rows and r3d_tiny rows of ``methods`` and the random-init reference; IIC's memory cut to 8 negatives."""
    return write_suite(path, data, "paper", backbones=["paper", "r3d_tiny"], methods=list(methods), references=["random init"],
                       overrides={"iic": {"method_args": {"nce_k": 8}}})


def test_the_linear_rule_scales_the_papers_lr_with_the_batch():
    iic = get_method("iic").recipe  # SGD lr 0.01 at batch 16 (IIC's train_ssl.py)
    assert resolve_recipe(iic, PretrainConfig(batch_size=4, lr_scaling="linear")).lr == pytest.approx(0.01 * 4 / 16)
    assert resolve_recipe(iic, PretrainConfig(batch_size=4)).lr == 0.01  # controlled rows keep the lr unless told
    assert resolve_recipe(iic, PretrainConfig(batch_size=4, lr=0.5, lr_scaling="linear")).lr == 0.5  # an explicit lr wins
    with pytest.raises(ConfigError, match="lr_scaling: expected one of none, linear"):
        PretrainConfig(lr_scaling="sqrt")


def test_paper_rows_take_each_methods_backbone_and_init_and_list_what_the_suite_changed(motionshapes_tiny, tmp_path):
    runs = expand(load_suite(_paper_suite(tmp_path / "s.toml", motionshapes_tiny)), list_methods())
    paper = {r.row: r for r in runs if r.setup == "paper"}
    assert {r: p.config.backbone for r, p in paper.items()} == {"iic": "r3d_vcop", "moco": "r3d_18"}
    assert {r.config.backbone for r in runs if r.setup == "controlled"} == {"r3d_tiny"}
    assert paper["iic"].changed == ("batch_size", "decode_size", "epochs", "method_args.crop", "method_args.frames",
                                    "method_args.nce_k", "steps_per_epoch")
    assert paper["iic"].config.run_name == "iic-paper-s0" and paper["iic"].config.lr_scaling == "linear"
    assert paper_changes(PretrainConfig(method="iic", backbone="r3d_vcop", init="kaiming_fan_out")) == ("init",)


@pytest.mark.slow  # a whole suite: IIC on r3d_vcop and r3d_tiny, random init on both
def test_a_paper_suite_runs_and_labels_its_rows(motionshapes_tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _paper_suite(tmp_path / "s.toml", motionshapes_tiny, methods=["iic"])
    assert main(["run", "s.toml"]) == 0
    printed = capsys.readouterr().out
    assert "iic (paper setup)" in printed
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    children = [r for r in client.search_runs([client.get_experiment_by_name("paper").experiment_id]) if r.data.tags.get("kind") != "suite"]
    by_name = {r.info.run_name: r for r in children}
    iic = by_name["iic-paper-s0"]
    assert iic.data.tags["setup"] == "paper" and iic.data.tags["backbone"] == "r3d_vcop"
    assert float(iic.data.params["recipe.lr"]) == pytest.approx(0.0025) and iic.data.params["init"] == "pytorch_default"
    assert by_name["iic-r3d_tiny-s0"].data.tags["setup"] == "controlled"
    assert {r.data.tags["backbone"] for r in children if r.data.tags["row"] == "random init"} == {"r3d_tiny", "r3d_vcop"}
    md = (tmp_path / "runs" / "report" / "results.md").read_text()
    assert "Paper settings the suite changed: iic (paper setup): batch_size, decode_size, epochs" in md


def test_the_table_of_paper_configurations_matches_the_code():
    """docs/paper-configurations.md is the one place the paper setups are written down: every
    row must say what the method classes hold (backbone, init, input size, optimizer, lr, batch,
    epochs, input convention)."""
    from pathlib import Path

    from backbones import create_backbone
    from methods.base import build_config, create_method

    text = (Path(__file__).parents[1] / "docs" / "paper-configurations.md").read_text()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ") and "`" in line]
    documented = {r[0]: r for r in rows}
    assert set(documented) == {n for n in list_methods() if get_method(n).__module__.startswith("methods.")}  # the built-in ones
    for name, (_, backbone, init, size, _stride, convention, optimizer, lr, batch, epochs, *_rest) in documented.items():
        cls, config = get_method(name), build_config(get_method(name))
        assert backbone == f"`{cls.paper_backbone}`" and init == cls.backbone_init, name
        assert size == f"{config.frames} x {config.crop}", name
        assert (optimizer, float(lr), int(batch), int(epochs)) == (cls.recipe.optimizer, cls.recipe.lr, cls.recipe.batch_size, cls.recipe.epochs)
        method = create_method(name, create_backbone("r3d_tiny"), dataset_size=64, overrides={"frames": 8, "crop": 32})
        assert ("not normalised" in convention) == (not method.encoder_input().normalize), name
