"""Caption text hygiene shared by the loader and the re-captioner (``medvideocap/text.py``)."""

from __future__ import annotations

import pytest

from medvideocap.text import strip_boilerplate


@pytest.mark.parametrize(
    "raw,clean",
    [
        ("In this video, we see a surgeon suturing skin.", "A surgeon suturing skin."),
        ("The video shows an ultrasound probe on the neck.", "An ultrasound probe on the neck."),
        ("This clip depicts CPR on a mannequin.", "CPR on a mannequin."),
        ("The frames show a cell dividing.", "A cell dividing."),
    ],
)
def test_a_captioners_opening_is_dropped_and_the_rest_recapitalised(raw: str, clean: str) -> None:
    assert strip_boilerplate(raw) == clean


@pytest.mark.parametrize(
    "text",
    ["A surgeon shows the incision.", "Video laryngoscopy of the vocal cords.", "In this video,"],
)
def test_captions_without_an_opening_or_with_nothing_after_it_are_kept(text: str) -> None:
    assert strip_boilerplate(text) == text


def test_only_the_start_is_touched() -> None:
    text = "A nurse explains: the video shows how to flush a line."
    assert strip_boilerplate(text) == text
