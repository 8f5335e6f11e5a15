"""What a run looks like from outside (medvideocap.train.metrics, medvideocap.train.throughput): the
TensorBoard scalars of a tiny CPU run, read back with TensorBoard's own reader, and the console line."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_train import latent_cache, tiny_pipeline_dir, tiny_train_config

from medvideocap.models import WAN_1_3B_TRANSFORMER_CONFIG
from medvideocap.train import train
from medvideocap.train.throughput import duration, rate, transformer_flops_per_token

__all__ = ["latent_cache", "tiny_pipeline_dir"]  # fixtures, imported for pytest


def test_a_runs_event_file_holds_loss_heldout_lr_grad_speed_and_memory(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_train_config(
        tmp_path,
        tiny_pipeline_dir,
        latent_cache,
        report_to="tensorboard",
        max_steps=4,
        log_every=2,
        checkpoint_every=2,
        heldout_fraction=0.02,
        heldout_min=2,
    )
    train(cfg)
    # accelerate's tracker writes the scalars beside its hparams record (a folder of its own)
    (acc,) = [
        acc
        for acc in (EventAccumulator(str(e)).Reload() for e in (tmp_path / "run" / "logs").rglob("events.*"))
        if "loss" in acc.Tags()["scalars"]
    ]
    tags = set(acc.Tags()["scalars"])
    wanted = {"loss", "lr", "grad_norm", "step_time_s", "samples_per_s", "tokens_per_s", "peak_memory_gib"}
    assert wanted | {"heldout/loss", "heldout/t125", "heldout/t375"} <= tags, tags
    assert "mfu" not in tags  # CPU: no card peak to divide by
    assert [e.step for e in acc.Scalars("loss")] == [2, 4]
    assert [e.step for e in acc.Scalars("heldout/loss")] == [2, 4]
    assert all(e.value > 0.01 for e in acc.Scalars("peak_memory_gib"))  # RSS of this process, in GiB
    err = capsys.readouterr().err.splitlines()
    (memory,) = [x for x in err if x.startswith("memory: loading peaked at")]  # once, at the first log
    assert memory.endswith("by step 2")
    line = [x for x in err if x.startswith("step       4/4")][0]
    assert "ETA 0s to step 4" in line and ("s/step" in line or "steps/s" in line)
    assert "0.00 samples/s" not in line


def test_rates_read_as_seconds_per_step_when_slow_and_etas_as_days_and_hours() -> None:
    assert rate(1 / 1.52) == "1.52 s/step" and rate(3.1) == "3.1 steps/s"
    assert duration(50_000 * 1.52) == "21h06m" and duration(3 * 86400 + 4 * 3600) == "3d04h"
    assert duration(250) == "4m10s" and duration(12.7) == "12s"


def test_the_flop_count_of_wan_1_3b_is_six_n_plus_attention() -> None:
    """81x480x832 (32,760 tokens), 512 text tokens: the 2 x parameters of the linears per token, plus
    attention's 4 x tokens x width per block, to within the small layers the count leaves out."""
    per_token = transformer_flops_per_token(WAN_1_3B_TRANSFORMER_CONFIG, 32_760, 512)
    d, layers = 1536, 30
    linears = layers * (4 * d * d + 2 * d * d + 2 * d * 8960)  # self q,k,v,o; cross q,o; FFN
    attention = layers * (2 * 32_760 * d + 2 * 512 * d)
    assert per_token == pytest.approx(2 * (linears + attention), rel=0.01)
