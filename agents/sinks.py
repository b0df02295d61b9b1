"""The sink agent: deliver action records, in order per ordering key, in parallel across keys.

Each ordering key (the actions topic's record key) has a lane: a queue drained by one task, so
actions with the same key are delivered in order while different keys proceed in parallel and
a failing endpoint delays only its own keys. `maxInFlight` bounds the records held by lanes,
which also bounds the repeats a crash can cause.

Records come a fetched batch at a time (agents.batches); a batch is finished, so its offsets
may be committed, only when each of its records was delivered (and the dedupe table's mark is
in the changelog) or dead-lettered. Each outcome also writes an execution record. Before
delivering, the dedupe table is checked, so a record redelivered after a restart is not
delivered again.

A delivery dead letter carries the source record's original bytes, read back by the
request's coordinates when the letter is written (agents.readback): dead letters are rare,
so the hot path carries no copy of the value. A graceful stop (`SinkRunner.stop`) ends the
lanes before the consumer, the tables and the producer stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import deque
from dataclasses import replace
from typing import Any

import orjson
from aiokafka.errors import MessageSizeTooLargeError
from faust.streams import _current_event
from faust.types import TP

from agents.batches import Batch, BatchChannel, RecordEvent
from agents.readback import SourceReader
from agents.runtime import Runtime
from streams import executions
from streams.actions.base import ActionRequest
from streams.actions.registry import ACTIONS
from streams.config.models import RetryPolicy
from streams.deadletter import DeadLetter, b64
from streams.delivery import run_with_retry
from streams.errors import DeliveryError
from streams.secrets import SCRUBBER

log = logging.getLogger("herald.sink")
DEFAULT_POLICY = RetryPolicy()
#: How long a stop waits for lanes to finish their attempt and write its outcome (and for the
#: execution records of the attempts made) before it cancels what is left: an answering
#: endpoint takes milliseconds; a hanging one is not worth holding the shutdown for, as its
#: record is redone by the next owner anyway.
STOP_GRACE_SECONDS = 5.0


class Stopping(Exception):
    """Raised in a lane when the worker stops while it waits: the lane ends and its record
    stays unfinished, so its batch is not committed and the record is delivered again by the
    partition's next owner."""


class _BatchState:
    """How many records of a batch are still being delivered; done, the batch's ticket is."""

    __slots__ = ("remaining", "batch")

    def __init__(self, batch: Batch) -> None:
        self.remaining = len(batch.records)
        self.batch = batch

    def one_done(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.batch.ticket.done()


class SinkRunner:
    def __init__(self, runtime: Runtime, channel: BatchChannel) -> None:
        self.runtime = runtime
        self.channel = channel
        self.capacity = asyncio.Semaphore(runtime.config.herald.maxInFlight)
        self.lanes: dict[bytes, deque[tuple[Any, _BatchState]]] = {}
        self.tasks: dict[bytes, asyncio.Task] = {}
        self.executions_topic = runtime.topics.executions.get_topic_name()
        self.reader = SourceReader(runtime.config)
        self._stopping = asyncio.Event()
        self._writes: set[asyncio.Task] = set()  # FAILED execution records being written

    async def run(self) -> None:
        while not self._stopping.is_set():
            batch = await self.channel.get()
            state = _BatchState(batch)
            for record in batch.records:
                await self.capacity.acquire()
                if batch.ticket.stale or self._stopping.is_set():
                    # revoked while we waited (the new owner has it), or stopping: the rest
                    # of the batch stays unfinished, so uncommitted
                    self.capacity.release()
                    break
                key = record.key or b""
                lane = self.lanes.get(key)
                if lane is None:
                    lane = self.lanes[key] = deque()
                    self.tasks[key] = asyncio.ensure_future(self._drain(key, lane))
                lane.append((record, state))

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """End every lane cleanly; called first in the app's stop (agents.app), while the
        consumer, the tables and the producer still run.

        At-least-once, and nothing written after the producer stopped:

        - a lane inside a delivery attempt finishes it (within `grace`) and writes its
          outcome as usual: a delivery answered during the stop is
          recorded COMPLETED with its dedupe mark, a permanent failure is dead-lettered, a
          transient one gets its FAILED execution record. So every attempt the endpoint
          answered has its execution record.
        - a lane waiting between retries (or after its attempt failed) ends at once
          (`Stopping`), and a lane takes no next record. Those records stay unfinished: their
          batches are not committed, and the partition's next owner (this worker restarted,
          or another) delivers them again, with the same Idempotency-Key.
        - after `grace` seconds, lanes still busy are cancelled, their records unfinished as
          above (an attempt cut short may have reached the endpoint: at least once).
        - the FAILED execution records are written before this returns (up to `grace`
          seconds), so before the producer flushes and stops: none is lost.
        """
        self._stopping.set()
        lanes = list(self.tasks.values())
        if lanes:
            _, pending = await asyncio.wait(lanes, timeout=grace)
            for task in pending:
                task.cancel()
            # every lane's end retrieved, so none is reported as never retrieved
            await asyncio.gather(*lanes, return_exceptions=True)
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=grace)
        await self.reader.close()

    def revoke(self, revoked: set[TP]) -> None:
        """Stop lanes of partitions this worker lost; their records are redelivered elsewhere."""
        for key, lane in list(self.lanes.items()):
            if lane and lane[0][1].batch.tp in revoked:
                task = self.tasks[key]
                task.cancel()
                # Cleanup in a done callback, not in the lane task: a task cancelled before it
                # first ran never runs any of its code, and its lane would stay, dead, with its
                # key's later records queued behind it for good.
                task.add_done_callback(lambda t, k=key, ln=lane: self._after_cancel(k, ln, t))

    def _after_cancel(self, key: bytes, lane: deque, task: asyncio.Task) -> None:
        """Drop a cancelled lane's stale records (their new owner delivers them); records of a
        new assignment that joined it meanwhile get a fresh task."""
        if not task.cancelled():
            return  # it finished before the cancel landed, and cleaned up itself
        kept = [item for item in lane if not item[1].batch.ticket.stale]
        for _ in range(len(lane) - len(kept)):
            self.capacity.release()
        lane.clear()
        if self.lanes.get(key) is not lane:
            return
        if kept and not self._stopping.is_set():
            lane.extend(kept)
            self.tasks[key] = asyncio.ensure_future(self._drain(key, lane))
        else:
            del self.lanes[key]
            del self.tasks[key]

    async def _drain(self, key: bytes, lane: deque[tuple[Any, _BatchState]]) -> None:
        try:
            while lane and not self._stopping.is_set():
                record, state = lane[0]
                if state.batch.ticket.stale:
                    # Its partition moved to another worker, which delivers it from the
                    # committed offset; delivering it here too could overtake that in order.
                    lane.popleft()
                    self.capacity.release()
                    continue
                try:
                    durable = await self._process(record)
                except Stopping:
                    return  # the record stays unfinished: redelivered by the next owner
                lane.popleft()
                # The lane moves on to the key's next record at once; this record counts as
                # done (its batch may be committed) only when its dedupe mark is in Kafka.
                if durable is None:
                    self._finish(state)
                else:
                    durable.add_done_callback(lambda fut, s=state: self._finish(s, fut))
        finally:  # a cancelled lane (revoke) is cleaned up by _after_cancel
            if self.lanes.get(key) is lane and not lane:
                del self.lanes[key]
                del self.tasks[key]

    def _finish(self, state: _BatchState, durable: asyncio.Future | None = None) -> None:
        if durable is not None and (durable.cancelled() or durable.exception() is not None):
            # As before batching: the delivery happened, so it still counts.
            error = "cancelled" if durable.cancelled() else durable.exception()
            log.warning("dedupe mark not confirmed by the broker: %s", error)
        state.one_done()
        self.capacity.release()

    async def _process(self, record: Any) -> asyncio.Future | None:
        """Deliver one action record; returns the dedupe mark's changelog write, if any."""
        # Table writes go to the changelog partition of "the current event"; in a lane task
        # that is the record being delivered (the same partition as the lane's key).
        event = RecordEvent(record)
        _current_event.set(weakref.ref(event))
        try:
            request = ActionRequest.from_bytes(record.value)
        except Exception as exc:
            await self._dead_letter_raw(record, f"unreadable action record: {exc!r}")
            return None
        try:
            return await self._deliver(request)
        except (asyncio.CancelledError, Stopping):
            raise
        except Exception as exc:  # a bug: dead-letter with the reason rather than lose it
            log.exception("internal error delivering %s", request.id)
            await self._dead_letter(request, f"internal error: {exc!r}", attempts=0)
            return None

    async def _deliver(self, request: ActionRequest) -> asyncio.Future | None:
        runtime = self.runtime
        dedupe = runtime.tables.dedupe
        now_ms = int(time.time() * 1000)
        mark = request.id.encode()  # the dedupe table's key for this delivery
        if mark in dedupe:  # `in`: no KeyError raised and caught per new id
            runtime.counters.skipped_duplicates += 1
            await self._record(request, executions.SKIPPED, reason="already delivered")
            return None
        user_key = b"u:" + request.dedupe_key.encode() if request.dedupe_key else None
        if user_key is not None:
            expiry = dedupe[user_key] if user_key in dedupe else None
            if expiry is not None and int(expiry) > now_ms:
                dedupe[mark] = str(now_ms).encode()
                durable = dedupe.last_changelog  # before any await: other lanes write too
                await self._record(request, executions.SKIPPED, reason="dedupe window")
                return durable
        action_cls = ACTIONS.get(request.action)
        if action_cls is None:
            await self._dead_letter(request, f"unknown action {request.action!r}", attempts=0)
            return None
        target = runtime.targets.get(request.target) if request.target else None
        policy = target.retry if target else DEFAULT_POLICY
        ctx = runtime.delivery_context()

        def on_retry(attempt: int, error: DeliveryError, delay: float) -> None:
            runtime.counters.retries += 1
            log.warning(
                "%s %s attempt %d failed (%s); retrying in %.2fs",
                request.action,
                request.id,
                attempt,
                error,
                delay,
            )
            # visible while retrying; the final status follows it on the topic
            self._write_soon(
                self._record(request, executions.FAILED, attempts=attempt, error=str(error))
            )

        outcome = await run_with_retry(
            lambda: action_cls.deliver(request, ctx, target),
            policy,
            sleep=self._retry_sleep,
            on_retry=on_retry,
        )
        if outcome.ok:
            delivered = int(time.time() * 1000)
            if user_key is not None and request.dedupe_window_s:
                dedupe[user_key] = str(delivered + int(request.dedupe_window_s * 1000)).encode()
            dedupe[mark] = str(delivered).encode()
            # The record is done only once the mark is durable: a record redelivered after a
            # crash is then either undelivered or skipped, except the ones in flight at the crash.
            durable = dedupe.last_changelog  # before any await: other lanes write too
            runtime.counters.delivered += 1
            await self._record(
                request, executions.COMPLETED, attempts=outcome.attempts, result=outcome.result
            )
            return durable
        await self._dead_letter(request, str(outcome.error), attempts=outcome.attempts)
        return None

    async def _retry_sleep(self, seconds: float) -> None:
        """The wait between attempts, cut short by a stop (raising `Stopping`): a lane
        waiting out a target's outage must not hold the worker's shutdown."""
        if not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)
        if self._stopping.is_set():
            raise Stopping

    def _write_soon(self, write: Any) -> None:
        """Write an execution record without holding the lane; a stop waits for it, and its
        failure is logged (never an unretrieved task exception)."""
        task = asyncio.ensure_future(write)
        self._writes.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not write an execution record: %r", task.exception())

    async def _dead_letter(self, request: ActionRequest, reason: str, *, attempts: int) -> None:
        source = request.source
        value, missing = await self._original_value(request)
        letter = DeadLetter(
            stage="delivery",
            reason=reason,
            integration=request.integration,
            source={k: v for k, v in source.items() if k != "messageId"},
            value=b64(value),
            valueMissing=missing,
            handler=request.handler,
            action=request.action,
            actionIndex=request.index,
            attempts=attempts,
            failedAt=int(time.time() * 1000),
            request=_asdict(request),
        )
        await self._publish_dead_letter(letter)
        log.warning(
            "dead-lettered %s %s after %d attempts: %s",
            request.action,
            request.id,
            attempts,
            reason,
        )
        self.runtime.counters.dead_lettered += 1
        await self._record(request, executions.DEAD_LETTERED, attempts=attempts, error=reason)

    async def _original_value(self, request: ActionRequest) -> tuple[bytes | None, str | None]:
        """The source record's value bytes, read back by the request's coordinates; or None
        and why (agents.readback)."""
        source = request.source
        try:
            topic, partition, offset = source["topic"], source["partition"], source["offset"]
        except KeyError as exc:
            return None, f"the action request does not say where its source record is ({exc})"
        value, missing = await self.reader.read(request.integration, topic, partition, offset)
        if missing is not None:
            log.warning("dead letter of %s without its value: %s", request.id, missing)
        return value, SCRUBBER.scrub_data(missing)

    async def _dead_letter_raw(self, message: Any, reason: str) -> None:
        letter = DeadLetter(
            stage="delivery",
            reason=reason,
            integration=self.runtime.home,
            source={
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
                "key": b64(message.key),
                "headers": {},
            },
            value=b64(message.value),
            failedAt=int(time.time() * 1000),
        )
        await self._publish_dead_letter(letter)

    async def _publish_dead_letter(self, letter: DeadLetter) -> None:
        """Publish a dead letter and wait for the broker; keep trying, never drop it. One
        too large with the original value is written without it (`valueMissing` says so). A
        stop ends the trying (`Stopping`): the record stays unfinished and is redone."""
        topic = self.runtime.topics.dlq(letter.integration)
        delay = 0.5
        while True:
            try:
                fut = await topic.send(
                    key=letter.key, value=letter.to_bytes(), headers=letter.headers(), force=True
                )
                await fut
                return
            except Exception as exc:
                if isinstance(exc, MessageSizeTooLargeError) and letter.value is not None:
                    letter = _without_value(letter, exc)
                    continue
                log.error("could not write dead letter (%s); retrying in %.1fs", exc, delay)
                await self._retry_sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _record(self, request: ActionRequest, status: str, **fields: object) -> None:
        action_cls = ACTIONS.get(request.action)
        redacted = action_cls.redact(request.payload) if action_cls else None
        rec = executions.record(request, status, redacted_payload=redacted, **fields)  # type: ignore[arg-type]
        # Straight to the producer (as the source's action records): Topic.send_soon's
        # FutureMessage, buffer and callbacks cost more than the record itself.
        await self.runtime.app.producer.send(
            self.executions_topic, request.id.encode(), executions.to_bytes(rec), None, None, None
        )


def _without_value(letter: DeadLetter, error: Exception) -> DeadLetter:
    """The letter without the original value, which made it too large to be written."""
    assert letter.value is not None
    source = letter.source
    return replace(
        letter,
        value=None,
        valueMissing=f"the original value ({len(letter.value) * 3 // 4} bytes) is left out: "
        f"with it the dead letter is too large for the producer or the topic ({error!r}); "
        f"read it at {source.get('topic')}/{source.get('partition')}@{source.get('offset')}",
    )


def _asdict(request: ActionRequest) -> dict:
    return orjson.loads(request.to_bytes())
