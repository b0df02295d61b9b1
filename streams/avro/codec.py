"""Decode and encode Confluent-framed Avro for one integration.

Decoding is split so the per-message path stays synchronous: `prepare` (async) makes sure the
writer schemas a record names are cached, waiting out registry outages; `decode_value` and
`decode_key` (sync) then never do I/O. A schema id the registry says does not exist (40403) is
remembered for the record so decoding dead-letters it with that reason.

Encoding (`encode`) resolves the schema (given inline, or registered under a subject), finds or
registers its id under the subject the integration's `valueSubjectNameStrategy` gives, checks
the value against it and frames it.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fastavro
import orjson

from streams import codecs
from streams.avro import wire
from streams.avro.datum import SchemaMismatch, to_datum
from streams.avro.registry import SCHEMA_NOT_FOUND, RegistryClient, RegistryError
from streams.avro.render import render
from streams.avro.schemas import Schema, SchemaError, load
from streams.config.models import Integration, SubjectNameStrategy
from streams.errors import DecodeError, HeraldError

MISSING_TTL = 30.0  # seconds an unknown schema id is remembered as unknown


class EncodeError(HeraldError):
    """The value cannot be published as Avro; `retryable` when the registry was unavailable."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class AvroSpec:
    """How a publish action wants its value written."""

    schema: str | None = None  # schema JSON text (given inline or from a file)
    subject: str | None = None  # look the schema up under this subject instead
    version: str = "latest"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "subject": self.subject, "version": self.version}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AvroSpec:
        data = data or {}
        return cls(data.get("schema"), data.get("subject"), str(data.get("version") or "latest"))


def subject_name(
    strategy: SubjectNameStrategy, topic: str, schema: Schema, *, key: bool = False
) -> str:
    """The registry subject of a value (or key) schema on a topic, as Confluent names it."""
    if strategy is SubjectNameStrategy.TOPIC:
        return f"{topic}-{'key' if key else 'value'}"
    if strategy is SubjectNameStrategy.RECORD:
        return schema.full_name
    return f"{topic}-{schema.full_name}"


class AvroCodec:
    def __init__(self, integration: Integration, registry: RegistryClient) -> None:
        assert integration.schemaRegistry is not None
        self.integration = integration
        self.settings = integration.schemaRegistry
        self.registry = registry
        self._missing: dict[int, tuple[float, str]] = {}

    # ------------------------------------------------------------------ consuming

    def unknown_ids(self, raw_value: bytes | None, raw_key: bytes | None) -> set[int]:
        ids = {wire.schema_id(raw_value), wire.schema_id(raw_key)} - {None}
        now = time.monotonic()
        return {
            i
            for i in ids
            if self.registry.cached(i) is None  # type: ignore[arg-type]
            and not (i in self._missing and self._missing[i][0] > now)  # type: ignore[index]
        }  # type: ignore[return-value]

    async def prepare(self, raw_value: bytes | None, raw_key: bytes | None) -> None:
        """Fetch the schemas the record names; RegistryError when the registry cannot answer
        (the caller waits and tries again); a schema that does not exist is remembered."""
        for schema_id in sorted(self.unknown_ids(raw_value, raw_key)):
            try:
                await self.registry.schema_by_id(schema_id)
            except RegistryError as exc:
                if exc.status == 404 and exc.error_code == SCHEMA_NOT_FOUND:
                    self._missing[schema_id] = (time.monotonic() + MISSING_TTL, str(exc))
                    continue
                raise

    async def wait_ready(
        self,
        raw_value: bytes | None,
        raw_key: bytes | None,
        on_wait: Callable[[RegistryError, float], None],
        *,
        max_delay: float = 30.0,
    ) -> None:
        """`prepare`, retrying with backoff for as long as the registry cannot answer."""
        delay = 0.25
        while True:
            try:
                await self.prepare(raw_value, raw_key)
                return
            except RegistryError as exc:
                on_wait(exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)

    def decode_value(self, data: bytes | None) -> Any:
        if data is None:
            return None  # a tombstone
        return render(self._read(data, "value"))

    def decode_key(self, data: bytes | None) -> str | None:
        """The key as text: Avro keys rendered (JSON text unless a string), others as usual."""
        if wire.schema_id(data) is not None:
            try:
                value = render(self._read(data, "key"))  # type: ignore[arg-type]
            except DecodeError:
                return codecs.decode_key(data)
            return value if isinstance(value, str) else orjson.dumps(value).decode()
        return codecs.decode_key(data)

    def _read(self, data: bytes, what: str) -> Any:
        schema_id, payload = wire.split(data, what)
        schema = self.registry.cached(schema_id)
        if schema is None:
            missing = self._missing.get(schema_id)
            if missing is not None:
                raise DecodeError(
                    f"{what}: unknown schema id {schema_id}: the schema registry has no such "
                    f"schema ({missing[1].split(': ', 1)[-1]})"
                )
            raise DecodeError(f"{what}: schema id {schema_id} was not fetched (internal)")
        stream = io.BytesIO(payload)
        try:
            value = fastavro.schemaless_reader(stream, schema.parsed, None)
        except Exception as exc:  # fastavro raises many kinds for corrupt data
            raise DecodeError(
                f"{what}: bytes do not parse as Avro with schema id {schema_id} "
                f"({schema.full_name}): {exc.__class__.__name__}: {exc}"
            ) from None
        left = len(payload) - stream.tell()
        if left:
            raise DecodeError(
                f"{what}: {left} byte(s) left after the Avro data of schema id {schema_id} "
                f"({schema.full_name}): not written with this schema"
            )
        return value

    # ------------------------------------------------------------------ publishing

    async def encode(self, topic: str, value: Any, spec: AvroSpec) -> bytes:
        """Confluent-framed Avro of `value`; EncodeError saying why it cannot be."""
        try:
            schema_id, schema = await self._schema_for(topic, spec)
        except RegistryError as exc:
            raise EncodeError(str(exc), retryable=exc.unavailable) from None
        except SchemaError as exc:
            raise EncodeError(f"publish.schema: {exc}", retryable=False) from None
        try:
            datum = to_datum(schema, value)
        except SchemaMismatch as exc:
            raise EncodeError(
                f"value does not match the Avro schema {schema.full_name} (id {schema_id}): {exc}",
                retryable=False,
            ) from None
        buffer = io.BytesIO()
        try:
            fastavro.schemaless_writer(buffer, schema.parsed, datum)
        except Exception as exc:
            raise EncodeError(
                f"value does not match the Avro schema {schema.full_name}: {exc}", retryable=False
            ) from None
        return wire.frame(schema_id, buffer.getvalue())

    async def _schema_for(self, topic: str, spec: AvroSpec) -> tuple[int, Schema]:
        strategy = self.settings.valueSubjectNameStrategy
        if spec.schema is not None:
            schema = load(spec.schema)
            subject = subject_name(strategy, topic, schema)
            if self.settings.autoRegisterSchemas:
                return await self.registry.register(subject, schema), schema
            try:
                return await self.registry.lookup(subject, schema), schema
            except RegistryError as exc:
                if exc.status == 404:
                    raise RegistryError(
                        f"the schema {schema.full_name} is not registered under subject "
                        f"{subject!r} and autoRegisterSchemas is false; register it, or turn "
                        f"autoRegisterSchemas on ({exc})",
                        status=404,
                        error_code=exc.error_code,
                    ) from None
                raise
        if spec.subject is not None:
            return await self.registry.version(spec.subject, spec.version)
        if strategy is not SubjectNameStrategy.TOPIC:
            raise RegistryError(
                f"no schema to publish to {topic!r} with: with {strategy.value} the subject "
                "depends on the record name; set publish.schema or publish.schemaSubject"
            )
        return await self.registry.version(f"{topic}-value", spec.version)
