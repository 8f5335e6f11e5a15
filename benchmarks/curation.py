"""Does each curation stage find what it filters? Precision / recall on labelled real footage.

    .venv/bin/python benchmarks/curation.py [--skip-transnet] [--easyocr] [--dir DIR]

Makes a labelled corpus from the repository's real clips (tests/data: Big Buck Bunny, bikes) with
the helpers the tests use (tests/fixtures_build.py):

* cuts: bikes (5 hard cuts), Big Buck Bunny (none), BBB + its mirror image + bikes concatenated
  (7 cuts, one between similar colours), BBB dissolving into bikes over 1 s (a dissolve + 5 cuts);
* borders: both clips letterboxed (8 and 44 px bars), pillarboxed (60 px) and unpadded;
* burned-in text: 0, 9, 15, 21 and 30 words by drawtext (the rule drops > 20);
* quality: each clip and its blurred, noisy and over-compressed (x264 qp 51) copies.

and prints, stage by stage, for our stages and, side by side, for PySceneDetect, TransNetV2 and
ffmpeg cropdetect called directly: precision and recall of cuts (a detected cut within 0.5 s of a
true one; for the dissolve, anywhere inside it +-0.5 s), border detection (bars found to within 2 px),
text decisions (reject when > 20 words), quality ordering (share of degraded copies scored below
their source) and clips per second.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fixtures_build as fx  # noqa: E402
import numpy as np  # noqa: E402

from medvideocap.build.recipe import BlackBorderStage, OcrStage, SplitStage, TechnicalStage  # noqa: E402
from medvideocap.build.sample import Sample  # noqa: E402
from medvideocap.build.stages import Context  # noqa: E402

Span = tuple[float, float]


def _made(fn: Callable[..., Path], dest: Path, *args: Any, **kwargs: Any) -> Path:
    """``fn(dest, ...)`` unless an earlier run with the same ``--dir`` already made ``dest``."""
    return dest if dest.exists() else fn(dest, *args, **kwargs)


def corpus(root: Path) -> dict[str, Any]:
    """The labelled clips: {cuts: [(path, truth spans)], borders: [(path, bars)], text: [...], quality: [...]}."""
    bbb, bikes = fx.TESTDATA / "bigbuckbunny.mp4", fx.TESTDATA / "bikes.mp4"
    dissolve_start = fx.BBB_SECONDS - 1.0
    cuts = [
        (bikes, [(c, c) for c in fx.BIKES_CUTS]),
        (bbb, []),
        (_made(fx.concat_real, root / "cuts" / "concat.mp4"), [(c, c) for c in fx.CONCAT_CUTS]),
        (
            _made(fx.dissolve_real, root / "cuts" / "dissolve.mp4"),
            [
                (dissolve_start, fx.BBB_SECONDS),
                *((dissolve_start + c, dissolve_start + c) for c in fx.BIKES_CUTS),
            ],
        ),
    ]
    borders = []
    for name in ("bikes.mp4", "bigbuckbunny.mp4"):
        borders.append(
            (_made(fx.degraded_real, root / "borders" / f"none-{name}", name, "source"), (0, 0, 0, 0))
        )
        for bar, pillar in ((8, False), (44, False), (60, True)):
            path = _made(fx.letterbox_real, root / "borders" / f"{bar}-{name}", name, bar=bar, pillar=pillar)
            borders.append((path, (0, 0, bar, bar) if pillar else (bar, bar, 0, 0)))
    text = []
    for words in (0, 9, 15, 21, 30):
        for name in ("bikes.mp4", "bigbuckbunny.mp4"):
            path = root / "text" / f"{words}-{name}"
            if words:
                _made(fx.text_real, path, name, words, size=(480, 270), seconds=2.0)
            else:
                _made(fx.degraded_real, path, name, "source", seconds=2.0)
            text.append((path, words))
    quality = []
    for name in ("bikes.mp4", "bigbuckbunny.mp4"):
        group = {
            k: fx.degraded_real(root / "quality" / f"{k}-{name}", name, k)
            for k in ("source", *fx.DEGRADATIONS)
        }
        quality.append(group)
    return {"cuts": cuts, "borders": borders, "text": text, "quality": quality}


# ------------------------------------------------------------------------------------------------
# cuts


def score_cuts(
    found: list[list[float]], truths: list[list[Span]], tol: float = 0.5
) -> tuple[float, float, int, int]:
    """Precision, recall, true cuts, detected cuts (each truth matched at most once)."""
    hits = detected = total = 0
    for cuts, truth in zip(found, truths, strict=True):
        used: set[int] = set()
        for c in cuts:
            match = next(
                (i for i, (a, b) in enumerate(truth) if i not in used and a - tol <= c <= b + tol), None
            )
            if match is not None:
                used.add(match)
        hits += len(used)
        detected += len(cuts)
        total += len(truth)
    return hits / max(detected, 1), hits / max(total, 1), total, detected


def scenedetect_direct(path: Path) -> list[float]:
    """PySceneDetect as its users call it: ``detect(path, ContentDetector())``, its defaults."""
    from scenedetect import ContentDetector, detect

    scenes = detect(str(path), ContentDetector())
    return [s[0].seconds for s in scenes[1:]]


def transnet_direct(path: Path) -> list[float]:
    """TransNetV2 as its README runs it: ffmpeg-scaled 48x27 frames -> predict_frames ->
    predictions_to_scenes(threshold 0.5); a cut is the first frame of each later scene."""
    from medvideocap.build.stages.split import transnet_model
    from medvideocap.media.probe import probe

    model, _ = transnet_model("cpu")
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "48x27", "-"],
        capture_output=True,
        check=True,
    ).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, 27, 48, 3)
    import torch

    single, _ = model.predict_frames(torch.from_numpy(frames.copy()), quiet=True)
    probs = single.detach().cpu().numpy() if hasattr(single, "detach") else np.asarray(single)
    scenes = model.predictions_to_scenes(probs.reshape(-1))
    fps = float(probe(path, name=str(path)).fps)
    return [float(s[0]) / fps for s in scenes[1:]]


# ------------------------------------------------------------------------------------------------


def timed(fn: Callable[[Path], Any], items: list[Path]) -> tuple[list[Any], float]:
    t0 = time.perf_counter()
    out = [fn(p) for p in items]
    return out, len(items) / max(time.perf_counter() - t0, 1e-9)


def cropdetect_direct(path: Path) -> tuple[int, int, int, int]:
    """ffmpeg's cropdetect with its own defaults (limit 24, round 16, skip 2), last reported box."""
    import re

    from medvideocap.media.probe import probe

    info = probe(path, name=str(path))
    proc = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostats", "-i", str(path), "-vf", "cropdetect", "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    found = re.findall(r"crop=(\d+):(\d+):(\d+):(\d+)", proc.stderr)
    if not found:
        return 0, 0, 0, 0
    w, h, x, y = (int(v) for v in found[-1])
    return y, info.height - y - h, x, info.width - x - w


class Rows(list):  # type: ignore[type-arg]
    """The table's rows, each also printed the moment it is measured (a long run shows progress)."""

    def append(self, row: tuple[str, str, str, str, str, str]) -> None:
        super().append(row)
        print(" | ".join(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="Where to write the corpus (default: a temp dir)."
    )
    parser.add_argument(
        "--skip-transnet", action="store_true", help="Leave out the (slow on CPU) TransNetV2 rows."
    )
    parser.add_argument(
        "--easyocr", action="store_true", help="Add easyocr (offline models; minutes per frame on 2 CPUs)."
    )
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="curation-"))
    data = corpus(root)
    rows = Rows()

    # cuts -------------------------------------------------------------------------------------
    from medvideocap.build.stages import split

    paths = [p for p, _ in data["cuts"]]
    truths = [t for _, t in data["cuts"]]
    detectors: list[tuple[str, Callable[[Path], list[float]]]] = [
        ("ours: split pyscenedetect (default)", lambda p: split.detect_cuts(p, SplitStage())),
        (
            "ours: split histogram (old default)",
            lambda p: split.detect_cuts(p, SplitStage(detector="histogram")),
        ),
        ("PySceneDetect detect() direct", scenedetect_direct),
    ]
    late: list[tuple[str, Callable[[Path], list[float]]]] = []
    if not args.skip_transnet:  # slow on a CPU: measured last, so the other rows print first
        late.append(
            (
                "ours: split transnetv2",
                lambda p: split.detect_cuts(p, SplitStage(detector="transnetv2", device="cpu")),
            )
        )
        late.append(("TransNetV2 predict_frames direct", transnet_direct))

    def cut_rows(chosen: list[tuple[str, Callable[[Path], list[float]]]]) -> None:
        for label, fn in chosen:
            found, rate = timed(fn, paths)
            precision, recall, total, detected = score_cuts(found, truths)
            rows.append(
                (
                    "cuts",
                    label,
                    f"{precision:.2f}",
                    f"{recall:.2f}",
                    f"{detected} found / {total} true",
                    f"{rate:.2f}",
                )
            )

    cut_rows(detectors)

    # borders ----------------------------------------------------------------------------------
    from medvideocap.build.stages import border

    def ours(method: str) -> Callable[[Path], tuple[int, int, int, int]]:
        def bars(path: Path) -> tuple[int, int, int, int]:
            from medvideocap.media.ffmpeg import cropdetect

            cfg = BlackBorderStage(method=method)  # type: ignore[arg-type]
            if method == "cropdetect":
                return cropdetect(path, limit=cfg.luminance).bars
            import cv2

            from medvideocap.media.ffmpeg import iter_frames

            grey = (
                cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for _, im in iter_frames(path, fps=2.0, max_side=None)
            )
            return border.find_borders(grey, cfg)

        return bars

    def folded(path: Path) -> tuple[int, int, int, int]:
        """What a build finds: the bars folded over the split stage's decode (clips/s include it)."""
        from medvideocap.build.stages import split
        from medvideocap.media.ffmpeg import Crop, cropdetect

        cfg = BlackBorderStage()
        fold = border.BarScan(cfg)
        split.detect_transitions(path, SplitStage(detector="pyscenedetect", threshold=27.0), tap=fold)
        found = fold.summary(0.0, float("inf"))
        if found is None:  # no sampled frame (a clip under half a second): the stage asks cropdetect
            return cropdetect(path, limit=cfg.luminance).bars
        return Crop(**found).bars

    bpaths = [p for p, _ in data["borders"]]
    btruth = [t for _, t in data["borders"]]
    for label, fn in (
        ("ours: black_border cropdetect (default)", ours("cropdetect")),
        ("ours: same, folded over the split's decode (build)", folded),
        ("ours: black_border hough (paper)", ours("hough")),
        ("ffmpeg cropdetect direct (its defaults)", cropdetect_direct),
    ):
        found, rate = timed(fn, bpaths)
        tp = sum(
            1
            for f, t in zip(found, btruth, strict=True)
            if any(t) and all(abs(a - b) <= 2 for a, b in zip(f, t, strict=True))
        )
        positives = sum(1 for f in found if any(v > 2 for v in f))
        actual = sum(1 for t in btruth if any(t))
        exact = sum(1 for f, t in zip(found, btruth, strict=True) if f == t)
        rows.append(
            (
                "borders",
                label,
                f"{tp / max(positives, 1):.2f}",
                f"{tp / max(actual, 1):.2f}",
                f"{exact}/{len(found)} exact",
                f"{rate:.2f}",
            )
        )

    # text ---------------------------------------------------------------------------------------
    from medvideocap.build.stages import ocr

    tpaths = [p for p, _ in data["text"]]
    reject_truth = [w > 20 for _, w in data["text"]]

    def ocr_stage(cfg: OcrStage) -> Callable[[Path], tuple[bool, float]]:
        def decide(path: Path) -> tuple[bool, float]:
            result = ocr.run(
                Sample(input=path.name, path=str(path), key="t", clip=str(path)), cfg, Context(work=root)
            )
            return not isinstance(result, Sample), float(result.scores["text_words"])

        return decide

    def rapidocr_spaces(path: Path) -> tuple[bool, float]:
        from medvideocap.media.ffmpeg import sample_even

        cfg = OcrStage()
        counts = [sum(len(r.text.split()) for r in ocr.read(im, cfg)) for im in sample_even(path, 5).images]
        return max(counts) > 20, float(max(counts))

    text_rows: list[tuple[str, Callable[[Path], tuple[bool, float]]]] = [
        ("ours: ocr rapidocr (default)", ocr_stage(OcrStage())),
        ("rapidocr direct, words split on spaces", rapidocr_spaces),
    ]
    if args.easyocr:
        text_rows.append(
            ("ours: ocr easyocr (offline models)", ocr_stage(OcrStage(backend="easyocr", device="cpu")))
        )
    for label, fn in text_rows:
        found, rate = timed(fn, tpaths)
        tp = sum(1 for (rej, _), t in zip(found, reject_truth, strict=True) if rej and t)
        fp = sum(1 for (rej, _), t in zip(found, reject_truth, strict=True) if rej and not t)
        counts = ",".join(f"{w:.0f}" for _, w in found)
        rows.append(
            (
                "text >20 words",
                label,
                f"{tp / max(tp + fp, 1):.2f}",
                f"{tp / max(sum(reject_truth), 1):.2f}",
                f"words {counts}",
                f"{rate:.2f}",
            )
        )

    # quality ------------------------------------------------------------------------------------
    from medvideocap.build.stages import measures, technical
    from medvideocap.media.ffmpeg import sample_even

    cfg_t = TechnicalStage()
    for label, fn in (
        (
            "ours: technical nr-composite (default)",
            lambda p: technical.score_frames(sample_even(p, 5).images, cfg_t)[0],
        ),
        (
            "Laplacian variance (old measures)",
            lambda p: measures.sharpness(
                [np.asarray(im).mean(axis=2).astype(np.uint8) for im in sample_even(p, 5).images]
            ),
        ),
    ):
        t0 = time.perf_counter()
        below = pairs = 0
        shown = []
        for group in data["quality"]:
            scores = {k: fn(p) for k, p in group.items()}
            for k in fx.DEGRADATIONS:
                pairs += 1
                below += scores[k] < scores["source"]
            shown.append("/".join(f"{scores[k]:.3g}" for k in ("source", *fx.DEGRADATIONS)))
        rate = sum(len(g) for g in data["quality"]) / (time.perf_counter() - t0)
        rows.append(
            (
                "quality order",
                label,
                "-",
                f"{below / pairs:.2f}",
                "src/blur/noise/qp51 " + " ; ".join(shown),
                f"{rate:.2f}",
            )
        )

    cut_rows(late)

    widths = [
        max(len(r[i]) for r in [("stage", "detector", "precision", "recall", "detail", "clips/s"), *rows])
        for i in range(6)
    ]
    header = ("stage", "detector", "precision", "recall", "detail", "clips/s")
    print(f"labelled corpus in {root}")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
