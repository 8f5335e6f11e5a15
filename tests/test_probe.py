"""``medvideocap.media.probe``: media facts of real files, the display rotation measured against ffprobe's own."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from fixtures_loader import rotated_clip
from videos import TESTDATA, ffmpeg

from medvideocap.dataset.schema import DataError
from medvideocap.media.probe import ProbeError, probe


def _ffprobe_rotation(path: Path) -> int:
    """The display-matrix rotation as ffprobe reports it, modulo 360 (0 when there is none)."""
    exe = str(Path(ffmpeg()).with_name("ffprobe"))
    args = [exe, "-v", "error", "-select_streams", "v:0", "-show_entries", "stream_side_data=rotation"]
    out = subprocess.run([*args, "-of", "json", str(path)], check=True, capture_output=True, text=True)
    streams = json.loads(out.stdout).get("streams", [])
    sides = streams[0].get("side_data_list", []) if streams else []
    return next((int(s["rotation"]) % 360 for s in sides if "rotation" in s), 0)


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("count_frames", [False, True])
def test_rotation_is_the_display_matrix_ffprobe_reports(
    tmp_path: Path, rotation: int, count_frames: bool
) -> None:
    path = rotated_clip(tmp_path / f"r{rotation}.mp4", rotation)
    info = probe(path, count_frames=count_frames)
    assert info.rotation == _ffprobe_rotation(path) == rotation
    assert (info.width, info.height) == (96, 64)  # stored size
    assert info.display_size == ((64, 96) if rotation in (90, 270) else (96, 64))
    assert info.num_frames == 8 and info.duration == pytest.approx(1.0)
    assert info.as_dict()["rotation"] == rotation


def test_real_clips_have_no_rotation() -> None:
    for name, size in (("bikes.mp4", (640, 272)), ("bigbuckbunny.mp4", (1280, 720))):
        info = probe(TESTDATA / name)
        assert info.rotation == _ffprobe_rotation(TESTDATA / name) == 0
        assert (info.width, info.height) == info.display_size == size


def test_probe_errors_are_data_errors(tmp_path: Path) -> None:
    """The loader and the builder skip bad files by the DataError family; ProbeError belongs to it."""
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(ProbeError, match="garbage.mp4") as caught:
        probe(bad)
    assert isinstance(caught.value, DataError)
