"""Herald workers draining a pre-loaded topic: the measurement F, S, A0 and A20 share.

The topic is loaded before the workers start, so neither the producer nor worker startup
(group join, table recovery) is in the window: it opens at the first message consumed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from agents.embedded.worker import WorkerError, WorkerProcess
from bench import herald
from bench.cases import PARTITIONS, Context
from bench.harness import (
    RESULTS,
    Measurement,
    Profiler,
    Receiver,
    since,
    throughput,
    wait_committed,
    watch_drain,
)
from bench.herald import WORKING, Tree

#: aiokafka's line (INFO) when a consumer joined its group: one per rebalance it took part in.
_JOINED = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\] \[\d+\] \[INFO\] "
    r"Joined group '[^']*' \(generation (\d+)\)",
    re.MULTILINE,
)


def drain_herald(
    ctx: Context,
    m: Measurement,
    *,
    case: str,
    topic: str,
    messages: int,
    deliveries: int,
    receiver: Receiver,
    workers: int = 1,
    until_delivered: bool = False,
    tree: Tree = WORKING,
) -> None:
    """Start ``workers`` Herald workers of ``tree`` in one group on ``topic`` and measure the
    drain (``case`` names the group, topic prefix and directory: ``F-at-44ba04e`` for a
    revision).

    The figure is ``messages / window``. The window runs from the first message consumed (by
    any worker) to the last consumed, or with ``until_delivered`` to the arrival of the last
    ilert event at the receiver (deliveries/s). Either way the drain is complete only when
    ``deliveries`` distinct events arrived.
    """
    name = ctx.name(case)
    here = ctx.here(case)
    content = herald.config(
        name=name,
        bootstrap=ctx.bootstrap,
        topic=topic,
        receiver_url=receiver.url,
        partitions=PARTITIONS,
        max_in_flight=ctx.args.max_in_flight,
        tansu=ctx.tansu,
    )
    config_path = herald.write_config(here / "herald.yaml", content)
    processes = [herald.worker(config_path, here / f"worker{i + 1}", tree) for i in range(workers)]
    profilers: list[Profiler] = []
    receiver_cpu = receiver.cpu_seconds()
    window_start: float | None = None
    for process in processes:
        process.start()
    try:
        drain = watch_drain(
            processes,
            lambda: herald.consumed(processes),
            messages,
            timeout=max(300.0, messages / 100),
            ready_path="/ready",
            also={"delivered": lambda: receiver.unique() >= deliveries},
            on_first=_profile(ctx, case, processes, profilers),
            progress=lambda: (receiver.unique(), _counters(processes)),
        )
        _stop(profilers)
        window_start = drain.start
        last = _last_arrival(receiver, messages)
        if until_delivered:
            throughput(
                m,
                drain,
                messages,
                end=last,
                cpu_at="delivered",
                broker=ctx.broker_cpu,
                per="delivery",
            )
        else:
            throughput(m, drain, messages, broker=ctx.broker_cpu)
        committed = wait_committed(ctx.bootstrap, name, topic)
        m.details.update(
            deliveries_expected=deliveries,
            deliveries_received=receiver.unique(),
            requests_received=receiver.stats().get("requests"),
            receiver_connections=receiver.stats().get("connections"),
            last_delivery_after_s=since(last, drain.start),
            all_committed_after_s=since(committed, drain.start),
            receiver_cpu_us_per_request=_receiver_cost(receiver, receiver_cpu),
        )
        if profilers:
            m.details["profiles"] = [str(p.output) for p in profilers]
    except (WorkerError, TimeoutError, RuntimeError) as exc:
        m.fail(exc)
        m.details["receiver_stats"] = receiver.stats()
    finally:
        _stop(profilers)
        m.details.update(_worker_facts(processes, window_start))
        if ctx.args.keep:
            m.details["worker_logs"] = [str(p.log_path) for p in processes]
        for process in processes:
            process.stop()
    m.details["herald_settings"] = content["herald"]
    m.details["herald_tree"] = tree.rev or "working tree"


def _counters(processes: list[WorkerProcess]) -> list[tuple[Any, ...]]:
    """What each worker has done so far, as the drain's stall check compares it."""
    keys = ("consumed", "matched", "delivered", "dead_lettered")
    return [tuple((herald.stats(p) or {}).get(k) for k in keys) for p in processes]


def _profile(
    ctx: Context, case: str, processes: list[WorkerProcess], profilers: list[Profiler]
) -> Callable[[], None]:
    """What to do at the first consumption: start py-spy on each worker with --profile."""

    def start() -> None:
        if not ctx.args.profile:
            return
        for index, process in enumerate(processes):
            suffix = f"-w{index + 1}" if len(processes) > 1 else ""
            output = RESULTS / f"profile-{case}{suffix}.txt"
            profilers.append(Profiler(process.pid or 0, output))

    return start


def _stop(profilers: list[Profiler]) -> None:
    for profiler in profilers:
        profiler.stop()


def _last_arrival(receiver: Receiver, messages: int) -> float | None:
    """Arrival time (epoch s) of the last ilert event of the loaded events."""
    arrivals = [s[3] for s in receiver.samples() if s[0] is not None and s[0] < messages]
    return max(arrivals) if arrivals else None


def _receiver_cost(receiver: Receiver, cpu_before: float | None) -> float | None:
    """The receiver's CPU per request since the workers started (idle time included)."""
    cpu = receiver.cpu_seconds()
    requests = receiver.stats().get("requests") or 0
    if cpu is None or cpu_before is None or requests < 1000:  # too few to say
        return None
    return round((cpu - cpu_before) / requests * 1e6, 1)


def _joins(process: WorkerProcess) -> list[tuple[float, int]]:
    """(epoch s, generation) of each time the worker's consumer joined its group."""
    joins = []
    for stamp, millis, generation in _JOINED.findall(process.log_text(current_run=True)):
        epoch = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
        joins.append((epoch, int(generation)))
    return joins


def _worker_facts(processes: list[WorkerProcess], window_start: float | None) -> dict[str, Any]:
    """Each worker's counters and group joins; a join after the window opened is a rebalance
    while the workers were draining, which the figure then includes."""
    joins = [_joins(p) for p in processes]
    facts: dict[str, Any] = {
        "worker_stats": [herald.stats(p) for p in processes],
        "generations_joined": [[g for _, g in j] for j in joins],
        "worker_cwd": [herald.process_cwd(p) for p in processes],
    }
    missing = herald.missing_note(processes)
    if missing:
        facts["missing_topics"] = missing
    if window_start is not None:
        late = [round(t - window_start, 2) for j in joins for t, _ in j if t > window_start]
        if late:
            facts["rebalance"] = (
                f"group rebalance inside the window (joins at +{late} s): the figure includes it"
            )
    return facts
