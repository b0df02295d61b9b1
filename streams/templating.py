"""Conductor's `${...}` parameter templating, compiled once and rendered per message.

Action parameters in Conductor event handlers are templates: every string may hold `${path}`
references into the message (Conductor OSS `ParametersUtils.replace`). Users migrate handler
definitions from Conductor, so Herald renders them the same way:

- a string that is exactly one `${path}` yields the referenced value with its type (object,
  list, number, bool, null);
- otherwise each reference is interpolated as text: strings as they are, `null` for a missing
  value, `true`/`false`, numbers and objects/lists as their JSON text (see `to_text`);
- a missing path yields null; `$${` is a literal `${`;
- dicts and lists are rendered recursively; dict keys are never templated (Conductor doesn't);
- a reference may itself contain references (`${a.${b}}`): the inner ones are rendered as text
  first, then the resulting path is read, as Conductor does.

Paths follow Jayway JsonPath, which Conductor uses, against the decoded message at the root:
`orderId` and `$.orderId` are the same path, `$` is the whole message, `a[0]`, `a[-1]`,
`a['odd key']`, `a[*].b` and `a.*` (wildcards yield a list) and a final `.length()` are
supported. A path whose first segment is `_kafka` reads the record's metadata
(`streams.message.META_NAME`): `${_kafka.key}`, `${_kafka.headers.traceId}`.

Deliberate differences from Conductor, all in favour of failing at load instead of at 3 a.m.:
syntax errors (an unclosed `${`, an empty `${}`, a path Herald cannot read such as a JsonPath
filter) raise `TemplateError` from `compile_template`, where Conductor silently leaves the text
or yields null/"" per message; and objects/lists interpolated into text are JSON, where
Conductor prints Java's `Map.toString()` (`{a=1}`), which nothing can parse.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
from collections.abc import Mapping
from datetime import date, time
from decimal import Decimal
from typing import Any

import orjson

from streams.errors import TemplateError
from streams.message import META_NAME

__all__ = [
    "JsonPath",
    "Template",
    "compile_path",
    "compile_template",
    "expand_inline_json",
    "json_default",
    "to_json",
    "to_text",
]

_MISSING: Any = object()
_EMPTY_META: Mapping[str, Any] = {}


# --------------------------------------------------------------------------- JSON helpers


def json_default(obj: Any) -> Any:
    """orjson/json `default` hook: turn values a decoder may produce into JSON-able ones.

    Avro and raw codecs give bytes, Decimal and sets, which JSON has no type for; converting them
    sensibly beats failing a message. Bytes become base64 text, Decimal a number, sets a list,
    anything else its `str()`.
    """
    if isinstance(obj, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, Decimal):
        return int(obj) if obj == obj.to_integral_value() else float(obj)
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, date | time):
        return obj.isoformat()
    return str(obj)


def to_json(value: Any) -> str:
    """Compact JSON text of any decoded value, via orjson, with a stdlib fallback.

    The fallback covers what orjson refuses (integers beyond 64 bits); errors that remain
    (circular structures, absurd nesting) propagate to the caller, who wraps them.
    """
    try:
        return orjson.dumps(value, default=json_default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value, default=json_default, separators=(",", ":"), ensure_ascii=False)


def _float_text(value: float) -> str:
    if math.isfinite(value):
        return orjson.dumps(value).decode()
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def to_text(value: Any) -> str:
    """How a referenced value reads when interpolated into a longer string.

    Conductor uses Java's `Objects.toString`: strings as-is, `null`, `true`/`false`, numbers in
    their plain form. Herald agrees on all of those and writes objects and lists as compact JSON
    (Conductor would print `{a=1, b=[1, 2]}`). Non-finite floats read `NaN`/`Infinity` as in
    Java and JavaScript. Bytes read as base64, as they do in JSON (see `json_default`).
    """
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, Mapping | list | tuple):
        return to_json(value)
    return to_text(json_default(value))  # bytes -> base64 text, Decimal -> number, ...


# --------------------------------------------------------------------------- paths

_WILDCARD = object()
_LENGTH = object()


class JsonPath:
    """A compiled, read-only JsonPath subset; resolving it never raises.

    `steps` holds str (property), int (index, negative counts from the end), `_WILDCARD` and a
    final `_LENGTH`. `on_meta` says the path reads the `_kafka` metadata, not the message.
    """

    __slots__ = ("text", "steps", "on_meta", "definite")

    def __init__(self, text: str, steps: tuple[Any, ...], on_meta: bool) -> None:
        self.text = text
        self.steps = steps
        self.on_meta = on_meta
        self.definite = _WILDCARD not in steps

    def resolve(self, message: Any, meta: Mapping[str, Any]) -> Any:
        """The value at this path, or None when any step is missing (Conductor: null)."""
        root = meta if self.on_meta else message
        if self.definite:
            return _walk(root, self.steps)
        return _walk_many(root, self.steps)

    def __repr__(self) -> str:
        return f"JsonPath({self.text!r})"


def _step(current: Any, step: Any) -> Any:
    if type(step) is str:
        if isinstance(current, Mapping):
            return current.get(step, _MISSING)
        return _MISSING
    if type(step) is int and isinstance(current, list | tuple):
        if -len(current) <= step < len(current):
            return current[step]
    return _MISSING


def _length(value: Any) -> Any:
    if isinstance(value, list | tuple | Mapping | str):
        return len(value)
    return None


def _walk(current: Any, steps: tuple[Any, ...]) -> Any:
    for step in steps:
        if step is _LENGTH:
            return _length(current)
        current = _step(current, step)
        if current is _MISSING:
            return None
    return current


def _children(value: Any) -> list[Any]:
    if isinstance(value, Mapping):
        return list(value.values())
    if isinstance(value, list | tuple):
        return list(value)
    return []


def _walk_many(root: Any, steps: tuple[Any, ...]) -> Any:
    """Indefinite paths (with a wildcard) yield a list; misses are skipped, as in JsonPath."""
    values = [root]
    for step in steps:
        if step is _LENGTH:
            return len(values)
        if step is _WILDCARD:
            values = [child for value in values for child in _children(value)]
            continue
        values = [found for value in values if (found := _step(value, step)) is not _MISSING]
    return values


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    """A 'quoted' or "quoted" name starting at pos; returns it and the index after the quote."""
    quote = text[pos]
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if char == quote:
            return "".join(out), i + 1
        out.append(char)
        i += 1
    raise TemplateError("unclosed quote")


def _read_bracket(text: str, pos: int) -> tuple[Any, int]:
    """One `[...]` step starting at pos (the `[`); returns the step and the index after `]`."""
    i = pos + 1
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] in "'\"":
        name, i = _read_quoted(text, i)
        end = text.find("]", i)
        if end < 0 or text[i:end].strip():
            raise TemplateError("expected ']' after the quoted name")
        return name, end + 1
    end = text.find("]", i)
    if end < 0:
        raise TemplateError("unclosed '['")
    inner = text[i:end].strip()
    if inner == "*":
        return _WILDCARD, end + 1
    try:
        return int(inner), end + 1
    except ValueError:
        raise TemplateError(
            f"[{inner}] is not supported (only [n], [-n], ['name'] and [*])"
        ) from None


def _read_dotted(text: str, pos: int) -> tuple[Any, int]:
    """One `.name` step starting after the dot; returns the step and the index after it."""
    end = pos
    while end < len(text) and text[end] not in ".[":
        end += 1
    name = text[pos:end]
    if not name:
        if text.startswith(".", pos):
            raise TemplateError("deep scan '..' is not supported")
        raise TemplateError("empty name after '.'")
    if name == "*":
        return _WILDCARD, end
    if name.endswith(")"):
        if name.replace(" ", "") != "length()":
            raise TemplateError(f"function {name} is not supported (only length())")
        if end != len(text):
            raise TemplateError("length() must be the last step")
        return _LENGTH, end
    return name, end


def _parse_steps(rest: str) -> tuple[Any, ...]:
    steps: list[Any] = []
    i = 0
    while i < len(rest):
        if rest[i] == ".":
            step, i = _read_dotted(rest, i + 1)
        elif rest[i] == "[":
            step, i = _read_bracket(rest, i)
        else:
            raise TemplateError(f"unexpected {rest[i]!r}")
        steps.append(step)
    return tuple(steps)


@functools.lru_cache(maxsize=4096)
def compile_path(text: str) -> JsonPath:
    """Parse a JsonPath (`a.b[0]`, `$.a`, `$`, `_kafka.key`); raise TemplateError if invalid.

    Cached because nested references (`${a.${b}}`) produce their path per message.
    """
    path = text.strip()
    if not path:
        raise TemplateError("empty path")
    if path.startswith("@"):
        raise TemplateError(f"path {text!r}: '@' only exists inside JsonPath filters")
    if path.startswith("$"):
        rest = path[1:]
    elif path.startswith("["):
        rest = path
    else:
        rest = "." + path  # Jayway reads `a.b` as `$.a.b`
    try:
        steps = _parse_steps(rest)
    except TemplateError as exc:
        raise TemplateError(f"path {path!r}: {exc}") from None
    on_meta = bool(steps) and steps[0] == META_NAME
    return JsonPath(path, steps[1:] if on_meta else steps, on_meta)


# --------------------------------------------------------------------------- compiled nodes


def _copy_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    return value


class _Const:
    """A value with no reference in it; containers are copied so callers may mutate results."""

    __slots__ = ("value", "copy")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.copy = isinstance(value, dict | list)

    def render(self, message: Any, meta: Mapping[str, Any]) -> Any:
        return _copy_json(self.value) if self.copy else self.value


class _Ref:
    """A static reference: `${path}` with no reference inside the path.

    Most references are a few property names (`${mCode}`, `${_kafka.timestamp}`): those are
    walked here, dicts first, without `JsonPath`'s per-step calls (a handler renders ten or
    more per message; issue 16's profile of the source stage)."""

    __slots__ = ("path", "keys", "on_meta")

    def __init__(self, path: JsonPath) -> None:
        self.path = path
        self.on_meta = path.on_meta
        plain = path.definite and all(type(step) is str for step in path.steps)
        self.keys: tuple[str, ...] | None = path.steps if plain else None

    @property
    def text(self) -> str:
        return self.path.text

    def render(self, message: Any, meta: Mapping[str, Any]) -> Any:
        keys = self.keys
        if keys is None:
            return self.path.resolve(message, meta)
        current = meta if self.on_meta else message
        for key in keys:  # as _step: a property of a mapping, else missing (None)
            if type(current) is dict or isinstance(current, Mapping):
                current = current.get(key, _MISSING)
                if current is _MISSING:
                    return None
            else:
                return None
        return current


class _DynamicRef:
    """`${a.${b}}`: the path is rendered as text per message, then read (Conductor nesting).

    A path that renders blank yields "" and one that does not parse yields None, as in
    Conductor (which logs the read error and substitutes null).
    """

    __slots__ = ("parts", "text")

    def __init__(self, parts: tuple[Any, ...], text: str) -> None:
        self.parts = parts
        self.text = text

    def render(self, message: Any, meta: Mapping[str, Any]) -> Any:
        path_text = _join(self.parts, message, meta)
        if not path_text.strip():
            return ""
        try:
            path = compile_path(path_text)
        except TemplateError:
            return None
        return path.resolve(message, meta)


def _join(parts: tuple[Any, ...], message: Any, meta: Mapping[str, Any]) -> str:
    out = []
    for part in parts:
        if type(part) is not str:
            part = part.render(message, meta)
            if type(part) is not str:
                part = to_text(part)
        out.append(part)
    return "".join(out)


class _Text:
    """A string mixing literal text and references: always renders to a string."""

    __slots__ = ("parts",)

    def __init__(self, parts: tuple[Any, ...]) -> None:
        self.parts = parts

    def render(self, message: Any, meta: Mapping[str, Any]) -> str:
        return _join(self.parts, message, meta)


class _Dict:
    __slots__ = ("items",)

    def __init__(self, items: tuple[tuple[Any, Any], ...]) -> None:
        self.items = items

    def render(self, message: Any, meta: Mapping[str, Any]) -> dict[Any, Any]:
        return {key: node.render(message, meta) for key, node in self.items}


class _List:
    __slots__ = ("nodes",)

    def __init__(self, nodes: tuple[Any, ...]) -> None:
        self.nodes = nodes

    def render(self, message: Any, meta: Mapping[str, Any]) -> list[Any]:
        return [node.render(message, meta) for node in self.nodes]


# --------------------------------------------------------------------------- string parsing


class _Scanner:
    """Splits one template string into literal text and references, Conductor's way.

    `$${` is an escaped literal `${` (Conductor: a `${` preceded by `$` is not a reference, and
    `$${` then becomes `${`). Inside a reference, braces nest, so `${a.${b}}` is one reference.
    """

    def __init__(self, text: str, where: str) -> None:
        self.text = text
        self.where = where
        self.pos = 0

    def fail(self, problem: str) -> TemplateError:
        return TemplateError(f"{self.where}: {problem} in {self.text!r}")

    def parts(self, inside: bool = False) -> tuple[list[Any], bool]:
        """Parts until the end of the text, or until the `}` closing a reference if inside.

        Returns the parts and whether a closing `}` was found.
        """
        parts: list[Any] = []
        literal: list[str] = []
        depth = 0
        text = self.text
        while self.pos < len(text):
            if text.startswith("$${", self.pos):
                literal.append("${")
                self.pos += 3
            elif text.startswith("${", self.pos):
                _flush(parts, literal)
                parts.append(self.reference())
            elif inside and text[self.pos] == "}" and depth == 0:
                _flush(parts, literal)
                return parts, True
            else:
                char = text[self.pos]
                if inside and char in "{}":
                    depth += 1 if char == "{" else -1
                literal.append(char)
                self.pos += 1
        _flush(parts, literal)
        return parts, False

    def reference(self) -> Any:
        start = self.pos
        self.pos += 2
        inner, closed = self.parts(inside=True)
        if not closed:
            raise self.fail(f"unclosed '${{' at position {start}")
        self.pos += 1  # the closing brace
        source = self.text[start + 2 : self.pos - 1]
        if all(type(part) is str for part in inner):
            return self.static_reference("".join(inner), start)
        return _DynamicRef(tuple(inner), source)

    def static_reference(self, path_text: str, start: int) -> _Ref:
        if not path_text.strip():
            raise self.fail(f"empty reference '${{}}' at position {start}")
        try:
            return _Ref(compile_path(path_text))
        except TemplateError as exc:
            raise self.fail(str(exc)) from None


def _flush(parts: list[Any], literal: list[str]) -> None:
    if literal:
        parts.append("".join(literal))
        literal.clear()


def _compile_string(text: str, where: str) -> Any:
    if "${" not in text:
        return _Const(text)
    parts, _ = _Scanner(text, where).parts()
    if len(parts) == 1 and type(parts[0]) is not str:
        return parts[0]  # exactly one reference: typed value
    if all(type(part) is str for part in parts):
        return _Const("".join(parts))  # only escapes
    return _Text(tuple(parts))


def _compile(obj: Any, where: str) -> Any:
    if isinstance(obj, str):
        return _compile_string(obj, where)
    if isinstance(obj, Mapping):
        items = tuple((key, _compile(value, f"{where}.{key}")) for key, value in obj.items())
        if all(isinstance(node, _Const) for _, node in items):
            return _Const({key: node.value for key, node in items})
        return _Dict(items)
    if isinstance(obj, list | tuple):
        nodes = tuple(_compile(value, f"{where}[{i}]") for i, value in enumerate(obj))
        if all(isinstance(node, _Const) for node in nodes):
            return _Const([node.value for node in nodes])
        return _List(nodes)
    return _Const(obj)


def _references(node: Any) -> list[str]:
    if isinstance(node, _Ref | _DynamicRef):
        return [node.text]
    if isinstance(node, _Text):
        return [ref for part in node.parts if type(part) is not str for ref in _references(part)]
    if isinstance(node, _Dict):
        return [ref for _, child in node.items for ref in _references(child)]
    if isinstance(node, _List):
        return [ref for child in node.nodes for ref in _references(child)]
    return []


# --------------------------------------------------------------------------- public API


class Template:
    """A compiled template. Build with `compile_template`; render once per message.

    Rendered containers are fresh (safe to mutate, e.g. to add `conductor.event.messageId`),
    but values read from the message are the message's own objects: copy before mutating them.
    """

    __slots__ = ("_root", "_constant", "source")

    def __init__(self, root: Any, source: Any) -> None:
        self._root = root
        self._constant = isinstance(root, _Const)
        self.source = source

    @property
    def is_constant(self) -> bool:
        """True when there is no reference at all: render returns the same value every time."""
        return self._constant

    @property
    def references(self) -> list[str]:
        """The paths referenced, in order of appearance (nested ones in their source form)."""
        return _references(self._root)

    def render(self, message: Any, meta: Mapping[str, Any] | None = None) -> Any:
        """The template with every reference replaced, read from `message` and `meta`.

        `meta` is the `_kafka` object (`Envelope.meta()`). Raises only TemplateError.
        """
        root = self._root
        if self._constant and not root.copy:
            return root.value
        try:
            return root.render(message, _EMPTY_META if meta is None else meta)
        except TemplateError:
            raise
        except Exception as exc:  # e.g. an unserialisable or circular value being interpolated
            raise TemplateError(f"rendering failed: {type(exc).__name__}: {exc}") from exc

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def compile_template(obj: Any) -> Template:
    """Compile a JSON-like value (dict/list/str/number/bool/None) into a Template.

    Do this once at config load: every syntax problem raises TemplateError here, naming where
    in the value it is (`$.input.orderId: unclosed '${' ...`), so a bad handler refuses to
    start instead of failing per message.
    """
    return Template(_compile(obj, "$"), obj)


# --------------------------------------------------------------------------- expandInlineJSON


def _parse_json_or_keep(text: str) -> Any:
    try:
        return orjson.loads(text)
    except (orjson.JSONDecodeError, ValueError):
        return text


def _looks_like_json(text: str) -> bool:
    head = text.lstrip()[:1]
    return head == "{" or head == "["


def _expand_container(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _expand_map_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand_container(item) for item in value]
    return value


def _expand_map_value(value: Any) -> Any:
    if isinstance(value, str):
        return _parse_json_or_keep(value) if _looks_like_json(value) else value
    return _expand_container(value)


#: Deeper than this, `_needs_expanding` answers True, so the expansion itself runs and meets
#: the recursion limit exactly where it did before the scan existed (a message that deep is
#: dead-lettered as "nested too deeply"); well below the depth where it does.
_SCAN_DEPTH = 100


def _needs_expanding(value: Any, depth: int = 0) -> bool:
    """Whether `_expand_container(value)` would change anything: a dict value somewhere that
    is a string `_looks_like_json`. Most messages have none, and this scan allocates
    nothing, where the expansion builds a copy of every dict and list (issue 16's profile of
    the filter path)."""
    if depth > _SCAN_DEPTH:
        return True
    if isinstance(value, dict):
        for item in value.values():
            if isinstance(item, str):
                if item and (item[0] in "{[" or (item[0].isspace() and _looks_like_json(item))):
                    return True
            elif isinstance(item, dict | list) and _needs_expanding(item, depth + 1):
                return True
        return False
    if isinstance(value, list):
        return any(
            isinstance(item, dict | list) and _needs_expanding(item, depth + 1) for item in value
        )
    return False


#: In JSON text, a quote followed by what could begin a string `_looks_like_json` says yes to
#: (whitespace, `{`, `[`), or hide it (an escape, a non-ASCII byte such as Unicode
#: whitespace). It also matches where no string begins (`"a" : 1`): then the scan decides.
_MAYBE_INLINE_JSON = re.compile(rb'"[\s{\[\\\x80-\xff]')


def has_no_inline_json(json_text: bytes) -> bool:
    """True when the JSON document `json_text` certainly holds no string that
    `expand_inline_json` would parse, so its decoded value is its own expansion: one regular
    expression search in C over the record's bytes instead of `_needs_expanding` walking every
    value of the decoded message (issue 16's profile of the filter path). A document with
    more brackets than `_SCAN_DEPTH` (so possibly nested deeper) is left to the expansion,
    which treats deep nesting as it always has."""
    if json_text.count(b"{") + json_text.count(b"[") > _SCAN_DEPTH:
        return False
    return _MAYBE_INLINE_JSON.search(json_text) is None


def expand_inline_json(value: Any) -> Any:
    """Conductor's `expandInlineJSON` (`JsonUtils.expand`): parse JSON hidden in strings.

    Producers often put a JSON document into a string field; with `expandInlineJSON: true`
    Conductor parses it so templates can reach inside. Exactly as Conductor does:

    - a dict value that is a string starting (after whitespace) with `{` or `[` and parses as
      JSON is replaced by the parsed value; a string that does not parse stays as it is;
    - dicts and lists are walked recursively, but a string that is directly a list element is
      left alone (Conductor's `expandList` never writes back, so it never expands those);
    - parsed values are not expanded again;
    - a bare string at the top is parsed if it is any JSON at all (`"42"` -> 42).

    Unlike Conductor the input is not modified: a new structure is returned when anything is
    expanded (the same message is shared by every handler), and the value itself when nothing
    is.
    """
    if isinstance(value, str):
        return _parse_json_or_keep(value)
    # Nothing to expand: the value itself, which the caller must not modify either.
    return _expand_container(value) if _needs_expanding(value) else value
