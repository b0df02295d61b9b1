"""Kafka's own Java tools against Herald (issue 11): what Java producers write is consumed,
and what Herald commits is what Kafka's own group tool reports.

Java producers on Confluent Cloud and MSK write snappy, lz4 and zstd batches with the Java
client's codec libraries; here Kafka's console producer (the Java client) writes each codec.
`kafka-consumer-groups --describe` then reads the group's committed offsets and lag
independently of Herald and of aiokafka: every partition at its end, lag 0.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from agents.embedded.receiver import Receiver
from tests.integration.test_guarantees import wait_all
from tests.support.brokers import is_tansu
from tests.support.herald import HeraldDeployment, webhook_target

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
PER_CODEC = 100


@pytest.fixture
def java_broker(broker: Any) -> Any:
    if is_tansu(broker.bootstrap):
        pytest.skip("Kafka's Java tools run against the Apache Kafka test broker")
    return broker


def tool(node: Any, names: dict[int, str]) -> str:
    """A tool's main class where it moved between the lines (the console producer: to
    org.apache.kafka.tools in Kafka 4)."""
    return names[4] if int(node.version.split(".")[0]) >= 4 else names[3]


def console_produce(node: Any, topic: str, codec: str, lines: list[str]) -> None:
    main = tool(
        node, {4: "org.apache.kafka.tools.ConsoleProducer", 3: "kafka.tools.ConsoleProducer"}
    )
    command = [
        *node._jvm(heap="256m"),
        main,
        "--bootstrap-server",
        node.bootstrap,
        "--topic",
        topic,
        "--producer-property",
        f"compression.type={codec}",
        "--producer-property",
        "linger.ms=50",  # many records per batch, so the batches really are compressed
        "--property",
        "parse.key=true",
        "--property",
        "key.separator=|",
    ]
    result = subprocess.run(
        command, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def group_lag(node: Any, group: str) -> dict[tuple[str, int], tuple[int, int, int]]:
    """(topic, partition) → (current offset, log end offset, lag), as the tool prints them."""
    # In org.apache.kafka.tools since Kafka 3.7, so in both lines the suite runs.
    main = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
    output = node.run_tool(main, "--describe", "--group", group)
    rows: dict[tuple[str, int], tuple[int, int, int]] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[0] == group and parts[2].isdigit():
            current, end, lag = parts[3], parts[4], parts[5]
            if current.isdigit() and end.isdigit() and lag.isdigit():
                rows[(parts[1], int(parts[2]))] = (int(current), int(end), int(lag))
    return rows


def test_java_producers_of_every_codec_are_consumed_and_kafkas_group_tool_sees_lag_zero(
    java_broker: Any, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    topic = unique_topic("java")
    handler = {
        "name": "java",
        "event": f"kafka:local:{topic}",
        "active": True,
        "actions": [{"action": "webhook", "webhook": {"url": "n", "body": {"n": "${n}"}}}],
    }
    herald = HeraldDeployment(
        tmp_path,
        java_broker.bootstrap,
        handlers=[handler],
        targets=[webhook_target(receiver.url)],
        source_partitions=3,
    )
    try:
        for index, codec in enumerate(CODECS):
            first = index * PER_CODEC
            lines = [
                f'k{n % 5}|{{"n": {n}, "codec": "{codec}", "pad": "{"x" * 100}"}}'
                for n in range(first, first + PER_CODEC)
            ]
            console_produce(java_broker, topic, codec, lines)
        worker = herald.start_worker()
        wait_all(receiver, set(range(len(CODECS) * PER_CODEC)), timeout=120)
        assert worker.running

        deadline = time.monotonic() + 60
        while True:
            rows = {tp: row for tp, row in group_lag(java_broker, herald.group).items()}
            source = {tp: row for tp, row in rows.items() if tp[0] == topic}
            if len(source) == 3 and all(lag == 0 for _, _, lag in source.values()):
                break
            assert time.monotonic() < deadline, f"kafka-consumer-groups: {rows}"
            time.sleep(1)
        print(f"\nkafka-consumer-groups on {topic}: {sorted(source.items())}")
        assert sum(end for _, end, _ in source.values()) == len(CODECS) * PER_CODEC
    finally:
        herald.stop()
