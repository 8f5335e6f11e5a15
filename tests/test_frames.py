"""FrameSpec: which frame indices a clip gives, and what size they come out."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from medvideocap.media.frames import FrameSpec, nearest_bucket, resize_crop, sample_rng, to_output


def _rng(key: str = "clip", seed: int = 0, epoch: int = 0) -> np.random.Generator:
    return sample_rng(seed, epoch, key)


def test_frame_counts_other_than_4k_plus_1_warn_for_wan() -> None:
    with pytest.warns(UserWarning, match=r"frames \[16\] are not 4k\+1"):
        FrameSpec(num_frames=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FrameSpec(num_frames=81)
        FrameSpec(num_frames=49, buckets=((17, 480, 832), (49, 480, 480)))


def test_sides_are_rounded_to_multiples_of_16() -> None:
    with pytest.warns(UserWarning, match="rounded"):
        spec = FrameSpec(height=470, width=830)
    assert (spec.height, spec.width) == (464, 832)
    with pytest.warns(UserWarning, match="buckets rounded"):
        spec = FrameSpec(buckets=((17, 100, 200),))
    assert spec.buckets == ((17, 96, 208),)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_frames": 0}, {"stride": 0}, {"fps": -1}, {"position": "end"}, {"short": "drop"}, {"crop": "x"}],
)
def test_invalid_specs_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="FrameSpec"):
        FrameSpec(**kwargs)


def test_target_fps_resamples_by_index() -> None:
    spec = FrameSpec(num_frames=5, fps=15, position="start")
    assert spec.indices(240, 30.0, 5, _rng()) == [0, 2, 4, 6, 8]
    spec = FrameSpec(num_frames=5, fps=16, position="start")  # 25 -> 16 fps: steps of 1.5625
    assert spec.indices(250, 25.0, 5, _rng()) == [0, 2, 3, 5, 6]
    spec = FrameSpec(num_frames=5, fps=None, stride=3, position="start")
    assert spec.indices(100, 25.0, 5, _rng()) == [0, 3, 6, 9, 12]


def test_center_window_is_centred_and_random_window_is_seeded() -> None:
    spec = FrameSpec(num_frames=5, fps=None, position="center")
    assert spec.indices(25, 8.0, 5, _rng()) == [10, 11, 12, 13, 14]
    rand = FrameSpec(num_frames=5, fps=None, position="random")
    starts = {rand.indices(100, 8.0, 5, _rng(f"clip{i}"))[0] for i in range(20)}
    assert len(starts) > 5 and all(0 <= s <= 95 for s in starts)
    assert rand.indices(100, 8.0, 5, _rng("a", seed=3)) == rand.indices(100, 8.0, 5, _rng("a", seed=3))
    assert [rand.indices(100, 8.0, 5, _rng("a", epoch=e))[0] for e in range(5)] != [
        rand.indices(100, 8.0, 5, _rng("a", epoch=0))[0]
    ] * 5


def test_short_clip_is_skipped_or_padded_by_policy() -> None:
    assert FrameSpec(num_frames=9, fps=None, short="skip").indices(6, 8.0, 9, _rng()) is None
    padded = FrameSpec(num_frames=9, fps=None, short="pad").indices(6, 8.0, 9, _rng())
    assert padded == [0, 1, 2, 3, 4, 5, 5, 5, 5]
    exact = FrameSpec(num_frames=9, fps=None, short="skip").indices(9, 8.0, 9, _rng())
    assert exact == list(range(9))


def test_nearest_bucket_matches_aspect_ratio_and_prefers_frames_the_clip_has() -> None:
    buckets = ((49, 480, 832), (81, 480, 832), (49, 480, 480), (49, 832, 480))
    assert nearest_bucket(buckets, 720, 480, frames_available=200) == (81, 480, 832)
    assert nearest_bucket(buckets, 720, 480, frames_available=60) == (49, 480, 832)
    assert nearest_bucket(buckets, 500, 500, frames_available=200) == (49, 480, 480)
    assert nearest_bucket(buckets, 272, 640) == (49, 832, 480)
    assert nearest_bucket(buckets, 720, 480, frames_available=10) == (81, 480, 832)  # none fits: pad policy


def test_target_without_size_keeps_native_rounded_down_to_16() -> None:
    spec = FrameSpec(num_frames=9, height=None, width=None)
    assert spec.target(100, 8.0, 720, 480) == (9, 480, 720)
    assert spec.target(100, 8.0, 100, 50) == (9, 48, 96)
    assert FrameSpec(num_frames=9, height=None, width=320).target(100, 8.0, 720, 480) == (9, 208, 320)


def test_resize_crop_covers_then_crops_keeping_aspect() -> None:
    frames = torch.zeros(2, 3, 48, 96, dtype=torch.uint8)
    frames[..., :, :48] = 200  # left half bright
    out = resize_crop(frames, 32, 32)  # cover -> 32x64, centre crop 32x32 straddles both halves
    assert out.shape == (2, 3, 32, 32)
    assert out[..., :, 0].float().mean() > 150 and out[..., :, -1].float().mean() < 50
    a = resize_crop(frames, 32, 32, crop="random", rng=_rng("x"))
    b = resize_crop(frames, 32, 32, crop="random", rng=_rng("x"))
    assert torch.equal(a, b)
    lefts = {
        int(resize_crop(frames, 32, 32, crop="random", rng=_rng(f"k{i}"))[0, 0, 0].float().mean() > 100)
        for i in range(20)
    }
    assert lefts == {0, 1}


def test_output_is_channels_first_in_time_and_scaled() -> None:
    frames = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 4, 4)
    out = to_output(frames, "float")
    assert out.shape == (3, 2, 4, 4) and out.dtype == torch.float32
    assert out[:, 0].unique().tolist() == [-1.0] and out[:, 1].unique().tolist() == [1.0]
    assert to_output(frames, "uint8").dtype == torch.uint8
