"""`medvideocap eval` end to end with tiny Wan pipelines: generation, scoring, outputs, resume after SIGKILL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("diffusers")

from collections.abc import Iterator  # noqa: E402

from click.testing import CliRunner, Result  # noqa: E402

from medvideocap.cli import main  # noqa: E402
from medvideocap.eval.metrics import build_metrics  # noqa: E402
from medvideocap.eval.prompts import PromptError, load_prompts  # noqa: E402
from medvideocap.eval.runner import EvalError, checkpoint_labels, read_video, run_eval  # noqa: E402
from medvideocap.eval.tiny import save_tiny_dino  # noqa: E402
from medvideocap.tiny import save_tiny_pipeline  # noqa: E402

METRICS = "subject_consistency,temporal_flickering,flow_interpolation_smoothness"
PROMPTS = [
    {"id": "t1", "category": "medical teaching", "prompt": "a surgeon ties a knot"},
    {"id": "c1", "category": "clinical practice", "prompt": "a doctor listens to the lungs"},
]
OUTPUTS = ("scores.parquet", "summary.json", "report.md", "videos.json", "eval.json")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-run")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return {
        "root": root,
        "a": save_tiny_pipeline(root / "run-a", seed=0),
        "b": save_tiny_pipeline(root / "run-b", seed=1),
        "dino": save_tiny_dino(root / "dino"),
        "prompts": prompts,
    }


def _args(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--checkpoint",
        str(setup["a"]),
        "--checkpoint",
        str(setup["b"]),
        "--out",
        str(out),
        "--prompts",
        str(setup["prompts"]),
        "--seeds",
        "0,1",
        "--frames",
        "5",
        "--height",
        "32",
        "--width",
        "32",
        "--steps",
        "2",
        "--metrics",
        METRICS,
        "--metric-model",
        f"subject_consistency={setup['dino']}",
        "--device",
        "cpu",
        *extra,
    ]


def _env() -> dict[str, str]:
    # One thread: float results then do not depend on how busy the machine is, and runs compare bytewise.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(setup: dict[str, Path], out: Path) -> Result:
    """The CLI in this process, on one thread like the subprocess (so results compare bytewise)."""
    with _one_thread():
        return CliRunner().invoke(main, _args(setup, out), env=_env())


def _tree(out: Path) -> dict[str, bytes]:
    files = [out / name for name in OUTPUTS] + sorted((out / "videos").rglob("*.mp4"))
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def finished(setup: dict[str, Path]) -> Path:
    """An uninterrupted run: 2 checkpoints x 2 prompts x 2 seeds, three metrics."""
    out = setup["root"] / "clean"
    res = _run(setup, out)
    assert res.exit_code == 0, res.output[-3000:]
    assert "8 videos (8 generated, 24 scores new)" in res.output
    return out


def test_a_run_killed_midway_and_rerun_equals_an_uninterrupted_run(
    setup: dict[str, Path], finished: Path
) -> None:
    out = setup["root"] / "killed"
    journal = out / "journal.jsonl"
    cmd = [sys.executable, "-m", "medvideocap", *_args(setup, out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = journal.read_bytes().count(b"\n")
    assert done_before < 8 + 24 and not (out / "scores.parquet").exists()

    rerun = _run(setup, out)
    assert rerun.exit_code == 0, rerun.output[-3000:]
    generated = int(rerun.output.split(" videos (")[1].split(" generated")[0])
    assert 0 < generated < 8  # only what the journal lacked
    assert _tree(out).keys() == _tree(finished).keys()
    for name, data in _tree(finished).items():
        assert _tree(out)[name] == data, name
    assert not list(out.rglob(".*.tmp-*"))


def test_a_finished_run_reruns_without_touching_anything(setup: dict[str, Path], finished: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in (finished / "videos").rglob("*.mp4")}
    outputs = _tree(finished)
    res = _run(setup, finished)
    assert res.exit_code == 0, res.output
    assert "(0 generated, 0 scores new)" in res.output
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert _tree(finished) == outputs


def test_outputs_have_the_scores_table_summary_report_plots_and_contact_sheet(finished: Path) -> None:
    scores = pl.read_parquet(finished / "scores.parquet")
    assert scores.columns == ["checkpoint", "prompt_id", "prompt", "category", "seed", "metric", "value"]
    assert scores.height == 2 * 2 * 2 * 3
    assert set(scores["checkpoint"]) == {"run-a", "run-b"}
    assert scores["value"].is_between(0.0, 1.0).all()
    summary = json.loads((finished / "summary.json").read_text())
    a = summary["checkpoints"]["run-a"]
    assert set(a["categories"]) == {"medical teaching", "clinical practice"}
    mean = scores.filter(pl.col("checkpoint") == "run-a", pl.col("metric") == "temporal_flickering")[
        "value"
    ].mean()
    assert a["means"]["temporal_flickering"] == pytest.approx(mean, abs=1e-6)
    assert a["total"] == pytest.approx(100 * sum(a["means"].values()) / 3, abs=0.01)
    info = summary["metrics"]["subject_consistency"]
    assert info["models"]["model"]["revision"].startswith("local:") and "DINO" in info["definition"]
    report = (finished / "report.md").read_text()
    assert (
        "## Per checkpoint" in report
        and "## run-b per category" in report
        and "| clinical practice |" in report
    )
    assert "generation run-a (UMT5, 512 tokens): 0" in report  # every truncation is counted
    for metric in METRICS.split(","):
        png = finished / "plots" / f"{metric}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    sheet = Image.open(finished / "contact_sheet.png")
    assert sheet.size == (5 * 32, 2 * 2 * 32)  # 2 prompts x 2 checkpoints rows, 5 frames of 32 px


def test_scoring_existing_videos_gives_the_scores_of_the_run_that_made_them(
    setup: dict[str, Path], finished: Path, tmp_path: Path
) -> None:
    (metric,) = build_metrics(["temporal_flickering"], device="cpu")
    summary = run_eval(
        tmp_path / "rescored",
        prompts=load_prompts(setup["prompts"]),
        metrics=[metric],
        videos=finished / "videos",
    )
    assert summary.videos == 8 and summary.generated == 0
    mine = pl.read_parquet(tmp_path / "rescored" / "scores.parquet")
    theirs = pl.read_parquet(finished / "scores.parquet").filter(pl.col("metric") == "temporal_flickering")
    assert mine.equals(theirs)
    assert read_video(finished / "videos" / "run-a" / "t1-s0.mp4").shape == (5, 32, 32, 3)


def test_changed_generation_settings_refuse_to_mix_into_a_finished_folder(
    setup: dict[str, Path], finished: Path
) -> None:
    args = _args(setup, finished)
    args[args.index("--frames") + 1] = "9"
    res = CliRunner().invoke(main, args, env=_env())
    assert res.exit_code == 1 and "use a new --out" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, [*_args(setup, finished), "--dtype", "bfloat16"], env=_env())
    assert res.exit_code == 1 and "'dtype': 'float32'" in res.output and "use a new --out" in res.output


def test_other_metric_weights_refuse_to_mix_into_a_finished_folder(
    setup: dict[str, Path], finished: Path
) -> None:
    other = save_tiny_dino(setup["root"] / "dino-other", seed=1)  # same config and sizes, other weights
    args = _args(setup, finished)
    args[args.index(f"subject_consistency={setup['dino']}")] = f"subject_consistency={other}"
    res = CliRunner().invoke(main, args, env=_env())
    assert (
        res.exit_code == 1
        and "metric 'subject_consistency' was" in res.output
        and "mix two models" in res.output
    )


def test_a_metric_model_that_cannot_load_says_how_to_point_it_elsewhere(
    finished: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    args = ["eval", "--videos", str(finished / "videos"), "--out", str(tmp_path / "o"), "--prompts"]
    args += [str(finished.parent / "prompts.jsonl"), "--metrics", "subject_consistency", "--device", "cpu"]
    res = CliRunner().invoke(main, [*args, "--metric-model", f"subject_consistency={tmp_path / 'empty'}"])
    assert res.exit_code == 1 and "--metric-model subject_consistency=PATH" in res.output
    assert "Traceback" not in res.output


def test_bad_inputs_fail_with_a_message_naming_the_file(setup: dict[str, Path], tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "not a checkpoint" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"id": 3\n')
    with pytest.raises(PromptError, match=r"bad.jsonl:2: not a JSON line"):
        load_prompts(bad)
    with pytest.raises(PromptError, match="shipped: medgen-200"):
        load_prompts("no-such-set")
    (tmp_path / "vids").mkdir()
    (tmp_path / "vids" / "zz-s0.mp4").write_bytes(b"")
    with pytest.raises(EvalError, match="no prompt with id 'zz'"):
        run_eval(
            tmp_path / "o2", prompts=load_prompts(setup["prompts"]), metrics=[], videos=tmp_path / "vids"
        )
    with pytest.raises(EvalError, match="two checkpoints are labelled"):
        checkpoint_labels(["x=a", "x=b"])
    assert checkpoint_labels(["r1/final", "r2/final", "mine=r3"]) == {
        "r1-final": Path("r1/final"),
        "r2-final": Path("r2/final"),
        "mine": Path("r3"),
    }


def test_the_shipped_prompt_set_has_200_prompts_in_the_datasets_category_mix() -> None:
    prompts = load_prompts()
    assert len(prompts) == 200 and len({p.prompt for p in prompts}) == 200
    share = pl.Series([p.category for p in prompts]).value_counts(normalize=True)
    shares = dict(share.iter_rows())
    expected = {
        "medical teaching": 0.5593,
        "clinical practice": 0.2612,
        "popular science": 0.0941,
        "medical animation": 0.0615,
        "medical imaging": 0.0239,
    }
    assert shares.keys() == expected.keys()
    for cat, want in expected.items():
        assert shares[cat] == pytest.approx(want, abs=0.01), cat


def test_a_text_prompt_file_has_one_prompt_a_line(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("a heart beating\n\n  an X-ray of a hand  \n")
    prompts = load_prompts(path)
    assert [(p.id, p.prompt, p.category) for p in prompts] == [
        ("p0001", "a heart beating", "uncategorised"),
        ("p0003", "an X-ray of a hand", "uncategorised"),
    ]
