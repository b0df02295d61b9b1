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
  M    memory: a worker holding 10,000,000 dedupe keys; RSS, recovery and restart time

It prints one table (workload, Herald, baseline, ratio, goal, met) with notes, and writes
everything to bench/results/latest.json.

``--before REV`` also runs every selected Herald case from a git worktree of REV, on the same
broker in the same run (rows ``F@<rev>`` next to ``F``, with the before -> after ratio).
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agents.embedded.broker import run_sync
from bench import herald, revision, workload
from bench.broker import KAFKA, KINDS, TANSU, BenchBroker
from bench.cases import PARTITIONS, Context, alerts, floor, latency, memory
from bench.cases import filter as filter_cases
from bench.harness import RESULTS, CpuSampler, machine_info
from bench.report import render, rows

#: Case names for --cases, in the order they run (baselines before what is compared to them).
CASES = ("floor", "F", "F-confluent", "S", "A0", "A20", "L", "M")
#: The cases that run Herald workers: what ``--before`` runs twice (the rest are baselines).
HERALD_CASES = ("F", "S", "A0", "A20", "L", "M")
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
        "--steady-ramp-seconds",
        type=float,
        default=5.0,
        help="L's ramp: the same steady stream first, for this long, not measured (its figures "
        "are in the notes)",
    )
    add(
        "--fetch-max-wait-ms",
        type=int,
        default=None,
        help="L's herald.fetchMaxWaitMs and its hop consumer's (default: 10 on tansu, which "
        "holds a fetch to its deadline; Herald's default on Kafka)",
    )
    add("--memory-keys", type=int, default=10_000_000, help="M's dedupe keys")
    add("--max-in-flight", type=int, default=512, help="herald.maxInFlight of every Herald case")
    add(
        "--profile",
        action="store_true",
        help="record the Herald workers of F, S, A0 and A20 with py-spy while they drain (slows "
        "them: such a run's figures are not the benchmark's); bench/results/profile-*.txt",
    )
    add(
        "--status-page",
        action="store_true",
        help="give every Herald worker an admin key and print its status page's address and "
        "key as it starts, to watch a case in a browser (the admin API runs too, so such a "
        "run's figures are not the benchmark's)",
    )
    add("--json", type=Path, default=RESULTS / "latest.json", help="results file")
    add(
        "--before",
        metavar="REV",
        default=None,
        help="also run every selected Herald case from a git worktree of REV (a commit, tag "
        "or branch), in the same run on the same broker: rows <case>@<rev> and a before -> "
        "after ratio; baselines run once",
    )
    add("--keep", action="store_true", help="keep the work directory (logs, configs, data)")
    args = parser.parse_args(argv)
    args.cases = _cases(parser, args.cases)
    args.before_info = _before(parser, args.before, args.cases)
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


def _before(
    parser: argparse.ArgumentParser, rev: str | None, cases: list[str]
) -> dict[str, str] | None:
    """``--before``'s commit (hash, label, subject), refused when git does not know it or when
    no Herald case is selected (there would be nothing to run twice)."""
    if rev is None:
        return None
    if not any(case in HERALD_CASES for case in cases):
        parser.error(
            f"--before compares Herald cases, and --cases {','.join(cases)} selects none of "
            f"{','.join(HERALD_CASES)}"
        )
    try:
        return revision.resolve(rev)
    except revision.RevisionError as exc:
        parser.error(f"--before: {exc}")


def steps(ctx: Context) -> dict[str, Callable[[], object]]:
    """What each case name runs (each Herald case once per tree of ``ctx.sides``)."""
    args = ctx.args

    def each(case: str, run: Callable[[herald.Tree], object]) -> None:
        for tree in ctx.sides(case):
            run(tree)

    return {
        "floor": lambda: floor.run(ctx, latency="L" in args.cases),
        "F": lambda: each("F", lambda tree: filter_cases.run_f(ctx, tree=tree)),
        "F-confluent": lambda: filter_cases.run_confluent(ctx),
        "S": lambda: filter_cases.run_scale(ctx, ctx.sides("S")),
        "A0": lambda: alerts.run(
            ctx, "A0", messages=args.alerts_messages, delay_ms=0.0, trees=ctx.sides("A0")
        ),
        "A20": lambda: alerts.run(
            ctx,
            "A20",
            messages=args.alerts20_messages,
            delay_ms=args.alert_delay_ms,
            trees=ctx.sides("A20"),
        ),
        "L": lambda: (
            each("L", lambda tree: latency.run(ctx, tree)) if args.steady_seconds > 0 else None
        ),
        "M": lambda: each("M", lambda tree: memory.run(ctx, tree)),
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
        "steady_ramp_seconds": args.steady_ramp_seconds,
        "memory_keys": args.memory_keys,
        "partitions": PARTITIONS,
        "herald": herald.settings(
            partitions=PARTITIONS, max_in_flight=args.max_in_flight, tansu=args.broker == TANSU
        ),
        "fetch_max_wait_ms": args.fetch_max_wait_ms,
        "profile": args.profile,
        "status_page": args.status_page,
        "before": args.before_info,
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
    if args.status_page:
        herald.STATUS_PAGE_KEY = {"keyId": "bench", "keySecret": secrets.token_urlsafe(24)}
    began = time.monotonic()
    broker = BenchBroker(args.broker, workdir, kafka_version=args.kafka_version)
    machine = machine_info(broker.describe())
    ctx = Context(broker, args, workdir, run_id=time.strftime("%H%M%S"))
    before: dict[str, Any] = {}
    try:
        if args.before_info is not None:
            before = _checkout_before(ctx, args.before_info)
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
        _remove_before(ctx, keep=args.keep)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.monotonic() - began
    run_settings = settings(args)
    if run_settings["before"] is not None:
        run_settings["before"] = {**run_settings["before"], **before, "order": ctx.order}
    text = render(ctx.results, machine, run_settings)
    print()
    print(text)
    print(f"\nwhole run: {total:.0f}s")
    _write_json(args, argv, machine, run_settings, ctx, text, total)
    return 0 if all(m.error is None for m in ctx.results.values()) else 1


def _checkout_before(ctx: Context, info: dict[str, str]) -> dict[str, Any]:
    """Make ``--before``'s worktree in the work directory and check that workers started
    from it import its packages (and that the working tree's import the working tree's).

    Sets ``ctx.before``; returns the worktree and where each side imports from, for the notes
    and the JSON file."""
    path = ctx.workdir / f"before-{info['short']}"
    tree = revision.add_worktree(info["commit"], path)
    ctx.before = tree
    imports = {
        info["label"]: revision.check_imports(tree, ctx.here("import-check" + tree.slug)),
        "working tree": revision.check_imports(herald.WORKING, ctx.here("import-check")),
    }
    print(
        f"  before: {info['short']} checked out at {path}; its workers import agents from "
        f"{imports[info['label']]['agents']}",
        flush=True,
    )
    return {"worktree": str(path), "imports": imports}


def _remove_before(ctx: Context, *, keep: bool) -> None:
    """Remove ``--before``'s worktree (and git's record of it) unless ``--keep``."""
    if ctx.before is None or ctx.before.root is None:
        return
    if keep:
        print(
            f"worktree kept: {ctx.before.root} (git worktree remove --force {ctx.before.root})",
            flush=True,
        )
        return
    try:
        revision.remove_worktree(ctx.before.root)
    except revision.RevisionError as exc:
        print(f"could not remove the worktree {ctx.before.root}: {exc}", file=sys.stderr)


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
    run_settings: dict[str, Any],
    ctx: Context,
    text: str,
    total: float,
) -> None:
    before = run_settings.get("before")
    result = {
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "settings": run_settings,
        "before": before,
        "whole_run_seconds": round(total, 1),
        "table": [asdict(r) for r in rows(ctx.results, before["label"] if before else None)],
        "measurements": {name: asdict(m) for name, m in ctx.results.items()},
        "printed": text,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"results: {args.json}")


if __name__ == "__main__":
    sys.exit(main())
