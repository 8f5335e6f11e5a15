from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from videos import make_video  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-second 64x48 8-fps H.264 clip, made once per session."""
    return make_video(tmp_path_factory.mktemp("clips") / "tiny.mp4")
