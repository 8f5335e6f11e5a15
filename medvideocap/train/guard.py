"""What the trainer does with a step whose loss or gradient norm is NaN/inf: skip it, or stop.

Why a separate owner: one NaN gradient applied makes every weight NaN, and a run that goes on logging
``loss nan`` for hours and exports a broken LoRA is the worst outcome. The loop (:mod:`medvideocap.train.loop`)
never applies such a step; this class decides, from ``max_nonfinite_steps``, whether the run skips it with a
warning or stops, and words both so the user can find the samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medvideocap.train.config import NonFiniteTrainingError, TrainConfig


class NonFiniteGuard:
    """Counts non-finite steps in a row; :meth:`bad_step` raises at ``max_nonfinite_steps`` of them."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.in_a_row = 0

    def good_step(self) -> None:
        self.in_a_row = 0

    def bad_step(
        self,
        step: int,
        loss: float,
        grad_norm: Any,
        ids: list[str],
        *,
        before_stop: Callable[[], Any] = lambda: None,
    ) -> str:
        """The warning for a skipped step, or :class:`NonFiniteTrainingError` when the limit is reached
        (``before_stop`` runs first: the loop closes its log writers)."""
        self.in_a_row += 1
        norm = float(grad_norm) if grad_norm is not None else float("nan")
        what = f"step {step}: loss {loss}, gradient norm {norm} (not finite) on the batch of samples {ids}"
        limit = f"max_nonfinite_steps={self.cfg.max_nonfinite_steps}"
        if self.in_a_row >= self.cfg.max_nonfinite_steps:
            before_stop()
            raise NonFiniteTrainingError(
                f"{self.cfg.output_dir}: stopped at {what}; {self.in_a_row} such step(s) in a row ({limit}). "
                "No update or checkpoint holds it. Check those samples (a latent cache refuses NaN/inf rows "
                "when read; source= pixels are not checked), lower learning_rate, or set "
                "max_nonfinite_steps=N to skip up to N-1 such steps in a row"
            )
        return f"[yellow]skipped[/] {what}; {self.in_a_row} in a row ({limit})"
