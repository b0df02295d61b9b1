"""The delivery stage: one action's target, its attempts with retries, its execution records.

`Delivery.attempt` delivers a request through its action type's delivery side
(`streams.actions.registry.delivery`), retrying transient failures under the target's retry
policy (streams.delivery). Each retry writes a FAILED execution record without holding the
lane, so the record of an outage is visible while it lasts; the final status follows it.

`ExecutionLog` writes execution records straight to the producer (as the source writes its
action records): `Topic.send_soon`'s FutureMessage, buffer and callbacks cost more than the
record itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agents.counters import Counters
from agents.producer import too_large
from agents.sink.stopping import StopSignal
from streams import executions
from streams.actions.base import ActionRequest, DeliveryContext
from streams.actions.registry import delivery as action_delivery
from streams.config.models import RetryPolicy, Target
from streams.delivery import Outcome, run_with_retry
from streams.errors import DeliveryError

log = logging.getLogger("herald.sink")
DEFAULT_POLICY = RetryPolicy()

#: aiokafka's producer send, as Faust's producer has it: (topic, key, value, partition,
#: timestamp, headers) -> future of the broker's acknowledgement.
ProducerSend = Callable[..., Any]


class ExecutionLog:
    """Execution records of the sink's outcomes, on the executions topic."""

    def __init__(self, send: ProducerSend, topic: str) -> None:
        self._send = send
        self.topic = topic
        self._writing: set[asyncio.Task] = set()

    async def write(self, request: ActionRequest, status: str, **fields: Any) -> None:
        """Write one record (handed to the producer: durable with the producer's next flush,
        which Faust's commit waits for).

        Never raises: the record tells of an outcome that already stands (the delivery
        happened and is marked, or its dead letter is written), so a record the producer
        refuses must not become a second outcome (the sink would dead-letter a delivered
        record as an internal error). One over the producer's size limit (a payload near
        the limit, with the result and the record's fields on top) is written again
        without its payload; any other refusal is logged."""
        action = action_delivery(request.action)
        redacted = action.redact(request.payload) if action is not None else None
        rec = executions.record(request, status, redacted_payload=redacted, **fields)
        key = request.id.encode()
        try:
            await self._send(self.topic, key, executions.to_bytes(rec), None, None, None)
            return
        except Exception as exc:
            if not too_large(exc):
                _not_written(request, status, exc)
                return
            log.warning(
                "the execution record of %s (%s) is over the producer's limit (%s): "
                "written without its payload",
                request.id,
                status,
                exc,
            )
        rec["payload"] = None
        rec["payloadOmitted"] = "over the producer's size limit"
        try:
            await self._send(self.topic, key, executions.to_bytes(rec), None, None, None)
        except Exception as exc:
            _not_written(request, status, exc)

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


def _not_written(request: ActionRequest, status: str, exc: Exception) -> None:
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
