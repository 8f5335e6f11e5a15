"""Which frames of a clip to take, and what shape to give them.

A :class:`FrameSpec` turns a clip's frame count and frame rate into a list of frame indices (window
position, target fps by index resampling, stride) and a target (height, width) - either fixed or the
nearest of a list of (frames, height, width) buckets by aspect ratio, as finetrainers does for
mixed-resolution training. All randomness comes from a generator seeded by (spec seed, epoch, clip id),
so a sample is the same whichever worker, rank or resumed run produces it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from medvideocap.hashing import hash64

if TYPE_CHECKING:  # FrameSpec is read by CLIs for their --help defaults: no torch import for that
    import torch

Position = Literal["start", "center", "random"]


def _round16(value: int) -> int:
    return max(16, int(value / 16 + 0.5) * 16)


def even_times(start: float, end: float, n: int) -> list[float]:
    """The project's one rule for "``n`` evenly spaced frames" of a clip shown from ``start`` to ``end``
    seconds: the centres of ``n`` equal slices (never the very first frame, often a fade, nor past the
    end). The captioner, the build stages and the loader all call this, and take the frame nearest
    each instant by its real timestamp (:meth:`medvideocap.media.decode.Decoder.frames_at_times`)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    span = max(0.0, end - start)
    return [start + (i + 0.5) * span / n for i in range(n)]


def sample_rng(seed: int, epoch: int, key: str, salt: int = 0) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, clip id), never on visiting order."""
    digest = hash64(key, algorithm="blake2b", byteorder="little")
    return np.random.default_rng([seed, epoch, digest, salt])


@dataclass(frozen=True)
class FrameSpec:
    """Frame sampling and output resolution for the pixel loader.

    ``num_frames`` should be 4k+1 for Wan's VAE (81 by default, a warning otherwise). ``fps`` resamples
    the clip by frame index (None keeps the native rate). ``stride`` steps over the resampled frames.
    ``short`` says what to do with a clip too short for the window: skip it or repeat its last frame.
    ``height``/``width`` are rounded to multiples of 16 (the VAE's and patchifier's step); None keeps the
    native size cropped down to a multiple of 16. ``buckets`` replaces them with the nearest
    (frames, height, width) by aspect ratio among those the clip is long enough for.
    """

    num_frames: int = 81
    fps: float | None = 16.0
    position: Position = "random"
    stride: int = 1
    seed: int = 0
    short: Literal["skip", "pad"] = "skip"
    height: int | None = 480
    width: int | None = 832
    crop: Literal["center", "random"] = "center"
    buckets: tuple[tuple[int, int, int], ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"FrameSpec.num_frames must be >= 1, got {self.num_frames}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"FrameSpec.fps must be positive or None, got {self.fps}")
        if self.stride < 1:
            raise ValueError(f"FrameSpec.stride must be >= 1, got {self.stride}")
        if self.position not in ("start", "center", "random"):
            raise ValueError(f"FrameSpec.position must be start, center or random, got {self.position!r}")
        if self.short not in ("skip", "pad"):
            raise ValueError(f"FrameSpec.short must be skip or pad, got {self.short!r}")
        if self.crop not in ("center", "random"):
            raise ValueError(f"FrameSpec.crop must be center or random, got {self.crop!r}")
        frame_counts = [b[0] for b in self.buckets] if self.buckets else [self.num_frames]
        off = sorted({n for n in frame_counts if (n - 1) % 4})
        if off:
            warnings.warn(
                f"FrameSpec frames {off} are not 4k+1; Wan's VAE compresses time by 4 and wants e.g. 49 or 81",
                stacklevel=3,
            )
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value % 16:
                warnings.warn(
                    f"FrameSpec.{name} {value} rounded to {_round16(value)} (multiple of 16)", stacklevel=3
                )
                object.__setattr__(self, name, _round16(value))
        if self.buckets is not None:
            if not self.buckets:
                raise ValueError("FrameSpec.buckets is empty; give at least one (frames, height, width)")
            fixed = tuple((int(f), _round16(int(h)), _round16(int(w))) for f, h, w in self.buckets)
            if fixed != tuple(tuple(b) for b in self.buckets):
                warnings.warn(f"FrameSpec.buckets rounded to multiples of 16: {fixed}", stacklevel=3)
            object.__setattr__(self, "buckets", fixed)

    # -- temporal ----------------------------------------------------------------------------------
    def step(self, clip_fps: float) -> float:
        """Source frames advanced per output frame."""
        base = clip_fps / self.fps if self.fps else 1.0
        return base * self.stride

    def frames_available(self, clip_frames: int, clip_fps: float) -> int:
        """How many output frames the clip can give without padding."""
        return int(math.floor((clip_frames - 1) / self.step(clip_fps) + 1e-6)) + 1

    def indices(
        self, clip_frames: int, clip_fps: float, num_frames: int, rng: np.random.Generator
    ) -> list[int] | None:
        """Source frame indices for ``num_frames`` output frames, or None when the clip is too short and
        the policy is ``skip``. Padding repeats the last frame."""
        step = self.step(clip_fps)
        offsets = [int(round(k * step)) for k in range(num_frames)]
        room = clip_frames - 1 - offsets[-1]
        if room < 0:
            if self.short == "skip":
                return None
            return [min(o, clip_frames - 1) for o in offsets]
        if self.position == "start":
            start = 0
        elif self.position == "center":
            start = room // 2
        else:
            start = int(rng.integers(0, room + 1))
        return [start + o for o in offsets]

    # -- spatial -----------------------------------------------------------------------------------
    def target(self, clip_frames: int, clip_fps: float, width: int, height: int) -> tuple[int, int, int]:
        """(frames, height, width) of the output for a clip of this size."""
        if self.buckets:
            return nearest_bucket(self.buckets, width, height, self.frames_available(clip_frames, clip_fps))
        if self.height is None and self.width is None:
            return self.num_frames, max(16, height // 16 * 16), max(16, width // 16 * 16)
        if self.height is None:
            assert self.width is not None
            return self.num_frames, _round16(round(height * self.width / width)), self.width
        if self.width is None:
            return self.num_frames, self.height, _round16(round(width * self.height / height))
        return self.num_frames, self.height, self.width


def nearest_bucket(
    buckets: tuple[tuple[int, int, int], ...], width: int, height: int, frames_available: int | None = None
) -> tuple[int, int, int]:
    """The bucket closest in aspect ratio (log scale), preferring the most frames the clip can fill.

    Buckets needing more frames than the clip has are considered only when none fits.
    """
    fitting = [b for b in buckets if frames_available is None or b[0] <= frames_available]
    pool = fitting or list(buckets)
    aspect = math.log(width / height)
    return min(pool, key=lambda b: (round(abs(math.log(b[2] / b[1]) - aspect), 6), -b[0], -b[1] * b[2]))


def resize_crop(
    frames: torch.Tensor,
    height: int,
    width: int,
    *,
    crop: str = "center",
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """Scale ``(T, C, H, W)`` frames to cover (height, width), then crop; aspect ratio is kept."""
    from torchvision.transforms.v2 import functional as TF

    h, w = frames.shape[-2:]
    if (h, w) != (height, width):
        scale = max(height / h, width / w)
        new_h, new_w = max(height, math.ceil(h * scale - 1e-6)), max(width, math.ceil(w * scale - 1e-6))
        if (new_h, new_w) != (h, w):
            frames = TF.resize(frames, [new_h, new_w], antialias=True)
        if crop == "random" and rng is not None:
            top = int(rng.integers(0, new_h - height + 1))
            left = int(rng.integers(0, new_w - width + 1))
            frames = frames[..., top : top + height, left : left + width]
        else:  # torchvision's own centre (rounding included), so hand-written pipelines match ours
            frames = TF.center_crop(frames, [height, width])
    return frames


def to_output(frames: torch.Tensor, output: str) -> torch.Tensor:
    """``(T, C, H, W)`` uint8 -> ``(C, T, H, W)`` uint8, or float in [-1, 1] (what diffusers VAEs expect)."""
    video = frames.permute(1, 0, 2, 3)
    if output == "uint8":
        return video.contiguous()
    if output == "float":
        import torch

        return video.to(torch.float32).div_(127.5).sub_(1.0)
    raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
