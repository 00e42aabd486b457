"""The `vsbench data` commands end to end, on real MotionShapes files."""

import subprocess
import sys

import pandas as pd
import pytest

from harness.cli import main
from core.data.datasets import load_ucf101
from core.data.modalities import read_flow
from core.data.synthetic import CLASS_NAMES
from tests.helpers import truncate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "motionshapes-tiny"
    assert main(["data", "synth", "--preset", "tiny", "--out", str(out), "--workers", "2"]) == 0
    return out


def test_motionshapes_reads_back_through_the_ucf101_reader(tiny):
    meta = pd.read_csv(tiny / "motionshapes_meta.csv")
    for subset in ("train", "test"):
        ds = load_ucf101(tiny, split=1, subset=subset, progress=False)
        assert ds.classes == list(CLASS_NAMES)
        expected = meta[meta.split1 == subset]
        assert sorted((r.key + ".avi", r.label) for r in ds.records) == sorted(zip(expected.path, expected.label))
        assert all(r.ok and r.num_frames == n for r, n in zip(sorted(ds.records, key=lambda r: r.key), expected.sort_values("path").frames))


def test_data_check_prints_the_table(tiny, capsys):
    assert main(["data", "check", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "split1/train" in out and "split3/test" in out and "OscillateVertical" in out
    assert "Corrupt videos: 0" in out and "Too-short videos: 0" in out


def test_data_flow_builds_a_readable_cache(tiny, capsys):
    assert main(["data", "flow", str(tiny), "--workers", "2"]) == 0
    assert "48 videos computed" in capsys.readouterr().out
    flow = read_flow(tiny / "flow", "v_MoveUp_g01_c01", [0, 1, 2])
    assert flow.shape == (3, 64, 86, 2)
    assert main(["data", "flow", str(tiny), "--workers", "2"]) == 0  # resumed: nothing left to do
    assert "0 videos computed, 48 already present" in capsys.readouterr().out


def test_data_check_names_corrupt_videos(tmp_path, capsys):
    out = tmp_path / "ms"
    main(["data", "synth", "--preset", "tiny", "--out", str(out), "--workers", "1", "--classes", "2"])
    bad = out / "UCF-101" / "MoveUp" / "v_MoveUp_g02_c01.avi"
    truncate(bad, 0.6)
    assert main(["data", "check", str(out), "--split", "1"]) == 1
    report = capsys.readouterr().out
    assert "Corrupt videos: 1" in report and str(bad) in report


def test_a_bad_split_file_is_one_line_naming_file_and_line(tmp_path, capsys):
    out = tmp_path / "ms"
    main(["data", "synth", "--preset", "tiny", "--out", str(out), "--workers", "1", "--classes", "2"])
    with open(out / "ucfTrainTestlist" / "trainlist01.txt", "a") as f:
        f.write("Juggling/v_Juggling_g01_c01.avi 3\n")
    assert main(["data", "check", str(out)]) == 2
    err = capsys.readouterr().err
    assert "trainlist01.txt:" in err and "unknown class 'Juggling'" in err


def test_unknown_preset_lists_the_valid_ones(tmp_path, capsys):
    assert main(["data", "synth", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert "choose one of tiny, small, bench, standard" in capsys.readouterr().err


def test_console_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "harness.cli", "data", "synth", "--help"], capture_output=True, text=True, check=True)
    assert "MotionShapes" in out.stdout and "--preset" in out.stdout
