"""The source agent: evaluate the handlers' topics a fetched batch at a time.

At-least-once: a batch's offsets are committed only once every action request and dead letter
its records produced has been acknowledged by the broker (`Batch.ticket.done()`), and Herald's
consumer commits a partition only up to the end of its finished batches (agents.transport). A
crash never loses a matched message; it repeats at most the batches in flight.

Produces are pipelined: the agent evaluates the next batch while earlier batches' produces are
in flight, up to `maxInFlight * 16` unacknowledged records.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from agents.batches import Batch, BatchChannel
from agents.runtime import Runtime
from streams import codecs, routing
from streams.actions.base import ActionRequest
from streams.deadletter import DeadLetter, for_envelope
from streams.handlers import CompiledHandler, Evaluation
from streams.message import Envelope

log = logging.getLogger("herald.source")


def envelope_of(record: Any, integration: str) -> Envelope:
    """The envelope of a consumed aiokafka record; the value is decoded by the caller."""
    return Envelope(
        value=None,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        integration=integration,
        key=codecs.decode_key(record.key),
        headers=codecs.decode_headers(record.headers),
        timestamp=_timestamp(record.timestamp),
        raw_value=record.value,
        raw_key=record.key,
    )


def _timestamp(ms: int | None) -> int | None:
    return ms if ms is not None and ms >= 0 else None  # aiokafka gives -1 for "none"


async def route(
    runtime: Runtime, handlers: list[CompiledHandler], envelope: Envelope
) -> Evaluation:
    codec = runtime.codec_for(envelope.integration)
    if codec is not None and codec.unknown_ids(envelope.raw_value, envelope.raw_key):
        # The writer schema must come from the registry. While the registry cannot answer the
        # batch stays unfinished and the agent waits: an outage never dead-letters anything.
        def waiting(error: Exception, delay: float) -> None:
            log.error(
                "%s/%s@%s: cannot fetch the Avro schema (%s); retrying in %.1fs",
                envelope.topic,
                envelope.partition,
                envelope.offset,
                error,
                delay,
            )

        await codec.wait_ready(envelope.raw_value, envelope.raw_key, waiting)
    return routing.route(handlers, envelope, codec)


#: What a produced record carries besides key and value (record and batch headers), with room.
RECORD_OVERHEAD = 1024


def max_record_bytes(max_request_size: int) -> int:
    """The largest key + value + headers Herald produces: the producer refuses a record whose
    serialized size exceeds its `max_request_size` (aiokafka's MessageSizeTooLargeError),
    and that refusal must never reach the agent."""
    return max(max_request_size - RECORD_OVERHEAD, 1024)


@dataclass(slots=True)
class Outgoing:
    """What one source record produces, each record serialized once and within the limit."""

    matched: bool  # some handler matched (even if its request had to become a dead letter)
    requests: list[tuple[ActionRequest, bytes, bytes]]  # (request, key, value)
    dead_letters: list[tuple[DeadLetter, bytes]]  # (letter, value)


def fit_to_limit(evaluation: Evaluation, envelope: Envelope, limit: int) -> Outgoing:
    """Serialize what `evaluation` produces, turning every action request that would not fit
    in one produced record into a dead letter that does: the reason, the sizes and the source
    record's coordinates (topic, partition, offset), with the original value only where it
    still fits."""
    requests: list[tuple[ActionRequest, bytes, bytes]] = []
    letters = list(evaluation.dead_letters)
    for request in evaluation.requests:
        key, value = request.ordering_key.encode(), request.to_bytes()
        size = len(key) + len(value)
        if size <= limit:
            requests.append((request, key, value))
            continue
        letters.append(
            for_envelope(
                envelope,
                "size",
                f"the action request is {size} bytes, over the producer's limit of {limit} "
                "bytes (producer max request size); the source record is at "
                f"{envelope.topic}/{envelope.partition}@{envelope.offset}",
                handler=request.handler,
                action=request.action,
                index=request.index,
            )
        )
    fitted: list[tuple[DeadLetter, bytes]] = []
    for letter in letters:
        value = letter.to_bytes()
        size = len(value) + len(letter.key or b"")
        if size > limit:
            raw = len(envelope.raw_value or b"")
            letter = replace(
                letter,
                value=None,
                reason=f"{letter.reason[:2000]} (the original value, {raw} bytes, is not "
                f"included: with it the dead letter would be {size} bytes, over the limit of "
                f"{limit}; read it at {envelope.topic}/{envelope.partition}@{envelope.offset})",
            )
            value = letter.to_bytes()
        fitted.append((letter, value))
    return Outgoing(bool(evaluation.requests), requests, fitted)


class SourceRunner:
    """Drives the source channel; owns the pipelining of produces and the batch tickets."""

    def __init__(self, runtime: Runtime, channel: BatchChannel) -> None:
        self.runtime = runtime
        self.channel = channel
        self.max_pending = runtime.config.herald.maxInFlight * 16
        self._pending: deque[tuple[int, asyncio.Future]] = deque()  # (records, all produced)
        self._pending_records = 0
        self.actions_topic = runtime.topics.actions.get_topic_name()
        self.max_record_bytes = max_record_bytes(runtime.app.conf.producer_max_request_size)

    async def run(self) -> None:
        await self.runtime.rules.ready.wait()
        while True:
            batch = await self.channel.get()
            await self.process(batch)

    async def process(self, batch: Batch) -> None:
        if batch.ticket.stale:  # revoked before we got to it: its new owner reads it again
            return
        runtime = self.runtime
        runtime.counters.consumed += len(batch.records)
        home = runtime.home
        handlers = runtime.rules.index().for_topic(home, batch.tp.topic)
        if not handlers:
            batch.ticket.done()
            return
        sync = runtime.codec_for(home) is None
        limit = self.max_record_bytes
        futures: list[asyncio.Future] = []
        for record in batch.records:
            envelope = envelope_of(record, home)
            try:
                if sync:
                    evaluation = routing.route(handlers, envelope)
                else:
                    evaluation = await route(runtime, handlers, envelope)
                if evaluation.requests or evaluation.dead_letters:
                    futures += await self._produce(fit_to_limit(evaluation, envelope, limit))
            except Exception as exc:  # a bug, not bad data: dead-letter rather than lose it
                log.exception("internal error routing %s/%s@%s", *batch.tp, record.offset)
                letter = for_envelope(envelope, "internal", repr(exc))
                evaluation = Evaluation(dead_letters=[letter])
                futures += await self._produce(fit_to_limit(evaluation, envelope, limit))
        if not futures:
            batch.ticket.done()
            return
        done = asyncio.gather(*futures)
        done.add_done_callback(lambda fut, b=batch: self._on_produced(fut, b))
        self._pending.append((len(futures), done))
        self._pending_records += len(futures)
        while self._pending_records > self.max_pending:
            count, oldest = self._pending.popleft()
            self._pending_records -= count
            await asyncio.wait([oldest])
        while self._pending and self._pending[0][1].done():
            self._pending_records -= self._pending.popleft()[0]

    async def _produce(self, outgoing: Outgoing) -> list[asyncio.Future]:
        # Straight to Faust's producer: a Topic.send builds a FutureMessage, runs the monitor
        # and callbacks, about 10 µs per record that nothing here uses.
        send = self.runtime.app.producer.send
        topics = self.runtime.topics
        futures: list[asyncio.Future] = []
        if outgoing.matched:
            self.runtime.counters.matched += 1
        actions = self.actions_topic
        for _request, key, value in outgoing.requests:
            futures.append(await send(actions, key, value, None, None, None))
        self.runtime.counters.actions_produced += len(outgoing.requests)
        for letter, value in outgoing.dead_letters:
            log.warning(
                "dead-lettered %s/%s@%s (%s): %s",
                letter.source["topic"],
                letter.source["partition"],
                letter.source["offset"],
                letter.stage,
                letter.reason,
            )
            futures.append(
                await topics.dlq(letter.integration).send(
                    key=letter.key, value=value, headers=letter.headers(), force=True
                )
            )
        self.runtime.counters.dead_lettered += len(outgoing.dead_letters)
        return futures

    def _on_produced(self, fut: asyncio.Future, batch: Batch) -> None:
        if fut.cancelled() or fut.exception() is not None:
            error = fut.exception() if not fut.cancelled() else "cancelled"
            # Not done: the batch will be consumed again. The worker must stop so it is.
            log.error("could not produce action records for %s: %s; stopping", batch.tp, error)
            asyncio.ensure_future(self.runtime.app.crash(RuntimeError(str(error))))
            return
        batch.ticket.done()
