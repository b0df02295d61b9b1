"""The dead-letter record: what failed, why, and everything needed to replay it.

One dead-letter topic per integration (`<prefix>-dlq-<integration>`). The record key is the
original record's key; the value is JSON:

    {"stage": "decode" | "condition" | "template" | "delivery",
     "reason": "...", "handler": name | null, "action": type | null, "actionIndex": n | null,
     "integration": "...", "failedAt": ms, "attempts": n,
     "source": {"topic", "partition", "offset", "timestamp", "key" (base64), "headers"},
     "value": base64 of the original value bytes | null,
     "request": the action request (delivery stage only)}

Headers `herald-dlq-stage` and `herald-dlq-reason` repeat the first two fields so tools like
kcat can filter without parsing. Replay (`herald replay`) re-runs the source stage for decode,
condition and template failures (same message identity, so already-delivered actions are
skipped) and re-submits the action request for delivery failures.
"""

from __future__ import annotations

import base64
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from streams import codecs
from streams.message import Envelope

STAGES = ("decode", "condition", "template", "delivery")


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

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> DeadLetter:
        return cls(**orjson.loads(data))

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("herald-dlq-stage", self.stage.encode()),
            ("herald-dlq-reason", self.reason[:500].encode("utf-8", errors="replace")),
        ]

    @property
    def key(self) -> bytes | None:
        return unb64(self.source.get("key"))


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
