"""Faust's producer buffer on a real broker: what `Topic.send_soon` queues (every table's
changelog write, so each dedupe mark the sink waits for) reaches the producer in one go and
in order, not one record per few turns of the event loop (agents.transport,
`HeraldApp.maybe_start_producer`).

The test counts loop turns, not time: each record took three turns through Faust's
`@stampede`-guarded `maybe_start_producer` (bench L: ~500 marks queued there, up to 1.2 s
before one was durable while the broker answered in tens of milliseconds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from agents.embedded.broker import create_topics_async
from agents.transport import HeraldApp

RECORDS = 300  # small records: all of them fit in one producer batch of the partition


async def _hand_over(bootstrap: str, name: str) -> tuple[int, list[int]]:
    """Queue RECORDS records with `send_soon`; the loop turns until the buffer is empty, and
    the offsets the broker gave them, in the order they were queued."""
    await create_topics_async(bootstrap, {name: 1})
    app = HeraldApp(f"{name}-app", broker=f"kafka://{bootstrap}", store="memory://")
    topic = app.topic(name, key_type=bytes, value_type=bytes, partitions=1)
    producer = app.producer
    await producer.start()
    try:
        # the first send starts nothing new and finds the topic's metadata
        await (await topic.send(key=b"first", value=b"0", partition=0))
        futures = [
            topic.send_soon(key=b"k%d" % i, value=b"%d" % i, partition=0) for i in range(RECORDS)
        ]
        turns = 0
        while producer.buffer.size:
            await asyncio.sleep(0)
            turns += 1
        sent = await asyncio.gather(*futures)
        return turns, [metadata.offset for metadata in sent]
    finally:
        await producer.stop()


def test_the_producer_buffer_hands_its_records_over_in_one_go_and_in_order(
    broker: Any, unique_topic: Callable[[str], str]
) -> None:
    turns, offsets = asyncio.run(_hand_over(broker.bootstrap, unique_topic("buffer")))
    assert offsets == list(range(offsets[0], offsets[0] + RECORDS))  # every one, in order
    # Faust's own path: three turns per record (900 here); Herald's: a few for the whole lot.
    assert turns < RECORDS // 10, f"{turns} loop turns to hand {RECORDS} records over"
