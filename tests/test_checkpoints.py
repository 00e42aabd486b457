"""Other people's weights: torchvision's video models and plain state dicts read into vsbench's
backbones by format, every key accounted for, and evaluated by `vsbench eval` and by a suite row
labelled with the file's name and hash. (The papers' formats: tests/test_checkpoint_formats_papers.py.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torchvision.models.video as tv_video
from mlflow.tracking import MlflowClient

from backbones import CheckpointMismatch, create_backbone, load_external
from backbones.checkpoint_formats import KINETICS_INPUT
from backbones.checkpoints import file_sha256, parse_key_map
from core.data.encoder_input import EncoderTraining, InputConvention, to_encoder_input
from core.data.transforms import KINETICS_MEAN, KINETICS_STD
from harness.cli import CHECKPOINT_FORMATS, main
from harness.external import import_checkpoint
from harness.train import load_checkpoint
from tests.helpers import write_ucf_like


def _save(tmp_path: Path, obj, name: str = "weights.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


# --------------------------------------------------------------------------------------------
# torchvision: the features of torchvision's own model


@pytest.mark.parametrize("theirs, ours, size", [
    (tv_video.r3d_18, "r3d_18", 32),
    (tv_video.mc3_18, "mc3_18", 32),
    (tv_video.r2plus1d_18, "r2plus1d_18", 32),
    (tv_video.s3d, "s3d", 64),
])
def test_a_torchvision_state_dict_gives_torchvisions_features(tmp_path, theirs, ours, size):
    torch.manual_seed(0)
    reference = theirs().eval()
    for m in reference.modules():  # running statistics away from 0/1, so a BN loaded wrongly shows
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = _save(tmp_path, reference.state_dict())
    model, report = load_external(path, "torchvision", ours)
    head = "classifier" if ours == "s3d" else "fc"
    assert report.dropped == [k for k in reference.state_dict() if k.startswith(f"{head}.")] and report.dropped
    assert report.loaded == len(model.state_dict()) and report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    x = torch.rand(2, 3, 8, size, size)
    with torch.no_grad():
        expected = reference.features(x).mean((2, 3, 4)) if ours == "s3d" else _without_fc(reference)(x)
        assert torch.allclose(model.eval()(x), expected, atol=1e-5, rtol=1e-4)


def _without_fc(model: torch.nn.Module) -> torch.nn.Module:
    model.fc = torch.nn.Identity()
    return model


def test_torchvision_weights_are_fed_kinetics_normalised_clips():
    """torchvision's Kinetics-400 recipe: [0, 1] RGB, Kinetics mean/std (not ImageNet's)."""
    x = torch.rand(1, 3, 2, 4, 4)
    mean, std = torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1, 1), torch.tensor(KINETICS_STD).view(1, 3, 1, 1, 1)
    assert torch.allclose(to_encoder_input(x, KINETICS_INPUT), (x - mean) / std)
    assert KINETICS_INPUT.to_dict()["stats"] == "kinetics" and "stats" not in InputConvention().to_dict()  # old hashes kept
    assert InputConvention.from_dict(KINETICS_INPUT.to_dict()) == KINETICS_INPUT
    with pytest.raises(ValueError, match="stats must be one of"):
        InputConvention(stats="imagenet21k")


# --------------------------------------------------------------------------------------------
# Every key accounted for, by name


@pytest.fixture
def tiny_state():
    torch.manual_seed(0)
    return create_backbone("r3d_tiny").state_dict()


def test_an_unused_key_a_missing_key_and_a_shape_mismatch_are_each_named(tmp_path, tiny_state):
    extra = _save(tmp_path, {**tiny_state, "head.weight": torch.zeros(3)}, "extra.pth")
    with pytest.raises(CheckpointMismatch, match=r"unused keys \(not in the backbone\): head\.weight"):
        load_external(extra, "state_dict", "r3d_tiny")
    missing = _save(tmp_path, {k: v for k, v in tiny_state.items() if k != "layer4.0.conv2.1.weight"}, "missing.pth")
    with pytest.raises(CheckpointMismatch, match=r"missing keys \(the backbone needs them\): layer4\.0\.conv2\.1\.weight$"):
        load_external(missing, "state_dict", "r3d_tiny")
    shape = _save(tmp_path, {**tiny_state, "stem.0.weight": torch.zeros(16, 3, 1, 7, 7)}, "shape.pth")
    with pytest.raises(CheckpointMismatch, match=r"stem\.0\.weight: checkpoint \(16, 3, 1, 7, 7\), backbone \(16, 3, 3, 7, 7\)"):
        load_external(shape, "state_dict", "r3d_tiny")


def test_a_key_map_renames_and_drops_and_the_container_is_found(tmp_path, tiny_state):
    wrapped = {"epoch": 7, "state_dict": {**{f"module.encoder.{k}": v for k, v in tiny_state.items()},
                                          "module.proj.weight": torch.zeros(4, 4)}}
    path = _save(tmp_path, wrapped)
    rules = parse_key_map([r"encoder\.(.*)=\1", r"proj\..*="])
    model, report = load_external(path, "state_dict", "r3d_tiny", key_map=rules)
    assert report.dropped == ["module.proj.weight"] and report.loaded == len(tiny_state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny_state.items())
    wrapped["state_dict"]["module.encoder.head.bias"] = torch.zeros(2)  # a renamed key at fault is named as the file names it
    with pytest.raises(CheckpointMismatch, match=r"unused keys \(not in the backbone\): head\.bias \(in the file: module\.encoder\.head\.bias\)"):
        load_external(_save(tmp_path, wrapped, "more.pth"), "state_dict", "r3d_tiny", key_map=rules)


def test_two_keys_mapped_to_one_name_are_refused(tmp_path, tiny_state):
    path = _save(tmp_path, {**tiny_state, "copy.stem.0.weight": tiny_state["stem.0.weight"]})
    with pytest.raises(CheckpointMismatch, match=r"keys 'stem.0.weight' and 'copy.stem.0.weight' both map to 'stem.0.weight'"):
        load_external(path, "state_dict", "r3d_tiny", key_map=parse_key_map([r"copy\.(.*)=\1"]))


@pytest.mark.parametrize("rule, message", [("noequals", "expected PATTERN=REPLACEMENT"), ("=x", "expected PATTERN=REPLACEMENT"),
                                           ("a(=b", "not a regular expression")])
def test_a_malformed_key_map_is_refused(rule, message):
    with pytest.raises(ValueError, match=message):
        parse_key_map([rule])


def test_files_without_a_state_dict_or_with_code_are_refused(tmp_path):
    with pytest.raises(CheckpointMismatch, match=r"empty.pth: no state dict found for format 'state_dict' .*\['epoch'\]"):
        load_external(_save(tmp_path, {"epoch": 3}, "empty.pth"), "state_dict", "r3d_tiny")
    with pytest.raises(CheckpointMismatch, match="cannot be read as weights only"):
        load_external(_save(tmp_path, {"model": Path("x")}, "pickled.pth"), "state_dict", "r3d_tiny")
    with pytest.raises(CheckpointMismatch, match=r"format 'torchvision' describes backbones r3d_18, mc3_18, r2plus1d_18, s3d, not 'c3d'"):
        load_external(_save(tmp_path, {"a": torch.zeros(1)}), "torchvision", "c3d")
    with pytest.raises(KeyError, match="unknown checkpoint format 'tf'; registered formats: .*torchvision"):
        load_external(_save(tmp_path, {"a": torch.zeros(1)}), "tf", "c3d")


def test_the_help_names_every_registered_format():
    from backbones import list_formats

    assert sorted(CHECKPOINT_FORMATS) == list_formats()


# --------------------------------------------------------------------------------------------
# Imported as an encoder.pt, evaluated by `vsbench eval` and by a suite row


def test_an_import_records_the_source_and_the_training_and_is_made_once(tmp_path):
    torch.manual_seed(0)
    reference = tv_video.r3d_18()
    path = _save(tmp_path, reference.state_dict(), "r3d_18-kinetics.pth")
    encoder, report = import_checkpoint(path, "torchvision", "r3d_18", root=tmp_path / "external")
    saved = load_checkpoint(encoder)
    assert encoder.parent.name == f"r3d_18-kinetics.pth-{file_sha256(path)[:12]}-torchvision-r3d_18"
    assert saved["backbone"] == "r3d_18" and saved["source"]["label"] == report.label == f"r3d_18-kinetics.pth@{file_sha256(path)[:12]}"
    assert saved["source"]["dropped"] == ["fc.weight", "fc.bias"]
    assert EncoderTraining.from_dict(saved["training"]) == EncoderTraining(stride=2, input=KINETICS_INPUT)
    stamp = encoder.stat().st_mtime_ns
    assert import_checkpoint(path, "torchvision", "r3d_18", root=tmp_path / "external")[0] == encoder
    assert encoder.stat().st_mtime_ns == stamp  # the same file with the same rules: not written again


def test_eval_of_a_plain_state_dict_needs_its_input_said_and_tags_the_checkpoint(tmp_path, monkeypatch, capsys, tiny_state):
    monkeypatch.chdir(tmp_path)
    ucf = write_ucf_like(tmp_path / "ucf", {"MoveLeft": 3, "MoveRight": 3})
    path = _save(tmp_path, {f"encoder.{k}": v for k, v in tiny_state.items()}, "mine.pt")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = ["eval", str(path), "--data", str(ucf), "--protocols", "knn", "--device", "cpu", "--tracking-uri", uri,
            "--checkpoint-format", "state_dict", "--backbone", "r3d_tiny", "--key-map", r"encoder\.(.*)=\1"]
    small = ["workers=0", "knn.k=3", "features.clips=1", "features.frames=4", "features.resize=[32,43]", "features.crop=32"]
    assert main(base + [a for s in small for a in ("--set", s)]) == 2  # a plain state dict does not say its stride and input
    assert "features.stride, features.modality, features.normalize_input, features.value_range" in capsys.readouterr().err
    said = small + ["features.stride=1", "features.modality=rgb", "features.normalize_input=true", "features.value_range=[0,1]"]
    assert main(base + [a for s in said for a in ("--set", s)]) == 0
    out = capsys.readouterr().out
    assert f"mine.pt@{file_sha256(path)[:12]}: {len(tiny_state)} tensors loaded into r3d_tiny" in out and "eval/knn/top1" in out
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("vsbench-eval").experiment_id])
    assert run.data.tags["checkpoint.sha256"] == file_sha256(path) and run.data.tags["checkpoint.format"] == "state_dict"
    assert main(["eval", str(path), "--data", str(ucf), "--backbone", "r3d_tiny"]) == 2
    assert "give its --checkpoint-format too" in capsys.readouterr().err


SUITE = """
name = "ext"
seeds = [0]
backbones = ["r3d_tiny"]
methods = []
[data]
path = "{data}"
workers = 0
[pretrain]
device = "cpu"
output_dir = "runs"
[eval]
protocols = ["knn"]
workers = 0
[eval.knn]
k = 3
[eval.features]
clips = 1
frames = 4
resize = [32, 43]
crop = 32

[[checkpoints]]
file = "{file}"
format = "state_dict"
backbone = "r3d_tiny"
"""


def test_a_suite_row_of_an_external_checkpoint_is_labelled_by_file_name_and_hash(tmp_path, monkeypatch, tiny_state):
    from harness.suite import run_suite

    monkeypatch.chdir(tmp_path)
    ucf = write_ucf_like(tmp_path / "ucf", {"MoveLeft": 3, "MoveRight": 3})
    path = _save(tmp_path, tiny_state, "theirs.pt")
    suite = tmp_path / "ext.toml"
    suite.write_text(SUITE.format(data=ucf, file=path.name))  # relative to the suite file
    with pytest.raises(Exception, match=r"checkpoints\[0\] .*theirs.pt.*features.stride"):  # checked before anything runs
        run_suite(suite)
    said = "\nstride = 1\nmodality = \"rgb\"\nnormalize_input = true\nvalue_range = [0.0, 1.0]\n"
    suite.write_text(SUITE.format(data=ucf, file=path.name).replace("crop = 32\n", "crop = 32" + said))
    records = run_suite(suite)
    label = f"theirs.pt@{file_sha256(path)[:12]}"
    assert [r["row"] for r in records if "run_id" in r] == [label]
    table = Path(records[-1]["report"]["markdown"]).read_text()
    assert f"| {label} |" in table
    assert run_suite(suite)[0]["skipped"]  # finished before: skipped


# --------------------------------------------------------------------------------------------
# Paper protocols


def test_fields_added_later_leave_every_earlier_hash_as_it_was():
    from evaluation.protocols import FeatureProtocol, FinetuneProtocol, KNNProtocol, LinearProtocol, RetrievalProtocol

    # the hashes of the default protocols before normalize_stats and ties existed (commit 0a971e4)
    before = {FeatureProtocol: "f34bd8daa3", RetrievalProtocol: "40104b2c1f", KNNProtocol: "f5ddcd5cf4",
              LinearProtocol: "1ce6cfb737", FinetuneProtocol: "bcd8bbf88e"}
    assert {cls: cls().hash() for cls in before} == before
    assert RetrievalProtocol(ties="numpy_argsort").hash() != before[RetrievalProtocol]
    assert FeatureProtocol(normalize_stats="kinetics").hash() != before[FeatureProtocol]
    with pytest.raises(ValueError, match="ties must be one of"):
        RetrievalProtocol(ties="random")


def test_numpy_argsort_ties_rank_as_iics_retrieval_script_does():
    """40 gallery videos with only two distinct features: which tied neighbours come first is
    numpy's quicksort order over scikit-learn's float64 cosine distances, not the lowest index."""
    import numpy as np
    from sklearn.metrics.pairwise import cosine_distances

    from evaluation.retrieval import numpy_argsort_neighbours, topk_neighbours

    gen = torch.Generator().manual_seed(0)
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[torch.randint(0, 2, (40,), generator=gen)]
    queries = torch.rand(5, 2, generator=gen)
    ours = numpy_argsort_neighbours(queries, gallery, 10)
    expected = np.argsort(cosine_distances(queries.double().numpy(), gallery.double().numpy()), axis=1)[:, :10]
    assert torch.equal(ours, torch.from_numpy(expected))
    shared = topk_neighbours(queries, gallery, 10)[1]
    assert not torch.equal(ours, shared)  # the shared rule ranks ties by index: other videos among the tied ones
    assert torch.equal(gallery[ours], gallery[shared])  # ... with the same features


@pytest.mark.parametrize("paper", ["iic", "mscl", "dclr"])
def test_every_paper_protocol_is_a_valid_eval_config_that_changes_a_hash(paper):
    from core.config import from_dict
    from evaluation.evaluate import EvalConfig, paper_protocol, protocol_tags

    changed = protocol_tags(from_dict(EvalConfig, paper_protocol(paper)))
    shared = protocol_tags(EvalConfig())
    assert set(changed) == set(shared) and changed != shared


def test_the_iic_paper_protocol_is_iics_retrieval_setting_and_the_set_values_win(tmp_path, monkeypatch, capsys, tiny_state):
    from core.config import from_dict, merge_tables
    from evaluation.evaluate import EvalConfig, paper_protocol

    config = from_dict(EvalConfig, paper_protocol("iic"))
    f = config.features
    assert (f.clips, f.frames, f.stride, f.layer, f.modality, f.normalize_input, f.value_range) == (
        10, 16, 1, "conv5_maxpool", "residual", False, (0.0, 1.0))
    assert config.retrieval.ties == "numpy_argsort" and config.finetune.epochs == 150 and not config.finetune.flip
    with pytest.raises(Exception, match="no paper protocol 'vcop'; available: .*iic"):
        paper_protocol("vcop")
    monkeypatch.chdir(tmp_path)
    ucf = write_ucf_like(tmp_path / "ucf", {"MoveLeft": 3, "MoveRight": 3})
    path = _save(tmp_path, tiny_state, "theirs.pt")
    small = ["workers=0", "retrieval.ks=[1,2]", "features.clips=2", "features.resize=[32,43]", "features.crop=32"]
    assert main(["eval", str(path), "--data", str(ucf), "--protocols", "retrieval", "--device", "cpu", "--paper-protocol", "iic",
                 "--checkpoint-format", "state_dict", "--backbone", "r3d_tiny", "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                 *(a for s in small for a in ("--set", s))]) == 0
    assert "eval/retrieval/R2" in capsys.readouterr().out
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    [run] = client.search_runs([client.get_experiment_by_name("vsbench-eval").experiment_id])
    merged = from_dict(EvalConfig, merge_tables(paper_protocol("iic"), {"protocols": ["retrieval"], "retrieval": {"ks": [1, 2]},
                                                                        "features": {"clips": 2, "resize": [32, 43], "crop": 32}}))
    assert run.data.tags["paper_protocol"] == "iic" and run.data.tags["protocol.retrieval"] == merged.protocol_objects()["retrieval"].hash()


def test_a_checkpoint_row_with_a_paper_protocol_gets_its_own_columns(tmp_path, monkeypatch, tiny_state):
    from harness.suite import run_suite

    monkeypatch.chdir(tmp_path)
    ucf = write_ucf_like(tmp_path / "ucf", {"MoveLeft": 3, "MoveRight": 3})
    path = _save(tmp_path, tiny_state, "theirs.pt")
    suite = tmp_path / "ext.toml"
    said = "\nstride = 1\nmodality = \"rgb\"\nnormalize_input = true\nvalue_range = [0.0, 1.0]\n"
    suite.write_text(SUITE.format(data=ucf, file=path.name).replace("crop = 32\n", "crop = 32" + said) + 'paper_protocol = "iic"\n')
    records = run_suite(suite)
    runs = [r for r in records if "run_id" in r]
    assert len(runs) == 2 and {r["row"] for r in runs} == {f"theirs.pt@{file_sha256(path)[:12]}"}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    knn = {client.get_run(r["run_id"]).data.tags.get("paper_protocol", "shared"): client.get_run(r["run_id"]).data.tags["protocol.knn"]
           for r in runs}
    assert set(knn) == {"shared", "iic"} and knn["shared"] != knn["iic"]
    header = Path(records[-1]["report"]["markdown"]).read_text().split("\n| :")[0].splitlines()[-1]
    assert header.count("kNN top-1 [") == 2  # one column per protocol hash


def test_the_same_checkpoint_twice_on_one_backbone_is_refused_before_anything_runs(tmp_path, monkeypatch, tiny_state):
    """Two entries would be one table row, the second run's values replacing the first's."""
    from core.config import ConfigError
    from harness.suite import run_suite

    monkeypatch.chdir(tmp_path)
    ucf = write_ucf_like(tmp_path / "ucf", {"MoveLeft": 3, "MoveRight": 3})
    path = _save(tmp_path, {f"encoder.{k}": v for k, v in tiny_state.items()}, "theirs.pt")
    said = "\nstride = 1\nmodality = \"rgb\"\nnormalize_input = true\nvalue_range = [0.0, 1.0]\n"
    entry = SUITE.format(data=ucf, file=path.name).split("[[checkpoints]]")[1] + 'key_map = ["encoder\\\\.(.*)=\\\\1"]\n'
    suite = tmp_path / "ext.toml"
    suite.write_text(SUITE.format(data=ucf, file=path.name).replace("crop = 32\n", "crop = 32" + said).split("[[checkpoints]]")[0]
                     + "[[checkpoints]]" + entry + "\n[[checkpoints]]" + entry.replace("\\\\1", "\\\\g<1>"))
    with pytest.raises(ConfigError, match=rf"checkpoints\[0\] and checkpoints\[1\] are both row 'theirs.pt@{file_sha256(path)[:12]}' on r3d_tiny"):
        run_suite(suite)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
