"""The dedupe table recovers from its changelog a fetched batch at a time (agents.recovery), and
a SIGKILL in the middle of that recovery loses nothing: after a restart on the same data
directory the worker's RocksDB holds exactly the changelog's final state (later values over
earlier ones, tombstoned keys absent), however far the first recovery had got.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agents.embedded.broker import create_topics
from agents.embedded.receiver import Receiver
from tests.integration.test_dedupe_expiry import (
    PARTITIONS,
    changelog_of,
    idle_deployment,
    latest,
    stored,
)
from tests.support.kafka import produce

KEYS = 300_000
#: How long into the recovery the SIGKILL comes: where it lands only changes what the restart
#: has left to do (printed), not what the test asserts.
KILL_AFTER_S = 1.0


def test_a_sigkill_mid_recovery_then_a_restart_holds_the_changelogs_final_state(
    broker: Any, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    topic = unique_topic("recovery")
    herald = idle_deployment(tmp_path, broker, receiver, topic)
    changelog = changelog_of(herald)
    now = int(time.time() * 1000)
    compacted = {changelog: {"cleanup.policy": "compact"}}
    create_topics(broker.bootstrap, {changelog: PARTITIONS}, configs=compacted)
    # Every key once; then every 10th written again with a later value and every 7th deleted,
    # so the final state depends on the order records are applied in.
    first = [(f"{i:032x}".encode(), str(now - i).encode()) for i in range(KEYS)]
    later: list[tuple[bytes, bytes | None]] = []
    for i in range(0, KEYS, 10):
        later.append((f"{i:032x}".encode(), str(now + i).encode()))
    for i in range(0, KEYS, 7):
        later.append((f"{i:032x}".encode(), None))
    records = [
        {"key": key, "value": value, "partition": int(key, 16) % PARTITIONS}
        for key, value in (*first, *later)
    ]
    produce(broker.bootstrap, changelog, records, timeout=180)
    final = {k: v for k, v in latest(broker.bootstrap, changelog).items() if v is not None}
    assert len(final) == KEYS - len(range(0, KEYS, 7))
    try:
        worker = herald.worker()
        worker.start()
        worker.wait_for_log(r"Restoring state from changelog topics", timeout=120)
        time.sleep(KILL_AFTER_S)
        worker.kill()  # inside the recovery: some batches applied, the rest not yet
        partial = len(stored(worker.datadir)) if list(worker.datadir.glob("**/dedupe-*.db")) else 0
        print(f"\nat the SIGKILL: {partial} of {len(final)} keys in RocksDB")
        herald.start_worker(worker, timeout=180)
        worker.stop()
        assert stored(worker.datadir) == final
    finally:
        herald.stop()
