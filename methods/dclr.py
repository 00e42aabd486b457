"""DCLR: Dual Contrastive Learning for spatio-temporal Representation (Ding, Qian, Xiong, ACM MM 2022).

DCLR is MoCo with the RGB clip *decoupled* into a static view (one frame repeated over time: the
scene) and a dynamic view (frame differences: the motion). The RGB feature is pulled toward the
other clip's static feature and toward its dynamic feature, in both directions, so that both the
scene and the motion end up in the one RGB representation that evaluation uses. Reimplemented
from the description of the official code (``Mark12Ding/DCLR``: ``main_view.py``,
``moco/builder.py::MoCo_View``, ``view_resnet.py``, ``dataset/ucf101_view.py``, ``moco/loader.py``).

Per step, for B videos with clips ``q`` and ``k`` (two different random windows of 32 raw frames,
16 frames read at stride 2: ``n - 31`` possible starts) and their static clips ``s_q``, ``s_k``
(the same raw frame offset 0..31 in both windows, repeated; sampler "with_static", as
``dataset/ucf101_view.py``; "with_static_span" ends the window at the last sampled frame), every
clip augmented independently::

    d_q = q - roll(q, 1, T)      d_k likewise            # after augmentation, unscaled
    # 1) key encoder on [q, s_q, d_q] folded into the batch (no grad, no shuffle):
    a_s, a_d = activation maps of s_q, d_q               # channel sum of layer4, / its mean
    r_s, r_d = normalize(f_sv(GAP(s_q))), normalize(f_dv(GAP(d_q)))     # "reference" embeddings
    # 2) query encoder on [q, s_q, d_q] (gradient); v, s, d = its layer4 maps:
    q_vv = f_vv(GAP v)   q_vs = f_vs(GAP(v * a_s))   q_vd = f_vd(GAP(v * a_d))
    q_sv = f_sv(GAP s)   q_dv = f_dv(GAP d)          # all L2-normalised, 128-d
    # 3) key encoder on [k, s_k, d_k], shuffle BN; its own s, d maps re-weight its v map:
    k_vv, k_vs, k_vd, k_sv, k_dv
    # 4) five MoCo logit sets /0.07, positive in column 0, then the queue:
    vv: (q_vv, k_vv, Q_vv)   vs: (q_vs, k_sv, Q_sv)   sv: (q_sv, k_vs, Q_vs)
    vd: (q_vd, k_dv, Q_dv)   dv: (q_dv, k_vd, Q_vd)
    # 5) neighbour positives (no temperature): sim_s = softmax(r_s . Q_sv), sim_d = softmax(r_d . Q_dv)
    P_s = {0} + 1 + top5(sim_s)  for vs, sv;  P_d = {0} + 1 + top5(sim_d)  for vd, dv
    P_v = {0} + 1 + top5(sim_s + sim_d)  for vv
    L = sum of MultiNCE(l, P) = -log sum_{j in P} softmax(l)_j     (weight 1 each)
        + 0.1 * mean((norm(a_v^query) - norm(a_s + a_d))^2)        (map regulariser, see below)
    # 6) enqueue the gathered keys; all queues share one pointer

Defaults are the README recipe: R(2+1)D (the official "r2plus1d_18" of ``view_resnet.py`` has one
block per stage: the harness's ``r2plus1d_10``), 16 frames at stride 2, 112 px, five heads
``Linear(D, D) - ReLU - Linear(D, 128)`` (D = 512 there), T = 0.07, m = 0.999, top-5 neighbours,
SGD lr 0.01 (momentum 0.9, wd 1e-4), batch 40, step x0.1 at epochs 120 and 160, 200 epochs.
Augmentation per clip: RandomResizedCrop (0.2-1, ratio 3/4-4/3), flip 0.5, colour jitter
(0.4, 0.4, 0.4, 0.1; p 0.8), greyscale 0.2, Gaussian blur p 0.5 with kernel
``int(0.1 crop) // 2 * 2 + 1`` (11 at 112 px), ImageNet normalisation.

Switches (config fields): ``static_branch`` (False removes the static view and the vs, sv terms),
``dynamic_branch`` (False removes vd, dv), ``reweight`` (False: plain GAP for the vs, vd heads),
``neighbours`` (False: one positive per row, i.e. plain MoCo NCE), ``map_regularizer``,
``warmup_iterations`` (0 = off). Neighbour mining uses the branches that are on (P_v from the
one similarity that remains, or a single positive when neither does). ``official_key_maps``
(default False) re-weights each key with the maps the released code's batch shuffle leaves in
its row (see "Key clip" below); it needs ``reweight`` and a static or dynamic branch.

Precision: every logit and the neighbour similarity are float32 products with autocast off
(``methods.losses.moco_logits`` / ``fp32_matmul``); the encoders and heads run under the
harness's bf16 autocast. The activation maps are float32 channel sums.

Defects of the released code (docs/methods/dclr.md) and how they are resolved here:

1. ``extract_feature(train=False)`` unpacks 4 of the encoder's 5 outputs: the evident 5-way
   mapping (vc, sc, dc, sv, dv) is used.
2. ``torch.samplerones`` (a typo that crashes) is ``torch.ones``: column 0 is always a positive.
3. The regulariser ``0.1 * mean((qvc - (kvs + kvd))^2)`` compares a (B, 1, 2, 7, 7) map with
   (B, 128) embeddings (cannot broadcast) and both operands come from the no-grad key encoder
   (no gradient anyway). Implemented instead is its evident intent, "the RGB activation map is the
   sum of the static and dynamic maps": the QUERY encoder's RGB map ``a_v`` (with gradient)
   against the key encoder's ``a_s + a_d`` of the same clip (no gradient, a target), both
   divided by their mean over (T, H, W) so that the term is scale-free (raw channel sums of 512
   post-ReLU channels are in the hundreds and a raw MSE would dwarf the NCE terms), mean squared
   error, weight 0.1. On by default because the released loss has the term; ``map_regularizer=
   False`` drops it. With one branch off, the target is the remaining branch's map.
4. ``assert K % batch == 0`` fails for the README recipe (K 2048, batch 40): dropped, the shared
   pointer wraps (:class:`~methods.losses.MoCoQueue`).
5. ``SimCLR_View`` (missing) is not needed for pretraining. 6. Depth: see the backbone above; the
   harness chooses the backbone.

Other deviations, and why:

- Momentum and queues: the key-encoder EMA runs between steps (declared in
  :meth:`DCLR.momentum_pairs`, applied by the harness), the five queues share one pointer and
  are capped by the data set size, and the original's queue warm-up (backward without optimizer
  steps) is ``StepOutput.skip_optimizer``: docs/methods/dclr.md, "Momentum, queues and banks".
- Key clip: ONE shuffled key pass over ``k`` gives the keys and the maps that re-weight them, so
  each key is re-weighted with its own clip's maps. The released code (``moco/builder.py``
  lines 411-421) takes the maps from an unshuffled pass and hands them, unpermuted, to a permuted
  pass; ``official_key_maps=True`` reproduces that. With one key pass the original's reference
  queues ``rs``/``rd`` would copy the ``sv``/``dv`` queues, so neighbours are mined from those
  (docs/methods/dclr.md, "The key maps under the released shuffle").
- The key pass over the QUERY clip keeps all three views (the RGB map of it is unused) so that the
  key encoder's BatchNorm statistics are over the same mix of views as in the original.
- Activation-map normalisation divides by ``max(mean, 1e-6)`` (layer4 maps are post-ReLU, so the
  mean is >= 0; the floor only guards an all-zero map). Maps are computed in float32.
- Heads are initialised as ``view_resnet.py`` does (weights N(0, 0.01), zero biases); hidden width
  is the backbone's feature dimension (512 for R(2+1)D, as the original).
- Data: the original decodes at the native resolution (UCF101: 320x240) and crops from it; here
  frames are decoded at 128x171 (scaled by ``crop / 112``) before the same relative
  RandomResizedCrop. Greyscale comes BEFORE colour jitter, as in the original's kornia pipeline
  (``AugmentConfig.grey_before_jitter``; False gives the harness's usual jitter, then greyscale).
  The original draws the blur sigma ONCE per run
  (``MocoAugment_GPU`` builds its blur with one ``random.uniform(0.1, 2)``); here sigma is drawn
  per clip, as the augmentation was meant to be (SimCLR / MoCo v2); ``blur_sigma = (s, s)`` gives
  one sigma for the whole run (trained effect: results/deviations/).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.data.modalities import dynamic_view
from core.data.transforms import AugmentConfig
from core.distributed import all_gather, batch_shuffle, batch_unshuffle, is_distributed
from methods.base import (
    DataSpec,
    Method,
    MomentumPair,
    Recipe,
    StepOutput,
    TrainState,
    decode_size_for_crop,
    key_pass,
    momentum_copy,
    register_method,
)
from methods.losses import (
    MLPHead,
    MoCoQueue,
    capped_queue_size,
    fp32_matmul,
    moco_logits,
    multi_positive_nce,
)

__all__ = [
    "DCLRConfig",
    "DCLR",
    "activation_map",
    "normalize_map",
    "reweighted_pool",
    "reference_similarity",
    "neighbour_mask",
    "map_regularizer",
    "warmup_active",
]

MAP_EPS = 1e-6


@dataclass(frozen=True)
class DCLRConfig:
    """DCLR hyperparameters (README recipe / official-code defaults)."""

    embed_dim: int = 128
    queue_size: int = 16384  # capped by the data set size: 2048 for UCF101, 16384 for K400
    temperature: float = 0.07
    momentum: float = 0.999
    topk: int = 5  # neighbour positives mined per row
    static_branch: bool = True  # vs, sv terms and the static view
    dynamic_branch: bool = True  # vd, dv terms and the dynamic view
    reweight: bool = True  # activation-map re-weighting of the RGB map for the vs, vd heads
    neighbours: bool = True  # top-k neighbours as extra positives
    map_regularizer: bool = True  # RGB map ~ static map + dynamic map (the released term's intent)
    map_reg_weight: float = 0.1
    warmup_iterations: int = 256  # epoch-0 steps with backward but no optimizer step; 0 = off
    shuffle_bn: bool = True  # shuffle the key batch across ranks (ignored in one process or with sync_bn)
    frames: int = 16
    stride: int = 2
    crop: int = 112
    official_key_maps: bool = False  # True: the released key pass, its maps left behind by the batch shuffle
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # blur sigma ~ U(range) per clip; (s, s) = one sigma for the run, as released

    def __post_init__(self) -> None:
        if len(self.blur_sigma) != 2 or not 0 <= self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must be a range (lo, hi) with 0 <= lo <= hi, got {self.blur_sigma!r}")
        if not isinstance(self.official_key_maps, bool):
            raise ValueError(f"official_key_maps must be a bool, got {self.official_key_maps!r}")
        if self.official_key_maps and not (self.reweight and (self.static_branch or self.dynamic_branch)):
            raise ValueError("official_key_maps misplaces the re-weighting maps: it needs reweight=True and a static or dynamic branch")
        if self.temperature <= 0 or not 0 <= self.momentum <= 1:
            raise ValueError(f"need temperature > 0 and 0 <= momentum <= 1, got {self.temperature}, {self.momentum}")
        if self.topk < 1 or self.warmup_iterations < 0 or self.map_reg_weight < 0:
            raise ValueError(f"need topk >= 1, warmup_iterations >= 0, map_reg_weight >= 0, got {self}")


# --------------------------------------------------------------------------------------------
# Activation maps
# --------------------------------------------------------------------------------------------


def activation_map(features: torch.Tensor) -> torch.Tensor:
    """Channel sum of a feature map: (B, C, T, H, W) -> (B, 1, T, H, W), float32
    (``view_resnet.py``: ``torch.sum(x, dim=1, keepdim=True)``)."""
    if features.dim() != 5:
        raise ValueError(f"expected a (B, C, T, H, W) feature map, got {tuple(features.shape)}")
    return features.float().sum(dim=1, keepdim=True)


def normalize_map(a: torch.Tensor) -> torch.Tensor:
    """``a / mean(a)`` over (T, H, W) per sample, so the weights average 1 and re-weighting keeps
    the feature's scale (``view_resnet.py``: ``sc / sc.view(b, 98).mean(-1)``). The mean is
    floored at 1e-6 (an all-zero map stays zero instead of NaN)."""
    mean = a.mean(dim=(1, 2, 3, 4), keepdim=True)
    return a / mean.clamp_min(MAP_EPS)


def reweighted_pool(features: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Global average pool of ``features * weight`` (B, C, T, H, W) -> (B, C): the paper's
    feature-space decoupling. ``weight`` (B, 1, T, H, W) is a normalised activation map (no
    gradient flows into it); None is plain GAP."""
    if weight is None:
        return features.mean(dim=(2, 3, 4))
    return (features * weight.detach().to(features.dtype)).mean(dim=(2, 3, 4))


def map_regularizer(rgb_map: torch.Tensor, target_map: torch.Tensor) -> torch.Tensor:
    """``mean((normalize_map(rgb_map) - normalize_map(target_map))^2)``: the RGB activation map
    (with gradient) pulled toward the sum of the static and dynamic maps (a constant target).
    The evident intent of the released, non-broadcasting term (docs/methods/dclr.md)."""
    return F.mse_loss(normalize_map(rgb_map.float()), normalize_map(target_map.detach().float()))


# --------------------------------------------------------------------------------------------
# Neighbour positives
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def reference_similarity(reference: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
    """``softmax(reference . queue^T)`` over the K queue entries, WITHOUT a temperature, as the
    original's ``calculate_similarity``: (B, D), (K, D) -> (B, K) float32, the product with
    autocast off (the top-k neighbours are mined from it; a bf16 product reorders near ties)."""
    return F.softmax(fp32_matmul(reference.detach(), queue.detach().t()), dim=1)


@torch.no_grad()
def neighbour_mask(similarity: torch.Tensor | None, topk: int, batch: int | None = None, queue_size: int | None = None) -> torch.Tensor:
    """Positive mask (B, 1 + K) for MoCo logits: column 0 (the true key) plus, for each row, the
    ``topk`` queue entries of highest ``similarity`` (B, K), shifted by +1 because the logits put
    the positive first. ``similarity=None`` gives the single-positive mask (needs ``batch`` and
    ``queue_size``)."""
    if similarity is None:
        if batch is None or queue_size is None:
            raise ValueError("a single-positive mask needs batch and queue_size")
        mask = torch.zeros(batch, 1 + queue_size, dtype=torch.bool)
    else:
        b, k = similarity.shape
        mask = torch.zeros(b, 1 + k, dtype=torch.bool, device=similarity.device)
        top = similarity.topk(min(topk, k), dim=1).indices
        mask.scatter_(1, top + 1, True)
    mask[:, 0] = True
    return mask


def warmup_active(state: TrainState, iterations: int) -> bool:
    """True during the original's queue warm-up: epoch 0, the first ``iterations`` steps."""
    return state.epoch == 0 and state.step < iterations


# --------------------------------------------------------------------------------------------
# Method
# --------------------------------------------------------------------------------------------


def _blur_kernel(crop: int) -> int:
    """The original's blur kernel ``int(0.1 * crop) // 2 * 2 + 1`` (11 at 112 px)."""
    return int(0.1 * crop) // 2 * 2 + 1


def _init_head(head: nn.Module) -> nn.Module:
    """``view_resnet.py``'s init of its Linear layers: N(0, 0.01) weights, zero biases."""
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    return head


@register_method("dclr")
class DCLR(Method):
    """DCLR (Ding et al., ACM MM 2022): MoCo with RGB <-> static and RGB <-> dynamic contrast."""

    Config = DCLRConfig
    paper_backbone = "r2plus1d_10"
    recipe = Recipe(optimizer="sgd", lr=0.01, sgd_momentum=0.9, weight_decay=1e-4, schedule="multistep",
                    milestones=(120, 160), gamma=0.1, epochs=200, batch_size=40)

    def __init__(self, config: DCLRConfig, backbone: nn.Module, *, dataset_size: int):
        super().__init__(config, backbone, dataset_size=dataset_size)
        dim = backbone.feature_dim
        self.views = ("v",) + (("s",) if config.static_branch else ()) + (("d",) if config.dynamic_branch else ())
        self.head_names = self._head_names()
        self.heads = nn.ModuleDict({n: _init_head(MLPHead(dim, dim, config.embed_dim, normalize=True)) for n in self.head_names})
        self.key_backbone = momentum_copy(backbone)
        self.key_heads = momentum_copy(self.heads)
        self.queue = MoCoQueue(capped_queue_size(config.queue_size, dataset_size, videos_per_slot=4), {n: config.embed_dim for n in self.head_names})

    def _head_names(self) -> tuple[str, ...]:
        c = self.config
        return ("vv",) + (("vs", "sv") if c.static_branch else ()) + (("vd", "dv") if c.dynamic_branch else ())

    def effective_settings(self) -> dict[str, int]:
        """``queue_size``: the shared queue length, ``queue_size`` capped at the largest power of
        two <= N / 4 (2048 on UCF101); ``topk``: neighbours mined per row, at most the queue length."""
        return {"queue_size": self.queue.size, "topk": min(self.config.topk, self.queue.size)}

    def data_spec(self) -> DataSpec:
        c = self.config
        augment = AugmentConfig(size=(c.crop, c.crop), blur_kernel=_blur_kernel(c.crop), blur_sigma=tuple(c.blur_sigma),
                                grey_before_jitter=True)  # MocoAugment_GPU: RandomGrayscale, then ColorJitter
        return DataSpec(clips=4, frames=c.frames, stride=c.stride, sampler="with_static", shared_crop=False,
                        augment=augment, decode_size=decode_size_for_crop(c.crop))

    # ------------------------------------------------------------------ encoders

    def view_stack(self, rgb: torch.Tensor, clip: int) -> torch.Tensor:
        """(B, n_views, 3, T, H, W): [RGB, static, dynamic] of clip 0 (q) or 1 (k), for the views on.

        ``rgb`` is the batch's (B, 4, 3, T, H, W) = [q, k, static q, static k]."""
        x = rgb[:, clip]
        make = {"v": lambda: x, "s": lambda: rgb[:, clip + 2], "d": lambda: dynamic_view(x)}
        return torch.stack([make[v]() for v in self.views], dim=1)

    def _layer4(self, backbone: nn.Module, views: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fold the views into the batch, run ``backbone`` to layer4, unfold: {view: (B, C, t, h, w)}."""
        b, n = views.shape[:2]
        maps = backbone.forward_stages(views.flatten(0, 1), "layer4")["layer4"]
        maps = maps.unflatten(0, (b, n))
        return {v: maps[:, i] for i, v in enumerate(self.views)}

    def _weights(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
        """Normalised static/dynamic activation maps re-weighting the RGB map (None: plain GAP)."""
        if not self.config.reweight:
            return {"s": None, "d": None}
        return {v: normalize_map(activation_map(maps[v].detach())) if v in maps else None for v in ("s", "d")}

    def _embed(self, heads: nn.ModuleDict, maps: dict[str, torch.Tensor], weights: dict) -> dict[str, torch.Tensor]:
        """The five (or fewer) L2-normalised embeddings from the layer4 maps."""
        v = maps["v"]
        pooled = {"vv": reweighted_pool(v, None)}
        if "s" in maps:
            pooled |= {"vs": reweighted_pool(v, weights["s"]), "sv": reweighted_pool(maps["s"], None)}
        if "d" in maps:
            pooled |= {"vd": reweighted_pool(v, weights["d"]), "dv": reweighted_pool(maps["d"], None)}
        return {n: heads[n](pooled[n]) for n in self.head_names}

    @torch.no_grad()
    def query_key_pass(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        """Key-encoder pass over the query clip's views (no shuffle, no gradient): normalised maps
        ``w_s``/``w_d`` for re-weighting, raw maps ``a_s``/``a_d``, reference embeddings ``r_s``/``r_d``."""
        maps = self._layer4(self.key_backbone, views)
        out: dict[str, torch.Tensor] = {}
        for v, head in (("s", "sv"), ("d", "dv")):
            if v in maps:
                out[f"a_{v}"] = activation_map(maps[v])
                out[f"w_{v}"] = normalize_map(out[f"a_{v}"])
                out[f"r_{v}"] = self.key_heads[head](reweighted_pool(maps[v], None))
        return out

    def momentum_pairs(self) -> dict[str, list[MomentumPair]]:
        """The key encoder: backbone and the five heads, momentum copies of the query side."""
        return {"key": [MomentumPair(self.backbone, self.key_backbone), MomentumPair(self.heads, self.key_heads)]}

    def momentum(self, group: str, state: TrainState) -> float:
        """A constant ``m`` (0.999)."""
        return self.config.momentum

    @torch.no_grad()
    def keys(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        """Key embeddings of the key clip's views; the batch (all views of a video together) is
        shuffled across ranks around the key encoder (shuffle BN)."""
        if self.config.official_key_maps:
            return self._released_keys(views)
        return key_pass(self._key_embeddings, views, key_encoder=self.key_backbone, shuffle_bn=self.config.shuffle_bn)

    def _key_embeddings(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self._layer4(self.key_backbone, views)
        return self._embed(self.key_heads, maps, self._weights(maps))

    def _released_keys(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        """``official_key_maps=True``: the released key pass (``moco/builder.py::MoCo_View.forward_once``).

        The key clip's maps come from a pass over the unshuffled batch (line 411); the batch is then
        permuted (``_batch_shuffle_ddp``, line 420: always, also in one process and under SyncBN)
        and re-weighted with those maps in their UNshuffled order (line 421), so permuted row ``i``
        is weighted with local video ``i``'s maps; the embeddings are unpermuted (lines 422-426)."""
        weights = self._weights(self._layer4(self.key_backbone, views))
        if is_distributed():
            shuffled, undo = batch_shuffle(views)
        else:
            perm = torch.randperm(views.shape[0], device=views.device)
            shuffled, undo = views[perm], torch.argsort(perm)
        out = self._embed(self.key_heads, self._layer4(self.key_backbone, shuffled), weights)
        return {n: batch_unshuffle(e, undo) if is_distributed() else e[undo] for n, e in out.items()}

    # ------------------------------------------------------------------ loss

    def positive_masks(self, ref: dict[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
        """Positive masks per logit set: P_s for vs/sv, P_d for vd/dv, P_v (from sim_s + sim_d) for vv."""
        c, size = self.config, self.queue.size
        device = self.queue["vv"].device
        sims = {}
        if c.neighbours:
            for v, queue in (("s", "sv"), ("d", "dv")):
                if f"r_{v}" in ref:
                    sims[v] = reference_similarity(ref[f"r_{v}"], self.queue[queue])
        single = neighbour_mask(None, c.topk, batch, size).to(device)
        mask = {v: neighbour_mask(s, c.topk) for v, s in sims.items()}
        p_v = neighbour_mask(sum(sims.values()), c.topk) if sims else single
        return {"vv": p_v, "vs": mask.get("s", single), "sv": mask.get("s", single),
                "vd": mask.get("d", single), "dv": mask.get("d", single)}

    def training_step(self, batch: dict[str, torch.Tensor], state: TrainState) -> StepOutput:
        c = self.config
        rgb = batch["rgb"]  # (B, 4, 3, T, H, W): [q, k, static q, static k]
        q_views, k_views = self.view_stack(rgb, 0), self.view_stack(rgb, 1)
        needs_ref = len(self.views) > 1 and (c.reweight or c.neighbours or c.map_regularizer)
        ref = self.query_key_pass(q_views) if needs_ref else {}
        maps = self._layer4(self.backbone, q_views)
        weights = {v: ref.get(f"w_{v}") if c.reweight else None for v in ("s", "d")}
        q = self._embed(self.heads, maps, weights)
        k = self.keys(k_views)

        # logits: each head's query against the OTHER side's key; queue of that key's kind
        pairs = {"vv": "vv", "vs": "sv", "sv": "vs", "vd": "dv", "dv": "vd"}
        masks = self.positive_masks(ref, rgb.shape[0])
        parts: dict[str, torch.Tensor] = {}
        loss = rgb.new_zeros((), dtype=torch.float32)
        for name in self.head_names:
            logits, _ = moco_logits(q[name], k[pairs[name]], self.queue[pairs[name]], c.temperature)
            term = multi_positive_nce(logits, masks[name])
            loss = loss + term
            parts[f"dclr/{name}"] = term.detach()
            if name == "vv":
                parts["dclr/acc"] = (logits.detach().argmax(dim=1) == 0).float().mean()
        if c.map_regularizer and ref:
            target = sum(ref[f"a_{v}"] for v in ("s", "d") if f"a_{v}" in ref)
            reg = map_regularizer(activation_map(maps["v"]), target)
            loss = loss + c.map_reg_weight * reg
            parts["dclr/map_reg"] = reg.detach()

        self.queue.enqueue(**{n: all_gather(k[n].contiguous()) for n in self.head_names})
        return StepOutput(loss, parts, skip_optimizer=warmup_active(state, c.warmup_iterations))
