"""Turning a finished sample into a validated :class:`~medvideocap.dataset.schema.ClipRecord`."""

from __future__ import annotations

from typing import Any

from medvideocap.build.sample import Sample
from medvideocap.dataset.schema import (
    SCORE_NAMES,
    Caption,
    Category,
    ClipRecord,
    NamedScore,
    Scores,
    SourceContext,
)

SOURCE_KEYS = {
    "video_id": ("source_id", "video_id", "id", "youtube_id"),
    "title": ("title",),
    "description": ("description",),
    "transcript": ("transcript",),
    "url": ("url", "source_url"),
}
CATEGORY_KEYS = ("category", "category_hint", "video_category", "categories")
CAPTION_KEYS = {
    "detailed": ("caption_detailed", "detailed_caption", "detailed", "caption"),
    "brief": ("caption_brief", "brief_caption", "brief", "short_caption"),
}
KNOWN_SIDECAR_KEYS = frozenset(
    [k for keys in SOURCE_KEYS.values() for k in keys]
    + list(CATEGORY_KEYS)
    + [k for keys in CAPTION_KEYS.values() for k in keys]
    + ["captions"]
)


def meta_value(meta: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = meta.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def scores_of(values: dict[str, float]) -> Scores:
    """Schema fields by name; every other score as a named entry (sorted, so records are stable)."""
    other = [NamedScore(name=k, value=v) for k, v in sorted(values.items()) if k not in SCORE_NAMES]
    return Scores(**{k: v for k, v in values.items() if k in SCORE_NAMES}, other=other)


def to_record(sample: Sample) -> ClipRecord:
    """The clip record; raises the schema's validation error naming the clip if a value is invalid."""
    info = sample.info
    unknown = {k: v for k, v in sorted(sample.meta.items()) if k not in KNOWN_SIDECAR_KEYS}  # kept, not lost
    source = SourceContext(
        **{field: meta_value(sample.meta, keys) for field, keys in SOURCE_KEYS.items()},
        start=sample.start,
        end=sample.end,
    )
    return ClipRecord(
        id=sample.clip_id,
        group=source.video_id or sample.key,
        file_name=f"{sample.clip_id}.mp4",
        duration=info["duration"],
        fps=info["fps"],
        num_frames=info.get("num_frames"),
        width=info["width"],
        height=info["height"],
        rotation=info.get("rotation", 0),
        codec=info.get("codec"),
        bit_rate=info.get("bit_rate"),
        scores=scores_of(sample.scores),
        camera_motion=sample.camera_motion,
        category=Category.parse(sample.category),
        captions=[Caption.model_validate(c) for c in sample.captions],
        source=source,
        extra={**sample.extra, "input": sample.input, **({"sidecar": unknown} if unknown else {})},
    )
