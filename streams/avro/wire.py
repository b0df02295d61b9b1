"""The Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary."""

from __future__ import annotations

import struct

from streams.errors import DecodeError

MAGIC = 0
HEADER = 5


def frame(schema_id: int, payload: bytes) -> bytes:
    return struct.pack(">bI", MAGIC, schema_id) + payload


def schema_id(data: bytes | None) -> int | None:
    """The schema id of wire-format bytes; None when the bytes are not in the wire format."""
    if data is None or len(data) < HEADER or data[0] != MAGIC:
        return None
    (ident,) = struct.unpack_from(">I", data, 1)
    return ident or None  # registries start ids at 1


def split(data: bytes, what: str = "value") -> tuple[int, bytes]:
    """(schema id, Avro payload), or DecodeError saying why the bytes are not wire format."""
    ident = schema_id(data)
    if ident is None:
        if not data:
            raise DecodeError(f"{what} is empty, not Confluent Avro (magic byte 0 + schema id)")
        if data[0] != MAGIC:
            raise DecodeError(
                f"{what} is not in the Confluent Avro wire format: first byte is "
                f"0x{data[0]:02x}, not the magic byte 0x00 (was it written as a STRING?): "
                f"{data[:16]!r}"
            )
        raise DecodeError(f"{what} is too short for the Confluent Avro wire format: {data!r}")
    return ident, data[HEADER:]
