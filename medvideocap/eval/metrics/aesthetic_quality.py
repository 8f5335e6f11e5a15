"""``aesthetic_quality``: the LAION aesthetic predictor the build's aesthetic stage already loads (VBench)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medvideocap.build.recipe import AestheticStage
from medvideocap.build.stages import aesthetic
from medvideocap.eval.metrics.base import Metric, check_video

_HEADS: dict[tuple[str, str], Any] = {}


class AestheticQuality(Metric):
    name = "aesthetic_quality"
    definition = (
        "LAION improved aesthetic predictor (CLIP ViT-L/14 image embedding -> MLP head, a 1-10 rating) on "
        "every frame, averaged"
    )
    normalisation = "rating / 10, clipped to [0, 1]"
    relation_to_vbench = "VBench's aesthetic_quality: same CLIP ViT-L/14 + LAION head, same /10 scaling."
    default_models = {
        "": AestheticStage.model_fields["clip_model"].default,
        "head": AestheticStage.model_fields["head"].default,
    }

    def score(self, video: np.ndarray, prompt: str) -> float:
        import torch

        frames = check_video(video)
        key = (self.models["head"], self.device)
        if key not in _HEADS:
            _HEADS[key] = aesthetic.load_head(aesthetic.resolve_file(self.models["head"])).to(self.device)
        emb = torch.from_numpy(aesthetic.clip_embeddings(self.models[""], list(frames), device=self.device))
        with torch.inference_mode():
            ratings = _HEADS[key].layers(emb.to(self.device)).squeeze(-1).float().cpu().numpy()
        return float(np.clip(ratings / 10.0, 0.0, 1.0).mean())
