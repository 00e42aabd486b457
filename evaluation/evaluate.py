"""Run every protocol on one encoder: the numbers a row of a results table is made of.

Features are extracted once per split (:mod:`evaluation.features`, cached) and shared by the
retrieval, linear-probe and kNN protocols; the motion probes use a fixed set of test clips; the
fine-tune protocol trains a classifier from the encoder's weights through the harness's loop.
Every metric is named ``eval/<protocol>/<metric>`` and every protocol's hash is returned as a
tag ``protocol.<name>``, so tables only compare numbers from equal protocols.

The settings are checked against the data before any feature is extracted (:func:`eval_data`): a
k that ranks more videos than the gallery holds, or a video that cannot be decoded, is refused
naming the key or the files, not found after minutes of extraction (or hours of pretraining: a
suite runs the same check before its first run).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from evaluation.features import extract_features
from evaluation.finetune import Trainer, run_finetune
from evaluation.knn import evaluate_knn, knn_classify
from evaluation.linear import evaluate_linear
from evaluation.probes import load_bias_alignment, motion_probe, static_bias_gap
from evaluation.protocols import EncoderTraining, FeatureProtocol, FinetuneProtocol, KNNProtocol, LinearProtocol, RetrievalProtocol, resolve
from evaluation.retrieval import evaluate_retrieval, topk_neighbours
from core.config import ConfigError, DataConfig
from core.data.datasets import DatasetError, VideoDataset, open_data
from core.data.video import read_frames

log = logging.getLogger(__name__)
PROTOCOLS = ("retrieval", "linear", "knn", "probe", "finetune")


@dataclass
class EvalConfig:
    """Which protocols a suite runs on every encoder, and their settings: each protocol's own
    dataclass (``[eval.retrieval]``, ``[eval.linear]``, ``[eval.knn]``, ``[eval.finetune]`` in a
    suite), and the clip features the first three and the motion probe share (``[eval.features]``)."""

    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    features: FeatureProtocol = field(default_factory=FeatureProtocol)
    retrieval: RetrievalProtocol = field(default_factory=RetrievalProtocol)
    linear: LinearProtocol = field(default_factory=LinearProtocol)
    knn: KNNProtocol = field(default_factory=KNNProtocol)
    probe_videos: int = 64  # test videos the motion probe uses (evenly chosen)
    finetune: FinetuneProtocol = field(default_factory=FinetuneProtocol)
    batch_size: int = 8  # videos per feature-extraction batch
    workers: int = 2

    def __post_init__(self) -> None:
        unknown = set(self.protocols) - set(PROTOCOLS)
        if unknown:
            raise ConfigError(f"eval.protocols: unknown protocol(s) {sorted(unknown)}; valid: {', '.join(PROTOCOLS)}")
        for name in ("retrieval", "linear", "knn"):
            if getattr(self, name).features != FeatureProtocol():
                raise ConfigError(f"eval.{name}.features: the features are shared by retrieval, linear, kNN and the probe; "
                                  "set them once in [eval.features]")

    def protocol_objects(self) -> dict:
        """The frozen protocol of each enabled protocol name, each with the shared features."""
        shared = {name: dataclasses.replace(getattr(self, name), features=self.features) for name in ("retrieval", "linear", "knn")}
        every = {**shared, "probe": self.features, "finetune": self.finetune}
        return {name: every[name] for name in self.protocols}


def resolve_all(config: EvalConfig, trained: EncoderTraining | None) -> EvalConfig:
    """``config`` with its feature and fine-tune protocols resolved against how the encoder was
    ``trained`` (:func:`evaluation.protocols.resolve`); a ConfigError names the keys to set when
    ``trained`` is None and a protocol leaves them to the encoder."""
    finetune = resolve(config.finetune, trained) if "finetune" in config.protocols else config.finetune
    return dataclasses.replace(config, features=resolve(config.features, trained), finetune=finetune)


PAPER_PROTOCOLS = Path(__file__).with_name("paper_protocols")


def paper_protocol(name: str) -> dict:
    """A paper's own evaluation settings as ``[eval]`` tables (``evaluation/paper_protocols/<name>.toml``),
    to be merged under the caller's explicit settings."""
    from core.config import load_toml

    known = sorted(p.stem for p in PAPER_PROTOCOLS.glob("*.toml"))
    if name not in known:
        raise ConfigError(f"no paper protocol {name!r}; available: {', '.join(known)}")
    return load_toml(PAPER_PROTOCOLS / f"{name}.toml")


def protocol_tags(config: EvalConfig) -> dict[str, str]:
    """``protocol.<name>`` -> short hash, for every enabled protocol."""
    return {f"protocol.{name}": p.hash() for name, p in config.protocol_objects().items()}


def eval_data(data: DataConfig, config: EvalConfig) -> tuple[VideoDataset, VideoDataset]:
    """The train split (the retrieval and kNN gallery, the linear probe's training set) and the test
    split of ``config.features.split``, checked against ``config`` before anything is computed.

    Refused: a k of a protocol that ranks the gallery (``knn.k``, ``retrieval.ks``) larger than the
    train split (a ConfigError naming ``eval.<key>``, the gallery size and the data path), and any
    video of either list that cannot be decoded (a DatasetError naming every such file): evaluation
    reads every video, so one bad file would stop it midway.

    Cheap: opening a data set verifies each video with :func:`core.data.video.probe_video`
    (header and packet count, first frame only; no clip is decoded here) once, and its data set
    index caches the result, so a second check only reads the index."""
    split = config.features.split
    train = open_data(data, subset="train", split=split)
    test = open_data(data, subset="test", split=split)
    _check_gallery(config, len(train), f"the train split {split} of {data.path}")
    _check_decodable([train, test], data.path)
    return train, test


def _check_gallery(config: EvalConfig, gallery: int, what: str) -> None:
    """Every k a ranking protocol asks for must exist among the ``gallery`` train videos."""
    ranked = {"knn": ("knn.k", config.knn.k, config.knn.k),
              "retrieval": ("retrieval.ks", list(config.retrieval.ks), max(config.retrieval.ks, default=0))}
    for protocol, (key, value, k) in ranked.items():
        if protocol in config.protocols and k > gallery:
            raise ConfigError(f"eval.{key} = {value}: {protocol} ranks the {gallery} videos of {what} (the gallery); "
                              f"valid: every k at most {gallery}")


def _check_decodable(datasets: list[VideoDataset], path: str) -> None:
    """Every video the probe marked corrupt, named with its reason, in one error."""
    bad = sorted({(r.path, r.error) for ds in datasets for r in ds.corrupt})
    if bad:
        listed = "; ".join(f"{file}: {reason}" for file, reason in bad)
        raise DatasetError(f"{path}: {len(bad)} video(s) of the evaluated train/test lists cannot be decoded, and evaluation "
                           f"reads every video: {listed}; replace or re-encode them (`vsbench data check {path}` lists them)")


def finetune_run_name(run_name: str) -> str:
    """The run folder name of the fine-tune protocol for the encoder evaluated as ``run_name``."""
    return f"{run_name}-finetune"


def _prefixed(name: str, metrics: dict) -> dict[str, float]:
    return {f"eval/{name}/{k}": float(v) for k, v in metrics.items()}


def evaluate_encoder(
    encoder: nn.Module,
    *,
    data: DataConfig,
    config: EvalConfig,
    device: torch.device,
    cache_dir: str | Path | None = None,
    finetune_from: str | None = None,
    backbone: str | None = None,
    seed: int = 0,
    output_dir: str | Path = "runs",
    run_name: str = "eval",
    examples_path: str | Path | None = None,
    trained: EncoderTraining | None,
    trainer: Trainer | None = None,
) -> dict[str, float]:
    """All enabled protocols on ``encoder``; fine-tuning needs ``finetune_from`` (an encoder.pt),
    ``backbone`` and the ``trainer`` that trains the classifier (``harness.train.train_classifier``).

    ``trained``: how the encoder was trained (the temporal stride of its clips and its input
    convention); protocol fields left None follow it (``eval/stride`` records the stride used).
    None (an encoder file that does not record it) is accepted only when the protocols set those
    fields themselves. With ``examples_path``,
    retrieval also draws a PNG grid of test queries and their top-5 train neighbours (frame
    strips, framed green when the class matches)."""
    protocols = config.protocol_objects()
    config = resolve_all(config, trained)
    train, test = eval_data(data, config)
    metrics: dict[str, float] = {"eval/stride": float(config.features.stride)}
    encoder = encoder.to(device).eval()
    if {"retrieval", "linear", "knn"} & protocols.keys():
        metrics |= _feature_protocols(encoder, train, test, protocols, config, device, cache_dir, data, examples_path)
    if "probe" in protocols:
        probe = motion_probe(encoder, test, config.features, generator=torch.Generator().manual_seed(seed),
                             max_videos=config.probe_videos, select="even", device=device)
        metrics |= _prefixed("probe", probe)
    if "finetune" in protocols and finetune_from is not None:
        if trainer is None:
            raise ValueError("the finetune protocol needs a trainer (harness.train.train_classifier)")
        ft, _ = run_finetune(config.finetune, backbone=backbone, data=data, init_encoder=finetune_from, seed=seed,
                             device=str(device), output_dir=output_dir, run_name=finetune_run_name(run_name), workers=config.workers,
                             trained=trained, trainer=trainer)
        metrics |= _prefixed("finetune", ft)
    return metrics


def _feature_protocols(encoder, train, test, protocols, config: EvalConfig, device, cache_dir, data, examples_path) -> dict[str, float]:
    kwargs = dict(device=device, batch_size=config.batch_size, workers=config.workers, cache_dir=cache_dir, progress=False,
                  flow_root=data.flow_root)
    ftrain = extract_features(encoder, train, config.features, **kwargs)
    ftest = extract_features(encoder, test, config.features, **kwargs)
    args = (ftrain.features, ftrain.labels, ftest.features, ftest.labels)
    metrics: dict[str, float] = {}
    if "retrieval" in protocols:
        metrics |= _prefixed("retrieval", evaluate_retrieval(protocols["retrieval"], *args, device=device))
        if examples_path is not None:
            retrieval_examples(train, test, ftrain, ftest, examples_path)
    if "linear" in protocols:
        metrics |= _prefixed("linear", evaluate_linear(protocols["linear"], *args))
    if "knn" in protocols:
        knn = protocols["knn"]
        metrics |= _prefixed("knn", evaluate_knn(knn, *args, device=device))
        metrics |= _bias_gap(ftrain, ftest, knn, test, data)
    return metrics


def _strip(record, frames: int, size: tuple[int, int]) -> np.ndarray:
    """``frames`` evenly spaced frames of a video, for display."""
    return read_frames(record.path, np.linspace(0, record.num_frames - 1, frames).round().astype(int), size=size,
                       num_frames=record.num_frames)


def retrieval_examples(train, test, ftrain, ftest, path: str | Path, *, queries: int = 6, frames: int = 4,
                       size: tuple[int, int] = (48, 64)) -> Path:
    """A PNG grid: the first test videos of evenly spaced classes and their top-5 train neighbours."""
    from core.figures import plot_retrieval_examples

    chosen = np.linspace(0, len(ftest.indices) - 1, min(queries, len(ftest.indices))).round().astype(int)
    _, neighbours = topk_neighbours(ftest.features[chosen], ftrain.features, min(5, len(ftrain.indices)))
    query_frames = np.stack([_strip(test[int(ftest.indices[i])], frames, size) for i in chosen])
    neighbour_frames = np.stack([np.stack([_strip(train[int(ftrain.indices[j])], frames, size) for j in row]) for row in neighbours.tolist()])
    return plot_retrieval_examples(query_frames, neighbour_frames, ftest.labels[chosen].numpy(), ftrain.labels[neighbours].numpy(),
                                   test.classes, path)


def scene_bias(data_path: str | Path) -> float:
    """The scene-bias probability a MotionShapes data set was generated with (0 for other data)."""
    try:
        return float(json.loads((Path(data_path) / "motionshapes.json").read_text())["config"]["scene_bias"])
    except (OSError, KeyError, TypeError, ValueError):
        return 0.0


def _bias_gap(ftrain, ftest, knn: KNNProtocol, test, data: DataConfig) -> dict[str, float]:
    """kNN accuracy gap between bias-aligned and bias-conflicting test videos, on MotionShapes
    generated with scene bias (without it, "aligned" carries no meaning and nothing is reported)."""
    if scene_bias(data.path) <= 0:
        return {}
    try:
        aligned = load_bias_alignment(data.path, test)
    except (FileNotFoundError, KeyError, ValueError):
        return {}
    if aligned.all() or not aligned.any():
        return {}
    scores = knn_classify(ftrain.features, ftrain.labels, ftest.features, knn.k, knn.temperature, num_classes=len(test.classes))
    gap = static_bias_gap(scores.argmax(dim=1), ftest.labels, aligned[ftest.indices])
    return {"eval/probe/bias_gap": float(gap["gap"])}

