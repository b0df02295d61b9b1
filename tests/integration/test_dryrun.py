"""The dry run against a real worker on the real broker: `herald try` run as an operator runs
it (its own process) and `POST /api/herald/try` on the worker's admin API.

What must hold: the condition's result and the requests are shown, secrets masked; nothing is
delivered (the loopback receiver sees no request) and nothing produced (the actions topic
and the publish destination stay empty); the API runs the worker's live handlers, a handler
put at runtime included, and only those the caller may READ; its answers match the OpenAPI
document. Then the same message is produced for real, and what the receiver gets is what the
dry run showed, masked values aside.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import schemathesis
from aiokafka import AIOKafkaConsumer, TopicPartition
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agents.embedded.receiver import Receiver
from tests.support.admin_calls import call, token_for
from tests.support.herald import deploy, ilert_target, webhook_target
from tests.support.kafka import produce

ADMIN_KEY = "herald-admin-key"
ADMIN_SECRET = "admin-Secret-for-dry-runs-51c7"
HOOK_TOKEN = "hook-bearer-secret-for-dry-runs-6402"
ILERT_KEY = "il1test-key"  # tests.support.herald.ilert_target's
MESSAGE = {"state": "SET", "mCode": "M-1", "comment": "Boiler pressure high"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def herald_try(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`herald try --config CONFIG ARGS...` in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", "try", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def end_offsets(bootstrap: str, topic: str) -> int:
    """The sum of a topic's end offsets: how many records were ever written to it."""

    async def read() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            # the cluster's metadata without naming the topic (as tests.support.kafka reads it)
            cluster = await consumer._client.fetch_all_metadata()
            partitions = cluster.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in partitions]
            assert tps, f"no topic {topic}"
            return sum((await consumer.end_offsets(tps)).values())
        finally:
            await consumer.stop()

    return asyncio.run(read())


def no_secret(text: str) -> None:
    for secret in (HOOK_TOKEN, ILERT_KEY, ADMIN_SECRET):
        assert secret not in text, secret


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["name"]: h for h in report["handlers"]}


def test_dry_runs_from_the_cli_and_the_api_show_the_requests_and_send_nothing(
    broker: Any, receiver: Receiver, unique_topic, tmp_path: Path, deployments
) -> None:
    topic, copies, other = unique_topic("alarms"), unique_topic("copies"), unique_topic("other")
    hooked = {
        "name": "hooked",
        "event": f"kafka:local:{topic}",
        "condition": "$.state == 'SET'",
        "active": True,
        "actions": [
            {
                "action": "webhook",
                "webhook": {
                    "url": "alarms/${mCode}",
                    "headers": {"X-Trace": "${_kafka.headers.trace}"},
                    "body": {"summary": "${comment}", "key": "${_kafka.key}"},
                },
            },
            {"action": "publish", "publish": {"to": f"kafka:local:{copies}", "key": "${mCode}"}},
        ],
    }
    ilerted = {
        "name": "ilerted",
        "event": f"kafka:local:{topic}",
        "active": True,
        "actions": [
            {"action": "ilert_event", "ilert_event": {"alertKey": "${mCode}", "summary": "x"}}
        ],
    }
    deployment = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[hooked, ilerted],
        targets=[
            webhook_target(receiver.url, headers={"Authorization": f"Bearer {HOOK_TOKEN}"}),
            ilert_target(receiver.url),
        ],
        source_partitions=1,
        extra_topics={copies: 1, other: 1},
        settings={"admin": {"keyId": ADMIN_KEY, "keySecret": ADMIN_SECRET}},
    )
    worker = deployment.start_worker()
    config = deployment.config_path
    message_file = tmp_path / "message.json"
    message_file.write_text(json.dumps(MESSAGE))

    # The command line: one handler by name, with a key and a header.
    ran = herald_try(config, "--handler", "hooked", str(message_file), "--key", "M-1",
                     "--header", "trace=t-77")  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    no_secret(ran.stdout + ran.stderr)
    cli = json.loads(ran.stdout)
    (entry,) = cli["handlers"]
    assert entry["matched"] is True
    webhook, publish = entry["actions"]
    (shown,) = webhook["requests"]
    assert (shown["method"], shown["url"]) == ("POST", f"{receiver.url}/hooks/alarms/M-1")
    assert shown["headers"]["Authorization"] == "***"
    assert shown["headers"]["X-Trace"] == "t-77"
    assert shown["body"] == {"summary": "Boiler pressure high", "key": "M-1"}
    assert publish["publish"]["topic"] == copies and publish["publish"]["key"] == "M-1"

    # Every active handler of the topic, the message on stdin: a false condition is a result.
    ran = herald_try(config, "--topic", topic, "-", stdin=json.dumps({**MESSAGE, "state": "CLR"}))
    assert ran.returncode == 0, ran.stderr
    no_secret(ran.stdout)
    handlers = by_name(json.loads(ran.stdout))
    assert handlers["hooked"]["matched"] is False
    assert handlers["ilerted"]["matched"] is True
    (alert,) = handlers["ilerted"]["actions"]
    assert alert["requests"][0]["body"]["integrationKey"] == "***"

    ran = herald_try(config, "--handler", "nobody", str(message_file))
    assert ran.returncode == 2
    assert "no handler named 'nobody'; the handlers are: hooked, ilerted" in ran.stderr

    # The API, as the administrator: the same requests as the command line's.
    admin = token_for(worker, ADMIN_KEY, ADMIN_SECRET)
    ask = {"handler": "hooked", "message": MESSAGE, "key": "M-1", "headers": {"trace": "t-77"}}
    status, api, text = call(worker, "POST", "/api/herald/try", ask, admin)
    assert status == 200, api
    no_secret(text)
    api_actions = by_name(api)["hooked"]["actions"]
    assert [a["requests"] for a in api_actions] == [a["requests"] for a in entry["actions"]]
    assert api_actions[1]["publish"] == publish["publish"]

    # A handler put at runtime: the API runs it; the command line with --connect.
    runtime = {**ilerted, "name": "runtime-only", "event": f"kafka:local:{other}"}
    status, body, _ = call(worker, "POST", "/api/event", runtime, admin)
    assert status == 200, body
    status, api, _ = call(
        worker, "POST", "/api/herald/try", {"handler": "runtime-only", "message": MESSAGE}, admin
    )
    assert status == 200, api
    assert by_name(api)["runtime-only"]["matched"] is True
    ran = herald_try(config, "--handler", "runtime-only", str(message_file))
    assert ran.returncode == 2 and "--connect" in ran.stderr
    ran = herald_try(config, "--handler", "runtime-only", str(message_file), "--connect")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["handlers"][0]["topic"] == other

    # A caller without READ on a handler does not run it, nor see it.
    status, viewer, _ = call(worker, "POST", "/api/applications", {"name": "viewer"}, admin)
    assert status == 200, viewer
    keys = f"/api/applications/{viewer['id']}/accessKeys"
    status, key, _ = call(worker, "POST", keys, None, admin)
    assert status == 200, key
    reader = token_for(worker, key["id"], key["secret"])
    status, body, _ = call(worker, "POST", "/api/herald/try", ask, reader)
    assert status == 403 and "READ on EVENT_HANDLER 'hooked'" in body["message"], body
    by_topic = {"topic": topic, "message": MESSAGE}
    status, body, _ = call(worker, "POST", "/api/herald/try", by_topic, reader)
    assert status == 404, body
    grant = {
        "subject": {"type": "USER", "id": f"app:{viewer['id']}"},
        "target": {"type": "EVENT_HANDLER", "id": "ilerted"},
        "access": ["READ"],
    }
    assert call(worker, "POST", "/api/auth/authorization", grant, admin)[0] == 200
    status, body, _ = call(worker, "POST", "/api/herald/try", by_topic, reader)
    assert status == 200, body
    assert [h["name"] for h in body["handlers"]] == ["ilerted"]

    # The answers match the document the worker serves.
    with urllib.request.urlopen(f"{worker.web_url}/api/openapi.json", timeout=10) as answer:
        document = schemathesis.openapi.from_dict(json.loads(answer.read()))
    operation = document["/api/herald/try"]["POST"]
    for body in (ask, {"topic": topic, "message": "plain text"}, {"handler": "x", "message": 1}):
        case = operation.Case(body=body)
        response = case.call(base_url=worker.web_url, headers={"X-Authorization": admin})
        case.validate_response(response, checks=CHECKS)

    # Nothing was delivered or produced by any of it.
    assert receiver.requests == []
    assert end_offsets(broker.bootstrap, f"{deployment.prefix}-actions") == 0
    assert end_offsets(broker.bootstrap, copies) == 0
    no_secret(worker.log_text())

    # The same record for real (partition 0, offset 0, as the dry runs said): what arrives is
    # what was shown, the masked header holding the real credential.
    produce(broker.bootstrap, topic, [
        {"key": "M-1", "value": MESSAGE, "headers": {"trace": "t-77"}, "partition": 0}
    ])  # fmt: skip
    (arrived,) = receiver.wait_for(1, timeout=60, path="/hooks/")
    assert (arrived.method, f"{receiver.url}{arrived.path}") == (shown["method"], shown["url"])
    assert arrived.json == shown["body"]
    assert arrived.header("Authorization") == f"Bearer {HOOK_TOKEN}"
    assert arrived.header("Idempotency-Key") == webhook["deliveryId"]
    for name, value in shown["headers"].items():
        if value != "***":
            assert arrived.header(name) == value, name
