"""The `vsbench data` commands end to end, on real MotionShapes files; `vsbench methods`,
`vsbench backbones` and `vsbench eval` (a real encoder file, real videos, a real MLflow store)."""

import subprocess
import sys

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from backbones import create_backbone, describe_backbones, list_backbones
from core.config import DataConfig, UnknownNameError, from_dict
from core.data.datasets import load_ucf101
from core.data.encoder_input import EncoderTraining
from core.data.modalities import read_flow
from core.data.synthetic import CLASS_NAMES
from evaluation.evaluate import EvalConfig, evaluate_encoder, protocol_tags
from harness.cli import main
from harness.train import save_checkpoint
from methods.base import Method, Recipe, get_method, list_methods
from tests.helpers import TinyConfig, registered_method, truncate, write_ucf_like


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "motionshapes-tiny"
    assert main(["data", "synth", "--preset", "tiny", "--out", str(out), "--workers", "2"]) == 0
    return out


def test_motionshapes_reads_back_through_the_ucf101_reader(tiny):
    meta = pd.read_csv(tiny / "motionshapes_meta.csv")
    for subset in ("train", "test"):
        ds = load_ucf101(tiny, split=1, subset=subset, progress=False)
        assert ds.classes == list(CLASS_NAMES)
        expected = meta[meta.split1 == subset]
        assert sorted((r.key + ".avi", r.label) for r in ds.records) == sorted(zip(expected.path, expected.label))
        assert all(r.ok and r.num_frames == n for r, n in zip(sorted(ds.records, key=lambda r: r.key), expected.sort_values("path").frames))


def test_data_check_prints_the_table(tiny, capsys):
    assert main(["data", "check", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "split1/train" in out and "split3/test" in out and "OscillateVertical" in out
    assert "Corrupt videos: 0" in out and "Too-short videos: 0" in out


def test_data_flow_builds_a_readable_cache(tiny, capsys):
    assert main(["data", "flow", str(tiny), "--workers", "2"]) == 0
    assert "48 videos computed" in capsys.readouterr().out
    flow = read_flow(tiny / "flow", "v_MoveUp_g01_c01", [0, 1, 2])
    assert flow.shape == (3, 64, 86, 2)
    assert main(["data", "flow", str(tiny), "--workers", "2"]) == 0  # resumed: nothing left to do
    assert "0 videos computed, 48 already present" in capsys.readouterr().out


def test_data_check_names_corrupt_videos(tmp_path, capsys):
    out = tmp_path / "ms"
    main(["data", "synth", "--preset", "tiny", "--out", str(out), "--workers", "1", "--classes", "2"])
    bad = out / "UCF-101" / "MoveUp" / "v_MoveUp_g02_c01.avi"
    truncate(bad, 0.6)
    assert main(["data", "check", str(out), "--split", "1"]) == 1
    report = capsys.readouterr().out
    assert "Corrupt videos: 1" in report and str(bad) in report


def test_a_bad_split_file_is_one_line_naming_file_and_line(tmp_path, capsys):
    out = tmp_path / "ms"
    main(["data", "synth", "--preset", "tiny", "--out", str(out), "--workers", "1", "--classes", "2"])
    with open(out / "ucfTrainTestlist" / "trainlist01.txt", "a") as f:
        f.write("Juggling/v_Juggling_g01_c01.avi 3\n")
    assert main(["data", "check", str(out)]) == 2
    err = capsys.readouterr().err
    assert "trainlist01.txt:" in err and "unknown class 'Juggling'" in err


def test_unknown_preset_lists_the_valid_ones(tmp_path, capsys):
    assert main(["data", "synth", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert "choose one of tiny, small, bench, standard" in capsys.readouterr().err


def test_console_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "harness.cli", "data", "synth", "--help"], capture_output=True, text=True, check=True)
    assert "MotionShapes" in out.stdout and "--preset" in out.stdout


# ----------------------------------------------------------------------------- vsbench methods, vsbench backbones


def _listed_methods(capsys) -> dict[str, list[str]]:
    """`vsbench methods`: name -> its two lines (summary, recipe)."""
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) % 2 == 0 and all(ln.startswith(" ") for ln in lines[1::2]), lines
    return {lines[i].split()[0]: lines[i : i + 2] for i in range(0, len(lines), 2)}


def test_methods_lists_every_registered_method_with_its_docstring_and_recipe(capsys):
    listed = _listed_methods(capsys)
    assert list(listed) == list_methods(include_reference=True) and {"moco", "supervised"} <= listed.keys()
    for name, (summary, recipe) in listed.items():
        cls, r = get_method(name), get_method(name).recipe
        assert summary.split(None, 1)[1].startswith(cls.__doc__.strip().splitlines()[0]), name
        assert summary.endswith("[reference row, uses labels]") == cls.reference, name
        assert recipe.split() == ["recipe:", r.optimizer, "lr", str(r.lr), "wd", f"{r.weight_decay},", r.schedule,
                                  *str(list(r.milestones)).split(), f"x{r.gamma},", str(r.epochs), "epochs,", "batch", str(r.batch_size)], name
    assert listed["supervised"][0].endswith("[reference row, uses labels]")


class _Listed(Method):
    """A method that exists for the length of one test."""

    Config = TinyConfig
    recipe = Recipe(optimizer="adamw", lr=0.125, weight_decay=0.0, schedule="cosine", epochs=7, batch_size=6)


def test_a_method_registered_by_a_test_is_listed_inside_its_block_only(capsys):
    before = list_methods(include_reference=True)
    with registered_method("listing_test", _Listed):
        listed = _listed_methods(capsys)
        assert list(listed) == sorted([*before, "listing_test"])
        assert listed["listing_test"][0].split(None, 1)[1] == "A method that exists for the length of one test."
        assert listed["listing_test"][1].split() == "recipe: adamw lr 0.125 wd 0.0, cosine [] x0.1, 7 epochs, batch 6".split()
    assert list_methods(include_reference=True) == before and list(_listed_methods(capsys)) == before  # the registry as it was
    with pytest.raises(UnknownNameError, match="unknown method 'listing_test'"):
        get_method("listing_test")
    moco = get_method("moco")
    with pytest.raises(ValueError, match="'moco' is already registered"), registered_method("moco", _Listed):
        pass
    assert get_method("moco") is moco and list_methods(include_reference=True) == before  # a refused name is left alone


def test_backbones_prints_one_row_per_backbone_with_its_size_and_cost(capsys):
    assert main(["backbones"]) == 0
    header, index, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["params", "gmacs", "feature_dim", "layer4_shape"] and index.split() == ["name"]
    printed = {r.split()[0]: r.split(None, 4)[1:] for r in rows}
    assert list(printed) == list_backbones() and {"r3d_18", "r3d_tiny"} <= printed.keys()
    for name, (params, gmacs, feature_dim, layer4) in printed.items():
        assert int(params) > 0 and float(gmacs) > 0 and layer4.startswith(f"({feature_dim}, "), name
    # torchvision's r3d_18 without its fc: 33,166,272 parameters, 40.7 GMACs at 16x112x112
    assert printed["r3d_18"][:3] == ["33166272", "40.70", "512"] and printed["r3d_18"][3] == "(512, 2, 7, 7)"
    [tiny] = describe_backbones(["r3d_tiny"])
    assert printed["r3d_tiny"] == [str(tiny["params"]), f"{tiny['gmacs']:.2f}", str(tiny["feature_dim"]), str(tiny["layer4_shape"])]


# ----------------------------------------------------------------------------- vsbench eval


def test_eval_prints_and_records_what_evaluate_encoder_computes(tmp_path, monkeypatch, capsys):
    """A saved r3d_tiny encoder through retrieval and kNN on 4 gallery and 2 query videos: the
    command prints and logs the metrics the library call gives, tagged with the protocol hashes a
    suite with the same [eval] settings would tag."""
    monkeypatch.chdir(tmp_path)
    ucf = write_ucf_like(tmp_path / "ucf", {"MoveLeft": 3, "MoveRight": 3})
    torch.manual_seed(0)
    backbone = create_backbone("r3d_tiny")
    encoder = tmp_path / "run" / "encoder.pt"
    encoder.parent.mkdir()
    save_checkpoint(encoder, {"backbone": "r3d_tiny", "backbone_args": {}, "training": EncoderTraining().to_dict(),
                              "state_dict": backbone.state_dict()})
    settings = ["workers=0", "knn.k=3", "retrieval.ks=[1,2]", "features.clips=2", "features.frames=4", "features.resize=[32,64]",
                "features.crop=32"]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["eval", str(encoder), "--data", str(ucf), "--protocols", "retrieval,knn", "--device", "cpu", "--tracking-uri", uri,
                 *(a for s in settings for a in ("--set", s))]) == 0
    printed = {ln.split()[0]: float(ln.split()[1]) for ln in capsys.readouterr().out.splitlines() if ln.startswith("eval/")}

    config = from_dict(EvalConfig, {"protocols": ["retrieval", "knn"], "workers": 0, "knn": {"k": 3}, "retrieval": {"ks": [1, 2]},
                                    "features": {"clips": 2, "frames": 4, "resize": [32, 64], "crop": 32}})
    expected = evaluate_encoder(backbone, data=DataConfig(path=str(ucf), workers=0), config=config, device=torch.device("cpu"),
                                trained=EncoderTraining())
    assert set(printed) == set(expected) and {"eval/retrieval/R1", "eval/retrieval/R2", "eval/knn/top1"} <= set(expected)
    assert not any(k.startswith(("eval/linear", "eval/probe", "eval/retrieval/R5")) for k in expected)  # only what was asked
    assert printed == pytest.approx(expected, abs=5e-5)  # printed with 4 decimals

    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("vsbench-eval").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "eval-run"
    assert run.data.metrics == pytest.approx(expected)
    assert {k: run.data.tags.get(k) for k in ("kind", "encoder", "backbone")} == {"kind": "eval", "encoder": str(encoder), "backbone": "r3d_tiny"}
    tags = protocol_tags(config)
    assert set(tags) == {"protocol.retrieval", "protocol.knn"} and {k: run.data.tags.get(k) for k in tags} == tags
    assert any(k.startswith("training.") for k in run.data.params)  # how the encoder was trained, as recorded in encoder.pt
