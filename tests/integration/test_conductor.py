"""Conductor actions end to end: Kafka message → real worker → the loopback Conductor server.

Every action type, the Orkes token flow (renewal after EXPIRED_TOKEN), retries and
dead letters, no repeated start_workflow after a redelivery (Orkes idempotency across a crash,
the dedupe table for a record seen again), the result in the execution record, and
`herald import-handlers` from Conductor's export to a running handler.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.embedded.broker import EmbeddedBroker
from tests.support.conductor_server import ConductorServer
from tests.support.herald import FAST_RETRY, HeraldDeployment, deploy, stats
from tests.support.kafka import consume, produce


@pytest.fixture
def conductor() -> Iterator[ConductorServer]:
    server = ConductorServer(auth=True).define_workflow("order_flow", ("approve_ref",))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def conductor_target(server: ConductorServer, *, credentials: bool = True) -> dict[str, Any]:
    target: dict[str, Any] = {
        "name": "conductor",
        "type": "conductor",
        "baseUrl": server.url,
        "timeoutSeconds": 30,
        "retry": FAST_RETRY,
    }
    if credentials:
        target.update(keyId="app-key-id", keySecret="app-key-secret")
    return target


def executions(herald: HeraldDeployment, count: int) -> dict[str, dict[str, Any]]:
    """The latest execution record of each delivery id, once `count` records were written."""
    records = consume(herald.bootstrap, herald.executions_topic, count, timeout=30)
    assert len(records) >= count, records
    latest: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: r["json"]["at"]):
        latest[record["json"]["id"]] = record["json"]
    return latest


def test_start_workflow_with_orkes_token_renewal_and_the_workflow_id_in_the_record(
    broker: EmbeddedBroker, conductor: ConductorServer, unique_topic, tmp_path, deployments
) -> None:
    topic = unique_topic("orders")
    handler = {
        "name": "orders-to-conductor",
        "event": f"kafka:local:{topic}",
        "condition": "$.type == 'ORDER'",
        "active": True,
        "actions": [
            {
                "action": "start_workflow",
                "start_workflow": {
                    "name": "order_flow",
                    "version": 2,
                    "correlationId": "${orderId}",
                    "input": {"orderId": "${orderId}", "amount": "${amount}", "raw": "${$}"},
                    "taskToDomain": {"*": "blue"},
                },
            }
        ],
    }
    herald = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[handler],
        targets=[conductor_target(conductor)],
        source_partitions=1,
    )
    herald.start_worker()
    first = {"type": "ORDER", "orderId": "o-1", "amount": 12.5}
    produce(broker.bootstrap, topic, [{"key": "o-1", "value": first}])
    (start,) = conductor.wait_for(1, method="POST", path="/api/workflow")

    record = next(iter(executions(herald, 1).values()))
    (workflow_id,) = conductor.workflows
    assert start.json == {
        "name": "order_flow",
        "version": 2,
        "correlationId": "o-1",
        "input": {
            "orderId": "o-1",
            "amount": 12.5,
            "raw": first,
            "conductor.event.messageId": f"local/{topic}/0/0",
            "conductor.event.name": f"kafka:local:{topic}",
        },
        "taskToDomain": {"*": "blue"},
        "idempotencyKey": record["id"],  # the delivery id: stable across redeliveries
        "idempotencyStrategy": "RETURN_EXISTING",
    }
    (token,) = conductor.requests("POST", "/api/token")
    assert token.json == {"keyId": "app-key-id", "keySecret": "app-key-secret"}
    assert start.header("X-Authorization") in conductor.tokens
    assert (record["status"], record["result"]) == ("COMPLETED", {"workflowId": workflow_id})

    # The server now considers the cached token expired: 401 EXPIRED_TOKEN, renewed, retried.
    conductor.expire_tokens()
    produce(broker.bootstrap, topic, [{"key": "o-2", "value": {**first, "orderId": "o-2"}}])
    conductor.wait_for(3, method="POST", path="/api/workflow")
    starts = conductor.requests("POST", "/api/workflow")
    assert [s.status for s in starts] == [200, 401, 200]
    assert len(conductor.requests("POST", "/api/token")) == 2
    assert starts[2].header("X-Authorization") != starts[1].header("X-Authorization")
    records = executions(herald, 2)
    assert sorted(r["status"] for r in records.values()) == ["COMPLETED", "COMPLETED"]
    assert sorted(r["attempts"] for r in records.values()) == [1, 1]  # renewal is not a retry
    assert len(conductor.workflows) == 2


def test_task_and_workflow_actions_with_retries_and_dead_letters(
    broker: EmbeddedBroker, conductor: ConductorServer, unique_topic, tmp_path, deployments
) -> None:
    topic = unique_topic("signals")
    conductor.define_workflow("order_flow", ("approve_ref", "ship_ref"))

    def on(kind: str, action: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": f"signal-{kind}",
            "event": f"kafka:local:{topic}",
            "condition": f"$.kind == '{kind}'",
            "active": True,
            "actions": [action],
        }

    handlers = [
        on(
            "approve",
            {
                "action": "complete_task",
                "complete_task": {
                    "workflowId": "${wf}",
                    "taskRefName": "approve_ref",
                    "output": {"approvedBy": "${user}"},
                },
            },
        ),
        on(
            "reject",
            {
                "action": "fail_task",
                "fail_task": {"taskId": "${task}", "reasonForIncompletion": "${why}"},
            },
        ),
        on(
            "cancel",
            {
                "action": "terminate_workflow",
                "terminate_workflow": {"workflowId": "${wf}", "terminationReason": "${why}"},
            },
        ),
        on(
            "note",
            {
                "action": "update_workflow_variables",
                "update_workflow_variables": {
                    "workflowId": "${wf}",
                    "variables": {"notes": ["${text}"], "lastBy": "${user}"},
                    "appendArray": True,
                },
            },
        ),
    ]
    herald = deploy(
        deployments, tmp_path, broker, handlers=handlers, targets=[conductor_target(conductor)]
    )
    herald.start_worker()
    approve, reject, cancel, notes = (_start(conductor) for _ in range(4))
    reject_task = conductor.workflows[reject]["tasks"][1]["taskId"]
    conductor.fail_next("POST", f"/api/workflow/{notes}/variables", 503)  # retried
    produce(
        broker.bootstrap,
        topic,
        [
            {"key": approve, "value": {"kind": "approve", "wf": approve, "user": "ann"}},
            {"key": reject, "value": {"kind": "reject", "task": reject_task, "why": "no stock"}},
            {"key": cancel, "value": {"kind": "cancel", "wf": cancel, "why": "customer left"}},
            {"key": notes, "value": {"kind": "note", "wf": notes, "text": "a", "user": "bo"}},
            {"key": notes, "value": {"kind": "note", "wf": notes, "text": "b", "user": "cy"}},
            {"key": "x", "value": {"kind": "approve", "wf": "no-such-workflow", "user": "dee"}},
        ],
    )
    letters = consume(broker.bootstrap, herald.dlq_topic, 1, timeout=30)
    records = executions(herald, 7)  # 6 deliveries, and a FAILED record for the 503

    approved = conductor.workflows[approve]["tasks"][0]
    assert approved["status"] == "COMPLETED"
    assert approved["outputData"]["approvedBy"] == "ann"
    assert approved["outputData"]["conductor.event.name"] == f"kafka:local:{topic}"
    rejected = conductor.workflows[reject]["tasks"][1]
    assert (rejected["status"], rejected["reasonForIncompletion"]) == ("FAILED", "no stock")
    assert conductor.workflows[reject]["status"] == "FAILED"
    assert conductor.workflows[cancel]["status"] == "TERMINATED"
    assert conductor.workflows[cancel]["reasonForIncompletion"] == "customer left"
    assert conductor.workflows[notes]["variables"] == {"notes": ["a", "b"], "lastBy": "cy"}

    by_handler = {r["handler"]: r for r in records.values() if r["status"] == "COMPLETED"}
    assert by_handler["signal-approve"]["result"] == {
        "taskId": approved["taskId"],
        "workflowId": approve,
        "status": "COMPLETED",
    }
    assert by_handler["signal-reject"]["result"]["status"] == "FAILED"
    assert by_handler["signal-cancel"]["result"] == {"workflowId": cancel, "terminated": True}
    note_attempts = sorted(r["attempts"] for r in records.values() if r["handler"] == "signal-note")
    assert note_attempts == [1, 2]  # the 503 was retried
    (letter,) = [r["json"] for r in letters]
    assert letter["handler"] == "signal-approve"
    assert letter["attempts"] == 1  # a 404 is not retried
    assert "no-such-workflow" in letter["reason"] and "HTTP 404" in letter["reason"]


def _start(server: ConductorServer) -> str:
    """A running workflow, started over the API as any Conductor client would."""
    import urllib.request

    token = urllib.request.Request(
        f"{server.url}/api/token",
        data=b'{"keyId": "app-key-id", "keySecret": "app-key-secret"}',
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(token, timeout=5) as response:
        auth = yaml.safe_load(response.read())["token"]
    request = urllib.request.Request(
        f"{server.url}/api/workflow",
        data=b'{"name": "order_flow"}',
        headers={"Content-Type": "application/json", "X-Authorization": auth},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def test_no_repeated_start_workflow_after_a_redelivery(
    broker: EmbeddedBroker, conductor: ConductorServer, unique_topic, tmp_path, deployments
) -> None:
    topic = unique_topic("orders")
    handler = {
        "name": "orders-to-conductor",
        "event": f"kafka:local:{topic}",
        "active": True,
        "actions": [
            {
                "action": "start_workflow",
                "start_workflow": {"name": "order_flow", "input": {"orderId": "${orderId}"}},
            }
        ],
    }
    herald = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[handler],
        targets=[conductor_target(conductor)],
        source_partitions=1,
    )
    worker = herald.worker()
    herald.start_worker(worker)
    # Conductor starts the workflow, then the worker dies before it hears back.
    conductor.hold_starts(1)
    produce(broker.bootstrap, topic, [{"key": "o-9", "value": {"orderId": "o-9"}}])
    conductor.wait_for(1, method="POST", path="/api/workflow", answered=False)
    assert len(conductor.workflows) == 1
    worker.kill()
    herald.start_worker(worker)  # the record is delivered again

    first, again = conductor.wait_for(2, method="POST", path="/api/workflow", answered=False)
    assert again.status == 200
    assert again.json["idempotencyKey"] == first.json["idempotencyKey"]
    (workflow_id,) = conductor.workflows  # the repeat returned the workflow already started
    records = consume(broker.bootstrap, herald.executions_topic, 1, timeout=30)
    record = next(r["json"] for r in records if r["json"]["status"] == "COMPLETED")
    assert record["result"] == {"workflowId": workflow_id}
    assert record["id"] == first.json["idempotencyKey"]

    # The same action record seen again (a redelivery after the dedupe mark was written) is
    # skipped without calling Conductor at all.
    action_record = next(
        r
        for r in consume(broker.bootstrap, f"{herald.prefix}-actions", 1, timeout=20)
        if r["json"]["id"] == record["id"]
    )
    # The restarted worker may itself still skip the re-routed copy of the source record:
    # wait until its counter settles, so the next skip is ours.
    skipped_before = settled(lambda: stats(worker)["skipped_duplicates"])
    produce(
        broker.bootstrap,
        f"{herald.prefix}-actions",
        [{"key": action_record["key"], "value": action_record["value"]}],
    )
    wait_until(lambda: stats(worker)["skipped_duplicates"] == skipped_before + 1)
    assert len(conductor.requests("POST", "/api/workflow")) == 2
    assert len(conductor.workflows) == 1


def settled(read, quiet: float = 2.0, timeout: float = 30.0):
    """The value `read()` returns once it stopped changing for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "value never settled"
        time.sleep(0.2)
        current = read()
        if current != value:
            value, since = current, time.monotonic()
    return value


def wait_until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.2)


def test_import_handlers_from_conductor_then_run_them(
    broker: EmbeddedBroker, unique_topic, tmp_path: Path, deployments
) -> None:
    topic = unique_topic("payments")
    # An open-source server: no authentication, and the target has no credentials.
    server = ConductorServer(auth=False).define_workflow("payment_flow")
    server.start()
    try:
        exported_kafka = {
            "name": "payments",
            "event": f"kafka:local:{topic}",
            "condition": "$.status == 'PAID'",
            "evaluatorType": "javascript",
            "actions": [
                {
                    "action": "start_workflow",
                    "start_workflow": {
                        "name": "payment_flow",
                        "version": 1,
                        "input": {"paymentId": "${id}"},
                        "taskToDomain": {},
                    },
                    "expandInlineJSON": False,
                }
            ],
            "active": True,
            "tags": [],
            "createdBy": "ops@example.com",
            "createTime": 1_700_000_000_000,
            "orgId": "0000",
        }
        exported_sqs = {**exported_kafka, "name": "legacy-sqs", "event": "sqs:payments-queue"}
        server.event_handlers = [exported_sqs, exported_kafka]
        older = {
            **exported_kafka,
            "condition": "false",
            "active": False,
            "actions": [{"action": "start_workflow", "start_workflow": {"name": "old_flow"}}],
        }
        herald = deploy(
            deployments,
            tmp_path,
            broker,
            handlers=[older],
            targets=[conductor_target(server, credentials=False)],
            source_partitions=1,
        )
        path = herald.config_path
        original = path.read_text()
        path.write_text("# Payments deployment, managed by hand\n" + original)
        from agents.cli import main

        code = main(["import-handlers", f"{server.url}/api/event", "--config", str(path)])
        assert code == 0
        text = path.read_text()
        assert text.startswith("# Payments deployment, managed by hand\n")
        imported = yaml.safe_load(text)
        assert imported["eventHandlers"] == [exported_kafka]  # replaced, as exported
        assert imported["targets"] == yaml.safe_load(original)["targets"]
        (export_call,) = server.requests("GET", "/api/event")
        assert export_call.header("X-Authorization") is None

        herald.start_worker()
        produce(
            broker.bootstrap,
            topic,
            [
                {"key": "p-1", "value": {"id": "p-1", "status": "PENDING"}},
                {"key": "p-2", "value": {"id": "p-2", "status": "PAID"}},
            ],
        )
        (start,) = server.wait_for(1, method="POST", path="/api/workflow")
        assert start.json["name"] == "payment_flow"
        assert start.json["input"]["paymentId"] == "p-2"
        assert start.header("X-Authorization") is None
        assert server.requests("POST", "/api/token") == []  # no credentials: no token asked
    finally:
        server.stop()
