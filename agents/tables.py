"""Herald's Faust tables.

- rules (GlobalTable, every worker holds all of it): handler name → EventHandler JSON. Its
  changelog is the rules topic, so publishing `key=name, value=handler JSON` (or a null value
  to delete) to `<consumerGroupId>-rules-changelog` changes the handlers of every worker
  without a restart (`herald rules put` does it after validating).
  Keys starting with a NUL byte are Herald's own (seed digests, `herald skip` requests).
- dedupe (RocksDB, partitioned like the actions topic): delivery id → delivered-at ms, and
  `u:<dedupe key>` → expiry ms for user-level deduplication windows.

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
    dedupe = app.Table("dedupe", partitions=partitions, **BYTES)
    return Tables(rules=rules, dedupe=dedupe)  # type: ignore[arg-type]
