"""Publish action: write a derived message to `kafka:<integration>:<topic>`.

Delivery waits for the broker's acknowledgement, unlike Conductor's fire-and-forget EVENT task.

`format`: `auto` writes Avro when the destination integration's sendingProtocol is AVRO (or a
schema is given), else text for a string value and JSON for anything else; `json`, `string`
and `avro` force one. Avro needs a schema: `schema` (the schema as a mapping, JSON text, or the
path of an `.avsc` file), or `schemaSubject` (+ `schemaVersion`, default latest) to use one
registered in the schema registry; without either, `<topic>-value`'s latest version
(TopicNameStrategy only). An inline schema is checked when the configuration loads, and the
rendered value against it before the action is produced (a mismatch dead-letters the message
with the reason); registering it happens at delivery, under the subject the destination
integration's `valueSubjectNameStrategy` gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import Any

import orjson
from pydantic import Field, field_validator, model_validator

from streams.actions.base import (
    TEMPLATED,
    ActionInputError,
    ActionRequest,
    Delivery,
    DeliveryContext,
    Origin,
    ParamsModel,
    Renderer,
    static_value,
)
from streams.avro.datum import SchemaMismatch, to_datum
from streams.avro.schemas import Schema, SchemaError, load, parse
from streams.config.models import EVENT_PATTERN, Target, topic_safe

FORMATS = ("auto", "json", "string", "avro")


def destination(to: Any) -> tuple[str | None, str]:
    """(integration or None for the home one, topic) of a rendered `to`; ValueError if it is
    not `kafka:<integration>:<topic>` with a legal topic name. The one rule, at load for a
    `to` without a template and per message for a templated one."""
    match = EVENT_PATTERN.match(str(to or ""))
    if not match:
        raise ValueError(
            f"{to!r} must be 'kafka:<integration>:<topic>' (or 'kafka:<topic>' for the home "
            "integration)"
        )
    topic_safe(match.group("topic"), "topic")
    return match.group("integration"), match.group("topic")


class PublishParams(ParamsModel):
    to: str
    key: Any = None
    headers: dict[str, Any] = {}
    value: Any = "${$}"
    format: str = "auto"  # auto: Avro for AVRO integrations, else strings as text, rest as JSON
    # Avro schema: a mapping, JSON text or an .avsc path (kept as the schema's JSON text)
    schema_: Any = Field(default=None, alias="schema")
    schemaSubject: str | None = None
    schemaVersion: int | str = "latest"

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in FORMATS:
            raise ValueError(f"unknown format {value!r}; use one of {', '.join(FORMATS)}")
        return value

    @field_validator("schema_")
    @classmethod
    def _parsed_schema(cls, value: Any) -> str | None:
        if value is None:
            return None
        try:
            return load(value).text
        except SchemaError as exc:
            raise ValueError(f"schema: {exc}") from None

    @field_validator("schemaVersion")
    @classmethod
    def _version(cls, value: int | str) -> int | str:
        if value != "latest" and not (str(value).isdigit() and int(value) >= 1):
            raise ValueError("schemaVersion must be a version number (1, 2, ...) or latest")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PublishParams:
        if (self.schema_ is not None or self.schemaSubject) and self.format in ("json", "string"):
            raise ValueError(f"a schema is for Avro; format {self.format} does not use one")
        if self.schema_ is not None and self.schemaSubject:
            raise ValueError("give schema or schemaSubject, not both")
        return self

    @property
    def wants_avro(self) -> bool:
        """Avro whatever the destination's sendingProtocol."""
        return self.format == "avro" or self.schema_ is not None or bool(self.schemaSubject)


class Publish(Renderer[PublishParams]):
    """A message for a Kafka topic, rendered from a message."""

    name = "publish"
    Params = PublishParams

    def template_source(self) -> dict[str, Any]:
        data = super().template_source()
        for name in ("format", "schema_", "schema", "schemaSubject", "schemaVersion"):
            data.pop(name, None)
        return data

    @cached_property
    def avro_schema(self) -> Schema | None:
        text = self.params.schema_
        return parse(text) if text is not None else None

    def finish(self, rendered: dict[str, Any], origin: Origin) -> dict[str, Any]:
        try:
            integration, topic = destination(rendered.get("to"))
        except ValueError as exc:
            raise ActionInputError(f"publish.to {exc}") from None
        fmt = self.params.format
        value = rendered.get("value")
        if fmt == "string" or (fmt == "auto" and isinstance(value, str)):
            text = value if isinstance(value, str) else orjson.dumps(value).decode()
            encoded = {"text": text}
        else:
            encoded = {"json": value}
        key = rendered.get("key")
        payload = {
            "integration": integration,
            "topic": topic,
            "key": None if key is None else str(key),
            "headers": {
                str(k): "" if v is None else str(v)
                for k, v in (rendered.get("headers") or {}).items()
            },
            "value": encoded,
        }
        if fmt in ("auto", "avro"):
            params = self.params
            payload["avro"] = {
                "format": "avro" if params.wants_avro else "auto",
                "schema": params.schema_,
                "subject": params.schemaSubject,
                "version": str(params.schemaVersion),
            }
            schema = self.avro_schema
            if schema is not None:
                try:
                    to_datum(schema, value)
                except SchemaMismatch as exc:
                    raise ActionInputError(
                        f"publish.value does not match the Avro schema {schema.full_name}: {exc}"
                    ) from None
        return payload

    def static_problems(self, *, target_resolved: bool = True) -> Iterator[tuple[str, str]]:
        """A `to` without a template, checked as `finish` checks it once rendered (whether
        its integration is defined is the loader's cross-check, which knows them all)."""
        to = static_value(self.params.to)
        if to is TEMPLATED:
            return
        try:
            destination(to)
        except ValueError as exc:
            yield "to", str(exc)

    def ordering_key(self, payload: dict[str, Any], origin: Origin) -> str | None:
        return f"publish:{payload['topic']}:{payload['key']}" if payload.get("key") else None


class PublishDelivery(Delivery):
    """Produce the rendered message and wait for the broker's acknowledgement."""

    async def deliver(
        self, request: ActionRequest, ctx: DeliveryContext, target: Target | None
    ) -> Any:
        payload = request.payload
        value = payload["value"]
        data = value["text"].encode() if "text" in value else orjson.dumps(value["json"])
        key = payload["key"].encode() if payload.get("key") is not None else None
        headers = [(k, v.encode()) for k, v in payload.get("headers", {}).items()]
        headers.append(("herald-delivery-id", request.id.encode()))
        avro = payload.get("avro")
        if avro is not None:  # written as Avro at delivery if the format/integration says so
            avro = {**avro, "value": value["text"] if "text" in value else value["json"]}
            return await ctx.publish(
                payload["integration"], payload["topic"], key, data, headers, avro=avro
            )
        return await ctx.publish(payload["integration"], payload["topic"], key, data, headers)
