"""Bad data input fails loudly and early: CSV headers and labels, overlapping or duplicated
list entries, empty subsets, too-short videos, truncated Matroska/WebM files, repeated warnings."""

import logging
import re
from pathlib import Path

import av
import pytest

from harness.cli import main
from core.data.datasets import DatasetError, load_csv, load_hmdb51, load_ucf101
from core.data.loader import ClipDataset, make_loader
from core.data.request import ClipSpec, LoadRequest
from core.data.sampling import frames_needed
from core.data.video import CorruptVideo, probe_video, read_frames, write_video
from tests.helpers import frame_level, level_frames, truncate, write_ucf_like


def _videos(root: Path, names: list[str], frames: int = 18) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        write_video(root / name, level_frames(frames))
    return root


@pytest.fixture
def abc(tmp_path):
    """Three 18-frame videos a.avi, b.avi, c.avi beside the CSV lists the tests write."""
    return _videos(tmp_path, ["a.avi", "b.avi", "c.avi"])


# ----------------------------------------------------------------------------- 1. CSV header and labels


@pytest.mark.parametrize(
    "header,message",
    [
        ("path,lable", r"lists.csv:1: unknown column\(s\) 'lable' in the header; valid columns are path, label, split, num_frames"),
        ("path,label,fold", r"lists.csv:1: unknown column\(s\) 'fold'"),
        ("file,label", r"lists.csv:1: unknown column\(s\) 'file'"),
        ("label,split", r"lists.csv:1: the header has no 'path' column; valid columns"),
        ("path,split", r"lists.csv:1: the header has a 'split' column but no 'label' column"),
        ("path,label,label", r"lists.csv:1: column\(s\) 'label' appear twice"),
    ],
)
def test_a_bad_csv_header_names_file_columns_and_the_valid_ones(abc, header, message):
    width = len(header.split(","))
    row = ",".join(["a.avi", "1", "train"][:width])
    (abc / "lists.csv").write_text(f"{header}\n{row}\n")
    with pytest.raises(DatasetError, match=message):
        load_csv(abc / "lists.csv", progress=False)


def test_unlabelled_pretraining_lists_keep_working(abc):
    (abc / "pre.csv").write_text("path,num_frames\na.avi,18\nb.avi,18\n")
    ds = load_csv(abc / "pre.csv", progress=False)
    assert [(r.key, r.label, r.num_frames) for r in ds.records] == [("a", -1, 18), ("b", -1, 18)]
    (abc / "pre.csv").write_text("path,num_frames\na.avi,lots\n")
    with pytest.raises(DatasetError, match="pre.csv:2: num_frames must be an integer, got 'lots'"):
        load_csv(abc / "pre.csv", progress=False)


@pytest.mark.parametrize(
    "rows,message",
    [
        ("a.avi,0\nb.avi,1.0\nc.avi,2\n", r"k.csv:2: label '1.0' is not an integer >= 0"),
        ("a.avi,0\nb.avi,-1\nc.avi,2\n", r"k.csv:2: label '-1' is not an integer >= 0"),
        ("a.avi,0\nb.avi,\nc.avi,2\n", r"k.csv:2: empty label"),
        ("a.avi,0\nb.avi,18,jump\nc.avi,2\n", r"k.csv:2: label 'jump' is a class name, but label '0' at line 1 is an integer; labels must be all integers or all class names"),
        ("a.avi,run\nb.avi,jump\nc.avi,10\n", r"k.csv:3: label '10' is an integer, but label 'run' at line 1 is a class name"),
    ],
)
def test_labels_are_all_integers_or_all_class_names(abc, rows, message):
    (abc / "k.csv").write_text(rows)
    with pytest.raises(DatasetError, match=message):
        load_csv(abc / "k.csv", progress=False)


def test_class_indices_come_from_every_row_whatever_the_subset(abc):
    (abc / "s.csv").write_text("path,label,split\na.avi,zumba,train\nb.avi,abseiling,test\nc.avi,zumba,test\n")
    train = load_csv(abc / "s.csv", subset="train", progress=False)
    test = load_csv(abc / "s.csv", subset="test", progress=False)
    assert train.classes == test.classes == ["abseiling", "zumba"]
    assert [r.label for r in train.records] == [1] and [r.label for r in test.records] == [0, 1]


# ----------------------------------------------------------------------------- 2. overlaps, duplicates, empty lists


@pytest.fixture
def ucf(tmp_path):
    return write_ucf_like(tmp_path / "ucf", {"MoveLeft": 3, "MoveRight": 3})


def _append(file: Path, line: str) -> None:
    with open(file, "a") as f:
        f.write(line + "\r\n")


@pytest.mark.parametrize("subset", ["train", "test", "all"])
def test_a_test_video_in_the_train_list_is_refused(ucf, subset):
    ann = ucf / "ucfTrainTestlist"
    _append(ann / "trainlist01.txt", "MoveRight/v_MoveRight_g01_c01.avi 2")
    with pytest.raises(DatasetError) as err:
        load_ucf101(ucf, split=1, subset=subset, progress=False)
    text = str(err.value)
    assert "1 video(s) are in both the train list" in text and "MoveRight/v_MoveRight_g01_c01.avi" in text
    assert str(ann / "trainlist01.txt") in text and str(ann / "testlist01.txt") in text
    assert len(load_ucf101(ucf, split=2, subset="train", progress=False)) == 4  # split 2 is untouched


def test_a_duplicate_line_names_both_lines(ucf):
    _append(ucf / "ucfTrainTestlist" / "trainlist01.txt", "MoveLeft/v_MoveLeft_g02_c01.avi 1")
    with pytest.raises(DatasetError, match=r"trainlist01.txt:5: 'MoveLeft/v_MoveLeft_g02_c01.avi' is listed a second time \(first at .*trainlist01.txt:1\)"):
        load_ucf101(ucf, progress=False)


def test_dot_dot_paths_are_normalised_before_comparing(ucf):
    ann = ucf / "ucfTrainTestlist"
    # the class folder of the file is MoveRight: a MoveLeft label (1) on it is a second label
    _append(ann / "trainlist02.txt", "MoveLeft/../MoveRight/v_MoveRight_g02_c01.avi 1")
    with pytest.raises(DatasetError, match=r"trainlist02.txt:5: label 1 does not match class MoveRight of 'MoveRight/v_MoveRight_g02_c01.avi'"):
        load_ucf101(ucf, split=2, progress=False)
    # without a label, the same spelling of a test video in the train list is an overlap
    _append(ann / "trainlist03.txt", "MoveLeft/../MoveRight/v_MoveRight_g01_c01.avi")
    with pytest.raises(DatasetError, match=r"in both the train list .*trainlist03.txt and the test list .*testlist03.txt"):
        load_ucf101(ucf, split=3, progress=False)
    _append(ann / "trainlist01.txt", "../UCF-101/MoveLeft/v_MoveLeft_g02_c01.avi 1")
    with pytest.raises(DatasetError, match=r"trainlist01.txt:5: '../UCF-101/.*' points outside the video folder"):
        load_ucf101(ucf, split=1, progress=False)


def test_an_empty_train_list_is_an_error_and_fails_data_check(ucf, capsys):
    train = ucf / "ucfTrainTestlist" / "trainlist01.txt"
    train.write_text("\r\n")
    with pytest.raises(DatasetError, match=r"trainlist01.txt: lists no videos for the train subset of split 1"):
        load_ucf101(ucf, split=1, subset="train", progress=False)
    assert main(["data", "check", str(ucf), "--split", "1"]) == 2
    assert f"{train}: lists no videos" in capsys.readouterr().err


def test_hmdb51_video_marked_train_and_test_or_twice(tmp_path):
    root = tmp_path / "hmdb"
    ann = root / "testTrainMulti_7030_splits"
    ann.mkdir(parents=True)
    _videos(root / "videos" / "sit", ["sit_0.avi", "sit_1.avi"], frames=20)
    split = ann / "sit_test_split1.txt"
    split.write_text("sit_0.avi 1\nsit_1.avi 2\nsit_0.avi 2\n")
    with pytest.raises(DatasetError, match=r"1 video\(s\) are in both the train list .*sit_test_split1.txt .*sit/sit_0.avi"):
        load_hmdb51(root, progress=False)
    split.write_text("sit_0.avi 1\nsit_1.avi 2\nsit_0.avi 1\n")
    with pytest.raises(DatasetError, match=r"sit_test_split1.txt:3: 'sit/sit_0.avi' is listed a second time \(first at .*:1\)"):
        load_hmdb51(root, progress=False)
    split.write_text("../stand/sit_0.avi 1\n")
    with pytest.raises(DatasetError, match=r"sit_test_split1.txt:1: '../stand/sit_0.avi' leaves the folder of class sit"):
        load_hmdb51(root, progress=False)
    split.write_text("sit_0.avi 2\nsit_1.avi 0\n")
    with pytest.raises(DatasetError, match=r"\*_test_split1.txt: lists no videos for the train subset of split 1"):
        load_hmdb51(root, subset="train", progress=False)


@pytest.mark.parametrize(
    "rows,message",
    [
        ("a.avi,0,train\nb.avi,1,test\n./a.avi,0,test\n", r"1 video\(s\) are in both the train list .*s.csv and the test list .*s.csv \(first: .*s.csv:2 and .*s.csv:4\): a.avi"),
        ("a.avi,0,train\nb.avi,1,test\nx/../a.avi,1,train\n", r"s.csv:4: 'a.avi' is listed with label '1', but with label '0' at .*s.csv:2; a video has one label"),
        ("a.avi,0,train\nb.avi,1,test\na.avi,0,train\n", r"s.csv:4: 'a.avi' is listed a second time \(first at .*s.csv:2\)"),
        ("a.avi,0,train\nb.avi,1,train\n", r"s.csv: lists no videos for subset 'test'"),
    ],
)
def test_csv_overlaps_duplicates_two_labels_and_empty_subsets(abc, rows, message):
    (abc / "s.csv").write_text("path,label,split\n" + rows)
    with pytest.raises(DatasetError, match=message):
        load_csv(abc / "s.csv", subset="test", progress=False)


# ----------------------------------------------------------------------------- 3. too-short videos


def test_evaluation_refuses_a_video_shorter_than_its_clips(ucf):
    videos = load_ucf101(ucf, subset="all", progress=False)  # group g has 24 + g frames
    request = LoadRequest(frames=13, stride=2, clips=2, mode="uniform")  # 25 frames needed: all fit
    assert len([i for batch in make_loader(videos, request, batch_size=4, train=False, workers=0) for i in batch["index"]]) == 6
    request = LoadRequest(frames=26, clips=2, mode="uniform")  # 26 needed: group 1 is too short
    short = next(r for r in videos.records if r.num_frames < 26)
    with pytest.raises(CorruptVideo) as err:
        list(make_loader(videos, request, batch_size=2, train=False, workers=0))
    assert (err.value.path, err.value.reason) == (short.path, "too short: 25 frames < 26 needed")
    with pytest.raises(CorruptVideo, match="too short: 25 frames < 26 needed"):  # the probes' direct route too
        ClipDataset(videos, request, strict=True).frame_indices(videos.records.index(short), 0)


def test_training_skips_counts_and_names_too_short_videos(ucf, caplog):
    videos = load_ucf101(ucf, subset="all", progress=False)
    request = LoadRequest(frames=13, stride=2, clips=1, mode="random", decode_size=(16, 32))  # 25 needed
    assert frames_needed(None, request) == 25
    request = LoadRequest(frames=26, clips=1, mode="random", decode_size=(16, 32))
    short = {r.path for r in videos.records if r.num_frames < 26}
    loader = make_loader(videos, request, batch_size=2, train=True, workers=0)
    with caplog.at_level(logging.WARNING):
        seen = [i for batch in loader for i in batch["index"].tolist()]
    assert len(short) == 2 and loader.skipped == {p: "too short: 25 frames < 26 needed" for p in short}
    assert all(f"skipping unusable video {p}: too short: 25 frames < 26 needed" in caplog.text for p in short)
    assert len(seen) == 4 and not short & {videos.records[i].path for i in seen}


def test_each_sampler_states_the_frames_its_window_needs():
    assert frames_needed(None, ClipSpec(frames=16, stride=2)) == 31
    assert frames_needed("random", ClipSpec(frames=8, stride=(2, 4))) == 15  # the smallest stride
    assert frames_needed("overview", ClipSpec(frames=8, stride=(1, 3), clips=3)) == 16  # A and B back to back
    with pytest.raises(KeyError, match="unknown clip sampler 'nope'"):
        frames_needed("nope", ClipSpec())


# ----------------------------------------------------------------------------- 4. truncated Matroska / WebM


@pytest.mark.parametrize("name,codec", [("clip.mkv", "mpeg4"), ("clip.webm", "libvpx")])
def test_truncated_matroska_and_webm_are_corrupt(tmp_path, name, codec):
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg build cannot encode {codec}")
    path = tmp_path / name
    write_video(path, level_frames(60, 64, 96), codec=codec)
    info = probe_video(path)  # the whole file: no stated frame count, every frame decodes
    assert (info.num_frames, info.header_frames) == (60, 60)
    assert [frame_level(f) for f in read_frames(path, [0, 59], backend="pyav")] == [0, 29]
    truncate(path, 0.5)  # the header still states the full 2.4 s duration
    with pytest.raises(CorruptVideo) as err:
        probe_video(path)
    assert err.value.path == str(path)
    assert "header claims a duration of 60 frames at 25 fps but only" in err.value.reason


# ----------------------------------------------------------------------------- 5. warnings once per file and reason


def test_decord_fallback_is_warned_once_per_file(tmp_path, caplog):
    path = tmp_path / "small.avi"
    write_video(path, level_frames(10, 32, 48))  # decord 0.6 mis-copies rows at exactly this size
    with caplog.at_level(logging.WARNING):
        for idx in ([4, 2], [1], [9, 0]):
            read_frames(path, idx, backend="decord")
    warnings = [r for r in caplog.records if "decoding it with PyAV instead" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    assert not re.search(r"\[\d\d:\d\d:\d\d\]", warnings[0].getMessage())  # decord's timestamp made every read differ
    other = tmp_path / "other.avi"
    write_video(other, level_frames(10, 32, 48))
    with caplog.at_level(logging.WARNING):
        read_frames(other, [0], backend="decord")
    assert sum("decoding it with PyAV instead" in r.getMessage() for r in caplog.records) == 2  # a new file warns again

