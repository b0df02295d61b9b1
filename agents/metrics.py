"""Prometheus metrics of one worker, served at `/metrics` (agents.views).

Every worker has a `CollectorRegistry` of its own rather than `prometheus_client`'s global
one: tests run several apps in one process, and a registry holds only what its worker counts.

Nothing here runs per record. The hot paths add plain ints to `agents.counters.Counters`
(per batch where they can, per action request otherwise), and `HeraldCollector` reads those
and the state the worker keeps anyway (ledgers, consumers, channels, lanes, integration
sources) only when Prometheus scrapes. So a scrape costs a few dict walks, and a record costs
what it did, plus a dict add or two where it produces something.

Labels are configured names (integration, topic, handler, target) or members of fixed sets
(action type, dead-letter stage, delivery outcome, consumer state): no message key, id or
value, and no secret, since no configured secret is a name. `METRICS` below is the list the
README's Metrics section shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from agents.counters import Counters, Histograms
from agents.ledger import OffsetLedger
from agents.runtime import Runtime

PREFIX = "herald"

#: What a consumer of an integration can be doing (`herald_integration_state{state}`): the
#: states of `/ready`'s `integrations.<name>.state`.
STATES = ("starting", "idle", "connecting", "consuming", "error", "inactive")


@dataclass(frozen=True)
class Spec:
    """One metric family: its name (without the `herald_` prefix and `_total`), type, labels
    and help."""

    name: str
    kind: str  # counter, gauge, histogram
    labels: tuple[str, ...]
    help: str


METRICS: tuple[Spec, ...] = (
    Spec(
        "records_consumed",
        "counter",
        ("integration", "topic"),
        "Source records handed to the source agent (every record of a source topic, whether "
        "or not a handler matches it).",
    ),
    Spec(
        "records_matched",
        "counter",
        ("integration", "handler"),
        "Source records whose handler's condition was true (each handler counts a record "
        "once, also when an action of it was then dead-lettered).",
    ),
    Spec(
        "records_skipped",
        "counter",
        ("integration", "handler"),
        "Source records whose handler's condition was false.",
    ),
    Spec(
        "dead_letters",
        "counter",
        ("integration", "stage"),
        "Dead letters written, by the stage that failed: decode, condition, template, size, "
        "internal (source), fetch (a skipped unreadable batch), delivery (sink).",
    ),
    Spec(
        "actions_produced",
        "counter",
        ("integration", "handler", "action"),
        "Action requests the source agent handed to the producer for the actions topic (one "
        "the broker then refuses as too large is also counted as a dead letter of stage "
        "size; events received over ilagent's HTTP API are not counted here).",
    ),
    Spec(
        "deliveries",
        "counter",
        ("handler", "action", "target", "outcome"),
        "Action records finished by the sink, by outcome: delivered; failed (dead-lettered: "
        "a permanent failure, retries exhausted, or an unknown action); duplicate (delivered "
        "before, skipped); dedupe_window (within its dedupe key's window, skipped). target "
        "is empty for an action without a named target.",
    ),
    Spec(
        "delivery_retries",
        "counter",
        ("handler", "action", "target"),
        "Delivery attempts that failed transiently (connection, timeout, 408, 429, 5xx) and "
        "are tried again.",
    ),
    Spec(
        "delivery_duration_seconds",
        "histogram",
        ("action", "target", "outcome"),
        "Seconds from a delivery's first attempt to its outcome (delivered or failed), "
        "retries and their waits included.",
    ),
    Spec(
        "end_to_end_latency_seconds",
        "histogram",
        ("integration", "action"),
        "Seconds from the source record's timestamp to its action's delivery (the record's "
        "timestamp is the producer's or the broker's; records without one are not counted).",
    ),
    Spec(
        "consumer_lag_records",
        "gauge",
        ("integration", "topic", "partition"),
        "Records of a partition assigned to this worker that it has not finished: the high "
        "watermark minus the offset before which every record is done (what its next commit "
        "covers, ahead of or equal to the group's committed offset). The home integration's "
        "high watermark comes with each fetch, another integration's from a probe every 5 s; "
        "a partition whose high watermark is not known yet has no sample.",
    ),
    Spec(
        "rebalances",
        "counter",
        ("integration",),
        "Partition assignments this worker received from the integration's consumer group "
        "(one per rebalance it took part in).",
    ),
    Spec(
        "partitions_assigned",
        "gauge",
        ("integration",),
        "Partitions of the integration's source topics (and, for the home integration, the "
        "actions topic) assigned to this worker.",
    ),
    Spec(
        "partitions_stalled",
        "gauge",
        ("integration",),
        "Assigned partitions with records waiting and no progress for herald.stallSeconds "
        "(the stalledPartitions of /ready).",
    ),
    Spec(
        "partitions_unreadable",
        "gauge",
        ("integration",),
        "Partitions stopped at a record batch that cannot be read, until herald skip (the "
        "unreadablePartitions of /ready).",
    ),
    Spec(
        "lanes_active",
        "gauge",
        (),
        "Delivery lanes (one per ordering key with records held by the sink).",
    ),
    Spec(
        "records_in_flight",
        "gauge",
        ("stage",),
        "Records inside this worker by stage: source_queued (fetched source records waiting "
        "for the source agent), producing (action requests and dead letters handed to the "
        "producer, their batch not acknowledged yet), sink_queued (fetched action records "
        "waiting for a lane), delivering (action records held by lanes until their outcome "
        "is durable; at most herald.maxInFlight).",
    ),
    Spec(
        "integration_state",
        "gauge",
        ("integration", "state"),
        "1 for the state the integration's consumer is in, 0 for the others: starting (home: "
        "handlers not loaded or no partition assigned), idle (no active handler), "
        "connecting, consuming, error (see /ready for the reason), inactive (active: false).",
    ),
    Spec(
        "target_up",
        "gauge",
        ("target",),
        "1 when the last delivery attempt to the target was answered (a success, or a refusal "
        "retries would not change, such as HTTP 400), 0 when it failed the way retries are for "
        "(connection refused, timeout, 408, 429, 5xx). No sample before the first attempt.",
    ),
)

_SPECS = {spec.name: spec for spec in METRICS}


class Families:
    """The metric families of one scrape, made from `METRICS` by name."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def __getitem__(self, name: str) -> Any:
        family = self._families.get(name)
        if family is None:
            spec = _SPECS[name]
            kind = {
                "counter": CounterMetricFamily,
                "gauge": GaugeMetricFamily,
                "histogram": HistogramMetricFamily,
            }[spec.kind]
            family = self._families[name] = kind(
                f"{PREFIX}_{spec.name}", spec.help, labels=list(spec.labels)
            )
        return family

    def all(self) -> Iterator[Metric]:
        for spec in METRICS:  # every family, also those without samples yet
            yield self[spec.name]


@dataclass
class Watched:
    """What the collector reads at scrape time, besides the runtime: the home integration's
    source agent and the sink (agents.app creates both)."""

    source: Any  # agents.sources.SourceRunner
    sink: Any  # agents.sink.SinkRunner


class HeraldCollector(Collector):
    """Reads one worker's counters and state when /metrics is scraped."""

    def __init__(self, app: faust.App, runtime: Runtime, watched: Watched) -> None:
        self.app = app
        self.runtime = runtime
        self.watched = watched

    def collect(self) -> Iterable[Metric]:
        families = Families()
        _counters(families, self.runtime.counters)
        self._consumers(families)
        self._in_flight(families)
        self._states(families)
        return list(families.all())

    # -- consumers: lag, rebalances, partitions --------------------------------------------

    def _consumers(self, families: Families) -> None:
        runtime = self.runtime
        consumer = self.app.consumer
        home_ledger: OffsetLedger = self.app.ledger  # type: ignore[attr-defined]
        self._ledger(families, runtime.home, home_ledger, _highwater(consumer), runtime.stalls)
        for name, source in sorted(runtime.sources.items()):
            lags = source.lag_by_partition()
            self._ledger(families, name, source.ledger, lags, source.stalls, lag_given=True)

    @staticmethod
    def _ledger(
        families: Families,
        integration: str,
        ledger: OffsetLedger,
        ends: Callable[[TP], int | None] | dict[TP, int],
        stalls: list[Any],
        lag_given: bool = False,
    ) -> None:
        assigned = sorted(ledger.assigned())
        for tp in assigned:
            if lag_given:
                lag = ends.get(tp)  # type: ignore[union-attr]
            else:
                end, position = ends(tp), ledger.position(tp)  # type: ignore[operator]
                lag = None if end is None or position is None else max(end - position, 0)
            if lag is not None:
                families["consumer_lag_records"].add_metric(
                    [integration, tp.topic, str(tp.partition)], lag
                )
        families["rebalances"].add_metric([integration], ledger.assignments)
        families["partitions_assigned"].add_metric([integration], len(assigned))
        families["partitions_stalled"].add_metric([integration], len(stalls))
        families["partitions_unreadable"].add_metric([integration], len(ledger.stopped()))

    # -- what is inside the worker ---------------------------------------------------------

    def _in_flight(self, families: Families) -> None:
        source, sink = self.watched.source, self.watched.sink
        runners = [source, *(s.runner for s in self.runtime.sources.values())]
        capacity = self.runtime.config.herald.maxInFlight
        stages = {
            "source_queued": sum(runner.channel.buffered for runner in runners),
            "producing": sum(runner.produces_in_flight() for runner in runners),
            "sink_queued": sink.channel.buffered,
            "delivering": max(capacity - sink.lanes.free, 0),
        }
        for stage, count in stages.items():
            families["records_in_flight"].add_metric([stage], count)
        families["lanes_active"].add_metric([], len(sink.lanes.tasks))

    def _states(self, families: Families) -> None:
        runtime = self.runtime
        ready = runtime.rules.ready.is_set() and bool(self.app.consumer.assignment())
        states = {runtime.home: "consuming" if ready else "starting"}
        states.update({name: source.state for name, source in runtime.sources.items()})
        for integration in runtime.config.integrations:
            if not integration.active and integration.name != runtime.home:
                states[integration.name] = "inactive"
        family = families["integration_state"]
        for name, current in sorted(states.items()):
            for state in STATES:
                family.add_metric([name, state], 1 if state == current else 0)
        for target, up in sorted(runtime.counters.target_up.items()):
            families["target_up"].add_metric([target], up)


def _counters(families: Families, counters: Counters) -> None:
    """The labelled counts of the hot paths (agents.counters), as they are."""
    by_name = {
        "records_consumed": counters.consumed_by,
        "records_matched": counters.matched_by,
        "records_skipped": counters.skipped_by,
        "dead_letters": counters.dead_letters_by,
        "actions_produced": counters.produced_by,
        "deliveries": counters.deliveries_by,
        "delivery_retries": counters.retries_by,
    }
    for name, counts in by_name.items():
        family = families[name]
        for labels, value in sorted(counts.items()):
            family.add_metric(list(labels), value)
    _histograms(families["delivery_duration_seconds"], counters.delivery_seconds)
    _histograms(families["end_to_end_latency_seconds"], counters.end_to_end_seconds)


def _histograms(family: HistogramMetricFamily, histograms: Histograms) -> None:
    bounds = [floatToGoString(bound) for bound in histograms.bounds] + ["+Inf"]
    for labels, histogram in sorted(histograms.items()):
        cumulative, total = [], 0
        for bound, count in zip(bounds, histogram.counts, strict=True):
            total += count
            cumulative.append((bound, total))
        family.add_metric(list(labels), cumulative, sum_value=histogram.sum)


def _highwater(consumer: Any) -> Callable[[TP], int | None]:
    def highwater(tp: TP) -> int | None:
        try:
            end = consumer.highwater(tp)
        except Exception:  # not fetched yet, or the consumer is restarting
            return None
        return end if isinstance(end, int) and end >= 0 else None

    return highwater


def worker_registry(app: faust.App, runtime: Runtime, source: Any, sink: Any) -> CollectorRegistry:
    """The worker's registry: Herald's families, and the standard process_* and python_*
    ones (CPU, memory, open files, GC) of this worker's process."""
    registry = CollectorRegistry()
    registry.register(HeraldCollector(app, runtime, Watched(source, sink)))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
