"""Record bytes to handler values: STRING values are JSON when they parse and text otherwise, as
Conductor's Kafka queue reads them; keys and headers always end up as text."""

from __future__ import annotations

from typing import Any

import pytest

from streams.codecs import decode_headers, decode_key, decode_string_value, decode_text
from streams.errors import DecodeError


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b'{"type": "ALARM", "sev": 3}', {"type": "ALARM", "sev": 3}),
        (b'  {"nested": {"a": [1, 2]}}\n', {"nested": {"a": [1, 2]}}),
        (b'[1, "two", null]', [1, "two", None]),
        (b"42", 42),
        (b" 42 ", 42),
        (b"-1.5", -1.5),
        (b"true", True),
        (b"false\n", False),
        (b"true\r\n", True),
        (b'"quoted text"', "quoted text"),
        (b'"{\\"a\\": 1}"', '{"a": 1}'),  # a JSON string holding JSON stays that string
    ],
)
def test_json_values_become_data(data: bytes, value: Any) -> None:
    assert decode_string_value(data) == value
    assert type(decode_string_value(data)) is type(value)


@pytest.mark.parametrize(
    "data",
    [
        b"hello world",
        b"ALARM M-1 pressure high",
        b"{not json",
        b'{"a": 1',
        b"[1, 2",
        b"12abc",
        b"-",
        b"truthy",
        b"",
        b"   ",
        "grüße".encode(),
    ],
)
def test_other_text_stays_text(data: bytes) -> None:
    assert decode_string_value(data) == data.decode()


def test_null_value_and_json_null_are_none() -> None:
    assert decode_string_value(None) is None
    assert decode_string_value(b"null") is None


def test_non_utf8_value_is_a_decode_error() -> None:
    with pytest.raises(DecodeError) as info:
        decode_string_value(b"ok\xc3(")

    assert str(info.value) == "value is not UTF-8 text (byte 2): b'ok\\xc3('"


def test_decode_text_names_what_it_decodes() -> None:
    with pytest.raises(DecodeError) as info:
        decode_text(b"\xff", "key")

    assert str(info.value) == "key is not UTF-8 text (byte 0): b'\\xff'"
    assert decode_text(None) is None


def test_decode_key() -> None:
    assert decode_key(None) is None
    assert decode_key(b"M-1") == "M-1"
    assert decode_key("clé".encode()) == "clé"
    assert decode_key(b"\xff\x00\x10") == "ff0010"  # not UTF-8: hex, still usable as text
    assert decode_key(b"") == ""


def test_decode_headers_from_kafka_pairs() -> None:
    headers = [
        ("trace", b"t-1"),
        ("empty", None),
        ("dup", b"first"),
        ("dup", b"second"),
        ("binary", b"\xffx"),
        ("text", "already text"),
        ("raw", bytearray(b"ba")),
    ]

    assert decode_headers(headers) == {
        "trace": "t-1",
        "empty": "",
        "dup": "second",
        "binary": "\ufffdx",
        "text": "already text",
        "raw": "ba",
    }


def test_decode_headers_from_a_mapping_and_none() -> None:
    assert decode_headers({"a": b"1", "b": 2}) == {"a": "1", "b": "2"}
    assert decode_headers(None) == {}
    assert decode_headers([]) == {}


@pytest.mark.parametrize("depth", [1025, 1100, 10_000])
@pytest.mark.parametrize(("open_", "close"), [("[", "]"), ('{"a":', "}")])
def test_json_deeper_than_the_parser_goes_is_a_decode_error_not_text(
    depth: int, open_: str, close: str
) -> None:
    data = (open_ * depth + "1" * (open_ != "[") + close * depth).encode()

    with pytest.raises(DecodeError, match="JSON nested deeper than 1024 levels"):
        decode_string_value(data)


def test_json_at_the_parsers_depth_limit_is_data() -> None:
    value = decode_string_value(b"[" * 1024 + b"]" * 1024)

    assert isinstance(value, list)


def test_deep_json_record_is_dead_lettered_at_the_decode_stage_with_its_bytes() -> None:
    import base64

    from streams.deadletter import DeadLetter
    from streams.message import Envelope
    from streams.routing import decode

    raw = b'{"type": "ALARM", "d": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    envelope = Envelope(
        value=None,
        topic="alarms",
        partition=0,
        offset=3,
        integration="local",
        key=None,
        headers={},
        timestamp=None,
        raw_value=raw,
        raw_key=None,
    )

    letter = decode(envelope)

    assert isinstance(letter, DeadLetter)
    assert letter.stage == "decode"
    assert "JSON nested deeper than 1024 levels" in letter.reason
    assert base64.b64decode(letter.value or "") == raw
