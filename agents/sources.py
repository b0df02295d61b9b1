"""The source agent: evaluate the handlers' topics a fetched batch at a time.

At-least-once: a batch's offsets are committed only once every action request and dead letter
its records produced has been acknowledged by the broker (`Batch.ticket.done()`), and Herald's
consumer commits a partition only up to the end of its finished batches (agents.transport). A
crash never loses a matched message; it repeats at most the batches in flight.

Produces are pipelined: the agent evaluates the next batch while earlier batches' produces are
in flight, up to `maxInFlight * 16` unacknowledged records.

Nothing in the produce path stops the worker (issue 10): a record the broker refuses as too
large becomes a dead letter that fits, and any other failed produce (the broker unreachable
past the producer's own retries) is sent again with backoff while the batch stays unfinished,
so its offsets are not committed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from agents.batches import Batch, BatchChannel
from agents.counters import MATCHED_STAGES
from agents.limits import record_limit
from agents.producer import too_large
from agents.runtime import Runtime
from streams import codecs, routing
from streams.actions.base import ActionRequest
from streams.avro.codecs import schemas_ready
from streams.conditions import ConditionJob
from streams.deadletter import DeadLetter, for_envelope
from streams.handlers import CompiledHandler, Evaluation, Prepared, finish
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
        headers=codecs.decode_headers(record.headers) if record.headers else {},
        timestamp=_timestamp(record.timestamp),
        raw_value=record.value,
        raw_key=record.key,
    )


def _timestamp(ms: int | None) -> int | None:
    return ms if ms is not None and ms >= 0 else None  # aiokafka gives -1 for "none"


def _internal_error(envelope: Envelope, exc: Exception) -> Evaluation:
    log.exception(
        "internal error routing %s/%s@%s", envelope.topic, envelope.partition, envelope.offset
    )
    return Evaluation(dead_letters=[for_envelope(envelope, "internal", repr(exc))])


async def prepare(
    runtime: Runtime, handlers: list[CompiledHandler], envelope: Envelope
) -> Prepared | Evaluation:
    """`routing.prepare` for an integration with a codec (Avro), once its schemas are in."""
    codec = runtime.codecs.for_records(envelope.integration)
    if codec is not None:
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

        await schemas_ready(codec, envelope, waiting)
    return routing.prepare(handlers, envelope, codec)


def max_record_bytes(max_request_size: int) -> int:
    """The largest key + value + headers Herald produces under the producer's limit alone
    (agents.limits adds the topics' max.message.bytes once the broker said them)."""
    return record_limit(max_request_size, ())


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
                "bytes (the integration's maxRequestSize, or the topic's max.message.bytes); "
                f"the source record is at {envelope.topic}/{envelope.partition}@"
                f"{envelope.offset}",
                handler=request.handler,
                action=request.action,
                index=request.index,
            )
        )
    fitted = [fit_letter(letter, envelope, limit) for letter in letters]
    return Outgoing(bool(evaluation.requests), requests, fitted)


def fit_letter(letter: DeadLetter, envelope: Envelope, limit: int) -> tuple[DeadLetter, bytes]:
    """The dead letter and its bytes, without the original value when with it the letter
    would be over `limit`: the reason says so and where the value can be read."""
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
    return letter, value


def refused_as_too_large(
    envelope: Envelope, letter: DeadLetter | None, request: ActionRequest | None, error: Exception
) -> tuple[DeadLetter, bytes]:
    """What to write instead of a record the broker refused as too large (its topic's
    max.message.bytes is lower than Herald knew): a dead letter without the original value,
    which always fits."""
    where = f"{envelope.topic}/{envelope.partition}@{envelope.offset}"
    if request is not None:
        letter = for_envelope(
            envelope,
            "size",
            f"the broker refused the action request as too large ({error!r}); the source "
            f"record is at {where}",
            handler=request.handler,
            action=request.action,
            index=request.index,
        )
        letter = replace(letter, value=None)
    else:
        assert letter is not None
        letter = replace(
            letter,
            value=None,
            reason=f"{letter.reason[:2000]} (the broker refused the dead letter with the "
            f"original value as too large: read the value at {where})",
        )
    return letter, letter.to_bytes()


#: One produced record, kept until its batch is acknowledged so a failed produce can be sent
#: again: (ack future, topic, key, value, headers, source envelope, request, dead letter).
Sent = tuple[
    asyncio.Future,
    str,
    bytes | None,
    bytes,
    Any,
    Envelope,
    ActionRequest | None,
    DeadLetter | None,
]


class SourceRunner:
    """Drives one integration's source channel; owns the pipelining of produces and the batch
    tickets. The home integration's batches come from Faust's consumer; every other
    integration has a runner of its own, fed by its own consumer (agents.integration_source),
    and produces to the same actions topic on the home cluster."""

    def __init__(
        self, runtime: Runtime, channel: BatchChannel, integration: str | None = None
    ) -> None:
        self.runtime = runtime
        self.channel = channel
        self.integration = integration or runtime.home
        self.max_pending = runtime.config.herald.maxInFlight * 16
        self._pending: deque[tuple[int, asyncio.Future]] = deque()  # (records, all produced)
        self._pending_records = 0
        self.actions_topic = runtime.topics.actions.get_topic_name()
        #: Lowered by `agents.limits` once the broker gave its topics' max.message.bytes.
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
        runtime.counters.consumed_by[(self.integration, batch.tp.topic)] += len(batch.records)
        integration = self.integration
        handlers = runtime.rules.index().for_topic(integration, batch.tp.topic)
        if not handlers:
            batch.ticket.done()
            return
        sync = runtime.codecs.for_records(integration) is None
        limit = self.max_record_bytes
        sent: list[Sent] = []
        skipped: list[str] = []  # condition false: handler names, counted once per batch
        # Two passes, so that the batch's JavaScript conditions go to the evaluator process in
        # one round trip (agents.evaluator_process): prepare every record, judge, finish.
        prepared: list[tuple[Envelope, Prepared | Evaluation]] = []
        jobs: list[ConditionJob] = []
        for record in batch.records:
            envelope = envelope_of(record, integration)
            try:
                if sync:
                    ready = routing.prepare(handlers, envelope)
                else:
                    ready = await prepare(runtime, handlers, envelope)
                if isinstance(ready, Prepared):
                    jobs += ready.jobs
            except Exception as exc:  # a bug, not bad data: dead-letter rather than lose it
                ready = _internal_error(envelope, exc)
            prepared.append((envelope, ready))
        if jobs:
            await runtime.evaluator.judge(jobs)
            if batch.ticket.stale:  # revoked meanwhile: its new owner evaluates it again
                return
        for envelope, ready in prepared:
            try:
                evaluation = ready if isinstance(ready, Evaluation) else finish(ready)
                skipped += evaluation.skipped
                if evaluation.requests or evaluation.dead_letters:
                    outgoing = fit_to_limit(evaluation, envelope, limit)
                    await self._produce(outgoing, envelope, sent)
            except Exception as exc:  # a bug, not bad data: dead-letter rather than lose it
                evaluation = _internal_error(envelope, exc)
                await self._produce(fit_to_limit(evaluation, envelope, limit), envelope, sent)
        runtime.counters.count_skipped(integration, skipped)
        if not sent:
            batch.ticket.done()
            return
        done = asyncio.gather(*(item[0] for item in sent), return_exceptions=True)
        done.add_done_callback(lambda fut, b=batch, s=sent: self._on_produced(fut, b, s))
        self._pending.append((len(sent), done))
        self._pending_records += len(sent)
        while self._pending_records > self.max_pending:
            count, oldest = self._pending.popleft()
            self._pending_records -= count
            await asyncio.wait([oldest])
        while self._pending and self._pending[0][1].done():
            self._pending_records -= self._pending.popleft()[0]

    async def _produce(self, outgoing: Outgoing, envelope: Envelope, sent: list[Sent]) -> None:
        # Straight to Faust's producer: a Topic.send builds a FutureMessage, runs the monitor
        # and callbacks, about 10 µs per record that nothing here uses.
        send = self.runtime.app.producer.send
        counters = self.runtime.counters
        if outgoing.matched:
            counters.matched += 1
        actions = self.actions_topic
        # By label for /metrics (agents.counters): only records that produce something pay.
        produced, matched = counters.produced_by, set()
        for request, key, value in outgoing.requests:
            fut = await send(actions, key, value, None, None, None)
            sent.append((fut, actions, key, value, None, envelope, request, None))
            produced[(self.integration, request.handler, request.action)] += 1
            matched.add(request.handler)
        counters.actions_produced += len(outgoing.requests)
        for letter, value in outgoing.dead_letters:
            log.warning(
                "dead-lettered %s/%s@%s (%s): %s",
                letter.source["topic"],
                letter.source["partition"],
                letter.source["offset"],
                letter.stage,
                letter.reason,
            )
            topic, headers = self._dlq(letter)
            fut = await send(topic, letter.key, value, None, None, headers)
            sent.append((fut, topic, letter.key, value, headers, envelope, None, letter))
            counters.count_dead_letter(letter.integration, letter.stage)
            if letter.handler and letter.stage in MATCHED_STAGES:
                matched.add(letter.handler)
        counters.count_matched(self.integration, matched)

    def _dlq(self, letter: DeadLetter) -> tuple[str, list[tuple[str, bytes]]]:
        return self.runtime.topics.dlq(letter.integration).get_topic_name(), letter.headers()

    def produces_in_flight(self) -> int:
        """Records handed to the producer whose batch is not acknowledged yet (/metrics)."""
        return sum(count for count, done in self._pending if not done.done())

    def _on_produced(self, fut: asyncio.Future, batch: Batch, sent: list[Sent]) -> None:
        results = [] if fut.cancelled() else fut.result()
        if not fut.cancelled() and not any(isinstance(r, BaseException) for r in results):
            batch.ticket.done()
            return
        # Not done: the batch stays unfinished (uncommitted) until every record is written.
        asyncio.ensure_future(self._repair(batch, sent))

    async def _repair(self, batch: Batch, sent: list[Sent]) -> None:
        """Write again what the broker did not take, until it does (a refusal as too large
        becomes a dead letter that fits); then the batch is done. A revoked batch is left to
        the partition's next owner."""
        producer = self.runtime.app.producer
        delay = 0.5
        for item in sent:
            fut, topic, key, value, headers, envelope, request, letter = item
            alone = False  # sent in a batch of its own since its last refusal as too large
            while True:
                error = _failure(fut)
                if error is None:
                    break
                if batch.ticket.stale:
                    return
                send = producer.send
                if too_large(error) and not alone:
                    # The broker refuses a batch as a whole: the record may have shared its
                    # batch with the one too large (agents.producer). Alone, it tells.
                    send, alone = producer.send_alone, True
                elif too_large(error):
                    replacement, value = refused_as_too_large(envelope, letter, request, error)
                    log.error(
                        "the broker refused a record of %s bytes for %s (%r); dead-lettering "
                        "%s/%s@%s instead",
                        len(item[3]),
                        topic,
                        error,
                        envelope.topic,
                        envelope.partition,
                        envelope.offset,
                    )
                    topic, headers = self._dlq(replacement)
                    if request is not None:  # a new dead letter; a letter refused is not
                        self.runtime.counters.count_dead_letter(
                            replacement.integration, replacement.stage
                        )
                    key, letter, request = replacement.key, replacement, None
                    alone = False
                else:
                    alone = False
                    log.error(
                        "could not produce to %s for %s (%r); retrying in %.1fs",
                        topic,
                        batch.tp,
                        error,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                try:
                    fut = await send(topic, key, value, None, None, headers)
                    await asyncio.wait([fut])
                except Exception as exc:  # the send itself refused: same handling, next turn
                    fut = asyncio.get_running_loop().create_future()
                    fut.set_exception(exc)
        batch.ticket.done()


def _failure(fut: asyncio.Future) -> BaseException | None:
    if fut.cancelled():
        return asyncio.CancelledError()
    return fut.exception()
