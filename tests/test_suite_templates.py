"""The GPU suite templates for the real data sets (benchmarks/suites/ssv2.toml, diving48.toml,
k400.toml) parse and say what README.md's "Running on the real data sets" promises. Parsing only:
no data, no training."""

from pathlib import Path

import pytest

from harness.suite import eval_config, load_suite

SUITES = Path(__file__).resolve().parents[1] / "benchmarks" / "suites"

# suite file -> (data path, format, low_shot)
TEMPLATES = {
    "ssv2.toml": ("data/something-something-v2", "ssv2", [1000]),
    "diving48.toml": ("data/Diving48", "diving48", [1000]),
    "k400.toml": ("data/kinetics400", "kinetics", []),
}


@pytest.mark.parametrize("file", sorted(TEMPLATES))
def test_template_pretrains_every_method_with_three_seeds_and_both_references(file):
    path, fmt, _ = TEMPLATES[file]
    suite = load_suite(SUITES / file)
    assert suite.name == Path(file).stem
    assert (suite.data.path, suite.data.format) == (path, fmt)
    assert suite.seeds == [0, 1, 2]
    assert suite.methods is None  # every registered method
    assert suite.backbones == ["r3d_18"]
    assert suite.references == ["random init", "supervised"]
    assert {k: suite.pretrain[k] for k in ("device", "amp", "channels_last")} == {"device": "cuda", "amp": True, "channels_last": True}
    # each paper's input (16x112x112, MSCL 8x112x112) is its method's default: no suite-wide override
    assert not {"frames", "crop"} & set(suite.pretrain.get("method_args", {}))
    assert (suite.slurm.gpus_per_node, suite.slurm.time_min) == (8, 1440)


@pytest.mark.parametrize("file", sorted(TEMPLATES))
def test_template_runs_the_four_protocols_at_one_stride_for_every_encoder(file):
    evaluation = eval_config(load_suite(SUITES / file))
    assert evaluation.protocols == ["retrieval", "linear", "knn", "finetune"]
    # a fixed stride: at each encoder's training stride (MSCL's 16) the short test videos would stop the evaluation
    assert evaluation.features.stride is not None and evaluation.finetune.stride == evaluation.features.stride
    assert (evaluation.features.frames, evaluation.features.crop, evaluation.features.clips) == (16, 112, 10)


@pytest.mark.parametrize("file", sorted(TEMPLATES))
def test_low_shot_rows_on_ssv2_and_diving48_not_on_kinetics(file):
    _, _, low_shot = TEMPLATES[file]
    suite = load_suite(SUITES / file)
    assert suite.low_shot == low_shot
    assert eval_config(suite).finetune.train_videos is None  # the ordinary fine-tune rows use the whole train list


def test_ssv2_fine_tuning_does_not_flip_mirror_image_classes():
    # "Pushing something from left to right" flipped is "... from right to left"
    assert eval_config(load_suite(SUITES / "ssv2.toml")).finetune.flip is False


def test_kinetics_skips_missing_videos_and_keeps_its_flow_outside_the_walked_folder():
    suite = load_suite(SUITES / "k400.toml")
    assert suite.data.missing == "skip"
    assert suite.data.flow_root and not Path(suite.data.flow_root).is_relative_to(suite.data.path)
