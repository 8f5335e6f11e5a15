"""``imaging_quality``: VBench's imaging_quality, MUSIQ trained on SPAQ, run the way VBench runs it.

What VBench does (``vbench/imaging_quality.py``, Vchitect/VBench commit 45e79ec14e69a2187202c675d2dbce1a71843d53,
the rule unchanged since its "add antialias" fix of 2024-11): every frame of the video, as uint8, is resized
with torchvision's ``transforms.Resize(antialias=False)`` so that its longer side is at most 512 (sides
``int(512 / longer * side)``; a smaller frame is left alone), divided by 255, and scored on its own by
pyiqa's ``MUSIQ`` holding the SPAQ checkpoint; the frame scores (a mean opinion score, about 0-100) are
averaged and divided by 100.

Why it is shaped this way:

* the architecture is pyiqa's own :class:`pyiqa.archs.musiq_arch.MUSIQ`, the class VBench imports, with its
  multi-scale patching (longer sides 224 and 384 plus the original resolution) untouched; we only build
  it with ``pretrained=False``, because pyiqa's loader unpickles the checkpoint (``weights_only=False``)
  and we never do: the file is read with ``torch.load(weights_only=True)`` and handed to
  ``load_state_dict``;
* the widths are read off the checkpoint (MUSIQ's heads are 64 wide: 384 = 6 x 64), so the real SPAQ file
  and the tests' tiny random MUSIQ load through the same code;
* the resize is torchvision's v1 functional ``resize`` on the uint8 tensor, on the CPU, as VBench calls
  it: the v2 kernel rounds some uint8 pixels one level differently;
* frames go through MUSIQ in batches of :data:`FRAMES_PER_BATCH` instead of one by one: each frame is its
  own sequence with its own mask, so the batch changes no score beyond float rounding (pinned by a test).

VBench does not clip the result; a SPAQ score outside 0-100 is rare, and ours is clipped to [0, 1] as
every metric here is.
"""

from __future__ import annotations

import re
from math import isqrt
from typing import Any

import numpy as np

from medvideocap.eval.metrics.base import Metric, MetricError, check_video, load_state_dict, weights_file

#: The MUSIQ-SPAQ checkpoint pyiqa downloads for ``musiq-spaq`` (``default_model_urls["spaq"]`` in
#: ``pyiqa/archs/musiq_arch.py``); VBench fetches the same file name from pyiqa's GitHub release
#: ``v0.1-weights``. The ``358bb6af`` in its name is the start of its sha256.
MUSIQ_SPAQ = "hf://chaofengc/IQA-PyTorch-Weights/musiq_spaq_ckpt-358bb6af.pth"
#: VBench's ``preprocess_mode="longer"`` (its default): the longer side is brought down to this.
LONGER_SIDE = 512
#: MUSIQ's attention head width (the released models: hidden 384, 6 heads).
HEAD_DIM = 64
FRAMES_PER_BATCH = 16
_BLOCK = re.compile(r"transformer_encoder\.transformer\.encoderblock_(\d+)\.norm1\.weight")

_MODELS: dict[tuple[str, str], Any] = {}


def _musiq_class() -> Any:
    try:
        from pyiqa.archs.musiq_arch import MUSIQ
    except ImportError as exc:
        raise MetricError(
            "imaging_quality runs VBench's MUSIQ through pyiqa: pip install 'pyiqa>=0.1.16' (in "
            "'medvideocap[all]'), or score the CLIP-IQA stand-in instead (--metrics imaging_quality_clipiqa)"
        ) from exc
    return MUSIQ


def vbench_resize(frames: np.ndarray) -> Any:
    """``uint8 (T, H, W, 3)`` frames as the float ``(T, 3, h, w)`` tensor in [0, 1] that VBench feeds MUSIQ:
    longer side at most :data:`LONGER_SIDE`, resized as uint8 without antialiasing, then divided by 255."""
    import torch
    from torchvision.transforms import functional as tvf

    images = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    h, w = images.shape[-2:]
    if max(h, w) > LONGER_SIDE:
        scale = LONGER_SIDE / max(h, w)
        images = tvf.resize(images, [int(scale * h), int(scale * w)], antialias=False)
    return images / 255.0


def musiq_config(state: dict[str, Any], source: str) -> dict[str, int]:
    """MUSIQ's constructor widths read off a checkpoint's tensors (the real SPAQ file gives hidden 384,
    MLP 1152, 14 blocks, 6 heads, a 10x10 position grid)."""
    try:
        hidden = int(state["embedding.weight"].shape[0])
        blocks = sorted(int(m.group(1)) for k in state if (m := _BLOCK.fullmatch(k)))
        mlp = int(state["transformer_encoder.transformer.encoderblock_0.mlp.fc1.weight"].shape[0])
        grid = isqrt(int(state["transformer_encoder.posembed_input.position_emb"].shape[1]))
    except (KeyError, AttributeError, IndexError) as exc:
        raise MetricError(
            f"{source}: not a MUSIQ checkpoint (no {exc} tensor); give imaging_quality a MUSIQ .pth, e.g. "
            f"pyiqa's musiq_spaq_ckpt-358bb6af.pth (--metric-model imaging_quality=PATH)"
        ) from None
    return {
        "hidden_size": hidden,
        "mlp_dim": mlp,
        "num_layers": len(blocks),
        "num_heads": max(1, hidden // HEAD_DIM),
        "spatial_pos_grid_size": grid,
    }


def load_musiq(model_id: str, device: str) -> Any:
    """pyiqa's MUSIQ holding the weights of ``model_id`` (a local .pth or ``hf://OWNER/NAME/FILE``), in
    eval mode on ``device``; once per process."""
    key = (model_id, device)
    if key not in _MODELS:
        musiq = _musiq_class()
        path = weights_file(model_id, metric="imaging_quality")
        state = load_state_dict(path, what="MUSIQ")
        model = musiq(pretrained=False, **musiq_config(state, str(path)))
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise MetricError(f"{path}: does not fit pyiqa's MUSIQ: {exc}") from None
        _MODELS[key] = model.to(device).eval()
    return _MODELS[key]


class ImagingQuality(Metric):
    name = "imaging_quality"
    definition = (
        "MUSIQ (SPAQ weights, pyiqa's architecture) on every frame after VBench's resize (longer side at "
        "most 512, uint8, no antialiasing, /255); the mean opinion score averaged over frames"
    )
    normalisation = "mean score / 100 (VBench's scaling), clipped to [0, 1]"
    relation_to_vbench = (
        "VBench's imaging_quality: the same MUSIQ class and SPAQ checkpoint, the same resize and /100, so with "
        "the default weights its numbers are VBench's (VBench leaves a score outside 0-100 unclipped)."
    )
    default_models = {"": MUSIQ_SPAQ}

    def frame_scores(self, video: np.ndarray) -> np.ndarray:
        """MUSIQ's raw score (about 0-100 for SPAQ) of each frame, in order."""
        import torch

        frames = check_video(video)
        model = load_musiq(self.models[""], self.device)
        out = []
        with torch.inference_mode():
            for start in range(0, len(frames), FRAMES_PER_BATCH):
                batch = vbench_resize(frames[start : start + FRAMES_PER_BATCH]).to(self.device)
                out.append(model(batch).reshape(-1).float().cpu())
        return torch.cat(out).numpy()

    def score(self, video: np.ndarray, prompt: str) -> float:
        return float(np.clip(self.frame_scores(video).mean() / 100.0, 0.0, 1.0))
