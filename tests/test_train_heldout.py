"""The held-out loss (medvideocap.train.heldout) on tiny random Wan models over a real encode-latents cache:
a fixed hash split by clip id kept out of training, scored at every checkpoint on fixed inputs, the best
checkpoint named and kept, and resumes still exact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from fixtures_train import latent_cache, tiny_pipeline_dir, tiny_train_config

from medvideocap.train import checkpoint_dirs, load_config, open_dataset, train
from medvideocap.train.batches import ResumableBatches
from medvideocap.train.heldout import BEST_FILE, HELDOUT_FILE, split_heldout
from medvideocap.train.loop import velocity_loss

__all__ = ["latent_cache", "tiny_pipeline_dir"]  # fixtures, imported for pytest

HELDOUT = {"heldout_fraction": 0.02, "heldout_min": 2, "heldout_buckets": 2}


def _lines(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / HELDOUT_FILE).read_text().splitlines()]


def test_the_split_is_by_clip_id_and_the_held_out_clips_never_train(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    cfg = tiny_train_config(tmp_path, tiny_pipeline_dir, latent_cache, **HELDOUT)
    whole = open_dataset(cfg)
    training, heldout = split_heldout(cfg, whole, velocity_loss)
    again = split_heldout(cfg, open_dataset(cfg), velocity_loss)[1]
    assert len(heldout.ids) == 2 and heldout.ids == again.ids  # max(round(0.02 x 4), heldout_min)
    plan = ResumableBatches(training, 1, seed=cfg.seed, rank=0, world_size=1, consumed=0)
    seen = {training[i]["id"] for _, (batch) in zip(range(20), plan, strict=False) for _, i in batch}
    assert seen == set(whole.cache.ids) - set(heldout.ids)
    named = tiny_train_config(tmp_path, tiny_pipeline_dir, latent_cache, heldout_ids=[whole.cache.ids[0]])
    assert split_heldout(named, whole, velocity_loss)[1].ids == [whole.cache.ids[0]]


def test_every_checkpoint_is_scored_on_the_same_inputs_and_the_best_is_named(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    # learning_rate 0: the weights never change, so fixed noise and timesteps give equal scores
    opts: dict[str, Any] = {"max_steps": 4, "checkpoint_every": 2, "learning_rate": 0.0, "ema_decay": 0.0}
    opts |= HELDOUT
    train(tiny_train_config(tmp_path / "still", tiny_pipeline_dir, latent_cache, **opts))
    still = _lines(tmp_path / "still" / "run")
    assert [e["step"] for e in still] == [2, 4] and still[0]["loss"] == still[1]["loss"]
    assert set(still[0]["buckets"]) == {"t250", "t750"} and still[0]["clips"] == 2
    np.testing.assert_allclose(np.mean(list(still[0]["buckets"].values())), still[0]["loss"])

    opts |= {"learning_rate": 5e-3, "checkpoints_keep": 1, "checkpoint_every": 1, "mode": "full"}
    run = tmp_path / "moving" / "run"
    train(tiny_train_config(tmp_path / "moving", tiny_pipeline_dir, latent_cache, **opts))
    scored = _lines(run)
    assert [e["step"] for e in scored] == [1, 2, 3, 4] and len({e["loss"] for e in scored}) == 4
    best = json.loads((run / BEST_FILE).read_text())
    winner = min(scored, key=lambda e: e["loss"])
    assert best == {k: winner[k] for k in ("step", "checkpoint", "loss")}
    # rotation keeps the newest checkpoint and the best one
    kept = {p.name for p in checkpoint_dirs(run)}
    assert kept == {"step-00000004", Path(winner["checkpoint"]).name}


def test_a_resumed_run_scores_and_picks_the_best_exactly_as_an_uninterrupted_one(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    opts = {"max_steps": 4, "checkpoint_every": 1, "learning_rate": 5e-3, "ema_decay": 0.9, **HELDOUT}
    straight = train(tiny_train_config(tmp_path / "a", tiny_pipeline_dir, latent_cache, **opts))
    first = train(tiny_train_config(tmp_path / "b", tiny_pipeline_dir, latent_cache, stop_at_step=2, **opts))
    resumed = train(tiny_train_config(tmp_path / "b", tiny_pipeline_dir, latent_cache, **opts))
    assert resumed.steps == [3, 4]
    np.testing.assert_allclose(first.losses + resumed.losses, straight.losses, rtol=1e-5, atol=1e-6)
    a, b = _lines(tmp_path / "a" / "run"), _lines(tmp_path / "b" / "run")
    assert [e["step"] for e in b] == [1, 2, 3, 4]
    np.testing.assert_allclose([e["loss"] for e in a], [e["loss"] for e in b], rtol=1e-5, atol=1e-6)
    best = [json.loads((tmp_path / r / "run" / BEST_FILE).read_text()) for r in "ab"]
    assert best[0]["checkpoint"] == best[1]["checkpoint"]


def test_the_shipped_configs_hold_out_two_percent() -> None:
    for name in ("medgen-1.3b-lora", "medgen-1.3b-full", "medgen-14b-lora", "medgen-14b-full"):
        cfg = load_config(name)
        assert cfg.heldout_fraction == 0.02 and cfg.heldout_buckets == 4, name
