"""``--where`` filters: a small expression language over record fields, parsed here and never eval'd.

    category == "clinical_practice" and scores.aesthetic >= 4.5
    duration < 9 or not (source.title == null)
    "suture" in caption.detailed and category in ["clinical_practice", "medical_teaching"]

Fields are record paths (``id``, ``duration``, ``category``, ``source.title``, ``scores.<name>`` including
extra named scores, ``caption.<name>`` for a caption's text). Operators: ``== != < <= > >= in, not in,
and, or, not``, parentheses; literals: strings, numbers, ``true false null`` and ``[...]`` lists.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

from medvideocap.dataset.schema import ClipRecord

Predicate = Callable[[ClipRecord], bool]


class WhereError(ValueError):
    """A filter expression that does not parse or names an unknown field; says where and why."""


_TOKEN_RE = re.compile(
    r"\s*(?:(?P<num>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<str>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
    r"|(?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)|(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_\-]+)*))"
)
_COMPARE = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_CONSTANTS = {"true": True, "True": True, "false": False, "False": False, "null": None, "None": None}
_KEYWORDS = {"and", "or", "not", "in"}


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            raise WhereError(f"--where {text!r}: cannot read at column {pos + 1}: {text[pos : pos + 20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


def _resolve(path: str) -> Callable[[ClipRecord], Any]:
    head, _, rest = path.partition(".")
    if head == "caption":
        if not rest:
            raise WhereError("caption needs a name: caption.detailed, caption.brief, ...")
        return lambda r: r.caption(rest)
    if head == "scores" and rest:
        return lambda r: r.scores.get(rest)
    if head not in ClipRecord.model_fields:
        known = ", ".join([*ClipRecord.model_fields, "caption.<name>"])
        raise WhereError(f"unknown field {path!r} in --where; known fields: {known}")
    parts = rest.split(".") if rest else []

    def get(record: ClipRecord) -> Any:
        value: Any = getattr(record, head)
        for part in parts:
            if value is None:
                return None
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        return str(value) if isinstance(value, str) else value  # StrEnum -> its plain value

    return get


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def fail(self, what: str) -> WhereError:
        tok = self.peek()
        where = f"at column {tok[2] + 1} ({tok[1]!r})" if tok else "at the end"
        return WhereError(f"--where {self.text!r}: {what} {where}")

    def take(self, value: str) -> bool:
        tok = self.peek()
        if tok and tok[1] == value and tok[0] in ("op", "name"):
            self.i += 1
            return True
        return False

    def parse(self) -> Predicate:
        if not self.toks:
            raise WhereError("--where expression is empty")
        fn = self.or_()
        if self.peek() is not None:
            raise self.fail("unexpected token")
        return lambda r: bool(fn(r))

    def or_(self) -> Callable[[ClipRecord], Any]:
        terms = [self.and_()]
        while self.take("or"):
            terms.append(self.and_())
        return terms[0] if len(terms) == 1 else (lambda r: any(t(r) for t in terms))

    def and_(self) -> Callable[[ClipRecord], Any]:
        terms = [self.not_()]
        while self.take("and"):
            terms.append(self.not_())
        return terms[0] if len(terms) == 1 else (lambda r: all(t(r) for t in terms))

    def not_(self) -> Callable[[ClipRecord], Any]:
        if self.take("not"):
            inner = self.not_()
            return lambda r: not inner(r)
        return self.compare()

    def compare(self) -> Callable[[ClipRecord], Any]:
        left = self.operand()
        tok = self.peek()
        if tok and tok[0] == "op" and tok[1] in _COMPARE:
            self.i += 1
            op, right = _COMPARE[tok[1]], self.operand()

            def cmp(r: ClipRecord) -> bool:
                a, b = left(r), right(r)
                if tok[1] in ("==", "!="):
                    return bool(op(a, b))
                try:
                    return bool(op(a, b))
                except TypeError:  # null or mismatched types never satisfy an ordering
                    return False

            return cmp
        negate = False
        if tok and tok[1] == "not" and self.i + 1 < len(self.toks) and self.toks[self.i + 1][1] == "in":
            self.i += 1
            negate = True
        if self.take("in"):
            right = self.operand()

            def contains(r: ClipRecord) -> bool:
                a, b = left(r), right(r)
                try:
                    found = a is not None and b is not None and a in b
                except TypeError:
                    found = False
                return found != negate

            return contains
        if negate:
            raise self.fail("expected 'in'")
        return left

    def operand(self) -> Callable[[ClipRecord], Any]:
        tok = self.peek()
        if tok is None:
            raise self.fail("expected a value")
        kind, value, _ = tok
        self.i += 1
        if kind == "num":
            num = float(value) if any(c in value for c in ".eE") else int(value)
            return lambda r: num
        if kind == "str":
            text = re.sub(r"\\(.)", r"\1", value[1:-1])
            return lambda r: text
        if kind == "op" and value == "(":
            inner = self.or_()
            if not self.take(")"):
                raise self.fail("expected ')'")
            return inner
        if kind == "op" and value == "[":
            items = []
            while not self.take("]"):
                items.append(self.operand())
                if not self.take(",") and (self.peek() or ("", "", 0))[1] != "]":
                    raise self.fail("expected ',' or ']'")
            return lambda r: [f(r) for f in items]
        if kind == "name":
            if value in _CONSTANTS:
                const = _CONSTANTS[value]
                return lambda r: const
            if value in _KEYWORDS:
                self.i -= 1
                raise self.fail("expected a value")
            return _resolve(value)
        self.i -= 1
        raise self.fail("expected a value")


def compile_where(expression: str) -> Predicate:
    """A predicate over :class:`ClipRecord` for ``expression``; raises :class:`WhereError` when invalid."""
    return _Parser(expression).parse()
