"""The build's model stage at real size: the paper recipe's aesthetic stage (CLIP ViT-L/14, random
weights, the real architecture) one clip per call against clips batched, through the real pipeline.

    .venv/bin/python benchmarks/build_models.py [--seconds 32] [--clip-seconds 2] [--batch 16]
        [--device auto]

In one run, on one generated 720x480 H.264 input cut into ``--clip-seconds`` clips (``detector: none``,
so every clip reaches the stage): ``Pipeline.run`` with ``aesthetic`` at ``batch: 1`` and at
``batch: N``, then ``measures`` after it (which reads the frames the pipeline held for the batch). It
prints the aesthetic stage's seconds per clip, the CLIP calls made (and frames per call), the decodes,
the ratio, whether every clip's score and verdict agree, and the process's peak RSS. One clip per call
runs twice (first and last), so drift between runs shows. On a CPU the batched call is the same
arithmetic and no faster (which is why ``batch:`` unset means 1 there); on a GPU (``--device cuda``)
it is what fills the card.
A measurement, never a test.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def real_size_clip(root: Path) -> tuple[Path, Path]:
    """CLIP ViT-L/14 (transformers' CLIP config at the L/14 vision widths), random weights, with a
    processor, and a LAION-shaped head for its 768-wide projection."""
    from eval import clip_l14_config  # benchmarks/eval.py
    from transformers import CLIPImageProcessor, CLIPModel

    from medvideocap.eval.tiny import save_tiny_aesthetic_head

    config = clip_l14_config()
    CLIPModel(config).save_pretrained(root / "clip-l14")
    CLIPImageProcessor().save_pretrained(root / "clip-l14")
    return root / "clip-l14", save_tiny_aesthetic_head(root / "head.safetensors", embed_dim=768)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=32.0)
    parser.add_argument("--clip-seconds", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import numpy as np
    from videos import make_video  # tests/videos.py: ffmpeg-generated test inputs

    from medvideocap.build import Pipeline, Recipe, discover
    from medvideocap.build import sample as sample_module
    from medvideocap.build.stages import aesthetic

    calls: list[int] = []
    decodes: list[Any] = []
    real_embeddings, real_views = aesthetic.clip_embeddings, sample_module.read_views

    def embeddings(model_id: str, images: list[Any], **kwargs: Any) -> Any:
        calls.append(len(images))
        return real_embeddings(model_id, images, **kwargs)

    def views(path: Any, needs: Any, **kwargs: Any) -> Any:
        decodes.append(kwargs.get("start"))
        return real_views(path, needs, **kwargs)

    aesthetic.clip_embeddings = embeddings  # type: ignore[assignment]
    sample_module.read_views = views  # type: ignore[assignment]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, head = real_size_clip(root)
        make_video(root / "raw" / "input.mp4", seconds=args.seconds, fps=25, size=(720, 480))
        rows: dict[str, Any] = {}
        for run, batch in (("1", 1), (str(args.batch), args.batch), ("1 again", 1)):  # drift shows
            recipe = Recipe.model_validate(
                {
                    "name": "models",
                    "stages": [
                        {"stage": "probe"},
                        {
                            "stage": "split",
                            "detector": "none",
                            "min_seconds": 0.5,
                            "max_seconds": args.clip_seconds,
                        },
                        {
                            "stage": "aesthetic",
                            "clip_model": str(model),
                            "head": str(head),
                            "device": args.device,
                            "batch": batch,
                            "min": None,
                        },
                        {"stage": "measures"},
                    ],
                }
            )
            pipeline = Pipeline(recipe, root / f"work-{len(rows)}")
            sample = discover(root / "raw")[0]
            if not rows:  # load the model once, outside the timing
                aesthetic.score_frames(recipe.stages[2], [np.zeros((480, 720, 3), np.uint8)])
            calls.clear()
            decodes.clear()
            t0 = time.perf_counter()
            outcomes = pipeline.run(sample)
            wall = time.perf_counter() - t0
            stage = sum(o.timings.get("aesthetic", 0.0) for o in outcomes)
            rows[run] = {
                "clips": len(outcomes),
                "wall": wall,
                "aesthetic_s": stage,
                "per_clip": stage / max(1, len(outcomes)),
                "calls": list(calls),
                "decodes": len(decodes),
                "scores": [o.scores.get("aesthetic") for o in outcomes],
                "kept": [o.kept for o in outcomes],
            }
    one, many, again = rows["1"], rows[str(args.batch)], rows["1 again"]
    print(f"input: {args.seconds:g} s 720x480 in {one['clips']} clips of <= {args.clip_seconds:g} s")
    print(
        f"{'batch':>6} {'CLIP calls':>10} {'frames/call':>12} {'decodes':>8} {'aesthetic s/clip':>17} {'wall':>7}"
    )
    for batch, row in rows.items():
        per_call = max(row["calls"]) if row["calls"] else 0
        print(
            f"{batch:>8} {len(row['calls']):>10} {per_call:>12} {row['decodes']:>8} "
            f"{row['per_clip']:>17.3f} {row['wall']:>7.1f}"
        )
    agree = one["kept"] == many["kept"] == again["kept"] and all(
        abs(a - b) <= 1e-4 for a, b in zip(one["scores"], many["scores"], strict=True)
    )
    base = (one["aesthetic_s"] + again["aesthetic_s"]) / 2
    print(
        f"batched / one clip per call (mean of the two), aesthetic seconds: {many['aesthetic_s'] / base:.2f}x"
    )
    print(f"same scores (1e-4) and verdicts: {agree}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
