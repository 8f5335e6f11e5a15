"""Versioned prompt templates.

A template is a YAML file: the wording (system + user, rendered with jinja2 in a sandbox), the response
format, the caption outputs it yields with their length bounds, and default generation parameters.
Captions record the template's name and version, so a caption can always be traced to the exact wording
that produced it; changing the wording means bumping ``version``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from medvideocap.dataset.schema import ClipRecord

Format = Literal["json", "text", "json_fields"]
_FORMATS = ("json", "text", "json_fields")
_STYLES = ("detailed", "brief", "structured", "other")
_CONTEXT_CHARS = 1500  # long descriptions/transcripts are cut: the frames, not the context, are the subject


# Other names the build recipes and users reach for; they resolve to the shipped template.
ALIASES = {"detailed": "detailed_brief", "default": "detailed_brief"}
_PIN_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+?)(?:@|-v)(?P<version>\d+)$")


class TemplateError(ValueError):
    """A prompt template file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class Output:
    """One caption a template yields: its key in the response, its style and its length bounds (words)."""

    key: str
    style: str
    min_words: int
    max_words: int


@dataclass(frozen=True)
class Template:
    name: str
    version: int
    format: Format
    outputs: tuple[Output, ...]
    system: str
    user: str
    params: dict[str, Any] = field(default_factory=dict)
    fields: tuple[str, ...] = ()
    path: str = ""

    @property
    def tag(self) -> str:
        """``name-vN``: the part of new caption names that says which wording produced them."""
        return f"{self.name}-v{self.version}"

    def render(self, record: ClipRecord, timestamps: list[float] | None, num_frames: int) -> tuple[str, str]:
        """(system, user) text for one clip; context fields the record lacks are left out."""
        src = record.source
        ctx = {
            "num_frames": num_frames,
            "timestamps": ", ".join(f"{t:.1f}" for t in timestamps) if timestamps else "unknown",
            "duration": f"{record.duration:.1f}",
            "title": _cut(src.title),
            "description": _cut(src.description),
            "transcript": _cut(src.transcript),
            "category": record.category.value,
            "fields": list(self.fields),
        }
        try:
            system, user = self._compiled
            return system.render(**ctx).strip(), user.render(**ctx).strip()
        except Exception as exc:  # jinja errors carry no file name; add it
            raise TemplateError(f"{self.path}: cannot render: {exc}") from exc

    @cached_property
    def _compiled(self) -> tuple[Any, Any]:
        env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        return env.from_string(self.system), env.from_string(self.user)


def _cut(text: str | None) -> str | None:
    if not text:
        return None
    text = " ".join(text.split())
    return text if len(text) <= _CONTEXT_CHARS else text[:_CONTEXT_CHARS].rsplit(" ", 1)[0] + " ..."


def builtin_templates() -> list[str]:
    """Names of the templates shipped in the package."""
    folder = resources.files("medvideocap.caption") / "prompts"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_template(name_or_path: str | Path) -> Template:
    """A built-in template by name (``detailed_brief``, ``brief``, ``structured``) or a YAML file path.

    ``name@N`` or ``name-vN`` (the :attr:`Template.tag` form) pins a version: it fails if the shipped template has moved on, so a rerun can never mix
    captions of two wordings under one name.
    """
    text_name = str(name_or_path)
    pinned: int | None = None
    if not Path(text_name).exists():
        pin = _PIN_RE.match(text_name)
        if pin:
            text_name, pinned = pin.group("name"), int(pin.group("version"))
        text_name = ALIASES.get(text_name, text_name)
    path = Path(text_name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise TemplateError(f"{path}: prompt template file not found")
        raw, where = path.read_text(encoding="utf-8"), str(path)
    else:
        res = resources.files("medvideocap.caption") / "prompts" / f"{text_name}.yaml"
        if not res.is_file():
            raise TemplateError(
                f"unknown prompt template {text_name!r}; built-in: {', '.join(builtin_templates())} "
                "(or pass a path to a .yaml file)"
            )
        raw, where = res.read_text(encoding="utf-8"), f"medvideocap/caption/prompts/{text_name}.yaml"
    tmpl = _parse(raw, where)
    if pinned is not None and tmpl.version != pinned:
        raise TemplateError(f"{where}: version {tmpl.version}, but version {pinned} was asked for")
    return tmpl


def _parse(raw: str, where: str) -> Template:
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise TemplateError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise TemplateError(f"{where}: expected a mapping at the top level")
    missing = [k for k in ("name", "version", "format", "outputs", "system", "user") if k not in data]
    if missing:
        raise TemplateError(f"{where}: missing keys {missing}")
    if data["format"] not in _FORMATS:
        raise TemplateError(f"{where}: format {data['format']!r} is not one of {_FORMATS}")
    outputs = []
    for key, spec in dict(data["outputs"]).items():
        spec = dict(spec or {})
        style = spec.get("style", "other")
        if style not in _STYLES:
            raise TemplateError(f"{where}: output {key!r} has style {style!r}, expected one of {_STYLES}")
        lo, hi = int(spec.get("min_words", 1)), int(spec.get("max_words", 1000))
        if not 0 < lo <= hi:
            raise TemplateError(f"{where}: output {key!r} needs 0 < min_words <= max_words")
        outputs.append(Output(str(key), style, lo, hi))
    if not outputs:
        raise TemplateError(f"{where}: no outputs")
    if data["format"] == "text" and len(outputs) != 1:
        raise TemplateError(f"{where}: format 'text' yields exactly one output")
    fields = tuple(str(f) for f in data.get("fields") or ())
    if data["format"] == "json_fields" and (not fields or len(outputs) != 1):
        raise TemplateError(f"{where}: format 'json_fields' needs a 'fields' list and exactly one output")
    return Template(
        name=str(data["name"]),
        version=int(data["version"]),
        format=data["format"],
        outputs=tuple(outputs),
        system=str(data["system"]),
        user=str(data["user"]),
        params=dict(data.get("params") or {}),
        fields=fields,
        path=where,
    )
