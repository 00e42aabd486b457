"""Motion-sensitivity probes: how much a representation depends on motion rather than appearance.

Two questions the retrieval and linear numbers cannot answer on their own.

**Does the feature change when the motion is destroyed?** :func:`motion_sensitivity` takes clips
and compares each clip's feature with the feature of the same clip after one of three
perturbations that keep the appearance (the same pixels, or the same frame) but break the
motion:

- ``sim_shuffled``: frames permuted in time (a seeded random permutation per clip, never the
  identity): the frames are all there, the temporal order is gone;
- ``sim_reversed``: frames in reverse order: the order is kept but the arrow of time flips
  (on MotionShapes MoveUp becomes MoveDown and Grow becomes Shrink: its time-reversal pairs);
- ``sim_static``: every frame replaced by the middle frame (frame ``T // 2``): appearance
  without any motion.

Each value is the mean over clips of the cosine similarity between the two features. A value
near 1 means the representation barely notices the perturbation: a feature that is the same for
a clip and for its frozen middle frame is a static-appearance feature, however well it retrieves.
**Lower = the representation depends more on motion.** A representation that ignores time
entirely (averages frames) has ``sim_shuffled == sim_reversed == 1``; ``sim_static`` is 1 only if
it also ignores how the frames differ. The values compare methods on one backbone and one data
set; they are not calibrated across backbones (an untrained network is not at 0), so report them
next to a randomly initialised encoder's values.

**How much of the accuracy comes from the scene?** MotionShapes' scene-bias mode ties each
class's background family to the class in the training groups only, and ``motionshapes_meta.csv``
marks each video ``bias_aligned`` when its background is its class's tied family.
:func:`static_bias_gap` splits test accuracy into bias-aligned and bias-conflicting videos; the
gap (aligned - conflicting) is the accuracy the classifier owes to the background shortcut. A
motion representation has a gap near 0; a static one is right on aligned and wrong on
conflicting test videos. :func:`load_bias_alignment` reads the mask for a data set's videos.

All perturbations are applied to the *frames*: for a derived modality (IIC's residual clip) the
residual is computed after shuffling, reversing or freezing, which is what "the same clip with
its frames shuffled" means for such an encoder (:func:`motion_probe` does this for a protocol).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evaluation.features import STREAM, _unwrap, clip_features, crop_clips
from evaluation.protocols import FeatureProtocol
from core.data.datasets import DatasetError, VideoDataset
from core.data.loader import ClipDataset
from core.data.request import LoadRequest
from core.data.modalities import read_flow, static_view
from core.data.encoder_input import to_encoder_input
from core.data.video import CorruptVideo, read_frames

__all__ = [
    "BIAS_META_FILE",
    "load_bias_alignment",
    "motion_probe",
    "motion_sensitivity",
    "perturb_clips",
    "probe_clips",
    "probe_transform",
    "static_bias_gap",
]

BIAS_META_FILE = "motionshapes_meta.csv"
PERTURBATIONS = ("shuffled", "reversed", "static")


def _permutations(n: int, t: int, generator: torch.Generator) -> Tensor:
    """(n, t) random permutations of range(t), none of them the identity (t >= 2)."""
    identity = torch.arange(t)
    perms = []
    for _ in range(n):
        while True:
            p = torch.randperm(t, generator=generator, device=generator.device).cpu()
            if not torch.equal(p, identity):
                break
        perms.append(p)
    return torch.stack(perms)


def perturb_clips(clips: Tensor, kind: str, *, perms: Tensor | None = None) -> Tensor:
    """A (N, C, T, H, W) batch with its frames shuffled (``perms`` (N, T)), reversed or frozen
    into the middle frame (``T // 2`` repeated)."""
    if kind == "shuffled":
        if perms is None or perms.shape != (clips.shape[0], clips.shape[2]):
            raise ValueError("shuffling needs one permutation of range(T) per clip, shaped (N, T)")
        idx = perms.to(clips.device).view(clips.shape[0], 1, clips.shape[2], 1, 1).expand_as(clips)
        return torch.gather(clips, 2, idx)
    if kind == "reversed":
        return clips.flip(2)
    if kind == "static":
        return static_view(clips, clips.shape[2] // 2)
    raise ValueError(f"unknown perturbation {kind!r}; valid: {PERTURBATIONS}")


def motion_sensitivity(
    encoder: nn.Module,
    clips: Tensor,
    *,
    generator: torch.Generator,
    transform: Callable[[Tensor], Tensor] | None = None,
    layer: str = "pooled",
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Mean cosine similarity between each clip's feature and its shuffled / reversed / static twin.

    ``clips``: (N, C, T, H, W), already normalised as the encoder expects (or, with
    ``transform``, the frames that ``transform`` turns into encoder input: the perturbation is
    applied first, then ``transform``, as a derived modality like IIC's residual needs).
    ``generator`` seeds the per-clip time permutations (drawn on the generator's device, never
    the identity; T >= 2 required). ``layer`` is "pooled" or "conv5_maxpool". The encoder runs in eval mode
    under ``no_grad`` in float32 (bf16 would blur similarities close to 1); training mode is
    restored afterwards. ``device`` defaults to the encoder's.

    Returns ``{"sim_shuffled", "sim_reversed", "sim_static"}``, each a mean cosine similarity in
    [-1, 1]. Lower = the representation depends more on motion (see the module docstring).
    """
    if clips.dim() != 5 or not clips.is_floating_point():
        raise ValueError(f"expected float clips (N, C, T, H, W), got {clips.dtype} {tuple(clips.shape)}")
    n, t = clips.shape[0], clips.shape[2]
    if n == 0:
        raise ValueError("no clips to probe")
    if t < 2:
        raise ValueError(f"motion probes need clips of at least 2 frames, got T={t}")
    model = _unwrap(encoder)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    perms = _permutations(n, t, generator)
    sims: dict[str, list[Tensor]] = {k: [] for k in PERTURBATIONS}

    def features(x: Tensor) -> Tensor:
        x = transform(x) if transform is not None else x
        return clip_features(model, x, layer).float()

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for start in range(0, n, batch_size):
                x = clips[start : start + batch_size].to(device, torch.float32)
                ref = features(x)
                for kind in PERTURBATIONS:
                    p = perms[start : start + batch_size] if kind == "shuffled" else None
                    other = features(perturb_clips(x, kind, perms=p))
                    sims[kind].append(F.cosine_similarity(ref, other, dim=1).cpu())
    finally:
        model.train(was_training)
    return {f"sim_{k}": float(torch.cat(v).double().mean()) for k, v in sims.items()}


def _probe_indices(n: int, max_videos: int, select: str) -> list[int]:
    if select not in ("first", "even"):
        raise ValueError(f"select must be 'first' or 'even', got {select!r}")
    k = min(n, max_videos)
    if select == "first" or k == n:
        return list(range(k))
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64)).tolist()


def probe_transform(protocol: FeatureProtocol) -> Callable[[Tensor], Tensor] | None:
    """What turns :func:`probe_clips`' output into encoder input: None for rgb and flow (the clips
    already are the input), the residual (then the value range and normalisation of the encoder's
    input convention) for ``modality="residual"``."""
    if protocol.modality != "residual":
        return None
    return lambda x: to_encoder_input(x, protocol.input_convention())


def _first_clip(dataset: ClipDataset, index: int, stream: str, flow_root) -> Tensor:
    """uint8 (1, T, H, W, C): the first evaluation clip of one video (only that clip is decoded)."""
    rec, size = dataset.videos[index], dataset.request.decode_size
    if not rec.ok:
        raise CorruptVideo(rec.path, rec.error)
    idx = dataset.frame_indices(index, 0)[0]
    if stream == "rgb":
        data = read_frames(rec.path, idx, backend=dataset.request.backend, size=size, num_frames=rec.num_frames)
    else:
        data = read_flow(flow_root, Path(rec.path).stem, idx, size=size)
    return torch.from_numpy(np.ascontiguousarray(data)).unsqueeze(0)


def probe_clips(
    videos: VideoDataset,
    protocol: FeatureProtocol,
    *,
    max_videos: int = 64,
    select: str = "first",
    flow_root: str | os.PathLike | None = None,
) -> Tensor:
    """A fixed, deterministic set of probe clips: float (N, C, T, crop, crop) on the CPU.

    One clip per video, the first clip of the protocol's uniform sampling (``protocol.clips``
    evenly spaced clips, so the same frames as the first clip :func:`extract_features` uses),
    decoded at ``protocol.resize`` and centre-cropped, for the first ``max_videos`` videos
    (``select="first"``) or ``max_videos`` evenly spaced ones (``select="even"``, which covers
    every class of a class-sorted list). Undecodable videos raise ``CorruptVideo``.

    Returned as the encoder sees them for ``modality`` rgb and flow (the protocol's input
    convention applied: :func:`~core.data.encoder_input.to_encoder_input`); for ``"residual"`` they are the [0, 1] RGB
    frames, to be turned into residual clips *after* perturbation: pass
    ``transform=probe_transform(protocol)`` to :func:`motion_sensitivity`, or use
    :func:`motion_probe`, which does both. ``protocol.merge`` is ignored: the probes measure the
    protocol's main modality.
    """
    if protocol.stride is None or protocol.modality is None:
        raise ValueError("the feature protocol follows its encoder (stride or input convention None): "
                         "resolve it first with evaluation.protocols.resolve")
    modality = protocol.modality
    stream = STREAM[modality]
    request = LoadRequest(
        frames=protocol.frames, stride=protocol.stride, clips=protocol.clips,
        mode="uniform",
        modalities=(stream,),
        decode_size=tuple(protocol.resize),
        flow_root=None if flow_root is None else str(flow_root),
    )
    dataset = ClipDataset(videos, request, strict=True)  # for its frame indices: the evaluation sampling
    chosen = _probe_indices(len(videos), max_videos, select)
    if not chosen:
        raise ValueError(f"{videos.name}/{videos.subset}: no videos to probe")
    raw = torch.stack([_first_clip(dataset, i, stream, flow_root) for i in chosen])  # (N, 1, T, H, W, C)
    x = crop_clips(raw, protocol.crop)
    return x if modality == "residual" else to_encoder_input(x, protocol.input_convention())


def motion_probe(
    encoder: nn.Module,
    videos: VideoDataset,
    protocol: FeatureProtocol,
    *,
    generator: torch.Generator,
    max_videos: int = 64,
    select: str = "first",
    flow_root: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 32,
) -> dict[str, float]:
    """:func:`probe_clips` + :func:`motion_sensitivity` for ``protocol`` (layer and modality included)."""
    clips = probe_clips(videos, protocol, max_videos=max_videos, select=select, flow_root=flow_root)
    return motion_sensitivity(encoder, clips, generator=generator, transform=probe_transform(protocol),
                              layer=protocol.layer, batch_size=batch_size, device=device)


# --------------------------------------------------------------------------------------------
# Static (scene) bias on MotionShapes


def static_bias_gap(predictions: Tensor, labels: Tensor, aligned: Tensor) -> dict[str, float]:
    """Accuracy on bias-aligned vs bias-conflicting videos and the gap between them.

    ``predictions``: predicted classes (N,) or scores/logits (N, K) (argmax taken); ``labels``
    (N,); ``aligned``: bool (N,), True where the video's background is its class's tied family
    (:func:`load_bias_alignment`). Returns ``acc_aligned``, ``acc_conflicting``, ``gap`` =
    acc_aligned - acc_conflicting (fractions in [0, 1]; NaN when a group is empty),
    ``n_aligned`` and ``n_conflicting``. A large positive gap = the classifier leans on the scene.
    """
    predictions, labels, aligned = torch.as_tensor(predictions), torch.as_tensor(labels), torch.as_tensor(aligned)
    if predictions.dim() == 2:
        predictions = predictions.argmax(dim=1)
    if aligned.dtype != torch.bool:
        raise TypeError(f"aligned must be a bool mask, got {aligned.dtype}")
    if not (predictions.shape == labels.shape == aligned.shape) or predictions.dim() != 1:
        raise ValueError(f"need predictions, labels and aligned of one shape (N,), got "
                         f"{tuple(predictions.shape)}, {tuple(labels.shape)}, {tuple(aligned.shape)}")
    correct = (predictions.cpu().long() == labels.cpu().long()).double()
    aligned = aligned.cpu()

    def acc(mask: Tensor) -> float:
        return float(correct[mask].mean()) if bool(mask.any()) else float("nan")

    a, c = acc(aligned), acc(~aligned)
    return {
        "acc_aligned": a,
        "acc_conflicting": c,
        "gap": a - c,
        "n_aligned": int(aligned.sum()),
        "n_conflicting": int((~aligned).sum()),
    }


def _meta_file(dataset_root: str | os.PathLike) -> Path:
    root = Path(dataset_root)
    candidates = [root] if root.is_file() else [root / BIAS_META_FILE, root.parent / BIAS_META_FILE]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"no {BIAS_META_FILE} at {root} (looked for {', '.join(map(str, candidates))}); "
                            "is this a MotionShapes data set?")


def load_bias_alignment(dataset_root: str | os.PathLike, videos: VideoDataset) -> Tensor:
    """The ``bias_aligned`` column of MotionShapes' metadata for ``videos``: bool (N,), in record order.

    ``dataset_root`` is the MotionShapes folder holding ``motionshapes_meta.csv`` (its ``UCF-101/``
    video folder, or the CSV itself, also work). The CSV's ``path`` is relative to ``UCF-101/``
    with the extension (``MoveLeft/v_MoveLeft_g01_c01.avi``); a :class:`VideoRecord` key is the
    same path without it. A video missing from the CSV raises ``DatasetError`` naming it.
    """
    file = _meta_file(dataset_root)
    table: dict[str, bool] = {}
    with open(file, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "bias_aligned"} <= set(reader.fieldnames):
            raise ValueError(f"{file}: needs 'path' and 'bias_aligned' columns, has {reader.fieldnames}")
        for n, row in enumerate(reader, 2):
            value = row["bias_aligned"].strip().lower()
            if value not in ("true", "false", "1", "0"):
                raise ValueError(f"{file}:{n}: bias_aligned must be True or False, got {row['bias_aligned']!r}")
            table[os.path.splitext(row["path"].replace("\\", "/"))[0]] = value in ("true", "1")
    out = []
    for r in videos.records:
        key = r.key.replace("\\", "/")
        if key not in table:
            raise DatasetError(f"{r.path}: no row for {key!r} in {file}; regenerate the metadata with the data "
                               "(`vsbench data synth`) or remove the video from the split")
        out.append(table[key])
    return torch.tensor(out, dtype=torch.bool)
