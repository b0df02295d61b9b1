"""ilagent's HTTP API on the worker's web server (`herald.ilertProxy`, ilagent's `-p PORT`).

ilagent (http_server.rs) serves, next to `/health` and `/ready` (Herald's own views):

- `POST /api/events`: an ilert event (`integrationKey` or `apiKey`, `eventType`, `summary`
  required; `details`, `alertKey`, `priority`, `images`, `links`, `customDetails`, `labels`,
  `severity`, `routingKey` optional), at most 16000 bytes of JSON. ilagent checks it, queues it
  in SQLite, answers 200 with the queued event, and a poll loop sends it to ilert's
  `/api/events`. Herald checks it the same way (the same 400 answers), writes it to the actions
  topic as an `ilert_event` action request and answers 200 with the same body once the broker
  has it: the sink agents deliver it, with retries and a dead letter if it cannot be
  delivered, and a restart loses nothing that was accepted. The request's `Idempotency-Key`
  header, when given, makes the delivery id, so a client repeating a POST gets one delivery.
- `GET /api/heartbeats/{key}`: pings that ilert heartbeat there and then; 202 `{}` when ilert
  took it, 500 "Failed to proxy heartbeat" otherwise (the caller decides when to try again).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import faust
import orjson
from faust.web import Request, Response, View
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictInt, StrictStr
from pydantic import ValidationError as PydanticError

from agents.runtime import Runtime
from streams.actions.base import ActionInputError, ActionRequest, HttpOrigin
from streams.actions.ilert import (
    EVENT_TYPES,
    PRIORITIES,
    IlertEvent,
    IlertEventParams,
    IlertHeartbeatDelivery,
    heartbeat_request,
)
from streams.errors import DeliveryError

log = logging.getLogger("herald.ilagent")

MAX_BODY = 16_000  # ilagent: web::JsonConfig::default().limit(16000)
HANDLER = "ilert-api"
FIELDS = (
    "integrationKey",
    "eventType",
    "summary",
    "details",
    "alertKey",
    "priority",
    "images",
    "links",
    "customDetails",
    "labels",
    "severity",
    "routingKey",
)


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Image(_Loose):
    src: StrictStr
    href: StrictStr | None = None
    alt: StrictStr | None = None


class _Link(_Loose):
    href: StrictStr
    text: StrictStr | None = None


class EventIn(_Loose):
    """ilagent's EventQueueItemJson: the event schema `POST /api/events` accepts."""

    integrationKey: StrictStr = Field(validation_alias=AliasChoices("integrationKey", "apiKey"))
    eventType: StrictStr
    summary: StrictStr
    details: StrictStr | None = None
    alertKey: StrictStr | None = None
    priority: StrictStr | None = None
    images: list[_Image] | None = None
    links: list[_Link] | None = None
    customDetails: Any = None
    labels: dict[StrictStr, StrictStr] | None = None
    severity: StrictInt | None = Field(default=None, ge=-(2**31), lt=2**31)
    routingKey: StrictStr | None = None


def register_ilert_proxy(app: faust.App, runtime: Runtime) -> None:
    """Serve ilagent's `/api/events` and `/api/heartbeats/{key}` when configured."""
    proxy = runtime.config.herald.ilertProxy
    if proxy is None:
        return
    target = runtime.targets[proxy.target]
    heartbeats = IlertHeartbeatDelivery()

    @app.page("/api/events")
    class Events(View):
        async def post(self, request: Request) -> Response:
            content_type = request.headers.get("Content-Type", "")
            if "json" not in content_type.lower():
                return self.text("Content type error", status=400)
            raw = await request.read()
            if len(raw) > MAX_BODY:
                return self.text(
                    f"JSON payload ({len(raw)} bytes) is larger than allowed "
                    f"(limit: {MAX_BODY} bytes).",
                    status=413,
                )
            try:
                data = orjson.loads(raw)
                if isinstance(data, dict) and "integrationKey" in data and "apiKey" in data:
                    raise ValueError("duplicate field `integrationKey`")
                event = EventIn.model_validate(data)
            except (orjson.JSONDecodeError, PydanticError, ValueError) as exc:
                return self.text(f"Json deserialize error: {_short(exc)}", status=400)
            if "services" in data and data["services"] is not None:
                return self.json(
                    {"error": "Field 'services' is not supported by Herald."}, status=400
                )
            if event.eventType not in EVENT_TYPES:
                return self.json({"error": "Unsupported value for field 'eventType'."}, status=400)
            if event.priority is not None and event.priority not in PRIORITIES:
                return self.json({"error": "Unsupported value for field 'priority'."}, status=400)
            body = event.model_dump(mode="json")
            try:
                action_request = _action_request(runtime, proxy, target, body, request)
            except ActionInputError as exc:
                return self.json({"error": str(exc)}, status=400)
            try:
                fut = await runtime.topics.actions.send(
                    key=action_request.ordering_key.encode(),
                    value=action_request.to_bytes(),
                    force=True,
                )
                await fut
            except Exception as exc:  # not accepted: the client must send it again
                log.error("could not write the event to the actions topic: %s", exc)
                return self.json({"error": "Failed to create event."}, status=500)
            runtime.counters.actions_produced += 1
            log.info("event %s accepted and queued for delivery", action_request.id)
            return self.json({**{name: body.get(name) for name in FIELDS}, "services": None})

    @app.page("/api/heartbeats/{key}")
    class Heartbeats(View):
        async def get(self, request: Request, key: str) -> Response:
            ping = heartbeat_request(
                id=uuid.uuid4().hex,
                handler=HANDLER,
                event="http:GET /api/heartbeats",
                integration=runtime.home,
                target=target.name,
                key=key,
            )
            try:
                await heartbeats.deliver(ping, runtime.delivery_context(), target)
            except DeliveryError as exc:
                log.warning("heartbeat not proxied: %s", exc)
                return self.text("Failed to proxy heartbeat", status=500)
            log.info("proxied heartbeat")
            return self.json({}, status=202)


def _action_request(
    runtime: Runtime, proxy: Any, target: Any, body: dict[str, Any], request: Request
) -> ActionRequest:
    """The ilert_event action request for an accepted event, built as the source stage builds
    one (the action type's own checks and defaults; the same record fields)."""
    idempotency = request.headers.get("Idempotency-Key") or uuid.uuid4().hex
    origin = HttpOrigin(
        path="/api/events",
        integration=runtime.home,
        message_id=f"{runtime.home}/http/{idempotency}",
        received_ms=int(time.time() * 1000),
    )
    action = IlertEvent(IlertEventParams(target=target.name, path=proxy.path), target)
    rendered = {k: v for k, v in body.items() if v is not None}
    payload = action.finish(rendered, origin)
    return ActionRequest.create(
        origin=origin,
        handler=HANDLER,
        event="http:POST /api/events",
        action=IlertEvent.name,
        payload=payload,
        ordering_key=action.ordering_key(payload, origin) or HANDLER,
        target=target.name,
    )


def _short(exc: Exception) -> str:
    if isinstance(exc, PydanticError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}"
    return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
