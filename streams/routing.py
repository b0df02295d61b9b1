"""The source stage as one pure function: raw record → action requests and dead letters.

Shared by the source agent and `herald replay`, and testable without Kafka.
"""

from __future__ import annotations

from typing import Any, Protocol

from streams import codecs
from streams.deadletter import DeadLetter, for_envelope
from streams.errors import DecodeError
from streams.handlers import (
    CompiledHandler,
    Evaluation,
    Prepared,
    finish,
    judge_here,
    local_jobs,
)
from streams.handlers import prepare as prepare_handlers
from streams.message import Envelope
from streams.templating import has_no_inline_json


class ValueCodec(Protocol):
    """How an integration's records decode when they are not STRING (Avro: streams.avro)."""

    def decode_value(self, data: bytes | None) -> Any: ...

    def decode_key(self, data: bytes | None) -> str | None: ...


def decode(envelope: Envelope, codec: ValueCodec | None = None) -> Envelope | DeadLetter:
    """Decode the raw value: STRING (no codec) JSON when it parses, else text; with a codec
    (AVRO integrations) the value and the key through it. Never does I/O: an Avro codec has its
    schemas fetched beforehand (`AvroCodec.prepare`)."""
    try:
        if codec is None:
            raw = envelope.raw_value
            value = codecs.decode_string_value(raw)
            # JSON text with nothing inline to expand (checked on its bytes, in C).
            flat = type(value) is dict and raw is not None and has_no_inline_json(raw)
            return envelope.decoded(value, envelope.key, flat=flat)
        value = codec.decode_value(envelope.raw_value)
        key = codec.decode_key(envelope.raw_key)
    except DecodeError as exc:
        return for_envelope(envelope, "decode", str(exc))
    return envelope.decoded(value, key)


def prepare(
    handlers: list[CompiledHandler], envelope: Envelope, codec: ValueCodec | None = None
) -> Prepared | Evaluation:
    """Decode once and prepare every handler of the record's topic (`handlers.prepare`); an
    Evaluation already when there is nothing to evaluate (no handlers, or a decode dead
    letter)."""
    if not handlers:
        return Evaluation()
    decoded = decode(envelope, codec)
    if isinstance(decoded, DeadLetter):
        return Evaluation(dead_letters=[decoded])
    prepared = prepare_handlers(handlers, decoded)
    if not prepared.jobs and all(verdict is False for verdict in prepared.verdicts):
        # Every condition already said no (the filter path's usual record): nothing to finish.
        return Evaluation(skipped=[handler.name for handler in handlers])
    return prepared


def route(
    handlers: list[CompiledHandler], envelope: Envelope, codec: ValueCodec | None = None
) -> Evaluation:
    """Decode once, then evaluate every handler of the record's topic, all in this process
    (a worker runs the JavaScript conditions in its evaluator process instead: `prepare`)."""
    prepared = prepare(handlers, envelope, codec)
    if isinstance(prepared, Evaluation):
        return prepared
    judge_here(local_jobs(prepared))
    return finish(prepared)
