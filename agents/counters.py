"""The worker's plain counters, cheap enough for the hot path.

The totals are shown on /herald/stats. The same counts broken down by label (integration,
topic, handler, action, target, stage, outcome) and two latency histograms live here too, as
plain ints in dicts keyed by label values: the hot paths only add to them (a dict lookup and
an integer add, no lock, no `prometheus_client` child looked up per record), and
`agents.metrics` turns them into Prometheus metric families when `/metrics` is scraped.

Every label value is a configured name (integration, topic, handler, target) or one of a
fixed set (action type, dead-letter stage, delivery outcome): never a message key, id or any
other value taken from a message, so each breakdown stays as small as the configuration.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from streams.actions.base import ActionRequest

#: A handler's counts on the status page (`GET /api/herald/status`), as its answer and its
#: OpenAPI schema (agents.admin.openapi) both name them.
HANDLER_COUNTS = ("matched", "conditionFalse", "produced", "delivered", "deadLettered", "retries")

#: Upper bounds (seconds) of the delivery-duration histogram: local endpoints answer in
#: milliseconds; retries under the default policy can take up to 30 minutes.
DELIVERY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0,
)  # fmt: skip
#: Upper bounds (seconds) of the end-to-end histogram (record timestamp to delivery).
END_TO_END_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip

#: Dead-letter stages whose handler's condition was true (the record matched it, but an
#: action could not be rendered or did not fit): they count as matched.
MATCHED_STAGES = frozenset({"template", "size"})

#: Outcomes of one action record in the sink (`herald_deliveries_total{outcome}`).
DELIVERED, FAILED, DUPLICATE, DEDUPE_WINDOW = "delivered", "failed", "duplicate", "dedupe_window"


class Histogram:
    """Observations counted per bucket in plain ints; `agents.metrics` exports them
    cumulatively, as Prometheus' histograms are."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, as Prometheus' `le` (less or equal) has it
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Histograms(dict[tuple[str, ...], Histogram]):
    """Histograms by label values, each made on its first observation."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        super().__init__()
        self.bounds = bounds

    def __missing__(self, key: tuple[str, ...]) -> Histogram:
        histogram = self[key] = Histogram(self.bounds)
        return histogram


def _counts() -> Counter[tuple[str, ...]]:
    return Counter()


@dataclass
class Counters:
    # -- totals, on /herald/stats ---------------------------------------------------------
    consumed: int = 0
    matched: int = 0
    actions_produced: int = 0
    dead_lettered: int = 0
    delivered: int = 0
    skipped_duplicates: int = 0
    retries: int = 0

    # -- by label, for /metrics (agents.metrics) ------------------------------------------
    #: (integration, topic) -> source records consumed
    consumed_by: Counter[tuple[str, ...]] = field(default_factory=_counts, repr=False)
    #: (integration, handler) -> records whose condition was true
    matched_by: Counter[tuple[str, ...]] = field(default_factory=_counts, repr=False)
    #: (integration, handler) -> records whose condition was false
    skipped_by: Counter[tuple[str, ...]] = field(default_factory=_counts, repr=False)
    #: (integration, stage) -> dead letters written
    dead_letters_by: Counter[tuple[str, ...]] = field(default_factory=_counts, repr=False)
    #: (integration, handler, action) -> action requests produced to the actions topic
    produced_by: Counter[tuple[str, ...]] = field(default_factory=_counts, repr=False)
    #: (handler, action, target, outcome) -> action records finished by the sink
    deliveries_by: Counter[tuple[str, ...]] = field(default_factory=_counts, repr=False)
    #: (handler, action, target) -> attempts that failed transiently and are retried
    retries_by: Counter[tuple[str, ...]] = field(default_factory=_counts, repr=False)
    #: target -> 1 if its last attempt was answered (success or a permanent refusal), 0 if
    #: it failed the way retries are for (connection, timeout, 408, 429, 5xx)
    target_up: dict[str, int] = field(default_factory=dict, repr=False)
    #: (action, target, outcome) -> seconds from the first attempt to the outcome
    delivery_seconds: Histograms = field(
        default_factory=lambda: Histograms(DELIVERY_BUCKETS), repr=False
    )
    #: (integration, action) -> seconds from the source record's timestamp to its delivery
    end_to_end_seconds: Histograms = field(
        default_factory=lambda: Histograms(END_TO_END_BUCKETS), repr=False
    )

    def as_dict(self) -> dict[str, int]:
        """The totals, for /herald/stats."""
        values = ((f.name, getattr(self, f.name)) for f in fields(self))
        return {name: value for name, value in values if isinstance(value, int)}

    # -- source side ----------------------------------------------------------------------

    def count_skipped(self, integration: str, handlers: Iterable[str]) -> None:
        """One batch's condition-false results (handler names, one per record and handler),
        added once per batch."""
        by = self.skipped_by
        for handler, count in Counter(handlers).items():
            by[(integration, handler)] += count

    def count_matched(self, integration: str, handlers: Iterable[str]) -> None:
        """The handlers whose condition one record met (each once)."""
        by = self.matched_by
        for handler in handlers:
            by[(integration, handler)] += 1

    def count_dead_letter(self, integration: str, stage: str, count: int = 1) -> None:
        self.dead_lettered += count
        self.dead_letters_by[(integration, stage)] += count

    # -- sink side ------------------------------------------------------------------------

    def count_delivery(self, request: ActionRequest, outcome: str) -> None:
        self.deliveries_by[(request.handler, request.action, request.target or "", outcome)] += 1

    def count_retry(self, request: ActionRequest) -> None:
        self.retries += 1
        target = request.target or ""
        self.retries_by[(request.handler, request.action, target)] += 1
        if target:
            self.target_up[target] = 0

    def observe_delivery(
        self, request: ActionRequest, outcome: str, seconds: float, answered: bool
    ) -> None:
        """A delivery ended (`outcome`) `seconds` after its first attempt began; `answered`:
        its last attempt reached the target and was not a failure retries are for."""
        target = request.target or ""
        self.delivery_seconds[(request.action, target, outcome)].observe(seconds)
        if target:
            self.target_up[target] = 1 if answered else 0
        if outcome == DELIVERED:
            timestamp = request.source.get("timestamp")
            if isinstance(timestamp, int):
                latency = max(time.time() - timestamp / 1000.0, 0.0)
                self.end_to_end_seconds[(request.integration, request.action)].observe(latency)
