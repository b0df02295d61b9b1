"""Turning record bytes into the value handlers see.

STRING integrations carry text; a value that is JSON becomes JSON data (so conditions can say
`$.type`), anything else stays a string, as Conductor's Kafka queue does. A null value (a
tombstone) is None. Bytes that are not UTF-8 cannot be a STRING message: DecodeError, which
dead-letters the record with its original bytes.

Valid JSON nested deeper than the parser's limit (`JSON_DEPTH_LIMIT`, orjson's) cannot become
data; taking it as text would make every condition false and the event would disappear with
no trace, so it is a DecodeError too ("JSON nested deeper than 1024 levels"): dead-lettered
at the decode stage with its bytes.
"""

from __future__ import annotations

from typing import Any

import orjson

from streams.errors import DecodeError

#: orjson's nesting limit: arrays and objects deeper than this do not parse.
JSON_DEPTH_LIMIT = 1024
#: The first byte of a JSON object or array (no whitespace before it).
_JSON_CONTAINER_START = (b"{", b"[")


def decode_text(data: bytes | None, what: str = "value") -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what} is not UTF-8 text (byte {exc.start}): {data[:32]!r}") from None


def decode_string_value(data: bytes | None) -> Any:
    """A STRING integration's value: JSON data when it parses as JSON, else the text."""
    if data is not None and data[:1] in _JSON_CONTAINER_START:
        # Most records are a JSON object: parse the bytes straight away (orjson checks the
        # UTF-8 itself); anything it refuses takes the whole way below, which decides as
        # before (text, or the DecodeError of bytes that are not UTF-8 or nested too deep).
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    text = decode_text(data)
    if text is None:
        return None
    stripped = text.strip()  # JSON allows whitespace on both sides: `true\n` is JSON
    if (
        stripped[:1] in ("{", "[", '"')
        or stripped[:1].isdigit()
        or stripped[:1] == "-"
        or stripped in ("true", "false", "null")
    ):
        try:
            return orjson.loads(data)  # type: ignore[arg-type]
        except orjson.JSONDecodeError as exc:
            if _too_deep(exc):  # JSON, just deeper than the parser goes
                raise DecodeError(
                    f"value is JSON nested deeper than {JSON_DEPTH_LIMIT} levels (the parser's "
                    f"limit; it opens level {JSON_DEPTH_LIMIT + 1} at character {exc.pos}); "
                    "flatten it, or send it as a JSON string"
                ) from None
            return text
    return text


def _too_deep(exc: orjson.JSONDecodeError) -> bool:
    """orjson's error for nesting past its limit ("depth limit exceeded"; older releases said
    "Recursion limit reached")."""
    message = str(exc).lower()
    return "depth limit" in message or "recursion limit" in message


def decode_key(data: bytes | None) -> str | None:
    """Keys are shown as text; a key that is not UTF-8 is shown as hex so it stays usable."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.hex()


def decode_headers(headers: Any) -> dict[str, str]:
    """Kafka headers (a list of (name, bytes) pairs) as a name → text map; last one wins."""
    result: dict[str, str] = {}
    if not headers:
        return result
    items = headers.items() if isinstance(headers, dict) else headers
    for name, value in items:
        if isinstance(value, bytes | bytearray):
            result[str(name)] = bytes(value).decode("utf-8", errors="replace")
        else:
            result[str(name)] = "" if value is None else str(value)
    return result
