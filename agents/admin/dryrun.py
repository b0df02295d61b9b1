"""`POST /api/herald/try`: the dry run (streams.dryrun) of the worker's live handlers.

The body names one handler (`{"handler": name}`) or a topic (`{"topic": t, "integration": i}`,
the home integration by default), and gives the `message` (a JSON value, sent as its JSON
text, or a string, taken as the record's text), optionally its `key`, `headers`, `partition`,
`offset` and `timestamp`. The answer is the dry run's report: nothing is delivered.

Who may: `READ` on each handler run (`streams.access`). A handler the caller may not read is
neither run nor listed: naming one is a 403, and a topic's run leaves it out. The handlers are
the worker's live ones (`runtime.rules.index()`); their JavaScript conditions are judged by the
worker's evaluator process, as the source stage judges them, so a dry run's condition cannot
stall the worker either.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from agents.admin.api import Admin, ApiError
from agents.admin.tokens import Caller
from streams import dryrun
from streams.handlers import CompiledHandler

_FIELDS = (
    "handler",
    "integration",
    "topic",
    "message",
    "key",
    "headers",
    "partition",
    "offset",
    "timestamp",
)


async def answer(admin: Admin, caller: Caller, body: Any) -> dict[str, Any]:
    """The dry run asked for by `body`, or an ApiError (400, 403, 404) saying why not."""
    if not isinstance(body, dict):
        raise ApiError(400, "send {handler} or {topic, integration}, with the message")
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)}; use {', '.join(_FIELDS)}")
    selected = _selected(admin, caller, body)
    pending = dryrun.start(selected, _message(body))
    await admin.runtime.evaluator.judge(pending.jobs)
    # Off the worker's loop: the report builds the requests on an event loop of its own.
    return await asyncio.to_thread(dryrun.report, pending, home=admin.home)


def _selected(admin: Admin, caller: Caller, body: dict[str, Any]) -> list[CompiledHandler]:
    name, topic, integration = body.get("handler"), body.get("topic"), body.get("integration")
    if (name is None) == (topic is None):
        raise ApiError(400, "name a handler (handler) or a topic (topic, integration), not both")
    for field, value in (("handler", name), ("topic", topic), ("integration", integration)):
        if value is not None and not isinstance(value, str):
            raise ApiError(400, f"{field} must be text")
    if integration is not None and topic is None:
        raise ApiError(400, "integration goes with topic (a handler's name says its integration)")
    if integration is not None and integration not in admin.integrations:
        raise ApiError(
            404, f"no integration {integration!r}; use one of {', '.join(admin.integrations)}"
        )
    state = admin.store.state()
    if name is not None and not state.may(caller.user, "READ", "EVENT_HANDLER", name):
        raise ApiError(403, f"{caller.user} needs READ on EVENT_HANDLER {name!r}")
    visible = [
        h
        for h in admin.runtime.rules.index().handlers
        if state.may(caller.user, "READ", "EVENT_HANDLER", h.name)
    ]
    try:
        return dryrun.select(
            visible, home=admin.home, handler=name, topic=topic, integration=integration
        )
    except dryrun.UnknownSelection as exc:
        raise ApiError(404, str(exc)) from None


def _message(body: dict[str, Any]) -> dryrun.Message:
    if "message" not in body:
        raise ApiError(400, "message is missing: a JSON value, or a string (the record's text)")
    value = body["message"]
    raw = value.encode() if isinstance(value, str) else None
    if value is not None and raw is None:
        raw = orjson.dumps(value)
    key = body.get("key")
    if key is not None and not isinstance(key, str):
        raise ApiError(400, "key must be text (or null)")
    headers = body.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ApiError(400, "headers must be an object of text values")
    numbers: dict[str, int | None] = {}
    for field in ("partition", "offset", "timestamp"):
        number = body.get(field)
        if number is not None and (
            not isinstance(number, int) or isinstance(number, bool) or number < 0
        ):
            raise ApiError(400, f"{field} must be a whole number, 0 or more")
        numbers[field] = number
    return dryrun.Message(
        value=raw,
        key=key,
        headers=headers,
        partition=numbers["partition"] or 0,
        offset=numbers["offset"] or 0,
        timestamp=numbers["timestamp"],
    )
