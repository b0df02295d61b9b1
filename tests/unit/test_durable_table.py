"""`DurableTable.put_through`'s persisted offsets: written coalesced, never ahead of the store.

The offset persisted in a partition's RocksDB store is where its recovery starts reading the
changelog. Faust writes it after every acknowledged record; `put_through` writes the highest
acknowledged offset at most every `PERSIST_EVERY_SECONDS` per partition, not at all for a
partition whose store is closed (revoked), and every pending one when the table stops.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from agents import tables
from agents.tables import DurableTable


class Store:
    """The table's store as `put_through` uses it: per-partition stores, the persisted offset."""

    def __init__(self, partitions: set[int]) -> None:
        self._dbs = {p: {} for p in partitions}
        self._key_index: dict[bytes, int] = {}
        self.persisted: list[tuple[int, int]] = []

    def _db_for_partition(self, partition: int) -> Any:
        return SimpleNamespace(put=self._dbs.setdefault(partition, {}).__setitem__)

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted.append((tp.partition, offset))


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, int]] = []
        self.futures: list[asyncio.Future] = []

    async def send(self, topic: str, key: bytes, value: bytes, partition: int, *_: Any) -> Any:
        self.sent.append((topic, key, value, partition))
        fut = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut


def table(partitions: set[int]) -> Any:
    """A DurableTable's state and methods without a Faust app."""
    fake = SimpleNamespace(
        data=Store(partitions),
        app=SimpleNamespace(producer=Producer()),
        changelog_topic=SimpleNamespace(get_topic_name=lambda: "app-dedupe-changelog"),
        _changelog_name=None,
        _unpersisted={},
        _persisted_at={},
    )
    for name in ("put_through", "_acknowledged", "_persist", "persist_pending"):
        setattr(fake, name, getattr(DurableTable, name).__get__(fake))
    return fake


def ack(fut: asyncio.Future, partition: int, offset: int) -> None:
    fut.set_result(SimpleNamespace(partition=partition, offset=offset))


def test_a_write_goes_to_the_store_and_the_changelog_partition_and_its_ack_is_persisted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(tables.time, "monotonic", lambda: clock[0])
    t = table({3})

    async def scenario() -> None:
        fut = await t.put_through(3, b"d1", b"1000")
        assert t.data._dbs[3] == {b"d1": b"1000"} and t.data._key_index == {b"d1": 3}
        assert t.app.producer.sent == [("app-dedupe-changelog", b"d1", b"1000", 3)]
        assert not t.data.persisted  # nothing acknowledged, nothing persisted
        ack(fut, 3, 41)
        await asyncio.sleep(0)  # the done callback

        # acknowledged within the interval: kept, not written
        clock[0] += 0.1
        ack(await t.put_through(3, b"d2", b"1001"), 3, 42)
        ack(await t.put_through(3, b"d3", b"1002"), 3, 43)
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert t.data.persisted == [(3, 41)]
    assert t._unpersisted == {3: 43}
    t.persist_pending()  # the table stops
    assert t.data.persisted == [(3, 41), (3, 43)]


def test_an_offset_acknowledged_out_of_order_never_moves_the_pending_one_back() -> None:
    t = table({0})

    async def scenario() -> None:
        first = await t.put_through(0, b"a", b"1")
        second = await t.put_through(0, b"b", b"2")
        t._persisted_at[0] = float("inf")  # hold the writes: only the pending offset moves
        ack(second, 0, 8)
        ack(first, 0, 7)
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert t._unpersisted == {0: 8}


def test_a_revoked_partition_is_not_persisted_and_a_failed_write_is_not_counted() -> None:
    t = table({1})

    async def scenario() -> None:
        kept = await t.put_through(1, b"a", b"1")
        failed = await t.put_through(1, b"b", b"2")
        failed.set_exception(RuntimeError("broker down"))
        t.data._dbs.pop(1)  # revoked: Faust closed its store
        ack(kept, 1, 5)
        await asyncio.sleep(0)
        failed.exception()  # retrieved, as the sink's lane does

    asyncio.run(scenario())
    assert t.data.persisted == []  # the next owner recovers from what was persisted before


def test_a_send_that_raises_comes_back_as_the_writes_failure() -> None:
    """As with Faust's send_soon, a producer that refuses at once fails the returned write
    (the sink counts the delivery done and logs the mark unconfirmed) instead of raising into
    the delivery, which would dead-letter a delivered record."""
    t = table({0})

    async def refuse(*_: Any) -> Any:
        raise RuntimeError("producer closed")

    t.app.producer.send = refuse

    async def scenario() -> BaseException | None:
        fut = await t.put_through(0, b"a", b"1")
        return fut.exception()

    assert isinstance(asyncio.run(scenario()), RuntimeError)
