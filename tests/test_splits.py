from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter

import pytest

from medvideocap.dataset.splits import (
    DEFAULT_SALT,
    assign_split,
    check_fractions,
    group_position,
    parse_fractions,
)


def test_position_is_the_documented_sha256_formula() -> None:
    # Pinned: changing the hash, salt format or byte order would silently move clips between splits.
    digest = hashlib.sha256(b"medvideocap-v1:yt_A").digest()
    assert group_position("yt_A") == int.from_bytes(digest[:8], "big") / 2**64
    assert DEFAULT_SALT == "medvideocap-v1"
    assert group_position("yt_A") == pytest.approx(0.35336354152582766, abs=1e-15)
    assert assign_split("00000", fractions=(0.5, 0.25, 0.25)) == "validation"


def test_same_split_in_a_fresh_interpreter() -> None:
    # hash() is salted per process; ours must not be.
    groups = [f"video-{i}" for i in range(50)]
    code = (
        "from medvideocap.dataset.splits import assign_split;"
        f"print(','.join(assign_split(g, fractions=(0.6, 0.2, 0.2)) for g in {groups!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert out.split(",") == [assign_split(g, fractions=(0.6, 0.2, 0.2)) for g in groups]


def test_default_fractions_are_honoured_over_many_groups() -> None:
    counts = Counter(assign_split(f"g{i}") for i in range(20_000))
    assert 0.975 < counts["train"] / 20_000 < 0.985
    assert 0.007 < counts["validation"] / 20_000 < 0.013
    assert 0.007 < counts["test"] / 20_000 < 0.013


def test_zero_fraction_split_is_never_assigned() -> None:
    assert {assign_split(f"g{i}", fractions=(0.7, 0.0, 0.3)) for i in range(2000)} == {"train", "test"}
    assert {assign_split(f"g{i}", fractions=(1, 0, 0)) for i in range(500)} == {"train"}


def test_salt_changes_the_draw_but_not_its_shape() -> None:
    a = [assign_split(f"g{i}", fractions=(0.5, 0.25, 0.25)) for i in range(400)]
    b = [assign_split(f"g{i}", fractions=(0.5, 0.25, 0.25), salt="other") for i in range(400)]
    assert a != b
    assert 150 < Counter(b)["train"] < 250


@pytest.mark.parametrize(
    ("bad", "message"),
    [((0.5, 0.5), "one number per split"), ((0.5, 0.6, -0.1), ">= 0"), ((0.5, 0.2, 0.2), "sum to 1")],
)
def test_bad_fractions_are_refused_with_the_reason(bad: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_fractions(bad)


def test_parse_fractions_accepts_cli_forms() -> None:
    assert parse_fractions("0.98,0.01,0.01") == pytest.approx((0.98, 0.01, 0.01))
    assert parse_fractions("98/1/1") == pytest.approx((0.98, 0.01, 0.01))
    with pytest.raises(ValueError, match="three numbers"):
        parse_fractions("a,b,c")
