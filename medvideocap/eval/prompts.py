"""Prompt sets for ``medvideocap eval``: the shipped ``medgen-200`` or a user's file.

``medgen-200`` holds 200 medical prompts written for this project, spread over the dataset's five
categories in about the dataset's proportions (112 medical teaching, 52 clinical practice, 18 popular
science, 12 medical animation, 6 medical imaging), like the 200-prompt set the MedGen paper evaluates on
(which it does not publish). A prompt's ``id`` is stable, so scores of runs made months apart pair up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
DEFAULT_PROMPTS = "medgen-200"
UNCATEGORISED = "uncategorised"


class PromptError(ValueError):
    """A prompt file that cannot be read; names the file and line."""


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    category: str = UNCATEGORISED


def shipped_prompt_sets() -> list[str]:
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.jsonl"))


def load_prompts(spec: str | Path = DEFAULT_PROMPTS) -> list[Prompt]:
    """A shipped set by name, a ``.jsonl`` file (``{"id", "prompt", "category"}``; ``id`` and ``category``
    optional) or a text file with one prompt a line (ids ``p0001``...; blank lines skipped)."""
    path = Path(spec)
    if not path.is_file():
        shipped = PROMPTS_DIR / f"{spec}.jsonl"
        if not shipped.is_file():
            raise PromptError(
                f"--prompts {spec!r}: no such file, nor a shipped set (shipped: {', '.join(shipped_prompt_sets())})"
            )
        path = shipped
    prompts = _read_jsonl(path) if path.suffix == ".jsonl" else _read_text(path)
    if not prompts:
        raise PromptError(f"{path}: no prompts in the file")
    seen: dict[str, int] = {}
    for n, p in enumerate(prompts, 1):
        if p.id in seen:
            raise PromptError(f"{path}: prompt id {p.id!r} appears twice (entries {seen[p.id]} and {n})")
        seen[p.id] = n
    return prompts


def _read_text(path: Path) -> list[Prompt]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [Prompt(f"p{n:04d}", line.strip()) for n, line in enumerate(lines, 1) if line.strip()]


def _read_jsonl(path: Path) -> list[Prompt]:
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptError(f"{path}:{lineno}: not a JSON line ({exc.msg})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise PromptError(f'{path}:{lineno}: expected an object with a non-empty "prompt" string')
        pid = str(row.get("id") or f"p{lineno:04d}")
        if "/" in pid or pid.startswith("."):
            raise PromptError(f"{path}:{lineno}: prompt id {pid!r} must not contain '/' or start with '.'")
        out.append(Prompt(pid, row["prompt"].strip(), str(row.get("category") or UNCATEGORISED)))
    return out
