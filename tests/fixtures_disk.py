"""Real small and read-only file systems for the disk-full tests: a tmpfs mounted on a folder.

Mounting needs root (CI runs the suite as root on Debian); elsewhere, or in a container that may not
mount, the test is skipped with the reason. The in-process tests that inject the errno at the lowest
write call cover the same paths without root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest


def _mount(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@contextmanager
def tmpfs(folder: Path, size: int, *, read_only: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` bytes (read-only with ``read_only``) on ``folder`` for the block."""
    if os.geteuid() != 0:
        pytest.skip(
            "mounting a small tmpfs needs root (CI runs as root); the errno-injection tests cover this"
        )
    if shutil.which("mount") is None:
        pytest.skip("no mount command here; the errno-injection tests cover this")
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = _mount(["-t", "tmpfs", "-o", options, "tmpfs", str(folder)])
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip()}); the errno-injection tests cover this"
        )
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def resize(folder: Path, size: int) -> None:
    """Give the tmpfs mounted on ``folder`` ``size`` bytes (what freeing space looks like to a rerun)."""
    done = _mount(["-o", f"remount,size={size}", str(folder)])
    assert done.returncode == 0, done.stderr


def half_written(root: Path) -> list[str]:
    """Files under ``root`` a failed write must not leave: an atomic write's temporary (``.*.tmp-*``,
    removed on failure), or a visible file that does not read back whole (a shard, parquet, JSON or
    JSON-lines file cut short). Hidden partial shards are allowed: the writer discards them on resume."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if ".tmp-" in path.name:
            found.append(rel)
            continue
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        try:
            if path.suffix == ".tar":
                with tarfile.open(path) as tar:
                    for member in tar:
                        tar.extractfile(member).read()  # type: ignore[union-attr]
            elif path.suffix == ".parquet":
                pq.read_table(path)
            elif path.suffix == ".json":
                json.loads(path.read_bytes())
            elif path.suffix == ".jsonl":
                data = path.read_bytes()
                assert not data or data.endswith(b"\n")
                for line in data.splitlines():
                    json.loads(line)
        except Exception:  # noqa: BLE001 - any way of not reading back counts
            found.append(rel)
    return found
