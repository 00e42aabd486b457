"""MLFO: multi-level feature optimization (Qian et al., "Enhancing Self-supervised Video
Representation Learning via Multi-level Feature Optimization", ICCV 2021).

Reimplemented from the description of the official code (``shvdiwnkozbw/Video-Representation-
via-Multi-level-Optimization``: ``train.py``, ``model.py``, ``r3d.py``, ``dataloader.py``,
``augmentation.py``).

Per video the loader delivers three clips [A, B, G] of ``frames`` frames cut from one window of
``2 * frames`` indices at a random rate ``sr ~ U(1, min(rate, n / (2 frames)))`` (sampler
"overview"): A = the first half, B = the second half, G = every other index of the window (the
half-rate "overview" that spans A and B). Each clip has its own augmentation draw. One step::

    low, mid, high = backbone.forward_stages(clips)["layer2", "layer3", "layer4"]   # 3B clips
    feat  = avgpool_T(high -> t_high)                                  # (3B, C4, t_high)
    low'  = avgpool_T(ME_low([low, flip_T(low)]) -> t_low)             # (6B, C2, t_low)
    mid'  = avgpool_T(ME_mid([mid, flip_T(mid)]) -> t_mid)             # (6B, C3, t_mid)
    (a) L_high      instance InfoNCE of mean_t project(feat) over clips A, B; negatives = the
                    A and B clips of every other video of the GLOBAL batch; T = 0.07
    (b) L_mid/L_low the same on mean_t project_{mid,low}(mid'/low'), with the anchor's own
                    time-reversed A and B clips as two extra negatives (motion-pattern contrast)
    (c) L_fine_*    timestamp alignment at high/mid/low: position m of [pool(A) | pool(B)] must
                    find position m of G among G's positions, and vice versa (two CEs, halved)
    (d) L_proto     SwAV swapped prediction: logits = prototypes(normalize(MLP(mean_t feat))),
                    codes = Sinkhorn-Knopp (eps 0.05, 3 iterations) over the gathered logits (or
                    over the logit queue from epoch 10), p = softmax(logits / 0.1)
    (e) L_graph     from the ``split`` epoch: target = instance graph softmax(Z_A Z_B^T / 0.07),
                    entries < 0.05 dropped (diagonal kept), masked to same-cluster pairs
                    (argmax of the codes), row-normalised; each level's graph head predicts it
    L = L_high + L_fine_high + 0.5 (L_mid + L_fine_mid) + 0.3 (L_low + L_fine_low) + 0.5 L_proto
        [+ L_graph_high + 0.5 L_graph_mid + 0.3 L_graph_low]

The Motion Excitation block (TEA, Li et al. CVPR 2020, as ``r3d.py::MEBlock``): 1x1 conv to C/16
+ BN, a depthwise 3x3 conv, the difference ``conv(x)_{t+1} - x_t`` zero-padded at the last step,
spatial mean, 1x1 conv back to C + BN, ``m = sigmoid - 0.5`` and ``out = x + m * x``. The heads
are ``Conv1d(c, c, 1) -> ReLU -> Conv1d(c, 128, 1)`` per level and purpose (contrast, fine,
graph), ``project_global`` is ``Linear -> BN -> ReLU -> Linear`` to 128, L2-normalised, and the
prototypes are a bias-free ``Linear(128, K)`` kept at unit-norm rows.

Defaults are the paper's UCF101 recipe (README command): Adam lr 1e-3, wd 1e-5, betas (0.9,
0.999), batch 256 (64 x 4 GPUs), 300 epochs, lr x0.1 at 200, 200 clusters, split 50, threshold
0.05, 16 frames, 112 px, rate 3.0, embedding 128. The K400 recipe is ``clusters=1000,
split=20, reference_epochs=100`` with ``epochs=100`` and milestone 70.

Budget scaling. ``split`` and ``queue_start`` (10) are epochs of a ``reference_epochs``-epoch run
(300); a run of ``state.epochs`` epochs uses ``split * state.epochs / reference_epochs`` (e.g. a
2-epoch smoke run turns the graph on from epoch 1), the same rule the harness applies to lr
milestones. The prototype freeze is not scaled: prototypes are frozen in epoch 0, as in SwAV.

Logged parts: the loss terms ``mlfo/high``, ``mlfo/fine_high``, ``mlfo/mid``, ``mlfo/fine_mid``,
``mlfo/low``, ``mlfo/fine_low``, ``mlfo/proto``, ``mlfo/graph`` (unweighted; only those whose
family is on and active; the total is their weighted sum, :func:`loss_weights`), plus the
diagnostics ``mlfo/acc_*`` (instance, motion and alignment accuracies, as the original computes
them) and ``mlfo/clusters`` (distinct cluster labels in the global batch, the original's
``diverse``).

Switches (ablations, config fields): ``motion_contrast`` (L_mid, L_low and the time reversal),
``alignment`` (the three L_fine), ``prototypes`` (L_proto and the logit queue), ``graph``
(L_graph). Each removes exactly its parts from the loss and the logged parts. Without
``prototypes`` there are no cluster labels: the graph target is then the thresholded instance
graph alone (the semantic mask is all ones). ``graph_mean_over_batch`` (default True, as the
original) averages the graph loss over all ``B_l x B_g`` entries, i.e. the soft cross-entropy
divided by the global batch ``B_g``; False gives the plain per-row soft cross-entropy.

Deviations from the official code, and why:

- Any world size: the original's ``all_gather(..., num_replicas=4)`` hard-codes 4 GPUs (and
  asserts it). Here ``core.distributed.all_gather_with_grad`` gathers over the actual world
  (``gather="local"``, default: only the local slice keeps its gradient, as the original;
  ``"full"`` makes a DDP step equal the single-process step on the global batch). A single
  process works too (the original refuses to run without DDP).
- Backbone: any harness backbone through ``forward_stages``; channel counts come from
  ``stage_channels`` (the original hard-codes 128/256/512 and R3D-18). The temporal positions
  kept per level are the map's own length (8/4/2 for 16 frames, as the original's fixed
  AdaptiveAvgPool sizes), made even and at least 2, because the alignment pools A and B to half
  of them: with 8 frames the high map has one time step, which is repeated to 2 positions (what
  the original's AdaptiveAvgPool3d((2,1,1)) would do with it); the high alignment is then nearly
  uninformative at that size. The ME block's reduced width is ``max(1, C // 16)`` (tiny nets).
- The ME block is written with Conv3d (1x1x1 and depthwise 1x3x3) and BatchNorm3d on the
  (N, C, T, H, W) map instead of Conv2d/BatchNorm2d on the (N*T, C, H, W) frames: the same
  function and statistics (a test checks it against the per-frame 2-D form), with 5-D weights so
  the harness's channels_last_3d conversion applies.
- Contrastive losses are computed as ``logsumexp(all) - logsumexp(positives)`` instead of
  ``-log(sum exp(pos) / (sum exp(pos) + sum exp(neg)))`` with raw ``exp``: the same value,
  without overflow under bf16/fp32. Likewise the swapped prediction and graph losses use
  ``log_softmax`` instead of ``log(softmax + 1e-10)`` (differs only where p < ~1e-8).
- Every similarity product (instance / motion contrast, timestamp alignment, instance graph,
  graph prediction, prototype scores) is computed in float32 with autocast off
  (``methods.losses.fp32_einsum`` / ``fp32_matmul``), and the Sinkhorn codes in float32; the
  backbone, ME blocks and heads run under the harness's bf16 autocast. (Under autocast a plain
  ``einsum`` of float32 operands still runs in bf16, with 8 significant bits.)
- Prototype freeze in epoch 0: the original sets the prototype gradients to None after
  ``backward()``; here the prototype weight is detached in the forward pass of epoch 0, so no
  gradient reaches it and the optimizer (torch Adam skips parameters whose grad is None, weight
  decay included) leaves it untouched: the same update. The rows are re-normalised after every
  optimizer step (:meth:`after_optimizer_step`) and once at construction, which is the same
  sequence as the original's normalisation at the start of every step.
- Logit queue: capped by the data set size; codes from the current batch alone when the global
  batch is longer than the queue (the original would fail). The queue's start, push and length,
  and Sinkhorn over identical global scores on every rank: docs/methods/mlfo.md, "Momentum,
  queues and banks".
- Data: the harness decodes videos (or frame folders) and resizes to ``decode_size`` = the
  original's 150x200 (H x W) scaled by ``crop / 112``. Videos shorter than the window are
  skipped and named by the loader (the original drops videos with <= 32 frames). The crop is the harness's RandomResizedCrop with
  the original's area (0.5, 1) and aspect (3/4, 4/3); the channel-split greyscale with p 0.5 and
  then jitter (0.5, 0.5, 0.5, 0.25) with p 1, greyscale first as in the original's ``train.py``
  (``AugmentConfig.grey_before_jitter``), both drawn per frame (``per_frame_colour=True``, as the
  original's ``consistent=False``) or per clip (False); the jitter's own order is the harness's
  fixed order, not the original's random permutation; no blur; ImageNet normalisation.
- SyncBN: the original converts the whole model to SyncBatchNorm; :meth:`prepare_distributed`
  does the same (``sync_bn=True``), on any backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.data.transforms import GREY_MODES, AugmentConfig
from core.distributed import all_gather, all_gather_with_grad, convert_sync_batchnorm, rank
from methods.base import DataSpec, Method, Recipe, StepOutput, TrainState, decode_size_for_crop, register_method
from methods.losses import capped_queue_size, fp32_einsum, fp32_matmul, sinkhorn_knopp

__all__ = [
    "MLFOConfig",
    "MLFO",
    "MotionExcitation",
    "time_reversal_pair",
    "level_positions",
    "pool_time",
    "instance_contrast",
    "instance_graph",
    "alignment_logits",
    "timestamp_alignment",
    "prototype_logits",
    "swav_codes",
    "swapped_prediction",
    "graph_target",
    "graph_loss",
    "loss_weights",
]

_T = 2  # time axis of (N, C, T, H, W)
GATHER_MODES = ("local", "full")
LEVELS = ("high", "mid", "low")


@dataclass(frozen=True)
class MLFOConfig:
    """MLFO hyperparameters (official-code defaults with the paper's UCF101 command)."""

    embed_dim: int = 128  # --channel
    temperature: float = 0.07  # instance, motion, alignment and graph similarities
    proto_temperature: float = 0.1  # softmax of the prototype logits
    clusters: int = 200  # --cluster (UCF101; K400: 1000)
    sinkhorn_eps: float = 0.05
    sinkhorn_iterations: int = 3
    queue_size: int = 1024  # rows of (2, clusters) logits; capped by the data set, see methods.losses.capped_queue_size
    queue_start: float = 10.0  # epoch (of reference_epochs) from which Sinkhorn runs over the queue
    split: float = 50.0  # --split: epoch (of reference_epochs) from which the graph loss is on
    reference_epochs: int = 300  # the run length split / queue_start refer to; scaled to the run's epochs
    freeze_prototype_epochs: int = 1  # prototypes get no gradient in the first epoch(s) (not scaled)
    graph_threshold: float = 0.05  # --thres
    level_weights: tuple[float, float, float] = (1.0, 0.5, 0.3)  # high, mid, low (contrast, alignment, graph)
    proto_weight: float = 0.5
    graph_mean_over_batch: bool = True  # the original's mean over B_l x B_g entries (= soft CE / B_g)
    me_reduction: int = 16  # ME block channel reduction
    motion_contrast: bool = True  # ablation switches: each removes its loss terms
    alignment: bool = True
    prototypes: bool = True
    graph: bool = True
    gather: str = "local"  # all_gather_with_grad mode: "local" (original) or "full"
    sync_bn: bool = True  # SyncBatchNorm under DDP, as the original
    per_frame_colour: bool = True  # jitter magnitudes and greyscale drawn per frame (original) or per clip
    grey_mode: str = "channel"  # "channel": one random RGB channel copied (original); "luma"
    rate: float = 3.0  # --rate: upper bound of the sampling rate
    frames: int = 16  # --seq
    crop: int = 112  # --img_dim

    def __post_init__(self) -> None:
        if self.gather not in GATHER_MODES:
            raise ValueError(f"gather must be one of {GATHER_MODES}, got {self.gather!r}")
        if self.grey_mode not in GREY_MODES:
            raise ValueError(f"grey_mode must be one of {GREY_MODES}, got {self.grey_mode!r}")
        if self.temperature <= 0 or self.proto_temperature <= 0 or self.sinkhorn_eps <= 0:
            raise ValueError(f"temperatures and sinkhorn_eps must be positive, got {self}")
        if self.clusters < 1 or self.queue_size < 1 or self.reference_epochs < 1 or self.me_reduction < 1:
            raise ValueError(f"clusters, queue_size, reference_epochs and me_reduction must be >= 1, got {self}")
        if self.rate < 1:
            raise ValueError(f"rate must be >= 1 (sr ~ U(1, rate)), got {self.rate}")
        if len(self.level_weights) != 3:
            raise ValueError(f"level_weights are (high, mid, low), got {self.level_weights}")


def loss_weights(c: MLFOConfig) -> dict[str, float]:
    """The weight of every loss part in the total (the paper's total loss, docs/methods/mlfo.md); the graph
    part already holds its level weights (high + 0.5 mid + 0.3 low)."""
    wh, wm, wl = c.level_weights
    return {"high": wh, "fine_high": wh, "mid": wm, "fine_mid": wm, "low": wl, "fine_low": wl,
            "proto": c.proto_weight, "graph": 1.0}


# --------------------------------------------------------------------------------------------
# Architecture pieces
# --------------------------------------------------------------------------------------------


class MotionExcitation(nn.Module):
    """TEA's Motion Excitation block (Li et al., CVPR 2020, Sec. 3.2), as MLFO's ``MEBlock``.

    On a map x (N, C, T, H, W): ``r = BN(conv1x1(x))`` to C/r channels, ``d_t = dwconv3x3(r)_{t+1}
    - r_t`` for t < T-1 and 0 at T-1, spatial mean, ``m = BN(conv1x1(d))`` back to C,
    ``out = x + (sigmoid(m) - 0.5) * x``. Per-frame 2-D convolutions are written as Conv3d with
    kernel 1 in time, and BatchNorm3d has the same statistics as the original's BatchNorm2d over
    the (N*T) frames.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        mid = max(1, channels // reduction)
        self.reduce = nn.Conv3d(channels, mid, kernel_size=1, bias=False)
        self.bn_reduce = nn.BatchNorm3d(mid)
        self.spatial = nn.Conv3d(mid, mid, kernel_size=(1, 3, 3), padding=(0, 1, 1), groups=mid, bias=False)
        self.expand = nn.Conv3d(mid, channels, kernel_size=1, bias=False)
        self.bn_expand = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.bn_reduce(self.reduce(x))
        rp = self.spatial(r)
        diff = rp[:, :, 1:] - r[:, :, :-1]  # conv(x_{t+1}) - x_t
        diff = F.pad(diff, (0, 0, 0, 0, 0, 1))  # zero at the last time step
        m = self.bn_expand(self.expand(diff.mean(dim=(3, 4), keepdim=True)))
        return x + (torch.sigmoid(m) - 0.5) * x


def conv_head(channels: int, out_dim: int) -> nn.Sequential:
    """``Conv1d(c, c, 1) -> ReLU -> Conv1d(c, out, 1)`` on (N, c, t): MLFO's per-level heads."""
    return nn.Sequential(nn.Conv1d(channels, channels, 1), nn.ReLU(inplace=True), nn.Conv1d(channels, out_dim, 1))


def time_reversal_pair(x: torch.Tensor) -> torch.Tensor:
    """``[x, flip_T(x)]`` along the batch: the original's (misnamed) ``temporal_shuffle``.

    x (N, C, T, H, W) -> (2N, C, T, H, W); row ``N + i`` is row ``i`` played backwards."""
    if x.dim() != 5:
        raise ValueError(f"expected (N, C, T, H, W), got {tuple(x.shape)}")
    return torch.cat([x, torch.flip(x, dims=(_T,))], dim=0)


def level_positions(length: int) -> int:
    """Time positions kept at a level whose map has ``length`` steps: even and at least 2
    (the alignment pools A and B to half of them)."""
    return max(2, length - length % 2)


def pool_time(x: torch.Tensor, positions: int) -> torch.Tensor:
    """Spatial mean and adaptive temporal mean to ``positions`` steps: (N, C, T, H, W) -> (N, C, t)."""
    return F.adaptive_avg_pool3d(x, (positions, 1, 1)).flatten(2)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def instance_contrast(
    local: torch.Tensor,
    global_: torch.Tensor,
    offset: int,
    temperature: float,
    extra_negatives: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLFO's ``feat_contrast`` / ``motion_contrast`` (Sec. 3.2/3.3 of the paper).

    Every clip ``a`` of local video ``i`` is an anchor; its positives are the other clips of
    video ``i``; its negatives are every clip of every OTHER video of the global batch plus
    ``extra_negatives[i]`` (the motion contrast passes the anchor video's own time-reversed
    clips). ``loss = -log(sum_pos e^{s/T} / (sum_pos e^{s/T} + sum_neg e^{s/T}))``, mean over
    anchors.

    Args:
        local: (B, n, D) L2-normalised embeddings of this rank's videos (n >= 2 clips).
        global_: (N, n, D) L2-normalised embeddings of the global batch; rows
            ``offset .. offset + B`` are this rank's videos.
        offset: position of this rank's first video in ``global_``.
        temperature: T.
        extra_negatives: (B, E, D) per-video extra negatives, or None.

    Returns:
        ``(loss, accuracy)``; accuracy = fraction of anchors whose positive mass beats the
        negative mass (the original's argmax over [pos, neg]).
    """
    b, n, d = local.shape
    if n < 2 or global_.dim() != 3 or global_.shape[1:] != (n, d) or not 0 <= offset <= global_.shape[0] - b:
        raise ValueError(f"expected local (B, n>=2, D) inside global (N, n, D), got {tuple(local.shape)}, "
                         f"{tuple(global_.shape)}, offset {offset}")
    pos = fp32_einsum("bnd,bmd->bnm", local, local) / temperature  # (B, n, n)
    off_diag = ~torch.eye(n, dtype=torch.bool, device=local.device)
    pos = pos[:, off_diag].view(b, n, n - 1)
    neg = fp32_einsum("bnd,md->bnm", local, global_.reshape(-1, d)) / temperature  # (B, n, N*n)
    own = torch.zeros(b, global_.shape[0], dtype=torch.bool, device=local.device)
    own[torch.arange(b, device=local.device), offset + torch.arange(b, device=local.device)] = True
    neg = neg.masked_fill(own.repeat_interleave(n, dim=1)[:, None, :], float("-inf"))
    parts = [pos, neg]
    if extra_negatives is not None:
        parts.append(fp32_einsum("bnd,bed->bne", local, extra_negatives) / temperature)
    lse_pos = torch.logsumexp(pos, dim=2)
    lse_neg = torch.logsumexp(torch.cat(parts[1:], dim=2), dim=2)
    loss = torch.logaddexp(lse_pos, lse_neg) - lse_pos
    accuracy = (lse_pos > lse_neg).float().mean().detach()
    return loss.mean(), accuracy


def instance_graph(global_: torch.Tensor, temperature: float) -> torch.Tensor:
    """The instance-similarity graph ``softmax(Z_A Z_B^T / T, dim=1)`` (N, N), no gradient:
    row i = how clip A of video i distributes over clip B of every video."""
    z = global_.detach().float()
    return torch.softmax(fp32_matmul(z[:, 0], z[:, 1].t()) / temperature, dim=1)


def alignment_logits(fine: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Timestamp-alignment logits ``(l2g, g2l)``, each (B, t, t) with target position m for row m.

    ``fine`` (B, 3, D, t): per-position embeddings of clips [A, B, G]. A and B are each pooled to
    t/2 positions and concatenated in time, so position m of ``[A|B]`` and position m of G cover
    the same frames of the window; ``l2g[b, m, k] = <[A|B]_m, G_k> / T`` (channels L2-normalised)
    and ``g2l`` swaps the roles.
    """
    if fine.dim() != 4 or fine.shape[1] != 3 or fine.shape[3] % 2:
        raise ValueError(f"expected (B, 3, D, t) with even t, got {tuple(fine.shape)}")
    fine = fine.float()
    t = fine.shape[3]
    original = torch.cat([F.adaptive_avg_pool1d(fine[:, 0], t // 2), F.adaptive_avg_pool1d(fine[:, 1], t // 2)], dim=2)
    original = F.normalize(original, dim=1)
    overview = F.normalize(fine[:, 2], dim=1)
    l2g = fp32_einsum("bcm,bcn->bmn", original, overview) / temperature
    g2l = fp32_einsum("bcm,bcn->bmn", overview, original) / temperature
    return l2g, g2l


def timestamp_alignment(fine: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MLFO's ``local_global``: ``(CE(l2g, m) + CE(g2l, m)) / 2`` over all B x t rows; returns
    ``(loss, accuracy)``. Negatives are the other time positions of the same video."""
    l2g, g2l = alignment_logits(fine, temperature)
    b, t, _ = l2g.shape
    labels = torch.arange(t, device=fine.device).repeat(b)
    l2g, g2l = l2g.reshape(b * t, t), g2l.reshape(b * t, t)
    loss = (F.cross_entropy(l2g, labels) + F.cross_entropy(g2l, labels)) / 2
    accuracy = ((l2g.argmax(1) == labels).float().mean() + (g2l.argmax(1) == labels).float().mean()).detach() / 2
    return loss, accuracy


def prototype_logits(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """SwAV's prototype scores ``z . c_k`` (Caron et al. 2020, Sec. 3.1): (N, D) unit embeddings
    against (K, D) unit prototype rows -> (N, K) float32, computed with autocast off; a gradient
    reaches both (the prototypes' unless the caller detaches them, as in epoch 0)."""
    return fp32_matmul(z, prototypes.t())


def swav_codes(scores: torch.Tensor, batch: int, epsilon: float, iterations: int) -> torch.Tensor:
    """Sinkhorn-Knopp codes of the last ``batch`` rows (the current global batch).

    ``scores`` (Q, 2, K): the logit queue (or the gathered batch), clips A and B; each clip's
    (Q, K) scores get their own equipartition. Returns (batch, 2, K) codes, rows summing to 1.
    Every rank holds the same scores, so nothing is reduced across ranks.
    """
    if scores.dim() != 3 or scores.shape[1] != 2 or not 0 < batch <= scores.shape[0]:
        raise ValueError(f"expected (Q, 2, K) scores with Q >= batch = {batch}, got {tuple(scores.shape)}")
    codes = [sinkhorn_knopp(scores[:, c], epsilon, iterations, all_reduce=False)[-batch:] for c in range(2)]
    return torch.stack(codes, dim=1)


def swapped_prediction(logits: torch.Tensor, codes: torch.Tensor, temperature: float) -> torch.Tensor:
    """SwAV's swapped prediction (Caron et al. 2020, Eq. 1) between clips A and B:
    ``-0.5 mean_i (q_B . log p_A + q_A . log p_B)`` with ``p = softmax(logits / T)``.

    logits (B, 2, K) of this rank's videos; codes (B, 2, K) their Sinkhorn codes (targets)."""
    log_p = F.log_softmax(logits.float() / temperature, dim=2)
    q = codes.detach().float()
    return -0.5 * ((q[:, 1] * log_p[:, 0]).sum(1) + (q[:, 0] * log_p[:, 1]).sum(1)).mean()


def graph_target(similarity: torch.Tensor, labels: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """MLFO's ``graph()``: the row-stochastic target of the graph constraint (N, N).

    Entries of the instance graph below ``threshold`` are dropped, the diagonal is always kept,
    edges between videos of different clusters (``labels``) are dropped (no mask when None),
    and each row is normalised to sum 1."""
    s = similarity.detach().float()
    n = s.shape[0]
    if s.shape != (n, n):
        raise ValueError(f"similarity must be square, got {tuple(s.shape)}")
    eye = torch.eye(n, dtype=torch.bool, device=s.device)
    keep = (s >= threshold) | eye
    if labels is not None:
        keep &= labels.view(-1, 1) == labels.view(1, -1)
    target = s * keep
    return target / target.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


def graph_loss(
    local: torch.Tensor,
    global_: torch.Tensor,
    target_rows: torch.Tensor,
    temperature: float,
    mean_over_batch: bool = True,
) -> torch.Tensor:
    """MLFO's ``graph_contrast`` at one level.

    ``P = softmax(normalize(g_A) @ normalize(G_B)^T / T)`` (B, N) for this rank's clip-A graph
    embeddings ``local`` (B, 2+, D) against the global clip-B ones ``global_`` (N, 2+, D), and
    the loss ``-sum_j C_ij log P_ij`` with ``target_rows`` (B, N) = this rank's rows of the
    target. ``mean_over_batch`` (the original) averages over all B x N entries, i.e. divides the
    per-row soft cross-entropy by N; otherwise rows are summed and averaged over B."""
    a = F.normalize(local[:, 0].float(), dim=1)
    bg = F.normalize(global_[:, 1].float(), dim=1)
    log_p = F.log_softmax(fp32_matmul(a, bg.t()) / temperature, dim=1)
    loss = -(log_p * target_rows.detach())
    return loss.mean() if mean_over_batch else loss.sum(dim=1).mean()


# --------------------------------------------------------------------------------------------
# Method
# --------------------------------------------------------------------------------------------


def mlfo_augment(c: MLFOConfig) -> AugmentConfig:
    """The paper's augmentation: crop area (0.5, 1), aspect (3/4, 4/3), flip 0.5, channel-split grey
    p 0.5, THEN jitter (0.5, 0.5, 0.5, 0.25) with p 1 (``train.py`` composes RandomGray before
    ColorJitter), both per frame unless ``per_frame_colour=False``; no blur; ImageNet normalisation."""
    return AugmentConfig(size=(c.crop, c.crop), scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5,
                         jitter=(0.5, 0.5, 0.5, 0.25), jitter_p=1.0, grey_p=0.5, blur_p=0.0, normalize=True,
                         jitter_per_frame=c.per_frame_colour, grey_per_frame=c.per_frame_colour, grey_mode=c.grey_mode,
                         grey_before_jitter=True)


@register_method("mlfo")
class MLFO(Method):
    """MLFO (Qian et al., ICCV 2021): instance, motion, alignment, prototype and graph objectives at three levels."""

    Config = MLFOConfig
    paper_backbone = "r3d_18_mlfo"
    recipe = Recipe(optimizer="adam", lr=1e-3, weight_decay=1e-5, betas=(0.9, 0.999), schedule="multistep",
                    milestones=(200,), gamma=0.1, epochs=300, batch_size=256)
    find_unused_parameters = True  # graph heads before split, prototypes in epoch 0 (the original sets it too)

    def __init__(self, config: MLFOConfig, backbone: nn.Module, *, dataset_size: int):
        super().__init__(config, backbone, dataset_size=dataset_size)
        ch = backbone.stage_channels
        low, mid, high, d = ch["layer2"], ch["layer3"], ch["layer4"], config.embed_dim
        self.me_low = MotionExcitation(low, config.me_reduction)
        self.me_mid = MotionExcitation(mid, config.me_reduction)
        self.project, self.project_fine, self.project_graph = conv_head(high, d), conv_head(high, d), conv_head(high, d)
        self.project_mid, self.project_mid_fine, self.project_mid_graph = conv_head(mid, d), conv_head(mid, d), conv_head(mid, d)
        self.project_low, self.project_low_fine, self.project_low_graph = conv_head(low, d), conv_head(low, d), conv_head(low, d)
        self.project_global = nn.Sequential(nn.Linear(high, high), nn.BatchNorm1d(high), nn.ReLU(inplace=True),
                                            nn.Linear(high, d))
        self.prototypes = nn.Linear(d, config.clusters, bias=False)
        self.normalize_prototypes()
        g = torch.Generator().manual_seed(0)  # the same initial queue on every rank
        size = capped_queue_size(config.queue_size, dataset_size, videos_per_slot=2)
        self.register_buffer("proto_queue", torch.randn(size, 2, config.clusters, generator=g))

    # ------------------------------------------------------------------ harness hooks

    def data_spec(self) -> DataSpec:
        c = self.config
        return DataSpec(clips=3, frames=c.frames, stride=(1.0, c.rate), sampler="overview", shared_crop=False,
                        augment=mlfo_augment(c), decode_size=decode_size_for_crop(c.crop, (150, 200)))

    def after_optimizer_step(self, state: TrainState) -> None:
        self.normalize_prototypes()

    def prepare_distributed(self) -> None:
        if self.config.sync_bn:
            convert_sync_batchnorm(self)

    def effective_settings(self) -> dict[str, int]:
        """What the config turned into on this data and backbone: ``proto_queue_size`` (rows of the
        logit queue, ``queue_size`` capped at the largest power of two <= N / 2, at least 16) and
        the ME blocks' reduced widths ``max(1, C // me_reduction)`` at the low and mid levels."""
        return {"proto_queue_size": self.proto_queue.shape[0],
                "me_low_channels": self.me_low.reduce.out_channels,
                "me_mid_channels": self.me_mid.reduce.out_channels}

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Unit-norm prototype rows (the original re-normalises them every iteration)."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    # ------------------------------------------------------------------ schedule

    def _scaled(self, epoch: float, state: TrainState) -> float:
        return epoch * state.epochs / self.config.reference_epochs

    def graph_active(self, state: TrainState) -> bool:
        """The graph loss runs from epoch ``split`` (scaled to this run's length)."""
        return self.config.graph and state.epoch >= self._scaled(self.config.split, state)

    def queue_active(self, state: TrainState) -> bool:
        """Sinkhorn runs over the logit queue from epoch ``queue_start`` (scaled)."""
        return state.epoch >= self._scaled(self.config.queue_start, state)

    # ------------------------------------------------------------------ forward

    def features(self, clips: torch.Tensor, graph: bool, freeze_prototypes: bool = False) -> dict[str, torch.Tensor]:
        """Per-level embeddings of (B, 3, C, T, H, W) clips [A, B, G]; what is computed follows the switches.

        Keys: ``high`` (B, 3, D); ``fine_high`` (B, 3, D, t); ``mid``/``low`` (2B, 3, D): first B
        original, last B time-reversed; ``fine_mid``/``fine_low`` (B, 3, D, t); ``logits``
        (B, 2, K); ``graph_high``/``graph_mid``/``graph_low`` (B, 3, D). ``freeze_prototypes``
        detaches the prototype weight (epoch 0).
        """
        c = self.config
        b, n = clips.shape[:2]
        need_levels = c.motion_contrast or c.alignment or graph
        stages = ("layer2", "layer3", "layer4") if need_levels else ("layer4",)
        maps = self.backbone.forward_stages(clips.flatten(0, 1), stages)
        high = pool_time(maps["layer4"], level_positions(maps["layer4"].shape[_T]))  # (3B, C4, t)
        out = {"high": self.project(high).mean(2).view(b, n, -1)}
        if c.alignment:
            out["fine_high"] = self.project_fine(high).view(b, n, -1, high.shape[2])
        if c.prototypes:
            z = F.normalize(self.project_global(high.mean(2)), dim=1)
            weight = self.prototypes.weight.detach() if freeze_prototypes else self.prototypes.weight
            out["logits"] = prototype_logits(z, weight).view(b, n, -1)[:, :2]
        if graph:
            out["graph_high"] = self.project_graph(high).mean(2).view(b, n, -1)
        if need_levels:
            for level, stage, me in (("mid", "layer3", self.me_mid), ("low", "layer2", self.me_low)):
                out.update(self._level(level, maps[stage], me, b, n, graph))
        return out

    def _level(self, level: str, x: torch.Tensor, me: MotionExcitation, b: int, n: int, graph: bool) -> dict[str, torch.Tensor]:
        """ME block (+ time reversal for the motion contrast), pooling and the level's heads."""
        c = self.config
        t = level_positions(x.shape[_T])
        if c.motion_contrast:
            x = time_reversal_pair(x)
        m = pool_time(me(x), t)  # (3B or 6B, C, t)
        original = m[: b * n]
        heads = {"mid": (self.project_mid, self.project_mid_fine, self.project_mid_graph),
                 "low": (self.project_low, self.project_low_fine, self.project_low_graph)}[level]
        out = {}
        if c.motion_contrast:
            out[level] = heads[0](m).mean(2).view(2 * b, n, -1)
        if c.alignment:
            out[f"fine_{level}"] = heads[1](original).view(b, n, -1, t)
        if graph:
            out[f"graph_{level}"] = heads[2](original).mean(2).view(b, n, -1)
        return out

    def training_step(self, batch: dict[str, torch.Tensor], state: TrainState) -> StepOutput:
        c = self.config
        clips = batch["rgb"]  # (B, 3, 3, T, H, W): [A, B, G]
        if clips.dim() != 6 or clips.shape[1] != 3:
            raise ValueError(f"MLFO needs clips [A, B, G]: batch['rgb'] of shape (B, 3, C, T, H, W), got {tuple(clips.shape)}")
        b = clips.shape[0]
        graph = self.graph_active(state)
        f = self.features(clips, graph, freeze_prototypes=state.epoch < c.freeze_prototype_epochs)
        offset = rank() * b
        gather = self._gather

        parts: dict[str, torch.Tensor] = {}
        diag: dict[str, torch.Tensor] = {}
        z_high = F.normalize(f["high"][:, :2].float(), dim=2)
        z_high_all = gather(z_high)
        parts["high"], diag["acc_high"] = instance_contrast(z_high, z_high_all, offset, c.temperature)
        if c.motion_contrast:
            for level in ("mid", "low"):
                z = F.normalize(f[level][:, :2].float(), dim=2)  # (2B, 2, D)
                parts[level], diag[f"acc_{level}"] = instance_contrast(z[:b], gather(z[:b]), offset, c.temperature,
                                                                       extra_negatives=z[b:])
        if c.alignment:
            for level in LEVELS:
                parts[f"fine_{level}"], diag[f"acc_fine_{level}"] = timestamp_alignment(f[f"fine_{level}"], c.temperature)
        labels = None
        if c.prototypes:
            parts["proto"], labels = self._proto_loss(f["logits"], state, offset)
            diag["clusters"] = torch.tensor(float(torch.unique(labels).numel()))
        if graph:
            parts["graph"] = self._graph_loss(f, z_high_all, labels, offset)

        weights = loss_weights(c)
        loss = sum(weights[k] * v for k, v in parts.items())
        logged = {f"mlfo/{k}": v.detach() for k, v in parts.items()}
        logged.update({f"mlfo/{k}": v for k, v in diag.items()})
        return StepOutput(loss, logged)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """The global batch along dim 0; gradient on the local slice ("local") or everywhere ("full")."""
        return all_gather_with_grad(x, mode=self.config.gather)

    def _proto_loss(self, logits: torch.Tensor, state: TrainState, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Swapped prediction against Sinkhorn codes; also the global batch's cluster labels."""
        c = self.config
        logits_all = all_gather(logits.detach().float())  # (B_g, 2, K)
        n = logits_all.shape[0]
        self._push(logits_all)
        use_queue = self.queue_active(state) and n <= self.proto_queue.shape[0]
        scores = self.proto_queue.clone() if use_queue else logits_all
        codes = swav_codes(scores, n, c.sinkhorn_eps, c.sinkhorn_iterations)  # (B_g, 2, K)
        loss = swapped_prediction(logits, codes[offset : offset + logits.shape[0]], c.proto_temperature)
        return loss, (codes[:, 0] + codes[:, 1]).argmax(dim=1)

    @torch.no_grad()
    def _push(self, logits_all: torch.Tensor) -> None:
        """FIFO: the oldest rows leave at the front, the global batch enters at the end (every rank alike)."""
        q = self.proto_queue
        q.copy_(torch.cat([q, logits_all.to(q.dtype)])[-q.shape[0]:])

    def _graph_loss(self, f: dict[str, torch.Tensor], z_high_all: torch.Tensor, labels: torch.Tensor | None,
                    offset: int) -> torch.Tensor:
        c = self.config
        target = graph_target(instance_graph(z_high_all, c.temperature), labels, c.graph_threshold)
        rows = target[offset : offset + f["graph_high"].shape[0]]
        total = 0.0
        for level, w in zip(LEVELS, c.level_weights):
            g = f[f"graph_{level}"][:, :2]
            total = total + w * graph_loss(g, self._gather(g), rows, c.temperature, c.graph_mean_over_batch)
        return total
