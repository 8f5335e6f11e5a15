"""Filter stage: a joint rule over scores already stored (e.g. the paper's aesthetic/technical rule).

The rule is written out in the recipe as ``keep_if_any: [[conditions...], ...]``: a clip is kept
when every condition of at least one group holds. No expression strings are evaluated."""

from __future__ import annotations

from medvideocap.build.recipe import FilterStage
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import Context


def run(sample: Sample, cfg: FilterStage, ctx: Context) -> Sample | Reject:
    for group in cfg.keep_if_any:
        if all(cond.holds(sample.scores.get(cond.score)) for cond in group):
            return sample
    values = sorted({c.score for g in cfg.keep_if_any for c in g})
    shown = ", ".join(
        f"{name}={sample.scores[name]:.3g}" if name in sample.scores else f"{name}=missing" for name in values
    )
    rule = " OR ".join("(" + " and ".join(str(c) for c in g) + ")" for g in cfg.keep_if_any)
    return Reject(cfg.label, "rule", f"{shown} fails {rule}", dict(sample.scores))
