"""Conductor `${...}` templating and expandInlineJSON, case by case (ParametersUtils, JsonUtils)."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.errors import TemplateError
from streams.templating import (
    compile_path,
    compile_template,
    expand_inline_json,
    has_no_inline_json,
)

MESSAGE: dict[str, Any] = {
    "orderId": "o-1",
    "count": 3,
    "price": 9.5,
    "paid": True,
    "note": None,
    "customer": {"id": 7, "name": "Ann"},
    "tags": ["a", "b", "c"],
    "payload": {"a": {"b": [10, 20, {"c": "deep"}]}},
    "items": [{"sku": "x", "qty": 1}, {"sku": "y", "qty": 2}, {"qty": 5}],
    "odd key": "spaced",
    "field": "orderId",
    "_kafka": "the message's own field, never read by ${_kafka...}",
}
META: dict[str, Any] = {
    "key": "k1",
    "headers": {"traceId": "t-9"},
    "topic": "orders",
    "partition": 0,
    "offset": 42,
}


def render(template: Any, message: Any = MESSAGE, meta: dict[str, Any] | None = META) -> Any:
    return compile_template(template).render(message, meta)


# --- a string that is exactly one reference keeps the value's type -------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${orderId}", "o-1"),
        ("${count}", 3),
        ("${price}", 9.5),
        ("${paid}", True),
        ("${note}", None),
        ("${customer}", {"id": 7, "name": "Ann"}),
        ("${tags}", ["a", "b", "c"]),
        ("${customer.id}", 7),
    ],
)
def test_single_reference_yields_typed_value(template: str, expected: Any) -> None:
    result = render(template)
    assert result == expected
    assert type(result) is type(expected)


def test_missing_path_yields_null() -> None:
    assert render("${nope}") is None
    assert render("${customer.nope.deeper}") is None
    assert render("${tags.name}") is None  # a property of a list does not exist


# --- otherwise references are interpolated as text -------------------------------------------


def test_interpolation_of_scalars() -> None:
    assert render("order ${orderId} x${count} at ${price}") == "order o-1 x3 at 9.5"
    assert render("paid=${paid} note=${note} missing=${nope}") == "paid=true note=null missing=null"


def test_interpolation_of_objects_and_lists_is_compact_json() -> None:
    assert render("c=${customer}") == 'c={"id":7,"name":"Ann"}'
    assert render("t=${tags}") == 't=["a","b","c"]'


def test_two_references_without_text_are_interpolated() -> None:
    assert render("${count}${count}") == "33"


def test_interpolation_of_non_json_values() -> None:
    message = {"raw": b"\x00\x01", "amount": Decimal("12.50"), "n": float("nan")}
    assert render("${raw}|${amount}|${n}", message) == "AAE=|12.5|NaN"
    assert render("${raw}", message) == b"\x00\x01"  # typed: the value itself


# --- escapes -------------------------------------------------------------------------------


def test_double_dollar_escapes_a_literal_reference() -> None:
    assert render("$${orderId}") == "${orderId}"
    assert render("cost $${x} for ${orderId}") == "cost ${x} for o-1"
    assert render("$$${orderId}") == "$${orderId}"  # as Conductor: only `$${` is unescaped


def test_escape_only_template_is_constant() -> None:
    template = compile_template("$${orderId}")
    assert template.is_constant
    assert template.references == []


def test_lone_braces_and_dollars_are_literal() -> None:
    assert render("a } b { c $ d $") == "a } b { c $ d $"


# --- recursion ---------------------------------------------------------------------------------


def test_dicts_and_lists_render_recursively_and_keys_stay_literal() -> None:
    template = {
        "name": "flow",
        "version": 2,
        "${orderId}": "key is not templated",
        "input": {"id": "${orderId}", "list": ["${count}", "n=${count}", [True, "${paid}"]]},
    }
    assert render(template) == {
        "name": "flow",
        "version": 2,
        "${orderId}": "key is not templated",
        "input": {"id": "o-1", "list": [3, "n=3", [True, True]]},
    }


def test_rendered_containers_are_fresh() -> None:
    template = compile_template({"input": {"static": [1, 2], "id": "${orderId}"}})
    first = template.render(MESSAGE, META)
    first["input"]["static"].append(3)
    first["extra"] = 1
    assert template.render(MESSAGE, META) == {"input": {"static": [1, 2], "id": "o-1"}}


def test_non_string_scalars_pass_through() -> None:
    assert render([1, 2.5, True, None]) == [1, 2.5, True, None]


# --- paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${tags[0]}", "a"),
        ("${tags[2]}", "c"),
        ("${tags[-1]}", "c"),
        ("${tags[3]}", None),
        ("${tags[-4]}", None),
        ("${payload.a.b[2].c}", "deep"),
        ("${payload.a.b[1]}", 20),
        ("${$.orderId}", "o-1"),
        ("${$['odd key']}", "spaced"),
        ('${customer["name"]}', "Ann"),
        ("${items[*].sku}", ["x", "y"]),
        ("${items[*].qty}", [1, 2, 5]),
        ("${customer.*}", [7, "Ann"]),
        ("${tags.length()}", 3),
        ("${ orderId }", "o-1"),
    ],
)
def test_jsonpath_semantics(template: str, expected: Any) -> None:
    assert render(template) == expected


def test_dollar_is_the_whole_message() -> None:
    assert render("${$}") == MESSAGE
    assert render("${$}", "plain text") == "plain text"
    assert render("${$[1]}", ["a", "b"]) == "b"


def test_paths_into_non_objects_yield_null() -> None:
    for message in ("text", 42, None, ["a"]):
        assert render("${orderId}", message) is None


def test_nested_reference_builds_the_path() -> None:
    assert render("${${field}}") == "o-1"
    assert render("v=${customer.${nope}}") == "v=null"


# --- `_kafka` metadata -------------------------------------------------------------------------


def test_kafka_paths_read_the_metadata() -> None:
    assert render("${_kafka.key}") == "k1"
    assert render("${_kafka.headers.traceId}") == "t-9"
    assert render("${_kafka.offset}") == 42
    assert render("${$._kafka.topic}") == "orders"
    assert render("${_kafka}") == META
    assert render("${_kafka.headers.missing}") is None
    assert render("trace ${_kafka.headers.traceId} @${_kafka.offset}") == "trace t-9 @42"


def test_kafka_paths_without_metadata_are_null() -> None:
    assert compile_template("${_kafka.key}").render(MESSAGE) is None


# --- compile-time properties and errors --------------------------------------------------------


def test_constant_template_returns_the_constant() -> None:
    template = compile_template("no references here")
    assert template.is_constant
    assert template.render(MESSAGE, META) == "no references here"
    assert compile_template({"a": [1, {"b": "c"}]}).is_constant


def test_references_are_listed_in_order() -> None:
    template = compile_template({"a": "${orderId}", "b": ["x ${count} ${_kafka.key}", "${${f}}"]})
    assert not template.is_constant
    assert template.references == ["orderId", "count", "_kafka.key", "${f}"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("${", "$: unclosed '${' at position 0 in '${'"),
        ("abc ${orderId", "$: unclosed '${' at position 4 in 'abc ${orderId'"),
        ("x ${a.${b}", "$: unclosed '${' at position 2 in 'x ${a.${b}'"),
        ("${}", "$: empty reference '${}' at position 0 in '${}'"),
        ("a ${  }", "$: empty reference '${}' at position 2 in 'a ${  }'"),
        (
            "${a[?(@.x)]}",
            "$: path 'a[?(@.x)]': [?(@.x)] is not supported (only [n], [-n], ['name'] and [*])"
            " in '${a[?(@.x)]}'",
        ),
        ("${a..b}", "$: path 'a..b': deep scan '..' is not supported in '${a..b}'"),
        (
            "${a.max()}",
            "$: path 'a.max()': function max() is not supported (only length()) in '${a.max()}'",
        ),
        ({"input": {"ids": [1, "${"]}}, "$.input.ids[1]: unclosed '${' at position 0 in '${'"),
    ],
)
def test_syntax_errors_are_raised_at_compile_time(template: Any, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template(template)
    assert str(caught.value) == message


def test_render_raises_only_template_error() -> None:
    circular: dict[str, Any] = {}
    circular["self"] = circular
    with pytest.raises(TemplateError, match="rendering failed"):
        compile_template("x=${c}").render({"c": circular}, META)


def test_compile_path_marks_metadata_paths() -> None:
    assert compile_path("_kafka.key").on_meta
    assert not compile_path("key").on_meta
    with pytest.raises(TemplateError):
        compile_path("a[")


# --- expandInlineJSON (JsonUtils.expand) -------------------------------------------------------


def test_expand_parses_json_objects_and_arrays_in_map_values() -> None:
    value = {"a": '{"b": 1}', "l": " [1, 2]", "nested": {"c": '{"d": [true]}'}}
    assert expand_inline_json(value) == {"a": {"b": 1}, "l": [1, 2], "nested": {"c": {"d": [True]}}}


def test_expand_leaves_other_strings_alone() -> None:
    value = {"text": "hello", "num": "123", "bool": "true", "broken": "{not json", "n": 5}
    assert expand_inline_json(value) == value


def test_expand_walks_lists_but_not_strings_directly_in_them() -> None:
    # Conductor's expandList never writes a parsed string back, so only maps inside lists expand.
    value = {"list": ['{"x": 1}', {"y": '{"z": 2}'}, ["[3]"]]}
    assert expand_inline_json(value) == {"list": ['{"x": 1}', {"y": {"z": 2}}, ["[3]"]]}


def test_expand_does_not_reexpand_parsed_values() -> None:
    value = {"outer": '{"inner": "{\\"x\\": 1}"}'}
    assert expand_inline_json(value) == {"outer": {"inner": '{"x": 1}'}}


def test_expand_top_level_string_parses_any_json() -> None:
    assert expand_inline_json('{"a": 1}') == {"a": 1}
    assert expand_inline_json("42") == 42
    assert expand_inline_json("not json") == "not json"
    assert expand_inline_json(7) == 7


def test_expand_does_not_modify_its_input() -> None:
    value = {"a": '{"b": 1}', "list": [{"c": "[1]"}]}
    before = copy.deepcopy(value)
    expand_inline_json(value)
    assert value == before


def test_expanded_message_feeds_templates() -> None:
    message = expand_inline_json({"body": '{"order": {"id": "o-9"}}'})
    assert render("${body.order.id}", message) == "o-9"


def test_a_message_with_nothing_to_expand_is_returned_itself_not_copied() -> None:
    message = {"type": "INFO", "n": [1, {"s": "plain"}, ["{not a dict value}"]], "d": {"x": 1}}
    assert expand_inline_json(message) is message


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"a": '{"b": 1}'}, {"a": {"b": 1}}),
        ({"a": " \n [1, 2]"}, {"a": [1, 2]}),
        ({"l": [{"a": "[3]"}]}, {"l": [{"a": [3]}]}),
        ({"d": {"e": {"f": '{"g": "h"}'}}}, {"d": {"e": {"f": {"g": "h"}}}}),
        ({"a": "{not json"}, {"a": "{not json"}),
    ],
)
def test_inline_json_anywhere_in_dict_values_is_still_found(message: Any, expected: Any) -> None:
    original = copy.deepcopy(message)
    assert expand_inline_json(message) == expected
    assert message == original


def test_inline_json_below_the_scan_depth_is_expanded() -> None:
    """Past the scan's depth the expansion runs as before; a value found there is expanded."""
    message: Any = {"inner": '{"found": true}'}
    for _ in range(150):
        message = {"a": message}
    expanded = expand_inline_json(message)
    for _ in range(150):
        expanded = expanded["a"]
    assert expanded == {"inner": {"found": True}}


# --------------------------------------------------------------------------- has_no_inline_json

_STRINGS = st.one_of(
    st.text(max_size=8),
    st.sampled_from(
        ['{"a": 1}', "[1, 2]", ' {"a": 1}', "\n[1]", "\u00a0{}", "\u3000[]", "\x1c{}", "x{", "{"]
    ),
)
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), _STRINGS),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_STRINGS, inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(
    value=st.dictionaries(_STRINGS, _JSON, max_size=6),
    spacing=st.sampled_from(["orjson", "spaced", "indented", "ascii"]),
)
def test_a_document_said_to_have_no_inline_json_expands_to_itself(value: Any, spacing: str) -> None:
    """`has_no_inline_json` may say no where there is nothing to expand, never yes where
    there is: whatever the JSON text's spacing and escaping, when it says yes the expansion
    of the decoded value is the value."""
    raw = {
        "orjson": lambda: orjson.dumps(value),
        "spaced": lambda: json.dumps(value, ensure_ascii=False).encode(),
        "indented": lambda: json.dumps(value, indent=2, ensure_ascii=False).encode(),
        "ascii": lambda: json.dumps(value).encode(),  # non-ASCII as \\u escapes
    }[spacing]()
    decoded = orjson.loads(raw)
    if has_no_inline_json(raw):
        assert expand_inline_json(decoded) is decoded


def test_inline_json_is_seen_in_the_bytes_however_it_is_written() -> None:
    for raw in (
        b'{"a":"{\\"b\\": 1}"}',
        b'{"a":"[1]"}',
        b'{"a":" {}"}',
        b'{"a":"\\n[]"}',
        b'{"a":"\\u0020{}"}',
        '{"a":"\u00a0{}"}'.encode(),
        b'{"a":{"b":["x", "{}"]}}',  # a list element: Conductor leaves it, the scan decides
    ):
        assert not has_no_inline_json(raw), raw
    assert has_no_inline_json(b'{"type":"ALARM","n":1,"m":{"k":"v"},"l":[1,"x"]}')
    deep = b'{"a":' * 101 + b"1" + b"}" * 101  # deeper than the scan goes: left to it
    assert not has_no_inline_json(deep)
