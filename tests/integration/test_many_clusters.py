"""Many clusters at once (agents.integration_source): one deployment consumes the home
integration (the session's Kafka node, PLAINTEXT) and a second Kafka process reached over
SASL_SSL with SCRAM-SHA-512, as a self-managed cluster beside a cloud one. Handlers on both
deliver; a SIGKILL loses nothing on either; the second cluster stopped for a minute stalls
only its own handlers and its backlog is delivered when it is back; wrong credentials on it
leave the home integration working and name the integration; a handler put at runtime on a
new topic of it is consumed by both workers of the group.

Real brokers (two JVMs), real workers, a real HTTP receiver."""

from __future__ import annotations

import base64
import collections
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.cli import main as herald
from agents.embedded.broker import create_topics
from agents.embedded.receiver import Delay, Receiver, Reply
from tests.support.detector import audit_deployment
from tests.support.herald import (
    HeraldDeployment,
    herald_check_connect,
    put_rule,
    wait_until,
    webhook_target,
)
from tests.support.kafka import consume, produce

MAX_IN_FLIGHT = 16


@pytest.fixture(scope="module")
def cloud(kafka: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A second Apache Kafka process: its own cluster, reached over SASL_SSL with SCRAM (the
    harness keeps PLAINTEXT for itself, to create topics and produce as a super-user)."""
    from tests.support.apache_kafka import KafkaNode

    node = KafkaNode(tmp_path_factory.mktemp("cloud"), listeners=("PLAINTEXT", "SASL_SSL"))
    node.start()
    try:
        yield node
    finally:
        node.stop()


def cloud_integration(cloud: Any, group: str, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "cloud",
        "consumerGroupId": f"{group}-cloud",
        **cloud.integration("SASL_SSL", mechanism="SCRAM-SHA-512"),
        **overrides,
    }


def handler(name: str, integration: str, topic: str) -> dict[str, Any]:
    return {
        "name": name,
        "event": f"kafka:{integration}:{topic}",
        "active": True,
        "actions": [
            {
                "action": "webhook",
                "orderingKey": "${k}",
                "webhook": {"url": name, "body": {"n": "${n}", "k": "${k}"}},
            }
        ],
    }


def two_cluster_deployment(
    deployments: list[HeraldDeployment],
    tmp_path: Path,
    kafka: Any,
    cloud: Any,
    receiver: Receiver,
    local_topic: str,
    cloud_topic: str | None,
    **cloud_fields: Any,
) -> HeraldDeployment:
    handlers = [handler("here", "local", local_topic)]
    if cloud_topic is not None:
        handlers.append(handler("there", "cloud", cloud_topic))
        create_topics(cloud.bootstrap, {cloud_topic: 3})
    deployment = HeraldDeployment(
        tmp_path,
        kafka.bootstrap,
        handlers=[handlers[0]],
        targets=[webhook_target(receiver.url)],
        settings={"maxInFlight": MAX_IN_FLIGHT},
    )
    deployments.append(deployment)
    # The configuration names both clusters; the home one's topics were created above.
    deployment.config["integrations"].append(
        cloud_integration(cloud, deployment.group, **cloud_fields)
    )
    deployment.config["eventHandlers"] = handlers
    deployment.config_path.write_text(yaml.safe_dump(deployment.config, sort_keys=False))
    return deployment


def messages(count: int, keys: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"key": f"k{i % keys}", "value": {"n": i, "k": f"k{i % keys}"}}
        for i in range(start, start + count)
    ]


def delivered(receiver: Receiver, path: str) -> list[Any]:
    return [r for r in receiver.requests if r.path == path and r.status == 202]


def wait_numbers(receiver: Receiver, path: str, expected: set[int], timeout: float) -> None:
    def missing() -> set[int]:
        return expected - {r.json["n"] for r in delivered(receiver, path)}

    end = time.monotonic() + timeout
    while missing() and time.monotonic() < end:
        time.sleep(0.2)
    gone = missing()
    assert not gone, f"{path}: {len(gone)} never delivered, first {sorted(gone)[:20]}"


def ready(worker: Any) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{worker.web_url}/ready", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def integration_state(worker: Any, name: str) -> dict[str, Any]:
    return ready(worker)[1]["integrations"][name]


def assert_in_order_without_loss(requests: list[Any], total: int) -> tuple[int, int]:
    """Every n of range(total) delivered, each key's first deliveries ascending; returns
    (deliveries, repeats)."""
    counts = collections.Counter(r.json["n"] for r in requests)
    assert set(counts) == set(range(total))
    repeats = sum(c - 1 for c in counts.values())
    order: dict[str, list[int]] = collections.defaultdict(list)
    for request in requests:
        order[request.json["k"]].append(request.json["n"])
    for key, ns in order.items():
        firsts = list(dict.fromkeys(ns))
        assert firsts == sorted(firsts), key
    return len(requests), repeats


def test_handlers_on_two_clusters_deliver_and_a_sigkill_loses_nothing_on_either(
    kafka: Any, cloud: Any, receiver: Receiver, unique_topic, tmp_path: Path, deployments
) -> None:
    local_topic, cloud_topic = unique_topic("here"), unique_topic("there")
    total = 1500
    receiver.set_default(Delay(0.03, then=Reply(202)))
    herald_ = two_cluster_deployment(
        deployments, tmp_path, kafka, cloud, receiver, local_topic, cloud_topic
    )
    produce(kafka.bootstrap, local_topic, messages(total, keys=30))
    produce(cloud.bootstrap, cloud_topic, messages(total, keys=30))
    first, second = herald_.worker(), herald_.worker()
    herald_.start_worker(first)
    herald_.start_worker(second)
    wait_until(
        lambda: (
            len(delivered(receiver, "/hooks/there")) >= total // 4
            and len(delivered(receiver, "/hooks/here")) >= total // 4
        ),
        90,
        "a quarter of both clusters' events delivered",
    )
    first.kill()  # SIGKILL mid-stream: no commit on either cluster, nothing flushed
    at_kill = {path: len(delivered(receiver, path)) for path in ("/hooks/here", "/hooks/there")}
    herald_.start_worker(first)  # the same data directory, as a restarted pod's volume
    wait_numbers(receiver, "/hooks/here", set(range(total)), 120)
    wait_numbers(receiver, "/hooks/there", set(range(total)), 120)
    time.sleep(2.0)  # a repeat still on its way would arrive now
    here = assert_in_order_without_loss(delivered(receiver, "/hooks/here"), total)
    there = assert_in_order_without_loss(delivered(receiver, "/hooks/there"), total)
    print(
        f"\ntwo clusters, SIGKILL after {at_kill} deliveries: home {here}, cloud {there} "
        "(deliveries, repeats)"
    )
    # What was in flight at the kill repeats, and no more: the killed worker's deliveries,
    # and the survivor's on partitions the rebalance moved (maxInFlight each).
    assert here[1] + there[1] <= 2 * MAX_IN_FLIGHT
    # The independent audit reads both clusters' committed offsets: nothing committed undone.
    report = audit_deployment(herald_)
    assert report.lost == [], report.lost[:10]
    assert report.source_records_checked >= 2 * total
    status, body = ready(second)
    assert status == 200
    assert body["integrations"]["cloud"]["state"] == "consuming"
    assert body["integrations"]["cloud"]["group"] == f"{herald_.group}-cloud"
    assert first.running and second.running


def test_a_cluster_stopped_for_a_minute_stalls_only_its_own_handlers(
    kafka: Any, cloud: Any, receiver: Receiver, unique_topic, tmp_path: Path, deployments
) -> None:
    local_topic, cloud_topic = unique_topic("here"), unique_topic("there")
    herald_ = two_cluster_deployment(
        deployments, tmp_path, kafka, cloud, receiver, local_topic, cloud_topic
    )
    worker = herald_.start_worker()
    produce(cloud.bootstrap, cloud_topic, messages(10, keys=5))
    wait_numbers(receiver, "/hooks/there", set(range(10)), 60)
    # A backlog the worker has not read when its cluster goes: records it cannot see yet,
    # because a broker stopped right after taking them is stopped before the next fetch is
    # answered for most of them.
    produce(cloud.bootstrap, cloud_topic, messages(2000, keys=5, start=10))
    cloud.stop()
    outage_started = time.monotonic()
    try:
        state = wait_until(
            lambda: (s := integration_state(worker, "cloud"))["state"] == "error" and s,
            45,
            "/ready reporting the stopped cluster",
        )
        assert "cloud" in state["error"]
        status, body = ready(worker)
        assert status == 200  # the worker still serves: only the cloud handlers wait
        assert body["integrations"]["local"]["state"] == "consuming"
        # The home cluster's events flow through the outage, each delivered while it lasts.
        sent, n = [], 0
        while time.monotonic() - outage_started < 60:
            produce(kafka.bootstrap, local_topic, messages(10, keys=5, start=n))
            sent.extend(range(n, n + 10))
            n += 10
            time.sleep(1.0)
        wait_numbers(receiver, "/hooks/here", set(sent), 30)
        during = len({r.json["n"] for r in delivered(receiver, "/hooks/there")})
        assert worker.running
    finally:
        cloud.start()
    outage = time.monotonic() - outage_started
    wait_numbers(receiver, "/hooks/there", set(range(2010)), 120)
    wait_until(
        lambda: integration_state(worker, "cloud")["state"] == "consuming",
        60,
        "/ready reporting the cluster back",
    )
    print(
        f"\ncloud stopped {outage:.0f}s: {len(sent)} home events delivered during it; "
        f"{during} of 2010 cloud events delivered before, the rest after"
    )
    assert "integration 'cloud'" in worker.log_text()


def test_wrong_credentials_on_one_integration_leave_the_other_working_and_name_it(
    kafka: Any, cloud: Any, receiver: Receiver, unique_topic, tmp_path: Path, deployments
) -> None:
    local_topic, cloud_topic = unique_topic("here"), unique_topic("there")
    wrong = "not-the-Password-42"
    herald_ = two_cluster_deployment(
        deployments, tmp_path, kafka, cloud, receiver, local_topic, cloud_topic, password=wrong
    )
    worker = herald_.start_worker()
    produce(kafka.bootstrap, local_topic, messages(20, keys=4))
    wait_numbers(receiver, "/hooks/here", set(range(20)), 60)
    state = wait_until(
        lambda: (s := integration_state(worker, "cloud"))["state"] == "error" and s,
        60,
        "/ready reporting the refused credentials",
    )
    assert "integration 'cloud'" in state["error"]
    assert "authentication" in state["error"]
    log = worker.log_text()
    assert "integration 'cloud'" in log and "authentication" in log
    assert wrong not in log and wrong not in json.dumps(ready(worker)[1])
    # The operator's check says the same, naming the integration.
    check = herald_check_connect(herald_.config_path)
    assert check.returncode != 0
    lines = [line.strip() for line in check.stdout.splitlines()]
    failing = [line for line in lines if line.startswith("FAIL")]
    assert any("integration 'cloud'" in line for line in failing), check.stdout
    assert not any("'local'" in line for line in failing), check.stdout
    assert wrong not in check.stdout + check.stderr


def test_a_handler_put_at_runtime_on_a_new_topic_of_another_cluster_is_consumed_by_the_group(
    kafka: Any, cloud: Any, receiver: Receiver, unique_topic, tmp_path: Path, deployments
) -> None:
    local_topic, later = unique_topic("here"), unique_topic("later")
    herald_ = two_cluster_deployment(
        deployments, tmp_path, kafka, cloud, receiver, local_topic, None
    )
    create_topics(cloud.bootstrap, {later: 4})
    workers = [herald_.start_worker(), herald_.start_worker()]
    for worker in workers:
        assert integration_state(worker, "cloud")["state"] == "idle"
    put_rule(herald_, tmp_path, handler("later", "cloud", later))
    for worker in workers:
        worker.wait_for_log(rf"integration cloud: consuming {later}", 30)
    wait_until(
        lambda: (
            sorted(
                p
                for w in workers
                for p in integration_state(w, "cloud")["assignment"].get(later, [])
            )
            == [0, 1, 2, 3]
        ),
        60,
        f"the group consuming all of {later} on the cloud cluster",
    )
    produce(cloud.bootstrap, later, messages(20, keys=4))
    wait_numbers(receiver, "/hooks/later", set(range(20)), 60)
    assert all(w.running for w in workers)


def test_dead_letters_of_another_cluster_go_to_its_own_dlq_and_replay_delivers_them(
    kafka: Any, cloud: Any, receiver: Receiver, unique_topic, tmp_path: Path, deployments
) -> None:
    local_topic, cloud_topic = unique_topic("here"), unique_topic("there")
    receiver.respond("/hooks/there", Reply(400, body={"error": "not now"}))
    herald_ = two_cluster_deployment(
        deployments, tmp_path, kafka, cloud, receiver, local_topic, cloud_topic
    )
    herald_.start_worker()
    produce(cloud.bootstrap, cloud_topic, messages(2, keys=2))
    letters = consume(kafka.bootstrap, f"{herald_.prefix}-dlq-cloud", 1, timeout=60)
    letter = letters[0]["json"]
    assert letter["stage"] == "delivery" and letter["reason"].startswith("HTTP 400")
    assert letter["integration"] == "cloud"
    # The source value was read back from the cloud cluster, over its SASL_SSL listener.
    assert letter_n(letter) in (0, 1), letter
    wait_numbers(receiver, "/hooks/there", {0, 1} - {letter_n(letter)}, 30)
    assert herald(["replay", "--config", str(herald_.config_path), "--integration", "cloud"]) == 0
    wait_numbers(receiver, "/hooks/there", {0, 1}, 30)


def letter_n(letter: dict[str, Any]) -> int:
    return json.loads(base64.b64decode(letter["value"]))["n"]
