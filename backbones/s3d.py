"""S3D (Xie et al., "Rethinking Spatiotemporal Feature Learning", ECCV 2018), usable at 112 px.

The network is torchvision's ``S3D`` rebuilt from its public blocks (``TemporalSeparableConv``:
a 1xkxk conv then a kx1x1 conv, each with BN and ReLU; ``SepInceptionBlock3D``: an Inception
block whose 3x3x3 branches are separable) with three changes:

* torchvision's fixed ``AvgPool3d((2, 7, 7))`` before the classifier only fits 224 px clips (it
  fails at 112 px); here the head is the global average pool of the common interface, and the
  classifier is dropped;
* ``in_channels`` may differ from 3 (flow, residual frames);
* BN keeps eps = 1e-3 but uses PyTorch's default momentum 0.1 instead of torchvision's 0.001
  (the TensorFlow decay of the ported weights): with 0.001 the running statistics of a network
  trained from scratch lag thousands of steps behind, and evaluation-mode features are poor.

The Inception-v1 layers map to the five stages of the common interface at the max-pools, so each
stage but the stem starts by halving the resolution, as the ResNet stages do with strides:

    stem   = Conv_1a (7x7x7 separable, stride 2)        64 x T/2 x H/2  x W/2
    layer1 = MaxPool_2a, Conv_2b (1x1x1), Conv_2c (3x3x3) 192 x T/2 x H/4  x W/4
    layer2 = MaxPool_3a, Mixed_3b, Mixed_3c              480 x T/2 x H/8  x W/8
    layer3 = MaxPool_4a (3x3x3, stride 2), Mixed_4b..4f  832 x T/4 x H/16 x W/16
    layer4 = MaxPool_5a (2x2x2), Mixed_5b, Mixed_5c     1024 x T/8 x H/32 x W/32

The max-pools follow torchvision exactly (MaxPool_5a does not pad), so a clip needs at least 5
frames and 17x17 pixels; 16x112x112 gives a 1024x2x3x3 layer4 map.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

from torch import nn
from torchvision.models.video.s3d import SepInceptionBlock3D, TemporalSeparableConv
from torchvision.ops.misc import Conv3dNormActivation

from .base import DEFAULT_INIT, VideoBackbone, init_weights, register_backbone

__all__ = ["S3D", "TORCHVISION_FEATURES", "s3d"]


def spatial_pool() -> nn.MaxPool3d:
    """MaxPool 1x3x3, stride 1x2x2, padding 0x1x1: halves H and W, keeps T."""
    return nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))


class S3D(VideoBackbone):
    """S3D without its classifier; (B, 1024) pooled features at any clip size large enough."""

    def __init__(self, in_channels: int = 3, bn_momentum: float = 0.1, init: str = DEFAULT_INIT) -> None:
        super().__init__()
        norm = partial(nn.BatchNorm3d, eps=1e-3, momentum=bn_momentum)
        self.stem = nn.Sequential(OrderedDict(Conv_1a=TemporalSeparableConv(in_channels, 64, 7, 2, 3, norm)))
        self.layer1 = nn.Sequential(
            OrderedDict(
                MaxPool_2a=spatial_pool(),
                Conv_2b=Conv3dNormActivation(64, 64, kernel_size=1, norm_layer=norm),
                Conv_2c=TemporalSeparableConv(64, 192, 3, 1, 1, norm),
            )
        )
        # SepInceptionBlock3D(in, branch0 out, branch1 mid/out, branch2 mid/out, branch3 out)
        self.layer2 = nn.Sequential(
            OrderedDict(
                MaxPool_3a=spatial_pool(),
                Mixed_3b=SepInceptionBlock3D(192, 64, 96, 128, 16, 32, 32, norm),
                Mixed_3c=SepInceptionBlock3D(256, 128, 128, 192, 32, 96, 64, norm),
            )
        )
        self.layer3 = nn.Sequential(
            OrderedDict(
                MaxPool_4a=nn.MaxPool3d(kernel_size=3, stride=2, padding=1),
                Mixed_4b=SepInceptionBlock3D(480, 192, 96, 208, 16, 48, 64, norm),
                Mixed_4c=SepInceptionBlock3D(512, 160, 112, 224, 24, 64, 64, norm),
                Mixed_4d=SepInceptionBlock3D(512, 128, 128, 256, 24, 64, 64, norm),
                Mixed_4e=SepInceptionBlock3D(512, 112, 144, 288, 32, 64, 64, norm),
                Mixed_4f=SepInceptionBlock3D(528, 256, 160, 320, 32, 128, 128, norm),
            )
        )
        self.layer4 = nn.Sequential(
            OrderedDict(
                MaxPool_5a=nn.MaxPool3d(kernel_size=2, stride=2),
                Mixed_5b=SepInceptionBlock3D(832, 256, 160, 320, 32, 128, 128, norm),
                Mixed_5c=SepInceptionBlock3D(832, 384, 192, 384, 48, 128, 128, norm),
            )
        )
        self._set_stage_channels((64, 192, 480, 832, 1024))
        init_weights(self, init)


@register_backbone("s3d")
def s3d(in_channels: int = 3, bn_momentum: float = 0.1, init: str = DEFAULT_INIT) -> S3D:
    """S3D without classifier: 7,910,048 parameters (torchvision: 8,320,048 with the 400-way
    classifier), ~17.98 GMACs at 16x224x224 and ~4.5 at 16x112x112; 1024-d features."""
    return S3D(in_channels, bn_momentum, init=init)


# torchvision's S3D.features index -> the module path here (the pools hold no weights); the
# torchvision checkpoint format (backbones.checkpoint_formats) renames by it.
TORCHVISION_FEATURES = (
    "stem.Conv_1a",
    "layer1.MaxPool_2a",
    "layer1.Conv_2b",
    "layer1.Conv_2c",
    "layer2.MaxPool_3a",
    "layer2.Mixed_3b",
    "layer2.Mixed_3c",
    "layer3.MaxPool_4a",
    "layer3.Mixed_4b",
    "layer3.Mixed_4c",
    "layer3.Mixed_4d",
    "layer3.Mixed_4e",
    "layer3.Mixed_4f",
    "layer4.MaxPool_5a",
    "layer4.Mixed_5b",
    "layer4.Mixed_5c",
)
