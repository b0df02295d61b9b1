"""Write record batches byte for byte, including ones no client library would write.

Kafka clients never produce a corrupt batch, but a consumer still meets them (a disk or a
proxy that damaged data, a broker that does not validate, as the embedded tansu does not).
Here batches are built with aiokafka's own `DefaultRecordBatchBuilder` and sent with a plain
`ProduceRequest`, so a test can damage one first: `corrupt_crc` flips a payload byte and
keeps the stale CRC, which every Kafka consumer checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import orjson
from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from agents.embedded.broker import run_sync


def build_batch(values: Iterable[dict], key: bytes | None = None) -> bytearray:
    """One uncompressed v2 record batch of JSON values (offsets assigned by the broker)."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 22,
    )
    for delta, value in enumerate(values):
        builder.append(delta, timestamp=None, key=key, value=orjson.dumps(value), headers=[])
    return bytearray(builder.build())


def corrupt_crc(batch: bytearray) -> bytearray:
    """Damage the last record's bytes; the batch's CRC no longer matches."""
    batch[-2] ^= 0xFF
    return batch


async def _send(bootstrap: str, topic: str, partition: int, batches: list[bytes]) -> list[int]:
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client.force_metadata_update()
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        offsets = []
        for batch in batches:
            request = ProduceRequest(
                transactional_id=None,
                required_acks=-1,
                timeout=30_000,
                topics=[(topic, [(partition, bytes(batch))])],
            )
            response = await client.send(leader, request)
            (_, [(_, error, offset, *_)]) = response.topics[0]
            if error:
                raise RuntimeError(f"the broker refused the batch: error {error}")
            offsets.append(offset)
        return offsets
    finally:
        await client.close()


def produce_batches(bootstrap: str, topic: str, partition: int, batches: list[bytes]) -> list[int]:
    """Send each batch as it is; return the base offset the broker gave each."""
    return asyncio.run(_send(bootstrap, topic, partition, batches))


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A record batch's header as the broker stores it."""

    partition: int
    base_offset: int
    compression_type: int  # 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd
    producer_id: int  # -1: not written by an idempotent producer


async def _stored(bootstrap: str, topic: str, partitions: int) -> list[StoredBatch]:
    from aiokafka.protocol.fetch import FetchRequest
    from aiokafka.record.memory_records import MemoryRecords

    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    batches: list[StoredBatch] = []
    try:
        await client.force_metadata_update()
        for partition in range(partitions):
            leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            request = FetchRequest(
                max_wait_time=100,
                min_bytes=1,
                max_bytes=50 << 20,
                isolation_level=0,
                topics=[(topic, [(partition, 0, 50 << 20)])],
            )
            response = await client.send(leader, request)
            for _topic, parts in response.topics:
                for _partition, error, _highwater, *data in parts:
                    if error:
                        raise RuntimeError(f"fetch error {error}")
                    records = MemoryRecords(data[-1])
                    while records.has_next():
                        batch = records.next_batch()
                        batches.append(
                            StoredBatch(
                                partition,
                                batch.base_offset,
                                batch.compression_type,
                                batch.producer_id,
                            )
                        )
        return batches
    finally:
        await client.close()


def stored_batches(bootstrap: str, topic: str, partitions: int) -> list[StoredBatch]:
    """Every record batch stored in `topic`, read with a plain FetchRequest so that no client
    decodes (or decompresses) them first."""
    return run_sync(lambda: _stored(bootstrap, topic, partitions))


def batch_codecs(bootstrap: str, topic: str, partitions: int) -> list[int]:
    """The compression codec of every record batch stored in `topic`."""
    return [b.compression_type for b in stored_batches(bootstrap, topic, partitions)]
