"""The dry run (streams.dryrun): each handler's condition result, each action's request as the
sink would send it, secrets masked, and nothing sent.

Where a request can be compared with the real one, it is: the same action request is then
delivered for real (the registry's delivery, real clients) to a loopback receiver or the
Conductor stand-in, and what arrived must be what the dry run showed, masked values aside.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import orjson
import pytest

from agents.embedded.receiver import Receiver
from streams import secrets
from streams.actions.base import ActionRequest, DeliveryContext
from streams.actions.registry import delivery as action_delivery
from streams.conductor_auth import token_cache
from streams.config.models import HeraldConfig, Target
from streams.dryrun import Message, UnknownSelection, dry_run, select
from streams.handlers import CompiledHandler, compile_all
from streams.http1 import Http1Client
from streams.message import Envelope
from streams.routing import route
from tests.support.conductor_server import ConductorServer

ILERT_KEY = "il1-dry-run-target-key-5521"
HOOK_TOKEN = "hook-bearer-secret-7730"
ACTION_API_KEY = "action-api-key-secret-9912"
KEY_ID, KEY_SECRET = "dry-run-key-id-4410", "dry-run-key-secret-8823"
SECRETS = (ILERT_KEY, HOOK_TOKEN, ACTION_API_KEY, KEY_ID, KEY_SECRET)
MESSAGE = {"state": "SET", "mCode": "M-1", "comment": "Boiler pressure high", "sev": 4}
STAMP = 1_700_000_000_000


def handler(name: str, *actions: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "event": "kafka:local:alarms", "active": True, "actions": list(actions)}


def compiled(
    *handlers: dict[str, Any], targets: list[dict[str, Any]] | None = None
) -> list[CompiledHandler]:
    config = HeraldConfig.model_validate(
        {
            "integrations": [{"name": "local", "bootstrapServers": "localhost:9092"}],
            "targets": targets or [],
            "eventHandlers": list(handlers),
        }
    )
    return compile_all(config, file="herald.yaml")


def message(value: Any = MESSAGE, **fields: Any) -> Message:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    defaults: dict[str, Any] = {"key": "M-1", "partition": 2, "offset": 99, "timestamp": STAMP}
    return Message(value=raw, **{**defaults, **fields})


def try_one(handlers: list[CompiledHandler], name: str, msg: Message | None = None) -> Any:
    report = dry_run(select(handlers, home="local", handler=name), msg or message(), home="local")
    text = json.dumps(report)
    for secret in SECRETS:
        assert secret not in text, secret
    return report


def actions_of(report: dict[str, Any]) -> list[dict[str, Any]]:
    (entry,) = report["handlers"]
    return entry["actions"]


def real_requests(handlers: list[CompiledHandler], msg: Message) -> list[ActionRequest]:
    """The action requests the source stage produces for the record (streams.routing)."""
    envelope = Envelope(
        value=None,
        topic=handlers[0].topic,
        partition=msg.partition,
        offset=msg.offset,
        integration="local",
        key=msg.key,
        headers=dict(msg.headers),
        timestamp=msg.timestamp,
        raw_value=msg.value,
        raw_key=None if msg.key is None else msg.key.encode(),
    )
    return route(handlers, envelope).requests


def deliver_for_real(handlers: list[CompiledHandler], request: ActionRequest) -> Any:
    """Deliver as the sink does: the registry's delivery, real clients, the resolved target."""
    (action,) = [a for h in handlers for a in h.actions if a.index == request.index]
    target: Target | None = action.renderer.target

    async def go() -> Any:
        async with aiohttp.ClientSession() as session, Http1Client() as http:
            ctx = DeliveryContext(
                http=http,
                session=session,
                targets={target.name: target} if target else {},
                publish=_no_publish,
            )
            return await action_delivery(request.action).deliver(request, ctx, target)

    return asyncio.run(go())


async def _no_publish(*args: Any, **kwargs: Any) -> dict:  # pragma: no cover - not used
    raise AssertionError("no publish in this test")


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


# --------------------------------------------------------------------------- conditions


def test_each_handler_of_a_topic_says_its_conditions_result() -> None:
    hook = {"action": "webhook", "webhook": {"url": "http://hooks.example/in"}}
    handlers = compiled(
        {**handler("set", hook), "condition": "$.state == 'SET'"},
        {**handler("clear", hook), "condition": "$.state == 'CLR'"},
        {**handler("broken", hook), "condition": "$.a.b.c == 1"},
        {**handler("asleep", hook), "active": False},
    )
    selected = select(handlers, home="local", topic="alarms")
    assert [h.name for h in selected] == ["set", "clear", "broken"]  # active ones, as a worker
    report = dry_run(selected, message(), home="local")
    by_name = {h["name"]: h for h in report["handlers"]}
    assert by_name["set"]["matched"] is True
    assert [a["action"] for a in by_name["set"]["actions"]] == ["webhook"]
    assert by_name["clear"]["matched"] is False
    assert by_name["clear"]["actions"] == []
    assert by_name["broken"]["matched"] is None
    assert by_name["broken"]["deadLetter"]["stage"] == "condition"
    assert "cannot read property 'b'" in by_name["broken"]["deadLetter"]["reason"]
    assert report["delivered"] is False
    assert report["message"]["value"] == MESSAGE
    assert report["message"]["messageId"] == "local/alarms/2/99"


def test_conditions_see_the_key_and_headers_given() -> None:
    hook = {"action": "webhook", "webhook": {"url": "http://hooks.example/in"}}
    handlers = compiled(
        {**handler("h", hook), "condition": "_kafka.key == 'K-9' && _kafka.headers.env == 'prod'"}
    )
    seen = try_one(handlers, "h", message(key="K-9", headers={"env": "prod"}))
    assert seen["handlers"][0]["matched"] is True
    other = try_one(handlers, "h", message(key="K-9", headers={"env": "test"}))
    assert other["handlers"][0]["matched"] is False


def test_a_message_that_does_not_decode_is_a_decode_dead_letter() -> None:
    handlers = compiled(handler("h", {"action": "webhook", "webhook": {"url": "http://h.x/"}}))
    report = try_one(handlers, "h", message(b"\xff\xfe not utf-8"))
    assert report["deadLetter"]["stage"] == "decode"
    assert report["handlers"][0]["matched"] is None
    assert report["handlers"][0]["actions"] == []


def test_text_messages_stay_text() -> None:
    handlers = compiled(
        {
            **handler(
                "h", {"action": "webhook", "webhook": {"url": "http://h.x/", "body": "${$}"}}
            ),
            "condition": "$ == 'plain words'",
        }
    )
    report = try_one(handlers, "h", message(b"plain words"))
    assert report["message"]["value"] == "plain words"
    (action,) = actions_of(report)
    assert action["requests"][0]["body"] == "plain words"
    assert lower(action["requests"][0]["headers"])["content-type"].startswith("text/plain")


# --------------------------------------------------------------------------- webhooks


def test_webhook_request_is_the_one_the_sink_sends_with_credentials_masked(
    receiver: Receiver,
) -> None:
    target = {
        "name": "hooks",
        "type": "webhook",
        "url": f"{receiver.url}/hooks/",
        # a number is not a secret the scrubber knows: masked for its header's name alone
        "headers": {"Authorization": f"Bearer {HOOK_TOKEN}", "X-Auth-Pin": "2468", "X-Team": "ops"},
    }
    hook = {
        "action": "webhook",
        "webhook": {
            "url": "alarms/${mCode}",
            "method": "PUT",
            "headers": {"X-Api-Key": ACTION_API_KEY, "X-Trace": "${_kafka.headers.trace}"},
            "body": {"summary": "${comment}", "severity": "${sev}"},
        },
        "dedupe": {"key": "${mCode}-${state}", "windowSeconds": 60},
    }
    handlers = compiled(handler("hooked", hook), targets=[target])
    msg = message(headers={"trace": "t-77"})
    report = try_one(handlers, "hooked", msg)
    assert receiver.requests == []  # nothing was sent
    (action,) = actions_of(report)
    (shown,) = action["requests"]
    assert shown["method"] == "PUT"
    assert shown["url"] == f"{receiver.url}/hooks/alarms/M-1"
    assert shown["headers"]["Authorization"] == "***"
    assert shown["headers"]["X-Api-Key"] == "***"
    assert shown["headers"]["X-Auth-Pin"] == "***"
    assert shown["headers"]["X-Team"] == "ops"
    assert shown["body"] == {"summary": "Boiler pressure high", "severity": 4}
    assert action["dedupe"] == {"key": "M-1-SET", "windowSeconds": 60}
    assert action["orderingKey"] == "M-1-SET"  # the dedupe key orders, as in the sink

    (request,) = real_requests(handlers, msg)
    assert request.id == action["deliveryId"]
    deliver_for_real(handlers, request)
    (arrived,) = receiver.wait_for(1)
    assert arrived.method == "PUT"
    assert f"{receiver.url}{arrived.path}" == shown["url"]
    assert arrived.json == shown["body"]
    sent = lower(arrived.headers)
    assert sent["authorization"] == f"Bearer {HOOK_TOKEN}"
    assert sent["x-api-key"] == ACTION_API_KEY
    assert sent["x-auth-pin"] == "2468"
    for name, value in lower(shown["headers"]).items():
        if value != "***":
            assert sent[name] == value, name
    assert sent["idempotency-key"] == action["deliveryId"]


# --------------------------------------------------------------------------- ilert


def test_ilert_event_and_heartbeat_mask_the_targets_key(receiver: Receiver) -> None:
    target = {
        "name": "ilert",
        "type": "ilert",
        "baseUrl": receiver.url,
        "integrationKey": ILERT_KEY,
    }
    event = {
        "action": "ilert_event",
        "ilert_event": {
            "eventType": "${state}",
            "eventTypeMap": {"SET": "ALERT"},
            "alertKey": "${mCode}",
            "summary": "${comment}",
        },
    }
    beat = {"action": "ilert_heartbeat", "ilert_heartbeat": {}}
    handlers = compiled(handler("il", event, beat), targets=[target])
    report = try_one(handlers, "il")
    assert receiver.requests == []
    alert, ping = actions_of(report)
    (post,) = alert["requests"]
    assert (post["method"], post["url"]) == ("POST", f"{receiver.url}/api/events")
    assert post["body"] == {
        "integrationKey": "***",
        "eventType": "ALERT",
        "summary": "Boiler pressure high",
        "alertKey": "M-1",
    }
    assert alert["orderingKey"] == "ilert:M-1"
    (get,) = ping["requests"]
    assert (get["method"], get["url"]) == ("GET", f"{receiver.url}/api/heartbeats/***")
    assert get["body"] is None

    request = real_requests(handlers, message())[0]
    deliver_for_real(handlers, request)
    (arrived,) = receiver.wait_for(1)
    assert arrived.json == {**post["body"], "integrationKey": ILERT_KEY}


def test_an_integration_key_from_the_message_is_masked_too() -> None:
    key = "il1-key-carried-by-the-message-3141"
    event = {"action": "ilert_event", "ilert_event": {"integrationKey": "${key}"}}
    handlers = compiled(handler("il", event))
    report = dry_run(
        select(handlers, home="local", handler="il"), message({"key": key}), home="local"
    )
    (action,) = actions_of(report)
    (post,) = action["requests"]
    assert post["url"] == "https://api.ilert.com/api/events"
    assert post["body"]["integrationKey"] == "***"
    assert action["payload"]["body"]["integrationKey"] == "***"
    assert key not in json.dumps(report["handlers"])


def test_a_template_that_fails_is_the_dead_letter_it_would_be() -> None:
    bad = {
        "action": "ilert_event",
        "ilert_event": {"integrationKey": "k-1234", "severity": "${sev}"},
    }
    good = {"action": "webhook", "webhook": {"url": "http://hooks.example/in"}}
    handlers = compiled(handler("h", bad, good))
    report = try_one(handlers, "h", message({**MESSAGE, "sev": 9}))
    failed, sent = actions_of(report)
    assert failed["index"] == 0
    assert failed["deadLetter"]["stage"] == "template"
    assert "severity rendered to 9" in failed["deadLetter"]["reason"]
    assert "requests" not in failed
    assert sent["index"] == 1 and len(sent["requests"]) == 1


# --------------------------------------------------------------------------- Conductor


def conductor_target(server: ConductorServer, **extra: Any) -> dict[str, Any]:
    return {"name": "conductor", "type": "conductor", "baseUrl": server.url, **extra}


def test_start_workflow_shows_the_token_masked_and_never_asks_for_one() -> None:
    server = ConductorServer(auth=True, key_id=KEY_ID, key_secret=KEY_SECRET)
    server.define_workflow("order_flow").start()
    try:
        start = {
            "action": "start_workflow",
            "start_workflow": {"name": "order_flow", "version": 1, "input": {"id": "${mCode}"}},
        }
        target = conductor_target(server, keyId=KEY_ID, keySecret=KEY_SECRET)
        handlers = compiled(handler("flow", start), targets=[target])
        report = try_one(handlers, "flow")
        assert server.calls == []  # no token request, no start
        (action,) = actions_of(report)
        (shown,) = action["requests"]
        assert (shown["method"], shown["url"]) == ("POST", f"{server.url}/api/workflow")
        assert shown["headers"]["X-Authorization"] == "***"
        assert shown["body"]["idempotencyKey"] == action["deliveryId"]

        (request,) = real_requests(handlers, message())
        deliver_for_real(handlers, request)
        token, started = server.calls
        assert token.path == "/api/token"
        assert (started.method, started.path) == ("POST", "/api/workflow")
        assert started.json == shown["body"]
        assert started.header("X-Authorization")
    finally:
        server.stop()


def test_conductor_requests_of_each_action_and_where_a_read_stops_the_dry_run() -> None:
    target = {"name": "conductor", "type": "conductor", "baseUrl": "http://conductor.example"}
    actions = [
        {
            "action": "complete_task",
            "complete_task": {"workflowId": "${mCode}", "taskRefName": "approve_ref"},
        },
        {
            "action": "fail_task",
            "fail_task": {"taskId": "t-${mCode}", "reasonForIncompletion": "x"},
        },
        {
            "action": "terminate_workflow",
            "terminate_workflow": {"workflowId": "${mCode}", "terminationReason": "not needed"},
        },
        {
            "action": "update_workflow_variables",
            "update_workflow_variables": {"workflowId": "${mCode}", "variables": {"s": "${state}"}},
        },
    ]
    handlers = compiled(handler("tasks", *actions), targets=[target])
    complete, fail, terminate, variables = actions_of(try_one(handlers, "tasks"))
    (post,) = complete["requests"]
    assert (post["method"], post["url"]) == (
        "POST",
        "http://conductor.example/api/tasks/M-1/approve_ref/COMPLETED",
    )
    assert post["body"]["taskRefName"] == "approve_ref"
    (lookup,) = fail["requests"]  # by id: the task's workflow is read first
    assert (lookup["method"], lookup["url"]) == ("GET", "http://conductor.example/api/tasks/t-M-1")
    assert "GET http://conductor.example/api/tasks/t-M-1" in fail["incomplete"]
    (delete,) = terminate["requests"]
    assert delete["method"] == "DELETE"
    assert delete["url"] == "http://conductor.example/api/workflow/M-1?reason=not+needed"
    (update,) = variables["requests"]
    assert update["url"] == "http://conductor.example/api/workflow/M-1/variables"
    assert update["body"] == {"s": "SET"}
    assert "X-Authorization" not in update["headers"]  # an open server: no token at all


def test_an_inactive_handler_without_its_target_shows_the_delivery_failure() -> None:
    start = {"action": "start_workflow", "start_workflow": {"name": "order_flow"}}
    handlers = compiled({**handler("idle", start), "active": False})
    report = try_one(handlers, "idle")
    assert report["handlers"][0]["active"] is False
    (action,) = actions_of(report)
    assert action["deadLetter"] == {
        "stage": "delivery",
        "reason": "start_workflow: no conductor target",
    }
    assert action["requests"] == []


# --------------------------------------------------------------------------- publish


def test_publish_shows_the_record_it_would_produce() -> None:
    publish = {
        "action": "publish",
        "publish": {
            "to": "kafka:alarms-copy",
            "key": "${mCode}",
            "headers": {"origin": "${_kafka.topic}"},
            "value": {"code": "${mCode}", "state": "${state}"},
        },
    }
    text = {"action": "publish", "publish": {"to": "kafka:local:texts", "value": "${comment}"}}
    handlers = compiled(handler("copy", publish, text))
    as_json, as_text = actions_of(try_one(handlers, "copy"))
    record = as_json["publish"]
    assert as_json["requests"] == []
    assert record["integration"] == "local"  # no integration: the home one
    assert record["topic"] == "alarms-copy"
    assert record["key"] == "M-1"
    assert record["headers"] == {"origin": "alarms", "herald-delivery-id": as_json["deliveryId"]}
    assert (record["format"], record["value"]) == ("json", {"code": "M-1", "state": "SET"})
    assert as_json["orderingKey"] == "publish:alarms-copy:M-1"
    assert (as_text["publish"]["format"], as_text["publish"]["value"]) == (
        "text",
        "Boiler pressure high",
    )
    assert as_text["publish"]["key"] is None


# --------------------------------------------------------------------------- selection, secrets


def test_selection_by_name_or_topic_and_what_it_refuses() -> None:
    hook = {"action": "webhook", "webhook": {"url": "http://hooks.example/in"}}
    handlers = compiled(handler("a", hook), {**handler("b", hook), "active": False})
    assert [h.name for h in select(handlers, home="local", handler="b")] == ["b"]
    with pytest.raises(UnknownSelection, match="no handler named 'c'; the handlers are: a, b"):
        select(handlers, home="local", handler="c")
    with pytest.raises(UnknownSelection, match="no active handler consumes local:other"):
        select(handlers, home="local", topic="other")
    with pytest.raises(UnknownSelection, match="no active handler consumes cloud:alarms"):
        select(handlers, home="local", topic="alarms", integration="cloud")
    with pytest.raises(ValueError):
        select(handlers, home="local")
    with pytest.raises(ValueError):
        select(handlers, home="local", handler="a", topic="alarms")


def test_registered_secrets_are_masked_wherever_they_appear() -> None:
    secret = "registered-secret-value-2718"
    secrets.register(secret)
    hook = {"action": "webhook", "webhook": {"url": "http://hooks.example/in", "body": "${$}"}}
    handlers = compiled(handler("h", hook))
    report = try_one(handlers, "h", message({"note": f"carries {secret}"}))
    assert secret not in json.dumps(report)
    assert report["message"]["value"] == {"note": "carries ***"}


def test_a_dry_run_inside_a_running_loop_leaves_that_loops_token_cache_alone() -> None:
    """As the admin API runs it: from the worker's loop, whose token cache serves deliveries,
    through `asyncio.to_thread` (agents.admin.dryrun)."""
    target = {
        "name": "conductor",
        "type": "conductor",
        "baseUrl": "http://conductor.example",
        "keyId": KEY_ID,
        "keySecret": KEY_SECRET,
    }
    start = {"action": "start_workflow", "start_workflow": {"name": "order_flow"}}
    handlers = compiled(handler("flow", start), targets=[target])

    async def inside() -> tuple[dict[str, Any], int]:
        report = await asyncio.to_thread(try_one, handlers, "flow")
        return report, len(token_cache().entries)

    report, entries = asyncio.run(inside())
    assert entries == 0
    (action,) = actions_of(report)
    assert action["requests"][0]["headers"]["X-Authorization"] == "***"
