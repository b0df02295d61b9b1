"""Publish action: write a derived message to `kafka:<integration>:<topic>`.

Delivery waits for the broker's acknowledgement, unlike Conductor's fire-and-forget EVENT task.
"""

from __future__ import annotations

from typing import Any

import orjson

from streams.actions.base import (
    ActionInputError,
    ActionRequest,
    ActionType,
    DeliveryContext,
    ParamsModel,
)
from streams.config.models import EVENT_PATTERN, Target
from streams.message import Envelope


class PublishParams(ParamsModel):
    to: str
    key: Any = None
    headers: dict[str, Any] = {}
    value: Any = "${$}"
    format: str = "auto"  # auto: strings as text, anything else as JSON; json; string


class Publish(ActionType):
    name = "publish"
    Params = PublishParams

    def template_source(self) -> dict[str, Any]:
        data = super().template_source()
        data.pop("format", None)
        return data

    def finish(self, rendered: dict[str, Any], envelope: Envelope) -> dict[str, Any]:
        match = EVENT_PATTERN.match(str(rendered.get("to") or ""))
        if not match:
            raise ActionInputError(
                f"publish.to {rendered.get('to')!r} must be 'kafka:<integration>:<topic>'"
            )
        fmt = self.params.format  # type: ignore[attr-defined]
        value = rendered.get("value")
        if fmt == "string" or (fmt == "auto" and isinstance(value, str)):
            text = value if isinstance(value, str) else orjson.dumps(value).decode()
            encoded = {"text": text}
        else:
            encoded = {"json": value}
        key = rendered.get("key")
        return {
            "integration": match.group("integration"),
            "topic": match.group("topic"),
            "key": None if key is None else str(key),
            "headers": {
                str(k): "" if v is None else str(v)
                for k, v in (rendered.get("headers") or {}).items()
            },
            "value": encoded,
        }

    def ordering_key(self, payload: dict[str, Any], envelope: Envelope) -> str | None:
        return f"publish:{payload['topic']}:{payload['key']}" if payload.get("key") else None

    @classmethod
    async def deliver(
        cls, request: ActionRequest, ctx: DeliveryContext, target: Target | None
    ) -> Any:
        payload = request.payload
        value = payload["value"]
        data = value["text"].encode() if "text" in value else orjson.dumps(value["json"])
        key = payload["key"].encode() if payload.get("key") is not None else None
        headers = [(k, v.encode()) for k, v in payload.get("headers", {}).items()]
        headers.append(("herald-delivery-id", request.id.encode()))
        return await ctx.publish(payload["integration"], payload["topic"], key, data, headers)
