"""The four papers' checkpoint formats (IIC, MLFO, DCLR, MSCL): a file in the official layout loads
into the vsbench backbone key for key, drops exactly the heads, key encoders and queues, and gives
finite features equal to the official architecture's (a functional forward pass over the official
keys, or torchvision's VideoResNet where the paper uses it); a wrong, a missing and a misshapen key
are each named.

The layouts come from the manifests in tests/fixtures/checkpoints/ (every key and shape the
official script saves; how each was derived: that folder's README.md). Every file is written here
with random values, so nothing is downloaded. Tensors that loading drops are written as expanded
zeros (one stored element each), so a file costs only its encoder's size."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.models.video as tv_video
from torchvision.models.video.resnet import (
    BasicBlock,
    Conv2Plus1D,
    R2Plus1dStem,
    VideoResNet,
)

from backbones import CheckpointMismatch, create_backbone, load_external
from backbones.checkpoints import CheckpointFormat, get_format
from core.data.encoder_input import EncoderTraining, InputConvention

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"
DOCS = Path(__file__).parent.parent / "docs" / "methods"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))
PAPERS = ("iic", "mlfo", "dclr", "mscl")

#: what stands in front of the encoder's own module names in each format's files
WRAPPER = {"iic": "", "mlfo": "backbone.", "dclr": "module.encoder_q.", "mscl": "recognizer.encoder_q."}

#: a few official keys and the vsbench key each must land on, written out by hand from the two
#: architectures (independent of the format's rules)
ANCHORS = {
    "iic_c3d": {"conv1.bias": "stem.conv1.conv.bias", "conv3b.weight": "layer2.conv3b.conv.weight",
                "bn5a.running_var": "layer4.conv5a.bn.running_var"},
    "iic_r3d": {"conv1.temporal_spatial_conv.weight": "stem.0.weight", "bn1.running_mean": "stem.1.running_mean",
                "conv2.block1.conv1.temporal_spatial_conv.weight": "layer1.0.conv1.0.weight",
                "conv3.block1.downsampleconv.temporal_spatial_conv.weight": "layer2.0.downsample.0.weight",
                "conv5.block1.bn2.num_batches_tracked": "layer4.0.conv2.1.num_batches_tracked"},
    "iic_r21d": {"conv1.temporal_conv.weight": "stem.3.weight", "bn1.weight": "stem.4.weight",
                 "conv4.block1.conv2.temporal_conv.weight": "layer3.0.conv2.0.3.weight",
                 "conv4.block1.conv1.bn.running_var": "layer3.0.conv1.0.1.running_var",
                 "conv4.block1.downsampleconv.bn.bias": "layer3.0.downsample.1.bias",
                 "conv4.block1.downsamplebn.weight": "layer3.0.downsample.4.weight"},
    "mlfo_r3d18": {"backbone.conv1.weight": "stem.0.weight", "backbone.layer3.1.bn2.bias": "layer3.1.conv2.1.bias",
                   "backbone.layer4.0.downsample.0.weight": "layer4.0.downsample.0.weight"},
    "dclr_r2plus1d": {"module.encoder_q.stem.3.weight": "stem.3.weight",
                      "module.encoder_q.layer2.0.conv1.0.3.weight": "layer2.0.conv1.0.3.weight"},
    "dclr_r3d18": {"module.encoder_q.layer4.1.conv2.0.weight": "layer4.1.conv2.0.weight"},
    "mscl_r3d18": {"recognizer.encoder_q.stem.0.weight": "stem.0.weight",
                   "recognizer.encoder_q.layer2.0.downsample.1.num_batches_tracked": "layer2.0.downsample.1.num_batches_tracked"},
}


# --------------------------------------------------------------------------------------------
# The official forward passes, written from the official model files as functions of the official
# state dict (its key names), so a mis-mapped tensor or an architecture that computes something else
# (padding, strides, shortcut, pooling) gives other features than the loaded vsbench backbone.


def _bn(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=1e-5)


def _conv(x, sd, p, stride=1, padding=0):
    return F.conv3d(x, sd[f"{p}.weight"], sd.get(f"{p}.bias"), stride=stride, padding=padding)


def iic_c3d_forward(sd, x):
    """models/c3d.py C3D.forward: conv-bn-relu, pool1 (1,2,2), pool2..pool4 (2,2,2), pool5 = mean."""
    pools = {"1": (1, 2, 2), "2": (2, 2, 2), "3b": (2, 2, 2), "4b": (2, 2, 2)}
    for n in ("1", "2", "3a", "3b", "4a", "4b", "5a", "5b"):
        x = F.relu(_bn(_conv(x, sd, f"conv{n}", padding=1), sd, f"bn{n}"))
        if n in pools:
            x = F.max_pool3d(x, pools[n], pools[n])
    return x.mean((2, 3, 4))


def _iic_resnet_forward(sd, x, conv):
    """models/r3d.py / r21d.py R3DNet/R2Plus1DNet((1,1,1,1)).forward with ``conv(x, prefix, stride, padding)``."""
    x = F.relu(_bn(conv(x, "conv1", (1, 2, 2), (1, 3, 3)), sd, "bn1"))
    for n in (2, 3, 4, 5):
        b, stride = f"conv{n}.block1", 1 if n == 2 else 2
        res = F.relu(_bn(conv(x, f"{b}.conv1", stride, 1), sd, f"{b}.bn1"))
        res = _bn(conv(res, f"{b}.conv2", 1, 1), sd, f"{b}.bn2")
        if n > 2:
            x = _bn(conv(x, f"{b}.downsampleconv", stride, 0), sd, f"{b}.downsamplebn")
        x = F.relu(x + res)
    return x.mean((2, 3, 4))


def _triple(v):
    return (v, v, v) if isinstance(v, int) else tuple(v)


def iic_r3d_forward(sd, x):
    return _iic_resnet_forward(sd, x, lambda x, p, s, pad: _conv(x, sd, f"{p}.temporal_spatial_conv", s, pad))


def iic_r21d_forward(sd, x):
    def conv(x, p, stride, padding):  # SpatioTemporalConv: spatial (1,k,k) -> bn -> relu -> temporal (k,1,1)
        (st, sh, sw), (pt, ph, pw) = _triple(stride), _triple(padding)
        x = F.relu(_bn(_conv(x, sd, f"{p}.spatial_conv", (1, sh, sw), (0, ph, pw)), sd, f"{p}.bn"))
        return _conv(x, sd, f"{p}.temporal_conv", (st, 1, 1), (pt, 0, 0))
    return _iic_resnet_forward(sd, x, conv)


def mlfo_forward(sd, x):
    """r3d.py ResNet.forward up to layer4 (conv1 7x7x7, max-pool, BasicBlocks, shortcut "B"), then
    its AdaptiveAvgPool3d((2, 1, 1)) and the mean of the two time steps."""
    x = F.relu(_bn(_conv(x, sd, "backbone.conv1", (1, 2, 2), 3), sd, "backbone.bn1"))
    x = F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    for layer in (1, 2, 3, 4):
        for i in (0, 1):
            b, stride = f"backbone.layer{layer}.{i}", 2 if layer > 1 and i == 0 else 1
            out = F.relu(_bn(_conv(x, sd, f"{b}.conv1", stride, 1), sd, f"{b}.bn1"))
            out = _bn(_conv(out, sd, f"{b}.conv2", 1, 1), sd, f"{b}.bn2")
            if f"{b}.downsample.0.weight" in sd:
                x = _bn(_conv(x, sd, f"{b}.downsample.0", stride), sd, f"{b}.downsample.1")
            x = F.relu(out + x)
    return F.adaptive_avg_pool3d(x, (2, 1, 1)).flatten(2).mean(2)


def torchvision_forward(build, wrapper):
    """DCLR's view_resnet and MSCL's torchvision backbone are torchvision's VideoResNet."""
    def forward(sd, x):
        reference = build().eval()
        reference.fc = torch.nn.Identity()
        reference.load_state_dict({k.removeprefix(wrapper): v for k, v in sd.items() if k.startswith(wrapper)
                                   and not re.match(r"f(vv|vs|vd|sv|dv)\.", k.removeprefix(wrapper))}, strict=True)
        return reference(x)
    return forward


def r2plus1d_view_resnet():
    return VideoResNet(BasicBlock, [Conv2Plus1D] * 4, [1, 1, 1, 1], R2Plus1dStem)


OFFICIAL_FORWARD = {
    "iic_c3d": iic_c3d_forward,
    "iic_r3d": iic_r3d_forward,
    "iic_r21d": iic_r21d_forward,
    "mlfo_r3d18": mlfo_forward,
    "dclr_r2plus1d": torchvision_forward(r2plus1d_view_resnet, WRAPPER["dclr"]),
    "dclr_r3d18": torchvision_forward(tv_video.r3d_18, WRAPPER["dclr"]),
    "mscl_r3d18": torchvision_forward(tv_video.r3d_18, WRAPPER["mscl"]),
}


def manifest(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def entries(m: dict):
    """(official key, shape, dtype) for every entry of the manifest, in the saved order."""
    for key, shape, *dtype in m["keys"]:
        yield key, tuple(shape), torch.int64 if dtype == ["int64"] else torch.float32


def in_backbone(m: dict, key: str) -> bool:
    return not any(key.startswith(p) for p in m["not_backbone"])


def expected_name(fmt: CheckpointFormat, backbone: str, key: str) -> str | None:
    """The vsbench name of an official key by the format's rules (steps 2-5 of backbones.checkpoints,
    written out again here); None when the format drops it."""
    for wrapper in fmt.strip:
        key = key.removeprefix(wrapper)
    if fmt.drop and re.fullmatch(fmt.drop, key):
        return None
    key = key.removeprefix(fmt.prefix) if fmt.prefix else key
    for pattern, replacement in fmt.rules(backbone):
        if match := re.fullmatch(pattern, key):
            return match.expand(replacement)
    return key


def random_tensor(key: str, shape: tuple, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Distinct values everywhere (so a tensor loaded into the wrong place shows), at scales that
    keep a forward pass finite: He-uniform weights, positive BN scales and variances."""
    if dtype == torch.int64:
        return torch.randint(0, 10_000, shape, generator=g)
    if len(shape) >= 2:
        return (torch.rand(shape, generator=g) * 2 - 1) * math.sqrt(6 / math.prod(shape[1:]))
    if key.endswith(("running_var", ".weight")):
        return torch.rand(shape, generator=g) + 0.5
    return (torch.rand(shape, generator=g) - 0.5) * 0.2


def stored_zero(shape: tuple, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.zeros((), dtype=dtype).expand(shape)


def other_entry(spec: dict, namespace: bool):
    """A stand-in of the right type for a top-level entry beside the state dict."""
    kind = spec["type"]
    if kind == "int":
        return 240
    if kind == "str":
        return spec.get("value", "")
    if kind == "dict":
        return {k: f"<{k}>" for k in spec["keys"]}
    if kind == "optimizer":
        return {"state": {0: {"momentum_buffer": torch.zeros(2)}},
                "param_groups": [{"lr": 0.01, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4, "nesterov": False,
                                  "params": [0]}]}
    if kind == "state_dict":
        return {k: stored_zero(tuple(shape)) for k, shape in spec["keys"]}
    if kind == "argparse.Namespace":  # IIC's 'opt'; a plain dict unless the real type is asked for (see the xfail below)
        return argparse.Namespace(model="r3d", modality="res") if namespace else {"model": "r3d", "modality": "res"}
    raise AssertionError(f"unknown top-level entry type {kind!r}")


def write_official(m: dict, path: Path, *, real: bool = True, namespace: bool = False, edit=None) -> dict[str, torch.Tensor]:
    """Write a file in the manifest's layout; return its state dict. ``real``: random values for the
    encoder's tensors (else stored zeros everywhere); ``edit`` changes the state dict before saving."""
    g = torch.Generator().manual_seed(0)
    state = {key: random_tensor(key, shape, dtype, g) if real and in_backbone(m, key) else stored_zero(shape, dtype)
             for key, shape, dtype in entries(m)}
    if edit is not None:
        edit(state)
    container = m["container"]
    obj = state if container is None else {
        container["key"]: state, **{k: other_entry(spec, namespace) for k, spec in container["others"].items()}}
    torch.save(obj, path, _use_new_zipfile_serialization=m["serialization"].startswith("zip"))
    return state


def on_meta(backbone: str) -> torch.nn.Module:
    """The backbone without weights: enough for the key and shape checks, which fail before loading."""
    with torch.device("meta"):
        return create_backbone(backbone)


# --------------------------------------------------------------------------------------------
# The manifests and the formats describe the same files


def test_every_paper_has_a_format_and_every_format_backbone_a_manifest():
    by_format = {}
    for name in NAMES:
        m = manifest(name)
        assert name.startswith(m["format"] + "_") and m["backbone"] in get_format(m["format"]).backbones
        by_format.setdefault(m["format"], set()).add(m["backbone"])
    assert set(by_format) == set(PAPERS)
    for paper in PAPERS:
        assert set(get_format(paper).backbones) == by_format[paper]


@pytest.mark.parametrize("paper, convention, stride", [
    ("iic", InputConvention(modality="rgb", value_range=(0.0, 1.0), normalize=False), 1),  # ToTensor, no Normalize
    ("mlfo", InputConvention(modality="rgb", value_range=(0.0, 1.0), normalize=True, stats="imagenet"), 1),
    ("dclr", InputConvention(modality="rgb", value_range=(0.0, 1.0), normalize=True, stats="imagenet"), 2),
    ("mscl", InputConvention(modality="rgb", value_range=(0.0, 1.0), normalize=True, stats="imagenet"), 16),
])
def test_each_paper_format_says_how_its_encoder_was_fed_and_cites_the_documented_commit(paper, convention, stride):
    fmt = get_format(paper)
    assert fmt.input == convention and fmt.stride == stride
    assert fmt.training() == EncoderTraining(stride=stride, input=convention)
    [commit] = set(re.findall(r"\b[0-9a-f]{40}\b", (DOCS / f"{paper}.md").read_text()))
    assert f"@{commit}" in fmt.source
    assert all(f"@{commit}" in manifest(n)["source"] for n in NAMES if n.startswith(paper + "_"))


@pytest.mark.parametrize("name, reference", [
    ("dclr_r3d18", tv_video.r3d_18),
    ("mscl_r3d18", tv_video.r3d_18),
    ("dclr_r2plus1d", r2plus1d_view_resnet),  # view_resnet.r2plus1d_18: torchvision's R(2+1)D parts, one block per stage
])
def test_torchvision_layout_encoders_in_the_manifests_are_torchvisions(name, reference):
    """DCLR's view_resnet and MSCL's torchvision backbone keep torchvision's names: the manifests'
    encoder entries are torchvision's state dict without fc, in its order and shapes."""
    m = manifest(name)
    ours = [(k.removeprefix(WRAPPER[m["format"]]), s) for k, s, _ in entries(m) if in_backbone(m, k)]
    with torch.device("meta"):
        theirs = [(k, tuple(v.shape)) for k, v in reference().state_dict().items() if not k.startswith("fc.")]
    assert ours == theirs


# --------------------------------------------------------------------------------------------
# A file in the official layout, loaded


@pytest.mark.parametrize("name", NAMES)
def test_an_official_file_loads_key_for_key_drops_the_heads_and_gives_features(tmp_path, name):
    m = manifest(name)
    fmt, backbone = get_format(m["format"]), m["backbone"]
    path = tmp_path / f"{name}.pth"
    state = write_official(m, path)

    mapping = {key: expected_name(fmt, backbone, key) for key in state}
    kept = {k: v for k, v in mapping.items() if v is not None}
    model, report = load_external(path, m["format"], backbone)
    ours = model.state_dict()

    # (a) a bijection between the official encoder keys and the backbone's, with the official values
    assert len(set(kept.values())) == len(kept) == len(ours) == report.loaded
    assert set(kept.values()) == set(ours)
    assert all(in_backbone(m, k) for k in kept)
    wrong = [f"{k} -> {v}" for k, v in kept.items() if not torch.equal(ours[v], state[k])]
    assert not wrong, wrong
    for official, mine in ANCHORS[name].items():
        assert mapping[official] == mine and torch.equal(ours[mine], state[official])

    # (b) dropped: exactly the heads, key encoders, queues (in the file's order)
    expected_dropped = [k for k in state if not in_backbone(m, k)]
    assert report.dropped == expected_dropped == [k for k, v in mapping.items() if v is None]
    assert report.format == m["format"] and report.backbone == backbone

    # (c) finite features of the backbone's width, (d) the official architecture's features
    x = torch.rand(2, 3, 8, 32, 32)
    with torch.no_grad():
        features = model.eval()(x)
        official = OFFICIAL_FORWARD[name](state, x)
    assert features.shape == (2, model.feature_dim) == (2, 512)
    assert torch.isfinite(features).all() and features.abs().sum() > 0
    torch.testing.assert_close(features, official, rtol=1e-4, atol=1e-5)


def _named(key: str, in_file: str) -> str:
    """How an error names a key: vsbench's name, and the file's when it differs."""
    return key if key == in_file else f"{key} (in the file: {in_file})"


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_a_missing_and_a_misshapen_key_are_each_named(tmp_path, name):
    m = manifest(name)
    fmt, backbone = get_format(m["format"]), m["backbone"]
    encoder = [(k, s) for k, s, _ in entries(m) if in_backbone(m, k)]

    unknown = WRAPPER[m["format"]] + "extra_unknown.weight"
    path = tmp_path / "unknown.pth"
    write_official(m, path, real=False, edit=lambda s: s.__setitem__(unknown, torch.zeros(3)))
    with pytest.raises(CheckpointMismatch, match=rf"unused keys \(not in the backbone\): {re.escape(_named('extra_unknown.weight', unknown))}$"):
        load_external(path, m["format"], backbone, create=on_meta)

    gone = [k for k, _ in encoder if k.endswith(".weight")][-1]
    path = tmp_path / "missing.pth"
    write_official(m, path, real=False, edit=lambda s: s.pop(gone))
    with pytest.raises(CheckpointMismatch, match=rf"missing keys \(the backbone needs them\): "
                                                 rf"{re.escape(expected_name(fmt, backbone, gone))}$"):
        load_external(path, m["format"], backbone, create=on_meta)

    key, shape = next((k, s) for k, s in encoder if len(s) >= 2)
    bad = (shape[0] + 1, *shape[1:])
    path = tmp_path / "shape.pth"
    write_official(m, path, real=False, edit=lambda s: s.__setitem__(key, stored_zero(bad)))
    with pytest.raises(CheckpointMismatch, match=rf"shape mismatches: {re.escape(_named(expected_name(fmt, backbone, key), key))}: "
                                                 rf"checkpoint {re.escape(str(bad))}, backbone {re.escape(str(shape))}$"):
        load_external(path, m["format"], backbone, create=on_meta)


def test_an_iic_fine_tuned_file_drops_its_classifier(tmp_path):
    """ft_classify.py saves {'model': ...} of the backbone built with_classifier=True: + linear."""
    m = manifest("iic_r3d")
    path = tmp_path / "model_ft.pt"
    head = {"linear.weight": stored_zero((101, 512)), "linear.bias": stored_zero((101,))}
    torch.save({"model": {**{k: stored_zero(s, d) for k, s, d in entries(m)}, **head}}, path)
    model, report = load_external(path, "iic", "r3d_vcop")
    assert report.dropped == list(head) and report.loaded == len(model.state_dict()) == len(m["keys"])


def test_a_dclr_file_is_refused_for_vsbenchs_two_block_r2plus1d_18(tmp_path):
    """view_resnet's "r2plus1d_18" has one block per stage: vsbench's r2plus1d_10, not r2plus1d_18."""
    m = manifest("dclr_r2plus1d")
    path = tmp_path / "checkpoint_0199.pth.tar"
    write_official(m, path, real=False)
    with pytest.raises(CheckpointMismatch, match=r"format 'dclr' describes backbones r2plus1d_10, r3d_18, not 'r2plus1d_18'"):
        load_external(path, "dclr", "r2plus1d_18", create=on_meta)


def test_an_iic_file_with_its_argparse_namespace_loads(tmp_path):
    m = manifest("iic_r3d")
    path = tmp_path / "ckpt_epoch_240.pth"
    write_official(m, path, real=False, namespace=True)
    load_external(path, "iic", "r3d_vcop")
