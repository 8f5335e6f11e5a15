"""One video of an evaluation (:class:`Item`): the key the runner journals it under and the report's row.

Its own module because both :mod:`medvideocap.eval.runner` (which makes items) and
:mod:`medvideocap.eval.report` (which tabulates them, and which the runner calls) need it: in either of
them it made the two import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medvideocap.eval.prompts import Prompt


@dataclass(frozen=True)
class Item:
    """One video of the evaluation: which checkpoint, prompt and seed, and where its mp4 lives."""

    checkpoint: str
    prompt: Prompt
    seed: int
    path: Path

    @property
    def key(self) -> str:
        return f"{self.checkpoint}/{self.prompt.id}/{self.seed}"
