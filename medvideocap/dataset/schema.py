"""The clip record: the one contract every reader, writer and stage shares.

Everything else (``datasets.Features``, the Arrow and polars schemas, the JSON Schema files in
``schemas/``) is derived from :class:`ClipRecord`, so a field added here shows up everywhere at once.
The serialized form (``record.to_json_dict()``) is deliberately Arrow-friendly: no mappings with
dynamic keys (captions and extra scores are lists of named entries), so that ``datasets`` can infer or
declare one stable struct for every row.

Versions. ``SCHEMA_VERSION`` is ``MAJOR.MINOR``: a new optional field (with a default, so older records
still validate) bumps the minor; removing, renaming or retyping a field bumps the major. 1.1 added
``rotation`` and ``category_raw``.

Categories. :meth:`Category.parse` maps a release's spelling to one of the paper's five (``other``
stays ``other``). It lower-cases the value, drops every character that is not a letter (spaces,
``-``, ``_``, ``/``, ``.``) and one trailing ``video``/``videos``, then looks the result up here:

=====================  ==============================================================================
category               accepted after normalising (examples of raw values)
=====================  ==============================================================================
medical_teaching       medicalteaching, teaching, education, medicaleducation
                       ("Medical Teaching", "medical-teaching", "Medical Teaching Videos")
clinical_practice      clinicalpractice, clinical, surgery ("clinical practice videos", "Clinical-Practice")
popular_science        popularscience, science ("Popular Science Video", "popular_science")
medical_animation      medicalanimation, animation ("Medical Animation", "medical animation videos")
medical_imaging        medicalimaging, imaging ("Medical Imaging Videos", "MEDICAL_IMAGING")
other                  other, and None / "" (no category given)
=====================  ==============================================================================

Anything else is an error naming the value (the upstream reader turns it into ``other`` and keeps the
value in ``extra``). A record built from a spelling that is not the canonical value keeps that spelling
in ``category_raw``, so nothing the source wrote is lost.

Errors. Bad *data* (a record that does not validate, a video that does not decode, a tar member that
is not where the metadata says) raises a subclass of :class:`DataError`. That is the one family the
loader's ``on_error="skip"`` may skip; anything else (a ``TypeError`` from our own code, say) is a bug
and propagates, so a bug never turns into "every clip skipped".
"""

from __future__ import annotations

import functools
import json
import math
import re
import types
import warnings
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Self, Union, get_args, get_origin

import pyarrow as pa
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from medvideocap.errors import DataError

SCHEMA_VERSION = "1.1"
"""``MAJOR.MINOR``. A different major is unreadable; a newer minor warns and keeps unknown fields."""

SPLITS = ("train", "validation", "test")
Split = Literal["train", "validation", "test"]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


class SchemaVersionError(ValueError):
    """A dataset written with a schema major version this package cannot read."""


class UnknownFieldsWarning(UserWarning):
    """A record carries fields this schema version does not know; they are kept, not dropped."""


class Category(StrEnum):
    """The paper's five video categories, plus ``other`` for anything outside them."""

    medical_teaching = "medical_teaching"
    clinical_practice = "clinical_practice"
    popular_science = "popular_science"
    medical_animation = "medical_animation"
    medical_imaging = "medical_imaging"
    other = "other"

    @classmethod
    def parse(cls, value: str | None) -> Category:
        """The category a release's spelling names (table in the module docstring); raises
        ``ValueError`` naming the value when it names none of them."""
        if value is None or str(value).strip() == "":
            return cls.other
        key = re.sub(r"[^a-z]+", "", str(value).lower())
        key = re.sub(r"videos?$", "", key) or key
        category = _CATEGORY_KEYS.get(key)
        if category is None:
            raise ValueError(
                f"unknown category {value!r}; expected one of {', '.join(c.value for c in cls)} "
                "(case, separators and a trailing 'video(s)' are ignored)"
            )
        return category


_CATEGORY_KEYS: dict[str, Category] = {
    **{c.value.replace("_", ""): c for c in Category},
    "teaching": Category.medical_teaching,
    "education": Category.medical_teaching,
    "medicaleducation": Category.medical_teaching,
    "clinical": Category.clinical_practice,
    "surgery": Category.clinical_practice,
    "science": Category.popular_science,
    "animation": Category.medical_animation,
    "imaging": Category.medical_imaging,
}
"""Normalised spelling -> category; documented in the module docstring's table."""


def _finite(value: float | None, name: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


class Caption(BaseModel):
    """One caption with enough provenance to reproduce or audit it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Caption slot, e.g. 'detailed', 'brief', 'qwen2.5-vl/detailed-v1'.")
    text: str = Field(min_length=1)
    style: Literal["detailed", "brief", "structured", "other"] = "other"
    source: str = Field(
        default="unknown", description="Where it came from: 'upstream', 'sidecar', 'openai', 'transformers'."
    )
    model: str | None = Field(default=None, description="Model id that wrote it, e.g. 'gpt-4o'.")
    model_revision: str | None = None
    prompt: str | None = Field(default=None, description="Prompt template name.")
    prompt_version: str | None = None
    created_at: datetime | None = None
    frame_timestamps: list[float] | None = Field(default=None, description="Seconds of the frames shown.")
    params: str | None = Field(default=None, description="Generation parameters as a JSON object string.")


class NamedScore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    value: float

    @field_validator("value")
    @classmethod
    def _check_finite(cls, v: float) -> float:
        _finite(v, "score")
        return v


class Scores(BaseModel):
    """Curation scores; each is optional because each comes from an optional stage."""

    model_config = ConfigDict(extra="forbid")

    aesthetic: float | None = Field(default=None, description="LAION aesthetic predictor, ~1-10.")
    technical: float | None = Field(default=None, description="DOVER technical quality, ~0-1.")
    sharpness: float | None = Field(default=None, description="Variance of the Laplacian, mean over frames.")
    motion: float | None = Field(default=None, description="Mean absolute frame difference, 0-255 scale.")
    temporal_consistency: float | None = Field(default=None, description="Adjacent-frame similarity, 0-1.")
    black_border: float | None = Field(default=None, description="Fraction of the frame that is border.")
    text_words: float | None = Field(default=None, description="Burned-in words found by OCR.")
    other: list[NamedScore] = Field(default_factory=list, description="Any other scorer's output, by name.")

    @field_validator(
        "aesthetic", "technical", "sharpness", "motion", "temporal_consistency", "black_border", "text_words"
    )
    @classmethod
    def _check_finite(cls, v: float | None, info: Any) -> float | None:
        return _finite(v, info.field_name)

    def get(self, name: str) -> float | None:
        if name in type(self).model_fields and name != "other":
            return getattr(self, name)
        return next((s.value for s in self.other if s.name == name), None)


SCORE_NAMES: tuple[str, ...] = tuple(n for n in Scores.model_fields if n != "other")
"""The named score fields (``other`` holds any further scorer's output by name): stats, plots and the
build's record mapping all list scores through this one tuple."""


class SourceContext(BaseModel):
    """What is known about the video a clip was cut from; the captioner uses it as context."""

    model_config = ConfigDict(extra="forbid")

    video_id: str | None = None
    title: str | None = None
    description: str | None = None
    transcript: str | None = None
    url: str | None = None
    start: float | None = Field(default=None, ge=0, description="Clip start in the source video, seconds.")
    end: float | None = Field(default=None, ge=0, description="Clip end in the source video, seconds.")


class ClipRecord(BaseModel):
    """One clip of MedVideoCap-style data.

    Frame size: ``width`` and ``height`` are the size *as stored* in the video stream (what the codec
    decodes, what ``ffprobe`` calls width/height), not the size shown. A phone video with a 90-degree
    display matrix is stored 1280x720 and shown 720x1280: its record says ``width=1280, height=720,
    rotation=90``, and :attr:`display_width` / :attr:`display_height` give 720x1280. Stored size keeps
    old records (which had no rotation) meaning what they always meant; the loader returns upright
    frames of the display size.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    schema_version: str = SCHEMA_VERSION
    id: str = Field(description="Stable key; also the webdataset key, so letters, digits, '_' and '-' only.")
    group: str = Field(description="Group key for splitting: the source video when known, else the id.")
    file_name: str = Field(description="Original file or zip member name, e.g. '00003.mp4'.")
    split: Split | None = None

    duration: float = Field(gt=0, description="Seconds.")
    fps: float = Field(gt=0)
    num_frames: int | None = Field(default=None, gt=0)
    width: int = Field(gt=0, description="Stored frame width in pixels (before display rotation).")
    height: int = Field(gt=0, description="Stored frame height in pixels (before display rotation).")
    rotation: int = Field(
        default=0,
        description="Display rotation in degrees counterclockwise (0, 90, 180 or 270), as the stream's "
        "display matrix says (ffprobe's 'rotation', modulo 360): turn stored frames by this to see them "
        "upright.",
    )
    codec: str | None = None
    bit_rate: int | None = Field(default=None, ge=0, description="Video bit rate, bits per second.")

    scores: Scores = Field(default_factory=Scores)
    camera_motion: str | None = Field(default=None, description="e.g. 'static shot', 'pan left'.")
    category: Category = Category.other
    category_raw: str | None = Field(
        default=None,
        description="The category as the source spelled it, when that is not the canonical value.",
    )
    captions: list[Caption] = Field(default_factory=list)
    source: SourceContext = Field(default_factory=SourceContext)
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Upstream keys with no schema field, kept verbatim."
    )

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not _ID_RE.match(v):
            raise ValueError(f"id {v!r} must match {_ID_RE.pattern} (it becomes a webdataset key)")
        return v

    @field_validator("duration", "fps")
    @classmethod
    def _check_finite(cls, v: float, info: Any) -> float:
        return _finite(v, info.field_name)  # type: ignore[return-value]

    @field_validator("width", "height")
    @classmethod
    def _check_even(cls, v: int, info: Any) -> int:
        if v % 2:
            raise ValueError(f"{info.field_name} {v} is odd; 4:2:0 video needs even frame sizes")
        return v

    @field_validator("rotation", mode="before")
    @classmethod
    def _check_rotation(cls, v: Any) -> Any:
        if v is None:
            return 0
        if isinstance(v, bool) or not isinstance(v, int | float) or float(v) % 90:
            raise ValueError(f"rotation {v!r} must be a multiple of 90 degrees")
        return int(v) % 360

    @model_validator(mode="before")
    @classmethod
    def _keep_raw_category(cls, data: Any) -> Any:
        """A category given in any spelling but the canonical one keeps that spelling in
        ``category_raw`` (every source, upstream JSON or sidecar, gets this for free)."""
        if isinstance(data, dict):
            raw = data.get("category")
            if (
                isinstance(raw, str)
                and not isinstance(raw, Category)
                and raw.strip()
                and raw not in Category.__members__.values()
                and data.get("category_raw") is None
            ):
                data = {**data, "category_raw": raw}
        return data

    @field_validator("category", mode="before")
    @classmethod
    def _parse_category(cls, v: Any) -> Any:
        if v is None:
            return Category.other
        return v if isinstance(v, Category) else Category.parse(str(v))

    @field_validator("extra", mode="before")
    @classmethod
    def _parse_extra(cls, v: Any) -> Any:
        if isinstance(v, str):
            return json.loads(v) if v else {}
        return v if v is not None else {}

    @field_validator("captions")
    @classmethod
    def _unique_captions(cls, v: list[Caption]) -> list[Caption]:
        names = [c.name for c in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"caption names must be unique, repeated: {dupes}")
        return v

    @model_validator(mode="after")
    def _check_version(self) -> Self:
        check_schema_version(self.schema_version, where=f"clip {self.id}")
        return self

    @field_serializer("extra", when_used="json")
    def _serialize_extra(self, v: dict[str, Any]) -> str:
        return json.dumps(v, sort_keys=True, ensure_ascii=False)

    @property
    def display_width(self) -> int:
        """Width of the upright frame (what the loader returns at native size)."""
        return self.height if self.rotation in (90, 270) else self.width

    @property
    def display_height(self) -> int:
        """Height of the upright frame."""
        return self.width if self.rotation in (90, 270) else self.height

    def caption(self, name: str) -> str | None:
        """Text of the caption named ``name`` ('detailed', 'brief', ...), or None."""
        return next((c.text for c in self.captions if c.name == name), None)

    def with_caption(self, caption: Caption) -> ClipRecord:
        """A copy with ``caption`` added, replacing any caption of the same name."""
        kept = [c for c in self.captions if c.name != caption.name]
        return self.model_copy(update={"captions": [*kept, caption]})

    def to_json_dict(self) -> dict[str, Any]:
        """The serialized record (what goes into ``{key}.json``); unknown fields stay in it."""
        return self.model_dump(mode="json")

    def to_row(self) -> dict[str, Any]:
        """The record as one Arrow row of :func:`arrow_schema` (known fields only)."""
        data = self.to_json_dict()
        return {name: data.get(name) for name in arrow_schema().names}

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], *, where: str = "record") -> ClipRecord:
        """Validate a serialized record, naming ``where`` in any error; warns on unknown fields."""
        version = str(data.get("schema_version", SCHEMA_VERSION))
        check_schema_version(version, where=where)
        try:
            record = cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidRecordError(where, exc) from exc
        if record.model_extra:
            warnings.warn(
                f"{where}: fields not in schema {SCHEMA_VERSION} kept as-is: {sorted(record.model_extra)}",
                UnknownFieldsWarning,
                stacklevel=2,
            )
        return record


class InvalidRecordError(DataError, ValueError):
    """A record failed validation; the message names the record and every failing field."""

    def __init__(self, where: str, exc: ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<record>'}: {err['msg']}" for err in exc.errors()
        )
        super().__init__(f"{where}: {problems}")
        self.where = where
        self.errors = exc.errors()


def _parse_version(version: str) -> tuple[int, int]:
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        raise SchemaVersionError(f"schema_version {version!r} is not MAJOR.MINOR") from None


def check_schema_version(found: str, *, where: str = "dataset") -> None:
    """LeRobot-style policy: other major -> error, newer minor -> warning, older minor -> fine."""
    ours = _parse_version(SCHEMA_VERSION)
    theirs = _parse_version(found)
    if theirs[0] != ours[0]:
        raise SchemaVersionError(
            f"{where}: written with schema {found}, this medvideocap reads schema {SCHEMA_VERSION} "
            f"(major {theirs[0]} != {ours[0]}); convert it or install a matching medvideocap version"
        )
    if theirs[1] > ours[1]:
        warnings.warn(
            f"{where}: schema {found} is newer than {SCHEMA_VERSION}; unknown fields are kept but not typed",
            UnknownFieldsWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------------------
# Derived schemas


def _arrow_type(annotation: Any) -> pa.DataType:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"cannot map union {annotation!r} to Arrow")
        return _arrow_type(args[0])
    if origin is Literal:
        return pa.string()
    if origin is list:
        return pa.list_(_arrow_type(get_args(annotation)[0]))
    if origin is dict:
        return pa.string()  # JSON-encoded: dynamic keys have no stable Arrow struct
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return pa.struct(
                [pa.field(n, _arrow_type(f.annotation)) for n, f in annotation.model_fields.items()]
            )
        if issubclass(annotation, StrEnum | str | datetime):
            return pa.string()
        if issubclass(annotation, bool):
            return pa.bool_()
        if issubclass(annotation, int):
            return pa.int64()
        if issubclass(annotation, float):
            return pa.float64()
    raise TypeError(f"no Arrow type for {annotation!r}")


@functools.cache
def arrow_schema() -> pa.Schema:
    """Arrow schema of one serialized record (``to_row``), derived from :class:`ClipRecord`."""
    return pa.schema(
        [pa.field(name, _arrow_type(f.annotation)) for name, f in ClipRecord.model_fields.items()],
        metadata={b"medvideocap.schema_version": SCHEMA_VERSION.encode()},
    )


def hf_features() -> Any:
    """``datasets.Features`` for the record columns (import of ``datasets`` is deferred)."""
    import datasets

    return datasets.Features.from_arrow_schema(arrow_schema())


def polars_schema() -> Any:
    """polars schema of the metadata table, derived through Arrow so the two never disagree."""
    import polars as pl

    return pl.from_arrow(arrow_schema().empty_table()).schema  # type: ignore[union-attr]


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema documents, by file name, as checked into ``schemas/``."""
    record = ClipRecord.model_json_schema(mode="serialization")
    record["$id"] = f"https://medvideocap.dev/schemas/clip-record-{SCHEMA_VERSION}.json"
    record["x-schema-version"] = SCHEMA_VERSION
    return {"clip_record.schema.json": record}


def write_json_schemas(out_dir: str | Path) -> list[Path]:
    """Regenerate the JSON Schema files checked into ``schemas/`` (``make schemas``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, document in json_schemas().items():
        (out / file_name).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        written.append(out / file_name)
    return written
