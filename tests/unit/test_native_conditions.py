"""streams.native_conditions against QuickJS: on generated conditions of its grammar and
generated messages, every verdict it gives is JavaScript's own, and it defers (None) wherever
JavaScript throws. Plus the conditions it must refuse to compile."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.conditions import compile_condition
from streams.errors import ConditionError
from streams.native_conditions import compile_native
from streams.templating import to_json

#: Paths mostly name fields the messages have (`COMMON`), so comparisons meet real values.
COMMON = ["type", "a", "n"]
NAMES = [*COMMON, *COMMON, *COMMON, "b", "x y", "0", "true", "length", "constructor"]
STRINGS = ["ALARM", "", "1", "2.5", "true", "null", "[object Object]", "a"]
#: Numbers as Herald's decoders give them: orjson reads a JSON integer beyond 64 bits as a
#: float and Avro's long is 64 bits, so `to_json` always writes a message with orjson (a
#: Python int beyond 64 bits would send it to json.dumps, whose `Infinity` JSON.parse refuses
#: for the whole message, wherever the condition looks).
NUMBERS = [0, 1, -1, 2.5, 3, 3.0, 2**53, 2**53 + 1, 2**63 - 1, -(2**63), 1e20, 0.1]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(STRINGS),
    st.sampled_from(NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(NAMES), children, max_size=4),
    ),
    max_leaves=8,
)
#: Values that meet the literals: equal, near, of another type, or containers.
POOL = st.sampled_from(
    [*STRINGS, *NUMBERS, None, True, False, [], {}, ["ALARM"], [3], {"b": 1}, {"b": None}]
)
MESSAGES = st.one_of(
    st.fixed_dictionaries({name: POOL for name in COMMON}),
    st.dictionaries(st.sampled_from(COMMON), st.one_of(POOL, JSON_VALUES), min_size=2),
    st.dictionaries(st.sampled_from(NAMES), JSON_VALUES, max_size=5),
    JSON_VALUES,
)


def _step(draw: Any) -> str:
    kind = draw(st.sampled_from(["dot", "dot", "dot", "dot", "bracket", "index"]))
    name = draw(st.sampled_from(NAMES))
    if kind == "dot" and name.isidentifier():
        return f".{name}"
    if kind == "index":
        return f"[{draw(st.integers(0, 2))}]"
    return f"['{name}']"


@st.composite
def comparisons(draw: Any) -> str:
    steps = draw(st.sampled_from([1, 1, 1, 1, 1, 1, 0, 2, 3]))
    path = "$" + "".join(_step(draw) for _ in range(steps))
    op = draw(st.sampled_from(["==", "!=", "===", "!==", "<", "<=", ">", ">="]))
    numbers = st.sampled_from(["0", "1", "-1", "2.5", "3", "3.0", "0.1"])
    literal = draw(
        numbers
        if op in ("<", "<=", ">", ">=") and draw(st.integers(0, 9))
        else st.one_of(
            st.sampled_from(STRINGS).map(lambda s: f"'{s}'"),
            numbers,
            st.sampled_from(["true", "false", "null"]),
        )
    )
    return f"{literal} {op} {path}" if draw(st.booleans()) else f"{path} {op} {literal}"


@st.composite
def conditions(draw: Any, depth: int = 0) -> str:
    if depth >= 2 or draw(st.booleans()):
        return draw(comparisons())
    left, right = draw(conditions(depth + 1)), draw(conditions(depth + 1))
    shape = draw(st.sampled_from(["and", "or", "not", "paren"]))
    if shape == "and":
        return f"{left} && {right}"
    if shape == "or":
        return f"{left} || {right}"
    if shape == "not":
        return f"!({left})"
    return f"({left}) && ({right})"


def javascript(source: str, message: Any) -> bool | None:
    """QuickJS's verdict (the condition's own JavaScript, not the native path); None when
    it throws."""
    condition = compile_condition(source)
    try:
        return condition.evaluate_json(to_json(message), None)
    except ConditionError:
        return None


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=conditions(), message=MESSAGES)
def test_a_native_verdict_is_always_javascripts(source: str, message: Any) -> None:
    native = compile_native(source)
    if native is None:
        return  # a literal or name outside the grammar: QuickJS only
    decided = native.decide(message)
    if decided is not None:
        assert decided is javascript(source, message), (source, message)


OPERATORS = ["==", "!=", "===", "!==", "<", "<=", ">", ">="]
LITERALS = [*(f"'{s}'" for s in STRINGS), "0", "1", "-1", "2.5", "3", "3.0", "0.1"]
LITERALS += ["true", "false", "null"]
VALUES: list[Any] = [*STRINGS, *NUMBERS, -0.0, float("nan"), float("inf"), None, True, False]
VALUES += [[], {}, ["ALARM"], [3], [1, 2], {"b": 1}]


def test_every_single_comparison_on_every_value_agrees_with_javascript() -> None:
    """Each operator, literal and value, both ways round, and the field missing: every
    verdict given natively is QuickJS's, and the common cases are decided."""
    decided = 0
    for op in OPERATORS:
        for literal in LITERALS:
            for source in (f"$.v {op} {literal}", f"{literal} {op} $.v"):
                native = compile_native(source)
                if native is None:
                    assert op in ("<", "<=", ">", ">=") and not literal[0].isdigit()
                    assert literal[0] != "-", source
                    continue
                condition = compile_condition(source)
                for message in [{"v": value} for value in VALUES] + [{}]:
                    verdict = native.decide(message)
                    if verdict is None:
                        continue
                    decided += 1
                    try:
                        expected = condition.evaluate_json(to_json(message), None)
                    except ConditionError:
                        expected = None
                    assert verdict is expected, (source, message)
    assert decided > 2000


def test_the_generated_conditions_are_mostly_native_and_mostly_decided() -> None:
    """The differential test above compares something: most generated conditions compile
    and most verdicts on plain messages are given natively."""
    native = compile_native("$.type == 'ALARM' && ($.n >= 3 || $.a.b !== null)")
    assert native is not None
    assert native.decide({"type": "ALARM", "n": 4}) is True
    assert native.decide({"type": "INFO", "n": 4}) is False
    assert native.decide({"type": "ALARM", "n": 1, "a": {"b": None}}) is False
    assert native.decide({"type": "ALARM", "n": 1, "a": 7}) is None  # 7.b: JavaScript's


@pytest.mark.parametrize(
    ("source", "message", "expected"),
    [
        ("$.type == 'ALARM'", {"type": "ALARM"}, True),
        ("$.type == 'ALARM';", {"type": "INFO"}, False),
        ("$.type === 'ALARM'", {}, False),
        ("$.type == null", {}, True),
        ("$.type === null", {}, False),
        ("$.n == 3", {"n": 3.0}, True),
        ("$.n == '3'", {"n": 3}, None),  # a coercion: JavaScript's
        ("$.n === '3'", {"n": 3}, False),
        ("$.flag == true", {"flag": 1}, None),
        ("$.flag === true", {"flag": True}, True),
        ("$.a.b == 1", {"a": None}, None),  # a TypeError in JavaScript: its text, its letter
        ("$.a.b == 1", {"a": "text"}, None),
        ("$.a[1] == 'x'", {"a": ["w", "x"]}, True),
        ("$.a[5] == null", {"a": []}, True),
        ("$.n > 2", {"n": "3"}, None),
        ("$.n > 2", {"n": 2**60}, None),  # beyond 2^53: JSON.parse rounds it
        ("$.n > 2", {"n": float("inf")}, None),  # to_json writes null
        ("$ == 'plain'", "plain", True),
    ],
)
def test_decisions(source: str, message: Any, expected: bool | None) -> None:
    native = compile_native(source)
    assert native is not None
    assert native.decide(message) is expected
    if expected is not None:
        assert javascript(source, message) is expected


@pytest.mark.parametrize(
    "source",
    [
        "$.length == 1",  # inherited names are JavaScript's
        "$.constructor == 1",
        "$['__proto__'] == null",
        "!$.a == 1",  # `!` binds tighter than `==`
        "$.a == 010",  # octal in sloppy mode
        "$.a == 1e3",
        "$.a == 9007199254740993",  # rounded by JavaScript
        "$.a == 'it\\'s'",  # escapes
        "$.a",  # truthiness of a value
        "$.a == $.b",
        "$.a > 'b'",
        "_kafka.key == 'k'",
        "$.a == 1 ? true : false",
        "$.type == 'ALARM' /* comment */",
        "$a == 1",
    ],
)
def test_outside_the_grammar(source: str) -> None:
    assert compile_native(source) is None
