"""The models every stage after the dataset shares: the video VAE, the text encoder, the transformer.

``encode-latents``, the trainer (on-the-fly encoding, the empty-prompt embedding), ``generate`` and
evaluation all load and run them, so each step is written here once:

* :func:`load_vae`, :func:`load_text_encoder`, :func:`load_transformer` and :func:`load_wan_pipeline`
  take plain keyword arguments (a hub id or local folder, subfolder, revision, dtype, device), so no
  caller needs another stage's config object; ``dtype``/``device`` default the same way everywhere
  (:func:`default_compute_dtype`, :data:`TEXT_ENCODER_DTYPE`, :func:`medvideocap.devices.resolve_device`).
  Every loader hands the dtype to ``from_pretrained``, so weights are materialised once, in that dtype,
  and the text encoder is never upcast by default: UMT5-XXL is 11.4 GB in bf16 and 22.7 GB in fp32 (the
  CPU's float32 default once got ``encode-latents`` killed on a 16 GiB machine);
* :data:`WAN_1_3B_TRANSFORMER_CONFIG` (and :data:`WAN_14B_TRANSFORMER_CONFIG`), :data:`WAN_VAE_CONFIG`
  and :data:`UMT5_XXL_ENCODER_CONFIG` are the default models' real configs, so their real shapes are
  checked on the ``meta`` device without a download (``tests/test_realsize_meta.py``);
* :func:`revision_of` is what a cache manifest records about the weights it was made with;
* :func:`vae_normalization` is the per-channel ``(mean, std)`` every latent is trained on;
* :func:`encode_prompts` is how a caption becomes conditioning (Wan's pipeline: whitespace collapsed,
  ``max_length`` padding, the unpadded rows kept), so a cached embedding equals what inference computes;
* :func:`sample_posterior` is the one reparameterised draw from a VAE posterior, with the log-variance
  clip diffusers' ``DiagonalGaussianDistribution`` applies. Cached latents store mean and log-variance;
  the trainer draws on its own device, so the loader only moves bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvideocap.defaults import WAN_T2V_1_3B
from medvideocap.devices import resolve_device

if TYPE_CHECKING:
    import torch

#: diffusers' ``DiagonalGaussianDistribution`` clamps the log-variance to this range before exp().
LOGVAR_RANGE = (-30.0, 20.0)
#: The compute dtypes a model can be loaded in, by the names configs and CLIs use.
DTYPE_NAMES = ("float32", "bfloat16", "float16")
#: Frames above this many pixels (Wan's own 480x832) are VAE-encoded and -decoded in tiles by default
#: (:func:`vae_tiling_default`). At or below it the VAE runs whole, bit for bit as diffusers' pipeline
#: does (tiling blends overlapping tiles, so its output differs slightly) and, on an 80 GB card, well
#: within memory; above it (720p is 2.3x the pixels) the untiled working set grows with the frame while
#: diffusers' 256 px tiles keep it flat (``plan.vae_encode_activations``).
VAE_TILING_PIXELS = 480 * 832
#: The text encoder's dtype on every device unless asked otherwise. Wan ships and runs UMT5-XXL in bf16;
#: fp32 would double its 11.4 GB for no better embedding, and CPUs run bf16 matmuls, slowly but well within
#: a one-off encode.
TEXT_ENCODER_DTYPE = "bfloat16"


# ----------------------------------------------------------------------------------------------------
# dtypes and revisions


def default_compute_dtype(device: str) -> str:
    """bfloat16 on CUDA (Wan was trained in it; half the memory), float32 elsewhere (CPUs and MPS
    run bf16 slowly or not at all)."""
    return "bfloat16" if str(device).startswith("cuda") else "float32"


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"bfloat16"``/``"float16"`` (or a ``torch.dtype``) as a ``torch.dtype``; anything else
    is refused with the accepted names, so a typo in a config fails before a 12 GB download."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"compute dtype must be one of {sorted(dtypes)}, not {name!r}")
    return dtypes[name]


def _resolve(device: str | None, dtype: str | torch.dtype | None) -> tuple[str, torch.dtype]:
    device = resolve_device(device)
    return device, torch_dtype(dtype if dtype is not None else default_compute_dtype(device))


def local_folder(name: str, subfolder: str | None) -> Path | None:
    """``name/subfolder`` when ``name`` is a local path, else None (a hub id)."""
    p = Path(name)
    if p.exists():
        return p / subfolder if subfolder else p
    return None


def revision_of(name: str, subfolder: str | None = None, revision: str | None = None) -> str:
    """The commit a hub model resolved to (from the local HF cache), or a content hash of a local folder.

    A cache manifest records this so a cache made with other weights is told apart. The real Wan
    folders are ~12 GB, so big files are identified by size plus their first and last MiB
    (safetensors headers carry every tensor's name, dtype and shape). Offline and uncached, the
    requested revision (or ``main``) is all that can be said.
    """
    local = local_folder(name, subfolder)
    if local is None:
        try:
            from huggingface_hub import snapshot_download

            path = snapshot_download(
                name,
                revision=revision,
                local_files_only=True,
                allow_patterns=[f"{subfolder}/*"] if subfolder else None,
            )
            return Path(path).name
        except Exception:  # noqa: BLE001 - offline lookup is best effort; the requested revision is recorded
            return revision or "main"
    h = hashlib.sha256()
    files = sorted(q for q in local.rglob("*") if q.is_file()) if local.is_dir() else [local]
    for q in files:
        size = q.stat().st_size
        h.update(f"{q.relative_to(local) if local.is_dir() else q.name}:{size}\n".encode())
        with open(q, "rb") as f:
            if size <= 64 << 20:
                h.update(f.read())
            else:
                h.update(f.read(1 << 20))
                f.seek(size - (1 << 20))
                h.update(f.read())
    return "sha256:" + h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# the default models' real configs (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``)

#: ``transformer/config.json``: 1,418,996,800 parameters. Built on the ``meta`` device it checks shapes
#: (LoRA targets, text width) with no download and no memory; ``benchmarks/train_step.py`` builds it with
#: random weights.
WAN_1_3B_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
#: ``Wan-AI/Wan2.1-T2V-14B-Diffusers`` ``transformer/config.json``: 14,288,491,584 parameters (the same
#: transformer as each expert of Wan2.2-T2V-A14B). Width 5120 (40 heads x 128), 40 blocks, FFN 13824; the
#: text width, channels and patch are the 1.3B's, so one latent cache (same VAE and UMT5) feeds both.
WAN_14B_TRANSFORMER_CONFIG: dict[str, Any] = {
    **WAN_1_3B_TRANSFORMER_CONFIG,
    "num_attention_heads": 40,
    "ffn_dim": 13824,
    "num_layers": 40,
}
#: ``vae/config.json`` (``AutoencoderKLWan``, 126,892,531 parameters): 16 latent channels, 4x temporal and
#: 8x spatial compression, and the per-channel moments every latent is normalised with.
WAN_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "latents_mean": [
        -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
        0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
    ],
    "latents_std": [
        2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
    ],
}  # fmt: skip
#: ``text_encoder/config.json``, UMT5-XXL's encoder (``UMT5Config`` keywords; 5,680,910,336 parameters in
#: ``UMT5EncoderModel``, whose ``encoder.embed_tokens`` is tied to ``shared``, counted once).
UMT5_XXL_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_decoder_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
    "scalable_attention": True,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}


# ----------------------------------------------------------------------------------------------------
# loading


def _pretrained_kwargs(subfolder: str | None, revision: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if subfolder:
        kwargs["subfolder"] = subfolder
    if revision:
        kwargs["revision"] = revision
    return kwargs


def vae_tiling_default(height: int | None, width: int | None, tiling: bool | None = None) -> bool:
    """Whether the VAE tiles (and slices) frames of ``height`` x ``width``: ``tiling`` when given (a
    ``--tiling/--no-tiling`` flag), else on above :data:`VAE_TILING_PIXELS`. An unknown size keeps it off."""
    if tiling is not None:
        return tiling
    return height is not None and width is not None and height * width > VAE_TILING_PIXELS


def load_vae(
    name: str = WAN_T2V_1_3B,
    *,
    subfolder: str | None = "vae",
    revision: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    tiling: bool | None = False,
    slicing: bool | None = False,
    frame_size: tuple[int, int] | None = None,
) -> Any:
    """Any diffusers video VAE (``AutoencoderKLWan`` for Wan) from a hub id or a local folder, frozen in
    eval mode on ``device`` (default: :func:`~medvideocap.devices.resolve_device`) in ``dtype`` (default:
    :func:`default_compute_dtype`). ``AutoModel`` reads the class from the folder's config, so another
    VAE family loads without code here; a model without ``encode()`` is refused by name.

    ``tiling``/``slicing`` None decide by ``frame_size`` (height, width) (:func:`vae_tiling_default`):
    on above :data:`VAE_TILING_PIXELS`, off at or below it or when the size is not known."""
    from diffusers import AutoModel

    device, dt = _resolve(device, dtype)
    vae = release_file_pages(
        AutoModel.from_pretrained(name, dtype=dt, **_pretrained_kwargs(subfolder, revision))
    )
    if not hasattr(vae, "encode"):
        raise ValueError(f"{name} ({type(vae).__name__}) is not a VAE: it has no encode()")
    vae = vae.to(device).eval().requires_grad_(False)
    height, width = frame_size or (None, None)
    if vae_tiling_default(height, width, tiling):
        vae.enable_tiling()
    if vae_tiling_default(height, width, slicing):
        vae.enable_slicing()
    return vae


def vae_scale_factors(
    name: str = WAN_T2V_1_3B, *, subfolder: str = "vae", revision: str | None = None
) -> tuple[int, int]:
    """(temporal, spatial) compression of a Wan VAE, from its config alone (4, 8 for Wan2.1's)."""
    from diffusers import AutoencoderKLWan

    config = AutoencoderKLWan.load_config(name, **_pretrained_kwargs(subfolder, revision))
    return int(config.get("scale_factor_temporal", 4)), int(config.get("scale_factor_spatial", 8))


def load_scheduler(
    name: str = WAN_T2V_1_3B, *, subfolder: str = "scheduler", revision: str | None = None
) -> Any:
    """The sampling scheduler a pipeline folder names (``scheduler_config.json``'s ``_class_name``: Wan's
    ``UniPCMultistepScheduler`` with its flow shift), a class of diffusers' own."""
    import diffusers

    kwargs = _pretrained_kwargs(subfolder, revision)
    # any scheduler class reads scheduler_config.json; the one it names builds the scheduler
    config = diffusers.UniPCMultistepScheduler.load_config(name, **kwargs)
    cls = getattr(diffusers, str(config.get("_class_name")), None)
    if cls is None or not issubclass(cls, diffusers.SchedulerMixin):
        raise ValueError(f"{name}/{subfolder}: {config.get('_class_name')!r} is not a diffusers scheduler")
    return cls.from_pretrained(name, **kwargs)


def load_text_encoder(
    name: str = WAN_T2V_1_3B,
    *,
    subfolder: str | None = "text_encoder",
    tokenizer_subfolder: str | None = "tokenizer",
    revision: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
) -> tuple[Any, Any]:
    """UMT5 (Wan) or T5 encoder, frozen on ``device`` in ``dtype`` (default :data:`TEXT_ENCODER_DTYPE` on
    every device, not :func:`default_compute_dtype`), and its tokenizer: ``(encoder, tokenizer)``.

    The class is chosen from the folder's ``model_type`` among the two Wan-style pipelines use; any
    other type is refused by name rather than loaded through a generic class that might add heads."""
    from transformers import AutoConfig, AutoTokenizer, T5EncoderModel, UMT5EncoderModel

    device, dt = _resolve(device, dtype if dtype is not None else TEXT_ENCODER_DTYPE)
    kw: dict[str, Any] = {"revision": revision} if revision else {}
    model_config = AutoConfig.from_pretrained(name, subfolder=subfolder or "", **kw)
    classes: dict[str, Any] = {"umt5": UMT5EncoderModel, "t5": T5EncoderModel}
    if model_config.model_type not in classes:
        raise ValueError(
            f"{name}/{subfolder}: text encoder type {model_config.model_type!r} is not "
            f"supported (expected one of {sorted(classes)})"
        )
    encoder = classes[model_config.model_type].from_pretrained(
        name, subfolder=subfolder or "", dtype=dt, **kw
    )
    tokenizer = AutoTokenizer.from_pretrained(name, subfolder=tokenizer_subfolder or "", **kw)
    return release_file_pages(encoder).to(device).eval().requires_grad_(False), tokenizer


def load_transformer(
    name: str = WAN_T2V_1_3B,
    *,
    subfolder: str | None = "transformer",
    revision: str | None = None,
    dtype: str | torch.dtype | None = None,
) -> Any:
    """Wan's ``WanTransformer3DModel`` in ``dtype`` (default float32), on the CPU: the trainer decides
    what trains and where it lives (LoRA adapters, DDP), ``generate`` moves it with the pipeline."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel.from_pretrained(
        name, dtype=torch_dtype(dtype or "float32"), **_pretrained_kwargs(subfolder, revision)
    )
    return release_file_pages(model)


def load_wan_pipeline(
    name: str = WAN_T2V_1_3B,
    *,
    revision: str | None = None,
    dtype: str | torch.dtype | None = None,
    transformer: Any = None,
) -> Any:
    """A ``WanPipeline`` (VAE, UMT5, scheduler, transformer) from a pipeline folder or hub id, on the CPU
    with its progress bar off; ``transformer`` replaces the folder's (a fine-tuned or training one).

    Every component loads straight into ``dtype`` (the modules diffusers keeps in fp32, Wan's norms and
    time embedder, stay fp32). ``dtype`` None is diffusers' default: its models (VAE, transformer) in
    float32, the text encoder in the dtype it was saved in."""
    from diffusers import WanPipeline

    kwargs: dict[str, Any] = _pretrained_kwargs(None, revision)
    if dtype is not None:
        kwargs["dtype"] = torch_dtype(dtype)
    if transformer is not None:
        kwargs["transformer"] = transformer
    pipe = WanPipeline.from_pretrained(name, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    release_file_pages(pipe.vae)
    if transformer is None:  # a training transformer passed in is not a file's
        release_file_pages(pipe.transformer)
    return pipe


def release_file_pages(model: Any) -> Any:
    """Copy the parameters a half-precision load kept in fp32 out of the safetensors file mapping.

    diffusers converts every weight to the asked dtype except the model's ``_keep_in_fp32_modules``, which
    stay views of the memory-mapped file and keep the whole mapping resident: Wan's 11 MB of fp32 norms and
    time embedder held 5.4 GB of the 5.7 GB fp32 checkpoint's pages in the resident set of a bf16 load
    (measured, ``benchmarks/plan_calibration.py --load``). Copied, the mapping is released."""
    import torch

    params = list(model.parameters())
    if not params or all(p.dtype == torch.float32 for p in params):
        return model  # nothing was converted: every page mapped is a weight in use
    with torch.no_grad():
        for p in params:
            if p.dtype == torch.float32:
                p.data = p.data.clone()
    return model


def vae_normalization(vae: Any) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) such that training latents are ``(z - mean) / std``.

    Wan VAEs carry ``latents_mean``/``latents_std``; SD-style VAEs a ``shift_factor``/``scaling_factor``,
    which is the same thing with one value for every channel.
    """
    cfg = vae.config
    if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
        return [float(v) for v in cfg.latents_mean], [float(v) for v in cfg.latents_std]
    channels = int(getattr(cfg, "z_dim", None) or getattr(cfg, "latent_channels", None) or 0)
    scale = getattr(cfg, "scaling_factor", None)
    if not channels or scale is None:
        raise ValueError(f"{type(vae).__name__}: config has neither latents_mean/std nor scaling_factor")
    shift = float(getattr(cfg, "shift_factor", None) or 0.0)
    return [shift] * channels, [1.0 / float(scale)] * channels


# ----------------------------------------------------------------------------------------------------
# running


def sample_posterior(
    mean: torch.Tensor, logvar: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``mean + exp(logvar / 2) * eps`` with the log-variance clipped as diffusers clips it.

    ``eps`` is drawn on ``mean``'s device from ``generator`` (which must live on that device), in
    ``mean``'s dtype, so the same generator state gives the same sample wherever this is called.
    """
    import torch

    # Two allocations, the rest in place: this runs per item in DataLoader workers for posterior="sample".
    std = logvar.clamp(*LOGVAR_RANGE).to(mean.dtype).mul_(0.5).exp_()  # clamp() made a new tensor
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return eps.mul_(std).add_(mean)


def clean_prompt(text: str) -> str:
    """Wan's pipeline collapses whitespace before tokenising; embed exactly what inference will see."""
    return " ".join(text.split())


def encode_prompts(
    text_encoder: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_length: int,
    device: torch.device | str,
) -> list[torch.Tensor]:
    """Unpadded ``(L_i, D)`` float32 embeddings on ``device``, computed as WanPipeline computes them.

    Tokenised to ``max_length`` with padding, encoded with the attention mask, and cut back to each
    prompt's real tokens: Wan's cross-attention takes no mask, so callers zero-pad to ``max_length``
    again when they build a batch (the zeros are what the model learned to ignore).
    """
    import torch

    tok = tokenizer(
        [clean_prompt(p) for p in prompts],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    lens = tok.attention_mask.gt(0).sum(dim=1).tolist()
    with torch.inference_mode():
        hidden = text_encoder(tok.input_ids.to(device), tok.attention_mask.to(device)).last_hidden_state
    return [hidden[i, :n].float() for i, n in enumerate(lens)]
