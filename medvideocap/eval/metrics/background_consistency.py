"""``background_consistency``: does the scene stay the same scene (VBench)."""

from __future__ import annotations

import numpy as np

from medvideocap.eval.metrics.base import Metric, check_video, consistency
from medvideocap.eval.metrics.clip import image_features


class BackgroundConsistency(Metric):
    name = "background_consistency"
    definition = (
        "CLIP ViT-B/32 image features per frame; for each frame after the first, the mean of its cosine to "
        "the first and to the previous frame (each clipped at 0); averaged over frames."
    )
    normalisation = "already in [0, 1] (cosines clipped at 0); 1 = the scene never changes"
    relation_to_vbench = (
        "VBench's background_consistency: same model and rule; CLIP's own preprocessing (shorter side "
        "to 224 bicubic, centre crop 224), as VBench's clip_transform."
    )
    default_models = {"": "openai/clip-vit-base-patch32"}

    def score(self, video: np.ndarray, prompt: str) -> float:
        return consistency(
            image_features(
                self.models[""], check_video(video, min_frames=2, metric=self.name), device=self.device
            )
        )
