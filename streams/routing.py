"""The source stage as one pure function: raw record → action requests and dead letters.

Shared by the source agent and `herald replay`, and testable without Kafka.
"""

from __future__ import annotations

import dataclasses

from streams import codecs
from streams.deadletter import DeadLetter, for_envelope
from streams.errors import DecodeError
from streams.handlers import CompiledHandler, Evaluation, evaluate
from streams.message import Envelope


def decode(envelope: Envelope) -> Envelope | DeadLetter:
    """Decode the raw value (STRING protocol: JSON when it parses, else text)."""
    try:
        value = codecs.decode_string_value(envelope.raw_value)
    except DecodeError as exc:
        return for_envelope(envelope, "decode", str(exc))
    return dataclasses.replace(envelope, value=value)


def route(handlers: list[CompiledHandler], envelope: Envelope) -> Evaluation:
    """Decode once, then evaluate every handler of the record's topic."""
    if not handlers:
        return Evaluation()
    decoded = decode(envelope)
    if isinstance(decoded, DeadLetter):
        return Evaluation(dead_letters=[decoded])
    return evaluate(handlers, decoded)
