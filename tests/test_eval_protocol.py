"""`eval --protocol medgen-paper`: the paper's dimensions, its published table beside ours, every
difference that keeps the totals from being comparable listed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from medvideocap.eval.metrics import build_metrics  # noqa: E402
from medvideocap.eval.metrics.imaging_quality_musiq import MUSIQ_SPAQ  # noqa: E402
from medvideocap.eval.prompts import load_prompts  # noqa: E402
from medvideocap.eval.protocol import MEDGEN_PAPER, get_protocol  # noqa: E402
from medvideocap.eval.runner import run_eval  # noqa: E402
from medvideocap.eval.tiny import (  # noqa: E402
    save_tiny_clip,
    save_tiny_dino,
    save_tiny_musiq,
    save_tiny_videoscore,
)
from medvideocap.generate import write_mp4  # noqa: E402


def test_a_run_at_the_papers_settings_on_its_prompts_differs_only_by_the_stand_in_model() -> None:
    run = {
        "prompts": "medgen-paper: eval_prompt_200.txt (sha256 f9c4...); the MedGen paper's prompts (...)",
        "generation": {"frames": 81, "height": 480, "width": 832, "steps": 50},
    }
    assert MEDGEN_PAPER.differences(run) == [
        "the paper does not publish how its total combines the VBench dimensions and VideoScore; ours is "
        "the unweighted mean of the dimensions above, times 100",
        "motion_smoothness: scored by our `rife_interpolation_smoothness` stand-in, not VBench's AMT-S frame "
        "interpolator",
    ]
    default = {"models": {"model": {"id": MUSIQ_SPAQ, "revision": "unknown"}}}
    assert MEDGEN_PAPER.differences(
        {**run, "metrics": {"imaging_quality": default}}
    ) == MEDGEN_PAPER.differences(run)
    koniq = {"models": {"model": {"id": "koniq.pth", "revision": "local:00"}}}
    assert (
        f"imaging_quality: `imaging_quality` loaded koniq.pth, not {MUSIQ_SPAQ} (VBench's MUSIQ (SPAQ weights)); "
        "comparable only if it holds the same weights"
    ) in MEDGEN_PAPER.differences({**run, "metrics": {"imaging_quality": koniq}})
    other = {"prompts": "mine.txt: mine.txt (sha256 00)", "generation": {**run["generation"], "height": 240}}
    found = MEDGEN_PAPER.differences(other)
    assert "prompt set is mine.txt: mine.txt (sha256 00), not the paper's (medgen-paper)" in found
    assert "height 240, the paper's videos 480" in found
    with pytest.raises(ValueError, match="unknown; known: medgen-paper"):
        get_protocol("vbench-2")


def test_the_report_puts_the_published_table_beside_ours_and_lists_what_differs(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a surgeon ties a knot\na doctor listens to the lungs\n")
    y, x = np.mgrid[0:32, 0:32].astype(np.float32)
    for i in (1, 2):
        video = np.stack(
            [
                np.stack([128 + 90 * np.sin((x + t) / 6), 128 + 90 * np.cos(y / 5), x * 4], -1)
                for t in range(5)
            ]
        )
        write_mp4(video.astype(np.uint8), tmp_path / "videos" / "mine" / f"p{i:04d}.mp4")
    dino, clip = str(save_tiny_dino(tmp_path / "dino")), str(save_tiny_clip(tmp_path / "clip"))
    models = {
        "subject_consistency": {"": dino},
        "background_consistency": {"": clip},
        "imaging_quality": {"": str(save_tiny_musiq(tmp_path / "musiq.pth"))},
        "videoscore": {"": str(save_tiny_videoscore(tmp_path / "videoscore"))},
    }
    out = tmp_path / "run"
    run_eval(
        out,
        prompts=load_prompts(prompts),
        metrics=build_metrics(MEDGEN_PAPER.metrics, models, device="cpu"),
        videos=tmp_path / "videos" / "mine",
        prompts_name="prompts.txt",
        protocol="medgen-paper",
    )
    report = (out / "report.md").read_text()
    assert "## Against the published table (`--protocol medgen-paper`)" in report
    for name, total in MEDGEN_PAPER.published.items():
        assert f"| {name} | {total:.2f} | published |" in report
    ours = json.loads((out / "summary.json").read_text())["checkpoints"]["mine"]["total"]
    assert f"| mine | {ours} | this run |" in report
    assert "Not comparable as it stands" in report and "not the paper's (medgen-paper)" in report
    assert "videos scored from files" in report and "AMT-S" in report
    assert "- imaging_quality: `imaging_quality` (the same model as VBench's MUSIQ (SPAQ weights))" in report
    assert "imaging_quality: `imaging_quality` loaded " in report  # the tiny test weights, not SPAQ's
    assert json.loads((out / "eval.json").read_text())["protocol"] == "medgen-paper"


def test_the_cli_protocol_fixes_prompts_and_metrics_and_refuses_them_given() -> None:
    from click.testing import CliRunner

    from medvideocap.cli import main

    res = CliRunner().invoke(
        main,
        [
            "eval",
            "--videos",
            ".",
            "--out",
            "o",
            "--protocol",
            "medgen-paper",
            "--metrics",
            "temporal_flickering",
        ],
    )
    assert res.exit_code == 2 and "--protocol medgen-paper fixes --prompts and --metrics" in res.output
    res = CliRunner().invoke(main, ["eval", "--videos", ".", "--out", "o", "--protocol", "vbench-2"])
    assert res.exit_code == 2 and "unknown; known: medgen-paper" in res.output
