"""Dedupe expiry (agents.sink.expiry): which entries go, and the sweeper over real RocksDB
stores (rocksdict, as Faust opens them): bounded batches with a cursor, tombstones before any
local delete, partitions lost mid-sweep left alone, Faust's own keys never touched.

The changelog is a recorder of tombstones here; tests/integration/test_dedupe_expiry.py runs
the sweeper in a worker against the broker.
"""

from __future__ import annotations

import asyncio
import functools
import textwrap
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from rocksdict import Options, Rdict

from agents.sink.dedupe import ALREADY_DELIVERED, Dedupe
from agents.sink.expiry import (
    WINDOW_GRACE_MS,
    Sweeper,
    expired,
    expires_at,
    pass_pause,
)
from streams.actions.base import ActionRequest
from streams.config.loader import load_config
from streams.errors import ConfigError

NOW = 1_800_000_000_000
RETENTION = 3_600_000  # 1 h
OFFSET_KEY = b"__faust\x00offset__"


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a loop of its own (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def mark(i: int) -> bytes:
    return f"{i:032x}".encode()


# ------------------------------------------------------------------------- the decision


def test_a_delivery_mark_expires_one_retention_after_its_delivery() -> None:
    key, delivered = mark(1), NOW - RETENTION
    assert expires_at(key, str(delivered).encode(), RETENTION) == NOW
    assert expired(key, str(delivered).encode(), NOW, RETENTION)
    assert not expired(key, str(delivered + 1).encode(), NOW, RETENTION)


def test_a_user_window_expires_after_its_end_plus_the_grace() -> None:
    key, end = b"u:alarm-7", NOW - WINDOW_GRACE_MS
    assert expires_at(key, str(end).encode(), RETENTION) == NOW
    assert expired(key, str(end).encode(), NOW, RETENTION)
    assert not expired(key, str(end + 1).encode(), NOW, RETENTION)
    # A window longer than the retention is kept to its end: the retention does not cut it.
    assert not expired(key, str(NOW + 10 * RETENTION).encode(), NOW, RETENTION)


def test_the_grace_is_never_longer_than_the_retention() -> None:
    short = 2_000
    assert expires_at(b"u:k", str(NOW).encode(), short) == NOW + short


def test_faust_keys_and_values_that_are_not_times_never_expire() -> None:
    assert expires_at(OFFSET_KEY, b"12", RETENTION) is None
    assert not expired(OFFSET_KEY, b"12", NOW, RETENTION)
    assert expires_at(mark(2), b"not a time", RETENTION) is None
    assert not expired(mark(2), b"", NOW, RETENTION)


def test_the_pause_between_passes_is_a_tenth_of_the_retention_within_bounds() -> None:
    assert pass_pause(2.0) == 1.0
    assert pass_pause(600.0) == 60.0
    assert pass_pause(14 * 24 * 3600.0) == 300.0


# ------------------------------------------------------------------------- the sweeper


class Stores:
    """Real RocksDB stores, one per partition, and a changelog that records tombstones; the
    test decides which partitions are owned and when the broker acknowledges."""

    def __init__(self, root: Path, partitions: int) -> None:
        self.dbs = {
            p: Rdict(str(root / f"dedupe-{p}.db"), options=Options(raw_mode=True))
            for p in range(partitions)
        }
        self.owned_now: set[int] = set(self.dbs)
        self.tombstones: list[tuple[int, bytes]] = []
        self.acks: list[asyncio.Future[None]] = []
        self.auto_ack = True

    def owned(self) -> set[int]:
        return set(self.owned_now)

    def store(self, partition: int) -> Any:
        return self.dbs.get(partition)

    def tombstone(self, partition: int, key: bytes) -> asyncio.Future[None]:
        self.tombstones.append((partition, key))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.auto_ack:
            ack.set_result(None)
        self.acks.append(ack)
        return ack

    def keys(self, partition: int) -> set[bytes]:
        return set(self.dbs[partition].keys())

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Stores]:
    s = Stores(tmp_path, 2)
    yield s
    s.close()


def fill(db: Rdict, count: int, *, expired_every: int, start: int = 0) -> set[bytes]:
    """`count` delivery marks, every `expired_every`-th one expired; the expired keys."""
    gone = set()
    for i in range(start, start + count):
        old = i % expired_every == 0
        db[mark(i)] = str(NOW - RETENTION - 1 if old else NOW - 1000).encode()
        if old:
            gone.add(mark(i))
    db[OFFSET_KEY] = b"7"  # Faust's applied changelog offset, a small number: never expired
    return gone


def sweeper(stores: Stores, batch: int = 100) -> Sweeper:
    return Sweeper(stores, RETENTION, batch=batch, clock=lambda: NOW)


async def sweep_pass(sw: Sweeper) -> int:
    """Run one whole pass; the number of batches it took."""
    batches = 0
    while (batch := sw.scan()) is not None:
        await sw.finish(batch)
        batches += 1
    return batches


@in_loop
async def test_a_pass_deletes_exactly_the_expired_entries_in_bounded_batches(
    stores: Stores,
) -> None:
    gone0 = fill(stores.dbs[0], 250, expired_every=3)
    gone1 = fill(stores.dbs[1], 40, expired_every=2, start=1000)
    stores.dbs[1][b"u:open"] = str(NOW + 5000).encode()
    stores.dbs[1][b"u:over"] = str(NOW - WINDOW_GRACE_MS - 1).encode()
    before0, before1 = stores.keys(0), stores.keys(1)
    sw = sweeper(stores)

    assert await sweep_pass(sw) == 4  # 251 entries in partition 0: 3 batches; partition 1: 1
    assert stores.keys(0) == before0 - gone0
    assert stores.keys(1) == before1 - gone1 - {b"u:over"}
    assert sorted(stores.tombstones) == sorted(
        [(0, k) for k in gone0] + [(1, k) for k in gone1] + [(1, b"u:over")]
    )
    assert OFFSET_KEY in stores.keys(0) and OFFSET_KEY in stores.keys(1)
    assert sw.stats.scanned == 251 + 43 and sw.stats.deleted == len(stores.tombstones)
    assert sw.stats.passes == 1


@in_loop
async def test_each_scan_reads_at_most_one_batch_and_goes_on_from_its_cursor(
    stores: Stores,
) -> None:
    fill(stores.dbs[0], 250, expired_every=1)  # all of them expired
    stores.owned_now = {0}
    sw = sweeper(stores)
    first = sw.scan()
    assert first is not None and len(first.entries) == 100
    assert sw.stats.scanned == 100
    await sw.finish(first)
    second = sw.scan()
    assert second is not None and len(second.entries) == 100
    assert not {k for k, _ in first.entries} & {k for k, _ in second.entries}


@in_loop
async def test_a_scan_reads_one_partition_even_when_the_partitions_are_small(
    stores: Stores,
) -> None:
    fill(stores.dbs[0], 10, expired_every=1000)
    fill(stores.dbs[1], 10, expired_every=1000)
    sw = sweeper(stores)
    first = sw.scan()
    assert first is not None and first.partition == 0 and sw.stats.scanned == 11
    second = sw.scan()
    assert second is not None and second.partition == 1 and sw.stats.scanned == 22
    assert sw.scan() is None and sw.stats.passes == 1


@in_loop
async def test_nothing_is_deleted_locally_before_its_tombstone_is_acknowledged(
    stores: Stores,
) -> None:
    gone = fill(stores.dbs[0], 50, expired_every=5)
    stores.owned_now = {0}
    stores.auto_ack = False
    sw = sweeper(stores)
    batch = sw.scan()
    assert batch is not None and {k for k, _ in batch.entries} == gone
    finishing = asyncio.ensure_future(sw.finish(batch))
    await asyncio.sleep(0.01)
    assert not finishing.done()
    assert gone <= stores.keys(0)  # tombstones sent, none acknowledged: all still here
    stores.acks[0].set_exception(RuntimeError("broker gone"))
    for ack in stores.acks[1:]:
        ack.set_result(None)
    assert await finishing == len(gone) - 1
    failed_key = stores.tombstones[0][1]
    assert stores.keys(0) & gone == {failed_key}  # left for the next pass
    assert sw.stats.failed == 1


@in_loop
async def test_an_entry_written_again_meanwhile_is_kept(stores: Stores) -> None:
    stores.dbs[0][b"u:alarm"] = str(NOW - WINDOW_GRACE_MS - 1).encode()
    stores.owned_now = {0}
    sw = sweeper(stores)
    batch = sw.scan()
    assert batch is not None and batch.entries[0][0] == b"u:alarm"
    # A delivery opened a new window for the key after the scan, before the acks.
    stores.dbs[0][b"u:alarm"] = str(NOW + 60_000).encode()
    assert await sw.finish(batch) == 0
    assert stores.dbs[0][b"u:alarm"] == str(NOW + 60_000).encode()


@in_loop
async def test_a_partition_lost_mid_sweep_is_left_and_swept_from_the_start_when_back(
    stores: Stores,
) -> None:
    gone = fill(stores.dbs[0], 250, expired_every=1)
    stores.owned_now = {0}
    sw = sweeper(stores)
    batch = sw.scan()
    assert batch is not None
    stores.owned_now = set()  # revoked while the tombstones were in flight
    assert await sw.finish(batch) == 0
    assert stores.keys(0) >= gone  # nothing deleted locally: the new owner recovers them
    assert sw.scan() is None and 0 not in sw.cursors  # the pass ends without it
    stores.owned_now = {0}  # assigned again: a new pass starts at its first key
    again = sw.scan()
    assert again is not None and again.entries[0][0] == min(gone)


@in_loop
async def test_nothing_is_swept_while_nothing_is_owned(stores: Stores) -> None:
    fill(stores.dbs[0], 10, expired_every=1)
    stores.owned_now = set()  # a rebalance or a recovery in progress
    sw = sweeper(stores)
    assert sw.scan() is None
    assert stores.tombstones == [] and sw.stats.scanned == 0


# ----------------------------------------------------------- the check and the setting


class Table(dict):  # type: ignore[type-arg]
    last_changelog: Any = None


def test_an_expired_mark_not_swept_yet_still_skips_its_redelivery() -> None:
    request = ActionRequest.create(
        handler="h",
        event="kafka:local:t",
        action="webhook",
        payload={},
        ordering_key="k",
        id=mark(9).decode(),
        integration="local",
    )
    table = Table({request.id.encode(): str(NOW - 10 * RETENTION).encode()})
    repeat = Dedupe(table).check(request, NOW)
    assert repeat is not None and repeat.reason == ALREADY_DELIVERED


def config(text: str, tmp_path: Path) -> Any:
    path = tmp_path / "herald.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_config(str(path), environ={})


INTEGRATIONS = """\
integrations:
  - name: local
    bootstrapServers: localhost:9092
"""


def test_the_retention_defaults_to_fourteen_days(tmp_path: Path) -> None:
    assert config(INTEGRATIONS, tmp_path).herald.dedupeRetentionSeconds == 14 * 24 * 3600


@pytest.mark.parametrize("value", ["0", "-5", ".inf"])
def test_a_retention_that_is_not_a_positive_finite_time_is_refused(
    tmp_path: Path, value: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config(f"herald:\n  dedupeRetentionSeconds: {value}\n" + INTEGRATIONS, tmp_path)
    (line,) = caught.value.problems
    assert line.startswith(f"{tmp_path / 'herald.yaml'}: herald.dedupeRetentionSeconds: is ")
    assert "at least the source topics' retention.ms / 1000" in line
    assert line.endswith("set it to that or more (default 1209600, 14 days)")
