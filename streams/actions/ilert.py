"""ilert actions: alert events and heartbeats (https://api.ilert.com/api-docs).

An ilert event is accepted with 202. The integration key may come from the action (templated,
for messages that carry their own key) or from the named ilert target; a key from the target is
added only at delivery time so it never travels through Kafka or appears in a record.

Each action has its renderer (`IlertEvent`, `IlertHeartbeat`: source side) and its delivery
(`IlertEventDelivery`, `IlertHeartbeatDelivery`: sink side); `heartbeat_request` is the one
request of a heartbeat ping that Herald makes itself (timers, ilagent's proxy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pydantic import Field, field_validator

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
from streams.config.models import Target
from streams.delivery import http_request
from streams.errors import DeliveryError
from streams.secrets import mask_keys, mask_secret

EVENT_TYPES = ("ALERT", "ACCEPT", "RESOLVE", "COMMENT")
TEXT_FIELDS = ("eventType", "summary", "details", "alertKey", "priority", "routingKey")
PRIORITIES = ("HIGH", "LOW")
DEFAULT_BASE_URL = "https://api.ilert.com"
HEARTBEAT_PATH = "/api/heartbeats/{integrationKey}"
HEARTBEAT_ORDERING_KEY = "heartbeat"  # pings of one worker are delivered in order
# Payload fields that hold an integration key, masked in execution records and logs.
SECRET_KEYS = frozenset({"integrationKey"})
BODY_FIELDS = (
    "integrationKey",
    "eventType",
    "summary",
    "details",
    "alertKey",
    "priority",
    "severity",
    "images",
    "links",
    "comments",
    "labels",
    "customDetails",
    "routingKey",
)


class IlertEventParams(ParamsModel):
    target: str | None = None
    integrationKey: Any = Field(default=None, alias="integrationKey")
    apiKey: Any = None  # ilert's legacy name for integrationKey
    eventType: Any = "ALERT"
    summary: Any = None
    details: Any = None
    alertKey: Any = None
    priority: Any = None
    severity: Any = None
    images: Any = None
    links: Any = None
    comments: Any = None
    labels: Any = None
    customDetails: Any = None
    routingKey: Any = None
    eventTypeMap: dict[str, str] = Field(default_factory=dict)
    valueMaps: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # field -> template used when the field rendered to null (or, for a text field, to
    # something that is not text); used as rendered: eventTypeMap and valueMaps do not apply.
    defaults: dict[str, Any] = Field(default_factory=dict)
    path: str = "/api/events"

    @field_validator("defaults")
    @classmethod
    def _defaults_name_body_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(BODY_FIELDS) - {"integrationKey"})
        if unknown or "integrationKey" in value:
            names = ", ".join(repr(n) for n in unknown or ["integrationKey"])
            raise ValueError(
                f"defaults: {names} cannot have a default; use one of "
                f"{', '.join(f for f in BODY_FIELDS if f != 'integrationKey')}"
            )
        return value


def map_value(value: Any, mapping: dict[str, Any]) -> Any:
    """Map a source value (SET, ACK, CLR) to ilert's; exact match first, then ignoring case."""
    if not mapping or value is None:
        return value
    text = str(value)
    if text in mapping:
        return mapping[text]
    folded = {str(k).casefold(): v for k, v in mapping.items()}
    return folded.get(text.casefold(), value)


class IlertEvent(Renderer[IlertEventParams]):
    """An event for ilert's event API, rendered from a message."""

    name = "ilert_event"
    Params = IlertEventParams
    target_type = "ilert"

    def template_source(self) -> dict[str, Any]:
        data = super().template_source()
        for static in ("eventTypeMap", "valueMaps", "path"):
            data.pop(static, None)
        return data

    def finish(self, rendered: dict[str, Any], origin: Origin) -> dict[str, Any]:
        params = self.params
        body = {k: rendered.get(k) for k in BODY_FIELDS}
        if body["integrationKey"] is None:
            body["integrationKey"] = rendered.get("apiKey")
        for field_name, mapping in params.valueMaps.items():
            body[field_name] = map_value(body.get(field_name), mapping)
        defaults = rendered.get("defaults") or {}
        for field_name, default in defaults.items():
            if _missing(field_name, body.get(field_name)):
                body[field_name] = default
            elif field_name == "eventType":
                body["eventType"] = map_value(body["eventType"], params.eventTypeMap)
        if "eventType" in defaults:  # mapped above (the rendered value) or the default as is
            event_type = body["eventType"] or "ALERT"
        else:
            event_type = map_value(body["eventType"] or "ALERT", params.eventTypeMap)
        body["eventType"] = _rendered("eventType", _event_type, event_type)
        if body["eventType"] == "ALERT" and not body.get("summary"):
            body["summary"] = f"New alert from {origin.topic}"
        for name, rule in _RULES.items():
            if name != "eventType" and body[name] is not None:
                body[name] = _rendered(name, rule, body[name])
        if body["alertKey"] is not None:
            body["alertKey"] = str(body["alertKey"])
        if body["integrationKey"] is None and not (self.target and self.target.integrationKey):
            raise ActionInputError(
                "ilert_event has no integrationKey: set it on the action or on the ilert target"
            )
        return {"path": params.path, "body": {k: v for k, v in body.items() if v is not None}}

    def ordering_key(self, payload: dict[str, Any], origin: Origin) -> str | None:
        alert_key = payload["body"].get("alertKey")
        return f"ilert:{alert_key}" if alert_key else None

    def static_problems(self, *, target_resolved: bool = True) -> Iterator[tuple[str, str]]:
        """eventType, priority and severity (and their defaults) written without a template,
        checked as `finish` checks them once rendered: after valueMaps and eventTypeMap."""
        params = self.params
        for name, rule in _RULES.items():
            value = static_value(getattr(params, name))
            if value is not TEMPLATED and not (_missing(name, value) and name in params.defaults):
                problem = self._static_problem(name, rule, value)
                if problem is not None:
                    yield name, problem
            default = static_value(params.defaults.get(name))
            if default is not TEMPLATED and default is not None:
                problem = _problem(rule, default, "is")
                if problem is not None:
                    yield f"defaults.{name}", problem

    def _static_problem(self, name: str, rule: _Rule, value: Any) -> str | None:
        """What is wrong with a field's fixed value once mapped as `finish` maps it."""
        params = self.params
        if value is None:
            return None  # the field is left out (eventType: ALERT)
        mapped = map_value(value, params.valueMaps.get(name) or {})
        if name == "eventType":
            mapped = map_value(mapped, params.eventTypeMap)
        return _problem(rule, mapped, "is" if mapped == value else f"{value!r} maps to")


class IlertEventDelivery(Delivery):
    """POST an event to ilert's event API, with the target's key when the event has none."""

    async def deliver(
        self, request: ActionRequest, ctx: DeliveryContext, target: Target | None
    ) -> Any:
        body = dict(request.payload["body"])
        if "integrationKey" not in body and target and target.integrationKey:
            body["integrationKey"] = target.integrationKey.get_secret_value()
        key = str(body.get("integrationKey", ""))
        url = _base(target) + request.payload["path"].replace("{integrationKey}", key)
        status, text = await _request(
            ctx,
            "POST",
            url,
            key,
            timeout=self.timeout(target),
            json_body=body,
            headers=_headers(ctx, request, target),
        )
        return {"status": status, "response": text[:500]}

    def redact(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "body": mask_keys(payload["body"], SECRET_KEYS)}


def _missing(field_name: str, value: Any) -> bool:
    """Whether a rendered field takes its default: null, or not text for a text field."""
    return value is None or (field_name in TEXT_FIELDS and not isinstance(value, str))


def _base(target: Target | None) -> str:
    return ((target.baseUrl if target else None) or DEFAULT_BASE_URL).rstrip("/")


# The one check of each field ilert accepts only some values of, used by `finish` on the
# rendered value and at load on a value written without a template. Each returns the value as
# sent or raises ValueError("<the value>; <how to fix it>"), which the caller phrases around.
_Rule = Callable[[Any], Any]


def _event_type(value: Any) -> str:
    event_type = str(value).upper()
    if event_type not in EVENT_TYPES:
        raise ValueError(
            f"{event_type!r}; expected one of {', '.join(EVENT_TYPES)} (add it to eventTypeMap)"
        )
    return event_type


def _priority(value: Any) -> str:
    priority = str(value).upper()
    if priority not in PRIORITIES:
        raise ValueError(f"{priority!r}; use {' or '.join(PRIORITIES)}")
    return priority


def _severity(value: Any) -> int:
    try:
        severity = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r}; use 1 to 5") from None
    if not 1 <= severity <= 5:
        raise ValueError(f"{severity}; use 1 to 5")
    return severity


_RULES: dict[str, _Rule] = {
    "eventType": _event_type,
    "priority": _priority,
    "severity": _severity,
}


def _rendered(name: str, rule: _Rule, value: Any) -> Any:
    """The checked value of a rendered field; ActionInputError dead-letters the message."""
    try:
        return rule(value)
    except ValueError as exc:
        raise ActionInputError(f"ilert_event.{name} rendered to {exc}") from None


def _problem(rule: _Rule, value: Any, verb: str) -> str | None:
    """The load-time problem line of a fixed value (`is 9; use 1 to 5`), or None if valid."""
    try:
        rule(value)
    except ValueError as exc:
        return f"{verb} {exc}"
    return None


def _headers(ctx: DeliveryContext, request: ActionRequest, target: Target | None) -> dict[str, str]:
    headers = {"User-Agent": ctx.user_agent, "Idempotency-Key": request.id}
    if target is not None:
        headers.update(target.headers)
    return headers


async def _request(
    ctx: DeliveryContext, method: str, url: str, key: str, **kwargs: Any
) -> tuple[int, str]:
    """http_request, with the integration key masked in errors: the URL may hold it, and the
    error text ends up in dead letters, execution records and logs."""
    try:
        return await http_request(ctx.http, method, url, **kwargs)
    except DeliveryError as exc:
        if not key or key not in str(exc):
            raise
        raise DeliveryError(
            mask_secret(str(exc), key),
            retryable=exc.retryable,
            retry_after=exc.retry_after,
            status=exc.status,
        ) from None


class IlertHeartbeatParams(ParamsModel):
    target: str | None = None
    integrationKey: Any = None
    apiKey: Any = None  # ilert's legacy name for integrationKey
    path: str = HEARTBEAT_PATH


class IlertHeartbeat(Renderer[IlertHeartbeatParams]):
    """A ping of an ilert heartbeat, rendered from a message."""

    name = "ilert_heartbeat"
    Params = IlertHeartbeatParams
    target_type = "ilert"

    def template_source(self) -> dict[str, Any]:
        data = super().template_source()
        data.pop("path", None)
        return data

    def finish(self, rendered: dict[str, Any], origin: Origin) -> dict[str, Any]:
        key = rendered.get("integrationKey")
        if key is None:
            key = rendered.get("apiKey")
        if key is None and not (self.target and self.target.integrationKey):
            raise ActionInputError(
                "ilert_heartbeat has no integrationKey: set it on the action or on the target"
            )
        return _heartbeat_payload(self.params.path, None if key is None else str(key))

    def ordering_key(self, payload: dict[str, Any], origin: Origin) -> str | None:
        return HEARTBEAT_ORDERING_KEY


def _heartbeat_payload(path: str, key: str | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"path": path}
    if key is not None:
        payload["integrationKey"] = key
    return payload


def heartbeat_request(
    *, id: str, handler: str, event: str, integration: str, target: str, key: str | None = None
) -> ActionRequest:
    """A ping Herald makes itself (not rendered from a message), delivered at once with
    `IlertHeartbeatDelivery`: of `key`'s heartbeat, or of the target's key when None (which
    then stays out of the request)."""
    return ActionRequest.create(
        id=id,
        handler=handler,
        event=event,
        action=IlertHeartbeat.name,
        payload=_heartbeat_payload(HEARTBEAT_PATH, key),
        ordering_key=HEARTBEAT_ORDERING_KEY,
        integration=integration,
        target=target,
    )


class IlertHeartbeatDelivery(Delivery):
    """Ping an ilert heartbeat: GET /api/heartbeats/{key}, 202 on success."""

    async def deliver(
        self, request: ActionRequest, ctx: DeliveryContext, target: Target | None
    ) -> Any:
        key = request.payload.get("integrationKey")
        if key is None and target and target.integrationKey:
            key = target.integrationKey.get_secret_value()
        if not key:
            raise DeliveryError("ilert_heartbeat has no integrationKey", retryable=False)
        url = _base(target) + request.payload["path"].replace("{integrationKey}", str(key))
        status, _ = await _request(
            ctx,
            "GET",
            url,
            str(key),
            timeout=self.timeout(target),
            headers=_headers(ctx, request, target),
        )
        return {"status": status}

    def redact(self, payload: dict[str, Any]) -> dict[str, Any]:
        return mask_keys(payload, SECRET_KEYS)
