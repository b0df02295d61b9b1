"""The execution history over the admin API (agents.history, agents.admin.history_api): real
broker, real workers, a real HTTP receiver on loopback.

Four records go to one partition of a topic with three handlers: one every handler's
condition rejects but two accept (delivered), one none accepts, one that is not UTF-8 (a
decode dead letter), and one whose delivery the receiver refuses with a 400 that echoes the
target's credential (dead-lettered). The history is then asked by handler, by status, by time
range and by source record, as the administrator and as an application that may read two of
the three handlers; a second worker, started afterwards, answers the same; no answer holds a
secret. The executions topic is created with the configured retention, and an existing one
with another retention is named in the log with the command that fixes it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import requests
import schemathesis
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from agents.embedded.broker import create_topics
from agents.embedded.receiver import Reply
from tests.integration.test_secrets import EchoingReceiver
from tests.support.admin_calls import raw, token_for
from tests.support.herald import deploy, wait_until, webhook_target
from tests.support.kafka import produce

ADMIN_KEY = "herald-admin-key"
ADMIN_SECRET = "admin-Secret-for-history-5d2c"
RETENTION_SECONDS = 2 * 24 * 3600


def hook(name: str, topic: str, condition: str) -> dict[str, Any]:
    return {
        "name": name,
        "event": f"kafka:local:{topic}",
        "condition": condition,
        "active": True,
        "actions": [{"action": "webhook", "webhook": {"url": name, "body": {"n": "${n}"}}}],
    }


def get(worker: Any, path: str, token: str) -> Any:
    """A 200 answer's body, checked against the OpenAPI document the worker serves (with the
    records in it, which schemathesis' run against an empty worker does not see)."""
    response = requests.get(f"{worker.web_url}{path}", headers={"X-Authorization": token})
    assert response.status_code == 200, (path, response.status_code, response.text)
    document = requests.get(f"{worker.web_url}/api/openapi.json").json()
    operation = schemathesis.openapi.from_dict(document)[path.split("?")[0]]["GET"]
    operation.validate_response(response)
    return response.json()


def retention_ms(bootstrap: str, topic: str) -> int:
    async def describe() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            resource = ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": None})
            (response,) = await admin.describe_configs([resource])
            (found,) = response.resources
            entries = {entry[0]: entry[1] for entry in found[4]}
            return int(entries["retention.ms"])
        finally:
            await admin.close()

    return asyncio.run(describe())


def without_counts(answer: dict[str, Any]) -> dict[str, Any]:
    """A source answer without the handlers' counts, which are each worker's own."""
    return {
        **answer,
        "handlers": [{k: v for k, v in h.items() if k != "counts"} for h in answer["handlers"]],
    }


def test_the_history_answers_by_handler_status_time_and_source_on_every_worker(
    broker: Any, echoing: EchoingReceiver, unique_topic, tmp_path, deployments
) -> None:
    token_value = f"tok-{uuid.uuid4().hex}"
    topic = unique_topic("history")
    echoing.respond("/hooks/history-failing", Reply(400))
    herald_ = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[
            hook("history-ok", topic, "$.kind == 'ok'"),
            hook("history-failing", topic, "$.kind == 'fail'"),
            hook("history-hidden", topic, "$.kind == 'ok'"),
        ],
        targets=[
            webhook_target(echoing.url, headers={"Authorization": "Bearer ${env:SOME_TOKEN}"})
        ],
        source_partitions=1,
        settings={
            "admin": {"keyId": ADMIN_KEY, "keySecret": ADMIN_SECRET},
            "executionRetentionSeconds": RETENTION_SECONDS,
        },
    )
    first = herald_.worker()
    first.env["SOME_TOKEN"] = token_value
    herald_.start_worker(first)
    admin = token_for(first, ADMIN_KEY, ADMIN_SECRET)

    # An application that may read two of the three handlers.
    status, application = raw(first, "POST", "/api/applications", {"name": "sre"}, admin)
    assert status == 200, application
    status, key = raw(
        first, "POST", f"/api/applications/{application['id']}/accessKeys", None, admin
    )
    assert status == 200, key
    for name in ("history-ok", "history-failing"):
        grant = {
            "subject": {"type": "USER", "id": f"app:{application['id']}"},
            "target": {"type": "EVENT_HANDLER", "id": name},
            "access": ["READ"],
        }
        status, body = raw(first, "POST", "/api/auth/authorization", grant, admin)
        assert status == 200, body
    reader = token_for(first, key["id"], key["secret"])

    before = int(time.time() * 1000)
    produce(
        broker.bootstrap,
        topic,
        [
            {"key": "a", "value": {"kind": "ok", "n": 0}},  # offset 0: ok and hidden deliver
            {"key": "b", "value": {"kind": "other", "n": 1}},  # offset 1: every condition false
            {"key": "c", "value": b"\xff\xfenot text"},  # offset 2: not UTF-8
            {"key": "d", "value": {"kind": "fail", "n": 3}},  # offset 3: the receiver says 400
        ],
    )

    def listed() -> list[dict[str, Any]]:
        return get(first, "/api/event/execution?limit=1000", admin)

    def settled() -> list[dict[str, Any]] | None:
        status, found = raw(first, "GET", "/api/event/execution?limit=1000", token=admin)
        if status == 503:  # the history is still being read
            return None
        assert status == 200, found
        names = {(e["name"], e["status"]) for e in found}
        done = {
            ("history-ok", "COMPLETED"),
            ("history-hidden", "COMPLETED"),
            ("history-failing", "DEAD_LETTERED"),
            (None, "DEAD_LETTERED"),  # the decode dead letter
        }
        return found if done <= names else None

    everything = wait_until(settled, 60, "the history of the four records")
    assert len(everything) == 4
    created = sorted(e["created"] for e in everything)
    assert created == [e["created"] for e in reversed(everything)]  # newest first
    assert all(e["created"] >= before for e in everything)

    # By handler: Conductor's EventExecution, with Herald's fields.
    (ok,) = get(first, "/api/event/execution?handler=history-ok", admin)
    assert {k: ok[k] for k in ("name", "event", "status", "action", "attempts", "kind")} == {
        "name": "history-ok",
        "event": f"kafka:local:{topic}",
        "status": "COMPLETED",
        "action": "webhook",
        "attempts": 1,
        "kind": "execution",
    }
    assert ok["messageId"] == f"local/{topic}/0/0"
    assert (ok["source"]["topic"], ok["source"]["partition"], ok["source"]["offset"]) == (
        topic,
        0,
        0,
    )
    assert isinstance(ok["output"], dict) and ok["id"]

    # By status.
    failed = get(first, "/api/event/execution?status=DEAD_LETTERED", admin)
    by_kind = {e["kind"]: e for e in failed}
    assert set(by_kind) == {"execution", "deadLetter"} and len(failed) == 2
    assert by_kind["execution"]["name"] == "history-failing"
    assert by_kind["execution"]["error"].startswith("HTTP 400")
    assert "Authorization: ***" in by_kind["execution"]["error"]  # echoed, and masked
    assert by_kind["deadLetter"]["stage"] == "decode"
    assert by_kind["deadLetter"]["messageId"] == f"local/{topic}/0/2"
    assert get(first, "/api/event/execution?status=FAILED", admin) == []

    # By time range.
    assert get(first, f"/api/event/execution?to={before - 1}", admin) == []
    newest = everything[0]["created"]
    at_newest = get(first, f"/api/event/execution?from={newest}&to={newest}", admin)
    assert at_newest and all(e["created"] == newest for e in at_newest)
    assert everything[0]["id"] in {e["id"] for e in at_newest}
    window = f"/api/event/execution?from={created[0]}&to={created[-1]}&limit=2"
    assert [e["id"] for e in get(first, window, admin)] == [e["id"] for e in everything[:2]]

    # By source record.
    def source(worker: Any, query: str, token: str = admin) -> dict[str, Any]:
        return get(worker, f"/api/event/execution/source?{query}", token)

    offset0 = source(first, f"topic={topic}&partition=0&offset=0")
    handlers = {h["name"]: h for h in offset0["handlers"]}
    assert set(handlers) == {"history-ok", "history-failing", "history-hidden"}
    assert [e["status"] for e in handlers["history-ok"]["executions"]] == ["COMPLETED"]
    assert handlers["history-hidden"]["outcome"] == "executed"
    no_record = handlers["history-failing"]
    assert no_record["outcome"] == "no record: condition false or not processed yet"
    assert no_record["executions"] == [] and no_record["deadLetters"] == []
    # This worker read every record: its condition was false for offsets 0 and 1.
    assert no_record["counts"]["conditionFalse"] == 2
    assert handlers["history-ok"]["counts"]["matched"] == 1

    offset1 = source(first, f"messageId=local/{topic}/0/1")
    assert {h["outcome"] for h in offset1["handlers"]} == {
        "no record: condition false or not processed yet"
    }
    offset2 = source(first, f"integration=local&topic={topic}&partition=0&offset=2")
    assert [letter["stage"] for letter in offset2["deadLetters"]] == ["decode"]
    assert all(h["outcome"].startswith("not evaluated") for h in offset2["handlers"])
    offset3 = source(first, f"topic={topic}&partition=0&offset=3")
    failing = {h["name"]: h for h in offset3["handlers"]}["history-failing"]
    assert [(e["status"], e["attempts"]) for e in failing["executions"]] == [("DEAD_LETTERED", 1)]
    assert [letter["stage"] for letter in failing["deadLetters"]] == ["delivery"]
    assert failing["deadLetters"][0]["reason"].startswith("HTTP 400")

    # What the application may not read is not there.
    seen = get(first, "/api/event/execution?limit=1000", reader)
    assert {e["name"] for e in seen} == {"history-ok", "history-failing", None}
    assert "history-hidden" not in {
        h["name"]
        for h in source(first, "topic=" + topic + "&partition=0&offset=0", reader)["handlers"]
    }
    assert get(first, "/api/event/execution?handler=history-hidden", reader) == []
    status, body = raw(first, "GET", "/api/audit", token=reader)
    assert status == 403, body

    # The audit records of the setup, for the administrator, with no secret.
    audit = get(first, "/api/audit?limit=1000", admin)
    operations = [a["operation"] for a in audit]
    assert operations == ["grant.add", "grant.add", "access_key.create", "application.create"]
    assert all(a["user"] == "app:herald-admin" for a in audit)

    # Bad queries are 400s.
    for query in ("status=DONE", "limit=0", "limit=1001", "from=yesterday"):
        status, body = raw(first, "GET", f"/api/event/execution?{query}", token=admin)
        assert status == 400, (query, body)
    for query in ("topic=" + topic, "messageId=nonsense", "topic=t&partition=-1&offset=0"):
        status, body = raw(first, "GET", f"/api/event/execution/source?{query}", token=admin)
        assert status == 400, (query, body)

    # A second worker reads the same topics and answers the same.
    second = herald_.worker()
    second.env["SOME_TOKEN"] = token_value
    herald_.start_worker(second)

    def agree() -> bool:
        status, theirs = raw(second, "GET", "/api/event/execution?limit=1000", token=admin)
        if status != 200 or theirs != listed():
            return False
        for offset in range(4):
            query = f"topic={topic}&partition=0&offset={offset}"
            mine, other = source(first, query), source(second, query)
            if without_counts(mine) != without_counts(other):
                return False
        return get(second, "/api/audit?limit=1000", admin) == audit

    wait_until(agree, 60, "the second worker's history to answer as the first's")

    # No secret in any answer.
    answers = json.dumps(
        [
            listed(),
            get(second, "/api/event/execution?limit=1000", reader),
            [source(second, f"topic={topic}&partition=0&offset={o}") for o in range(4)],
            get(second, "/api/audit?limit=1000", admin),
        ]
    )
    for secret in (token_value, key["secret"], ADMIN_SECRET):
        assert secret not in answers

    # The executions topic was created with the configured retention.
    assert retention_ms(broker.bootstrap, herald_.executions_topic) == RETENTION_SECONDS * 1000


def test_an_executions_topic_with_another_retention_is_named_with_the_fix(
    broker: Any, unique_topic, tmp_path, deployments
) -> None:
    topic = unique_topic("retention")
    herald_ = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[hook("retained", topic, "true")],
        targets=[webhook_target("http://127.0.0.1:9")],  # nothing is produced here
        settings={"executionRetentionSeconds": RETENTION_SECONDS},
    )
    create_topics(
        broker.bootstrap,
        {herald_.executions_topic: 4},
        configs={herald_.executions_topic: {"retention.ms": "3600000"}},
    )
    worker = herald_.start_worker()
    line = worker.wait_for_log(r"topic \S+-executions keeps records 1 h .*", timeout=60)
    assert f"--entity-name {herald_.executions_topic}" in line.group(0)
    assert f"--add-config retention.ms={RETENTION_SECONDS * 1000}" in line.group(0)
    # Herald changes nothing on an existing topic.
    assert retention_ms(broker.bootstrap, herald_.executions_topic) == 3_600_000
