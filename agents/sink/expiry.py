"""Dedupe state expiry: entries that can no longer matter leave the table and its changelog.

The dedupe table (agents.sink.dedupe) holds two kinds of entry, each with a time in ms:

- a delivery mark, `<delivery id>` -> delivered-at: it matters while its action record can be
  delivered again, so it is kept `herald.dedupeRetentionSeconds` (at least the source topics'
  retention, the longest a record can be read again);
- a user window, `u:<dedupe key>` -> window end: `Dedupe.check` reads it only while the
  window is open, so it goes once the window is over, plus `WINDOW_GRACE_MS` (capped at the
  retention) so a worker whose clock is a little behind still finds a window it considers
  open. Nothing else reads it: a record skipped in a window got its own delivery mark.

The sweeper walks the RocksDB stores of the partitions this worker actively owns, a bounded
batch per tick with a cursor per partition, and deletes what has expired. Per batch, in this
order:

1. scan up to `batch` entries and send a tombstone to the changelog for each expired one
   (`send_changelog`, the table's own write, with an explicit partition), all without an
   await, so no sink write can come between reading an entry and its tombstone;
2. wait until the broker acknowledged the tombstones;
3. delete from the local store the entries whose value is still the one that expired, if
   the partition is still owned and recovered.

Tombstone first makes a kill anywhere harmless: before step 2 the entry is still in both
places (or the tombstone made it and a restart's recovery applies it); after step 2 and
before step 3 it is still local and simply swept again. Deleting locally first would lose the
tombstone at a kill and leave the entry in the changelog for good. A partition revoked or in
recovery is not swept (its store is being rebuilt from the changelog, and a tombstone for a
stale value would overwrite a newer one); one lost mid-sweep is left where it was and its new
owner sweeps it from the start.

An expired mark the sweeper has not reached yet still counts: the delivery did happen, so a
redelivery finding it is skipped (agents.sink.dedupe). A redelivery older than the retention
is outside the guarantee: delivered again once its mark is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import faust

from agents.sink.dedupe import USER_PREFIX

log = logging.getLogger("herald.expiry")

#: Entries scanned per tick: about 2-3 ms of the event loop (measured ~2.3 us per entry with
#: rocksdict, parse included), so deliveries never wait long behind a sweep.
BATCH = 1000
#: Pause between the ticks of a pass: a pass over 10 million entries takes ~10 min at about 5 %
#: of a core instead of one core for ~25 s.
TICK_PAUSE_S = 0.05
#: Longest pause between passes (the shortest is 1 s; in between, a tenth of the retention).
MAX_PASS_PAUSE_S = 300.0
#: How long a user window's entry outlives the window's end: clock skew between workers.
WINDOW_GRACE_MS = 60_000
#: Faust's own keys in each partition's store (the changelog offset it has applied).
FAUST_PREFIX = b"__faust"


def expires_at(key: bytes, value: bytes, retention_ms: int) -> int | None:
    """When the entry may go (epoch ms): a delivery mark `retention_ms` after its delivery, a
    user window its grace after the window's end. None for Faust's keys and for a value that
    is not a time (not written by Herald: left alone)."""
    if key.startswith(FAUST_PREFIX):
        return None
    try:
        stamp = int(value)
    except ValueError:
        return None
    if key.startswith(USER_PREFIX):
        return stamp + min(WINDOW_GRACE_MS, retention_ms)
    return stamp + retention_ms


def expired(key: bytes, value: bytes, now_ms: int, retention_ms: int) -> bool:
    """Whether the entry can go now."""
    at = expires_at(key, value, retention_ms)
    return at is not None and at <= now_ms


def pass_pause(retention_s: float) -> float:
    """Seconds between two passes: a tenth of the retention, within [1 s, 5 min]."""
    return min(max(retention_s / 10, 1.0), MAX_PASS_PAUSE_S)


class Partitions(Protocol):
    """The table's partitions as the sweeper sees them (`FaustPartitions` in a worker)."""

    def owned(self) -> set[int]:
        """Partitions actively owned and recovered now; empty during a rebalance."""
        ...

    def store(self, partition: int) -> Any:
        """The partition's RocksDB store (a rocksdict `Rdict`), None when not open."""
        ...

    def tombstone(self, partition: int, key: bytes) -> Any:
        """Send a tombstone for `key` to the partition's changelog; an awaitable ack."""
        ...


@dataclass
class Batch:
    """One tick's work: the expired entries of one partition and their tombstones' acks."""

    partition: int
    entries: list[tuple[bytes, bytes]]
    acks: list[Any]


@dataclass
class Stats:
    scanned: int = 0
    expired: int = 0
    deleted: int = 0
    failed: int = 0  # tombstones not acknowledged: left in place, retried next pass
    passes: int = 0


@dataclass
class Sweeper:
    partitions: Partitions
    retention_ms: int
    batch: int = BATCH
    clock: Callable[[], int] = field(default=lambda: int(time.time() * 1000))
    stats: Stats = field(default_factory=Stats)
    #: Where each partition's scan goes on: the last key scanned; absent = from the start.
    cursors: dict[int, bytes] = field(default_factory=dict)
    #: Partitions left to sweep in this pass; None between passes.
    pending: list[int] | None = None
    _pass_expired: int = 0
    _pass_partitions: int = 0  # swept to their end in this pass
    _pass_left: int = 0  # lost mid-pass
    _pass_deleted_before: int = 0
    _logged: bool = False

    def scan(self) -> Batch | None:
        """Scan the next batch and send the tombstones of its expired entries (no await in
        here). None when the pass is over (or nothing is owned)."""
        owned = self.partitions.owned()
        if self.pending is None:
            self.pending = sorted(owned)
            self._pass_expired = 0
        for lost in [p for p in self.cursors if p not in owned]:
            del self.cursors[lost]  # its new owner sweeps it; left as it is here
        while self.pending:
            partition = self.pending[0]
            store = self.partitions.store(partition) if partition in owned else None
            if store is None:  # lost (or closed) mid-pass: left as it is
                self.pending.pop(0)
                self.cursors.pop(partition, None)
                self._pass_left += 1
                continue
            return self._scan(partition, store)
        self.pending = None
        self.stats.passes += 1
        return None

    def _scan(self, partition: int, store: Any) -> Batch:
        """Up to `batch` entries of the partition from its cursor (at most one partition per
        tick, so one tick's work is bounded); their tombstones sent."""
        now, retention = self.clock(), self.retention_ms
        cursor = self.cursors.get(partition)
        it = store.iter()
        if cursor is None:
            it.seek_to_first()
        else:
            it.seek(cursor)
            if it.valid() and it.key() == cursor:
                it.next()
        entries: list[tuple[bytes, bytes]] = []
        scanned = 0
        while scanned < self.batch and it.valid():
            key, value = it.key(), it.value()
            if expired(key, value, now, retention):
                entries.append((key, value))
            cursor = key
            scanned += 1
            it.next()
        del it
        self.stats.scanned += scanned
        if scanned < self.batch:  # the end of this partition: done for this pass
            self.pending.pop(0)  # type: ignore[union-attr]
            self.cursors.pop(partition, None)
            self._pass_partitions += 1
        elif cursor is not None:
            self.cursors[partition] = cursor
        if not entries:
            return Batch(partition, [], [])
        if self._pass_expired == 0:
            log.info(
                "dedupe expiry: deleting expired entries (partition %d: %d in its first batch)",
                partition,
                len(entries),
            )
        self._pass_expired += len(entries)
        self.stats.expired += len(entries)
        acks = [self.partitions.tombstone(partition, key) for key, _ in entries]
        return Batch(partition, entries, acks)

    async def finish(self, batch: Batch) -> int:
        """Wait for the batch's tombstones, then delete its entries from the local store
        where still owned and unchanged; how many were deleted."""
        if not batch.entries:
            return 0
        results = await asyncio.gather(*batch.acks, return_exceptions=True)
        store = None
        if batch.partition in self.partitions.owned():
            store = self.partitions.store(batch.partition)
        deleted = 0
        for (key, value), result in zip(batch.entries, results, strict=True):
            if isinstance(result, BaseException):
                self.stats.failed += 1
                continue
            if store is not None and store.get(key) == value:
                store.delete(key)
                deleted += 1
        if store is None:
            log.info(
                "dedupe expiry: partition %d left this worker mid-sweep; its new owner "
                "recovers the tombstones sent",
                batch.partition,
            )
        self.stats.deleted += deleted
        return deleted

    async def run(self, retention_s: float) -> None:
        """Sweep for ever: ticks `TICK_PAUSE_S` apart within a pass, `pass_pause` between
        passes. An error is logged and the sweep goes on at the next tick."""
        while True:
            try:
                batch = self.scan()
                if batch is not None:
                    await self.finish(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dedupe expiry: sweep step failed; going on")
                batch = None
                self.pending = None
            if batch is None:
                self._log_pass()
                await asyncio.sleep(pass_pause(retention_s))
            else:
                await asyncio.sleep(TICK_PAUSE_S)

    def _log_pass(self) -> None:
        """One line for a pass that deleted something, and for the first pass that swept any
        partition to its end (so a log says the sweeper runs); nothing for the quiet ones."""
        swept, deleted = self._pass_partitions, self.stats.deleted - self._pass_deleted_before
        if swept and (deleted or not self._logged):
            log.info(
                "dedupe expiry: pass done over %d partition(s)%s: %d expired entries deleted "
                "(since start: %d scanned, %d deleted, %d tombstones not acknowledged)",
                swept,
                f" ({self._pass_left} more left this worker mid-pass)" if self._pass_left else "",
                deleted,
                self.stats.scanned,
                self.stats.deleted,
                self.stats.failed,
            )
            self._logged = True
        self._pass_partitions = self._pass_left = 0
        self._pass_deleted_before = self.stats.deleted


class FaustPartitions:
    """The dedupe table's partitions through Faust: its RocksDB store per partition
    (`Store._dbs`, the stores Faust opened) and its changelog (`Table.send_changelog`)."""

    def __init__(self, app: faust.App, table: faust.Table) -> None:
        self.app = app
        self.table = table

    def owned(self) -> set[int]:
        app = self.app
        if app.rebalancing or app.tables.recovery.in_recovery:
            return set()
        topic = self.table.changelog_topic_name  # type: ignore[attr-defined]
        dbs = getattr(self.table.data, "_dbs", {})
        return {
            tp.partition
            for tp in app.assignor.assigned_actives()
            if tp.topic == topic and tp.partition in dbs
        }

    def store(self, partition: int) -> Any:
        return getattr(self.table.data, "_dbs", {}).get(partition)

    def tombstone(self, partition: int, key: bytes) -> Any:
        return self.table.send_changelog(partition, key, None, value_serializer="raw")


def register_expiry(app: faust.App, table: faust.Table, retention_s: float) -> Sweeper:
    """The worker's sweeper of the dedupe table, run as a Faust task."""
    sweeper = Sweeper(FaustPartitions(app, table), max(1, int(retention_s * 1000)))

    @app.task
    async def expire_dedupe() -> None:
        await app.tables.recovery.completed.wait()
        await sweeper.run(retention_s)

    return sweeper
