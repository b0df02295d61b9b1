"""Dead letters carry a stable identity: the same for every repeat of a failure (a batch
dead-lettered again after a crash), different for any other failure."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from streams.deadletter import DeadLetter, for_envelope
from streams.message import Envelope


def envelope(offset: int = 12, partition: int = 3, topic: str = "alarms") -> Envelope:
    return Envelope(
        value=None,
        topic=topic,
        partition=partition,
        offset=offset,
        integration="local",
        key="k",
        headers={},
        timestamp=1_700_000_000_000,
        raw_value=b"{}",
        raw_key=b"k",
    )


def template_letter(**changes: Any) -> DeadLetter:
    kwargs: dict[str, Any] = {"handler": "h", "action": "webhook", "index": 1}
    env_changes = {k: changes.pop(k) for k in ("offset", "partition", "topic") if k in changes}
    kwargs.update(changes)
    stage = kwargs.pop("stage", "template")
    return for_envelope(envelope(**env_changes), stage, kwargs.pop("reason", "bad"), **kwargs)


def delivery_letter(request_id: str, reason: str = "HTTP 400", attempts: int = 1) -> DeadLetter:
    return DeadLetter(
        stage="delivery",
        reason=reason,
        integration="local",
        source={"topic": "alarms", "partition": 3, "offset": 12, "headers": {}},
        value=None,
        handler="h",
        action="webhook",
        actionIndex=1,
        attempts=attempts,
        failedAt=123,
        request={"id": request_id, "handler": "h", "index": 1},
    )


def test_a_repeat_of_a_failure_has_the_same_id() -> None:
    first = template_letter()
    again = template_letter(reason="bad, said differently")  # later, another text
    again.failedAt += 5_000

    assert len(first.id) == 32
    assert again.id == first.id
    assert delivery_letter("r1").id == delivery_letter("r1", "HTTP 400: other", 3).id


@pytest.mark.parametrize(
    "changes",
    [
        {"offset": 13},
        {"partition": 4},
        {"topic": "other"},
        {"handler": "h2"},
        {"index": 2},
        {"stage": "condition"},
    ],
)
def test_any_other_failure_has_another_id(changes: dict[str, Any]) -> None:
    assert template_letter(**changes).id != template_letter().id


def test_delivery_letters_are_identified_by_their_request() -> None:
    assert delivery_letter("r1").id != delivery_letter("r2").id
    assert delivery_letter("r1").id != template_letter().id


def test_id_is_in_the_record_and_its_header_and_survives_a_round_trip() -> None:
    letter = template_letter()

    data = letter.to_bytes()
    again = DeadLetter.from_bytes(data)

    assert orjson.loads(data)["id"] == letter.id == again.id
    assert ("herald-dlq-id", letter.id.encode()) in letter.headers()
    # a letter cut down to fit the producer's limit is still the same failure
    assert dataclasses.replace(letter, value=None, reason="shortened").id == letter.id


def test_a_letter_written_before_ids_gets_the_same_id_when_read() -> None:
    letter = template_letter()
    old = orjson.loads(letter.to_bytes())
    del old["id"]

    assert DeadLetter.from_bytes(orjson.dumps(old)).id == letter.id
