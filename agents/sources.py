"""The source agent: consume the handlers' topics, evaluate, produce action records.

At-least-once: the stream does not ack by itself (`noack`). A record is acked only when every
action request and dead letter it produced has been acknowledged by the broker; a record that
matched nothing is acked at once. Faust commits an offset only when every record before it is
acked, so a crash never loses a matched message. Produces are pipelined: the agent moves on
while earlier records' produces are in flight, bounded by `maxInFlight * 16` records.
"""

from __future__ import annotations

import asyncio
import logging

from faust.types import EventT, StreamT

from agents.runtime import Runtime
from streams import codecs, routing
from streams.deadletter import for_envelope
from streams.handlers import Evaluation
from streams.message import Envelope

log = logging.getLogger("herald.source")


def envelope_of(event: EventT, integration: str) -> Envelope:
    """The envelope of a consumed record; the value is decoded by the caller."""
    message = event.message
    return Envelope(
        value=None,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        integration=integration,
        key=codecs.decode_key(message.key),
        headers=codecs.decode_headers(message.headers),
        timestamp=int(message.timestamp * 1000) if message.timestamp else None,
        raw_value=message.value,
        raw_key=message.key,
    )


async def route(runtime: Runtime, envelope: Envelope) -> Evaluation:
    handlers = runtime.rules.index().for_topic(envelope.integration, envelope.topic)
    if not handlers:
        return Evaluation()
    codec = runtime.codec_for(envelope.integration)
    if codec is not None and codec.unknown_ids(envelope.raw_value, envelope.raw_key):
        # The writer schema must come from the registry. While the registry cannot answer the
        # record stays unacked and the stream waits: an outage never dead-letters anything.
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


class SourceRunner:
    """Drives one source stream; owns the pipelining of produces and the acks."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.window = asyncio.Semaphore(runtime.config.herald.maxInFlight * 16)

    async def run(self, stream: StreamT) -> None:
        await self.runtime.rules.ready.wait()
        manual = stream.noack()
        async for event in manual.events():
            self.runtime.counters.consumed += 1
            try:
                evaluation = await route(self.runtime, envelope_of(event, self.runtime.home))
                futures = await self._produce(evaluation)
            except Exception as exc:  # a bug, not bad data: dead-letter rather than lose it
                log.exception("internal error routing %s", event.message.tp)
                letter = for_envelope(envelope_of(event, self.runtime.home), "internal", repr(exc))
                futures = await self._produce(Evaluation(dead_letters=[letter]))
            if not futures:
                await manual.ack(event)
                continue
            await self.window.acquire()
            done = asyncio.gather(*futures)
            done.add_done_callback(lambda fut, ev=event: self._on_produced(fut, ev, manual))

    async def _produce(self, evaluation: Evaluation) -> list[asyncio.Future]:
        topics = self.runtime.topics
        futures: list[asyncio.Future] = []
        if evaluation.requests:
            self.runtime.counters.matched += 1
        for request in evaluation.requests:
            futures.append(
                await topics.actions.send(
                    key=request.ordering_key.encode(), value=request.to_bytes(), force=True
                )
            )
        self.runtime.counters.actions_produced += len(evaluation.requests)
        for letter in evaluation.dead_letters:
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
                    key=letter.key, value=letter.to_bytes(), headers=letter.headers(), force=True
                )
            )
        self.runtime.counters.dead_lettered += len(evaluation.dead_letters)
        return futures

    def _on_produced(self, fut: asyncio.Future, event: EventT, stream: StreamT) -> None:
        self.window.release()
        if fut.cancelled() or fut.exception() is not None:
            error = fut.exception() if not fut.cancelled() else "cancelled"
            # Not acked: the record will be consumed again. The worker must stop so it is.
            log.error(
                "could not produce action records for %s: %s; stopping", event.message.tp, error
            )
            asyncio.ensure_future(self.runtime.app.crash(RuntimeError(str(error))))
            return
        asyncio.ensure_future(stream.ack(event))
