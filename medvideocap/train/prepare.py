"""Getting a run ready: the Accelerator, the checks that a cache fits the model, and the optimiser,
LR schedule and EMA around the trainable parameters.

Split from :mod:`~medvideocap.train.loop` so the loop file holds only what a reader needs to follow a
step (data, objective, loop); everything here runs once, before the first step, in the order the
loop calls it (the order matters for exact resumes: model init draws from the global RNG).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from medvideocap.atomic import atomic_write_json
from medvideocap.generate import RUN_FILE
from medvideocap.train.checkpoint import register_lora_hooks
from medvideocap.train.config import TrainConfig
from medvideocap.train.ladder import make_optimizer, offload_blocks
from medvideocap.train.model import trainable_params, weight_dtype


@dataclass
class Trainee:
    """The model side of a run as accelerate prepared it: what trains, and what updates it."""

    transformer: Any
    optimizer: Any
    lr_scheduler: Any
    ema: Any  # diffusers' EMAModel, or None when ema_decay is 0
    names: list[str]  # the trainable parameters' names, in ``params`` order
    params: list[torch.nn.Parameter]
    sharded: bool = False  # distributed.strategy=fsdp (medvideocap.train.fsdp)

    def clip_grad_norm(self, accelerator: Any, max_norm: float) -> Any:
        """Clip the gradients to ``max_norm`` and return their total norm over every rank."""
        if self.sharded:
            from medvideocap.train.fsdp import clip_grad_norm

            return clip_grad_norm(self.params, max_norm)
        return accelerator.clip_grad_norm_(self.params, max_norm)

    def for_export(self, accelerator: Any) -> tuple[Any, Any]:
        """(the transformer, its EMA) as the export writes them, on the main process: a sharded model is
        gathered whole first (every process must call this)."""
        if self.sharded:
            from medvideocap.train.fsdp import gather_for_export

            return gather_for_export(self.transformer, self.ema, main=accelerator.is_main_process)
        return accelerator.unwrap_model(self.transformer), self.ema


def start_accelerator(cfg: TrainConfig) -> Any:
    """An Accelerator for this config, with the global seed set and the resolved config saved."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration, set_seed

    output_dir = Path(cfg.output_dir)
    # accelerate keeps its settings in a process-wide singleton; start from a clean one (the distributed
    # setup is kept) so train() can run again in one process with another precision (notebooks, tests).
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        log_with=cfg.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
        step_scheduler_with_optimizer=False,  # we step the LR schedule once per optimizer step ourselves
    )
    set_seed(cfg.seed)  # same model init on every rank; per-rank randomness comes from the noise generator
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return accelerator


def check_dataset(cfg: TrainConfig, dataset: Any, manifest: dict[str, Any], model_config: Any) -> None:
    """Refuse a cache encoded from other captions, or with another VAE / text encoder than the model's
    (``dataset`` None: pixels encoded on the fly by the model's own VAE, nothing to compare)."""
    if manifest.get("caption") not in (None, cfg.caption):
        raise ValueError(
            f"{cfg.latents}: the cache was encoded from {manifest['caption']!r} captions but caption="
            f"{cfg.caption!r}; re-encode with `encode-latents --caption {cfg.caption}` or set caption="
        )
    if dataset is None:
        return
    channels, text_dim = int(model_config.in_channels), int(model_config.text_dim)
    sample = dataset[0]
    if sample["latents"].shape[0] != channels or sample["prompt_embeds"].shape[-1] != text_dim:
        raise ValueError(
            f"{cfg.latents or 'dataset'}: latents have {sample['latents'].shape[0]} channels and prompts "
            f"{sample['prompt_embeds'].shape[-1]} dims, but {cfg.model_id} expects {channels} and "
            f"{text_dim}: was the cache encoded with this model's VAE and text encoder "
            f"({manifest.get('vae_id')})?"
        )


def empty_prompt_embedding(
    cfg: TrainConfig, manifest: dict[str, Any], device: torch.device, *, encoder: Any = None
) -> torch.Tensor:
    """The unpadded ``(L, D)`` float32 embedding of "" that a dropped caption is replaced with: the prompt
    WanPipeline feeds as its default negative for CFG, through the text encoder that embedded the captions.

    Cheapest source first, as UMT5-XXL is 11.4 GB even in bf16: the embedding ``encode-latents`` stored
    in the cache at ``cfg.latents``; else the text encoder of the on-the-fly ``encoder`` (a
    :class:`~medvideocap.latents.encode.BatchEncoder`, which needs it anyway); else the cache's text
    encoder (named by its manifest) loaded once, in the dtype the captions were embedded in (the training
    compute dtype when the manifest does not say), and freed."""
    from medvideocap import models
    from medvideocap.latents.format import read_empty_prompt, text_encoder_dtype

    if cfg.latents and manifest.get("fingerprint"):
        stored = read_empty_prompt(Path(cfg.latents), manifest["fingerprint"])
        if stored is not None:
            return torch.from_numpy(stored.copy())
    if encoder is not None:
        return encoder.encode_texts([""])[0]
    name = manifest.get("text_encoder_id") or cfg.model_id
    text_encoder, tokenizer = models.load_text_encoder(
        name,
        subfolder=manifest.get("text_encoder_subfolder", "text_encoder"),
        tokenizer_subfolder=manifest.get("tokenizer_subfolder", "tokenizer"),
        revision=cfg.revision if name == cfg.model_id else None,
        dtype=text_encoder_dtype(manifest) or weight_dtype(cfg.mixed_precision),
        device=str(device),
    )
    (hidden,) = models.encode_prompts(
        text_encoder, tokenizer, [""], max_length=cfg.text_seq_len, device=device
    )
    del text_encoder
    gc.collect()
    return hidden.cpu()


def prepare_trainee(cfg: TrainConfig, accelerator: Any, transformer: Any) -> Trainee:
    """The optimiser (:func:`~medvideocap.train.ladder.make_optimizer`), the LR schedule and EMA over the
    trainable parameters, prepared by accelerate; block offloading first, when the config asks for it."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    sharded = cfg.distributed.strategy == "fsdp"
    offload_blocks(cfg, transformer, accelerator.device)
    if sharded:  # not accelerator.prepare: on CPU ranks it would wrap the sharded model in DDP
        from medvideocap.train.fsdp import shard_transformer

        transformer = shard_transformer(cfg, transformer, accelerator)
    else:
        transformer = accelerator.prepare(transformer)  # before the optimizer: FSDP replaces the parameters
    names, params = zip(*trainable_params(accelerator.unwrap_model(transformer)), strict=True)
    optimizer = make_optimizer(cfg, params)
    lr_scheduler = get_scheduler(
        "constant_with_warmup" if cfg.lr_scheduler == "constant" else "cosine",
        optimizer=optimizer,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=cfg.max_steps,
    )
    if sharded:  # the optimizer's state is sharded: medvideocap.train.fsdp checkpoints it, not accelerate
        lr_scheduler = accelerator.prepare(lr_scheduler)
    else:
        optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
    ema = EMAModel(list(params), decay=cfg.ema_decay, foreach=True) if cfg.ema_decay > 0 else None
    if cfg.mode == "lora":
        register_lora_hooks(accelerator)
    return Trainee(transformer, optimizer, lr_scheduler, ema, list(names), list(params), sharded)


def record_run(
    cfg: TrainConfig, accelerator: Any, manifest: dict[str, Any], num_items: int, *, pixels: bool
) -> dict[str, Any]:
    """The run's record, written to ``output_dir/medvideocap_train.json`` (and later into the export):
    which base model and data it trained on, so ``generate`` and ``eval`` find a LoRA's base themselves."""
    run = {
        "model_id": cfg.model_id,
        "revision": cfg.revision,
        "mode": cfg.mode,
        "latents": cfg.latents,
        "source": cfg.source if pixels else None,
        "latents_fingerprint": manifest.get("fingerprint"),
        "caption": manifest.get("caption"),
        "num_items": num_items,
        "world_size": accelerator.num_processes,
    }
    if accelerator.is_main_process:
        atomic_write_json(Path(cfg.output_dir) / RUN_FILE, run, newline=False, fsync=False)
    return run
