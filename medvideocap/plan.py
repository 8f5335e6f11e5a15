"""Memory planner: what each stage of ``encode-latents``, ``train``, ``generate`` and ``eval`` will hold,
predicted before anything loads, and the measured peak to print beside it when a run ends.

Why it exists: the first real-size tries died without saying why (``encode-latents`` killed at 14.7 GiB while
UMT5-XXL was upcast to fp32; a shipped config promising ~21 GB for a full fine-tune that needs 28.4 GB before
its first activation). ``--plan`` on those commands prints this table and exits without loading a weight.

Which numbers are exact and which are estimates:

* **exact** (arithmetic on parameter counts): *weights*, *grads*, *optimizer* and *EMA*. Parameters are
  counted by building the real architectures from their configs on the ``meta`` device (no memory, no
  download; :func:`model_configs` finds the configs), with the loaders' dtype rules: diffusers keeps a
  model's ``_keep_in_fp32_modules`` (Wan's norms, time embedder, ``scale_shift_table``) in fp32 when it loads
  in half precision; transformers applies UMT5's only for float16. LoRA parameters are counted per targeted
  ``nn.Linear`` as peft matches them (``rank x (in + out)``). AdamW holds two states per trainable parameter
  in its dtype (fp32 here), diffusers' ``EMAModel`` one fp32 shadow.
* **estimates**: *activations* and *transient* bytes (a loader's read buffers, autocast's bf16 copies of
  fp32 weights, ``torch._foreach`` temporaries). Activation terms are linear models in the token count
  (transformer) or pixel count (VAE) whose constants were measured on this project's development CPU
  (Xeon with AMX, torch 2.14.1, diffusers 0.42.1) by ``benchmarks/plan_calibration.py``: the kernel's
  peak-RSS high-water mark above the resident weights, one measurement per fresh process, with glibc's mmap
  threshold pinned so freed tensors leave the resident set. Each constant's docstring says what was run.
  Attention is taken as memory-efficient (flash / efficient SDPA, which CPU and CUDA use for Wan's unmasked
  attention), so nothing is quadratic in tokens. On CUDA the caching allocator's slack, cuDNN workspaces
  and the CUDA context (~0.5 GiB, not counted by ``torch.cuda.max_memory_allocated``) are not predicted.

Host versus device: on the CPU everything is one resident set, plus :data:`RUNTIME_BYTES` for Python and
the imported libraries. On CUDA the device peak is the allocator's (what ``max_memory_allocated`` reports),
and the host peak is the runtime plus whatever passes through host memory (our loaders read a model on the
CPU, then move it).

Measuring: :func:`measured_peak` is what a finished run prints beside :attr:`Plan.peak`
(:func:`peak_report`); :func:`run_watched` runs a command under an RSS limit for the benchmarks.
Whole commands on real-size random-weight folders (``benchmarks/realsize.py``, CPU, 5x240x416): ``train``
LoRA peaked at 9.13 GiB against 9.47 planned (the fp32 transformer read into bf16), ``encode-latents`` at
11.81 GiB against 12.42 (UMT5-XXL in bf16), ``eval --videos`` at 0.99 against 1.18.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import resource
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medvideocap.generate import GenerationSettings
    from medvideocap.latents.encode import EncodeConfig
    from medvideocap.train.config import TrainConfig

GIB = 1 << 30
#: The ``--plan`` flag's help, one wording for every command that has it.
PLAN_HELP = (
    "Print the memory plan for these settings (exact weights, gradients, optimizer state and EMA; estimated "
    "activations; the predicted peak) and exit without loading weights."
)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MIXED_PRECISION_DTYPE = {"no": "float32", "bf16": "bfloat16", "fp16": "float16"}

# ----------------------------------------------------------------------------------------------------
# calibrated constants (benchmarks/plan_calibration.py; see the module docstring for how)

#: Resident set of a process that has imported torch, diffusers, transformers, accelerate, peft and our CLI,
#: train, latents and generate modules, before any model (``VmHWM``: 1,222,912 kB).
RUNTIME_BYTES = int(1.166 * GIB)

# Transformer training (forward + backward of ``flow_matching_loss`` under bf16 autocast, the trainer's
# ``build_transformer``). Measured: real-width Wan blocks (hidden 1536, FFN 8960, text 4096 x 512 tokens),
# 2 and 4 of them, at 128, 780, 1,170 and 1,950 video tokens, LoRA r32 and full, checkpointing on and off
# (32 runs). Bytes, per video token unless said otherwise. The fits land within 10% of every measurement
# above 500 tokens (see ``benchmarks/plan_calibration.py --fit``).

#: Saved for backward per block, per hidden channel: the fp32 norms and residual casts, q/k/v/out, RoPE,
#: attention output. Full fine-tuning keeps every linear layer's input for its weight gradient too.
TRAIN_SAVED_PER_HIDDEN = {"lora": 48.1, "full": 67.9}
#: ... and per FFN channel: GELU keeps its input (2 bytes); a trainable down projection its own input (2
#: more). Autograd's rule for ``y = x W^T``, not fitted; it carries the per-block term to other widths.
TRAIN_SAVED_PER_FFN = {"lora": 2.0, "full": 4.0}
#: Per block per text token per hidden channel: cross-attention keys, values and their norms.
TRAIN_TEXT_PER_HIDDEN = 10.9
#: Outside the blocks, per hidden channel (patch embedding, output head, the fp32 loss).
TRAIN_HEAD_PER_HIDDEN = 24.0
#: Outside the blocks, per text token per channel of (text width + hidden): the text embedder.
TRAIN_HEAD_PER_TEXT_CHANNEL = 22.1
#: Gradient checkpointing: what each block keeps per hidden channel (its input and the wrapper's holds).
CKPT_KEPT_PER_HIDDEN = 4.47
#: ... plus the one block being recomputed, as a share of what it saves without checkpointing ...
CKPT_RECOMPUTE_SHARE = 0.93
#: ... plus, per text token per channel of (text width + hidden), what the checkpointed blocks share.
CKPT_PER_TEXT_CHANNEL = 9.5
#: When backward ends (every gradient allocated), what is left above the gradients, as a share of one
#: block's and the head's saved tensors: without checkpointing, then with it.
BACKWARD_END_SHARE = {False: 0.65, True: 0.925}

#: One denoising forward (no grad, one block's temporaries at a time, and the head) per video token per
#: hidden channel; 2 real-width blocks at 128 to 1,950 tokens.
INFER_PER_HIDDEN = 33.0
#: ... and per text token per channel of (text width + hidden).
INFER_PER_TEXT_CHANNEL = 17.4

#: ``AutoencoderKLWan.encode`` above its weights and input, per pixel of the frame (or 256 px tile) per byte
#: of the compute dtype, whatever the clip's length: Wan's causal encoder runs 4-frame chunks beside a
#: feature cache, full from the third chunk on. Measured with the real VAE in float32: 9 and 17 frames at
#: 240x416 peak alike (1,545 MiB); 5-frame clips (two chunks) peak 13% lower (1,390 MiB; 5,370 at 480x832);
#: tiled, 5x480x832 peaks at 932 MiB.
VAE_ENCODE_PER_PIXEL = 4058.0
#: ``AutoencoderKLWan.decode`` above its weights, per output pixel per byte of the compute dtype, whatever
#: the length (one latent frame at a time beside a feature cache). Measured with the real VAE in float32
#: at 240x416: 5, 9 and 17 frames peak at 1,986, 2,070 and 2,079 MiB; bfloat16 scales it by the dtype.
VAE_DECODE_PER_PIXEL = 5400.0

#: A model converted while read from safetensors: peak above its weights and the file pages it maps, as a
#: share of the weights (measured 0.14 for the 1.3B transformer read in bf16 from fp32 shards;
#: :func:`load_transient`).
LOAD_OVERHEAD_SHARE = 0.14
#: How ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` stores each part (bytes per parameter), for planning a load of
#: a hub id that is not on disk: the transformer (5.68 GB) and VAE in float32, UMT5 in bfloat16.
PUBLISHED_BYTES_PER_PARAM = {"transformer": 4, "vae": 4, "text_encoder": 2}
#: bitsandbytes' ``AdamW8bit``: tensors below ``min_8bit_size`` elements keep fp32 state; the rest are
#: quantised in blocks of 256 elements, each with an fp32 absmax (bitsandbytes 0.50, ``optimizer.py``).
ADAMW8BIT_MIN_SIZE = 4096
ADAMW8BIT_BLOCK = 256
#: Text encoder (UMT5/T5) per token per layer: bytes per model channel and per FFN channel (not measured:
#: from T5's layer, fp32 softmax and gated GELU; small beside the 11 GB of weights).
TEXT_ENCODER_PER_MODEL = 16.0
TEXT_ENCODER_PER_FFN = 8.0


# ----------------------------------------------------------------------------------------------------
# the models, counted on the meta device


@dataclass(frozen=True)
class ModelCount:
    """A model's parameters: all of them and those its loader keeps in fp32 when asked for half precision."""

    params: int
    fp32_kept: int = 0
    blocks: int = 0  # parameters inside the repeated blocks (``blocks.N.``), for per-block terms
    blocks_fp32_kept: int = 0  # ... of which the loader keeps in fp32

    def weight_bytes(self, dtype: str) -> int:
        """Exact bytes of the weights loaded in ``dtype`` (kept-in-fp32 modules stay 4 bytes)."""
        size = DTYPE_BYTES[dtype]
        return self.params * 4 if size == 4 else (self.params - self.fp32_kept) * size + self.fp32_kept * 4


@dataclass(frozen=True)
class Models:
    """The three model configs a Wan pipeline has, and where they were read from (shown in the table)."""

    transformer: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    source: str
    #: part -> (bytes of its safetensors files, bytes of the largest), for parts on disk here
    files: dict[str, tuple[int, int]] = field(default_factory=dict)

    def transformer_count(self) -> ModelCount:
        return _count("transformer", _key(self.transformer))[0]

    def vae_count(self) -> ModelCount:
        return _count("vae", _key(self.vae))[0]

    def text_encoder_count(self, dtype: str) -> ModelCount:
        count = _count("text_encoder", _key(self.text_encoder))[0]
        # transformers keeps _keep_in_fp32_modules (UMT5's "wo") in fp32 only for float16
        return count if dtype == "float16" else ModelCount(count.params, 0, count.blocks, 0)

    def lora_params(self, rank: int, targets: Sequence[str]) -> int:
        """Parameters peft adds: ``rank x (in + out)`` per ``nn.Linear`` whose name is a target or ends
        with ``.target`` (peft's rule for a list of names)."""
        linears = _count("transformer", _key(self.transformer))[1]
        return sum(
            rank * (i + o)
            for name, i, o in linears
            if any(name == t or name.endswith("." + t) for t in targets)
        )

    def lora_tensors(self, rank: int, targets: Sequence[str]) -> list[int]:
        """Element counts of the adapter tensors peft adds (``lora_A``: rank x in, ``lora_B``: out x rank)."""
        linears = _count("transformer", _key(self.transformer))[1]
        hits = [(i, o) for name, i, o in linears if any(name == t or name.endswith("." + t) for t in targets)]
        return [n for i, o in hits for n in (rank * i, o * rank)]

    def transformer_tensors(self) -> list[int]:
        """Element counts of every transformer parameter (what a full fine-tune's optimizer holds state for)."""
        return list(_tensors("transformer", _key(self.transformer)))

    def fp8_cast(self) -> Fp8Cast:
        """Which transformer parameters ``enable_layerwise_casting`` stores in fp8 (counted on meta)."""
        return _fp8_cast(_key(self.transformer))

    def text_encoder_fp8_params(self) -> int:
        """Text encoder parameters ``text_encoder_dtype: float8_e4m3fn`` stores in fp8: the trainer's own
        casting (:func:`medvideocap.train.ladder.cast_text_encoder`) applied on the meta device."""
        return _text_encoder_fp8(_key(self.text_encoder))

    def transformer_shape(self) -> TransformerShape:
        return TransformerShape.from_config(self.transformer)

    def vae_shape(self) -> VaeShape:
        return VaeShape.from_config(self.vae)


def _key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=list)


@functools.lru_cache(maxsize=32)
def _count(kind: str, config_json: str) -> tuple[ModelCount, tuple[tuple[str, int, int], ...]]:
    """(count, the ``nn.Linear`` layers as (name, in, out)) of a model built on the meta device."""
    import torch

    config = json.loads(config_json)
    with torch.device("meta"):
        if kind == "transformer":
            from diffusers import WanTransformer3DModel

            model: Any = WanTransformer3DModel.from_config(config)
        elif kind == "vae":
            import diffusers

            model = getattr(diffusers, config.get("_class_name", "AutoencoderKLWan")).from_config(config)
        else:
            from transformers import AutoConfig, T5EncoderModel, UMT5EncoderModel

            model_type = config.get("model_type", "umt5")
            rest = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
            classes: dict[str, Any] = {"umt5": UMT5EncoderModel, "t5": T5EncoderModel}
            model = classes[model_type](AutoConfig.for_model(model_type, **rest))
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    seen: set[int] = set()
    params = fp32 = blocks = blocks_kept = 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:  # tied weights are stored once
            continue
        seen.add(id(p))
        params += p.numel()
        kept = any(k in name.split(".") for k in keep)
        fp32 += p.numel() if kept else 0
        if name.startswith("blocks."):
            blocks += p.numel()
            blocks_kept += p.numel() if kept else 0
    linears = tuple(
        (name, m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    )
    return ModelCount(params, fp32, blocks, blocks_kept), linears


@functools.lru_cache(maxsize=32)
def _tensors(kind: str, config_json: str) -> tuple[int, ...]:
    """Element counts of a model's parameters, built on the meta device."""
    import torch
    from diffusers import WanTransformer3DModel

    assert kind == "transformer"
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(json.loads(config_json))
    return tuple(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class Fp8Cast:
    """The frozen parameters diffusers' layerwise casting stores in fp8 (``base_weights_dtype``): its
    supported layers (Linear, Conv) whose names miss its skip patterns and Wan's
    ``_skip_layerwise_casting_patterns`` and ``_keep_in_fp32_modules``."""

    params: int  # parameters stored in fp8
    blocks: int  # ... of which inside ``blocks.N.``
    largest_layer: int  # the largest cast layer's parameters (its compute-dtype copy exists in its forward)


@functools.lru_cache(maxsize=32)
def _fp8_cast(config_json: str) -> Fp8Cast:
    """Apply diffusers' own ``enable_layerwise_casting`` to the model on the meta device and count what
    it turned into fp8, so the plan follows the library's rule rather than a copy of it."""
    import torch
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(json.loads(config_json))
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    params = blocks = largest = 0
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.dtype == torch.float8_e4m3fn]
        n = sum(p.numel() for p in own)
        params += n
        blocks += n if name.startswith("blocks.") else 0
        largest = max(largest, n)
    return Fp8Cast(params, blocks, largest)


@functools.lru_cache(maxsize=8)
def _text_encoder_fp8(config_json: str) -> int:
    import torch
    from transformers import AutoConfig, T5EncoderModel, UMT5EncoderModel

    from medvideocap.train.config import TrainConfig
    from medvideocap.train.ladder import cast_text_encoder

    config = json.loads(config_json)
    model_type = config.get("model_type", "umt5")
    rest = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    classes: dict[str, Any] = {"umt5": UMT5EncoderModel, "t5": T5EncoderModel}
    with torch.device("meta"):
        model = classes[model_type](AutoConfig.for_model(model_type, **rest))
    cast_text_encoder(TrainConfig(text_encoder_dtype="float8_e4m3fn"), model, torch.bfloat16)
    return sum(p.numel() for p in model.parameters() if p.dtype == torch.float8_e4m3fn)


def adamw8bit_state_bytes(tensors: Iterable[int]) -> int:
    """Exact bytes of bitsandbytes' ``AdamW8bit`` state for parameters of these sizes: a tensor of at
    least ``min_8bit_size`` (4096) elements keeps its two moments as uint8 plus one fp32 absmax per
    256-element block for each; a smaller one keeps two fp32 moments, as torch's AdamW; the two 256-entry
    fp32 quantisation maps are shared by every tensor."""
    total, quantised = 0, False
    for n in tensors:
        if n >= ADAMW8BIT_MIN_SIZE:
            total += 2 * n + 2 * 4 * -(-n // ADAMW8BIT_BLOCK)
            quantised = True
        else:
            total += 2 * 4 * n
    return total + (2 * 256 * 4 if quantised else 0)


def shipped_models(name: str | None = None) -> Models:
    """Wan2.1-T2V-1.3B's published configs, as :mod:`medvideocap.models` ships them; for the 14B's hub id
    (``name``), its transformer config beside the same VAE and UMT5."""
    from medvideocap import models
    from medvideocap.defaults import WAN_T2V_14B

    big = name == WAN_T2V_14B
    return Models(
        transformer=dict(models.WAN_14B_TRANSFORMER_CONFIG if big else models.WAN_1_3B_TRANSFORMER_CONFIG),
        vae=dict(models.WAN_VAE_CONFIG),
        text_encoder={"model_type": "umt5", **models.UMT5_XXL_ENCODER_CONFIG},
        source=f"Wan2.1-T2V-{'14B' if big else '1.3B'} configs shipped in medvideocap.models",
    )


def _read_config(folder: Path) -> dict[str, Any] | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if not k.startswith("_") or k == "_class_name"}


def model_configs(name: str | Path | None = None) -> Models:
    """The configs of the pipeline ``name`` (a local folder or a hub id), read from its ``*/config.json``
    without touching weights: a local folder first, then the local Hub cache; parts it lacks (a
    transformer-only checkpoint, an uncached hub id) come from :func:`shipped_models`, and ``source`` says so."""
    shipped = shipped_models()
    if name is None:
        return shipped
    folder = Path(name)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(
                snapshot_download(str(name), local_files_only=True, allow_patterns=["*/config.json"])
            )
        except Exception:  # noqa: BLE001 - offline and uncached: plan with the shipped configs, and say so
            from medvideocap.defaults import WAN_T2V_1_3B, WAN_T2V_14B

            if str(name) in (WAN_T2V_1_3B, WAN_T2V_14B):
                return shipped_models(str(name))
            return Models(
                shipped.transformer,
                shipped.vae,
                shipped.text_encoder,
                f"{name} not in the local Hub cache: planned with {shipped.source}",
            )
    parts = {part: _read_config(folder / part) for part in ("transformer", "vae", "text_encoder")}
    missing = [p for p, c in parts.items() if c is None]
    source = str(name) + (f" ({', '.join(missing)} from {shipped.source})" if missing else "")
    files = {}
    for part in parts:
        sizes = [f.stat().st_size for f in (folder / part).glob("*.safetensors")]
        if sizes:
            files[part] = (sum(sizes), max(sizes))
    return Models(
        parts["transformer"] or shipped.transformer,
        parts["vae"] or shipped.vae,
        parts["text_encoder"] or shipped.text_encoder,
        source,
        files,
    )


def transformer_config() -> dict[str, Any]:
    """The shipped Wan2.1-T2V-1.3B transformer config (what the calibration scales down)."""
    return shipped_models().transformer


# ----------------------------------------------------------------------------------------------------
# shapes and activation estimates


@dataclass(frozen=True)
class TransformerShape:
    """What a Wan transformer's activations scale with."""

    hidden: int
    ffn: int
    layers: int
    patch: tuple[int, int, int]
    text_dim: int = 4096

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TransformerShape:
        p = config.get("patch_size", (1, 2, 2))
        return cls(
            hidden=int(config["num_attention_heads"]) * int(config["attention_head_dim"]),
            ffn=int(config["ffn_dim"]),
            layers=int(config["num_layers"]),
            patch=(int(p[0]), int(p[1]), int(p[2])),
            text_dim=int(config.get("text_dim", 4096)),
        )


@dataclass(frozen=True)
class VaeShape:
    """The VAE's compression: 4x in time and 8x in space for Wan's, read from its config."""

    temporal: int
    spatial: int
    z_dim: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VaeShape:
        temporal = 2 ** sum(bool(t) for t in config.get("temperal_downsample", [False, True, True]))
        spatial = 2 ** (len(config.get("dim_mult", [1, 2, 4, 4])) - 1)
        return cls(temporal=temporal, spatial=spatial, z_dim=int(config.get("z_dim", 16)))

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return (frames - 1) // self.temporal + 1, height // self.spatial, width // self.spatial


def video_tokens(shape: TransformerShape, vae: VaeShape, frames: int, height: int, width: int) -> int:
    """Tokens the transformer sees per sample: latent frames x (H/16) x (W/16) for Wan's (1, 2, 2) patch."""
    f, h, w = vae.latent_shape(frames, height, width)
    return (f // shape.patch[0]) * (h // shape.patch[1]) * (w // shape.patch[2])


def transformer_train_activations(
    shape: TransformerShape,
    *,
    tokens: int,
    text_tokens: int,
    mode: str,
    checkpointing: bool,
    trainable_bytes: int = 0,
    copies: tuple[int, int] = (0, 0),
) -> int:
    """Estimated peak of one training forward + backward above weights, gradients, optimizer state and
    EMA (``tokens`` and ``text_tokens`` for the whole batch), so that ``exact + this`` is the peak.

    Without checkpointing every block's saved tensors live until backward reaches it; with it each block
    keeps its input and one block at a time is recomputed. Backward frees activations while it allocates
    gradients (``trainable_bytes``), so the peak is the larger of "everything saved" and "every gradient
    plus what the last blocks still hold". ``copies`` are the bf16 copies autocast makes of fp32 weights
    (one block's, the rest's): saved with the activations in full fine-tuning, none with LoRA's bf16 base."""
    per_token = TRAIN_SAVED_PER_HIDDEN[mode] * shape.hidden + TRAIN_SAVED_PER_FFN[mode] * shape.ffn
    head_per_token = TRAIN_HEAD_PER_HIDDEN * shape.hidden
    head = TRAIN_HEAD_PER_TEXT_CHANNEL * text_tokens * (shape.text_dim + shape.hidden) + copies[1]
    block = per_token * tokens + TRAIN_TEXT_PER_HIDDEN * shape.hidden * text_tokens + copies[0]
    if checkpointing:
        kept = CKPT_KEPT_PER_HIDDEN * shape.hidden * tokens
        head += CKPT_PER_TEXT_CHANNEL * text_tokens * (shape.text_dim + shape.hidden)
        saved = shape.layers * kept + CKPT_RECOMPUTE_SHARE * block + head_per_token * tokens + head
    else:
        saved = shape.layers * block + head_per_token * tokens + head
    end = BACKWARD_END_SHARE[checkpointing] * (per_token + head_per_token) * tokens
    end = max(end, copies[0]) if checkpointing else end + copies[0]
    return int(max(saved - trainable_bytes, end, 0))


def transformer_infer_activations(shape: TransformerShape, *, tokens: int, text_tokens: int) -> int:
    """Estimated temporaries of one denoising forward (no grad): one block's at a time, and the head."""
    text = INFER_PER_TEXT_CHANNEL * text_tokens * (shape.text_dim + shape.hidden)
    return int(INFER_PER_HIDDEN * shape.hidden * tokens + text)


def _tile(size: int, tiling: bool) -> int:
    return min(size, 256) if tiling else size  # diffusers' Wan VAE tiles are 256 px


def vae_encode_activations(
    frames: int, height: int, width: int, *, dtype_bytes: int, tiling: bool, batch: int = 1
) -> int:
    """Estimated peak of ``vae.encode`` above its weights and its input for ``batch`` clips (one at a time
    with slicing): the causal encoder's chunk working set, which does not grow with the clip's length
    (``frames`` is accepted for the decoder's symmetry and for clips of one chunk, which need less)."""
    pixels = _tile(height, tiling) * _tile(width, tiling)
    return int(batch * VAE_ENCODE_PER_PIXEL * pixels * dtype_bytes * (1.0 if frames > 5 else 0.87))


def vae_decode_activations(
    frames: int, height: int, width: int, *, dtype_bytes: int, tiling: bool, batch: int = 1
) -> int:
    """Estimated peak of ``vae.decode`` above its weights: the decoder's working set, and the decoded
    video as a float32 tensor and its numpy copy (``output_type="np"``)."""
    work = VAE_DECODE_PER_PIXEL * _tile(height, tiling) * _tile(width, tiling) * dtype_bytes
    return int(batch * (work + 2 * 3 * frames * height * width * 4))


def text_encode_activations(config: dict[str, Any], *, batch: int, text_tokens: int, dtype_bytes: int) -> int:
    """Estimated peak of one UMT5/T5 encoder forward: one layer's temporaries, the fp32 attention
    probabilities over ``text_tokens`` squared, and the fp32 output."""
    d_model, d_ff, heads = int(config["d_model"]), int(config["d_ff"]), int(config["num_heads"])
    per_token = TEXT_ENCODER_PER_MODEL * d_model + TEXT_ENCODER_PER_FFN * d_ff
    attention = heads * text_tokens * text_tokens * (4 + 2 * dtype_bytes)
    return int(batch * (per_token * text_tokens + attention + text_tokens * d_model * 4))


# ----------------------------------------------------------------------------------------------------
# stages and plans


@dataclass(frozen=True)
class Stage:
    """What one stage holds at its peak. ``weights``/``grads``/``optimizer``/``ema`` are exact;
    ``activations`` and ``transient`` are estimates; all of these live on the compute device. ``host``
    is what passes through host memory whatever the device (a model read before it moves, decoded video)."""

    name: str
    weights: int = 0
    grads: int = 0
    optimizer: int = 0
    ema: int = 0
    activations: int = 0
    transient: int = 0
    host: int = 0
    note: str = ""
    gathered: int = 0  # FSDP: parameters and gradients unsharded at once (exact, per device)

    @property
    def exact(self) -> int:
        return self.weights + self.grads + self.optimizer + self.ema + self.gathered

    @property
    def on_device(self) -> int:
        return self.exact + self.activations + self.transient


@dataclass(frozen=True)
class Plan:
    """The stages of one command for one set of settings, in the order they run."""

    command: str
    device: str
    settings: dict[str, Any]
    stages: tuple[Stage, ...]
    models: str = ""
    notes: tuple[str, ...] = ()
    runtime: int = RUNTIME_BYTES

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def host_peak(self, stage: Stage) -> int:
        return self.runtime + stage.host + (0 if self.cuda else stage.on_device)

    def device_peak(self, stage: Stage) -> int:
        return stage.on_device if self.cuda else 0

    @property
    def peak_host(self) -> int:
        return max(self.host_peak(s) for s in self.stages)

    @property
    def peak_device(self) -> int:
        return max(self.device_peak(s) for s in self.stages)

    @property
    def peak(self) -> int:
        """The number a run's measured peak is compared with: the device allocator's peak on CUDA, the
        process's peak resident set elsewhere."""
        return self.peak_device if self.cuda else self.peak_host

    @property
    def peak_stage(self) -> str:
        key = self.device_peak if self.cuda else self.host_peak
        return max(self.stages, key=key).name


def _gib(n: int) -> str:
    if not n:
        return "-"
    return f"{n / GIB:.2f}" if n >= GIB / 200 else "<0.01"


def render_plan(plan: Plan) -> str:
    """The plan as a plain-text table, GiB per term and stage, the peak named under it."""
    setting = ", ".join(f"{k}={v}" for k, v in plan.settings.items())
    gathered = any(s.gathered for s in plan.stages)
    head = ["stage", "weights", "grads", "optimizer", "EMA", *(["gathered"] if gathered else [])]
    head += ["exact", "activations*", "transient*"]
    head += ["device peak", "host peak"] if plan.cuda else ["peak (RSS)"]
    rows = []
    for s in plan.stages:
        terms = (s.weights, s.grads, s.optimizer, s.ema, *([s.gathered] if gathered else []), s.exact)
        row = [s.name, *(_gib(v) for v in (*terms, s.activations, s.transient))]
        row += (
            [_gib(plan.device_peak(s)), _gib(plan.host_peak(s))] if plan.cuda else [_gib(plan.host_peak(s))]
        )
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [f"memory plan: {plan.command} on {plan.device} ({setting})"]
    if plan.models:
        out.append(f"models: {plan.models}")
    out += [line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    where = "device" if plan.cuda else "host RSS"
    out.append(f"predicted peak: {plan.peak / GIB:.2f} GiB ({where}) at '{plan.peak_stage}'")
    if plan.cuda:
        out.append(f"predicted host peak: {plan.peak_host / GIB:.2f} GiB")
    out.append(
        "GiB. weights, grads, optimizer and EMA are exact; * estimates calibrated on a CPU "
        f"(medvideocap/plan.py); runtime {plan.runtime / GIB:.2f} GiB of Python and libraries is in host peaks"
    )
    out += [f"note: {stage.name}: {stage.note}" for stage in plan.stages if stage.note]
    out += [f"note: {n}" for n in plan.notes]
    return "\n".join(out)


#: What ``torch.cuda.mem_get_info`` reports as the total of an 80 GB H100 (81,559 MiB); the plans for
#: ``train --plan --gpus N`` are compared with it.
H100_BYTES = 81_559 * 2**20


def fits_line(plan: Plan, capacity: int = H100_BYTES, card: str = "80 GB H100") -> str:
    """Whether the predicted device peak fits one card, with the margin left for what the plan does not
    count (the CUDA context, the allocator's slack)."""
    left = capacity - plan.peak_device
    verdict = "fits" if left > 0 else "does not fit"
    return (
        f"per device: {plan.peak_device / GIB:.2f} GiB of an {card}'s {capacity / GIB:.1f} GiB: {verdict} "
        f"({abs(left) / GIB:.2f} GiB {'left' if left > 0 else 'short'}, before the CUDA context and allocator slack)"
    )


def _device(device: str | None) -> str:
    from medvideocap.devices import resolve_device

    return resolve_device(device)


def load_transient(models: Models, part: str, dtype: str) -> int:
    """Estimated peak above the loaded weights while ``part`` is read from safetensors into ``dtype``.

    Read in its stored dtype, a weight *is* the memory-mapped file page: nothing extra (measured: the
    11.4 GB bf16 UMT5-XXL read in bf16 by ``encode-latents`` peaked below weights + runtime, since the pages
    of embedding rows never looked up are never read). Converted, each
    shard's pages are read beside the converted copies; diffusers' kept-in-fp32 modules stay views of
    the mapping until the load ends, so for a diffusers model with such modules every shard stays mapped
    (measured: the 2.84 GB bf16 Wan transformer read from 5.68 GB of fp32 shards peaked 6.1 GB above its weights),
    else one shard at a time. Files are the folder's when it is on disk; otherwise the published Wan folder's
    dtypes are assumed (:data:`PUBLISHED_BYTES_PER_PARAM`), one file per diffusers model, 5 GB UMT5 shards."""
    count = {
        "transformer": models.transformer_count,
        "vae": models.vae_count,
        "text_encoder": lambda: models.text_encoder_count(dtype),
    }[part]()
    weights = count.weight_bytes(dtype)
    total, largest = models.files.get(part) or (PUBLISHED_BYTES_PER_PARAM[part] * count.params,) * 2
    if part == "text_encoder":
        largest = min(largest, 5 * 10**9)
    stored = total / max(count.params, 1)  # bytes per parameter as stored
    if abs(stored - DTYPE_BYTES[dtype]) < 0.5:
        return 0
    pinned = total if count.fp32_kept and part != "text_encoder" else largest
    return pinned + int(LOAD_OVERHEAD_SHARE * weights)


def _load(name: str, resident: int, size: int, transient: int, plan_cuda: bool, **extra: Any) -> Stage:
    """A model of ``size`` bytes read (on the CPU, ``transient`` bytes above it while it loads) and kept
    next to ``resident`` bytes of models."""
    if plan_cuda:  # read on the host, then moved: the host holds it for a moment, the device keeps it
        return Stage(name, weights=resident + size, host=size + transient, **extra)
    return Stage(name, weights=resident + size, transient=transient, **extra)


def plan_encode(
    config: EncodeConfig | None = None,
    *,
    frames: tuple[int, int, int] | None = None,
    device: str | None = None,
) -> Plan:
    """``encode-latents``: the VAE loads first, each batch is VAE-encoded, the text encoder loads on the
    first caption and stays beside the VAE (:class:`~medvideocap.latents.encode.BatchEncoder`)."""
    from medvideocap.latents.encode import EncodeConfig

    config = config or EncodeConfig()
    device = _device(device or config.device)
    cuda = device.startswith("cuda")
    spec = config.frame_spec()
    f, h, w = frames or largest_size(spec.num_frames, spec.height, spec.width, spec.buckets)
    models = model_configs(config.vae)
    if config.text_encoder:
        text_models = model_configs(config.text_encoder)
        files = {k: v for k, v in models.files.items() if k != "text_encoder"}
        files.update({k: v for k, v in text_models.files.items() if k == "text_encoder"})
        models = dataclasses.replace(models, text_encoder=text_models.text_encoder, files=files)
    vae_dtype = config.vae_dtype or config.compute_dtype or ("bfloat16" if cuda else "float32")
    text_dtype = config.text_encoder_dtype or config.compute_dtype or "bfloat16"
    vae = models.vae_count().weight_bytes(vae_dtype)
    text = models.text_encoder_count(text_dtype).weight_bytes(text_dtype)
    clips = 1 if config.slicing else config.batch_size
    video_in = config.batch_size * 3 * f * h * w * 4  # the loader's float32 frames, on the host
    encode_act = vae_encode_activations(
        f, h, w, dtype_bytes=DTYPE_BYTES[vae_dtype], tiling=config.tiling, batch=clips
    )
    encode_act += config.batch_size * 3 * f * h * w * DTYPE_BYTES[vae_dtype]  # the batch in the VAE's dtype
    text_act = text_encode_activations(
        models.text_encoder,
        batch=config.batch_size,
        text_tokens=config.max_length,
        dtype_bytes=DTYPE_BYTES[text_dtype],
    )
    stages = (
        _load(f"load VAE ({vae_dtype})", 0, vae, load_transient(models, "vae", vae_dtype), cuda),
        Stage(
            f"VAE encode {config.batch_size}x{f}x{h}x{w}", weights=vae, activations=encode_act, host=video_in
        ),
        _load(
            f"load text encoder ({text_dtype})",
            vae,
            text,
            load_transient(models, "text_encoder", text_dtype),
            cuda,
        ),
        Stage(f"encode text ({config.max_length} tokens)", weights=vae + text, activations=text_act),
    )
    settings = {
        "frames": f"{f}x{h}x{w}",
        "batch": config.batch_size,
        "vae": vae_dtype,
        "text_encoder": text_dtype,
    }
    if config.tiling:
        settings["tiling"] = True
    return Plan("encode-latents", device, settings, stages, models.source)


@dataclass(frozen=True)
class TrainState:
    """The exact per-device terms of a training run (bytes), before activations: what each rung moves."""

    weights: int
    grads: int
    optimizer: int
    ema: int
    trainable: int
    host: int = 0  # offloaded block weights kept on the host
    gathered: int = 0  # FSDP: what is unsharded at once (see :func:`train_state`)
    notes: tuple[str, ...] = ()


def train_state(
    cfg: TrainConfig, models: Models, *, cuda: bool, world_size: int = 1, strategy: str = "ddp"
) -> TrainState:
    """Weights, gradients, optimizer state and EMA on one device for ``cfg``'s rungs, exact from the
    parameter counts:

    * ``base_weights_dtype: float8_e4m3fn`` (LoRA): the layers diffusers' layerwise casting stores in fp8
      (:meth:`Models.fp8_cast`) take 1 byte per parameter instead of the compute dtype's; adapters,
      norms, embeddings and kept-in-fp32 modules keep theirs.
    * ``offload_frozen_blocks`` (LoRA, CUDA): the frozen blocks' weights move to the host (diffusers'
      block-level group offload keeps every block's copy there); two stay on the device, the one
      computing and the next one its CUDA stream copies in. The adapters are counted on the device with
      their gradients and optimizer state. On a CPU the onload device is the host: nothing moves.
    * ``optimizer: adamw8bit``: bitsandbytes' state (:func:`adamw8bit_state_bytes`, ~2 bytes per
      parameter) instead of AdamW's two fp32 moments (8 bytes per parameter).
    * ``world_size`` > 1 with ``ddp``: every device holds everything, and DDP's reduction buckets hold a
      second copy of the gradients (accelerate's default ``gradient_as_bucket_view=False``).
    * ``fsdp`` (full sharding, torch's ``fully_shard`` per ``WanTransformerBlock``): weights, gradients,
      optimizer state and EMA divided by ``world_size`` (each tensor's padding to a multiple of it is
      ignored: under ``world_size`` rows per tensor), plus ``gathered``: the root's own parameters in the
      compute dtype (all-gathered for the whole step), two blocks' (the one computing and the one
      prefetched) and one block's unsharded fp32 gradients before their reduce-scatter.
    """
    compute = MIXED_PRECISION_DTYPE[cfg.mixed_precision]
    size = DTYPE_BYTES[compute]
    count, layers = models.transformer_count(), max(models.transformer_shape().layers, 1)
    notes: list[str] = []
    if cfg.mode == "lora":
        trainable = models.lora_params(cfg.lora_rank, cfg.lora_target_modules)
        tensors = models.lora_tensors(cfg.lora_rank, cfg.lora_target_modules)
        base = count.weight_bytes(compute)
        blocks = (count.blocks - count.blocks_fp32_kept) * size + count.blocks_fp32_kept * 4
        if cfg.base_weights_dtype:
            fp8 = models.fp8_cast()
            base -= fp8.params * (size - 1)
            blocks -= fp8.blocks * (size - 1)
            notes.append(f"fp8 base: {fp8.params:,} frozen parameters stored in 1 byte (layerwise casting)")
        weights = base + 4 * trainable  # adapters in fp32 (cast_training_params)
    else:
        trainable = count.params
        tensors = models.transformer_tensors()
        weights, blocks = 4 * trainable, 4 * count.blocks
    host = 0
    if cfg.offload_frozen_blocks and cuda:
        per_block = blocks // layers
        weights -= (layers - min(2, layers)) * per_block
        host = layers * per_block
        notes.append(
            f"block offload: {layers} blocks' frozen weights on the host, 2 of them on the device at a time"
        )
    grads = 4 * trainable
    if cfg.optimizer == "adamw8bit":
        optimizer = adamw8bit_state_bytes(tensors)
        notes.append("adamw8bit: bitsandbytes' AdamW8bit, uint8 moments in 256-element blocks")
    else:
        optimizer = 2 * 4 * trainable
    ema = 4 * trainable if cfg.ema_decay > 0 else 0
    gathered = 0
    if world_size > 1 and strategy == "ddp":
        grads *= 2
        notes.append("DDP: gradients twice (the parameters' and the reduction buckets')")
    elif strategy == "fsdp":
        weights, grads, optimizer, ema = (-(-v // world_size) for v in (weights, grads, optimizer, ema))
        per_block = count.blocks // layers
        gathered = size * (count.params - count.blocks) + 2 * size * per_block + 4 * per_block
        notes.append(
            f"FSDP full shard over {world_size}: weights, grads, optimizer and EMA / {world_size}; gathered: "
            "the root's parameters, two blocks' (computing + prefetched), one block's fp32 gradients; every "
            f"rank reads the whole model on its host first ({world_size} x the load's host peak on one node)"
        )
    return TrainState(weights, grads, optimizer, ema, trainable, host, gathered, tuple(notes))


def plan_train(
    cfg: TrainConfig,
    *,
    frames: tuple[int, int, int] | None = None,
    device: str | None = None,
    world_size: int = 1,
    strategy: str | None = None,
) -> Plan:
    """``train`` on a latent cache: the transformer loads (on the CPU), then steady-state steps (AdamW's
    states exist from the first step on), then validation sampling when the config has prompts. Per
    device, on ``world_size`` of them, for ``strategy`` (default the config's ``distributed.strategy``);
    the exact terms and what each rung of the memory ladder changes are :func:`train_state`'s.

    ``frames`` is the clip size trained on: default the largest the cache at ``cfg.latents`` was encoded
    at (its manifest's frame spec), else the config's on-the-fly size."""
    device = _device(device)
    cuda = device.startswith("cuda")
    strategy = strategy or cfg.distributed.strategy
    f, h, w = frames or _cache_size(cfg.latents) or (cfg.frames, cfg.height, cfg.width)
    models = model_configs(cfg.model_id)
    shape, vae_shape = models.transformer_shape(), models.vae_shape()
    compute = MIXED_PRECISION_DTYPE[cfg.mixed_precision]
    count = models.transformer_count()
    half = DTYPE_BYTES[compute] if compute != "float32" else 0
    state = train_state(cfg, models, cuda=cuda, world_size=world_size, strategy=strategy)
    trainable, grads = state.trainable, state.grads
    if cfg.mode == "lora" or strategy == "fsdp":  # FSDP gathers the weights in the compute dtype
        load_dtype, copies = (compute if cfg.mode == "lora" else "float32"), (0, 0)
    else:
        load_dtype = "float32"
        # autocast's half-precision copies of the fp32 weights it casts (one block's, the rest's)
        per_block = half * count.blocks // max(shape.layers, 1)
        copies = (per_block, half * (count.params - count.fp32_kept - count.blocks))
    if cfg.base_weights_dtype:  # layerwise casting: one layer's compute-dtype copy during its forward
        copies = (copies[0] + DTYPE_BYTES[compute] * models.fp8_cast().largest_layer, copies[1])
    tokens = cfg.batch_size * video_tokens(shape, vae_shape, f, h, w)
    text_tokens = cfg.batch_size * cfg.text_seq_len
    act = transformer_train_activations(
        shape,
        tokens=tokens,
        text_tokens=text_tokens,
        mode=cfg.mode,
        checkpointing=cfg.gradient_checkpointing,
        trainable_bytes=4 * trainable // (world_size if strategy == "fsdp" else 1),
        copies=copies,
    )
    lf, lh, lw = vae_shape.latent_shape(f, h, w)
    act += cfg.batch_size * vae_shape.z_dim * lf * lh * lw * 4 * 4  # latents, noise, target, prediction
    # Other phases of a step, above the exact terms: the end of a checkpointed forward, where autocast's
    # cache holds a bf16 copy of every fp32 weight while no gradient exists yet; the optimizer step's
    # foreach temporaries (AdamW's sqrt(exp_avg_sq) on CUDA, EMAModel's difference).
    forward_end = 0
    if cfg.gradient_checkpointing:
        forward_end = int(
            copies[0] * shape.layers
            + copies[1]
            + shape.layers * CKPT_KEPT_PER_HIDDEN * shape.hidden * tokens
            + TRAIN_HEAD_PER_HIDDEN * shape.hidden * tokens
            - grads
        )
    shard = 4 * trainable // (world_size if strategy == "fsdp" else 1)
    step_temp = max(shard if cuda and cfg.optimizer == "adamw" else 0, shard if state.ema else 0)
    plural = "s" if world_size > 1 else ""
    where = f", {strategy} over {world_size} device{plural}" if world_size > 1 or strategy == "fsdp" else ""
    step = Stage(
        f"train step {cfg.batch_size}x{f}x{h}x{w} ({tokens} tokens)",
        weights=state.weights,
        grads=grads,
        optimizer=state.optimizer,
        ema=state.ema,
        activations=act,
        transient=max(0, forward_end - act, step_temp - act),
        host=state.host,
        gathered=state.gathered,
        note=(
            f"{cfg.mode}, {trainable:,} trainable parameters, gradient checkpointing "
            f"{'on' if cfg.gradient_checkpointing else 'off'}{where}; transient: the larger of the optimizer "
            "step's temporaries and the forward's end, beyond the activations"
        ),
    )
    read = load_transient(models, "transformer", load_dtype)
    size = count.weight_bytes(load_dtype)
    load = _load(f"load transformer ({load_dtype})", 0, size, read, cuda)
    if cuda and strategy == "fsdp":  # every rank reads the whole model on its host, then keeps its shards
        load = dataclasses.replace(load, weights=-(-size // world_size))
    elif cuda and state.host:  # the offloaded blocks stay where they were read
        load = dataclasses.replace(load, weights=size - state.host * (shape.layers - 2) // shape.layers)
    stages = [load, step]
    if cfg.validation_prompts and strategy != "fsdp":  # sharded runs sample the export instead
        v = cfg.validation
        text = models.text_encoder_count(compute).weight_bytes(compute)
        if cfg.text_encoder_dtype:
            text -= models.text_encoder_fp8_params() * (DTYPE_BYTES[compute] - 1)
        pipe = models.vae_count().weight_bytes(compute) + text
        vtokens = video_tokens(shape, vae_shape, v.frames, v.height, v.width)
        sample_act = max(
            transformer_infer_activations(shape, tokens=vtokens, text_tokens=cfg.text_seq_len),
            vae_decode_activations(
                v.frames, v.height, v.width, dtype_bytes=DTYPE_BYTES[compute], tiling=False
            ),
        )
        ema = state.ema
        stages.append(
            Stage(
                f"validation {v.frames}x{v.height}x{v.width}",
                weights=state.weights + pipe,
                optimizer=state.optimizer,
                ema=ema,
                activations=sample_act,
                # the pipeline is read on the host before it moves; EMAModel.store() keeps a CPU copy of
                # the training weights while the EMA weights sample
                host=(pipe if cuda else 0) + (4 * trainable if ema else 0) + state.host,
                note="loads the VAE and text encoder beside the training state; set validation_prompts=[] to skip",
            )
        )
    settings = {
        "mode": cfg.mode,
        "frames": f"{f}x{h}x{w}",
        "batch": cfg.batch_size,
        "precision": cfg.mixed_precision,
        "checkpointing": cfg.gradient_checkpointing,
        "ema": cfg.ema_decay > 0,
        "optimizer": cfg.optimizer,
    }
    if cfg.base_weights_dtype:
        settings["base_weights"] = cfg.base_weights_dtype
    if cfg.offload_frozen_blocks:
        settings["offload_blocks"] = True
    if cfg.text_encoder_dtype:
        settings["text_encoder"] = cfg.text_encoder_dtype
    if world_size > 1 or strategy == "fsdp":
        settings["devices"] = f"{world_size} ({strategy}, per device)"
    notes = ("the empty-prompt embedding is read from the cache (caches written by encode-latents hold it)",)
    return Plan("train", device, settings, tuple(stages), models.source, notes + state.notes)


def _cache_size(latents: str | None) -> tuple[int, int, int] | None:
    """The largest (frames, height, width) a latent cache's manifest says it was encoded at."""
    if not latents or not (Path(latents) / "manifest.json").is_file():
        return None
    from medvideocap.latents.format import read_manifest

    spec = read_manifest(Path(latents)).get("frame_spec") or {}
    if not spec.get("num_frames"):
        return None
    return largest_size(spec["num_frames"], spec.get("height"), spec.get("width"), spec.get("buckets"))


def largest_size(
    frames: int, height: int | None, width: int | None, buckets: Iterable[Sequence[int]] | None = None
) -> tuple[int, int, int]:
    """The largest (frames, height, width) a frame spec produces: its biggest bucket, or its size, with
    MedVideoCap's native 720x480 (cropped to 720x480 by the multiple-of-16 rule) where it keeps the size."""
    sizes = [(int(b[0]), int(b[1]), int(b[2])) for b in buckets or []]
    return max(sizes, key=lambda s: s[0] * s[1] * s[2]) if sizes else (frames, height or 480, width or 720)


def _generation_stages(
    models: Models,
    settings: GenerationSettings,
    *,
    dtype: str,
    cuda: bool,
    extra_weights: int = 0,
    text_dtype: str | None = None,
) -> list[Stage]:
    """:class:`medvideocap.generate.StagedPipeline`: the text encoder (in ``text_dtype``, default
    ``models.TEXT_ENCODER_DTYPE``), the transformer and the VAE (in ``dtype``) each loaded, used and freed
    before the next, so the peak is the largest phase's, not the sum of the three models."""
    from medvideocap.models import TEXT_ENCODER_DTYPE, vae_tiling_default

    shape, vae_shape = models.transformer_shape(), models.vae_shape()
    text_dtype = text_dtype or TEXT_ENCODER_DTYPE
    text = models.text_encoder_count(text_dtype).weight_bytes(text_dtype)
    vae = models.vae_count().weight_bytes(dtype)
    transformer = models.transformer_count().weight_bytes(dtype) + extra_weights
    f, h, w = settings.frames, settings.height, settings.width
    tokens = video_tokens(shape, vae_shape, f, h, w)
    prompts = 2 if settings.guidance > 1 else 1
    embeddings = prompts * 512 * int(models.text_encoder["d_model"]) * 4  # kept across phases (per video)
    lf, lh, lw = vae_shape.latent_shape(f, h, w)
    latents = vae_shape.z_dim * lf * lh * lw * 4 * 4  # latents, noise prediction and its CFG pair, fp32
    tiling = vae_tiling_default(h, w)
    return [
        _load(
            f"load text encoder ({text_dtype})",
            0,
            text,
            load_transient(models, "text_encoder", text_dtype),
            cuda,
        ),
        Stage(
            f"encode prompt{'s' if prompts > 1 else ''}",
            weights=text,
            activations=text_encode_activations(
                models.text_encoder, batch=1, text_tokens=512, dtype_bytes=DTYPE_BYTES[text_dtype]
            ),
            note="the text encoder is freed before the transformer loads",
        ),
        _load(
            f"load transformer ({dtype})", 0, transformer, load_transient(models, "transformer", dtype), cuda
        ),
        Stage(
            f"denoise step ({tokens} tokens)",
            weights=transformer,
            activations=transformer_infer_activations(shape, tokens=tokens, text_tokens=512)
            + latents
            + embeddings,
            note="classifier-free guidance runs its two passes one after the other" if prompts > 1 else "",
        ),
        _load(f"load VAE ({dtype})", 0, vae, load_transient(models, "vae", dtype), cuda),
        Stage(
            f"VAE decode {f}x{h}x{w}" + (" (tiled)" if tiling else ""),
            weights=vae,
            activations=vae_decode_activations(f, h, w, dtype_bytes=DTYPE_BYTES[dtype], tiling=tiling),
        ),
    ]


def _checkpoint_models(checkpoint: str | Path | None, base: str | None) -> tuple[Models, int, str]:
    """(configs, extra weight bytes of a LoRA file, base) for what ``generate.load_pipeline`` would build."""
    from medvideocap.defaults import WAN_T2V_1_3B
    from medvideocap.generate import LORA_FILE, describe_checkpoint

    if checkpoint is None:
        return model_configs(base or WAN_T2V_1_3B), 0, base or WAN_T2V_1_3B
    info = describe_checkpoint(checkpoint)
    base = base or info["base"] or WAN_T2V_1_3B
    if info["kind"] == "pipeline":
        return model_configs(checkpoint), 0, str(checkpoint)
    models = model_configs(base)
    if info["kind"] == "transformer":
        transformer = _read_config(Path(checkpoint) / "transformer") or models.transformer
        files = {k: v for k, v in models.files.items() if k != "transformer"}
        sizes = [f.stat().st_size for f in (Path(checkpoint) / "transformer").glob("*.safetensors")]
        if sizes:
            files["transformer"] = (sum(sizes), max(sizes))
        source = f"{checkpoint} + {models.source}"
        return dataclasses.replace(models, transformer=transformer, source=source, files=files), 0, base
    lora = (Path(checkpoint) / LORA_FILE).stat().st_size  # the adapters, as stored (safetensors header aside)
    return models, lora, base


def plan_generate(
    settings: GenerationSettings,
    *,
    checkpoint: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    text_encoder_dtype: str | None = None,
) -> Plan:
    """``generate``: :class:`medvideocap.generate.StagedPipeline`, one model at a time: the text encoder
    (``text_encoder_dtype``) encodes the prompt and is freed, the transformer (``dtype``) runs ``steps``
    denoising forwards (each the same size) and is freed, the VAE (``dtype``) decodes."""
    from medvideocap.models import TEXT_ENCODER_DTYPE

    device = _device(device)
    cuda = device.startswith("cuda")
    dtype = dtype or ("bfloat16" if cuda else "float32")
    text_dtype = text_encoder_dtype or TEXT_ENCODER_DTYPE
    models, lora, _ = _checkpoint_models(checkpoint, settings.base)
    stages = _generation_stages(
        models, settings, dtype=dtype, cuda=cuda, extra_weights=lora, text_dtype=text_dtype
    )
    values = {
        "frames": f"{settings.frames}x{settings.height}x{settings.width}",
        "dtype": dtype,
        "text_encoder": text_dtype,
        "steps": settings.steps,
    }
    return Plan("generate", device, values, tuple(stages), models.source)


#: Metric models and how to build them on the meta device: (transformers class, config kwargs).
METRIC_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "openai/clip-vit-base-patch32": ("CLIPModel", {}),
    "openai/clip-vit-large-patch14": (
        "CLIPModel",
        {
            "projection_dim": 768,
            "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                            "projection_dim": 768},
            "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                              "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768},
        },
    ),
    "facebook/dino-vitb16": ("ViTModel", {"patch_size": 16}),
}  # fmt: skip


@functools.lru_cache(maxsize=16)
def _metric_params(model_id: str) -> int | None:
    """Parameters of a metric's transformers model (a local folder's config, or a known hub id), counted
    on the meta device; None for anything else (named as not counted in the plan)."""
    import torch
    import transformers

    local = _read_config(Path(model_id)) if Path(model_id).is_dir() else None
    if local is not None and "model_type" in local:
        config = transformers.AutoConfig.for_model(local.pop("model_type"), **local)
        cls = getattr(transformers, (local.get("architectures") or ["AutoModel"])[0], transformers.AutoModel)
    elif model_id in METRIC_MODELS:
        name, kwargs = METRIC_MODELS[model_id]
        cls = getattr(transformers, name)
        config = cls.config_class(**kwargs)
    else:
        return None
    with torch.device("meta"):
        model: Any = cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)
    return sum(p.numel() for p in model.parameters())


def plan_eval(
    metrics: Sequence[Any],
    *,
    settings: GenerationSettings | None = None,
    checkpoints: Iterable[str | Path] = (),
    frames: tuple[int, int, int] | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Plan:
    """``eval``: each checkpoint's pipeline generates (as :func:`plan_generate`) and is freed, then every
    video is read back and scored by ``metrics`` (their models, fp32, loaded once and kept).

    ``frames`` is the size of the videos scored (default: ``settings``'), for ``--videos``."""
    from medvideocap.generate import GenerationSettings

    device = _device(device)
    cuda = device.startswith("cuda")
    settings = settings or GenerationSettings()
    stages: list[Stage] = []
    sources = []
    for checkpoint in checkpoints:
        models, lora, _ = _checkpoint_models(checkpoint, settings.base)
        d = dtype or ("bfloat16" if cuda else "float32")
        for s in _generation_stages(models, settings, dtype=d, cuda=cuda, extra_weights=lora):
            stages.append(Stage(f"{Path(checkpoint).name}: {s.name}", s.weights, s.grads, s.optimizer, s.ema,
                                s.activations, s.transient, s.host, s.note))  # fmt: skip
        sources.append(models.source)
    f, h, w = frames or (settings.frames, settings.height, settings.width)
    ids = sorted({mid for m in metrics for role, mid in m.models.items() if role == ""})
    counts = {mid: _metric_params(mid) for mid in ids}
    unknown = [mid for mid, n in counts.items() if n is None]
    weights = sum(4 * n for n in counts.values() if n)
    video = f * h * w * 3 * (1 + 4 + 4)  # uint8 frames, a float copy, the metric's resized batch
    stages.append(
        Stage(
            f"score {f}x{h}x{w} ({len(metrics)} metrics)",
            weights=weights,
            activations=video,
            host=video if cuda else 0,
            note=f"models not counted (unknown size): {', '.join(unknown)}" if unknown else "",
        )
    )
    values = {"frames": f"{f}x{h}x{w}", "metrics": ",".join(m.name for m in metrics)}
    return Plan("eval", device, values, tuple(stages), "; ".join(sources))


# ----------------------------------------------------------------------------------------------------
# measuring


def _high_water(pid: int | str = "self") -> int | None:
    """The kernel's peak resident set of a process's current program (``VmHWM``), or None without /proc.

    Not ``ru_maxrss``: Linux carries the pre-``exec`` high-water mark into it, so a command started from a
    12 GB parent reports at least 12 GB whatever it used."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


#: The peak each memory (``"cuda"``, ``"host"``) had reached when :func:`reset_peak` last started a new window.
_BEFORE_RESET: dict[str, int] = {}


def _memory(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else "host"


def measured_peak(device: str, *, since_reset: bool = False) -> int:
    """This process's peak so far: ``torch.cuda.max_memory_allocated`` on CUDA, else the kernel's peak
    resident set (``VmHWM``, exact, unlike sampling; ``ru_maxrss`` where there is no /proc). With
    ``since_reset``, the peak since :func:`reset_peak` (e.g. a training step's, without the load's)."""
    if _memory(device) == "cuda":
        import torch

        now = int(torch.cuda.max_memory_allocated())
    else:
        now = _high_water() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return now if since_reset else max(now, _BEFORE_RESET.get(_memory(device), 0))


def reset_peak(device: str) -> bool:
    """Start a new peak window, so the next phase's peak can be read apart from what loading reached
    (``measured_peak(device)`` still answers for the whole run). CUDA: the allocator's peak statistics;
    Linux: the kernel's ``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs`` (Linux >= 4.0). False
    where the peak cannot be reset (then ``since_reset`` reads the whole run's peak)."""
    _BEFORE_RESET[_memory(device)] = measured_peak(device)
    if _memory(device) == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_report(plan: Plan) -> str:
    """One line for the end of a run: the measured peak beside the plan's prediction."""
    measured = measured_peak(plan.device)
    what = "device (max_memory_allocated)" if plan.cuda else "host RSS"
    return (
        f"memory: measured peak {measured / GIB:.2f} GiB {what}; planned {plan.peak / GIB:.2f} GiB "
        f"at '{plan.peak_stage}' (measured/planned x{measured / max(plan.peak, 1):.2f})"
    )


def step_report(plan: Plan, prefix: str = "train step") -> str | None:
    """One line for a run whose loading peaked above its steps: the peak since :func:`reset_peak` (the
    steps') beside the plan's stage named ``prefix``. None when the plan has no such stage."""
    stage = next((s for s in plan.stages if s.name.startswith(prefix)), None)
    if stage is None:
        return None
    measured = measured_peak(plan.device, since_reset=True)
    planned = plan.device_peak(stage) if plan.cuda else plan.host_peak(stage)
    return (
        f"memory: measured peak {measured / GIB:.2f} GiB while training (loading excluded); planned "
        f"{planned / GIB:.2f} GiB at '{stage.name}' (measured/planned x{measured / max(planned, 1):.2f})"
    )


@dataclass
class WatchedRun:
    """A finished :func:`run_watched` command."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int  # the command's own peak (its VmHWM, read while it ran)
    peak_tree_rss: int  # sampled sum over the process and its children (DataLoader workers)
    reason: str = ""  # why it was killed, when it was
    samples: list[int] = field(default_factory=list, repr=False)


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def run_watched(
    cmd: Sequence[str],
    *,
    limit_bytes: int,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
    interval: float = 0.05,
) -> WatchedRun:
    """Run ``cmd`` and kill it (and its children, each by pid) if their resident sets add up to more than
    ``limit_bytes`` or it runs past ``timeout`` seconds. Its own peak is the kernel's high-water mark
    (``VmHWM``) read every ``interval`` seconds: exact but for growth in the last interval before it exits
    (commands of ours print their own exact peak at the end: :func:`peak_report`)."""
    import psutil

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env, cwd=cwd)
        state: dict[str, Any] = {"reason": "", "peak": 0, "tree": 0}
        done = threading.Event()

        def watch() -> None:
            while not done.wait(interval):
                rss = _tree_rss(proc.pid)
                state["tree"] = max(state["tree"], rss)
                state["peak"] = max(state["peak"], _high_water(proc.pid) or rss)
                over = rss > limit_bytes
                late = timeout is not None and time.perf_counter() - started > timeout
                if over or late:
                    state["reason"] = (
                        f"killed at {rss / GIB:.2f} GiB RSS (limit {limit_bytes / GIB:.2f} GiB)"
                        if over
                        else f"killed after {timeout:.0f} s (timeout)"
                    )
                    try:
                        victims = [
                            *psutil.Process(proc.pid).children(recursive=True),
                            psutil.Process(proc.pid),
                        ]
                    except psutil.NoSuchProcess:
                        return
                    for victim in victims:
                        with contextlib.suppress(psutil.NoSuchProcess):
                            victim.kill()
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        proc.wait()
        done.set()
        watcher.join()
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return WatchedRun(
            returncode=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            seconds=seconds,
            peak_rss=state["peak"],
            peak_tree_rss=state["tree"],
            reason=state["reason"],
        )
