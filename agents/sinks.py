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
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from typing import Any

import orjson
from faust.streams import _current_event
from faust.types import TP

from agents.batches import Batch, BatchChannel, RecordEvent
from agents.runtime import Runtime
from streams import executions
from streams.actions.base import ActionRequest
from streams.actions.registry import ACTIONS
from streams.config.models import RetryPolicy
from streams.deadletter import DeadLetter, b64
from streams.delivery import run_with_retry
from streams.errors import DeliveryError

log = logging.getLogger("herald.sink")
DEFAULT_POLICY = RetryPolicy()


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

    async def run(self) -> None:
        while True:
            batch = await self.channel.get()
            state = _BatchState(batch)
            for record in batch.records:
                await self.capacity.acquire()
                if batch.ticket.stale:  # revoked while we waited: the new owner has it
                    self.capacity.release()
                    break
                key = record.key or b""
                lane = self.lanes.get(key)
                if lane is None:
                    lane = self.lanes[key] = deque()
                    self.tasks[key] = asyncio.ensure_future(self._drain(key, lane))
                lane.append((record, state))

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
        if kept:
            lane.extend(kept)
            self.tasks[key] = asyncio.ensure_future(self._drain(key, lane))
        else:
            del self.lanes[key]
            del self.tasks[key]

    async def _drain(self, key: bytes, lane: deque[tuple[Any, _BatchState]]) -> None:
        try:
            while lane:
                record, state = lane[0]
                if state.batch.ticket.stale:
                    # Its partition moved to another worker, which delivers it from the
                    # committed offset; delivering it here too could overtake that in order.
                    lane.popleft()
                    self.capacity.release()
                    continue
                durable = await self._process(record)
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
        except asyncio.CancelledError:
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
            asyncio.ensure_future(
                self._record(request, executions.FAILED, attempts=attempt, error=str(error))
            )

        outcome = await run_with_retry(
            lambda: action_cls.deliver(request, ctx, target), policy, on_retry=on_retry
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

    async def _dead_letter(self, request: ActionRequest, reason: str, *, attempts: int) -> None:
        source = request.source
        letter = DeadLetter(
            stage="delivery",
            reason=reason,
            integration=request.integration,
            source={k: v for k, v in source.items() if k != "messageId"},
            value=None,
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
        """Publish a dead letter and wait for the broker; keep trying, never drop it."""
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
                log.error("could not write dead letter (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
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


def _asdict(request: ActionRequest) -> dict:
    return orjson.loads(request.to_bytes())
