"""Reference MedGen trainer: fine-tune Wan2.1-T2V on MedVideoCap-55K latents, LoRA or full.

MedGen's weights are Wan2.1-T2V fine-tunes, but no training code shipped with them. This package is the
whole recipe, in the order a run goes: :mod:`~medvideocap.train.config` (every knob),
:mod:`~medvideocap.train.model` (the transformer, LoRA or full), :mod:`~medvideocap.train.prepare`
(accelerator, optimiser, EMA), :mod:`~medvideocap.train.batches` (the resumable batch plan),
:mod:`~medvideocap.train.loop` (data adapters, the objective, the loop: read this one top to bottom),
:mod:`~medvideocap.train.metrics` (per-step log), :mod:`~medvideocap.train.heldout` (held-out loss, best
checkpoint), :mod:`~medvideocap.train.checkpoint` (resume, export) and :mod:`~medvideocap.train.validation`.

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

from medvideocap.train.batches import EpochIndexed, ResumableBatches, make_collate
from medvideocap.train.checkpoint import (
    checkpoint_dirs,
    export_final,
    find_resume,
    global_rng_state,
    load_ema,
    load_lora,
    lora_state_dict,
    render_model_card,
    save_checkpoint,
    save_ema,
    save_lora,
    set_global_rng_state,
)
from medvideocap.train.config import (
    CONFIG_DIR,
    DEFAULT_VALIDATION_PROMPTS,
    NonFiniteTrainingError,
    NoTrainingDataError,
    TrainConfig,
    load_config,
)
from medvideocap.train.loop import (
    OnTheFlyEncoder,
    TrainResult,
    empty_prompt_embeds,
    flow_matching_loss,
    open_dataset,
    sample_sigmas,
    train,
)
from medvideocap.train.model import build_transformer
from medvideocap.train.validation import Validator

# The names of the single-file trainer this package replaced; the helpers the loop factors out
# (prepare_trainee, optimizer_step, StepLog, ...) are imported from their modules.
__all__ = [
    "CONFIG_DIR",
    "DEFAULT_VALIDATION_PROMPTS",
    "EpochIndexed",
    "NonFiniteTrainingError",
    "NoTrainingDataError",
    "OnTheFlyEncoder",
    "ResumableBatches",
    "TrainConfig",
    "TrainResult",
    "Validator",
    "build_transformer",
    "checkpoint_dirs",
    "empty_prompt_embeds",
    "export_final",
    "find_resume",
    "flow_matching_loss",
    "global_rng_state",
    "load_config",
    "load_ema",
    "load_lora",
    "lora_state_dict",
    "make_collate",
    "open_dataset",
    "render_model_card",
    "sample_sigmas",
    "save_checkpoint",
    "save_ema",
    "save_lora",
    "set_global_rng_state",
    "train",
]
