"""Herald's Faust transport: batches for Herald's agents, Faust's path for everything else.

Faust lets an app replace its transport classes (`App.transport`, `Transport.Consumer`,
`Transport.Conductor`); nothing here patches Faust's modules. What changes:

- `HeraldConductor` knows which topics are read as batches (`add_batch_channel`).
- `HeraldConsumer` takes each fetch and hands the records of those topics to their
  `BatchChannel` as whole batches, each with a ticket; the rest (table changelogs, the rules
  topic) goes through Faust's per-record path unchanged. Which batches are taken and what
  a batch partition may commit is the ledger's decision (`agents.ledger`), never past a record
  in flight and never past a record no batch carried.
- The aiokafka consumer's `fetch_max_wait_ms` is Herald's setting instead of the 1,500 ms
  faust-streaming 0.15.3 hard-codes: a broker that answers a fetch only at the deadline when
  nothing was waiting (tansu does) otherwise adds up to 1.5 s to every hop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.transport.conductor import Conductor
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, TopicT

from agents.batches import BatchChannel
from agents.ledger import OffsetLedger

log = logging.getLogger("herald.transport")


class HeraldConductor(Conductor):
    """Faust's conductor, plus the topics whose records go to a `BatchChannel`."""

    def __init__(self, app: faust.App, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._batch_channels: dict[str, BatchChannel] = {}

    def add_batch_channel(self, topic: TopicT, channel: BatchChannel) -> None:
        """Subscribe to `topic` and hand its records to `channel` in batches."""
        for name in topic.topics:
            self._batch_channels[name] = channel
        self.add(topic)

    def batch_channel(self, topic: str) -> BatchChannel | None:
        return self._batch_channels.get(topic)

    @property
    def batch_channels(self) -> list[BatchChannel]:
        return list({id(c): c for c in self._batch_channels.values()}.values())


class HeraldConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
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
        """In the consumer's thread: seek each partition of `anchor` to the group's committed
        offset (the log start when none was committed: Herald reads from the earliest) and
        each of `seek` to its offset. Returns what was done; partitions no longer assigned
        are left out (their revocation replaces their progress anyway)."""
        consumer = self._ensure_consumer()
        assigned = consumer.assignment()
        anchored: dict[TP, int] = {}
        sought: dict[TP, int] = {}
        for tp in anchor:
            ktp = TopicPartition(tp.topic, tp.partition)
            if ktp not in assigned:
                continue
            offset = await consumer.committed(ktp)
            if offset is None or offset < 0:
                offset = (await consumer.beginning_offsets([ktp]))[ktp]
            if ktp in consumer.assignment():
                consumer.seek(ktp, offset)
                anchored[tp] = offset
        for tp, offset in seek.items():
            ktp = TopicPartition(tp.topic, tp.partition)
            if ktp in consumer.assignment():
                consumer.seek(ktp, offset)
                sought[tp] = offset
        return anchored, sought


class HeraldConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer, handing batch topics' records over whole, through the
    ledger (agents.ledger), which alone decides what they may commit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = OffsetLedger()
        self.ledger.on_revoke(self._tell_revoked)
        self._reposition_failed_at = 0.0

    def _tell_revoked(self, tps: set[TP]) -> None:
        """The ledger's revoke fan-out: the batch channels drop what they queued, then every
        listener the app registered (`HeraldApp.on_batches_revoked`) drops what it holds."""
        conductor = self.app.topics
        if isinstance(conductor, HeraldConductor):
            for channel in conductor.batch_channels:
                channel.revoke(tps)
        for listener in getattr(self.app, "batch_revoke_listeners", ()):
            listener(tps)

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
                rest[tp] = batch_records
            elif batch_records:
                self._hand_over(channel, tp, batch_records, fetched_in, active)
        await self._reposition()
        return rest, active

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
        self.ledger.revoke(self._batch_tps(set(revoked)))
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self.ledger.assign(self._batch_tps(set(assigned)), generation_id)
        await super().on_partitions_assigned(assigned, generation_id)


class HeraldTransport(aiokafka_driver.Transport):
    Consumer = HeraldConsumer
    Conductor = HeraldConductor


class HeraldApp(faust.App):
    """A Faust app on `HeraldTransport`; `fetch_max_wait_ms` overrides Faust's 1,500 ms."""

    fetch_max_wait_ms: int | None = None

    def on_batches_revoked(self, listener: Any) -> None:
        """Call `listener(tps)` when batch partitions leave this worker (or come back in a
        new assignment): the ledger's one revoke fan-out."""
        self.__dict__.setdefault("batch_revoke_listeners", []).append(listener)

    def _new_transport(self) -> HeraldTransport:
        return HeraldTransport(self.conf.broker_consumer, self)
