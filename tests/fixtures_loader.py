"""Hub-native test datasets for the loader tests, written with the real ``DatasetWriter``.

Clips are real tiny H.264 files (64x48 or 96x48, 8 fps, 1-3 s) made once per (seconds, fps, size) per
process. ``corrupt`` adds clips whose mp4 member is garbage or cut in half, named ``bad_*``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from videos import ffmpeg, make_video

from medvideocap.dataset.schema import Caption, Category, ClipRecord
from medvideocap.dataset.writer import DatasetWriter

_CACHE: dict[tuple[float, int, tuple[int, int]], bytes] = {}


def clip_bytes(seconds: float = 2.0, fps: int = 8, size: tuple[int, int] = (64, 48)) -> bytes:
    key = (seconds, fps, size)
    if key not in _CACHE:
        with tempfile.TemporaryDirectory() as tmp:
            _CACHE[key] = make_video(Path(tmp) / "c.mp4", seconds=seconds, fps=fps, size=size).read_bytes()
    return _CACHE[key]


def clip_record(
    clip_id: str, *, seconds: float, fps: int, size: tuple[int, int], split: str = "train"
) -> ClipRecord:
    return ClipRecord(
        id=clip_id,
        group=clip_id,
        file_name=f"{clip_id}.mp4",
        split=split,  # type: ignore[arg-type]
        duration=seconds,
        fps=fps,
        num_frames=int(round(seconds * fps)),
        width=size[0],
        height=size[1],
        codec="h264",
        category=Category.medical_teaching,
        captions=[
            Caption(
                name="detailed", text=f"In this video, a surgeon explains step {clip_id}.", style="detailed"
            ),
            Caption(name="brief", text=f"Step {clip_id}.", style="brief"),
        ],
    )


def make_hub_native(
    root: Path,
    n_clips: int = 8,
    *,
    shard_bytes: int = 60_000,
    wide_every: int = 0,
    corrupt: tuple[str, ...] = (),
    seconds: tuple[float, ...] = (2.0, 3.0),
) -> Path:
    """``n_clips`` good clips ``c000..`` in split train (several shards at the default shard size);
    every ``wide_every``-th clip is 96x48 instead of 64x48. ``corrupt`` may hold "garbage" and/or
    "truncated": extra clips ``bad_garbage`` / ``bad_truncated`` placed mid-split."""
    with DatasetWriter(root, shard_bytes=shard_bytes, card=False) as writer:
        for i in range(n_clips):
            size = (96, 48) if wide_every and i % wide_every == wide_every - 1 else (64, 48)
            secs = seconds[i % len(seconds)]
            writer.write(clip_record(f"c{i:03d}", seconds=secs, fps=8, size=size), clip_bytes(secs, 8, size))
            if i == n_clips // 2:
                good = clip_bytes(2.0, 8, (64, 48))
                if "garbage" in corrupt:
                    rec = clip_record("bad_garbage", seconds=2.0, fps=8, size=(64, 48))
                    writer.write(rec, bytes(range(256)) * 16)
                if "truncated" in corrupt:
                    rec = clip_record("bad_truncated", seconds=2.0, fps=8, size=(64, 48))
                    writer.write(rec, good[: len(good) // 2])
    return root


def rotated_clip(
    path: Path, rotation: int, *, seconds: float = 1.0, size: tuple[int, int] = (96, 64)
) -> Path:
    """A real clip stored ``size`` (width, height) with a display matrix of ``rotation`` degrees.

    FFmpeg 5.1 has no ``-display_rotation``; its mov muxer turns the legacy ``rotate`` stream tag into a
    display matrix on a stream copy (a re-encode would apply the rotation instead). 96x64 because
    decord 0.6 mis-decodes rotated clips whose upright width is 48."""
    with tempfile.TemporaryDirectory() as tmp:
        plain = make_video(Path(tmp) / "plain.mp4", seconds=seconds, fps=8, size=size)
        args = [ffmpeg(), "-y", "-v", "error", "-i", str(plain), "-c", "copy"]
        args += ["-metadata:s:v:0", f"rotate={rotation}", str(path)]
        subprocess.run(args, check=True, capture_output=True)
    return path


def edit_metadata(src: Path, dst: Path, split: str, edit: Callable[[dict[str, list]], None]) -> Path:
    """A copy of dataset ``src`` at ``dst`` whose ``metadata/{split}.parquet`` columns went through
    ``edit`` (a dict of column name -> list of values, changed in place; a deleted column is dropped),
    types kept."""
    shutil.copytree(src, dst)
    path = dst / "metadata" / f"{split}.parquet"
    table = pq.read_table(path)
    columns = table.to_pydict()
    edit(columns)
    schema = pa.schema([f for f in table.schema if f.name in columns], metadata=table.schema.metadata)
    pq.write_table(pa.Table.from_pydict(columns, schema=schema), path)
    return dst
