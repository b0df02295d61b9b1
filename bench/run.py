"""Herald's benchmark: one command, its own broker, every workload of the performance issue.

    python -m bench.run [--broker kafka|tansu] [--cases F,A0,...] [--messages N] [--profile]

The broker is Apache Kafka (one KRaft node started by the test suite's harness,
tests/support/apache_kafka.py) unless ``--broker tansu`` picks the embedded in-memory one.

Workloads (bench/README.md explains each figure):

  F    filter: 1,000,000 events, 1% pass -> ilert events; vs a bare Faust agent (floor) and a
       hand-written confluent-kafka loop (F-confluent)
  A0   alerts: every event -> ilert event, receiver answers at once; vs a sequential sender
  A20  the same, receiver answers after 20 ms; vs the sequential sender (ilagent's model)
  L    latency: a steady 1,000 events/s for 60 s through A's path
  S    scale: F with one worker and with two in one consumer group
  M    memory: a worker holding 1,000,000 dedupe keys; RSS, recovery and restart time

It prints one table (workload, Herald, baseline, ratio, goal, met) with notes, and writes
everything to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agents.embedded.broker import run_sync
from bench import herald, workload
from bench.broker import KAFKA, KINDS, TANSU, BenchBroker
from bench.cases import PARTITIONS, Context, alerts, floor, latency, memory
from bench.cases import filter as filter_cases
from bench.harness import RESULTS, CpuSampler, machine_info
from bench.report import render, rows

#: Case names for --cases, in the order they run (baselines before what is compared to them).
CASES = ("floor", "F", "F-confluent", "S", "A0", "A20", "L", "M")
#: Events produced and read once before the first case on Kafka (JIT warm-up, see below).
BROKER_WARMUP = 200_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--broker",
        choices=KINDS,
        default=KAFKA,
        help="Apache Kafka (one KRaft node from Maven jars; needs Java 17 and Maven) or the "
        "embedded in-memory tansu",
    )
    add(
        "--kafka-version",
        default=None,
        help="Apache Kafka version (default: $HERALD_KAFKA_VERSION or the test harness's)",
    )
    add("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
    add("--messages", type=int, default=1_000_000, help="F's events (floor, F, F-confluent, S)")
    add("--alerts-messages", type=int, default=100_000, help="A0's events (each is a delivery)")
    add(
        "--alerts20-messages",
        type=int,
        default=50_000,
        help="A20's events (>= 10 s at 5,000/s; ~55 s at the 20x-sequential goal)",
    )
    add("--alert-delay-ms", type=float, default=20.0, help="A20's receiver answer delay")
    add(
        "--sequential-seconds",
        type=float,
        default=10.0,
        help="how long the sequential sender runs for A0 and A20 (0 skips it)",
    )
    add("--steady-rate", type=float, default=1000.0, help="L's produce rate, events/s")
    add("--steady-seconds", type=float, default=60.0, help="L's duration (0 skips L)")
    add(
        "--fetch-max-wait-ms",
        type=int,
        default=None,
        help="L's herald.fetchMaxWaitMs and its hop consumer's (default: 10 on tansu, which "
        "holds a fetch to its deadline; Herald's default on Kafka)",
    )
    add("--memory-keys", type=int, default=1_000_000, help="M's dedupe keys")
    add("--max-in-flight", type=int, default=512, help="herald.maxInFlight of every Herald case")
    add(
        "--profile",
        action="store_true",
        help="record the Herald workers of F, S, A0 and A20 with py-spy while they drain (slows "
        "them: such a run's figures are not the benchmark's); bench/results/profile-*.txt",
    )
    add("--json", type=Path, default=RESULTS / "latest.json", help="results file")
    add("--keep", action="store_true", help="keep the work directory (logs, configs, data)")
    args = parser.parse_args(argv)
    args.cases = _cases(parser, args.cases)
    if args.profile and shutil.which("py-spy") is None:
        parser.error("--profile needs py-spy (pip install py-spy)")
    return args


def _cases(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """The selected case names, canonical spelling, in run order."""
    known = {c.lower(): c for c in CASES}
    chosen = {c.strip().lower() for c in text.split(",") if c.strip()}
    unknown = chosen - set(known)
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; known: {', '.join(CASES)}")
    return [c for c in CASES if c.lower() in chosen]


def steps(ctx: Context) -> dict[str, Callable[[], object]]:
    """What each case name runs."""
    args = ctx.args
    return {
        "floor": lambda: floor.run(ctx, latency="L" in args.cases),
        "F": lambda: filter_cases.run_f(ctx),
        "F-confluent": lambda: filter_cases.run_confluent(ctx),
        "S": lambda: filter_cases.run_scale(ctx),
        "A0": lambda: alerts.run(ctx, "A0", messages=args.alerts_messages, delay_ms=0.0),
        "A20": lambda: alerts.run(
            ctx, "A20", messages=args.alerts20_messages, delay_ms=args.alert_delay_ms
        ),
        "L": lambda: latency.run(ctx) if args.steady_seconds > 0 else None,
        "M": lambda: memory.run(ctx),
    }


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings, for the notes and the JSON file."""
    return {
        "broker": args.broker,
        "cases": args.cases,
        "messages": args.messages,
        "alerts_messages": args.alerts_messages,
        "alerts20_messages": args.alerts20_messages,
        "alert_delay_ms": args.alert_delay_ms,
        "sequential_seconds": args.sequential_seconds,
        "steady_rate": args.steady_rate,
        "steady_seconds": args.steady_seconds,
        "memory_keys": args.memory_keys,
        "partitions": PARTITIONS,
        "herald": herald.settings(
            partitions=PARTITIONS, max_in_flight=args.max_in_flight, tansu=args.broker == TANSU
        ),
        "fetch_max_wait_ms": args.fetch_max_wait_ms,
        "profile": args.profile,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    RESULTS.mkdir(exist_ok=True)
    print(
        f"herald bench: broker {args.broker}; cases {','.join(args.cases)}; "
        f"work directory {workdir}",
        flush=True,
    )
    began = time.monotonic()
    broker = BenchBroker(args.broker, workdir, kafka_version=args.kafka_version)
    machine = machine_info(broker.describe())
    ctx = Context(broker, args, workdir, run_id=time.strftime("%H%M%S"))
    try:
        broker.start()
        ctx.broker_cpu = CpuSampler(broker.pid).start()
        if not broker.tansu:
            _warm_up_broker(ctx)
        todo = steps(ctx)
        printed: set[str] = set()
        for case in args.cases:
            print(f"[{case}] ...", flush=True)
            todo[case]()
            _progress(ctx, case, printed)
    finally:
        if ctx.broker_cpu is not None:
            ctx.broker_cpu.stop()
        broker.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.monotonic() - began
    text = render(ctx.results, machine, settings(args))
    print()
    print(text)
    print(f"\nwhole run: {total:.0f}s")
    _write_json(args, argv, machine, ctx, text, total)
    return 0 if all(m.error is None for m in ctx.results.values()) else 1


def _warm_up_broker(ctx: Context) -> None:
    """Produce and read ``BROKER_WARMUP`` events once, before any case, on Kafka only.

    A fresh JVM interprets, then compiles its hot paths (C1, then C2) over the first tens of
    thousands of requests; a broker in service has long done that. Without this, whichever
    case runs first (L alone, with ``--cases L``) would pay it in its latency and broker CPU.
    tansu has no JIT, and its latency grows with what it holds, so it is not warmed."""
    topic = ctx.name("broker-warmup")
    began = time.monotonic()
    ctx.load(topic, BROKER_WARMUP, alarm_every=100)
    run_sync(lambda: workload.record_timestamps(ctx.bootstrap, topic, 0.0))
    print(
        f"  broker warm-up: {BROKER_WARMUP:,} events produced and read in "
        f"{time.monotonic() - began:.1f}s",
        flush=True,
    )


def _progress(ctx: Context, case: str, printed: set[str]) -> None:
    """One line per new measurement as soon as a case is done (the table comes at the end)."""
    for m in ctx.results.values():
        if m.name in printed:
            continue
        printed.add(m.name)
        value = "-" if m.value is None else f"{m.value:,.1f} {m.unit}"
        print(f"[{case}] {m.name}: {value}{'  ERROR: ' + m.error if m.error else ''}", flush=True)


def _write_json(
    args: argparse.Namespace,
    argv: list[str] | None,
    machine: dict[str, Any],
    ctx: Context,
    text: str,
    total: float,
) -> None:
    result = {
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "settings": settings(args),
        "whole_run_seconds": round(total, 1),
        "table": [asdict(r) for r in rows(ctx.results)],
        "measurements": {name: asdict(m) for name, m in ctx.results.items()},
        "printed": text,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"results: {args.json}")


if __name__ == "__main__":
    sys.exit(main())
