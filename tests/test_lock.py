"""One writer per output folder: a second run on a locked folder stops at once naming the holder; a
lock a killed run left behind is taken over with a warning; ranks of one job each hold their own."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fixtures_disk import tmpfs

from medvideocap.disk import ResourceError
from medvideocap.lock import LOCK_FILE, LockedError, lock_name, output_lock

HOLD = """
import sys
from medvideocap.lock import output_lock
with output_lock(sys.argv[1], verb=sys.argv[2]):
    print("locked", flush=True)
    sys.stdin.read()  # held until the test closes our stdin (or kills us)
"""


@contextmanager
def held(folder: Path, verb: str = "build") -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``folder``'s lock for the block (released when it ends)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), verb],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n", proc.stderr
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the holder leaves its block and releases the lock
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "medvideocap", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_a_second_run_on_a_locked_folder_exits_1_naming_the_holder(tmp_path: Path) -> None:
    src, out = tmp_path / "upstream", tmp_path / "out"
    src.mkdir()
    with held(out, "build") as holder:
        contents = (out / LOCK_FILE).read_text()
        assert json.loads(contents)["pid"] == holder.pid
        for args in (
            ["convert", str(src), "--out", str(out), "--no-progress"],
            ["recaption", str(src), "--out", str(out), "--backend", "openai", "--no-progress"],
        ):
            done = _cli(*args)
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
            line = done.stderr
            says = rf"Error: {re.escape(str(out))} is in use by `medvideocap build` \(pid {holder.pid} on "
            says += rf"{re.escape(socket.gethostname())}, since \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d[^)]*\), "
            says += rf"which holds {re.escape(str(out / LOCK_FILE))}; wait for it to finish or stop it"
            assert re.match(says, line) and line.count("\n") == 1, line
            assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing written, nothing taken
            assert (out / LOCK_FILE).read_text() == contents
    assert not out.exists()  # the holder made the folder for its lock and wrote nothing else


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    (out / "kept").mkdir(parents=True)
    with held(out, "convert") as holder:
        os.kill(holder.pid, signal.SIGKILL)  # the kernel drops its flock; the file still names it
        holder.wait()
    left = json.loads((out / LOCK_FILE).read_text())
    assert left["pid"] == holder.pid and left["verb"] == "convert"

    with caplog.at_level("WARNING", logger="medvideocap.lock"), output_lock(out, verb="build") as path:
        mine = json.loads(path.read_text())
        assert (mine["pid"], mine["host"], mine["verb"]) == (os.getpid(), socket.gethostname(), "build")
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(
        f"{path}: taking over the lock left by `medvideocap convert` (pid {holder.pid} "
    )
    assert "(no longer running): that run ended without releasing it" in warning
    assert sorted(p.name for p in out.iterdir()) == ["kept"]  # released: the lock file is gone


def test_each_rank_holds_its_own_lock_and_the_same_rank_twice_is_refused(tmp_path: Path) -> None:
    rank0, rank1 = lock_name("train", "rank0"), lock_name("train", "rank1")
    assert (rank0, lock_name()) == (".medvideocap-train-rank0.lock", LOCK_FILE)
    with (
        output_lock(tmp_path, verb="encode-latents", name=rank0),
        output_lock(tmp_path, verb="encode-latents", name=rank1),
        output_lock(tmp_path, verb="encode-latents", name=lock_name("validation", "rank0")),
    ):
        same_rank = rf"\(pid {os.getpid()} on .*{re.escape(rank0)}; wait"
        with (
            pytest.raises(LockedError, match=same_rank),
            output_lock(tmp_path, verb="encode-latents", name=rank0),
        ):
            pass  # pragma: no cover - never entered
        assert len(list(tmp_path.glob(".medvideocap*.lock"))) == 3
    assert not list(tmp_path.iterdir())


def test_a_read_only_folder_is_refused_when_the_lock_is_taken(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    with (
        tmpfs(disk, 64 * 1024, read_only=True),
        pytest.raises(ResourceError) as raised,
        output_lock(disk / "out", verb="build"),
    ):
        pass  # pragma: no cover - never entered
    assert str(raised.value).startswith(f"{disk / 'out'}: the file system is read-only; write to a folder")


def test_a_file_system_without_locks_warns_and_lets_the_run_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """NFS without a lock manager answers ENOLCK: the verb must stay usable there, and say what it lost."""
    import errno
    import fcntl
    from types import SimpleNamespace

    import medvideocap.lock as lock

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(
        lock, "fcntl", SimpleNamespace(flock=no_locks, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB)
    )
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="medvideocap.lock"), output_lock(out, verb="convert"):
        (out / "data").mkdir()
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{out}: this file system cannot lock files (No locks available): a second run")
    assert [p.name for p in out.iterdir()] == ["data"]


def test_an_object_store_output_is_locked_by_a_local_file_named_after_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing to flock in a bucket: the lock is a local file per (URL, name), with the same holder
    details, the same refusal naming the URL, and the kernel's release when the holder is SIGKILLed."""
    from medvideocap.lock import url_lock_path

    monkeypatch.setenv("MEDVIDEOCAP_LOCK_DIR", str(tmp_path / "locks"))
    url = "s3://bucket/latents"
    path = url_lock_path(url)
    assert path.parent == tmp_path / "locks" and path != url_lock_path(url + "-2")
    assert url_lock_path(url, lock_name("train", "rank0")) != url_lock_path(url, lock_name("train", "rank1"))
    with held(url, "encode-latents") as holder:  # type: ignore[arg-type]  # a URL, as a CLI passes it
        assert json.loads(path.read_text())["pid"] == holder.pid
        says = rf"{re.escape(url)} is in use by `medvideocap encode-latents` \(pid {holder.pid} on "
        with pytest.raises(LockedError, match=says), output_lock(url, verb="encode-latents"):
            pass  # pragma: no cover - never entered
        with output_lock(url + "-other", verb="encode-latents"):  # another prefix is another lock
            pass
        with output_lock(url, verb="encode-latents", name=lock_name("train", "rank1")):  # another rank
            pass
        os.kill(holder.pid, signal.SIGKILL)  # the kernel drops the flock: the resume may go on
        holder.wait()
    with output_lock(url, verb="encode-latents") as taken:
        assert taken == path and json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists() and (tmp_path / "locks").is_dir()
