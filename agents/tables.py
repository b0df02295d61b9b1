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

from dataclasses import dataclass
from typing import Any

import faust

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


class DurableTable(faust.Table):
    """A Table that hands out the changelog write of the last change, so a caller can wait
    until that change is durable in Kafka before it acknowledges the record that caused it."""

    last_changelog: Any = None

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        self.last_changelog = super().send_changelog(*args, **kwargs)
        return self.last_changelog


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
