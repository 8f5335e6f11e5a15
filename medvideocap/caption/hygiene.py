"""Output hygiene: turn a model's raw reply into clean caption texts, or say exactly why not.

Captions become training prompts; a refusal, a degenerate repetition loop or a "The video shows" opening
kept in the data teaches the video model the wrong thing. Every rule here raises :class:`HygieneError`
with a short reason that ends up in the run's journal next to the raw reply.

A reply is also untrusted input from a server: :func:`strip_controls` removes what would act on a
terminal or on how text is displayed (ANSI escapes, control characters, bidi overrides) before anything
is stored, and :func:`screen_reply` refuses chat-template tokens and HTML: a server that leaks its
template or answers with a web page has no caption to give, and the rest of such a reply is not
worth keeping either (only its start is recorded, :func:`reply_head`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from medvideocap.text import strip_boilerplate

from .templates import Output, Template


class HygieneError(ValueError):
    """A reply that cannot be used as a caption; ``kind`` is refusal, garbled, empty, length, unparseable
    or markup."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


# Openings of replies that decline the task or say the images did not arrive.
_REFUSAL_RE = re.compile(
    r"^\W*(?:"
    r"(?:i'?m|i am) (?:sorry|afraid|unable|not able)|"
    r"sorry,? (?:but )?i|"
    r"i (?:can(?:'|no)?t|cannot|can not|won'?t|apologi[sz]e)|"
    r"unfortunately,? i|"
    r"as an ai\b|"
    r"i do not (?:see|have access)|i don'?t (?:see|have access)"
    r")",
    re.IGNORECASE,
)
# Phrases that betray a refusal or missing input wherever they occur.
_REFUSAL_ANYWHERE_RE = re.compile(
    r"\b(?:i (?:can(?:'|no)?t|cannot|am unable to|'m unable to) (?:assist|help|provide|comply|"
    r"describe|view|see|process|analy[sz]e)|"
    r"no (?:images|frames|video) (?:were|was|have been) (?:provided|attached|uploaded)|"
    r"(?:images|frames) (?:were|are) not (?:provided|attached|visible))",
    re.IGNORECASE,
)
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]")
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)|[。！？]")
_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*|\s*```\s*$")
_LABEL_RE = (
    r"(?:\*\*|#+\s*)?{label}(?:\s+caption)?\s*"
    r"(?:\*\*\s*[:\-]|[:\-]\s*\*\*|[:\-]|\*\*|(?=$))[ \t]*"
)

REPLY_HEAD_CHARS = 1024
"""How much of a reply is recorded when the rest is not kept (markup, an oversized reply)."""

# ANSI/VT escape sequences (CSI, OSC, and the two-character ones), removed whole so no "[31m" is left.
_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")
# C0 and C1 controls except tab and line breaks, and the Unicode bidi controls (embeddings, overrides,
# isolates, marks) that reorder how a caption is displayed ("Trojan Source", CVE-2021-42574).
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Special tokens of chat templates (ChatML/Qwen/Llama 3 "<|...|>", DeepSeek's full-width bars, Llama 2's
# [INST]/<<SYS>>) and HTML: tags (which also covers "<s>", "</s>", Gemma's "<start_of_turn>"), comments,
# doctypes, CDATA, processing instructions. A tag needs a letter right after "<" and a closing ">" with
# no "<" between, so "<90 mmHg" or "a < b" never match.
_MARKUP_RE = re.compile(
    r"<\|[^|<>\n]{1,64}\|>|<\uff5c[^\uff5c<>\n]{1,64}\uff5c>|\[/?INST\]|<</?SYS>>|"
    r"<!--|<![A-Za-z\[]|<\?[A-Za-z]|</?[A-Za-z][\w:-]*(?:\s[^<>]{0,200})?/?>"
)


def strip_controls(text: str) -> str:
    """``text`` without ANSI escape sequences, control characters (tab and line breaks stay) and bidi
    controls: what a reply may carry that acts on a terminal or on how the text is displayed."""
    return _CONTROL_RE.sub("", _ANSI_RE.sub("", text))


def reply_head(text: str, limit: int = REPLY_HEAD_CHARS) -> str:
    """The start of a reply, controls stripped, for the record of a reply that is not kept."""
    text = strip_controls(text)
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text) - limit} more characters]"


def screen_reply(raw: str) -> str:
    """``raw`` with its controls stripped; raises a ``markup`` :class:`HygieneError` when it holds a
    chat-template token or HTML. Applied to every reply before it is parsed, quality checks on or off:
    such a reply is never a caption."""
    text = strip_controls(raw)
    found = _MARKUP_RE.search(text)
    if found:
        raise HygieneError(
            "markup",
            f"markup in reply: {found.group()[:40]!r} at character {found.start()} (a chat-template token "
            "or HTML); check the server's chat template and stop tokens",
        )
    return text


def is_refusal(text: str) -> bool:
    """True for replies that decline the task ("I'm sorry, I can't ...")."""
    head = text.replace("\u2019", "'").strip().strip('"').strip()  # GPT-4o writes "I’m sorry"
    return bool(_REFUSAL_RE.match(head) or _REFUSAL_ANYWHERE_RE.search(head[:400]))


def garbled_reason(text: str) -> str | None:
    """Why ``text`` is not language, or None. Catches the failure modes of small or overloaded models:
    too few letters, one token repeated, a phrase looping, replacement characters."""
    stripped = text.strip()
    if not stripped:
        return "empty"
    if "\ufffd" in stripped:
        return "contains U+FFFD replacement characters (broken decoding)"
    visible = [c for c in stripped if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    if letters < 0.6 * len(visible):
        return f"only {letters} of {len(visible)} characters are letters"
    words = re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", stripped.lower())
    if len(words) >= 8:
        top, count = Counter(words).most_common(1)[0]
        if count > max(4, 0.3 * len(words)) and len(top) > 3 or count > 0.5 * len(words):
            return f"the word {top!r} makes up {count} of {len(words)} words"
        for n in (2, 3, 4, 5, 6):
            grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
            gram, reps = Counter(grams).most_common(1)[0]
            if reps >= 4 and reps * n > 0.4 * len(words):
                return f"the phrase {gram!r} repeats {reps} times"
    return None


def word_count(text: str) -> int:
    """Words for the length bounds; runs of CJK characters count as about 1.5 characters per word, so
    bounds mean the same for a caption written in Chinese or Japanese."""
    n = 0
    for tok in text.split():
        cjk = len(_CJK_RE.findall(tok))
        n += max(1, round(cjk / 1.5)) if cjk else 1
    return n


def _bound(text: str, out: Output) -> str:
    n = word_count(text)
    if n < out.min_words:
        raise HygieneError("length", f"{out.key}: {n} words, fewer than {out.min_words}")
    if n <= out.max_words:
        return text
    # Too long: keep whole sentences up to the bound; a reply with no sentence end inside it is a runaway.
    kept = ""
    for m in _SENTENCE_END_RE.finditer(text):
        head = text[: m.end()].strip()
        if word_count(head) > out.max_words:
            break
        kept = head
    if word_count(kept) < max(out.min_words, out.max_words // 2):
        raise HygieneError("length", f"{out.key}: {n} words, more than {out.max_words}")
    return kept


def clean_caption(text: str, out: Output) -> str:
    """One caption text: refusal and garbage checks, boilerplate opening stripped, length bounds.
    Screened again (:func:`screen_reply`): a JSON string can spell controls and markup in escapes."""
    text = " ".join(screen_reply(str(text)).split()).strip().strip('"').strip()
    if not text:
        raise HygieneError("empty", f"{out.key}: empty caption")
    if is_refusal(text):
        raise HygieneError("refusal", f"{out.key}: {text[:80]!r}")
    reason = garbled_reason(text)
    if reason:
        raise HygieneError("garbled", f"{out.key}: {reason}")
    return _bound(strip_boilerplate(text), out)


def _json_object(raw: str) -> dict[str, Any] | None:
    body = _FENCE_RE.sub("", raw.strip())
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        obj = json.loads(body[start : end + 1])
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _sections(raw: str, keys: list[str]) -> dict[str, str]:
    """``Detailed: ... Brief: ...`` or markdown-headed sections, the usual shape when JSON is ignored."""
    labels = "|".join(re.escape(k) for k in keys)
    pattern = re.compile(r"(?im)^\s*" + _LABEL_RE.format(label=f"(?P<key>{labels})") + r"(?P<rest>.*)$")
    found: dict[str, str] = {}
    matches = list(pattern.finditer(raw))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(raw)
        body = (m.group("rest") + raw[m.end() : end]).strip()
        found.setdefault(m.group("key").lower(), body)
    return found


def parse_reply(raw: str, template: Template) -> dict[str, str]:
    """The clean caption texts of one reply, keyed by output key; raises :class:`HygieneError`."""
    raw = screen_reply(raw)
    if not raw or not raw.strip():
        raise HygieneError("empty", "empty reply")
    if is_refusal(raw):
        raise HygieneError("refusal", repr(raw.strip()[:120]))
    if template.format == "text":
        out = template.outputs[0]
        body = _FENCE_RE.sub("", raw.strip())
        labelled = _sections(body, [out.key])
        text = labelled.get(out.key, body)
        return {out.key: clean_caption(text, out)}
    obj = _json_object(raw)
    if template.format == "json_fields":
        out = template.outputs[0]
        if obj is None:
            raise HygieneError("unparseable", "no JSON object in the reply")
        missing = [f for f in template.fields if f not in obj]
        if missing:
            raise HygieneError("unparseable", f"JSON object lacks fields {missing}")
        fields = {f: " ".join(screen_reply(str(obj[f])).split()) for f in template.fields}
        prose = " ".join(v for v in fields.values() if v.lower() not in ("none", "n/a", ""))
        if is_refusal(prose):
            raise HygieneError("refusal", repr(prose[:120]))
        reason = garbled_reason(prose) if prose else None
        if reason:
            raise HygieneError("garbled", f"{out.key}: {reason}")
        _bound(prose, out)
        return {out.key: json.dumps(fields, ensure_ascii=False)}
    keys = [o.key for o in template.outputs]
    texts: dict[str, Any]
    if obj is not None:
        lowered = {str(k).lower(): v for k, v in obj.items()}
        texts = {k: lowered.get(k, lowered.get(f"{k}_caption")) for k in keys}
    else:
        texts = _sections(raw, keys)
    missing = [k for k in keys if not isinstance(texts.get(k), str) or not texts[k].strip()]
    if missing:
        how = "JSON object" if obj is not None else "reply (no JSON object, no labelled sections)"
        raise HygieneError("unparseable", f"{how} lacks {missing}")
    return {o.key: clean_caption(texts[o.key], o) for o in template.outputs}
