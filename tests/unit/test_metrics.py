"""The worker's Prometheus metrics without a broker (agents.metrics, agents.counters): what the
hot paths count comes out of the registry under Prometheus' conventions, parsed back with
prometheus_client's own parser; lag, rebalances and states are read from a real ledger."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents.counters import DELIVERED, DUPLICATE, FAILED, Counters, Histogram
from agents.ledger import OffsetLedger
from agents.metrics import METRICS, PREFIX, STATES, worker_registry
from streams.actions.base import ActionRequest
from streams.offsets import Ticket

ROOT = Path(__file__).resolve().parents[2]


def request(handler: str = "alarms", target: str | None = "hook", timestamp: Any = 1) -> Any:
    return ActionRequest(
        id="d1",
        handler=handler,
        event="kafka:home:src",
        action="webhook",
        index=0,
        payload={},
        ordering_key="the-message-key",
        source={"topic": "src", "partition": 0, "offset": 3, "timestamp": timestamp},
        integration="home",
        created_ms=1,
        target=target,
    )


def anchored(ledger: OffsetLedger, tp: TP, offset: int) -> None:
    anchor, _ = ledger.repositions()
    ledger.anchored(tp, anchor[tp], offset)


class Consumer:
    """The home consumer as the collector reads it: assignment and high watermarks."""

    def __init__(self, ends: dict[TP, int | None]) -> None:
        self.ends = ends

    def assignment(self) -> set[TP]:
        return set(self.ends)

    def highwater(self, tp: TP) -> int | None:
        return self.ends[tp]


def runner(buffered: int, producing: int) -> SimpleNamespace:
    return SimpleNamespace(
        channel=SimpleNamespace(buffered=buffered), produces_in_flight=lambda: producing
    )


def scrape(counters: Counters) -> tuple[str, dict[str, Any]]:
    """A worker's registry over a real ledger and stand-ins for what it reads, scraped."""
    src, actions = TP("src", 0), TP("herald-actions", 1)
    home = OffsetLedger()
    home.assign({src, actions}, 1)
    home.assign({src, actions}, 2)  # a second rebalance
    anchored(home, src, 5)
    anchored(home, actions, 0)
    ticket: Ticket = home.admit(src, [SimpleNamespace(offset=o) for o in (5, 6)], 2, True).ticket
    ticket.done()  # src/0 done up to offset 7
    cloud = OffsetLedger()
    cloud.assign({TP("metrics", 2)}, 1)
    remote = SimpleNamespace(
        ledger=cloud,
        lag_by_partition=lambda: {TP("metrics", 2): 4},
        stalls=["stalled"],
        state="error",
        runner=runner(3, 2),
    )
    ends: dict[TP, int | None] = {src: 12, actions: None}
    app = SimpleNamespace(consumer=Consumer(ends), ledger=home)
    ready = asyncio.Event()
    ready.set()
    config = SimpleNamespace(
        herald=SimpleNamespace(maxInFlight=16),
        integrations=[
            SimpleNamespace(name="home", active=True),
            SimpleNamespace(name="cloud", active=True),
            SimpleNamespace(name="old", active=False),
        ],
    )
    runtime = SimpleNamespace(
        home="home",
        counters=counters,
        sources={"cloud": remote},
        stalls=[],
        rules=SimpleNamespace(ready=ready),
        config=config,
    )
    sink = SimpleNamespace(
        channel=SimpleNamespace(buffered=7),
        lanes=SimpleNamespace(free=10, tasks={b"a": None, b"b": None}),
    )
    registry = worker_registry(app, runtime, runner(20, 5), sink)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def samples(family: Any, name: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for s in family.samples
        if name is None or s.name == name
    }


def test_what_the_hot_paths_count_is_scraped_by_label() -> None:
    counters = Counters()
    counters.consumed_by[("home", "src")] += 500
    counters.count_skipped("home", ["alarms"] * 495 + ["audit"] * 3)
    counters.count_matched("home", {"alarms"})
    counters.count_dead_letter("home", "condition")
    counters.count_dead_letter("home", "decode", 2)
    counters.produced_by[("home", "alarms", "webhook")] += 1
    counters.count_retry(request())
    counters.observe_delivery(request(), DELIVERED, 0.3, answered=True)
    counters.count_delivery(request(), DELIVERED)
    counters.count_delivery(request(), DUPLICATE)
    counters.count_delivery(request(target=None), FAILED)
    text, families = scrape(counters)

    assert samples(families[f"{PREFIX}_records_consumed"], "herald_records_consumed_total") == {
        (("integration", "home"), ("topic", "src")): 500
    }
    assert samples(families["herald_records_skipped"], "herald_records_skipped_total") == {
        (("handler", "alarms"), ("integration", "home")): 495,
        (("handler", "audit"), ("integration", "home")): 3,
    }
    assert samples(families["herald_records_matched"], "herald_records_matched_total") == {
        (("handler", "alarms"), ("integration", "home")): 1
    }
    assert samples(families["herald_dead_letters"], "herald_dead_letters_total") == {
        (("integration", "home"), ("stage", "condition")): 1,
        (("integration", "home"), ("stage", "decode")): 2,
    }
    assert counters.dead_lettered == 3  # the total of /herald/stats moves with them
    deliveries = samples(families["herald_deliveries"], "herald_deliveries_total")
    assert {(dict(k)["outcome"], dict(k)["target"]): v for k, v in deliveries.items()} == {
        ("delivered", "hook"): 1,
        ("duplicate", "hook"): 1,
        ("failed", ""): 1,  # an action without a named target
    }
    assert {dict(k)["handler"] for k in deliveries} == {"alarms"}
    retries = samples(families["herald_delivery_retries"], "herald_delivery_retries_total")
    assert retries == {(("action", "webhook"), ("handler", "alarms"), ("target", "hook")): 1}
    # the retry said the target was down; the delivery after it that it answers
    assert samples(families["herald_target_up"]) == {(("target", "hook"),): 1}
    assert "the-message-key" not in text  # the request's ordering (message) key is no label


def test_histograms_are_cumulative_with_le_as_prometheus_has_it() -> None:
    counters = Counters()
    for seconds in (0.004, 0.005, 0.3, 7200.0):
        counters.observe_delivery(request(), DELIVERED, seconds, answered=True)
    counters.observe_delivery(request(timestamp=None), FAILED, 1.0, answered=False)
    _, families = scrape(counters)
    family = families["herald_delivery_duration_seconds"]
    delivered = {
        s.labels["le"]: s.value
        for s in family.samples
        if s.name.endswith("_bucket") and s.labels["outcome"] == "delivered"
    }
    assert delivered["0.0025"] == 0
    assert delivered["0.005"] == 2  # 0.005 itself is in the bucket `le="0.005"`
    assert delivered["0.25"] == 2 and delivered["0.5"] == 3
    assert delivered["1800.0"] == 3 and delivered["+Inf"] == 4
    counts = samples(family, "herald_delivery_duration_seconds_count")
    assert counts[(("action", "webhook"), ("outcome", "delivered"), ("target", "hook"))] == 4
    assert counts[(("action", "webhook"), ("outcome", "failed"), ("target", "hook"))] == 1
    sums = samples(family, "herald_delivery_duration_seconds_sum")
    delivered_sum = sums[(("action", "webhook"), ("outcome", "delivered"), ("target", "hook"))]
    assert abs(delivered_sum - 7200.309) < 1e-9
    # end to end: only deliveries whose source record has a timestamp (here 1 ms after 1970)
    e2e = samples(
        families["herald_end_to_end_latency_seconds"], "herald_end_to_end_latency_seconds_count"
    )
    assert e2e == {(("action", "webhook"), ("integration", "home")): 4}
    # the last delivery failed the way retries are for: the target counts as down
    assert samples(families["herald_target_up"]) == {(("target", "hook"),): 0}


def test_lag_rebalances_in_flight_and_states_are_read_at_scrape_time() -> None:
    _, families = scrape(Counters())
    lag = samples(families["herald_consumer_lag_records"])
    assert lag == {
        (("integration", "home"), ("partition", "0"), ("topic", "src")): 5,  # 12 - 7 done
        (("integration", "cloud"), ("partition", "2"), ("topic", "metrics")): 4,
    }  # the actions partition, its high watermark not known yet, has no sample
    assert samples(families["herald_rebalances"], "herald_rebalances_total") == {
        (("integration", "home"),): 2,
        (("integration", "cloud"),): 1,
    }
    assert samples(families["herald_partitions_assigned"]) == {
        (("integration", "home"),): 2,
        (("integration", "cloud"),): 1,
    }
    assert samples(families["herald_partitions_stalled"])[(("integration", "cloud"),)] == 1
    assert samples(families["herald_records_in_flight"]) == {
        (("stage", "source_queued"),): 23,
        (("stage", "producing"),): 7,
        (("stage", "sink_queued"),): 7,
        (("stage", "delivering"),): 6,  # maxInFlight 16, 10 free
    }
    assert samples(families["herald_lanes_active"]) == {(): 2}
    states = samples(families["herald_integration_state"])
    assert len(states) == 3 * len(STATES)
    current = {dict(k)["integration"]: dict(k)["state"] for k, v in states.items() if v == 1}
    assert current == {"home": "consuming", "cloud": "error", "old": "inactive"}


def test_every_family_is_exposed_under_prometheus_naming_conventions() -> None:
    text, families = scrape(Counters())
    for spec in METRICS:
        name = f"{PREFIX}_{spec.name}"
        assert name in families, name
        assert families[name].type == spec.kind
        assert families[name].documentation
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name)
        if spec.kind == "counter":
            assert f"# TYPE {name}_total counter" in text or f"# TYPE {name} counter" in text
            assert not spec.name.endswith("_total")
        if spec.kind == "histogram":
            assert spec.name.endswith("_seconds")  # the unit in the name
        assert not {"key", "id", "message", "offset"} & set(spec.labels)
    assert "process_resident_memory_bytes" in families  # the standard process metrics


def test_the_stats_page_keeps_its_totals_only() -> None:
    counters = Counters()
    counters.count_skipped("home", ["h"])
    assert counters.as_dict() == {
        "consumed": 0,
        "matched": 0,
        "actions_produced": 0,
        "dead_lettered": 0,
        "delivered": 0,
        "skipped_duplicates": 0,
        "retries": 0,
    }


def test_a_histogram_counts_a_value_in_the_first_bucket_at_or_above_it() -> None:
    histogram = Histogram((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 3.0):
        histogram.observe(value)
    assert histogram.counts == [2, 1, 1] and histogram.sum == 6.0


def test_the_readme_lists_every_metric() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    for spec in METRICS:
        suffix = "_total" if spec.kind == "counter" else ""
        assert f"`{PREFIX}_{spec.name}{suffix}" in section, spec.name
