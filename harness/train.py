"""The pretraining loop every method shares.

One optimizer step: take ``accumulate`` uint8 micro-batches from the loader, move them to the
device, augment them there (per-clip parameters, see :mod:`core.data.transforms`), call the
method's ``training_step`` under bf16 autocast (CUDA; fp32 on CPU), check the loss is finite,
backpropagate, clip, step the timm optimizer and scheduler, update the momentum encoders the
method declares (``Method.momentum_pairs``, ``Method.update_momentum``) and run its
``after_optimizer_step`` hook.

Runs are resumable and crash-safe: checkpoints hold the model (queues and banks are buffers),
optimizer, scheduler, RNG states and position, are written atomically (temp file + rename) and
loaded with ``weights_only=True``. A resumed run reaches the same parameters as an uninterrupted
one (same seed, CPU), because every random draw is a function of saved state or of
(seed, epoch, index). A NaN/Inf loss stops the run, names the step and the last good
checkpoint, and marks the tracked run FAILED. No checkpoint is ever written (or resumed) with a
NaN/Inf weight, buffer or optimizer state: the parameters can diverge after the loss was checked
(an Inf gradient, a huge learning rate), so they are checked again before every save.

A run never reports a number it did not earn: an epoch in which every micro-batch was
undecodable, or a run whose every step skipped the optimizer, raises :class:`NothingTrained`.
Its cost (training time, clips, peak memory) and last loss are totals over all its segments
(a killed and resumed run has several), stored in every checkpoint; re-running a finished run
reports those stored totals, and a total that is unknown is reported as NaN and never logged.

One process at a time trains in a run folder: rank 0 holds the folder's lock (``run.lock``,
:func:`core.io.run_folder_lock`) while a run trains and is tracked, and a second process is
refused at once with :class:`~core.io.RunFolderLocked`, naming the holder. A killed and resumed
run is one MLflow run: ``mlflow_run.json`` in the run folder names the MLflow run it logs to, and
a resumed segment continues that run (see "Continuing an interrupted run" in
:mod:`core.tracking`); metrics are sent to MLflow before every checkpoint, so a crash loses
none of the steps the checkpoint holds.

Batch size means the *global* batch of one optimizer step: each rank loads
``batch_size / (world_size * accumulate)`` videos per micro-batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import os
import pickle
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from tqdm.auto import tqdm

from backbones import create_backbone
from core.config import ConfigError, PretrainConfig, config_hash, resolve_recipe, to_dict
from core.data.cache import reserve as reserve_frame_cache
from core.data.datasets import VideoDataset, open_data
from core.data.encoder_input import EncoderTraining, training_stride
from core.data.loader import VideoLoader, make_loader
from core.data.symmetry import check_flip
from core.data.transforms import VideoAugment
from core import preemption
from core.distributed import DistInfo, barrier, convert_sync_batchnorm, init_distributed
from core.io import RunFolderLocked, RunMemo, atomic_write, remove_stale_temp_files, run_folder_lock
from evaluation.finetune import TrainedClassifier
from methods.base import DataSpec, Method, Recipe, StepOutput, TrainState, config_dict, create_method, get_method

log = logging.getLogger(__name__)
CHECKPOINT = "last.pt"
ENCODER = "encoder.pt"
MLFLOW_RUN = "mlflow_run.json"  # the MLflow run a run folder's run logs to, and the configuration it belongs to
_OPTIMIZERS = {"sgd": "momentum", "adam": "adam", "adamw": "adamw"}  # vsbench name -> timm name (timm's "sgd" is Nesterov)
SCHEDULES = ("none", "step", "multistep", "cosine")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or Inf; the message names the step and the last good checkpoint."""


class NonFiniteWeights(NonFiniteLoss):
    """Weights, buffers or optimizer state hold NaN or Inf; the message names the step, the
    tensors and the last good checkpoint, which is left as it was."""


class ForeignCheckpoint(ValueError):
    """The run folder's ``last.pt`` was written by another configuration (or other data): resuming
    it would mix two runs. The message names the file and both configuration hashes."""


class _StopRequested(Exception):
    """Raised after the optimizer step at which the scheduler's stop request was seen (core.preemption)."""


class NothingTrained(RuntimeError):
    """A run made no optimizer step (every video skipped, or every step skipped the optimizer);
    the message names the run folder and the skipped videos."""


@dataclass
class PretrainResult:
    """What a finished pretraining run produced, over all its segments; NaN = unknown."""

    run_dir: Path
    encoder_path: Path
    steps: int
    wall_time_s: float
    clips_per_s: float
    peak_memory_mb: float
    final_loss: float
    run_id: str | None = None
    skipped_videos: int = 0


@dataclass(frozen=True)
class RunTotals:
    """A run's cost and last loss summed over its segments, stored in every checkpoint.

    ``wall_time_s`` runs from the start of each segment's epoch loop to its last checkpoint;
    ``step_time_s`` is the time inside steps (data wait included), the denominator of clips/s;
    ``updates`` counts optimizer steps that changed the parameters. NaN (None for ``updates``)
    means unknown: a checkpoint written before vsbench stored these.
    """

    wall_time_s: float = 0.0
    step_time_s: float = 0.0
    clips: float = 0.0
    peak_memory_mb: float = 0.0
    final_loss: float = math.nan
    updates: int | None = 0

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.step_time_s if self.step_time_s > 0 else math.nan


UNKNOWN_TOTALS = RunTotals(math.nan, math.nan, math.nan, math.nan, math.nan, None)


# ----------------------------------------------------------------------------- building blocks


def build_optimizer(params, recipe: Recipe) -> torch.optim.Optimizer:
    """A timm optimizer for the recipe; weight decay applies to every parameter, as in the papers."""
    if recipe.optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(_OPTIMIZERS)}, got {recipe.optimizer!r}")
    extra = {"momentum": recipe.sgd_momentum} if recipe.optimizer == "sgd" else {"betas": recipe.betas}
    return create_optimizer_v2(params, opt=_OPTIMIZERS[recipe.optimizer], lr=recipe.lr, weight_decay=recipe.weight_decay, **extra)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int):
    """A timm scheduler stepped per optimizer step (``step_update(step)``).

    Milestones are in epochs and may be fractional (scaled budgets). timm's multistep decays
    when ``t + 1`` reaches a milestone; milestones are shifted by one update so the decay takes
    effect exactly at ``milestone * steps_per_epoch`` optimizer steps, like PyTorch's MultiStepLR.
    ``step`` decays every ``milestones[0]`` epochs.
    """
    if recipe.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {recipe.schedule!r}")
    common = dict(num_epochs=recipe.epochs, step_on_epochs=False, updates_per_epoch=steps_per_epoch,
                  warmup_epochs=recipe.warmup_epochs, warmup_lr=0.0, warmup_prefix=False)
    if recipe.schedule == "cosine":
        scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", min_lr=0.0, **common)
        return scheduler
    milestones = _milestones(recipe)
    shift = 1.0 / steps_per_epoch
    scheduler, _ = create_scheduler_v2(optimizer, sched="multistep", decay_milestones=[m + shift for m in milestones],
                                       decay_rate=recipe.gamma, **common)
    return scheduler


def _milestones(recipe: Recipe) -> list[float]:
    if recipe.schedule == "none":
        return []
    if recipe.schedule == "step":
        if not recipe.milestones or recipe.milestones[0] <= 0:
            raise ValueError("schedule 'step' needs milestones = [period in epochs]")
        period = recipe.milestones[0]
        return [period * k for k in range(1, int(recipe.epochs / period) + 1)]
    return sorted(recipe.milestones)


def with_run_settings(spec: DataSpec, config: PretrainConfig) -> DataSpec:
    """A method's DataSpec with what the run adds: the decode-size override, the flow cache and the
    decoding backend (a DataSpec is the loader's request)."""
    flow_root = config.data.flow_root or (str(Path(config.data.path) / "flow") if "flow" in spec.modalities else None)
    decode_size = tuple(config.decode_size) if config.decode_size is not None else spec.decode_size
    return dataclasses.replace(spec, decode_size=decode_size, flow_root=flow_root, backend=config.data.backend)


class DeviceAugment:
    """uint8 loader batches -> augmented float (B, clips, C, T, h, w) per modality, on the device."""

    def __init__(self, spec: DataSpec, device: torch.device, seed: int, channels_last: bool):
        self.spec = spec
        self.rgb = VideoAugment(spec.augment)
        self.flow = VideoAugment(spec.augment, flow=True, negate_u_on_flip=spec.flow_flip_negates_u)
        self.device = device
        self.channels_last = channels_last
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batch: dict) -> dict:
        out = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in self.spec.modalities}
        rgb = batch["rgb"].to(self.device, non_blocking=True) if "rgb" in batch else None
        b, clips = next(batch[m] for m in self.spec.modalities).shape[:2]
        crop = None
        if rgb is not None:
            flat = rgb.flatten(0, 1)
            crop = self.rgb.sample_crop(flat, self.generator)
            if self.spec.shared_crop:
                crop = _repeat_crop(crop, b, clips)
            out["rgb"] = self._finish(self.rgb(flat, self.generator, crop), b, clips)
        if "flow" in self.spec.modalities:
            flow = batch["flow"].to(self.device, non_blocking=True).flatten(0, 1)
            crop = crop if crop is not None else self.flow.sample_crop(flow, self.generator)
            out["flow"] = self._finish(self.flow(flow, self.generator, crop), b, clips)
        return out

    def _finish(self, x: torch.Tensor, b: int, clips: int) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x.unflatten(0, (b, clips))


def _repeat_crop(crop, b: int, clips: int):
    """Give every clip of a video the crop drawn for its first clip."""
    first = torch.arange(b, device=crop.x0.device).repeat_interleave(clips) * clips
    return dataclasses.replace(crop, **{f.name: getattr(crop, f.name)[first] for f in dataclasses.fields(crop)})


_NOT_IN_IDENTITY = ("output_dir", "run_name", "experiment", "tracking_uri", "progress", "log_every", "checkpoint_every", "knn_every")


def check_crop_fits(spec: DataSpec, method: str) -> None:
    """Refuse a training crop larger than the frames it is cut from (a decode size): it would only
    upsample, and a typo such as ``crop = 500`` would allocate clips 250 times the size intended."""
    if spec.decode_size is None:
        return
    crop, frame = tuple(spec.augment.size), tuple(spec.decode_size)
    if crop[0] > frame[0] or crop[1] > frame[1]:
        raise ConfigError(f"method {method!r}: crop {crop[0]}x{crop[1]} (method_args.crop) is larger than the decoded frames "
                          f"{frame[0]}x{frame[1]} (decode_size): set crop to at most {min(frame)} or decode larger frames")


def training_identity(config: PretrainConfig) -> dict:
    """The config fields that change what a run computes: where it writes, how it reports and
    how many loader workers and how much frame cache it uses do not (data order and augmentation depend on seeds only)."""
    identity = {k: v for k, v in to_dict(config).items() if k not in _NOT_IN_IDENTITY}
    identity["data"] = {k: v for k, v in identity["data"].items() if k not in ("workers", "cache_gb")}
    return identity


def _host_values(loss: torch.Tensor, parts: dict) -> dict[str, float]:
    """The loss and every loss part as Python floats, moved to the host in one transfer."""
    names = [k for k, v in parts.items() if isinstance(v, torch.Tensor)]
    stacked = torch.stack([loss.detach().reshape(())] + [parts[k].detach().float().reshape(()).to(loss.device) for k in names])
    values = dict(zip(["loss", *names], stacked.tolist()))
    values.update({k: float(v) for k, v in parts.items() if not isinstance(v, torch.Tensor)})
    return values


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated device memory (CUDA) or peak resident set size of the process (CPU), in MB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- checkpoints


def non_finite_tensors(tensors: dict) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` (nested dicts allowed, names joined
    with dots) that hold a NaN or Inf."""
    bad = []
    for name, value in tensors.items():
        if isinstance(value, dict):
            bad += [f"{name}.{inner}" for inner in non_finite_tensors(value)]
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(str(name))
    return bad


def _checkpoint_tensors(ckpt: dict) -> dict:
    """The tensors of a ``last.pt`` a resumed run would continue from: model and optimizer state."""
    return {"model": ckpt["model"], "optimizer": ckpt["optimizer"]["state"]}


def _name_some(names: list[str], limit: int = 5) -> str:
    """The first ``limit`` names, and how many more there are, for an error message."""
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` through :func:`core.io.atomic_write`: a crash never leaves half a checkpoint."""
    with atomic_write(path) as f:
        torch.save(state, f)


class CheckpointError(ValueError):
    """A checkpoint or encoder file that is missing or is not one vsbench wrote; the message names it."""


def load_checkpoint(path: Path, *, needs: tuple[str, ...] = ()) -> dict:
    """A ``last.pt`` or ``encoder.pt`` loaded on the CPU with ``weights_only=True`` (no pickled code
    runs); :class:`CheckpointError` names a missing file, one torch cannot read, or one that lacks
    the keys in ``needs``."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: no such file") from err
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as err:  # torch raises several kinds
        raise CheckpointError(f"{path}: not a checkpoint vsbench wrote ({type(err).__name__}: {str(err).splitlines()[0]})") from err
    missing = [k for k in needs if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise CheckpointError(f"{path}: not a vsbench {'encoder' if 'state_dict' in needs else 'checkpoint'} file (no {', '.join(missing)})")
    return saved


def _file_version(path: Path) -> tuple[int, int, int] | None:
    """What tells one version of ``path`` from another (an atomic write makes a new inode), or None
    when there is no file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def saved_training(saved: dict, path: str | os.PathLike) -> EncoderTraining | None:
    """How the encoder of a loaded ``encoder.pt`` was trained, or None for a file written before
    vsbench recorded it (evaluation then needs the protocol to say it); a malformed record is a
    CheckpointError naming the file."""
    if "training" not in saved:
        return None
    try:
        return EncoderTraining.from_dict(saved["training"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: malformed 'training' record {saved['training']!r}: {err}") from err


def load_encoder_weights(backbone: nn.Module, path: str | os.PathLike) -> None:
    """Load an ``encoder.pt`` written by a pretraining run into ``backbone`` (strict: same architecture)."""
    saved = load_checkpoint(Path(path), needs=("state_dict",))
    try:
        backbone.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: encoder weights of backbone {saved.get('backbone')!r} do not fit: {err}") from err


# ----------------------------------------------------------------------------- the run


class Pretraining:
    """One pretraining run: setup, the epoch loop, checkpoints and metrics."""

    def __init__(self, config: PretrainConfig, *, tracker=None, resume: bool = False):
        self.config = config
        self.dist: DistInfo = init_distributed(config.device)
        torch.manual_seed(config.seed)
        self.videos: VideoDataset = open_data(config.data, subset=config.data.subset,
                                              progress=config.progress and self.dist.is_main)
        if config.data.train_videos is not None:  # low-shot: a fixed, class-balanced draw of the readable videos
            from core.data.subset import draw_videos
            self.videos = draw_videos(self.videos, config.data.train_videos, config.data.train_videos_seed)
        self.init = config.init or get_method(config.method).backbone_init  # the paper's initialisation unless the config names one
        backbone = create_backbone(config.backbone, init=self.init, **config.backbone_args)
        if config.init_encoder:
            load_encoder_weights(backbone, config.init_encoder)
        try:
            self.method: Method = create_method(config.method, backbone, dataset_size=len(self.videos), overrides=config.method_args)
            self.spec = with_run_settings(self.method.data_spec(), config)
        except ConfigError:
            raise
        except ValueError as err:  # a method Config, DataSpec or clip request refusing a value of method_args
            raise ConfigError(f"method {config.method!r} with method_args {config.method_args}: {err}") from err
        check_crop_fits(self.spec, config.method)
        self.recipe = resolve_recipe(type(self.method).recipe, config)
        check_flip(config.data.path, self.spec.augment.flip_p, uses_labels=type(self.method).reference, what=f"method {config.method!r}")
        self.hash = config_hash({"config": training_identity(config), "init": self.init, "recipe": dataclasses.asdict(self.recipe),
                                 "method": config_dict(self.method.config), "data": self.videos.fingerprint()})
        self.run_dir = Path(config.output_dir) / (config.run_name or f"{config.method}-{config.backbone}-s{config.seed}-{self.hash}")
        self._setup_loader()
        self._setup_model()
        self.tracker = tracker
        self.state = TrainState(epoch=0, epochs=self.recipe.epochs, steps_per_epoch=self.steps_per_epoch,
                                world_size=self.dist.world_size, rank=self.dist.rank)
        self.skipped_total = 0
        self.epoch_steps = self.epoch_batches = 0  # steps and loader batches of the current epoch done (mid-epoch resume)
        self._rng_after_first_batch = None
        self.prior = self.saved_totals = RunTotals()
        self._start_segment()
        if self.dist.is_main:
            for path in remove_stale_temp_files(self.run_dir):
                log.warning("removed %s, left by an interrupted write whose process is gone", path)
        self.resume = resume
        self._locked = False
        self._checkpoint_known = _file_version(self.run_dir / CHECKPOINT)  # the version of last.pt this run read (or wrote last)
        if resume and self._checkpoint_known is not None:
            self._restore(load_checkpoint(self.run_dir / CHECKPOINT))

    def _setup_loader(self) -> None:
        reserve_frame_cache(self.config.data.cache_gb)
        world, accumulate = self.dist.world_size, self.config.accumulate
        if self.recipe.batch_size % (world * accumulate):
            raise ValueError(f"batch_size {self.recipe.batch_size} must be divisible by world_size*accumulate = {world * accumulate}")
        self.micro_batch = self.recipe.batch_size // (world * accumulate)
        self.loader: VideoLoader = make_loader(self.videos, self.spec, self.micro_batch, train=True,
                                               workers=self.config.data.workers, seed=self.config.seed, rank=self.dist.rank, world_size=world)
        available = len(self.loader) // accumulate
        if available == 0:
            raise ConfigError(f"batch_size {self.recipe.batch_size} is larger than the {len(self.videos)} videos of {self.config.data.path}: "
                              f"set batch_size to at most {len(self.videos)}")
        self.steps_per_epoch = min(available, self.config.steps_per_epoch or available)

    def _setup_model(self) -> None:
        device, cuda = self.dist.device, self.dist.device.type == "cuda"
        self.amp = self.config.amp and cuda
        self.channels_last = self.config.channels_last
        torch.backends.cudnn.benchmark = self.config.cudnn_benchmark and cuda
        method = self.method.to(device)
        if self.channels_last:
            method = method.to(memory_format=torch.channels_last_3d)
        if self.dist.world_size > 1:
            method.prepare_distributed()
            if self.config.sync_bn:
                method = convert_sync_batchnorm(method)
        self.method = method
        if self.config.compile:
            self.method.backbone.compile()
        params = self.method.param_groups() or [p for p in self.method.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, self.recipe)
        self.scheduler = build_scheduler(self.optimizer, self.recipe, self.steps_per_epoch)
        self.model = self._wrap_ddp(self.method)
        self.augment = DeviceAugment(self.spec, device, self.config.seed * 1000 + self.dist.rank, self.channels_last)

    def _wrap_ddp(self, method: Method) -> nn.Module:
        if self.dist.world_size == 1:
            return method
        ids = [self.dist.local_rank] if self.dist.device.type == "cuda" else None
        # Buffers are synced once at start-up only: queues and banks are updated identically on every
        # rank from gathered keys, and broadcasting them each step would cost bandwidth for nothing.
        sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(
            nn.parallel.DistributedDataParallel).parameters else {"broadcast_buffers": False}
        return nn.parallel.DistributedDataParallel(method, device_ids=ids, find_unused_parameters=method.find_unused_parameters,
                                                   **sync)

    # --------------------------------------------------------------------- the run folder

    @contextlib.contextmanager
    def folder_locked(self) -> Iterator[None]:
        """Hold the run folder's lock for the ``with`` block (rank 0; the outermost block of this
        run takes it, nested ones share it): another process training here raises
        :class:`~core.io.RunFolderLocked`. So does a checkpoint that another process wrote
        after this run read it to resume: continuing from the older one would undo that work."""
        if self._locked or not self.dist.is_main:
            yield
            return
        with run_folder_lock(self.run_dir):
            path = self.run_dir / CHECKPOINT
            if self.resume and _file_version(path) != self._checkpoint_known:
                raise RunFolderLocked(f"{path} changed after this run read it: another process trained in {self.run_dir} "
                                      "meanwhile; start this run again to resume from where that one got to")
            self._locked = True
            try:
                yield
            finally:
                self._locked = False

    def run_memo(self) -> RunMemo:
        """``mlflow_run.json``: the MLflow run an earlier segment of this run logged to; a resumed
        run of the same configuration continues it."""
        return RunMemo(self.run_dir / MLFLOW_RUN, self.hash)

    # --------------------------------------------------------------------- checkpoint state

    def _checkpoint_state(self, finished: bool) -> dict:
        return {
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": {},  # bf16 autocast needs no loss scaling; kept for a future fp16 path
            "rng": {"torch": torch.get_rng_state(), "augment": self.augment.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "step": self.state.step,
            "epoch": self.state.epoch,
            "epoch_steps": self.epoch_steps,  # mid-epoch (a preempted run): steps and loader batches of this epoch done
            "epoch_batches": self.loader.drawn if self.epoch_steps else 0,
            "skipped": dict(self.loader.skipped),
            "totals": dataclasses.asdict(self.saved_totals),
            "config_hash": self.hash,
            "finished": finished,
        }

    def _restore(self, ckpt: dict) -> None:
        path = self.run_dir / CHECKPOINT
        if ckpt["config_hash"] != self.hash:
            raise ForeignCheckpoint(f"{path} was written by a different configuration ({ckpt['config_hash']} != {self.hash}); "
                                    "train this one in another folder (--output-dir) or delete that last.pt to start afresh")
        bad = non_finite_tensors(_checkpoint_tensors(ckpt))
        if bad:
            raise NonFiniteWeights(f"{path} holds NaN/Inf in {len(bad)} tensors ({_name_some(bad)}): resuming it would train on "
                                   "poisoned weights; delete it to start the run over")
        self.method.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        # Mid-epoch, the epoch's DataLoader iterator (which draws its base seed from the torch
        # generator when the first batch is asked for) has to exist before the generator is set
        # back: run_epoch sets it after the first batch.
        self.epoch_steps, self.epoch_batches = ckpt.get("epoch_steps", 0), ckpt.get("epoch_batches", 0)
        torch.set_rng_state(ckpt["rng"]["torch"])
        self._rng_after_first_batch = ckpt["rng"]["torch"] if self.epoch_steps else None
        self.augment.generator.set_state(ckpt["rng"]["augment"])
        if ckpt["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        self.state.step, self.state.epoch = ckpt["step"], ckpt["epoch"]
        self.loader.skipped.update(ckpt.get("skipped", {}))
        self.skipped_total = len(self.loader.skipped)
        if "totals" in ckpt:
            self.prior = self.saved_totals = RunTotals(**ckpt["totals"])
        else:
            self.prior = self.saved_totals = UNKNOWN_TOTALS
            log.warning("%s was written by an older vsbench: the cost, loss and skipped videos of the earlier segments are unknown "
                        "and not reported", path)
        log.info("resumed %s at epoch %d, step %d", self.run_dir, self.state.epoch, self.state.step)

    def save(self, finished: bool = False) -> None:
        """Write ``last.pt`` (rank 0), after checking that every weight, buffer and optimizer
        state is finite: a diverged step never replaces the previous good checkpoint. The
        tracker's buffered metrics are sent first, so the store holds every step the checkpoint does."""
        self._check_weights(_checkpoint_tensors({"model": self.method.state_dict(), "optimizer": self.optimizer.state_dict()}),
                            CHECKPOINT)
        self.saved_totals = self.totals()
        if self.tracker is not None:
            self.tracker.flush()
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(self.run_dir / CHECKPOINT, self._checkpoint_state(finished))
            self._checkpoint_known = _file_version(self.run_dir / CHECKPOINT)

    def _check_weights(self, tensors: dict, file: str) -> None:
        """Raise :class:`NonFiniteWeights` before ``file`` is written if a tensor holds NaN or Inf."""
        bad = non_finite_tensors(tensors)
        if bad:
            raise NonFiniteWeights(f"non-finite weights after step {self.state.step}: {len(bad)} tensors hold NaN or Inf "
                                   f"({_name_some(bad)}); {self.run_dir / file} was not written; {self._last_checkpoint_note()}")

    def _last_checkpoint_note(self) -> str:
        """How an error names the run's ``last.pt``: "good" only when it belongs to this
        configuration and every tensor in it is finite."""
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return "no checkpoint was written yet"
        try:
            ckpt = load_checkpoint(path)
        except Exception as err:  # an error message must not hide the error it reports
            return f"{path} could not be read ({err})"
        if ckpt.get("config_hash") != self.hash:
            return f"{path} belongs to another configuration ({ckpt.get('config_hash')}), not to this run"
        bad = non_finite_tensors(_checkpoint_tensors(ckpt))
        if bad:
            return f"{path} is not a good checkpoint either: NaN/Inf in {len(bad)} tensors ({_name_some(bad)})"
        return f"last good checkpoint: {path} (epoch {ckpt['epoch']}, step {ckpt['step']})"

    def totals(self) -> RunTotals:
        """The run's totals now: the stored ones of earlier segments plus this segment's steps
        (the stored ones alone when this segment made no step)."""
        if not self.step_times:
            return self.prior
        prior = self.prior
        return RunTotals(wall_time_s=prior.wall_time_s + time.perf_counter() - self.segment_start,
                         step_time_s=prior.step_time_s + sum(self.step_times), clips=prior.clips + self.clips_done,
                         peak_memory_mb=max(prior.peak_memory_mb, peak_memory_mb(self.dist.device)) if math.isfinite(prior.peak_memory_mb)
                         else math.nan, final_loss=self.last_loss,
                         updates=None if prior.updates is None else prior.updates + self.updates_done)

    def _start_segment(self) -> None:
        self.segment_start = time.perf_counter()
        self.clips_done, self.updates_done, self.last_loss = 0, 0, math.nan
        self.step_times, self.data_times = [], []

    # --------------------------------------------------------------------- training

    def train_step(self, micro_batches: list[dict]) -> StepOutput:
        """One optimizer step over ``accumulate`` micro-batches (already loaded).

        The loss and its parts reach the host in one transfer per micro-batch, before
        ``backward()`` is launched: the finiteness check needs the forward result anyway, and
        reading values after the launch would make the host wait for the whole backward pass.
        """
        self.model.train()
        parts_sum: dict[str, float] = {}
        total = 0.0
        skip = False
        n = len(micro_batches)
        for i, batch in enumerate(micro_batches):
            sync = i == n - 1
            no_sync = self.model.no_sync() if (not sync and isinstance(self.model, nn.parallel.DistributedDataParallel)) else contextlib.nullcontext()
            with no_sync, torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.model(self.augment(batch), self.state)
            loss = out.loss.float()
            skip = skip or out.skip_optimizer
            values = _host_values(loss, out.parts)
            self._check_finite(values)
            (loss / n).backward()
            total += values.pop("loss") / n
            for k, v in values.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v / n
        if self.recipe.clip_grad:
            parts_sum["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.recipe.clip_grad))
        if not skip:  # a method may ask to skip the update (DCLR's queue warm-up)
            self.optimizer.step()
            self.updates_done += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.scheduler.step_update(self.state.step)
        self.method.update_momentum(self.state)  # EMA of the declared momentum pairs, also after a skipped update
        self.method.after_optimizer_step(self.state)
        return StepOutput(torch.tensor(total), parts_sum)

    def _check_finite(self, values: dict[str, float]) -> None:
        if math.isfinite(values["loss"]):
            return
        parts = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if k != "loss")
        raise NonFiniteLoss(f"non-finite loss {values['loss']} at step {self.state.step} (epoch {self.state.epoch}) [{parts}]; "
                            f"{self._last_checkpoint_note()}")

    def _next_micro_batches(self, batches) -> list[dict] | None:
        group = []
        for _ in range(self.config.accumulate):
            batch = next(batches, None)
            if batch is None:
                return None
            group.append(batch)
        return group

    def run_epoch(self, bar) -> float:
        """Train one epoch, or the rest of it when a preempted run resumes mid-epoch; returns the
        loss of its last step. An epoch in which every micro-batch was undecodable raises
        :class:`NothingTrained`; a stop request (:mod:`core.preemption`) raises :class:`_StopRequested`
        after the step it came in."""
        self.loader.set_epoch(self.state.epoch, skip_batches=self.epoch_batches)
        batches = iter(self.loader)
        t_prev = time.perf_counter()
        while self.epoch_steps < self.steps_per_epoch:
            group = self._next_micro_batches(batches)
            if group is None:  # every video of the last batches was undecodable
                break
            if self._rng_after_first_batch is not None:
                torch.set_rng_state(self._rng_after_first_batch)
                self._rng_after_first_batch = None
            t_data = time.perf_counter()
            out = self.train_step(group)
            self.last_loss = float(out.loss)
            self.epoch_steps += 1
            t_end = time.perf_counter()
            clips = sum(len(b["index"]) for b in group) * self.spec.clips * self.dist.world_size
            self._record(out, clips, t_end - t_prev, t_data - t_prev, bar)
            if preemption.stop_requested(self.state.step):
                raise _StopRequested
            t_prev = time.perf_counter()
        self._rng_after_first_batch = None  # still set: stopped after an epoch's last step, so no batch was drawn here
        self._account_skipped()
        if self.epoch_steps == 0:
            raise self._nothing_trained(f"epoch {self.state.epoch} made no step: every one of its micro-batches was undecodable")
        self.epoch_steps = self.epoch_batches = 0
        return self.last_loss

    def _nothing_trained(self, what: str) -> NothingTrained:
        skipped = self.loader.skipped
        first = "; ".join(f"{path}: {reason}" for path, reason in list(skipped.items())[:3])
        return NothingTrained(f"{self.run_dir}: {what}; {len(skipped)} of {len(self.videos)} videos were skipped as undecodable"
                              + (f" (first: {first})" if first else "") + "; the run trained nothing and reports no result")

    def _record(self, out: StepOutput, clips: int, step_time: float, data_time: float, bar) -> None:
        self.clips_done += clips
        self.step_times.append(step_time)
        self.data_times.append(data_time)
        lr = self.optimizer.param_groups[0]["lr"]
        if bar is not None:
            bar.update()
            bar.set_postfix(loss=f"{float(out.loss):.4f}", lr=f"{lr:.2e}", clips_s=f"{clips / step_time:.1f}")
        if self.tracker is not None and self.state.step % self.config.log_every == 0:
            metrics = {"train/loss": float(out.loss), "train/lr": lr, "train/clips_per_s": clips / step_time,
                       "train/data_wait_frac": data_time / step_time, "train/peak_memory_mb": peak_memory_mb(self.dist.device),
                       "train/epoch": self.state.epoch}
            metrics.update({f"train/{k}": float(v) for k, v in out.parts.items()})
            self.tracker.log_metrics(metrics, step=self.state.step)

    def _account_skipped(self) -> None:
        new = len(self.loader.skipped) - self.skipped_total
        self.skipped_total = len(self.loader.skipped)
        if self.tracker is not None and new:
            self.tracker.log_metrics({"data/skipped": self.skipped_total}, step=self.state.step)

    def run(self) -> PretrainResult:
        """Train from the current position to the last epoch, holding the run folder's lock;
        returns what the run produced, as totals over all its segments (a finished run reports its
        stored totals)."""
        with self.folder_locked():
            return self._train_to_last_epoch()

    def _train_to_last_epoch(self) -> PretrainResult:
        self._start_segment()
        self.scheduler.step_update(self.state.step)
        first_epoch = self.state.epoch
        show = self.config.progress and self.dist.is_main
        bar = tqdm(total=(self.recipe.epochs - first_epoch) * self.steps_per_epoch, desc=f"{self.config.method}/{self.config.backbone}",
                   unit="step", disable=not show)
        try:
            with preemption.deferred():
                self._epochs_from(first_epoch, bar)
        except _StopRequested:
            self._account_skipped()
            self.save(finished=False)
            log.warning("%s: stopped at epoch %d, step %d for the scheduler; the checkpoint resumes it exactly", self.run_dir,
                        self.state.epoch, self.state.step)
            barrier()
            preemption.hand_over()
        finally:
            bar.close()
        totals = self.saved_totals  # those of the finished checkpoint, whichever segment wrote it
        return PretrainResult(self.run_dir, self.save_encoder(), self.state.step, totals.wall_time_s, totals.clips_per_s,
                              totals.peak_memory_mb, totals.final_loss, skipped_videos=self.skipped_total)

    def _epochs_from(self, first_epoch: int, bar) -> None:
        for epoch in range(first_epoch, self.recipe.epochs):
            self.state.epoch = epoch
            self.run_epoch(bar)
            self.state.epoch = epoch + 1
            last = epoch + 1 == self.recipe.epochs
            if last and self.totals().updates == 0:
                raise self._nothing_trained(f"all {self.state.step} steps skipped the optimizer (the method's skip_optimizer)")
            if last or (epoch + 1) % self.config.checkpoint_every == 0:
                self.save(finished=last)
            if self.config.knn_every and (epoch + 1) % self.config.knn_every == 0:
                self.online_knn()

    def online_knn(self) -> dict[str, float]:
        """kNN top-1 of the current encoder (test split against train split, one centre clip per
        video): a cheap monitor that catches collapse early. Logged as ``eval/knn_online/*``."""
        from evaluation.features import extract_features
        from evaluation.knn import OnlineKNN
        from evaluation.protocols import FeatureProtocol, KNNProtocol

        spec, data, trained = self.spec, self.config.data, self.encoder_training()
        protocol = FeatureProtocol(split=data.split, clips=1, frames=spec.frames, stride=trained.stride, resize=spec.decode_size or (128, 171),
                                   crop=spec.augment.size[0], modality=trained.input.modality, normalize_input=trained.input.normalize,
                                   value_range=trained.input.value_range)
        kwargs = dict(device=self.dist.device, workers=data.workers, progress=False)
        train = open_data(data, subset="train")
        test = open_data(data, subset="test")
        ftrain = extract_features(self.method.encoder, train, protocol, **kwargs)
        ftest = extract_features(self.method.encoder, test, protocol, **kwargs)
        monitor = OnlineKNN(KNNProtocol(features=protocol), device=self.dist.device)
        metrics = monitor.evaluate(ftrain.features, ftrain.labels, ftest.features, ftest.labels)
        if self.tracker is not None:
            self.tracker.log_metrics({f"eval/knn_online/{k}": v for k, v in metrics.items()}, step=self.state.step)
        return metrics

    def encoder_training(self) -> EncoderTraining:
        """How this run trains its encoder, as evaluation must follow it: the stride of its clips
        (the lower end of a multi-rate range) and the method's input convention."""
        return EncoderTraining(stride=training_stride(self.spec.stride), input=self.method.encoder_input())

    def save_encoder(self) -> Path:
        """Write ``encoder.pt`` (rank 0) once its weights are checked finite: the backbone's name and
        arguments, its weights, and how it was trained (``"training"``: stride and input convention)."""
        path = self.run_dir / ENCODER
        self._check_weights({"encoder": self.method.encoder.state_dict()}, ENCODER)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(path, {"backbone": self.config.backbone, "backbone_args": self.config.backbone_args,
                                   "training": self.encoder_training().to_dict(), "state_dict": self.method.encoder.state_dict()})
        return path

    def describe(self) -> dict:
        """Flat description of the run for tracking: config, resolved recipe, method config, data."""
        return {"config": to_dict(self.config), "recipe": dataclasses.asdict(self.recipe), "method_config": config_dict(self.method.config),
                "effective": self.method.effective_settings(), "input": self.method.encoder_input().to_dict(), "init": self.init,
                "data_spec": dataclasses.asdict(self.spec), "data": {"videos": len(self.videos), "fingerprint": self.videos.fingerprint(),
                         "missing": len(self.videos.extra.get("missing", []))},
                "engine": {"micro_batch": self.micro_batch, "steps_per_epoch": self.steps_per_epoch, "world_size": self.dist.world_size,
                           "amp_bf16": self.amp, "channels_last_3d": self.channels_last, "device": str(self.dist.device)}}


def _known_cost(result: PretrainResult) -> dict[str, float]:
    """The cost metrics and final loss of ``result`` that are known: an unknown one (NaN) is left
    out, so a results table shows a gap rather than a made-up 0."""
    cost = {"pretrain/wall_time_s": result.wall_time_s, "pretrain/clips_per_s": result.clips_per_s,
            "pretrain/peak_memory_mb": result.peak_memory_mb, "pretrain/final_loss": result.final_loss}
    unknown = [k for k, v in cost.items() if not math.isfinite(v)]
    if unknown:
        log.warning("%s: %s unknown (checkpoint written before vsbench stored them): not logged", result.run_dir, ", ".join(unknown))
    return {k: v for k, v in cost.items() if k not in unknown}


def pretrain(
    config: PretrainConfig,
    *,
    resume: bool = False,
    parent_run_id: str | None = None,
    tags: dict | None = None,
    config_file: str | os.PathLike | None = None,
) -> PretrainResult:
    """Pretrain ``config.method`` on ``config.data`` and track the run in MLflow (rank 0 only)."""
    return run_tracked(Pretraining(config, resume=resume), parent_run_id=parent_run_id, tags=tags, config_file=config_file)


def run_tracked(
    run: Pretraining,
    *,
    parent_run_id: str | None = None,
    tags: dict | None = None,
    config_file: str | os.PathLike | None = None,
    after=None,
) -> PretrainResult:
    """Train ``run`` to its last epoch inside an MLflow run, holding the run folder's lock throughout.

    Logged: the flattened config, resolved recipe and method config as params; per-step metrics;
    the config (resolved JSON, and ``config_file`` when given) and the final encoder weights as
    artifacts. A failure (including a non-finite loss) marks the MLflow run FAILED. ``after``
    (``after(run, result, tracker)``) runs inside the same MLflow run, e.g. to log evaluations.
    A resumed run continues the MLflow run of its earlier segments (:meth:`Pretraining.run_memo`).
    """
    with run.folder_locked():
        return _train_and_track(run, parent_run_id=parent_run_id, tags=tags, config_file=config_file, after=after)


def _train_and_track(run: Pretraining, *, parent_run_id, tags, config_file, after) -> PretrainResult:
    from core.tracking import Tracker

    config = run.config
    run_tags = {"config_hash": run.hash, "dataset_fingerprint": run.videos.fingerprint(), "method": config.method,
                "backbone": config.backbone, "seed": str(config.seed), **(tags or {})}
    memo = run.run_memo()
    earlier = memo.run_id() if run.resume and run.dist.is_main else None
    with Tracker(config.experiment, run.run_dir.name, tracking_uri=config.tracking_uri, parent_run_id=parent_run_id, tags=run_tags,
                 enabled=run.dist.is_main, continue_run_id=earlier) as tracker:
        if run.dist.is_main:
            memo.remember(tracker.run_id)
        run.tracker = tracker
        description = run.describe()
        tracker.log_params(description)
        tracker.log_dict(description, "config.json")
        if config_file is not None:
            tracker.log_artifact(config_file)
        result = run.run()
        tracker.log_metrics({**_known_cost(result), "pretrain/params": sum(p.numel() for p in run.method.encoder.parameters()),
                             "data/skipped": result.skipped_videos}, step=result.steps)
        if run.dist.is_main:
            tracker.log_artifact(result.encoder_path)
        if after is not None:
            after(run, result, tracker)
        result.run_id = tracker.run_id
    return result


def train_classifier(config: PretrainConfig) -> TrainedClassifier:
    """The fine-tune protocol's trainer (:data:`evaluation.finetune.Trainer`): this loop, resumable,
    on the config :func:`evaluation.finetune.finetune_config` built."""
    run = Pretraining(config, resume=True)
    result = run.run()
    return TrainedClassifier(model=run.method, device=run.dist.device, wall_time_s=result.wall_time_s)
