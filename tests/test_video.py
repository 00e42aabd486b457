"""Reading frames: decord and PyAV agree, frame folders, resize, and corrupt files never hang."""

import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest

from core.data.video import CorruptVideo, probe_video, read_frames, write_video
from tests.helpers import frame_level, level_frames, truncate


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    write_video(path, level_frames(40))
    return path


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_reads_requested_frames_in_order_with_repeats(video, backend):
    idx = [5, 3, 3, 29, 0, 17]
    frames = read_frames(video, idx, backend=backend)
    assert frames.shape == (6, 32, 64, 3) and frames.dtype == np.uint8
    assert [frame_level(f) for f in frames] == [5, 3, 3, 29, 0, 17]


def test_backends_agree_bit_for_bit(video):
    idx = list(range(0, 40, 3))
    np.testing.assert_array_equal(read_frames(video, idx), read_frames(video, idx, backend="pyav"))


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_resize_while_decoding(video, backend):
    frames = read_frames(video, [1, 2], backend=backend, size=(16, 20))
    assert frames.shape == (2, 16, 20, 3)
    assert [frame_level(f) for f in frames] == [1, 2]


def test_probe_counts_frames(video):
    info = probe_video(video)
    assert (info.num_frames, info.height, info.width, info.header_frames) == (40, 32, 64, 40)


def test_index_outside_video_is_an_index_error(video):
    with pytest.raises(IndexError, match="clip.avi"):
        read_frames(video, [40])


@pytest.mark.parametrize("prefix,digits", [("img_", 5), ("image_", 5), ("frame", 6)])
def test_frame_folders(tmp_path, prefix, digits):
    for t, frame in enumerate(level_frames(12), 1):
        cv2.imwrite(str(tmp_path / f"{prefix}{t:0{digits}d}.jpg"), frame)
    frames = read_frames(tmp_path, [11, 0, 4], size=(8, 8))
    assert frames.shape == (3, 8, 8, 3)
    assert [frame_level(f) for f in frames] == [11, 0, 4]
    assert probe_video(tmp_path).num_frames == 12


def test_frame_folder_with_a_gap_is_corrupt(tmp_path):
    for t in (1, 2, 4):
        cv2.imwrite(str(tmp_path / f"img_{t:05d}.jpg"), level_frames(1)[0])
    with pytest.raises(CorruptVideo, match="gaps"):
        probe_video(tmp_path)


def test_garbage_file_is_corrupt_and_named(tmp_path):
    bad = tmp_path / "garbage.avi"
    bad.write_bytes(np.random.default_rng(0).bytes(20000))
    with pytest.raises(CorruptVideo) as err:
        read_frames(bad, [0])
    assert err.value.path == str(bad)


def test_corrupt_video_survives_pickling():
    err = pickle.loads(pickle.dumps(CorruptVideo("/x/y.avi", "broken")))
    assert (err.path, err.reason) == ("/x/y.avi", "broken")


_READ_TRUNCATED = """
import sys
from core.data.video import CorruptVideo, read_frames
try:
    read_frames(sys.argv[1], list(range(0, 60, 5)), backend=sys.argv[2])
except CorruptVideo as err:
    print("CORRUPT", err.path, err.reason)
"""


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_truncated_video_raises_and_never_hangs(tmp_path, backend):
    path = tmp_path / "truncated.avi"
    write_video(path, level_frames(60, 64, 96))
    truncate(path, 0.5)
    # In a child process with a deadline: a hang would hold the GIL and could not be interrupted here.
    out = subprocess.run([sys.executable, "-c", _READ_TRUNCATED, str(path), backend], capture_output=True, text=True, timeout=60)
    assert f"CORRUPT {path}" in out.stdout, out.stderr[-2000:]
    assert "header claims 60 frames" in out.stdout


def test_decord_failure_on_a_valid_file_falls_back_to_pyav(tmp_path, caplog):
    path = tmp_path / "small.avi"
    write_video(path, level_frames(10, 32, 48))  # decord 0.6 mis-copies rows at exactly this size
    frames = read_frames(path, [4, 2], backend="decord")
    assert [frame_level(f) for f in frames] == [4, 2]
    assert "decoding it with PyAV instead" in caplog.text
