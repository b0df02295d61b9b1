"""Conductor conditions in the QuickJS sandbox: truthiness, evaluators, limits, failures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from streams.conditions import compile_condition, truthy
from streams.errors import ConditionError

META: dict[str, Any] = {"key": "k1", "headers": {"traceId": "t-9"}, "topic": "orders"}
ALARM = {"type": "ALARM", "severity": 3}

TRUTHINESS = [
    (True, True),
    (False, False),
    (1, True),
    (0, False),
    (-1, False),
    (0.5, True),
    ("true", False),
    ("1", False),
    ({}, False),
    ([], False),
    (None, False),
]


@pytest.mark.parametrize(("value", "expected"), TRUTHINESS)
def test_truthy_follows_conductor(value: Any, expected: bool) -> None:
    assert truthy(value) is expected


@pytest.mark.parametrize(("value", "expected"), TRUTHINESS)
def test_javascript_results_use_conductor_truthiness(value: Any, expected: bool) -> None:
    condition = compile_condition("$.v")
    assert condition.evaluate({"v": value}, META) is expected


@pytest.mark.parametrize(("value", "expected"), TRUTHINESS)
def test_value_param_uses_conductor_truthiness(value: Any, expected: bool) -> None:
    condition = compile_condition("v", "value-param")
    assert condition.evaluate({"v": value}, META) is expected


def test_truthy_decimal_is_a_number() -> None:
    assert truthy(Decimal("0.1")) is True
    assert truthy(Decimal("0")) is False


# --- javascript ----------------------------------------------------------------------------


def test_conductor_example_condition() -> None:
    condition = compile_condition("$.type == 'ALARM' && $.severity > 2")
    assert condition.evaluate(ALARM, META) is True
    assert condition.evaluate({"type": "ALARM", "severity": 2}, META) is False
    assert condition.evaluate({"type": "INFO", "severity": 9}, META) is False


@pytest.mark.parametrize("evaluator_type", ["javascript", "graaljs", "GraalJS", None])
def test_javascript_aliases(evaluator_type: str | None) -> None:
    assert compile_condition("$.severity > 2", evaluator_type).evaluate(ALARM, META) is True


def test_script_result_is_its_last_expression() -> None:
    condition = compile_condition("var s = $.severity;\nvar limit = 2;\ns > limit")
    assert condition.evaluate(ALARM, META) is True
    assert condition.evaluate({"severity": 1}, META) is False


def test_trailing_semicolon_and_comment() -> None:
    assert compile_condition("$.severity > 2;").evaluate(ALARM, META) is True
    assert compile_condition("$.severity > 2 // loud ones").evaluate(ALARM, META) is True


def test_kafka_metadata_is_bound() -> None:
    condition = compile_condition("_kafka.key == 'k1' && _kafka.headers.traceId == 't-9'")
    assert condition.evaluate(ALARM, META) is True
    assert condition.evaluate(ALARM, {**META, "key": "other"}) is False


def test_message_is_the_root_and_may_be_any_json() -> None:
    assert compile_condition("$ == 'ping'").evaluate("ping", META) is True
    assert compile_condition("$.length").evaluate([1, 2], META) is True
    assert compile_condition("$ === null").evaluate(None, META) is True


def test_empty_condition_is_always_true() -> None:
    for expression in ("", None):
        condition = compile_condition(expression)
        assert condition.always_true
        assert condition.evaluate({"anything": 0}, META) is True


def test_non_json_values_are_converted() -> None:
    message = {"raw": b"\x00\x01", "amount": Decimal("12.50"), "big": 2**70, "ids": {1, 2}}
    condition = compile_condition(
        "$.raw == 'AAE=' && $.amount == 12.5 && $.big > 1e20 && $.ids.length == 2"
    )
    assert condition.evaluate(message, META) is True


def test_condition_is_reused_across_messages() -> None:
    condition = compile_condition("$.n % 2 == 0")
    assert [condition.evaluate({"n": n}, META) for n in range(4)] == [True, False, True, False]


# --- sandbox -------------------------------------------------------------------------------


def test_no_host_access() -> None:
    names = ["require", "process", "std", "os", "print", "console", "setTimeout", "fetch"]
    expression = " && ".join(f"typeof {name} === 'undefined'" for name in names)
    assert compile_condition(expression).evaluate({}, META) is True


# --- failures ------------------------------------------------------------------------------


def test_parse_error_is_raised_at_compile_time() -> None:
    with pytest.raises(ConditionError) as caught:
        compile_condition("$.type ==")
    assert str(caught.value).startswith("condition '$.type ==' does not parse at line 1, ")


@pytest.mark.parametrize(
    ("source", "where"),
    [
        # Ends too early: QuickJS names the '}' of the wrapper; the user never wrote one.
        ("$.type == ", "at line 1, column 10 (end of condition): the condition is incomplete"),
        ("$.type == )", "at line 1, column 11 (')'): unexpected token in expression"),
        ("$.a == 1 &&\n  $.b == ]", "at line 2, column 10 (']'): unexpected token in expression"),
        (
            "$.a &&\n  $.b ==\n",
            "at line 2, column 9 (end of condition): the condition is incomplete",
        ),
        ("$.a $.b", "at line 1, column 5 ('$'): expecting ';'"),
        ("$.x == => 1", "at line 1, column 8 ('=>'): unexpected token in expression"),
        ("$.type == 'ALARM", 'at line 1, column 11 ("\'ALARM"): unexpected end of string'),
        ("var x = ;\nx > 1", "at line 1, column 9 (';'): unexpected token in expression"),
        ("$.f(1, 2", "at line 1, column 9 (end of condition): the condition is incomplete"),
    ],
)
def test_parse_error_points_into_the_users_text(source: str, where: str) -> None:
    with pytest.raises(ConditionError) as caught:
        compile_condition(source)
    assert str(caught.value) == f"condition {source!r} does not parse {where}"
    assert "'}'" not in str(caught.value)


def test_compiling_does_not_run_the_condition() -> None:
    condition = compile_condition("throw new Error('ran')")
    with pytest.raises(ConditionError) as caught:
        condition.evaluate({}, META)
    assert str(caught.value) == "condition threw: Error: ran"


def test_reference_error_becomes_condition_error() -> None:
    condition = compile_condition("x.y == 1")
    with pytest.raises(ConditionError) as caught:
        condition.evaluate({}, META)
    assert str(caught.value) == "condition threw: ReferenceError: 'x' is not defined"


def test_type_error_on_missing_field_becomes_condition_error() -> None:
    condition = compile_condition("$.a.b == 1")
    with pytest.raises(ConditionError) as caught:
        condition.evaluate({}, META)
    assert str(caught.value) == "condition threw: TypeError: cannot read property 'b' of undefined"
    assert condition.evaluate({"a": {"b": 1}}, META) is True


def test_throwing_a_non_error_value() -> None:
    with pytest.raises(ConditionError) as caught:
        compile_condition("throw 5").evaluate({}, META)
    assert str(caught.value) == "condition threw: 5"


def test_unknown_evaluator_type() -> None:
    with pytest.raises(ConditionError) as caught:
        compile_condition("$.a", "python")
    assert str(caught.value) == (
        "unknown evaluatorType 'python'; use one of graaljs, javascript, value-param"
    )


def test_infinite_loop_is_stopped_and_condition_recovers() -> None:
    condition = compile_condition("if ($.loop) { while (true) {} } $.ok", time_limit_ms=50)
    started = time.monotonic()
    with pytest.raises(ConditionError) as caught:
        condition.evaluate({"loop": True}, META)
    assert time.monotonic() - started < 5
    assert str(caught.value) == "condition timed out after 50 ms"
    assert condition.evaluate({"loop": False, "ok": True}, META) is True
    assert condition.evaluate({"loop": False, "ok": False}, META) is False


# QuickJS itself can crash the process on some out-of-memory paths (an upstream bug that depends
# on the allocation pattern and the limit), so this runs in a child process: a crash then fails
# this test instead of killing the whole run.
MEMORY_SCRIPT = """
from streams.conditions import compile_condition
from streams.errors import ConditionError

hog = "if ($.hog) { var s = 'x'; for (;;) { s = s + s; } } $.ok"
condition = compile_condition(hog, time_limit_ms=10000)
for _ in range(2):  # twice: a context that ran out of memory must never be reused
    try:
        condition.evaluate({"hog": True}, {})
        print("no error")
    except ConditionError as exc:
        print(exc)
    print(condition.evaluate({"hog": False, "ok": 1}, {}))
"""


def test_memory_limit_is_enforced_and_condition_recovers() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"child died ({done.returncode}): {done.stderr[-2000:]}"
    limit = 16 * 1024 * 1024
    assert (
        done.stdout.splitlines()
        == [
            f"condition exceeded its memory limit of {limit} bytes",
            "True",
        ]
        * 2
    )


def test_throwing_null_is_reported_as_ambiguous() -> None:
    condition = compile_condition("throw null")
    with pytest.raises(ConditionError) as caught:
        condition.evaluate({}, META)
    assert str(caught.value) == (
        f"condition threw null or exceeded its memory limit of {16 * 1024 * 1024} bytes"
    )


def test_stack_overflow_is_a_condition_error() -> None:
    condition = compile_condition("function f(n) { return f(n + 1); } $.deep ? f(0) : true")
    with pytest.raises(ConditionError) as caught:
        condition.evaluate({"deep": True}, META)
    assert str(caught.value) == "condition threw: InternalError: stack overflow"
    assert condition.evaluate({"deep": False}, META) is True


def test_unserialisable_message_is_a_condition_error() -> None:
    circular: dict[str, Any] = {}
    circular["self"] = circular
    with pytest.raises(ConditionError, match="message cannot be given to the condition"):
        compile_condition("true").evaluate(circular, META)


def test_invalid_limits() -> None:
    with pytest.raises(ConditionError):
        compile_condition("true", time_limit_ms=0)


# --- value-param ---------------------------------------------------------------------------


def test_value_param_reads_a_top_level_key() -> None:
    condition = compile_condition("approved", "value-param")
    assert condition.evaluate({"approved": True}, META) is True
    assert condition.evaluate({"approved": False}, META) is False
    assert condition.evaluate({}, META) is False


def test_value_param_prefers_a_literal_key_then_reads_a_path() -> None:
    condition = compile_condition("a.b", "value-param")
    assert condition.evaluate({"a.b": 1, "a": {"b": 0}}, META) is True
    assert condition.evaluate({"a": {"b": 2}}, META) is True
    assert condition.evaluate({"a": {"b": 0}}, META) is False


def test_value_param_reads_kafka_metadata() -> None:
    condition = compile_condition("_kafka.partition", "value-param")
    assert condition.evaluate("any message", {"partition": 3}) is True
    assert condition.evaluate("any message", {"partition": 0}) is False


def test_value_param_needs_an_object_message() -> None:
    with pytest.raises(ConditionError) as caught:
        compile_condition("a", "value-param").evaluate(["a"], META)
    assert str(caught.value) == "value-param condition 'a' needs a JSON object message, got list"
