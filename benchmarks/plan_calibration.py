"""Measure the activation constants of :mod:`medvideocap.plan` on this machine's CPU.

    .venv/bin/python benchmarks/plan_calibration.py [--only transformer_train vae_encode ...] [--quick]

Each measurement runs in a fresh child process (so one allocator's caches never leak into the next), with
``MALLOC_MMAP_THRESHOLD_`` pinned so every large tensor is its own mmap and is returned to the kernel when
freed: the process's resident set then follows the live tensors, and the kernel's own high-water mark
(``VmHWM``, reset through ``/proc/self/clear_refs``) is an exact peak, not a sample. Each result is the
peak *above what was resident before the measured call* (weights and inputs already loaded), i.e. the
activation term the planner predicts, printed as one JSON line per measurement with the planner's
prediction beside it.

What it measures (all at Wan's real widths: hidden 1536, FFN 8960, 12 heads, text 4096 x 512 tokens; the
VAE at its real config), with random weights:

* ``transformer_train``: one trainer step's forward + backward (``flow_matching_loss`` under bf16 autocast,
  the trainer's ``build_transformer``), LoRA and full, with and without gradient checkpointing, at 2 and 4
  layers and several token counts; the planner's per-layer and per-token constants come from these;
* ``transformer_infer``: one denoising forward (no grad), the term a generate step adds;
* ``vae_encode`` / ``vae_decode``: ``AutoencoderKLWan`` at several frame sizes, tiled and not;
* ``load``: a safetensors folder written by ``save_pretrained`` and read back by our loaders, peak above
  the weights it ends with (the loader's transient).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MMAP_THRESHOLD = "131072"
QUICK_SIZES = [(5, 128, 128), (5, 240, 416)]
FULL_SIZES = [(5, 128, 128), (5, 240, 416), (9, 240, 416), (17, 240, 416)]


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_above_now(fn: Callable[[], Any]) -> tuple[int, Any]:
    """(peak resident bytes above the resident set before ``fn`` ran, ``fn()``), from the kernel's VmHWM."""
    gc.collect()
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    out = fn()
    return _status("VmHWM") - before, out


def real_transformer(layers: int, dtype: Any) -> Any:
    import torch
    from diffusers import WanTransformer3DModel

    from medvideocap.models import WAN_1_3B_TRANSFORMER_CONFIG

    with torch.device("meta"):
        model: Any = WanTransformer3DModel(**{**WAN_1_3B_TRANSFORMER_CONFIG, "num_layers": layers})
    model = model.to_empty(device="cpu")
    keep = model._keep_in_fp32_modules or []
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.02)
            if not any(k in name.split(".") for k in keep):
                p.data = p.data.to(dtype)
    for b in model.buffers():
        if b.is_floating_point() and not torch.isfinite(b).all():
            b.zero_()
    return model


def measure_transformer_train(
    mode: str, checkpointing: bool, layers: int, frames: int, height: int, width: int
) -> dict[str, Any]:
    import torch

    from medvideocap.train import TrainConfig, build_transformer, flow_matching_loss

    cfg = TrainConfig(mode=mode, gradient_checkpointing=checkpointing, caption_dropout=0.0)  # type: ignore[arg-type]
    base = real_transformer(layers, torch.bfloat16 if mode == "lora" else torch.float32)
    model = build_transformer(cfg, torch.bfloat16, transformer=base).train()
    f, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    batch = {"latents": torch.randn(1, 16, f, h, w), "prompt_embeds": torch.randn(1, 512, 4096)}
    null = torch.zeros(512, 4096)
    gen = torch.Generator().manual_seed(0)
    grads = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = flow_matching_loss(model, batch, cfg, gen, null)
        loss.backward()
        return time.perf_counter() - t0

    peak, seconds = peak_above_now(step)
    row = {
        "what": "transformer_train",
        "mode": mode,
        "checkpointing": checkpointing,
        "layers": layers,
        "size": f"{frames}x{height}x{width}",
        "tokens": f * (h // 2) * (w // 2),
        "measured": peak,
        "grads": grads,
        "seconds": round(seconds, 2),
    }
    return {**row, "predicted": predict(row)}


def measure_transformer_infer(layers: int, frames: int, height: int, width: int) -> dict[str, Any]:
    import torch

    model = real_transformer(layers, torch.bfloat16).eval().requires_grad_(False)
    f, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    x = torch.randn(1, 16, f, h, w, dtype=torch.bfloat16)
    text = torch.randn(1, 512, 4096, dtype=torch.bfloat16)

    def forward() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(
                hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text, return_dict=False
            )
        return time.perf_counter() - t0

    peak, seconds = peak_above_now(forward)
    row = {
        "what": "transformer_infer",
        "layers": layers,
        "size": f"{frames}x{height}x{width}",
        "tokens": f * (h // 2) * (w // 2),
        "measured": peak,
        "seconds": round(seconds, 2),
    }
    return {**row, "predicted": predict(row)}


def _real_vae(dtype: Any, tiling: bool) -> Any:
    import torch
    from diffusers import AutoencoderKLWan

    from medvideocap.models import WAN_VAE_CONFIG

    vae: Any = AutoencoderKLWan(**WAN_VAE_CONFIG)
    vae = vae.to(dtype).eval().requires_grad_(False)
    if tiling:
        vae.enable_tiling()
    del torch
    return vae


def measure_vae(
    what: str, dtype_name: str, tiling: bool, frames: int, height: int, width: int
) -> dict[str, Any]:
    import torch

    dtype = getattr(torch, dtype_name)
    vae = _real_vae(dtype, tiling)
    if what == "vae_encode":
        x = torch.rand(1, 3, frames, height, width, dtype=dtype) * 2 - 1

        def run() -> float:
            t0 = time.perf_counter()
            with torch.inference_mode():
                dist = vae.encode(x).latent_dist
                dist.mean.float(), dist.logvar.float()
            return time.perf_counter() - t0

    else:
        z = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, dtype=dtype)

        def run() -> float:
            t0 = time.perf_counter()
            with torch.inference_mode():
                vae.decode(z).sample.float()
            return time.perf_counter() - t0

    peak, seconds = peak_above_now(run)
    row = {
        "what": what,
        "dtype": dtype_name,
        "tiling": tiling,
        "size": f"{frames}x{height}x{width}",
        "measured": peak,
        "seconds": round(seconds, 2),
    }
    return {**row, "predicted": predict(row)}


def predict(row: dict[str, Any]) -> int:
    """The planner's number for a measurement's settings, with the constants medvideocap.plan has now."""
    from medvideocap import plan

    frames, height, width = (int(x) for x in row["size"].split("x"))
    if row["what"] in ("vae_encode", "vae_decode"):
        fn = plan.vae_encode_activations if row["what"] == "vae_encode" else plan.vae_decode_activations
        return fn(frames, height, width, dtype_bytes=plan.DTYPE_BYTES[row["dtype"]], tiling=row["tiling"])
    config = {**plan.transformer_config(), "num_layers": row["layers"]}
    shape = plan.TransformerShape.from_config(config)
    if row["what"] == "transformer_infer":
        return plan.transformer_infer_activations(shape, tokens=row["tokens"], text_tokens=512)
    count = plan.Models(config, {}, {}, "calibration").transformer_count()
    copies = (0, 0)
    if row["mode"] == "full":
        copies = (2 * count.blocks // row["layers"], 2 * (count.params - count.fp32_kept - count.blocks))
    act = plan.transformer_train_activations(
        shape,
        tokens=row["tokens"],
        text_tokens=512,
        mode=row["mode"],
        checkpointing=row["checkpointing"],
        trainable_bytes=row["grads"],
        copies=copies,
    )
    return row["grads"] + act


def check(paths: list[str]) -> None:
    """Each stored measurement beside the current prediction (MiB) and the relative error."""
    for path in paths:
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            # results written before the rows had "measured" name it by what it was
            row.setdefault("measured", row.get("peak_above_weights", row.get("activations")))
            if row["measured"] is None or row.get("what") not in FUNCTIONS:
                continue
            predicted = predict(row)
            keys = ("what", "mode", "dtype", "checkpointing", "tiling", "layers", "size")
            label = " ".join(str(row[k]) for k in keys if k in row)
            error = (predicted - row["measured"]) / row["measured"]
            print(
                f"{label:<44} measured {row['measured'] / 2**20:8.1f}  predicted {predicted / 2**20:8.1f}  {error:+.0%}"
            )


def measure_load(what: str, folder: str) -> dict[str, Any]:
    """Peak RSS while our loader reads ``folder`` (written by ``benchmarks/realsize.py``), and what stays."""
    import torch

    from medvideocap import models

    loaders = {
        "transformer": lambda: models.load_transformer(folder, dtype="bfloat16"),
        "vae": lambda: models.load_vae(folder, dtype="float32", device="cpu"),
        "text_encoder": lambda: models.load_text_encoder(folder, dtype="bfloat16", device="cpu"),
    }
    gc.collect()
    before = _status("VmRSS")
    peak, model = peak_above_now(loaders[what])
    module = model[0] if isinstance(model, tuple) else model
    weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    gc.collect()
    after = _status("VmRSS") - before
    del torch
    return {"what": f"load_{what}", "weights": weights, "peak_above_before": peak, "resident_after": after}


MEASUREMENTS: dict[str, Callable[[bool], list[dict[str, Any]]]] = {}


def _plans(quick: bool) -> dict[str, list[dict[str, Any]]]:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    train = [
        {"mode": mode, "checkpointing": ckpt, "layers": layers, "frames": f, "height": h, "width": w}
        for mode in ("lora", "full")
        for ckpt in (False, True)
        for layers in ((2,) if quick else (2, 4))
        for f, h, w in sizes
    ]
    infer = [{"layers": 2, "frames": f, "height": h, "width": w} for f, h, w in sizes]
    vae_sizes = [(5, 128, 128), (5, 240, 416)] + ([] if quick else [(9, 240, 416), (5, 480, 832)])
    vae = [
        {"dtype_name": dt, "tiling": tiling, "frames": f, "height": h, "width": w}
        for dt in ("float32", "bfloat16")
        for f, h, w in vae_sizes
        for tiling in ((False, True) if max(h, w) > 256 and not quick else (False,))
    ]
    return {
        "transformer_train": train,
        "transformer_infer": infer,
        "vae_encode": [dict(v, what="vae_encode") for v in vae],
        "vae_decode": [dict(v, what="vae_decode") for v in vae],
    }


FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "transformer_train": measure_transformer_train,
    "transformer_infer": measure_transformer_infer,
    "vae_encode": measure_vae,
    "vae_decode": measure_vae,
    "load": measure_load,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help=f"groups to run: {', '.join(FUNCTIONS)}")
    parser.add_argument("--quick", action="store_true", help="fewer sizes (a few minutes)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--load",
        nargs=2,
        action="append",
        metavar=("WHAT", "FOLDER"),
        default=[],
        help="also measure loading FOLDER as WHAT (transformer, vae or text_encoder)",
    )
    parser.add_argument("--limit-gib", type=float, default=12.0, help="kill a measurement above this RSS")
    parser.add_argument("--check", nargs="+", default=None, metavar="JSONL", help="re-predict stored results")
    args = parser.parse_args()
    if args.check:
        check(args.check)
        return 0
    if args.child:
        group, kwargs = json.loads(args.child)
        print(json.dumps(FUNCTIONS[group](**kwargs)), flush=True)
        return 0
    from medvideocap.plan import run_watched

    runs = [
        (g, kw)
        for g, items in _plans(args.quick).items()
        if args.only is None or g in args.only
        for kw in items
    ]
    runs += [("load", {"what": what, "folder": folder}) for what, folder in args.load]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    for group, kwargs in runs:
        cmd = [sys.executable, __file__, "--child", json.dumps([group, kwargs])]
        result = run_watched(cmd, limit_bytes=int(args.limit_gib * 2**30), env=env)
        if result.returncode != 0:
            print(
                json.dumps({"what": group, **kwargs, "error": result.reason or result.stderr[-500:]}),
                flush=True,
            )
        else:
            print(result.stdout.strip(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
