"""Each encoder is fed as it was trained: the input convention a method declares reaches
encoder.pt, the run's params, and every protocol (features, probes, fine-tuning)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from mlflow.tracking import MlflowClient

from backbones import create_backbone
from evaluation.features import extract_features
from evaluation.finetune import classifier_training, finetune_config
from evaluation.probes import probe_clips
from evaluation.protocols import EncoderTraining, FeatureProtocol, FinetuneProtocol, resolve
from harness.cli import main
from core.config import ConfigError, DataConfig, PretrainConfig
from core.data.datasets import open_dataset
from core.data.encoder_input import InputConvention, to_encoder_input
from harness.train import Pretraining, load_checkpoint, pretrain, save_checkpoint
from methods.base import create_method

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics, as torchvision's models use
IIC_INPUT = InputConvention("rgb", (0.0, 1.0), normalize=False)


def _clip() -> torch.Tensor:
    """(1, 3, 3, 1, 1): three frames of one pixel, channel c of frame t = 0.1 * (t + 1) + 0.2 * c."""
    t = torch.arange(3, dtype=torch.float32).view(1, 1, 3, 1, 1)
    c = torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1, 1)
    return 0.1 * (t + 1) + 0.2 * c


def test_the_convention_is_applied_in_its_order_modality_range_normalisation():
    x = _clip()
    red = [0.1, 0.2, 0.3]  # channel 0 over the three frames
    normalised = to_encoder_input(x, InputConvention())
    assert normalised[0, 0, :, 0, 0].tolist() == pytest.approx([(v - MEAN[0]) / STD[0] for v in red], abs=1e-6)
    assert torch.equal(to_encoder_input(x, IIC_INPUT), x)  # IIC: the [0, 1] frames as they are
    scaled = to_encoder_input(x, InputConvention(value_range=(0.0, 255.0), normalize=False))
    assert scaled[0, 0, :, 0, 0].tolist() == pytest.approx([25.5, 51.0, 76.5], abs=1e-4)
    # residual (IIC): (x_t - x_{t-1} + 1) / 2 with frame 0 wrapping to x_0 - x_2
    residual = to_encoder_input(x, InputConvention("residual", normalize=False))
    assert residual[0, 0, :, 0, 0].tolist() == pytest.approx([(0.1 - 0.3 + 1) / 2, (0.2 - 0.1 + 1) / 2, (0.3 - 0.2 + 1) / 2], abs=1e-6)
    with pytest.raises(ValueError, match="never ImageNet-normalised"):
        InputConvention("flow", normalize=True)
    with pytest.raises(ValueError, match="high > low"):
        InputConvention(value_range=(1.0, 0.0))


@pytest.mark.parametrize("method, normalize", [("iic", False), ("moco", True), ("mlfo", True), ("dclr", True), ("mscl", True)])
def test_each_method_declares_what_its_encoder_eats(method, normalize):
    """IIC's train_ssl.py stops its transforms at ToTensor ([0, 1], no Normalize); the other four
    papers normalise RGB with ImageNet statistics."""
    m = create_method(method, create_backbone("r3d_tiny"), dataset_size=64, overrides={"frames": 8, "crop": 32})
    assert m.encoder_input() == InputConvention("rgb", (0.0, 1.0), normalize)


def test_protocol_fields_left_none_follow_the_encoder_and_explicit_ones_win():
    iic = EncoderTraining(stride=2, input=IIC_INPUT)
    p = FeatureProtocol()
    r = resolve(p, iic)
    assert (r.stride, r.modality, r.normalize_input, r.value_range) == (2, "rgb", False, (0.0, 1.0))
    assert resolve(dataclasses.replace(p, normalize_input=True), iic).normalize_input is True
    assert p.hash() == FeatureProtocol().hash() != r.hash()  # tables compare the unresolved protocol; the cache keys the resolved one
    with pytest.raises(ConfigError, match="features.stride, features.modality, features.normalize_input, features.value_range"):
        resolve(p, None)
    explicit = FeatureProtocol(stride=1, modality="rgb", normalize_input=True, value_range=(0.0, 1.0))
    assert resolve(explicit, None) == explicit
    with pytest.raises(ValueError, match="resolved against its encoder"):
        p.input_convention()


class _Recorder(torch.nn.Module):
    """A real backbone that keeps the batches it was given."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = create_backbone("r3d_tiny")
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.net(x)


def test_features_and_probes_feed_each_encoder_its_own_convention(motionshapes_tiny):
    test = open_dataset(motionshapes_tiny, split=1, subset="test", progress=False)
    base = FeatureProtocol(clips=1, frames=4, resize=(32, 43), crop=32)
    inputs = {}
    for name, trained in {"iic": EncoderTraining(1, IIC_INPUT), "moco": EncoderTraining(1, InputConvention())}.items():
        encoder = _Recorder()
        extract_features(encoder, test, resolve(base, trained), device="cpu", batch_size=64, workers=0, progress=False)
        inputs[name] = torch.cat(encoder.seen)
        probes = probe_clips(test, resolve(base, trained), max_videos=4)
        torch.testing.assert_close(probes, inputs[name][:4])  # the probes see what the features saw
    assert inputs["iic"].min() >= 0 and inputs["iic"].max() <= 1  # [0, 1] frames, not normalised
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1, 1), torch.tensor(STD).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(inputs["moco"], (inputs["iic"] - mean) / std)


def test_raw_concatenation_is_iics_merge_rule(motionshapes_tiny):
    test = open_dataset(motionshapes_tiny, split=1, subset="test", progress=False)
    p = resolve(FeatureProtocol(clips=1, frames=4, resize=(32, 43), crop=32), EncoderTraining(1, IIC_INPUT))
    torch.manual_seed(0)
    encoder = create_backbone("r3d_tiny")
    kw = dict(device="cpu", batch_size=64, workers=0, progress=False)
    rgb = extract_features(encoder, test, p, **kw).features
    res = extract_features(encoder, test, dataclasses.replace(p, modality="residual"), **kw).features
    concat = extract_features(encoder, test, dataclasses.replace(p, merge="residual", merge_rule="concat"), **kw).features
    torch.testing.assert_close(concat, torch.cat([rgb, res], dim=1))
    with pytest.raises(ValueError, match="merge_rule"):
        FeatureProtocol(merge_rule="sum")


def test_fine_tuning_feeds_the_classifier_as_the_encoder_was_trained(motionshapes_tiny, tmp_path):
    protocol = FinetuneProtocol(epochs=1, batch_size=8, steps_per_epoch=1, frames=4, crop=32, resize=(32, 43), test_clips=1)
    config = finetune_config(resolve(protocol, EncoderTraining(1, IIC_INPUT)), backbone="r3d_tiny", data=DataConfig(path=str(motionshapes_tiny)),
                             num_classes=12, init_encoder=None, seed=0, device="cpu", output_dir=str(tmp_path), run_name="ft")
    assert (config.method_args["modality"], config.method_args["normalize"]) == ("rgb", False)
    assert classifier_training(protocol) == EncoderTraining(1, InputConvention())  # from scratch: normalised RGB
    run = Pretraining(dataclasses.replace(config, data=DataConfig(path=str(motionshapes_tiny), workers=0), progress=False))
    seen = []
    run.method.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    run.run()
    assert seen and all(x.min() >= 0 and x.max() <= 1 for x in seen)  # [0, 1] clips, as IIC's encoder was trained


def test_encoder_file_and_params_record_the_convention_and_eval_refuses_a_file_without_it(motionshapes_tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = PretrainConfig(method="iic", backbone="r3d_tiny", data=DataConfig(path=str(motionshapes_tiny), workers=0), epochs=1,
                            batch_size=8, steps_per_epoch=1, method_args={"frames": 4, "crop": 32, "nce_k": 8}, decode_size=(32, 43),
                            device="cpu", experiment="conv", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", progress=False)
    result = pretrain(config)
    saved = load_checkpoint(result.encoder_path)
    assert saved["training"] == {"stride": 1, "input": {"modality": "rgb", "value_range": [0.0, 1.0], "normalize": False}}
    params = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result.run_id).data.params
    assert params["input.normalize"] == "False" and params["init"] == "pytorch_default"
    assert params["effective.nce_k"] == "8"  # K = 8 asked, below the cap N - 1
    del saved["training"]
    old = tmp_path / "old.pt"
    save_checkpoint(old, saved)
    code = main(["eval", str(old), "--data", str(motionshapes_tiny), "--protocols", "knn", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    assert code == 2
    assert "features.stride, features.modality, features.normalize_input, features.value_range" in capsys.readouterr().err
