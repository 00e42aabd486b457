"""Official split files, CSV lists, the frame-count index, and errors that name file and line."""

import json
import os

import pytest

from core.data.datasets import DatasetError, load_csv, load_hmdb51, load_ucf101, open_dataset
from core.data.video import write_video
from tests.helpers import level_frames, truncate, write_ucf_like


@pytest.fixture
def ucf(tmp_path):
    return write_ucf_like(tmp_path / "ucf", {"ApplyLipstick": 3, "Archery": 2, "Basketball": 2})


def test_ucf101_official_files(ucf):
    train = load_ucf101(ucf, split=1, subset="train", progress=False)
    test = load_ucf101(ucf, split=1, subset="test", progress=False)
    assert train.classes == ["ApplyLipstick", "Archery", "Basketball"]
    assert [(r.key, r.label) for r in test.records] == [
        ("ApplyLipstick/v_ApplyLipstick_g01_c01", 0),
        ("Archery/v_Archery_g01_c01", 1),
        ("Basketball/v_Basketball_g01_c01", 2),
    ]
    assert sorted(r.label for r in train.records) == [0, 0, 1, 2]
    # frame counts are verified from the files: group g has 24 + g frames
    assert {r.key: r.num_frames for r in train.records}["ApplyLipstick/v_ApplyLipstick_g03_c01"] == 27
    assert len(load_ucf101(ucf, split=2, subset="all", progress=False)) == 7


@pytest.mark.parametrize(
    "file,line,message",
    [
        ("trainlist01.txt", "Archery/v_Archery_g02_c01.avi x", "trainlist01.txt:1: expected"),
        ("trainlist01.txt", "Bowling/v_Bowling_g02_c01.avi 3", "trainlist01.txt:1: unknown class 'Bowling'"),
        ("trainlist01.txt", "Archery/v_Archery_g02_c01.avi 3", "trainlist01.txt:1: label 3 does not match class Archery"),
        ("trainlist01.txt", "Archery/v_Archery_g09_c01.avi 2", "trainlist01.txt:1: video 'Archery/v_Archery_g09_c01.avi' not found"),
        ("classInd.txt", "1 ApplyLipstick\n3 Archery", "classInd.txt: class indices must run 1..2"),
        ("classInd.txt", "1 Apply Lipstick", "classInd.txt:1: expected '<index> <ClassName>'"),
    ],
)
def test_ucf101_errors_name_file_and_line(ucf, file, line, message):
    (ucf / "ucfTrainTestlist" / file).write_text(line + "\n")
    with pytest.raises(DatasetError, match=message):
        load_ucf101(ucf, subset="train", progress=False)


def test_hmdb51_official_split_files(tmp_path):
    root = tmp_path / "hmdb"
    ann = root / "testTrainMulti_7030_splits"
    ann.mkdir(parents=True)
    for cls, marks in {"brush_hair": "1201", "cartwheel": "2110"}.items():
        (root / "videos" / cls).mkdir(parents=True)
        lines = []
        for i, mark in enumerate(marks):
            write_video(root / "videos" / cls / f"{cls}_{i}.avi", level_frames(20))
            lines.append(f"{cls}_{i}.avi {mark} ")
        (ann / f"{cls}_test_split1.txt").write_text("\n".join(lines) + "\n")
    train = load_hmdb51(root, split=1, subset="train", progress=False)
    test = load_hmdb51(root, split=1, subset="test", progress=False)
    assert train.classes == ["brush_hair", "cartwheel"]
    assert sorted(r.key for r in train.records) == ["brush_hair/brush_hair_0", "brush_hair/brush_hair_3", "cartwheel/cartwheel_1", "cartwheel/cartwheel_2"]
    assert [(r.key, r.label) for r in test.records] == [("brush_hair/brush_hair_1", 0), ("cartwheel/cartwheel_0", 1)]
    assert open_dataset(root, subset="test", progress=False).name == "hmdb51"
    (ann / "cartwheel_test_split1.txt").write_text("cartwheel_0.avi 7\n")
    with pytest.raises(DatasetError, match=r"cartwheel_test_split1.txt:1: expected '<video>.avi <0\|1\|2>'"):
        load_hmdb51(root, progress=False)


def test_hmdb51_classes_are_numbered_by_sorted_class_name_not_file_name(tmp_path):
    # file names sort "climb_stairs_test_split1.txt" before "climb_test_split1.txt" ('_' < 't'); class names do not
    root = tmp_path / "hmdb"
    ann = root / "testTrainMulti_7030_splits"
    ann.mkdir(parents=True)
    names = ["sword_exercise", "kick", "climb_stairs", "sword", "kick_ball", "climb"]
    for cls in names:
        (root / "videos" / cls).mkdir(parents=True)
        write_video(root / "videos" / cls / f"{cls}_0.avi", level_frames(12))
        (ann / f"{cls}_test_split1.txt").write_text(f"{cls}_0.avi 1\n")
    expected = ["climb", "climb_stairs", "kick", "kick_ball", "sword", "sword_exercise"]
    for _ in range(2):  # the second load reads the frame-count index the first one wrote
        ds = load_hmdb51(root, split=1, subset="train", progress=False)
        assert ds.classes == expected
        assert sorted((r.key, r.label) for r in ds.records) == [(f"{c}/{c}_0", i) for i, c in enumerate(expected)]
        assert all(r.num_frames == 12 for r in ds.records)
    # the index holds frame counts only, no labels, so an index written under the old class order cannot keep old labels
    entries = json.loads((root / "videos" / "vsbench_index.json").read_text())["entries"]
    assert len(entries) == 6 and all(set(e) == {"stamp", "num_frames", "height", "width", "error"} for e in entries.values())


def _videos(root, names, frames=18):
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        write_video(root / name, level_frames(frames))


def test_kinetics_style_csv(tmp_path):
    _videos(tmp_path, ["a.avi", "b.avi", "c.avi"])
    (tmp_path / "k.csv").write_text("a.avi,abseiling\nb.avi,18,zumba\nc.avi,abseiling\n")
    ds = load_csv(tmp_path / "k.csv", progress=False)
    assert ds.classes == ["abseiling", "zumba"]
    assert [(r.key, r.label, r.num_frames) for r in ds.records] == [("a", 0, 18), ("b", 1, 18), ("c", 0, 18)]
    (tmp_path / "bad.csv").write_text("a.avi,abseiling\nb.avi,many,zumba\n")
    with pytest.raises(DatasetError, match="bad.csv:2: num_frames must be an integer"):
        load_csv(tmp_path / "bad.csv", progress=False)


def test_generic_csv_with_header_and_split(tmp_path):
    _videos(tmp_path / "v", ["a.avi", "b.avi", "c.avi"])
    (tmp_path / "list.csv").write_text("path,label,split\nv/a.avi,1,train\nv/b.avi,0,test\nv/c.avi,1,train\n")
    train = load_csv(tmp_path / "list.csv", subset="train", progress=False)
    assert [(r.key, r.label) for r in train.records] == [("v/a", 1), ("v/c", 1)]
    assert train.classes == ["0", "1"]
    (tmp_path / "list.csv").write_text("path,label\nv/a.avi,1\nv/missing.avi,0\n")
    with pytest.raises(DatasetError, match="list.csv:3: video 'v/missing.avi' not found"):
        load_csv(tmp_path / "list.csv", progress=False)


def test_frame_counts_are_cached_and_rebuilt_when_files_change(ucf):
    load_ucf101(ucf, progress=False)
    index = ucf / "UCF-101" / "vsbench_index.json"
    entries = json.loads(index.read_text())["entries"]
    assert entries["Archery/v_Archery_g02_c01.avi"]["num_frames"] == 26
    stamp = index.stat().st_mtime_ns
    load_ucf101(ucf, progress=False)
    assert index.stat().st_mtime_ns == stamp  # nothing changed, nothing re-probed or rewritten
    video = ucf / "UCF-101" / "Archery" / "v_Archery_g02_c01.avi"
    write_video(video, level_frames(40))
    os.utime(video, ns=(stamp + 10**9, stamp + 10**9))
    ds = load_ucf101(ucf, progress=False)
    assert {r.key: r.num_frames for r in ds.records}["Archery/v_Archery_g02_c01"] == 40


def test_corrupt_videos_stay_listed_with_their_reason(ucf):
    truncate(ucf / "UCF-101" / "Archery" / "v_Archery_g02_c01.avi", 0.4)
    ds = load_ucf101(ucf, progress=False)
    [bad] = ds.corrupt
    assert bad.key == "Archery/v_Archery_g02_c01"
    assert "header claims 26 frames" in bad.error or "cannot be opened" in bad.error
    assert len(ds) == 4


def test_fingerprint_changes_with_content(ucf):
    a = load_ucf101(ucf, progress=False).fingerprint()
    assert a == load_ucf101(ucf, progress=False).fingerprint()
    assert a != load_ucf101(ucf, split=1, subset="test", progress=False).fingerprint()


def test_unknown_format_is_reported(tmp_path):
    with pytest.raises(DatasetError, match="cannot tell the data set format"):
        open_dataset(tmp_path)
