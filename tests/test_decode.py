"""The three decode backends agree frame for frame, fail naming the clip, and never reuse a decoder
across a fork."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from videos import REAL_CLIPS, make_video, real_clip

from medvideocap import decode
from medvideocap.decode import (
    BACKENDS,
    DecodeError,
    DecoderCache,
    FileHandles,
    TimestampToleranceError,
    open_decoder,
)


@pytest.fixture(scope="module")
def gop_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s, 8 fps, key frame every 5 frames: indices cross GOP boundaries both ways."""
    return make_video(tmp_path_factory.mktemp("dec") / "gop.mp4", seconds=3.0, fps=8, gop=5)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == torch.uint8
    diff = (a.int() - b.int()).abs().float()
    assert diff.mean() <= 1.0, f"mean pixel difference {diff.mean():.3f}"
    assert diff.max() <= 16, f"max pixel difference {diff.max():.0f}"


@pytest.mark.parametrize("which", ["generated", *REAL_CLIPS])
def test_backends_return_the_same_frames_for_the_same_indices(
    which: str, gop_clip: Path, tmp_path: Path
) -> None:
    path = gop_clip if which == "generated" else real_clip(which, tmp_path)
    first = open_decoder(path, "torchcodec")
    n = first.num_frames
    indices = [n - 1, 0, 7, 3, 3, n // 2, 11, n - 2]  # out of order, backwards, repeated
    reference = first.frames_at(indices)
    assert reference.data.shape == (len(indices), 3, first.height, first.width)
    for backend in BACKENDS[1:]:
        dec = open_decoder(path, backend)
        assert (dec.num_frames, dec.width, dec.height) == (n, first.width, first.height)
        assert dec.fps == pytest.approx(first.fps)
        got = dec.frames_at(indices)
        _close(got.data, reference.data)
        assert torch.allclose(got.pts, reference.pts, atol=1e-3)
    # distinct indices really are distinct frames (the clips move)
    assert not torch.equal(reference.data[1], reference.data[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_bytes_and_path_sources_decode_identically(backend: str, gop_clip: Path) -> None:
    from_path = open_decoder(gop_clip, backend).frames_at([0, 9, 20])
    from_bytes = open_decoder(gop_clip.read_bytes(), backend).frames_at([0, 9, 20])
    assert torch.equal(from_path.data, from_bytes.data)


@pytest.mark.parametrize("backend", BACKENDS)
def test_timestamps_pick_the_nearest_frame_and_report_its_time(backend: str, gop_clip: Path) -> None:
    dec = open_decoder(gop_clip, backend)
    got = dec.frames_at_times([0.0, 0.51, 1.24])
    assert got.pts.tolist() == pytest.approx([0.0, 0.5, 1.25])
    assert torch.equal(got.data, dec.frames_at([0, 4, 10]).data)


@pytest.mark.parametrize("backend", BACKENDS)
def test_timestamp_outside_tolerance_is_an_error_naming_the_clip(backend: str, gop_clip: Path) -> None:
    dec = open_decoder(gop_clip, backend, name="clip-0042")
    with pytest.raises(TimestampToleranceError, match=r"clip-0042: asked for t=5\.0000s"):
        dec.frames_at_times([0.5, 5.0])
    with pytest.raises(TimestampToleranceError, match="clip-0042"):
        dec.frames_at_times([0.56], tolerance_s=0.01)  # 0.06 s from the nearest frame at 0.5 s


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_index_names_the_clip(backend: str, gop_clip: Path) -> None:
    dec = open_decoder(gop_clip, backend, name="clip-7")
    with pytest.raises(
        DecodeError, match=r"clip-7: frame indices \[24\] out of range, the clip has 24 frames"
    ):
        dec.frames_at([0, 24])


@pytest.mark.parametrize("backend", BACKENDS)
def test_garbage_and_truncated_input_raise_decode_error_naming_the_clip(backend: str, gop_clip: Path) -> None:
    with pytest.raises(DecodeError, match="broken-1"):
        open_decoder(b"\x00not a video" * 100, backend, name="broken-1")
    cut = gop_clip.read_bytes()[: gop_clip.stat().st_size // 2]  # moov atom at the end: unreadable
    with pytest.raises(DecodeError, match="broken-2"):
        dec = open_decoder(cut, backend, name="broken-2")
        dec.frames_at(list(range(dec.num_frames)))


def test_unknown_backend_is_rejected_with_the_choices(gop_clip: Path) -> None:
    with pytest.raises(ValueError, match="torchcodec, decord, pyav"):
        open_decoder(gop_clip, "opencv")


def test_decoder_cache_reuses_within_a_process_and_forgets_after_fork(
    gop_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = DecoderCache(maxsize=2)
    made: list[object] = []

    def factory() -> object:
        made.append(open_decoder(gop_clip, "pyav"))
        return made[-1]

    first = cache.get("a", factory)
    assert cache.get("a", factory) is first and len(made) == 1
    real_pid = decode.os.getpid()
    monkeypatch.setattr(decode.os, "getpid", lambda: real_pid + 1)  # what a forked worker sees
    second = cache.get("a", factory)
    assert second is not first and len(made) == 2
    # the parent's decoder was dropped, not closed: it still works for the parent
    assert first.frames_at([1]).data.shape[0] == 1


def test_decoder_cache_evicts_least_recently_used_and_closes_it(gop_clip: Path) -> None:
    cache = DecoderCache(maxsize=1)
    a = cache.get("a", lambda: open_decoder(gop_clip, "pyav"))
    cache.get("b", lambda: open_decoder(gop_clip, "pyav"))
    assert len(cache) == 1
    with pytest.raises(DecodeError):  # closed container
        a.frames_at([0])


def test_file_handles_pread_reads_ranges_and_names_a_short_file(tmp_path: Path) -> None:
    path = tmp_path / "shard.tar"
    path.write_bytes(bytes(range(100)))
    files = FileHandles()
    assert files.pread(path, 10, 5) == bytes([10, 11, 12, 13, 14])
    with pytest.raises(DecodeError, match=r"shard\.tar: wanted 20 bytes at offset 90, got 10"):
        files.pread(path, 90, 20)
