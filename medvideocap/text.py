"""Caption text hygiene shared by the loader's caption policy and the re-captioner."""

from __future__ import annotations

import re

# Openings LLM captioners put before the content. Matched case-insensitively at the start only;
# the remainder is re-capitalised. Ordered longest first so "In this video, we see" wins over "In this video,".
_BOILERPLATE = [
    r"(?:in|within|throughout) (?:this|the) (?:short |brief )?(?:video|clip|footage|frame sequence|sequence of frames)(?: clip)?,?\s*(?:we (?:can )?see|we observe|viewers (?:can )?see|there is|there are|it shows)?\s*",
    r"(?:this|the) (?:short |brief )?(?:video|clip|footage|animation)(?: clip)? (?:shows|depicts|features|presents|displays|captures|illustrates|demonstrates)\s*",
    r"(?:the )?(?:video|clip|footage) (?:begins|opens|starts) (?:with|by)\s*",
    r"(?:the )?frames (?:show|depict)\s*",
    r"(?:here|in the video) (?:is|we see)\s*",
]
_BOILERPLATE_RE = re.compile(r"^\s*(?:" + "|".join(_BOILERPLATE) + r")", re.IGNORECASE)


def strip_boilerplate(text: str) -> str:
    """Drop a leading "In this video," / "The video shows" style opening and recapitalise.

    finetrainers does the same for LLM captions: the opening carries no content and, kept in training
    data, teaches the model to expect it in prompts.
    """
    stripped = _BOILERPLATE_RE.sub("", text, count=1).strip()
    if not stripped or stripped == text.strip():
        return text.strip()
    return stripped[0].upper() + stripped[1:]
