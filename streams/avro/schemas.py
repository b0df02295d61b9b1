"""Avro schemas: parsed once, with the names the subject name strategies need."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import SchemaParseException, UnknownType

from streams.errors import HeraldError


class SchemaError(HeraldError):
    """A schema that does not parse, or a schema file that cannot be read."""


@dataclass(frozen=True, eq=False)
class Schema:
    """One Avro schema: the text sent to the registry, and its parsed form."""

    text: str
    raw: Any
    parsed: Any
    named: dict[str, Any] = field(default_factory=dict)  # full name -> parsed named type

    @property
    def full_name(self) -> str:
        """The name RecordNameStrategy uses: a named type's full name, else the type name."""
        raw = self.raw
        if isinstance(raw, dict):
            if raw.get("type") in ("record", "error", "enum", "fixed") and "name" in raw:
                name = str(raw["name"])
                namespace = raw.get("namespace")
                return name if "." in name or not namespace else f"{namespace}.{name}"
            return str(raw.get("type"))
        if isinstance(raw, str):
            return raw
        return "union"


def parse(source: Any) -> Schema:
    """A schema from JSON text or already-loaded JSON; SchemaError when it is not Avro."""
    if isinstance(source, str):
        try:
            raw = json.loads(source)
        except json.JSONDecodeError:
            raw = source.strip()  # a bare primitive name: string
            if not raw.isidentifier():
                raise SchemaError(f"schema is not JSON: {source[:80]!r}") from None
    else:
        raw = source
    named: dict[str, Any] = {}
    try:
        parsed = fastavro.parse_schema(raw, named_schemas=named, _write_hint=False)
    except (SchemaParseException, UnknownType, TypeError, KeyError, ValueError) as exc:
        raise SchemaError(f"invalid Avro schema: {exc}") from None
    text = json.dumps(raw, separators=(",", ":"))
    return Schema(text=text, raw=raw, parsed=parsed, named=named)


def load(spec: Any, *, base: str | None = None) -> Schema:
    """A schema given in a configuration: a mapping/list (the schema itself), JSON text, or the
    path of an `.avsc` file (relative paths from `base`, else the working directory)."""
    if isinstance(spec, str) and not spec.lstrip().startswith(("{", "[", '"')):
        path = Path(spec).expanduser()
        if spec.endswith(".avsc") or path.exists():
            if not path.is_absolute() and base is not None:
                path = Path(base) / path
            try:
                return parse(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise SchemaError(
                    f"cannot read schema file {str(path)!r}: {exc.strerror}"
                ) from None
    return parse(spec)
