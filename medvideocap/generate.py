"""Sample videos from a trained MedGen checkpoint (``medvideocap generate``).

A "checkpoint" here is anything the trainer writes, so a researcher can sample from a run without knowing
its layout: a full pipeline folder (``model_index.json``), a LoRA export or training checkpoint
(``pytorch_lora_weights.safetensors``, applied to ``--base``), or a bare ``transformer/`` folder (paired with
``--base``'s VAE, text encoder and scheduler). The base model defaults to what the run recorded in
``medvideocap_train.json``, else the real Wan2.1-T2V-1.3B id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvideocap import models
from medvideocap.atomic import atomic_path
from medvideocap.defaults import WAN_T2V_1_3B
from medvideocap.devices import resolve_device

log = logging.getLogger(__name__)

DEFAULT_BASE = WAN_T2V_1_3B
LORA_FILE = "pytorch_lora_weights.safetensors"
RUN_FILE = "medvideocap_train.json"
#: x264 settings of every video we generate. Macroblock-tree rate control is off because it made the
#: bytes depend on the process, not the frames: the same frames, encoded 10 times in one process that had
#: run torch, gave up to 6 different files (the eval kill/resume test failed 3 runs in 7); with
#: ``mbtree=0`` every encode gave one file. CRF 18 keeps the quality near-lossless without it.
X264_OPTIONS = {"crf": "18", "x264-params": "mbtree=0"}


def describe_checkpoint(checkpoint: str | Path) -> dict[str, Any]:
    """What kind of checkpoint a folder holds and which base model it needs (``kind``: pipeline, lora or
    transformer). Raises with what was expected when the folder is none of them."""
    path = Path(checkpoint)
    run: dict[str, Any] = {}
    for candidate in (path / RUN_FILE, path.parent.parent / RUN_FILE):
        if candidate.is_file():
            run = json.loads(candidate.read_text())
            break
    if (path / "model_index.json").is_file():
        kind = "pipeline"
    elif (path / LORA_FILE).is_file():
        kind = "lora"
    elif (path / "transformer" / "config.json").is_file():
        kind = "transformer"
    else:
        raise FileNotFoundError(
            f"{path}: not a checkpoint: expected model_index.json (full pipeline), {LORA_FILE} (LoRA) "
            "or transformer/config.json (full fine-tune transformer)"
        )
    return {"kind": kind, "base": run.get("model_id"), "revision": run.get("revision")}


def load_pipeline(
    checkpoint: str | Path,
    *,
    base: str | None = None,
    revision: str | None = None,
    device: str | None = None,
    dtype: Any = None,
) -> Any:
    """A ``WanPipeline`` with the checkpoint's weights, on ``device`` (CUDA when available), in ``dtype``
    (a name of :data:`medvideocap.models.DTYPE_NAMES` or a ``torch.dtype``; default
    :func:`medvideocap.models.default_compute_dtype`): every part, the base's VAE and text encoder included,
    loads straight into it through :mod:`medvideocap.models`."""
    device = resolve_device(device)
    dtype = dtype or models.default_compute_dtype(device)
    info = describe_checkpoint(checkpoint)
    base = base or info["base"] or DEFAULT_BASE
    revision = revision or info["revision"]
    if info["kind"] == "pipeline":
        pipe = models.load_wan_pipeline(str(checkpoint), dtype=dtype)
    elif info["kind"] == "transformer":
        transformer = models.load_transformer(str(checkpoint), subfolder="transformer", dtype=dtype)
        pipe = models.load_wan_pipeline(base, revision=revision, transformer=transformer, dtype=dtype)
    else:
        pipe = models.load_wan_pipeline(base, revision=revision, dtype=dtype)
        pipe.load_lora_weights(str(checkpoint))
    return pipe.to(device)


def write_mp4(frames: np.ndarray, path: str | Path, fps: float = 16.0) -> Path:
    """Write (T, H, W, 3) frames (float in [0, 1] or uint8) as H.264 mp4, atomically; the same frames give
    the same bytes in any process (:data:`X264_OPTIONS`).

    Odd sizes are padded by one pixel (yuv420p needs even dimensions) rather than failing on a tiny test."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    video = np.asarray(frames)
    if video.dtype != np.uint8:
        video = (np.clip(video, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
    if pad_h or pad_w:
        video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with atomic_path(path, fsync=False) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = dict(X264_OPTIONS)
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def contact_sheet(videos: Sequence[np.ndarray], path: str | Path, columns: int = 5) -> Path:
    """One PNG row per video, ``columns`` evenly spaced frames each, so a run's progress is one glance."""
    from PIL import Image

    rows = []
    for video in videos:
        v = np.asarray(video)
        if v.dtype != np.uint8:
            v = (np.clip(v, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        idx = np.linspace(0, len(v) - 1, num=min(columns, len(v))).round().astype(int)
        row = np.concatenate([v[i] for i in idx], axis=1)
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, fsync=False) as tmp:
        Image.fromarray(np.concatenate(rows, axis=0)).save(tmp, format="PNG")
    return path


@dataclass(frozen=True)
class GenerationSettings:
    """What makes two videos of the same (checkpoint, prompt, seed) the same video.

    The one description of Wan sampling settings: ``eval`` builds one from its flags, and the trainer's
    validation (``TrainConfig.validation``, written ``validation_frames``, ``validation_steps``, ... in a
    config) is one too, so both check and sample the same way."""

    frames: int = 81
    height: int = 480
    width: int = 832
    steps: int = 50
    guidance: float = 5.0
    fps: float = 16.0
    negative_prompt: str | None = None
    base: str | None = None

    def problems(self, spell: Callable[[str], str] = "--{}".format) -> list[str]:
        """What Wan cannot sample, each naming the setting as ``spell(field)`` (an eval flag by default,
        a config key for the trainer), so the message says what to change where it was written."""
        found = []
        if (self.frames - 1) % 4:
            found.append(f"{spell('frames')} {self.frames}: Wan's VAE needs 4k+1 frames (e.g. 81, 49, 17, 5)")
        if self.height % 16 or self.width % 16:
            found.append(
                f"{spell('height')}/{spell('width')} {self.height}x{self.width}: must be multiples of 16"
            )
        return found

    def sample(self, pipe: Any, prompts: Sequence[str], *, seed: int) -> list[np.ndarray]:
        """:func:`medvideocap.generate.sample_videos` with these settings (prompt i uses ``seed + i``)."""
        return sample_videos(
            pipe,
            prompts,
            num_frames=self.frames,
            height=self.height,
            width=self.width,
            steps=self.steps,
            guidance=self.guidance,
            seed=seed,
            negative_prompt=self.negative_prompt,
        )


def sample_videos(
    pipe: Any,
    prompts: Sequence[str],
    *,
    num_frames: int = GenerationSettings.frames,
    height: int = GenerationSettings.height,
    width: int = GenerationSettings.width,
    steps: int = GenerationSettings.steps,
    guidance: float = GenerationSettings.guidance,
    seed: int = 0,
    negative_prompt: str | None = None,
) -> list[np.ndarray]:
    """One (T, H, W, 3) float video per prompt; prompt i always uses seed + i, so runs are comparable."""
    import torch

    videos = []
    for i, prompt in enumerate(prompts):
        generator = torch.Generator(device="cpu").manual_seed(seed + i)
        out = pipe(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_frames=num_frames,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            output_type="np",
        )
        videos.append(np.asarray(out.frames[0]))
    return videos


def generate(
    checkpoint: str | Path,
    prompt: str,
    out: str | Path,
    *,
    base: str | None = None,
    frames: int = GenerationSettings.frames,
    height: int = GenerationSettings.height,
    width: int = GenerationSettings.width,
    steps: int = GenerationSettings.steps,
    guidance: float = GenerationSettings.guidance,
    seed: int = 0,
    negative_prompt: str | None = None,
    fps: float = GenerationSettings.fps,
    device: str | None = None,
    dtype: str | None = None,
) -> Path:
    """Sample one video for ``prompt`` from ``checkpoint`` in ``dtype`` (:func:`load_pipeline`) and write it
    to ``out`` (mp4)."""
    settings = GenerationSettings(
        frames=frames, height=height, width=width, steps=steps, guidance=guidance, fps=fps,
        negative_prompt=negative_prompt, base=base,
    )  # fmt: skip
    problems = settings.problems()  # named as the generate flags, its main caller
    if problems:
        raise ValueError("; ".join(problems))
    pipe = load_pipeline(checkpoint, base=base, device=device, dtype=dtype)
    (video,) = settings.sample(pipe, [prompt], seed=seed)
    return write_mp4(video, out, fps=fps)
