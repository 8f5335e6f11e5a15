"""The clip schema: range checks, version policy, derived schemas agreeing, JSON Schema files in sync."""

from __future__ import annotations

import json
import math
import warnings
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from medvideocap.dataset.schema import (
    SCHEMA_VERSION,
    Caption,
    Category,
    ClipRecord,
    DataError,
    InvalidRecordError,
    SchemaVersionError,
    Scores,
    UnknownFieldsWarning,
    arrow_schema,
    hf_features,
    json_schemas,
    polars_schema,
)

SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "schemas"


def _record(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "id": "00003",
        "group": "yt_A",
        "file_name": "00003.mp4",
        "duration": 8.99,
        "fps": 30.0,
        "width": 720,
        "height": 480,
        "scores": {"aesthetic": 4.88, "technical": 0.705, "other": [{"name": "clip_score", "value": 0.31}]},
        "camera_motion": "static shot",
        "category": "medical_teaching",
        "captions": [
            {
                "name": "detailed",
                "text": "A surgeon sutures a wound.",
                "style": "detailed",
                "source": "upstream",
                "model": "gpt-4o",
                "created_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).isoformat(),
                "frame_timestamps": [0.5, 1.5],
            },
            {"name": "brief", "text": "Suturing.", "style": "brief", "source": "upstream", "model": "gpt-4o"},
        ],
        "source": {"video_id": "yt_A", "title": "Suturing basics", "start": 12.0, "end": 20.99},
        "extra": {"Uploader": "someone"},
    }
    data.update(overrides)
    return data


def test_valid_record_round_trips_through_json() -> None:
    record = ClipRecord.from_json_dict(_record())
    again = ClipRecord.from_json_dict(json.loads(json.dumps(record.to_json_dict())))
    assert again == record
    assert record.caption("detailed") == "A surgeon sutures a wound."
    assert record.scores.get("clip_score") == pytest.approx(0.31)
    assert again.extra == {"Uploader": "someone"}


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("fps", 0, "fps"),
        ("fps", -25.0, "fps"),
        ("duration", 0.0, "duration"),
        ("duration", math.inf, "finite"),
        ("width", 721, "odd"),
        ("height", 0, "height"),
        ("id", "../escape", "id"),
        ("num_frames", 0, "num_frames"),
        ("bit_rate", -1, "bit_rate"),
        ("category", "cooking", "category"),
    ],
)
def test_out_of_range_values_are_rejected_naming_the_field(field: str, value: object, needle: str) -> None:
    with pytest.raises(InvalidRecordError) as info:
        ClipRecord.from_json_dict(_record(**{field: value}), where="clip 00003.mp4")
    message = str(info.value)
    assert message.startswith("clip 00003.mp4:")
    assert needle in message


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_are_rejected(bad: float) -> None:
    with pytest.raises(InvalidRecordError, match="finite"):
        ClipRecord.from_json_dict(_record(scores={"aesthetic": bad}))
    with pytest.raises(InvalidRecordError, match="finite"):
        ClipRecord.from_json_dict(_record(scores={"other": [{"name": "x", "value": bad}]}))


def test_duplicate_caption_names_are_rejected() -> None:
    caption = {"name": "detailed", "text": "x"}
    with pytest.raises(InvalidRecordError, match="unique"):
        ClipRecord.from_json_dict(_record(captions=[caption, caption]))


def test_with_caption_replaces_same_name() -> None:
    record = ClipRecord.from_json_dict(_record())
    updated = record.with_caption(Caption(name="detailed", text="New text.", source="openai", model="gpt-4o"))
    assert updated.caption("detailed") == "New text."
    assert updated.caption("brief") == "Suturing."
    assert record.caption("detailed") == "A surgeon sutures a wound."


def test_other_major_version_is_an_error_naming_both_versions() -> None:
    with pytest.raises(SchemaVersionError) as info:
        ClipRecord.from_json_dict(_record(schema_version="2.0"), where="metadata.json row 7")
    message = str(info.value)
    assert "metadata.json row 7" in message
    assert "2.0" in message and SCHEMA_VERSION in message


def test_newer_minor_version_warns_and_keeps_unknown_fields() -> None:
    major = SCHEMA_VERSION.split(".")[0]
    data = _record(schema_version=f"{major}.99", lens_type="endoscope")
    with pytest.warns(UnknownFieldsWarning) as caught:
        record = ClipRecord.from_json_dict(data)
    assert any(f"{major}.99" in str(w.message) for w in caught)
    assert any("lens_type" in str(w.message) for w in caught)
    assert record.model_extra == {"lens_type": "endoscope"}
    assert record.to_json_dict()["lens_type"] == "endoscope"


def test_same_version_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = ClipRecord.from_json_dict(_record())
    assert record.schema_version == SCHEMA_VERSION
    assert record.model_extra == {}


def test_malformed_version_is_an_error() -> None:
    with pytest.raises(SchemaVersionError, match="MAJOR.MINOR"):
        ClipRecord.from_json_dict(_record(schema_version="one"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Medical Teaching", Category.medical_teaching),
        ("clinical-practice", Category.clinical_practice),
        ("Popular Science", Category.popular_science),
        ("medical animation", Category.medical_animation),
        ("MEDICAL_IMAGING", Category.medical_imaging),
        ("", Category.other),
        (None, Category.other),
        ("clinical practice videos", Category.clinical_practice),
        ("Medical Imaging Videos", Category.medical_imaging),
        ("medical-teaching", Category.medical_teaching),
        ("Popular Science Video", Category.popular_science),
        ("MedicalAnimation", Category.medical_animation),
        ("medical / teaching videos", Category.medical_teaching),
        ("Other", Category.other),
    ],
)
def test_category_parse_accepts_paper_spellings(text: str | None, expected: Category) -> None:
    assert Category.parse(text) is expected


@pytest.mark.parametrize("text", ["videos", "medical", "cooking videos", "medical teaching lecture"])
def test_category_parse_rejects_what_names_no_category(text: str) -> None:
    with pytest.raises(ValueError, match=f"unknown category {text!r}"):
        Category.parse(text)


def test_a_record_keeps_the_category_as_the_source_spelled_it() -> None:
    record = ClipRecord.from_json_dict(_record(category="Medical Imaging Videos"))
    assert record.category is Category.medical_imaging
    assert record.category_raw == "Medical Imaging Videos"
    again = ClipRecord.from_json_dict(json.loads(json.dumps(record.to_json_dict())))
    assert again == record and again.category_raw == "Medical Imaging Videos"
    assert ClipRecord.from_json_dict(_record(category="medical_imaging")).category_raw is None
    assert ClipRecord.from_json_dict(_record(category=None)).category is Category.other


def test_category_table_is_documented_in_the_module_docstring() -> None:
    import medvideocap.dataset.schema as schema

    doc = schema.__doc__ or ""
    for category in Category:
        assert category.value in doc
    for key in schema._CATEGORY_KEYS:
        assert key in doc, f"normalised spelling {key!r} missing from the table in schema.py's docstring"


@pytest.mark.parametrize(
    ("given", "stored"), [(0, 0), (90, 90), (180.0, 180), (-90, 270), (450, 90), (None, 0)]
)
def test_rotation_is_normalised_to_a_quarter_turn(given: object, stored: int) -> None:
    record = ClipRecord.from_json_dict(_record(rotation=given))
    assert record.rotation == stored
    portrait = stored in (90, 270)
    assert (record.display_width, record.display_height) == ((480, 720) if portrait else (720, 480))


@pytest.mark.parametrize("bad", [45, 89.5, "90", True])
def test_rotation_that_is_not_a_quarter_turn_is_rejected(bad: object) -> None:
    with pytest.raises(InvalidRecordError, match="rotation"):
        ClipRecord.from_json_dict(_record(rotation=bad))


def test_a_record_without_the_new_fields_still_validates() -> None:
    """Backward compatible: a 1.0 record (no rotation, no category_raw) reads with the defaults."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = ClipRecord.from_json_dict(_record(schema_version="1.0"))
    assert record.rotation == 0 and record.category_raw is None and record.schema_version == "1.0"


def test_bad_records_belong_to_the_data_error_family() -> None:
    with pytest.raises(DataError):
        ClipRecord.from_json_dict(_record(fps=0))
    assert not issubclass(SchemaVersionError, DataError)  # a whole dataset's problem, never skipped


def test_arrow_polars_and_features_describe_the_same_columns() -> None:
    arrow = arrow_schema()
    assert arrow.names == list(ClipRecord.model_fields)
    assert arrow.metadata[b"medvideocap.schema_version"] == SCHEMA_VERSION.encode()
    assert list(polars_schema().names()) == arrow.names
    features = hf_features()
    assert list(features) == arrow.names
    assert features.arrow_schema.remove_metadata().equals(arrow.remove_metadata())
    assert polars_schema()["duration"] == pl.Float64
    assert polars_schema()["width"] == pl.Int64
    assert arrow.field("scores").type.get_field_index("technical") >= 0


def test_rows_fit_every_derived_schema_and_read_back() -> None:
    record = ClipRecord.from_json_dict(_record())
    table = pa.Table.from_pylist([record.to_row()], schema=arrow_schema())
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    assert frame.schema == polars_schema()
    import datasets

    ds = datasets.Dataset(table)
    assert ds.features == hf_features()
    back = ClipRecord.from_json_dict(ds[0])
    assert back == record
    back_pl = ClipRecord.from_json_dict(frame.row(0, named=True))
    assert back_pl == record


def test_schema_files_match_the_model() -> None:
    """schemas/*.json are generated by `make schemas` (schema.write_json_schemas); regenerate on drift."""
    expected = json_schemas()
    on_disk = {p.name: json.loads(p.read_text()) for p in SCHEMAS_DIR.glob("*.json")}
    assert set(on_disk) == set(expected), "schemas/ has missing or stale files: run `make schemas`"
    for name, document in expected.items():
        assert on_disk[name] == json.loads(json.dumps(document)), (
            f"schemas/{name} drifted: run `make schemas`"
        )


def test_scores_get_returns_none_for_unknown_scores() -> None:
    assert Scores().get("aesthetic") is None
    assert Scores().get("nonexistent") is None
