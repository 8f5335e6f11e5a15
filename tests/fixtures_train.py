"""Shared fixtures for the trainer tests: a tiny Wan pipeline folder and a real latent cache made by
``encode-latents`` (tiny VAE + UMT5) from generated H.264 clips in a hub-native dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fixtures_loader import make_hub_native

from medvideocap.tiny import save_tiny_pipeline

FRAMES, HEIGHT, WIDTH = 5, 32, 32


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "wan-tiny")


@pytest.fixture(scope="session")
def latent_cache(tmp_path_factory: pytest.TempPathFactory, tiny_pipeline_dir: Path) -> Path:
    """4 clips (64x48, 8 fps, 2-3 s) -> 5 frames at 32x32 -> latents (4, 2, 4, 4) + UMT5 embeddings."""
    from medvideocap.latents.encode import EncodeConfig, encode_latents
    from medvideocap.media.frames import FrameSpec

    root = tmp_path_factory.mktemp("latents")
    hub = make_hub_native(root / "hub", n_clips=4)
    spec = FrameSpec(num_frames=FRAMES, fps=8.0, position="center", height=HEIGHT, width=WIDTH)
    config = EncodeConfig(vae=str(tiny_pipeline_dir), frames=spec, max_length=64, device="cpu")
    (report,) = encode_latents(hub, root / "cache", config=config)
    assert report.encoded == 4 and report.dropped == 0, report
    return root / "cache"


def tiny_train_config(tmp: Path, model_dir: Path, cache: Path, **overrides: Any) -> Any:
    """A CPU-sized run: fp32, no workers, no trackers, short prompts, 5x32x32 validation videos."""
    from medvideocap.train import TrainConfig

    values: dict[str, Any] = {
        "output_dir": str(tmp / "run"),
        "latents": str(cache),
        "model_id": str(model_dir),
        "mixed_precision": "no",
        "gradient_checkpointing": False,
        "num_workers": 0,
        "text_seq_len": 64,
        "report_to": None,
        "log_every": 1000,
        "checkpoint_every": 1000,
        "validation_prompts": [],
        "validation_frames": FRAMES,
        "validation_height": HEIGHT,
        "validation_width": WIDTH,
        "validation_steps": 2,
        "warmup_steps": 0,
        "lora_rank": 4,
        "lora_alpha": 4,
        "seed": 1024,
    }
    values.update(overrides)
    return TrainConfig(**values)


def copy_with_a_nan_row(cache: Path, dest: Path) -> tuple[Path, str]:
    """A copy of ``cache`` whose first row's latent holds one NaN, as a cache encoded before
    encode-latents checked for them (or damaged since) may; returns the copy's shard and the row's id."""
    import shutil

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(cache, dest)
    shard = sorted((dest / "train").glob("*.parquet"))[0]
    table = pq.read_table(shard)
    rows = table.to_pylist()
    values = np.frombuffer(rows[0]["vae_latent_bytes"], dtype=rows[0]["vae_latent_dtype"]).copy()
    values[0] = np.nan
    rows[0]["vae_latent_bytes"] = values.tobytes()
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    return shard, rows[0]["id"]
