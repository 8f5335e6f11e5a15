"""Progress a log can use (medvideocap/progress.py): rates in units one can compare, an ETA, and a line
at least every interval when stderr is no terminal, also while nothing finishes."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest

from medvideocap.progress import Progress, duration, eta, rate


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_slow_rates_read_as_seconds_per_unit_and_fast_ones_as_units_per_second() -> None:
    assert rate(1 / 389, "clip") == "389 s/clip"  # the real-size encode that used to log `0.00 clips/s`
    assert rate(3.1, "clip") == "3.1 clips/s" and rate(0.5, "caption") == "2 s/caption"
    assert rate(0.0, "clip") == "- s/clip" and rate(2, "batch", "batches") == "2 batches/s"
    assert duration(50_000 * 1.52) == "21h06m" and duration(12.7) == "12s"


def test_the_eta_is_the_remaining_work_at_the_rate_so_far() -> None:
    assert eta(0, 10, 5.0) == "ETA -"  # nothing done yet: no rate to extrapolate
    assert eta(2, 10, 60.0) == "ETA 4m00s"  # 30 s per unit, 8 left
    assert eta(10, 10, 60.0) == "ETA 0s"


def test_without_a_terminal_a_line_is_printed_every_interval_even_when_nothing_finishes() -> None:
    clock, out = FakeClock(), io.StringIO()
    with Progress(stream=out, interval=30, clock=clock, timer=False) as progress:
        assert not progress.live  # a StringIO is no terminal
        task = progress.task("encode-latents train rank 0/1", 3, unit="clip", failed="dropped")
        assert out.getvalue().splitlines() == [
            "encode-latents train rank 0/1: 0/3 clips, - s/clip, 0 dropped, 0s elapsed, ETA -"
        ]
        clock.now += 29
        progress.tick()
        assert len(out.getvalue().splitlines()) == 1  # not yet due
        clock.now += 1  # 30 s and still no clip done: the heartbeat says so
        progress.tick()
        assert out.getvalue().splitlines()[-1] == (
            "encode-latents train rank 0/1: 0/3 clips, - s/clip, 0 dropped, 30s elapsed, ETA -"
        )
        clock.now += 360
        progress.advance(task, done=1)
        clock.now += 30
        progress.tick()
        assert out.getvalue().splitlines()[-1] == (
            "encode-latents train rank 0/1: 1/3 clips, 420 s/clip, 0 dropped, 7m00s elapsed, ETA 14m00s"
        )
        clock.now += 420
        progress.advance(task, done=2, failed=1)
    last = out.getvalue().splitlines()[-1]
    assert last == "encode-latents train rank 0/1: 3/3 clips, 280 s/clip, 1 dropped, 14m00s elapsed, ETA 0s"


def test_the_heartbeat_thread_prints_while_the_caller_is_blocked() -> None:
    """A clip that never finishes while we wait: the timer thread alone must produce the line."""
    out = io.StringIO()
    seen = threading.Event()

    class Watched(io.StringIO):
        def write(self, text: str) -> int:
            n = out.write(text)
            if "elapsed" in text and out.getvalue().count("\n") >= 2:
                seen.set()
            return n

    progress = Progress(stream=Watched(), interval=0.05)
    with progress:
        progress.task("recaption", 1, unit="caption")
        assert seen.wait(timeout=60), out.getvalue()  # generous bound: a line comes every 0.05 s
    assert out.getvalue().count("recaption: 0/1 captions") >= 2


def test_a_terminal_gets_rich_bar_with_the_same_rate_wording() -> None:
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=150)
    clock = FakeClock()
    with Progress(console=console, clock=clock) as progress:
        assert progress.live
        task = progress.task("recaption", 4, unit="caption")
        clock.now += 10
        progress.advance(task, done=2, failed=1)
        time.sleep(0.1)
    text = buf.getvalue()
    assert "2/4" in text and "5 s/caption" in text and "1 failed" in text, text


def test_recaption_logs_its_progress_in_captions_with_the_failures_and_an_eta(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import random

    from fixtures_caption import FakeChatServer
    from fixtures_upstream import make_upstream_release

    from medvideocap.caption import make_captioner
    from medvideocap.caption.recaption import recaption

    upstream = make_upstream_release(tmp_path / "release", n_clips=3)
    server = FakeChatServer()
    with server.running():
        captioner = make_captioner(
            "openai",
            model="served-vlm",
            endpoint=server.url,
            concurrency=1,
            sleep=lambda s: None,
            rng=random.Random(0),
        )
        recaption(upstream, tmp_path / "run", backend="openai", captioner=captioner, progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("recaption: ")]
    assert lines[0] == "recaption: 0/3 captions, - s/caption, 0 failed, 0s elapsed, ETA -", lines
    assert lines[-1].startswith("recaption: 3/3 captions, "), lines
    assert ", 0 failed, " in lines[-1] and lines[-1].endswith("ETA 0s") and "0.00" not in lines[-1]
