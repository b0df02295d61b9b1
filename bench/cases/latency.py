"""L (latency): a steady rate through workload A's path, produce to receiver.

A fresh Herald worker (A's configuration, receiver answering at once) is started on an empty
topic and warmed up with a few events; then events are produced at ``--steady-rate`` for
``--steady-seconds``, each stamped (``ts``) with the producer's clock when it is handed to
the producer. Latency is the receiver's arrival time minus ``ts``: the whole path (source hop,
condition, action record, sink hop, HTTP), on one clock since everything runs on this machine.
"""

from __future__ import annotations

import json
import time
from typing import Any

from agents.embedded.broker import create_topics, run_sync
from agents.embedded.worker import WorkerError
from bench import herald, workload
from bench.cases import PARTITIONS, Context
from bench.harness import (
    RESULTS,
    Measurement,
    Profiler,
    Receiver,
    broker_cpu,
    cpu_seconds,
    percentile,
    wait_for,
)
from bench.herald import WORKING, Tree
from streams.config.models import HeraldSettings

# tansu answers a waiting fetch late (a bare aiokafka hop, `python -m bench.broker_hop
# --broker tansu`: p50 3 ms at a 10 ms wait, 8 ms at 100 ms, 74 ms at 500 ms), so on it the
# fetch wait is latency and L runs with 10 ms. Kafka answers a waiting fetch as soon as records
# arrive, so there L runs with Herald's default, as a user would.
TANSU_FETCH_MAX_WAIT_MS = 10
HERALD_FETCH_MAX_WAIT_MS = int(HeraldSettings.model_fields["fetchMaxWaitMs"].default)
WARMUP = 200  # events delivered before the measured phase (connections, caches, fetch loop)
SLOW_MS = 1000.0


def run(ctx: Context, tree: Tree = WORKING) -> None:
    """L for the Herald worker of ``tree`` (``L@rev`` and its ``L-broker-hop@rev`` for a
    revision: each side has its own topic, phase and hop consumer)."""
    rate, seconds = ctx.args.steady_rate, ctx.args.steady_seconds
    m = Measurement(
        "L" + tree.label,
        f"Herald, every message -> ilert event, steady {rate:g} msg/s for {seconds:g}s",
        unit="ms",
        how=(
            "latency = receiver arrival - the event's ts (producer clock when handed to the "
            "producer), over every event of the phase; p50/p99 by nearest rank"
        ),
    )
    topic = ctx.name("L" + tree.slug)
    create_topics(ctx.bootstrap, {topic: PARTITIONS})
    here = ctx.here("L" + tree.slug)
    receiver = Receiver(here / "receiver.log")
    content = herald.config(
        name=topic,
        bootstrap=ctx.bootstrap,
        topic=topic,
        receiver_url=receiver.url,
        partitions=PARTITIONS,
        max_in_flight=ctx.args.max_in_flight,
        tansu=ctx.tansu,
    )
    wait_ms = fetch_wait_ms(ctx)
    if wait_ms != HERALD_FETCH_MAX_WAIT_MS:
        content["herald"]["fetchMaxWaitMs"] = wait_ms
    worker = herald.worker(
        herald.write_config(here / "herald.yaml", content), here / "worker", tree
    )
    worker.start()
    phase: dict[str, Any] = {}  # the measured phase's start, CPU then, and profiler
    try:
        worker.wait_http_ready(timeout=180)
        _warm_up(ctx, topic, receiver)
        ramp = float(ctx.args.steady_ramp_seconds)
        measured_seq = WARMUP + int(rate * ramp)

        def measured() -> None:
            """The ramp is over: the measured phase (and its CPU, and its profile) starts."""
            if ctx.args.profile:
                phase["profiler"] = Profiler(worker.pid or 0, RESULTS / f"profile-L{tree.slug}.txt")
            phase["cpu"] = cpu_seconds(worker.pid)
            phase["start"] = time.time()

        ramp_start_ms = time.time() * 1000
        sent, elapsed, broker_hop, ramp_hop = run_sync(
            lambda: workload.steady_with_hop(
                ctx.bootstrap,
                topic,
                rate,
                seconds,
                WARMUP,
                wait_ms,
                ramp_seconds=ramp,
                on_measured=measured,
            )
        )
        profiler = phase.get("profiler")
        cpu_before, phase_start = phase.get("cpu"), phase["start"]
        since_ms = phase_start * 1000
        produced_end = time.time()
        done = wait_for(
            lambda: receiver.unique() >= measured_seq + sent, timeout=max(120, sent / 100)
        )
        cpu_after = cpu_seconds(worker.pid)
        phase_end = time.time()
        if profiler is not None:
            profiler.stop()
            m.details["profiles"] = [str(profiler.output)]
        everything = [s for s in receiver.samples() if s[0] is not None and s[0] >= WARMUP]
        samples = [s for s in everything if s[0] >= measured_seq]
        _ramp_figures(m, [s for s in everything if s[0] < measured_seq], ramp, ramp_start_ms)
        if ctx.args.keep:  # every event's [seq, ts_ms, kafka_ts_ms, arrival_s], to study
            (here / "samples.json").write_text(json.dumps(everything))
            actions = f"{content['herald']['topicPrefix']}-actions"
            stamps = run_sync(
                lambda: workload.record_timestamps(ctx.bootstrap, actions, ramp_start_ms)
            )
            (here / "action-timestamps.json").write_text(json.dumps(stamps))
        _figures(m, samples, sent)
        m.details.update(
            offered_rate=rate,
            ramp_seconds=ramp,
            fetch_max_wait_ms=wait_ms,
            produce_seconds=round(elapsed, 2),
            sent=sent,
            all_delivered_after_last_send_s=round(done - produced_end, 3) if done else None,
            **_hops(ctx, content, samples, since_ms),
        )
        # the same events read by a bare aiokafka consumer at the same time: the broker alone
        hop = Measurement(
            "L-broker-hop" + tree.label,
            f"bare aiokafka consumer on the same topic during the phase (same fetch wait, "
            f"{wait_ms} ms)",
            unit="ms",
            how="receipt - the event's ts: one Kafka hop, no Herald, no HTTP",
        )
        hop.value = percentile(broker_hop, 99)
        hop.details.update(
            p50_ms=percentile(broker_hop, 50),
            p90_ms=percentile(broker_hop, 90),
            p99_ms=hop.value,
            max_ms=max(broker_hop) if broker_hop else None,
            over_1s=sum(1 for v in broker_hop if v > SLOW_MS),
            read=len(broker_hop),
            by_sixth=_by_sixth(broker_hop),
            ramp_p50_ms=percentile(ramp_hop, 50),
            ramp_p99_ms=percentile(ramp_hop, 99),
            ramp_max_ms=max(ramp_hop) if ramp_hop else None,
        )
        ctx.record(hop)
        m.details["p50_by_sixth_ms"] = _by_sixth(_in_order(samples))
        if cpu_before is not None and cpu_after is not None and sent:
            used = cpu_after - cpu_before
            m.details["worker_cpu_us_per_message"] = round(used / sent * 1e6)
            m.details["worker_cpu_cores"] = round(used / (phase_end - phase_start), 2)
        # the phase's broker work: the producer's records, Herald's source and sink fetches,
        # its action and changelog records and commits, and the bare hop consumer's fetches
        broker_cpu(m.details, ctx.broker_cpu, phase_start, phase_end, sent)
        _capacity_note(ctx, m, rate, ctx.results.get("A0" + tree.label))
        if done is None:
            m.error = f"only {m.details['delivered']}/{sent} delivered in time"
    except (WorkerError, TimeoutError, RuntimeError, OSError) as exc:
        m.fail(exc)
    finally:
        if phase.get("profiler") is not None:
            phase["profiler"].stop()
        m.details["worker_stats"] = herald.stats(worker)
        m.details["worker_cwd"] = herald.process_cwd(worker)
        m.details["herald_tree"] = tree.rev or "working tree"
        missing = herald.missing_note([worker])
        if missing:
            m.details["missing_topics"] = missing
        worker.stop()
        receiver.stop()
    ctx.record(m)


def fetch_wait_ms(ctx: Context) -> int:
    """L's ``fetchMaxWaitMs`` (also the bare hop consumer's): ``--fetch-max-wait-ms`` when
    given, else 10 on tansu (which holds a fetch to its deadline) and Herald's default on
    Kafka (which answers as soon as records arrive)."""
    chosen = getattr(ctx.args, "fetch_max_wait_ms", None)
    if chosen is not None:
        return int(chosen)
    return TANSU_FETCH_MAX_WAIT_MS if ctx.tansu else HERALD_FETCH_MAX_WAIT_MS


def _by_sixth(latencies: list[float]) -> list[float | None]:
    """p50 of each sixth of the phase, in order: shows a latency that grows with time."""
    n = len(latencies)
    return [percentile(latencies[i * n // 6 : (i + 1) * n // 6], 50) for i in range(6)]


def _in_order(samples: list[list[Any]]) -> list[float]:
    """Latency of each event's first delivery, in produce order."""
    first: dict[int, float] = {}
    for seq, ts_ms, _kafka_ts, arrival in sorted(samples, key=lambda s: s[0]):
        if ts_ms is not None and seq not in first:
            first[seq] = arrival * 1000 - ts_ms
    return list(first.values())


def _warm_up(ctx: Context, topic: str, receiver: Receiver) -> None:
    """Deliver ``WARMUP`` events first, so the phase does not time the first fetch and connect."""
    run_sync(lambda: workload.preload(ctx.bootstrap, topic, WARMUP, alarm_every=1))
    if wait_for(lambda: receiver.unique() >= WARMUP, timeout=120) is None:
        raise RuntimeError(f"warm-up: {receiver.unique()}/{WARMUP} delivered within 120s")


def _figures(m: Measurement, samples: list[list[Any]], sent: int) -> None:
    """Latency of each event's first delivery: p50/p90/p99/max and how many took over 1 s."""
    first_arrival: dict[int, tuple[float, float]] = {}
    for seq, ts_ms, _kafka_ts, arrival in samples:
        if ts_ms is not None and seq not in first_arrival:
            first_arrival[seq] = (ts_ms, arrival)
    latencies = [arrival * 1000 - ts for ts, arrival in first_arrival.values()]
    m.value = percentile(latencies, 99)
    m.details.update(
        delivered=len(first_arrival),
        missing=sent - len(first_arrival),
        p50_ms=percentile(latencies, 50),
        p90_ms=percentile(latencies, 90),
        p99_ms=m.value,
        max_ms=max(latencies) if latencies else None,
        over_1s=sum(1 for v in latencies if v > SLOW_MS),
    )


def _ramp_figures(
    m: Measurement, samples: list[list[Any]], ramp: float, ramp_start_ms: float
) -> None:
    """The ramp's latency, beside the phase's: its first second is when the load generator's
    producer and the hop consumer connect and the worker goes from idle to the steady rate."""
    if not samples:
        return
    latencies = [s[3] * 1000 - s[1] for s in samples if s[1] is not None]
    first = [
        s[3] * 1000 - s[1] for s in samples if s[1] is not None and s[1] < ramp_start_ms + 1000
    ]
    m.details.update(
        ramp_p50_ms=percentile(latencies, 50),
        ramp_p99_ms=percentile(latencies, 99),
        ramp_max_ms=max(latencies) if latencies else None,
        ramp_first_second_p99_ms=percentile(first, 99),
        ramp_over_1s=sum(1 for v in latencies if v > SLOW_MS),
    )


def _hops(
    ctx: Context, content: dict[str, Any], samples: list[list[Any]], since_ms: float
) -> dict[str, Any]:
    """Split each delivery at its action record's Kafka timestamp (written by the source agent):
    source hop = action record - ts; sink hop + HTTP = arrival - action record."""
    actions = f"{content['herald']['topicPrefix']}-actions"
    try:
        produced = run_sync(lambda: workload.record_timestamps(ctx.bootstrap, actions, since_ms))
    except (TimeoutError, OSError) as exc:
        return {"hops_error": f"could not read {actions}: {exc}"}
    source = [produced[s[0]] - s[1] for s in samples if s[0] in produced and s[1] is not None]
    sink = [s[3] * 1000 - produced[s[0]] for s in samples if s[0] in produced]
    return {
        "source_hop_p50_ms": percentile(source, 50),
        "source_hop_p99_ms": percentile(source, 99),
        "sink_hop_p50_ms": percentile(sink, 50),
        "sink_hop_p99_ms": percentile(sink, 99),
    }


def _capacity_note(ctx: Context, m: Measurement, rate: float, a0: Measurement | None) -> None:
    """Say so when the offered rate is above what A0 (of the same tree) measured: then queues
    grow all phase."""
    if a0 is not None and a0.value is not None and rate > a0.value:
        m.details["note"] = (
            f"offered {rate:g}/s is above A0's {a0.value:,.0f} deliveries/s: latency grows "
            "for as long as the phase lasts"
        )
