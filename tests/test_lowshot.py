"""Low-shot fine-tuning: N labelled training videos drawn by a fixed, machine-independent rule."""

import dataclasses
import hashlib
import random
from collections import Counter

import pytest
import torch

from core.config import (
    ConfigError,
    DataConfig,
    PretrainConfig,
    config_hash,
    from_dict,
    to_dict,
)
from core.data.datasets import VideoDataset, VideoRecord
from core.data.subset import draw_videos, video_rank
from evaluation.evaluate import EvalConfig
from evaluation.finetune import TrainedClassifier, finetune_config, run_finetune
from evaluation.protocols import EncoderTraining, FinetuneProtocol, resolve
from harness.train import Pretraining, train_classifier, training_identity


def dataset(sizes: dict[str, int], root: str = "/data/ucf101/UCF-101", corrupt: tuple[str, ...] = (), shuffle: int | None = None) -> VideoDataset:
    """A train split in UCF101's layout whose files need not exist: ``sizes`` maps class -> videos."""
    records = [VideoRecord(f"{root}/{key}.avi", label, key, 40, error="cannot decode" if key in corrupt else None)
               for label, (name, n) in enumerate(sizes.items()) for key in (f"{name}/v_{name}_g{g:02d}_c01" for g in range(1, n + 1))]
    if shuffle is not None:
        random.Random(shuffle).shuffle(records)
    return VideoDataset("ucf101", root, list(sizes), records, 1, "train")


def keys(videos: VideoDataset) -> list[str]:
    return [r.key for r in videos.records]


def per_class(videos: VideoDataset) -> list[int]:
    counts = Counter(r.label for r in videos.records)
    return [counts[label] for label in range(len(videos.classes))]


# ----------------------------------------------------------------------------- hashes


def test_fields_added_later_leave_the_config_hashes_as_they_were():
    """The hashes of configs from before DataConfig had train_videos (run folders, checkpoints and
    suite memos are keyed by them), and the fine-tune protocol's from before it had them."""
    assert config_hash(PretrainConfig()) == "3ab564563a12"
    assert config_hash(training_identity(PretrainConfig())) == "cb76d855cba7"
    assert config_hash(DataConfig()) == "03659a5780eb"
    assert config_hash(PretrainConfig(method="supervised", data=DataConfig(path="/x", split=2), lr=0.1, steps_per_epoch=3)) == "74e3fd5a2299"
    assert FinetuneProtocol().hash() == "bcd8bbf88e"


def test_train_videos_enter_the_hashes_when_set():
    base = FinetuneProtocol()
    low = FinetuneProtocol(train_videos=1000)
    assert low.hash() != base.hash() and low.fields()["train_videos"] == 1000
    assert FinetuneProtocol(train_videos=1000, train_videos_seed=1).hash() not in (low.hash(), base.hash())
    assert FinetuneProtocol(train_videos=500).hash() != low.hash()
    config = PretrainConfig()
    assert "train_videos" not in to_dict(config)["data"] and "train_videos_seed" not in to_dict(config)["data"]
    drawn = PretrainConfig(data=DataConfig(train_videos=1000))
    assert to_dict(drawn)["data"]["train_videos"] == 1000 and config_hash(drawn) != config_hash(config)
    assert config_hash(training_identity(drawn)) != config_hash(training_identity(config))
    assert config_hash(PretrainConfig(data=DataConfig(train_videos=1000, train_videos_seed=2))) != config_hash(drawn)


@pytest.mark.parametrize("value", [0, -3, True, 1.5, "1000"])
def test_protocol_refuses_a_train_videos_that_is_not_a_positive_int(value):
    with pytest.raises(ValueError, match=r"train_videos must be a positive integer or None \(the whole train split\), got"):
        FinetuneProtocol(train_videos=value)
    with pytest.raises(ValueError, match="train_videos_seed must be an integer >= 0"):
        FinetuneProtocol(train_videos=10, train_videos_seed=-1)


def test_a_suite_sets_train_videos_in_its_eval_finetune_table():
    config = from_dict(EvalConfig, {"finetune": {"train_videos": 1000}}, where="eval")
    assert config.finetune.train_videos == 1000 and config.finetune.train_videos_seed == 0
    with pytest.raises(ConfigError, match=r"eval\.finetune: train_videos must be a positive integer or None"):
        from_dict(EvalConfig, {"finetune": {"train_videos": 0}}, where="eval")
    with pytest.raises(ConfigError, match=r"^data\.train_videos: expected int >= 1, got 0$"):
        from_dict(PretrainConfig, {"data": {"train_videos": 0}})


def test_finetune_config_carries_the_draw_into_the_data_config():
    protocol = resolve(FinetuneProtocol(train_videos=1000, train_videos_seed=3), EncoderTraining())
    config = finetune_config(protocol, backbone="r3d_tiny", data=DataConfig(path="x", subset="all"), num_classes=101, init_encoder=None,
                             seed=5, device="cpu", output_dir="runs", run_name="ft")
    assert (config.data.train_videos, config.data.train_videos_seed, config.data.subset, config.seed) == (1000, 3, "train", 5)
    whole = finetune_config(resolve(FinetuneProtocol(), EncoderTraining()), backbone="r3d_tiny", data=DataConfig(path="x", train_videos=7),
                            num_classes=101, init_encoder=None, seed=5, device="cpu", output_dir="runs", run_name="ft")
    assert whole.data.train_videos is None  # the protocol decides, not the data table


# ----------------------------------------------------------------------------- the draw


def test_the_draw_has_exactly_n_videos_balanced_over_the_classes():
    videos = dataset({"A": 10, "B": 10, "C": 2})
    assert per_class(draw_videos(videos, 12, 0)) == [5, 5, 2]  # floor(12/3) = 4 each, C's 2 spare slots to A and B
    assert sorted(per_class(draw_videos(videos, 11, 0))) == [2, 4, 5]  # 4/4/2, one slot left over
    assert per_class(draw_videos(videos, 6, 0)) == [2, 2, 2]
    assert per_class(draw_videos(videos, 22, 0)) == [10, 10, 2]
    for n in range(1, 23):
        counts = per_class(draw_videos(videos, n, 0))
        assert sum(counts) == n
        level = min(c for c, size in zip(counts, (10, 10, 2)) if c < size) if n < 22 else 10
        assert all(c in (level, level + 1) or c == size for c, size in zip(counts, (10, 10, 2))), (n, counts)
    assert per_class(draw_videos(dataset({"A": 9, "B": 5, "C": 1, "D": 1}), 10, 0)) == [4, 4, 1, 1]


def test_the_draw_keeps_the_records_order_and_marks_the_data_set():
    videos = dataset({"A": 10, "B": 10, "C": 2})
    drawn = draw_videos(videos, 12, 0)
    index = {r.key: i for i, r in enumerate(videos.records)}
    assert [index[k] for k in keys(drawn)] == sorted(index[k] for k in keys(drawn))
    assert drawn.extra["train_videos"] == 12 and drawn.classes == videos.classes and (drawn.split, drawn.subset) == (1, "train")
    assert drawn.fingerprint() != videos.fingerprint() and len(videos) == 22  # the full set is left as it was


def test_the_same_seed_draws_the_same_videos_whatever_the_order_and_the_machine():
    """Two machines: the data under another folder, listed in another order."""
    here = draw_videos(dataset({"A": 10, "B": 10, "C": 2}), 9, 0)
    there = draw_videos(dataset({"A": 10, "B": 10, "C": 2}, root="D:/datasets/ucf/UCF-101", shuffle=1), 9, 0)
    assert sorted(keys(here)) == sorted(keys(there))
    assert draw_videos(dataset({"A": 10, "B": 10, "C": 2}), 9, 0).records == here.records  # and on a second run
    assert sorted(keys(draw_videos(dataset({"A": 10, "B": 10, "C": 2}), 9, 1))) != sorted(keys(here))


def test_the_drawn_subset_is_pinned():
    """The rule is part of the protocol: a change of the hash or of the balancing fails here."""
    assert video_rank("A/v_A_g01_c01", 3) == hashlib.sha256(b"3:A/v_A_g01_c01").hexdigest()
    assert video_rank("A\\v_A_g01_c01", 3) == video_rank("A/v_A_g01_c01", 3)  # a key read on Windows
    videos = dataset({"A": 5, "B": 4, "C": 3})
    assert keys(draw_videos(videos, 7, 0)) == ["A/v_A_g01_c01", "A/v_A_g03_c01", "A/v_A_g05_c01", "B/v_B_g02_c01", "B/v_B_g04_c01",
                                               "C/v_C_g01_c01", "C/v_C_g02_c01"]
    assert keys(draw_videos(videos, 7, 7)) == ["A/v_A_g01_c01", "A/v_A_g05_c01", "B/v_B_g01_c01", "B/v_B_g03_c01", "C/v_C_g01_c01",
                                               "C/v_C_g02_c01", "C/v_C_g03_c01"]


def test_corrupt_videos_are_never_drawn_and_too_large_an_n_is_an_error():
    videos = dataset({"A": 3, "B": 3}, corrupt=("A/v_A_g01_c01", "A/v_A_g02_c01"))
    drawn = draw_videos(videos, 4, 0)
    assert per_class(drawn) == [1, 3] and all(r.ok for r in drawn.records)
    with pytest.raises(ConfigError, match=r"train_videos = 5 is more than the 4 readable videos of the train split .* \(2 more are corrupt\)"):
        draw_videos(videos, 5, 0)
    with pytest.raises(ConfigError, match=r"train_videos = 23 is more than the 22 readable videos of the train split"):
        draw_videos(dataset({"A": 10, "B": 10, "C": 2}), 23, 0)
    with pytest.raises(ConfigError, match="train_videos must be a positive integer, got 0"):
        draw_videos(videos, 0, 0)


# ----------------------------------------------------------------------------- end to end


def test_low_shot_finetune_trains_on_n_videos_and_tests_on_every_video(motionshapes_tiny, tmp_path):
    """MotionShapes-tiny: 36 train videos (12 classes x 3), 12 test videos. 12 drawn videos, one a
    class, at batch 4 make 3 steps an epoch (the whole split would make 9)."""
    protocol = FinetuneProtocol(epochs=1, batch_size=4, frames=4, crop=32, resize=(32, 43), test_clips=1, milestones=(), train_videos=12)
    runs = []

    def trainer(config: PretrainConfig) -> TrainedClassifier:
        runs.append(Pretraining(config))  # what train_classifier trains on, built the same way
        return train_classifier(config)

    data = DataConfig(path=str(motionshapes_tiny), workers=0)
    metrics, _ = run_finetune(protocol, backbone="r3d_tiny", data=data, init_encoder=None, seed=0, device="cpu",
                              output_dir=tmp_path, run_name="ft", trainer=trainer)
    run = runs[0]
    assert len(run.videos) == 12 and per_class(run.videos) == [1] * 12 and run.steps_per_epoch == 3
    assert run.describe()["data"]["videos"] == 12
    assert torch.load(tmp_path / "ft" / "last.pt", weights_only=False)["step"] == 3  # what the trained run did
    assert round(metrics["video_top1"] * 12, 6) == round(metrics["video_top1"] * 12)  # tested on all 12 test videos
    other_seed = Pretraining(dataclasses.replace(run.config, seed=1, run_name="ft-s1"))
    assert keys(other_seed.videos) == keys(run.videos)  # the run's seed does not change the subset


@pytest.mark.slow  # a suite: moco and two reference rows, two low-shot fine-tunes
def test_a_suite_adds_a_low_shot_row_per_encoder_labelled_with_n(motionshapes_tiny, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from harness.cli import main
    from harness.train import CHECKPOINT, load_checkpoint
    from tests.helpers import write_suite

    monkeypatch.chdir(tmp_path)
    finetune = {"epochs": 1, "batch_size": 4, "milestones": [], "frames": 4, "crop": 32, "resize": [32, 43], "test_clips": 1}
    suite = write_suite(tmp_path / "ls.toml", motionshapes_tiny, "ls", references=["random init", "supervised"], low_shot=[12],
                        eval={"finetune": finetune})
    assert main(["run", str(suite)]) == 0
    rows = [line.split("  ")[0] for line in capsys.readouterr().out.splitlines() if line.startswith(("moco", "random", "supervised"))]
    assert rows == ["moco", "moco (fine-tune on 12)", "random init", "supervised", "supervised (fine-tune on 12)"]
    assert load_checkpoint(tmp_path / "runs" / "moco-r3d_tiny-s0-lowshot12" / CHECKPOINT)["step"] == 3  # 12 videos, batch 4
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("ls").experiment_id
    low = [r for r in client.search_runs([experiment]) if r.data.tags.get("kind") == "low_shot"]
    assert sorted(r.data.tags["low_shot"] for r in low) == ["12", "12"] and all("eval/finetune/video_top1" in r.data.metrics for r in low)
    assert main(["run", str(suite)]) == 0  # everything finished before: no new child run
    assert len([r for r in client.search_runs([experiment]) if r.data.tags.get("kind") not in ("suite",)]) == 5
