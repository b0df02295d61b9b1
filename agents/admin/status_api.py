"""`GET /api/herald/status`: one worker's summary for the status page (agents.web).

The page polls this every few seconds and computes rates from successive answers, so the
answer carries counts, not rates, and says which worker gave it (`worker.id`): counts are
each worker's own since it started, and a rate is only meaningful between two answers of
the same worker.

- `integrations`: every configured integration with its consumer's state, the lag of each
  partition assigned to this worker (high watermark minus the offset before which every
  record is done, as `herald_consumer_lag_records` has it), the records consumed and the
  dead letters written, by stage.
- `handlers`: the handlers the caller may READ (streams.access) with their counts: matched,
  condition false, action requests produced, delivered, dead-lettered by the sink, retries.
- `history`: whether the execution history (agents.history) has read its topics, so the page
  asks `/api/event/execution` for recent failures only once that answers.

Everything comes from the counters and state the worker keeps anyway (agents.counters, the
ledgers, agents.integration_source): nothing is computed per record for this. Integration
names, states and counts are no more than `/ready` and `/metrics` show without a token; error
texts are scrubbed of secrets (`shown`).
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import faust
from faust.types import TP
from faust.web import Request, Response, View

from agents.admin.changes import shown
from agents.admin.tokens import Caller
from agents.counters import DELIVERED, FAILED, HANDLER_COUNTS, Counters

if TYPE_CHECKING:
    from agents.admin.api import Admin

Answer = Callable[[View, Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Response]]]

#: Which worker answered: the page computes rates only between answers of the same one.
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
#: When this process started serving (ms since the epoch): the counts start there.
STARTED_AT = int(time.time() * 1000)


def register_status_api(app: faust.App, admin: Admin, answer: Answer) -> None:
    """Serve the summary through the admin API's `answer` wrapper (authentication,
    Conductor's error bodies)."""

    @app.page("/api/herald/status")
    class Status(View):
        async def get(self, request: Request) -> Response:
            async def summary(request: Request, caller: Caller) -> dict[str, Any]:
                return shown(status(app, admin, caller))

            return await answer(self, summary)(request)


def status(app: faust.App, admin: Admin, caller: Caller) -> dict[str, Any]:
    """The summary for `caller`: every integration, the handlers it may read."""
    runtime = admin.runtime
    counters: Counters = runtime.counters
    ready = runtime.rules.ready.is_set() and bool(_assignment(app))
    history = runtime.history
    return {
        "worker": {"id": WORKER_ID, "startedAt": STARTED_AT, "now": int(time.time() * 1000)},
        "ready": ready,
        "integrations": _integrations(app, admin, counters, ready),
        "handlers": _handlers(admin, caller, counters),
        "history": None
        if history is None
        else {k: history.status()[k] for k in ("state", "caughtUp", "records")},
    }


# -- integrations ------------------------------------------------------------------------


def _integrations(
    app: faust.App, admin: Admin, counters: Counters, ready: bool
) -> list[dict[str, Any]]:
    runtime = admin.runtime
    consumed: Counter[str] = Counter()
    for (integration, _topic), count in list(counters.consumed_by.items()):
        consumed[integration] += count
    letters: dict[str, dict[str, int]] = {}
    for (integration, stage), count in list(counters.dead_letters_by.items()):
        letters.setdefault(integration, {})[stage] = count
    out = []
    for integration in runtime.config.integrations:
        name = integration.name
        entry: dict[str, Any] = {
            "name": name,
            "home": name == runtime.home,
            "group": integration.consumerGroupId,
            "state": "inactive",
            "error": None,
            "lag": [],
            "stalledPartitions": 0,
            "unreadablePartitions": 0,
        }
        if name == runtime.home:
            ledger = getattr(app, "ledger", None)
            entry["state"] = "consuming" if ready else "starting"
            entry["lag"] = _home_lag(app, ledger)
            entry["stalledPartitions"] = len(runtime.stalls)
            entry["unreadablePartitions"] = len(ledger.stopped()) if ledger else 0
        elif name in runtime.sources:
            source = runtime.sources[name]
            entry["state"], entry["error"] = source.state, source.error
            entry["lag"] = _lag_rows(source.lag_by_partition())
            entry["stalledPartitions"] = len(source.stalls)
            entry["unreadablePartitions"] = len(source.ledger.stopped())
        by_stage = letters.get(name, {})
        entry["lagTotal"] = sum(row["lag"] for row in entry["lag"])
        entry["consumed"] = consumed[name]
        entry["deadLetters"] = {
            "total": sum(by_stage.values()),
            "byStage": dict(sorted(by_stage.items())),
        }
        out.append(entry)
    return out


def _assignment(app: faust.App) -> set[TP]:
    try:
        return set(app.consumer.assignment()) if app.consumer else set()
    except Exception:  # the consumer is not started yet, or restarting
        return set()


def _home_lag(app: faust.App, ledger: Any) -> list[dict[str, Any]]:
    """The home integration's lag per assigned partition (source topics and the actions
    topic): Faust's consumer knows each high watermark from its fetches."""
    if ledger is None:
        return []
    lags: dict[TP, int] = {}
    for tp in ledger.assigned():
        try:
            end = app.consumer.highwater(tp)
        except Exception:  # not fetched yet, or the consumer is restarting
            continue
        position = ledger.position(tp)
        if isinstance(end, int) and end >= 0 and position is not None:
            lags[tp] = max(end - position, 0)
    return _lag_rows(lags)


def _lag_rows(lags: dict[TP, int]) -> list[dict[str, Any]]:
    return [
        {"topic": tp.topic, "partition": tp.partition, "lag": lag}
        for tp, lag in sorted(lags.items(), key=lambda item: (item[0].topic, item[0].partition))
    ]


# -- handlers ----------------------------------------------------------------------------


def _handlers(admin: Admin, caller: Caller, counters: Counters) -> list[dict[str, Any]]:
    state = admin.store.state()
    by_handler: dict[str, Counter[str]] = {}

    def add(handler: str, field: str, count: int) -> None:
        by_handler.setdefault(handler, Counter())[field] += count

    for (_integration, handler), count in list(counters.matched_by.items()):
        add(handler, "matched", count)
    for (_integration, handler), count in list(counters.skipped_by.items()):
        add(handler, "conditionFalse", count)
    for (_integration, handler, _action), count in list(counters.produced_by.items()):
        add(handler, "produced", count)
    for (handler, _action, _target, outcome), count in list(counters.deliveries_by.items()):
        if outcome == DELIVERED:
            add(handler, "delivered", count)
        elif outcome == FAILED:
            add(handler, "deadLettered", count)
    for (handler, _action, _target), count in list(counters.retries_by.items()):
        add(handler, "retries", count)
    out = []
    for handler in admin.runtime.rules.index().handlers:
        if not state.may(caller.user, "READ", "EVENT_HANDLER", handler.name):
            continue
        counts = by_handler.get(handler.name, Counter())
        out.append(
            {
                "name": handler.name,
                "integration": handler.integration,
                "topic": handler.topic,
                "active": handler.spec.active,
                **{field: counts[field] for field in HANDLER_COUNTS},
            }
        )
    return sorted(out, key=lambda h: h["name"])
