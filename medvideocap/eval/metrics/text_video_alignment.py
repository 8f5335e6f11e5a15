"""``text_video_alignment``: CLIP score, how well the frames match the prompt."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medvideocap.eval.metrics.base import Metric, check_video
from medvideocap.eval.metrics.clip import image_features, text_features


class TextVideoAlignment(Metric):
    name = "text_video_alignment"
    definition = (
        "cosine between the CLIP ViT-B/32 embedding of the prompt and of each frame, averaged over frames"
    )
    normalisation = (
        "max(cosine, 0) per frame (CLIPScore's clip at 0, without its 2.5 weight), so in [0, 1]; real CLIP "
        "cosines for matching pairs sit around 0.25-0.35"
    )
    relation_to_vbench = (
        "not a VBench dimension (VBench's overall_consistency uses ViCLIP); the frame-level CLIPScore used by "
        "text-to-video papers."
    )
    default_models = {"": "openai/clip-vit-base-patch32"}

    def truncations(self, prompts: Sequence[str]) -> dict[str, int]:
        """How many prompts CLIP reads only in part (its text window is 77 tokens; the paper's prompts run
        to 296 words), so the report can say so."""
        from transformers import AutoTokenizer

        from medvideocap.eval.prompts import count_truncated

        tokenizer = AutoTokenizer.from_pretrained(self.models[""])
        limit = int(tokenizer.model_max_length) if tokenizer.model_max_length < 1_000_000 else 77
        return {f"{self.name} (CLIP, {limit} tokens)": count_truncated(tokenizer, prompts, limit)}

    def score(self, video: np.ndarray, prompt: str) -> float:
        frames = image_features(self.models[""], check_video(video), device=self.device)
        text = text_features(self.models[""], [prompt], device=self.device)[0]
        return float(np.clip(frames @ text, 0.0, 1.0).mean())
