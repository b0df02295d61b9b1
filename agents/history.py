"""Each worker's execution history: the records of the executions, dead-letter and audit
topics, read by a consumer of its own and kept in memory (streams.history).

The consumer belongs to no consumer group: it is assigned every partition of those topics
and reads them all, so every worker holds the same records and any worker answers any
history query (agents.admin.history_api) as every other would. At start it seeks each
executions and dead-letter partition to the first record of the retention window
(`offsets_for_times(now - executionRetentionSeconds)`, the log start where the broker does
not answer that) and the audit topic to its beginning; then it follows the topics. Until it
has read what was there at start (`caught_up`), the API says the history is still being read
rather than answer with part of it.

Bounded: at most `executionHistoryMaxRecords` records of executions and dead letters, and as
many audit records, none older than the retention (audit records are kept by count only: the
audit topic keeps them as long as the broker's retention says).

Nothing here stops the worker: a failed start, fetch or lookup is logged, and the consumer is
started again after a backoff (1 s doubling to 30 s), from where it was.

Condition-false results are counted per handler for every record, also those no execution
record is written for: the source stage adds them to the worker's counters
(`agents.counters.Counters.skipped_by` and `matched_by`, also served on /metrics), and
`counts` reads them for the history's answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.retention import check_retention
from streams.config.models import HeraldConfig
from streams.history import (
    HistoryIndex,
    audit_entry,
    execution_entry,
    letter_entry,
)
from streams.security import aiokafka_kwargs
from streams.topicnames import audit_name, dlq_name, executions_name

log = logging.getLogger("herald.history")

#: The longest wait between two attempts to start the consumer again.
RETRY_MAX_SECONDS = 30.0
#: Each fetch waits at most this long, so a stop is not late.
POLL_MS = 500
#: Records taken per fetch.
MAX_RECORDS = 2000


def _now_ms() -> int:
    return int(time.time() * 1000)


def register_history(app: faust.App, runtime: Any) -> None:
    """Check the executions topic's retention, and with the admin API keep the execution
    history (`runtime.history`), both once the worker declared its topics (the handlers are
    loaded after that)."""
    config = runtime.config
    ready: asyncio.Event = runtime.rules.ready

    @app.task
    async def check_execution_retention() -> None:
        await ready.wait()
        topic = runtime.topics.executions.get_topic_name()
        await check_retention(config.home, topic, config.herald.executionRetentionSeconds)

    if config.herald.admin is None:
        return
    history = runtime.history = History(config, with_audit=True, counters=runtime.counters)

    @app.task
    async def keep_history() -> None:
        await history.run(ready)


class History:
    """The consumer and the indexes of one worker's execution history."""

    def __init__(
        self,
        config: HeraldConfig,
        *,
        with_audit: bool,
        counters: Any = None,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        settings = config.herald
        self.config = config
        self.retention_ms = max(1, int(settings.executionRetentionSeconds * 1000))
        limit = settings.executionHistoryMaxRecords
        self.records = HistoryIndex(limit, self.retention_ms)
        self.audit = HistoryIndex(limit, None)
        self.clock = clock
        self.executions_topic = executions_name(config)
        self.letter_topics = {dlq_name(config, i.name) for i in config.integrations}
        self.audit_topic = audit_name(config) if with_audit else None
        self.counters = counters  # agents.counters.Counters
        self._consumer: AIOKafkaConsumer | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._ends: dict[TopicPartition, int] = {}
        self._stopping = False
        self.caught_up = False
        self.state = "starting"
        self.error: str | None = None
        self.skipped = 0  # records that were not JSON of the expected shape

    # -- counts ------------------------------------------------------------------------

    def counts(self, handler: str) -> dict[str, Any]:
        """This worker's counts of a handler since it started, for the partitions it
        consumed: records whose condition was true (`matched`) and false
        (`conditionFalse`). Other workers count theirs."""
        matched = getattr(self.counters, "matched_by", None)
        skipped = getattr(self.counters, "skipped_by", None)
        if matched is None or skipped is None:
            return {"matched": None, "conditionFalse": None, "scope": "not counted"}
        return {
            "matched": _sum_for(matched, handler),
            "conditionFalse": _sum_for(skipped, handler),
            "scope": "this worker, since it started",
        }

    # -- the consumer ------------------------------------------------------------------

    def topics(self) -> list[str]:
        names = [self.executions_topic, *sorted(self.letter_topics)]
        return [*names, self.audit_topic] if self.audit_topic else names

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Read the topics into the indexes until stopped; never raises (but cancelled)."""
        try:
            if ready is not None:
                await ready.wait()  # the worker declared the topics
            await self._loop()
        finally:  # a stop cancels the task: the consumer is closed all the same
            await self._close()

    async def _loop(self) -> None:
        delay = 1.0
        while not self._stopping:
            try:
                if self._consumer is None:
                    await self._open()
                await self._fetch()
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping:
                    break
                self.state, self.error = "error", repr(exc)
                log.warning(
                    "execution history: %r; reading again in %.0f s from where it was",
                    exc,
                    delay,
                )
                await self._close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def stop(self) -> None:
        self._stopping = True
        await self._close()

    async def _open(self) -> None:
        home = self.config.home
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="herald-history",
            fetch_max_wait_ms=self.config.herald.fetchMaxWaitMs,
            max_partition_fetch_bytes=max(1 << 20, home.maxRequestSize + (64 << 10)),
            **aiokafka_kwargs(home),
        )
        try:
            await consumer.start()
            partitions = await self._partitions(consumer)
            consumer.assign(partitions)
            await self._position(consumer, partitions)
        except BaseException:
            with contextlib.suppress(Exception):
                await consumer.stop()
            raise
        self._consumer = consumer
        self.state, self.error = "reading", None
        log.info(
            "execution history: reading %s (%d partitions)",
            ", ".join(self.topics()),
            len(partitions),
        )

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        # Fresh metadata of every topic: the consumer's own cache holds only assigned ones
        # (what `consumer.topics()` reads, with the partitions).
        cluster = await consumer._client.fetch_all_metadata()
        partitions: list[TopicPartition] = []
        missing: list[str] = []
        for topic in self.topics():
            found = cluster.partitions_for_topic(topic)
            if not found:
                missing.append(topic)
                continue
            partitions += [TopicPartition(topic, p) for p in sorted(found)]
        if missing:
            raise LookupError(f"topics not there yet: {', '.join(missing)}")
        return partitions

    async def _position(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        """Seek every partition: where it was (after a restart of the consumer), else the
        retention window's first record (the audit topic: its beginning)."""
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        new = [tp for tp in partitions if tp not in self._positions]
        windowed = [tp for tp in new if tp.topic != self.audit_topic]
        at: dict[TopicPartition, Any] = {}
        if windowed:
            since = self.clock() - self.retention_ms
            try:
                at = await consumer.offsets_for_times({tp: since for tp in windowed})
            except Exception as exc:  # a broker without ListOffsets by time: read it all
                log.info("execution history: no offsets by time (%r); reading from the start", exc)
        for tp in new:
            found = at.get(tp)
            if found is not None:
                self._positions[tp] = found.offset
            elif tp in at:  # no record at or after the time: nothing in the window yet
                self._positions[tp] = ends[tp]
            else:
                self._positions[tp] = starts[tp]
        for tp in partitions:
            position = max(self._positions[tp], starts[tp])  # retention may have moved on
            self._positions[tp] = position
            consumer.seek(tp, position)
        if not self.caught_up:
            self._ends = {tp: ends[tp] for tp in partitions}
            self._check_caught_up()

    async def _fetch(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_RECORDS)
        now = self.clock()
        for tp, records in batches.items():
            for record in records:
                self.take(
                    tp.topic, tp.partition, record.offset, record.value, record.timestamp, now
                )
            if records:
                self._positions[tp] = records[-1].offset + 1
        self.records.expire(now)
        if not self.caught_up:
            for tp in self._ends:  # a partition with nothing fetched: where is it?
                if self._positions.get(tp, 0) < self._ends[tp] and tp not in batches:
                    self._positions[tp] = max(self._positions[tp], await consumer.position(tp))
            self._check_caught_up()

    def _check_caught_up(self) -> None:
        if all(self._positions.get(tp, 0) >= end for tp, end in self._ends.items()):
            self.caught_up = True
            log.info(
                "execution history: caught up (%d records, %d audit records)",
                len(self.records),
                len(self.audit),
            )

    def take(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        timestamp: int | None,
        now: int,
    ) -> None:
        """Index one record of one of the topics; one that is not of its topic's shape is
        counted and passed over."""
        fallback = timestamp if isinstance(timestamp, int) and timestamp >= 0 else now
        entry = None
        try:
            data = orjson.loads(value) if value is not None else None
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            if topic == self.executions_topic:
                entry = execution_entry(data, fallback)
            elif topic == self.audit_topic:
                entry = audit_entry(data, topic, partition, offset)
            elif topic in self.letter_topics:
                entry = letter_entry(data, fallback)
        if entry is None:
            self.skipped += 1
            return
        (self.audit if entry.kind == "audit" else self.records).add(entry, now)

    async def _close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "error": self.error,
            "caughtUp": self.caught_up,
            "records": len(self.records),
            "auditRecords": len(self.audit),
            "evictedBySize": self.records.evicted_by_size,
            "evictedByAge": self.records.evicted_by_age,
            "skipped": self.skipped,
        }


def _sum_for(by: dict[tuple[str, ...], int], handler: str) -> int:
    """A handler's count over its (integration, handler) keys."""
    return sum(count for key, count in list(by.items()) if key[1] == handler)
