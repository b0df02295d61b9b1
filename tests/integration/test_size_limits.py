"""Records over the broker's size limit never stop a worker (issue 10), on Apache Kafka.

The broker refuses a record larger than its topic's `max.message.bytes` (MESSAGE_TOO_LARGE).
Herald reads that limit for its own topics at start (DescribeConfigs) and fits every action
request under it; a limit lowered while the worker runs is met by a refusal, which becomes a
dead letter too. Before, the refusal reached the source agent and it crashed the worker
(`app.crash`), again after every restart.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import MessageSizeTooLargeError

from agents.embedded.broker import create_topics
from agents.embedded.receiver import Receiver
from agents.producer import send_alone
from tests.integration.test_guarantees import wait_all
from tests.support.brokers import is_tansu
from tests.support.herald import HeraldDeployment, webhook_target
from tests.support.kafka import consume, produce

LIMIT = 60_000


def whole_value_handler(topic: str) -> dict:
    """The webhook carries the whole event, so a large event makes a large action request."""
    return {
        "name": "whole",
        "event": f"kafka:local:{topic}",
        "active": True,
        "actions": [
            {"action": "webhook", "webhook": {"url": "n", "body": {"n": "${n}", "all": "${$}"}}}
        ],
    }


def events(first: int, count: int, pad: int = 10) -> list[dict]:
    return [{"key": "k", "value": {"n": n, "pad": "x" * pad}} for n in range(first, first + count)]


def set_max_message_bytes(bootstrap: str, topic: str, value: int) -> None:
    async def alter() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            resource = ConfigResource(
                ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(value)}
            )
            await admin.alter_configs([resource])
        finally:
            await admin.close()

    asyncio.run(alter())


@pytest.fixture
def kafka_broker(broker):
    if is_tansu(broker.bootstrap):
        pytest.skip("tansu has no max.message.bytes (nor DescribeConfigs)")
    return broker


def deployment(tmp_path: Path, bootstrap: str, receiver: Receiver, topic: str) -> HeraldDeployment:
    return HeraldDeployment(
        tmp_path,
        bootstrap,
        handlers=[whole_value_handler(topic)],
        targets=[webhook_target(receiver.url)],
        source_partitions=1,
    )


def test_an_action_over_the_topics_max_message_bytes_is_dead_lettered_at_once(
    kafka_broker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    topic = unique_topic("limit")
    herald = deployment(tmp_path, kafka_broker.bootstrap, receiver, topic)
    actions = f"{herald.prefix}-actions"
    # The operator's cluster caps the actions topic below the producer's 1 MiB.
    create_topics(
        kafka_broker.bootstrap, {actions: 4}, configs={actions: {"max.message.bytes": str(LIMIT)}}
    )
    try:
        worker = herald.start_worker()
        worker.wait_ready(60, pattern="fitted under")
        produce(
            kafka_broker.bootstrap,
            topic,
            [*events(0, 20), *events(20, 1, pad=100_000), *events(21, 20)],
        )
        wait_all(receiver, set(range(20)) | set(range(21, 41)), timeout=90)
        letters = consume(kafka_broker.bootstrap, herald.dlq_topic, 1, timeout=30)
        letter = letters[0]["json"]
        print(f"\ndead letter: {letter['reason'][:300]}")
        assert letter["stage"] == "size" and letter["source"]["offset"] == 20
        assert "max.message.bytes" in letter["reason"]
        assert worker.running
    finally:
        herald.stop()


def test_a_limit_lowered_while_running_turns_the_refusal_into_a_dead_letter(
    kafka_broker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    topic = unique_topic("lowered")
    herald = deployment(tmp_path, kafka_broker.bootstrap, receiver, topic)
    try:
        worker = herald.start_worker()
        produce(kafka_broker.bootstrap, topic, events(0, 10))
        wait_all(receiver, set(range(10)), timeout=60)
        set_max_message_bytes(kafka_broker.bootstrap, f"{herald.prefix}-actions", LIMIT)
        produce(
            kafka_broker.bootstrap,
            topic,
            [*events(10, 1, pad=100_000), *events(11, 10)],
        )
        wait_all(receiver, set(range(11, 21)), timeout=90)
        letters = consume(kafka_broker.bootstrap, herald.dlq_topic, 1, timeout=30)
        letter = letters[0]["json"]
        print(f"\ndead letter: {letter['reason'][:300]}")
        assert letter["stage"] == "size" and letter["source"]["offset"] == 10
        assert "refused" in letter["reason"]
        assert worker.running
        assert "We experienced a crash" not in worker.log_text()
    finally:
        herald.stop()


def test_producer_batches_stay_under_the_topics_max_message_bytes(
    kafka_broker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    """The broker applies max.message.bytes to each producer batch, and Herald's batches hold
    up to `producerBatchBytes` (1,000,000): a burst of records well under the topics' limit
    must not be sent as one batch over it (refused, so dead-lettered or retried)."""
    topic = unique_topic("batches")
    herald = deployment(tmp_path, kafka_broker.bootstrap, receiver, topic)
    capped = {"max.message.bytes": str(LIMIT)}
    create_topics(
        kafka_broker.bootstrap,
        {f"{herald.prefix}-actions": 4, f"{herald.prefix}-executions": 4},
        configs={f"{herald.prefix}-actions": capped, f"{herald.prefix}-executions": capped},
    )
    try:
        worker = herald.start_worker()
        worker.wait_ready(60, pattern="producer batches held under")
        # 400 actions of ~4 KB on one key (one partition) in one burst: ~1.6 MB at once
        produce(kafka_broker.bootstrap, topic, events(0, 400, pad=2_000))
        wait_all(receiver, set(range(400)), timeout=120)
        assert consume(kafka_broker.bootstrap, herald.dlq_topic, 1, timeout=5) == []
        assert "MessageSizeTooLarge" not in worker.log_text()
        assert worker.running
    finally:
        herald.stop()


def test_a_batch_refused_as_too_large_is_told_apart_from_its_records(
    kafka_broker, unique_topic
) -> None:
    """The broker refuses a producer batch as a whole: records that shared a batch with one
    over the topic's limit fail with it, and `send_alone` (agents.producer) writes each of
    them in a batch of its own, where only the oversized one is refused again."""
    topic = unique_topic("alone")
    create_topics(
        kafka_broker.bootstrap, {topic: 1}, configs={topic: {"max.message.bytes": str(LIMIT)}}
    )

    async def scenario() -> tuple[list[bool], list[bool]]:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_broker.bootstrap, max_batch_size=1_000_000, linger_ms=50
        )
        await producer.start()
        try:
            values = [b"s" * 100, b"L" * 100_000, b"s" * 100]
            # One partition, one linger: the three go to the broker as one batch.
            batched = [await producer.send(topic, v, key=b"k") for v in values]
            together = await asyncio.gather(*batched, return_exceptions=True)
            refused = [isinstance(r, MessageSizeTooLargeError) for r in together]
            alone = []
            for v in values:
                fut = await send_alone(producer, topic, b"k", v)
                result = (await asyncio.gather(fut, return_exceptions=True))[0]
                alone.append(isinstance(result, MessageSizeTooLargeError))
            return refused, alone
        finally:
            await producer.stop()

    refused, alone = asyncio.run(scenario())
    assert refused == [True, True, True]
    assert alone == [False, True, False]
    written = consume(kafka_broker.bootstrap, topic, 2, timeout=30)
    assert [len(r["value"]) for r in written] == [100, 100]
