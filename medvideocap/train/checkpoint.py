"""What a run leaves on disk: resumable checkpoints and the shareable final export.

A checkpoint holds everything an uninterrupted run would still have in memory (optimizer, LR schedule,
global and per-rank noise RNG states, EMA shadow, step and batches consumed), written to a temporary
folder and renamed into place, so a job killed at any point resumes exactly where its last checkpoint
stopped. LoRA runs save only the adapter (in the layout diffusers loads), never the frozen base.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from medvideocap.generate import RUN_FILE
from medvideocap.train.config import NonFiniteTrainingError, TrainConfig
from medvideocap.train.model import trainable_params

#: In the run folder: which checkpoint has the lowest held-out loss so far; rotation never deletes it.
BEST_FILE = "best.json"


# ------------------------------------------------------------------------------------------ RNG states
def global_rng_state() -> dict[str, Any]:
    """Python's, numpy's, torch's and (when present) every CUDA device's global RNG state."""
    import random

    import numpy as np

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`global_rng_state` took."""
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------ LoRA and EMA
def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}


def save_lora(transformer: torch.nn.Module, directory: Path) -> None:
    """The adapter in the layout ``WanPipeline.load_lora_weights(directory)`` reads, with its PEFT config
    as the safetensors adapter metadata: without it diffusers assumes alpha = rank and applies a LoRA
    trained with another alpha at the wrong scale (1 instead of alpha / rank), silently."""
    from diffusers import WanPipeline

    config: Any = getattr(transformer, "peft_config", {}).get("default")
    WanPipeline.save_lora_weights(
        directory,
        transformer_lora_layers=lora_state_dict(transformer),
        transformer_lora_adapter_metadata=config.to_dict() if config is not None else None,
    )


def load_lora(transformer: torch.nn.Module, directory: Path) -> None:
    from diffusers import WanPipeline
    from peft.utils import set_peft_model_state_dict

    state = WanPipeline.lora_state_dict(str(directory))
    state = {k.removeprefix("transformer."): v for k, v in state.items() if k.startswith("transformer.")}
    result = set_peft_model_state_dict(transformer, state, adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RuntimeError(f"{directory}: LoRA keys that do not fit this model: {unexpected[:5]}")


def register_lora_hooks(accelerator: Any) -> None:
    """accelerate would save and load the whole (frozen) base model; keep only the adapter instead."""

    def save_hook(models: list[Any], weights: list[Any], out_dir: str) -> None:
        if accelerator.is_main_process:
            save_lora(accelerator.unwrap_model(models[0]), Path(out_dir))
        if weights:
            weights.pop()

    def load_hook(models: list[Any], in_dir: str) -> None:
        load_lora(accelerator.unwrap_model(models.pop()), Path(in_dir))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_ema(ema: Any, names: list[str], directory: Path, *, shadow: bool = True) -> None:
    """``ema.json`` (decay, optimization step, ...) and, unless ``shadow`` is off (a sharded run keeps
    the shadow in its shards), ``ema.safetensors``."""
    from safetensors.torch import save_file

    state = ema.state_dict()
    tensors = state.pop("shadow_params")
    if shadow:
        save_file(
            {n: t.detach().cpu().contiguous() for n, t in zip(names, tensors, strict=True)},
            directory / "ema.safetensors",
        )
    (directory / "ema.json").write_text(json.dumps(state))


def load_ema(ema: Any, names: list[str], directory: Path, *, shadow: bool = True) -> None:
    """What :func:`save_ema` wrote (the shadow left as it is when ``shadow`` is off)."""
    from safetensors.torch import load_file

    state = json.loads((directory / "ema.json").read_text())
    if shadow:
        tensors = load_file(directory / "ema.safetensors")
        state["shadow_params"] = [tensors[n] for n in names]
    ema.load_state_dict(state)


# ------------------------------------------------------------------------------------------ finiteness
def nonfinite_weights(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors holding NaN or inf (of a sharded tensor, this rank's shard). A pass over the
    weights per save, small next to writing them; the loop already stops on a non-finite loss or gradient,
    this catches an update that overflowed the weights themselves (a learning rate far too high, fp16
    weights)."""
    from torch.distributed.tensor import DTensor

    def shard(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if isinstance(t, DTensor) else t

    return [name for name, t in named if not bool(torch.isfinite(shard(t).detach()).all())]


def _ema_weights(transformer: Any, ema: Any) -> list[tuple[str, torch.Tensor]]:
    """The EMA shadow copies of the trainable parameters, by the parameters' names."""
    names = [n for n, _ in trainable_params(transformer)]
    return [(f"ema {n}", t) for n, t in zip(names, ema.shadow_params, strict=True)]


def _nonfinite_error(bad: list[str], where: Path, action: str, cfg: TrainConfig) -> NonFiniteTrainingError:
    return NonFiniteTrainingError(
        f"{where}: not {action}: {len(bad)} weight tensors hold NaN/inf (first: {bad[:3]}). The last "
        f"checkpoint in {Path(cfg.output_dir) / 'checkpoints'} (if any) holds finite weights: resume from it "
        "with a lower learning_rate, or check the training data"
    )


# ------------------------------------------------------------------------------------------ checkpoints
def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Completed checkpoints, oldest first (a ``.tmp`` folder left by a kill is never one of them)."""
    root = Path(output_dir) / "checkpoints"
    return sorted(p for p in root.glob("step-*") if p.is_dir() and (p / "trainer_state.json").is_file())


def best_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint ``best.json`` names (lowest held-out loss so far, :mod:`~medvideocap.train.heldout`)."""
    path = Path(output_dir) / BEST_FILE
    return Path(output_dir) / json.loads(path.read_text())["checkpoint"] if path.is_file() else None


def rotate_checkpoints(cfg: TrainConfig) -> None:
    """Delete all but the newest ``checkpoints_keep`` checkpoints, and the best one, which outlives them."""
    best = best_checkpoint(cfg.output_dir)
    for old in checkpoint_dirs(cfg.output_dir)[: -cfg.checkpoints_keep]:
        if old != best:
            shutil.rmtree(old)


def save_checkpoint(
    accelerator: Any,
    cfg: TrainConfig,
    state: dict[str, Any],
    transformer: Any,
    ema: Any,
    gen: torch.Generator,
    *,
    sharded_optimizer: Any = None,
) -> Path:
    """Everything a resumed job needs, written to a temporary folder and renamed into place, so a kill
    mid-save leaves the previous checkpoint intact. accelerate writes optimizer, LR scheduler, RNG states
    (and the full model); the LoRA-only model goes through :func:`register_lora_hooks`. A sharded run
    (``sharded_optimizer`` given: its optimizer) has every rank write its shards of the model, optimizer
    and EMA instead (:func:`medvideocap.train.fsdp.save_sharded`)."""
    from safetensors.torch import save_file

    root = Path(cfg.output_dir) / "checkpoints"
    final = root / f"step-{state['step']:08d}"
    tmp = root / f".step-{state['step']:08d}.tmp"
    # Every rank checks its weights (its shards, under FSDP) and all learn the verdict, so none is left
    # waiting in save_state for a rank that refused.
    unwrapped = accelerator.unwrap_model(transformer)
    weights: list[tuple[str, torch.Tensor]] = list(trainable_params(unwrapped))
    if ema is not None:
        weights += _ema_weights(unwrapped, ema)
    bad = nonfinite_weights(weights)
    if accelerator.reduce(torch.tensor(float(len(bad)), device=accelerator.device), reduction="sum").item():
        raise _nonfinite_error(bad or ["(on another rank)"], final, "saved", cfg)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    save_file({"state": gen.get_state()}, tmp / f"noise_rng_{accelerator.process_index}.safetensors")
    if sharded_optimizer is not None:
        from medvideocap.train.fsdp import save_sharded

        save_sharded(tmp, unwrapped, sharded_optimizer, ema)
    if accelerator.is_main_process:
        if ema is not None:
            names = [n for n, _ in trainable_params(unwrapped)]
            save_ema(ema, names, tmp, shadow=sharded_optimizer is None)
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        rotate_checkpoints(cfg)
    accelerator.wait_for_everyone()
    return final


def find_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint ``cfg.resume`` names: the newest complete one (``auto``), none, or a given folder."""
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        found = checkpoint_dirs(cfg.output_dir)
        return found[-1] if found else None
    path = Path(cfg.resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"resume={cfg.resume}: not a checkpoint folder (no trainer_state.json)")
    return path


def restore_checkpoint(
    accelerator: Any,
    checkpoint: Path,
    gen: torch.Generator,
    ema: Any,
    names: list[str],
    *,
    sharded: tuple[Any, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load what :func:`save_checkpoint` wrote into the prepared objects; returns the trainer state
    (step, batches consumed) and the global RNG states as the checkpoint holds them, which the loop puts
    back once its DataLoader and trackers have started (they draw from the global RNGs). ``sharded``:
    a sharded run's (transformer, optimizer), loaded with its EMA from the checkpoint's shards."""
    from safetensors.torch import load_file

    accelerator.load_state(str(checkpoint))
    if sharded is not None:
        from medvideocap.train.fsdp import load_sharded

        load_sharded(checkpoint, *sharded, ema)
    rng = global_rng_state()
    state: dict[str, Any] = json.loads((checkpoint / "trainer_state.json").read_text())
    gen.set_state(load_file(checkpoint / f"noise_rng_{accelerator.process_index}.safetensors")["state"])
    if ema is not None:
        load_ema(ema, names, checkpoint, shadow=sharded is None)
    return state, rng


# ------------------------------------------------------------------------------------------ final export
def export_final(cfg: TrainConfig, transformer: Any, ema: Any, out: Path, run: dict[str, Any]) -> Path:
    """The shareable result: a LoRA file for ``pipe.load_lora_weights`` or a full ``WanPipeline`` folder,
    with a model card. Holds the EMA weights when ``export_ema`` (usually the better model)."""
    from medvideocap.models import load_wan_pipeline

    params = [p for _, p in trainable_params(transformer)]
    use_ema = ema is not None and cfg.export_ema
    bad = nonfinite_weights(_ema_weights(transformer, ema) if use_ema else trainable_params(transformer))
    if bad:
        raise _nonfinite_error(bad, out, "exported", cfg)
    if use_ema:
        ema.store(params)
        ema.copy_to(params)
    try:
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if cfg.mode == "lora":
            save_lora(transformer, tmp)
        elif cfg.export_pipeline:
            load_wan_pipeline(cfg.model_id, revision=cfg.revision, transformer=transformer).save_pretrained(
                tmp
            )
        else:
            transformer.save_pretrained(tmp / "transformer")
    finally:
        if use_ema:
            ema.restore(params)
    (tmp / RUN_FILE).write_text(json.dumps({**run, "ema_weights": use_ema}, indent=2))
    (tmp / "README.md").write_text(render_model_card(cfg, run | {"ema_weights": use_ema}))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def render_model_card(cfg: TrainConfig, run: dict[str, Any]) -> str:
    import jinja2

    from medvideocap.resources import resource

    template = jinja2.Template(
        resource("cards", "model_card.md.j2").read_text(), undefined=jinja2.StrictUndefined
    )
    return template.render(cfg=cfg.model_dump(), run=run)
