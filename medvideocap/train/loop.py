"""The MedGen training loop: data -> objective -> the loop, to read top to bottom.

Everything heavy (VAE, UMT5) ran once in ``medvideocap encode-latents``; here only the transformer
trains (``source=DATASET`` instead of ``latents=`` encodes on the fly, for quick tries). The config is
:mod:`~medvideocap.train.config`, the model :mod:`~medvideocap.train.model`, the one-off set-up
:mod:`~medvideocap.train.prepare`, the batch plan :mod:`~medvideocap.train.batches`, what lands on disk
:mod:`~medvideocap.train.checkpoint`, per-step reporting :mod:`~medvideocap.train.metrics`, the held-out
loss :mod:`~medvideocap.train.heldout` and the validation videos :mod:`~medvideocap.train.validation`.

Resumes are exact: every random draw of a step (the VAE posterior sample, drawn here on the training
device, flow noise, timesteps, caption dropout) comes from one per-rank generator whose state is
checkpointed, and the batch plan counts the batches consumed, so a stopped and resumed run is a
bit-for-bit continuation of the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medvideocap.latents import sample_moments
from medvideocap.models import sample_posterior
from medvideocap.train.batches import make_loader, pad_prompts
from medvideocap.train.checkpoint import (
    export_final,
    find_resume,
    restore_checkpoint,
    save_checkpoint,
    set_global_rng_state,
)
from medvideocap.train.config import NoTrainingDataError, TrainConfig
from medvideocap.train.guard import NonFiniteGuard
from medvideocap.train.heldout import split_heldout
from medvideocap.train.metrics import StepLog
from medvideocap.train.model import build_transformer, weight_dtype
from medvideocap.train.prepare import (
    Trainee,
    check_dataset,
    empty_prompt_embedding,
    prepare_trainee,
    record_run,
    start_accelerator,
)
from medvideocap.train.validation import Validator


# ------------------------------------------------------------------------------------------------- data
def open_dataset(cfg: TrainConfig) -> Any:
    """The latent cache written by ``encode-latents`` (normalised posterior means and log-variances +
    unpadded UMT5 embeddings), or, without one, pixel clips from ``medvideocap.load`` for
    :class:`OnTheFlyEncoder`."""
    if cfg.latents:
        from medvideocap.latents import load_latents

        # moments: items carry the posterior (mean, log-variance); the loop draws on the training device
        return load_latents(
            cfg.latents, split=cfg.split, expect_fingerprint=cfg.expect_fingerprint, posterior="moments"
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
        latents = (sample_posterior(mean, logvar, generator=generator) - self.mean) / self.std
        texts = [t.to(latents.device) for t in self.encoder.encode_texts(batch["caption"])]
        embeds = pad_prompts(texts, self.text_seq_len)
        return {"latents": latents, "prompt_embeds": embeds, "id": batch["id"], "caption": batch["caption"]}


def empty_prompt_embeds(
    cfg: TrainConfig, manifest: dict[str, Any], device: torch.device, *, encoder: Any = None
) -> torch.Tensor:
    """(text_seq_len, D) conditioning used when a caption is dropped: the embedding of ""
    (:func:`~medvideocap.train.prepare.empty_prompt_embedding`), zero-padded like every prompt."""
    return pad_prompts([empty_prompt_embedding(cfg, manifest, device, encoder=encoder)], cfg.text_seq_len)[0]


def next_batch(batches: Iterator[Any], state: dict[str, Any], cfg: TrainConfig, dataset: Any) -> Any:
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


# -------------------------------------------------------------------------------------------- objective
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
    """:func:`velocity_loss` at random noise, noise levels and caption dropout. Every random draw comes
    from ``generator`` in a fixed order, so checkpointing its state makes resumed runs bit-for-bit
    continuations."""
    x0 = batch["latents"]
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    sigmas = sample_sigmas(b, cfg, generator, x0.device)
    drop = torch.rand(b, generator=generator, device=x0.device) < cfg.caption_dropout
    embeds = torch.where(drop.view(b, 1, 1), null_embeds.to(batch["prompt_embeds"]), batch["prompt_embeds"])
    return velocity_loss(model, x0, noise, sigmas, embeds)


def velocity_loss(
    model: Any, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor, embeds: torch.Tensor
) -> torch.Tensor:
    """Rectified flow: x_t = (1-s) x0 + s noise, the model predicts the velocity noise - x0 at timestep
    1000*s (Wan's convention), MSE in fp32. The held-out score calls it at fixed s and noise."""
    s = sigmas.view(-1, 1, 1, 1, 1)
    noisy = (1.0 - s) * x0 + s * noise
    pred = model(
        hidden_states=noisy, timestep=sigmas * 1000.0, encoder_hidden_states=embeds, return_dict=False
    )
    return torch.nn.functional.mse_loss(pred[0].float(), (noise - x0).float())


# ------------------------------------------------------------------------------------------------- loop
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


def optimizer_step(
    cfg: TrainConfig, accelerator: Any, model: Trainee, next_micro: Any, gen: torch.Generator, null: Any
) -> tuple[float, Any, dict[str, Any], list[str] | None]:
    """One optimizer step over ``gradient_accumulation_steps`` micro-batches (gradients synced on the
    last only): (loss averaged over micro-batches and ranks, gradient norm, last batch, None), or, when
    either number is NaN/inf, the step's sample ids on every rank last and the step not applied (see
    :mod:`~medvideocap.train.guard`; the LR schedule advances, as for AMP's skipped steps)."""
    step_loss = torch.zeros((), device=accelerator.device)
    ids: list[str] = []
    for micro in range(cfg.gradient_accumulation_steps):
        batch = next_micro()
        ids += [str(i) for i in batch["id"]]
        last = micro == cfg.gradient_accumulation_steps - 1
        with accelerator.no_sync(model.transformer) if not last else contextlib.nullcontext():
            with accelerator.autocast():
                loss = flow_matching_loss(model.transformer, batch, cfg, gen, null)
            accelerator.backward(loss / cfg.gradient_accumulation_steps)
        step_loss += loss.detach() / cfg.gradient_accumulation_steps
    grad_norm = model.clip_grad_norm(accelerator, cfg.max_grad_norm)
    mean_loss = accelerator.reduce(step_loss, reduction="mean").item()
    if not (math.isfinite(mean_loss) and (grad_norm is None or math.isfinite(float(grad_norm)))):
        model.optimizer.zero_grad(set_to_none=True)
        model.lr_scheduler.step()
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            ids = gather_object(ids)
        return mean_loss, grad_norm, batch, ids
    model.optimizer.step()
    model.lr_scheduler.step()
    model.optimizer.zero_grad(set_to_none=True)
    if model.ema is not None:
        model.ema.step(model.params)
    return mean_loss, grad_norm, batch, None


def train(cfg: TrainConfig, dataset: Any = None) -> TrainResult:
    """Run (or resume) training; ``dataset`` defaults to the latent cache at ``cfg.latents``."""
    from rich.console import Console

    console = Console(stderr=True)
    accelerator = start_accelerator(cfg)
    device, main = accelerator.device, accelerator.is_main_process

    # data and model
    dataset = dataset if dataset is not None else open_dataset(cfg)
    dataset, heldout = split_heldout(cfg, dataset, velocity_loss)
    on_the_fly = OnTheFlyEncoder(cfg, device) if cfg.latents is None and cfg.source else None
    manifest: dict[str, Any] = on_the_fly.manifest if on_the_fly else getattr(dataset, "manifest", None) or {}
    transformer = build_transformer(cfg, weight_dtype(cfg.mixed_precision))
    model_config: Any = transformer.config
    check_dataset(cfg, None if on_the_fly else dataset, manifest, model_config)
    null_embeds = torch.zeros(cfg.text_seq_len, int(model_config.text_dim), device=device)
    if cfg.caption_dropout > 0 and cfg.caption_dropout_embeds == "empty":
        encoder = on_the_fly.encoder if on_the_fly is not None else None
        null_embeds = empty_prompt_embeds(cfg, manifest, device, encoder=encoder).to(device)
    model = prepare_trainee(cfg, accelerator, transformer)

    # resume: the same sequence of batches, noise and timesteps as an uninterrupted run
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + accelerator.process_index)
    state: dict[str, Any] = {"step": 0, "consumed_batches": 0}
    resume_from, resumed_rng = find_resume(cfg), None
    if resume_from is not None:
        sharded = (model.transformer, model.optimizer) if model.sharded else None
        state, resumed_rng = restore_checkpoint(
            accelerator, resume_from, gen, model.ema, model.names, sharded=sharded
        )
        if main:
            console.print(f"resumed from {resume_from} at step {state['step']}")
    loader = make_loader(
        cfg, dataset, accelerator, pixels=on_the_fly is not None, consumed=state["consumed_batches"]
    )
    if cfg.report_to:
        accelerator.init_trackers("medgen", config={k: str(v) for k, v in cfg.model_dump().items()})
    run_info = record_run(cfg, accelerator, manifest, len(dataset), pixels=on_the_fly is not None)
    stop = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
    step_log = StepLog(accelerator, cfg, console, stop=stop, resumed_step=state["step"], model=model_config)
    validator = Validator(cfg, device)
    heldout.start(accelerator, state["step"])
    batches = iter(loader)
    if resumed_rng is not None:
        # Starting the loader (its worker base seed) and the trackers draw from the global RNGs after
        # load_state; the uninterrupted run made those draws before its checkpoint, so put the
        # checkpoint's states back: later checkpoints then hold the states an uninterrupted run has.
        set_global_rng_state(resumed_rng)

    def next_micro() -> dict[str, Any]:
        batch = next_batch(batches, state, cfg, dataset)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return on_the_fly(batch, gen) if on_the_fly is not None else sample_moments(batch, gen)

    result = TrainResult(step=state["step"], resumed_from=resume_from)
    model.transformer.train()
    guard = NonFiniteGuard(cfg)
    while state["step"] < stop:
        mean_loss, grad_norm, batch, bad = optimizer_step(
            cfg, accelerator, model, next_micro, gen, null_embeds
        )
        state["step"] += 1
        if bad is not None:  # not applied; stop before a checkpoint or export could follow
            warning = guard.bad_step(state["step"], mean_loss, grad_norm, bad, before_stop=step_log.close)
            if main:
                console.print(warning, soft_wrap=True)
        else:
            guard.good_step()
            result.losses.append(mean_loss)
            result.steps.append(state["step"])
            tokens = math.prod(batch["latents"].shape[2:]) // 4  # patch (1, 2, 2): tokens per sample
            step_log(state["step"], mean_loss, model.lr_scheduler.get_last_lr()[0], grad_norm, tokens)
        if state["step"] % cfg.checkpoint_every == 0 or state["step"] == stop:
            saved = save_checkpoint(
                accelerator, cfg, dict(state), model.transformer, model.ema, gen,
                sharded_optimizer=model.optimizer if model.sharded else None,
            )  # fmt: skip
            heldout(accelerator, model.transformer, model.ema, state["step"], saved)
        due = cfg.validation_every and state["step"] % cfg.validation_every == 0
        if due and cfg.validation_prompts and main:
            unwrapped = accelerator.unwrap_model(model.transformer)
            result.validations.append(validator(unwrapped, model.ema, state["step"]))
    step_log.close()

    result.step = state["step"]
    result.transformer = accelerator.unwrap_model(model.transformer)
    accelerator.wait_for_everyone()
    done = state["step"] >= cfg.max_steps
    exported, exported_ema = model.for_export(accelerator) if done else (None, None)  # every rank
    if done and main:
        run_info["steps"] = state["step"]
        final = Path(cfg.output_dir) / "final"
        result.export = export_final(cfg, exported, exported_ema, final, run_info)
        if not cfg.validation_every and cfg.validation_prompts:
            result.validations.append(validator(result.transformer, model.ema, state["step"]))
    accelerator.end_training()
    return result
