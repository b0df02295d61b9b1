"""A record batch that cannot be read stops only its own partition (issue 10).

Before: aiokafka raised CorruptRecordException out of `getmany`, Faust's fetch loop crashed
the worker, and every restart met the same batch again. Now the partition stops at the batch
with an error naming integration, topic, partition and offset (log and /ready), everything
else keeps flowing, and `herald skip` (or `herald.unreadableBatches: skip`) records the range
on the dead-letter topic and resumes the partition, committing past it only then.

These run on tansu: Apache Kafka validates every batch's CRC when it is produced and refuses
a corrupt one (CORRUPT_MESSAGE), so a Kafka consumer meets one only from a damaged disk or
an intermediary; tansu stores the bytes as sent, which lets the test put one in the log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from agents.embedded.broker import EmbeddedBroker
from agents.embedded.receiver import Receiver
from tests.integration.test_guarantees import numbered_handler, wait_all, wait_delivered
from tests.integration.test_ilagent import committed, wait_until
from tests.support.detector import audit_deployment
from tests.support.herald import HeraldDeployment, webhook_target
from tests.support.kafka import consume, produce
from tests.support.rawbatch import build_batch, corrupt_crc, produce_batches


def numbered(first: int, count: int) -> list[dict]:
    return [{"n": n, "k": f"k{n % 3}"} for n in range(first, first + count)]


def write_partition_zero(bootstrap: str, topic: str) -> int:
    """Partition 0: n 0..9, a corrupt batch (n 10..14), then n 15..24. Returns the corrupt
    batch's first offset."""
    offsets = produce_batches(
        bootstrap,
        topic,
        0,
        [
            build_batch(numbered(0, 10)),
            corrupt_crc(build_batch(numbered(10, 5))),
            build_batch(numbered(15, 10)),
        ],
    )
    return offsets[1]


def ready(worker) -> dict:
    try:
        with urllib.request.urlopen(f"{worker.web_url}/ready", timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def deployment(
    tmp_path: Path, broker: EmbeddedBroker, receiver: Receiver, topic: str, other: str, **settings
) -> HeraldDeployment:
    handlers = [numbered_handler(topic), {**numbered_handler(other), "name": "other"}]
    return HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=handlers,
        targets=[webhook_target(receiver.url)],
        source_partitions=2,
        settings=settings or None,
    )


def test_a_corrupt_batch_stops_its_partition_until_herald_skip(
    tansu: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    topic, other = unique_topic("corrupt"), unique_topic("clean")
    herald = deployment(tmp_path, tansu, receiver, topic, other)
    try:
        bad = write_partition_zero(tansu.bootstrap, topic)
        produce(tansu.bootstrap, topic, [{"value": v, "partition": 1} for v in numbered(100, 20)])
        produce(tansu.bootstrap, other, [{"value": v} for v in numbered(200, 20)])
        worker = herald.start_worker()

        # Everything but partition 0 from the corrupt batch on is delivered.
        flowing = set(range(10)) | set(range(100, 120)) | set(range(200, 220))
        wait_all(receiver, flowing, timeout=90)
        stopped = wait_until(
            lambda: ready(worker)["unreadablePartitions"], 60, "the partition on /ready"
        )
        print(f"\n/ready unreadablePartitions: {stopped}")
        assert stopped[0]["topic"] == topic and stopped[0]["partition"] == 0
        assert stopped[0]["offset"] == bad and stopped[0]["endOffset"] == bad + 5
        assert stopped[0]["integration"] == "local"
        assert "CorruptRecordException" in stopped[0]["reason"]
        assert worker.running
        log = worker.log_text()
        assert f"Partition {topic}/0 is stopped at offset {bad}" in log
        assert "integration local" in log
        # More records behind the stop wait; the other topic keeps flowing meanwhile.
        produce(tansu.bootstrap, other, [{"value": v} for v in numbered(220, 10)])
        wait_all(receiver, set(range(220, 230)), timeout=60)
        assert wait_delivered(receiver, set(range(15, 25)), timeout=3) == set(range(15, 25))
        assert committed(tansu.bootstrap, herald.group, topic) <= bad

        env = {**os.environ, "HERALD_CONFIG": str(herald.config_path)}
        args = ["--topic", topic, "--partition", "0", "--offset", str(bad)]
        result = subprocess.run(
            [sys.executable, "-m", "agents.cli", "skip", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        print(result.stdout.strip())

        wait_all(receiver, set(range(15, 25)), timeout=60)
        letters = consume(tansu.bootstrap, herald.dlq_topic, 1, timeout=30)
        letter = letters[0]["json"]
        print(f"dead letter: {letter['reason']}")
        assert letter["stage"] == "fetch"
        assert letter["source"]["topic"] == topic and letter["source"]["partition"] == 0
        assert letter["source"]["offset"] == bad and letter["source"]["endOffset"] == bad + 5
        assert "CorruptRecordException" in letter["reason"]
        wait_until(
            lambda: committed(tansu.bootstrap, herald.group, topic) == bad + 15,
            60,
            "the commit past the batch",
        )
        assert ready(worker)["unreadablePartitions"] == []
        assert worker.running
        report = audit_deployment(herald)
        print(f"audit: {report.summary()}")
        assert report.lost == [] and report.unreadable == 1
    finally:
        herald.stop()


def test_unreadable_batches_skip_setting_skips_and_records_at_once(
    tansu: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    topic, other = unique_topic("corrupt"), unique_topic("clean")
    herald = deployment(tmp_path, tansu, receiver, topic, other, unreadableBatches="skip")
    try:
        bad = write_partition_zero(tansu.bootstrap, topic)
        produce(tansu.bootstrap, other, [{"value": v} for v in numbered(200, 20)])
        worker = herald.start_worker()
        wait_all(receiver, set(range(10)) | set(range(15, 25)) | set(range(200, 220)), timeout=90)
        letters = consume(tansu.bootstrap, herald.dlq_topic, 1, timeout=30)
        assert letters[0]["json"]["stage"] == "fetch"
        assert letters[0]["json"]["source"]["offset"] == bad
        assert "herald.unreadableBatches: skip" in letters[0]["json"]["reason"]
        delivered = {r.json["n"] for r in receiver.requests if r.status == 202}
        assert not delivered & set(range(10, 15))  # what could not be read was not invented
        assert worker.running
    finally:
        herald.stop()
