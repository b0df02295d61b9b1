"""Workload A (alerts): every message becomes an ilert event; A0 and A20.

The topic is loaded with events that are all ALARMs (10,000 distinct ``mCode``: record keys,
alert keys and ordering keys), and the receiver answers 202 at once (A0) or after
``--alert-delay-ms`` (A20, default 20 ms). Each Herald figure is compared with ilagent's
model: a sequential sender that posts one event and waits for the answer before the next.
"""

from __future__ import annotations

from bench.cases import Context
from bench.cases.drain import drain_herald
from bench.cases.handwritten import run_handwritten
from bench.harness import Measurement, Receiver
from bench.herald import WORKING, Tree


def run(
    ctx: Context,
    case: str,
    *,
    messages: int,
    delay_ms: float,
    trees: tuple[Tree, ...] = (WORKING,),
) -> None:
    """Measure ``case`` (Herald) once per tree of ``trees``, in that order (``A0@rev`` for a
    revision), each in its own group on the same loaded topic, then ``<case>-sequential``
    (the one-at-a-time baseline) once."""
    topic = ctx.name(case)
    seconds = ctx.load(topic, messages, alarm_every=1)
    print(f"  loaded {messages:,} events into {topic} in {seconds:.1f}s", flush=True)
    for tree in trees:
        _herald(ctx, case, tree, topic, messages=messages, delay_ms=delay_ms)
    if ctx.args.sequential_seconds > 0:
        ctx.record(_sequential(ctx, case, topic, messages=messages, delay_ms=delay_ms))


def _herald(
    ctx: Context, case: str, tree: Tree, topic: str, *, messages: int, delay_ms: float
) -> None:
    """Herald workers of ``tree`` delivering every event of ``topic``."""
    m = Measurement(
        case + tree.label,
        f"Herald, every message -> ilert event, receiver answers after {delay_ms:g} ms",
        unit="deliveries/s",
        how=(
            "deliveries / (first message consumed, polling /herald/stats, to the arrival of "
            "the last ilert event at the receiver)"
        ),
    )
    m.details["receiver_delay_ms"] = delay_ms
    receiver = Receiver(ctx.here(case + tree.slug) / "receiver.log", delay_ms)
    try:
        drain_herald(
            ctx,
            m,
            case=case + tree.slug,
            topic=topic,
            messages=messages,
            deliveries=messages,
            receiver=receiver,
            until_delivered=True,
            tree=tree,
        )
    finally:
        receiver.stop()
    ctx.record(m)


def _sequential(
    ctx: Context, case: str, topic: str, *, messages: int, delay_ms: float
) -> Measurement:
    """ilagent's model on the same topic (own group, own receiver) for a few seconds."""
    seconds = ctx.args.sequential_seconds
    m = Measurement(
        f"{case}-sequential",
        f"sequential sender (ilagent's model), receiver answers after {delay_ms:g} ms",
        unit="deliveries/s",
        how=(
            f"deliveries / (first record consumed to the last answer), over {seconds:g}s: "
            "confluent-kafka poll, one POST per record, waiting for each answer"
        ),
    )
    receiver = Receiver(ctx.here(m.name) / "receiver.log", delay_ms)
    try:
        run_handwritten(
            ctx,
            m,
            mode="sequential",
            topic=topic,
            receiver=receiver,
            messages=messages,
            seconds=seconds,
        )
        m.details["deliveries_received"] = receiver.unique()
    finally:
        receiver.stop()
    return m
