"""Lanes: ordering per key, parallelism across keys, and the capacity bound.

Each ordering key (the actions topic's record key) has a lane: a queue drained by one task,
so actions with the same key are delivered in order while different keys proceed in parallel
and a failing endpoint delays only its own keys. `capacity` (`maxInFlight`) bounds the
records held by all lanes, which also bounds the repeats a crash can cause.

A record holds its unit of capacity until it is finished: handled, and its dedupe mark
durable in the changelog (the future `handle` returns). Then its batch's ticket is told
(`Ticket.done`, counted down per record), so the ledger may commit past it.

Every lane ends through one place, `_ended` (a done callback of its task, which also runs for
a task cancelled before it ever ran): stale records dropped with their capacity, the lane
restarted if records of the current assignment joined it meanwhile, else removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from faust.types import TP

from agents.sink.stopping import Stopping, StopSignal
from streams.offsets import Ticket

log = logging.getLogger("herald.sink")


@dataclass(slots=True)
class Job:
    """One action record of a batch, with the batch's ticket."""

    tp: TP
    record: Any  # aiokafka ConsumerRecord
    ticket: Ticket


#: What a lane does with a job: deliver it; the future, if any, is the write that makes its
#: outcome durable. Raises `Stopping` to leave the job unfinished.
Handle = Callable[[Job], Awaitable[asyncio.Future | None]]


class Lanes:
    def __init__(self, capacity: int, handle: Handle, stop: StopSignal) -> None:
        #: Units of capacity free. A counter rather than an asyncio.Semaphore: one loop adds
        #: (the sink's), so there is nobody to be fair to, and an uncontended `add` costs no
        #: second coroutine (measured: about 1 µs per delivery).
        self.free = capacity
        self._freed: asyncio.Future | None = None
        self._handle = handle
        self._stop = stop
        self.queues: dict[bytes, deque[Job]] = {}
        self.tasks: dict[bytes, asyncio.Task] = {}

    async def add(self, key: bytes, job: Job) -> bool:
        """Queue `job` behind its key's earlier jobs, once capacity allows. False (the job
        not queued) when its partition was revoked meanwhile (the new owner has it) or the
        worker is stopping: the rest of its batch stays unfinished, so uncommitted.
        One caller at a time (the sink's loop)."""
        while self.free <= 0:
            self._freed = asyncio.get_running_loop().create_future()
            await self._freed
        self.free -= 1
        if job.ticket.stale or self._stop.is_set():
            self._release()
            return False
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = deque()
            self._start(key, queue)
        queue.append(job)
        return True

    def revoke(self, revoked: set[TP]) -> None:
        """Cancel the lanes whose current job belongs to a partition this worker lost; the
        jobs behind it are dropped by `_ended` (or when reached, if the lane goes on)."""
        for key, queue in list(self.queues.items()):
            if queue and queue[0].tp in revoked:
                self.tasks[key].cancel()

    async def stop(self, grace: float) -> None:
        """Wait up to `grace` seconds for lanes to end (the stop signal is set: each ends
        after its current attempt), then cancel what is left."""
        tasks = list(self.tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        # every lane's end retrieved, so none is reported as never retrieved
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, key: bytes, queue: deque[Job]) -> None:
        task = asyncio.ensure_future(self._drain(queue))
        self.tasks[key] = task
        task.add_done_callback(lambda t, k=key, q=queue: self._ended(k, q, t))

    async def _drain(self, queue: deque[Job]) -> None:
        while queue and not self._stop.is_set():
            job = queue[0]
            if job.ticket.stale:
                # Its partition moved to another worker, which delivers it from the
                # committed offset; delivering it here too could overtake that in order.
                queue.popleft()
                self._release()
                continue
            try:
                durable = await self._handle(job)
            except Stopping:
                return  # the job stays unfinished: redelivered by the next owner
            queue.popleft()
            # The lane moves on to the key's next job at once; this one counts as finished
            # (its batch may be committed) only when its outcome is durable in Kafka.
            if durable is None:
                self._finish(job)
            else:
                durable.add_done_callback(lambda fut, j=job: self._finish(j, fut))

    def _finish(self, job: Job, durable: asyncio.Future | None = None) -> None:
        if durable is not None and (durable.cancelled() or durable.exception() is not None):
            # The delivery happened, so it still counts; a redelivery after a crash may
            # repeat it (at least once).
            error = "cancelled" if durable.cancelled() else durable.exception()
            log.warning("dedupe mark or execution record not confirmed by the broker: %s", error)
        job.ticket.done()
        self._release()

    def _release(self, units: int = 1) -> None:
        self.free += units
        freed = self._freed
        if freed is not None and not freed.done():
            freed.set_result(None)

    def _ended(self, key: bytes, queue: deque[Job], task: asyncio.Task) -> None:
        """The one cleanup of a lane whose task ended (drained, stopped or cancelled): its
        stale jobs leave with their capacity; jobs of the current assignment (they joined
        after the cancel, or after the queue drained but before this callback ran) get a
        new task, unless the worker is stopping (they stay unfinished, as their batches)."""
        if not task.cancelled() and task.exception() is not None:
            log.error("a delivery lane failed: %r", task.exception())
        kept = [job for job in queue if not job.ticket.stale]
        dropped = len(queue) - len(kept)
        queue.clear()
        if kept and not self._stop.is_set() and self.queues.get(key) is queue:
            queue.extend(kept)
            self._start(key, queue)
        else:
            dropped += len(kept)
            if self.queues.get(key) is queue:
                del self.queues[key]
                del self.tasks[key]
        if dropped:
            self._release(dropped)
