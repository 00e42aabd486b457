"""The official Something-Something v2, Diving48 and Kinetics releases: their layouts, classes,
subsets, missing Kinetics videos, and errors that name the file and the entry at fault."""

import json
import logging
import os
import shutil
from pathlib import Path

import av
import pytest

from core.data.datasets import FORMATS, DatasetError, detect_format, open_dataset
from core.data.official import load_diving48, load_kinetics, load_ssv2
from core.data.video import write_video
from harness.cli import build_parser, main
from tests.helpers import level_frames, truncate

FRAMES = 8


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """One tiny real video per codec (8 frames, 32x32), copied into each layout by the tests."""
    folder = tmp_path_factory.mktemp("clips")
    out = {}
    for name, codec in (("mp4", "mpeg4"), ("vp8.webm", "libvpx"), ("vp9.webm", "libvpx-vp9")):
        if codec not in av.codecs_available:
            continue
        out[name] = folder / f"clip.{name}"
        write_video(out[name], level_frames(FRAMES, 32, 32), codec=codec)
    return out


def _copy(clip: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(clip, dest)
    return dest


def _json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    return path


# ----------------------------------------------------------------------------- Something-Something v2

# Written in another order than the ids, as the official file is: classes follow the ids.
SSV2_LABELS = {
    "Pushing something from right to left": "1",
    "Holding something next to something": "2",
    "Pushing something from left to right": "0",
}
SSV2_TRAIN = [
    ("78687", "Holding [something] next to [something]", "holding potato next to vicks vaporub bottle", ["potato", "vicks vaporub bottle"]),
    ("42326", "Pushing [something] from left to right", "pushing a cup from left to right", ["a cup"]),
    ("3", "Pushing [something] from right to left", "pushing pen from right to left", ["pen"]),
]
SSV2_VALIDATION = [
    ("74225", "Pushing [something] from right to left", "pushing marker from right to left", ["marker"]),
    ("116154", "Holding [something] next to [something]", "holding a book next to a mug", ["a book", "a mug"]),
]


def _ssv2_entries(rows):
    return [{"id": i, "label": caption, "template": t, "placeholders": p} for i, t, caption, p in rows]


@pytest.fixture
def ssv2(tmp_path, clips):
    if "vp8.webm" not in clips or "vp9.webm" not in clips:
        pytest.skip("this FFmpeg build cannot encode VP8 and VP9")
    root = tmp_path / "ssv2"
    _json(root / "labels" / "something-something-v2-labels.json", SSV2_LABELS)
    _json(root / "labels" / "something-something-v2-train.json", _ssv2_entries(SSV2_TRAIN))
    _json(root / "labels" / "something-something-v2-validation.json", _ssv2_entries(SSV2_VALIDATION))
    _json(root / "labels" / "something-something-v2-test.json", [{"id": "1"}, {"id": "2"}])  # unlabelled: never read
    for k, (vid, *_) in enumerate(SSV2_TRAIN + SSV2_VALIDATION):
        _copy(clips["vp9.webm" if k % 2 else "vp8.webm"], root / "20bn-something-something-v2" / f"{vid}.webm")
    return root


def test_ssv2_classes_come_from_the_template_not_the_caption(ssv2):
    train = load_ssv2(ssv2, subset="train", progress=False)
    test = load_ssv2(ssv2, subset="test", progress=False)
    assert train.classes == ["Pushing something from left to right", "Pushing something from right to left", "Holding something next to something"]
    assert [(r.key, r.label, train.classes[r.label]) for r in train.records] == [
        ("78687", 2, "Holding something next to something"),
        ("42326", 0, "Pushing something from left to right"),
        ("3", 1, "Pushing something from right to left"),
    ]
    assert [(r.key, r.label) for r in test.records] == [("74225", 1), ("116154", 2)]
    # VP8 and VP9 WebM go through the common reader: every frame verified
    assert {(r.num_frames, r.height, r.width, r.ok) for r in train.records + test.records} == {(FRAMES, 32, 32, True)}
    assert (train.name, train.split, train.root) == ("ssv2", 1, str(ssv2 / "20bn-something-something-v2"))
    assert len(load_ssv2(ssv2, subset="all", progress=False)) == 5


def test_ssv2_is_detected_and_dispatched(ssv2):
    assert detect_format(ssv2) == "ssv2"
    ds = open_dataset(ssv2, subset="test", progress=False)
    assert (ds.name, len(ds)) == ("ssv2", 2)
    assert len(open_dataset(ssv2, format="ssv2", subset="train", progress=False)) == 3


def test_ssv2_json_in_the_root_and_videos_folder(ssv2):
    for f in (ssv2 / "labels").iterdir():
        f.rename(ssv2 / f.name)
    (ssv2 / "20bn-something-something-v2").rename(ssv2 / "videos")
    ds = open_dataset(ssv2, subset="all", progress=False)
    assert ds.root == str(ssv2 / "videos") and len(ds) == 5


def test_these_sets_have_one_split(ssv2):
    with pytest.raises(DatasetError, match="Something-Something v2 has one official split: split must be 1, got 2"):
        open_dataset(ssv2, split=2, progress=False)
    with pytest.raises(DatasetError, match="subset must be one of"):
        load_ssv2(ssv2, subset="val", progress=False)


def test_a_truncated_webm_is_kept_and_marked_corrupt(ssv2):
    bad = truncate(ssv2 / "20bn-something-something-v2" / "42326.webm", 0.5)
    train = load_ssv2(ssv2, subset="train", progress=False)
    assert len(train) == 3
    (record,) = train.corrupt
    assert record.path == str(bad) and record.num_frames == 0
    assert "truncated" in record.error or "decod" in record.error


TRAIN = "something-something-v2-train.json"
LABELS = "something-something-v2-labels.json"
HOLD = "Holding [something] next to [something]"


@pytest.mark.parametrize(
    "file,content,message",
    [
        (TRAIN, '[\n  {"id": "78687",\n  "template" "x"}\n]', r"-train.json:3:14: not valid JSON \(Expecting ':' delimiter\); expected a JSON list"),
        (TRAIN, {"id": "78687"}, r"-train.json: the file holds an object; expected a JSON list of entries"),
        (TRAIN, [{"id": "78687", "template": HOLD}, {"id": "42326", "label": "pushing a cup"}],
         r"-train.json\[1\] \(id '42326'\): the entry has no 'template' key; expected \{\"id\""),
        (TRAIN, [{"id": "78687", "template": 7}], r"-train.json\[0\] \(id '78687'\): 'template' is 7; expected a template string"),
        (TRAIN, [{"template": HOLD}], r"-train.json\[0\]: the entry has no 'id' key"),
        (TRAIN, [{"id": "../78687", "template": HOLD}], r"-train.json\[0\]: 'id' is '../78687'; expected a video name"),
        (TRAIN, ["78687"], r"-train.json\[0\]: the entry is a string; expected an object"),
        (TRAIN, [{"id": "78687", "template": "Holding [something] behind [something]"}],
         (r"-train.json\[0\] \(id '78687'\): template 'Holding \[something\] behind \[something\]' \('Holding something behind something' "
          r"without brackets\) is not in .*-labels.json; expected one of its 3 templates")),
        (TRAIN, [{"id": "78687", "template": HOLD}, {"id": "78687", "template": HOLD}],
         r"-train.json\[1\]: '78687' is listed a second time \(first at .*-train.json\[0\]\)"),
        (TRAIN, [{"id": "74225", "template": "Pushing [something] from right to left"}],
         r"1 video\(s\) are in both the train list .*-train.json and the test list .*-validation.json"),
        (TRAIN, [{"id": "999", "template": HOLD}], r"-train.json\[0\]: video '999' not found under .*20bn-something-something-v2 \(looked for 999.webm"),
        (TRAIN, [], r"-train.json: lists no videos for the train subset"),
        (LABELS, {"Pushing something from left to right": "0", "Holding something next to something": "2"},
         r"-labels.json: class ids must run 0..1 without gaps"),
        (LABELS, {"Pushing something from left to right": "zero"}, r"-labels.json: template 'Pushing something from left to right' has class id 'zero'"),
        (LABELS, '{"Holding something next to something": "0", "Holding something next to something": "1"}',
         r"-labels.json: template 'Holding something next to something' appears twice"),
        (LABELS, ["Holding something next to something"], r"-labels.json: the file holds a list; expected a JSON object mapping each template"),
    ],
)
def test_malformed_ssv2_files_name_the_file_and_entry(ssv2, file, content, message):
    path = ssv2 / "labels" / file
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DatasetError, match=message):
        load_ssv2(ssv2, subset="train", progress=False)


# ----------------------------------------------------------------------------- Diving48

VOCAB = [["Back", "15som", "05Twis", "FREE"], ["Forward", "25som", "NoTwis", "PIKE"], ["Inward", "25som", "NoTwis", "TUCK"]]
DIVING_TRAIN = [("-mmq0PT-u8k_00155", 0), ("-mmq0PT-u8k_00156", 1), ("9jZYYkoHm4s_00010", 2), ("9jZYYkoHm4s_00011", 0)]
DIVING_TEST = [("zg0jXrHEcQY_00001", 1), ("zg0jXrHEcQY_00002", 2)]


def _diving_entries(rows):
    return [{"vid_name": n, "label": lab, "start_frame": 0, "end_frame": 82 + k} for k, (n, lab) in enumerate(rows)]


@pytest.fixture
def diving48(tmp_path, clips):
    root = tmp_path / "diving48"
    _json(root / "Diving48_vocab.json", VOCAB)
    _json(root / "Diving48_V2_train.json", _diving_entries(DIVING_TRAIN))
    _json(root / "Diving48_V2_test.json", _diving_entries(DIVING_TEST))
    for name, _ in DIVING_TRAIN + DIVING_TEST:
        _copy(clips["mp4"], root / "rgb" / f"{name}.mp4")
    return root


def test_diving48_official_files(diving48):
    train = load_diving48(diving48, subset="train", progress=False)
    test = load_diving48(diving48, subset="test", progress=False)
    assert train.classes == ["Back_15som_05Twis_FREE", "Forward_25som_NoTwis_PIKE", "Inward_25som_NoTwis_TUCK"]
    assert [(r.key, r.label) for r in train.records] == DIVING_TRAIN
    assert [(r.key, train.classes[r.label]) for r in test.records] == [
        ("zg0jXrHEcQY_00001", "Forward_25som_NoTwis_PIKE"), ("zg0jXrHEcQY_00002", "Inward_25som_NoTwis_TUCK")]
    assert {r.num_frames for r in train.records + test.records} == {FRAMES}
    assert detect_format(diving48) == "diving48"
    assert (open_dataset(diving48, subset="all", progress=False).name, len(open_dataset(diving48, subset="all", progress=False))) == ("diving48", 6)
    with pytest.raises(DatasetError, match="Diving48 has one official split"):
        open_dataset(diving48, format="diving48", split=3, progress=False)


def test_diving48_v1_file_names_are_read(diving48):
    for part in ("train", "test"):
        (diving48 / f"Diving48_V2_{part}.json").rename(diving48 / f"Diving48_{part}.json")
    assert len(load_diving48(diving48, subset="all", progress=False)) == 6
    (diving48 / "Diving48_test.json").unlink()
    with pytest.raises(DatasetError, match="cannot find Diving48_test.json"):
        load_diving48(diving48, subset="test", progress=False)


def _entry(**changes):
    return {"vid_name": "-mmq0PT-u8k_00155", "label": 0, "start_frame": 0, "end_frame": 82, **changes}


@pytest.mark.parametrize(
    "file,content,message",
    [
        ("Diving48_V2_train.json", [_entry(), _entry(vid_name="x_1", label=3)],
         r"Diving48_V2_train.json\[1\] \(vid_name 'x_1'\): label 3 is not a class of .*Diving48_vocab.json; expected 0..2"),
        ("Diving48_V2_train.json", [_entry(label="0")], r"V2_train.json\[0\] \(vid_name '-mmq0PT-u8k_00155'\): 'label' is '0'; expected an integer class index"),
        ("Diving48_V2_train.json", [_entry(label=True)], r"'label' is True; expected an integer class index"),
        ("Diving48_V2_train.json", [_entry(start_frame=90)], r"V2_train.json\[0\] .*: start_frame 90, end_frame 82; expected 0 <= start_frame <= end_frame"),
        ("Diving48_V2_train.json", [_entry(end_frame=8.5)], r"'end_frame' is 8.5; expected an integer frame"),
        ("Diving48_V2_train.json", [{"label": 0, "start_frame": 0, "end_frame": 82}], r"V2_train.json\[0\]: the entry has no 'vid_name' key"),
        ("Diving48_V2_train.json", [_entry(vid_name="gone_00001")],
         r"V2_train.json\[0\]: video 'gone_00001' not found under .*rgb \(looked for gone_00001.mp4"),
        ("Diving48_V2_train.json", '[{"vid_name": "a", "label": 0,}]', r"V2_train.json:1:31: not valid JSON"),
        ("Diving48_V2_test.json", [_entry(vid_name="-mmq0PT-u8k_00155", label=0)], r"1 video\(s\) are in both the train list"),
        ("Diving48_vocab.json", [["Back", "15som", "05Twis"]], r"vocab.json\[0\]: class 0 is \['Back', '15som', '05Twis'\]; expected a list of 4 strings"),
        ("Diving48_vocab.json", [VOCAB[0], VOCAB[0]], r"vocab.json\[1\]: class 'Back_15som_05Twis_FREE' is also class 0"),
    ],
)
def test_malformed_diving48_files_name_the_file_and_entry(diving48, file, content, message):
    (diving48 / file).write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DatasetError, match=message):
        load_diving48(diving48, subset="train", progress=False)


# ----------------------------------------------------------------------------- Kinetics

HEADER = "label,youtube_id,time_start,time_end,split"
K_TRAIN = [("abseiling", "0wR5jVB-WPk", 417, 427), ("air drumming", "-VtLx-mcPds", 14, 24),
           ("playing guitar", "sf_4Xq3o_wI", 0, 10), ("abseiling", "3caPS4FHFF8", 36, 46)]
K_VALIDATE = [("air drumming", "--nQbRBEz2s", 104, 114), ("playing guitar", "Zt0kbfjRzZA", 30, 40)]


def _csv(path: Path, rows, header=HEADER, split="train", extra="", float_times=False) -> Path:
    fmt = "{:.1f}" if float_times else "{}"
    lines = [header] + [f'"{lab}",{yid},{fmt.format(s)},{fmt.format(e)},{split}{extra}' for lab, yid, s, e in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _name(yid, s, e):
    return f"{yid}_{s:06d}_{e:06d}"


def _write_kinetics(root: Path, clip: Path, layout: str) -> Path:
    """The CSVs in ``root`` and the videos in one of the layouts the public downloaders write."""
    root.mkdir(parents=True)
    _csv(root / "train.csv", K_TRAIN)
    _csv(root / "validate.csv", K_VALIDATE, split="val")
    (root / "test.csv").write_text("youtube_id,time_start,time_end,split\nnotthere123,0,10,test\n")  # never read
    for part, rows in (("train", K_TRAIN), ("val", K_VALIDATE)):
        for lab, yid, s, e in rows:
            folder = {"class": root / part / lab.replace(" ", "_"), "flat": root / part, "videos": root / "videos"}[layout]
            _copy(clip, folder / f"{_name(yid, s, e)}.mp4")
    return root


@pytest.fixture
def kinetics(tmp_path, clips):
    return _write_kinetics(tmp_path / "kinetics400", clips["mp4"], "class")


@pytest.mark.parametrize("layout", ["class", "flat", "videos"])
def test_kinetics_official_csvs_in_each_video_layout(tmp_path, clips, layout):
    root = _write_kinetics(tmp_path / "k400", clips["mp4"], layout)
    train = load_kinetics(root, subset="train", progress=False)
    test = load_kinetics(root, subset="test", progress=False)
    assert train.classes == ["abseiling", "air drumming", "playing guitar"]
    assert [(Path(r.key).name, r.label) for r in train.records] == [
        ("0wR5jVB-WPk_000417_000427", 0), ("-VtLx-mcPds_000014_000024", 1), ("sf_4Xq3o_wI_000000_000010", 2), ("3caPS4FHFF8_000036_000046", 0)]
    assert [(Path(r.key).name, test.classes[r.label]) for r in test.records] == [
        ("--nQbRBEz2s_000104_000114", "air drumming"), ("Zt0kbfjRzZA_000030_000040", "playing guitar")]
    expected_dir = {"class": "train/air_drumming", "flat": "train", "videos": "videos"}[layout]
    assert train.records[1].key == f"{expected_dir}/-VtLx-mcPds_000014_000024"
    assert {r.num_frames for r in train.records + test.records} == {FRAMES}
    assert train.extra["missing"] == [] and test.extra["missing"] == []


def test_kinetics_is_detected_and_dispatched(kinetics):
    assert detect_format(kinetics) == "kinetics"
    ds = open_dataset(kinetics, subset="all", progress=False)
    assert (ds.name, ds.split, len(ds)) == ("kinetics", 1, 6)
    with pytest.raises(DatasetError, match="Kinetics has one official split"):
        open_dataset(kinetics, split=2, progress=False)
    with pytest.raises(DatasetError, match=r"train.csv: an official Kinetics list; give the folder that holds train.csv and validate.csv"):
        detect_format(kinetics / "train.csv")


def test_kinetics_csvs_in_annotations_and_700_2020_columns(kinetics):
    (kinetics / "annotations").mkdir()
    _csv(kinetics / "annotations" / "train.csv", K_TRAIN, header=HEADER + ",is_cc", extra=",0", float_times=True)
    (kinetics / "validate.csv").rename(kinetics / "annotations" / "validate.csv")
    (kinetics / "train.csv").unlink()
    assert detect_format(kinetics) == "kinetics"
    train = open_dataset(kinetics, subset="train", progress=False)
    assert len(train) == 4 and train.records[0].key == "train/abseiling/0wR5jVB-WPk_000417_000427"


def test_kinetics_webm_is_found_by_name_and_hidden_folders_are_not_searched(kinetics, clips):
    if "vp9.webm" not in clips:
        pytest.skip("this FFmpeg build cannot encode VP9")
    old = kinetics / "train" / "abseiling" / "0wR5jVB-WPk_000417_000427.mp4"
    old.unlink()
    _copy(clips["vp9.webm"], old.with_suffix(".webm"))
    hidden = kinetics / "train" / "abseiling" / "3caPS4FHFF8_000036_000046.mp4"
    (kinetics / ".Trash-0").mkdir()
    hidden.rename(kinetics / ".Trash-0" / hidden.name)  # a hidden folder (trash, tool caches) is not searched
    train = load_kinetics(kinetics, progress=False)
    assert train.records[0].path == str(old.with_suffix(".webm")) and train.records[0].num_frames == FRAMES
    assert train.extra["missing"] == [f"{kinetics / 'train.csv'}:5: 3caPS4FHFF8_000036_000046"]


def test_missing_kinetics_videos_are_skipped_counted_and_named(kinetics, caplog):
    full = load_kinetics(kinetics, subset="train", progress=False)
    (kinetics / "train" / "air_drumming" / "-VtLx-mcPds_000014_000024.mp4").unlink()
    (kinetics / "train" / "abseiling" / "3caPS4FHFF8_000036_000046.mp4").unlink()
    with caplog.at_level(logging.WARNING, logger="core.data.datasets"):
        ds = open_dataset(kinetics, subset="train", progress=False)
    train_csv = kinetics / "train.csv"
    assert ds.extra["missing"] == [f"{train_csv}:3: -VtLx-mcPds_000014_000024", f"{train_csv}:5: 3caPS4FHFF8_000036_000046"]
    assert [Path(r.key).name for r in ds.records] == ["0wR5jVB-WPk_000417_000427", "sf_4Xq3o_wI_000000_000010"]
    assert ds.classes == full.classes  # classes come from the lists, not from what was downloaded
    assert ds.fingerprint() != full.fingerprint()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 listed video(s) not found" in warnings[0] and "-VtLx-mcPds_000014_000024" in warnings[0]
    with pytest.raises(DatasetError, match=r"2 listed video\(s\) not found: .*train.csv:3: -VtLx-mcPds_000014_000024; .*train.csv:5: 3caPS4FHFF8"):
        open_dataset(kinetics, subset="train", missing="error", progress=False)
    assert len(load_kinetics(kinetics, subset="test", missing="error", progress=False)) == 2  # that subset has them all
    with pytest.raises(DatasetError, match="missing must be one of skip, error, got 'ignore'"):
        open_dataset(kinetics, missing="ignore", progress=False)


def test_a_kinetics_subset_with_no_video_on_disk_is_an_error(kinetics):
    shutil.rmtree(kinetics / "val")
    with pytest.raises(DatasetError, match=r"validate.csv: none of the 2 listed videos is under .*\(first: .*validate.csv:2: --nQbRBEz2s_000104_000114\)"):
        load_kinetics(kinetics, subset="test", progress=False)


@pytest.mark.parametrize(
    "header,row,message",
    [
        ("label,youtube_id,time_start,time_end,split,source", '"abseiling",0wR5jVB-WPk,417,427,train,yt',
         r"train.csv:1: unknown column\(s\) 'source' in the header; valid columns are label, youtube_id, time_start, time_end, split \(all required\) and is_cc"),
        ("label,youtube_id,time_start,time_end", '"abseiling",0wR5jVB-WPk,417,427', r"train.csv:1: the header has no 'split' column"),
        (HEADER, '"abseiling",0wR5jVB-WPk,ten,427,train', r"train.csv:2: time_start must be a whole number of seconds >= 0 \(e.g. 10 or 10.0\), got 'ten'"),
        (HEADER, '"abseiling",0wR5jVB-WPk,417.5,427,train', r"train.csv:2: time_start must be a whole number"),
        (HEADER, '"abseiling",0wR5jVB-WPk,427,417,train', r"train.csv:2: time_end 417 is not after time_start 427"),
        (HEADER, '"abseiling",0wR5jVB-WPk,417,427', r"train.csv:2: expected 5 columns"),
        (HEADER, ',0wR5jVB-WPk,417,427,train', r"train.csv:2: empty label"),
        (HEADER, '"abseiling",0wR5/B-WPk,417,427,train', r"train.csv:2: youtube_id '0wR5/B-WPk' is not a YouTube id"),
        (HEADER, '"air drumming",--nQbRBEz2s,104,114,train', r"1 video\(s\) are in both the train list .*train.csv and the test list .*validate.csv"),
    ],
)
def test_malformed_kinetics_csvs_name_file_and_line(kinetics, header, row, message):
    (kinetics / "train.csv").write_text(f"{header}\n{row}\n")
    with pytest.raises(DatasetError, match=message):
        load_kinetics(kinetics, progress=False)


# ----------------------------------------------------------------------------- vsbench data check


def test_data_check_reports_missing_kinetics_videos_and_writes_the_list(kinetics, capsys):
    (kinetics / "train" / "abseiling" / "3caPS4FHFF8_000036_000046.mp4").unlink()
    assert main(["data", "check", str(kinetics), "--min-frames", "4"]) == 0  # missing videos are reported, not problems
    out = capsys.readouterr().out
    listed = kinetics / "vsbench_missing.txt"
    assert "kinetics format" in out and "Missing videos (listed, not on disk; skipped): 1" in out
    assert f"{kinetics / 'train.csv'}:5: 3caPS4FHFF8_000036_000046" in out and f"Full list: {listed}" in out
    assert listed.read_text() == f"{kinetics / 'train.csv'}:5: 3caPS4FHFF8_000036_000046\n"
    assert "split1" not in out and "train" in out and "test" in out
    assert main(["data", "check", str(kinetics), "--split", "2"]) == 2
    assert "Kinetics has one official split" in capsys.readouterr().err


def test_data_check_on_a_read_only_kinetics_root_only_counts(kinetics, capsys, monkeypatch):
    for lab, yid, s, e in K_TRAIN[:2]:
        (kinetics / "train" / lab.replace(" ", "_") / f"{_name(yid, s, e)}.mp4").unlink()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == kinetics and mode == os.W_OK else real(p, mode, **kw))
    assert main(["data", "check", str(kinetics), "--min-frames", "4"]) == 0
    out = capsys.readouterr().out
    assert "Missing videos (listed, not on disk; skipped): 2" in out and "read-only: the full list was not written" in out
    assert not (kinetics / "vsbench_missing.txt").exists()


@pytest.mark.parametrize("which", ["ssv2", "diving48"])
def test_data_check_on_ssv2_and_diving48(request, which, capsys):
    root = request.getfixturevalue(which)
    assert main(["data", "check", str(root), "--min-frames", "4"]) == 0
    out = capsys.readouterr().out
    assert f"{which} format" in out and "Missing videos" not in out and "Corrupt videos: 0" in out
    assert main(["data", "check", str(root)]) == 1  # 8-frame videos are under the default 16


def test_the_cli_offers_every_format():
    args = build_parser().parse_args(["data", "check", "x", "--format", "kinetics"])
    assert args.format == "kinetics"
    assert {"ssv2", "diving48", "kinetics"} <= set(FORMATS)
