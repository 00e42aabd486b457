"""3D residual networks: R3D, R(2+1)D and a 2D-only ResNet, in the layouts the seed papers use.

All of them are one stem followed by four stages of BasicBlocks (two 3x3x3-equivalent convs and
a shortcut), with stride 1 in ``layer1`` and stride 2 from ``layer2`` on (Tran et al., "A Closer
Look at Spatiotemporal Convolutions for Action Recognition", CVPR 2018). They differ in three
choices, made per factory below:

* the convolution inside the blocks (``conv=``):
    - ``"3d"``: full 3x3x3 (R3D; torchvision ``Conv3DSimple``);
    - ``"2plus1d"``: 1x3x3 -> BN -> ReLU -> 3x1x1 with one mid width M per *block*, computed from
      the block's (in, out) as torchvision's R(2+1)D-18 does;
    - ``"2plus1d_vcop"``: the same factorisation with M computed per *convolution* from that
      conv's own (in, out), as VCOP/IIC's ``models/r21d.py`` does, and a factorised 1x1 shortcut;
    - ``"2d"``: 1x3x3 only, no temporal mixing (torchvision ``Conv3DNoTemporal``; MSCL's flow net).
  M = floor(kt*k*k*Cin*Cout / (k*k*Cin + kt*Cout)) keeps the factorised conv's parameter count
  equal to the full 3D conv's (Tran et al., sec. 3.5);
* the stem: a 3x7x7 conv (R3D), a factorised 1x7x7 + 3x1x1 pair (R(2+1)D), MSCL's 1x7x7 conv
  with stride 2 in time, or MLFO's 7x7x7 conv followed by a 1x3x3 max-pool of stride 1x2x2. Only
  MLFO's stem has a max-pool (it belongs to the ``stem`` stage), as in the reference layouts;
  it quarters every later map and cuts the cost of an R3D-18 about threefold;
* depth and width: [2,2,2,2] x 64..512 ("-18"), [1,1,1,1] (VCOP/IIC's "R3D"/"R(2+1)D", really
  10 layers deep), or 16..128 (tiny CPU variants, MSCL's quarter-width flow net).

The module names (``stem``, ``layer1.0.conv1.0`` ...) follow torchvision's ``VideoResNet``, so
torchvision's Kinetics-400 state dicts for r3d_18 / r2plus1d_18 load into ``r3d_18`` /
``r2plus1d_18`` once their ``fc.*`` entries are dropped. ``r3d_18_mlfo`` uses the same names
(MLFO's own ``conv1``/``bn1``/``layerN.i.bn1`` naming would need renaming to load).

Every network is initialised by the scheme passed as ``init`` (see :func:`backbones.base.init_weights`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.video.resnet import Conv2Plus1D, Conv3DNoTemporal, Conv3DSimple

from .base import DEFAULT_INIT, VideoBackbone, init_weights, register_backbone

__all__ = [
    "BasicBlock",
    "ResNet3D",
    "factorized_midplanes",
    "mc3_18",
    "r2d_flow",
    "r2plus1d_10",
    "r2plus1d_18",
    "r21d_tiny",
    "r21d_vcop",
    "r3d_18",
    "r3d_18_mlfo",
    "r3d_tiny",
    "r3d_vcop",
]

CONV_KINDS = ("3d", "2plus1d", "2plus1d_vcop", "2d")


def factorized_midplanes(in_planes: int, out_planes: int, kernel: Sequence[int] = (3, 3, 3)) -> int:
    """Mid width M of a (2+1)D factorisation of a kt x k x k conv with as many parameters as it."""
    kt, kh, kw = kernel
    return (kt * kh * kw * in_planes * out_planes) // (kh * kw * in_planes + kt * out_planes)


# --------------------------------------------------------------------------------------------
# Blocks


def make_conv(kind: str, in_planes: int, out_planes: int, stride: int, block_planes: tuple[int, int]) -> nn.Module:
    """One 3x3x3-equivalent convolution of a block, without the BN/ReLU that follow it.

    ``block_planes`` is the block's (in, out), which torchvision's R(2+1)D uses for M.
    """
    if kind == "3d":
        return Conv3DSimple(in_planes, out_planes, stride=stride)
    if kind == "2d":
        return Conv3DNoTemporal(in_planes, out_planes, stride=stride)
    if kind == "2plus1d":
        return Conv2Plus1D(in_planes, out_planes, factorized_midplanes(*block_planes), stride)
    if kind == "2plus1d_vcop":
        return Conv2Plus1D(in_planes, out_planes, factorized_midplanes(in_planes, out_planes), stride)
    raise ValueError(f"unknown conv kind {kind!r}; valid: {CONV_KINDS}")


def make_shortcut(kind: str, in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """The projection shortcut of a block that changes width or resolution.

    A strided 1x1x1 conv + BN (torchvision; VCOP's R3D). The "2d" nets keep time, so they stride
    only in space. VCOP's R(2+1)D factorises even this 1x1x1 conv: spatial part (stride 1x2x2) ->
    BN -> ReLU -> temporal part (stride 2x1x1) -> BN, with M = floor(Cin*Cout / (Cin + Cout)).
    """
    if kind == "2plus1d_vcop":
        mid = factorized_midplanes(in_planes, out_planes, (1, 1, 1))
        return nn.Sequential(
            nn.Conv3d(in_planes, mid, kernel_size=1, stride=(1, stride, stride), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, out_planes, kernel_size=1, stride=(stride, 1, 1), bias=False),
            nn.BatchNorm3d(out_planes),
        )
    ds_stride = (1, stride, stride) if kind == "2d" else (stride, stride, stride)
    return nn.Sequential(
        nn.Conv3d(in_planes, out_planes, kernel_size=1, stride=ds_stride, bias=False),
        nn.BatchNorm3d(out_planes),
    )


class BasicBlock(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN, plus the shortcut, then ReLU (He et al. 2016).

    The residual sum is out of place (torchvision's block adds in place), so the block is safe
    to trace, compile and checkpoint; the in-place ReLUs only touch tensors made inside it.
    """

    def __init__(self, in_planes: int, planes: int, conv: str, stride: int = 1) -> None:
        super().__init__()
        block_planes = (in_planes, planes)
        self.conv1 = nn.Sequential(
            make_conv(conv, in_planes, planes, stride, block_planes), nn.BatchNorm3d(planes), nn.ReLU(inplace=True)
        )
        self.conv2 = nn.Sequential(make_conv(conv, planes, planes, 1, block_planes), nn.BatchNorm3d(planes))
        needs_projection = stride != 1 or in_planes != planes
        self.downsample = make_shortcut(conv, in_planes, planes, stride) if needs_projection else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + shortcut)


def make_layer(in_planes: int, planes: int, blocks: int, conv: str, stride: int) -> nn.Sequential:
    """A stage: ``blocks`` BasicBlocks, the first one striding and changing width."""
    return nn.Sequential(
        BasicBlock(in_planes, planes, conv, stride), *(BasicBlock(planes, planes, conv) for _ in range(blocks - 1))
    )


# --------------------------------------------------------------------------------------------
# Stems


def r3d_stem(in_channels: int, width: int) -> nn.Sequential:
    """Conv3d k=3x7x7 s=1x2x2 p=1x3x3 -> BN -> ReLU (torchvision ``BasicStem``; VCOP/IIC ``R3DNet``)."""
    return nn.Sequential(
        nn.Conv3d(in_channels, width, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


def r2plus1d_stem(in_channels: int, width: int, midplanes: int) -> nn.Sequential:
    """1x7x7 s=1x2x2 -> BN -> ReLU -> 3x1x1 -> BN -> ReLU: the R(2+1)D stem.

    torchvision fixes M = 45 for 3 -> 64; VCOP/IIC's ``R2Plus1DNet`` uses the parameter-matching
    M = floor(3*7*7*Cin*64 / (7*7*Cin + 3*64)) (83 for RGB).
    """
    return nn.Sequential(
        nn.Conv3d(in_channels, midplanes, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(midplanes),
        nn.ReLU(inplace=True),
        nn.Conv3d(midplanes, width, kernel_size=(3, 1, 1), stride=1, padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


def flow_r2d_stem(in_channels: int, width: int) -> nn.Sequential:
    """Conv3d k=1x7x7 s=2x2x2 p=0x3x3 -> BN -> ReLU: MSCL's flow stem, which halves time."""
    return nn.Sequential(
        nn.Conv3d(in_channels, width, kernel_size=(1, 7, 7), stride=(2, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


def mlfo_stem(in_channels: int, width: int) -> nn.Sequential:
    """Conv3d k=7x7x7 s=1x2x2 p=3 -> BN -> ReLU -> MaxPool3d k=1x3x3 s=1x2x2 p=0x1x1: MLFO's stem.

    The conv keeps time and halves space, the pool halves space again (112 px -> 56 -> 28).
    """
    return nn.Sequential(
        nn.Conv3d(in_channels, width, kernel_size=7, stride=(1, 2, 2), padding=3, bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
    )


# --------------------------------------------------------------------------------------------
# The network


class ResNet3D(VideoBackbone):
    """stem -> layer1 (stride 1) -> layer2..layer4 (stride 2) -> global average pool -> (B, widths[-1]).

    Args:
        stem: the stem module; its output has ``widths[0]`` channels.
        conv: the block convolution, one of ``CONV_KINDS``, or one per stage (MC3 mixes them).
        layers: BasicBlocks per stage.
        widths: output channels of the four stages (layer1 keeps the stem's width).
        zero_init_residual: start every block's last BN at gamma = 0, so each block begins as
            the identity (Goyal et al. 2017); off by default, as in the references. Applied
            after ``init``.
        init: the initialisation scheme, one of ``INIT_SCHEMES`` (see ``init_weights``).
    """

    def __init__(
        self,
        stem: nn.Module,
        conv: str | Sequence[str],
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        zero_init_residual: bool = False,
        init: str = DEFAULT_INIT,
    ) -> None:
        super().__init__()
        convs = (conv,) * 4 if isinstance(conv, str) else tuple(conv)
        if len(convs) != 4 or any(c not in CONV_KINDS for c in convs):
            raise ValueError(f"conv must be one of {CONV_KINDS} or four of them (one per stage), got {conv!r}")
        w1, w2, w3, w4 = widths
        n1, n2, n3, n4 = layers
        self.stem = stem
        self.layer1 = make_layer(w1, w1, n1, convs[0], stride=1)
        self.layer2 = make_layer(w1, w2, n2, convs[1], stride=2)
        self.layer3 = make_layer(w2, w3, n3, convs[2], stride=2)
        self.layer4 = make_layer(w3, w4, n4, convs[3], stride=2)
        self._set_stage_channels((w1, w1, w2, w3, w4))

        init_weights(self, init)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.conv2[1].weight)


# --------------------------------------------------------------------------------------------
# Registered variants
#
# Every factory takes ``in_channels``, ``zero_init_residual`` and ``init`` (see ResNet3D).


@register_backbone("r3d_18")
def r3d_18(in_channels: int = 3, zero_init_residual: bool = False, init: str = DEFAULT_INIT) -> ResNet3D:
    """torchvision's R3D-18 without its fc: 3x3x3 BasicBlocks [2,2,2,2], widths 64..512.

    33,166,272 parameters and 40.70 GMACs at 16x112x112 (torchvision: 33,371,472 with the
    400-way fc); the layer4 map is 512x2x7x7 for a 16x112x112 clip.
    """
    stem = r3d_stem(in_channels, 64)
    return ResNet3D(stem, "3d", (2, 2, 2, 2), zero_init_residual=zero_init_residual, init=init)


@register_backbone("mc3_18")
def mc3_18(in_channels: int = 3, zero_init_residual: bool = False, init: str = DEFAULT_INIT) -> ResNet3D:
    """torchvision's MC3-18 without its fc: R3D-18's stem and 3x3x3 blocks in layer1, then 1x3x3
    blocks (no temporal mixing, spatial strides only) in layer2-layer4 (Tran et al. 2018, "MC3")."""
    stem = r3d_stem(in_channels, 64)
    return ResNet3D(stem, ("3d", "2d", "2d", "2d"), (2, 2, 2, 2), zero_init_residual=zero_init_residual, init=init)


@register_backbone("r3d_18_mlfo")
def r3d_18_mlfo(in_channels: int = 3, zero_init_residual: bool = False, init: str = DEFAULT_INIT) -> ResNet3D:
    """MLFO's 3D-ResNet-18 (``generate_model(18)`` in shvdiwnkozbw/Video-Representation-via-
    Multi-level-Optimization ``r3d.py``, the backbone its ``model.py`` builds).

    ``r3d_18``'s blocks, widths and 1x1x1 projection shortcuts (its shortcut type "B"), behind
    MLFO's stem: a 7x7x7 conv (stride 1x2x2, padding 3) and a 1x3x3 max-pool (stride 1x2x2,
    padding 0x1x1). 33,203,904 parameters and 13.31 GMACs at 16x112x112 (r3d_18: 40.70); the
    layer4 map is 512x2x4x4 for a 16x112x112 clip (r3d_18: 512x2x7x7). MLFO's reference draws
    its convs kaiming-normal (fan_out), the default ``init`` here. Its motion-excitation heads on
    layer2/layer3 and its (2,1,1) average pool are parts of the method, not of this backbone.
    """
    stem = mlfo_stem(in_channels, 64)
    return ResNet3D(stem, "3d", (2, 2, 2, 2), zero_init_residual=zero_init_residual, init=init)


@register_backbone("r2plus1d_18")
def r2plus1d_18(in_channels: int = 3, zero_init_residual: bool = False, init: str = DEFAULT_INIT) -> ResNet3D:
    """torchvision's R(2+1)D-18 without its fc: (2+1)D stem with M = 45, Conv2Plus1D blocks [2,2,2,2].

    31,300,125 parameters and 40.52 GMACs at 16x112x112 (torchvision: 31,505,325 with the fc).
    """
    stem = r2plus1d_stem(in_channels, 64, 45)
    return ResNet3D(stem, "2plus1d", (2, 2, 2, 2), zero_init_residual=zero_init_residual, init=init)


@register_backbone("r3d_vcop")
def r3d_vcop(in_channels: int = 3, zero_init_residual: bool = False, init: str = DEFAULT_INIT) -> ResNet3D:
    """VCOP/IIC's "R3D" (``R3DNet(layer_sizes=(1,1,1,1))`` in BestJuly/IIC ``models/r3d.py``).

    The R3D-18 stem and blocks with one block per stage, i.e. an R3D-10: 14,361,792 parameters,
    19.89 GMACs at 16x112x112 (14,566,992 with torchvision's 400-way fc). conv5 (= layer4) is
    512x2x7x7, the map IIC max-pools by (1,2,2) and flattens to 9216-d for retrieval. IIC's
    R3DNet sets no initialisation of its own: ``init="pytorch_default"`` reproduces it.
    """
    stem = r3d_stem(in_channels, 64)
    return ResNet3D(stem, "3d", (1, 1, 1, 1), zero_init_residual=zero_init_residual, init=init)


@register_backbone("r21d_vcop")
def r21d_vcop(in_channels: int = 3, zero_init_residual: bool = False, init: str = DEFAULT_INIT) -> ResNet3D:
    """VCOP/IIC's "R(2+1)D" (``R2Plus1DNet((1,1,1,1))`` in BestJuly/IIC ``models/r21d.py``).

    Factorised stem (M = 83 for RGB) and one (2+1)D block per stage, every conv's M from its own
    (in, out), factorised 1x1 shortcuts: 14,365,303 parameters (every factorised conv is as large
    as the 3D conv it replaces, so about r3d_vcop's count) and 21.36 GMACs at 16x112x112. The
    12.5-12.8M / 19.7 GMACs sometimes quoted for it is torchvision's block rule, ``r2plus1d_10``.
    """
    stem = r2plus1d_stem(in_channels, 64, factorized_midplanes(in_channels, 64, (3, 7, 7)))
    return ResNet3D(stem, "2plus1d_vcop", (1, 1, 1, 1), zero_init_residual=zero_init_residual, init=init)


@register_backbone("r2plus1d_10")
def r2plus1d_10(in_channels: int = 3, zero_init_residual: bool = False, init: str = DEFAULT_INIT) -> ResNet3D:
    """torchvision's R(2+1)D layout with one block per stage, as DCLR's ``view_resnet.py`` builds
    its "r2plus1d_18" (layers [1,1,1,1]): stem M = 45, one M per block.

    12,487,005 parameters and 19.71 GMACs at 16x112x112. Not the same network as ``r21d_vcop``,
    whose per-conv M keeps every factorised conv as large as the 3D conv it replaces.
    """
    stem = r2plus1d_stem(in_channels, 64, 45)
    return ResNet3D(stem, "2plus1d", (1, 1, 1, 1), zero_init_residual=zero_init_residual, init=init)


@register_backbone("r3d_tiny")
def r3d_tiny(in_channels: int = 3, zero_init_residual: bool = False, init: str = DEFAULT_INIT) -> ResNet3D:
    """A tiny R3D for CPU tests and benchmarks: r3d_vcop's layout at widths 16/32/64/128."""
    stem = r3d_stem(in_channels, 16)
    return ResNet3D(stem, "3d", (1, 1, 1, 1), (16, 32, 64, 128), zero_init_residual=zero_init_residual, init=init)


@register_backbone("r21d_tiny")
def r21d_tiny(in_channels: int = 3, zero_init_residual: bool = False, init: str = DEFAULT_INIT) -> ResNet3D:
    """A tiny R(2+1)D for CPU tests and benchmarks: r21d_vcop's layout at widths 16/32/64/128."""
    stem = r2plus1d_stem(in_channels, 16, factorized_midplanes(in_channels, 16, (3, 7, 7)))
    widths = (16, 32, 64, 128)
    return ResNet3D(stem, "2plus1d_vcop", (1, 1, 1, 1), widths, zero_init_residual=zero_init_residual, init=init)


@register_backbone("r2d_flow")
def r2d_flow(in_channels: int = 3, zero_init_residual: bool = False, init: str = DEFAULT_INIT) -> ResNet3D:
    """MSCL's flow encoder (``resnet_flow.r2d_18`` in its ``mmaction/models/backbones/fastonly.py``).

    A quarter-width 2D ResNet-18 applied frame by frame: stem 1x7x7 with stride 2 in time and
    space, 1x3x3 BasicBlocks [2,2,2,2] at widths 16/32/64/128, spatial strides only. MSCL feeds it
    3-channel colour-coded flow; 8 flow frames at 112 px give a 128x4x7x7 layer4 map.
    """
    stem = flow_r2d_stem(in_channels, 16)
    return ResNet3D(stem, "2d", (2, 2, 2, 2), (16, 32, 64, 128), zero_init_residual=zero_init_residual, init=init)
