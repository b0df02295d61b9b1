"""Read a source record back by its coordinates, for a delivery dead letter's `value`.

An action request carries its source record's coordinates (integration, topic, partition,
offset), not its bytes: copying every value into `<prefix>-actions` would double what the hot
path writes for the rare request that fails. So when the sink dead-letters a delivery it reads
the original record back from the source topic, with a consumer of its own (no group, nothing
committed, created on the first dead letter), and the letter holds the bytes as they were
consumed, like the letters of every other stage.

Each read is bounded (`READ_TIMEOUT_SECONDS`): a letter is not held up longer than that. When
the record cannot be read, the letter's value is null and its `valueMissing` says why: the
offset is below the log start (retention removed it), no record is left at that offset
(compaction), the record has no value (a tombstone), or the read failed or timed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.config.models import HeraldConfig
from streams.security import aiokafka_kwargs

log = logging.getLogger("herald.readback")

READ_TIMEOUT_SECONDS = 10.0


class _Consumer(Protocol):
    """What `read_at` needs of an aiokafka consumer (a fake in unit tests)."""

    def assign(self, partitions: list[TopicPartition]) -> None: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict: ...
    async def end_offsets(self, partitions: list[TopicPartition]) -> dict: ...
    async def getmany(self, *partitions: TopicPartition, **kwargs: Any) -> dict: ...


async def read_at(
    consumer: _Consumer, tp: TopicPartition, offset: int
) -> tuple[bytes | None, str | None]:
    """The value of the record at `offset` of `tp`, or None and why it cannot be had."""
    where = f"{tp.topic}/{tp.partition}@{offset}"
    consumer.assign([tp])
    first = (await consumer.beginning_offsets([tp]))[tp]
    if offset < first:
        return None, (
            f"the source record {where} is no longer in the topic (its log starts at "
            f"{first}: retention removed it)"
        )
    end = (await consumer.end_offsets([tp]))[tp]
    if offset >= end:
        return None, f"the source record {where} is beyond the end of its log ({end})"
    consumer.seek(tp, offset)
    while True:
        records = (await consumer.getmany(tp, timeout_ms=500, max_records=1)).get(tp) or []
        if not records:
            continue
        record = records[0]
        if record.offset != offset:
            return None, (
                f"no record is left at {where} (compacted or removed; the next one is at "
                f"{record.offset})"
            )
        if record.value is None:
            return None, f"the source record {where} has no value (a tombstone)"
        return record.value, None


class SourceReader:
    """One read-back consumer per integration, used one read at a time."""

    def __init__(self, config: HeraldConfig, timeout: float = READ_TIMEOUT_SECONDS) -> None:
        self.config = config
        self.timeout = timeout
        self._consumers: dict[str, AIOKafkaConsumer] = {}
        self._lock = asyncio.Lock()

    async def read(
        self, integration: str, topic: str, partition: int, offset: int
    ) -> tuple[bytes | None, str | None]:
        """(value, None), or (None, why not), within `timeout` (waiting for another read
        included); never raises but CancelledError."""
        where = f"{topic}/{partition}@{offset}"
        timed_out = f"reading the source record {where} back timed out after {self.timeout:g} s"
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._lock.acquire()
        except TimeoutError:
            return None, timed_out
        try:
            async with asyncio.timeout_at(deadline):
                consumer = await self._consumer(integration)
                return await read_at(consumer, TopicPartition(topic, partition), offset)
        except TimeoutError:
            await self._drop(integration)
            return None, timed_out
        except Exception as exc:
            await self._drop(integration)
            return None, f"the source record {where} could not be read back: {exc!r}"
        finally:
            self._lock.release()

    async def _consumer(self, integration: str) -> AIOKafkaConsumer:
        consumer = self._consumers.get(integration)
        if consumer is None:
            consumer = AIOKafkaConsumer(
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=100,
                client_id=f"herald-readback-{integration}",
                **aiokafka_kwargs(self.config.integration(integration)),
            )
            self._consumers[integration] = consumer
            await consumer.start()
        return consumer

    async def _drop(self, integration: str) -> None:
        """Forget a consumer that failed or timed out: the next read starts a fresh one."""
        consumer = self._consumers.pop(integration, None)
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def close(self) -> None:
        for name in list(self._consumers):
            await self._drop(name)
