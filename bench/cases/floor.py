"""The floor: a bare Faust agent (``bench/floor_app.py``) on workload F's topic.

It does no work per message, with Herald's consumer settings, so it is the best any Faust app
can do here: F's baseline. With the latency case selected it is then fed a steady rate on a
second topic, for L's baseline (one Kafka hop into a bare Faust agent).
"""

from __future__ import annotations

import time

from agents.embedded.broker import create_topics, run_sync
from agents.embedded.worker import WorkerError, WorkerProcess
from bench import workload
from bench.cases import PARTITIONS, Context
from bench.harness import Measurement, get_json, throughput, wait_for, watch_drain
from bench.herald import session_timeout

FLOOR_STEADY_MAX_SECONDS = 20.0


def run(ctx: Context, *, latency: bool) -> None:
    """Measure ``floor`` (and ``floor-latency`` when ``latency``)."""
    topic = ctx.filter_topic()
    steady_topic = ctx.name("floor-steady")
    create_topics(ctx.bootstrap, {steady_topic: PARTITIONS})
    n = ctx.args.messages
    floor = Measurement("floor", "bare Faust agent iterating the topic (raw bytes)", unit="msg/s")
    worker = WorkerProcess(
        app_module="bench.floor_app",
        workdir=ctx.here("floor"),
        env={
            "BENCH_BOOTSTRAP": ctx.bootstrap,
            "BENCH_TOPIC": f"{topic},{steady_topic}",
            "BENCH_GROUP": ctx.name("floor"),
            "BENCH_SESSION_TIMEOUT": str(session_timeout(tansu=ctx.tansu)),
        },
    )
    stats_url = f"{worker.web_url}/bench/stats"
    worker.start()
    try:
        drain = watch_drain(
            [worker],
            lambda: (get_json(stats_url) or {}).get("consumed"),
            n,
            timeout=max(180.0, n / 1000),
        )
        throughput(floor, drain, n, broker=ctx.broker_cpu)
        _in_process(floor, get_json(stats_url) or {}, n)
        floor.how = (
            "messages / (first to last message consumed), polling the app's counter every "
            "50 ms (window rounded outwards)"
        )
        ctx.record(floor)
        if latency and ctx.args.steady_seconds > 0:
            ctx.record(_steady(ctx, worker, steady_topic, first_count=n, stats_url=stats_url))
    except (WorkerError, TimeoutError, RuntimeError) as exc:
        floor.fail(exc)
        ctx.record(floor)
    finally:
        worker.stop()


def _in_process(floor: Measurement, inside: dict[str, float], n: int) -> None:
    """The app's own first-to-last time, as a cross-check of the polled window."""
    first, last = inside.get("first"), inside.get("last")
    if first and last and last > first:
        floor.details["in_process_seconds"] = round(last - first, 3)
        floor.details["in_process_rate"] = round((n - 1) / (last - first), 1)


def _steady(
    ctx: Context, worker: WorkerProcess, topic: str, *, first_count: int, stats_url: str
) -> Measurement:
    """One Kafka hop into the bare agent at L's rate: record timestamp -> agent got it."""
    rate = ctx.args.steady_rate
    seconds = min(ctx.args.steady_seconds, FLOOR_STEADY_MAX_SECONDS)
    m = Measurement(
        "floor-latency",
        f"bare Faust agent, steady {rate:g} msg/s for {seconds:g}s",
        unit="ms",
        how=(
            "p99 of (time the agent got the record - the record's Kafka timestamp, the "
            "producer's clock at send): one Kafka hop, no HTTP"
        ),
    )
    since_ms = time.time() * 1000
    sent, elapsed = run_sync(
        lambda: workload.steady(ctx.bootstrap, topic, rate, seconds, 100, first_count)
    )

    def all_consumed() -> bool:
        return ((get_json(stats_url) or {}).get("consumed") or 0) >= first_count + sent

    wait_for(all_consumed, timeout=60)
    latency = get_json(f"{worker.web_url}/bench/latency?since={since_ms:.0f}", timeout=30) or {}
    m.value = latency.get("p99")
    m.details.update(
        offered_rate=rate,
        produce_seconds=round(elapsed, 2),
        sent=sent,
        latency_samples=latency.get("count"),
        p50_ms=latency.get("p50"),
        p90_ms=latency.get("p90"),
        p99_ms=latency.get("p99"),
        max_ms=latency.get("max"),
    )
    if latency.get("count") != sent:
        m.error = f"latency of {latency.get('count')} of {sent} records"
    return m
