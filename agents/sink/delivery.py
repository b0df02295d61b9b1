"""The delivery stage: one action's target, its attempts with retries, its execution records.

`Delivery.attempt` delivers a request through its action type's delivery side
(`streams.actions.registry.delivery`), retrying transient failures under the target's retry
policy (streams.delivery). Each retry writes a FAILED execution record without holding the
lane, so the record of an outage is visible while it lasts; the final status follows it.

`ExecutionLog` writes execution records straight to the producer (as the source writes its
action records): `Topic.send_soon`'s FutureMessage, buffer and callbacks cost more than the
record itself. A delivery's record counts as finished only once its execution record is in
Kafka too, so the committed offset never passes a delivery whose final record is missing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Protocol

from agents.counters import Counters
from agents.producer import too_large
from agents.sink.stopping import Stopping, StopSignal
from streams import executions
from streams.actions.base import ActionRequest, DeliveryContext
from streams.actions.registry import delivery as action_delivery
from streams.config.models import RetryPolicy, Target
from streams.delivery import Outcome, run_with_retry
from streams.errors import DeliveryError

log = logging.getLogger("herald.sink")
DEFAULT_POLICY = RetryPolicy()


class Producer(Protocol):
    """What the execution log writes with (the worker's producer, agents.idempotence): `send`
    as Faust's producer has it, (topic, key, value, partition, timestamp, headers) -> future
    of the broker's acknowledgement, and `send_alone` (agents.producer)."""

    async def send(self, *args: Any) -> asyncio.Future: ...

    async def send_alone(self, *args: Any) -> asyncio.Future: ...


class ExecutionLog:
    """Execution records of the sink's outcomes, on the executions topic."""

    def __init__(self, producer: Producer, topic: str, stop: StopSignal | None = None) -> None:
        self._producer = producer
        self.topic = topic
        self._stop = stop if stop is not None else StopSignal()
        self._writing: set[asyncio.Task] = set()

    async def write(
        self, request: ActionRequest, status: str, **fields: Any
    ) -> asyncio.Future | None:
        """Hand one record to the producer; the future is done once it is in Kafka, which
        the sink's record waits for before it counts as finished (so `herald audit` finds
        the final record of every delivery below the committed offset).

        Never raises: the record tells of an outcome that already stands (the delivery
        happened and is marked, or its dead letter is written), so a record the producer
        refuses must not become a second outcome (the sink would dead-letter a delivered
        record as an internal error). A refusal as too large is tried alone, then without
        the payload; any other failure is written again (`_rewrite`). None when the record
        could not be built (logged)."""
        action = action_delivery(request.action)
        redacted = action.redact(request.payload) if action is not None else None
        try:
            rec = executions.record(request, status, redacted_payload=redacted, **fields)
            value = executions.to_bytes(rec)
        except Exception as exc:  # a bug: say so, and do not hold the record for it
            _not_written(request, status, exc)
            return None
        key = request.id.encode()
        try:
            ack = await self._producer.send(self.topic, key, value, None, None, None)
        except Exception as exc:  # refused at once (the producer's own limit)
            ack = asyncio.get_running_loop().create_future()
            ack.set_exception(exc)
        written = ack.get_loop().create_future()
        ack.add_done_callback(partial(self._acked, written, request, status, rec))
        return written

    def _acked(
        self,
        written: asyncio.Future,
        request: ActionRequest,
        status: str,
        rec: dict[str, Any],
        ack: asyncio.Future,
    ) -> None:
        if written.done():
            return
        error = asyncio.CancelledError() if ack.cancelled() else ack.exception()
        if error is None:
            written.set_result(None)
            return
        task = asyncio.ensure_future(self._rewrite(written, request, status, rec, error))
        self._writing.add(task)
        task.add_done_callback(self._written)

    async def _rewrite(
        self,
        written: asyncio.Future,
        request: ActionRequest,
        status: str,
        rec: dict[str, Any],
        error: BaseException,
    ) -> None:
        """Write a record the broker did not take until it does: refused as too large, alone
        (agents.producer), then without its payload; any other failure again with backoff.
        A stop ends the trying with `written` left pending: the sink's record stays
        unfinished, uncommitted, and its redelivery writes a record of its own."""
        key = request.id.encode()
        alone, delay = False, 0.5
        while True:
            send = self._producer.send
            if too_large(error) and not alone:
                send, alone = self._producer.send_alone, True
            elif too_large(error) and rec.get("payload") is not None:
                log.warning(
                    "the execution record of %s (%s) is too large (%s): written without its "
                    "payload",
                    request.id,
                    status,
                    error,
                )
                rec = {**rec, "payload": None, "payloadOmitted": "over the size limit"}
                alone = False
            else:
                _not_written(request, status, error)
                try:
                    await self._stop.sleep(delay)
                except Stopping:
                    return
                delay = min(delay * 2, 30.0)
                alone = False
            try:
                ack = await send(self.topic, key, executions.to_bytes(rec), None, None, None)
                await asyncio.wait([ack])
                error = asyncio.CancelledError() if ack.cancelled() else ack.exception()
            except Exception as exc:
                error = exc
            if error is None:
                if not written.done():
                    written.set_result(None)
                return

    def write_soon(self, request: ActionRequest, status: str, **fields: Any) -> None:
        """Write a record without waiting for it; `drain` waits for these, and a failure is
        logged (never an unretrieved task exception)."""
        task = asyncio.ensure_future(self.write(request, status, **fields))
        self._writing.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task) -> None:
        self._writing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not write an execution record: %r", task.exception())

    async def drain(self, timeout: float) -> None:
        """Wait (up to `timeout` seconds) for the records `write_soon` is still writing."""
        if self._writing:
            await asyncio.wait(list(self._writing), timeout=timeout)


def _not_written(request: ActionRequest, status: str, exc: BaseException) -> None:
    log.warning("could not write the execution record of %s (%s): %r", request.id, status, exc)


class Delivery:
    """Delivers one request with retries; says how it ended (streams.delivery.Outcome)."""

    def __init__(
        self,
        targets: Mapping[str, Target],
        context: Callable[[], DeliveryContext],
        executions_log: ExecutionLog,
        counters: Counters,
        stop: StopSignal,
    ) -> None:
        self._targets = targets
        self._context = context
        self._executions = executions_log
        self._counters = counters
        self._stop = stop

    def attempt(self, request: ActionRequest, action: Any) -> Awaitable[Outcome]:
        """Deliver until success, a permanent failure or the retry budget's end. A stop
        during a wait between attempts raises `Stopping` (the record stays unfinished).

        Not a coroutine itself: it hands back the retry loop's, one coroutine layer less per
        delivery on the hot path."""
        target = self._targets.get(request.target) if request.target else None
        policy = target.retry if target else DEFAULT_POLICY
        ctx = self._context()

        def on_retry(attempt: int, error: DeliveryError, delay: float) -> None:
            self._counters.count_retry(request)  # the total, by label, the target as down
            log.warning(
                "%s %s attempt %d failed (%s); retrying in %.2fs",
                request.action,
                request.id,
                attempt,
                error,
                delay,
            )
            # visible while retrying; the final status follows it on the topic
            self._executions.write_soon(
                request, executions.FAILED, attempts=attempt, error=str(error)
            )

        return run_with_retry(
            lambda: action.deliver(request, ctx, target),
            policy,
            sleep=self._stop.sleep,
            on_retry=on_retry,
        )
