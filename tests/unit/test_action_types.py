"""The plug-in points: action types (renderer + delivery), target types, the one request
constructor and the shared mask."""

from __future__ import annotations

import hashlib

import pytest

from streams.actions import registry
from streams.actions.base import ActionRequest, Delivery, HttpOrigin, Renderer
from streams.actions.ilert import IlertEventDelivery, IlertHeartbeat, heartbeat_request
from streams.config.models import HeraldConfig, Target
from streams.handlers import compile_all
from streams.message import Envelope
from streams.secrets import MASK, mask_keys, mask_secret
from streams.targets import registry as target_types
from streams.targets.base import TargetType


def test_every_action_has_a_renderer_and_a_delivery_under_its_name() -> None:
    assert registry.names() == sorted(
        [
            "ilert_event",
            "ilert_heartbeat",
            "webhook",
            "publish",
            "start_workflow",
            "complete_task",
            "fail_task",
            "terminate_workflow",
            "update_workflow_variables",
        ]
    )
    for name in registry.names():
        renderer = registry.renderer(name)
        assert renderer is not None and issubclass(renderer, Renderer)
        assert renderer.name == name
        assert isinstance(registry.delivery(name), Delivery)
    assert registry.renderer("nope") is None and registry.delivery("nope") is None


def test_a_renderer_gets_its_handlers_event_at_construction() -> None:
    config = HeraldConfig.model_validate(
        {
            "integrations": [{"name": "local", "bootstrapServers": "localhost:9092"}],
            "targets": [{"name": "c", "type": "conductor", "baseUrl": "http://c"}],
            "eventHandlers": [
                {
                    "name": "orders",
                    "event": "kafka:orders",
                    "active": True,
                    "actions": [{"action": "start_workflow", "start_workflow": {"name": "wf"}}],
                }
            ],
        }
    )
    [handler] = compile_all(config, file="herald.yaml")
    [action] = handler.actions
    assert action.renderer.event == "kafka:orders"
    assert action.renderer.params.name == "wf"  # typed: StartWorkflowParams


def test_a_request_from_a_record_carries_its_coordinates_and_a_stable_id() -> None:
    envelope = Envelope(
        value={}, topic="alarms", partition=2, offset=9, integration="local", timestamp=5
    )
    request = ActionRequest.create(
        origin=envelope,
        handler="h",
        event="kafka:alarms",
        action="webhook",
        index=1,
        payload={},
        ordering_key="k",
    )
    digest = hashlib.sha256(b"local/alarms/2/9|h|1").hexdigest()[:32]
    assert request.id == digest
    assert request.integration == "local"
    assert request.source == {
        "topic": "alarms",
        "partition": 2,
        "offset": 9,
        "timestamp": 5,
        "key": None,
        "headers": {},
        "messageId": "local/alarms/2/9",
    }


def test_a_request_from_http_records_the_path_as_its_topic() -> None:
    origin = HttpOrigin(
        path="/api/events", integration="home", message_id="home/http/abc", received_ms=7
    )
    request = ActionRequest.create(
        origin=origin,
        handler="ilert-api",
        event="http:POST /api/events",
        action="ilert_event",
        payload={"path": "/api/events", "body": {}},
        ordering_key="ilert-api",
        target="ilert",
    )
    assert request.id == hashlib.sha256(b"home/http/abc|ilert-api|0").hexdigest()[:32]
    assert request.source == {
        "topic": "http:/api/events",
        "partition": 0,
        "offset": 0,
        "timestamp": 7,
        "key": None,
        "headers": {},
        "messageId": "home/http/abc",
    }
    assert ActionRequest.from_bytes(request.to_bytes()) == request


def test_a_request_without_an_origin_needs_an_id_and_an_integration() -> None:
    with pytest.raises(ValueError, match="needs an id and an integration"):
        ActionRequest.create(
            handler="h", event="timer", action="x", payload={}, ordering_key="k", id="i"
        )


def test_heartbeat_requests_carry_the_key_only_when_given() -> None:
    own = heartbeat_request(id="i", handler="h", event="timer", integration="home", target="t")
    assert own.payload == {"path": "/api/heartbeats/{integrationKey}"}
    assert (own.action, own.ordering_key, own.source) == (IlertHeartbeat.name, "heartbeat", {})
    given = heartbeat_request(
        id="j", handler="h", event="http", integration="home", target="t", key="k1"
    )
    assert given.payload["integrationKey"] == "k1"


def test_target_types_are_registered_in_the_order_errors_list_them() -> None:
    assert target_types.names() == ("ilert", "webhook", "conductor")
    assert Target.model_validate({"name": "w", "type": "webhook", "url": "http://w"}).url


def test_a_target_type_owns_its_fields() -> None:
    def no_check(target: Target) -> None:
        return None

    alone = TargetType("solo", no_check, own_fields=("url",))
    target = Target.model_construct(name="i", type="ilert", baseUrl="http://i", url="http://u")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(target_types.TARGET_TYPES, "solo", alone)
        with pytest.raises(ValueError, match="url is for solo targets only"):
            target_types.check(target)


def test_secrets_are_masked_with_the_one_mask() -> None:
    assert mask_keys({"integrationKey": "k", "summary": "s"}, {"integrationKey"}) == {
        "integrationKey": MASK,
        "summary": "s",
    }
    assert mask_secret("GET /api/heartbeats/il1-key failed", "il1-key") == (
        f"GET /api/heartbeats/{MASK} failed"
    )
    assert mask_secret("text", "") == "text"
    payload = {"path": "/api/events", "body": {"integrationKey": "k", "summary": "s"}}
    assert IlertEventDelivery().redact(payload)["body"]["integrationKey"] == MASK
