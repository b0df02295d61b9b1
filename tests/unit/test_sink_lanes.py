"""The sink's lanes when their partitions are revoked (no Kafka: the lanes alone)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.types import TP

from agents.sink.lanes import Job, Lanes
from agents.sink.stopping import StopSignal
from streams.offsets import PartitionProgress

TPA = TP("actions", 0)


def lanes(max_in_flight: int) -> Lanes:
    async def handle(job: Job) -> None:
        return None

    return Lanes(max_in_flight, handle, StopSignal())


def test_a_lane_revoked_before_its_task_first_ran_is_cleaned_up() -> None:
    """A task cancelled before it ever ran runs none of its code: without cleanup outside it,
    the lane stayed, holding capacity, and its key's later records queued behind it for good."""

    async def scenario() -> tuple[dict, int]:
        sink = lanes(4)
        progress = PartitionProgress()
        record = SimpleNamespace(key=b"k", value=b"{}", topic="actions", partition=0, offset=0)
        assert await sink.add(b"k", Job(TPA, record, progress.open(0)))  # its task not run yet
        progress.revoke()  # the rebalance marks the partition's batches stale ...
        sink.revoke({TPA})  # ... and cancels its lanes, here before the task ever ran
        await asyncio.sleep(0.01)
        return sink.queues, sink.free

    lanes_left, free = asyncio.run(scenario())
    assert lanes_left == {}
    assert free == 4  # the record's capacity came back
