"""Progress that a person at a terminal and a log file can both use: rates in units one can compare,
an ETA, and a line at least every :data:`HEARTBEAT_S` seconds when nobody is watching a bar.

Why this exists: a rich bar redraws in place, which is right on a terminal and useless in a batch log,
where it printed nothing for 13 minutes and then ``2/2 0.00 clips/s`` (a 389 s/clip run, rounded to
zero). So every long job reports through :class:`Progress`: on a terminal it draws rich's bar; anywhere
else (a file, a pipe, a CI log) it prints one plain line per task at start, every ``interval`` seconds
from a timer thread (so a clip that takes ten minutes to encode still shows the job is alive and how
long it has been at it), and at the end. Rates read as ``389 s/clip`` below one per second and
``3.1 clips/s`` above, never ``0.00 clips/s``; the ETA is remaining work at the rate so far.

The formatting (:func:`rate`, :func:`duration`, :func:`eta`) is the one copy: the trainer's log line
(:mod:`medvideocap.train.throughput`) uses it too. The clock and the interval are arguments, so a test
drives the heartbeat with a fake clock instead of waiting.

A leaf module (``rich`` only, imported when a bar is drawn).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

HEARTBEAT_S = 30.0
"""Longest gap between two progress lines when stderr is not a terminal."""


def duration(seconds: float) -> str:
    """``3d04h``, ``2h05m``, ``4m10s``, ``12s``: an ETA one can read at a glance."""
    s = max(int(seconds), 0)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{s:02d}s" if minutes else f"{s}s"


def rate(per_s: float, unit: str = "step", units: str | None = None) -> str:
    """``1.52 s/step`` when slower than one ``unit`` a second (most real runs), else ``3.1 steps/s``;
    ``- s/step`` before anything is done. ``units`` is the plural (default ``unit + "s"``)."""
    if per_s <= 0:
        return f"- s/{unit}"
    return f"{1 / per_s:.3g} s/{unit}" if per_s < 1 else f"{per_s:.3g} {units or unit + 's'}/s"


def eta(done: int, total: int, elapsed: float) -> str:
    """Time left for ``total - done`` units at the rate so far: ``ETA 2h05m``, or ``ETA -`` before the
    first unit is done."""
    if total <= done:
        return "ETA 0s"
    if done <= 0 or elapsed <= 0:
        return "ETA -"
    return f"ETA {duration(elapsed / done * (total - done))}"


@dataclass
class Task:
    """One counted job inside a :class:`Progress`: ``done`` of ``total`` units (``failed`` among them)."""

    label: str
    total: int
    unit: str
    units: str
    failed_label: str
    started: float
    clock: Callable[[], float]
    done: int = 0
    failed: int = 0
    finished: bool = False
    note: str = ""  # appended to the line as it stands (e.g. "4 clips kept")
    _id: Any = field(default=None, repr=False)

    def per_s(self) -> float:
        elapsed = self.clock() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def rate(self) -> str:
        return rate(self.per_s(), self.unit, self.units)

    def line(self) -> str:
        """``encode-latents train rank 0/1: 3/10 clips, 389 s/clip, 1 dropped, 19m27s elapsed, ETA 45m23s``."""
        elapsed = self.clock() - self.started
        parts = [f"{self.done}/{self.total} {self.units}", self.rate()]
        if self.failed_label:
            parts.append(f"{self.failed} {self.failed_label}")
        if self.note:
            parts.append(self.note)
        parts += [f"{duration(elapsed)} elapsed", eta(self.done, self.total, elapsed)]
        return f"{self.label}: " + ", ".join(parts)


class Progress:
    """The progress of one run's tasks, drawn as a rich bar on a terminal and printed as lines elsewhere.

    Use as a context manager; :meth:`task` adds a counted job, :meth:`Task`-wise :meth:`advance` counts
    units. ``live`` forces the mode (True: the bar, False: lines); by default the bar is drawn when
    ``stream`` (default stderr) is a terminal. In line mode a daemon thread calls :meth:`tick` every
    ``interval`` seconds, which prints each unfinished task's line when ``interval`` has passed on
    ``clock`` since the last one; a test calls :meth:`tick` itself with a fake clock."""

    def __init__(
        self,
        *,
        stream: IO[str] | None = None,
        console: Any = None,
        live: bool | None = None,
        interval: float = HEARTBEAT_S,
        clock: Callable[[], float] = time.monotonic,
        timer: bool = True,
    ) -> None:
        self.stream = stream if stream is not None else (console.file if console is not None else sys.stderr)
        self.interval = interval
        self.clock = clock
        self.tasks: list[Task] = []
        self._lock = threading.Lock()
        self._last_line = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._timer = timer
        terminal = console.is_terminal if console is not None else _isatty(self.stream)
        self.live = terminal if live is None else live
        self._bar: Any = _rich_bar(console, self.stream) if self.live else None

    # -- tasks --------------------------------------------------------------------------------------
    def task(
        self, label: str, total: int, *, unit: str = "clip", units: str | None = None, failed: str = "failed"
    ) -> Task:
        """A new task of ``total`` ``unit``\\ s; ``failed`` names its failures in the line (``""``: none)."""
        task = Task(label, total, unit, units or unit + "s", failed, self.clock(), self.clock)
        with self._lock:
            self.tasks.append(task)
            if self._bar is not None:
                task._id = self._bar.add_task(label, total=total, rate=task.rate(), failed=self._failed(task))
            else:
                self._print(task.line())
        return task

    def advance(self, task: Task, *, done: int = 0, failed: int = 0) -> None:
        """``done`` more units finished, ``failed`` of them failed (counted in ``done`` too)."""
        with self._lock:
            task.done += done
            task.failed += failed
            if self._bar is not None:
                self._bar.update(task._id, completed=task.done, rate=task.rate(), failed=self._failed(task))

    def finish(self, task: Task) -> None:
        """The task ends (its last line is printed in line mode)."""
        with self._lock:
            if task.finished:
                return
            task.finished = True
            if self._bar is None:
                self._print(task.line())

    @staticmethod
    def _failed(task: Task) -> str:
        return f"{task.failed} {task.failed_label}" if task.failed_label else ""

    # -- lines --------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Print every unfinished task's line if ``interval`` has passed since the last lines."""
        with self._lock:
            if self._bar is not None or self.clock() - self._last_line < self.interval:
                return
            for task in self.tasks:
                if not task.finished:
                    self._print(task.line())
            self._last_line = self.clock()

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_line = self.clock()

    def _beat(self) -> None:
        # Wake often enough that a line is never more than a fraction of the interval late.
        step = max(0.01, min(1.0, self.interval / 4))
        while not self._stop.wait(step):
            self.tick()

    # -- lifetime -----------------------------------------------------------------------------------
    def start(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        elif self._timer and self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="progress-heartbeat", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for task in self.tasks:
            self.finish(task)
        if self._bar is not None:
            self._bar.stop()

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def _rich_bar(console: Any, stream: IO[str]) -> Any:
    """rich's bar with our rate and failure columns, and its own ETA."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    return RichProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("[red]{task.fields[failed]}"),
        TimeRemainingColumn(),
        console=console or Console(file=stream),
        transient=False,
    )


__all__ = ["HEARTBEAT_S", "Progress", "Task", "duration", "eta", "rate"]
