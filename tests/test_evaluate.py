"""Every protocol on one encoder, fine-tuning, reference rows and the suite's table, on real videos."""

import dataclasses

import pytest
import torch
from mlflow.tracking import MlflowClient

from backbones import create_backbone
from evaluation.evaluate import EvalConfig, evaluate_encoder, protocol_tags
from evaluation.finetune import run_finetune
from evaluation.protocols import EncoderTraining, FeatureProtocol, FinetuneProtocol, KNNProtocol, LinearProtocol, RetrievalProtocol
from harness.cli import main
from core.config import DataConfig, PretrainConfig
from core.data.synthetic import PRESETS, generate_motionshapes
from harness.train import pretrain, train_classifier

FEATURES = FeatureProtocol(clips=2, frames=4, resize=(32, 43), crop=32)
FINETUNE = FinetuneProtocol(epochs=1, batch_size=8, steps_per_epoch=2, frames=4, crop=32, resize=(32, 43), test_clips=3, milestones=())
SMALL_EVAL = EvalConfig(protocols=["retrieval", "linear", "knn", "probe"], features=FEATURES, retrieval_ks=(1, 5, 10),
                        probe_videos=6, workers=0, finetune=FINETUNE)


def _changed(value):
    """Another valid-looking value of the same kind, or None when a field is not a plain scalar/tuple."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return value + (value[-1],) if value else (1,)
    return None


@pytest.mark.parametrize("protocol", [FEATURES, RetrievalProtocol(features=FEATURES), KNNProtocol(), LinearProtocol(), FINETUNE])
def test_protocol_hash_changes_with_any_field(protocol):
    checked = 0
    for f in dataclasses.fields(protocol):
        new = _changed(getattr(protocol, f.name))
        if new is not None:
            assert dataclasses.replace(protocol, **{f.name: new}).hash() != protocol.hash(), f.name
            checked += 1
    assert checked >= 2 and protocol.hash() == dataclasses.replace(protocol).hash()
    if hasattr(protocol, "features"):  # nested protocols: a change in the features changes the hash too
        assert dataclasses.replace(protocol, features=dataclasses.replace(protocol.features, clips=3)).hash() != protocol.hash()


def _encoder():
    torch.manual_seed(0)
    return create_backbone("r3d_tiny")


def test_every_protocol_runs_on_one_encoder_and_is_deterministic(motionshapes_tiny, tmp_path):
    data = DataConfig(path=str(motionshapes_tiny), workers=0)
    a = evaluate_encoder(_encoder(), data=data, config=SMALL_EVAL, device=torch.device("cpu"), examples_path=tmp_path / "ex.png",
                         trained=EncoderTraining())
    b = evaluate_encoder(_encoder(), data=data, config=SMALL_EVAL, device=torch.device("cpu"), trained=EncoderTraining())
    assert a == b
    assert (tmp_path / "ex.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the retrieval example grid
    expected = {"eval/retrieval/R1", "eval/retrieval/R5", "eval/retrieval/R10", "eval/linear/top1", "eval/linear/mean_class_acc",
                "eval/knn/top1", "eval/probe/sim_shuffled", "eval/probe/sim_reversed", "eval/probe/sim_static"}
    assert expected <= a.keys() and "eval/probe/bias_gap" not in a  # no scene bias in this data set
    assert all(0.0 <= a[k] <= 1.0 for k in expected if not k.startswith("eval/probe"))
    assert a["eval/retrieval/R1"] <= a["eval/retrieval/R5"] <= a["eval/retrieval/R10"]
    tags = protocol_tags(SMALL_EVAL)
    assert set(tags) == {"protocol.retrieval", "protocol.linear", "protocol.knn", "protocol.probe"}


def test_static_bias_gap_on_scene_biased_motionshapes(tmp_path):
    config = dataclasses.replace(PRESETS["tiny"], scene_bias=1.0, groups=4)
    root = generate_motionshapes(tmp_path / "biased", config, workers=2, progress=False)
    metrics = evaluate_encoder(_encoder(), data=DataConfig(path=str(root), workers=0),
                               config=dataclasses.replace(SMALL_EVAL, protocols=["knn"]), device=torch.device("cpu"),
                               trained=EncoderTraining())
    assert "eval/probe/bias_gap" in metrics and -1.0 <= metrics["eval/probe/bias_gap"] <= 1.0


def test_finetune_trains_and_tests_every_video(motionshapes_tiny, tmp_path):
    data = DataConfig(path=str(motionshapes_tiny), workers=0)
    metrics, encoder = run_finetune(FINETUNE, backbone="r3d_tiny", data=data, init_encoder=None, seed=0, device="cpu",
                                    output_dir=tmp_path, run_name="ft", trainer=train_classifier)
    assert 0.0 <= metrics["video_top1"] <= 1.0 and 0.0 <= metrics["clip_top1"] <= 1.0
    # 12 test videos, 3 clips each: accuracies are multiples of 1/12 and 1/36
    assert round(metrics["video_top1"] * 12, 6) == round(metrics["video_top1"] * 12) and round(metrics["clip_top1"] * 36, 6) == round(metrics["clip_top1"] * 36)
    assert encoder.feature_dim == 128


def test_online_knn_monitor_is_logged_during_pretraining(motionshapes_tiny, tmp_path):
    cfg = PretrainConfig(method="moco", backbone="r3d_tiny", epochs=2, batch_size=8, steps_per_epoch=1, device="cpu", knn_every=1,
                         method_args={"frames": 4, "crop": 32}, decode_size=(32, 43), output_dir=str(tmp_path / "runs"),
                         tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", progress=False)
    cfg.data.path, cfg.data.workers = str(motionshapes_tiny), 0
    result = pretrain(cfg)
    history = MlflowClient(cfg.tracking_uri).get_metric_history(result.run_id, "eval/knn_online/top1")
    assert [m.step for m in history] == [1, 2]


SUITE = """
name = "tiny-eval"
seeds = [0, 1]
backbones = ["r3d_tiny"]
methods = ["moco"]
references = ["random init", "supervised"]
[data]
path = "{data}"
workers = 0
[pretrain]
device = "cpu"
epochs = 1
batch_size = 8
steps_per_epoch = 1
decode_size = [32, 43]
output_dir = "runs"
[pretrain.method_args]
frames = 4
crop = 32
[eval]
protocols = ["retrieval", "knn", "finetune"]
retrieval_ks = [1, 5]
workers = 0
[eval.features]
clips = 2
frames = 4
resize = [32, 43]
crop = 32
[eval.finetune]
epochs = 1
batch_size = 8
steps_per_epoch = 1
milestones = []
frames = 4
crop = 32
resize = [32, 43]
test_clips = 2
"""


def test_suite_table_has_every_row_and_vsbench_table_rebuilds_it(motionshapes_tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suite.toml").write_text(SUITE.format(data=motionshapes_tiny))
    assert main(["run", "suite.toml"]) == 0
    printed = capsys.readouterr().out
    table_lines = [ln for ln in printed.splitlines() if ln.startswith(("row", "moco", "random init", "supervised"))]
    assert [ln.split()[0] for ln in table_lines] == ["row", "moco", "random", "supervised"]
    assert "R@1" in table_lines[0] and "kNN top-1" in table_lines[0] and "fine-tune top-1" in table_lines[0]
    assert main(["table", "tiny-eval", "--out", "again"]) == 0
    rebuilt = capsys.readouterr().out
    assert all(line in rebuilt for line in table_lines)  # the same table, from the MLflow store
    md = (tmp_path / "again" / "results.md").read_text()
    assert "| moco" in md and "| supervised" in md
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    children = [r for r in client.search_runs([client.get_experiment_by_name("tiny-eval").experiment_id]) if r.data.tags.get("kind") != "suite"]
    assert len(children) == 6  # moco, random init, supervised x 2 seeds
    moco = next(r for r in children if r.data.tags["row"] == "moco")
    assert {"eval/retrieval/R1", "eval/knn/top1", "eval/finetune/video_top1"} <= moco.data.metrics.keys()
    assert moco.data.tags["protocol.retrieval"] == RetrievalProtocol(features=FeatureProtocol(clips=2, frames=4, resize=(32, 43), crop=32), ks=(1, 5)).hash()
