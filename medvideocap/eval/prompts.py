"""Prompt sets for ``medvideocap eval``: the MedGen paper's ``medgen-paper``, the shipped ``medgen-200``,
or a user's file.

``medgen-paper`` is the authors' own ``evaluation/eval_prompt_200.txt`` (FreedomIntelligence/MedGen,
Apache-2.0), fetched once from a pinned commit, checked against its sha256 and cached, so only a run on it
is comparable with the paper's table. It is not shipped in the wheel because its authors publish it; the
cache makes every later run offline. ``medgen-200`` holds 200 medical prompts written for this project,
spread over the dataset's five categories in about the dataset's proportions (112 medical teaching, 52
clinical practice, 18 popular science, 12 medical animation, 6 medical imaging). A prompt's ``id`` is
stable, so scores of runs made months apart pair up.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvideocap.atomic import atomic_path

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
DEFAULT_PROMPTS = "medgen-200"

#: The MedGen paper's prompt set, pinned to the authors' commit and checksum.
PAPER_PROMPTS = "medgen-paper"
PAPER_REPO = "FreedomIntelligence/MedGen"
PAPER_COMMIT = "3faf0e67a7fa6a06e5c92b6221f050412d0612ad"
PAPER_FILE = "eval_prompt_200.txt"
PAPER_SHA256 = "f9c4a84aa9ab49b2d4a42bb23a6feead28100fbff6203a5fb661d436b5572968"
PAPER_URL = f"https://raw.githubusercontent.com/{PAPER_REPO}/{PAPER_COMMIT}/evaluation/{PAPER_FILE}"
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


def prompt_cache_dir() -> Path:
    """Where fetched prompt sets live: ``$MEDVIDEOCAP_CACHE/prompts``, else ``~/.cache/medvideocap/prompts``."""
    root = os.environ.get("MEDVIDEOCAP_CACHE") or Path.home() / ".cache" / "medvideocap"
    return Path(root) / "prompts"


def fetch_paper_prompts(
    cache: Path | None = None, *, url: str = PAPER_URL, sha256: str = PAPER_SHA256, timeout: float = 30.0
) -> Path:
    """The paper's prompt file, from the cache or fetched from ``url`` once; its bytes must hash to
    ``sha256`` (a mismatch is never cached). Offline (``HF_HUB_OFFLINE``/``MEDVIDEOCAP_OFFLINE``) and
    uncached is a :class:`PromptError` saying where to put the file."""
    target = (cache or prompt_cache_dir()) / f"{sha256[:16]}-{PAPER_FILE}"
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
        return target
    where = f"download {url} and pass it as --prompts FILE, or put it at {target}"
    if any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "MEDVIDEOCAP_OFFLINE")
    ):
        raise PromptError(f"--prompts {PAPER_PROMPTS}: not cached and running offline; {where}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (a pinned https URL)
            data = response.read(1 << 20)
    except (urllib.error.URLError, OSError) as exc:
        raise PromptError(f"--prompts {PAPER_PROMPTS}: cannot fetch {url} ({exc}); {where}") from exc
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise PromptError(
            f"--prompts {PAPER_PROMPTS}: {url} has sha256 {got}, not the pinned {sha256}; nothing was cached"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target


def resolve_prompt_file(spec: str | Path) -> Path:
    """The file a ``--prompts`` value names: the paper's set (fetched), a shipped set, or a path."""
    if str(spec) == PAPER_PROMPTS:
        return fetch_paper_prompts(url=PAPER_URL, sha256=PAPER_SHA256)
    path = Path(spec)
    if not path.is_file():
        shipped = PROMPTS_DIR / f"{spec}.jsonl"
        if not shipped.is_file():
            raise PromptError(
                f"--prompts {spec!r}: no such file, nor a shipped set (shipped: "
                f"{', '.join(shipped_prompt_sets())}; fetched: {PAPER_PROMPTS})"
            )
        path = shipped
    return path


def describe_prompts(spec: str | Path) -> str:
    """How a report names a prompt set: its file name and sha256, and whether it is the paper's set (the
    only one whose totals are comparable with the MedGen paper's table)."""
    path = resolve_prompt_file(spec)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    paper = digest == PAPER_SHA256
    source = f"; the MedGen paper's prompts ({PAPER_REPO}@{PAPER_COMMIT[:7]})" if paper else ""
    return f"{spec}: {PAPER_FILE if paper else path.name} (sha256 {digest}){source}"


def load_prompts(spec: str | Path = DEFAULT_PROMPTS) -> list[Prompt]:
    """The paper's set (``medgen-paper``), a shipped set by name, a ``.jsonl`` file (``{"id", "prompt",
    "category"}``; ``id`` and ``category`` optional) or a text file with one prompt a line (ids
    ``p0001``...; blank lines skipped)."""
    path = resolve_prompt_file(spec)
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


def count_truncated(tokenizer: Any, prompts: Sequence[str], limit: int) -> int:
    """How many ``prompts`` ``tokenizer`` makes longer than ``limit`` tokens (special tokens included):
    the prompts a model with that text window reads only in part."""
    return sum(
        len(tokenizer(" ".join(p.split()), add_special_tokens=True)["input_ids"]) > limit for p in prompts
    )
