"""Each action type delivered once for real: requests rendered by the source stage, carried
through the actions topic's bytes, and delivered over loopback HTTP to the receiver (or to a
recording publish function). Also the records that travel next to them: dead letters and
execution records."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import orjson
import pytest

from agents.embedded.receiver import Hang, Receiver, Reply
from streams import codecs, executions
from streams.actions.base import ActionRequest, DeliveryContext, Headers
from streams.actions.ilert import IlertEventDelivery, IlertHeartbeatDelivery
from streams.actions.registry import delivery as action_delivery
from streams.config.models import HeraldConfig, Target
from streams.deadletter import DeadLetter, envelope_of, for_envelope
from streams.errors import DeliveryError
from streams.handlers import compile_all
from streams.http1 import Http1Client
from streams.message import Envelope
from streams.routing import route

TARGET_KEY = "il1-target-secret-0042"
MESSAGE = {
    "type": "ALARM",
    "state": "SET",
    "mCode": "M-1",
    "comment": "Boiler pressure high",
    "sev": 4,
}


class Published:
    """A publish function that records its calls, as the worker's Kafka producer would see them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str, bytes | None, bytes | None, Headers]] = []
        self.options: list[dict[str, Any]] = []  # avro=... when the value may be Avro

    async def __call__(
        self,
        integration: str | None,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        **options: Any,
    ) -> dict:
        self.calls.append((integration, topic, key, value, headers))
        self.options.append(options)
        return {"topic": topic, "partition": 0, "offset": 41}


def targets(receiver: Receiver, **overrides: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": "ilert",
            "type": "ilert",
            "baseUrl": receiver.url,
            "integrationKey": TARGET_KEY,
            "headers": {"X-Source": "herald-test"},
            **overrides,
        },
        {"name": "hooks", "type": "webhook", "url": receiver.url + "/hooks/"},
    ]


def requests_for(
    receiver: Receiver,
    *actions: dict[str, Any],
    message: Any = MESSAGE,
    target_overrides: dict[str, Any] | None = None,
) -> tuple[HeraldConfig, list[ActionRequest]]:
    """Render the actions against one record and pass them through their wire format."""
    config = HeraldConfig.model_validate(
        {
            "integrations": [{"name": "local", "bootstrapServers": "localhost:9092"}],
            "targets": targets(receiver, **(target_overrides or {})),
            "eventHandlers": [
                {
                    "name": "alarms",
                    "event": "kafka:local:alarms",
                    "active": True,
                    "actions": list(actions),
                }
            ],
        }
    )
    envelope = Envelope(
        value=None,
        topic="alarms",
        partition=2,
        offset=99,
        integration="local",
        key="M-1",
        headers={"trace": "t-77"},
        timestamp=1_700_000_000_000,
        raw_value=orjson.dumps(message),
        raw_key=b"M-1",
    )
    evaluation = route(compile_all(config, file="herald.yaml"), envelope)
    assert evaluation.dead_letters == []
    wired = [ActionRequest.from_bytes(r.to_bytes()) for r in evaluation.requests]
    assert wired == evaluation.requests
    return config, wired


def deliver(
    config: HeraldConfig, request: ActionRequest, publish: Published | None = None
) -> tuple[Any, DeliveryContext]:
    """Deliver once, the way the sink does: the action type from the registry, the target by
    name from the configuration."""
    by_name: dict[str, Target] = {t.name: t for t in config.targets}
    target = by_name.get(request.target) if request.target else None

    async def go() -> tuple[Any, DeliveryContext]:
        async with aiohttp.ClientSession() as session, Http1Client() as http:
            ctx = DeliveryContext(
                http=http, session=session, targets=by_name, publish=publish or Published()
            )
            return await action_delivery(request.action).deliver(request, ctx, target), ctx

    return asyncio.run(go())


ILERT_EVENT = {
    "action": "ilert_event",
    "ilert_event": {
        "target": "ilert",
        "eventType": "${state}",
        "eventTypeMap": {"SET": "ALERT", "ACK": "ACCEPT", "CLR": "RESOLVE"},
        "alertKey": "${mCode}",
        "summary": "${comment}",
        "severity": "${sev}",
        "customDetails": {"trace": "${_kafka.headers.trace}"},
    },
}


# --------------------------------------------------------------------------- ilert


def test_ilert_event_posts_the_exact_body_with_the_targets_key(receiver: Receiver) -> None:
    config, [request] = requests_for(receiver, ILERT_EVENT)

    result, ctx = deliver(config, request)

    [sent] = receiver.requests
    assert (sent.method, sent.path) == ("POST", "/api/events")
    assert sent.json == {
        "integrationKey": TARGET_KEY,
        "eventType": "ALERT",
        "summary": "Boiler pressure high",
        "alertKey": "M-1",
        "severity": 4,
        "customDetails": {"trace": "t-77"},
    }
    assert sent.header("Content-Type") == "application/json"
    assert sent.header("Idempotency-Key") == request.id
    assert sent.header("User-Agent") == ctx.user_agent
    assert sent.header("X-Source") == "herald-test"
    assert result["status"] == 202
    assert orjson.loads(result["response"])["alertKey"] == "M-1"
    # the key was added to what was sent, never to the request itself
    assert "integrationKey" not in request.payload["body"]


def test_ilert_event_key_from_the_message_is_not_overridden(receiver: Receiver) -> None:
    action = {
        "action": "ilert_event",
        "ilert_event": {"target": "ilert", "integrationKey": "${key}", "summary": "s"},
    }
    config, [request] = requests_for(receiver, action, message={"key": "il1-from-message"})

    deliver(config, request)

    [sent] = receiver.requests
    assert sent.json == {"integrationKey": "il1-from-message", "eventType": "ALERT", "summary": "s"}
    assert IlertEventDelivery().redact(request.payload) == {
        "path": "/api/events",
        "body": {"integrationKey": "***", "eventType": "ALERT", "summary": "s"},
    }


def test_ilert_event_to_the_kafka_alert_source_path(receiver: Receiver) -> None:
    action = {
        "action": "ilert_event",
        "ilert_event": {
            "target": "ilert",
            "summary": "s",
            "path": "/api/v1/events/kafka/{integrationKey}",
        },
    }
    config, [request] = requests_for(receiver, action)

    deliver(config, request)

    [sent] = receiver.requests
    assert sent.path == f"/api/v1/events/kafka/{TARGET_KEY}"
    assert sent.json == {"integrationKey": TARGET_KEY, "eventType": "ALERT", "summary": "s"}


def test_ilert_heartbeat_gets_the_heartbeat_url(receiver: Receiver) -> None:
    config, [request] = requests_for(
        receiver, {"action": "ilert_heartbeat", "ilert_heartbeat": {"target": "ilert"}}
    )

    result, _ = deliver(config, request)

    [sent] = receiver.requests
    assert (sent.method, sent.path, sent.body) == ("GET", f"/api/heartbeats/{TARGET_KEY}", b"")
    assert sent.header("Idempotency-Key") == request.id
    assert result == {"status": 202}
    assert request.payload == {"path": "/api/heartbeats/{integrationKey}"}
    assert request.ordering_key == "heartbeat"


def test_ilert_heartbeat_with_its_own_key(receiver: Receiver) -> None:
    action = {"action": "ilert_heartbeat", "ilert_heartbeat": {"integrationKey": "${hb}"}}
    config, [request] = requests_for(receiver, action, message={"hb": "hb-key-1"})

    deliver(config, request)

    assert [r.path for r in receiver.requests] == ["/api/heartbeats/hb-key-1"]
    assert IlertHeartbeatDelivery().redact(request.payload) == {
        "path": "/api/heartbeats/{integrationKey}",
        "integrationKey": "***",
    }


@pytest.mark.parametrize(
    "action",
    [
        {"action": "ilert_heartbeat", "ilert_heartbeat": {"target": "ilert"}},
        {
            "action": "ilert_event",
            "ilert_event": {"target": "ilert", "path": "/api/v1/events/kafka/{integrationKey}"},
        },
    ],
)
def test_delivery_errors_never_show_the_targets_key(
    receiver: Receiver, action: dict[str, Any]
) -> None:
    """The error text becomes the dead letter's reason and the execution record's error."""
    receiver.respond(None, Hang())
    config, [request] = requests_for(receiver, action, target_overrides={"timeoutSeconds": 0.3})

    with pytest.raises(DeliveryError) as info:
        deliver(config, request)

    assert info.value.retryable is True
    assert TARGET_KEY not in str(info.value)
    assert str(info.value).startswith("timed out after 0.3 s: ")
    assert "/***" in str(info.value)


# --------------------------------------------------------------------------- webhook


def test_webhook_json_body_method_headers_and_relative_url(receiver: Receiver) -> None:
    action = {
        "action": "webhook",
        "webhook": {
            "url": "alarms/${mCode}?sev=${sev}",
            "method": "put",
            "headers": {"X-Trace": "${_kafka.headers.trace}", "X-Count": 3},
            "body": {"code": "${mCode}", "severity": "${sev}", "text": "sev ${sev}"},
        },
    }
    config, [request] = requests_for(receiver, action)

    result, ctx = deliver(config, request)

    [sent] = receiver.requests
    assert (sent.method, sent.path, sent.query) == ("PUT", "/hooks/alarms/M-1", {"sev": "4"})
    assert sent.json == {"code": "M-1", "severity": 4, "text": "sev 4"}
    assert sent.header("Content-Type") == "application/json"
    assert sent.header("X-Trace") == "t-77"
    assert sent.header("X-Count") == "3"
    assert sent.header("Idempotency-Key") == request.id
    assert sent.header("User-Agent") == ctx.user_agent
    assert result["status"] == 202


def test_webhook_string_body_is_text(receiver: Receiver) -> None:
    action = {"action": "webhook", "webhook": {"body": "${comment} (${mCode})"}}
    config, [request] = requests_for(receiver, action)

    deliver(config, request)

    [sent] = receiver.requests
    assert (sent.method, sent.path) == ("POST", "/hooks/")
    assert sent.body == b"Boiler pressure high (M-1)"
    assert sent.header("Content-Type") == "text/plain; charset=utf-8"


def test_webhook_headers_given_in_any_case_replace_the_defaults(receiver: Receiver) -> None:
    action = {
        "action": "webhook",
        "webhook": {
            "headers": {"content-type": "application/cloudevents+json", "user-agent": "me/1"},
            "body": {"id": "${mCode}"},
        },
    }
    config, [request] = requests_for(receiver, action)

    deliver(config, request)

    [sent] = receiver.requests

    def values(name: str) -> list[str]:
        return [v for k, v in sent.headers.items() if k.lower() == name]

    assert values("content-type") == ["application/cloudevents+json"]
    assert values("user-agent") == ["me/1"]
    assert values("idempotency-key") == [request.id]
    assert sent.json == {"id": "M-1"}


def test_webhook_absolute_url_without_body(receiver: Receiver) -> None:
    action = {
        "action": "webhook",
        "webhook": {"url": receiver.url + "/ping/${mCode}", "method": "GET"},
    }
    config, [request] = requests_for(receiver, action)

    deliver(config, request)

    [sent] = receiver.requests
    assert (sent.method, sent.path, sent.body) == ("GET", "/ping/M-1", b"")
    assert sent.header("Content-Type") is None


def test_webhook_failure_status_is_a_delivery_error(receiver: Receiver) -> None:
    receiver.respond(None, Reply(404, "no such hook"))
    config, [request] = requests_for(receiver, {"action": "webhook", "webhook": {"url": "x"}})

    with pytest.raises(DeliveryError) as info:
        deliver(config, request)

    assert (info.value.retryable, info.value.status, str(info.value)) == (
        False,
        404,
        "HTTP 404: no such hook",
    )


# --------------------------------------------------------------------------- publish


def test_publish_calls_publish_with_key_value_and_headers(receiver: Receiver) -> None:
    action = {
        "action": "publish",
        "publish": {
            "to": "kafka:local:alarms-out",
            "key": "${mCode}",
            "headers": {"kind": "${type}"},
            "value": {"code": "${mCode}", "original": "${$}"},
        },
    }
    config, [request] = requests_for(receiver, action)
    published = Published()

    result, _ = deliver(config, request, published)

    assert published.calls == [
        (
            "local",
            "alarms-out",
            b"M-1",
            orjson.dumps({"code": "M-1", "original": MESSAGE}),
            [("kind", b"ALARM"), ("herald-delivery-id", request.id.encode())],
        )
    ]
    assert result == {"topic": "alarms-out", "partition": 0, "offset": 41}
    assert request.ordering_key == "publish:alarms-out:M-1"
    assert receiver.requests == []


def test_publish_text_value_without_key(receiver: Receiver) -> None:
    action = {"action": "publish", "publish": {"to": "kafka:out", "value": "alarm ${mCode}"}}
    config, [request] = requests_for(receiver, action)
    published = Published()

    deliver(config, request, published)

    assert published.calls == [
        (None, "out", None, b"alarm M-1", [("herald-delivery-id", request.id.encode())])
    ]


# --------------------------------------------------------------------------- records


def test_action_request_round_trip_keeps_every_field() -> None:
    request = ActionRequest(
        id="0123456789abcdef0123456789abcdef",
        handler="alarms",
        event="kafka:local:alarms",
        action="webhook",
        index=1,
        payload={"url": "http://x/", "method": "POST", "headers": {}, "body": {"a": [1, None]}},
        ordering_key="site-1",
        source={"topic": "alarms", "partition": 0, "offset": 3, "messageId": "local/alarms/0/3"},
        integration="local",
        created_ms=1_700_000_000_123,
        target="hooks",
        dedupe_key="M-1",
        dedupe_window_s=60.0,
        replayed=2,
        extra={"note": "x"},
    )

    assert ActionRequest.from_bytes(request.to_bytes()) == request


def dead_letter_envelope() -> Envelope:
    raw_key = b"\xff\x01key"
    return Envelope(
        value=None,
        topic="alarms",
        partition=3,
        offset=12,
        integration="local",
        key=codecs.decode_key(raw_key),
        headers={"trace": "t-1"},
        timestamp=1_700_000_000_000,
        raw_value=b'{"type": "ALARM"}',
        raw_key=raw_key,
    )


def test_dead_letter_round_trip() -> None:
    letter = for_envelope(
        dead_letter_envelope(), "template", "bad", handler="h", action="webhook", index=1
    )

    again = DeadLetter.from_bytes(letter.to_bytes())

    assert again == letter
    assert again.key == b"\xff\x01key"
    assert base64.b64decode(again.value or "") == b'{"type": "ALARM"}'
    assert again.headers() == [
        ("herald-dlq-id", letter.id.encode()),
        ("herald-dlq-stage", b"template"),
        ("herald-dlq-reason", b"bad"),
    ]


def test_envelope_of_restores_the_records_identity() -> None:
    original = dead_letter_envelope()
    letter = DeadLetter.from_bytes(for_envelope(original, "condition", "threw").to_bytes())

    restored = envelope_of(letter, {"type": "ALARM"})

    assert restored.message_id == original.message_id == "local/alarms/3/12"
    assert restored == Envelope(**{**_fields(original), "value": {"type": "ALARM"}})


def _fields(envelope: Envelope) -> dict[str, Any]:
    return {name: getattr(envelope, name) for name in Envelope.__dataclass_fields__}


def test_execution_record_carries_identity_and_redacted_payload(receiver: Receiver) -> None:
    action = {
        "action": "ilert_event",
        "ilert_event": {"integrationKey": "il1-inline", "summary": "s"},
    }
    _, [request] = requests_for(receiver, action)

    rec = executions.record(
        request,
        executions.COMPLETED,
        attempts=2,
        result={"status": 202},
        redacted_payload=IlertEventDelivery().redact(request.payload),
    )

    assert {k: v for k, v in rec.items() if k != "at"} == {
        "id": request.id,
        "messageId": "local/alarms/2/99",
        "handler": "alarms",
        "event": "kafka:local:alarms",
        "action": "ilert_event",
        "actionIndex": 0,
        "status": "COMPLETED",
        "attempts": 2,
        "error": None,
        "reason": None,
        "result": {"status": 202},
        "payload": {
            "path": "/api/events",
            "body": {"integrationKey": "***", "eventType": "ALERT", "summary": "s"},
        },
        "source": {  # for the execution history (streams.history)
            "integration": "local",
            "topic": "alarms",
            "partition": 2,
            "offset": 99,
            "timestamp": 1_700_000_000_000,
        },
    }
    assert b"il1-inline" not in executions.to_bytes(rec)
