"""Video backbones (R3D, R(2+1)D, C3D, S3D, tiny CPU variants) returning pooled features and stage maps.

Build one by name::

    from backbones import create_backbone, list_backbones
    net = create_backbone("r3d_vcop", in_channels=3)
    feats = net(clips)                                   # (B, 512)
    maps = net.forward_stages(clips, ("layer3", "layer4"))  # {"layer3", "layer4", "pooled"}

Every backbone has the stages ``stem, layer1, layer2, layer3, layer4`` (see :mod:`backbones.base`).
Its initialisation is named when it is built, ``create_backbone(name, init=...)`` with one of
``INIT_SCHEMES``: "kaiming_fan_out" (the default; torchvision's and MLFO's) or "pytorch_default"
(each module's own constructor defaults; IIC's). ``describe_backbones()`` tabulates parameters and
forward GMACs.

Other people's weights load by format (:mod:`backbones.checkpoints`)::

    net, report = load_external("r3d_18-b3b3357e.pth", "torchvision", "r3d_18")
"""

from .base import (
    INIT_SCHEMES,
    POOLED,
    STAGE_NAMES,
    UnknownBackboneError,
    VideoBackbone,
    count_gmacs,
    count_params,
    create_backbone,
    describe_backbones,
    init_weights,
    list_backbones,
    register_backbone,
)
from .c3d import C3D
from .resnet3d import ResNet3D, factorized_midplanes
from .s3d import S3D
from .checkpoint_formats import STATE_DICT, TORCHVISION  # importing registers them
from .checkpoint_formats_papers import DCLR, IIC, MLFO, MSCL
from .checkpoints import CheckpointFormat, CheckpointMismatch, list_formats, load_external

__all__ = [
    "C3D",
    "CheckpointFormat",
    "DCLR",
    "IIC",
    "MLFO",
    "MSCL",
    "CheckpointMismatch",
    "INIT_SCHEMES",
    "POOLED",
    "STAGE_NAMES",
    "S3D",
    "STATE_DICT",
    "TORCHVISION",
    "ResNet3D",
    "UnknownBackboneError",
    "VideoBackbone",
    "count_gmacs",
    "count_params",
    "create_backbone",
    "describe_backbones",
    "factorized_midplanes",
    "init_weights",
    "list_backbones",
    "list_formats",
    "load_external",
    "register_backbone",
]
