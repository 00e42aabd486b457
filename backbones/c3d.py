"""C3D with batch norm, in the layout VCOP and IIC use (BestJuly/IIC ``models/c3d.py``).

C3D (Tran et al., "Learning Spatiotemporal Features with 3D Convolutional Networks", ICCV 2015)
is a plain VGG-like stack of 3x3x3 convolutions and max-pools. The self-supervised video papers
(VCOP, CVPR 2019; IIC, ACM MM 2020) add BN after every conv and replace pool5 and the fc layers
by a global average pool, which gives a 512-d feature:

    conv1 64 | pool1 1x2x2 | conv2 128 | pool2 2x2x2 | conv3a,b 256 | pool3 | conv4a,b 512 | pool4 |
    conv5a,b 512 | global average pool -> 512

Each "conv" is Conv3d 3x3x3 (padding 1, with bias, as in the reference) -> BN -> ReLU. The stages
of the common interface are the conv blocks, each starting with the pool that precedes it, so
every stage ends on a conv block's activation and the spatial size falls stage by stage:

    stem   = conv1                     64 x T    x H    x W
    layer1 = pool1 + conv2            128 x T    x H/2  x W/2
    layer2 = pool2 + conv3a + conv3b  256 x T/2  x H/4  x W/4
    layer3 = pool3 + conv4a + conv4b  512 x T/4  x H/8  x W/8
    layer4 = pool4 + conv5a + conv5b  512 x T/8  x H/16 x W/16   (512x2x7x7 for 16x112x112)

The pools do not pad, so a clip needs at least 8 frames and 16x16 pixels.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .base import DEFAULT_INIT, VideoBackbone, init_weights, register_backbone

__all__ = ["C3D", "c3d"]


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv3d 3x3x3 (padding 1, bias as in the reference) -> BN -> ReLU."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
            bn=nn.BatchNorm3d(out_channels),
            relu=nn.ReLU(inplace=True),
        )
    )


def pool(kernel: tuple[int, int, int]) -> nn.MaxPool3d:
    """Non-overlapping max-pool (kernel == stride), as C3D's pool1..pool4."""
    return nn.MaxPool3d(kernel_size=kernel, stride=kernel)


class C3D(VideoBackbone):
    """C3D-BN, VCOP/IIC layout, ending in global average pooling to 512-d."""

    def __init__(self, in_channels: int = 3, init: str = DEFAULT_INIT) -> None:
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(conv1=conv_bn_relu(in_channels, 64)))
        self.layer1 = nn.Sequential(OrderedDict(pool1=pool((1, 2, 2)), conv2=conv_bn_relu(64, 128)))
        self.layer2 = nn.Sequential(
            OrderedDict(pool2=pool((2, 2, 2)), conv3a=conv_bn_relu(128, 256), conv3b=conv_bn_relu(256, 256))
        )
        self.layer3 = nn.Sequential(
            OrderedDict(pool3=pool((2, 2, 2)), conv4a=conv_bn_relu(256, 512), conv4b=conv_bn_relu(512, 512))
        )
        self.layer4 = nn.Sequential(
            OrderedDict(pool4=pool((2, 2, 2)), conv5a=conv_bn_relu(512, 512), conv5b=conv_bn_relu(512, 512))
        )
        self._set_stage_channels((64, 128, 256, 512, 512))
        init_weights(self, init)


@register_backbone("c3d")
def c3d(in_channels: int = 3, init: str = DEFAULT_INIT) -> C3D:
    """C3D-BN as in VCOP/IIC: 27,661,440 parameters, ~38.5 GMACs at 16x112x112, 512-d features."""
    return C3D(in_channels, init=init)
