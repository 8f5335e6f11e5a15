"""Captioning clips with a multimodal LLM: the protocol, backends, prompts, hygiene and the run journal.

``make_captioner("openai" | "transformers", **options)`` gives a :class:`Captioner`;
``sample_frames(video, n)`` gives the evenly spaced frames it looks at.
"""

from __future__ import annotations

from .base import DEFAULT_TEMPLATE, BaseCaptioner, Captioner, CaptionResult, make_captioner
from .hygiene import HygieneError, clean_caption, garbled_reason, is_refusal, parse_reply
from .sampling import FrameError, sample_frames
from .templates import Template, TemplateError, builtin_templates, load_template

__all__ = [
    "DEFAULT_TEMPLATE",
    "BaseCaptioner",
    "CaptionResult",
    "Captioner",
    "FrameError",
    "HygieneError",
    "Template",
    "TemplateError",
    "builtin_templates",
    "clean_caption",
    "garbled_reason",
    "is_refusal",
    "load_template",
    "make_captioner",
    "parse_reply",
    "sample_frames",
]
