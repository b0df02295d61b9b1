"""Workload F (filter) and what is measured on it: F, F-confluent and S.

F: 1,000,000 ~200-byte JSON events on 8 partitions, one in 100 an ALARM; Herald's handler
passes the ALARMs (``$.type == 'ALARM'``) as ilert events to a receiver answering 202 at once.
"""

from __future__ import annotations

from bench.cases import Context
from bench.cases.drain import drain_herald
from bench.cases.handwritten import run_handwritten
from bench.harness import Measurement, Receiver
from bench.herald import WORKING, Tree

HOW_F = (
    "messages / (first to last message consumed), polling /herald/stats `consumed` every "
    "50 ms (window rounded outwards); every ALARM must also have reached the receiver"
)


def alarms(messages: int) -> int:
    """ALARM events among seq 0..messages-1 (seq % 100 == 0): the deliveries expected."""
    return -(-messages // 100)


def run_f(ctx: Context, *, case: str = "F", workers: int = 1, tree: Tree = WORKING) -> Measurement:
    """Herald workers of ``tree`` draining workload F's topic (``F@rev`` for a revision)."""
    m = Measurement(
        case + tree.label,
        f"Herald ({workers} worker{'s' if workers > 1 else ''}), 1% pass -> ilert event (202)",
        unit="msg/s",
        how=HOW_F,
    )
    topic = ctx.filter_topic()
    receiver = Receiver(ctx.here(case + tree.slug) / "receiver.log")
    try:
        drain_herald(
            ctx,
            m,
            case=case + tree.slug,
            topic=topic,
            messages=ctx.args.messages,
            deliveries=alarms(ctx.args.messages),
            receiver=receiver,
            workers=workers,
            tree=tree,
        )
    finally:
        receiver.stop()
    ctx.record(m)
    return m


def run_confluent(ctx: Context) -> Measurement:
    """F's work in a hand-written synchronous confluent-kafka loop (bench/handwritten.py)."""
    m = Measurement(
        "F-confluent",
        "hand-written loop: confluent-kafka poll, orjson, Python condition, http.client POST",
        unit="msg/s",
        how=(
            "messages / (first to last record consumed), timed inside the loop's process; "
            "one process, synchronous, one kept-alive HTTP connection"
        ),
    )
    receiver = Receiver(ctx.here("F-confluent") / "receiver.log")
    try:
        run_handwritten(
            ctx,
            m,
            mode="filter",
            topic=ctx.filter_topic(),
            receiver=receiver,
            messages=ctx.args.messages,
        )
        received = receiver.unique()
        m.details["deliveries_received"] = received
        if m.error is None and received != alarms(ctx.args.messages):
            m.error = f"receiver got {received} of {alarms(ctx.args.messages)} events"
    finally:
        receiver.stop()
    ctx.record(m)
    return m


def run_scale(ctx: Context, trees: tuple[Tree, ...] = (WORKING,)) -> None:
    """S: the same drain by one worker and by two workers in one consumer group, for each
    of ``trees`` in turn.

    The one-worker figure is F's of the same tree when F ran in this run (same
    configuration, same topic); otherwise it is measured here as ``S-1`` (``S-1@rev``).
    """
    for tree in trees:
        single = ctx.results.get("F" + tree.label)
        if single is None or single.value is None:
            single = run_f(ctx, case="S-1", tree=tree)
        double = run_f(ctx, case="S-2", workers=2, tree=tree)
        double.details["one_worker_case"] = single.name
