"""Avro data as decoded by fastavro → the JSON-like data handlers see (rules in the package
docstring)."""

from __future__ import annotations

import base64
import datetime
import decimal
import math
import uuid
from typing import Any


def render(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {str(k): render(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        spec = "milliseconds" if value.microsecond % 1000 == 0 else "microseconds"
        if value.tzinfo is not None:
            text = value.astimezone(datetime.UTC).replace(tzinfo=None).isoformat(timespec=spec)
            return text + "Z"
        return value.isoformat(timespec=spec)
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, datetime.time):
        spec = "milliseconds" if value.microsecond % 1000 == 0 else "microseconds"
        return value.isoformat(timespec=spec)
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)
