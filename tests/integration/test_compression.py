"""Record batches compressed with every codec Kafka defines are consumed (issue 10).

Java and librdkafka producers on Confluent Cloud and MSK commonly write snappy, lz4 or zstd.
Without the codec libraries aiokafka raises UnsupportedCodecError in its fetcher and the worker
exits, again after every restart. Here confluent-kafka (librdkafka) writes the batches, the
way those producers do, next to an uncompressed topic in the same deployment.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from confluent_kafka import Producer

from agents.embedded.broker import EmbeddedBroker, create_topics
from agents.embedded.receiver import Receiver
from tests.integration.test_guarantees import messages, numbered_handler, wait_all
from tests.support.herald import HeraldDeployment, webhook_target
from tests.support.kafka import consume, produce
from tests.support.rawbatch import batch_codecs

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
PER_CODEC = 200


def produce_compressed(bootstrap: str, topic: str, codec: str, first: int) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": codec,
            "linger.ms": 20,  # many records per batch, so batches really are compressed
            "batch.num.messages": 100,
        }
    )
    for n in range(first, first + PER_CODEC):
        value = orjson.dumps({"n": n, "k": f"k{n % 7}", "codec": codec, "pad": "x" * 200})
        producer.produce(topic, value=value, key=f"k{n % 7}".encode())
        producer.poll(0)
    assert producer.flush(30) == 0


def test_batches_of_every_codec_are_consumed_beside_an_uncompressed_topic(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    topics = {codec: unique_topic(codec) for codec in CODECS}
    handlers = [
        {
            "name": f"from-{codec}",
            "event": f"kafka:local:{topic}",
            "active": True,
            "actions": [
                {"action": "webhook", "webhook": {"url": "n", "body": {"n": "${n}", "k": "${k}"}}}
            ],
        }
        for codec, topic in topics.items()
    ]
    herald = HeraldDeployment(
        tmp_path, broker.bootstrap, handlers=handlers, targets=[webhook_target(receiver.url)]
    )
    try:
        for index, (codec, topic) in enumerate(topics.items()):
            produce_compressed(broker.bootstrap, topic, codec, index * PER_CODEC)
        worker = herald.start_worker()
        wait_all(receiver, set(range(len(CODECS) * PER_CODEC)), timeout=90)
        assert worker.running
        assert "UnsupportedCodecError" not in worker.log_text()
    finally:
        herald.stop()


def test_a_record_too_large_to_forward_is_dead_lettered_and_the_rest_flows(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    """A 5 MB JSON value whose action would carry it whole: the producer's limit (1 MB by
    default) refuses that request, which once crashed the worker on every restart."""
    topic = unique_topic("large")
    # A topic that takes records of megabytes, as one carrying them is set up on Kafka (the
    # broker's default max.message.bytes is 1 MiB; a segment must hold the batch too).
    create_topics(
        broker.bootstrap,
        {topic: 1},
        configs={topic: {"max.message.bytes": "8000000", "segment.bytes": "16777216"}},
    )
    handler = {
        "name": "whole",
        "event": f"kafka:local:{topic}",
        "active": True,
        "actions": [
            {"action": "webhook", "webhook": {"url": "n", "body": {"n": "${n}", "all": "${$}"}}}
        ],
    }
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[handler],
        targets=[webhook_target(receiver.url)],
        source_partitions=1,
    )
    try:
        big = {"n": -1, "blob": "y" * 5_000_000}
        records = [{"key": "k", "value": {"n": n}} for n in range(50)]
        records += [{"key": "k", "value": big}]
        records += [{"key": "k", "value": {"n": n}} for n in range(50, 100)]
        produce(broker.bootstrap, topic, records, client_kwargs={"max_request_size": 8_000_000})
        worker = herald.start_worker()
        wait_all(receiver, set(range(100)), timeout=90)
        letters = consume(broker.bootstrap, herald.dlq_topic, 1, timeout=20)
        assert worker.running
        assert len(letters) == 1
        letter = letters[0]["json"]
        print(
            f"\nlarge record: dead letter of {len(letters[0]['value'])} bytes: {letter['reason']}"
        )
        assert letter["stage"] == "size"
        assert letter["source"]["offset"] == 50
        assert "over the producer's limit" in letter["reason"]
        assert letter["value"] is None  # 5 MB do not fit in a dead letter either
    finally:
        herald.stop()


def test_herald_writes_its_own_records_with_the_integrations_compression_type(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    """`compressionType: zstd` on the integration: the action requests and execution records
    Herald writes are zstd batches (Kafka's producer default, none, before)."""
    topic = unique_topic("zstd")
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[numbered_handler(topic)],
        targets=[webhook_target(receiver.url)],
        integration={"compressionType": "zstd"},
        source_partitions=1,
    )
    try:
        produce(broker.bootstrap, topic, messages(300, 5))
        worker = herald.start_worker()
        wait_all(receiver, set(range(300)), timeout=90)
        actions = batch_codecs(broker.bootstrap, f"{herald.prefix}-actions", 4)
        executions = batch_codecs(broker.bootstrap, herald.executions_topic, 4)
        print(f"\nbatch codecs: actions {set(actions)}, executions {set(executions)}")
        assert actions and set(actions) == {4}
        assert executions and set(executions) == {4}
        assert worker.running
    finally:
        herald.stop()
