"""Event-handler conditions: Conductor's evaluators, sandboxed in QuickJS.

A Conductor handler's `condition` decides whether its actions run for a message. Users bring
conditions written for Conductor (`$.type == 'ALARM' && $.severity > 2`), so Herald keeps its
semantics:

- `javascript` (and its alias `graaljs`): an ECMAScript expression, or a script whose last
  expression's value is the result, with the message bound to `$` and the record's metadata to
  `_kafka` (`streams.message.META_NAME`);
- `value-param`: the expression names a field of the message (or a path, see
  `compile_condition`) whose value is the result;
- the result goes through Conductor's truthiness (`truthy`), not JavaScript's;
- an empty or missing condition is true.

Conditions are user code running inside the consumer, so they run in QuickJS with nothing but
the ECMAScript built-ins (no host functions, no module loader, no pending jobs run), with a time
limit (an infinite loop is stopped) and a memory limit. Each Condition owns one QuickJS context,
reused across messages for speed and recreated after a timeout or memory failure, which can
leave QuickJS in a state it should not be used from again. Contexts are not thread-safe: use a
Condition from one thread.

The memory limit guards against accidents, not attackers: QuickJS (quickjs 1.19.4 here, and
upstream, e.g. bellard/quickjs#529, #533) can itself crash the process on some out-of-memory
paths, depending on what is allocated and on the limit. Filling large arrays in a loop
(`a.push(new Array(1000).fill(1))`, typed arrays) segfaults at the 16 MiB default; strings and
plain objects fail cleanly. Conditions must therefore come from trusted configuration.

Conductor expands inline JSON (`expand_inline_json`) in the payload before every condition;
that is the caller's step, so `evaluate` sees exactly the message it is given.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import quickjs

from streams.errors import ConditionError, TemplateError
from streams.message import META_NAME
from streams.templating import JsonPath, compile_path, to_json

__all__ = ["EVALUATOR_TYPES", "Condition", "compile_condition", "truthy"]

EVALUATOR_TYPES = frozenset({"javascript", "graaljs", "value-param"})

# Builds the per-condition function inside QuickJS. The source is first tried as an expression,
# compiled once into a real function (fastest: nothing is parsed per message). If it is not an
# expression it is a script: `new Function` checks that it parses (without running it) and each
# message evaluates it with a direct eval, whose completion value is the script's last
# expression, as Nashorn's `engine.eval` gives; its `var`, `let` and `const` stay local to one
# evaluation, as with Nashorn's fresh bindings. Both functions are made by `new Function`, in the
# global scope, so user code sees `$`, `_kafka` and the built-ins, not this factory's variables.
# The wrapper parses the JSON it is handed and applies Conductor's truthiness, so only a boolean
# crosses back into Python.
_FACTORY_JS = r"""
(function (source, expression) {
  var condition;
  if (expression !== null) {
    try {
      condition = new Function('$', '_kafka', 'return (' + expression + '\n);');
    } catch (e) {
      if (!(e instanceof SyntaxError)) throw e;
    }
  }
  if (condition === undefined) {
    new Function('$', '_kafka', source);
    condition = new Function('$', '_kafka', '__heraldSource', 'return eval(__heraldSource);');
  }
  return function (message, meta) {
    var r = condition(JSON.parse(message), meta === null ? undefined : JSON.parse(meta), source);
    switch (typeof r) {
      case 'boolean': return r;
      case 'number': return r > 0;
      case 'bigint': return r > 0n;
      default: return false;
    }
  };
})
"""


# Parses a condition as the factory's fallback does (a function body), without running it, in a
# wrapper whose layout is known: the text starts at line 2, column 1, and the closing `})` is
# alone on the line after it. The factory's own wrappers and `new Function`'s put characters
# around the text that QuickJS then names ("unexpected token in expression: '}'"); this
# layout lets every error be placed in the user's text, or at its end. Returns null when the
# text parses, else the JSON of [message, line] (QuickJS gives lines but no columns).
_SYNTAX_JS = r"""
(function (text) {
  try {
    eval('(function ($, _kafka) {\n' + text + '\n})');
    return null;
  } catch (e) {
    if (!(e instanceof SyntaxError)) throw e;
    return JSON.stringify([String(e.message), e.lineNumber || 0]);
  }
})
"""
_WRAPPER_LINES = 1  # lines of _SYNTAX_JS's wrapper before the text
_TOKEN_TAIL = re.compile(r": '.*'$")  # QuickJS names the offending token at the end
# One JavaScript token, enough to show the one an error is at: numbers, words, strings
# (perhaps unclosed), comments, punctuators longest first, else any single character.
_TOKEN = re.compile(
    r"""\d\w*(?:\.\w*)?|\.\d\w*|[\w$\\\u0080-\uffff]+
    |'(?:[^'\\\n]|\\.)*'?|"(?:[^"\\\n]|\\.)*"?|`(?:[^`\\]|\\.)*`?
    |/\*.*?(?:\*/|$)|//[^\n]*
    |>>>=|\.\.\.|===|!==|\*\*=|<<=|>>=|>>>|&&=|\|\|=|\?\?=
    |=>|==|!=|<=|>=|&&|\|\||\?\?|\?\.|\+\+|--|[-+*/%&|^]=|\*\*|<<|>>
    |\S""",
    re.VERBOSE | re.DOTALL,
)
_MAX_PROBES = 4096  # prefixes tried to find the column; beyond that only the line is given


def _syntax_error(parse: Any, text: str) -> tuple[str, int] | None:
    """(message, line in `text`, 1-based) of text's syntax error, or None if it parses."""
    found = parse(text)
    if found is None:
        return None
    message, line = json.loads(found)
    return str(message), int(line) - _WRAPPER_LINES


def _position(text: str, offset: int) -> str:
    """`line L, column C` (1-based) of an offset in `text`."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def _error_end(parse: Any, text: str, error: tuple[str, int]) -> int | None:
    """The end of the token the error is at: the shortest prefix of `text` that fails the
    same way on the same line (a shorter one fails at its end, on the wrapper's line)."""
    line = error[1]
    start = sum(len(part) + 1 for part in text.split("\n")[: line - 1])
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    for stop in range(start + 1, min(end, start + _MAX_PROBES) + 1):
        if _syntax_error(parse, text[:stop]) == error:
            return stop
    return None


def _token_at(text: str, offset: int) -> tuple[int, str]:
    """(start, text) of the token holding the character at `offset`."""
    line_start = text.rfind("\n", 0, offset) + 1
    for match in _TOKEN.finditer(text, line_start):
        if match.end() > offset:
            if match.start() <= offset:
                return match.start(), match.group()
            break
    return offset, text[offset]


def _describe_syntax_error(context: quickjs.Context, text: str) -> str | None:
    """Where and what the syntax error in `text` is, in the user's own text: `at line 1,
    column 11 (')'): unexpected token in expression`, or `(end of condition)` when the text
    stops too early; None when it parses (the failure was something else).

    Never QuickJS's view of the token: the text QuickJS parsed is wrapped, so its message may
    name a character of the wrapper (`'}'`) the user never wrote.
    """
    try:
        return _locate(context.eval(_SYNTAX_JS), text)
    except quickjs.JSException:  # a prefix that ran (text that closes its wrapper) and threw
        return None


def _locate(parse: Any, text: str) -> str | None:
    """The description `_describe_syntax_error` gives, from the parsing function."""
    error = _syntax_error(parse, text)
    if error is None:
        return None
    message, line = error
    if line > text.count("\n") + 1:  # on the wrapper's closing line: the text ended early
        if _TOKEN_TAIL.search(message) or message.startswith("expecting"):
            message = "the condition is incomplete"
        return f"at {_position(text, len(text.rstrip()))} (end of condition): {message}"
    message = _TOKEN_TAIL.sub("", message)
    stop = _error_end(parse, text, error) if line >= 1 else None
    if stop is None:
        return f"at line {line}: {message}" if line >= 1 else f": {message}"
    start, token = _token_at(text, stop - 1)
    shown = token if len(token) <= 40 else token[:37] + "..."
    return f"at {_position(text, start)} ({shown!r}): {message}"


def truthy(value: Any) -> bool:
    """Conductor's `ScriptEvaluator.toBoolean`: the one truthiness conditions use.

    A boolean is itself; a number is true when > 0; everything else (strings, even "true",
    objects, lists, None) is false. Deliberately not Python's or JavaScript's truthiness.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        return value > 0
    return False


class Condition(ABC):
    """A compiled condition. Build with `compile_condition`; call `evaluate` per message."""

    def __init__(self, expression: str | None, evaluator_type: str) -> None:
        self.expression = expression
        self.evaluator_type = evaluator_type

    @property
    def always_true(self) -> bool:
        """True for an empty condition: callers may skip evaluation (and serialisation)."""
        return False

    @abstractmethod
    def evaluate(self, message: Any, meta: Mapping[str, Any] | None = None) -> bool:
        """Whether the handler applies to `message` (`meta` is `Envelope.meta()`).

        Raises only ConditionError: the condition threw, ran out of time or memory, or the
        message cannot be given to it.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.evaluator_type!r}, {self.expression!r})"


class _AlwaysTrue(Condition):
    @property
    def always_true(self) -> bool:
        return True

    def evaluate(self, message: Any, meta: Mapping[str, Any] | None = None) -> bool:
        return True


class _ValueParam(Condition):
    """Conductor's `ValueParamEvaluator`: the value of one field of the message, via truthy.

    Conductor looks the expression up as a top-level key of a JSON object message and fails
    for any other message. Herald does the same, and when no such key exists also reads the
    expression as a path (`a.b[0]`, `_kafka.key`), which Conductor cannot do.
    """

    def __init__(self, expression: str, evaluator_type: str) -> None:
        super().__init__(expression, evaluator_type)
        self._key = expression
        try:
            self._path: JsonPath | None = compile_path(expression)
        except TemplateError:
            self._path = None  # not a path: a plain key only

    def evaluate(self, message: Any, meta: Mapping[str, Any] | None = None) -> bool:
        path = self._path
        if path is not None and path.on_meta:
            return truthy(path.resolve(message, meta or {}))
        if not isinstance(message, Mapping):
            raise ConditionError(
                f"value-param condition {self._key!r} needs a JSON object message, "
                f"got {type(message).__name__}"
            )
        if self._key in message:
            return truthy(message[self._key])
        return truthy(path.resolve(message, meta or {})) if path is not None else False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _as_expression(source: str) -> str:
    """The source without trailing semicolons, so `$.a == 1;` still compiles as an expression."""
    return source.rstrip().rstrip(";").rstrip()


class _Script(Condition):
    """A javascript/graaljs condition in its own QuickJS context."""

    def __init__(
        self, source: str, evaluator_type: str, time_limit_ms: int, memory_limit_bytes: int
    ) -> None:
        super().__init__(source, evaluator_type)
        self._source = source
        self._time_limit_ms = time_limit_ms
        self._memory_limit_bytes = memory_limit_bytes
        # When the source never names `_kafka`, the metadata is not serialised and parsed (~3 µs).
        self._uses_meta = META_NAME in source
        self._run = self._build()

    def _build(self) -> Any:
        """A fresh context holding the compiled condition; raises ConditionError on bad syntax."""
        context = quickjs.Context()
        context.set_memory_limit(self._memory_limit_bytes)
        context.set_time_limit(self._time_limit_ms / 1000)
        factory = context.eval(_FACTORY_JS)
        expression = _as_expression(self._source)
        try:
            return factory(self._source, expression or None)
        except quickjs.JSException as exc:
            where = _describe_syntax_error(context, self._source)
            what = where if where is not None else f": {_first_line(exc)}"
            raise ConditionError(f"condition {self._source!r} does not parse {what}") from None

    def evaluate(self, message: Any, meta: Mapping[str, Any] | None = None) -> bool:
        message_json, meta_json = self._serialise(message, meta)
        try:
            return self._run(message_json, meta_json) is True
        except quickjs.JSException as exc:
            raise self._failure(exc) from None
        except Exception as exc:  # anything unexpected from the binding: start afresh
            self._run = self._build()
            raise ConditionError(f"condition failed: {type(exc).__name__}: {exc}") from None

    def _serialise(self, message: Any, meta: Mapping[str, Any] | None) -> tuple[str, str | None]:
        try:
            message_json = to_json(message)
            meta_json = to_json(meta if meta is not None else {}) if self._uses_meta else None
        except (TypeError, ValueError, RecursionError) as exc:
            raise ConditionError(f"message cannot be given to the condition: {exc}") from None
        return message_json, meta_json

    def _failure(self, exc: quickjs.JSException) -> ConditionError:
        """Classify a QuickJS exception; recreate the context when QuickJS itself gave up."""
        text = str(exc)
        first = _first_line(exc)
        if first == "InternalError: interrupted":
            self._run = self._build()
            return ConditionError(f"condition timed out after {self._time_limit_ms} ms")
        if "out of memory" in text:
            self._run = self._build()
            return ConditionError(
                f"condition exceeded its memory limit of {self._memory_limit_bytes} bytes"
            )
        # When QuickJS cannot even allocate the error, the binding reports a bare "null" with no
        # stack, exactly what `throw null` gives: the two cannot be told apart, so say both.
        if "\n" not in text.strip() or text.startswith("(Failed obtaining"):
            self._run = self._build()
            return ConditionError(
                f"condition threw {first} or exceeded its memory limit of "
                f"{self._memory_limit_bytes} bytes"
            )
        if first.startswith("InternalError"):  # stack overflow and the like: be safe
            self._run = self._build()
        return ConditionError(f"condition threw: {first}")


def _check_limits(time_limit_ms: int, memory_limit_bytes: int) -> None:
    if time_limit_ms <= 0:
        raise ConditionError(f"time_limit_ms must be positive, got {time_limit_ms}")
    if memory_limit_bytes < 1024 * 1024:
        raise ConditionError(f"memory_limit_bytes must be at least 1 MiB, got {memory_limit_bytes}")


def compile_condition(
    expression: str | None,
    evaluator_type: str | None = "javascript",
    *,
    time_limit_ms: int = 100,
    memory_limit_bytes: int = 16 * 1024 * 1024,
) -> Condition:
    """Compile a handler's condition once, at config load.

    `evaluator_type` is `javascript` (also when None, as in Conductor), `graaljs` (the same) or
    `value-param`; names are matched case-insensitively. An empty or None expression is always
    true (Conductor's `StringUtils.isNotEmpty`; a blank but non-empty one is evaluated, as there).
    Raises ConditionError for an unknown evaluator type (Conductor would quietly fall back to
    JavaScript) and for JavaScript that does not parse; nothing of the condition runs here.
    """
    kind = (evaluator_type or "javascript").strip().lower()
    if kind not in EVALUATOR_TYPES:
        known = ", ".join(sorted(EVALUATOR_TYPES))
        raise ConditionError(f"unknown evaluatorType {evaluator_type!r}; use one of {known}")
    if not expression:
        return _AlwaysTrue(expression, kind)
    if not isinstance(expression, str):
        raise ConditionError(f"condition must be a string, got {type(expression).__name__}")
    if kind == "value-param":
        return _ValueParam(expression, kind)
    _check_limits(time_limit_ms, memory_limit_bytes)
    return _Script(expression, kind, time_limit_ms, memory_limit_bytes)
