"""Every protocol on one encoder, fine-tuning, reference rows and the suite's table, on real videos."""

import dataclasses
import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from backbones import create_backbone
from evaluation.evaluate import EvalConfig, _bias_gap, evaluate_encoder, protocol_tags
from evaluation.features import FeatureSet
from evaluation.finetune import run_finetune
from evaluation.protocols import EncoderTraining, FeatureProtocol, FinetuneProtocol, KNNProtocol, LinearProtocol, RetrievalProtocol
from harness.cli import main
from core.config import DataConfig, PretrainConfig
from core.data.datasets import open_dataset
from harness.train import pretrain, train_classifier
from tests.helpers import write_suite, write_ucf_like

FEATURES = FeatureProtocol(clips=2, frames=4, resize=(32, 43), crop=32)
FINETUNE = FinetuneProtocol(epochs=1, batch_size=8, steps_per_epoch=2, frames=4, crop=32, resize=(32, 43), test_clips=3, milestones=())
SMALL_EVAL = EvalConfig(protocols=["retrieval", "linear", "knn", "probe"], features=FEATURES, retrieval=RetrievalProtocol(ks=(1, 5, 10)),
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


def test_bias_gap_is_the_knn_accuracy_on_scene_aligned_minus_conflicting_test_videos(tmp_path):
    """A hand-built case: three classes, one gallery video each on its own axis; the test videos of
    classes A and C lie on their class's axis, B's on A's (kNN gets it wrong). The alignment comes
    from MotionShapes' metadata file by video, and the gap is reported only for data generated
    with scene bias, and only when both groups have videos."""
    root = write_ucf_like(tmp_path / "biased", {"A": 2, "B": 2, "C": 2})  # group 1: test split, group 2: train
    test = open_dataset(root, subset="test", progress=False)
    labels = torch.tensor([r.label for r in test.records])
    assert sorted(labels.tolist()) == [0, 1, 2]
    onehot = torch.eye(3)
    gallery = FeatureSet(onehot, torch.arange(3), torch.arange(3), ["a", "b", "c"])
    queries = FeatureSet(onehot[torch.where(labels == 1, 0, labels)], labels, torch.arange(3), [r.key for r in test.records])
    knn = KNNProtocol(k=1)

    def gap(scene_bias: float, aligned_classes: set[str]) -> dict[str, float]:
        (root / "motionshapes.json").write_text(json.dumps({"config": {"scene_bias": scene_bias}}))
        rows = [f"{c}/v_{c}_g{g:02d}_c01.avi,{c in aligned_classes}" for c in "ABC" for g in (1, 2)]
        (root / "motionshapes_meta.csv").write_text("path,bias_aligned\n" + "\n".join(rows) + "\n")
        return _bias_gap(gallery, queries, knn, test, DataConfig(path=str(root)))

    assert gap(1.0, {"A", "B"}) == {"eval/probe/bias_gap": pytest.approx(0.5 - 1.0)}  # aligned: A right, B wrong; conflicting: C right
    assert gap(0.5, {"C"}) == {"eval/probe/bias_gap": pytest.approx(1.0 - 0.5)}
    assert gap(0.0, {"A", "B"}) == {}  # no scene bias: "aligned" means nothing
    assert gap(1.0, {"A", "B", "C"}) == {} and gap(1.0, set()) == {}  # one group empty: no gap


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


@pytest.mark.slow  # a whole suite: 2 seeds x (moco, random init, supervised), each fine-tuned
def test_suite_table_has_every_row_and_vsbench_table_rebuilds_it(motionshapes_tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_suite(tmp_path / "suite.toml", motionshapes_tiny, "tiny-eval", seeds=[0, 1], references=["random init", "supervised"],
                pretrain={"batch_size": 8},
                eval={"protocols": ["retrieval", "knn", "finetune"], "retrieval": {"ks": [1, 5]}, "features": {"clips": 2},
                      "finetune": {"epochs": 1, "batch_size": 8, "steps_per_epoch": 1, "milestones": [], "frames": 4, "crop": 32,
                                   "resize": [32, 43], "test_clips": 2}})
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
