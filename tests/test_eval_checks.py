"""Evaluation settings and data are checked before any compute; `vsbench run --force`, `--set`, `--dry-run`.

Every case runs the real command line on a small UCF101-layout data set written here (4 train
videos: the gallery; 2 test videos) with a real MLflow sqlite store in tmp_path.
"""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from backbones import create_backbone
from harness.cli import main
from core.data.encoder_input import EncoderTraining
from harness.train import CHECKPOINT, load_checkpoint, save_checkpoint
from tests.helpers import truncate, write_suite, write_ucf_like

RUN_FOLDER = "moco-r3d_tiny-s0"


@pytest.fixture
def ucf(tmp_path):
    """Classes MoveLeft and MoveRight, 3 groups each: group 1 is the test split, groups 2-3 train."""
    return write_ucf_like(tmp_path / "ucf", {"MoveLeft": 3, "MoveRight": 3})


@pytest.fixture
def suite(tmp_path, ucf, monkeypatch):
    """The suite file, with the working folder in tmp_path (the default store and runs/ land there too)."""
    monkeypatch.chdir(tmp_path)
    return write_suite(tmp_path / "suite.toml", ucf, "checks",
                       pretrain={"batch_size": 2, "decode_size": [32, 64], "log_every": 1, "progress": False, "output_dir": str(tmp_path / "runs")},
                       eval={"knn": {"k": 2}, "features": {"resize": [32, 64]}})


def _run(suite, *extra: str) -> int:
    return main(["run", str(suite), "--tracking-uri", f"sqlite:///{suite.parent}/mlflow.db", *extra])


def _error_line(capsys) -> str:
    """The one `vsbench: error:` line a refused command prints."""
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("vsbench: ")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("vsbench: error: ")
    return lines[0]


def _nothing_written(tmp_path) -> bool:
    return not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


# ----------------------------------------------------------------------------- k larger than the gallery


@pytest.mark.parametrize("settings, shown", [
    (["--set", "eval.knn.k=50"], "eval.knn.k = 50: knn ranks the 4 videos of the train split 1 of"),
    (["--set", "eval.protocols=['retrieval']", "--set", "eval.retrieval.ks=[1,5]"], "eval.retrieval.ks = [1, 5]: retrieval ranks the 4 videos"),
])
def test_a_suite_refuses_k_larger_than_the_gallery_before_any_run(suite, ucf, tmp_path, capsys, settings, shown):
    assert _run(suite, *settings) == 2
    line = _error_line(capsys)
    assert f"{suite}: {shown}" in line and str(ucf) in line and "valid: every k at most 4" in line
    assert _nothing_written(tmp_path)  # no run folder, no MLflow store


def test_eval_refuses_k_larger_than_the_gallery_before_extracting(ucf, tmp_path, capsys):
    encoder = tmp_path / "enc" / "encoder.pt"
    encoder.parent.mkdir()
    save_checkpoint(encoder, {"backbone": "r3d_tiny", "backbone_args": {}, "training": EncoderTraining().to_dict(),
                              "state_dict": create_backbone("r3d_tiny").state_dict()})
    small = ["--protocols", "knn", "--device", "cpu", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--set", "workers=0",
             "--set", "features.clips=1", "--set", "features.frames=4", "--set", "features.resize=[32,64]", "--set", "features.crop=32"]
    assert main(["eval", str(encoder), "--data", str(ucf), *small, "--set", "knn.k=5"]) == 2
    line = _error_line(capsys)
    assert "eval.knn.k = 5: knn ranks the 4 videos of the train split 1 of" in line and str(ucf) in line and "at most 4" in line
    assert not (tmp_path / "mlflow.db").exists() and not (encoder.parent / "eval").exists()
    assert main(["eval", str(encoder), "--data", str(ucf), *small, "--set", "knn.k=4"]) == 0  # the whole gallery is a valid k
    assert "eval/knn/top1" in capsys.readouterr().out


# ----------------------------------------------------------------------------- split mismatch, corrupt videos


def test_a_suite_refuses_an_evaluation_split_other_than_data_split(suite, tmp_path, capsys):
    assert _run(suite, "--set", "eval.features.split=2") == 2
    line = _error_line(capsys)
    assert "eval.features.split = 2 but data.split = 1" in line and "set eval.features.split = 1 (or data.split = 2)" in line
    assert _nothing_written(tmp_path)


def test_a_corrupt_test_video_stops_the_suite_before_the_first_run(suite, ucf, tmp_path, capsys):
    bad = truncate(ucf / "UCF-101" / "MoveRight" / "v_MoveRight_g01_c01.avi", 0.5)  # a test video of split 1
    assert _run(suite) == 2
    line = _error_line(capsys)
    assert "1 video(s) of the evaluated train/test lists cannot be decoded" in line
    assert f"{bad}: " in line and "MoveLeft" not in line and f"vsbench data check {ucf}" in line  # that file, and only it
    assert _nothing_written(tmp_path)


# ----------------------------------------------------------------------------- --force starts afresh


def _latest_pretrain_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run, *_] = client.search_runs([client.get_experiment_by_name("checks").experiment_id], "tags.kind = 'pretrain'",
                                   order_by=["attributes.start_time DESC"])
    return run, [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]


@pytest.mark.slow  # three suite runs, each pretraining and evaluating
def test_force_trains_afresh_and_a_changed_config_without_it_is_refused(suite, tmp_path, capsys):
    checkpoint = tmp_path / "runs" / RUN_FOLDER / CHECKPOINT
    assert _run(suite) == 0
    first = load_checkpoint(checkpoint)["config_hash"]
    assert _run(suite, "--force") == 0  # resuming the finished last.pt would make no step and log no train/loss
    run, steps = _latest_pretrain_run(tmp_path)
    assert steps == [1] and run.data.metrics["eval/knn/top1"] >= 0.0
    capsys.readouterr()
    assert _run(suite, "--set", "pretrain.lr=0.01") == 2  # the folder holds the checkpoint of the recipe's lr
    line = _error_line(capsys)
    assert f"{checkpoint} was written by a different configuration" in line and "rerun with --force" in line
    assert _run(suite, "--set", "pretrain.lr=0.01", "--force") == 0
    saved = load_checkpoint(checkpoint)
    run, steps = _latest_pretrain_run(tmp_path)
    assert saved["config_hash"] == run.data.tags["config_hash"] != first and saved["step"] == 1 and steps == [1]
    caption = (tmp_path / "runs" / "report" / "results.md").read_text()  # the table names what changed its settings
    assert f"produced by: `vsbench run {suite} --set pretrain.lr=0.01 --force`" in caption


def test_a_suite_started_again_continues_its_interrupted_parent_run_and_force_ends_an_abandoned_run(suite, tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")

    def runs(kind):
        experiment = client.get_experiment_by_name("checks").experiment_id
        return client.search_runs([experiment], f"tags.kind = '{kind}'", order_by=["attributes.start_time ASC"])

    assert _run(suite) == 0
    [parent], [child] = runs("suite"), runs("pretrain")
    client.update_run(parent.info.run_id, "RUNNING")  # what `kill -9` of the suite leaves in the store
    assert _run(suite) == 0  # nothing to retrain; the interrupted parent is continued, not left RUNNING beside a new one
    [again] = runs("suite")
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    client.update_run(child.info.run_id, "RUNNING")  # a pretraining run killed mid-way
    assert _run(suite, "--force") == 0
    first, fresh = runs("pretrain")
    assert first.info.run_id == child.info.run_id and first.info.status == "KILLED"  # not resumed: --force starts afresh
    assert fresh.info.status == "FINISHED" and len(runs("suite")) == 2  # --force: a new parent too


# ----------------------------------------------------------------------------- --set and --dry-run


def _planned_configs(out: str) -> dict[str, dict]:
    """run name -> resolved config, from the lines `--dry-run` prints."""
    lines = out.splitlines()
    return {ln.split(" (row ")[0]: json.loads(lines[i + 1]) for i, ln in enumerate(lines) if " (row " in ln}


def test_dry_run_prints_the_resolved_configs_and_writes_nothing(suite, tmp_path, capsys):
    assert _run(suite, "--dry-run", "--set", "pretrain.epochs=3", "--set", "seeds=[0,1]", "--set", "references=['random init']") == 0
    out = capsys.readouterr().out
    configs = _planned_configs(out)
    assert sorted(configs) == ["moco-r3d_tiny-s0", "moco-r3d_tiny-s1"]
    assert [c["epochs"] for c in configs.values()] == [3, 3] and [c["seed"] for c in configs.values()] == [0, 1]
    assert "random-init-r3d_tiny-s1 (reference row)" in out and '"k": 2' in out
    assert _nothing_written(tmp_path)
    assert _run(suite, "--dry-run") == 0
    assert {c["epochs"] for c in _planned_configs(capsys.readouterr().out).values()} == {1}  # the file's own value


@pytest.mark.parametrize("settings, message", [
    (["--set", "pretrain.epochz=3"], "pretrain.epochz: unknown key"),
    (["--set", "eval.knn.k=9"], "eval.knn.k = 9"),
    (["--set", "pretrain"], "--set 'pretrain': expected KEY=VALUE"),
])
def test_dry_run_of_an_invalid_suite_exits_2(suite, tmp_path, capsys, settings, message):
    assert _run(suite, "--dry-run", *settings) == 2
    assert message in _error_line(capsys)
    assert _nothing_written(tmp_path)


def test_dry_run_does_not_generate_data_it_would_need(suite, tmp_path, capsys):
    missing = tmp_path / "generated"
    assert _run(suite, "--dry-run", "--set", f"data.path='{missing}'", "--set", "data.synth.preset='tiny'") == 2
    line = _error_line(capsys)
    assert f"data.path = '{missing}' is not generated yet" in line and f"vsbench data synth --preset tiny --out {missing}" in line
    assert not missing.exists() and _nothing_written(tmp_path)
