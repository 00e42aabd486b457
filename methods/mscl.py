"""MSCL: Motion Sensitive Contrastive Learning (Ni, Zhou, Qin, Wu, Liu, Li, Huang, ECCV 2022).

MSCL injects optical-flow motion into an RGB encoder. Two MoCo v2 encoders, one for RGB clips and a
light one for colour-coded flow, are trained with queues and momentum key encoders; on top of their
own (intra-modal) losses they are contrasted across modalities at clip level, and Local Motion
Contrastive Learning (LMCL) matches every time step of the RGB feature map to the flow feature of
the same time step. Flow Rotation Augmentation (FRA) rotates every flow vector of a clip by one
angle, giving "motion-shuffled" flow, and Motion Differential Sampling (MDS) trains only on clip
starts whose motion changes most (offline, :mod:`core.data.mds`). Reimplemented from the
description of the official code (``megvii-research/MSCL``: ``mmaction/models/recognizers/
{mscl.py, moco.py}``, ``heads/{moco_head_v2.py, local_cl_head.py}``, ``necks/{base.py, fpn.py}``,
``datasets/pipelines/{transforms_motion.py, loading_mscl.py}``, ``common/ssl_aug.py``,
``tools/ssl/generate_mcl_samples.py``).

Per step, for B videos with two clips each (clip 1 = query, clip 2 = key; MDS picks their
starts), RGB ``x1, x2`` and flow ``f1, f2`` (RGB and flow of one clip share the crop and flip)::

    base_i = colour(norm(f_i))                  # per-frame normalised flow, Middlebury colours, [0, 1]
    rot_i  = colour(norm(rotate(f_i, beta)))    # FRA: beta = (0.2 + 0.2 c) pi, c ~ U{0..7}, one per video
    q, k     = RGB MoCo embeddings of x1 (query, gradient) and x2 (momentum key)     # 128-d, L2-normalised
    q_f, k_f = flow MoCo embeddings of base_1 / base_2;   q_a, k_a = of rot_1 / rot_2  (same flow encoder)
    Q_rgb, Q_flow = the age-decayed queues (queue * 0.99999^age)
    L_rgb      = CE([q.k,     q.Q_rgb] / T)                        then enqueue k
    L_flow     = CE([q_f.k_f, q_f.Q_flow] / T)                     then enqueue k_f  -> Q_flow'
    L_flow_aug = CE([q_a.k_a, q_a.Q_flow'] / T)                    (k_a is never enqueued)
    L_cross    = CE([q.k_f, q.Q_flow'] / T) + CE([q_f.k, q_f.Q_rgb] / T)   # negatives of the key's modality
    L_cross_aug= CE([q.k_a, q.Q_flow'] / T) + CE([q_a.k, q_a.Q_rgb] / T)
    r  = normalize_c(mean_hw(FPN level 0 of x1))          # (B, 128, t), t = frames / 2
    F  = normalize_c(cat_t(mean_hw(flow layer4 of base_1), mean_hw(flow layer4 of rot_1)))   # (B, 128, 2t)
    L_lmcl     = CE(r_i . F_j / T_l over j, label j = i)    # time step i matches base-flow step i
    loss = L_rgb + L_flow + L_flow_aug + L_cross + L_cross_aug + L_lmcl        (all weights 1)

Defaults are the R3D-18 config ``mscl_r18_cosm_lr2e-2.py``: R3D-18 RGB encoder with a 128-channel
FPN over layer2..layer4 (level 0 = layer2, t = frames / 2), the quarter-width 2D ResNet-18 flow
encoder ``r2d_flow`` (built here; the harness gives only the RGB backbone), MLP heads
D -> D -> 128 (ReLU, no BN), queue 65536, T = 0.07 for MoCo and LMCL, momentum cosine-annealed
from 0.994 to 1 over training, queue age decay 0.99999^age, 8 frames at a stride of 16 raw
frames (8 of the original's 2-frame units), 112 px crops; SGD lr 0.02 for batch 128, momentum
0.9, weight decay 1e-4, gradient clipping at L2 norm 40, cosine schedule, 400 epochs.
Augmentation: RGB random resized crop (0.2-1), flip, colour jitter (0.4, 0.4, 0.4, 0.1; p 0.8;
magnitudes per frame), greyscale p 0.2, blur p 0.5 with ONE sigma ~ U(0.1, 2) for all blurred
query clips of the (per-process) batch and one for the key clips (``common/ssl_aug.py``'s
``GaussianBlur`` draws one sigma per call and ``ssl_aug_v2.py`` augments q and k in two calls;
``AugmentConfig(blur_sigma_per="clip")`` draws one per clip instead), ImageNet normalisation; flow gets the same
crop and flip (a flip mirrors the field without negating u, as the original flips its colour
images), then dequantisation, per-frame normalisation, FRA and colour coding on the device, here.
q and k get independent crops.

Switches (config fields): ``lmcl`` (the LMCL term and the FPN neck), ``flow_rotation`` (FRA: the
aug flow branch, ``L_flow_aug``, ``L_cross_aug``, and the rotated frames as LMCL negatives),
``mds`` (the "mds" sampler vs. uniform random starts), ``cross_modal`` (``L_cross`` and
``L_cross_aug``).

Which flow is "base" and which is "aug" (docs/methods/mscl.md). The shipped model splits each flow
tensor in two halves along time, meaning ``[flow(clip), rotated(clip)]``, but the shipped
two-clip pipeline hands it ``[base(clip1), base(clip2)]`` (query crop) and
``[rot(clip1), rot(clip2)]`` (key crop). ``layout="intended"`` (default) is what the single-clip
code path and the paper describe and what is written above: flow MoCo on unrotated flow, rotated
flow as the aug branch, LMCL negatives = the other time steps plus the rotated frames of the same
clip. ``layout="shipped"`` reproduces what the released config actually trains: ``q_f = base_1``,
``k_f = rot_1``, ``q_a = base_2``, ``k_a = rot_2``, and the LMCL negatives are the other time steps
of ``base_1`` plus all of ``base_2``, no rotated frame (one difference remains: the harness crops
per clip, so ``k_f`` has clip 1's crop and ``q_a`` clip 2's, where the original crops by branch).
In both layouts ``L_cross_aug`` treats RGB and rotated flow of the same video as a positive, as
the code does.

Deviations from the official code, and why:

- Flow: the cache holds consecutive-frame flow (RGB index t gets t -> t + 1, DIS or TV-L1, see
  :mod:`core.data.modalities`), not RAFT flow from t to t + 8 raw frames; it is stored
  quantised (+-20 px, 8 bit), so values within half a quantisation step of zero are set to
  exactly zero before the per-frame normalisation (otherwise a static frame, whose flow is
  +-0.08 px of quantisation offset, would be normalised into a saturated field).
- Time: ``stride`` is in raw frames (16 = the original's 8 units of 2 frames), so suites can shrink
  it; indices past a video's end loop, as the original's "loop" option. MDS scores every raw
  frame as a candidate start, by default at the training stride (the shipped screening used 4
  units against a training stride of 8); its choices are in :mod:`core.data.mds`. The query
  start follows the original's retry rule exactly, and so does the key start by default
  (``key_snap="official"``: the original's scan of the chosen starts from the pick 0, which is
  not always the nearest chosen start; ``key_snap="nearest"`` snaps to the nearest one, the
  ``"mds_nearest"`` sampler); a video with no chosen start (all scores equal) gets two random
  clips instead of two clips at frame 0.
- The per-frame normalisation divides by the largest magnitude inside the crop (the harness crops
  first); the original normalises the full frame, then crops. Rotation and colour coding are
  per pixel and commute with the crop.
- Neck: an FPN (1x1x1 laterals, nearest top-down upsampling, one 1x3x3 output conv) gives the
  128-channel level 0; the original's SEPC refinement (two scale-equalising pyramid convs) is
  left out, and only level 0, the one LMCL uses, is produced (the other levels feed no loss).
  The RGB embedding comes from GAP(layer4) of the backbone, as ``TPNMoCo(emb_from_bkb=True)``, so
  the key side needs no neck (the original keeps an EMA copy whose output is unused).
- Momentum and queues: both key encoders are updated once per step, between steps (declared in
  :meth:`MSCL.momentum_pairs`, applied by the harness; ``flow_ema_per_step=2`` restores the
  original's two flow updates per step at double schedule speed), and both queues are capped by
  the data set size; ``aug_sees_new_flow_keys`` sets which flow queue the aug-flow and RGB->flow
  terms read: docs/methods/mscl.md, "Momentum, queues and banks".
- Precision: every MoCo, cross-modal and LMCL logit (query . key, query . decayed queue, RGB
  step . flow step) is computed in float32 with autocast off (``methods.losses``); the encoders,
  neck and heads run under the harness's bf16 autocast.
- Randomness (the FRA angle) comes from torch's global RNG of the batch's device, which the
  harness seeds and checkpoints.
- Gradient clipping (max L2 norm 40) is ``recipe.clip_grad``, applied by the harness to all
  trainable parameters (the original's mmcv ``grad_clip`` clips the same set).
- No warm-up: the config sets ``warmup_iters`` without a warm-up type, which mmcv ignores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import core.data.mds  # noqa: F401  (registers the "mds" clip sampler this method asks for)
from backbones import create_backbone
from core.data.modalities import dequantize_flow01, flow_to_color, normalize_flow_per_frame, rotate_flow
from core.data.transforms import AugmentConfig
from core.distributed import all_gather
from methods.base import DataSpec, Method, MomentumPair, Recipe, StepOutput, TrainState, key_pass, momentum_copy, register_method
from methods.losses import MLPHead, MoCoQueue, capped_queue_size, cosine_momentum, fp32_matmul, moco_logits, moco_loss

__all__ = [
    "MSCLConfig",
    "MSCL",
    "FPNNeck",
    "FRA_CHUNKS",
    "fra_angles",
    "flow_images",
    "lmcl_logits",
    "lmcl_loss",
]

LAYOUTS = ("intended", "shipped")
FRA_CHUNKS = 8  # NormFlowWithStidedAug(ratios=(0.2, 1.8), num_chunks=8)
FRA_START, FRA_STEP = 0.2, 0.2  # beta = (0.2 + 0.2 c) pi: 36, 72, ..., 288 degrees


@dataclass(frozen=True)
class MSCLConfig:
    """MSCL hyperparameters (the R3D-18 config's defaults)."""

    embed_dim: int = 128
    queue_size: int = 65536  # capped by the data set size, see methods.losses.capped_queue_size
    temperature: float = 0.07  # MoCo and cross-modal terms
    lmcl_temperature: float = 0.07
    momentum_base: float = 0.994  # cosine-annealed to 1 over training
    queue_decay: float = 0.99999  # negatives scaled by decay ** age
    neck_channels: int = 128  # FPN width; must equal the flow encoder's feature dim for LMCL
    flow_backbone: str = "r2d_flow"
    lmcl: bool = True
    flow_rotation: bool = True
    mds: bool = True
    key_snap: str = "official"  # MDS key start: "official" (the original's scan) | "nearest" (the "mds_nearest" sampler)
    cross_modal: bool = True
    layout: str = "intended"  # intended | shipped (docs/methods/mscl.md)
    aug_sees_new_flow_keys: bool = True  # as shipped: the aug-flow / RGB->flow terms see k_f in the queue
    flow_ema_per_step: int = 1  # 2 = the original's two flow EMA updates per step at double schedule speed
    shuffle_bn: bool = True  # shuffle key batches across ranks (ignored in one process or with SyncBN)
    frames: int = 8
    stride: int = 16  # raw frames (8 of the original's 2-frame units)
    crop: int = 112

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.layout == "shipped" and not self.flow_rotation:
            raise ValueError("layout='shipped' mixes rotated and unrotated flow: it needs flow_rotation=True")
        if self.flow_ema_per_step not in (1, 2):
            raise ValueError(f"flow_ema_per_step must be 1 or 2, got {self.flow_ema_per_step}")
        if self.key_snap not in core.data.mds.KEY_SNAPS:
            raise ValueError(f"key_snap must be one of {', '.join(core.data.mds.KEY_SNAPS)}, got {self.key_snap!r}")
        if self.temperature <= 0 or self.lmcl_temperature <= 0 or not 0 < self.queue_decay <= 1:
            raise ValueError(f"need positive temperatures and 0 < queue_decay <= 1, got {self}")
        if not 0 <= self.momentum_base <= 1:
            raise ValueError(f"momentum_base must lie in [0, 1], got {self.momentum_base}")


# --------------------------------------------------------------------------------------------
# Flow inputs: dequantise, normalise per frame, rotate (FRA), colour-code
# --------------------------------------------------------------------------------------------


def fra_angles(chunk: torch.Tensor) -> torch.Tensor:
    """FRA angles in radians for chunk indices ``c`` in 0..7: ``(0.2 + 0.2 c) pi`` (36..288 degrees)."""
    return (FRA_START + FRA_STEP * chunk.float()) * math.pi


def flow_images(flow: torch.Tensor, angle: torch.Tensor | None = None) -> torch.Tensor:
    """Colour-coded flow clips: (..., 2, T, H, W) loader flow in [0, 1] -> (..., 3, T, H, W) in [0, 1].

    Dequantises (with the zero dead zone), rotates every vector by ``angle`` (broadcast against
    (..., T, H, W), e.g. shape (B, 1, 1, 1, 1) for (B, clips, 2, T, H, W) input; None = no
    rotation), normalises each frame by its largest magnitude and applies the Middlebury colours,
    as MSCL's ``NormFlowWithStidedAug`` + ``FlowVisualizer``.
    """
    u, v = dequantize_flow01(flow.select(-4, 0)), dequantize_flow01(flow.select(-4, 1))
    if angle is not None:
        u, v = rotate_flow(u, v, angle)
    u, v = normalize_flow_per_frame(u, v)
    return flow_to_color(u, v).transpose(-4, -3).contiguous()  # (..., T, 3, H, W) -> (..., 3, T, H, W)


# --------------------------------------------------------------------------------------------
# Neck and LMCL
# --------------------------------------------------------------------------------------------


class FPNNeck(nn.Module):
    """Feature pyramid over backbone maps (low to high level) -> the finest level at ``out_channels``.

    ``out = conv_1x3x3(lateral_0(x_0) + up(lateral_1(x_1) + up(lateral_2(x_2))))``, with 1x1x1
    lateral convs, nearest-neighbour upsampling to the lower level's (T, H, W) and a 1x3x3 output
    conv (MSCL's ``TPNMoCo`` FPN, ``fpn_kerne_size=(1, 3, 3)``, without SEPC). Xavier-uniform init,
    zero biases, as mmdet's FPN.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 128):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv3d(c, out_channels, kernel_size=1) for c in in_channels)
        self.output = nn.Conv3d(out_channels, out_channels, kernel_size=(1, 3, 3), padding=(0, 1, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(maps) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} maps, got {len(maps)}")
        x = self.lateral[-1](maps[-1])
        for i in range(len(maps) - 2, -1, -1):
            lateral = self.lateral[i](maps[i])
            x = lateral + F.interpolate(x, size=lateral.shape[2:], mode="nearest")
        return self.output(x)


def _time_profile(x: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, steps): mean over space, then average-pooled in time to ``steps``."""
    x = x.float().mean(dim=(3, 4))
    return x if x.shape[2] == steps else F.adaptive_avg_pool1d(x, steps)


def lmcl_logits(rgb_map: torch.Tensor, flow_maps: Sequence[torch.Tensor], temperature: float = 0.07) -> torch.Tensor:
    """LMCL similarities (``MSCLWithAugPosHeadV2``): ``(B * t, n * t)`` float logits.

    ``rgb_map`` (B, C, T_r, H, W) is the RGB level-0 map; ``flow_maps`` are flow layer4 maps
    (B, C, T_f, H', W'), the first the positive one. Each is averaged over space; when T_r and
    T_f differ both are average-pooled in time to t = min(T_r, T_f). Row ``b * t + i`` holds
    ``<r_b[:, i], F_b[:, j]> / T`` over the concatenated flow time steps j, every vector
    L2-normalised over channels; its label is ``i`` (the first flow map at the same time step).
    The logits are float32, the product computed with autocast off (``methods.losses.fp32_matmul``).
    """
    t = min([rgb_map.shape[2], *(m.shape[2] for m in flow_maps)])
    r = F.normalize(_time_profile(rgb_map, t), dim=1)  # (B, C, t)
    f = F.normalize(torch.cat([_time_profile(m, t) for m in flow_maps], dim=2), dim=1)  # (B, C, n t)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"LMCL needs equal channels: RGB level 0 has {r.shape[1]}, flow layer4 {f.shape[1]}")
    return (fp32_matmul(r.transpose(1, 2), f) / temperature).flatten(0, 1)


def lmcl_loss(rgb_map: torch.Tensor, flow_maps: Sequence[torch.Tensor], temperature: float = 0.07) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of :func:`lmcl_logits` with labels ``i`` (time step i <-> flow step i); returns (loss, logits)."""
    logits = lmcl_logits(rgb_map, flow_maps, temperature)
    t = min([rgb_map.shape[2], *(m.shape[2] for m in flow_maps)])
    labels = torch.arange(t, device=logits.device).repeat(rgb_map.shape[0])
    return F.cross_entropy(logits, labels), logits


# --------------------------------------------------------------------------------------------
# Method
# --------------------------------------------------------------------------------------------


@register_method("mscl")
class MSCL(Method):
    """MSCL (Ni et al., ECCV 2022): RGB and flow MoCo v2, cross-modal and local (LMCL) contrast, FRA, MDS."""

    Config = MSCLConfig
    paper_backbone = "r3d_18"
    recipe = Recipe(optimizer="sgd", lr=0.02, sgd_momentum=0.9, weight_decay=1e-4, schedule="cosine", milestones=(),
                    warmup_epochs=0.0, epochs=400, batch_size=128, clip_grad=40.0)

    def __init__(self, config: MSCLConfig, backbone: nn.Module, *, dataset_size: int):
        super().__init__(config, backbone, dataset_size=dataset_size)
        c = config
        dim = backbone.feature_dim
        self.head = MLPHead(dim, dim, c.embed_dim, normalize=True)
        self.flow_backbone = create_backbone(c.flow_backbone, in_channels=3)
        fdim = self.flow_backbone.feature_dim
        self.flow_head = MLPHead(fdim, fdim, c.embed_dim, normalize=True)
        self.key_backbone = momentum_copy(backbone)
        self.key_head = momentum_copy(self.head)
        self.key_flow_backbone = momentum_copy(self.flow_backbone)
        self.key_flow_head = momentum_copy(self.flow_head)
        self.neck = None
        if c.lmcl:
            if c.neck_channels != fdim:
                raise ValueError(f"LMCL matches FPN level 0 ({c.neck_channels} channels) with flow layer4 ({fdim}): "
                                 f"set neck_channels={fdim}")
            stages = backbone.stage_channels
            self.neck = FPNNeck([stages["layer2"], stages["layer3"], stages["layer4"]], c.neck_channels)
        size = capped_queue_size(c.queue_size, dataset_size, videos_per_slot=1)
        self.rgb_queue = MoCoQueue(size, c.embed_dim, track_age=True, generator=0)
        self.flow_queue = MoCoQueue(size, c.embed_dim, track_age=True, generator=1)

    def effective_settings(self) -> dict[str, int]:
        """The RGB and flow queue lengths used: ``queue_size`` capped at the largest power of two
        <= N (one video per slot, at least 16): 65536 -> 8192 on UCF101, kept on K400."""
        return {"rgb_queue_size": self.rgb_queue.size, "flow_queue_size": self.flow_queue.size}

    def data_spec(self) -> DataSpec:
        c = self.config
        return DataSpec(clips=2, frames=c.frames, stride=c.stride, modalities=("rgb", "flow"), shared_crop=False,
                        augment=AugmentConfig(size=(c.crop, c.crop), jitter_per_frame=True, blur_sigma_per="batch",
                                              blur_sigma_groups=2),  # one sigma for the q clips, one for the k clips
                        sampler=("mds" if c.key_snap == "official" else "mds_nearest") if c.mds else None,
                        decode_size=(128, 171), flow_flip_negates_u=False)

    # ---------------------------------------------------------------- encoders

    def momentum_pairs(self) -> dict[str, list[MomentumPair]]:
        """Two key encoders: RGB (backbone, head) and flow (flow backbone, flow head)."""
        return {"rgb": [MomentumPair(self.backbone, self.key_backbone), MomentumPair(self.head, self.key_head)],
                "flow": [MomentumPair(self.flow_backbone, self.key_flow_backbone), MomentumPair(self.flow_head, self.key_flow_head)]}

    def momentum(self, group: str, state: TrainState) -> float | tuple[float, float]:
        """``cosine_momentum(step, total_steps, momentum_base, 1)``; with ``flow_ema_per_step=2`` the
        flow group gets two updates per step on a schedule that runs twice as fast (the original)."""
        c = self.config
        total = max(1, state.total_steps)
        if group == "flow" and c.flow_ema_per_step == 2:
            return tuple(cosine_momentum(2 * state.step + i, total, c.momentum_base, 1.0) for i in (0, 1))
        return cosine_momentum(state.step, total, c.momentum_base, 1.0)

    def _keys(self, backbone: nn.Module, head: nn.Module, clips: torch.Tensor) -> torch.Tensor:
        """L2-normalised key embeddings, with shuffle BN across ranks (MoCo's ``_batch_shuffle_ddp``)."""
        return key_pass(lambda x: head(backbone(x)), clips, key_encoder=backbone, shuffle_bn=self.config.shuffle_bn)

    def flow_inputs(self, flow: torch.Tensor) -> dict[str, torch.Tensor]:
        """The colour-coded flow clips of the layout: ``q_f, k_f`` and, with FRA, ``q_a, k_a`` (B, 3, T, H, W)."""
        c = self.config
        base = flow_images(flow)  # (B, 2, 3, T, H, W)
        if not c.flow_rotation:
            return {"q_f": base[:, 0], "k_f": base[:, 1]}
        chunk = torch.randint(FRA_CHUNKS, (flow.shape[0],), device=flow.device)  # one angle per video
        rot = flow_images(flow, fra_angles(chunk).view(-1, 1, 1, 1, 1))
        if c.layout == "shipped":
            return {"q_f": base[:, 0], "k_f": rot[:, 0], "q_a": base[:, 1], "k_a": rot[:, 1]}
        return {"q_f": base[:, 0], "k_f": base[:, 1], "q_a": rot[:, 0], "k_a": rot[:, 1]}

    def _rgb_query(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embedding, FPN level 0 or None)."""
        if self.neck is None:
            return self.head(self.backbone(x)), None
        maps = self.backbone.forward_stages(x, ("layer2", "layer3", "layer4"))
        return self.head(maps["pooled"]), self.neck([maps["layer2"], maps["layer3"], maps["layer4"]])

    def _flow_query(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, layer4 map)."""
        maps = self.flow_backbone.forward_stages(x, ("layer4",))
        return self.flow_head(maps["pooled"]), maps["layer4"]

    # ---------------------------------------------------------------- step

    def training_step(self, batch: dict[str, torch.Tensor], state: TrainState) -> StepOutput:
        c = self.config
        rgb = batch["rgb"]  # (B, 2, 3, T, H, W)
        views = self.flow_inputs(batch["flow"])
        q, level0 = self._rgb_query(rgb[:, 0])
        k = self._keys(self.key_backbone, self.key_head, rgb[:, 1])
        q_f, map_f = self._flow_query(views["q_f"])
        k_f = self._keys(self.key_flow_backbone, self.key_flow_head, views["k_f"])
        aug = "q_a" in views
        if aug:
            q_a, map_a = self._flow_query(views["q_a"])
            k_a = self._keys(self.key_flow_backbone, self.key_flow_head, views["k_a"])

        t, decay = c.temperature, c.queue_decay
        queue_rgb = self.rgb_queue.decayed(decay)
        queue_flow = self.flow_queue.decayed(decay)
        logits_rgb, labels = moco_logits(q, k, queue_rgb, t)
        parts: dict[str, torch.Tensor] = {"rgb": F.cross_entropy(logits_rgb, labels),
                                          "flow": moco_loss(q_f, k_f, queue_flow, t)}
        self.rgb_queue.enqueue(all_gather(k))
        self.flow_queue.enqueue(all_gather(k_f))
        # the shipped aug-flow forward reads the flow queue after k_f went in (only when it runs)
        queue_flow_seen = self.flow_queue.decayed(decay) if (aug and c.aug_sees_new_flow_keys) else queue_flow
        if aug:
            parts["flow_aug"] = moco_loss(q_a, k_a, queue_flow_seen, t)
        if c.cross_modal:
            parts["cross"] = moco_loss(q, k_f, queue_flow_seen, t) + moco_loss(q_f, k, queue_rgb, t)
            if aug:
                parts["cross_aug"] = moco_loss(q, k_a, queue_flow_seen, t) + moco_loss(q_a, k, queue_rgb, t)
        if level0 is not None:
            parts["lmcl"], _ = lmcl_loss(level0, [map_f, map_a] if aug else [map_f], c.lmcl_temperature)

        loss = torch.stack(list(parts.values())).sum()
        metrics = {f"mscl/{name}": value.detach() for name, value in parts.items()}
        metrics["mscl/rgb_acc"] = (logits_rgb.detach().argmax(dim=1) == 0).float().mean()
        return StepOutput(loss, metrics)
