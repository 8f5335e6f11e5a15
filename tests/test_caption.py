"""Captioner building blocks: frame sampling, prompt templates, the run journal and --where filters."""

from __future__ import annotations

import os

import pytest
from fixtures_caption import record
from videos import make_video, real_clip

from medvideocap.caption import FrameError, TemplateError, builtin_templates, load_template, sample_frames
from medvideocap.caption.where import WhereError, compile_where
from medvideocap.dataset.schema import Caption, Scores

# --- frames -----------------------------------------------------------------------------------------


def test_sample_frames_are_evenly_spaced_and_timestamped(tiny_clip):
    images, ts = sample_frames(tiny_clip, 8)
    assert ts == [0.125, 0.375, 0.625, 0.875, 1.125, 1.375, 1.625, 1.875]  # 2 s at 8 fps: slice centres
    assert [im.info["timestamp"] for im in images] == ts
    assert all(im.mode == "RGB" and im.size == (64, 48) for im in images)
    assert len({im.tobytes() for im in images}) == 8  # testsrc2 moves: eight distinct frames


def test_sample_frames_from_bytes_equals_from_path(tiny_clip):
    a, ta = sample_frames(tiny_clip, 3)
    b, tb = sample_frames(tiny_clip.read_bytes(), 3)
    assert ta == tb == [0.375, 1.0, 1.625]
    assert [x.tobytes() for x in a] == [y.tobytes() for y in b]


def test_sample_frames_on_a_real_clip_spans_its_length(tmp_path):
    images, ts = sample_frames(real_clip("bikes.mp4", tmp_path), 8)
    assert len(images) == 8 and ts == sorted(ts)
    gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
    assert max(gaps) - min(gaps) < 0.1  # evenly spaced to within a frame


def test_short_clip_gives_fewer_frames_not_duplicates(tmp_path):
    clip = make_video(tmp_path / "short.mp4", seconds=0.5, fps=8)  # 4 frames
    images, ts = sample_frames(clip, 8)
    assert len(ts) == len(set(ts)) == 4


def test_undecodable_video_names_the_input(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(200))
    with pytest.raises(FrameError, match="broken.mp4"):
        sample_frames(bad)


# --- templates --------------------------------------------------------------------------------------


def test_builtin_templates_are_versioned_and_render_context():
    assert {"detailed_brief", "brief", "structured"} <= set(builtin_templates())
    tmpl = load_template("detailed_brief")
    assert tmpl.version >= 1 and tmpl.tag == f"detailed_brief-v{tmpl.version}"
    assert [o.key for o in tmpl.outputs] == ["detailed", "brief"]
    system, user = tmpl.render(record(), [0.5, 1.5], 2)
    assert "Laparoscopic suturing basics" in user and "pass the needle" in user and "0.5, 1.5" in user
    assert "diagnos" in user.lower() or "diagnos" in system.lower()
    _, bare = tmpl.render(
        record(title=None).model_copy(
            update={"source": record().source.model_copy(update={"title": None, "transcript": None})}
        ),
        None,
        8,
    )
    assert "Title" not in bare and "Speech" not in bare


def test_template_version_pin_and_custom_file(tmp_path):
    assert load_template("brief@1").version == 1
    assert load_template("detailed_brief-v1").tag == "detailed_brief-v1"  # a caption's tag loads its template
    assert load_template("detailed-v1").name == "detailed_brief"  # the build recipe's spelling
    with pytest.raises(TemplateError, match="version 1"):
        load_template("brief@9")
    custom = tmp_path / "german.yaml"
    custom.write_text(
        "name: brief_de\nversion: 3\nformat: text\noutputs:\n  brief: {style: brief, min_words: 3, max_words: 40}\n"
        "system: Du beschreibst medizinische Videos.\nuser: 'Beschreibe die {{ num_frames }} Bilder in einem Satz.'\n",
        encoding="utf-8",
    )
    tmpl = load_template(custom)
    assert tmpl.tag == "brief_de-v3"
    assert tmpl.render(record(), None, 8)[1] == "Beschreibe die 8 Bilder in einem Satz."
    with pytest.raises(TemplateError, match="unknown prompt template"):
        load_template("no_such_template")
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "name: x\nversion: 1\nformat: xml\noutputs: {a: {}}\nsystem: s\nuser: u\n", encoding="utf-8"
    )
    with pytest.raises(TemplateError, match="broken.yaml.*format"):
        load_template(broken)


def test_templates_cannot_reach_python_internals(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text(
        "name: e\nversion: 1\nformat: text\noutputs: {brief: {}}\nsystem: s\n"
        'user: "{{ fields.__class__.__mro__[1].__subclasses__() }}"\n',
        encoding="utf-8",
    )
    with pytest.raises(TemplateError, match="cannot render"):
        load_template(evil).render(record(), None, 8)


# --- where ------------------------------------------------------------------------------------------


def _rec():
    r = record().with_caption(Caption(name="detailed", text="Gloved hands tie a suture knot."))
    return r.model_copy(update={"scores": Scores(aesthetic=5.1, technical=0.7), "duration": 8.5})


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('category == "clinical_practice"', True),
        ("category == 'medical_imaging'", False),
        ('category in ["clinical_practice", "medical_teaching"]', True),
        ('category not in ["clinical_practice"]', False),
        ("scores.aesthetic >= 5 and duration < 9", True),
        ("scores.aesthetic >= 5 and not duration < 9", False),
        ("scores.sharpness > 1 or width == 64", True),
        ("scores.sharpness > 1", False),  # null never satisfies an ordering
        ("source.url == null", True),
        ('"suture" in caption.detailed', True),
        ('"suture" in caption.brief', False),  # no such caption
        ("(duration > 100 or fps == 8) and id != 'x'", True),
        ("duration > 1e1", False),
    ],
)
def test_where_expressions(expr, expected):
    assert compile_where(expr)(_rec()) is expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("categroy == 'x'", "unknown field 'categroy'"),
        ("category ==", "expected a value"),
        ("(duration > 1", "expected '\\)'"),
        ("__import__('os').system('true')", "cannot read"),
        ("__import__ == 1", "unknown field '__import__'"),
        ("duration > 1; rm", "cannot read"),
        ("category = 'x'", "cannot read"),
        ("", "empty"),
    ],
)
def test_where_rejects_bad_expressions(expr, message):
    with pytest.raises(WhereError, match=message):
        compile_where(expr)
