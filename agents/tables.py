"""Herald's Faust tables.

- rules (GlobalTable, every worker holds all of it): handler name → EventHandler JSON. Its
  changelog is the rules topic, so publishing `key=name, value=handler JSON` (or a null value
  to delete) to `<consumerGroupId>-rules-changelog` changes the handlers of every worker
  without a restart (`herald rules put` does it after validating).
  Keys starting with a NUL byte are Herald's own (seed digests, `herald skip` requests).
- dedupe (RocksDB, partitioned like the actions topic): delivery id → delivered-at ms, and
  `u:<dedupe key>` → expiry ms for user-level deduplication windows. Entries expire
  (agents.sink.expiry: `herald.dedupeRetentionSeconds` after the delivery, or at the window's
  end), deleted from RocksDB and tombstoned in the changelog; its recovery at start applies
  a fetched batch at a time (agents.recovery).

Execution records are not a table: they are written to `<prefix>-executions` only (a table
would be a RocksDB write and a second changelog record per delivery that nothing reads).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP

from streams.config.models import HeraldConfig

#: Keys of the rules table that are not handlers start with a NUL byte: the digests of the
#: handlers seeded from the configuration, and the operator's skips of unreadable batches
#: (`herald skip`, agents.unreadable).
RESERVED_PREFIX = b"\x00"
SEED_PREFIX = RESERVED_PREFIX + b"seed:"
SKIP_PREFIX = RESERVED_PREFIX + b"skip:"
BYTES = {"key_type": bytes, "value_type": bytes}  # raw serializers: we own the encoding
#: RocksDB options of the dedupe table's stores (one per partition; faust's RocksDBOptions).
#: Faust's defaults are sized for one big table: a 64 MiB write buffer (up to 3 of them) and a
#: 2 GiB block cache per partition store, so 8 partitions could hold 1.5 GiB of write buffers
#: alone while recovering (2 million keys: 313 MB resident after the first start). The
#: dedupe table is written once per delivery and read once per delivery, by key, with a
#: bloom filter: small buffers and caches cost little there (bench M, bench/README.md).
DEDUPE_ROCKSDB = {
    "write_buffer_size": 8 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 8 * 1024 * 1024,
}


#: How often a partition's acknowledged changelog offset is written to its RocksDB store by
#: `DurableTable.put_through` (Faust writes it after every record).
PERSIST_EVERY_SECONDS = 0.5


class DurableTable(faust.Table):
    """A Table that hands out the changelog write of the last change, so a caller can wait
    until that change is durable in Kafka before it acknowledges the record that caused it.

    `put_through` is the short way of one write, for the sink's dedupe mark: measured in bench
    A0, `table[key] = value` cost 46 µs of worker CPU per delivery (Faust's `send_soon`
    with its FutureMessage, producer buffer task and callbacks, the key and value passed
    through the raw codec, and a second RocksDB write per record for the persisted offset)
    against 31 µs for the whole execution record."""

    last_changelog: Any = None
    #: acknowledged changelog offsets not yet written to the partition's store, and when each
    #: partition's was last written (monotonic seconds)
    _unpersisted: dict[int, int]
    _persisted_at: dict[int, float]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unpersisted = {}
        self._persisted_at = {}
        self._changelog_name: str | None = None

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        self.last_changelog = super().send_changelog(*args, **kwargs)
        return self.last_changelog

    async def put_through(self, partition: int, key: bytes, value: bytes) -> asyncio.Future:
        """Set `key` in the store of `partition` and write it to that changelog partition;
        the future is the broker's acknowledgement of the write.

        What `table[key] = value` does for a bytes table of this kind (raw codecs, no TTL,
        the partition the current event's, as Faust's `Table.on_key_set` and
        `rocksdb.Store._set` choose it), with the record handed to the producer directly.
        The persisted offset (where the store's recovery starts reading the changelog) is
        written at most every `PERSIST_EVERY_SECONDS` per partition: it only ever lags the
        store's contents, and a lagging one costs a restart a re-read of those records,
        which write the same values again."""
        store = self.data
        store._db_for_partition(partition).put(key, value)
        store._key_index[key] = partition
        name = self._changelog_name
        if name is None:
            name = self._changelog_name = self.changelog_topic.get_topic_name()
        try:
            fut = await self.app.producer.send(name, key, value, partition, None, None)
        except Exception as exc:  # as Faust's send_soon: the failure is the write's, not ours
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(exc)
            return fut
        fut.add_done_callback(self._acknowledged)
        return fut

    def _acknowledged(self, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        metadata = fut.result()
        partition = metadata.partition
        if metadata.offset > self._unpersisted.get(partition, -1):
            self._unpersisted[partition] = metadata.offset
        if time.monotonic() - self._persisted_at.get(partition, 0.0) >= PERSIST_EVERY_SECONDS:
            self._persist(partition)

    def _persist(self, partition: int) -> None:
        offset = self._unpersisted.pop(partition, None)
        if offset is None:
            return
        self._persisted_at[partition] = time.monotonic()
        store = self.data
        # A partition revoked meanwhile has no open store here: its next owner recovers it
        # from the changelog, from the offset persisted before.
        if partition in getattr(store, "_dbs", {}):
            store.set_persisted_offset(TP(self._changelog_name, partition), offset)

    def persist_pending(self) -> None:
        """Write every acknowledged offset not yet written (the table is stopping)."""
        for partition in list(self._unpersisted):
            self._persist(partition)

    async def on_stop(self) -> None:
        self.persist_pending()
        await super().on_stop()


class RulesTable(faust.GlobalTable):
    """A GlobalTable that counts changes, so readers rebuild their index only when needed."""

    version: int = 0

    def apply_changelog_batch(self, batch: Any, *args: Any, **kwargs: Any) -> None:
        super().apply_changelog_batch(batch, *args, **kwargs)
        self.version += 1


@dataclass
class Tables:
    rules: RulesTable
    dedupe: DurableTable


def declare_tables(app: faust.App, config: HeraldConfig) -> Tables:
    partitions = config.herald.actionPartitions
    # The app is created with Table=DurableTable and GlobalTable=RulesTable (agents.app).
    # recovery_buffer_size=1 is faust's advice against the multi-instance recovery loop
    # (faust-streaming #283).
    # The changelog is Faust's own (`<app id>-rules-changelog`): passing a topic of our own
    # as changelog_topic makes faust's partition assignor hang (seen with faust 0.15.3).
    rules = app.GlobalTable(
        "rules",
        partitions=1,
        recovery_buffer_size=1,
        key_type=bytes,
        value_type=bytes,
    )
    dedupe = app.Table("dedupe", partitions=partitions, options=dict(DEDUPE_ROCKSDB), **BYTES)
    return Tables(rules=rules, dedupe=dedupe)  # type: ignore[arg-type]
