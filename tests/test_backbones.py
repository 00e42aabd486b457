"""Backbones: the common interface, the registry, and the reference sizes and costs.

Big models are built once per module and run only on tiny clips; sizes and GMACs at 16x112x112
are measured on the "meta" device, which checks shapes and counts FLOPs without computing.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import video as tv_video
from torchvision.models.video.resnet import BasicBlock as TvBasicBlock
from torchvision.models.video.resnet import BasicStem, Conv3DSimple, VideoResNet

from backbones import (
    INIT_SCHEMES,
    POOLED,
    STAGE_NAMES,
    UnknownBackboneError,
    VideoBackbone,
    count_gmacs,
    create_backbone,
    describe_backbones,
    factorized_midplanes,
    list_backbones,
    register_backbone,
)
from backbones.checkpoint_formats import TORCHVISION
from backbones.checkpoints import map_state_dict

ALL = list_backbones()
SMALL = (2, 3, 8, 32, 32)  # (B, C, T, H, W): every backbone runs on it in well under a second
TINY = ("r3d_tiny", "r21d_tiny", "r2d_flow")

# torchvision's weight metadata (num_params includes the 400-way classifier; _ops is GMACs).
TV_R3D_18_PARAMS = 33_371_472
TV_R2PLUS1D_18_PARAMS = 31_505_325
TV_S3D_PARAMS = 8_320_048
FC_512_400 = 512 * 400 + 400


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two threads contend and stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    """model(name) -> that backbone in eval mode, built once per module (seeded)."""
    cache: dict[str, VideoBackbone] = {}

    def get(name: str) -> VideoBackbone:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = create_backbone(name).eval()
        return cache[name]

    return get


@pytest.fixture(scope="module")
def described() -> dict[str, dict]:
    """describe_backbones() at 16x112x112, once: name -> row."""
    return {row["name"]: row for row in describe_backbones()}


def meta(name: str, **kwargs) -> VideoBackbone:
    with torch.device("meta"):
        return create_backbone(name, **kwargs).eval()


def meta_clip(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def shapes(state_dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


# ------------------------------------------------------------------------------------------------
# Registry


def test_registry_has_the_reference_backbones():
    expected = {"r3d_18", "r3d_18_mlfo", "r2plus1d_18", "r3d_vcop", "r21d_vcop", "r2plus1d_10", "c3d", "s3d"}
    assert expected | set(TINY) <= set(ALL)
    assert ALL == sorted(ALL)


def test_unknown_name_lists_the_registered_names():
    with pytest.raises(KeyError) as info:
        create_backbone("r3d_1000")
    message = str(info.value)
    assert "r3d_1000" in message
    assert all(name in message for name in ALL)
    assert isinstance(info.value, ValueError) and isinstance(info.value, UnknownBackboneError)


def test_register_rejects_a_second_factory_under_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("r3d_tiny")(lambda in_channels=3: None)


def test_unknown_factory_kwarg_is_an_error():
    with pytest.raises(TypeError):
        create_backbone("r3d_tiny", widht=3)


# ------------------------------------------------------------------------------------------------
# The interface, on every backbone


@pytest.mark.parametrize("name", ALL)
def test_forward_and_stages(name, model):
    net = model(name)
    assert net.stage_names == STAGE_NAMES
    assert set(net.stage_channels) == set(STAGE_NAMES)
    assert net.feature_dim == net.stage_channels["layer4"]

    x = torch.randn(*SMALL)
    with torch.no_grad():
        pooled = net(x)
        maps = net.forward_stages(x, STAGE_NAMES)
    assert pooled.shape == (2, net.feature_dim) and pooled.dtype == torch.float32
    assert torch.isfinite(pooled).all()

    assert list(maps) == [*STAGE_NAMES, POOLED]
    for stage in STAGE_NAMES:
        assert maps[stage].ndim == 5
        assert maps[stage].shape[:2] == (2, net.stage_channels[stage]), stage
    sizes = [maps[s].shape[2:] for s in STAGE_NAMES]
    for earlier, later in zip(sizes, sizes[1:]):
        assert all(b <= a for a, b in zip(earlier, later)), sizes  # T, H, W never grow
    assert sizes[-1][1] < sizes[0][1] and sizes[-1][2] < sizes[0][2]  # ... and space shrinks

    torch.testing.assert_close(maps[POOLED], maps["layer4"].mean(dim=(2, 3, 4)))
    torch.testing.assert_close(maps[POOLED], pooled)
    with torch.no_grad():  # a returned map is not modified in place by the stages after it
        early = net.forward_stages(x, STAGE_NAMES[:-1])
    for stage in STAGE_NAMES[:-1]:
        torch.testing.assert_close(maps[stage], early[stage], rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_channels_last_3d_gives_the_same_output(name, model):
    net = model(name)
    x = torch.randn(*SMALL)
    with torch.no_grad():
        expected = net(x)
        fast = copy.deepcopy(net).to(memory_format=torch.channels_last_3d)
        got = fast(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("name", ALL)
def test_in_channels_2_and_any_clip_size(name):
    """Shapes only, on the meta device: flow-like 2-channel input at several clip sizes."""
    net = meta(name, in_channels=2)
    first_conv = next(m for m in net.modules() if isinstance(m, nn.Conv3d))
    assert first_conv.in_channels == 2
    for size in ((8, 64, 64), (16, 112, 112), (32, 128, 128)):
        with torch.no_grad():
            out = net(meta_clip(3, 2, *size))
        assert out.shape == (3, net.feature_dim), size


@pytest.mark.parametrize("name", ALL)
def test_init_is_kaiming_fan_out_and_unit_bn(name, model):
    for m in model(name).modules():
        if isinstance(m, nn.BatchNorm3d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        elif isinstance(m, nn.Conv3d):
            assert m.bias is None or torch.all(m.bias == 0)
            if m.weight.numel() >= 4096:  # enough samples for the standard deviation
                fan_out = m.weight.shape[0] * m.weight[0, 0].numel()
                assert m.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)


# ------------------------------------------------------------------------------------------------
# Initialisation schemes


def seeded(name: str, init: str, seed: int = 0, **kwargs) -> VideoBackbone:
    torch.manual_seed(seed)
    return create_backbone(name, init=init, **kwargs)


def big_convs(net: nn.Module) -> list[nn.Conv3d]:
    """The Conv3d layers with enough weights for a standard deviation to within a few percent."""
    return [m for m in net.modules() if isinstance(m, nn.Conv3d) and m.weight.numel() >= 4096]


@pytest.fixture(scope="module")
def iic_r3d() -> dict[str, VideoBackbone]:
    """IIC's R3D-10 under each scheme, seed 0: scheme -> backbone."""
    return {scheme: seeded("r3d_vcop", scheme) for scheme in INIT_SCHEMES}


def test_pytorch_default_init_follows_pytorchs_rule(iic_r3d):
    """PyTorch's Conv3d default: kaiming_uniform(a=sqrt(5)) = U(-b, b) with b = 1/sqrt(fan_in),
    so std = b/sqrt(3); fan_in = in_ch*kT*kH*kW. Kaiming fan_out instead has std sqrt(2/fan_out)."""
    convs = big_convs(iic_r3d["pytorch_default"])
    assert len(convs) == 12  # stem, 4 blocks x 2 convs, 3 projection shortcuts
    for conv in convs:
        out_ch, in_ch, kt, kh, kw = conv.weight.shape
        bound = 1 / (in_ch * kt * kh * kw) ** 0.5
        default_std = bound / 3**0.5
        kaiming_std = (2 / (out_ch * kt * kh * kw)) ** 0.5
        assert default_std != pytest.approx(kaiming_std, rel=0.2)  # the two rules are told apart
        assert conv.weight.std().item() == pytest.approx(default_std, rel=0.05)
        assert conv.weight.abs().max().item() <= bound  # uniform, not normal
    for conv in big_convs(iic_r3d["kaiming_fan_out"]):
        out_ch, _, kt, kh, kw = conv.weight.shape
        assert conv.weight.std().item() == pytest.approx((2 / (out_ch * kt * kh * kw)) ** 0.5, rel=0.05)


@pytest.mark.parametrize("init", INIT_SCHEMES)
def test_batchnorm_starts_at_one_and_zero(iic_r3d, init):
    bns = [m for m in iic_r3d[init].modules() if isinstance(m, nn.BatchNorm3d)]
    assert len(bns) == 12
    for bn in bns:
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
        assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1)


def test_pytorch_default_conv_biases_are_uniform():
    """C3D's convs have biases: PyTorch draws them from U(-b, b), b = 1/sqrt(fan_in), where the
    kaiming scheme zeroes them (checked for every backbone above)."""
    for conv in (m for m in seeded("c3d", "pytorch_default").modules() if isinstance(m, nn.Conv3d)):
        _, in_ch, kt, kh, kw = conv.weight.shape
        bound = 1 / (in_ch * kt * kh * kw) ** 0.5
        assert conv.bias.abs().max().item() <= bound
        assert conv.bias.std().item() > bound / 3**0.5 / 2  # spread over the interval, not zero


@pytest.mark.parametrize("init", INIT_SCHEMES)
def test_building_is_deterministic_for_a_seed(init):
    first, again, other = (seeded("r21d_tiny", init, seed).state_dict() for seed in (0, 0, 1))
    for key, value in first.items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=0, msg=key)
    assert any(not torch.equal(other[k], v) for k, v in first.items() if v.is_floating_point())


def test_schemes_give_different_weights_from_the_same_seed():
    a, b = (seeded("r3d_tiny", init).state_dict() for init in INIT_SCHEMES)
    assert not torch.equal(a["stem.0.weight"], b["stem.0.weight"])


def test_zero_init_residual_holds_under_pytorch_default():
    net = seeded("r3d_tiny", "pytorch_default", zero_init_residual=True)
    last_bns = [m.conv2[1] for m in net.modules() if hasattr(m, "conv2") and hasattr(m, "downsample")]
    assert len(last_bns) == 4 and all(torch.all(bn.weight == 0) for bn in last_bns)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("init", INIT_SCHEMES)
def test_every_scheme_builds_on_meta(name, init):
    with torch.device("meta"):
        net = create_backbone(name, init=init)
    assert all(p.is_meta for p in net.parameters())
    assert net(meta_clip(1, 3, 8, 64, 64)).shape == (1, net.feature_dim)


def test_unknown_init_scheme_lists_the_valid_ones():
    for device in ("cpu", "meta"):
        with torch.device(device), pytest.raises(KeyError) as info:
            create_backbone("r3d_tiny", init="xavier")
        message = str(info.value)
        assert "xavier" in message and all(scheme in message for scheme in INIT_SCHEMES)
        assert isinstance(info.value, ValueError)


# ------------------------------------------------------------------------------------------------
# forward_stages details


def test_forward_stages_computes_only_what_is_asked(model):
    net = model("r3d_tiny")
    calls: list[str] = []
    hooks = [getattr(net, s).register_forward_hook(lambda m, i, o, s=s: calls.append(s)) for s in STAGE_NAMES]
    x = torch.randn(*SMALL)
    try:
        with torch.no_grad():
            out = net.forward_stages(x, ("layer1", "stem"))
            assert list(out) == ["stem", "layer1"] and calls == ["stem", "layer1"]
            calls.clear()
            out = net.forward_stages(x, "layer2")
            assert list(out) == ["layer2"] and calls == ["stem", "layer1", "layer2"]
            calls.clear()
            out = net.forward_stages(x)  # default: layer4 (the conv5 map) and the pooled feature
            assert list(out) == ["layer4", POOLED] and calls == list(STAGE_NAMES)
            out = net.forward_stages(x, (POOLED,))
            assert list(out) == [POOLED]
    finally:
        for hook in hooks:
            hook.remove()
    with pytest.raises(ValueError, match="conv5"):
        net.forward_stages(x, ("conv5",))
    with pytest.raises(ValueError):
        net.forward_stages(x, ())


@pytest.mark.parametrize("name", TINY)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    net = create_backbone(name).train()
    out = net(torch.randn(*SMALL))
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_channels_last_3d_gives_the_same_gradients():
    torch.manual_seed(0)
    net = create_backbone("r3d_tiny").train()
    fast = copy.deepcopy(net).to(memory_format=torch.channels_last_3d)
    x = torch.randn(*SMALL)
    w = torch.randn(2, net.feature_dim)
    (net(x) * w).sum().backward()
    (fast(x.contiguous(memory_format=torch.channels_last_3d)) * w).sum().backward()
    for (pname, a), b in zip(net.named_parameters(), fast.parameters()):
        scale = float(a.grad.abs().max())  # summation order differs between layouts
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5 * scale, msg=pname)


def test_real_clips_of_other_sizes_and_flow_channels(model):
    net = model("r3d_tiny")
    with torch.no_grad():
        for size in ((8, 64, 64), (16, 112, 112), (4, 20, 28)):
            assert net(torch.randn(1, 3, *size)).shape == (1, 128)
        flow = create_backbone("r3d_tiny", in_channels=2).eval()
        assert flow(torch.randn(2, 2, 8, 32, 32)).shape == (2, 128)


@pytest.mark.parametrize("pixels", [112, 64])
def test_s3d_runs_at_112_and_64_px(model, pixels):
    """torchvision's S3D needs 224 px (its AvgPool3d(2, 7, 7)); ours pools adaptively."""
    with torch.no_grad():
        maps = model("s3d").forward_stages(torch.randn(1, 3, 8, pixels, pixels))
    assert maps[POOLED].shape == (1, 1024)
    assert maps["layer4"].shape[1:] == (1024, 1, pixels // 32, pixels // 32)


def test_zero_init_residual_starts_blocks_at_identity():
    net = create_backbone("r3d_tiny", zero_init_residual=True)
    last_bns = [m.conv2[1] for m in net.modules() if hasattr(m, "conv2") and hasattr(m, "downsample")]
    assert len(last_bns) == 4 and all(torch.all(bn.weight == 0) for bn in last_bns)


# ------------------------------------------------------------------------------------------------
# Reference layouts: sizes and costs at 16x112x112


def test_describe_backbones_rows(described):
    assert list(described) == ALL
    for row in described.values():
        assert set(row) == {"name", "params", "gmacs", "feature_dim", "layer4_shape"}
        assert isinstance(row["params"], int) and row["gmacs"] > 0
        assert row["layer4_shape"][0] == row["feature_dim"]


def test_torchvision_resnets_exactly(described):
    """Same parameters as torchvision's models without their fc, and the same GMACs (_ops)."""
    assert described["r3d_18"]["params"] == TV_R3D_18_PARAMS - FC_512_400 == 33_166_272
    assert described["r2plus1d_18"]["params"] == TV_R2PLUS1D_18_PARAMS - FC_512_400 == 31_300_125
    assert described["r3d_18"]["gmacs"] == pytest.approx(40.70, rel=0.02)
    assert described["r2plus1d_18"]["gmacs"] == pytest.approx(40.52, rel=0.02)
    assert described["r3d_18"]["layer4_shape"] == (512, 2, 7, 7)
    assert described["r2plus1d_18"]["layer4_shape"] == (512, 2, 7, 7)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("r3d_18", lambda: tv_video.r3d_18()),
        ("r2plus1d_18", lambda: tv_video.r2plus1d_18()),
        ("mc3_18", lambda: tv_video.mc3_18()),
        # VCOP/IIC's R3DNet((1,1,1,1)) has torchvision's stem, blocks and 1x1x1 shortcuts
        ("r3d_vcop", lambda: VideoResNet(TvBasicBlock, [Conv3DSimple] * 4, [1, 1, 1, 1], BasicStem)),
    ],
)
def test_torchvision_state_dicts_fit(ours, theirs):
    """torchvision's weights (minus fc) would load as they are: same keys, same shapes."""
    with torch.device("meta"):
        reference = {k: v for k, v in theirs().state_dict().items() if not k.startswith("fc.")}
    assert shapes(meta(ours).state_dict()) == shapes(reference)


def test_s3d_matches_torchvision(described):
    with torch.device("meta"):
        reference = tv_video.s3d()
    renamed, dropped, _ = map_state_dict(reference.state_dict(), TORCHVISION, "s3d")
    assert shapes(meta("s3d").state_dict()) == shapes(renamed) and {k.split(".")[0] for k in dropped} == {"classifier"}
    assert described["s3d"]["params"] == TV_S3D_PARAMS - (1024 * 400 + 400) == 7_910_048
    # torchvision's own cost at its native 224 px (_ops = 17.979); ours drops only the classifier
    assert count_gmacs(meta("s3d"), (16, 224, 224)) == pytest.approx(17.98, rel=0.01)
    assert described["s3d"]["layer4_shape"] == (1024, 2, 3, 3)


def iic_r21d_params(widths=(64, 128, 256, 512), in_channels=3) -> int:
    """Parameters of BestJuly/IIC ``R2Plus1DNet((1,1,1,1))``, counted from its definition."""

    def factorised(cin, cout, kt, k):  # spatial conv, BN(M), temporal conv (no biases)
        mid = (kt * k * k * cin * cout) // (k * k * cin + kt * cout)
        return cin * mid * k * k + 2 * mid + mid * cout * kt

    total = factorised(in_channels, widths[0], 3, 7) + 2 * widths[0]  # conv1 + bn1
    cin = widths[0]
    for cout in widths:
        total += factorised(cin, cout, 3, 3) + 2 * cout + factorised(cout, cout, 3, 3) + 2 * cout
        if cin != cout:  # downsampleconv (factorised 1x1x1) + downsamplebn
            total += factorised(cin, cout, 1, 1) + 2 * cout
        cin = cout
    return total


def test_vcop_iic_layouts(described):
    # R3D-10: exact count of R3DNet((1,1,1,1)); "14.6M" quoted elsewhere includes a 400-way fc
    assert described["r3d_vcop"]["params"] == 14_361_792
    assert described["r3d_vcop"]["params"] + FC_512_400 == pytest.approx(14.6e6, rel=0.02)
    assert described["r3d_vcop"]["gmacs"] == pytest.approx(19.9, rel=0.02)
    # R(2+1)D with per-conv M (IIC models/r21d.py): as large as the R3D it factorises
    assert factorized_midplanes(3, 64, (3, 7, 7)) == 83
    assert described["r21d_vcop"]["params"] == iic_r21d_params() == 14_365_303
    assert described["r21d_vcop"]["gmacs"] == pytest.approx(21.36, rel=0.02)
    # torchvision's block rule with one block per stage (DCLR): the 12.5-12.8M, 19.7 GMACs network
    assert described["r2plus1d_10"]["params"] == 12_487_005
    assert described["r2plus1d_10"]["gmacs"] == pytest.approx(19.7, rel=0.02)
    # C3D-BN (IIC models/c3d.py), convs with biases
    assert described["c3d"]["params"] == pytest.approx(27.7e6, rel=0.02)
    assert described["c3d"]["params"] == 27_661_440
    assert described["c3d"]["gmacs"] == pytest.approx(38.5, rel=0.02)


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def mlfo_r3d18_by_hand(in_channels: int = 3, clip=(16, 112, 112)):
    """(params, forward MACs, {stage: (C, T, H, W)}) of MLFO's ``generate_model(18)`` without its
    fc and motion-excitation heads, counted from its layer definitions in ``r3d.py``:

    conv1 Conv3d(in, 64, k=7, s=(1,2,2), p=3, no bias) + bn1; MaxPool3d(k=(1,3,3), s=(1,2,2),
    p=(0,1,1)); layer1..4 of two BasicBlocks (3x3x3 conv + BN, twice), widths 64/128/256/512,
    stride 2 in T, H and W in the first block of layer2..4, whose 1x1x1 conv + BN shortcut
    ("B") also strides 2. MACs = weights of a conv x its output positions.
    """
    t, h, w = clip
    # conv1: 3*64*7*7*7 weights; stride 1 in time, 2 in space, padding 3 everywhere
    t, h, w = conv_out(t, 7, 1, 3), conv_out(h, 7, 2, 3), conv_out(w, 7, 2, 3)
    params = in_channels * 64 * 7 * 7 * 7 + 2 * 64
    macs = in_channels * 64 * 7 * 7 * 7 * t * h * w
    # max-pool 1x3x3, stride 1x2x2, padding 0x1x1: no weights
    t, h, w = conv_out(t, 1, 1, 0), conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
    shapes = {"stem": (64, t, h, w)}

    cin = 64
    for stage, cout in zip(("layer1", "layer2", "layer3", "layer4"), (64, 128, 256, 512)):
        stride = 1 if stage == "layer1" else 2
        for block in range(2):
            s = stride if block == 0 else 1
            t, h, w = conv_out(t, 3, s, 1), conv_out(h, 3, s, 1), conv_out(w, 3, s, 1)
            positions = t * h * w
            params += cin * cout * 27 + 2 * cout + cout * cout * 27 + 2 * cout  # conv1+bn1, conv2+bn2
            macs += (cin * cout * 27 + cout * cout * 27) * positions
            if s != 1 or cin != cout:  # downsample: 1x1x1 conv + BN
                params += cin * cout + 2 * cout
                macs += cin * cout * positions
            cin = cout
        shapes[stage] = (cout, t, h, w)
    return params, macs, shapes


def test_mlfo_r3d18_layout_by_hand(described):
    """MLFO's R3D-18: its 7x7x7 stem and 1x3x3 max-pool make it 13.3 GMACs with 2x4x4 layer4 maps."""
    params, macs, hand_shapes = mlfo_r3d18_by_hand()
    assert params == 33_203_904
    assert hand_shapes["stem"] == (64, 16, 28, 28) and hand_shapes["layer4"] == (512, 2, 4, 4)
    assert macs / 1e9 == pytest.approx(13.3, abs=0.05)

    row = described["r3d_18_mlfo"]
    assert row["params"] == params
    assert row["layer4_shape"] == hand_shapes["layer4"]
    assert row["gmacs"] == pytest.approx(13.3, abs=0.05)
    assert count_gmacs(meta("r3d_18_mlfo")) == pytest.approx(macs / 1e9, rel=1e-6)

    maps = meta("r3d_18_mlfo").forward_stages(meta_clip(1, 3, 16, 112, 112), STAGE_NAMES)
    assert {stage: tuple(maps[stage].shape[1:]) for stage in STAGE_NAMES} == hand_shapes
    assert described["r3d_18"]["gmacs"] > 3 * row["gmacs"]  # no pool: 4x the positions after the stem


def test_mlfo_r3d18_keeps_the_resnet_module_names():
    """Same state-dict keys as r3d_18; only the stem conv's kernel differs (7x7x7 vs 3x7x7)."""
    ours, plain = shapes(meta("r3d_18_mlfo").state_dict()), shapes(meta("r3d_18").state_dict())
    assert list(ours) == list(plain)
    assert {k for k in ours if ours[k] != plain[k]} == {"stem.0.weight"}
    assert ours["stem.0.weight"] == (64, 3, 7, 7, 7)
    pool = meta("r3d_18_mlfo").stem[-1]
    assert isinstance(pool, nn.MaxPool3d)
    assert (pool.kernel_size, pool.stride, pool.padding) == ((1, 3, 3), (1, 2, 2), (0, 1, 1))


@pytest.mark.parametrize("name", ["r3d_vcop", "r21d_vcop", "c3d"])
def test_iic_retrieval_feature_is_9216(name, described):
    """IIC's retrieval feature: conv5 (layer4) max-pooled by (1,2,2) and flattened."""
    assert described[name]["layer4_shape"] == (512, 2, 7, 7)
    conv5 = meta(name).forward_stages(meta_clip(1, 3, 16, 112, 112), ("layer4",))["layer4"]
    assert F.max_pool3d(conv5, (1, 2, 2)).flatten(1).shape == (1, 9216)


def test_tiny_backbones_are_tiny(described):
    for name in TINY:
        assert described[name]["params"] < 1_000_000 and described[name]["gmacs"] < 2
    assert described["r2d_flow"]["layer4_shape"] == (128, 8, 7, 7)  # MSCL: T halved once, 1/16 space
