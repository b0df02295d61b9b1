"""The execution history over the admin API (Conductor's event monitor), from agents.history.

- `GET /api/event/execution?handler=&status=&from=&to=&limit=`: execution records (and the
  dead letters of every stage but delivery, whose execution record says DEAD_LETTERED), newest
  first, in Conductor's `EventExecution` JSON with Herald's fields (streams.history).
- `GET /api/event/execution/source?integration=&topic=&partition=&offset=` (or
  `?messageId=`): what happened to one source record, handler by handler.
- `GET /api/audit?from=&to=&limit=`: the admin API's audit records (agents.admin.changes).

Who sees what (streams.access): an execution or dead letter of a handler only with READ on
that handler; a dead letter of no handler (the record could not be decoded, an internal
error, a batch that could not be read) with READ on some handler of its topic; audit records
only with the ADMIN role. Every answer is scrubbed of secrets once more (`shown`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import faust
from faust.web import Request, Response, View

from agents.admin.changes import shown
from agents.admin.tokens import Caller
from agents.history import History
from streams.history import (
    AUDIT,
    STATUSES,
    Entry,
    handler_event_matches,
    parse_message_id,
    source_answer,
)

if TYPE_CHECKING:
    from agents.admin.api import Admin

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

Answer = Callable[[View, Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Response]]]


def register_history_api(
    app: faust.App, admin: Admin, history: History, answer: Answer, error: type[Exception]
) -> None:
    """Serve the history views through the admin API's `answer` wrapper (authentication,
    Conductor's error bodies); `error` is its ApiError(status, message)."""

    def bad(message: str) -> Exception:
        return error(400, message)

    def ready() -> None:
        if not history.caught_up:
            status = history.status()
            raise error(
                503,
                "the execution history is still being read "
                f"({status['records']} records so far; state {status['state']})",
            )

    def readers(caller: Caller) -> Callable[[Entry], bool]:
        """Whether the caller may see an entry: READ on its handler, or for a dead letter of
        no handler, READ on some handler of its topic."""
        state = admin.store.state()
        if state.is_admin(caller.user):
            return lambda entry: True
        cache: dict[str, bool] = {}

        def may(name: str) -> bool:
            if name not in cache:
                cache[name] = state.may(caller.user, "READ", "EVENT_HANDLER", name)
            return cache[name]

        handlers = admin.store.handlers()

        def visible(entry: Entry) -> bool:
            if entry.handler is not None:
                return may(entry.handler)
            if entry.topic is None:
                return False
            integration, topic = entry.topic
            return any(
                may(str(h.get("name")))
                for h in handlers
                if handler_event_matches(str(h.get("event")), integration, topic, admin.home)
            )

        return visible

    @app.page("/api/event/execution")
    class Executions(View):
        async def get(self, request: Request) -> Response:
            async def listing(request: Request, caller: Caller) -> list[dict[str, Any]]:
                query = request.query
                status = query.get("status")
                if status is not None and status not in STATUSES:
                    raise bad(f"status must be one of {', '.join(STATUSES)}")
                since, until = _ms(query, "from", bad), _ms(query, "to", bad)
                limit = _limit(query, bad)
                ready()
                entries = history.records.query(
                    history.clock(),
                    handler=query.get("handler"),
                    status=status,
                    since=since,
                    until=until,
                    limit=limit,
                    visible=readers(caller),
                )
                return [shown(entry.answer()) for entry in entries]

            return await answer(self, listing)(request)

    @app.page("/api/event/execution/source")
    class SourceRecord(View):
        async def get(self, request: Request) -> Response:
            async def one(request: Request, caller: Caller) -> dict[str, Any]:
                where = _where(request.query, admin.home, bad)
                ready()
                integration, topic, _, _ = where
                visible = readers(caller)
                state = admin.store.state()
                handlers = [
                    h
                    for h in admin.store.handlers()
                    if handler_event_matches(str(h.get("event")), integration, topic, admin.home)
                    and state.may(caller.user, "READ", "EVENT_HANDLER", str(h.get("name")))
                ]
                entries = [
                    e for e in history.records.for_source(*where, history.clock()) if visible(e)
                ]
                return shown(source_answer(where, entries, handlers, history.counts))

            return await answer(self, one)(request)

    @app.page("/api/audit")
    class Audit(View):
        async def get(self, request: Request) -> Response:
            async def listing(request: Request, caller: Caller) -> list[dict[str, Any]]:
                since, until = _ms(request.query, "from", bad), _ms(request.query, "to", bad)
                limit = _limit(request.query, bad)
                admin.admin_only(caller)
                ready()
                entries = history.audit.query(
                    history.clock(), kinds=(AUDIT,), since=since, until=until, limit=limit
                )
                return [shown(entry.answer()) for entry in entries]

            return await answer(self, listing)(request)


def _int(query: Any, name: str, bad: Callable[[str], Exception]) -> int | None:
    text = query.get(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise bad(f"{name} must be a whole number, not {text!r}") from None
    if value < 0:
        raise bad(f"{name} must not be negative")
    return value


def _ms(query: Any, name: str, bad: Callable[[str], Exception]) -> int | None:
    """A time bound: milliseconds since the epoch."""
    return _int(query, name, bad)


def _limit(query: Any, bad: Callable[[str], Exception]) -> int:
    limit = _int(query, "limit", bad)
    if limit is None:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise bad(f"limit must be from 1 to {MAX_LIMIT}")
    return limit


def _where(query: Any, home: str, bad: Callable[[str], Exception]) -> tuple[str, str, int, int]:
    """The source record a query names: `messageId`, or `topic`, `partition` and `offset`
    (and `integration`, by default the home one)."""
    text = query.get("messageId")
    if text is not None:
        parsed = parse_message_id(text)
        if parsed is None:
            raise bad("messageId must be <integration>/<topic>/<partition>/<offset>")
        return parsed
    topic = query.get("topic")
    partition, offset = _int(query, "partition", bad), _int(query, "offset", bad)
    if not topic or partition is None or offset is None:
        raise bad("name the source record: messageId, or topic, partition and offset")
    return query.get("integration") or home, topic, partition, offset
