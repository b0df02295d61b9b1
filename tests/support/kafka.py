"""Synchronous Kafka helpers for tests, built on aiokafka.

Each helper runs its own event loop (``asyncio.run``, or a helper thread when the caller already
runs a loop), so plain synchronous tests can produce and read records without fixtures of their
own. They talk to the real broker; nothing here is mocked.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.embedded.broker import create_topics, create_topics_async, run_sync

__all__ = [
    "ConsumedRecord",
    "committed_lag",
    "consume",
    "consume_async",
    "create_topic",
    "create_topics",
    "create_topics_async",
    "produce",
    "produce_async",
]

Value = bytes | str | dict[str, Any] | list[Any] | None


class ConsumedRecord(TypedDict):
    """A record as read back, with the raw bytes and, when the value is JSON, the parsed form."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    json: Any


def _to_bytes(value: Value) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()


def _headers(headers: Mapping[str, str | bytes] | None) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    return [(k, v if isinstance(v, bytes) else str(v).encode()) for k, v in headers.items()]


def create_topic(bootstrap: str, name: str, partitions: int = 1, timeout: float = 10.0) -> None:
    """Create one topic (no error if it exists): tansu would otherwise auto-create it with 4."""
    create_topics(bootstrap, {name: partitions}, timeout=timeout)


async def produce_async(
    bootstrap: str,
    topic: str,
    records: Iterable[Mapping[str, Any]],
    *,
    timeout: float = 30.0,
    client_kwargs: Mapping[str, Any] | None = None,
) -> list[tuple[int, int]]:
    """Send ``records`` in order and wait for every ack; return ``(partition, offset)`` each.

    A record is ``{"key": str|bytes|None, "value": bytes|str|dict|list|None,
    "headers": {name: str|bytes}, "partition": int|None}``; every field is optional and a
    dict/list value is sent as JSON. ``client_kwargs``: extra aiokafka settings (security).
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=0, **dict(client_kwargs or {})
    )
    try:
        await asyncio.wait_for(producer.start(), timeout)
        futures = [
            await producer.send(
                topic,
                value=_to_bytes(record.get("value")),
                key=_to_bytes(record.get("key")),
                headers=_headers(record.get("headers")),
                partition=record.get("partition"),
            )
            for record in records
        ]
        metadata = await asyncio.wait_for(asyncio.gather(*futures), timeout)
        return [(m.partition, m.offset) for m in metadata]
    finally:
        await producer.stop()


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[Mapping[str, Any]],
    *,
    timeout: float = 30.0,
    client_kwargs: Mapping[str, Any] | None = None,
) -> list[tuple[int, int]]:
    """Synchronous :func:`produce_async`."""
    records = list(records)
    return run_sync(
        lambda: produce_async(
            bootstrap, topic, records, timeout=timeout, client_kwargs=client_kwargs
        )
    )


async def consume_async(
    bootstrap: str,
    topic: str,
    count: int,
    timeout: float = 10.0,
    client_kwargs: Mapping[str, Any] | None = None,
) -> list[ConsumedRecord]:
    """Read ``topic`` from the beginning of every partition until ``count`` records or timeout.

    Uses no consumer group (partitions are assigned manually), so it commits nothing, does not
    wait for a group join and cannot disturb the consumers under test. On timeout it returns
    what it has; the caller asserts. Records come sorted by (partition, offset) within each
    fetch, not globally by time.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=f"test-consume-{uuid.uuid4().hex[:8]}",
        **dict(client_kwargs or {}),
    )
    out: list[ConsumedRecord] = []
    deadline = time.monotonic() + timeout
    try:
        await asyncio.wait_for(consumer.start(), timeout)
        partitions = await _partitions(consumer, topic, deadline)
        if not partitions:
            return out
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        while len(out) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            batch = await consumer.getmany(timeout_ms=int(min(remaining, 0.5) * 1000))
            for tp in sorted(batch, key=lambda tp: tp.partition):
                for msg in batch[tp]:
                    out.append(_record(msg))
        return out
    finally:
        await consumer.stop()


async def _partitions(
    consumer: AIOKafkaConsumer, topic: str, deadline: float
) -> list[TopicPartition]:
    # Waits for the topic to exist instead of naming it in a metadata request: naming it
    # would make tansu auto-create it (with 4 partitions) before the code under test does.
    while True:
        # consumer.topics() does the same request but keeps only the names, so ask the
        # consumer's client (private, but the very call topics() makes) for the partitions.
        cluster = await consumer._client.fetch_all_metadata()
        partitions = cluster.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        if time.monotonic() >= deadline:
            return []
        await asyncio.sleep(0.1)


def _record(msg: Any) -> ConsumedRecord:
    value: bytes | None = msg.value
    parsed: Any = None
    if value:
        try:
            parsed = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            parsed = None
    return ConsumedRecord(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        timestamp=msg.timestamp,
        key=msg.key,
        value=value,
        headers={k: bytes(v) for k, v in (msg.headers or ())},
        json=parsed,
    )


def consume(
    bootstrap: str,
    topic: str,
    count: int,
    timeout: float = 10.0,
    client_kwargs: Mapping[str, Any] | None = None,
) -> list[ConsumedRecord]:
    """Synchronous :func:`consume_async`."""
    return run_sync(lambda: consume_async(bootstrap, topic, count, timeout, client_kwargs))


async def committed_lag_async(bootstrap: str, group: str, topic: str) -> int | None:
    """Records of ``topic`` past ``group``'s committed offsets (a partition without a commit
    counts from 0); None when the group committed nothing of the topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic, time.monotonic() + 10)
        ends = await consumer.end_offsets(tps)
        committed = [await consumer.committed(tp) for tp in tps]
        if all(offset is None for offset in committed):
            return None
        pairs = zip(tps, committed, strict=True)
        return sum(max(0, ends[tp] - (offset or 0)) for tp, offset in pairs)
    finally:
        await consumer.stop()


def committed_lag(bootstrap: str, group: str, topic: str) -> int | None:
    """Synchronous :func:`committed_lag_async`. It reads the committed offsets without joining
    the group (a consumer with a group id joins only when it subscribes)."""
    return run_sync(lambda: committed_lag_async(bootstrap, group, topic))
