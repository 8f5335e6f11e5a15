"""Category stage: the sidecar's category hint when it names one of the paper's five, else the default.

Provenance goes to ``extra.category_source`` ('sidecar' or 'default'); an unparseable hint is kept in
``extra.category_hint`` so nothing the uploader wrote is lost."""

from __future__ import annotations

from medvideocap.build.recipe import CategoryStage
from medvideocap.build.record import CATEGORY_KEYS
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import Context
from medvideocap.dataset.schema import Category


def check(cfg: CategoryStage) -> None:
    Category.parse(cfg.default)  # a bad default fails at start-up, not per clip


def run(sample: Sample, cfg: CategoryStage, ctx: Context) -> Sample | Reject:
    hint = next((sample.meta[k] for k in CATEGORY_KEYS if sample.meta.get(k)), None)
    if hint is not None:
        try:
            sample.category = Category.parse(str(hint)).value
            sample.extra["category_source"] = "sidecar"
            return sample
        except ValueError:
            sample.extra["category_hint"] = str(hint)
    sample.category = Category.parse(cfg.default).value
    sample.extra["category_source"] = "default"
    return sample
