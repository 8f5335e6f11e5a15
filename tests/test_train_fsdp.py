"""Fully sharded training (medvideocap.train.fsdp) on two CPU ranks (gloo, torchrun): the tiny random Wan
transformer sharded per block, bf16 compute over fp32 master weights, sharded checkpoints, and a run
stopped after a checkpoint and resumed equal to one that never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from fixtures_train import latent_cache, tiny_pipeline_dir, tiny_train_config

from medvideocap.train import TrainConfig, load_config

__all__ = ["latent_cache", "tiny_pipeline_dir"]  # fixtures, imported for pytest

FSDP = {
    "mode": "full",
    "distributed": {"strategy": "fsdp"},
    "mixed_precision": "bf16",
    "gradient_checkpointing": True,
    "batch_size": 1,
    "gradient_accumulation_steps": 2,
    "max_steps": 4,
    "checkpoint_every": 2,
    "learning_rate": 1e-3,
    "ema_decay": 0.9,
    "caption_dropout": 0.5,
    "export_pipeline": False,
}


def _run(out: Path, model: Path, cache: Path, *overrides: str, **values: Any) -> subprocess.CompletedProcess:
    cfg = tiny_train_config(out, model, cache, **{**FSDP, **values})
    out.mkdir(parents=True, exist_ok=True)
    (out / "cfg.yaml").write_text(yaml.safe_dump(cfg.model_dump()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "medvideocap.train", "--config", str(out / "cfg.yaml"), *overrides]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    # own process group, so a hang kills the ranks too, not only the launcher
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("2-rank FSDP run did not finish in 300 s")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _losses(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_rank_fsdp_run_checkpoints_shards_and_resumes_to_the_same_losses(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    straight = _run(tmp_path / "a", tiny_pipeline_dir, latent_cache)
    assert straight.returncode == 0, straight.stderr[-3000:]
    stopped = _run(tmp_path / "b", tiny_pipeline_dir, latent_cache, "stop_at_step=2")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert not (tmp_path / "b" / "run" / "final").exists()
    resumed = _run(tmp_path / "b", tiny_pipeline_dir, latent_cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "step 2" in resumed.stderr

    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    assert [m["loss"] for m in b] == [m["loss"] for m in a]  # bit for bit
    # each rank wrote its own shards; no single-file model or optimizer was written
    ckpt = tmp_path / "b" / "run" / "checkpoints" / "step-00000004"
    assert sorted(p.name for p in (ckpt / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not list(ckpt.glob("optimizer*.bin")) and not list(ckpt.glob("model*.safetensors"))
    assert not (ckpt / "ema.safetensors").exists() and (ckpt / "ema.json").is_file()  # shadow: in the shards

    # the export is the whole model, gathered: diffusers loads it, and both runs exported the same weights
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    exports = [tmp_path / r / "run" / "final" / "transformer" for r in ("a", "b")]
    loaded = WanTransformer3DModel.from_pretrained(exports[0])
    reference = WanTransformer3DModel.from_pretrained(tiny_pipeline_dir / "transformer")
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in reference.parameters())
    moved = [n for n, p in loaded.named_parameters() if not torch.equal(p, reference.get_parameter(n))]
    assert moved  # it trained
    first, second = (load_file(e / "diffusion_pytorch_model.safetensors") for e in exports)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_single_process_fsdp_run_is_refused_naming_the_launcher(
    tmp_path: Path, tiny_pipeline_dir: Path, latent_cache: Path
) -> None:
    from medvideocap.train import train

    cfg = tiny_train_config(tmp_path, tiny_pipeline_dir, latent_cache, **{**FSDP, "max_steps": 1})
    with pytest.raises(ValueError, match="torchrun --nproc_per_node N"):
        train(cfg)


def test_fsdp_config_refuses_what_the_sharded_path_does_not_do() -> None:
    full = {"mode": "full", "validation_prompts": [], "distributed": {"strategy": "fsdp"}}
    assert TrainConfig(**full).distributed.strategy == "fsdp"
    for bad, word in (
        ({"mode": "lora"}, "set mode=full"),
        ({"optimizer": "adamw8bit"}, "optimizer=adamw"),
        ({"validation_prompts": ["a"]}, "validation_prompts=[]"),
    ):
        with pytest.raises(ValueError, match=word.replace("[", r"\[").replace("]", r"\]")):
            TrainConfig(**{**full, **bad})
    with pytest.raises(ValueError, match="strategy"):
        TrainConfig(distributed={"strategy": "zero3"})
    cfg = load_config("medgen-1.3b-full", ["distributed.strategy=fsdp", "validation_prompts=[]"])
    assert cfg.distributed.strategy == "fsdp"
    assert cfg.model_dump()["distributed"] == {"strategy": "fsdp"}
