"""Message in, exact action out: real broker, real Faust worker, real HTTP receiver."""

from __future__ import annotations

import json

from agents.embedded.broker import EmbeddedBroker
from agents.embedded.receiver import Receiver
from tests.support.herald import deploy, ilert_target, stats, webhook_target
from tests.support.kafka import consume, produce

ILERT_HANDLER = {
    "name": "alarms-to-ilert",
    "condition": "$.type == 'ALARM'",
    "active": True,
    "actions": [
        {
            "action": "ilert_event",
            "ilert_event": {
                "eventType": "${state}",
                "eventTypeMap": {"SET": "ALERT", "ACK": "ACCEPT", "CLR": "RESOLVE"},
                "alertKey": "${mCode}",
                "summary": "${comment}",
                "severity": "${severity}",
                "customDetails": {"site": "${site}", "key": "${_kafka.key}"},
            },
        }
    ],
}


def alarm(code: str, state: str, comment: str = "c", kind: str = "ALARM") -> dict:
    return {
        "key": code,
        "value": {
            "type": kind,
            "state": state,
            "mCode": code,
            "comment": comment,
            "severity": 3,
            "site": "plant-2",
        },
    }


def test_alarm_becomes_exact_ilert_event_and_non_alarms_are_filtered(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path, deployments
) -> None:
    topic = unique_topic("alarms")
    herald = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[{**ILERT_HANDLER, "event": f"kafka:local:{topic}"}],
        targets=[ilert_target(receiver.url)],
    )
    worker = herald.start_worker()
    produce(
        broker.bootstrap,
        topic,
        [
            alarm("M-17", "SET", "Pump pressure low"),
            alarm("T-1", "SET", "telemetry", kind="TELEMETRY"),
            alarm("M-17", "CLR", "Pressure normal"),
        ],
    )
    events = receiver.wait_for(2, timeout=30, path="/api/events")
    assert [e.json for e in events] == [
        {
            "integrationKey": "il1test-key",
            "eventType": "ALERT",
            "summary": "Pump pressure low",
            "alertKey": "M-17",
            "severity": 3,
            "customDetails": {"site": "plant-2", "key": "M-17"},
        },
        {
            "integrationKey": "il1test-key",
            "eventType": "RESOLVE",
            "summary": "Pressure normal",
            "alertKey": "M-17",
            "severity": 3,
            "customDetails": {"site": "plant-2", "key": "M-17"},
        },
    ]
    assert len({e.header("Idempotency-Key") for e in events}) == 2
    records = consume(broker.bootstrap, herald.executions_topic, 2, timeout=20)
    statuses = {r["json"]["id"]: r["json"] for r in records}
    for event in events:
        record = statuses[event.header("Idempotency-Key")]
        assert record["status"] == "COMPLETED"
        assert record["handler"] == "alarms-to-ilert"
        assert record["attempts"] == 1
        assert "integrationKey" not in record["payload"]["body"]  # added at delivery only
    counters = stats(worker)
    assert counters["consumed"] == 3 and counters["delivered"] == 2
    assert len(receiver.requests) == 2  # the telemetry message matched nothing


def test_publish_is_read_back_by_an_independent_consumer(
    broker: EmbeddedBroker, unique_topic, tmp_path, deployments
) -> None:
    source, sink = unique_topic("in"), unique_topic("out")
    handler = {
        "name": "normalize",
        "event": f"kafka:local:{source}",
        "active": True,
        "actions": [
            {
                "action": "publish",
                "publish": {
                    "to": f"kafka:local:{sink}",
                    "key": "${mCode}",
                    "headers": {"origin": "${_kafka.topic}"},
                    "value": {"code": "${mCode}", "state": "${state}", "severity": "${severity}"},
                },
            }
        ],
    }
    herald = deploy(deployments, tmp_path, broker, handlers=[handler], extra_topics={sink: 1})
    herald.start_worker()
    produce(broker.bootstrap, source, [alarm("M-1", "SET"), alarm("M-2", "ACK")])
    records = consume(broker.bootstrap, sink, 2, timeout=30)
    assert sorted((r["key"], r["json"]["state"]) for r in records) == [
        (b"M-1", "SET"),
        (b"M-2", "ACK"),
    ]
    first = next(r for r in records if r["key"] == b"M-1")
    assert first["json"] == {"code": "M-1", "state": "SET", "severity": 3}
    assert first["headers"]["origin"] == source.encode()
    assert len(first["headers"]["herald-delivery-id"]) == 32


def test_transient_failures_are_retried_honouring_retry_after(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path, deployments
) -> None:
    topic = unique_topic("alarms")
    receiver.respond("/api/events", _reply(503), _reply(429, {"Retry-After": "1"}))
    herald = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[{**ILERT_HANDLER, "event": f"kafka:local:{topic}"}],
        targets=[ilert_target(receiver.url)],
    )
    herald.start_worker()
    produce(broker.bootstrap, topic, [alarm("M-5", "SET")])
    attempts = receiver.wait_for(3, timeout=30, path="/api/events", answered=True)
    assert [a.status for a in attempts] == [503, 429, 202]
    assert attempts[2].time - attempts[1].time >= 1.0  # Retry-After: 1 was honoured
    assert len({a.header("Idempotency-Key") for a in attempts}) == 1  # the same delivery
    records = [r["json"] for r in consume(broker.bootstrap, herald.executions_topic, 3, timeout=20)]
    assert [(r["status"], r["attempts"]) for r in records] == [
        ("FAILED", 1),
        ("FAILED", 2),
        ("COMPLETED", 3),
    ]
    assert records[0]["error"].startswith("HTTP 503")


def test_permanent_failure_is_dead_lettered_and_replay_delivers_it(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path, deployments
) -> None:
    topic = unique_topic("alarms")
    receiver.respond("/api/events", _reply(400, body={"error": "bad integration key"}))
    herald = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[{**ILERT_HANDLER, "event": f"kafka:local:{topic}"}],
        targets=[ilert_target(receiver.url)],
    )
    herald.start_worker()
    produce(broker.bootstrap, topic, [alarm("M-6", "SET"), alarm("M-7", "SET")])
    letters = consume(broker.bootstrap, herald.dlq_topic, 1, timeout=30)
    letter = letters[0]["json"]
    assert letter["stage"] == "delivery"
    assert letter["reason"].startswith("HTTP 400")
    assert letter["attempts"] == 1  # a 400 is not retried
    assert letter["request"]["payload"]["body"]["alertKey"] in ("M-6", "M-7")
    assert letters[0]["headers"]["herald-dlq-stage"] == b"delivery"
    receiver.wait_for(2, timeout=30, path="/api/events", answered=True)  # the other went through
    # replay: the receiver now accepts, so the dead letter is delivered with the same identity
    from agents.cli import main

    assert main(["replay", "--config", str(herald.config_path), "--integration", "local"]) == 0
    delivered = receiver.wait_for(3, timeout=30, path="/api/events", answered=True)
    rejected = next(r for r in delivered if r.status == 400)
    assert delivered[-1].status == 202
    assert delivered[-1].header("Idempotency-Key") == rejected.header("Idempotency-Key")


def test_bad_input_is_dead_lettered_and_other_handlers_still_run(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path, deployments
) -> None:
    topic = unique_topic("mixed")
    throwing = {
        "name": "throws",
        "event": f"kafka:local:{topic}",
        "active": True,
        "condition": "$.detail.level > 2",  # TypeError when detail is missing
        "actions": [{"action": "webhook", "webhook": {"url": "thrown", "body": "${$}"}}],
    }
    fine = {
        "name": "fine",
        "event": f"kafka:local:{topic}",
        "active": True,
        "actions": [{"action": "webhook", "webhook": {"url": "fine", "body": {"m": "${mCode}"}}}],
    }
    herald = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[throwing, fine],
        targets=[webhook_target(receiver.url)],
    )
    herald.start_worker()
    produce(
        broker.bootstrap,
        topic,
        [
            alarm("M-8", "SET"),
            {"key": "raw", "value": b"\xff\xfenot text"},
        ],
    )
    letters = consume(broker.bootstrap, herald.dlq_topic, 2, timeout=30)
    by_stage = {r["json"]["stage"]: r["json"] for r in letters}
    assert set(by_stage) == {"condition", "decode"}
    assert by_stage["condition"]["handler"] == "throws"
    assert "TypeError" in by_stage["condition"]["reason"]
    assert by_stage["decode"]["value"] == "//5ub3QgdGV4dA=="  # the original bytes, base64
    hooks = receiver.wait_for(1, timeout=30, path="/hooks/fine")
    assert hooks[0].json == {"m": "M-8"}
    assert not [r for r in receiver.requests if r.path == "/hooks/thrown"]


def test_a_hanging_endpoint_delays_only_its_own_key(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path, deployments
) -> None:
    topic = unique_topic("keys")
    handler = {
        "name": "per-key",
        "event": f"kafka:local:{topic}",
        "active": True,
        "actions": [
            {
                "action": "webhook",
                "orderingKey": "${mCode}",
                "webhook": {"url": "${mCode}", "body": {"state": "${state}"}},
            }
        ],
    }
    from agents.embedded.receiver import Hang

    receiver.respond("/hooks/SLOW", Hang(8.0))
    herald = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[handler],
        targets=[webhook_target(receiver.url, timeoutSeconds=10)],
        source_partitions=1,
    )
    herald.start_worker()
    produce(
        broker.bootstrap,
        topic,
        [
            alarm("SLOW", "SET"),
            alarm("SLOW", "ACK"),
            alarm("FAST", "SET"),
            alarm("FAST", "ACK"),
        ],
    )
    fast = receiver.wait_for(2, timeout=30, path="/hooks/FAST")
    slow_answered = [r for r in receiver.requests if r.path == "/hooks/SLOW" and r.status]
    assert [r.json["state"] for r in fast] == ["SET", "ACK"]
    assert slow_answered == []  # still hanging, yet FAST (later in the same partition) is done
    # the hang ends with a dropped connection: retried, then accepted; order kept per key
    slow = receiver.wait_for(2, timeout=30, path="/hooks/SLOW", predicate=lambda r: r.status == 202)
    assert [r.json["state"] for r in slow] == ["SET", "ACK"]


def test_runtime_rule_change_reaches_the_worker_without_restart(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path, deployments
) -> None:
    topic = unique_topic("rules")
    handler = {
        "name": "switchable",
        "event": f"kafka:local:{topic}",
        "active": True,
        "condition": "$.severity > 4",
        "actions": [{"action": "webhook", "webhook": {"url": "rule", "body": {"m": "${mCode}"}}}],
    }
    herald = deploy(
        deployments, tmp_path, broker, handlers=[handler], targets=[webhook_target(receiver.url)]
    )
    worker = herald.start_worker()
    produce(broker.bootstrap, topic, [alarm("M-1", "SET")])  # severity 3: filtered out
    _wait_counter(worker, "consumed", 1)
    assert receiver.requests == []
    changed = {**handler, "condition": "$.severity > 2"}
    rule_file = tmp_path / "rule.json"
    rule_file.write_text(json.dumps(changed))
    from agents.cli import main

    assert main(["rules", "--config", str(herald.config_path), "put", str(rule_file)]) == 0
    deadline = 30
    produced = 0
    import time

    end = time.monotonic() + deadline
    while time.monotonic() < end and not receiver.requests:
        produced += 1
        produce(broker.bootstrap, topic, [alarm(f"M-{produced + 1}", "SET")])
        time.sleep(0.5)
    assert receiver.requests, "the changed rule never took effect"
    assert receiver.requests[0].json["m"].startswith("M-")
    assert worker.running


def _wait_counter(worker, name: str, value: int, timeout: float = 20.0) -> None:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if stats(worker)[name] >= value:
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} never reached {value}: {stats(worker)}")


def _reply(status: int, headers: dict | None = None, body=None):
    from agents.embedded.receiver import Reply

    return Reply(status=status, headers=headers or {}, body=body)


def test_a_handler_removed_from_the_configuration_is_removed_on_restart(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path, deployments
) -> None:
    import yaml

    topic = unique_topic("removal")

    def hook(name: str) -> dict:
        return {
            "name": name,
            "event": f"kafka:local:{topic}",
            "active": True,
            "actions": [{"action": "webhook", "webhook": {"url": name, "body": {"n": "${n}"}}}],
        }

    herald = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[hook("kept"), hook("dropped")],
        targets=[webhook_target(receiver.url)],
    )
    worker = herald.start_worker()
    produce(broker.bootstrap, topic, [{"key": "a", "value": {"n": 1}}])
    receiver.wait_for(2, timeout=30)
    worker.stop()
    herald.config["eventHandlers"] = [hook("kept")]
    herald.config_path.write_text(yaml.safe_dump(herald.config, sort_keys=False))
    herald.start_worker(worker)
    produce(broker.bootstrap, topic, [{"key": "a", "value": {"n": 2}}])
    receiver.wait_for(1, timeout=30, path="/hooks/kept", predicate=lambda r: r.json["n"] == 2)
    _wait_counter(worker, "consumed", 1)
    import time

    time.sleep(1.0)
    assert sorted((r.path, r.json["n"]) for r in receiver.requests) == [
        ("/hooks/dropped", 1),
        ("/hooks/kept", 1),
        ("/hooks/kept", 2),
    ]
