"""The whole pipeline on generated videos, as `make demo` runs it.

Each step is the real command a user would type (printed before it runs), so the demo doubles as a
walkthrough: make raw videos -> ``build`` -> ``info``/``validate``/``stats`` -> ``medvideocap.load`` ->
``encode-latents`` with a tiny random Wan VAE + UMT5 -> ``train`` a few LoRA steps. Every step resumes,
so a rerun after an interruption picks up where it stopped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medvideocap.atomic import atomic_path, atomic_write_text

console = Console()

# (name, lavfi source graph, category, caption). Sizes/lengths suit the CPU-only `demo` recipe: clips of
# at least 2 s and 96 px; the smptebars clip is static on purpose, so the funnel shows a motion reject.
_RAW = [
    (
        "suturing_demo",
        "testsrc2=size=320x240:rate=12",
        "clinical_practice",
        "A gloved hand passes a curved needle through a skin pad while the camera stays fixed.",
    ),
    (
        "heart_animation",
        "mandelbrot=size=320x240:rate=12",
        "medical_animation",
        "An animated view zooms into a swirling structure, with colours shifting from blue to orange.",
    ),
    (
        "cell_growth",
        "life=size=320x240:rate=12:mold=10:ratio=0.4:death_color=#203040:life_color=#e0a060",
        "popular_science",
        "A grid of cells grows and dies in waves across a dark background.",
    ),
    (
        "lecture_slides",
        "smptebars=size=320x240:rate=12",
        "medical_teaching",
        "A static slide with coloured bars fills the screen.",
    ),
    (
        "ward_round",
        "testsrc=size=320x240:rate=12",
        "clinical_practice",
        "A counter ticks upwards in the centre of a colourful test pattern.",
    ),
    (
        "scan_review",
        "rgbtestsrc=size=320x240:rate=12,hue=H=2*PI*t",
        "medical_imaging",
        "Bands of colour cycle through hues as an imaging display is reviewed.",
    ),
]


class DemoStepError(RuntimeError):
    """A demo step's command failed; the command printed its own error."""


def make_raw_videos(raw: Path, *, seconds: float = 4.0) -> list[Path]:
    """Write the demo's raw videos and a metadata.jsonl sidecar (titles, categories, captions)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("the demo needs system FFmpeg: apt-get install -y ffmpeg (make demo does this)")
    raw.mkdir(parents=True, exist_ok=True)
    paths, rows = [], []
    for name, graph, category, caption in _RAW:
        path = raw / f"{name}.mp4"
        if not path.exists():
            with atomic_path(path, fsync=False) as tmp:
                args = [
                    ffmpeg,
                    "-y",
                    "-v",
                    "error",
                    "-f",
                    "lavfi",
                    "-i",
                    f"{graph},format=yuv420p",
                    "-t",
                    str(seconds),
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    str(tmp),
                ]
                subprocess.run(args, check=True)
        paths.append(path)
        rows.append(
            {
                "file_name": path.name,
                "title": name.replace("_", " ").title(),
                "category": category,
                "caption_detailed": f"In this video, {caption[0].lower()}{caption[1:]}",
                "caption_brief": caption.split(",")[0].rstrip(".") + ".",
            }
        )
    atomic_write_text(raw / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in rows), fsync=False)
    return paths


def _step(title: str, *args: str) -> None:
    console.rule(f"[bold]{title}")
    console.print("$ medvideocap " + " ".join(args), style="cyan", markup=False)
    done = subprocess.run([sys.executable, "-m", "medvideocap", *args], check=False)
    if done.returncode:
        raise DemoStepError(
            f"demo step '{title}' failed (exit {done.returncode}); its error is printed above"
        )


def _show_loader(dataset: Path) -> None:
    import torch

    from medvideocap.loading.loader import collate, load
    from medvideocap.media.frames import FrameSpec

    console.rule("[bold]medvideocap.load")
    spec = FrameSpec(num_frames=9, fps=8.0, height=64, width=96, position="center")
    ds = load(dataset, split="train", frames=spec, caption={"detailed": 0.5, "brief": 0.5})
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate, num_workers=0)
    batch = next(iter(loader))
    video = batch["video"]
    table = Table("field", "value")
    table.add_row("clips in train", str(len(ds)))  # type: ignore[arg-type]
    table.add_row(
        "batch video", f"{tuple(video.shape)} {video.dtype} in [{video.min():.2f}, {video.max():.2f}]"
    )
    table.add_row("timestamps[0]", ", ".join(f"{t:.2f}" for t in batch["timestamps"][0].tolist()))
    table.add_row("caption[0]", batch["caption"][0])
    console.print(table)


def run_demo(out: Path) -> None:
    out = out.resolve()
    raw, dataset, latents, tiny, run = (out / n for n in ("raw", "dataset", "latents", "tiny-wan", "run"))
    console.rule("[bold]raw videos")
    made = make_raw_videos(raw)
    console.print(f"{len(made)} videos + metadata.jsonl in {raw}")

    _step("build", "build", "--src", str(raw), "--out", str(dataset), "--recipe", "demo", "--workers", "2")
    _step("info", "info", str(dataset))
    _step("validate", "validate", str(dataset))
    _step("stats", "stats", str(dataset), "--plots", str(out / "plots"))
    _show_loader(dataset)

    from medvideocap.caption.tiny import save_tiny_vlm

    vlm = out / "tiny-vlm"
    if not (vlm / "config.json").exists():
        save_tiny_vlm(vlm)
    console.print(f"tiny random Qwen2.5-VL (real classes, random weights: captions are gibberish) in {vlm}")
    _step(
        "recaption (tiny VLM)",
        "recaption",
        str(dataset),
        "--out",
        str(out / "recaption"),
        "--backend",
        "transformers",
        "--model",
        str(vlm),
        "--template",
        "brief",
        "--no-hygiene",
        "--max-new-tokens",
        "8",
        "--frames",
        "4",
        "--write",
    )

    from medvideocap.tiny import save_tiny_pipeline

    if not (tiny / "model_index.json").exists():
        save_tiny_pipeline(tiny)
    console.print(f"tiny random Wan2.1 pipeline (real classes, random weights) in {tiny}")
    _step(
        "encode-latents",
        "encode-latents",
        str(dataset),
        "--out",
        str(latents),
        "--split",
        "train",
        "--vae",
        str(tiny),
        "--max-length",
        "32",
        "--num-frames",
        "9",
        "--fps",
        "8",
        "--height",
        "64",
        "--width",
        "96",
        "--position",
        "center",
    )
    _step(
        "train (tiny LoRA)",
        "train",
        "--config",
        "medgen-1.3b-lora",
        "--set",
        f"model_id={tiny}",
        "--set",
        f"latents={latents}",
        "--set",
        f"output_dir={run}",
        "--set",
        "max_steps=6",
        "--set",
        "gradient_accumulation_steps=1",
        "--set",
        "num_workers=0",
        "--set",
        "mixed_precision='no'",
        "--set",
        "gradient_checkpointing=false",
        "--set",
        "text_seq_len=32",
        "--set",
        "lora_rank=4",
        "--set",
        "lora_alpha=4",
        "--set",
        "log_every=1",
        "--set",
        "checkpoint_every=3",
        "--set",
        "validation_every=0",
        "--set",
        "validation_frames=9",
        "--set",
        "validation_height=64",
        "--set",
        "validation_width=96",
        "--set",
        "validation_steps=2",
        "--set",
        "report_to=null",
        "--set",
        "warmup_steps=0",
        "--set",
        "learning_rate=1e-3",
    )
    console.rule("[bold green]demo finished")
    console.print(
        f"dataset: {dataset}\nre-captioned copy: {out / 'recaption' / 'dataset'}\n"
        f"latents: {latents}\ntraining run: {run}"
    )
