"""Herald's Faust transport: batches for Herald's agents, Faust's path for everything else.

Faust lets an app replace its transport classes (`App.transport`, `Transport.Consumer`,
`Transport.Conductor`); nothing here patches Faust's modules. What changes:

- `HeraldConductor` knows which topics are read as batches (`add_batch_channel`).
- `HeraldConsumer` takes each fetch and hands the records of those topics to their
  `BatchChannel` as whole batches, each with a ticket; the rest (table changelogs, the rules
  topic) goes through Faust's per-record path unchanged. A batch partition's commit offset is
  the end of the longest run of finished batches (`streams.offsets`), never past a record in
  flight.
- The aiokafka consumer's `fetch_max_wait_ms` is Herald's setting instead of the 1,500 ms
  faust-streaming 0.15.3 hard-codes: a broker that answers a fetch only at the deadline when
  nothing was waiting (tansu does) otherwise adds up to 1.5 s to every hop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import faust
from faust.transport.conductor import Conductor
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, TopicT

from agents.batches import Batch, BatchChannel
from streams.offsets import PartitionProgress

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


class HeraldConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer, handing batch topics' records over whole."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress: dict[TP, PartitionProgress] = {}

    def _new_consumer_thread(self) -> HeraldConsumerThread:
        return HeraldConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        records, active = await super()._wait_next_records(timeout)
        conductor = self.app.topics
        if not records or not self.flow_active or not isinstance(conductor, HeraldConductor):
            return records, active
        rest = {}
        for tp, batch_records in records.items():
            channel = conductor.batch_channel(tp.topic)
            if channel is None:
                rest[tp] = batch_records
            elif batch_records and (
                active is None or tp in active or tp in self._buffered_partitions
            ):
                self._hand_over(channel, tp, batch_records)
        return rest, active

    def _hand_over(self, channel: BatchChannel, fetched_tp: Any, records: list[Any]) -> None:
        tp = TP(fetched_tp.topic, fetched_tp.partition)  # aiokafka's TopicPartition: not a TP
        progress = self._progress.get(tp)
        if progress is None:
            progress = self._progress[tp] = PartitionProgress()
        last = records[-1].offset
        # Faust's livelock check and its seek bookkeeping read these.
        self._read_offset[tp] = last
        self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
        channel.put(Batch(tp, records, progress.open(last)))

    def _new_offset(self, tp: TP) -> int | None:
        progress = self._progress.get(tp)
        if progress is not None:
            return progress.committable
        return super()._new_offset(tp)

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        yield from super()._filter_tps_with_pending_acks(topics)
        for tp, progress in self._progress.items():
            if progress.committable is not None and (
                topics is None or tp in topics or tp.topic in topics
            ):
                yield tp

    def _forget(self, tps: set[TP]) -> None:
        """Batches of these partitions still in flight no longer commit anything and are
        marked stale (the agents drop what they have not started): after a rebalance Faust
        seeks to the committed offset and they are read again."""
        for tp in tps:
            progress = self._progress.pop(tp, None)
            if progress is not None:
                progress.revoke()
        conductor = self.app.topics
        if isinstance(conductor, HeraldConductor):
            for channel in conductor.batch_channels:
                channel.revoke(tps)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self._forget(set(revoked))
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self._forget(set(assigned))
        await super().on_partitions_assigned(assigned, generation_id)


class HeraldTransport(aiokafka_driver.Transport):
    Consumer = HeraldConsumer
    Conductor = HeraldConductor


class HeraldApp(faust.App):
    """A Faust app on `HeraldTransport`; `fetch_max_wait_ms` overrides Faust's 1,500 ms."""

    fetch_max_wait_ms: int | None = None

    def _new_transport(self) -> HeraldTransport:
        return HeraldTransport(self.conf.broker_consumer, self)
