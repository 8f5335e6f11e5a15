"""Validation during training: sample fixed prompts from the model as it trains, to watch it learn.

Sampling goes through ``cfg.validation``, a :class:`~medvideocap.generate.GenerationSettings`, the
same settings object ``medvideocap eval`` samples with, so a validation video and an eval video of the
same prompt and seed are made the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from medvideocap.train.config import TrainConfig
from medvideocap.train.ladder import cast_text_encoder
from medvideocap.train.model import trainable_params, weight_dtype


class Validator:
    """Writes ``validation/step-N/{i}.mp4``, ``prompts.json`` and a contact sheet for the config's
    validation prompts. The pipeline (VAE, text encoder) loads on the first call and is kept: only the
    transformer changes between calls."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.pipe: Any = None

    def __call__(self, transformer: Any, ema: Any, step: int) -> Path:
        """Sample with the training transformer (its EMA weights when EMA is on), then put it back as it
        was: training weights and train/eval mode."""
        from medvideocap.generate import contact_sheet, write_mp4

        cfg, dtype = self.cfg, weight_dtype(self.cfg.mixed_precision)
        if self.pipe is None:
            from medvideocap.models import load_wan_pipeline

            self.pipe = load_wan_pipeline(
                cfg.model_id, revision=cfg.revision, dtype=dtype, transformer=transformer
            )
            cast_text_encoder(cfg, self.pipe.text_encoder, dtype)
            self.pipe.to(self.device)
        self.pipe.transformer = transformer
        params = [p for _, p in trainable_params(transformer)]
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        was_training = transformer.training
        transformer.eval()
        try:
            with torch.autocast(self.device.type, dtype=dtype, enabled=cfg.mixed_precision != "no"):
                videos = cfg.validation.sample(self.pipe, cfg.validation_prompts, seed=cfg.validation_seed)
        finally:
            transformer.train(was_training)
            if ema is not None:
                ema.restore(params)
        out = Path(cfg.output_dir) / "validation" / f"step-{step:08d}"
        for i, video in enumerate(videos):
            write_mp4(video, out / f"{i:02d}.mp4", fps=cfg.validation.fps)
        (out / "prompts.json").write_text(json.dumps(cfg.validation_prompts, indent=2))
        contact_sheet(videos, out / "contact_sheet.png")
        return out
