"""Dedupe state is bounded (issue 16): expired entries leave the worker's RocksDB and get a
tombstone in the changelog, so its compaction can drop them; a SIGKILL in the middle of a
sweep leaves nothing behind in either place.

Real worker processes on the session broker, a short `dedupeRetentionSeconds`; the changelog
(`<consumerGroupId>-dedupe-changelog`) is read with a consumer of its own and the RocksDB
stores with rocksdict once the worker has stopped (RocksDB allows one process at a time).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from rocksdict import AccessType, Options, Rdict

from agents.embedded.broker import create_topics, run_sync
from agents.embedded.receiver import Receiver
from tests.support.herald import HeraldDeployment, wait_until, webhook_target
from tests.support.kafka import produce

PARTITIONS = 4  # tests.support.herald FAST_SETTINGS' actionPartitions


def idle_deployment(
    tmp_path: Path,
    broker: Any,
    receiver: Receiver,
    topic: str,
    settings: dict[str, Any] | None = None,
) -> HeraldDeployment:
    """A deployment whose one handler on `topic` is never fed: the tests fill its dedupe
    changelog themselves."""
    return HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[
            {
                "name": "idle",
                "event": f"kafka:local:{topic}",
                "active": True,
                "actions": [{"action": "webhook", "webhook": {"url": "x"}}],
            }
        ],
        targets=[webhook_target(receiver.url)],
        settings=settings or {},
    )


def changelog_of(deployment: HeraldDeployment) -> str:
    return f"{deployment.group}-dedupe-changelog"


async def _latest(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """Every key's last record in the topic, read up to its end offsets (None: a tombstone)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=f"test-changelog-{uuid.uuid4().hex[:8]}",
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        last: dict[bytes, bytes | None] = {}
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500)
            for tp in sorted(batch, key=lambda tp: tp.partition):
                for record in batch[tp]:
                    last[record.key] = record.value
        return last
    finally:
        await consumer.stop()


def latest(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    return run_sync(lambda: _latest(bootstrap, topic))


def stored(datadir: Path) -> dict[bytes, bytes]:
    """The dedupe table's entries in the worker's RocksDB stores (Faust's keys left out)."""
    entries: dict[bytes, bytes] = {}
    paths = sorted(datadir.glob("**/dedupe-*.db"))
    assert paths, f"no dedupe store under {datadir}"
    for path in paths:
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            entries.update((k, v) for k, v in db.items() if not k.startswith(b"__faust"))
        finally:
            db.close()
    return entries


def test_expired_entries_leave_rocksdb_and_get_a_changelog_tombstone(
    broker: Any, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    """Retention 3 s: the two delivery marks and the 1 s window's entry go; the entry of the
    window still open (an hour) stays, in RocksDB and in the changelog."""
    topic = unique_topic("expiry")
    handler = {
        "name": "expiring",
        "event": f"kafka:local:{topic}",
        "active": True,
        "actions": [
            {
                "action": "webhook",
                "dedupe": {"key": "long-${k}", "windowSeconds": 3600},
                "webhook": {"url": "long", "body": {"k": "${k}"}},
            },
            {
                "action": "webhook",
                "dedupe": {"key": "short-${k}", "windowSeconds": 1},
                "webhook": {"url": "short", "body": {"k": "${k}"}},
            },
        ],
    }
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[handler],
        targets=[webhook_target(receiver.url)],
        settings={"dedupeRetentionSeconds": 3},
    )
    changelog = changelog_of(herald)
    try:
        worker = herald.start_worker()
        produce(broker.bootstrap, topic, [{"key": "a", "value": {"k": "a"}}])
        receiver.wait_for(2, timeout=60)

        def two_marks() -> set[bytes] | None:
            keys = {k for k in latest(broker.bootstrap, changelog) if not k.startswith(b"u:")}
            return keys if len(keys) == 2 else None

        marks = wait_until(two_marks, 60, "the two delivery marks in the changelog")

        def swept() -> dict[bytes, bytes | None] | None:
            last = latest(broker.bootstrap, changelog)
            gone = [last.get(key, b"absent") for key in (*marks, b"u:short-a")]
            return last if all(value is None for value in gone) else None

        last = wait_until(swept, 90, "tombstones for the expired entries")
        assert last[b"u:long-a"] is not None and int(last[b"u:long-a"]) > time.time() * 1000
        # The local deletes follow the acknowledgements: wait for the pass that made them.
        swept_all = r"dedupe expiry: pass done .* \d+ scanned, (?:[3-9]|\d\d+) deleted"
        worker.wait_for_log(swept_all, 60)
        worker.stop()
        assert set(stored(worker.datadir)) == {b"u:long-a"}
    finally:
        herald.stop()


def test_a_sigkill_mid_sweep_leaves_no_expired_entry_in_rocksdb_or_the_changelog(
    broker: Any, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    """20,000 expired and 2,000 live marks (and a window of each kind) in the changelog; the
    worker recovers them, is SIGKILLed as soon as its sweep starts deleting, and restarted on
    the same data directory. In the end every expired entry is a tombstone in the changelog
    and gone from RocksDB, every live one is in both with its value, wherever the kill fell."""
    topic = unique_topic("expirykill")
    herald = idle_deployment(tmp_path, broker, receiver, topic, {"dedupeRetentionSeconds": 3600})
    changelog = changelog_of(herald)
    now = int(time.time() * 1000)
    old = str(now - 2 * 3600 * 1000).encode()
    fresh = str(now).encode()
    expired = {f"{i:032x}".encode(): old for i in range(20_000)}
    expired[b"u:over"] = str(now - 3600 * 1000).encode()
    live = {f"{i:032x}".encode(): fresh for i in range(20_000, 22_000)}
    live[b"u:open"] = str(now + 3600 * 1000).encode()
    create_topics(
        broker.bootstrap,
        {changelog: PARTITIONS},
        configs={changelog: {"cleanup.policy": "compact"}},
    )
    entries = [*expired.items(), *live.items()]
    produce(
        broker.bootstrap,
        changelog,
        [{"key": k, "value": v, "partition": i % PARTITIONS} for i, (k, v) in enumerate(entries)],
        timeout=120,
    )
    try:
        worker = herald.worker()
        worker.start()
        worker.wait_for_log(r"dedupe expiry: deleting expired entries", timeout=120)

        def some_tombstoned() -> int:
            last = latest(broker.bootstrap, changelog)
            return sum(1 for key in expired if last.get(key, b"") is None)

        wait_until(some_tombstoned, 60, "a first tombstone")  # a batch acknowledged
        worker.kill()  # with the rest of the pass to come (20 batches, 50 ms apart at least)
        tombstoned = some_tombstoned()
        print(f"\nat the SIGKILL: {tombstoned} of {len(expired)} expired entries tombstoned")

        herald.start_worker(worker, timeout=120)

        def all_tombstoned() -> dict[bytes, bytes | None] | None:
            last = latest(broker.bootstrap, changelog)
            return last if all(last.get(key, b"") is None for key in expired) else None

        last = wait_until(all_tombstoned, 120, "a tombstone for every expired entry")
        # The first full pass after the restart: whatever the kill left locally is gone.
        worker.wait_for_log(rf"dedupe expiry: pass done over {PARTITIONS} partition", 60)
        worker.stop()
        assert {key: last[key] for key in live} == live
        assert stored(worker.datadir) == live
    finally:
        herald.stop()
