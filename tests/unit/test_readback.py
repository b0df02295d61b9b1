"""Reading a source record back for a delivery dead letter (agents.readback), against a fake
consumer: the value, or why there is none."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from agents.readback import read_at

TP = TopicPartition("alarms", 2)


@dataclass
class Rec:
    offset: int
    value: bytes | None


class FakeConsumer:
    """A partition holding `records` (offset -> value) from `first`; answers one per fetch."""

    def __init__(self, records: dict[int, bytes | None], first: int = 0, empty_fetches: int = 0):
        self.records = records
        self.first = first
        self.end = max(records, default=first - 1) + 1
        self.position: int | None = None
        self.empty_fetches = empty_fetches

    def assign(self, partitions: list[TopicPartition]) -> None:
        assert partitions == [TP]

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.position = offset

    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict:
        return {TP: self.first}

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict:
        return {TP: self.end}

    async def getmany(self, *partitions: TopicPartition, **kwargs: Any) -> dict:
        if self.empty_fetches:
            self.empty_fetches -= 1
            return {}
        assert self.position is not None
        offset = min(o for o in self.records if o >= self.position)
        return {TP: [Rec(offset, self.records[offset])]}


def read(consumer: FakeConsumer, offset: int) -> tuple[bytes | None, str | None]:
    return asyncio.run(read_at(consumer, TP, offset))


def test_the_record_at_the_offset_is_read() -> None:
    consumer = FakeConsumer({5: b"five", 6: b'{"n": 6}', 7: b"seven"}, first=5, empty_fetches=2)

    assert read(consumer, 6) == (b'{"n": 6}', None)


def test_an_offset_before_the_log_start_was_removed_by_retention() -> None:
    value, why = read(FakeConsumer({5: b"five"}, first=5), 3)

    assert value is None
    assert why == (
        "the source record alarms/2@3 is no longer in the topic (its log starts at 5: "
        "retention removed it)"
    )


def test_an_offset_compacted_away_says_where_the_next_record_is() -> None:
    value, why = read(FakeConsumer({5: b"five", 9: b"nine"}, first=5), 7)

    assert value is None
    assert why == "no record is left at alarms/2@7 (compacted or removed; the next one is at 9)"


def test_a_tombstone_has_no_value() -> None:
    value, why = read(FakeConsumer({5: None}, first=5), 5)

    assert (value, why) == (None, "the source record alarms/2@5 has no value (a tombstone)")


def test_an_offset_past_the_end() -> None:
    value, why = read(FakeConsumer({5: b"five"}, first=5), 8)

    assert (value, why) == (None, "the source record alarms/2@8 is beyond the end of its log (6)")
