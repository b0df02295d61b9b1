"""The sink's lanes when their partitions are revoked (no Kafka: the lanes alone)."""

from __future__ import annotations

import asyncio
from collections import deque
from types import SimpleNamespace

from faust.types import TP

from agents.batches import Batch, BatchChannel
from agents.sinks import SinkRunner, _BatchState
from streams.offsets import PartitionProgress

TPA = TP("actions", 0)


def runner(max_in_flight: int) -> SinkRunner:
    runtime = SimpleNamespace(
        config=SimpleNamespace(herald=SimpleNamespace(maxInFlight=max_in_flight)),
        topics=SimpleNamespace(executions=SimpleNamespace(get_topic_name=lambda: "x")),
    )
    channel = BatchChannel({"actions"}, 100, pause=lambda tp: None, resume=lambda tp: None)
    return SinkRunner(runtime, channel)  # type: ignore[arg-type]


def test_a_lane_revoked_before_its_task_first_ran_is_cleaned_up() -> None:
    """A task cancelled before it ever ran runs none of its code: without cleanup outside it,
    the lane stayed, holding capacity, and its key's later records queued behind it for good."""

    async def scenario() -> tuple[dict, int]:
        sink = runner(4)
        progress = PartitionProgress()
        record = SimpleNamespace(key=b"k", value=b"{}", topic="actions", partition=0, offset=0)
        batch = Batch(TPA, [record], progress.open(0))
        await sink.capacity.acquire()
        lane = sink.lanes[b"k"] = deque([(record, _BatchState(batch))])
        sink.tasks[b"k"] = asyncio.ensure_future(sink._drain(b"k", lane))
        progress.revoke()  # the rebalance marks the partition's batches stale ...
        sink.revoke({TPA})  # ... and cancels its lanes, here before the task ever ran
        await asyncio.sleep(0.01)
        return sink.lanes, sink.capacity._value

    lanes, free = asyncio.run(scenario())
    assert lanes == {}
    assert free == 4  # the record's capacity came back
