"""The four papers' checkpoint formats: the files IIC's, MLFO's, DCLR's and MSCL's official code
writes, read into vsbench's backbones.

Each :class:`~backbones.checkpoints.CheckpointFormat` below says where the official training script
puts the backbone in the file (container, wrappers, prefix), which keys evaluation does not use
(heads, key encoders, queues: dropped and listed), how every backbone key is renamed to vsbench's
(one rule per official module; the steps are in :mod:`backbones.checkpoints`), and how the paper
fed its encoder (modality, value range, normalisation, temporal stride). The layouts were derived
from the official model definitions and save calls at the commits named in ``source``; the test
fixtures ``tests/fixtures/checkpoints/<paper>_<arch>.json`` list every key and shape of those files
(how each was derived: ``tests/fixtures/checkpoints/README.md``).

| format | official file | vsbench backbone(s) | input | stride |
|---|---|---|---|---|
| ``iic`` | ``train_ssl.py``'s ``ckpt_epoch_N.pth``, ``{"model": ...}`` | ``c3d``, ``r3d_vcop``, ``r21d_vcop`` | RGB [0, 1], not normalised | 1 |
| ``mlfo`` | ``train.py``'s ``r3d_E_L.pth``, a flat state dict, ``backbone.`` | ``r3d_18_mlfo`` | RGB, ImageNet mean/std | 1 (rate 1-3) |
| ``dclr`` | ``main_view.py``'s ``checkpoint_NNNN.pth.tar``, DDP ``module.encoder_q.`` | ``r2plus1d_10``, ``r3d_18`` | RGB, ImageNet mean/std | 2 |
| ``mscl`` | mmcv's ``epoch_N.pth``, ``recognizer.encoder_q.`` | ``r3d_18`` | RGB, ImageNet mean/std | 16 raw frames |
"""

from __future__ import annotations

from core.data.encoder_input import InputConvention

from .checkpoints import CheckpointFormat, register_format

__all__ = ["DCLR", "IIC", "MLFO", "MSCL"]

#: [0, 1] RGB, ImageNet mean/std: what MLFO, DCLR and MSCL feed their RGB encoders.
IMAGENET_RGB = InputConvention(modality="rgb", value_range=(0.0, 1.0), normalize=True, stats="imagenet")

# --------------------------------------------------------------------------------------------
# IIC: models/{c3d,r3d,r21d}.py. Official stage convN (N = 2..5) is vsbench's layer(N-1); its
# SpatioTemporalResLayer holds the first block as ``block1`` (IIC's nets have one block per stage).

_STAGES = ((2, 1), (3, 2), (4, 3), (5, 4))  # official convN -> vsbench layerL


def _iic_c3d_rules() -> tuple[tuple[str, str], ...]:
    """conv1/bn1 -> stem.conv1, conv2/bn2 -> layer1.conv2, conv3a..conv5b -> layer2..layer4."""
    rules = [(r"conv1\.(weight|bias)", r"stem.conv1.conv.\1"), (r"bn1\.(.*)", r"stem.conv1.bn.\1"),
             (r"conv2\.(weight|bias)", r"layer1.conv2.conv.\1"), (r"bn2\.(.*)", r"layer1.conv2.bn.\1")]
    for n, layer in ((3, 2), (4, 3), (5, 4)):
        rules += [(rf"conv{n}([ab])\.(weight|bias)", rf"layer{layer}.conv{n}\1.conv.\2"),
                  (rf"bn{n}([ab])\.(.*)", rf"layer{layer}.conv{n}\1.bn.\2")]
    return tuple(rules)


def _iic_r3d_rules() -> tuple[tuple[str, str], ...]:
    """R3DNet: every conv is a SpatioTemporalConv holding one ``temporal_spatial_conv``."""
    rules = [(r"conv1\.temporal_spatial_conv\.weight", "stem.0.weight"), (r"bn1\.(.*)", r"stem.1.\1")]
    for n, layer in _STAGES:
        block = rf"conv{n}\.block1"
        rules += [
            (rf"{block}\.conv([12])\.temporal_spatial_conv\.weight", rf"layer{layer}.0.conv\1.0.weight"),
            (rf"{block}\.bn([12])\.(.*)", rf"layer{layer}.0.conv\1.1.\2"),
            (rf"{block}\.downsampleconv\.temporal_spatial_conv\.weight", rf"layer{layer}.0.downsample.0.weight"),
            (rf"{block}\.downsamplebn\.(.*)", rf"layer{layer}.0.downsample.1.\1"),
        ]
    return tuple(rules)


def _iic_r21d_rules() -> tuple[tuple[str, str], ...]:
    """R2Plus1DNet: a SpatioTemporalConv is spatial_conv -> bn -> ReLU -> temporal_conv, which is
    torchvision's Conv2Plus1D (indices 0, 1, 3); the 1x1x1 shortcut is factorised the same way."""
    rules = [(r"conv1\.spatial_conv\.weight", "stem.0.weight"), (r"conv1\.bn\.(.*)", r"stem.1.\1"),
             (r"conv1\.temporal_conv\.weight", "stem.3.weight"), (r"bn1\.(.*)", r"stem.4.\1")]
    for n, layer in _STAGES:
        block, ours = rf"conv{n}\.block1", f"layer{layer}.0"
        rules += [
            (rf"{block}\.conv([12])\.spatial_conv\.weight", rf"{ours}.conv\1.0.0.weight"),
            (rf"{block}\.conv([12])\.bn\.(.*)", rf"{ours}.conv\1.0.1.\2"),
            (rf"{block}\.conv([12])\.temporal_conv\.weight", rf"{ours}.conv\1.0.3.weight"),
            (rf"{block}\.bn([12])\.(.*)", rf"{ours}.conv\1.1.\2"),
            (rf"{block}\.downsampleconv\.spatial_conv\.weight", f"{ours}.downsample.0.weight"),
            (rf"{block}\.downsampleconv\.bn\.(.*)", rf"{ours}.downsample.1.\1"),
            (rf"{block}\.downsampleconv\.temporal_conv\.weight", f"{ours}.downsample.3.weight"),
            (rf"{block}\.downsamplebn\.(.*)", rf"{ours}.downsample.4.\1"),
        ]
    return tuple(rules)


IIC = register_format(CheckpointFormat(
    name="iic",
    description="IIC's train_ssl.py checkpoints (ckpt_epoch_N.pth: {'opt', 'model', 'contrast', 'optimizer', "
                "'epoch'}; the released R3D weights are read by retrieve_clips.py from ['model']): the plain "
                "backbone, C3D, R3DNet((1,1,1,1)) or R2Plus1DNet((1,1,1,1)), no wrapper and no head; "
                "ft_classify.py's fine-tuned {'model'} files add a 'linear' classifier, which is dropped",
    source="BestJuly/IIC@4c2968f393b2eb642dbe75b176f13d9ee61eee67 models/c3d.py, models/r3d.py, models/r21d.py, "
           "train_ssl.py (set_model, torch.save)",
    renames={"c3d": _iic_c3d_rules(), "r3d_vcop": _iic_r3d_rules(), "r21d_vcop": _iic_r21d_rules()},
    # train_ssl.py: Resize((128, 171)) -> RandomCrop(112) -> ToTensor(), no Normalize; 16 consecutive
    # frames (datasets/ucf101.py). The residual view diff(x) is computed from these [0, 1] clips.
    input=InputConvention(modality="rgb", value_range=(0.0, 1.0), normalize=False),
    stride=1,
    containers=("model",),
    drop=r"linear\.(weight|bias)",
    allowed_globals=("argparse.Namespace",),  # train_ssl.py saves its options under 'opt'
))

# --------------------------------------------------------------------------------------------
# MLFO: r3d.py ResNet (generate_model(18)) as GreatModel.backbone (model.py); train.py saves
# model_without_ddp.state_dict(), so no "module." and every head of GreatModel is in the file.

MLFO = register_format(CheckpointFormat(
    name="mlfo",
    description="MLFO's train.py checkpoints (r3d_E_L.pth: GreatModel's flat state dict): the 3D-ResNet-18 under "
                "'backbone.' with its motion-excitation blocks (melow, memid) and an unused 400-way fc, beside "
                "the projection heads (project*, project_global) and the 1000 prototypes, which are dropped",
    source="shvdiwnkozbw/Video-Representation-via-Multi-level-Optimization@3478734586f3e2f5dfe91413e295b591c0e93a19 "
           "r3d.py (ResNet, generate_model), model.py (GreatModel), train.py (torch.save)",
    renames={"r3d_18_mlfo": (
        (r"conv1\.weight", "stem.0.weight"),
        (r"bn1\.(.*)", r"stem.1.\1"),
        (r"(layer[1-4]\.\d+)\.conv([12])\.weight", r"\1.conv\2.0.weight"),
        (r"(layer[1-4]\.\d+)\.bn([12])\.(.*)", r"\1.conv\2.1.\3"),
        # layerN.0.downsample.{0,1}.* already have vsbench's names
    )},
    # train.py: ... ColorJitter -> ToTensor() -> Normalize() (augmentation.py: ImageNet mean/std);
    # dataloader.py draws a sampling rate in [1, rate] (rate 3): its base rate is 1.
    input=IMAGENET_RGB,
    stride=1,
    containers=("state_dict", "model"),
    prefix="backbone.",
    drop=r"backbone\.(melow|memid|fc)\..*|project(_[a-z_]+)?\..*|prototype\.weight",
))

# --------------------------------------------------------------------------------------------
# DCLR: main_view.py builds MoCo_View(view_resnet.<arch>) (moco/builder.py), wraps it in DDP and
# saves {'epoch', 'arch', 'state_dict': model.state_dict(), 'optimizer'}: keys "module.encoder_q.*",
# "module.encoder_k.*", "module.queue_*". view_resnet's module names are torchvision's.

DCLR = register_format(CheckpointFormat(
    name="dclr",
    description="DCLR's main_view.py checkpoints (checkpoint_NNNN.pth.tar: {'epoch', 'arch', 'state_dict', "
                "'optimizer'}; DDP 'module.' of MoCo_View): the query encoder 'encoder_q.' of view_resnet's "
                "r2plus1d_18 (one block per stage: vsbench's r2plus1d_10) or r3d_18; its five heads "
                "fvv/fvs/fvd/fsv/fdv, the key encoder and the seven queues are dropped",
    source="Mark12Ding/DCLR@47adce91ac1b840f250fde97b0573d24fb3adac0 view_resnet.py, moco/builder.py (MoCo_View), "
           "main_view.py, utils/train_utils.py (save_checkpoint)",
    renames={"r2plus1d_10": (), "r3d_18": ()},  # torchvision's module names, as vsbench's
    # main_view.py: ToTensorVideo ([0, 1]) -> RandomResizedCropVideo, then moco/loader.py
    # MocoAugment_GPU ends in kornia Normalize(ImageNet mean/std); dataset/ucf101_view.py reads
    # every 2nd frame (stride=2) of a 32-frame window.
    input=IMAGENET_RGB,
    stride=2,
    containers=("state_dict",),
    strip=("module.",),
    prefix="encoder_q.",
    drop=r"queue_(vv|vs|vd|sv|dv|rs|rd)|queue_ptr|encoder_k\..*|encoder_q\.f(vv|vs|vd|sv|dv)\..*",
))

# --------------------------------------------------------------------------------------------
# MSCL: mmaction2's runner saves {'meta', 'state_dict', 'optimizer'} with the module wrapper
# removed; the model is MSCLWithAug (recognizers/mscl.py) holding two MoCoV2 recognizers
# (recognizers/moco.py): 'recognizer' (RGB, torchvision.r3d_18 with fc = Identity) and
# 'recognizer_flow' (resnet_flow.r2d_18). Its own fine-tuning config reads the backbone back with
# prefix 'recognizer.encoder_q' (configs/recognition/ssl_test/test_ssv2_r18.py).

MSCL = register_format(CheckpointFormat(
    name="mscl",
    description="MSCL's mmaction2 pretraining checkpoints (epoch_N.pth: {'meta', 'state_dict', 'optimizer'}) of "
                "mscl_r18_cosm_lr2e-2.py: the RGB query encoder 'recognizer.encoder_q.' (torchvision r3d_18); "
                "the RGB key encoder, TPN/SEPC necks, MLPs and queue, the whole flow recognizer and the "
                "heads' buffers are dropped",
    source="megvii-research/MSCL@0b080e520fcfd616e859aee7afcbd76b5212093c configs/recognition/moco/mscl_r18_cosm_lr2e-2.py, "
           "mmaction/models/recognizers/mscl.py (MSCLWithAug), mmaction/models/recognizers/moco.py (MoCoV2), "
           "mmaction/models/recognizers/base_moco.py (_build_backbone)",
    renames={"r3d_18": ()},  # torchvision's VideoResNet names
    # the config's MoCoNormalize divides by 255, then common/ssl_aug_v2.py SyncMoCoAugmentV5 ends in
    # kornia Normalize(ImageNet mean/std) for the RGB clips; 8 frames at frame_interval 8 of frames
    # taken every 2nd raw frame (MatchFlow gap=2): 16 raw frames apart.
    input=IMAGENET_RGB,
    stride=16,
    containers=("state_dict",),
    strip=("module.",),
    prefix="recognizer.encoder_q.",
    drop=r"recognizer\.(queue|queue_ptr|count)|recognizer\.(encoder_k|neck_q|neck_k|mlp_q|mlp_k)\..*"
         r"|recognizer_flow\..*|moco_mx_head\..*|sup_head\..*",
))
