"""Health, readiness, counters and Prometheus metrics over Faust's web server.

`/health` answers 200 while the worker's web server runs (a liveness probe); `/ready` 200 only
once the handlers are loaded and partitions are assigned (a readiness probe: 503 before).

Every JSON answer is scrubbed of registered secret values (`streams.secrets`) as it is built:
readiness lists reasons (a stall, an unreadable batch) whose text comes from elsewhere.
"""

from __future__ import annotations

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.fetchguard import skip_command
from agents.ilagent_api import register_ilert_proxy
from agents.ledger import OffsetLedger
from agents.runtime import Runtime
from agents.subscriptions import home_topics
from streams.secrets import scrub_data


def register_views(app: faust.App, runtime: Runtime) -> None:
    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/ready")
    class Ready(View):
        """Ready when rules are loaded and this worker has been assigned partitions."""

        async def get(self, request: Request) -> Response:
            tps = app.consumer.assignment() if app.consumer else set()
            assigned = len(tps)
            ready = runtime.rules.ready.is_set() and assigned > 0
            by_topic: dict[str, list[int]] = {}
            for tp in tps:
                by_topic.setdefault(tp.topic, []).append(tp.partition)
            body = {
                "ready": ready,
                "rulesLoaded": runtime.rules.ready.is_set(),
                "assignedPartitions": assigned,
                # This worker's partitions by topic (source topics follow the handlers).
                "assignment": {topic: sorted(parts) for topic, parts in sorted(by_topic.items())},
                # Partitions with records waiting and no progress for herald.stallSeconds.
                "stalledPartitions": [stall.describe() for stall in runtime.stalls],
                # Partitions stopped at a record batch that cannot be read (herald skip).
                "unreadablePartitions": _unreadable(_home_ledger(app), runtime.home, runtime),
                # Every integration's consumer: the home one (Faust's, above) and the others'
                # (agents.integration_source), whose state does not decide `ready`: a
                # cluster that is down stalls only its own handlers.
                "integrations": {
                    runtime.home: {
                        "state": "consuming" if ready else "starting",
                        "group": runtime.config.home.consumerGroupId,
                        "topics": sorted(home_topics(runtime.rules.index(), runtime.config)),
                    },
                    **{
                        name: {
                            **source.status(),
                            "unreadablePartitions": _unreadable(source.ledger, name, runtime),
                        }
                        for name, source in sorted(runtime.sources.items())
                    },
                    # `active: false` in the configuration: its handlers wait, visibly.
                    **{
                        i.name: {"state": "inactive", "group": i.consumerGroupId}
                        for i in runtime.config.integrations
                        if not i.active and i.name != runtime.home
                    },
                },
            }
            return self.json(scrub_data(body), status=200 if ready else 503)

    @app.page("/metrics")
    class Metrics(View):
        """Prometheus' text format of this worker's registry (agents.metrics). Not behind the
        admin API's authentication, as /health is not: Prometheus scrapes it. Its labels are
        configured names and fixed sets only (no message key or value, no secret), so it is
        not scrubbed; a deployment that must hide even those restricts the port."""

        async def get(self, request: Request) -> Response:
            body = generate_latest(runtime.metrics)
            return self.bytes(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/herald/stats")
    class Stats(View):
        async def get(self, request: Request) -> Response:
            counters = runtime.counters.as_dict()
            # Evaluations that crashed or stalled the condition evaluator (each dead-lettered).
            counters["condition_crashes"] = runtime.evaluator.crashes
            counters["condition_evaluators_started"] = runtime.evaluator.started
            ledger = getattr(app.consumer, "ledger", None)
            if ledger is not None:
                counters.update(ledger.as_dict())
            for name, source in sorted(runtime.sources.items()):
                counters.update(
                    {f"{name}_{key}": value for key, value in source.ledger.as_dict().items()}
                )
            return self.json(scrub_data(counters))

    register_ilert_proxy(app, runtime)


def _home_ledger(app: faust.App) -> OffsetLedger | None:
    return getattr(app.consumer, "ledger", None) if app.consumer else None


def _unreadable(
    ledger: OffsetLedger | None, integration: str, runtime: Runtime
) -> list[dict[str, object]]:
    if ledger is None:
        return []
    other = None if integration == runtime.home else integration
    return [
        {
            "integration": integration,
            "topic": found.topic,
            "partition": found.partition,
            "offset": found.offset,
            "endOffset": found.end,
            "reason": found.reason,
            "since": int(found.seen_at * 1000),
            "skip": skip_command(found, other),
        }
        for found in ledger.stopped().values()
    ]  # ilagent's HTTP API, when herald.ilertProxy is set
