"""The real model ids every verb defaults to, named once (tests pass tiny local models instead).

Kept free of imports so a CLI module can show them in ``--help`` without loading torch. The shipped
training configs (``medvideocap/configs/*.yaml``) spell the id out too: a config file is meant to be
read on its own, and ``tests/test_defaults.py`` checks that they name this one."""

from __future__ import annotations

WAN_T2V_1_3B = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
"""Wan2.1-T2V-1.3B in diffusers layout: VAE, UMT5 text encoder and transformer of the MedGen-1.3B base."""

WAN_T2V_14B = "Wan-AI/Wan2.1-T2V-14B-Diffusers"
"""Wan2.1-T2V-14B in diffusers layout, the MedGen-14B base: the same VAE and UMT5 as the 1.3B (one latent
cache serves both), a 14.3B-parameter transformer."""

WAN_TEXT_TOKENS = 512
"""Wan's text window: ``WanPipeline`` pads and truncates prompts to 512 UMT5 tokens, so the latent cache
(``encode-latents``), the trainer and eval's truncation count all use this length."""
