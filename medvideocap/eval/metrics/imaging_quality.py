"""``imaging_quality_clipiqa``: zero-shot CLIP-IQA, the offline fallback for ``imaging_quality`` (MUSIQ).

VBench's imaging_quality is MUSIQ trained on SPAQ, which :mod:`.imaging_quality_musiq` runs through
``pyiqa``; its weights come from the Hub at first use. Where they cannot (an air-gapped cluster without a
local copy), CLIP-IQA (Wang, Chan and Loy, AAAI 2023) needs only CLIP weights, which the other metrics load
anyway: each frame is compared with the antonym prompts "Good photo." and "Bad photo.", and the softmax
probability of "Good photo." (CLIP's own logit scale) is the frame's quality. It is not in the default
metric set beside ``imaging_quality``: one dimension would count twice in the total.
"""

from __future__ import annotations

import numpy as np

from medvideocap.eval.metrics.base import Metric, check_video
from medvideocap.eval.metrics.clip import image_features, text_features

ANTONYMS = ("Good photo.", "Bad photo.")
#: OpenAI CLIP's learned logit scale (exp(4.6052) = 100); fixed so tiny test models score the same way.
LOGIT_SCALE = 100.0


class ImagingQualityClipIQA(Metric):
    name = "imaging_quality_clipiqa"
    definition = (
        'zero-shot CLIP-IQA: per frame, softmax over CLIP cosines (x100) to "Good photo." and "Bad photo."; '
        'the probability of "Good photo.", averaged over frames'
    )
    normalisation = "a probability, already in [0, 1]"
    relation_to_vbench = (
        "the offline fallback for VBench's imaging_quality (MUSIQ-SPAQ, our imaging_quality metric); measures "
        "the same kind of thing (technical quality: noise, blur, over-exposure) with a different model, so "
        "its numbers are not VBench's."
    )
    default_models = {"": "openai/clip-vit-base-patch32"}

    def score(self, video: np.ndarray, prompt: str) -> float:
        frames = image_features(self.models[""], check_video(video), device=self.device)
        text = text_features(self.models[""], list(ANTONYMS), device=self.device)
        logits = LOGIT_SCALE * (frames @ text.T)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return float(probs[:, 0].mean())
