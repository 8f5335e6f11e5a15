"""The builder's resume journal (``OUT.build/journal/{key}.json``): a damaged file after a crash is
redone with a warning naming it, never a traceback and never a lost clip."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from fixtures_build import tree_bytes
from videos import make_video

from medvideocap.build import BuildError, build
from medvideocap.build.workdir import journal_dir, journal_path, state_path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """A finished build of two generated clips, its cut clips kept; returns its folder and tree."""
    root = tmp_path_factory.mktemp("builder")
    raw = root / "raw"
    make_video(raw / "good.mp4", seconds=3, fps=8, size=(160, 120))
    make_video(raw / "other.mp4", seconds=3, fps=8, size=(160, 120), source="mandelbrot=size=160x120:rate=8")
    result = build(raw, root / "out", recipe="demo", workers=1, keep_work=True)
    assert result.kept == 2 and result.resumed == 0
    return root, tree_bytes(root / "out")


DAMAGE = {
    "torn": lambda data: data[: len(data) // 2],  # a rename that reached the disk before the data
    "empty": lambda data: b"",
    "not_utf8": lambda data: b"\xff\xfe" + data[2:],
    "wrong_shape": lambda data: b'{"input": "good.mp4", "outcomes": [{"stage": null}]}',
    "another_input": lambda data: data.replace(b'"input": "good.mp4"', b'"input": "other.mp4"'),
    "clip_outside": lambda data: re.sub(rb'"clip": "[^"]*"', b'"clip": "/etc/passwd"', data),  # never read
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_journal_file_redoes_its_input_with_a_warning_naming_it(
    finished: tuple[Path, dict[str, bytes]], damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    root, reference = finished
    work = root / "out.build"
    [path] = [p for p in journal_dir(work).glob("*.json") if json.loads(p.read_text())["input"] == "good.mp4"]
    original = path.read_bytes()
    path.write_bytes(DAMAGE[damage](original))

    with caplog.at_level(logging.WARNING, logger="medvideocap.build.builder"):
        again = build(root / "raw", root / "out", recipe="demo", workers=1, keep_work=True)

    warned = [r.getMessage() for r in caplog.records if "damaged journal file" in r.getMessage()]
    assert len(warned) == 1 and str(path) in warned[0], warned
    assert again.resumed == 1 and again.inputs == 2  # other.mp4 resumed, good.mp4 processed again
    assert again.kept == 2 and {o.id for o in again.outcomes if o.kept} == {"good-000", "other-000"}
    assert tree_bytes(root / "out") == reference  # the redone clip is the one already written
    assert _untimed(json.loads(path.read_bytes())) == _untimed(
        json.loads(original)
    )  # the file is whole again


def _untimed(entry: dict) -> dict:
    """A journal entry without its stage timings (they differ between two runs)."""
    return {**entry, "outcomes": [{**o, "timings": None} for o in entry["outcomes"]]}


def test_the_journal_is_named_by_the_work_dir_layout(finished: tuple[Path, dict[str, bytes]]) -> None:
    work = finished[0] / "out.build"
    assert journal_path(work, "good").is_file() and journal_path(work, "other").is_file()
    assert sorted(p.name for p in journal_dir(work).iterdir()) == ["good.json", "other.json"]


def test_an_unreadable_state_file_is_a_build_error_naming_it(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_video(raw / "good.mp4", seconds=3, fps=8, size=(160, 120))
    state_path(tmp_path / "out.build").parent.mkdir(parents=True)
    state_path(tmp_path / "out.build").write_text('{"recipe": "demo", "finger')
    with pytest.raises(BuildError, match=r"state\.json: unreadable build state .*delete"):
        build(raw, tmp_path / "out", recipe="demo", workers=1)


def test_a_replaced_input_is_built_again_and_a_deleted_ones_clips_are_dropped(tmp_path: Path) -> None:
    """A rerun once said "resuming: 3 of 3 inputs already processed" after an input was replaced, and
    kept a deleted input's clip. Inputs are journaled with their size and mtime_ns now: the output is
    what a fresh build of the current inputs writes, and the rerun says how many changed and went."""
    import io

    import polars as pl
    from rich.console import Console

    raw = tmp_path / "raw"
    make_video(raw / "good.mp4", seconds=3, fps=8, size=(160, 120))
    make_video(raw / "other.mp4", seconds=3, fps=8, size=(160, 120), source="mandelbrot=size=160x120:rate=8")
    make_video(raw / "third.mp4", seconds=3, fps=8, size=(160, 120), vf="negate")
    assert build(raw, tmp_path / "out", recipe="demo", workers=1).kept == 3

    make_video(raw / "other.mp4", seconds=4, fps=8, size=(160, 120), source="mandelbrot=size=160x120:rate=8")
    (raw / "third.mp4").unlink()
    console = Console(file=io.StringIO(), width=300)
    again = build(raw, tmp_path / "out", recipe="demo", workers=1, console=console)
    said = console.file.getvalue()  # type: ignore[attr-defined]
    assert "1 inputs changed (processed again) and 1 were deleted (1 of their clips dropped)" in said
    assert "resuming: 1 of 2 inputs" in said and "redoing" not in said  # good.mp4 is not cut again
    assert (again.inputs, again.resumed, again.changed, again.deleted, again.kept) == (2, 1, 1, 1, 2)
    rows = pl.concat(pl.read_parquet(p) for p in (tmp_path / "out" / "metadata").glob("*.parquet"))
    durations = dict(zip(rows["id"], rows["duration"], strict=True))
    assert sorted(durations) == ["good-000", "other-000"] and durations["other-000"] > 3.5

    fresh = build(raw, tmp_path / "fresh", recipe="demo", workers=1)
    assert fresh.kept == 2 and tree_bytes(tmp_path / "out") == tree_bytes(tmp_path / "fresh")
    journal = sorted(p.name for p in journal_dir(tmp_path / "out.build").iterdir())
    assert journal == ["good.json", "other.json"]  # the deleted input's entry is gone
