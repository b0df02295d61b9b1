"""Herald's transport without a broker: the consumer's hand-over of fetched batches through
the ledger, the commit offsets it reports, and the ledger's one revoke fan-out.

A HeraldApp and its consumer are built offline (nothing connects before a worker starts), and
the consumer's methods are called as its fetch loop calls them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from agents.batches import BatchChannel
from agents.fetchguard import Unreadable
from agents.transport import HeraldApp, HeraldConsumer

SRC = TP("src", 0)
OTHER = TP("changelog", 0)


def rec(offset: int) -> SimpleNamespace:
    return SimpleNamespace(topic="src", partition=0, offset=offset, key=b"k", value=b"v")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


@pytest.fixture
def wired(loop: asyncio.AbstractEventLoop) -> tuple[HeraldApp, HeraldConsumer, BatchChannel]:
    app = HeraldApp("transport-test", broker="kafka://127.0.0.1:9", store="memory://")
    channel = BatchChannel({"src"}, 100, pause=lambda tp: None, resume=lambda tp: None)
    app.topics.add_batch_channel(app.topic("src", value_type=bytes), channel)
    consumer: HeraldConsumer = app.consumer  # type: ignore[assignment]
    consumer.highwater = lambda tp: 100  # type: ignore[method-assign] # no fetch thread here
    return app, consumer, channel


def anchored(app: HeraldApp, offset: int, generation: int = 1) -> None:
    app.ledger.assign({SRC}, generation)
    anchor, _ = app.ledger.repositions()
    app.ledger.anchored(SRC, anchor[SRC], offset)


def test_the_consumer_and_the_app_share_one_ledger(wired: Any) -> None:
    app, consumer, _ = wired
    assert consumer.ledger is app.ledger


def test_a_fetched_batch_reaches_its_channel_only_through_the_ledger(wired: Any) -> None:
    app, consumer, channel = wired
    consumer._hand_over(channel, SRC, [rec(0), rec(1)], 1, None)
    assert channel.buffered == 0  # not anchored at the committed offset yet: dropped

    anchored(app, 5)
    consumer._hand_over(channel, SRC, [rec(3), rec(4), rec(5), rec(6)], 1, None)
    assert channel.buffered == 2  # trimmed to the committed offset
    consumer._hand_over(channel, SRC, [rec(7)], 0, None)
    assert channel.buffered == 2  # fetched in another generation: dropped, sought back


def test_a_batch_topic_commits_what_the_ledger_says_and_nothing_before(
    wired: Any, loop: asyncio.AbstractEventLoop
) -> None:
    app, consumer, channel = wired
    anchored(app, 0)
    consumer._hand_over(channel, SRC, [rec(0), rec(1)], 1, None)
    consumer._hand_over(channel, SRC, [rec(2)], 1, None)
    first = loop.run_until_complete(channel.get())
    second = loop.run_until_complete(channel.get())
    assert consumer._new_offset(SRC) is None
    second.ticket.done()
    assert consumer._new_offset(SRC) is None  # the first batch is still in flight
    first.ticket.done()
    assert consumer._new_offset(SRC) == 3
    assert list(consumer._filter_tps_with_pending_acks()) == [SRC]


def test_a_revocation_reaches_the_channels_then_the_other_listeners_once(wired: Any) -> None:
    app, consumer, channel = wired
    anchored(app, 0)
    consumer._hand_over(channel, SRC, [rec(0)], 1, None)
    heard: list[tuple[set, int]] = []
    app.ledger.on_revoke(lambda tps: heard.append((tps, channel.buffered)))

    app.ledger.revoke({SRC})

    assert heard == [({SRC}, 0)]  # the channel had dropped its queued batch already
    assert consumer._new_offset(SRC) is None


def test_an_unreadable_batch_stops_only_its_partition(wired: Any) -> None:
    app, consumer, channel = wired
    anchored(app, 0)
    paused: list[Any] = []
    consumer.pause_partitions = paused.extend  # type: ignore[method-assign]
    consumer._hand_over(channel, SRC, [rec(0), rec(1)], 1, None)
    bad = Unreadable("src", 0, 2, 3, "CRC mismatch", 0.0)
    consumer.fetch_reports.append((SRC, bad))
    consumer._take_fetch_reports()

    assert app.ledger.stopped() == {SRC: bad}
    assert paused == [SRC]  # caught up to the bad batch: no more fetches of it
    consumer._hand_over(channel, SRC, [rec(2), rec(3)], 1, None)
    assert channel.buffered == 2  # nothing from the unreadable offset on


def test_source_topics_follow_the_handlers(wired: Any) -> None:
    from agents.subscriptions import SourceTopics

    app, _consumer, channel = wired
    wanted = {"alarms"}
    sources = SourceTopics(app, channel, lambda: set(wanted), ["alarms"])
    subscribed = {name for topic in app.topics._topics for name in topic.topics}
    assert {"alarms", "src"} <= subscribed

    wanted.add("pumps")  # a handler put at runtime on a new topic
    assert sources.sync() == (["pumps"], [])
    assert app.topics.batch_channel("pumps") is channel
    wanted.discard("alarms")  # its last handler removed
    assert sources.sync() == ([], ["alarms"])
    subscribed = {name for topic in app.topics._topics for name in topic.topics}
    assert "alarms" not in subscribed and "pumps" in subscribed
    # its partitions are still revoked through the ledger by the rebalance that follows
    assert app.topics.batch_channel("alarms") is channel
    assert sources.sync() == ([], [])


class _ReassignedConsumer:
    """An aiokafka consumer whose assignment moved on: it holds `assigned` only, and seeking
    anything else asserts, as aiokafka's subscription state does."""

    def __init__(self, assigned: set[TP]) -> None:
        self._assigned = assigned
        self.sought: dict[TP, int] = {}

    def assignment(self) -> set[TP]:
        return set(self._assigned)

    def seek(self, tp: TP, offset: int) -> None:
        assert tp in self._assigned
        self.sought[tp] = offset

    async def position(self, tp: TP) -> int:
        return self.sought[tp]


def test_recovery_seeks_only_partitions_still_assigned(wired: Any, loop: Any) -> None:
    _, consumer, _ = wired
    thread = consumer._new_consumer_thread()
    kafka = _ReassignedConsumer({OTHER})

    loop.run_until_complete(thread._seek_wait(kafka, {SRC: 5, OTHER: 7}))
    assert kafka.sought == {OTHER: 7}

    gone = _ReassignedConsumer(set())
    loop.run_until_complete(thread._seek_wait(gone, {SRC: 5}))  # nothing left: no error
    assert gone.sought == {}


def test_the_high_watermark_of_a_partition_gone_is_unknown_not_a_crash(wired: Any) -> None:
    _, consumer, _ = wired
    thread = consumer._new_consumer_thread()

    class Gone:
        def highwater(self, tp: TP) -> int:
            raise AssertionError("Partition is not assigned")  # aiokafka's assert

    thread._ensure_consumer = lambda: Gone()  # type: ignore[method-assign]
    assert thread.highwater(SRC) is None
