"""Sending one record alone, in a producer batch of its own.

Why alone: the broker applies a topic's `max.message.bytes` to each producer batch as a whole
and refuses the whole batch with MESSAGE_TOO_LARGE, so one oversized record (a limit lowered
while the worker runs) makes every record that shared its batch fail with
`MessageSizeTooLargeError` too. Herald's batches hold up to `herald.producerBatchBytes`, so a
refused batch can carry hundreds of records that were each well within the limit. Before a
refusal is taken to be the record's own (a dead letter, a permanent failure), the record is
sent again in a batch of its own; only a refusal of that says the record itself is too large.
(Kafka's Java producer splits a refused batch the same way; aiokafka does not.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

Headers = list[tuple[str, bytes]] | None


async def send_alone(
    producer: AIOKafkaProducer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    partition: int | None = None,
    timestamp: float | None = None,
    headers: Headers = None,
) -> asyncio.Future:
    """`producer.send`, with the record in a batch of its own, to the partition `send` would
    choose (the key's, so a key's order holds); the future is the broker's acknowledgement
    of that batch (its metadata: the batch's offset is the record's)."""
    # The producer's own check of `max_request_size` first, as `send` makes it: a record
    # over the client's limit is refused here, never sent.
    producer._serialize(key, value, headers or [])
    await producer.partitions_for(topic)  # the topic's metadata, as `send` waits for it
    # aiokafka's own choice of partition for `send` (its partitioner, the key as bytes).
    chosen: int = producer._partition(topic, partition, key, value, key, value)
    batch: Any = producer.create_batch()
    timestamp_ms = int(timestamp * 1000) if timestamp else None
    added = batch.append(key=key, value=value, timestamp=timestamp_ms, headers=headers or [])
    if added is None:
        raise MessageSizeTooLargeError(
            f"the record ({len(key or b'') + len(value or b'')} bytes) does not fit in a "
            "producer batch"
        )
    return await producer.send_batch(batch, topic, partition=chosen)


def too_large(exc: BaseException) -> bool:
    """A refusal as too large, also as Faust's producer raises it (a `ProducerSendError`
    whose cause is aiokafka's `MessageSizeTooLargeError`)."""
    return isinstance(exc, MessageSizeTooLargeError) or isinstance(
        exc.__cause__, MessageSizeTooLargeError
    )
