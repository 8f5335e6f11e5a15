"""Shared fixtures for the latent-cache tests: a tiny Wan-shaped model folder, a small hub-native
dataset of real mp4s, the frame spec / config that keep encoding CPU-fast, and caches of random rows
written without any model (for reader and bucketing tests that need exact control of the stored values)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from videos import make_video

from medvideocap.latents import FORMAT, FORMAT_VERSION, ShardWriter, array_bytes, write_manifest
from medvideocap.latents.encode import EncodeConfig
from medvideocap.media.frames import FrameSpec

#: 9 frames (2 latent frames + 1) at 8 fps, 32x48: the tiny VAE encodes it in milliseconds.
SPEC = FrameSpec(num_frames=9, fps=8.0, height=32, width=48, position="center")
MAX_LENGTH = 64


def encode_cli(root: Path, out: str | Path, model_dir: Path, *extra: str) -> list[str]:
    """``medvideocap encode-latents`` as a user types it, with the settings of :func:`tiny_config`
    (SPEC's frames, MAX_LENGTH, two rows a shard), for the tests that run it as a process."""
    return [
        sys.executable,
        "-m",
        "medvideocap",
        "encode-latents",
        str(root),
        "--out",
        str(out),
        *extra,
        "--vae",
        str(model_dir),
        "--device",
        "cpu",
        "--num-frames",
        str(SPEC.num_frames),
        "--fps",
        f"{SPEC.fps:g}",
        "--height",
        str(SPEC.height),
        "--width",
        str(SPEC.width),
        "--max-length",
        str(MAX_LENGTH),
        "--rows-per-shard",
        "2",
    ]


def tiny_config(model_dir: Path, **overrides: object) -> EncodeConfig:
    """Encode settings pointing at the tiny pipeline folder, as a user would point at the real repo."""
    kwargs: dict[str, object] = {
        "vae": str(model_dir),
        "device": "cpu",
        "max_length": MAX_LENGTH,
        "frames": SPEC,
        "rows_per_shard": 2,
    }
    kwargs.update(overrides)
    return EncodeConfig(**kwargs)  # type: ignore[arg-type]


def make_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like the Wan2.1 Diffusers repo (vae/, text_encoder/, tokenizer/, ...)."""
    from medvideocap.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-wan") / "model")


def write_hub_native(
    root: Path, n: int, *, short_ids: tuple[int, ...] = (), seconds: float = 2.0
) -> list[str]:
    """A hub-native dataset (H3's writer) of ``n`` real 64x48 H.264 clips, all in ``train``.

    Clips listed in ``short_ids`` last 0.5 s: too short for :data:`SPEC`, so the loader skips them.
    Sources alternate between two lavfi patterns so latents differ from clip to clip."""
    videos = root.parent / f"{root.name}-mp4"
    paths = {}
    for i in range(n):
        clip_id = f"clip{i:03d}"
        paths[clip_id] = make_video(
            videos / f"{clip_id}.mp4",
            seconds=0.5 if i in short_ids else seconds,
            fps=8,
            size=(64, 48),
            source="testsrc2" if i % 2 == 0 else "smptebars",
        )
    return write_videos(root, paths)


def write_videos(root: Path, paths: dict[str, Path]) -> list[str]:
    """Any mp4s (id -> path) as a hub-native ``train`` split, records filled from ``probe``."""
    from medvideocap.dataset.schema import Caption, ClipRecord
    from medvideocap.dataset.writer import DatasetWriter
    from medvideocap.media.probe import probe

    with DatasetWriter(root, card=False) as writer:  # the card is H3's concern, not ours
        for i, (clip_id, path) in enumerate(paths.items()):
            info = probe(path)
            record = ClipRecord(
                id=clip_id,
                group=clip_id,
                file_name=f"{clip_id}.mp4",
                split="train",
                duration=info.duration,
                fps=info.fps,
                num_frames=info.num_frames,
                width=info.width,
                height=info.height,
                captions=[
                    Caption(
                        name="detailed",
                        text=f"A surgeon demonstrates suture technique number {i}" + " slowly" * (i % 4),
                        style="detailed",
                    )
                ],
            )
            writer.write(record, path)
    return list(paths)


def write_random_cache(
    root: Path,
    shapes: list[tuple[int, ...]],
    *,
    logvar: float | None = None,
    rows_per_shard: int = 3,
    text_dim: int = 8,
    seed: int = 0,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """A moments cache of ``len(shapes)`` random rows (ids ``r000``...), latent ``shapes[i]`` (C, F, h, w),
    with a manifest whose per-channel mean/std are not 0/1 (so normalisation shows). The log-variance is
    random around -2, or ``logvar`` everywhere (to probe the clip). ``edit(row)`` may change each row
    in place before it is written: how the corruption tests plant one bad row among good ones."""
    channels = shapes[0][0]
    manifest = write_manifest(
        root,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "vae_id": "random",
            "vae_subfolder": None,
            "vae_revision": "random",
            "vae_class": "AutoencoderKLWan",
            "latents_mean": [0.25 * c for c in range(channels)],
            "latents_std": [0.5 + c for c in range(channels)],
            "normalization": "none",
            "store": "moments",
            "frame_spec": {},
            "text_encoder_id": "random",
            "text_encoder_subfolder": None,
            "text_encoder_revision": "random",
            "tokenizer_subfolder": None,
            "max_length": 16,
            "caption": "detailed",
            "compute_dtype": "float32",
            "storage_dtype": "float32",
        },
    )
    rng = np.random.default_rng(seed)
    writer = ShardWriter(root, "train", 0, rows_per_shard=rows_per_shard)
    for i, shape in enumerate(shapes):
        mean = rng.standard_normal(shape, dtype=np.float32)
        lv = (
            np.full(shape, logvar, np.float32)
            if logvar is not None
            else rng.standard_normal(shape, np.float32) - 2
        )
        text = rng.standard_normal((int(rng.integers(2, 9)), text_dim), dtype=np.float32)
        row: dict = {
            "id": f"r{i:03d}",
            "caption": f"row {i}",
            "media_type": "video",
            "latent_kind": "moments",
        }
        for prefix, arr in (("vae_latent", mean), ("vae_logvar", lv), ("text_embedding", text)):
            data, stored_shape, dtype = array_bytes(arr)
            row.update({f"{prefix}_bytes": data, f"{prefix}_shape": stored_shape, f"{prefix}_dtype": dtype})
        row.update(text_len=text.shape[0], fingerprint=manifest["fingerprint"])
        if edit is not None:
            edit(row)
        writer.add(row)
    writer.flush()
    return root
