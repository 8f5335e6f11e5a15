"""Stable string hashes: the same number for the same text on every machine, process and Python.

Python's ``hash(str)`` is salted per process (``PYTHONHASHSEED``), so anything that must agree across
DataLoader workers, ranks, reruns or published outputs (split assignment, sampler seeds, shard
owners, short content ids) hashes through this module instead. Every function hashes the UTF-8
bytes of the text and says which digest and byte order it reads, because those choices are part of
published outputs: :func:`medvideocap.dataset.splits.group_position` decides which split a clip is in, so
changing its algorithm or byte order would move clips between splits of an already published
dataset. Callers keep the algorithm and byte order they shipped with; new callers should use the
defaults (sha256, big-endian, the order in which the hex digest is written).
"""

from __future__ import annotations

import hashlib
from typing import Literal

Algorithm = Literal["sha256", "blake2b"]
ByteOrder = Literal["big", "little"]


def digest_bytes(text: str, *, algorithm: Algorithm = "sha256", size: int = 8) -> bytes:
    """The first ``size`` bytes of the digest of ``text``'s UTF-8 bytes.

    ``sha256`` takes the leading bytes of the 32-byte digest. ``blake2b`` is computed with
    ``digest_size=size`` (blake2b's own parameter), which is NOT a prefix of the 64-byte blake2b
    digest: it is what ``hashlib.blake2b(data, digest_size=size)`` returns.
    """
    data = text.encode("utf-8")
    if algorithm == "sha256":
        if not 1 <= size <= 32:
            raise ValueError(f"sha256 gives 1 to 32 bytes, asked for {size}")
        return hashlib.sha256(data).digest()[:size]
    if algorithm == "blake2b":
        return hashlib.blake2b(data, digest_size=size).digest()
    raise ValueError(f"unknown hash algorithm {algorithm!r}; expected 'sha256' or 'blake2b'")


def hash64(text: str, *, algorithm: Algorithm = "sha256", byteorder: ByteOrder = "big") -> int:
    """An unsigned 64-bit integer from ``text``: :func:`digest_bytes` (8 bytes) read in ``byteorder``."""
    return int.from_bytes(digest_bytes(text, algorithm=algorithm, size=8), byteorder)


def unit_interval(text: str, *, algorithm: Algorithm = "sha256", byteorder: ByteOrder = "big") -> float:
    """Where ``text`` falls in [0, 1): :func:`hash64` over 2**64."""
    return hash64(text, algorithm=algorithm, byteorder=byteorder) / 2**64


def short_hexdigest(text: str, length: int = 16) -> str:
    """The first ``length`` hex characters of sha256 of ``text``: a short content id for a file name or a
    resume check, where a collision among a few thousand entries is what matters (64 bits by default)."""
    if not 1 <= length <= 64:
        raise ValueError(f"a sha256 hex digest has 1 to 64 characters, asked for {length}")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]
