"""Our real commands at Wan2.1-T2V-1.3B's real size on this machine: peak memory and wall time beside the plan.

    .venv/bin/python benchmarks/realsize.py [--stages encode,train,resume,lora_load,train_fp8,...] [--frames 5 --height 240
        --width 416] [--cache ~/.cache/medvideocap/realsize] [--limit-gib 16]

No weights can be downloaded here, and memory does not depend on weight values, so this builds, once, into
``--cache``, a folder laid out like ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` holding the real architectures
(configs from :mod:`medvideocap.models`) with random weights, in the dtypes the published folder stores:

* ``transformer/``: ``WanTransformer3DModel``, 1,418,996,800 parameters, float32 (5.7 GB);
* ``vae/``: ``AutoencoderKLWan``, 126,892,531 parameters, float32;
* ``text_encoder/``: ``UMT5EncoderModel`` (UMT5-XXL's encoder), 5,680,910,336 parameters, bfloat16 (11.4 GB).
  It is never held whole while it is built: the model is made on the ``meta`` device and each block is
  materialised in bfloat16, initialised by transformers' own ``_init_weights``, written as its own
  safetensors shard and dropped, so building it peaks at about one 2 GB embedding, not 11.4 (or 22.7) GB;
* ``tokenizer/``: the byte-level tokenizer of :mod:`medvideocap.tiny`, because UMT5's real sentencepiece
  tokenizer is not available offline. Every prompt is padded to 512 tokens either way, so the text
  encoder's cost is the real one; only the token ids differ.
* ``scheduler/`` and ``model_index.json``: Wan's UniPC flow scheduler, as the tiny pipeline writes them.

Then it runs our CLI (``python -m medvideocap ...``) as subprocesses, each under an RSS watchdog
(:func:`medvideocap.plan.run_watched`, ``--limit-gib``), at reduced frames (default 5x240x416):

* ``encode``: ``encode-latents`` on 2 clips made with ffmpeg (real VAE in float32, UMT5 in bfloat16);
* ``train``: ``train --config medgen-1.3b-lora``, 1 step on that cache (bf16, gradient checkpointing);
  without a cache from ``encode`` it first encodes the clips with a one-layer 4096-wide UMT5 (setup row);
* ``generate``: ``generate --steps 2 --dtype bfloat16`` from the pipeline folder, one model at a time
  (UMT5 in bf16, freed before the transformer loads, which is freed before the VAE loads);
* ``eval``: ``eval --videos`` on 1 video with the model-free metrics (temporal_flickering,
  flow_interpolation_smoothness);
* ``eval_checkpoint``: ``eval --checkpoint`` on the pipeline folder, 1 prompt, the generate settings,
  the same metrics: generation inside eval at real size;
* ``resume``: ``train`` on from ``train``'s step-1 checkpoint to step 2;
* ``lora_load``: the exported adapter read by diffusers' own ``WanPipeline.load_lora_weights`` on the
  real-size base (bf16, no text encoder);
* ``train_fp8``, ``train_offload``, ``train_adamw8bit``: ``train`` with one memory rung on
  (:data:`LADDER`). Loading peaks above every LoRA step on a CPU, so each train row is followed by its
  steps' own peak (the trainer resets the peak after loading) beside the plan's step stage.

Before each command it runs the same command with ``--plan`` and reads the predicted peak, so the table's
"planned" is what the CLI itself predicts for exactly those flags. Peak RSS is the peak the command
prints when it ends (its kernel high-water mark, ``VmHWM``), or the watcher's reading of it when the
command was killed. Prints one table: stage, settings, wall, peak RSS, planned, ratio.

Seen on a 2-core AVX512-BF16 machine, 5x240x416, with the models already built: ``encode-latents``
80.6 s at 11.71 GiB (planned 12.42), ``train`` 34-163 s at 9.12 GiB (planned 9.47; steps alone 4.92 GiB,
planned 4.50), ``generate`` 81.8 s at 10.05 GiB (planned 11.95), ``eval`` 4.0 s at 0.98 GiB (planned
1.18), ``eval --checkpoint`` 133.2 s at 10.15 GiB (planned 11.95); fp8 base weights take the steps'
peak to 4.02 GiB (planned 3.82). Building the parts once took 24 s (VAE), 99 s (transformer) and 388 s
(UMT5) on a slower machine.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 1 << 30
#: The trainer's memory ladder at real size (issue 21): each a LoRA step with one rung on, beside ``train``.
LADDER = {
    "train_fp8": ("base_weights_dtype=float8_e4m3fn", "frozen base stored in fp8, bf16 compute"),
    "train_offload": ("offload_frozen_blocks=true", "frozen blocks group-offloaded (CPU: no device to free)"),
    "train_adamw8bit": ("optimizer=adamw8bit", "bitsandbytes 8-bit AdamW moments"),
}
STAGES = ("encode", "train", "resume", "lora_load", *LADDER, "generate", "eval", "eval_checkpoint")
#: ``lora_load``: the exported adapter read by diffusers' own WanPipeline on the real-size base.
LORA_LOAD = """
import sys, torch
from diffusers import WanPipeline
from medvideocap.plan import GIB, measured_peak
pipe = WanPipeline.from_pretrained(sys.argv[1], text_encoder=None, tokenizer=None, torch_dtype=torch.bfloat16)
pipe.load_lora_weights(sys.argv[2])
n = sum(1 for k in pipe.transformer.state_dict() if "lora_A" in k)
assert n > 0, "no LoRA layers after load_lora_weights"
print(f"lora layers: {n}", file=sys.stderr)
print(f"memory: measured peak {measured_peak('cpu') / GIB:.2f} GiB host RSS", file=sys.stderr)
"""
PARTS = ("vae", "transformer", "text_encoder", "thin_text_encoder")
MODEL_DIR = "wan2.1-t2v-1.3b-random"
THIN_DIR = "umt5-4096-1layer-random"
PROMPT_ID = "teach-001"  # the first prompt of the shipped medgen-200 set: eval --videos matches files by id
EVAL_METRICS = "temporal_flickering,flow_interpolation_smoothness"
PLANNED = re.compile(r"predicted peak: ([0-9.]+) GiB")
MEASURED = re.compile(r"^memory: measured peak ([0-9.]+) GiB", re.MULTILINE)
#: train's second line: the peak while training (loading excluded) beside the plan's step stage
TRAINING = re.compile(
    r"^memory: measured peak ([0-9.]+) GiB while training.*?planned ([0-9.]+) GiB", re.MULTILINE
)


# ----------------------------------------------------------------------------------------------------
# building the random-weight folders (each part in its own child process)


def _model_index(folder: Path) -> None:
    """model_index.json, scheduler/ and tokenizer/ as the tiny pipeline writes them (same classes)."""
    import tempfile

    from medvideocap.tiny import save_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        tiny = save_tiny_pipeline(Path(tmp) / "tiny")
        for name in ("scheduler", "tokenizer"):
            shutil.rmtree(folder / name, ignore_errors=True)
            shutil.copytree(tiny / name, folder / name)
        shutil.copy(tiny / "model_index.json", folder / "model_index.json")
    (folder / "REALSIZE_RANDOM_WEIGHTS.json").write_text(
        json.dumps(
            {
                "what": "real Wan2.1-T2V-1.3B architectures with random weights (benchmarks/realsize.py)",
                "tokenizer": "medvideocap.tiny byte-level tokenizer (the real UMT5 tokenizer is not offline)",
            }
        )
        + "\n"
    )


def _write_sharded_umt5(config: Any, out: Path) -> None:
    """A ``UMT5EncoderModel`` written shard by shard in bfloat16 without ever holding all of it: built on
    meta, each unit (the embedding, each block, the final norm) materialised on the CPU, initialised by the
    model's own ``_init_weights``, saved, and returned to meta."""
    import torch
    from safetensors.torch import save_file
    from transformers import UMT5EncoderModel

    config.dtype = "bfloat16"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # so each unit is allocated in bf16, never in fp32 first
    try:
        with torch.device("meta"):
            model = UMT5EncoderModel(config)
    finally:
        torch.set_default_dtype(previous)
    units: list[tuple[str, torch.nn.Module, list[torch.nn.Module]]] = [
        ("shared", model.shared, [model]),  # _init_weights(model) draws the embedding
        *(
            (f"encoder.block.{i}", block, list(block.modules()))
            for i, block in enumerate(model.encoder.block)
        ),
        ("encoder.final_layer_norm", model.encoder.final_layer_norm, [model.encoder.final_layer_norm]),
    ]
    out.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    total = 0
    for n, (prefix, unit, init) in enumerate(units):
        unit.to_empty(device="cpu")
        with torch.no_grad():
            for module in init:
                model._init_weights(module)
        tensors = {f"{prefix}.{k}": v.contiguous() for k, v in unit.state_dict().items()}
        name = f"model-{n + 1:05d}-of-{len(units):05d}.safetensors"
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        unit.to("meta")
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config.save_pretrained(out)


def build_part(part: str, cache: Path) -> None:
    """Write one part into the cache; a part's folder appears (renamed into place) only when complete."""
    import torch

    from medvideocap import models

    if part == "thin_text_encoder":
        from transformers import UMT5Config, UMT5EncoderModel

        from medvideocap.tiny import tiny_tokenizer

        root = cache / THIN_DIR
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        config = UMT5Config(**{**models.UMT5_XXL_ENCODER_CONFIG, "num_layers": 1, "vocab_size": 384})
        UMT5EncoderModel._from_config(config, dtype=torch.bfloat16).save_pretrained(tmp / "text_encoder")
        tiny_tokenizer().save_pretrained(tmp / "tokenizer")
        tmp.rename(root)
        return
    folder = cache / MODEL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{part}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if part == "vae":
        from diffusers import AutoencoderKLWan

        vae: Any = AutoencoderKLWan(**models.WAN_VAE_CONFIG)
        vae.save_pretrained(tmp, max_shard_size="2GB")
    elif part == "transformer":
        from diffusers import WanTransformer3DModel

        transformer: Any = WanTransformer3DModel(**models.WAN_1_3B_TRANSFORMER_CONFIG)
        transformer.save_pretrained(tmp, max_shard_size="2GB")
    else:
        from transformers import UMT5Config

        _write_sharded_umt5(UMT5Config(**models.UMT5_XXL_ENCODER_CONFIG), tmp)
    shutil.rmtree(folder / part, ignore_errors=True)
    tmp.rename(folder / part)
    if not (folder / "model_index.json").is_file():
        _model_index(folder)


def has_part(part: str, cache: Path) -> bool:
    if part == "thin_text_encoder":
        return (cache / THIN_DIR / "text_encoder" / "config.json").is_file()
    folder = cache / MODEL_DIR
    return (folder / part / "config.json").is_file() and (folder / "model_index.json").is_file()


# ----------------------------------------------------------------------------------------------------
# running and measuring


@dataclass
class Row:
    stage: str
    settings: str
    seconds: float
    peak: int
    planned: int | None
    status: str


def _run(args: argparse.Namespace, stage: str, settings: str, cmd: list[str], plan: bool = True) -> list[Row]:
    """``cmd`` under the watchdog, after the same command with ``--plan`` (its predicted peak)."""
    from medvideocap.plan import run_watched

    limit = int(args.limit_gib * GIB)
    planned = None
    if plan:
        dry = run_watched([*cmd, "--plan"], limit_bytes=limit, timeout=300)
        found = PLANNED.search(dry.stdout)
        if dry.returncode != 0 or found is None:
            raise SystemExit(
                f"{stage}: `--plan` failed ({dry.returncode}):\n{dry.stdout}\n{dry.stderr[-3000:]}"
            )
        planned = int(float(found.group(1)) * GIB)
        print(dry.stdout, file=sys.stderr)
    print(f"[{stage}] {' '.join(cmd)}", file=sys.stderr, flush=True)
    result = run_watched(cmd, limit_bytes=limit, timeout=args.timeout)
    status = "ok" if result.returncode == 0 else (result.reason or f"exit {result.returncode}")
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
    # the command's own exact peak when it printed one (it does when it finishes), else the watcher's
    own = MEASURED.search(result.stderr)
    peak = int(float(own.group(1)) * GIB) if own else result.peak_rss
    if own:
        print(own.group(0), file=sys.stderr, flush=True)
    rows = [Row(stage, settings, result.seconds, peak, planned, status)]
    steps = TRAINING.search(result.stderr)
    if steps:  # the steps' own peak: where a memory rung shows when loading peaks above every step
        print(steps.group(0), file=sys.stderr, flush=True)
        rows.append(
            Row(f"  {stage}: steps only", "loading excluded (VmHWM reset)", 0.0,
                int(float(steps.group(1)) * GIB), int(float(steps.group(2)) * GIB), status)
        )  # fmt: skip
    return rows


def print_table(rows: list[Row]) -> None:
    wide = max([len(r.settings) for r in rows] + [8])
    print(
        f"{'stage':<36} {'settings':<{wide}} {'wall s':>8} {'peak RSS':>9} {'planned':>8} {'ratio':>6}  status"
    )
    for r in rows:
        planned = f"{r.planned / GIB:8.2f}" if r.planned else f"{'-':>8}"
        ratio = f"{r.peak / r.planned:6.2f}" if r.planned else f"{'-':>6}"
        print(
            f"{r.stage:<36} {r.settings:<{wide}} {r.seconds:8.1f} {r.peak / GIB:9.2f} {planned} {ratio}  {r.status}"
        )
    print(
        "GiB; peak RSS: the command's own VmHWM (as it printed it); planned: its `--plan` for the same flags"
    )


def _build(args: argparse.Namespace, parts: list[str]) -> list[Row]:
    rows = []
    for part in parts:
        if has_part(part, args.cache):
            continue
        cmd = [sys.executable, __file__, "--build-part", part, "--cache", str(args.cache)]
        rows.extend(_run(args, f"build {part}", "random weights", cmd, plan=False))
        if rows[-1].status != "ok":
            raise SystemExit(f"building {part} failed: {rows[-1].status}")
    return rows


def make_dataset(root: Path, frames: int, height: int, width: int, n: int = 2) -> Path:
    """``n`` ffmpeg test clips (a little longer than ``frames`` at 16 fps) as a hub-native dataset."""
    from medvideocap.dataset.schema import Caption, ClipRecord
    from medvideocap.dataset.writer import DatasetWriter
    from medvideocap.media.probe import probe

    if (root / "metadata").is_dir():
        return root
    clips = root.with_name(root.name + "-mp4")
    clips.mkdir(parents=True, exist_ok=True)
    seconds = frames / 16 + 1.0
    with DatasetWriter(root, card=False) as writer:
        for i, source in enumerate(("testsrc2", "smptebars")[:n]):
            path = clips / f"clip{i}.mp4"
            subprocess.run(
                ["ffmpeg", "-y", "-v", "error", "-f", "lavfi", "-i", f"{source}=size={width}x{height}:rate=16",
                 "-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)],
                check=True,
            )  # fmt: skip
            info = probe(path)
            caption = "A surgeon ties an instrument knot over a suture pad, close-up, steady camera."
            writer.write(
                ClipRecord(
                    id=f"clip{i}",
                    group=f"clip{i}",
                    file_name=f"clip{i}.mp4",
                    split="train",
                    duration=info.duration,
                    fps=info.fps,
                    num_frames=info.num_frames,
                    width=info.width,
                    height=info.height,
                    captions=[Caption(name="detailed", text=caption, style="detailed")],
                ),
                path,
            )
    return root


def _encode_cmd(args: argparse.Namespace, data: Path, out: Path, text_encoder: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "medvideocap", "encode-latents", str(data), "--out", str(out)]
    cmd += ["--vae", str(args.cache / MODEL_DIR), "--device", "cpu", "--num-workers", "0", "--no-progress"]
    cmd += ["--num-frames", str(args.frames), "--height", str(args.height), "--width", str(args.width)]
    cmd += ["--fps", "16", "--text-encoder-dtype", "bfloat16"]
    if text_encoder is not None:
        cmd += ["--text-encoder", str(text_encoder)]
    return cmd


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/medvideocap/realsize").expanduser())
    parser.add_argument("--limit-gib", type=float, default=16.0, help="kill a command above this RSS")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="kill a command after this many seconds"
    )
    parser.add_argument("--build-part", choices=PARTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.cache = args.cache.expanduser()
    if args.build_part:
        build_part(args.build_part, args.cache)
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    size = f"{args.frames}x{args.height}x{args.width}"
    work = args.cache / "runs" / size
    work.mkdir(parents=True, exist_ok=True)
    model = args.cache / MODEL_DIR
    cache_dir = work / "latents"
    rows: list[Row] = []

    needs = {
        "encode": ["vae", "text_encoder"],
        "train": ["transformer"],
        "resume": ["transformer"],
        "lora_load": ["transformer", "vae"],
        "train_fp8": ["transformer"],
        "train_offload": ["transformer"],
        "train_adamw8bit": ["transformer"],
        "generate": PARTS[:3],
        "eval_checkpoint": PARTS[:3],
    }
    parts = sorted({p for s in stages for p in needs.get(s, [])}, key=PARTS.index)
    trains = {"train", "resume", *LADDER} & set(stages)
    if trains and "encode" not in stages and not (cache_dir / "manifest.json").is_file():
        parts += ["vae", "thin_text_encoder"]
    rows += _build(args, list(dict.fromkeys(parts)))

    if "encode" in stages or (trains and not (cache_dir / "manifest.json").is_file()):
        data = make_dataset(work / "dataset", args.frames, args.height, args.width)
        shutil.rmtree(cache_dir, ignore_errors=True)
        real = "encode" in stages
        rows.extend(
            _run(
                args,
                "encode-latents" if real else "setup: encode-latents (1-layer UMT5)",
                f"2 clips {size}, VAE fp32, UMT5 bf16",
                _encode_cmd(args, data, cache_dir, None if real else args.cache / THIN_DIR),
                plan=real,
            )
        )

    def train_cmd(out: Path, *extra: str, steps: int = 1, resume: str = "none") -> list[str]:
        sets = [f"model_id={model}", f"latents={cache_dir}", f"output_dir={out}", f"max_steps={steps}"]
        sets += ["num_workers=0", "gradient_accumulation_steps=1", "validation_prompts=[]", "report_to=null"]
        sets += [f"resume={resume}", "checkpoint_every=1", *extra]
        cmd = [sys.executable, "-m", "medvideocap", "train", "--config", "medgen-1.3b-lora"]
        return [*cmd, *(a for s in sets for a in ("--set", s))]

    if "train" in stages:
        out = work / "train"
        shutil.rmtree(out, ignore_errors=True)
        rows.extend(_run(args, "train", f"LoRA r32, 1 step, {size}, bf16, ckpt", train_cmd(out)))
    if "resume" in stages:  # on from train's step-1 checkpoint to step 2
        rows.extend(
            _run(
                args,
                "train resume",
                f"step 1 -> 2, {size}",
                train_cmd(work / "train", steps=2, resume="auto"),
            )
        )
    if "lora_load" in stages:
        final = work / "train" / "final"
        cmd = [sys.executable, "-c", LORA_LOAD, str(model), str(final)]
        rows.extend(
            _run(args, "export + WanPipeline.load_lora_weights", "bf16, no text encoder", cmd, plan=False)
        )
    for stage, (setting, words) in LADDER.items():
        if stage in stages:
            out = work / stage
            shutil.rmtree(out, ignore_errors=True)
            rows.extend(_run(args, stage, f"LoRA 1 step, {size}: {words}", train_cmd(out, setting)))
    video = work / "videos" / f"{PROMPT_ID}.mp4"
    if "generate" in stages:
        cmd = [
            sys.executable,
            "-m",
            "medvideocap",
            "generate",
            "--checkpoint",
            str(model),
            "--out",
            str(video),
        ]
        cmd += ["--prompt", "A surgeon ties an instrument knot", "--steps", "2", "--dtype", "bfloat16"]
        cmd += [
            "--device",
            "cpu",
            "--frames",
            str(args.frames),
            "--height",
            str(args.height),
            "--width",
            str(args.width),
        ]
        rows.extend(_run(args, "generate", f"2 steps, {size}, bf16, CFG 5", cmd))
    if "eval" in stages:
        if not video.is_file():
            data = make_dataset(work / "dataset", args.frames, args.height, args.width)
            video.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(work / "dataset-mp4" / "clip0.mp4", video)
        out = work / "eval"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "medvideocap", "eval", "--videos", str(video.parent), "--out", str(out)]
        cmd += ["--limit", "1", "--metrics", EVAL_METRICS, "--device", "cpu"]
        cmd += ["--frames", str(args.frames), "--height", str(args.height), "--width", str(args.width)]
        rows.extend(_run(args, "eval", f"--videos, 1 video, {EVAL_METRICS}", cmd))
    if "eval_checkpoint" in stages:
        out = work / "eval-checkpoint"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "medvideocap", "eval", "--checkpoint", str(model), "--out", str(out)]
        cmd += [
            "--limit",
            "1",
            "--metrics",
            EVAL_METRICS,
            "--device",
            "cpu",
            "--steps",
            "2",
            "--dtype",
            "bfloat16",
        ]
        cmd += ["--frames", str(args.frames), "--height", str(args.height), "--width", str(args.width)]
        rows.extend(_run(args, "eval --checkpoint", f"1 prompt, 2 steps, {size}, bf16, {EVAL_METRICS}", cmd))

    print_table(rows)
    return 0 if all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
