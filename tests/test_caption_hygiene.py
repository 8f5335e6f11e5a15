"""Output hygiene pinned with replies shaped like those real captioners (GPT-4o, Qwen2.5-VL, small
served models under load) actually produce."""

from __future__ import annotations

import json

import pytest

from medvideocap.caption import HygieneError, garbled_reason, is_refusal, load_template, parse_reply
from medvideocap.caption.hygiene import clean_caption
from medvideocap.caption.templates import Output

DETAILED = (
    "A surgeon's gloved hands work inside an open abdominal cavity under bright operating-room light. "
    "The left hand holds curved forceps that lift a fold of pink tissue while the right hand passes a "
    "needle driver with a curved needle and dark suture through the tissue edge. Blue surgical drapes "
    "frame the field, and a metal retractor holds the incision open at the top of the frame. The camera "
    "stays close and static as the surgeon pulls the suture through and begins to tie a knot."
)
BRIEF = "Gloved hands suture tissue inside an open abdomen with forceps and a needle driver."
TMPL = load_template("detailed_brief")


def test_json_reply_in_a_markdown_fence_is_parsed():
    raw = "```json\n" + json.dumps({"detailed": DETAILED, "brief": BRIEF}) + "\n```"
    assert parse_reply(raw, TMPL) == {"detailed": DETAILED, "brief": BRIEF}


def test_json_with_chatter_around_it_and_caption_suffixed_keys():
    raw = (
        "Here is the JSON you asked for:\n"
        + json.dumps({"detailed_caption": DETAILED, "brief_caption": BRIEF})
        + "\nLet me know if you need anything else."
    )
    assert parse_reply(raw, TMPL)["brief"] == BRIEF


def test_labelled_sections_when_the_model_ignores_the_json_instruction():
    raw = f"**Detailed caption:** {DETAILED}\n\n**Brief caption:** {BRIEF}\n"
    assert parse_reply(raw, TMPL) == {"detailed": DETAILED, "brief": BRIEF}
    raw = f"### Detailed\n{DETAILED}\n### Brief\n{BRIEF}"
    assert parse_reply(raw, TMPL) == {"detailed": DETAILED, "brief": BRIEF}


def test_boilerplate_openings_are_stripped_and_recapitalised():
    raw = json.dumps(
        {
            "detailed": "In this video, we see " + DETAILED[0].lower() + DETAILED[1:],
            "brief": "The video shows gloved hands suturing tissue inside an open abdomen.",
        }
    )
    got = parse_reply(raw, TMPL)
    assert got["detailed"] == DETAILED
    assert got["brief"] == "Gloved hands suturing tissue inside an open abdomen."


@pytest.mark.parametrize(
    "reply",
    [
        "I'm sorry, but I can't help with identifying or describing this medical content.",
        "I’m sorry, I can’t assist with that.",
        "Sorry, I cannot provide a description of these images.",
        "As an AI language model, I am not able to view videos.",
        "Unfortunately, I don't see any images attached to your message.",
        '{"detailed": "I cannot describe medical procedures in detail.", "brief": "I cannot help."}',
    ],
)
def test_refusals_are_rejected(reply):
    with pytest.raises(HygieneError) as err:
        parse_reply(reply, TMPL)
    assert err.value.kind == "refusal"


def test_refusal_detection_does_not_fire_on_clinical_prose():
    assert not is_refusal(DETAILED)
    assert not is_refusal("A patient who cannot move the left arm is examined by a physiotherapist.")


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ('{"detailed": "", "brief": "Hands suture tissue."}', "unparseable"),
        ('{"detailed": "Hands.", "brief"', "unparseable"),  # cut-off JSON, no sections either
        (
            "The surgeon the surgeon the surgeon the surgeon the surgeon the surgeon the surgeon the surgeon",
            "unparseable",
        ),
    ],
)
def test_empty_and_malformed_replies(reply, kind):
    with pytest.raises(HygieneError) as err:
        parse_reply(reply, TMPL)
    assert err.value.kind == kind


@pytest.mark.parametrize(
    "text",
    [
        "the the the the the the the the the the the the",
        "suture knot suture knot suture knot suture knot suture knot suture knot",
        "0.00 0.00 0.00 0.00 ### ### 1 2 3 4 5 6 7 8 9",
        "A surgeon \ufffd\ufffd holds forceps above the tissue near the incision line today.",
        "surgeon surgeon surgeon surgeon surgeon surgeon forceps tissue hand light",
    ],
)
def test_garbled_text_is_detected(text):
    assert garbled_reason(text) is not None


def test_real_captions_are_not_garbled():
    assert garbled_reason(DETAILED) is None
    assert garbled_reason(BRIEF) is None
    assert garbled_reason("CT scan slices of the chest scroll from apex to base, 2 mm apart.") is None


def test_garbled_field_inside_valid_json_is_rejected():
    raw = json.dumps({"detailed": "tissue " * 60, "brief": BRIEF})
    with pytest.raises(HygieneError) as err:
        parse_reply(raw, TMPL)
    assert err.value.kind == "garbled"


def test_length_bounds_short_fails_long_is_cut_at_a_sentence():
    out = Output("brief", "brief", min_words=4, max_words=20)
    with pytest.raises(HygieneError) as err:
        clean_caption("Surgery.", out)
    assert err.value.kind == "length"
    long = (
        "Gloved hands tie a surgical knot over pink tissue. The camera stays close to the field. "
        "Blue drapes surround the incision while a nurse hands over scissors and a sponge."
    )
    kept = clean_caption(long, out)
    assert kept.endswith(".") and len(kept.split()) <= 20
    assert kept.startswith("Gloved hands tie a surgical knot")
    runaway = "Gloved hands tie a surgical knot over pink tissue while " + " ".join(DETAILED.split()[:25])
    runaway = runaway.replace(".", ",")
    with pytest.raises(HygieneError):
        clean_caption(runaway, out)


def test_detailed_below_template_minimum_fails():
    raw = json.dumps({"detailed": "Hands suture tissue.", "brief": BRIEF})
    with pytest.raises(HygieneError) as err:
        parse_reply(raw, TMPL)
    assert err.value.kind == "length"


def test_brief_template_takes_plain_text_and_strips_quotes_and_labels():
    brief = load_template("brief")
    assert parse_reply(f'"{BRIEF}"', brief) == {"brief": BRIEF}
    assert parse_reply(f"Brief caption: {BRIEF}", brief) == {"brief": BRIEF}


def test_structured_template_needs_every_field():
    tmpl = load_template("structured")
    fields = {f: "none" for f in tmpl.fields}
    fields.update(
        setting="operating room", actions="suturing tissue with a curved needle", anatomy="abdominal wall"
    )
    got = parse_reply("```json\n" + json.dumps(fields) + "\n```", tmpl)
    assert json.loads(got["structured"])["anatomy"] == "abdominal wall"
    del fields["camera"]
    with pytest.raises(HygieneError, match="camera"):
        parse_reply(json.dumps(fields), tmpl)


def test_length_bounds_hold_for_captions_without_spaces():
    out = Output("brief", "brief", min_words=4, max_words=20)
    zh = "戴手套的双手在腹腔内用持针器缝合组织。"  # 19 characters, about 12 words
    assert clean_caption(zh, out) == zh
    long = zh + "蓝色手术巾覆盖在切口周围，镜头保持静止。" * 2
    assert clean_caption(long, out) == zh  # cut after the first full sentence
    with pytest.raises(HygieneError):
        clean_caption("缝合。", out)


def test_decimal_points_are_not_sentence_ends():
    out = Output("brief", "brief", min_words=3, max_words=12)
    text = "A 2.5 mm trocar enters the abdomen under camera view. Then the surgeon inserts a grasper slowly."
    assert clean_caption(text, out) == "A 2.5 mm trocar enters the abdomen under camera view."
