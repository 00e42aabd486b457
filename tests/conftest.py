"""Shared fixtures: a MotionShapes `tiny` data set generated once per test session."""

import pytest

from core.data.synthetic import PRESETS, generate_motionshapes


@pytest.fixture(scope="session")
def motionshapes_tiny(tmp_path_factory):
    """48 real MPEG-4 videos in UCF101's layout (12 classes, 4 groups); read-only for tests."""
    return generate_motionshapes(tmp_path_factory.mktemp("data") / "motionshapes-tiny", PRESETS["tiny"], workers=2, progress=False)
