"""The commonest JavaScript conditions, decided in Python where the answer is certain.

Most handlers' conditions compare fields of the message with literals: `$.type == 'ALARM'`,
`$.severity >= 3 && $.site !== 'lab'`. Running each of those in QuickJS means serialising the
message, a round trip to the evaluator process (agents.evaluator_process) and parsing it again
there: on the filter path that was most of the worker's cost per record (issue 16's profile
of F). `compile_native` recognises a small grammar of such conditions:

    condition  := or
    or         := and ('||' and)*
    and        := unary ('&&' unary)*
    unary      := '!' ('(' or ')' | unary) | '(' or ')' | comparison
    comparison := path OP literal | literal OP path
    OP         := '==' | '!=' | '===' | '!==' | '<' | '<=' | '>' | '>='
    path       := '$' ('.' name | '[' string ']' | '[' integer ']')*
    literal    := 'string' | "string" (no backslash) | number | true | false | null

and returns a `NativeCondition` whose `decide(message)` answers True or False only where
JavaScript's answer on `JSON.parse(to_json(message))` is certain with these few rules (for a
message as Herald's decoders give it: orjson's JSON, whose integers fit 64 bits, and Avro's
values, which `to_json` writes with orjson; a non-finite float becomes null there), and
None ("defer") everywhere else: a value of a type JSON does not have (Avro's Decimal, bytes,
datetimes), a non-finite float, an integer beyond 2^53, a comparison across types whose
JavaScript coercion is not spelled out here (a number with a string, a boolean with a number,
an object with anything), a path through something that is not an object or an array (where
JavaScript gives undefined or throws a TypeError whose text the dead letter should carry). A
deferred record goes to QuickJS as before, so the verdict and any error are JavaScript's own.
Names that objects inherit in JavaScript (`constructor`, `toString`, `__proto__`, ...) and
`length` are never compiled natively: a plain dict lookup would miss them.

Nothing here runs handler authors' code: it is a lookup and a comparison per clause, linear in
the condition's size, so it needs neither the sandbox nor the evaluator process. The
differential test (tests/unit/test_native_conditions.py) holds it to QuickJS on generated
conditions and messages.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: A decision: True, False, or None for "ask JavaScript".
Decision = bool | None

#: Property names every JavaScript object has through its prototype (Object.prototype's own
#: names in QuickJS) and `length`: a path naming one is left to JavaScript.
INHERITED_NAMES = frozenset(
    {
        "constructor",
        "__proto__",
        "toString",
        "toLocaleString",
        "valueOf",
        "hasOwnProperty",
        "isPrototypeOf",
        "propertyIsEnumerable",
        "__defineGetter__",
        "__defineSetter__",
        "__lookupGetter__",
        "__lookupSetter__",
        "length",
    }
)
#: Integers JavaScript's doubles hold exactly; beyond, JSON.parse rounds and `==` differs.
SAFE_INTEGER = 2**53
#: A dict key that a non-string key could stringify to (`to_json` writes int, float, bool and
#: None keys as text): a missing such name may still be present for JavaScript.
_KEY_LIKE_TEXT = re.compile(r"-?\d.*|true|false|null|NaN|-?Infinity")

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<op>===|!==|==|!=|<=|>=|&&|\|\||[<>!()\[\].$])
    | (?P<number>-?\d+(?:\.\d+)?(?![\w$.]))
    | '(?P<sq>[^'\\\n]*)'
    | "(?P<dq>[^"\\\n]*)"
    | (?P<name>[A-Za-z_][\w$]*)
    )""",
    re.VERBOSE,
)
_EQUALITY = ("==", "!=", "===", "!==")
_ORDER = ("<", "<=", ">", ">=")
_SWAPPED = {
    "<": ">",
    "<=": ">=",
    ">": "<",
    ">=": "<=",
    "==": "==",
    "!=": "!=",
    "===": "===",
    "!==": "!==",
}


class _Missing:
    """JavaScript's undefined: the value of a property an object does not have."""

    __slots__ = ()


MISSING = _Missing()
_DEFER = object()  # a path step JavaScript would take differently


class NotNative(Exception):
    """The condition is outside the grammar: QuickJS evaluates it."""


@dataclass(frozen=True, slots=True)
class NativeCondition:
    """A compiled native condition; `decide` per message."""

    source: str
    decide: Callable[[Any], Decision]


def compile_native(source: str) -> NativeCondition | None:
    """The native form of `source` (an expression, trailing semicolons allowed), or None when
    it is outside the grammar."""
    text = source.strip().rstrip(";").strip()
    try:
        tokens = _tokens(text)
        parser = _Parser(tokens)
        decide = parser.parse_or()
        if parser.position != len(tokens):
            raise NotNative("trailing tokens")
    except NotNative:
        return None
    return NativeCondition(source, decide)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            if text[position:].strip() == "":
                break
            raise NotNative(f"unexpected text at {position}")
        kind = match.lastgroup
        assert kind is not None
        value = match.group(kind)
        if kind == "dq":
            kind = "sq"
        tokens.append((kind, value))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.position = 0

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> tuple[str, str]:
        token = self._peek()
        if token is None:
            raise NotNative("unexpected end")
        self.position += 1
        return token

    def _accept(self, op: str) -> bool:
        if self._peek() == ("op", op):
            self.position += 1
            return True
        return False

    def parse_or(self) -> Callable[[Any], Decision]:
        parts = [self.parse_and()]
        while self._accept("||"):
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else _any_of(parts)

    def parse_and(self) -> Callable[[Any], Decision]:
        parts = [self.parse_unary()]
        while self._accept("&&"):
            parts.append(self.parse_unary())
        return parts[0] if len(parts) == 1 else _all_of(parts)

    def parse_unary(self) -> Callable[[Any], Decision]:
        if self._accept("!"):
            # `!` binds tighter than a comparison (`!$.a == 1` is `(!$.a) == 1`): compiled
            # only before a parenthesis or another `!`.
            if self._peek() not in (("op", "("), ("op", "!")):
                raise NotNative("! before a comparison")
            inner = self.parse_unary()
            return lambda message: None if (d := inner(message)) is None else not d
        if self._accept("("):
            inner = self.parse_or()
            if not self._accept(")"):
                raise NotNative("unclosed parenthesis")
            return inner
        return self.parse_comparison()

    def parse_comparison(self) -> Callable[[Any], Decision]:
        token = self._peek()
        if token == ("op", "$"):
            path = self.parse_path()
            op = self._operator()
            literal = self.parse_literal()
        else:
            literal = self.parse_literal()
            op = _SWAPPED[self._operator()]
            path = self.parse_path()
        return _comparison(path, op, literal)

    def _operator(self) -> str:
        kind, value = self._take()
        if kind != "op" or (value not in _EQUALITY and value not in _ORDER):
            raise NotNative("not a comparison")
        return value

    def parse_path(self) -> tuple[str | int, ...]:
        if not self._accept("$"):
            raise NotNative("a path starts at $")
        steps: list[str | int] = []
        while True:
            if self._accept("."):
                kind, value = self._take()
                if kind != "name":
                    raise NotNative("a name after .")
                steps.append(_name(value))
            elif self._accept("["):
                kind, value = self._take()
                if kind == "sq":
                    steps.append(_name(value))
                elif kind == "number" and value.isdigit():
                    steps.append(int(value))
                else:
                    raise NotNative("an index is a string or an integer")
                if not self._accept("]"):
                    raise NotNative("unclosed bracket")
            else:
                return tuple(steps)

    def parse_literal(self) -> Any:
        kind, value = self._take()
        if kind == "sq":
            return value
        if kind == "number":
            if re.match(r"-?0\d", value):
                raise NotNative("a leading zero (an octal literal in sloppy JavaScript)")
            number = float(value) if "." in value else int(value)
            if isinstance(number, int) and abs(number) > SAFE_INTEGER:
                raise NotNative("an integer JavaScript rounds")
            return number
        if kind == "name" and value in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[value]
        raise NotNative("not a literal")


def _name(value: str) -> str:
    if value in INHERITED_NAMES:
        raise NotNative(f"{value!r} is inherited in JavaScript")
    return value


def _any_of(parts: list[Callable[[Any], Decision]]) -> Callable[[Any], Decision]:
    """JavaScript's `||` of booleans: the first true wins; a deferred part before it defers
    (it might have thrown in JavaScript)."""

    def decide(message: Any) -> Decision:
        for part in parts:
            decision = part(message)
            if decision is None:
                return None
            if decision:
                return True
        return False

    return decide


def _all_of(parts: list[Callable[[Any], Decision]]) -> Callable[[Any], Decision]:
    """`&&`: the first false wins; a deferred part before it defers."""

    def decide(message: Any) -> Decision:
        for part in parts:
            decision = part(message)
            if decision is None:
                return None
            if not decision:
                return False
        return True

    return decide


def _resolve(message: Any, path: tuple[str | int, ...]) -> Any:
    """The value at `path` as JavaScript sees it, MISSING for undefined, or _DEFER."""
    value = message
    for step in path:
        if isinstance(value, dict):
            if isinstance(step, int):
                return _DEFER  # `$.a[0]` on an object reads key "0": rare, left to JavaScript
            found = value.get(step, MISSING)
            if found is MISSING and _KEY_LIKE_TEXT.fullmatch(step):
                return _DEFER  # perhaps a non-string key, written as this text
            value = found
        elif isinstance(value, list):
            if not isinstance(step, int):
                return _DEFER  # a name on an array: methods and `length` live there
            value = value[step] if step < len(value) else MISSING
        else:
            return _DEFER  # undefined for primitives, a TypeError for null and undefined
    return value


def _kind(value: Any) -> str | None:
    """The JSON type JavaScript sees for `value`, or None when `to_json` would change it."""
    if value is MISSING:
        return "undefined"
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int):
        return "number" if abs(value) <= SAFE_INTEGER else None
    if isinstance(value, float):
        return "number" if math.isfinite(value) else None
    if isinstance(value, dict | list):
        return "object"
    return None


def _literal_kind(literal: Any) -> str:
    if literal is None:
        return "null"
    if literal is True or literal is False:
        return "boolean"
    return "string" if isinstance(literal, str) else "number"


def _comparison(path: tuple[str | int, ...], op: str, literal: Any) -> Callable[[Any], Decision]:
    literal_kind = _literal_kind(literal)
    negated = op in ("!=", "!==")
    strict = op in ("===", "!==")
    if op in _ORDER and literal_kind != "number":
        raise NotNative("ordering is compiled for numbers only")

    def decide(message: Any) -> Decision:
        value = _resolve(message, path)
        if value is _DEFER:
            return None
        kind = _kind(value)
        if kind is None:
            return None
        if op in _ORDER:
            if kind != "number":
                return None  # undefined, null, strings, objects: JavaScript's coercions
            if op == "<":
                return value < literal
            if op == "<=":
                return value <= literal
            if op == ">":
                return value > literal
            return value >= literal
        equal = _equal(value, kind, literal, literal_kind, strict)
        if equal is None:
            return None
        return not equal if negated else equal

    return decide


def _equal(value: Any, kind: str, literal: Any, literal_kind: str, strict: bool) -> Decision:
    """JavaScript's `===` (strict) or `==` of a JSON value and a literal, where certain."""
    if literal_kind == "null":
        if strict:
            return kind == "null"
        return kind in ("null", "undefined")  # no JSON value but these is == null
    if kind == literal_kind:
        return value == literal if kind != "boolean" else value is literal
    if strict:
        return False  # different types are never ===
    if kind in ("null", "undefined"):
        return False  # null and undefined are == only to each other
    return None  # a coercion: number and string, boolean and number, an object's primitive
