"""Herald's Faust transport: batches for Herald's agents, Faust's path for everything else.

Faust lets an app replace its transport classes (`App.transport`, `Transport.Consumer`,
`Transport.Conductor`); nothing here patches Faust's modules. What changes:

- `HeraldConductor` knows which topics are read as batches (`add_batch_channel`).
- `HeraldConsumer` takes each fetch and hands the records of those topics to their
  `BatchChannel` as whole batches, each with a ticket; the rest (table changelogs, the rules
  topic) goes through Faust's per-record path unchanged. Which batches are taken and what
  a batch partition may commit is the ledger's decision (`agents.ledger`), never past a record
  in flight and never past a record no batch carried.
- Nothing in the fetch path kills the worker: a batch that cannot be read stops only its
  partition (`agents.fetchguard`, then the ledger), and any other error of a fetch is logged
  and the fetch retried.
- The aiokafka consumer's `fetch_max_wait_ms` is Herald's setting instead of the 1,500 ms
  faust-streaming 0.15.3 hard-codes: a broker that answers a fetch only at the deadline when
  nothing was waiting (tansu does) otherwise adds up to 1.5 s to every hop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import faust
from aiokafka import TopicPartition
from aiokafka.errors import ConsumerStoppedError, IllegalStateError, RecordTooLargeError
from faust.transport.conductor import Conductor
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, TopicT

from agents import fetchguard, positions
from agents.batches import BatchChannel
from agents.fetchguard import Unreadable
from agents.ledger import OffsetLedger
from agents.recovery import BulkRecovery
from streams.offsets import Ticket

log = logging.getLogger("herald.transport")


class HeraldConductor(Conductor):
    """Faust's conductor, plus the topics whose records go to a `BatchChannel`.

    A change of subscription (agents.subscriptions) is applied after `resubscribe_seconds`
    instead of Faust's 45 s: a handler on a new topic is consumed within seconds."""

    resubscribe_seconds = 1.0

    def __init__(self, app: faust.App, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._resubscribe_sleep_lock_seconds = self.resubscribe_seconds
        self._batch_channels: dict[str, BatchChannel] = {}
        self._resubscribed_at = 0.0

    def add_batch_channel(self, topic: TopicT, channel: BatchChannel) -> None:
        """Subscribe to `topic` and hand its records to `channel` in batches; the channel
        drops what it queued of a partition when the ledger revokes it. A topic keeps its
        channel after `discard` (its partitions are revoked through the ledger after it)."""
        if channel not in self._batch_channels.values():  # its first topic
            self.app.ledger.on_revoke(channel.revoke)  # type: ignore[attr-defined]
        for name in topic.topics:
            self._batch_channels[name] = channel
        self.add(topic)

    def batch_channel(self, topic: str) -> BatchChannel | None:
        return self._batch_channels.get(topic)

    def resubscribe_if_missing(self, names: Iterable[str]) -> None:
        """Ask Faust to subscribe again when a topic registered is not in the subscription
        (Faust drops a change flagged while the group rebalances); at most every 5 s."""
        missing = set(names) - set(self._topic_name_index)
        if missing and time.monotonic() - self._resubscribed_at > 5.0:
            self._resubscribed_at = time.monotonic()
            log.info("subscribing again: %s not in the subscription yet", ", ".join(missing))
            self._flag_changes()


class HeraldConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    consumer: HeraldConsumer

    async def on_start(self) -> None:
        await super().on_start()
        fetchguard.install(self._consumer, self.consumer.fetch_reports)

    async def _fetch_records(self, consumer: Any, *args: Any, **kwargs: Any) -> Any:
        """Faust's fetch, never raising what a fetch can meet (the worker would exit): an
        unreadable record is reported like an unreadable batch, anything else is logged and
        the fetch tried again after a pause."""
        try:
            return await super()._fetch_records(consumer, *args, **kwargs)
        except (ConsumerStoppedError, asyncio.CancelledError):
            raise
        except RecordTooLargeError as exc:
            found = fetchguard.record_too_large(exc)
            if found is not None:
                tp, offset = found
                self.consumer.fetch_reports.append(
                    (
                        tp,
                        Unreadable(
                            tp.topic,
                            tp.partition,
                            offset,
                            offset + 1,
                            repr(exc)[:1000],
                            time.time(),
                        ),
                    )
                )
                return {}
            self.consumer.fetch_errors.append(exc)
        except Exception as exc:
            self.consumer.fetch_errors.append(exc)
        await asyncio.sleep(1.0)
        return {}

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Faust's seek to the committed offsets, for an assignment that may be gone again.

        Faust seeks when a table recovery completes, in the worker's own task; by then a
        second rebalance (workers changing their subscription one after the other,
        agents.subscriptions) may have left this consumer with no partitions, and aiokafka's
        `seek_to_committed` then asserts, which ended the worker (seen in
        tests/integration/test_subscriptions.py). Nothing to seek is not an error: the next
        assignment seeks again (and the ledger anchors batch partitions itself)."""
        return await self.call_thread(self._seek_to_committed_if_assigned)

    async def _seek_to_committed_if_assigned(self) -> Mapping[TP, int]:
        consumer = self._ensure_consumer()
        if not consumer.assignment():
            log.info("no partitions assigned any more: nothing to seek to committed offsets")
            return {}
        try:
            return await consumer.seek_to_committed()
        except (AssertionError, IllegalStateError) as exc:  # the assignment changed meanwhile
            log.info("the assignment changed while seeking to committed offsets: %r", exc)
            return {}

    async def _seek_wait(self, consumer: Any, partitions: Mapping[TP, int]) -> None:
        """Faust's seek of the tables' changelog partitions at recovery, for an assignment
        that may be gone again: as for `seek_to_committed`, a second rebalance can leave the
        consumer with no partitions by the time recovery seeks, and aiokafka asserts, which
        ended the worker (seen in tests/integration/test_subscriptions.py with two workers).
        Only partitions still assigned are sought; the next assignment recovers again."""
        assigned = consumer.assignment()
        kept = {tp: offset for tp, offset in partitions.items() if tp in assigned}
        if len(kept) < len(partitions):
            log.info(
                "%d partition(s) left the assignment before recovery could seek them",
                len(partitions) - len(kept),
            )
        try:
            await super()._seek_wait(consumer, kept)
        except (AssertionError, IllegalStateError) as exc:  # the assignment changed meanwhile
            log.info("the assignment changed while recovery was seeking: %r", exc)

    def highwater(self, tp: TP) -> int | None:
        """The partition's high watermark, None when it is no longer assigned: Faust asks for
        each record it hands out, from the main thread, while a rebalance in the consumer's
        thread may have taken the partition away meanwhile, and aiokafka asserts, which ended
        the worker (seen in tests/integration/test_subscriptions.py). None is what aiokafka
        itself answers before the first fetch, and what Faust already copes with."""
        try:
            return super().highwater(tp)
        except (AssertionError, IllegalStateError):
            return None

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            # aiokafka reads it when the consumer starts, which is after this returns.
            consumer._fetch_max_wait_ms = int(wait_ms)
        return consumer

    async def reposition(
        self, anchor: list[TP], seek: dict[TP, int]
    ) -> tuple[dict[TP, int], dict[TP, int]]:
        """In the consumer's thread: `agents.positions.reposition` on its aiokafka consumer."""
        return await positions.reposition(self._ensure_consumer(), anchor, seek)


class HeraldConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer, handing batch topics' records over whole, through the
    ledger (agents.ledger), which alone decides what they may commit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger: OffsetLedger = self.app.ledger
        self._reposition_failed_at = 0.0
        #: Filled in the consumer's thread (agents.fetchguard), read here after each fetch.
        self.fetch_reports: deque[tuple[Any, Unreadable]] = deque()
        self.fetch_errors: deque[Exception] = deque()
        self._fetch_error_logged_at = 0.0
        self.bulk_recovery = BulkRecovery(self.app)  # the dedupe table's recovery, per batch

    def _new_consumer_thread(self) -> HeraldConsumerThread:
        return HeraldConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _batch_channel(self, topic: str) -> BatchChannel | None:
        conductor = self.app.topics
        if isinstance(conductor, HeraldConductor):
            return conductor.batch_channel(topic)
        return None

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        generation = self.app.consumer_generation_id
        records, active = await super()._wait_next_records(timeout)
        # The generation the records were fetched in; None if a rebalance happened meanwhile
        # (the thread sets the new generation before the main loop hears of the assignment).
        fetched_in = generation if generation == self.app.consumer_generation_id else None
        rest = {}
        for tp, batch_records in (records or {}).items():
            channel = self._batch_channel(tp.topic)
            if channel is None:
                rest[tp] = self.bulk_recovery.take(tp, batch_records, fetched_in)
            elif batch_records:
                self._hand_over(channel, tp, batch_records, fetched_in, active)
        self._take_fetch_reports()
        await self._reposition()
        return rest, active

    def _take_fetch_reports(self) -> None:
        """Stop the partitions whose batch could not be read; log the fetch errors caught."""
        while self.fetch_errors:
            exc = self.fetch_errors.popleft()
            # The fetch is retried; seeking every partition back to where its batches end
            # costs nothing and covers anything the failed fetch may have moved.
            self.ledger.unsettle_all()
            if time.monotonic() - self._fetch_error_logged_at > 10.0:
                self._fetch_error_logged_at = time.monotonic()
                log.error("fetching records failed: %r; retrying", exc)
        while self.fetch_reports:
            fetched_tp, unreadable = self.fetch_reports.popleft()
            tp = TP(fetched_tp.topic, fetched_tp.partition)
            if self._batch_channel(tp.topic) is None:
                log.error(
                    "cannot read %s (not a source or actions topic); retrying",
                    unreadable.describe(),
                )
                continue
            if self.ledger.stop(tp, unreadable):
                fetchguard.log_stopped(
                    self._integration(), unreadable, fetchguard.skip_command(unreadable)
                )
        for tp in self.ledger.stopped():
            if tp not in self._paused_partitions and self.ledger.caught_up(tp):
                self.pause_partitions([tp])  # no fetches of it while it waits

    def _integration(self) -> str:
        runtime = getattr(self.app, "herald", None)
        return getattr(runtime, "home", "?")

    def skip_unreadable(self, tp: TP, offset: int, end: int) -> Ticket | None:
        """Skip the unreadable range [offset, end) of a stopped partition: the ledger hands
        it out as a ticket (the caller finishes it once the range is dead-lettered), the
        consumer seeks to `end` before its next fetch, and the partition flows again."""
        ticket = self.ledger.skip(tp, offset, end)
        if ticket is not None:
            self.resume_partitions([tp])
        return ticket

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        stopped = self.ledger.stopped()
        super().resume_partitions([tp for tp in tps if tp not in stopped])

    def on_buffer_drop(self, tp: TP) -> None:
        if tp not in self.ledger.stopped():
            super().on_buffer_drop(tp)

    def _hand_over(
        self,
        channel: BatchChannel,
        fetched_tp: Any,
        records: list[Any],
        fetched_in: int | None,
        active: Any,
    ) -> None:
        tp = TP(fetched_tp.topic, fetched_tp.partition)  # aiokafka's TopicPartition: not a TP
        flowing = self.flow_active and (
            active is None or tp in active or tp in self._buffered_partitions
        )
        batch = self.ledger.admit(tp, records, fetched_in, flowing)
        if batch is None:
            return
        # Faust's livelock check and its seek bookkeeping read these.
        self._read_offset[tp] = batch.records[-1].offset
        self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
        channel.put(batch)

    async def _reposition(self) -> None:
        """Anchor newly assigned partitions and seek back partitions whose batch was dropped,
        before the next fetch (the fetch loop is this one task, so no fetch runs meanwhile)."""
        anchor, seek = self.ledger.repositions()
        if not anchor and not seek:
            return
        if time.monotonic() - self._reposition_failed_at < 1.0:
            return  # the broker just failed us: the next fetch round tries again
        try:
            anchored, sought = await self._thread.call_thread(
                self._thread.reposition, list(anchor), seek
            )
        except Exception as exc:  # a broker or coordinator error: retried, never fatal
            self._reposition_failed_at = time.monotonic()
            log.warning(
                "could not seek %d partitions to their offsets: %r", len(anchor) + len(seek), exc
            )
            return
        for tp, offset in anchored.items():
            self.ledger.anchored(tp, anchor[tp], offset)
        for tp, offset in sought.items():
            self.ledger.sought(tp, offset)

    def _new_offset(self, tp: TP) -> int | None:
        if self._batch_channel(tp.topic) is not None:
            return self.ledger.committable(tp)
        return super()._new_offset(tp)

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        yield from super()._filter_tps_with_pending_acks(topics)
        yield from self.ledger.committable_tps(topics)

    def _batch_tps(self, tps: set[TP]) -> set[TP]:
        return {tp for tp in tps if self._batch_channel(tp.topic) is not None}

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        leaving = self._batch_tps(set(revoked))
        await self._commit_finished(leaving)
        self.ledger.revoke(leaving)
        await super().on_partitions_revoked(revoked)

    async def _commit_finished(self, leaving: set[TP]) -> None:
        """Commit what is finished of partitions about to leave this worker, before the
        group moves them, as Kafka's own consumer does before it rejoins (and as an
        integration's source does, `agents.integration_source`).

        Without it the next owner starts at the last periodic commit: every rebalance made
        the group process up to `commitIntervalSeconds` of every partition a second time (in
        bench S, 77,000 of 1,000,000 records when the second worker joined), each match
        producing its action again. The ledger's committable offset covers only durably
        finished work, so nothing in flight is committed. A commit that fails or takes too
        long (the group moved on, the coordinator is away) is logged and the partitions go
        as before: their next owner reads those records again."""
        if not leaving or self.app.should_stop:
            return
        timeout = max(1.0, float(self.app.conf.broker_session_timeout) / 2)
        try:
            async with asyncio.timeout(timeout):
                # Faust's commit only waits when a periodic commit is under way: then again.
                for _ in range(2):
                    if await self.commit(leaving):
                        return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never fatal: the records are read again, as before
            log.warning("could not commit revoked partitions' finished offsets: %r", exc)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self.ledger.assign(self._batch_tps(set(assigned)), generation_id)
        await super().on_partitions_assigned(assigned, generation_id)


class HeraldTransport(aiokafka_driver.Transport):
    Consumer = HeraldConsumer
    Conductor = HeraldConductor

    #: How long a declared topic may take to show in the broker's metadata.
    topic_listed_timeout: float = 30.0

    async def _create_topic(
        self,
        owner: Any,
        client: Any,
        topic: str,
        partitions: int,
        replication: int,
        **kwargs: Any,
    ) -> None:
        """Faust's topic creation, then wait until the broker's metadata lists the topic
        with a leader for every partition. On Apache Kafka creation completes
        asynchronously: a worker that created `<prefix>-actions` and subscribed 30 ms later
        was assigned without it (the broker did not list it yet), and aiokafka looks again
        only at its next metadata refresh, 5 minutes later: nothing was delivered meanwhile
        (seen by the benchmark on Kafka 4.4.0)."""
        await super()._create_topic(owner, client, topic, partitions, replication, **kwargs)
        deadline = time.monotonic() + self.topic_listed_timeout
        while True:
            try:
                cluster = await client.fetch_all_metadata()
                listed = cluster.partitions_for_topic(topic) or set()
                leaders = [cluster.leader_for_partition(TopicPartition(topic, p)) for p in listed]
                # Listed at all (a topic that existed may have other partition counts).
                if listed and all(leader is not None and leader >= 0 for leader in leaders):
                    return
            except Exception as exc:  # a metadata request that failed: ask again
                log.debug("metadata of %s not read yet: %r", topic, exc)
            if time.monotonic() >= deadline:
                log.warning(
                    "topic %s is not listed by the broker %.0fs after its creation; going on",
                    topic,
                    self.topic_listed_timeout,
                )
                return
            await asyncio.sleep(0.1)


class HeraldApp(faust.App):
    """A Faust app on `HeraldTransport`, with the worker's one offset ledger
    (agents.ledger): what batch partitions may commit, and who hears of their revocation
    (`app.ledger.on_revoke`). `fetch_max_wait_ms` overrides Faust's 1,500 ms."""

    fetch_max_wait_ms: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = OffsetLedger()
        self._producer_starting = asyncio.Lock()
        self._producer_started = False  # a `maybe_start_producer` saw its start complete

    async def maybe_start_producer(self) -> Any:
        """The producer, started if it is not yet: Faust's, without its stampede guard.

        Faust's producer buffer (`Topic.send_soon`: every table's changelog write, so the
        dedupe marks the sink waits for) sends one record per call of this, and Faust's
        `@stampede` wrapper yields to the event loop three times per call even when the
        producer runs. So the buffer sent one record per three turns of a loop busy with
        hundreds of lanes: in bench L at 1,000 deliveries/s it held ~500 marks, a mark took
        up to 1.2 s to be durable while the broker acknowledged in 10-45 ms, every lane's
        capacity was held by marks waiting there, and Faust's commit (which flushes that
        buffer first) ran for seconds (`Timer commit is overlapping`). A running producer is
        returned at once, so the buffer drains in one turn. Until then callers queue on a
        lock, one `producer.maybe_start()` at a time, as the stampede guard had them."""
        if self.in_transaction:  # exactly-once (Herald does not use it): Faust's answer
            return self.consumer.transactions
        producer = self.producer
        if not (self._producer_started and producer.started):
            async with self._producer_starting:
                await producer.maybe_start()
                self._producer_started = True
        return producer

    def _new_transport(self) -> HeraldTransport:
        return HeraldTransport(self.conf.broker_consumer, self)
