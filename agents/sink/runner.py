"""The sink agent's loop: action records in, through the stages, batches finished.

Records come a fetched batch at a time (agents.batches). Each goes to its key's lane
(`Lanes`); a lane hands it to `_handle`: dedupe check, delivery with retries, dedupe mark, or
a dead letter; each outcome also writes an execution record. A record is finished when its
outcome is durable (the mark's changelog write, or the dead letter, acknowledged), and the
batch's ticket when all its records are: only then may the ledger commit past it.

A graceful stop (`stop`) ends the lanes before the consumer, the tables and the producer stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable

from faust.streams import _current_event
from faust.types import TP

from agents.batches import BatchChannel, RecordEvent
from agents.counters import DEDUPE_WINDOW, DELIVERED, DUPLICATE, FAILED
from agents.runtime import Runtime
from agents.sink.dedupe import ALREADY_DELIVERED, Dedupe
from agents.sink.delivery import Delivery, ExecutionLog
from agents.sink.lanes import Job, Lanes
from agents.sink.letters import SinkLetters
from agents.sink.stopping import Stopping, StopSignal
from streams import executions
from streams.actions.base import ActionRequest
from streams.actions.base import Delivery as ActionDelivery
from streams.actions.registry import delivery as action_delivery

log = logging.getLogger("herald.sink")

#: How long a stop waits for lanes to finish their attempt and write its outcome (and for the
#: execution records of the attempts made) before it cancels what is left: an answering
#: endpoint takes milliseconds; a hanging one is not worth holding the shutdown for, as its
#: record is redone by the next owner anyway.
STOP_GRACE_SECONDS = 5.0


class SinkRunner:
    def __init__(
        self,
        runtime: Runtime,
        channel: BatchChannel,
        deliveries: Callable[[str], ActionDelivery | None] = action_delivery,
    ) -> None:
        """`deliveries`: an action's delivery side by name (the registry's; a benchmark or
        test may give its own)."""
        self.channel = channel
        self._deliveries = deliveries
        self.counters = runtime.counters
        self._stop = StopSignal()
        self.lanes = Lanes(runtime.config.herald.maxInFlight, self._handle, self._stop)
        self.dedupe = Dedupe(runtime.tables.dedupe)
        self.executions = ExecutionLog(
            runtime.app.producer, runtime.topics.executions.get_topic_name(), self._stop
        )
        self.delivery = Delivery(
            runtime.targets, runtime.delivery_context, self.executions, self.counters, self._stop
        )
        self.letters = SinkLetters(runtime.config, runtime.topics.dlq, self.counters, self._stop)

    async def run(self) -> None:
        lanes = self.lanes
        while not self._stop.is_set():
            batch = await self.channel.get()
            batch.ticket.expect(len(batch.records))
            for record in batch.records:
                if not await lanes.add(record.key or b"", Job(batch.tp, record, batch.ticket)):
                    break

    def revoke(self, revoked: set[TP]) -> None:
        """Stop lanes of partitions this worker lost; their records are redelivered elsewhere
        (a listener of the ledger's revoke fan-out)."""
        self.lanes.revoke(revoked)

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """End every lane cleanly; called first in the app's stop (agents.app), while the
        consumer, the tables and the producer still run.

        At-least-once, and nothing written after the producer stopped:

        - a lane inside a delivery attempt finishes it (within `grace`) and writes its
          outcome as usual: a delivery answered during the stop is recorded COMPLETED with
          its dedupe mark, a permanent failure is dead-lettered, a transient one gets its
          FAILED execution record. So every attempt the endpoint answered has its record.
        - a lane waiting between retries (or after its attempt failed) ends at once
          (`Stopping`), and a lane takes no next record. Those records stay unfinished: their
          batches are not committed, and the partition's next owner (this worker restarted,
          or another) delivers them again, with the same Idempotency-Key.
        - after `grace` seconds, lanes still busy are cancelled, their records unfinished as
          above (an attempt cut short may have reached the endpoint: at least once).
        - the FAILED execution records are written before this returns (up to `grace`
          seconds), so before the producer flushes and stops: none is lost.
        """
        self._stop.set()
        await self.lanes.stop(grace)
        await self.executions.drain(grace)
        await self.letters.close()

    async def _handle(self, job: Job) -> asyncio.Future | None:
        """Deliver one action record; returns what the record waits for before it counts as
        finished: its dedupe mark's changelog write and its execution record, if any."""
        record = job.record
        # Table writes go to the changelog partition of "the current event"; in a lane task
        # that is the record being delivered (the same partition as the lane's key).
        event = RecordEvent(record)
        _current_event.set(weakref.ref(event))
        try:
            request = ActionRequest.from_bytes(record.value)
        except Exception as exc:
            await self.letters.unreadable(record, f"unreadable action record: {exc!r}")
            return None
        try:
            return await self._deliver(request, job.tp.partition)
        except (asyncio.CancelledError, Stopping):
            raise
        except Exception as exc:  # a bug: dead-letter with the reason rather than lose it
            log.exception("internal error delivering %s", request.id)
            return await self._dead_letter(request, f"internal error: {exc!r}", attempts=0)

    async def _deliver(self, request: ActionRequest, partition: int) -> asyncio.Future | None:
        repeat = self.dedupe.check(request, int(time.time() * 1000))
        if repeat is not None:
            if repeat.reason == ALREADY_DELIVERED:
                self.counters.skipped_duplicates += 1
                self.counters.count_delivery(request, DUPLICATE)
            else:
                self.counters.count_delivery(request, DEDUPE_WINDOW)
            written = await self.executions.write(request, executions.SKIPPED, reason=repeat.reason)
            return both(repeat.durable, written)
        action = self._deliveries(request.action)
        if action is None:
            return await self._dead_letter(
                request, f"unknown action {request.action!r}", attempts=0
            )
        started = time.monotonic()
        outcome = await self.delivery.attempt(request, action)
        # How long, and whether the target answered (for /metrics, agents.counters).
        self.counters.observe_delivery(
            request,
            DELIVERED if outcome.ok else FAILED,
            time.monotonic() - started,
            outcome.ok or (outcome.error is not None and not outcome.error.retryable),
        )
        if outcome.ok:
            # The record is finished only once the mark is durable: a record redelivered
            # after a crash is then either undelivered or skipped, except the ones in flight
            # at the crash.
            durable = await self.dedupe.mark(request, int(time.time() * 1000), partition)
            self.counters.delivered += 1
            self.counters.count_delivery(request, DELIVERED)
            written = await self.executions.write(
                request, executions.COMPLETED, attempts=outcome.attempts, result=outcome.result
            )
            return both(durable, written)
        return await self._dead_letter(request, str(outcome.error), attempts=outcome.attempts)

    async def _dead_letter(
        self, request: ActionRequest, reason: str, *, attempts: int
    ) -> asyncio.Future | None:
        """Dead-letter (the letter is in Kafka when this returns); the future is its
        execution record's write."""
        await self.letters.delivery_failed(request, reason, attempts)
        self.counters.count_delivery(request, FAILED)
        return await self.executions.write(
            request, executions.DEAD_LETTERED, attempts=attempts, error=reason
        )


def both(first: asyncio.Future | None, second: asyncio.Future | None) -> asyncio.Future | None:
    """One future for two writes a record waits for (its dedupe mark and its execution
    record): done when both are, failed with the first's failure if either failed."""
    if second is None:
        return first
    if first is None:
        return second
    joined = first.get_loop().create_future()

    def settle(_: asyncio.Future) -> None:
        if joined.done() or not (first.done() and second.done()):
            return
        for fut in (first, second):
            if fut.cancelled():
                joined.cancel()
                return
            if fut.exception() is not None:
                joined.set_exception(fut.exception())  # type: ignore[arg-type]
                return
        joined.set_result(None)

    first.add_done_callback(settle)
    second.add_done_callback(settle)
    return joined
