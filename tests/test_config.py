"""Typed configs: unknown keys, wrong types, unknown names are errors that name the key."""

import pytest

from core.config import ConfigError, PretrainConfig, config_hash, from_dict, resolve_recipe
from methods.base import Recipe, build_config, get_method


def test_nested_tables_and_types_are_filled():
    cfg = from_dict(PretrainConfig, {"method": "moco", "data": {"path": "x", "split": 2}, "lr": 1, "milestones": [4, 8]})
    assert cfg.data.split == 2 and cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.milestones == (4.0, 8.0)


def test_unknown_key_names_the_key_and_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"data\.splti: unknown key; allowed keys are backend, cache_gb, flow_root, format, missing, path, split"):
        from_dict(PretrainConfig, {"data": {"splti": 1}})


@pytest.mark.parametrize("key,value,expected", [("epochs", "ten", "epochs: expected int"), ("amp", 1, "amp: expected bool"),
                                                 ("milestones", [1, "x"], r"milestones\[1\]: expected float")])
def test_wrong_types_name_the_key(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        from_dict(PretrainConfig, {key: value})


def test_method_config_overrides_are_validated():
    cfg = build_config(get_method("moco"), {"queue_size": 256})
    assert cfg.queue_size == 256 and cfg.temperature == 0.07
    with pytest.raises(ConfigError, match=r"method\.moco\.queue: unknown key; allowed keys are crop, embed_dim, frames"):
        build_config(get_method("moco"), {"queue": 256})


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(KeyError, match="registered methods: .*moco"):
        get_method("simclr")


def test_epoch_override_scales_the_milestones():
    recipe = Recipe(epochs=240, milestones=(45, 90, 125, 160))
    scaled = resolve_recipe(recipe, PretrainConfig(epochs=24))
    assert scaled.epochs == 24 and scaled.milestones == (4.5, 9.0, 12.5, 16.0)
    explicit = resolve_recipe(recipe, PretrainConfig(epochs=24, milestones=(10,), lr=0.5))
    assert explicit.milestones == (10.0,) and explicit.lr == 0.5


def test_every_recipe_field_can_be_overridden_by_its_own_name():
    """SGD momentum is `sgd_momentum` (a method's EMA momentum lives in method_args), Adam's
    `betas` reach the recipe, and no Recipe field lacks a run-level override."""
    adam = resolve_recipe(Recipe(optimizer="adam"), from_dict(PretrainConfig, {"betas": [0.5, 0.9], "sgd_momentum": 0.8}))
    assert adam.betas == (0.5, 0.9) and adam.sgd_momentum == 0.8
    with pytest.raises(ConfigError, match=r"^momentum: unknown key"):
        from_dict(PretrainConfig, {"momentum": 0.9})


def test_config_hash_is_stable_and_sensitive():
    a = config_hash(PretrainConfig(lr=0.1))
    assert a == config_hash(PretrainConfig(lr=0.1)) and a != config_hash(PretrainConfig(lr=0.2))


@pytest.mark.parametrize("key,value,expected", [
    ("lr", float("nan"), r"^lr: expected a finite float > 0, got nan$"),
    ("gamma", float("inf"), r"^gamma: expected a finite float > 0, got inf$"),
    ("batch_size", 0, r"^batch_size: expected int >= 1, got 0$"),
    ("epochs", -3, r"^epochs: expected int >= 1, got -3$"),
    ("steps_per_epoch", 0, r"^steps_per_epoch: expected int >= 1, got 0$"),
    ("accumulate", 0, r"^accumulate: expected int >= 1, got 0$"),
    ("weight_decay", -1e-4, r"^weight_decay: expected a finite float >= 0, got -0.0001$"),
    ("sgd_momentum", 1.0, r"^sgd_momentum: expected a finite float in \[0, 1\), got 1.0$"),
    ("betas", [0.9, 1.0], r"^betas\[1\]: expected a finite float in \[0, 1\), got 1(\.0)?$"),
    ("clip_grad", float("-inf"), r"^clip_grad: expected a finite float >= 0, got -inf$"),
    ("warmup_epochs", float("nan"), r"^warmup_epochs: expected a finite float >= 0, got nan$"),
    ("milestones", [4, -1], r"^milestones\[1\]: expected a finite float >= 0, got -1(\.0)?$"),
    ("checkpoint_every", 0, r"^checkpoint_every: expected int >= 1, got 0$"),
])
def test_numeric_fields_outside_their_range_name_the_key_and_the_range(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        from_dict(PretrainConfig, {key: value})
    with pytest.raises(ConfigError, match=expected):  # built in Python: the same check
        PretrainConfig(**{key: tuple(value) if isinstance(value, list) else value})


def test_range_errors_name_the_file_or_the_nested_key(tmp_path, capsys):
    from harness.cli import main

    with pytest.raises(ConfigError, match=r"^data\.workers: expected int >= 0, got -1$"):
        from_dict(PretrainConfig, {"data": {"workers": -1}})
    toml = tmp_path / "run.toml"
    toml.write_text("lr = nan\n")
    assert main(["pretrain", "--config", str(toml), "--data", str(tmp_path)]) == 2
    assert f"{toml}.lr: expected a finite float > 0, got nan" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(tmp_path), "--set", "epochs=-3"]) == 2
    assert "epochs: expected int >= 1, got -3" in capsys.readouterr().err


def test_the_ends_of_the_valid_ranges_are_accepted():
    cfg = from_dict(PretrainConfig, {"sgd_momentum": 0, "weight_decay": 0, "clip_grad": 0, "warmup_epochs": 0, "knn_every": 0,
                                     "milestones": [0], "epochs": 1, "lr": 1e-12, "data": {"workers": 0}})
    assert cfg.sgd_momentum == 0.0 and cfg.clip_grad == 0.0 and cfg.epochs == 1


def test_unreadable_inputs_end_in_one_error_line_naming_what_to_fix(tmp_path, motionshapes_tiny, capsys):
    import torch

    from harness.cli import main

    toml = tmp_path / "latin1.toml"
    toml.write_bytes(b'name = "caf\xe9"\n')  # Latin-1, not UTF-8
    assert main(["run", str(toml), "--dry-run"]) == 2
    assert f"{toml}: not UTF-8 text (byte 11)" in capsys.readouterr().err
    missing = tmp_path / "no-such-data"
    assert main(["pretrain", "--method", "moco", "--data", str(missing), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert f"{missing}: no such file or folder" in capsys.readouterr().err
    if not torch.cuda.is_available():
        args = ["pretrain", "--method", "moco", "--backbone", "r3d_tiny", "--data", str(motionshapes_tiny), "--device", "cuda",
                "--output-dir", str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
        assert main(args) == 2
        assert "device = 'cuda' was asked for, but torch finds no usable GPU" in capsys.readouterr().err


def test_a_method_config_without_frames_and_crop_is_refused_at_registration():
    from dataclasses import dataclass

    from methods.base import Method, list_methods, register_method

    @dataclass(frozen=True)
    class OnlyFrames:
        frames: int = 4

    class NoCrop(Method):
        Config = OnlyFrames

    class NotADataclass(Method):
        Config = dict

    with pytest.raises(TypeError, match=r"NoCrop\.Config lacks field\(s\) crop: every method's Config has frames and crop"):
        register_method("config_rule_test")(NoCrop)
    with pytest.raises(TypeError, match=r"NotADataclass\.Config must be a dataclass"):
        register_method("config_rule_test")(NotADataclass)
    assert "config_rule_test" not in list_methods()


def test_eval_configures_each_protocol_in_its_own_table_and_shares_the_features_once():
    from evaluation.evaluate import EvalConfig
    from evaluation.protocols import FeatureProtocol, RetrievalProtocol

    config = from_dict(EvalConfig, {"protocols": ["retrieval", "linear", "knn"], "features": {"clips": 3},
                                    "linear": {"cs": [0.1, 1], "val_fraction": 0.25}, "knn": {"k": 5}, "retrieval": {"ks": [1, 2]}})
    protocols = config.protocol_objects()
    assert protocols["linear"].cs == (0.1, 1.0) and protocols["linear"].val_fraction == 0.25
    assert protocols["knn"].k == 5 and protocols["retrieval"].ks == (1, 2)
    assert {p.features.clips for p in protocols.values()} == {3}  # one [eval.features] for every feature protocol
    with pytest.raises(ConfigError, match=r"^eval\.retrieval\.features: the features are shared .* set them once in \[eval\.features\]$"):
        EvalConfig(retrieval=RetrievalProtocol(features=FeatureProtocol(clips=2)))
    with pytest.raises(ConfigError, match=r"^eval\.knn_k: unknown key"):
        from_dict(EvalConfig, {"knn_k": 5}, where="eval")
