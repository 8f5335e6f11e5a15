"""Deterministic train/validation/test assignment from a clip's group key.

The upstream release publishes no split, so we derive one. The split of a clip depends only on its
group key (the source video when known, so clips cut from one video never straddle splits), the
fractions and a salt: ``sha256(f"{salt}:{group}")`` read as a number in [0, 1) and placed on the
cumulative fractions. That is the same on every machine, in every process and for any worker count,
and adding or removing other clips never moves a clip to another split.

The salt is part of the dataset's identity: :data:`DEFAULT_SALT` ("medvideocap-v1") is what the
published conversion uses; change it only to draw a different, equally valid split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from medvideocap.dataset.schema import SPLITS
from medvideocap.hashing import unit_interval

DEFAULT_SALT = "medvideocap-v1"
DEFAULT_FRACTIONS = (0.98, 0.01, 0.01)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate (train, validation, test) fractions: three non-negative numbers summing to 1."""
    values = tuple(float(f) for f in fractions)
    if len(values) != len(SPLITS):
        raise ValueError(f"fractions must give one number per split {SPLITS}, got {list(values)}")
    if any(not math.isfinite(f) or f < 0 for f in values):
        raise ValueError(f"fractions must be finite and >= 0, got {list(values)}")
    if not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must sum to 1, got {list(values)} (sum {sum(values):g})")
    return values  # type: ignore[return-value]


def parse_fractions(text: str) -> tuple[float, float, float]:
    """Parse the CLI form "0.98,0.01,0.01" (or "98/1/1", normalised to sum 1)."""
    parts = [p for p in text.replace("/", ",").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"fractions {text!r}: expected three numbers like 0.98,0.01,0.01") from None
    total = sum(values)
    if total > 1.0 + 1e-6 and total > 0:
        values = [v / total for v in values]
    return check_fractions(values)


def group_position(group: str, *, salt: str = DEFAULT_SALT) -> float:
    """Where ``group`` falls in [0, 1): the first 8 bytes of sha256(f"{salt}:{group}"), big-endian, over
    2**64 (:func:`medvideocap.hashing.unit_interval`; the published split depends on exactly this)."""
    return unit_interval(f"{salt}:{group}", algorithm="sha256", byteorder="big")


def assign_split(
    group: str, *, fractions: Sequence[float] = DEFAULT_FRACTIONS, salt: str = DEFAULT_SALT
) -> str:
    """The split ("train", "validation" or "test") of every clip whose group key is ``group``."""
    values = check_fractions(fractions)
    position = group_position(group, salt=salt)
    cumulative = 0.0
    for split, fraction in zip(SPLITS, values, strict=True):
        cumulative += fraction
        if position < cumulative:
            return split
    # Float rounding can leave the cumulative sum a hair under 1: the last non-empty split takes it.
    return next(s for s, f in zip(reversed(SPLITS), reversed(values), strict=True) if f > 0)
