"""The hand-off of fetched batches from the consumer to an agent loop."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.types import TP

from agents.batches import Batch, BatchChannel
from streams.offsets import PartitionProgress

A = TP("t", 0)
B = TP("t", 1)


def batch(tp: TP, offsets: range) -> Batch:
    records = [SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=o) for o in offsets]
    return Batch(tp, records, PartitionProgress().open(offsets[-1]))


def channel(limit: int) -> tuple[BatchChannel, list[tuple[str, TP]]]:
    calls: list[tuple[str, TP]] = []
    return (
        BatchChannel(
            {"t"},
            limit,
            pause=lambda tp: calls.append(("pause", tp)),
            resume=lambda tp: calls.append(("resume", tp)),
        ),
        calls,
    )


def test_batches_come_out_in_the_order_they_went_in() -> None:
    async def scenario() -> list[int]:
        chan, _ = channel(100)
        chan.put(batch(A, range(0, 5)))
        chan.put(batch(B, range(0, 3)))
        chan.put(batch(A, range(5, 8)))
        return [(await chan.get()).records[-1].offset for _ in range(3)]

    assert asyncio.run(scenario()) == [4, 2, 7]


def test_get_waits_for_a_batch() -> None:
    async def scenario() -> int:
        chan, _ = channel(100)
        getter = asyncio.ensure_future(chan.get())
        await asyncio.sleep(0.01)
        assert not getter.done()
        chan.put(batch(A, range(0, 2)))
        return len((await getter).records)

    assert asyncio.run(scenario()) == 2


def test_put_never_blocks_but_pauses_a_partition_over_the_limit() -> None:
    async def scenario() -> list[tuple[str, TP]]:
        chan, calls = channel(10)
        chan.put(batch(A, range(0, 8)))
        assert calls == []
        chan.put(batch(A, range(8, 16)))  # 16 buffered > 10: fetching A pauses
        assert calls == [("pause", A)]
        assert chan.buffered == 16
        await chan.get()  # 8 left: not yet at half the limit
        assert calls == [("pause", A)]
        await chan.get()  # 0 left: A resumes
        return calls

    assert asyncio.run(scenario()) == [("pause", A), ("resume", A)]


def test_revoke_drops_the_batches_of_lost_partitions() -> None:
    async def scenario() -> list[TP]:
        chan, _ = channel(100)
        chan.put(batch(A, range(0, 5)))
        chan.put(batch(B, range(0, 5)))
        chan.put(batch(A, range(5, 9)))
        chan.revoke({A})
        assert chan.buffered == 5
        return [(await chan.get()).tp]

    assert asyncio.run(scenario()) == [B]
