"""``temporal_flickering``: pixel-level frame-to-frame change (VBench), no model."""

from __future__ import annotations

import numpy as np

from medvideocap.eval.metrics.base import Metric, check_video


def mean_abs_frame_difference(video: np.ndarray) -> float:
    """Mean over consecutive frame pairs of the mean absolute pixel difference (0-255 scale)."""
    v = check_video(video, min_frames=2, metric="temporal_flickering")
    diffs = np.abs(v[1:].astype(np.int16) - v[:-1].astype(np.int16))
    return float(diffs.reshape(len(v) - 1, -1).mean(axis=1).mean())


class TemporalFlickering(Metric):
    name = "temporal_flickering"
    definition = "mean absolute pixel difference of consecutive frames (0-255), averaged over all pairs"
    normalisation = "(255 - mean difference) / 255: 1 = no change between frames, 0 = every pixel inverts"
    relation_to_vbench = (
        "VBench's temporal_flickering formula on all frames; VBench applies it to static-camera prompts "
        "only, so on moving content it also penalises real motion."
    )

    def score(self, video: np.ndarray, prompt: str) -> float:
        return (255.0 - mean_abs_frame_difference(video)) / 255.0
