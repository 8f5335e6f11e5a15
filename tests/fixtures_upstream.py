"""An upstream-shaped MedVideoCap release for tests: ``videos_1.zip`` + ``videos_2.zip`` of real tiny
mp4s and one ``metadata.json`` with the paper's key names.

Other areas (convert, loader) reuse :func:`make_upstream_release`; keep its signature stable.

Layout written under ``root``::

    metadata.json    a JSON list of paper-style records ("Video Name", "Resolution": "64*48", ...)
    videos_1.zip     good clips 0, 2, 4, ... at the archive root ("00000.mp4")
    videos_2.zip     good clips 1, 3, 5, ... inside a folder ("videos_2/00001.mp4")

The ``n_clips`` good clips are ``00000.mp4 ...``; their durations cycle through 1.0/1.5/2.0 s and their
frame rates through 8/10/12 fps, all 64x48. Clips 0-1 share the source video ``yt_A`` and clips 2-3
share ``yt_B`` (so groups exist); the others have a source of their own.

Each planted fault adds *extra* entries (never touches the good clips), so a test knows exactly which
file must be flagged: :data:`FAULT_FILES` maps the fault name to that file name.

For hostile archives built member by member: :func:`video_bytes` (a real clip), :func:`paper_record`,
:func:`write_release` (explicit members and records), and :func:`write_zip64` with
:func:`zeros_deflated` (a member that inflates to 1 GiB from ~1 MB, built without inflating it).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import tempfile
import zipfile
import zlib
from pathlib import Path

from videos import ffmpeg, make_video

FAULTS = (
    "truncated_mp4",
    "record_without_video",
    "video_without_record",
    "duration_mismatch",
    "non_numeric_score",
    "unsafe_member",
    "unknown_key",
    "wrong_major_version",
)

FAULT_FILES: dict[str, str] = {
    "truncated_mp4": "90001.mp4",  # record says 2.0 s; member is a faststart mp4 cut to 3/4 of its bytes
    "record_without_video": "90002.mp4",  # record only
    "video_without_record": "90003.mp4",  # zip member only
    "duration_mismatch": "90004.mp4",  # record says 8.99 s, file is 1.0 s
    "non_numeric_score": "90005.mp4",  # "Aesthetic Score": "high"
    "unsafe_member": "../90006.mp4",  # member name escaping the archive root (+ its record)
    "unknown_key": "90007.mp4",  # record carries "Uploader Notes" (kept in extra, warned)
    "wrong_major_version": "90008.mp4",  # record carries "schema_version": "2.0"
}
UNKNOWN_KEY = "Uploader Notes"

CATEGORIES = (
    "Medical Teaching",
    "Clinical Practice",
    "Popular Science",
    "Medical Animation",
    "Medical Imaging",
)
MOTIONS = ("static shot", "pan left", "zoom in")
DURATIONS = (1.0, 1.5, 2.0)
RATES = (8, 10, 12)
SIZE = (64, 48)

_VIDEO_CACHE: dict[tuple[float, int, bool, tuple[int, int]], bytes] = {}


def video_bytes(seconds: float, fps: int, *, size: tuple[int, int] = SIZE) -> bytes:
    """A real encoded clip (made once per process per shape)."""
    return _video_bytes(seconds, fps, size=size)


def _video_bytes(seconds: float, fps: int, *, faststart: bool = False, size: tuple[int, int] = SIZE) -> bytes:
    """Encoded clip bytes, made once per (seconds, fps) per process: ffmpeg is the slow part."""
    key = (seconds, fps, faststart, size)
    if key not in _VIDEO_CACHE:
        with tempfile.TemporaryDirectory() as tmp:
            path = make_video(Path(tmp) / "clip.mp4", seconds=seconds, fps=fps, size=size)
            if faststart:  # moov first: a cut file still opens and decodes its first frames
                moved = Path(tmp) / "faststart.mp4"
                args = [ffmpeg(), "-y", "-v", "error", "-i", str(path), "-c", "copy"]
                subprocess.run(
                    [*args, "-movflags", "+faststart", str(moved)], check=True, capture_output=True
                )
                path = moved
            _VIDEO_CACHE[key] = path.read_bytes()
    return _VIDEO_CACHE[key]


def paper_record(name: str, index: int, seconds: float, fps: float, size_bytes: int) -> dict[str, object]:
    """A metadata record with the paper's key names for a clip of the fixture's size."""
    return _record(name, index, seconds, fps, size_bytes)


def write_release(
    root: Path, zips: dict[str, list[tuple[str, bytes]]], records: list[dict[str, object]]
) -> Path:
    """A release folder from explicit zip members (stored, fixed dates) and records."""
    root.mkdir(parents=True, exist_ok=True)
    for zip_name, members in zips.items():
        with zipfile.ZipFile(root / zip_name, "w", compression=zipfile.ZIP_STORED) as zf:
            for member, data in members:
                zf.writestr(zipfile.ZipInfo(member, date_time=(2025, 1, 1, 0, 0, 0)), data)
    (root / "metadata.json").write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    return root


def zeros_deflated(size: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``size`` zero bytes and their CRC-32, made without inflating anything
    big: 1 MiB of zeros is compressed once and its full-flush block repeated (a full flush resets the
    compressor, so every repeat is the same bytes)."""
    chunk = 1 << 20
    assert size % chunk == 0
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = comp.compress(bytes(chunk)) + comp.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    zero = bytes(chunk)
    for _ in range(size // chunk):
        crc = zlib.crc32(zero, crc)
    return block * (size // chunk) + comp.flush(zlib.Z_FINISH), crc


def write_zip64(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip written by hand from ``(name, payload, method, crc, size)`` members, with zip64 sizes:
    the payload is stored as given (already deflated for method 8), so a member can inflate to far
    more than the test ever holds in memory. :mod:`zipfile` reads the result."""
    local, central = bytearray(), bytearray()
    for name, payload, method, crc, size in members:
        raw = name.encode()
        offset = len(local)
        extra = struct.pack("<HHQQ", 1, 16, size, len(payload))
        local += struct.pack(
            "<4s5H3L2H",
            b"PK\x03\x04",
            45,
            0x800,
            method,
            0,
            0x5A21,
            crc,
            0xFFFFFFFF,
            0xFFFFFFFF,
            len(raw),
            len(extra),
        )
        local += raw + extra + payload
        cextra = struct.pack("<HHQQ", 1, 16, size, len(payload))
        central += struct.pack(
            "<4s6H3L5H2L",
            b"PK\x01\x02", 45, 45, 0x800, method, 0, 0x5A21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
            len(raw), len(cextra), 0, 0, 0, 0, offset,
        )  # fmt: skip
        central += raw + cextra
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(local), 0
    )
    path.write_bytes(bytes(local + central + end))
    return path


def _record(name: str, index: int, seconds: float, fps: float, size_bytes: int) -> dict[str, object]:
    source = "yt_A" if index in (0, 1) else "yt_B" if index in (2, 3) else f"yt_{index:03d}"
    kbps = size_bytes * 8 / seconds / 1000
    return {
        "Video Name": name,
        "Resolution": f"{SIZE[0]}*{SIZE[1]}",
        "Video Bit Rate": f"{kbps:.1f} kbps",
        "Aesthetic Score": round(4.0 + 0.25 * (index % 5), 3),
        "Dover Score": round(0.5 + 0.05 * (index % 7), 3),
        "Duration": seconds,
        "FPS": fps,
        "Camera Motion Type": MOTIONS[index % len(MOTIONS)],
        "Video Categories": CATEGORIES[index % len(CATEGORIES)],
        "Brief Caption": f"A clinician demonstrates step {index} of a procedure.",
        "Detailed Caption": (
            f"In this video, a clinician in a white coat demonstrates step {index} of a bedside procedure, "
            "pointing at an anatomical model while explaining each landmark to the camera."
        ),
        "Source Video": source,
    }


def make_upstream_release(root: Path, n_clips: int = 6, faults: tuple[str, ...] | list[str] = ()) -> Path:
    """Write an upstream-shaped release into ``root`` (created if needed) and return ``root``.

    ``faults`` names entries of :data:`FAULTS` to plant; see :data:`FAULT_FILES` for the file each one
    concerns. The good clips are unaffected by faults.
    """
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        raise ValueError(f"unknown faults {unknown}; known: {FAULTS}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, object]] = []
    zips: dict[str, list[tuple[str, bytes]]] = {"videos_1.zip": [], "videos_2.zip": []}

    for i in range(n_clips):
        name = f"{i:05d}.mp4"
        seconds, fps = DURATIONS[i % len(DURATIONS)], RATES[i % len(RATES)]
        data = _video_bytes(seconds, fps)
        records.append(_record(name, i, seconds, fps, len(data)))
        if i % 2 == 0:
            zips["videos_1.zip"].append((name, data))
        else:
            zips["videos_2.zip"].append((f"videos_2/{name}", data))

    base = 100  # extra entries get indices past the good ones (own source video each)
    good = _video_bytes(1.0, 8)
    for fault in faults:
        name = FAULT_FILES[fault]
        if fault == "truncated_mp4":
            data = _video_bytes(2.0, 8, faststart=True)
            records.append(_record(name, base + 1, 2.0, 8, len(data)))
            # 3/4 keeps the first frames decodable (0.875 s of 2 s): truncated, not undecodable
            zips["videos_2.zip"].append((f"videos_2/{name}", data[: len(data) * 3 // 4]))
        elif fault == "record_without_video":
            records.append(_record(name, base + 2, 1.0, 8, len(good)))
        elif fault == "video_without_record":
            zips["videos_1.zip"].append((name, good))
        elif fault == "duration_mismatch":
            rec = _record(name, base + 4, 1.0, 8, len(good))
            rec["Duration"] = 8.99
            records.append(rec)
            zips["videos_1.zip"].append((name, good))
        elif fault == "non_numeric_score":
            rec = _record(name, base + 5, 1.0, 8, len(good))
            rec["Aesthetic Score"] = "high"
            records.append(rec)
            zips["videos_2.zip"].append((f"videos_2/{name}", good))
        elif fault == "unsafe_member":
            records.append(_record(name.rsplit("/", 1)[-1], base + 6, 1.0, 8, len(good)))
            zips["videos_1.zip"].append((name, good))
        elif fault == "unknown_key":
            rec = _record(name, base + 7, 1.0, 8, len(good))
            rec[UNKNOWN_KEY] = "re-uploaded 2024"
            records.append(rec)
            zips["videos_1.zip"].append((name, good))
        elif fault == "wrong_major_version":
            rec = _record(name, base + 8, 1.0, 8, len(good))
            rec["schema_version"] = "2.0"
            records.append(rec)
            zips["videos_2.zip"].append((f"videos_2/{name}", good))

    for zip_name, members in zips.items():
        with zipfile.ZipFile(root / zip_name, "w", compression=zipfile.ZIP_STORED) as zf:
            for member, data in members:
                zf.writestr(zipfile.ZipInfo(member, date_time=(2025, 1, 1, 0, 0, 0)), data)
    (root / "metadata.json").write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    return root


PADDING_MEMBER_BYTES = 52 * 1000 * 1000
"""One padding member of :func:`make_large_release`: four of them put 208 MB in ``videos_1.zip``."""


def make_large_release(
    root: Path, *, archives: int = 6, clips_per_archive: int = 4, padding: int = 4
) -> Path:
    """An upstream-shaped release of ``archives`` zips (``videos_1.zip`` ...) and ``metadata.json``,
    with one archive of more than 200 MB, made in seconds: the size is ``padding`` stored members of
    random bytes (``padding/blob_N.bin``, not videos, so every reader ignores them) between the first
    clip of ``videos_1.zip`` and its others, so a clip also lies past the 200 MB mark.

    The clips are real tiny mp4s (``00000.mp4`` ...), numbered in archive order: archive ``k`` holds
    clips ``k * clips_per_archive`` to ``(k + 1) * clips_per_archive - 1``, so a reader that goes
    through the clips in id order goes through the archives one after the other. Members are written
    with fixed dates, so the archives' bytes depend only on the random padding."""
    root.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, object]] = []
    for k in range(archives):
        with zipfile.ZipFile(root / f"videos_{k + 1}.zip", "w", compression=zipfile.ZIP_STORED) as zf:
            for j in range(clips_per_archive):
                i = k * clips_per_archive + j
                name = f"{i:05d}.mp4"
                seconds, fps = DURATIONS[i % len(DURATIONS)], RATES[i % len(RATES)]
                data = _video_bytes(seconds, fps)
                records.append(_record(name, i, seconds, fps, len(data)))
                zf.writestr(zipfile.ZipInfo(name, date_time=(2025, 1, 1, 0, 0, 0)), data)
                if k == 0 and j == 0:
                    for n in range(padding):
                        info = zipfile.ZipInfo(f"padding/blob_{n}.bin", date_time=(2025, 1, 1, 0, 0, 0))
                        with zf.open(info, "w", force_zip64=True) as blob:
                            left = PADDING_MEMBER_BYTES
                            while left:
                                chunk = os.urandom(min(4 << 20, left))
                                blob.write(chunk)
                                left -= len(chunk)
    (root / "metadata.json").write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    return root
