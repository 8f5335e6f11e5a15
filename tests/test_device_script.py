"""benchmarks/device.sh must be ready when a GPU turns up: its --dry-run runs every stage's code path (the
trainer's own step, our encoder beside diffusers', the sampling and the metrics) on the CPU with tiny
models and writes the one JSON the GPU run writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "device.sh"


def test_dry_run_runs_every_stage_and_writes_the_json(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "device-dry-run.json").read_text())
    stages = report["stages"]
    assert report["dry_run"] is True
    assert set(stages) == {"vae_encode", "train_lora", "train_full", "generate", "eval", "build_models"}
    assert not [name for name, s in stages.items() if "error" in s]
    assert stages["vae_encode"]["max_abs_diff_of_means"] == 0.0  # ours is diffusers' encode, same numbers
    for mode in ("lora", "full"):
        train = stages[f"train_{mode}"]
        assert (
            train["step_s_median"] > 0 and train["model_tflops_per_step"] > 0 and train["peak_memory_gib"] > 0
        )
    assert stages["generate"]["steps"] == 2 and stages["generate"]["seconds"] > 0
    scores = {k: v for k, v in stages["eval"].items() if isinstance(v, dict)}
    assert {"temporal_flickering", "subject_consistency", "aesthetic_quality"} <= set(scores)
    assert all(0.0 <= s["value"] <= 1.0 for s in scores.values())
    for batch in ("batch_5", "batch_80"):
        row = stages["build_models"][batch]
        assert row["frames_per_s"] > 0 and 0 < row["preprocess_share"] <= 1 and row["embedding_dim"] > 0


def test_without_a_gpu_the_real_run_says_so_and_exits_2(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        return  # the real run is what this machine is for
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no CUDA GPU" in done.stderr
