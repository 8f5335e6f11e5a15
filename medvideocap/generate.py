"""Sample videos from a trained MedGen checkpoint (``medvideocap generate``).

A "checkpoint" here is anything the trainer writes, so a researcher can sample from a run without knowing
its layout: a full pipeline folder (``model_index.json``), a LoRA export or training checkpoint
(``pytorch_lora_weights.safetensors``, applied to ``--base``), or a bare ``transformer/`` folder (paired with
``--base``'s VAE, text encoder and scheduler). The base model defaults to what the run recorded in
``medvideocap_train.json``, else the real Wan2.1-T2V-1.3B id.

Why sampling runs in phases (:class:`StagedPipeline`): Wan's three models are never needed at once. The
text encoder (UMT5-XXL, 11.4 GB in bf16) turns every prompt, and the negative prompt once, into embeddings
of a few MB; the transformer (2.8 GB in bf16) denoises from those; the VAE (0.25 GB) decodes the latents.
Held together as one ``WanPipeline`` they peaked above 13 GiB on the CPU for a 240x416 clip; loaded one at a
time, each freed before the next loads, the peak is the largest phase, the text encoder's. A resident
``WanPipeline`` (a notebook's, the trainer's validation) goes through the same phases without reloading,
so both give the same videos.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvideocap import models
from medvideocap.atomic import atomic_path
from medvideocap.defaults import WAN_T2V_1_3B, WAN_TEXT_TOKENS
from medvideocap.devices import resolve_device
from medvideocap.progress import Progress

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


def _release(device: str) -> None:
    """Return a freed model's memory before the next one loads (cycles collected, CUDA cache emptied)."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


_PART_NAMES = {"text_encoder": "text encoder", "transformer": "transformer", "vae": "VAE"}


class StagedPipeline:
    """A checkpoint sampled one model at a time: text encoder, then transformer, then VAE, each loaded
    straight into its dtype for its phase (:func:`phase`) and freed before the next loads.

    ``dtype`` is the transformer's and the VAE's (default :func:`medvideocap.models.default_compute_dtype`);
    the text encoder has its own (default :data:`medvideocap.models.TEXT_ENCODER_DTYPE`: never upcast to
    fp32, where UMT5-XXL is 22.7 GB). ``vae_tiling`` None tiles above
    :data:`medvideocap.models.VAE_TILING_PIXELS` (:func:`medvideocap.models.vae_tiling_default`).
    Nothing loads until a phase starts, so constructing one is cheap and checks the checkpoint's kind."""

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        base: str | None = None,
        revision: str | None = None,
        device: str | None = None,
        dtype: Any = None,
        text_encoder_dtype: Any = None,
        vae_tiling: bool | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = dtype or models.default_compute_dtype(self.device)
        self.text_encoder_dtype = text_encoder_dtype or models.TEXT_ENCODER_DTYPE
        self.vae_tiling = vae_tiling
        info = describe_checkpoint(checkpoint)
        self.checkpoint, self.kind = str(checkpoint), info["kind"]
        if self.kind == "pipeline":  # every part is the folder's own
            self.base, self.revision = self.checkpoint, None
        else:
            self.base, self.revision = base or info["base"] or DEFAULT_BASE, revision or info["revision"]
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        """The text encoder's tokenizer (small; loaded once, kept)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            kw = {"revision": self.revision} if self.revision else {}
            self._tokenizer = AutoTokenizer.from_pretrained(self.base, subfolder="tokenizer", **kw)
        return self._tokenizer

    @contextmanager
    def phase(
        self, part: str, progress: Progress | None = None, frame_size: tuple[int, int] | None = None
    ) -> Iterator[Any]:
        """A ``WanPipeline`` holding only ``part`` ("text_encoder", "transformer" or "vae"; the transformer
        phase with the scheduler), freed when the block ends. With ``progress``, loading is a task of one
        model, so a long load still prints a line every 30 s; ``frame_size`` (height, width) decides the
        VAE's tiling and slicing when ``vae_tiling`` is None."""
        from diffusers import WanPipeline

        _release(self.device)  # whatever the previous phase left
        loading = _Counter(progress)
        loading.start(f"generate: load {_PART_NAMES.get(part, part)}", 1, "model")
        parts: dict[str, Any] = {"tokenizer": None, "text_encoder": None, "vae": None, "scheduler": None}
        if part == "text_encoder":
            parts["text_encoder"], parts["tokenizer"] = models.load_text_encoder(
                self.base, revision=self.revision, dtype=self.text_encoder_dtype, device=self.device
            )
        elif part == "transformer":
            parts["scheduler"] = models.load_scheduler(self.base, revision=self.revision)
        elif part == "vae":
            parts["vae"] = models.load_vae(
                self.base,
                revision=self.revision,
                dtype=self.dtype,
                device=self.device,
                tiling=self.vae_tiling,
                slicing=self.vae_tiling,
                frame_size=frame_size,
            )
        else:
            raise ValueError(f"unknown phase {part!r}: text_encoder, transformer or vae")
        pipe = WanPipeline(**parts, transformer=self._transformer() if part == "transformer" else None)
        pipe.set_progress_bar_config(disable=True)
        loading.advance()
        loading.finish()
        if part == "transformer":  # Wan's VAE factors, read from its config (this phase holds no VAE)
            temporal, spatial = models.vae_scale_factors(self.base, revision=self.revision)
            pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial = temporal, spatial
        try:
            yield pipe
        finally:
            del pipe, parts
            _release(self.device)

    def _transformer(self) -> Any:
        if self.kind == "lora":
            from diffusers import WanPipeline

            transformer = models.load_transformer(self.base, revision=self.revision, dtype=self.dtype)
            holder = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None,
                                 transformer=transformer)  # fmt: skip
            holder.load_lora_weights(self.checkpoint)
        else:
            transformer = models.load_transformer(self.checkpoint, subfolder="transformer", dtype=self.dtype)
        return transformer.to(self.device).eval().requires_grad_(False)


class _Resident:
    """A ``WanPipeline`` already in memory, seen as phases: every phase is the whole pipeline."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    @contextmanager
    def phase(
        self, part: str, progress: Progress | None = None, frame_size: tuple[int, int] | None = None
    ) -> Iterator[Any]:
        yield self.pipe


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

    def sample(
        self,
        pipe: Any,
        prompts: Sequence[str],
        *,
        seed: int = 0,
        seeds: Sequence[int] | None = None,
        progress: Progress | None = None,
    ) -> list[np.ndarray]:
        """:func:`medvideocap.generate.sample_videos` with these settings (prompt i uses ``seed + i``, or
        ``seeds[i]``)."""
        return sample_videos(
            pipe,
            prompts,
            num_frames=self.frames,
            height=self.height,
            width=self.width,
            steps=self.steps,
            guidance=self.guidance,
            seed=seed,
            seeds=seeds,
            negative_prompt=self.negative_prompt,
            progress=progress,
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
    seeds: Sequence[int] | None = None,
    negative_prompt: str | None = None,
    progress: Progress | None = None,
) -> list[np.ndarray]:
    """One (T, H, W, 3) float video per prompt; prompt i always uses seed + i (or ``seeds[i]``), so runs are
    comparable.

    ``pipe`` is a :class:`StagedPipeline` or a ``WanPipeline`` in memory; both run the same three phases
    (every prompt encoded, the negative prompt once; every video denoised; every latent decoded), each
    exactly as ``WanPipeline.__call__`` computes it, so the videos are the pipeline's own. ``progress``
    (a :class:`medvideocap.progress.Progress`) counts denoising steps and decoded videos."""
    import torch

    seeds = list(seeds) if seeds is not None else [seed + i for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    phases = pipe if isinstance(pipe, StagedPipeline) else _Resident(pipe)
    counter = _Counter(progress)
    with phases.phase("text_encoder", progress) as text:
        embeddings = [_embed(text, p) for p in prompts]
        negative = _embed(text, negative_prompt or "") if guidance > 1.0 else None
        del text
    latents = []
    with phases.phase("transformer", progress) as denoiser:
        counter.start("generate: denoise", steps * len(prompts), "step")
        for embedding, s in zip(embeddings, seeds, strict=True):
            out = denoiser(
                prompt_embeds=embedding,
                negative_prompt_embeds=negative,
                num_frames=num_frames,
                height=height,
                width=width,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=torch.Generator(device="cpu").manual_seed(s),
                output_type="latent",
                callback_on_step_end=counter.step,
            )
            latents.append(out.frames)
        counter.finish()
        del denoiser
    videos = []
    with phases.phase("vae", progress, frame_size=(height, width)) as decoder:
        counter.start("generate: decode", len(latents), "video")
        for latent in latents:
            videos.append(decode_latents(decoder, latent)[0])
            counter.advance()
        counter.finish()
        del decoder
    return videos


def _embed(pipe: Any, prompt: str) -> Any:
    """One prompt's (1, 512, D) embedding as ``WanPipeline`` computes it, in the text encoder's dtype."""
    embedding, _ = pipe.encode_prompt(
        prompt, do_classifier_free_guidance=False, max_sequence_length=WAN_TEXT_TOKENS
    )
    return embedding


class _Counter:
    """One :class:`~medvideocap.progress.Progress` task at a time (or nothing without a progress); its
    :meth:`step` is a diffusers ``callback_on_step_end``."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress, self.task = progress, None

    def start(self, label: str, total: int, unit: str) -> None:
        if self.progress is not None:
            self.task = self.progress.task(label, total, unit=unit, failed="")

    def advance(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, done=1)

    def step(self, _pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.advance()
        return kwargs

    def finish(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.finish(self.task)
        self.task = None


def decode_latents(pipe: Any, latents: Any) -> np.ndarray:
    """(B, T, H, W, 3) float frames in [0, 1] from denoised latents, as ``WanPipeline.__call__`` decodes
    them (un-normalised with the VAE's per-channel moments, decoded, post-processed)."""
    import torch

    vae = pipe.vae
    latents = latents.to(next(vae.parameters()).device, dtype=vae.dtype)
    means, stds = models.vae_normalization(vae)  # the moments training latents were normalised with
    shape = (1, len(means), 1, 1, 1)
    mean = torch.tensor(means).view(shape).to(latents.device, latents.dtype)
    inverse_std = 1.0 / torch.tensor(stds).view(shape).to(
        latents.device, latents.dtype
    )  # WanPipeline's order
    with torch.inference_mode():
        video = vae.decode(latents / inverse_std + mean, return_dict=False)[0]
    return np.asarray(pipe.video_processor.postprocess_video(video, output_type="np"))


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
    text_encoder_dtype: str | None = None,
    vae_tiling: bool | None = None,
    progress: Progress | None = None,
) -> Path:
    """Sample one video for ``prompt`` from ``checkpoint`` and write it to ``out`` (mp4), one model in
    memory at a time (:class:`StagedPipeline`: transformer and VAE in ``dtype``, the text encoder in
    ``text_encoder_dtype``)."""
    settings = GenerationSettings(
        frames=frames, height=height, width=width, steps=steps, guidance=guidance, fps=fps,
        negative_prompt=negative_prompt, base=base,
    )  # fmt: skip
    problems = settings.problems()  # named as the generate flags, its main caller
    if problems:
        raise ValueError("; ".join(problems))
    pipe = StagedPipeline(
        checkpoint, base=base, device=device, dtype=dtype, text_encoder_dtype=text_encoder_dtype,
        vae_tiling=vae_tiling,
    )  # fmt: skip
    (video,) = settings.sample(pipe, [prompt], seed=seed, progress=progress)
    return write_mp4(video, out, fps=fps)
