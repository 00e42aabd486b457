"""Fine-tune protocol: train the whole network with labels, test with 10 clips per video.

Training runs through a :data:`Trainer` the caller hands in (the engine passes
``harness.train.train_classifier``: its own loop with the ``supervised`` method, backbone + linear
head, cross-entropy, crop-and-flip augmentation), so AMP, DDP and checkpoints are the same as in
pretraining, and evaluation never imports the engine. Started from a pretrained encoder it is fine-tuning; started from random weights it
is the "supervised" reference row. With ``train_videos`` set (low-shot, as SEVERE's 1000 videos)
it trains on that many videos of the train split, drawn class-balanced by a fixed rule
(:func:`core.data.subset.draw_videos`): the same subset for every run, seed and machine.

Testing visits every test video once (no dropped tail; the test split is never subsampled), takes
``test_clips`` uniformly spaced clips (VCOP/IIC centres) with a deterministic centre crop, and reports

- ``video_top1``: softmax averaged over the clips of a video, then argmax (as SEVERE does;
  IIC's own script averages raw logits instead);
- ``clip_top1``: every clip classified on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from evaluation.features import crop_clips
from evaluation.protocols import EncoderTraining, FinetuneProtocol, resolve
from core.uncertainty import with_interval
from core.config import DataConfig, PretrainConfig
from core.data.datasets import VideoDataset, open_data
from core.data.encoder_input import to_encoder_input
from core.data.loader import make_loader
from core.data.request import LoadRequest


@dataclass
class TrainedClassifier:
    """What a :data:`Trainer` returns: the trained ``supervised`` method (``logits(x)`` and
    ``encoder``), the device it sits on and the training wall time."""

    model: torch.nn.Module
    device: torch.device
    wall_time_s: float


Trainer = Callable[[PretrainConfig], TrainedClassifier]  # trains the config of :func:`finetune_config`


def finetune_config(protocol: FinetuneProtocol, *, backbone: str, data: DataConfig, num_classes: int, init_encoder: str | None,
                    seed: int, device: str, output_dir: str, run_name: str) -> PretrainConfig:
    """The training config of the fine-tune protocol (the ``supervised`` method on the train split,
    or on ``protocol.train_videos`` videos drawn from it: low-shot); ``protocol`` must be resolved
    against the encoder (:func:`evaluation.protocols.resolve`): the classifier is fed as the
    encoder was trained."""
    convention = protocol.input_convention()
    return PretrainConfig(
        method="supervised", backbone=backbone,
        data=dataclasses.replace(data, split=protocol.split, subset="train", train_videos=protocol.train_videos,
                                 train_videos_seed=protocol.train_videos_seed),
        method_args={"num_classes": num_classes, "frames": protocol.frames, "crop": protocol.crop, "stride": protocol.stride,
                     "flip": protocol.flip, "crop_scale": protocol.crop_scale, "modality": convention.modality,
                     "value_range": convention.value_range, "normalize": convention.normalize},
        optimizer=protocol.optimizer, epochs=protocol.epochs, batch_size=protocol.batch_size, lr=protocol.lr, milestones=protocol.milestones,
        weight_decay=protocol.weight_decay, decode_size=protocol.resize, steps_per_epoch=protocol.steps_per_epoch,
        init_encoder=init_encoder, seed=seed, device=device, output_dir=output_dir, run_name=run_name, progress=False,
    )


@torch.no_grad()
def test_classifier(model, videos: VideoDataset, protocol: FinetuneProtocol, *, device: torch.device, batch_size: int = 8,
                    workers: int = 2, progress: bool = True) -> dict[str, float]:
    """Video- and clip-level top-1 of ``model.logits`` on every video of ``videos``, with the
    bootstrap interval of the video-level top-1 (``video_top1_ci_low/high``)."""
    request = LoadRequest(frames=protocol.frames, stride=protocol.stride, clips=protocol.test_clips, mode="uniform", decode_size=protocol.resize)
    loader = make_loader(videos, request, batch_size, train=False, workers=workers)
    model.eval()
    video_hits: list[torch.Tensor] = []
    clip_hits = videos_seen = 0
    for batch in tqdm(loader, desc="fine-tune test", unit="batch", disable=not progress):
        x = to_encoder_input(crop_clips(batch["rgb"].to(device), protocol.crop), protocol.input_convention())
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model.logits(x)
        probs = logits.float().softmax(dim=1).reshape(len(batch["index"]), protocol.test_clips, -1)
        labels = batch["label"].to(device)
        video_hits.append((probs.mean(dim=1).argmax(dim=1) == labels).cpu())
        clip_hits += int((probs.argmax(dim=2) == labels[:, None]).sum())
        videos_seen += len(labels)
    if videos_seen != len(videos):
        raise RuntimeError(f"fine-tune test saw {videos_seen} of {len(videos)} videos")
    return {**with_interval("video_top1", torch.cat(video_hits).float()), "clip_top1": clip_hits / (videos_seen * protocol.test_clips)}


def classifier_training(protocol: FinetuneProtocol, trained: EncoderTraining | None = None) -> EncoderTraining:
    """How the classifier's backbone is trained by ``protocol`` (stride and input convention), for
    an encoder ``trained`` as given, or from scratch (None: stride 1, normalised RGB, unless the
    protocol sets them): what evaluating that backbone afterwards must follow."""
    resolved = resolve(protocol, trained or EncoderTraining())
    return EncoderTraining(stride=resolved.stride, input=resolved.input_convention())


def run_finetune(protocol: FinetuneProtocol, *, backbone: str, data: DataConfig, init_encoder: str | None, seed: int,
                 device: str, output_dir: str | Path, run_name: str, trainer: Trainer, workers: int = 2,
                 trained: EncoderTraining | None = None) -> tuple[dict[str, float], torch.nn.Module]:
    """Train the classifier with ``trainer`` (from ``init_encoder``, or from scratch when None) and test it.

    ``trained``: how the encoder was pretrained (stride, input convention), which the protocol's
    None fields follow; from scratch (the "supervised" row) it defaults to stride 1 and normalised
    RGB. Returns the test metrics and the trained backbone (the "supervised" reference row
    evaluates it with the other protocols)."""
    protocol = resolve(protocol, trained if init_encoder is not None else trained or EncoderTraining())

    test = open_data(data, subset="test", split=protocol.split)
    config = finetune_config(protocol, backbone=backbone, data=data, num_classes=len(test.classes), init_encoder=init_encoder,
                             seed=seed, device=device, output_dir=str(output_dir), run_name=run_name)
    classifier = trainer(config)
    metrics = test_classifier(classifier.model, test, protocol, device=classifier.device, workers=workers, progress=False)
    metrics["train_wall_time_s"] = classifier.wall_time_s
    return metrics, classifier.model.encoder
