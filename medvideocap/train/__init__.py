"""Reference MedGen trainer: fine-tune Wan2.1-T2V on MedVideoCap-55K latents, LoRA or full.

MedGen's weights are Wan2.1-T2V fine-tunes, but no training code shipped with them. This file is the
whole recipe, meant to be read top to bottom: config -> data -> model -> objective -> checkpoints ->
validation -> the loop. Everything heavy (VAE, UMT5) ran once in ``medvideocap encode-latents``; here
only the transformer trains (``source=DATASET`` instead of ``latents=`` encodes on the fly, for quick tries).

    medvideocap train --config medgen-1.3b-lora --set latents=cache/ --set output_dir=runs/lora
    python -m medvideocap.train --config medgen-1.3b-lora latents=cache/ max_steps=2000
    accelerate launch --num_processes 8 -m medvideocap.train --config medgen-1.3b-full latents=cache/

``accelerate launch`` (with an ``accelerate config`` for multi-node or FSDP) or ``torchrun`` is all
scaling needs (on CPUs, for a dry run of DDP: ``ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 ...``).
A job killed at any point restarts with the same command: ``resume: auto`` picks up the newest checkpoint
and continues the same sequence of batches, noise and timesteps (``stop_at_step`` ends a job early on
purpose, for time-boxed cluster slots, without changing the LR schedule).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from medvideocap.atomic import atomic_write_json, atomic_write_text
from medvideocap.defaults import WAN_T2V_1_3B

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

#: Validation prompts in the spirit of the paper's evaluation set (our own wording).
DEFAULT_VALIDATION_PROMPTS = [
    "Laparoscopic view of a surgeon placing interrupted sutures to close a small incision in the abdominal "
    "wall, instruments moving steadily under bright surgical lighting.",
    "Transthoracic echocardiogram in the apical four-chamber view, grayscale ultrasound showing all four "
    "heart chambers contracting and the valves opening and closing.",
    "A trainer demonstrates adult CPR on a manikin, hands centered on the chest, compressing at a steady "
    "rhythm while a second person prepares a defibrillator.",
    "Medical animation of red blood cells flowing through an artery, the vessel wall pulsing gently with "
    "each heartbeat.",
]


class NoTrainingDataError(RuntimeError):
    """Training cannot go on: the data source stopped giving batches (every clip of a run of batches
    failed to load), so the loop would otherwise spin forever over an endless batch plan."""


# ----------------------------------------------------------------------------------------------------- config
class TrainConfig(BaseModel):
    """Every knob of a run. Shipped configs live in ``medvideocap/configs/*.yaml``; any field can be
    overridden as ``key=value`` (values parse as YAML, so ``lora_target_modules=[to_q,to_v]`` works)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # where things are
    output_dir: str = "runs/medgen"
    latents: str | None = None  # an `encode-latents` cache folder (the fast path)
    source: str | None = None  # or encode on the fly: any dataset `medvideocap.load` reads
    split: str = "train"
    expect_fingerprint: str | None = None  # refuse a cache built from a different dataset/recipe
    # model
    model_id: str = WAN_T2V_1_3B  # hub id or a local pipeline folder
    revision: str | None = None
    transformer_subfolder: str = "transformer"
    mode: Literal["lora", "full"] = "lora"
    lora_rank: int = 32
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]
    gradient_checkpointing: bool = True
    mixed_precision: Literal["no", "fp16", "bf16"] = "bf16"
    # data
    frames: int = 81  # on-the-fly only (a cache fixed these when it was encoded)
    height: int = 480
    width: int = 832
    fps: float = 16.0
    caption: str = "detailed"
    batch_size: int = 1  # per device
    gradient_accumulation_steps: int = 1
    num_workers: int = 2
    max_empty_batches: int = 100  # batches in a row with no readable clip (on-the-fly) before stopping
    text_seq_len: int = 512  # WanPipeline pads prompts to 512 tokens at inference; train the same way
    caption_dropout: float = 0.1  # probability of the unconditional prompt, for classifier-free guidance
    caption_dropout_embeds: Literal["empty", "zeros"] = "empty"  # UMT5("") as WanPipeline's negative, or 0s
    # objective (rectified flow, as Wan)
    flow_shift: float = 3.0
    timestep_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # optimisation
    learning_rate: float = 5e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    lr_scheduler: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    max_steps: int = 1000
    stop_at_step: int | None = None  # end this job early (time-boxed cluster jobs); schedule keeps max_steps
    ema_decay: float = 0.999  # 0 disables EMA
    seed: int = 1024
    # bookkeeping
    log_every: int = 10
    report_to: str | None = "tensorboard"  # any tracker accelerate supports, or null
    checkpoint_every: int = 500
    checkpoints_keep: int = 3
    resume: str = "auto"  # auto (newest checkpoint in output_dir, if any) | none | a checkpoint folder
    validation_every: int = 0  # 0: only at the end
    validation_prompts: list[str] = DEFAULT_VALIDATION_PROMPTS
    validation_frames: int = 81
    validation_height: int = 480
    validation_width: int = 832
    validation_steps: int = 50
    validation_guidance: float = 5.0
    validation_seed: int = 0
    validation_fps: float = 16.0
    export_ema: bool = True  # the final export holds EMA weights (when EMA is on)
    export_pipeline: bool = True  # full mode: write a complete WanPipeline folder, not only transformer/

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        return "no" if value is False else value  # YAML reads a bare `no` as false

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        problems = []
        if not 0.0 <= self.caption_dropout <= 1.0:
            problems.append(f"caption_dropout={self.caption_dropout} is not a probability")
        if self.flow_shift <= 0:
            problems.append(f"flow_shift={self.flow_shift} must be > 0 (1.0 = no shift)")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay={self.ema_decay} must be in [0, 1) (0 disables EMA)")
        if (
            min(
                self.batch_size,
                self.gradient_accumulation_steps,
                self.max_steps,
                self.checkpoint_every,
                self.max_empty_batches,
            )
            < 1
        ):
            problems.append(
                "batch_size, gradient_accumulation_steps, max_steps, checkpoint_every, max_empty_batches "
                "must be >= 1"
            )
        for name in ("frames", "validation_frames"):
            if (getattr(self, name) - 1) % 4:
                problems.append(f"{name}={getattr(self, name)}: Wan's VAE needs 4k+1 frames (81, 49, 17, 5)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def load_config(name_or_path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """A shipped config name (``medgen-1.3b-lora``) or a YAML path, then ``key=value`` overrides."""
    path = Path(name_or_path)
    if not path.is_file() and path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no config {str(name_or_path)!r}; shipped configs: {shipped}")
    values = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected key=value")
        key = key.strip()
        if key not in TrainConfig.model_fields:
            hint = ""
            if key.split(".")[0] in ("data", "dataset", "data_path", "data_dir", "path", "train_data"):
                hint = "; the training data is latents=CACHE_DIR (an encode-latents folder) or source=DATASET"
            raise ValueError(f"override {item!r}: unknown field {key!r} (see {path}){hint}")
        values[key] = yaml.safe_load(raw)
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise ValueError(f"config {path}: {exc}") from exc


# ------------------------------------------------------------------------------------------------------- data
class ResumableBatches(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Endless batches for one rank: the latent cache's shape-bucketed, per-epoch-shuffled batch plan,
    epoch after epoch, starting ``consumed`` batches in.

    The trainer counts the batches it *consumed* (not what the DataLoader prefetched), so a resumed job
    starts exactly where the stopped one left off. Indices travel as (epoch, index) so each worker's copy
    of the dataset re-samples VAE posteriors for the right epoch."""

    def __init__(
        self, dataset: Any, batch_size: int, *, seed: int, rank: int, world_size: int, consumed: int
    ):
        from medvideocap.loading.sampler import BucketBatchSampler

        opts: dict[str, Any] = {
            "shuffle": True,
            "seed": seed,
            "drop_last": True,
            "rank": rank,
            "world_size": world_size,
        }
        if hasattr(dataset, "bucket_sampler"):
            self.plan = dataset.bucket_sampler(batch_size, **opts)
        else:  # any other map-style dataset of equal-shaped items
            self.plan = BucketBatchSampler([()] * len(dataset), batch_size, **opts)
        self.per_epoch = len(self.plan)
        if self.per_epoch == 0:
            raise ValueError(
                f"{len(dataset)} training items give no full batch of {batch_size} per rank on {world_size} rank(s)"
            )
        self.consumed = consumed

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, offset = divmod(self.consumed, self.per_epoch)
        while True:
            self.plan.load_state_dict({"epoch": epoch, "consumed": offset, "seed": self.plan.seed})
            for batch in self.plan:
                yield [(epoch, i) for i in batch]
            epoch, offset = epoch + 1, 0


class EpochIndexed(torch.utils.data.Dataset):
    """Looks up ``(epoch, index)`` so posterior sampling follows the epoch inside every worker process."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def open_dataset(cfg: TrainConfig) -> Any:
    """The latent cache written by ``encode-latents`` (normalised latents + unpadded UMT5 embeddings), or,
    without one, pixel clips from ``medvideocap.load`` for :class:`OnTheFlyEncoder`."""
    if cfg.latents:
        from medvideocap.latents import load_latents

        return load_latents(
            cfg.latents,
            split=cfg.split,
            expect_fingerprint=cfg.expect_fingerprint,
            normalize=True,
            sample_seed=cfg.seed,
        )
    if cfg.source:
        from medvideocap.loading.loader import load
        from medvideocap.media.frames import FrameSpec

        spec = FrameSpec(
            num_frames=cfg.frames, fps=cfg.fps, height=cfg.height, width=cfg.width, seed=cfg.seed
        )
        return load(cfg.source, cfg.split, frames=spec, caption=cfg.caption, seed=cfg.seed)
    raise ValueError("no training data: set latents=PATH (an encode-latents folder) or source=DATASET")


class OnTheFlyEncoder:
    """Turns a pixel batch from ``medvideocap.load`` into the batch a latent cache would give, with the
    same models and steps as ``encode-latents`` (its ``BatchEncoder``). Costs a VAE + UMT5 pass per step
    and their memory on the GPU: pre-encode for real runs, use this to try a dataset quickly."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        from medvideocap.latents.encode import BatchEncoder, EncodeConfig

        config = EncodeConfig(
            vae=cfg.model_id,
            vae_revision=cfg.revision,
            text_encoder_revision=cfg.revision,
            max_length=cfg.text_seq_len,
            caption=cfg.caption,
            device=str(device),
        )
        self.encoder = BatchEncoder(config)
        self.manifest = self.encoder.manifest
        self.text_seq_len = cfg.text_seq_len
        c = len(self.manifest["latents_mean"])
        self.mean = torch.tensor(self.manifest["latents_mean"], device=device).view(1, c, 1, 1, 1)
        self.std = torch.tensor(self.manifest["latents_std"], device=device).view(1, c, 1, 1, 1)

    def __call__(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        mean, logvar = (t.to(self.mean.device) for t in self.encoder.encode_videos(batch["video"]))
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        latents = (mean + torch.exp(0.5 * logvar) * noise - self.mean) / self.std
        texts = self.encoder.encode_texts(batch["caption"])
        embeds = torch.zeros(len(texts), self.text_seq_len, texts[0].shape[-1], device=latents.device)
        for i, t in enumerate(texts):
            embeds[i, : t.shape[0]] = t.to(latents.device)
        return {"latents": latents, "prompt_embeds": embeds, "id": batch["id"], "caption": batch["caption"]}


def make_collate(text_seq_len: int) -> Any:
    """``collate_latents`` then zero-pad the prompt to ``text_seq_len`` tokens, exactly as WanPipeline pads
    prompts at inference (Wan's cross-attention takes no mask; the zeros are what it learned to ignore)."""
    from medvideocap.latents import collate_latents

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate_latents(items)
        embeds = batch["prompt_embeds"]
        embeds = embeds * batch["prompt_mask"].unsqueeze(-1).to(embeds.dtype)
        if embeds.shape[1] > text_seq_len:
            raise ValueError(f"prompt of {embeds.shape[1]} tokens exceeds text_seq_len={text_seq_len}")
        batch["prompt_embeds"] = torch.nn.functional.pad(embeds, (0, 0, 0, text_seq_len - embeds.shape[1]))
        return batch

    return collate


def empty_prompt_embeds(cfg: TrainConfig, manifest: dict[str, Any], device: torch.device) -> torch.Tensor:
    """(text_seq_len, D) conditioning used when a caption is dropped: "" through the same UMT5 that encoded
    the cache (from its manifest), which is what WanPipeline feeds as the default negative prompt for CFG.
    Runs once at start-up; the encoder is freed right after."""
    from medvideocap.latents.encode import EncodeConfig, load_text_encoder

    name = manifest.get("text_encoder_id") or cfg.model_id
    encoder, tokenizer = load_text_encoder(
        EncodeConfig(
            vae=name,
            text_encoder_subfolder=manifest.get("text_encoder_subfolder", "text_encoder"),
            tokenizer_subfolder=manifest.get("tokenizer_subfolder", "tokenizer"),
            text_encoder_revision=cfg.revision if name == cfg.model_id else None,
            device=str(device),
        )
    )
    tokens = tokenizer(
        [""],
        padding="max_length",
        max_length=cfg.text_seq_len,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    ).to(device)
    with torch.no_grad():
        hidden = encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state[0].float()
    hidden[int(tokens.attention_mask.sum()) :] = 0.0
    del encoder
    return hidden.cpu()


# ------------------------------------------------------------------------------------------------------ model
def build_transformer(
    cfg: TrainConfig, weight_dtype: torch.dtype, transformer: Any = None
) -> torch.nn.Module:
    """Wan's transformer (``cfg.model_id``, or the given one), with LoRA adapters (only they train) or
    fully trainable in fp32.

    LoRA keeps the frozen base in ``weight_dtype`` (bf16 halves memory; diffusers keeps Wan's norms and
    time embedder in fp32 on its own) and the adapters in fp32 so small updates are not rounded away."""
    from diffusers import WanTransformer3DModel

    dtype = weight_dtype if cfg.mode == "lora" else torch.float32
    if transformer is None:
        transformer = WanTransformer3DModel.from_pretrained(
            cfg.model_id, subfolder=cfg.transformer_subfolder, revision=cfg.revision, torch_dtype=dtype
        )
    if cfg.mode == "lora":
        from peft import LoraConfig

        transformer.requires_grad_(False)
        transformer.add_adapter(
            LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                init_lora_weights=True,
                target_modules=cfg.lora_target_modules,
            )
        )
        from diffusers.training_utils import cast_training_params

        cast_training_params(transformer, dtype=torch.float32)
    else:
        transformer.requires_grad_(True)
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    return transformer


# -------------------------------------------------------------------------------------------------- objective
def sample_sigmas(n: int, cfg: TrainConfig, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Noise levels in (0, 1): logit-normal (or uniform) draws, then Wan's shift
    ``s' = shift*s / (1 + (shift-1)*s)``, which spends more training on high noise, where large-scale
    structure (anatomy, camera layout) is decided."""
    if cfg.timestep_sampling == "logit_normal":
        u = torch.randn(n, generator=generator, device=device) * cfg.logit_std + cfg.logit_mean
        s = torch.sigmoid(u)
    else:
        s = torch.rand(n, generator=generator, device=device)
    return cfg.flow_shift * s / (1.0 + (cfg.flow_shift - 1.0) * s)


def flow_matching_loss(
    model: torch.nn.Module,
    batch: dict[str, Any],
    cfg: TrainConfig,
    generator: torch.Generator,
    null_embeds: torch.Tensor,
) -> torch.Tensor:
    """Rectified flow: x_t = (1-s) x0 + s noise, the model predicts the velocity noise - x0 at timestep
    1000*s (Wan's convention), MSE in fp32. Every random draw comes from ``generator`` in a fixed order,
    so checkpointing its state makes resumed runs bit-for-bit continuations."""
    x0 = batch["latents"]
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    sigmas = sample_sigmas(b, cfg, generator, x0.device)
    drop = torch.rand(b, generator=generator, device=x0.device) < cfg.caption_dropout
    s = sigmas.view(b, 1, 1, 1, 1)
    noisy = (1.0 - s) * x0 + s * noise
    target = noise - x0
    embeds = torch.where(drop.view(b, 1, 1), null_embeds.to(batch["prompt_embeds"]), batch["prompt_embeds"])
    pred = model(
        hidden_states=noisy, timestep=sigmas * 1000.0, encoder_hidden_states=embeds, return_dict=False
    )[0]
    return torch.nn.functional.mse_loss(pred.float(), target.float())


# ------------------------------------------------------------------------------------------------ checkpoints
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


def _trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


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


def save_ema(ema: Any, names: list[str], directory: Path) -> None:
    from safetensors.torch import save_file

    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    save_file(
        {n: t.detach().cpu().contiguous() for n, t in zip(names, shadow, strict=True)},
        directory / "ema.safetensors",
    )
    (directory / "ema.json").write_text(json.dumps(state))


def load_ema(ema: Any, names: list[str], directory: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(directory / "ema.safetensors")
    state = json.loads((directory / "ema.json").read_text())
    state["shadow_params"] = [tensors[n] for n in names]
    ema.load_state_dict(state)


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Completed checkpoints, oldest first (a ``.tmp`` folder left by a kill is never one of them)."""
    root = Path(output_dir) / "checkpoints"
    return sorted(p for p in root.glob("step-*") if p.is_dir() and (p / "trainer_state.json").is_file())


def save_checkpoint(
    accelerator: Any,
    cfg: TrainConfig,
    state: dict[str, Any],
    transformer: Any,
    ema: Any,
    gen: torch.Generator,
) -> Path:
    """Everything a resumed job needs, written to a temporary folder and renamed into place, so a kill
    mid-save leaves the previous checkpoint intact. accelerate writes optimizer, LR scheduler, RNG states
    (and the full model); the LoRA-only model goes through the save hook registered in ``train``."""
    from safetensors.torch import save_file

    root = Path(cfg.output_dir) / "checkpoints"
    final = root / f"step-{state['step']:08d}"
    tmp = root / f".step-{state['step']:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    save_file({"state": gen.get_state()}, tmp / f"noise_rng_{accelerator.process_index}.safetensors")
    if accelerator.is_main_process:
        if ema is not None:
            save_ema(ema, [n for n, _ in _trainable(accelerator.unwrap_model(transformer))], tmp)
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(cfg.output_dir)[: -cfg.checkpoints_keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def find_resume(cfg: TrainConfig) -> Path | None:
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        found = checkpoint_dirs(cfg.output_dir)
        return found[-1] if found else None
    path = Path(cfg.resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"resume={cfg.resume}: not a checkpoint folder (no trainer_state.json)")
    return path


def export_final(cfg: TrainConfig, transformer: Any, ema: Any, out: Path, run: dict[str, Any]) -> Path:
    """The shareable result: a LoRA file for ``pipe.load_lora_weights`` or a full ``WanPipeline`` folder,
    with a model card. Holds the EMA weights when ``export_ema`` (usually the better model)."""
    from diffusers import WanPipeline

    params = [p for _, p in _trainable(transformer)]
    use_ema = ema is not None and cfg.export_ema
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
            pipe = WanPipeline.from_pretrained(cfg.model_id, revision=cfg.revision, transformer=transformer)
            pipe.save_pretrained(tmp)
        else:
            transformer.save_pretrained(tmp / "transformer")
    finally:
        if use_ema:
            ema.restore(params)
    (tmp / "medvideocap_train.json").write_text(json.dumps({**run, "ema_weights": use_ema}, indent=2))
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


# ------------------------------------------------------------------------------------------------- validation
def validate(
    cfg: TrainConfig, transformer: Any, ema: Any, step: int, cache: dict[str, Any], device: torch.device
) -> Path:
    """Sample the validation prompts with WanPipeline around the training transformer (EMA weights if
    on), write ``validation/step-N/{i}.mp4`` and a contact sheet. VAE + text encoder load once."""
    from diffusers import WanPipeline

    from medvideocap.generate import contact_sheet, sample_videos, write_mp4

    if "pipe" not in cache:
        cache["pipe"] = WanPipeline.from_pretrained(
            cfg.model_id,
            revision=cfg.revision,
            transformer=transformer,
            torch_dtype=_dtype(cfg.mixed_precision),
        ).to(device)
        cache["pipe"].set_progress_bar_config(disable=True)
    pipe = cache["pipe"]
    pipe.transformer = transformer
    params = [p for _, p in _trainable(transformer)]
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    was_training = transformer.training
    transformer.eval()
    try:
        with torch.autocast(
            device.type, dtype=_dtype(cfg.mixed_precision), enabled=cfg.mixed_precision != "no"
        ):
            videos = sample_videos(
                pipe,
                cfg.validation_prompts,
                num_frames=cfg.validation_frames,
                height=cfg.validation_height,
                width=cfg.validation_width,
                steps=cfg.validation_steps,
                guidance=cfg.validation_guidance,
                seed=cfg.validation_seed,
            )
    finally:
        transformer.train(was_training)
        if ema is not None:
            ema.restore(params)
    out = Path(cfg.output_dir) / "validation" / f"step-{step:08d}"
    for i, video in enumerate(videos):
        write_mp4(video, out / f"{i:02d}.mp4", fps=cfg.validation_fps)
    (out / "prompts.json").write_text(json.dumps(cfg.validation_prompts, indent=2))
    contact_sheet(videos, out / "contact_sheet.png")
    return out


def _pixel_collate(items: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    from medvideocap.loading.loader import collate

    return collate(items)


def _next_batch(batches: Iterator[Any], state: dict[str, Any], cfg: TrainConfig, dataset: Any) -> Any:
    """The next batch, counting every one consumed. The pixel loader yields None for a batch whose clips
    all failed to load; a run of ``max_empty_batches`` of those means the source gives nothing (the
    plan is endless, so waiting would spin forever): stop with what the loader said."""
    for _ in range(cfg.max_empty_batches):
        batch = next(batches)
        state["consumed_batches"] += 1
        if batch is not None:
            return batch
    skipped = getattr(getattr(dataset, "stats", None), "skipped_ids", None) or []
    why = "; ".join(f"{cid}: {reason}" for cid, reason in skipped[-3:]) or "see the loader's warnings"
    raise NoTrainingDataError(
        f"{cfg.source or cfg.latents}: {cfg.max_empty_batches} batches in a row had no clip that could be "
        f"loaded (at step {state['step']}); last skipped: {why}. Fix the data or the frame settings "
        "(frames, fps, height, width), or pre-encode it with `medvideocap encode-latents`, which records "
        "each bad clip and goes on"
    )


def _dtype(mixed_precision: str) -> torch.dtype:
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


# ------------------------------------------------------------------------------------------------------- loop
@dataclass
class TrainResult:
    """What a run did: per-optimizer-step mean loss (rank-averaged), final step, where things went."""

    losses: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    step: int = 0
    resumed_from: Path | None = None
    export: Path | None = None
    validations: list[Path] = field(default_factory=list)
    transformer: Any = None  # the trained (unwrapped) model, for notebooks and tests


def train(cfg: TrainConfig, dataset: Any = None) -> TrainResult:
    """Run (or resume) training; ``dataset`` defaults to the latent cache at ``cfg.latents``."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from rich.console import Console

    console = Console(stderr=True)
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
    set_seed(cfg.seed)  # same model init on every rank; per-rank randomness comes from `gen` below
    device = accelerator.device
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))

    # data
    dataset = dataset if dataset is not None else open_dataset(cfg)
    on_the_fly = OnTheFlyEncoder(cfg, device) if cfg.latents is None and cfg.source else None
    manifest: dict[str, Any] = on_the_fly.manifest if on_the_fly else getattr(dataset, "manifest", None) or {}
    if manifest.get("caption") not in (None, cfg.caption):
        raise ValueError(
            f"{cfg.latents}: the cache was encoded from {manifest['caption']!r} captions but caption="
            f"{cfg.caption!r}; re-encode with `encode-latents --caption {cfg.caption}` or set caption="
        )

    # model + optimiser
    weight_dtype = _dtype(cfg.mixed_precision)
    transformer = build_transformer(cfg, weight_dtype)
    model_config: Any = transformer.config
    channels, text_dim = int(model_config.in_channels), int(model_config.text_dim)
    if on_the_fly is None:
        sample = dataset[0]
        if sample["latents"].shape[0] != channels or sample["prompt_embeds"].shape[-1] != text_dim:
            raise ValueError(
                f"{cfg.latents or 'dataset'}: latents have {sample['latents'].shape[0]} channels and prompts "
                f"{sample['prompt_embeds'].shape[-1]} dims, but {cfg.model_id} expects {channels} and "
                f"{text_dim}: was the cache encoded with this model's VAE and text encoder "
                f"({manifest.get('vae_id')})?"
            )
    if cfg.caption_dropout > 0 and cfg.caption_dropout_embeds == "empty":
        null_embeds = empty_prompt_embeds(cfg, manifest, device)
    else:
        null_embeds = torch.zeros(cfg.text_seq_len, text_dim)
    null_embeds = null_embeds.to(device)
    transformer = accelerator.prepare(transformer)  # before the optimizer: FSDP replaces the parameters
    named = _trainable(accelerator.unwrap_model(transformer))
    optimizer = torch.optim.AdamW(
        [p for _, p in named],
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        weight_decay=cfg.weight_decay,
    )
    lr_scheduler = get_scheduler(
        "constant_with_warmup" if cfg.lr_scheduler == "constant" else "cosine",
        optimizer=optimizer,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=cfg.max_steps,
    )
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
    ema = EMAModel([p for _, p in named], decay=cfg.ema_decay, foreach=True) if cfg.ema_decay > 0 else None
    if cfg.mode == "lora":
        # accelerate would save/load the whole (frozen) base model; keep only the adapter instead.
        def save_hook(models: list[Any], weights: list[Any], out_dir: str) -> None:
            if accelerator.is_main_process:
                save_lora(accelerator.unwrap_model(models[0]), Path(out_dir))
            if weights:
                weights.pop()

        def load_hook(models: list[Any], in_dir: str) -> None:
            load_lora(accelerator.unwrap_model(models.pop()), Path(in_dir))

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)

    # resume
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + accelerator.process_index)
    state: dict[str, Any] = {"step": 0, "consumed_batches": 0}
    resume_from = find_resume(cfg)
    if resume_from is not None:
        from safetensors.torch import load_file

        accelerator.load_state(str(resume_from))
        resumed_rng = global_rng_state()  # the checkpoint's, as accelerate restored them
        state = json.loads((resume_from / "trainer_state.json").read_text())
        gen.set_state(load_file(resume_from / f"noise_rng_{accelerator.process_index}.safetensors")["state"])
        if ema is not None:
            load_ema(ema, [n for n, _ in named], resume_from)
        if accelerator.is_main_process:
            console.print(f"resumed from {resume_from} at step {state['step']}")

    batch_plan = ResumableBatches(
        dataset,
        cfg.batch_size,
        seed=cfg.seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        consumed=state["consumed_batches"],
    )
    loader = torch.utils.data.DataLoader(
        EpochIndexed(dataset),
        batch_sampler=batch_plan,
        num_workers=cfg.num_workers,
        collate_fn=_pixel_collate if on_the_fly else make_collate(cfg.text_seq_len),
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )
    if cfg.report_to:
        accelerator.init_trackers("medgen", config={k: str(v) for k, v in cfg.model_dump().items()})
    run_info = {
        "model_id": cfg.model_id,
        "revision": cfg.revision,
        "mode": cfg.mode,
        "latents": cfg.latents,
        "source": cfg.source if on_the_fly else None,
        "latents_fingerprint": manifest.get("fingerprint"),
        "caption": manifest.get("caption"),
        "num_items": len(dataset),
        "world_size": accelerator.num_processes,
    }
    metrics = output_dir / "metrics.jsonl"  # one line per step; steps past the resumed checkpoint dropped
    if accelerator.is_main_process:
        atomic_write_json(output_dir / "medvideocap_train.json", run_info, newline=False, fsync=False)
        kept = metrics.read_text().splitlines() if metrics.exists() else []
        kept = [line for line in kept if json.loads(line)["step"] <= state["step"]]
        atomic_write_text(metrics, "".join(f"{line}\n" for line in kept), fsync=False)

    # the loop: one iteration = one optimizer step over gradient_accumulation_steps micro-batches
    result = TrainResult(step=state["step"], resumed_from=resume_from)
    stop = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
    samples_per_step = cfg.batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes
    val_cache: dict[str, Any] = {}
    batches = iter(loader)
    if resume_from is not None:
        # Starting the loader (its worker base seed) and the trackers draw from the global RNGs after
        # load_state; the uninterrupted run made those draws before its checkpoint, so put the
        # checkpoint's states back: later checkpoints then hold the states an uninterrupted run has.
        set_global_rng_state(resumed_rng)
    transformer.train()
    t_last, steps_since_log = time.perf_counter(), 0
    while state["step"] < stop:
        step_loss = torch.zeros((), device=device)
        for micro in range(cfg.gradient_accumulation_steps):
            batch = _next_batch(batches, state, cfg, dataset)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            if on_the_fly is not None:
                batch = on_the_fly(batch, gen)
            last = micro == cfg.gradient_accumulation_steps - 1
            with accelerator.no_sync(transformer) if not last else contextlib.nullcontext():
                with accelerator.autocast():
                    loss = flow_matching_loss(transformer, batch, cfg, gen, null_embeds)
                accelerator.backward(loss / cfg.gradient_accumulation_steps)
            step_loss += loss.detach() / cfg.gradient_accumulation_steps
        grad_norm = accelerator.clip_grad_norm_([p for _, p in named], cfg.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step([p for _, p in named])
        state["step"] += 1
        steps_since_log += 1
        mean_loss = accelerator.reduce(step_loss, reduction="mean").item()
        result.losses.append(mean_loss)
        result.steps.append(state["step"])
        if accelerator.is_main_process:
            with metrics.open("a") as f:
                f.write(
                    json.dumps(
                        {"step": state["step"], "loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0]}
                    )
                )
                f.write("\n")

        if state["step"] % cfg.log_every == 0 or state["step"] == stop:
            elapsed = time.perf_counter() - t_last
            samples_s = samples_per_step * steps_since_log / elapsed
            tokens = math.prod(batch["latents"].shape[2:]) // 4  # patch (1, 2, 2): tokens per sample
            logs = {
                "loss": mean_loss,
                "lr": lr_scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "samples_per_s": samples_s,
                "tokens_per_s": samples_s * tokens,
            }
            accelerator.log(logs, step=state["step"])
            if accelerator.is_main_process:
                console.print(
                    f"step {state['step']:>7}/{cfg.max_steps}  loss {mean_loss:.4f}  lr {logs['lr']:.2e}  "
                    f"grad {logs['grad_norm']:.3f}  {samples_s:.2f} samples/s  {logs['tokens_per_s']:.0f} tok/s",
                    soft_wrap=True,
                )
            t_last, steps_since_log = time.perf_counter(), 0
        if state["step"] % cfg.checkpoint_every == 0 or state["step"] == stop:
            save_checkpoint(accelerator, cfg, dict(state), transformer, ema, gen)
        if cfg.validation_every and state["step"] % cfg.validation_every == 0 and accelerator.is_main_process:
            val = validate(cfg, accelerator.unwrap_model(transformer), ema, state["step"], val_cache, device)
            result.validations.append(val)

    result.step = state["step"]
    result.transformer = accelerator.unwrap_model(transformer)
    accelerator.wait_for_everyone()
    if state["step"] >= cfg.max_steps and accelerator.is_main_process:
        run_info["steps"] = state["step"]
        result.export = export_final(
            cfg, accelerator.unwrap_model(transformer), ema, output_dir / "final", run_info
        )
        if not cfg.validation_every and cfg.validation_prompts:
            val = validate(cfg, accelerator.unwrap_model(transformer), ema, state["step"], val_cache, device)
            result.validations.append(val)
    accelerator.end_training()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medvideocap.train --config NAME_OR_PATH key=value ...``"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m medvideocap.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="shipped config name or a YAML file")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config fields")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
        return 0
    try:
        result = train(cfg)
    except NoTrainingDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"step": result.step, "export": str(result.export) if result.export else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
