"""Self-test of the real Apache Kafka harness (tests/support/apache_kafka.py).

One KRaft node for the whole module (a JVM start costs seconds, not milliseconds): every
listener carries a produce and a read back, a wrong password and an ACL are refused the way
Kafka refuses them, and a restart keeps what was written. Skipped, with the reason, where
Java or Maven is missing. ``HERALD_KAFKA_VERSION`` picks the Kafka version (e.g. 3.9.2).
``HERALD_KAFKA_CLUSTER=1`` also runs the three-node cluster test (three JVMs: opt-in).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from agents.embedded.broker import create_topics, run_sync
from tests.support.apache_kafka import KafkaCluster, KafkaNode, unavailable_reason
from tests.support.tls import Pki

_REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(
    _REASON is not None, reason=f"real Apache Kafka cannot run here: {_REASON}"
)


@pytest.mark.skipif(
    os.environ.get("HERALD_KAFKA_CLUSTER") != "1",
    reason="three JVMs: set HERALD_KAFKA_CLUSTER=1 to run the cluster self-test",
)
def test_cluster_survives_losing_the_leader(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Kill a partition's leader: another node leads, acks=all writes still succeed
    (min.insync.replicas=2 of 3), and the killed node rejoins.

    First in the file so it runs before the module's single node starts: one Kafka at a time.
    """
    cluster = KafkaCluster(tmp_path_factory.mktemp("apache-kafka-cluster"))
    cluster.start()
    try:
        topic = f"replicated-{uuid.uuid4().hex[:8]}"
        create_topics(cluster.bootstrap, {topic: 1}, replication_factor=3)
        run_sync(lambda: _write_one(cluster.bootstrap, topic, {"acks": "all"}))
        leader = cluster.leader_of(topic, 0)
        cluster.kill(leader)
        new_leader = _wait_new_leader(cluster, topic, leader)
        assert new_leader != leader
        run_sync(lambda: _write_one(cluster.bootstrap, topic, {"acks": "all"}))
        cluster.restart(leader)
        assert run_sync(lambda: _read_all(cluster.bootstrap, topic, 2)) == [b"x", b"x"]
    finally:
        cluster.stop()


def _wait_new_leader(cluster: KafkaCluster, topic: str, old: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        leader = cluster.leader_of(topic, 0)
        if leader != old or time.monotonic() > deadline:
            return leader
        time.sleep(0.3)


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[KafkaNode]:
    """One node with every listener, on the session's test PKI."""
    node = KafkaNode(tmp_path_factory.mktemp("apache-kafka"), pki=pki)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def _topic(kafka: KafkaNode, name: str, partitions: int = 1) -> str:
    topic = f"{name}-{uuid.uuid4().hex[:8]}"
    create_topics(kafka.bootstrap, {topic: partitions})
    return topic


async def _roundtrip_async(
    address: str, topic: str, kwargs: dict[str, Any], group: str | None = None
) -> list[bytes]:
    """Write three records and read them back (through a group when `group` is given, so
    the group coordinator and the offset commit are exercised too)."""
    values = [f"v{i}-{uuid.uuid4().hex[:6]}".encode() for i in range(3)]
    producer = AIOKafkaProducer(bootstrap_servers=address, acks="all", **kwargs)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=address,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **kwargs,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        if group is None:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
        else:
            consumer.subscribe([topic])
        seen: list[bytes] = []
        while len(seen) < len(values):
            record = await asyncio.wait_for(consumer.getone(), 30)
            seen.append(record.value)
        if group is not None:
            await consumer.commit()
            assert await consumer.committed(tp) == len(values)
        return seen
    finally:
        await consumer.stop()


def _roundtrip(kafka: KafkaNode, listener: str, group: bool = True, **client: Any) -> None:
    topic = _topic(kafka, listener.lower())
    kwargs = kafka.client_kwargs(listener, **client)
    group_id = f"g-{topic}" if group else None
    seen = run_sync(lambda: _roundtrip_async(kafka.address(listener), topic, kwargs, group_id))
    assert len(seen) == 3


@pytest.mark.parametrize(
    ("listener", "mechanism"),
    [
        ("PLAINTEXT", None),
        ("SSL", None),
        ("MTLS", None),
        ("SASL_SSL", "SCRAM-SHA-512"),
        ("SASL_SSL", "PLAIN"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
        ("SCRAM512", "SCRAM-SHA-512"),  # the listener that enables SCRAM-SHA-512 alone
    ],
)
def test_produce_and_consume_on_each_listener(
    kafka: KafkaNode, listener: str, mechanism: str | None
) -> None:
    client = {"mechanism": mechanism} if mechanism else {}
    _roundtrip(kafka, listener, **client)


def test_mtls_refuses_a_client_without_a_certificate(kafka: KafkaNode) -> None:
    """The MTLS listener requires a client certificate: plain TLS to it fails the handshake."""
    kwargs = kafka.client_kwargs("SSL")  # CA only, no client certificate
    with pytest.raises(KafkaConnectionError):
        run_sync(lambda: _start_producer(kafka.mtls_bootstrap, kwargs))


async def _start_producer(address: str, kwargs: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=address, request_timeout_ms=5000, **kwargs)
    try:
        await producer.start()
    finally:
        await producer.stop()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_a_wrong_password_is_refused(kafka: KafkaNode, mechanism: str) -> None:
    """aiokafka reports a refused SASL login as a failed bootstrap (KafkaConnectionError);
    the broker's log says why."""
    before = kafka.log_text().count("Failed authentication")
    kwargs = kafka.client_kwargs("SASL_SSL", mechanism=mechanism, password="not-the-password")
    with pytest.raises(KafkaConnectionError):
        run_sync(lambda: _start_producer(kafka.sasl_ssl_bootstrap, kwargs))
    assert kafka.log_text().count("Failed authentication") > before


async def _read_one(address: str, topic: str, kwargs: dict[str, Any]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=address, **kwargs)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()


async def _write_one(address: str, topic: str, kwargs: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=address, request_timeout_ms=10000, **kwargs)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"x")
    finally:
        await producer.stop()


async def _join(address: str, topic: str, group: str, kwargs: dict[str, Any]) -> None:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=address, group_id=group, auto_offset_reset="earliest", **kwargs
    )
    await consumer.start()
    try:
        await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()


def test_acls_deny_read_write_and_group_to_a_user_not_named(kafka: KafkaNode) -> None:
    """Once a resource has an ACL, only the principals it names may use it: `reader` may
    DESCRIBE the topic but is refused READ and WRITE on it and READ on the group, `herald` is
    allowed all three.

    DESCRIBE is granted on purpose: without it the topic is missing from `reader`'s
    metadata, and an aiokafka consumer that was assigned the partition then waits for a
    leader forever instead of raising (its log says "not authorized"); with DESCRIBE, the
    fetch is what is refused, and aiokafka raises TopicAuthorizationFailedError."""
    topic = _topic(kafka, "acl")
    group = f"g-{topic}"
    for operation in ("READ", "WRITE", "DESCRIBE"):
        kafka.add_acl("User:herald", "TOPIC", topic, operation)
    kafka.add_acl("User:herald", "GROUP", group, "READ")
    kafka.add_acl("User:reader", "TOPIC", topic, "DESCRIBE")
    address = kafka.sasl_ssl_bootstrap
    herald = kafka.client_kwargs("SASL_SSL", user="herald")
    reader = kafka.client_kwargs("SASL_SSL", user="reader")

    run_sync(lambda: _write_one(address, topic, herald))
    run_sync(lambda: _read_one(address, topic, herald))
    run_sync(lambda: _join(address, topic, group, herald))

    with pytest.raises(TopicAuthorizationFailedError):
        run_sync(lambda: _read_one(address, topic, reader))
    with pytest.raises(TopicAuthorizationFailedError):
        run_sync(lambda: _write_one(address, topic, reader))
    other = _topic(kafka, "acl-open")  # no ACL on it: open to reader
    run_sync(lambda: _write_one(address, other, reader))
    kafka.add_acl("User:reader", "TOPIC", other, "READ")
    with pytest.raises(GroupAuthorizationFailedError):
        run_sync(lambda: _join(address, other, group, reader))


def test_a_scram_user_added_at_run_time_can_log_in(kafka: KafkaNode) -> None:
    kafka.add_scram_user("late", "late-Secret-pw-1")
    _roundtrip(kafka, "SASL_PLAINTEXT", group=False, user="late", mechanism="SCRAM-SHA-256")


def test_restart_keeps_a_topics_records(kafka: KafkaNode) -> None:
    """Same ports and data directory after a graceful restart and after a SIGKILL."""
    topic = _topic(kafka, "durable")
    run_sync(lambda: _write_one(kafka.bootstrap, topic, {}))
    ports = dict(kafka.ports)
    kafka.restart()
    assert kafka.ports == ports
    run_sync(lambda: _write_one(kafka.bootstrap, topic, {}))
    kafka.restart(kill=True)
    values = run_sync(lambda: _read_all(kafka.bootstrap, topic, 2))
    assert values == [b"x", b"x"]
    _roundtrip(kafka, "SASL_SSL")  # every listener is back, SCRAM users too


async def _read_all(address: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=address)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        return [(await asyncio.wait_for(consumer.getone(), 30)).value for _ in range(count)]
    finally:
        await consumer.stop()
