"""`/metrics` of a real worker on the real broker, delivering to a real HTTP receiver: what it
did is what Prometheus reads, parsed with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from agents.embedded.receiver import Receiver, Reply
from tests.support.herald import deploy, wait_until, webhook_target
from tests.support.kafka import produce

#: Message keys no label may carry (nor anything else of a message).
KEYS = ("key-3b1f9a", "key-77c0de", "key-e5a210", "key-0d4c88", "key-9f6b37", "key-c2a4e1")
HOOK_TOKEN = "hook-token-5d8e1c0b9a"


def alarm(code: str, kind: str = "ALARM") -> dict[str, Any]:
    return {"type": kind, "mCode": code, "detail": f"detail-of-{code}"}


def scrape(web_url: str) -> tuple[str, str, dict[str, Any]]:
    with urllib.request.urlopen(f"{web_url}/metrics", timeout=5) as response:
        content_type = response.headers["Content-Type"]
        text = response.read().decode()
    return text, content_type, {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], sample: str, **labels: str) -> float | None:
    """The value of the one sample named `sample` with exactly these labels."""
    for family in families.values():
        for found in family.samples:
            if found.name == sample and found.labels == labels:
                return found.value
    return None


def test_metrics_say_what_the_worker_did(
    broker: Any, receiver: Receiver, unique_topic, tmp_path, deployments
) -> None:
    topic = unique_topic("alarms")
    handler = {
        "name": "alarms",
        "event": f"kafka:local:{topic}",
        "active": True,
        "condition": "$.type == 'ALARM'",
        "actions": [
            {"action": "webhook", "webhook": {"url": "${mCode}", "body": {"m": "${mCode}"}}}
        ],
    }
    receiver.respond("/hooks/FLAKY", Reply(503))  # then the default 202: one retry
    receiver.respond("/hooks/BROKEN", Reply(400))  # a permanent failure: dead-lettered
    herald = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[handler],
        targets=[webhook_target(receiver.url, headers={"Authorization": HOOK_TOKEN})],
    )
    worker = herald.start_worker()
    produce(
        broker.bootstrap,
        topic,
        [
            {"key": KEYS[0], "value": alarm("M-1")},
            {"key": KEYS[1], "value": alarm("FLAKY")},
            {"key": KEYS[2], "value": alarm("BROKEN")},
            {"key": KEYS[3], "value": alarm("T-1", kind="TELEMETRY")},
            {"key": KEYS[4], "value": alarm("T-2", kind="TELEMETRY")},
            {"key": KEYS[5], "value": b"\xff\xfe not text"},  # poison: a decode dead letter
        ],
    )
    src = {"integration": "local", "handler": "alarms"}
    hook = {"handler": "alarms", "action": "webhook", "target": "hooks"}

    def settled() -> tuple[str, str, dict[str, Any]] | None:
        text, content_type, families = scrape(worker.web_url)
        delivered = value(families, "herald_deliveries_total", **hook, outcome="delivered")
        failed = value(families, "herald_deliveries_total", **hook, outcome="failed")
        lags = [s for s in families["herald_consumer_lag_records"].samples]
        done = delivered == 2 and failed == 1 and lags and all(s.value == 0 for s in lags)
        return (text, content_type, families) if done else None

    text, content_type, families = wait_until(settled, 60, "two deliveries, one failure, lag 0")

    assert content_type.startswith("text/plain")
    consumed = value(families, "herald_records_consumed_total", integration="local", topic=topic)
    assert consumed == 6
    assert value(families, "herald_records_matched_total", **src) == 3
    assert value(families, "herald_records_skipped_total", **src) == 2
    assert value(families, "herald_dead_letters_total", integration="local", stage="decode") == 1
    letters = value(families, "herald_dead_letters_total", integration="local", stage="delivery")
    assert letters == 1
    produced = value(families, "herald_actions_produced_total", **src, action="webhook")
    assert produced == 3
    assert value(families, "herald_delivery_retries_total", **hook) == 1
    assert value(families, "herald_target_up", target="hooks") == 1  # M-1 and FLAKY answered
    durations = "herald_delivery_duration_seconds_count"
    target = {"action": "webhook", "target": "hooks"}
    assert value(families, durations, **target, outcome="delivered") == 2
    assert value(families, durations, **target, outcome="failed") == 1
    e2e = "herald_end_to_end_latency_seconds_count"
    assert value(families, e2e, integration="local", action="webhook") == 2

    # lag per partition of the source topic and of the actions topic, every one at 0 now
    lagged = {
        (s.labels["topic"], s.labels["partition"])
        for s in families["herald_consumer_lag_records"].samples
        if s.labels["integration"] == "local"
    }
    assert {(topic, str(p)) for p in range(3)} <= lagged
    assert {(f"{herald.prefix}-actions", str(p)) for p in range(4)} <= lagged
    assert value(families, "herald_rebalances_total", integration="local") >= 1
    consuming = value(families, "herald_integration_state", integration="local", state="consuming")
    assert consuming == 1
    assert value(families, "herald_records_in_flight", stage="delivering") == 0

    # nothing of a message, nor the target's secret header
    for key in KEYS:
        assert key not in text
    assert "detail-of-" not in text and "FLAKY" not in text
    assert HOOK_TOKEN not in text


def test_another_integrations_consumer_has_its_lag_state_and_counts(
    broker: Any, sasl_cluster: Any, receiver: Receiver, unique_topic, tmp_path, deployments
) -> None:
    """An integration consumed by its own consumer (agents.integration_source), here the same
    node's SASL listener with a group of its own: its records, lag, rebalances and state are
    on /metrics under its name, and its password is not."""
    topic = unique_topic("other")
    handler = {
        "name": "other-alarms",
        "event": f"kafka:other:{topic}",
        "active": True,
        "actions": [{"action": "webhook", "webhook": {"url": "other", "body": {"m": "${m}"}}}],
    }
    herald = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[handler],
        targets=[webhook_target(receiver.url)],
    )
    other = {
        "name": "other",
        "consumerGroupId": f"{herald.group}-other",
        **sasl_cluster.integration("SCRAM-SHA-512"),
    }
    password = other["password"]
    herald.config["integrations"].append(other)
    herald.config_path.write_text(yaml.safe_dump(herald.config, sort_keys=False))
    worker = herald.start_worker()
    produce(broker.bootstrap, topic, [{"key": k, "value": {"m": k}} for k in KEYS[:4]])

    def settled() -> tuple[str, dict[str, Any]] | None:
        text, _, families = scrape(worker.web_url)
        lags = [
            s
            for s in families["herald_consumer_lag_records"].samples
            if s.labels["integration"] == "other"
        ]
        delivered = value(
            families,
            "herald_deliveries_total",
            handler="other-alarms",
            action="webhook",
            target="hooks",
            outcome="delivered",
        )
        done = delivered == 4 and lags and all(s.value == 0 for s in lags)
        return (text, families) if done else None

    text, families = wait_until(settled, 90, "four deliveries from `other`, its lag 0")
    consumed = value(families, "herald_records_consumed_total", integration="other", topic=topic)
    assert consumed == 4
    assert {
        s.labels["partition"]
        for s in families["herald_consumer_lag_records"].samples
        if s.labels["integration"] == "other"
    } == {"0", "1", "2"}
    assert value(families, "herald_rebalances_total", integration="other") >= 1
    assert value(families, "herald_integration_state", integration="other", state="consuming") == 1
    assert value(families, "herald_integration_state", integration="other", state="error") == 0
    e2e = "herald_end_to_end_latency_seconds_count"
    assert value(families, e2e, integration="other", action="webhook") == 4
    assert password not in text
    for key in KEYS[:4]:
        assert key not in text
