"""The envelope handlers see: a decoded message plus where it came from.

Conditions and templates see the decoded value at the root, as Orkes does. The record's
metadata (key, headers, topic, partition, offset, timestamp, integration) is reachable in one
documented place: the name `_kafka` (`${_kafka.key}` in templates, `_kafka.key` in conditions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

META_NAME = "_kafka"


@dataclass(slots=True)
class Envelope:
    """One consumed record, decoded. Treat it as immutable: it is shared by every handler of
    the record. It is not a frozen dataclass because a frozen one's `__init__` sets each field
    through `object.__setattr__`, about 3 µs per envelope against 0.5, and the source stage
    builds two per consumed record (issue 16's profile of F); nothing hashes it (its headers
    are a dict)."""

    value: Any
    topic: str
    partition: int
    offset: int
    integration: str
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timestamp: int | None = None  # milliseconds since the epoch, as Kafka gives it
    raw_value: bytes | None = None
    raw_key: bytes | None = None
    #: The value is known to hold no inline JSON (`templating.has_no_inline_json` of the JSON
    #: text it was decoded from), so it is its own `expandInlineJSON` expansion.
    flat: bool = False

    def decoded(self, value: Any, key: str | None, *, flat: bool = False) -> Envelope:
        """This envelope with its decoded value (and key). Spelled out: dataclasses.replace
        costs several µs per record on the source's hot path."""
        return Envelope(
            value,
            self.topic,
            self.partition,
            self.offset,
            self.integration,
            key,
            self.headers,
            self.timestamp,
            self.raw_value,
            self.raw_key,
            flat,
        )

    @property
    def message_id(self) -> str:
        """Stable identity of the source record: the same after any redelivery."""
        return f"{self.integration}/{self.topic}/{self.partition}/{self.offset}"

    def meta(self) -> dict[str, Any]:
        """The metadata object exposed as `_kafka` to conditions and templates."""
        return {
            "key": self.key,
            "headers": dict(self.headers),
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "integration": self.integration,
            "messageId": self.message_id,
        }
