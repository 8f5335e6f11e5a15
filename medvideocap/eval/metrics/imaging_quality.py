"""``imaging_quality_clipiqa``: zero-shot CLIP-IQA, the offline stand-in for VBench's MUSIQ.

VBench's imaging_quality is MUSIQ trained on SPAQ, through ``pyiqa``. ``pyiqa`` 0.1.16 works with
transformers 5 but pulls ``opencv-python`` (which clashes with the ``opencv-python-headless`` our build
extra uses), ``bitsandbytes`` and ``numba``, and fetches its MUSIQ weights from GitHub at run time, so it is
not part of this package. CLIP-IQA (Wang, Chan and Loy, AAAI 2023) needs only CLIP weights, which the
other metrics load anyway: each frame is compared with the antonym prompts "Good photo." and "Bad photo.",
and the softmax probability of "Good photo." (CLIP's own logit scale) is the frame's quality.
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
        "stands in for VBench's imaging_quality (MUSIQ-SPAQ via pyiqa, not installable here); measures "
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
