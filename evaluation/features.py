"""Per-video features of a frozen encoder: the one extraction every evaluation protocol shares.

Retrieval, the linear probe and kNN all start from the same thing: one feature vector per video
of a split, computed the same way for every method. :func:`extract_features` computes it:

1. **Clips.** ``protocol.clips`` clips of ``protocol.frames`` frames (stride ``protocol.stride``)
   per video with evenly spaced centres (the loader's ``"uniform"`` mode, VCOP/IIC's rule),
   decoded at ``protocol.resize`` = (H, W).
2. **Crop.** A deterministic centre crop to ``protocol.crop`` (:func:`center_crop_video` with
   ``resize=None``: frames are already decoded at ``protocol.resize``, so the crop is an exact
   slice), giving float clips in [0, 1].
3. **Input convention** (:func:`~core.data.encoder_input.to_encoder_input`), applied to the
   [0, 1] crop: the protocol's ``modality``, ``value_range`` and ``normalize_input``, each taken
   from how the encoder was trained when the protocol leaves it None (:func:`evaluation.protocols.resolve`):

   - ``"rgb"``: the frames, mapped to the value range, then ImageNet mean/std normalised when
     ``normalize_input`` (IIC trains on [0, 1] frames without normalisation; the others normalise);
   - ``"residual"``: IIC's residual clip ``(x - roll(x, 1, T) + 1) / 2`` computed on the **[0, 1]
     clip, before any normalisation**, as IIC computes it, then the value range and normalisation;
   - ``"flow"``: the 2-channel (u, v) clip of the flow cache (``flow_root``, see
     :mod:`core.data.modalities`) mapped to [0, 1] (``q / 255``, 0.5 = no motion), never
     normalised (ImageNet statistics are RGB statistics), which is what the training pipeline
     feeds flow encoders. Needs an encoder built with ``in_channels=2``.

4. **Features per clip** (:func:`clip_features`): ``layer="pooled"`` is ``encoder(x)`` (global
   average pool of layer4); ``layer="conv5_maxpool"`` is IIC's retrieval feature, the layer4
   (conv5) map max-pooled with kernel = stride = (1, 2, 2) (no padding, floor: a trailing odd
   row/column is dropped) and flattened: ``C * T4 * floor(H4 / 2) * floor(W4 / 2)`` values
   (:func:`conv5_maxpool_dim`). For a 16x112x112 clip, R3D-18 / r3d_vcop's layer4 is 512x2x7x7,
   which pools to 512x2x3x3 = **9216** (the figure IIC reports); r3d_tiny at 4x32x32 has a
   128x1x2x2 layer4, pooled to 128x1x1x1 = 128; at 8x64x64 it is 128x1x4x4 -> 512.
5. **Per video**: the MEAN of the clip features (in float32).
6. **Merge** (``protocol.merge``, IIC's "merge" of RGB and residual): the per-video features of
   the second modality, computed with the same encoder from the same decoded clips, are
   concatenated: ``merge_rule="l2"`` L2-normalises each part first,
   ``[f_mod / |f_mod|, f_merge / |f_merge|]``, so neither modality dominates the cosine by its
   norm; ``merge_rule="concat"`` concatenates the raw features, as IIC's retrieval script does.
   Both modalities must have the same channel count (rgb + residual; flow has 2 channels).

The encoder runs in eval mode under ``torch.no_grad()`` (not inference mode, so the returned
tensors can still be used in autograd, e.g. by a torch linear probe), in bf16 autocast on CUDA
and in float32 elsewhere. Its training mode is restored afterwards.

**Every video exactly once.** The evaluation loader visits videos in a fixed order, keeps the
tail batch, and under DDP gives each rank a disjoint (strided) slice. Each rank extracts its
slice; the slices are all-gathered (sizes first, then padded tensors, trimmed back), de-duplicated
by video index and sorted, so every rank returns the complete :class:`FeatureSet` with
``indices == arange(N)``; anything else is an error. An undecodable video stops the run with
:class:`~core.data.video.CorruptVideo` naming the file: evaluation never substitutes another
video.

**Cache.** With ``cache_dir``, the result is stored (``torch.save`` of plain tensors, a list of
keys and a metadata dict; written to a temporary file and ``os.replace``-d into place; read back
with ``weights_only=True``) under a name keyed by the encoder's hash (:func:`encoder_fingerprint`
unless ``encoder_hash`` is given), ``protocol.hash()``, ``videos.fingerprint()`` and the subset,
plus the numeric precision (bf16 on CUDA, fp32 elsewhere) and, for flow, the flow cache's
settings, since those change the numbers too. The retrieval, linear and kNN protocols of one
encoder and :class:`~evaluation.protocols.FeatureProtocol` therefore share one extraction. A
cache file whose keys or labels do not match the data set is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from evaluation.protocols import FeatureProtocol
from core.data.datasets import VideoDataset
from core.data.loader import make_loader
from core.data.request import LoadRequest
from core.data.encoder_input import to_encoder_input
from core.data.transforms import center_crop_video
from core.data.video import CorruptVideo
from core.io import atomic_write
from core.distributed import all_gather, is_distributed, rank, world_size

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_VERSION",
    "FeatureSet",
    "MODALITY_CHANNELS",
    "clip_features",
    "conv5_maxpool",
    "conv5_maxpool_dim",
    "crop_clips",
    "encoder_fingerprint",
    "extract_features",
    "feature_cache_path",
]

CACHE_VERSION = 1
MODALITY_CHANNELS = {"rgb": 3, "residual": 3, "flow": 2}
STREAM = {"rgb": "rgb", "residual": "rgb", "flow": "flow"}  # which decoded stream a modality derives from
CONV5_POOL = (1, 2, 2)  # IIC: max-pool kernel = stride over (T, H, W) of the conv5 map


@dataclass
class FeatureSet:
    """One feature vector per video of a data set split.

    ``features`` float32 CPU (N, D); ``labels`` int64 (N,); ``indices`` int64 (N,), the videos'
    positions in the :class:`VideoDataset` (ascending, each exactly once); ``keys`` the videos'
    :attr:`VideoRecord.key`, in the same order.
    """

    features: Tensor
    labels: Tensor
    indices: Tensor
    keys: list[str]

    def __post_init__(self) -> None:
        n = self.features.shape[0]
        if self.features.dim() != 2 or self.labels.shape != (n,) or self.indices.shape != (n,) or len(self.keys) != n:
            raise ValueError(
                f"inconsistent FeatureSet: features {tuple(self.features.shape)}, labels {tuple(self.labels.shape)}, "
                f"indices {tuple(self.indices.shape)}, {len(self.keys)} keys"
            )

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]


# --------------------------------------------------------------------------------------------
# Encoder identity


def _unwrap(module: nn.Module) -> nn.Module:
    """The plain module behind DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


def encoder_fingerprint(module: nn.Module) -> str:
    """A short hash (16 hex digits) of an encoder's state_dict: names, dtypes, shapes and bytes.

    Equal weights and buffers give equal fingerprints whatever the device or wrapper (DDP,
    torch.compile); any changed value changes it. Used as the default cache key of
    :func:`extract_features`.
    """
    h = hashlib.sha1()
    for name, t in sorted(_unwrap(module).state_dict().items()):
        t = t.detach()
        h.update(f"{name}\t{t.dtype}\t{tuple(t.shape)}\n".encode())
        h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# From decoded clips to features


def crop_clips(x: Tensor, crop: int) -> Tensor:
    """The loader's uint8 (B, clips, T, H, W, C) -> float (B * clips, C, T, crop, crop) in [0, 1].

    A deterministic centre crop; no resampling when the frames are at least ``crop`` pixels on
    each side (they were decoded at the protocol's size).
    """
    if x.dim() != 6:
        raise ValueError(f"expected a (B, clips, T, H, W, C) batch, got shape {tuple(x.shape)}")
    b, c = x.shape[:2]
    return center_crop_video(x.reshape(b * c, *x.shape[2:]), (crop, crop), resize=None)


def conv5_maxpool(layer4: Tensor) -> Tensor:
    """IIC's retrieval feature: a (B, C, T, H, W) conv5 map max-pooled by (1, 2, 2), flattened."""
    return F.max_pool3d(layer4, kernel_size=CONV5_POOL, stride=CONV5_POOL).flatten(1)


def conv5_maxpool_dim(layer4_shape: tuple[int, int, int, int]) -> int:
    """Size of :func:`conv5_maxpool` for a layer4 map of shape (C, T, H, W): C*T*floor(H/2)*floor(W/2)."""
    c, t, h, w = layer4_shape
    return c * (t // CONV5_POOL[0]) * (h // CONV5_POOL[1]) * (w // CONV5_POOL[2])


def clip_features(encoder: nn.Module, x: Tensor, layer: str = "pooled") -> Tensor:
    """Per-clip features (B, D) of an encoder-ready batch x (B, C, T, H, W) at ``layer``.

    ``"pooled"`` calls ``encoder(x)``; ``"conv5_maxpool"`` needs ``encoder.forward_stages`` (every
    :class:`backbones.VideoBackbone` has it). Runs under whatever grad/autocast mode is active.
    """
    if layer == "pooled":
        return encoder(x)
    if layer == "conv5_maxpool":
        if not hasattr(encoder, "forward_stages"):
            raise TypeError(f"layer 'conv5_maxpool' needs an encoder with forward_stages(); {type(encoder).__name__} has none")
        return conv5_maxpool(encoder.forward_stages(x, ("layer4",))["layer4"])
    raise ValueError(f"unknown layer {layer!r}; valid: 'pooled', 'conv5_maxpool'")


def _modalities(protocol: FeatureProtocol) -> tuple[str, ...]:
    mods = (protocol.modality,) if protocol.merge is None else (protocol.modality, protocol.merge)
    if len(mods) == 2:
        if mods[0] == mods[1]:
            raise ValueError(f"merge must name a modality other than {protocol.modality!r}")
        if MODALITY_CHANNELS[mods[0]] != MODALITY_CHANNELS[mods[1]]:
            raise ValueError(
                f"cannot merge {mods[0]} ({MODALITY_CHANNELS[mods[0]]} channels) with {mods[1]} "
                f"({MODALITY_CHANNELS[mods[1]]} channels) through one encoder; merge features of two encoders yourself"
            )
    return mods


def _video_features(encoder: nn.Module, batch: dict, protocol: FeatureProtocol, mods: tuple[str, ...], device: torch.device) -> Tensor:
    """(B, D) per-video features of one loader batch, on ``device``, float32."""
    streams = {s: crop_clips(batch[s].to(device, non_blocking=True), protocol.crop) for s in {STREAM[m] for m in mods}}
    b = batch["index"].shape[0]
    parts = []
    for m in mods:
        x = to_encoder_input(streams[STREAM[m]], protocol.input_convention(m))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            f = clip_features(encoder, x, protocol.layer)
        parts.append(f.float().reshape(b, protocol.clips, -1).mean(dim=1))
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts if protocol.merge_rule == "concat" else [F.normalize(p, dim=1) for p in parts], dim=1)


# --------------------------------------------------------------------------------------------
# Cache


def _precision(device: torch.device) -> str:
    return "bf16" if device.type == "cuda" else "fp32"


def _flow_tag(protocol: FeatureProtocol, flow_root) -> str | None:
    """Short hash of the flow cache's settings when flow is used (they change the features)."""
    if "flow" not in (protocol.modality, protocol.merge):
        return None
    from core.data.modalities import load_flow_meta

    try:
        meta = load_flow_meta(flow_root)
        text = f"{meta.get('algorithm')}|{meta.get('bound')}|{meta.get('short_side')}"
    except (FileNotFoundError, ValueError, TypeError):
        text = f"unknown:{Path(flow_root).resolve() if flow_root else None}"
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text) or "data"


def feature_cache_path(
    cache_dir: str | os.PathLike,
    videos: VideoDataset,
    protocol: FeatureProtocol,
    encoder_hash: str,
    *,
    device: torch.device | str = "cpu",
    flow_root: str | os.PathLike | None = None,
) -> Path:
    """Where :func:`extract_features` caches the features of (encoder, protocol, data set, subset).

    ``features_<dataset>_<subset>_p<protocol hash>_e<encoder hash>_d<data fingerprint>_<fp32|bf16>[_f<flow>].pt``
    """
    parts = [
        "features",
        _safe(videos.name),
        _safe(videos.subset),
        f"p{protocol.hash()}",
        f"e{_safe(encoder_hash)}",
        f"d{videos.fingerprint()}",
        _precision(torch.device(device)),
    ]
    flow = _flow_tag(protocol, flow_root)
    if flow:
        parts.append(f"f{flow}")
    return Path(cache_dir) / ("_".join(parts) + ".pt")


def _expected(videos: VideoDataset) -> tuple[list[str], Tensor]:
    return [r.key for r in videos.records], torch.tensor([r.label for r in videos.records], dtype=torch.int64)


def _load_cache(path: Path, videos: VideoDataset) -> FeatureSet | None:
    """The cached FeatureSet if ``path`` holds one for exactly these videos, else None."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        fs = FeatureSet(data["features"], data["labels"], data["indices"], list(data["keys"]))
        keys, labels = _expected(videos)
        ok = (
            data.get("version") == CACHE_VERSION
            and fs.keys == keys
            and torch.equal(fs.labels, labels)
            and torch.equal(fs.indices, torch.arange(len(videos)))
            and fs.features.dtype == torch.float32
        )
    except Exception as err:  # unreadable, truncated by hand, older format ...: recompute
        log.warning("ignoring unreadable feature cache %s: %s", path, err)
        return None
    if not ok:
        log.warning("ignoring feature cache %s: it does not match the data set %s/%s", path, videos.name, videos.subset)
        return None
    return fs


def _save_cache(path: Path, fs: FeatureSet, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "version": CACHE_VERSION,
        "features": fs.features.contiguous(),
        "labels": fs.labels,
        "indices": fs.indices,
        "keys": list(fs.keys),
        "meta": meta,
    }
    with atomic_write(path) as f:
        torch.save(payload, f)


# --------------------------------------------------------------------------------------------
# Distributed helpers


def _comm_device() -> torch.device:
    if "nccl" in str(dist.get_backend()):  # NCCL collectives take CUDA tensors only
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_agree(flag: bool) -> bool:
    """True when ``flag`` is true on every rank (a collective: every rank must call it)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _gather_rows(x: Tensor, n: int, sizes: list[int]) -> Tensor:
    """Concatenate every rank's first ``sizes[r]`` rows of x (padded to max(sizes) rows here)."""
    dev = _comm_device()
    m = max(sizes)
    padded = torch.zeros((m, *x.shape[1:]), dtype=x.dtype, device=dev)
    padded[:n] = x.to(dev)
    parts = all_gather(padded).cpu().split(m)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def _gather(features: Tensor, labels: Tensor, indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """All ranks' rows, rank by rank (ranks can hold different counts; a rank may hold none)."""
    if not is_distributed():
        return features, labels, indices
    n = features.shape[0]
    shape = torch.tensor([n, features.shape[1] if n else -1], dtype=torch.int64, device=_comm_device())
    shapes = all_gather(shape.view(1, 2)).cpu()
    sizes = shapes[:, 0].tolist()
    dim = int(shapes[:, 1].max())
    if n == 0:
        features = torch.zeros(0, dim)
    elif features.shape[1] != dim:
        raise RuntimeError(f"rank {rank()} computed {features.shape[1]}-d features, another rank {dim}-d")
    return _gather_rows(features, n, sizes), _gather_rows(labels, n, sizes), _gather_rows(indices, n, sizes)


# --------------------------------------------------------------------------------------------
# Errors from loader workers


# --------------------------------------------------------------------------------------------
# Extraction


def _extract_local(
    encoder: nn.Module,
    videos: VideoDataset,
    protocol: FeatureProtocol,
    mods: tuple[str, ...],
    device: torch.device,
    *,
    batch_size: int,
    workers: int,
    flow_root,
    progress: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """This rank's slice: (features (n, D) float32 CPU, labels (n,), indices (n,))."""
    request = LoadRequest(
        frames=protocol.frames, stride=protocol.stride, clips=protocol.clips,
        mode="uniform",
        modalities=tuple(sorted({STREAM[m] for m in mods})),
        decode_size=tuple(protocol.resize),
        flow_root=None if flow_root is None else str(flow_root),
    )
    r, w = rank(), world_size()
    loader = make_loader(videos, request, batch_size, train=False, workers=workers, rank=r, world_size=w)
    feats, labels, indices = [], [], []
    bar = tqdm(total=len(range(r, len(videos), w)), desc=f"features {videos.name}/{videos.subset}", unit="video",
               disable=not progress or r != 0)
    try:
        for batch in loader:
            feats.append(_video_features(encoder, batch, protocol, mods, device).cpu())
            labels.append(batch["label"].to(torch.int64))
            indices.append(batch["index"].to(torch.int64))
            bar.update(batch["index"].shape[0])
    finally:
        bar.close()
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    return torch.cat(feats), torch.cat(labels), torch.cat(indices)


def extract_features(
    encoder: nn.Module,
    videos: VideoDataset,
    protocol: FeatureProtocol,
    *,
    device: torch.device | str,
    batch_size: int = 8,
    workers: int = 2,
    flow_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    encoder_hash: str | None = None,
    progress: bool = True,
) -> FeatureSet:
    """One feature per video of ``videos`` under ``protocol`` (see the module docstring).

    ``encoder`` must already sit on ``device``; ``batch_size`` counts videos (each brings
    ``protocol.clips`` clips to one forward pass). Under DDP (an initialised process group) every
    rank must call this; each extracts its share and every rank returns the complete, gathered
    set. ``cache_dir`` must then be a folder every rank can read (rank 0 writes it).

    Raises :class:`CorruptVideo` (naming the file) for a video that cannot be decoded, whether
    the data set index already marked it or it fails while being read, and ``ValueError`` for a
    protocol this data or encoder cannot serve (wrong split, flow without ``flow_root``).
    """
    device = torch.device(device)
    if protocol.stride is None or protocol.modality is None:
        raise ValueError("the feature protocol follows its encoder (stride or input convention None): "
                         "resolve it first with evaluation.protocols.resolve")
    mods = _modalities(protocol)
    if len(videos) == 0:
        raise ValueError(f"{videos.name}/{videos.subset}: no videos to extract features from")
    if videos.split is not None and videos.split != protocol.split:
        raise ValueError(f"the protocol asks for split {protocol.split}, but the data set holds split {videos.split}")
    if "flow" in mods and flow_root is None:
        raise ValueError("the 'flow' modality needs flow_root (the flow cache of `vsbench data flow`)")
    bad = videos.corrupt
    if bad:  # evaluation refuses a data set with undecodable videos, before decoding anything
        raise CorruptVideo(bad[0].path, f"{bad[0].error} ({len(bad)} undecodable video(s) in {videos.name}/{videos.subset})")

    cache_file = None
    if cache_dir is not None:
        encoder_hash = encoder_hash or encoder_fingerprint(encoder)
        cache_file = feature_cache_path(cache_dir, videos, protocol, encoder_hash, device=device, flow_root=flow_root)
        cached = _load_cache(cache_file, videos)
        if _all_agree(cached is not None):
            log.info("features of %s/%s loaded from %s", videos.name, videos.subset, cache_file)
            return cached

    model = _unwrap(encoder)
    was_training = model.training
    model.eval()
    error: Exception | None = None
    try:
        with torch.no_grad():
            local = _extract_local(model, videos, protocol, mods, device, batch_size=batch_size, workers=workers,
                                   flow_root=flow_root, progress=progress)
    except Exception as err:  # re-raised below, once every rank knows (so no rank waits in a gather forever)
        error = err
    finally:
        model.train(was_training)
    if not _all_agree(error is None):
        if error is not None:
            raise error
        raise RuntimeError("feature extraction failed on another rank; see that rank's error")
    features, labels, indices = _gather(*local)

    # every rank's share, once: de-duplicate by video index (first occurrence), sort, check
    order = torch.argsort(indices, stable=True)
    features, labels, indices = features[order], labels[order], indices[order]
    keep = torch.ones_like(indices, dtype=torch.bool)
    keep[1:] = indices[1:] != indices[:-1]
    features, labels, indices = features[keep].contiguous(), labels[keep], indices[keep]
    if not torch.equal(indices, torch.arange(len(videos))):
        missing = sorted(set(range(len(videos))) - set(indices.tolist()))
        raise RuntimeError(f"feature extraction missed {len(missing)} of {len(videos)} videos (first: "
                           f"{videos.records[missing[0]].path if missing else '?'})")
    expected_keys, expected_labels = _expected(videos)
    if not torch.equal(labels, expected_labels):
        raise RuntimeError("labels from the loader do not match the data set's records")
    result = FeatureSet(features.float(), labels, indices, expected_keys)

    if cache_file is not None:
        _write_cache_once(cache_file, result, encoder_hash, protocol, videos, device)
    return result


def _write_cache_once(path: Path, fs: FeatureSet, encoder_hash: str, protocol: FeatureProtocol, videos: VideoDataset,
                      device: torch.device) -> None:
    """Rank 0 writes the cache; every rank returns only once the file is in place (or fails with it),
    so a following call on any rank finds it."""
    error: Exception | None = None
    if rank() == 0:
        meta = {
            "encoder_hash": encoder_hash,
            "protocol": protocol.name,
            "protocol_hash": protocol.hash(),
            "protocol_fields": {k: (list(v) if isinstance(v, tuple) else v) for k, v in protocol.fields().items()},
            "dataset": videos.name,
            "subset": videos.subset,
            "split": videos.split,
            "dataset_fingerprint": videos.fingerprint(),
            "precision": _precision(device),
        }
        try:
            _save_cache(path, fs, meta)
        except Exception as err:
            error = err
    if not _all_agree(error is None):
        if error is not None:
            raise error
        raise RuntimeError(f"rank 0 could not write the feature cache {path}; see its error")
