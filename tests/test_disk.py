"""A disk that refuses a write is one line naming the path, the bytes and what to do; never a skip."""

from __future__ import annotations

import errno
import pickle
import re
from pathlib import Path

import pytest

from medvideocap.disk import (
    ResourceError,
    errno_in_text,
    format_bytes,
    resource_error,
    stops_the_run,
    writing_to,
)


def test_each_refused_write_names_the_path_and_what_to_do(tmp_path: Path) -> None:
    target = tmp_path / "data" / "shard-00000.tar"
    full = ResourceError.at(errno.ENOSPC, target, needed=62_000)
    assert str(full).startswith(f"{target}: no space left on the device (62.0 kB needed, ")
    assert " free); free some space there, then run the same command again: it resumes" in str(full)
    quota = str(ResourceError.at(errno.EDQUOT, target, needed=812))
    assert quota.startswith(f"{target}: the disk quota is used up (812 bytes needed); free some space")
    read_only = str(ResourceError.at(errno.EROFS, target, needed=812))
    assert read_only == (
        f"{target}: the file system is read-only; write to a folder on a writable disk (or remount "
        "this one read-write), then run again"
    )
    denied = str(ResourceError.at(errno.EACCES, target))
    assert denied.startswith(f"{target}: permission denied; give this user write access")
    for message in (str(full), quota, read_only, denied):
        assert "\n" not in message and "Errno" not in message


def test_the_error_keeps_its_message_and_errno_across_a_process_boundary(tmp_path: Path) -> None:
    error = ResourceError.at(errno.ENOSPC, tmp_path / "x")
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is ResourceError and str(back) == str(error) and back.errno == errno.ENOSPC


def test_writing_to_converts_only_the_refusals_and_prefers_the_file_the_os_named(tmp_path: Path) -> None:
    with (
        pytest.raises(ResourceError, match=f"^{tmp_path / 'out'}: no space left"),
        writing_to(tmp_path / "out"),
    ):
        raise OSError(errno.ENOSPC, "No space left on device")  # write() names no file
    named = tmp_path / "out" / "meta" / "info.json"
    with pytest.raises(ResourceError, match=f"^{re.escape(str(named))}: the file"), writing_to(tmp_path):
        raise OSError(errno.EROFS, "Read-only file system", str(named))
    for other in (OSError(errno.EIO, "I/O error"), FileNotFoundError(2, "gone"), ValueError("bad")):
        with pytest.raises(type(other)) as raised, writing_to(tmp_path):
            raise other
        assert raised.value is other
    inner = ResourceError.at(errno.ENOSPC, named)
    with pytest.raises(ResourceError) as raised, writing_to(tmp_path):  # the precise writer's message wins
        raise inner
    assert raised.value is inner
    assert resource_error(ValueError("x"), tmp_path) is None


def test_only_the_machines_errnos_stop_a_run_that_skips_bad_clips() -> None:
    assert stops_the_run(OSError(errno.ENOSPC, "No space left on device"))
    assert stops_the_run(ResourceError.at(errno.EACCES, "out"))  # a write the folder refused
    assert not stops_the_run(PermissionError(errno.EACCES, "Permission denied"))  # an unreadable input
    assert not stops_the_run(OSError(errno.EIO, "I/O error")) and not stops_the_run(ValueError("x"))


def test_tool_output_is_read_for_the_errno_and_sizes_are_written_for_people() -> None:
    assert errno_in_text("Error writing trailer of x.mp4: No space left on device") == errno.ENOSPC
    assert errno_in_text("x.mp4: Read-only file system") == errno.EROFS
    assert errno_in_text("Invalid data found when processing input") is None
    assert [format_bytes(n) for n in (0, 999, 1000, 62_000, 3_400_000, 1_200_000_000, 5 * 10**12)] == [
        "0 bytes",
        "999 bytes",
        "1.0 kB",
        "62.0 kB",
        "3.4 MB",
        "1.2 GB",
        "5.0 TB",
    ]
