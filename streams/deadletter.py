"""The dead-letter record: what failed, why, and everything needed to replay it.

One dead-letter topic per integration (`<prefix>-dlq-<integration>`). The record key is the
original record's key; the value is JSON:

    {"id": "...", "stage": "decode" | "condition" | "template" | "delivery" | "size" | "internal"
               | "fetch",
     "reason": "...", "handler": name | null, "action": type | null, "actionIndex": n | null,
     "integration": "...", "failedAt": ms, "attempts": n,
     "source": {"topic", "partition", "offset", "timestamp", "key" (base64), "headers"},
     "value": base64 of the original value bytes | null,
     "request": the action request (delivery stage only),
     "valueMissing": why `value` is null when the original bytes could not be had | null}

`id` is the failure's stable identity: a hash of what identifies it (stage, integration,
source topic/partition/offset, handler, action index and, when the letter carries an action
request, the request's delivery id), never of when or how often it happened. A crash
mid-batch writes that batch's dead letters again on restart; the repeats carry the same `id`
(and `herald-dlq-id` header), so a reader keeps one per id. A replayed record or request that
fails again at the same point gets the same id as well: the id names the failed action, and
`failedAt`/`attempts` tell occurrences apart.

No secret reaches a dead letter: the reason, the handler and action names, the source
headers and the request are scrubbed of every registered secret value (`streams.secrets`)
when the letter is built, whatever text carries it (a receiver's error body echoing the
request, an exception message). The original key and value bytes are kept as they were read,
for replay. A secret written in a handler's action parameters (rather than on its target,
where delivery adds it) is masked in the letter's request too, so replaying that request
sends the mask: keep credentials on targets.

Headers `herald-dlq-id`, `herald-dlq-stage` and `herald-dlq-reason` repeat those fields so
tools like kcat can filter without parsing. Replay (`herald replay`) re-runs the source stage
for decode, condition and template failures (same message identity, so already-delivered
actions are skipped) and re-submits the action request for delivery failures.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from streams import codecs
from streams.message import Envelope
from streams.secrets import SCRUBBER

STAGES = ("decode", "condition", "template", "delivery", "size", "internal", "fetch")


def b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


@dataclass(slots=True)
class DeadLetter:
    stage: str
    reason: str
    integration: str
    source: dict[str, Any]
    value: str | None
    handler: str | None = None
    action: str | None = None
    actionIndex: int | None = None
    attempts: int = 0
    failedAt: int = 0
    request: dict[str, Any] | None = None
    id: str = ""
    valueMissing: str | None = None  # why `value` is null (a delivery letter's read-back)

    def __post_init__(self) -> None:
        # Every letter is built here (the source, the sink, replay, `dataclasses.replace`), so
        # this is the one place its identity is set and its text is scrubbed.
        if not self.id:
            self.id = letter_id(self)
        scrub = SCRUBBER.scrub_data
        self.reason = scrub(self.reason)
        self.handler = scrub(self.handler)
        self.action = scrub(self.action)
        if self.source.get("headers"):
            self.source = {**self.source, "headers": scrub(self.source["headers"])}
        if self.request is not None:
            self.request = scrub(self.request)

    def to_bytes(self) -> bytes:
        data = asdict(self)
        return orjson.dumps({"id": data.pop("id"), **data})

    @classmethod
    def from_bytes(cls, data: bytes) -> DeadLetter:
        return cls(**orjson.loads(data))

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("herald-dlq-id", self.id.encode()),
            ("herald-dlq-stage", self.stage.encode()),
            ("herald-dlq-reason", self.reason[:500].encode("utf-8", errors="replace")),
        ]

    @property
    def key(self) -> bytes | None:
        return unb64(self.source.get("key"))


def letter_id(letter: DeadLetter) -> str:
    """The stable identity of a failure: the same for every repeat of it (a batch dead-lettered
    again after a crash), different for any other failure. Derived only from what identifies
    the failure, never from the time, the reason text or the attempts."""
    source = letter.source
    request = letter.request or {}
    parts = [
        letter.stage,
        letter.integration,
        source.get("topic"),
        source.get("partition"),
        source.get("offset"),
        letter.handler,
        letter.actionIndex,
        request.get("id"),  # the delivery id: integration/topic/partition/offset, handler, index
    ]
    digest = hashlib.sha256(orjson.dumps(parts)).hexdigest()
    return digest[:32]


def source_of(envelope: Envelope) -> dict[str, Any]:
    """The source coordinates of a record, as kept in dead letters and action requests."""
    return {
        "topic": envelope.topic,
        "partition": envelope.partition,
        "offset": envelope.offset,
        "timestamp": envelope.timestamp,
        "key": b64(envelope.raw_key),
        "headers": envelope.headers,
    }


def for_envelope(
    envelope: Envelope,
    stage: str,
    reason: str,
    *,
    handler: str | None = None,
    action: str | None = None,
    index: int | None = None,
) -> DeadLetter:
    return DeadLetter(
        stage=stage,
        reason=reason,
        integration=envelope.integration,
        source=source_of(envelope),
        value=b64(envelope.raw_value),
        handler=handler,
        action=action,
        actionIndex=index,
        failedAt=int(time.time() * 1000),
    )


def envelope_of(letter: DeadLetter, value: Any) -> Envelope:
    """Rebuild the envelope of a dead-lettered record (for replay), with its original identity."""
    source = letter.source
    raw_key = unb64(source.get("key"))
    return Envelope(
        value=value,
        topic=source["topic"],
        partition=source["partition"],
        offset=source["offset"],
        integration=letter.integration,
        key=codecs.decode_key(raw_key),  # as the source agent shows it
        headers=dict(source.get("headers") or {}),
        timestamp=source.get("timestamp"),
        raw_value=unb64(letter.value),
        raw_key=raw_key,
    )
