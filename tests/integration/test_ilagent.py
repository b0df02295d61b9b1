"""`herald ilagent daemon` end to end: ilagent's flags, a real broker, the daemon's worker, and
the exact ilert requests at the receiver.

Every ilagent flag is exercised here: the mapping flags in the first run, the defaults, the
payload forwarding, the heartbeat topic, `-b` and the HTTP API in the second, TLS + SASL from
Herald's extra flags and the environment in the third. Each run is one daemon process.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.embedded.broker import EmbeddedBroker, create_topics, run_sync
from agents.embedded.receiver import Receiver, Reply
from tests.support.ilagent import IlagentDaemon
from tests.support.kafka import consume, produce


@pytest.fixture
def daemons() -> Iterator[list[IlagentDaemon]]:
    started: list[IlagentDaemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def start(
    daemons: list[IlagentDaemon], tmp_path: Path, flags: list[str], **kwargs: Any
) -> IlagentDaemon:
    daemon = IlagentDaemon(flags, workdir=tmp_path / f"daemon-{len(daemons)}", **kwargs)
    daemons.append(daemon)
    return daemon.start_ready()


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.2)


def committed(bootstrap: str, group: str, topic: str, **client_kwargs: Any) -> int:
    """The offsets group `group` committed on partition 0 of `topic` (-1: none)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read() -> int:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, **client_kwargs
        )
        await consumer.start()
        try:
            offset = await consumer.committed(TopicPartition(topic, 0))
            return -1 if offset is None else offset
        finally:
            await consumer.stop()

    return run_sync(read)


def test_mapping_flags_filters_and_a_new_group_starting_at_the_end(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path, daemons
) -> None:
    topic = unique_topic("alarms")
    group = f"ilagent-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, {topic: 1})
    # Written before the daemon's group existed: ilagent (a new group) starts after it.
    produce(broker.bootstrap, topic, [{"key": "M-1", "value": alarm("SET", "old alarm")}])
    daemon = start(
        daemons,
        tmp_path,
        [
            "--kafka_brokers", broker.bootstrap,
            "--kafka_group_id", group,
            "-e", topic,
            "--event_key", "il1-static-key",
            "--map_key_summary", "msg",
            "--map_key_alert_key", "data.code",
            "--map_key_etype", "state",
            "--map_val_etype_alert", "SET",
            "--map_val_etype_accept", "ACK",
            "--map_val_etype_resolve", "CLR",
            "--filter_key", "type",
            "--filter_val", "ALARM",
            "-vvv",
            "--ilert_base_url", receiver.url,
        ],
    )  # fmt: skip
    produce(
        broker.bootstrap,
        topic,
        [
            {"key": "M-1", "value": alarm("SET", "Pump failure")},
            {"key": "M-1", "value": alarm("ACK", None)},
            {"key": None, "value": alarm("CLR", "Pressure normal")},
            {"key": "x", "value": {**alarm("SET", "info only"), "type": "INFO"}},  # filtered
            {"key": "y", "value": {"state": "SET", "msg": "no type"}},  # filtered: no key
            {"key": "z", "value": "not JSON at all"},  # ilagent drops it; Herald dead-letters
        ],
    )
    events = receiver.wait_for(3, timeout=60, path="/api/v1/events/kafka/")
    details = {"messageKey": "M-1", "topic": topic}
    assert [(e.method, e.path, e.json) for e in events] == [
        (
            "POST",
            "/api/v1/events/kafka/il1-static-key",
            {
                "integrationKey": "il1-static-key",
                "eventType": "ALERT",
                "summary": "Pump failure",
                "alertKey": "M-1",
                "customDetails": details,
            },
        ),
        (
            "POST",
            "/api/v1/events/kafka/il1-static-key",
            {
                "integrationKey": "il1-static-key",
                "eventType": "ACCEPT",
                "alertKey": "M-1",
                "customDetails": details,
            },
        ),
        (
            "POST",
            "/api/v1/events/kafka/il1-static-key",
            {
                "integrationKey": "il1-static-key",
                "eventType": "RESOLVE",
                "summary": "Pressure normal",
                "alertKey": "M-1",
                "customDetails": {"messageKey": "", "topic": topic},
            },
        ),
    ]
    letters = consume(broker.bootstrap, f"{group}-dlq-ilagent", 1, timeout=30)
    (letter,) = [r["json"] for r in letters]
    assert (letter["stage"], letter["handler"]) == ("condition", "ilagent-events")
    assert "not a JSON object" in letter["reason"]
    # --kafka_group_id: the daemon consumes and commits as that group
    wait_until(lambda: committed(broker.bootstrap, group, topic) == 7, what="offset commit")
    assert len(receiver.requests) == 3  # neither the old alarm nor the filtered ones
    # -p: ilagent's health and readiness on the daemon's port; -vvv: debug logging
    assert daemon.http("GET", "/health")[0] == 200
    assert daemon.http("GET", "/ready")[0] == 200
    assert "[DEBUG]" in daemon.log_text()
    assert daemon.running  # an undeliverable message did not stop it


def alarm(state: str, msg: str | None) -> dict[str, Any]:
    value: dict[str, Any] = {"type": "ALARM", "state": state, "data": {"code": "M-1"}}
    if msg is not None:
        value["msg"] = msg
    return value


def test_defaults_forwarding_heartbeats_http_api_and_restart(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path, daemons
) -> None:
    events, beats = unique_topic("events"), unique_topic("heartbeats")
    group = f"ilagent-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, {events: 1, beats: 1})
    receiver.respond("/api/v1/events/kafka/", Reply(503))  # the first attempt fails: retried
    daemon = start(
        daemons,
        tmp_path,
        [
            "--kafka_brokers", broker.bootstrap,
            "--kafka_group_id", group,
            "--event_topic", events,
            "--heartbeat_topic", beats,
            "--heartbeat", "il1hbt-daemon",
            "--forward_message_payload",
            "--filter_key", "kind",
            "-vv",
            "--ilert_base_url", receiver.url,
        ],
    )  # fmt: skip
    # -b: pinged once the daemon runs
    receiver.wait_for(1, timeout=30, path="/api/heartbeats/il1hbt-daemon")

    message = {"kind": "disk", "apiKey": "il1-from-message", "summary": "Disk full", "n": 3}
    produce(broker.bootstrap, events, [{"key": "h-1", "value": message}, {"value": {"x": 1}}])
    produce(broker.bootstrap, beats, [{"key": "b", "value": {"apiKey": "il1hbt-topic"}}])
    attempts = receiver.wait_for(2, timeout=60, path="/api/v1/events/kafka/", answered=True)
    assert [a.status for a in attempts] == [503, 202]
    assert attempts[1].path == "/api/v1/events/kafka/il1-from-message"
    assert attempts[1].json == {
        "integrationKey": "il1-from-message",
        "eventType": "ALERT",
        "summary": "Disk full",
        "customDetails": message,  # --forward_message_payload
    }
    receiver.wait_for(1, timeout=30, path="/api/heartbeats/il1hbt-topic")
    assert "[DEBUG]" not in daemon.log_text()  # -vv: info

    # ilagent's HTTP API on -p: events are written to Kafka and delivered by the sink
    event = {"apiKey": "il1-http", "eventType": "ALERT", "summary": "from http", "alertKey": "h"}
    status, _, body = daemon.http("POST", "/api/events", event)
    assert status == 200
    assert body == {
        "integrationKey": "il1-http",
        "eventType": "ALERT",
        "summary": "from http",
        "details": None,
        "alertKey": "h",
        "priority": None,
        "images": None,
        "links": None,
        "customDetails": None,
        "labels": None,
        "severity": None,
        "routingKey": None,
        "services": None,
    }
    (delivered,) = receiver.wait_for(1, timeout=30, path="/api/events")
    assert delivered.json == {
        "integrationKey": "il1-http",
        "eventType": "ALERT",
        "summary": "from http",
        "alertKey": "h",
    }
    bad_type = daemon.http("POST", "/api/events", {**event, "eventType": "PANIC"})
    assert bad_type[0::2] == (400, {"error": "Unsupported value for field 'eventType'."})
    bad_priority = daemon.http("POST", "/api/events", {**event, "priority": "MEDIUM"})
    assert bad_priority[0::2] == (400, {"error": "Unsupported value for field 'priority'."})
    status, _, text = daemon.http("POST", "/api/events", {"apiKey": "k", "eventType": "ALERT"})
    assert status == 400 and text.startswith("Json deserialize error: summary")
    assert daemon.http("GET", "/api/heartbeats/il1hbt-http")[0::2] == (202, {})
    receiver.wait_for(1, timeout=10, path="/api/heartbeats/il1hbt-http")
    receiver.respond("/api/heartbeats/il1hbt-down", Reply(500))
    assert daemon.http("GET", "/api/heartbeats/il1hbt-down")[0::2] == (
        500,
        "Failed to proxy heartbeat",
    )

    # An accepted event survives a crash before it could be delivered.
    receiver.respond("/api/events", *[Reply(503)] * 50)
    status, _, _ = daemon.http(
        "POST",
        "/api/events",
        {**event, "summary": "survives", "alertKey": "s"},
        headers={"Idempotency-Key": "client-request-1"},
    )
    assert status == 200
    receiver.wait_for(1, timeout=30, path="/api/events", predicate=lambda r: r.status == 503)
    daemon.kill()
    receiver.reset()
    daemon.start_ready()
    survived = receiver.wait_for(
        1,
        timeout=60,
        path="/api/events",
        predicate=lambda r: r.status == 202 and r.json.get("summary") == "survives",
    )
    assert survived[0].json["alertKey"] == "s"
    receiver.wait_for(1, timeout=30, path="/api/heartbeats/il1hbt-daemon")  # pinged at start


def test_tls_and_sasl_from_extra_flags_and_environment(
    sasl_ssl_cluster, receiver: Receiver, unique_topic, tmp_path, daemons
) -> None:
    from tests.support.secured import PASSWORD, USER

    cluster = sasl_ssl_cluster
    kwargs = cluster.client_kwargs("SCRAM-SHA-512")
    topic = unique_topic("secured")
    create_topics(cluster.bootstrap, {topic: 1}, client_kwargs=kwargs)
    start(
        daemons,
        tmp_path,
        [
            "--kafka_brokers", cluster.bootstrap,
            "-e", topic,
            "--kafka_security_protocol", "SASL_SSL",
            "--kafka_sasl_mechanism", "SCRAM-SHA-512",
            "--kafka_sasl_username", USER,
            "--kafka_ssl_ca_location", cluster.pki.ca,
            "-vv",
            "--ilert_base_url", receiver.url,
        ],
        env={"KAFKA_SASL_PASSWORD": PASSWORD},  # the password from the environment
    )  # fmt: skip
    produce(
        cluster.bootstrap,
        topic,
        [{"key": "s-1", "value": {"apiKey": "il1-secure", "summary": "over TLS"}}],
        client_kwargs=kwargs,
    )
    (event,) = receiver.wait_for(1, timeout=60, path="/api/v1/events/kafka/il1-secure")
    assert event.json["summary"] == "over TLS"
