"""Direct effects of vsbench's deviations from the papers' official code (docs/methods/*.md).

Each subcommand measures one deviation on real videos: what the deviation changes (an input, a
key, a loss term), the vsbench way against the official way, with everything else held equal.
The figures are quoted in the "Deviations" tables of docs/methods/{iic,mlfo,dclr,mscl}.md.
Effects on trained numbers are not measured here: suite ablation rows do that
(benchmarks/suites/deviations.toml).

Data: the MotionShapes ``bench`` set of ``make bench`` (``--data``, default
data/motionshapes-bench; its train list of split 1, and its flow cache for the MSCL
subcommands), read only: no index, cache or file is written. Clips, models and augmentation use
the settings of benchmarks/suites/cpu.toml (``r3d_tiny``, 8 frames, 32-px crops of 32x32 frames,
MSCL at stride 4). Every random draw comes from ``--seed``, so a run prints the same figures
every time (on the same torch build).

Run ``.venv/bin/python benchmarks/deviations.py SUBCOMMAND --help`` for each subcommand's options.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backbones import create_backbone
from core.data.mds import choose_starts, clip_scores, differential_scores
from core.data.modalities import (
    dequantize_flow,
    dequantize_flow01,
    flow_frame_count,
    flow_to_color,
    load_flow_meta,
    normalize_flow_per_frame,
    read_flow,
)
from core.data.request import ClipSpec, stride_range
from core.data.sampling import clips_with_static, overview_clips
from core.data.transforms import (
    VideoAugment,
    _brightness_,
    _contrast_,
    _hue_,
    _saturation_,
    apply_crop,
    gaussian_blur,
    to_float_video,
)
from core.data.video import probe_video, read_frames
from methods.base import TrainState, create_method, get_method
from methods.dclr import activation_map

DEFAULT_DATA = "data/motionshapes-bench"
BACKBONE = "r3d_tiny"  # benchmarks/suites/cpu.toml
FRAMES, CROP, SIZE = 8, 32, (32, 32)  # cpu.toml: method_args frames / crop, decode_size
BATCH = 32  # cpu.toml: pretrain.batch_size
MSCL_STRIDE = 4  # cpu.toml: [overrides.mscl]


# --------------------------------------------------------------------------------------------
# Data (read only)
# --------------------------------------------------------------------------------------------


def train_videos(data: str, split: int = 1) -> list[Path]:
    """The videos of the train list of ``split``, in the list's order (UCF101 layout; no index is written)."""
    root = Path(data)
    lst = root / "ucfTrainTestlist" / f"trainlist{split:02d}.txt"
    if not lst.exists():
        raise SystemExit(f"{lst}: no such file; generate the data first (vsbench data synth --preset bench --out {data})")
    return [root / "UCF-101" / line.split()[0] for line in lst.read_text().splitlines() if line.strip()]


def pick(videos: list[Path], n: int, seed: int) -> list[Path]:
    """``n`` videos drawn without replacement (all of them when ``n`` <= 0 or >= their number)."""
    if n <= 0 or n >= len(videos):
        return list(videos)
    rng = np.random.default_rng(seed)
    return [videos[i] for i in rng.choice(len(videos), size=n, replace=False)]


def frame_count(path: Path) -> int:
    return probe_video(path).num_frames


def rgb_rows(path: Path, rows: np.ndarray) -> torch.Tensor:
    """uint8 (clips, T, H, W, 3) at the index rows (clips, T) of one video, decoded at SIZE."""
    frames = read_frames(path, rows.reshape(-1), size=SIZE)
    return torch.from_numpy(frames).reshape(*rows.shape, *frames.shape[1:])


def random_rows(n: int, frames: int, stride: int, clips: int, rng: np.random.Generator) -> np.ndarray:
    """``clips`` random windows of ``frames`` frames at ``stride`` inside a video of ``n`` frames."""
    span = (frames - 1) * stride + 1
    starts = rng.integers(0, max(1, n - span + 1), size=clips)
    return np.minimum(starts[:, None] + stride * np.arange(frames)[None, :], n - 1)


def flow_root(data: str) -> Path:
    root = Path(data) / "flow"
    load_flow_meta(root)  # refuses a folder that is not a flow cache, naming the command
    return root


def flow_clips(data: str, videos: list[Path], seed: int, stride: int = MSCL_STRIDE) -> torch.Tensor:
    """uint8 (B, T, H, W, 2) quantised flow: one random MSCL-like clip (FRAMES at ``stride``) per video."""
    root, rng = flow_root(data), np.random.default_rng(seed)
    out = []
    for path in videos:
        n = flow_frame_count(root, path.stem) + 1  # RGB frames
        rows = random_rows(n, FRAMES, stride, 1, rng)
        out.append(torch.from_numpy(read_flow(root, path.stem, rows[0])))
    return torch.stack(out)


def method_at_init(name: str, seed: int, dataset_size: int, **method_args):
    """A method as a cpu.toml run builds it (seeded, the method's paper initialisation), in train mode."""
    torch.manual_seed(seed)
    backbone = create_backbone(BACKBONE, init=get_method(name).backbone_init)
    return create_method(name, backbone, dataset_size=dataset_size, overrides={"frames": FRAMES, "crop": CROP, **method_args})


def method_augment(method) -> VideoAugment:
    """The method's own training augmentation (its DataSpec)."""
    return VideoAugment(method.data_spec().augment)


def geometry_only(cfg) -> VideoAugment:
    """The method's crop and flip with no colour, grey, blur or normalisation (values in [0, 1])."""
    return VideoAugment(dataclasses.replace(cfg, jitter_p=0.0, grey_p=0.0, blur_p=0.0, normalize=False))


def levels(x: torch.Tensor) -> float:
    """A mean absolute difference of [0, 1] images in 8-bit levels (0..255)."""
    return 255.0 * float(x)


# --------------------------------------------------------------------------------------------
# DCLR
# --------------------------------------------------------------------------------------------


def dclr_batch(data: str, videos: list[Path], seed: int, augment_seed: int, method) -> dict:
    """One DCLR batch as the harness builds it: [q, k, static q, static k] rows of the "with_static"
    sampler, each augmented by the method's pipeline."""
    spec, rng = method.data_spec(), np.random.default_rng(seed)
    clip_spec = ClipSpec(frames=spec.frames, stride=spec.stride, clips=4)
    rgb = torch.stack([rgb_rows(p, clips_with_static(frame_count(p), clip_spec, rng)) for p in videos])  # (B, 4, T, H, W, 3)
    aug, g = method_augment(method), torch.Generator().manual_seed(augment_seed)
    b, clips = rgb.shape[:2]
    return {"rgb": aug(rgb.flatten(0, 1), g).unflatten(0, (b, clips)), "index": torch.arange(b)}


def cmd_dclr_key_maps(args) -> None:
    videos = train_videos(args.data)
    n = len(videos)
    rows = {k: [] for k in ("cos_vs", "cos_vd", "cos_vs_moved", "cos_vd_moved", "moved", "sv_dv_diff", "loss_aligned",
                            "loss_official", "sv", "dv", "map_min", "reg", "reg_share")}
    for i in range(args.batches):
        batch_videos = pick(videos, args.batch, args.seed + i)
        aligned = method_at_init("dclr", args.seed, n)
        official = method_at_init("dclr", args.seed, n, official_key_maps=True)
        batch = dclr_batch(args.data, batch_videos, args.seed + i, args.seed + i, aligned)
        k_views = aligned.view_stack(batch["rgb"], 1)
        with torch.no_grad():
            torch.manual_seed(1000 + i)
            perm = torch.randperm(k_views.shape[0])  # the permutation _released_keys draws after this seed
            torch.manual_seed(1000 + i)
            k_off = official.keys(k_views)
            k_al = aligned.keys(k_views)
            moved = torch.argsort(perm) != torch.arange(k_views.shape[0])
            for name in ("vs", "vd"):
                cos = (k_off[name] * k_al[name]).sum(1)  # both L2-normalised
                rows[f"cos_{name}"].append(cos.mean().item())
                rows[f"cos_{name}_moved"].append(cos[moved].mean().item())
            rows["moved"].append(moved.float().mean().item())
            rows["sv_dv_diff"].append(max((k_off[n_] - k_al[n_]).abs().max().item() for n_ in ("sv", "dv")))
            ref = aligned.query_key_pass(aligned.view_stack(batch["rgb"], 0))
            maps = [ref["a_s"], ref["a_d"]]
            key_maps = aligned._layer4(aligned.key_backbone, k_views)
            maps += [activation_map(key_maps[v]) for v in ("s", "d")]
            rows["map_min"].append(min(m.mean(dim=(1, 2, 3, 4)).min().item() for m in maps))
        torch.manual_seed(2000 + i)
        out_al = aligned.training_step(batch, TrainState())
        torch.manual_seed(2000 + i)
        out_off = official.training_step(batch, TrainState())
        rows["loss_aligned"].append(out_al.loss.item())
        rows["loss_official"].append(out_off.loss.item())
        for name in ("sv", "dv"):
            rows[name].append(out_off.parts[f"dclr/{name}"].item() - out_al.parts[f"dclr/{name}"].item())
        reg = out_al.parts["dclr/map_reg"].item()
        rows["reg"].append(reg)
        rows["reg_share"].append(aligned.config.map_reg_weight * reg / out_al.loss.item())

    def mean(key):
        return float(np.mean(rows[key]))

    diffs = [o - a for o, a in zip(rows["loss_official"], rows["loss_aligned"])]
    print(f"DCLR key maps at initialisation: {args.batches} batches of {args.batch} bench videos, {BACKBONE}, "
          f"{FRAMES} frames, {CROP} px (seed {args.seed})")
    print(f"  videos whose key row the shuffle moved: {100 * mean('moved'):.1f} %")
    print(f"  mean cosine between official and vsbench keys: k_vs {mean('cos_vs'):.4f}, k_vd {mean('cos_vd'):.4f} "
          f"(moved videos only: k_vs {mean('cos_vs_moved'):.4f}, k_vd {mean('cos_vd_moved'):.4f})")
    print(f"  max abs difference of k_sv / k_dv (not re-weighted) between the two passes: {max(rows['sv_dv_diff']):.2e}")
    print(f"  loss, vsbench maps: {mean('loss_aligned'):.4f}; official maps: {mean('loss_official'):.4f}; "
          f"difference official - vsbench: mean {np.mean(diffs):+.4f}, per batch "
          + ", ".join(f"{d:+.4f}" for d in diffs))
    print(f"  of which the sv term {mean('sv'):+.4f} and the dv term {mean('dv'):+.4f} (nats, mean over batches)")
    print(f"  map regulariser (vsbench's reading of the released term): {mean('reg'):.4f}, "
          f"0.1 x it = {100 * mean('reg_share'):.2f} % of the loss")
    print(f"  smallest activation-map mean (the 1e-6 floor acts below it): {min(rows['map_min']):.3g}")


def augment_and_clips(args, method: str, *, clip_stride: int, **overrides) -> tuple:
    """The augmentation config of ``method`` at initialisation, one uint8 RGB clip of each picked
    train video at ``clip_stride`` (B, FRAMES, H, W, 3), and the seeded generator the commands draw from."""
    videos = pick(train_videos(args.data), args.videos, args.seed)
    cfg = method_at_init(method, args.seed, len(videos), **overrides).data_spec().augment
    rng = np.random.default_rng(args.seed)
    rgb = torch.stack([rgb_rows(p, random_rows(frame_count(p), FRAMES, clip_stride, 1, rng))[0] for p in videos])
    return cfg, rgb, torch.Generator().manual_seed(args.seed)


def cmd_dclr_blur_sigma(args) -> None:
    cfg, rgb, g = augment_and_clips(args, "dclr", clip_stride=2)
    clips = geometry_only(cfg)(rgb, g)  # DCLR's crop and flip, before the blur
    sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * torch.rand(clips.shape[0], generator=g, dtype=torch.float64)
    per_clip = gaussian_blur(clips, sigma, cfg.blur_kernel)
    print(f"DCLR blur sigma: {len(rgb)} bench clips, {FRAMES} frames, {CROP} px crop, kernel {cfg.blur_kernel} "
          f"(int(0.1 x {CROP}) // 2 * 2 + 1), sigma per clip ~ U{tuple(cfg.blur_sigma)} (seed {args.seed})")
    print(f"  blur per clip vs no blur: mean abs difference {levels((per_clip - clips).abs().mean()):.2f} levels of 255")
    for run_sigma in args.run_sigmas:
        one = gaussian_blur(clips, torch.full_like(sigma, run_sigma), cfg.blur_kernel)
        print(f"  one sigma {run_sigma:g} for the run vs sigma per clip: mean abs difference "
              f"{levels((one - per_clip).abs().mean()):.2f} levels of 255")


# --------------------------------------------------------------------------------------------
# MLFO
# --------------------------------------------------------------------------------------------


JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def jitter_frame(x: torch.Tensor, factors: list[float], order) -> torch.Tensor:
    """Jitter one frame (1, 3, 1, H, W) in place with the given factors, in ``order`` (op indices)."""
    for op in order:
        f = torch.tensor([factors[op]], dtype=torch.float64)
        if op == 0:
            _brightness_(x, f)
        elif op == 1:
            _contrast_(x, f)
        elif op == 2:
            _saturation_(x, f)
        else:
            _hue_(x, f, torch.ones(1, dtype=torch.bool))
    return x


def cmd_mlfo_jitter_order(args) -> None:
    cfg, rgb, g = augment_and_clips(args, "mlfo", clip_stride=1)
    # MLFO's crop, flip and channel-split grey (p 0.5 per frame), no jitter yet
    base = VideoAugment(dataclasses.replace(cfg, jitter_p=0.0, blur_p=0.0, normalize=False))(rgb, g)
    b, _, t = base.shape[:3]
    s = cfg.jitter  # (0.5, 0.5, 0.5, 0.25), p 1, factors per frame
    u = torch.rand(4, b, t, generator=g, dtype=torch.float64)
    factors = [max(0.0, 1 - x) + (1 + x - max(0.0, 1 - x)) * u[i] for i, x in enumerate(s[:3])] + [s[3] * (2 * u[3] - 1)]
    fixed, permuted = base.clone(), base.clone()
    identity = 0
    for i in range(b):
        for j in range(t):
            f = [float(factors[k][i, j]) for k in range(4)]
            order = [int(v) for v in torch.randperm(4, generator=g)]
            identity += order == [0, 1, 2, 3]
            for out, how in ((fixed, range(4)), (permuted, order)):
                out[i : i + 1, :, j : j + 1] = jitter_frame(out[i : i + 1, :, j : j + 1].clone(), f, how)
    diff = (fixed - permuted).abs()
    per_frame = diff.mean(dim=(1, 3, 4))  # (B, T)
    changed = per_frame > 0
    print(f"MLFO colour jitter order: {b} bench clips x {t} frames, {CROP} px, jitter {tuple(s)} with p 1 per frame, "
          f"after the channel-split grey p {cfg.grey_p} (seed {args.seed})")
    print(f"  frames whose random order is the fixed one: {identity} of {b * t}")
    print(f"  fixed order (brightness, contrast, saturation, hue) vs a random order per frame, same factors: "
          f"mean abs difference {levels(diff.mean()):.2f} levels of 255 over all pixels, "
          f"{levels(per_frame[changed].mean()):.2f} over the {int(changed.sum())} frames that change; "
          f"largest pixel difference {levels(diff.max()):.0f}")


def raw_contrast(local: torch.Tensor, global_: torch.Tensor, offset: int, temperature: float,
                 extra: torch.Tensor | None = None) -> torch.Tensor:
    """The official form of MLFO's contrast: ``-log(sum_pos e^s / (sum_pos e^s + sum_neg e^s))``, float32 exp."""
    b, n, d = local.shape
    s = torch.einsum("bnd,md->bnm", local.float(), global_.reshape(-1, d).float()) / temperature  # (B, n, N*n)
    own = torch.zeros(b, global_.shape[0], dtype=torch.bool)
    own[torch.arange(b), offset + torch.arange(b)] = True
    own = own.repeat_interleave(n, dim=1)[:, None, :].expand(b, n, -1)
    self_mask = torch.zeros_like(own)
    cols = offset * n + torch.arange(b)[:, None] * n + torch.arange(n)[None, :]  # (B, n): column of anchor (i, a)
    self_mask[torch.arange(b)[:, None], torch.arange(n)[None, :], cols] = True
    e = s.exp()
    pos = (e * (own & ~self_mask)).sum(2)
    neg = (e * ~own).sum(2)
    if extra is not None:
        neg = neg + (torch.einsum("bnd,bed->bne", local.float(), extra.float()) / temperature).exp().sum(2)
    return (-torch.log(pos / (pos + neg))).mean()


def cmd_mlfo_log_forms(args) -> None:
    from methods import mlfo as M

    videos = train_videos(args.data)
    batch_videos = pick(videos, args.batch, args.seed)
    method = method_at_init("mlfo", args.seed, len(videos))
    c = method.config
    rng = np.random.default_rng(args.seed)
    rgb = torch.stack([rgb_rows(p, overview_clips(frame_count(p), FRAMES, stride_range(method.data_spec().stride), rng)) for p in batch_videos])
    g = torch.Generator().manual_seed(args.seed)
    b, clips = rgb.shape[:2]
    x = method_augment(method)(rgb.flatten(0, 1), g).unflatten(0, (b, clips))
    with torch.no_grad():
        f = method.features(x, graph=True)
    report = []
    z = F.normalize(f["high"][:, :2].float(), dim=2)
    terms = {"high": (z, None)}
    for level in ("mid", "low"):
        zl = F.normalize(f[level][:, :2].float(), dim=2)
        terms[level] = (zl[:b], zl[b:])
    for name, (zz, extra) in terms.items():
        ours, _ = M.instance_contrast(zz, zz, 0, c.temperature, extra_negatives=extra)
        report.append((f"contrast {name}", ours.item(), raw_contrast(zz, zz, 0, c.temperature, extra).item()))
    logits = f["logits"].float()
    codes = M.swav_codes(logits, b, c.sinkhorn_eps, c.sinkhorn_iterations)
    ours = M.swapped_prediction(logits, codes, c.proto_temperature)
    p = torch.softmax(logits / c.proto_temperature, dim=2)
    raw = -0.5 * ((codes[:, 1] * torch.log(p[:, 0] + 1e-10)).sum(1) + (codes[:, 0] * torch.log(p[:, 1] + 1e-10)).sum(1)).mean()
    report.append(("prototype (swapped prediction)", ours.item(), raw.item()))
    p_min = {"prototype": p.min().item()}
    labels = (codes[:, 0] + codes[:, 1]).argmax(dim=1)
    target = M.graph_target(M.instance_graph(z, c.temperature), labels, c.graph_threshold)
    for level, w in zip(M.LEVELS, c.level_weights):
        gl = f[f"graph_{level}"][:, :2]
        ours = M.graph_loss(gl, gl, target, c.temperature, c.graph_mean_over_batch)
        a, bg = F.normalize(gl[:, 0].float(), dim=1), F.normalize(gl[:, 1].float(), dim=1)
        pg = torch.softmax(a @ bg.t() / c.temperature, dim=1)
        raw = -(torch.log(pg + 1e-10) * target).mean()
        report.append((f"graph {level}", ours.item(), raw.item()))
        p_min[f"graph {level}"] = pg.min().item()
    print(f"MLFO loss forms at initialisation: one batch of {b} bench videos [A, B, G], {BACKBONE}, {FRAMES} frames, "
          f"{CROP} px (seed {args.seed})")
    for name, ours, raw in report:
        print(f"  {name}: vsbench {ours:.6f}, official form {raw:.6f}, abs difference {abs(ours - raw):.2e}")
    print("  smallest softmax probability: " + ", ".join(f"{k} {v:.2e}" for k, v in p_min.items()))
    print(f"  largest abs difference over all terms: {max(abs(o - r) for _, o, r in report):.2e} (nats)")


def cmd_mlfo_short_videos(args) -> None:
    videos = train_videos(args.data)
    counts = np.array([frame_count(p) for p in videos])
    window = 2 * args.frames
    print(f"MLFO short videos: {len(videos)} train videos of split 1, {counts.min()}-{counts.max()} frames")
    print(f"  dropped by the original's rule (<= 32 frames): {int((counts <= 32).sum())} "
          f"({100 * (counts <= 32).mean():.1f} %)")
    print(f"  skipped by vsbench at {args.frames} frames (fewer than the {window}-frame window): "
          f"{int((counts < window).sum())} ({100 * (counts < window).mean():.1f} %)")


# --------------------------------------------------------------------------------------------
# MSCL
# --------------------------------------------------------------------------------------------


def mscl_crops(args):
    """(quantised flow (B, T, H, W, 2), MSCL's crop and flip for it) on bench clips at stride 4."""
    videos = pick(train_videos(args.data), args.videos, args.seed)
    method = method_at_init("mscl", args.seed, len(videos), stride=MSCL_STRIDE, mds=False)
    cfg = method.data_spec().augment
    flow = flow_clips(args.data, videos, args.seed)
    aug = VideoAugment(cfg, flow=True, negate_u_on_flip=False)
    crop = aug.sample_crop(flow, torch.Generator().manual_seed(args.seed))
    return flow, crop, cfg


def cmd_mscl_flow_norm(args) -> None:
    flow, crop, cfg = mscl_crops(args)
    size = cfg.size
    # vsbench: crop the quantised field, then dequantise and normalise each frame by the maximum inside the crop
    cropped = apply_crop(flow, crop, size, flow=True, negate_u_on_flip=False)
    u, v = normalize_flow_per_frame(dequantize_flow01(cropped[:, 0]), dequantize_flow01(cropped[:, 1]))
    # the original: dequantise and normalise the whole frame, then crop
    full = to_float_video(flow)
    fu, fv = normalize_flow_per_frame(dequantize_flow01(full[:, 0]), dequantize_flow01(full[:, 1]))
    moved = apply_crop(torch.stack([fu, fv], dim=1), crop, size, flow=False)
    ou, ov = moved[:, 0], moved[:, 1]
    diff = torch.maximum((u - ou).abs(), (v - ov).abs())  # (B, T, h, w)
    inside = torch.sqrt(dequantize_flow01(cropped[:, 0]) ** 2 + dequantize_flow01(cropped[:, 1]) ** 2).amax(dim=(-2, -1))
    whole = torch.sqrt(dequantize_flow01(full[:, 0]) ** 2 + dequantize_flow01(full[:, 1]) ** 2).amax(dim=(-2, -1))
    rescaled = (inside < 0.999 * whole)  # (B, T): the crop's maximum (after resampling) is below the frame's
    col = (flow_to_color(u, v) - flow_to_color(ou, ov)).abs()  # (B, T, 3, h, w) in [0, 1]
    b, t = diff.shape[:2]
    clip_changed = (diff.amax(dim=(1, 2, 3)) > 0.01)
    print(f"MSCL flow normalisation: {b} bench flow clips, {t} frames at stride {MSCL_STRIDE}, MSCL's crop "
          f"(area {cfg.scale[0]}-{cfg.scale[1]}) to {size[0]} px (seed {args.seed})")
    print(f"  frames whose normalising maximum changes (crop's, after resampling, below 99.9 % of the frame's): "
          f"{100 * rescaled.float().mean():.1f} %; clips with such a frame: {100 * rescaled.any(dim=1).float().mean():.1f} %")
    print(f"  normalised flow, max inside the crop vs over the whole frame: mean abs difference "
          f"{diff.mean():.4f} (units of the frame's largest vector), largest {diff.max():.3f}")
    print(f"  clips whose normalised flow changes by more than 0.01 somewhere: {100 * clip_changed.float().mean():.1f} %")
    print(f"  colour-coded flow input: mean abs difference {levels(col.mean()):.2f} levels of 255")


def cmd_mscl_deadzone(args) -> None:
    flow, crop, cfg = mscl_crops(args)
    codes = flow.long()
    print(f"MSCL dead zone: {flow.shape[0]} bench flow clips, {flow.shape[1]} frames at stride {MSCL_STRIDE} (seed {args.seed})")
    print(f"  cached u/v codes 127 or 128 (within half a step of zero motion, +-{dequantize_flow(torch.tensor(128)).item():.3f} px): "
          f"{100 * ((codes == 127) | (codes == 128)).float().mean():.1f} % of values")
    cropped = apply_crop(flow, crop, cfg.size, flow=True, negate_u_on_flip=False)
    with_dz = [dequantize_flow01(cropped[:, c]) for c in (0, 1)]
    without = [dequantize_flow01(cropped[:, c], deadzone=False) for c in (0, 1)]
    zeroed = [(w == 0) & (o != 0) for w, o in zip(with_dz, without)]
    both = zeroed[0] & zeroed[1]
    static = (with_dz[0] == 0).all(dim=(-2, -1)) & (with_dz[1] == 0).all(dim=(-2, -1))  # (B, T)
    print(f"  after MSCL's crop: u/v values set to zero: {100 * torch.stack(zeroed).float().mean():.1f} %; "
          f"pixels with both set to zero: {100 * both.float().mean():.1f} %; "
          f"frames left without any motion: {100 * static.float().mean():.1f} %")
    a = flow_to_color(*normalize_flow_per_frame(*with_dz))
    z = flow_to_color(*normalize_flow_per_frame(*without))
    col = (a - z).abs()
    frame_changed = col.amax(dim=(2, 3, 4)) > 0
    print(f"  colour-coded flow input with vs without the dead zone: mean abs difference {levels(col.mean()):.2f} "
          f"levels of 255; frames that change: {100 * frame_changed.float().mean():.1f} %; "
          f"in the motionless frames: {levels(col[static].mean()) if static.any() else 0.0:.1f} levels")


def cmd_mscl_mds_stride(args) -> None:
    videos = pick(train_videos(args.data), args.videos, args.seed)
    root = flow_root(args.data)
    bound = load_flow_meta(root)["bound"]
    jaccard, lost, gained, empty, total = [], 0, 0, 0, 0
    for path in videos:
        n = flow_frame_count(root, path.stem) + 1
        diffs = differential_scores(dequantize_flow(read_flow(root, path.stem, np.arange(n)), bound))
        at_train = set(choose_starts(clip_scores(diffs, FRAMES, args.stride)))
        at_half = set(choose_starts(clip_scores(diffs, FRAMES, args.stride // 2)))
        empty += not at_train
        union = at_train | at_half
        jaccard.append(len(at_train & at_half) / len(union) if union else 1.0)
        lost += len(at_train - at_half)
        gained += len(at_half - at_train)
        total += len(at_train)
    print(f"MSCL MDS screening stride: {len(videos)} bench train videos, {FRAMES}-frame clips (seed {args.seed})")
    print(f"  chosen starts scored at the training stride {args.stride} vs at half of it ({args.stride // 2}, the shipped "
          f"ratio 4/8 units): mean Jaccard overlap {np.mean(jaccard):.3f}; of the {total} starts chosen at the training "
          f"stride, {lost} ({100 * lost / max(1, total):.1f} %) are not chosen at half of it, which chooses {gained} others")
    print(f"  videos with no chosen start at the training stride (two random clips instead of two at frame 0): "
          f"{empty} of {len(videos)}")


def cmd_mscl_blur_kernel(args) -> None:
    cfg, rgb, g = augment_and_clips(args, "mscl", clip_stride=MSCL_STRIDE, stride=MSCL_STRIDE, mds=False)
    clips = geometry_only(cfg)(rgb, g)
    sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * torch.rand(clips.shape[0], generator=g, dtype=torch.float64)
    official = int(0.1 * CROP) // 2 * 2 + 1
    ours = gaussian_blur(clips, sigma, cfg.blur_kernel)
    theirs = gaussian_blur(clips, sigma, official)
    print(f"MSCL blur kernel: {len(rgb)} bench clips, {FRAMES} frames, {CROP} px crop, sigma ~ U{tuple(cfg.blur_sigma)} "
          f"(seed {args.seed})")
    print(f"  kernel at 112 px: vsbench {cfg.blur_kernel}, the original's int(0.1 x 112) // 2 * 2 + 1 = "
          f"{int(0.1 * 112) // 2 * 2 + 1}; at {CROP} px: vsbench {cfg.blur_kernel}, the original's {official}")
    print(f"  blurred clips, kernel {cfg.blur_kernel} vs {official}: mean abs difference "
          f"{levels((ours - theirs).abs().mean()):.2f} levels of 255 (blur itself: "
          f"{levels((ours - clips).abs().mean()):.2f})")


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

COMMANDS = {
    "dclr-key-maps": (cmd_dclr_key_maps, ("DCLR: key re-weighting maps of the released batch shuffle vs each clip's own "
                      "(official_key_maps): cosine between the keys k_vs / k_vd, loss difference at initialisation; "
                      "also the map regulariser's share of the loss and the smallest activation-map mean")),
    "dclr-blur-sigma": (cmd_dclr_blur_sigma, ("DCLR: blur with one sigma for the whole run (released) vs a sigma per "
                        "clip: mean absolute pixel difference")),
    "mlfo-jitter-order": (cmd_mlfo_jitter_order, ("MLFO: colour jitter in a fixed vs a random order with the same "
                          "factors: mean absolute pixel difference")),
    "mlfo-log-forms": (cmd_mlfo_log_forms, ("MLFO: logsumexp / log_softmax loss forms vs the official raw exp and "
                       "log(p + 1e-10): absolute difference of each loss term at initialisation")),
    "mlfo-short-videos": (cmd_mlfo_short_videos, ("MLFO: train videos dropped by the original's <= 32-frame rule vs "
                          "skipped by vsbench's window check")),
    "mscl-flow-norm": (cmd_mscl_flow_norm, ("MSCL: flow normalised by the maximum inside the crop (vsbench) vs over the "
                       "whole frame (original): difference of the normalised flow, share of clips that change")),
    "mscl-deadzone": (cmd_mscl_deadzone, ("MSCL: share of flow values zeroed within half a quantisation step, and "
                      "their effect on the colour-coded input")),
    "mscl-mds-stride": (cmd_mscl_mds_stride, ("MSCL: MDS chosen starts scored at the training stride vs at half of it "
                        "(the shipped ratio); videos with no chosen start")),
    "mscl-blur-kernel": (cmd_mscl_blur_kernel, ("MSCL: blur kernel 11 vs the original's int(0.1 crop) // 2 * 2 + 1: "
                         "mean absolute pixel difference")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/deviations.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name, (fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--data", default=DEFAULT_DATA, help=f"MotionShapes data set in UCF101 layout, read only (default {DEFAULT_DATA})")
        p.add_argument("--seed", type=int, default=0, help="seed of every draw (videos, clips, crops, models; default 0)")
        if name == "dclr-key-maps":
            p.add_argument("--batch", type=int, default=BATCH, help=f"videos per batch (default {BATCH}, cpu.toml's)")
            p.add_argument("--batches", type=int, default=4, help="independent batches, each with freshly initialised models (default 4)")
        elif name == "mlfo-log-forms":
            p.add_argument("--batch", type=int, default=BATCH, help=f"videos in the batch (default {BATCH}, cpu.toml's)")
        elif name == "mlfo-short-videos":
            p.add_argument("--frames", type=int, default=FRAMES, help=f"frames per clip, the window is twice that (default {FRAMES})")
        else:
            default = 0 if name == "mscl-mds-stride" else 128
            p.add_argument("--videos", type=int, default=default,
                           help=f"train videos drawn at random (0 = all; default {default or 'all'})")
        if name == "dclr-blur-sigma":
            p.add_argument("--run-sigmas", type=float, nargs="+", default=[0.1, 1.05, 2.0],
                           help="sigmas of a run-wide draw to compare (default 0.1 1.05 2.0: the range's ends and middle)")
        if name == "mscl-mds-stride":
            p.add_argument("--stride", type=int, default=MSCL_STRIDE, help=f"training stride in raw frames (default {MSCL_STRIDE}, cpu.toml's)")
        p.set_defaults(fn=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    args.fn(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
