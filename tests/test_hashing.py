"""medvideocap.hashing: the one owner of stable string hashes, and the published values it must keep.

The pinned numbers below were computed by the code before it moved here (splits' own sha256, the
sampler's own sha256, recaption's own sha256 hex); they are what published datasets and resumed runs
depend on, so a change to an algorithm or a byte order fails here instead of moving clips."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from medvideocap.caption.recaption import entry_digest
from medvideocap.dataset.splits import DEFAULT_SALT, assign_split, group_position
from medvideocap.hashing import digest_bytes, hash64, short_hexdigest, unit_interval
from medvideocap.loading.sampler import stable_seed

GROUPS = {
    "video-a": 0.8764596606796073,
    "00003": 0.0004131665094099079,
    "": 0.22656326089559403,
    "é中文": 0.5780003554402658,
    "yt:abc123": 0.21751133136055717,
    "video70": 0.9959319348760924,
    "video146": 0.9814225333244676,
}


@pytest.mark.parametrize(("group", "position"), GROUPS.items())
def test_split_positions_are_the_published_ones(group: str, position: float) -> None:
    assert group_position(group) == position
    assert group_position(group) == unit_interval(f"{DEFAULT_SALT}:{group}")


def test_split_assignment_is_the_published_one() -> None:
    assert {g: assign_split(g) for g in GROUPS} == {
        **{g: "train" for g in GROUPS},
        "video70": "test",
        "video146": "validation",
    }
    halves = {g: assign_split(g, fractions=(0.5, 0.25, 0.25)) for g in GROUPS}
    assert halves["video-a"] == "test" and halves["é中文"] == "validation" and halves["00003"] == "train"
    assert group_position("video-a", salt="other") == 0.9307613205725109


def test_sampler_seeds_are_the_ones_resumed_runs_expect() -> None:
    assert stable_seed(0) == 2033344993903900207
    assert stable_seed(1024, 3, "train") == 3571377730823065452
    assert stable_seed("a", 1.5, None) == 2178377312228178232
    assert all(0 <= stable_seed(i) < 2**63 for i in range(50))


def test_recaption_entry_digest_is_unchanged() -> None:
    assert entry_digest({"ok": True, "captions": [{"name": "detailed", "text": "x"}]}) == "271a0ea96eddb992"


def test_byte_order_and_algorithm_are_what_the_docstrings_say() -> None:
    text = "clip-0001"
    sha = hashlib.sha256(text.encode()).digest()
    assert digest_bytes(text) == sha[:8]
    assert hash64(text) == int.from_bytes(sha[:8], "big")
    assert hash64(text, byteorder="little") == int.from_bytes(sha[:8], "little")
    assert hash64(text) != hash64(text, byteorder="little")
    # blake2b with digest_size=8 (frames.sample_rng's formula), which is not a prefix of blake2b-512
    blake = hashlib.blake2b(text.encode(), digest_size=8).digest()
    assert hash64(text, algorithm="blake2b", byteorder="little") == int.from_bytes(blake, "little")
    assert blake != hashlib.blake2b(text.encode()).digest()[:8]
    assert short_hexdigest(text) == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert 0.0 <= unit_interval(text) < 1.0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown hash algorithm 'md5'"):
        digest_bytes("x", algorithm="md5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1 to 32 bytes"):
        digest_bytes("x", size=33)
    with pytest.raises(ValueError, match="1 to 64 characters"):
        short_hexdigest("x", 0)


def test_hashes_do_not_depend_on_the_process_hash_seed() -> None:
    code = "from medvideocap.hashing import hash64; print(hash64('video-a'), hash('video-a'))"
    runs = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout.split()
        for seed in ("1", "2")
    ]
    assert runs[0][0] == runs[1][0] == str(hash64("video-a"))
    assert runs[0][1] != runs[1][1]  # the builtin hash really does differ, so the test can tell


def test_latent_rank_assignment_and_frame_rng_keep_their_published_values() -> None:
    # values computed by the code before it called medvideocap.hashing: a cache written across 8
    # ranks, and the frames a FrameSpec(position="random") picks, must not move
    from medvideocap.latents.encode import rank_of
    from medvideocap.media.frames import sample_rng

    assert [rank_of(f"clip{i:03d}", 8) for i in range(8)] == [0, 0, 5, 5, 4, 5, 5, 0]
    assert sample_rng(0, 0, "clip000").integers(0, 1000, 4).tolist() == [7, 882, 56, 809]
