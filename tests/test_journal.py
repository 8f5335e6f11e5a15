"""medvideocap.journal: one policy for every JSONL resume journal, on the journals that use it.

A torn last line (what a kill mid-append leaves) is repaired and redone on resume; a bad line in the
middle (what only an edit or damage leaves) is an error naming the file and the line."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from fixtures_loader import clip_bytes, clip_record

from medvideocap.caption.journal import Journal
from medvideocap.dataset.writer import DatasetWriter
from medvideocap.disk import ResourceError
from medvideocap.journal import JournalAppender, JournalError, read_journal

REJECTS = Path("meta/progress/rejects.jsonl")


def _has_id(entry: object) -> str | None:
    return None if isinstance(entry, dict) and "id" in entry else "expected an object with an 'id'"


def test_a_torn_last_line_is_cut_off_so_the_next_append_starts_clean(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"id": "a"}\n\n{"id": "b", "x": [1, 2')
    found = read_journal(path, check=_has_id)
    assert found.entries == [{"id": "a"}] and found.torn == 1
    assert path.read_bytes() == b'{"id": "a"}\n\n'
    with JournalAppender(path) as out:
        out.append({"id": "b", "x": [1, 2]})
    assert read_journal(path).entries == [{"id": "a"}, {"id": "b", "x": [1, 2]}]


def test_a_whole_last_entry_that_lost_only_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}')
    found = read_journal(path, check=_has_id)
    assert found.entries == [{"id": "a"}, {"id": "b"}] and found.torn == 0
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'


def test_repair_false_reads_the_same_and_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id"')
    assert read_journal(path, repair=False).entries == [{"id": "a"}]
    assert path.read_bytes() == b'{"id": "a"}\n{"id"'


@pytest.mark.parametrize(
    ("middle", "reason"), [(b"not json", "not a JSON line"), (b"[1, 2]", "expected an object with an 'id'")]
)
def test_a_bad_line_in_the_middle_is_an_error_naming_file_and_line(
    tmp_path: Path, middle: bytes, reason: str
) -> None:
    path = tmp_path / "j.jsonl"
    data = b'{"id": "a"}\n\n' + middle + b'\n{"id": "c"}\n'
    path.write_bytes(data)
    with pytest.raises(JournalError, match=rf"j\.jsonl:3: {reason}"):
        read_journal(path, check=_has_id)
    assert path.read_bytes() == data  # nothing repaired on an error: the user fixes the line


def test_a_missing_journal_reads_as_empty(tmp_path: Path) -> None:
    found = read_journal(tmp_path / "none.jsonl")
    assert found.entries == [] and found.torn == 0


def test_durable_appends_are_on_disk_before_append_returns(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "j.jsonl"
    out = JournalAppender(path)
    out.append({"id": "é", "n": 1})
    assert path.read_bytes() == '{"id": "é", "n": 1}\n'.encode()
    out.close()


def test_an_append_the_disk_refuses_is_cut_back_off_and_names_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half the line reaches the file, then the disk is full: the file is left as it was, so the
    journal holds no half line even before a rerun repairs it, and the next append starts clean."""
    path = tmp_path / "j.jsonl"
    out = JournalAppender(path)
    out.append({"id": "a"})
    real_write = os.write

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", half_then_full)
        with pytest.raises(ResourceError, match=r"j\.jsonl: no space left on the device \(\d+ bytes needed"):
            out.append({"id": "b", "text": "x" * 100})
    assert path.read_bytes() == b'{"id": "a"}\n'
    out.append({"id": "c"})
    out.close()
    assert read_journal(path, repair=False).entries == [{"id": "a"}, {"id": "c"}]


# --- the journals that use it: the caption run journal (recaption, eval), the writer's rejects -------


def test_caption_journal_entry_without_an_id_in_the_middle_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"no_id": 1}\n{"id": "c"}\n')
    with pytest.raises(JournalError, match=r"journal\.jsonl:2: journal entries are objects with an 'id'"):
        Journal(path)


def test_journal_appends_durably_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path) as j:
        j.append({"id": "a", "ok": True})
        j.append({"id": "b", "ok": False, "error": "refusal"})
        assert path.read_text().count("\n") == 2  # on disk before close
    j2 = Journal(path)
    assert set(j2.entries) == {"a", "b"} and j2.ok_ids() == {"a"} and j2.failed_ids() == {"b"}


def test_journal_cuts_a_torn_last_line_and_keeps_appending_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"id": "a", "ok": true}\n{"id": "b", "ok": tr')
    j = Journal(path)
    assert set(j.entries) == {"a"} and j.torn == 1
    j.append({"id": "b", "ok": True})
    j.close()
    lines = path.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["a", "b"]


def test_journal_keeps_a_whole_last_line_missing_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"id": "a", "ok": true}')
    j = Journal(path)
    j.append({"id": "b", "ok": True})
    j.close()
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["a", "b"]


def test_journal_corruption_in_the_middle_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"id": "a"}\nnot json\n{"id": "c"}\n')
    with pytest.raises(JournalError, match="journal.jsonl:2"):
        Journal(path)


def _interrupted_writer(root: Path) -> None:
    """A writer killed after recording two rejects (its rejects journal stays; nothing is closed)."""
    writer = DatasetWriter(root, shard_bytes=10_000, card=False)
    writer.write(clip_record("c0", seconds=1.0, fps=8, size=(64, 48)), clip_bytes(1.0, 8, (64, 48)))
    writer.reject("raw/a.mp4", "probe", "unreadable")
    writer.reject("raw/b.mp4", "probe", "too short", {"duration": 0.5})
    writer.abort()


def test_writer_rejects_journal_repairs_a_torn_tail_and_records_it_again(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _interrupted_writer(root)
    journal = root / REJECTS
    lines = journal.read_bytes().splitlines(keepends=True)
    assert len(lines) == 2
    journal.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])  # killed mid-append of the second
    with DatasetWriter(root, shard_bytes=10_000, card=False) as writer:
        assert [r["input"] for r in writer.rejects] == ["raw/a.mp4"]
        writer.reject("raw/b.mp4", "probe", "too short", {"duration": 0.5})  # redone on resume
        writer.write(clip_record("c0", seconds=1.0, fps=8, size=(64, 48)), clip_bytes(1.0, 8, (64, 48)))
    import pyarrow.parquet as pq

    rows = pq.read_table(root / "meta" / "rejects.parquet").to_pylist()
    assert [(r["input"], r["reason"]) for r in rows] == [
        ("raw/a.mp4", "unreadable"),
        ("raw/b.mp4", "too short"),
    ]
    assert not journal.exists()  # progress is removed once the dataset is closed


def test_writer_rejects_journal_corrupt_in_the_middle_is_an_error_naming_the_line(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _interrupted_writer(root)
    journal = root / REJECTS
    first, second = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(first + b"garbage\n" + second)
    with pytest.raises(JournalError, match=r"rejects\.jsonl:2: not a JSON line"):
        DatasetWriter(root, shard_bytes=10_000, card=False)
