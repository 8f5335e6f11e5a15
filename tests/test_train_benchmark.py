"""benchmarks/train_step.py must be ready to run when a GPU turns up: it bows out cleanly without one,
and its measuring code runs end to end (on a tiny model, on the CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "train_step.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs the real benchmark")
def test_without_a_gpu_it_says_so_and_exits_zero() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "no CUDA GPU" in out.stdout


def test_measuring_code_runs_on_a_tiny_model() -> None:
    args = [
        "--tiny",
        "--device",
        "cpu",
        "--frames",
        "5",
        "--height",
        "32",
        "--width",
        "32",
        "--text-len",
        "16",
        "--steps",
        "2",
        "--warmup",
        "1",
    ]
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert row["mode"] == "lora" and row["video_tokens_per_sample"] == 2 * 2 * 2 and row["step_s_median"] > 0
    assert row["trainable_params"] > 0
