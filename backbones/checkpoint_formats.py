"""The library checkpoint formats: torchvision's video models and plain state dicts.

The four papers' formats are in :mod:`backbones.checkpoint_formats_papers`. Every format is a
:class:`~backbones.checkpoints.CheckpointFormat` (how the steps apply: that module's docstring).
"""

from __future__ import annotations

from core.data.encoder_input import InputConvention

from .checkpoints import CheckpointFormat, register_format
from .s3d import TORCHVISION_FEATURES

#: torchvision's video classification recipe feeds [0, 1] RGB normalised by Kinetics-400 statistics
#: (``R3D_18_Weights.KINETICS400_V1.transforms()``: ``VideoClassification``), 16-frame clips
#: sampled at 15 fps (its ``references/video_classification`` ``--frame-rate 15``), i.e. about
#: every second frame of a 25-30 fps video.
KINETICS_INPUT = InputConvention(modality="rgb", value_range=(0.0, 1.0), normalize=True, stats="kinetics")

TORCHVISION = register_format(CheckpointFormat(
    name="torchvision",
    description="state dicts of torchvision.models.video (r3d_18, mc3_18, r2plus1d_18, s3d), e.g. the Kinetics-400 "
                "weights: the file torch.hub downloads, or model.state_dict() saved by hand",
    source="torchvision 0.29 torchvision/models/video/resnet.py (VideoResNet) and s3d.py (S3D)",
    renames={
        # VideoResNet's module names are vsbench's (backbones/resnet3d.py): nothing to rename
        "r3d_18": (), "mc3_18": (), "r2plus1d_18": (),
        "s3d": tuple((rf"features\.{i}\.(.*)", rf"{path}.\1") for i, path in enumerate(TORCHVISION_FEATURES)),
    },
    input=KINETICS_INPUT,
    stride=2,
    containers=("state_dict", "model"),
    drop=r"fc\..*|classifier\..*",  # the Kinetics-400 classifier
))

STATE_DICT = register_format(CheckpointFormat(
    name="state_dict",
    description="any state dict whose keys are vsbench's own once --key-map rules are applied (unknown input "
                "convention and stride: set features.* / finetune.* with --set)",
    source="vsbench",
    renames={"*": ()},
    containers=("state_dict", "model", "encoder", "backbone"),
))
