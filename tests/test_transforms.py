"""Batched video augmentation (core.data.transforms), checked on small hand-built clips."""

from __future__ import annotations

import math

import pytest
import torch

from core.data.transforms import (
    AugmentConfig,
    CropParams,
    VideoAugment,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_crop,
    center_crop_video,
    color_jitter,
    gaussian_blur,
    grayscale,
    normalize,
    random_gaussian_blur,
    random_grayscale,
    sample_crop_params,
    to_float_video,
)

SMALL = AugmentConfig(size=(16, 16), jitter_p=1.0, grey_p=0.5, blur_p=1.0, blur_kernel=5)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def crop(x0, y0, w, h, flip) -> CropParams:
    """CropParams from Python lists."""
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return CropParams(f64(x0), f64(y0), f64(w), f64(h), torch.tensor(flip))


def coordinate_clip(H: int, W: int, C: int, B: int = 1, T: int = 2) -> torch.Tensor:
    """Float (B, C, T, H, W): channel 0 = relative x of the pixel centre, channel 1 = relative y."""
    x = torch.zeros(B, C, T, H, W)
    x[:, 0] = ((torch.arange(W) + 0.5) / W).view(1, 1, 1, W)
    x[:, 1] = ((torch.arange(H) + 0.5) / H).view(1, 1, H, 1)
    return x


def const_rgb(r: float, g: float, b: float, B: int = 1, T: int = 2, H: int = 4, W: int = 4) -> torch.Tensor:
    return torch.tensor([r, g, b]).view(1, 3, 1, 1, 1).expand(B, 3, T, H, W).clone()


# --------------------------------------------------------------------------- pipeline


def test_frames_of_a_clip_stay_consistent_while_clips_differ():
    frame = torch.randint(0, 256, (1, 1, 24, 32, 3), dtype=torch.uint8, generator=gen(1))
    x = frame.expand(8, 4, 24, 32, 3).contiguous()  # 8 identical clips of 4 identical frames
    out = VideoAugment(SMALL)(x, gen(0))
    assert out.shape == (8, 3, 4, 16, 16)
    for t in range(1, 4):
        torch.testing.assert_close(out[:, :, t], out[:, :, 0], atol=1e-6, rtol=0)
    differing = [(out[i] - out[0]).abs().max().item() > 1e-3 for i in range(1, 8)]
    assert sum(differing) >= 2  # identical inputs, so any difference comes from per-clip parameters


def test_output_shape_dtype_and_normalisation():
    x = torch.randint(0, 256, (2, 4, 128, 171, 3), dtype=torch.uint8, generator=gen(2))
    cfg = AugmentConfig(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    out = VideoAugment(cfg)(x, gen(3))
    raw = VideoAugment(AugmentConfig(normalize=False))(x, gen(3))
    assert out.shape == (2, 3, 4, 112, 112) and out.dtype == torch.float32 and out.is_contiguous()
    assert raw.min() >= 0 and raw.max() <= 1
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(out, (raw - mean) / std, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(normalize(torch.full((1, 2, 1, 1, 1), 0.7), (0.5, 0.2), (0.1, 0.5)),
                               torch.tensor([2.0, 1.0]).view(1, 2, 1, 1, 1))


def test_same_seed_reproduces_and_other_seed_differs():
    x = torch.randint(0, 256, (4, 3, 24, 32, 3), dtype=torch.uint8, generator=gen(4))
    aug = VideoAugment(SMALL)
    assert torch.equal(aug(x, gen(7)), aug(x, gen(7)))
    assert not torch.equal(aug(x, gen(7)), aug(x, gen(8)))


def test_to_float_video_layout_and_scale():
    x = torch.randint(0, 256, (2, 3, 4, 5, 3), dtype=torch.uint8, generator=gen(5))
    y = to_float_video(x)
    assert y.shape == (2, 3, 3, 4, 5) and y.is_contiguous() and y.dtype == torch.float32
    assert torch.equal(y, x.permute(0, 4, 1, 2, 3).float() / 255)


# --------------------------------------------------------------------------- geometry


def test_crop_left_half_flip_and_identity():
    ramp = torch.arange(8.0).view(1, 1, 1, 1, 8).expand(1, 1, 2, 4, 8).contiguous()  # x coordinate
    left = apply_crop(ramp, crop([0.0], [0.0], [0.5], [1.0], [False]), (4, 4))
    torch.testing.assert_close(left, ramp[..., :4], atol=1e-5, rtol=0)
    flipped = apply_crop(ramp, crop([0.0], [0.0], [0.5], [1.0], [True]), (4, 4))
    torch.testing.assert_close(flipped, ramp[..., :4].flip(-1), atol=1e-5, rtol=0)
    # resampled: output column j samples pixel coordinate (j + 0.5) / 2 - 0.5, clamped at the border
    up = apply_crop(ramp, crop([0.0], [0.0], [0.5], [1.0], [False]), (4, 8))
    expected = (torch.arange(8.0) / 2 - 0.25).clamp(0, 7)
    torch.testing.assert_close(up[0, 0, 0, 0], expected, atol=1e-5, rtol=0)
    img = torch.rand(3, 3, 2, 10, 14, generator=gen(6))
    torch.testing.assert_close(apply_crop(img, CropParams.full(3), (10, 14)), img, atol=1e-5, rtol=0)
    torch.testing.assert_close(apply_crop(img, CropParams.full(3, flip=True), (10, 14)), img.flip(-1),
                               atol=1e-5, rtol=0)


def test_crop_accepts_loader_uint8_layout():
    x = torch.randint(0, 256, (2, 3, 6, 8, 3), dtype=torch.uint8, generator=gen(9))
    out = apply_crop(x, CropParams.full(2), (6, 8))
    torch.testing.assert_close(out, to_float_video(x), atol=1e-5, rtol=0)


def test_flow_flip_negates_u_only():
    u, v = 0.5 + 0.3 / 2, 0.5 - 0.2 / 2  # displacement d stored as 0.5 + d / 2: u = +0.3, v = -0.2
    flow = torch.tensor([u, v]).view(1, 2, 1, 1, 1).expand(2, 2, 3, 8, 10).contiguous()
    params = crop([0.1, 0.1], [0.2, 0.2], [0.5, 0.5], [0.6, 0.6], [True, False])
    out = apply_crop(flow, params, (4, 4), flow=True)
    torch.testing.assert_close(out[0, 0], torch.full((3, 4, 4), 0.5 - 0.3 / 2))  # u = -0.3
    torch.testing.assert_close(out[1, 0], torch.full((3, 4, 4), u))  # not flipped: unchanged
    torch.testing.assert_close(out[:, 1], torch.full((2, 3, 4, 4), v))  # v never changes
    kept = apply_crop(flow, params, (4, 4), flow=True, negate_u_on_flip=False)  # MSCL colour-coded flow
    torch.testing.assert_close(kept[:, 0], torch.full((2, 3, 4, 4), u))
    q = torch.full((1, 2, 4, 4, 2), 166, dtype=torch.uint8)  # quantized: u = 166 / 255 -> 89 / 255
    out_q = apply_crop(q, CropParams.full(1, flip=True), (4, 4), flow=True)
    torch.testing.assert_close(out_q[:, 0], torch.full((1, 2, 4, 4), 89 / 255))


def test_shared_crop_maps_to_same_relative_region_on_rgb_and_flow():
    rgb, flow = coordinate_clip(64, 86, 3, B=3), coordinate_clip(32, 43, 2, B=3)
    params = crop([0.2, 0.05, 0.3], [0.25, 0.1, 0.3], [0.5, 0.8, 0.4], [0.4, 0.8, 0.5], [False, True, False])
    cfg = AugmentConfig(size=(16, 16), jitter_p=0, grey_p=0, blur_p=0, normalize=False)
    out_rgb = VideoAugment(cfg)(rgb, gen(0), crop=params)
    out_flow = VideoAugment(cfg, flow=True, negate_u_on_flip=False)(flow, gen(0), crop=params)
    torch.testing.assert_close(out_rgb[:, :2], out_flow, atol=1e-5, rtol=0)
    j = (torch.arange(16.0, dtype=torch.float64) + 0.5) / 16
    for b in range(3):
        rel = j.flip(0) if params.flip[b] else j
        xs, ys = out_flow[b, 0, 0, 0].double(), out_flow[b, 1, 0, :, 0].double()
        torch.testing.assert_close(xs, params.x0[b] + params.w[b] * rel, atol=1e-5, rtol=0)
        torch.testing.assert_close(ys, params.y0[b] + params.h[b] * j, atol=1e-5, rtol=0)


def test_sample_crop_params_follow_random_resized_crop():
    cfg = AugmentConfig(scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
    H, W = 128, 171
    p = sample_crop_params(4000, cfg, gen(10), (H, W))
    for t in (p.x0, p.y0, p.w, p.h):
        assert t.shape == (4000,)
    assert (p.x0 >= 0).all() and (p.y0 >= 0).all()
    assert (p.x0 + p.w <= 1 + 1e-9).all() and (p.y0 + p.h <= 1 + 1e-9).all()
    w_px, h_px = p.w * W, p.h * H
    torch.testing.assert_close(w_px, w_px.round())  # whole pixels, as torchvision
    area = p.w * p.h
    assert area.min() > 0.2 - 0.02 and area.max() <= 1.0
    aspect = w_px / h_px
    assert aspect.min() > 3 / 4 - 0.03 and aspect.max() < 4 / 3 + 0.03
    assert 0.45 < p.flip.double().mean() < 0.55
    assert p.w.unique().numel() > 50  # really random per clip


def test_sample_crop_params_fallback_is_central_at_clamped_ratio():
    cfg = AugmentConfig(scale=(2.0, 3.0), ratio=(3 / 4, 4 / 3), flip_p=0.0)  # never fits: always fallback
    p = sample_crop_params(5, cfg, gen(11), (100, 300))
    h_px, w_px = 100, round(100 * 4 / 3)
    torch.testing.assert_close(p.w * 300, torch.full((5,), float(w_px), dtype=torch.float64))
    torch.testing.assert_close(p.h, torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(p.x0 * 300, torch.full((5,), float((300 - w_px) // 2), dtype=torch.float64))
    assert not p.flip.any() and h_px == 100


# --------------------------------------------------------------------------- colour


def test_brightness_multiplies_and_clamps():
    x = const_rgb(0.25, 0.1, 0.4, B=2)
    out = adjust_brightness(x, torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(out[0], const_rgb(0.5, 0.2, 0.8)[0])
    torch.testing.assert_close(out[1], const_rgb(0.75, 0.3, 1.0)[0])


def test_grayscale_is_weighted_sum_on_all_channels():
    x = const_rgb(0.2, 0.4, 0.6, B=2)
    grey = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6
    torch.testing.assert_close(grayscale(x), torch.full((2, 1, 2, 4, 4), grey))
    torch.testing.assert_close(random_grayscale(x, gen(), p=1.0), torch.full((2, 3, 2, 4, 4), grey))
    assert torch.equal(random_grayscale(x, gen(), p=0.0), x)


def test_saturation_zero_gives_grey_and_one_is_identity():
    x = torch.rand(2, 3, 2, 4, 4, generator=gen(12))
    torch.testing.assert_close(adjust_saturation(x, torch.zeros(2)), grayscale(x).expand_as(x))
    assert torch.equal(adjust_saturation(x, torch.ones(2)), x)


def test_contrast_blends_with_the_mean_of_the_whole_clip():
    x = torch.zeros(1, 3, 2, 4, 4)
    x[:, :, 0], x[:, :, 1] = 0.2, 0.6  # two grey frames: clip mean 0.4, per-frame means differ
    torch.testing.assert_close(adjust_contrast(x, torch.zeros(1)), torch.full_like(x, 0.4))
    half = adjust_contrast(x, torch.tensor([0.5]))
    torch.testing.assert_close(half[:, :, 0], torch.full_like(half[:, :, 0], 0.3))
    torch.testing.assert_close(half[:, :, 1], torch.full_like(half[:, :, 1], 0.5))


def test_hue_shift_identity_and_rotation():
    x = torch.rand(3, 3, 2, 5, 5, generator=gen(13))
    torch.testing.assert_close(adjust_hue(x, torch.zeros(3)), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(adjust_hue(x, torch.ones(3)), x, atol=1e-6, rtol=0)  # cyclic
    red = const_rgb(1.0, 0.0, 0.0)
    torch.testing.assert_close(adjust_hue(red, torch.tensor([1 / 3])), const_rgb(0.0, 1.0, 0.0))
    torch.testing.assert_close(adjust_hue(red, torch.tensor([-1 / 3])), const_rgb(0.0, 0.0, 1.0))
    green = const_rgb(0.0, 1.0, 0.0)
    torch.testing.assert_close(adjust_hue(green, torch.tensor([1 / 3])), const_rgb(0.0, 0.0, 1.0))
    muted = const_rgb(0.8, 0.4, 0.2)  # hue 1/18 turn; shift by 1/2 -> complementary (0.2, 0.6, 0.8)
    torch.testing.assert_close(adjust_hue(muted, torch.tensor([0.5])), const_rgb(0.2, 0.6, 0.8))
    grey = const_rgb(0.3, 0.3, 0.3)
    torch.testing.assert_close(adjust_hue(grey, torch.tensor([0.25])), grey)


def test_color_jitter_probability_and_ranges():
    x = torch.rand(6, 3, 2, 4, 4, generator=gen(14))
    assert torch.equal(color_jitter(x, gen(), p=0.0), x)  # unselected clips are exactly unchanged
    half = torch.full((64, 3, 1, 2, 2), 0.5)
    out = color_jitter(half, gen(15), strength=(0.4, 0.0, 0.0, 0.0), p=1.0)
    factors = out[:, 0, 0, 0, 0] / 0.5
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6 and factors.std() > 0.1
    torch.testing.assert_close(out, factors.view(-1, 1, 1, 1, 1).expand_as(out) * 0.5)  # one factor per clip


# --------------------------------------------------------------------------- blur


def test_blur_keeps_constant_image_and_spreads_a_delta_as_a_gaussian():
    const = torch.full((2, 3, 2, 9, 9), 0.37)
    torch.testing.assert_close(gaussian_blur(const, torch.tensor([0.5, 2.0]), 5), const, atol=1e-6, rtol=0)
    delta = torch.zeros(1, 1, 1, 15, 15)
    delta[..., 7, 7] = 1.0
    sigma = 1.3
    out = gaussian_blur(delta, torch.tensor([sigma]), 7)[0, 0, 0]
    assert abs(out.sum().item() - 1.0) < 1e-5
    g = torch.tensor([math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(-3, 4)])
    g = g / g.sum()
    torch.testing.assert_close(out[4:11, 4:11], torch.outer(g, g), atol=1e-6, rtol=0)
    x = torch.rand(2, 3, 2, 9, 9, generator=gen(16))
    assert torch.equal(gaussian_blur(x, torch.zeros(2), 5), x)  # sigma 0: delta kernel
    assert torch.equal(random_gaussian_blur(x, gen(), p=0.0, kernel_size=5), x)


def test_random_blur_blurs_some_clips_and_leaves_the_others_exactly():
    x = torch.rand(8, 3, 2, 9, 9, generator=gen(25))
    out = random_gaussian_blur(x, gen(26), p=0.5, sigma=(1.0, 2.0), kernel_size=5)
    kept = [torch.equal(out[b], x[b]) for b in range(8)]
    assert 0 < sum(kept) < 8
    for b in range(8):  # blurred noise loses variance
        assert kept[b] or out[b].var() < 0.5 * x[b].var()


# --------------------------------------------------------------------------- evaluation path


def test_center_crop_video_is_a_deterministic_slice():
    x = torch.randint(0, 256, (2, 3, 10, 14, 3), dtype=torch.uint8, generator=gen(17))
    out = center_crop_video(x, (6, 8))
    assert torch.equal(out, center_crop_video(x, (6, 8)))
    assert torch.equal(out, to_float_video(x)[..., 2:8, 3:11])
    assert torch.equal(center_crop_video(to_float_video(x), (6, 8)), out)  # float input too
    normed = center_crop_video(x, (6, 8), normalize_output=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    torch.testing.assert_close(normed, (out - 0.5) / 0.25)
    aug = VideoAugment(AugmentConfig(size=(6, 8), normalize=False))
    assert torch.equal(aug.evaluate(x), out)


def test_center_crop_video_resizes_when_asked_or_needed():
    x = torch.randint(0, 256, (1, 2, 16, 20, 3), dtype=torch.uint8, generator=gen(18))
    assert center_crop_video(x, (8, 8), resize=8).shape == (1, 3, 2, 8, 8)  # short side 16 -> 8 (8 x 10)
    assert center_crop_video(x, (32, 32)).shape == (1, 3, 2, 32, 32)  # upscaled so the crop fits
    const = torch.full((1, 2, 16, 20, 3), 200, dtype=torch.uint8)
    resized = center_crop_video(const, (8, 8), resize=(8, 12))
    torch.testing.assert_close(resized, torch.full((1, 3, 2, 8, 8), 200 / 255))


# --------------------------------------------------------------------------- device


def _static_clips_on_cuda() -> torch.Tensor:
    """4 clips of 3 identical frames, uint8 on the GPU."""
    frame = torch.randint(0, 256, (1, 1, 24, 32, 3), dtype=torch.uint8, generator=gen(19))
    return frame.expand(4, 3, 24, 32, 3).contiguous().cuda()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pipeline_on_cuda_with_a_cpu_generator_gives_the_cpu_values():
    """The same draws (a CPU generator) give the CPU pipeline's output on the GPU, to 5e-3 absolute
    after normalisation (cuDNN may blur in TF32; values are x 1/std here)."""
    x = _static_clips_on_cuda()
    out = VideoAugment(SMALL)(x, gen(0))
    assert out.device.type == "cuda" and out.shape == (4, 3, 3, 16, 16)
    torch.testing.assert_close(out.cpu(), VideoAugment(SMALL)(x.cpu(), gen(0)), atol=5e-3, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pipeline_on_cuda_with_a_cuda_generator_keeps_the_shape_and_treats_every_frame_alike():
    # a CUDA generator draws other numbers than a CPU one: no CPU values to compare with
    out = VideoAugment(SMALL)(_static_clips_on_cuda(), torch.Generator(device="cuda").manual_seed(0))
    assert out.device.type == "cuda" and out.shape == (4, 3, 3, 16, 16)
    for t in (1, 2):  # the frames of a static clip stay identical: one draw per clip, applied to each frame
        torch.testing.assert_close(out[:, :, t], out[:, :, 0], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- API hygiene


def test_public_ops_leave_their_input_untouched():
    x = torch.rand(3, 3, 2, 9, 9, generator=gen(20))
    before = x.clone()
    f = torch.tensor([0.5, 1.5, 0.0])
    for out in (adjust_brightness(x, f), adjust_contrast(x, f), adjust_saturation(x, f), adjust_hue(x, f / 4),
                color_jitter(x, gen(), p=1.0), random_grayscale(x, gen(), p=1.0), normalize(x),
                random_gaussian_blur(x, gen(), p=1.0, kernel_size=5), gaussian_blur(x, 1.0, 5)):
        assert out.shape == x.shape
    assert torch.equal(x, before)


def test_pipeline_ignores_the_callers_autocast():
    x = torch.randint(0, 256, (2, 3, 24, 32, 3), dtype=torch.uint8, generator=gen(21))
    aug = VideoAugment(SMALL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = aug(x, gen(5))
    assert out.dtype == torch.float32
    assert torch.equal(out, aug(x, gen(5)))


def test_flow_pipeline_is_the_geometric_part_only():
    flow = torch.randint(0, 256, (3, 4, 20, 26, 2), dtype=torch.uint8, generator=gen(22))
    params = sample_crop_params(3, SMALL, gen(23), (20, 26))
    out = VideoAugment(SMALL, flow=True)(flow, gen(0), crop=params)
    assert out.shape == (3, 2, 4, 16, 16) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, apply_crop(flow, params, SMALL.size, flow=True))


def test_colour_ops_and_blur_match_torchvision_frame_by_frame():
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    x = torch.rand(2, 3, 2, 12, 14, generator=gen(24))
    frames = x.transpose(1, 2).reshape(4, 3, 12, 14)  # every frame of clip 0, then of clip 1

    def per_frame(fn, a, b):  # clip 0 with parameter a, clip 1 with b
        out = torch.cat([fn(frames[:2], a), fn(frames[2:], b)])
        return out.view(2, 2, 3, 12, 14).transpose(1, 2)

    torch.testing.assert_close(adjust_hue(x, torch.tensor([0.1, -0.45])),
                               per_frame(tvf.adjust_hue, 0.1, -0.45), atol=1e-5, rtol=0)
    torch.testing.assert_close(adjust_brightness(x, torch.tensor([0.7, 1.3])),
                               per_frame(tvf.adjust_brightness, 0.7, 1.3), atol=1e-6, rtol=0)
    # torchvision's grey weighs R by 0.2989 instead of 0.299
    torch.testing.assert_close(adjust_saturation(x, torch.tensor([0.3, 1.6])),
                               per_frame(tvf.adjust_saturation, 0.3, 1.6), atol=2e-4, rtol=0)
    torch.testing.assert_close(gaussian_blur(x, torch.tensor([0.6, 1.7]), 5),
                               per_frame(lambda f, s: tvf.gaussian_blur(f, [5, 5], [s, s]), 0.6, 1.7),
                               atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- per-frame variants


def _flat_clips(batch: int = 4, frames: int = 6) -> torch.Tensor:
    """Clips whose every frame is the same colourful image: any frame-to-frame change is the augmentation's."""
    g = gen(5)
    image = torch.rand(batch, 3, 1, 8, 8, generator=g) * 0.6 + 0.2
    return image.expand(-1, -1, frames, -1, -1).contiguous()


def _colour_only(**changes) -> VideoAugment:
    cfg = AugmentConfig(size=(8, 8), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=1.0, grey_p=0.0, blur_p=0.0,
                        normalize=False)
    return VideoAugment(cfg).with_config(**changes)


def test_per_clip_jitter_keeps_frames_identical_and_per_frame_jitter_does_not():
    x = _flat_clips()
    y = _colour_only()(x, gen(1), CropParams.full(4))
    assert torch.equal(y, y[:, :, :1].expand_as(y))
    z = _colour_only(jitter_per_frame=True)(x, gen(1), CropParams.full(4))
    assert (z[:, :, 1:] - z[:, :, :1]).abs().amax(dim=(1, 3, 4)).min() > 1e-3  # every frame differs from frame 0


def test_per_frame_jitter_with_one_factor_per_frame_equals_jittering_each_frame_alone():
    # brightness only: frame t of clip b is multiplied by its own factor
    x = _flat_clips(batch=2, frames=3) * 0.6  # <= 0.48: a factor <= 1.5 never clamps
    aug = _colour_only(jitter=(0.5, 0.0, 0.0, 0.0), jitter_per_frame=True)
    y = aug(x, gen(2), CropParams.full(2))
    ratio = (y / x).mean(dim=(1, 3, 4))  # (B, T): one brightness factor per frame
    for b in range(2):
        for t in range(3):
            assert torch.allclose(y[b, :, t], x[b, :, t] * ratio[b, t], atol=1e-5)
    assert len({round(float(r), 4) for r in ratio.flatten()}) == 6


def test_per_frame_contrast_blends_with_each_frames_own_mean():
    x = _flat_clips(batch=1, frames=2)
    x[:, :, 1] *= 0.5  # frame 1 darker: a per-frame mean differs from the clip mean
    from core.data.transforms import _contrast_

    factor = torch.tensor([[0.0, 0.0]], dtype=torch.float64)  # contrast 0: each frame becomes its own mean grey
    y = _contrast_(x.clone(), factor)
    for t in range(2):
        mean_grey = grayscale(x[:, :, t:t + 1].mean(dim=(3, 4), keepdim=True))
        assert torch.allclose(y[:, :, t:t + 1], mean_grey.expand_as(y[:, :, t:t + 1]), atol=1e-6)


def test_channel_grey_copies_one_input_channel_per_frame():
    x = _flat_clips(batch=3, frames=8)
    aug = _colour_only(jitter_p=0.0, grey_p=1.0, grey_mode="channel", grey_per_frame=True)
    y = aug(x, gen(3), CropParams.full(3))
    used = set()
    for b in range(3):
        for t in range(8):
            frame = y[b, :, t]
            assert torch.equal(frame[0], frame[1]) and torch.equal(frame[1], frame[2])
            matches = [c for c in range(3) if torch.equal(frame[0], x[b, c, t])]
            assert matches
            used.update(matches)
    assert used == {0, 1, 2}


def test_per_frame_grey_decision_greys_some_frames_of_a_clip_only():
    x = _flat_clips(batch=2, frames=16)
    y = _colour_only(jitter_p=0.0, grey_p=0.5, grey_per_frame=True)(x, gen(4), CropParams.full(2))
    grey = (y[:, 0] == y[:, 1]).all(dim=(2, 3)) & (y[:, 1] == y[:, 2]).all(dim=(2, 3))  # (B, T)
    assert grey.any(dim=1).all() and (~grey).any(dim=1).all()
    assert torch.equal(y[~grey.unsqueeze(1).expand(-1, 3, -1)], x[~grey.unsqueeze(1).expand(-1, 3, -1)])


def test_grey_mode_is_validated():
    with pytest.raises(ValueError, match="grey_mode must be one of"):
        AugmentConfig(grey_mode="average")


# --------------------------------------------------------------------------- order of grey and jitter, blur sigma sharing


def _grey_and_red_pixels(batch: int = 8) -> torch.Tensor:
    """(B, 3, 1, 1, 2): pixel 0 grey 0.5 (its output reveals the brightness factor), pixel 1 (0.9, 0.1, 0.1)."""
    x = torch.empty(batch, 3, 1, 1, 2)
    x[..., 0] = 0.5
    x[:, :, 0, 0, 1] = torch.tensor([0.9, 0.1, 0.1])
    return x


def test_grey_before_jitter_follows_each_order_by_hand():
    # Brightness-only jitter (factor f ~ U(0.5, 1.5)) and grey p 1, weights 0.299/0.587/0.114:
    #   grey first:   grey(0.9, 0.1, 0.1) = 0.2691 + 0.0587 + 0.0114 = 0.3392, then * f (never clamps)
    #   jitter first: (min(0.9 f, 1), 0.1 f, 0.1 f), then grey = 0.299 min(0.9 f, 1) + 0.0701 f
    # The two differ exactly where 0.9 f > 1, i.e. the red channel clamped before the grey.
    x = _grey_and_red_pixels()
    aug = _colour_only(size=(1, 2), jitter=(0.5, 0.0, 0.0, 0.0), grey_p=1.0)
    first = aug.with_config(grey_before_jitter=True)(x, gen(7), CropParams.full(8))
    last = aug(x, gen(7), CropParams.full(8))
    f = first[:, 0, 0, 0, 0].double() / 0.5
    torch.testing.assert_close(last[:, 0, 0, 0, 0].double() / 0.5, f)  # same draws whatever the order
    by_hand_first = 0.3392 * f
    by_hand_last = 0.299 * torch.clamp(0.9 * f, max=1.0) + 0.0701 * f
    for c in range(3):
        torch.testing.assert_close(first[:, c, 0, 0, 1].double(), by_hand_first, atol=1e-5, rtol=0)
        torch.testing.assert_close(last[:, c, 0, 0, 1].double(), by_hand_last, atol=1e-5, rtol=0)
    clamped = 0.9 * f > 1.0 + 1e-3
    assert 0 < clamped.sum() < 8  # the seed gives both cases
    assert ((by_hand_first - by_hand_last)[clamped] > 1e-3).all()


@pytest.mark.parametrize("grey_mode", ["luma", "channel"])
def test_jitter_after_grey_moves_the_grey_level_but_never_recolours(grey_mode):
    x = _flat_clips()
    aug = _colour_only(jitter=(0.4, 0.4, 0.4, 0.1), grey_p=1.0, grey_mode=grey_mode)
    first = aug.with_config(grey_before_jitter=True)(x, gen(8), CropParams.full(4))
    assert torch.equal(first[:, 0], first[:, 1]) and torch.equal(first[:, 1], first[:, 2])
    greyed = aug.with_config(jitter_p=0.0)(x, gen(8), CropParams.full(4))  # the grey frames before jitter
    assert (first - greyed).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-3  # brightness/contrast moved every clip
    assert (first - aug(x, gen(8), CropParams.full(4))).abs().amax() > 1e-3  # and the order matters


def _blur_sigmas(out: torch.Tensor) -> torch.Tensor:
    """Per-clip sigma of a blurred centred delta: the kernel ratio k(1) / k(0) = exp(-1 / (2 sigma^2))."""
    c = out.shape[-1] // 2
    ratio = out[:, 0, 0, c, c + 1].double() / out[:, 0, 0, c, c].double()
    return torch.sqrt(-0.5 / torch.log(ratio))


@pytest.mark.parametrize("generator_device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_blur_sigma_per_batch_shares_one_sigma_per_group_and_per_clip_does_not(generator_device):
    x = torch.zeros(6, 3, 1, 11, 11, device=generator_device)
    x[..., 5, 5] = 1.0
    aug = _colour_only(size=(11, 11), jitter_p=0.0, blur_p=1.0, blur_sigma=(0.5, 2.0), blur_kernel=5)
    g = lambda: torch.Generator(generator_device).manual_seed(9)  # noqa: E731
    per_clip = _blur_sigmas(aug(x, g(), CropParams.full(6)))
    per_batch = _blur_sigmas(aug.with_config(blur_sigma_per="batch")(x, g(), CropParams.full(6)))
    per_slot = _blur_sigmas(aug.with_config(blur_sigma_per="batch", blur_sigma_groups=2)(x, g(), CropParams.full(6)))
    assert ((per_clip >= 0.5 - 1e-4) & (per_clip <= 2.0 + 1e-4)).all()
    assert (per_clip[:, None] - per_clip[None, :]).abs().add(torch.eye(6, dtype=torch.float64)).min() > 1e-3
    # the same draws: "batch" uses the sigma drawn for clip 0 (group g: for clip g) everywhere
    torch.testing.assert_close(per_batch, per_clip[:1].expand(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_slot, per_clip[:2].repeat(3), atol=1e-4, rtol=0)


def test_blur_sigma_options_are_validated():
    with pytest.raises(ValueError, match=r"blur_sigma_per must be one of \('clip', 'batch'\), got 'video'"):
        AugmentConfig(blur_sigma_per="video")
    with pytest.raises(ValueError, match="blur_sigma_groups must be >= 1, got 0"):
        AugmentConfig(blur_sigma_groups=0)


def test_order_and_shared_sigma_resume_from_the_generator_state():
    x = torch.randint(0, 256, (4, 3, 12, 16, 3), dtype=torch.uint8, generator=gen(10))
    aug = VideoAugment(SMALL).with_config(grey_before_jitter=True, grey_mode="channel", grey_per_frame=True,
                                          jitter_per_frame=True, blur_sigma_per="batch", blur_sigma_groups=2)
    g = gen(11)
    aug(x, g)
    state = g.get_state()
    second = aug(x, g)
    resumed = torch.Generator().manual_seed(0)
    resumed.set_state(state)
    assert torch.equal(aug(x, resumed), second)
    assert not torch.equal(aug(x, gen(11)), second)
