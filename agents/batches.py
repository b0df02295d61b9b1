"""Whole fetched batches for Herald's agents, instead of Faust's one event at a time.

Faust hands every record to a stream as its own event: a message object, a decode, a queue
put and get, monitor calls and an ack, about 70 µs per record on these machines, which is most
of what a Faust worker costs. Herald's source and sink look at every record of their topics, so
the consumer (`agents.transport.HeraldConsumer`) hands them the records of each fetch as one
`Batch` through a `BatchChannel`, and they report the batch done with its ticket.

The channel never blocks the consumer: Faust's one fetch loop also feeds the tables'
changelogs, so blocking it while an agent waits (for the rules table, say) would deadlock.
Like Faust's own stream buffers it accepts what was fetched and pauses fetching the
partitions that are over the limit until the agent has caught up.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from faust.types import TP

from streams.offsets import Ticket


@dataclass(slots=True)
class Batch:
    """Records of one partition, in offset order, as aiokafka returned them."""

    tp: TP
    records: Sequence[Any]  # aiokafka ConsumerRecord: topic, partition, offset, key, value, ...
    ticket: Ticket


class RecordEvent:
    """The smallest stand-in for a Faust event around an aiokafka record.

    Faust tables find the partition of a write from "the current event"
    (`event.message.partition`, `event.message.topic`); the sink sets one of these while it
    delivers a record so its dedupe and execution marks land in that record's partition.
    """

    __slots__ = ("message", "__weakref__")

    def __init__(self, record: Any) -> None:
        self.message = record


class BatchChannel:
    """A bounded hand-off of batches from the consumer to one agent loop."""

    def __init__(
        self,
        topic_names: set[str],
        max_records: int,
        pause: Callable[[TP], None],
        resume: Callable[[TP], None],
    ) -> None:
        self.topic_names = topic_names
        self.max_records = max_records
        self._pause = pause
        self._resume = resume
        self._queue: deque[Batch] = deque()
        self._buffered = 0
        self._paused: set[TP] = set()
        self._waiter: asyncio.Future | None = None

    def put(self, batch: Batch) -> None:
        """Called by the consumer with each fetched batch; never blocks."""
        self._queue.append(batch)
        self._buffered += len(batch.records)
        if self._buffered > self.max_records and batch.tp not in self._paused:
            self._paused.add(batch.tp)
            self._pause(batch.tp)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Batch:
        """The next batch, waiting for one."""
        while not self._queue:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        batch = self._queue.popleft()
        self._buffered -= len(batch.records)
        if self._paused and self._buffered <= self.max_records // 2:
            for tp in self._paused:
                self._resume(tp)
            self._paused.clear()
        return batch

    def revoke(self, revoked: set[TP]) -> None:
        """Drop queued batches of partitions this worker lost; their new owner reads them."""
        kept = [batch for batch in self._queue if batch.tp not in revoked]
        self._queue = deque(kept)
        self._buffered = sum(len(batch.records) for batch in kept)
        self._paused -= revoked

    @property
    def buffered(self) -> int:
        return self._buffered
