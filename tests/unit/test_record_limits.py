"""Records too large to produce become dead letters that fit (agents.sources.fit_to_limit)."""

from __future__ import annotations

from agents.limits import RECORD_OVERHEAD, batch_limit
from agents.sources import fit_to_limit, max_record_bytes
from streams.actions.base import ActionRequest
from streams.deadletter import for_envelope
from streams.handlers import Evaluation
from streams.message import Envelope


def envelope(raw: bytes) -> Envelope:
    return Envelope(
        value=None, topic="alarms", partition=2, offset=7, integration="local", raw_value=raw
    )


def request(payload_size: int) -> ActionRequest:
    return ActionRequest(
        id="d1",
        handler="h",
        event="kafka:local:alarms",
        action="webhook",
        index=0,
        payload={"body": "x" * payload_size},
        ordering_key="k",
        source={"messageId": "local/alarms/2/7"},
        integration="local",
        created_ms=0,
    )


def test_requests_within_the_limit_are_kept_as_they_are() -> None:
    kept = request(100)
    fitted = fit_to_limit(Evaluation(requests=[kept]), envelope(b"{}"), 10_000)
    assert fitted.requests == [(kept, b"k", kept.to_bytes())]
    assert fitted.dead_letters == [] and fitted.matched


def test_a_request_over_the_limit_becomes_a_size_dead_letter_naming_the_source() -> None:
    limit = max_record_bytes(20_000)
    fitted = fit_to_limit(Evaluation(requests=[request(50_000)]), envelope(b"{}"), limit)
    assert fitted.requests == [] and fitted.matched
    [(letter, value)] = fitted.dead_letters
    assert value == letter.to_bytes()
    assert letter.stage == "size" and letter.handler == "h" and letter.actionIndex == 0
    assert "alarms/2@7" in letter.reason and str(limit) in letter.reason
    assert letter.value is not None  # the original value still fits


def test_a_dead_letter_over_the_limit_keeps_everything_but_the_value() -> None:
    raw = b"z" * 50_000
    letter = for_envelope(envelope(raw), "decode", "not UTF-8")
    fitted = fit_to_limit(Evaluation(dead_letters=[letter]), envelope(raw), 10_000)
    [(small, value)] = fitted.dead_letters
    assert small.value is None
    assert small.reason.startswith("not UTF-8") and "50000 bytes" in small.reason
    assert value == small.to_bytes() and len(value) < 10_000


def test_the_producer_batch_stays_under_the_request_size_and_every_topic_limit() -> None:
    """A batch is one message set to the broker, checked against max.message.bytes."""
    assert batch_limit(1_000_000, 1_048_576) == 1_000_000  # the setting, when it fits
    assert batch_limit(1_000_000, 524_288) == 524_288 - RECORD_OVERHEAD
    assert batch_limit(1_000_000, 1_048_576, [1_048_588, 60_000]) == 60_000 - RECORD_OVERHEAD
    assert batch_limit(16_384, 1_048_576, [60_000]) == 16_384
