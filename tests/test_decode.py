"""The three decode backends agree frame for frame, fail naming the clip, and never reuse a decoder
across a fork."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from videos import REAL_CLIPS, make_video, real_clip

from medvideocap import handles
from medvideocap.media import decode
from medvideocap.media.decode import (
    BACKENDS,
    DecodeError,
    DecoderCache,
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bug_inside_a_decoder_propagates_and_a_library_data_error_becomes_a_decode_error(
    backend: str, gop_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the libraries' data errors are named as a bad clip: a TypeError planted in the backend's
    decode is a bug and comes out as itself (with its traceback), never as a DecodeError that a
    skipping reader would turn into "clip skipped"."""
    dec = open_decoder(gop_clip.read_bytes(), backend, name="planted")
    real = type(dec)._decode

    def buggy(self: decode.Decoder, indices: list[int]) -> object:
        raise TypeError("_decode() got an unexpected keyword argument 'planted'")

    monkeypatch.setattr(type(dec), "_decode", buggy)
    with pytest.raises(TypeError, match="planted") as caught:
        dec.frames_at([0, 1])
    assert not isinstance(caught.value, DecodeError)
    assert caught.traceback[-1].name == "buggy"  # the bug's own frame, not a re-raise of ours

    def library_error(self: decode.Decoder, indices: list[int]) -> object:
        raise RuntimeError("Requested next frame while there are no more frames left to decode.")

    monkeypatch.setattr(type(dec), "_decode", library_error)
    with pytest.raises(DecodeError, match="planted: .*no more frames"):
        dec.frames_at([0, 1])
    monkeypatch.setattr(type(dec), "_decode", real)
    assert dec.frames_at([0, 1]).data.shape[0] == 2


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
    real_pid = handles.os.getpid()
    monkeypatch.setattr(handles.os, "getpid", lambda: real_pid + 1)  # what a forked worker sees
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


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s at 10 fps then 2 s at 30 fps in one file (variable frame rate, average 20 fps)."""
    from videos import ffmpeg

    path = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    parts = ["testsrc2=size=64x48:rate=10:duration=2", "testsrc2=size=64x48:rate=30:duration=2"]
    args = [ffmpeg(), "-y", "-v", "error", "-f", "lavfi", "-i", parts[0], "-f", "lavfi", "-i", parts[1]]
    args += ["-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0", "-fps_mode", "passthrough"]
    subprocess.run(
        [*args, "-c:v", "libx264", "-preset", "ultrafast", str(path)], check=True, capture_output=True
    )
    return path


def _all_frames(path: Path) -> dict[float, torch.Tensor]:
    import av

    with av.open(str(path)) as container:
        return {
            round(float(f.time), 4): torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1)
            for f in container.decode(video=0)
        }


@pytest.mark.parametrize("backend", BACKENDS)
def test_frames_by_time_are_right_on_a_variable_frame_rate_clip(backend: str, vfr_clip: Path) -> None:
    truth = _all_frames(vfr_clip)
    assert len(truth) == 80 and sorted(truth)[21] == pytest.approx(2.0 + 1 / 30, abs=1e-3)
    dec = open_decoder(vfr_clip, backend)
    asked = [0.3, 1.93, 1.97, 3.0, 3.5, 3.96]
    got = dec.frames_at_times(asked)  # default tolerance: half of each frame's own period
    expected = [0.3, 1.9, 2.0, 3.0, 3.5, 3.9667]
    assert got.pts.tolist() == pytest.approx(expected, abs=2e-3)
    for t, frame in zip(got.pts.tolist(), got.data, strict=True):
        _close(frame.unsqueeze(0), truth[round(t, 4)].unsqueeze(0))
    played = dec.frames_played_at([1.99, 2.01, 3.34])
    assert played.pts.tolist() == pytest.approx([1.9, 2.0, 3.3333], abs=2e-3)
    with pytest.raises(TimestampToleranceError, match="asked for t=4.5000s"):
        dec.frames_played_at([4.5])


def test_even_frames_follow_the_one_rule_on_a_variable_frame_rate_clip(vfr_clip: Path) -> None:
    from medvideocap.caption import sample_frames
    from medvideocap.media.ffmpeg import sample_even
    from medvideocap.media.frames import even_times

    assert even_times(0.0, 4.0, 4) == [0.5, 1.5, 2.5, 3.5]  # centres of equal slices
    dec = open_decoder(vfr_clip, "torchcodec")
    times = even_times(dec.start, dec.end, 4)  # the last frame (3.967 s) has zero duration here
    _, caption_times = sample_frames(vfr_clip, 4)
    assert caption_times == pytest.approx(times, abs=1 / 60)
    assert sample_even(vfr_clip, 4).times == pytest.approx(caption_times, abs=1e-4)
    assert decode.even_frames(vfr_clip, 4, backend="pyav").pts.tolist() == pytest.approx(
        caption_times, abs=1e-4
    )
