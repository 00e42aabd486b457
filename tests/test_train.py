"""The pretraining loop: MLflow records, exact resume after a kill, NaN stop, schedules, MoCo learning,
gradient accumulation and ``compile``."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import torch
from mlflow.tracking import MlflowClient

from backbones import create_backbone
from harness.cli import main
from core.config import PretrainConfig
from harness.train import CHECKPOINT, NonFiniteLoss, build_optimizer, build_scheduler, load_checkpoint, pretrain
from methods.base import DataSpec, Method, Recipe, StepOutput, TrainState, create_method
from tests.helpers import registered_method, write_suite

SMALL = ["--set", "method_args.frames=4", "--set", "method_args.crop=32", "--set", "decode_size=[32,43]", "--set", "log_every=1"]


def _config(data, tmp_path, **changes) -> PretrainConfig:
    values = dict(method="moco", backbone="r3d_tiny", epochs=2, batch_size=8, device="cpu", output_dir=str(tmp_path / "runs"),
                  tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", method_args={"frames": 4, "crop": 32}, decode_size=(32, 43),
                  log_every=1, progress=False)
    values.update(changes)
    cfg = PretrainConfig(**values)
    cfg.data.path, cfg.data.workers = str(data), 0
    return cfg


def test_pretrain_command_records_a_run_in_mlflow(motionshapes_tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--method", "moco", "--backbone", "r3d_tiny", "--data", str(motionshapes_tiny), "--epochs", "1",
                 "--batch-size", "8", "--workers", "0", *SMALL]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("vsbench").experiment_id])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, 5))  # 36 train videos / 8 = 4 steps, every one logged
    assert {"train/lr", "train/clips_per_s", "train/data_wait_frac", "train/peak_memory_mb", "train/moco/acc"} <= run.data.metrics.keys()
    assert run.data.params["config.method"] == "moco" and run.data.params["recipe.milestones"] == "[0.6, 0.8]"
    assert run.data.tags["dataset_fingerprint"] and run.data.tags["vsbench.version"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"encoder.pt", "config.json"} <= artifacts


def test_moco_loss_decreases_on_fixed_data():
    # Two fixed half-batches alternate and the queue holds exactly one half: the negatives of one
    # half are always the other half's keys (a single fixed batch would put each video's own older
    # keys in the queue, and the loss could not fall below log(#copies)).
    torch.manual_seed(0)
    method = create_method("moco", create_backbone("r3d_tiny"), dataset_size=64, overrides={"queue_size": 8})
    optimizer = build_optimizer(method.parameters(), Recipe(lr=0.05))
    g = torch.Generator().manual_seed(1)
    videos = torch.randn(16, 3, 4, 32, 32, generator=g)
    clips = torch.stack([videos + 0.3 * torch.randn(16, 3, 4, 32, 32, generator=g) for _ in range(2)], dim=1)
    halves = [{"rgb": clips[:8]}, {"rgb": clips[8:]}]
    losses = []
    for step in range(40):
        out = method(halves[step % 2], TrainState(step=step))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        method.update_momentum(TrainState(step=step + 1))  # as the harness does after every optimizer step
        method.after_optimizer_step(TrainState(step=step + 1))
        losses.append(float(out.loss.detach()))
    assert sum(losses[-6:]) / 6 < 0.5 * sum(losses[2:8]) / 6, losses
    assert int(method.queue.ptr) == 0  # 40 steps x 8 keys into a queue of 8: wrapped around every step


def test_sgd_is_plain_momentum_and_milestones_are_exact():
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], Recipe(optimizer="sgd", lr=1.0, sgd_momentum=0.9))
    assert opt.defaults["nesterov"] is False and opt.defaults["momentum"] == 0.9
    sched = build_scheduler(opt, Recipe(lr=1.0, schedule="multistep", milestones=(1.5, 2), gamma=0.2, epochs=3), steps_per_epoch=10)
    lrs = []
    for step in range(31):
        sched.step_update(step)
        lrs.append(round(opt.param_groups[0]["lr"], 6))
    assert lrs[14] == 1.0 and lrs[15] == 0.2 and lrs[19] == 0.2 and lrs[20] == 0.04


@dataclass(frozen=True)
class _NaNConfig:
    frames: int = 4
    crop: int = 32
    nan_at: int = 2


class _NaNAfterTwoSteps(Method):
    """A test method whose loss becomes NaN at a chosen step."""

    Config = _NaNConfig
    recipe = Recipe(lr=0.01, epochs=3, batch_size=8, milestones=())

    def data_spec(self) -> DataSpec:
        return DataSpec(clips=1, frames=self.config.frames, augment=DataSpec().augment.__class__(size=(32, 32)))

    def training_step(self, batch, state: TrainState) -> StepOutput:
        loss = self.backbone(batch["rgb"][:, 0]).pow(2).mean()
        return StepOutput(loss * float("nan") if state.step >= self.config.nan_at else loss)


@pytest.fixture
def nan_test():
    with registered_method("nan_test", _NaNAfterTwoSteps):
        yield "nan_test"


def test_a_nan_loss_stops_the_run_naming_step_and_checkpoint(motionshapes_tiny, tmp_path, nan_test):
    cfg = _config(motionshapes_tiny, tmp_path, method="nan_test", method_args={"nan_at": 6}, epochs=3)
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss nan at step 6 \(epoch 1\).*last good checkpoint: .*last.pt"):
        pretrain(cfg)
    client = MlflowClient(cfg.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("vsbench").experiment_id])
    assert run.info.status == "FAILED"
    ckpt = load_checkpoint(next((tmp_path / "runs").glob("*/last.pt")))
    assert ckpt["epoch"] == 1 and not ckpt["finished"]
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


_RUN = [sys.executable, "-m", "harness.cli", "pretrain", "--method", "moco", "--backbone", "r3d_tiny", "--epochs", "4",
        "--batch-size", "4", "--steps-per-epoch", "5", "--workers", "0", "--device", "cpu", *SMALL]


def _encoder(run_dir):
    return load_checkpoint(run_dir / CHECKPOINT)["model"]


@pytest.mark.slow  # a pretraining subprocess, killed; the uninterrupted run and the resumed segment run here
def test_a_killed_run_resumes_to_the_same_parameters(motionshapes_tiny, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    common = [*_RUN, "--data", str(motionshapes_tiny)]
    full = tmp_path / "full"
    assert main([*_RUN[3:], "--data", str(motionshapes_tiny), "--output-dir", str(full), "--tracking-uri", f"sqlite:///{full}.db"]) == 0
    killed = tmp_path / "killed"
    args = [*common, "--output-dir", str(killed), "--tracking-uri", f"sqlite:///{killed}.db"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(killed.glob("*/last.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    [run_dir] = list(killed.glob("*"))
    at_kill = load_checkpoint(run_dir / CHECKPOINT)
    assert not at_kill["finished"], "the run finished before it could be killed; make epochs longer"
    assert main([*args[3:], "--resume"]) == 0  # the resumed segment: here, in this process
    [full_dir] = [p for p in full.glob("*") if p.is_dir() and p.name != "mlartifacts"]
    assert run_dir.name == full_dir.name  # same configuration, same run folder name
    a, b = _encoder(full_dir), _encoder(run_dir)
    assert load_checkpoint(run_dir / CHECKPOINT)["finished"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_suite_runs_end_to_end_and_skips_finished_runs(motionshapes_tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = write_suite(tmp_path / "tiny.toml", motionshapes_tiny, "tiny", pretrain={"batch_size": 8, "steps_per_epoch": 2},
                        eval={"protocols": []}, ablations=[{"name": "moco-no-shuffle", "method": "moco", "method_args": {"shuffle_bn": False}}])
    assert main(["run", str(suite)]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("kind") == "suite")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["row"] for r in children) == ["moco", "moco-no-shuffle"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert main(["run", str(suite)]) == 0  # second invocation: both runs finished before, nothing retrained
    again = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len([r for r in again if r.data.tags.get("kind") != "suite"]) == 2


def test_config_errors_name_the_key(motionshapes_tiny, capsys):
    assert main(["pretrain", "--method", "moco", "--data", str(motionshapes_tiny), "--set", "method_args.queue=3"]) == 2
    assert "method.moco.queue: unknown key" in capsys.readouterr().err
    assert main(["pretrain", "--method", "simclr", "--data", str(motionshapes_tiny)]) == 2
    assert "registered methods: " in capsys.readouterr().err
    assert main(["pretrain", "--backbone", "resnet50", "--data", str(motionshapes_tiny)]) == 2
    assert "r3d_18" in capsys.readouterr().err


@dataclass(frozen=True)
class _SkipConfig:
    frames: int = 4
    crop: int = 32
    skip_until: int = 2


class _SkipFirstSteps(Method):
    """A test method that asks the harness to skip the optimizer step for its first steps."""

    Config = _SkipConfig
    recipe = Recipe(lr=0.1, weight_decay=0.1, epochs=1, batch_size=4, milestones=())

    def data_spec(self) -> DataSpec:
        return DataSpec(clips=1, frames=self.config.frames, augment=DataSpec().augment.__class__(size=(32, 32)))

    def training_step(self, batch, state: TrainState) -> StepOutput:
        loss = self.backbone(batch["rgb"][:, 0]).pow(2).mean()
        return StepOutput(loss, skip_optimizer=state.step < self.config.skip_until)


@pytest.fixture
def skip_test():
    with registered_method("skip_test", _SkipFirstSteps):
        yield "skip_test"


def test_skip_optimizer_runs_the_step_without_updating_parameters(motionshapes_tiny, tmp_path, skip_test):
    from harness.train import Pretraining

    run = Pretraining(_config(motionshapes_tiny, tmp_path, method="skip_test", method_args={}, epochs=1))
    batches = iter(run.loader)
    before = {k: v.clone() for k, v in run.method.backbone.state_dict().items()}
    for _ in range(2):
        run.train_step([next(batches)])
    after = run.method.backbone.state_dict()
    assert run.state.step == 2
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)
    assert not all(torch.equal(before[k], after[k]) for k in before)  # BN statistics did update
    run.train_step([next(batches)])  # step 2: a real update (weight decay alone moves every weight)
    first = next(n for n, p in run.method.backbone.named_parameters())
    assert not torch.equal(before[first], run.method.backbone.state_dict()[first])


def test_flow_flip_negates_u_only_when_the_data_spec_says_so():
    from core.data.transforms import AugmentConfig
    from harness.train import DeviceAugment

    aug = AugmentConfig(size=(4, 6), scale=(1.0, 1.0), ratio=(1.5, 1.5), flip_p=1.0, jitter_p=0.0, grey_p=0.0, blur_p=0.0)
    flow = torch.randint(0, 256, (1, 1, 2, 4, 6, 2), dtype=torch.uint8)
    rgb = torch.zeros(1, 1, 2, 4, 6, 3, dtype=torch.uint8)
    u = flow[0, 0, :, :, :, 0].float() / 255
    for negate in (True, False):
        spec = DataSpec(clips=1, frames=2, modalities=("rgb", "flow"), augment=aug, flow_flip_negates_u=negate)
        out = DeviceAugment(spec, torch.device("cpu"), seed=0, channels_last=False)({"rgb": rgb, "flow": flow})
        mirrored = u.flip(-1)
        expected = 1 - mirrored if negate else mirrored
        assert torch.allclose(out["flow"][0, 0, 0], expected, atol=1e-5)


class _ClippedSteps(_SkipFirstSteps):
    """Plain SGD with lr 1 and the recipe's gradient clipping: one step moves the weights by <= clip_grad."""

    recipe = Recipe(lr=1.0, sgd_momentum=0.0, weight_decay=0.0, epochs=1, batch_size=4, milestones=(), clip_grad=1e-3)


@pytest.mark.parametrize("override", [None, 2e-3])
def test_the_recipe_clips_gradients_and_the_config_overrides_it(motionshapes_tiny, tmp_path, override):
    from harness.train import Pretraining

    with registered_method("clip_test", _ClippedSteps):
        run = Pretraining(_config(motionshapes_tiny, tmp_path, method="clip_test", method_args={"skip_until": 0}, epochs=1,
                                  clip_grad=override))
    before = [p.detach().clone() for p in run.method.parameters()]
    out = run.train_step([next(iter(run.loader))])
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(run.method.parameters(), before)]).norm()
    limit = override or 1e-3
    assert out.parts["grad_norm"] > limit  # the raw gradient was larger than the limit ...
    assert limit * 0.99 < moved <= limit * 1.0001  # ... and the step was cut to it


# ----------------------------------------------------------------------------- gradient accumulation


@dataclass(frozen=True)
class _FramesConfig:
    frames: int = 4
    crop: int = 32


class _MeanSquareHead(Method):
    """A BatchNorm-free loss: the batch mean of a per-video loss on a linear head over the clip's
    mean colour per frame (the backbone is not used). Its input is the whole decoded frame, resized
    without a random draw, so any split of a batch sees the same pixels."""

    Config = _FramesConfig
    recipe = Recipe(lr=0.5, sgd_momentum=0.0, weight_decay=0.0, epochs=1, batch_size=8, milestones=())

    def __init__(self, config, backbone, *, dataset_size):
        super().__init__(config, backbone, dataset_size=dataset_size)
        self.head = torch.nn.Linear(3 * config.frames, 5)

    def data_spec(self) -> DataSpec:
        whole_frame = DataSpec().augment.__class__(size=(32, 32), scale=(1.0, 1.0), ratio=(43 / 32, 43 / 32), flip_p=0.0, jitter_p=0.0,
                                                   grey_p=0.0, blur_p=0.0)
        return DataSpec(clips=1, frames=self.config.frames, augment=whole_frame)

    def training_step(self, batch, state: TrainState) -> StepOutput:
        colours = batch["rgb"][:, 0].mean(dim=(3, 4)).flatten(1)  # (B, C * T)
        return StepOutput(self.head(colours).sin().square().mean())


def test_accumulate_makes_one_optimizer_step_equal_to_the_step_on_the_whole_batch(motionshapes_tiny, tmp_path):
    """PretrainConfig.accumulate: batch_size stays the batch of one optimizer step; it is loaded as
    ``accumulate`` micro-batches whose losses are averaged, so for a loss that is a batch mean
    (no BatchNorm) the update is the one the whole batch gives."""
    from harness.train import Pretraining

    def run(name, **changes):
        return Pretraining(_config(motionshapes_tiny, tmp_path, method="mean_square_test", method_args={}, epochs=1, run_name=name,
                                   **changes))

    with registered_method("mean_square_test", _MeanSquareHead):
        whole, halves, first_only = run("whole", batch_size=8), run("halves", batch_size=8, accumulate=2), run("first", batch_size=4)
        with pytest.raises(ValueError, match="batch_size 8 must be divisible by world_size\\*accumulate = 3"):
            run("thirds", batch_size=8, accumulate=3)
    assert (whole.micro_batch, halves.micro_batch) == (8, 4)
    assert whole.steps_per_epoch == halves.steps_per_epoch == 36 // 8  # an optimizer step takes 8 of the 36 train videos either way
    start = whole.method.head.weight.detach().clone()
    assert torch.equal(halves.method.head.weight, start) and torch.equal(first_only.method.head.weight, start)  # same seed

    batch = next(iter(whole.loader))
    assert len(batch["index"]) == 8
    first, second = ({k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()})
    out_whole, out_halves = whole.train_step([batch]), halves.train_step([first, second])
    first_only.train_step([first])

    assert whole.state.step == halves.state.step == 1 and whole.updates_done == halves.updates_done == 1
    torch.testing.assert_close(out_halves.loss, out_whole.loss, rtol=1e-6, atol=0)  # the mean over the 8 videos
    moved = (whole.method.head.weight - start).abs().max()
    assert moved > 1e-3  # the step did move the head ...
    for a, b in zip(halves.method.head.parameters(), whole.method.head.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # ... and the two micro-batches moved it as the whole batch did
    assert (first_only.method.head.weight - whole.method.head.weight).abs().max() > 1e-2 * moved  # 4 videos alone: another step


# ----------------------------------------------------------------------------- compile


def test_compile_compiles_the_backbone_in_place_and_nothing_else(motionshapes_tiny, tmp_path):
    """PretrainConfig.compile: nn.Module.compile on the backbone only; MoCo's key encoder, head and
    queue stay eager, and the state_dict keys (checkpoints, encoder.pt) are those of an eager run.
    No step is taken: inductor's first compiled step of r3d_tiny takes minutes on a CPU."""
    from harness.train import Pretraining

    def compiled(run) -> list[str]:
        return [name for name, m in run.method.named_modules() if getattr(m, "_compiled_call_impl", None) is not None]

    eager = Pretraining(_config(motionshapes_tiny, tmp_path, epochs=1, run_name="eager"))
    run = Pretraining(_config(motionshapes_tiny, tmp_path, epochs=1, run_name="compiled", compile=True))
    assert compiled(eager) == [] and compiled(run) == ["backbone"]
    assert run.method.encoder is run.method.backbone and run.model is run.method  # nothing wraps the method
    assert {"head", "key_backbone", "key_head", "queue"} <= {name for name, _ in run.method.named_children()}  # there, not compiled
    assert list(run.method.state_dict()) == list(eager.method.state_dict())
    assert list(run.method.encoder.state_dict()) == list(eager.method.encoder.state_dict())
