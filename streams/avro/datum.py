"""JSON-like data → an Avro datum for a schema, or SchemaMismatch saying where and why.

The inverse of `render`, so a decoded message can be published again with the same schema. It
is strict where a silent change would lose data: a field the schema does not have, a number out
of an int's range, a decimal with more digits than its scale are errors, not dropped or rounded.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
import math
import uuid
from typing import Any

from streams.avro.schemas import Schema
from streams.errors import HeraldError

PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
INT_RANGE = (-(2**31), 2**31 - 1)
LONG_RANGE = (-(2**63), 2**63 - 1)
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class SchemaMismatch(HeraldError):
    """The value does not fit the schema; the message gives the path and the reason."""


def to_datum(schema: Schema, value: Any) -> Any:
    """The datum fastavro writes for `value`; SchemaMismatch when it does not fit."""
    return _Converter(schema.named).convert(schema.parsed, value, "$")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


class _Converter:
    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named

    def fail(self, path: str, message: str) -> SchemaMismatch:
        return SchemaMismatch(f"{path}: {message}")

    def convert(self, schema: Any, value: Any, path: str) -> Any:
        if isinstance(schema, list):
            return self.union(schema, value, path)
        if isinstance(schema, str):
            if schema in PRIMITIVES:
                return self.primitive(schema, value, path)
            if schema in self.named:
                return self.convert(self.named[schema], value, path)
            raise self.fail(path, f"unknown type {schema!r}")
        if isinstance(schema, dict):
            logical = schema.get("logicalType")
            if logical:
                converted = self.logical(schema, logical, value, path)
                if converted is not _NOT_LOGICAL:
                    return converted
            kind = schema.get("type")
            if kind in ("record", "error"):
                return self.record(schema, value, path)
            if kind == "enum":
                symbols = schema.get("symbols", [])
                if isinstance(value, str) and value in symbols:
                    return value
                raise self.fail(
                    path, f"expected one of the symbols {', '.join(symbols)}, got {_kind(value)}"
                )
            if kind == "array":
                if not isinstance(value, list):
                    raise self.fail(path, f"expected a list, got {_kind(value)}")
                return [
                    self.convert(schema["items"], v, f"{path}[{i}]") for i, v in enumerate(value)
                ]
            if kind == "map":
                if not isinstance(value, dict):
                    raise self.fail(path, f"expected an object (map), got {_kind(value)}")
                return {
                    str(k): self.convert(schema["values"], v, f"{path}.{k}")
                    for k, v in value.items()
                }
            if kind == "fixed":
                data = self.binary(value, path)
                if len(data) != schema["size"]:
                    raise self.fail(
                        path,
                        f"fixed {schema.get('name')} needs {schema['size']} bytes, got {len(data)}",
                    )
                return data
            return self.convert(kind, value, path)
        raise self.fail(path, f"unsupported schema {schema!r}")

    # ------------------------------------------------------------------ primitives

    def primitive(self, kind: str, value: Any, path: str) -> Any:
        if kind == "null":
            if value is None:
                return None
        elif kind == "boolean":
            if isinstance(value, bool):
                return value
        elif kind in ("int", "long"):
            number = self.integer(value)
            if number is not None:
                low, high = INT_RANGE if kind == "int" else LONG_RANGE
                if not low <= number <= high:
                    raise self.fail(path, f"{number} is out of the range of an Avro {kind}")
                return number
        elif kind in ("float", "double"):
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str) and value in _SPECIAL_FLOATS:
                return _SPECIAL_FLOATS[value]
        elif kind == "string":
            if isinstance(value, str):
                return value
        elif kind == "bytes":
            return self.binary(value, path)
        raise self.fail(path, f"expected {kind}, got {_kind(value)}")

    @staticmethod
    def integer(value: Any) -> int | None:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return None

    def binary(self, value: Any, path: str) -> bytes:
        if isinstance(value, bytes | bytearray):
            return bytes(value)
        if isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise self.fail(path, "expected base64 text for bytes") from None
        raise self.fail(path, f"expected bytes (base64 text), got {_kind(value)}")

    # ------------------------------------------------------------------ complex types

    def record(self, schema: dict[str, Any], value: Any, path: str) -> dict[str, Any]:
        name = schema.get("name", "record")
        if not isinstance(value, dict):
            raise self.fail(path, f"expected an object for record {name}, got {_kind(value)}")
        fields = schema.get("fields", [])
        known = {f["name"] for f in fields}
        unknown = [k for k in value if k not in known]
        if unknown:
            raise self.fail(
                path,
                f"record {name} has no field {unknown[0]!r} (its fields: {', '.join(known)})",
            )
        datum: dict[str, Any] = {}
        for f in fields:
            field_path = f"{path}.{f['name']}"
            if f["name"] in value:
                datum[f["name"]] = self.convert(f["type"], value[f["name"]], field_path)
            elif "default" in f:
                datum[f["name"]] = self.default(f["type"], f["default"], field_path)
            else:
                raise self.fail(field_path, f"missing (record {name} requires it)")
        return datum

    def default(self, schema: Any, value: Any, path: str) -> Any:
        """A field default, in Avro's JSON encoding (a union's default is its first branch)."""
        if isinstance(schema, list):
            schema = schema[0]
        kind = schema.get("type") if isinstance(schema, dict) else schema
        if kind in ("bytes", "fixed") and isinstance(value, str):
            return value.encode("latin-1")
        return self.convert(schema, value, path)

    def union(self, branches: list[Any], value: Any, path: str) -> Any:
        errors: list[str] = []
        natural = [b for b in branches if self.natural(b, value)]
        for branch in natural + [b for b in branches if b not in natural]:
            try:
                datum = self.convert(branch, value, path)
            except SchemaMismatch as exc:
                errors.append(str(exc).split(": ", 1)[-1])
                continue
            # fastavro's tuple notation: the branch is the one chosen here, not the first
            # branch the datum happens to validate against (an int also validates as double).
            return (self.branch_label(branch), datum)
        if isinstance(value, dict) and len(value) == 1:  # Avro JSON: {"branch": value}
            ((label, inner),) = value.items()
            for branch in branches:
                if label in (self.type_name(branch), self.branch_label(branch)):
                    datum = self.convert(branch, inner, f"{path}.{label}")
                    return (self.branch_label(branch), datum)
        names = ", ".join(self.type_name(b) for b in branches)
        raise self.fail(path, f"fits no branch of the union [{names}]: {'; '.join(errors)}")

    def resolve(self, schema: Any) -> Any:
        if isinstance(schema, str) and schema in self.named:
            return self.named[schema]
        return schema

    def type_name(self, schema: Any) -> str:
        schema = self.resolve(schema)
        if isinstance(schema, dict):
            if schema.get("type") in ("record", "error", "enum", "fixed"):
                return str(schema.get("name"))
            return str(schema.get("logicalType") or schema.get("type"))
        return str(schema)

    def branch_label(self, schema: Any) -> str:
        """How fastavro names a union branch: a named type's full name, else its type."""
        schema = self.resolve(schema)
        if isinstance(schema, dict):
            if schema.get("type") in ("record", "error", "enum", "fixed"):
                return str(schema.get("name"))
            return str(schema.get("type"))
        return str(schema)

    def natural(self, schema: Any, value: Any) -> bool:
        """Whether `value` is the JSON kind this branch is written from without conversion."""
        schema = self.resolve(schema)
        kind = schema.get("type") if isinstance(schema, dict) else schema
        if isinstance(schema, dict) and schema.get("logicalType"):
            return False
        if value is None:
            return kind == "null"
        if isinstance(value, bool):
            return kind == "boolean"
        if isinstance(value, int):
            return kind in ("int", "long")
        if isinstance(value, float):
            return kind in ("float", "double")
        if isinstance(value, str):
            return kind in ("string", "enum")
        if isinstance(value, dict):
            return kind in ("record", "error", "map")
        if isinstance(value, list):
            return kind == "array"
        return False

    # ------------------------------------------------------------------ logical types

    def logical(self, schema: dict[str, Any], logical: str, value: Any, path: str) -> Any:
        kind = schema.get("type")
        if logical == "decimal" and kind in ("bytes", "fixed"):
            return self.decimal(schema, value, path)
        if logical == "uuid" and kind == "string":
            if isinstance(value, str):
                try:
                    uuid.UUID(value)
                except ValueError:
                    raise self.fail(path, f"expected a UUID, got {_kind(value)}") from None
                return value
            raise self.fail(path, f"expected a UUID as text, got {_kind(value)}")
        if logical == "date" and kind == "int":
            if isinstance(value, str):
                try:
                    return datetime.date.fromisoformat(value)
                except ValueError:
                    raise self.fail(
                        path, f"expected a date YYYY-MM-DD, got {_kind(value)}"
                    ) from None
            return self.primitive("int", value, path)
        if logical in ("time-millis", "time-micros") and kind in ("int", "long"):
            if isinstance(value, str):
                try:
                    return datetime.time.fromisoformat(value)
                except ValueError:
                    raise self.fail(
                        path, f"expected a time HH:MM:SS[.fff], got {_kind(value)}"
                    ) from None
            return self.primitive(kind, value, path)
        if (
            logical
            in (
                "timestamp-millis",
                "timestamp-micros",
                "local-timestamp-millis",
                "local-timestamp-micros",
            )
            and kind == "long"
        ):
            if isinstance(value, str):
                try:
                    moment = datetime.datetime.fromisoformat(value)
                except ValueError:
                    raise self.fail(
                        path, f"expected an ISO 8601 timestamp, got {_kind(value)}"
                    ) from None
                local = logical.startswith("local-")
                if local:
                    return (
                        moment.replace(tzinfo=None)
                        if moment.tzinfo is None
                        else (moment.astimezone(datetime.UTC).replace(tzinfo=None))
                    )
                return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)
            return self.primitive("long", value, path)
        return _NOT_LOGICAL

    def decimal(self, schema: dict[str, Any], value: Any, path: str) -> decimal.Decimal:
        if isinstance(value, bool) or not isinstance(value, int | float | str | decimal.Decimal):
            raise self.fail(path, f"expected a decimal (text or number), got {_kind(value)}")
        try:
            number = decimal.Decimal(str(value))
        except decimal.InvalidOperation:
            raise self.fail(path, f"expected a decimal, got {_kind(value)}") from None
        if not number.is_finite():
            raise self.fail(path, "a decimal must be finite")
        scale = int(schema.get("scale", 0))
        precision = int(schema.get("precision", 0))
        exponent = number.as_tuple().exponent
        assert isinstance(exponent, int)
        if -exponent > scale:
            raise self.fail(
                path, f"{number} has more than the {scale} decimal places of the schema"
            )
        scaled = number.quantize(decimal.Decimal(1).scaleb(-scale))
        digits = len(scaled.as_tuple().digits)
        if precision and digits > precision:
            raise self.fail(path, f"{number} has more than the {precision} digits of the schema")
        return scaled


_NOT_LOGICAL: Any = object()
