"""Conductor's five actions and the token flow, delivered once each against the loopback
Conductor server: rendered by the source stage, carried through the actions topic's bytes,
delivered by the action type the sink would use. The end-to-end runs through a broker and
workers are in tests/integration/test_conductor.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from streams.actions.base import ActionRequest, DeliveryContext
from streams.actions.conductor import StartWorkflowDelivery
from streams.actions.registry import delivery as action_delivery
from streams.conductor_auth import api_base, jwt_expiry, token_cache
from streams.config.models import HeraldConfig, Target
from streams.errors import ConfigError, DeliveryError
from streams.handlers import compile_all
from streams.http1 import Http1Client
from streams.message import Envelope
from streams.routing import route
from tests.support.conductor_server import ConductorServer

START = StartWorkflowDelivery()
ORDER = {"orderId": "o-17", "customer": {"id": "c-9"}, "items": [1, 2], "wf": "", "task": ""}


@pytest.fixture
def conductor() -> Iterator[ConductorServer]:
    server = ConductorServer(auth=True).define_workflow("order_flow", ("approve_ref",))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def target(server: ConductorServer, **extra: Any) -> dict[str, Any]:
    return {
        "name": "conductor",
        "type": "conductor",
        "baseUrl": server.url,
        "keyId": "app-key-id",
        "keySecret": "app-key-secret",
        "timeoutSeconds": 5,
        **extra,
    }


def render(
    server: ConductorServer,
    action: dict[str, Any],
    message: Any = ORDER,
    *,
    target_extra: dict[str, Any] | None = None,
    event: str = "kafka:local:orders",
    offset: int = 42,
) -> tuple[HeraldConfig, ActionRequest]:
    config = HeraldConfig.model_validate(
        {
            "integrations": [{"name": "local", "bootstrapServers": "localhost:9092"}],
            "targets": [target(server, **(target_extra or {}))],
            "eventHandlers": [
                {"name": "orders", "event": event, "active": True, "actions": [action]}
            ],
        }
    )
    envelope = Envelope(
        value=message,
        topic="orders",
        partition=1,
        offset=offset,
        integration="local",
        key="o-17",
        raw_value=orjson.dumps(message),
    )
    evaluation = route(compile_all(config, file="herald.yaml"), envelope)
    assert evaluation.dead_letters == [], evaluation.dead_letters
    (request,) = evaluation.requests
    return config, ActionRequest.from_bytes(request.to_bytes())


def deliver_all(config: HeraldConfig, *requests: ActionRequest) -> list[Any]:
    """Deliver in order on one event loop (one token cache), as one worker does."""
    by_name = {t.name: t for t in config.targets}

    async def go() -> list[Any]:
        results: list[Any] = []
        async with aiohttp.ClientSession() as session, Http1Client() as http:
            ctx = DeliveryContext(http=http, session=session, targets=by_name, publish=_no_publish)
            for request in requests:
                action = action_delivery(request.action)
                try:
                    results.append(await action.deliver(request, ctx, by_name["conductor"]))
                except DeliveryError as exc:
                    results.append(exc)
        return results

    return asyncio.run(go())


async def _no_publish(*args: Any) -> dict:  # pragma: no cover - not used by these actions
    raise AssertionError("no publishing here")


def start(server: ConductorServer, message: Any = ORDER) -> str:
    config, request = render(
        server, {"action": "start_workflow", "start_workflow": {"name": "order_flow"}}, message
    )
    (result,) = deliver_all(config, request)
    return result["workflowId"]


# --------------------------------------------------------------------------- start_workflow


def test_start_workflow_sends_conductors_request_and_returns_the_workflow_id(
    conductor: ConductorServer,
) -> None:
    config, request = render(
        conductor,
        {
            "action": "start_workflow",
            "start_workflow": {
                "name": "order_flow",
                "version": 3,
                "correlationId": "${orderId}",
                "input": {"order": "${orderId}", "customer": "${customer}", "n": "${items[1]}"},
                "taskToDomain": {"*": "blue"},
            },
        },
    )
    (result,) = deliver_all(config, request)

    (call,) = conductor.requests("POST", "/api/workflow")
    assert call.json == {
        "name": "order_flow",
        "version": 3,
        "correlationId": "o-17",
        "input": {
            "order": "o-17",
            "customer": {"id": "c-9"},
            "n": 2,
            "conductor.event.messageId": "local/orders/1/42",
            "conductor.event.name": "kafka:local:orders",
        },
        "taskToDomain": {"*": "blue"},
        "idempotencyKey": request.id,
        "idempotencyStrategy": "RETURN_EXISTING",
    }
    (workflow_id,) = conductor.workflows
    assert result == {"workflowId": workflow_id}
    (token_call,) = conductor.requests("POST", "/api/token")
    assert token_call.json == {"keyId": "app-key-id", "keySecret": "app-key-secret"}
    assert call.header("X-Authorization") in conductor.tokens


def test_a_repeated_start_returns_the_workflow_already_started(conductor: ConductorServer) -> None:
    config, request = render(
        conductor, {"action": "start_workflow", "start_workflow": {"name": "order_flow"}}
    )
    first, again = deliver_all(config, request, request)  # a redelivery after a crash
    assert first == again
    assert len(conductor.workflows) == 1


def test_a_users_idempotency_key_and_strategy_are_sent_as_given(
    conductor: ConductorServer,
) -> None:
    action = {
        "action": "start_workflow",
        "start_workflow": {
            "name": "order_flow",
            "idempotencyKey": "order-${orderId}",
            "idempotencyStrategy": "FAIL",
        },
    }
    config, request = render(conductor, action)
    first, second = deliver_all(config, request, request)
    body = conductor.requests("POST", "/api/workflow")[0].json
    assert (body["idempotencyKey"], body["idempotencyStrategy"]) == ("order-o-17", "FAIL")
    assert "workflowId" in first
    assert isinstance(second, DeliveryError) and second.status == 409
    assert not second.retryable  # Conductor refused the duplicate: dead-letter it


def test_correlation_id_that_renders_to_null_is_sent_as_its_template_like_conductor(
    conductor: ConductorServer,
) -> None:
    config, request = render(
        conductor,
        {
            "action": "start_workflow",
            "start_workflow": {"name": "order_flow", "correlationId": "${missing}"},
        },
    )
    deliver_all(config, request)
    assert conductor.requests("POST", "/api/workflow")[0].json["correlationId"] == "${missing}"


def test_conductor_event_name_is_the_handlers_event_as_written(conductor: ConductorServer) -> None:
    config, request = render(
        conductor,
        {"action": "start_workflow", "start_workflow": {"name": "order_flow"}},
        event="kafka:orders",
    )
    deliver_all(config, request)
    body = conductor.requests("POST", "/api/workflow")[0].json
    assert body["input"]["conductor.event.name"] == "kafka:orders"


def test_unknown_workflow_fails_permanently_and_5xx_is_retryable(
    conductor: ConductorServer,
) -> None:
    config, request = render(
        conductor, {"action": "start_workflow", "start_workflow": {"name": "no_such_flow"}}
    )
    conductor.fail_next("POST", "/api/workflow", 503)
    unavailable, missing = deliver_all(config, request, request)
    assert isinstance(unavailable, DeliveryError) and unavailable.retryable
    assert isinstance(missing, DeliveryError) and not missing.retryable
    assert str(missing) == (
        "Conductor POST /workflow: HTTP 404: No such workflow found by name: no_such_flow, "
        "version: None"
    )


# --------------------------------------------------------------------------- tasks


def test_complete_task_by_reference_sets_conductors_output_map(conductor: ConductorServer) -> None:
    workflow_id = start(conductor)
    message = {**ORDER, "wf": workflow_id}
    config, request = render(
        conductor,
        {
            "action": "complete_task",
            "complete_task": {
                "workflowId": "${wf}",
                "taskRefName": "approve_ref",
                "output": {"approvedBy": "${customer.id}"},
            },
        },
        message,
    )
    (result,) = deliver_all(config, request)

    (call,) = conductor.requests("POST", f"/api/tasks/{workflow_id}/approve_ref/COMPLETED")
    assert call.json == {
        "workflowId": workflow_id,
        "taskId": None,
        "taskRefName": "approve_ref",
        "approvedBy": "c-9",
        "conductor.event.messageId": "local/orders/1/42",
        "conductor.event.name": "kafka:local:orders",
    }
    task = conductor.workflows[workflow_id]["tasks"][0]
    assert result == {"taskId": task["taskId"], "workflowId": workflow_id, "status": "COMPLETED"}
    assert task["status"] == "COMPLETED"
    assert conductor.workflows[workflow_id]["status"] == "COMPLETED"


def test_fail_task_by_id_with_a_reason_uses_the_task_result_endpoint(
    conductor: ConductorServer,
) -> None:
    workflow_id = start(conductor)
    task_id = conductor.workflows[workflow_id]["tasks"][0]["taskId"]
    config, request = render(
        conductor,
        {
            "action": "fail_task",
            "fail_task": {
                "taskId": "${task}",
                "output": {"why": "declined"},
                "reasonForIncompletion": "customer ${customer.id} declined",
            },
        },
        {**ORDER, "task": task_id},
    )
    (result,) = deliver_all(config, request)

    assert [c.path for c in conductor.requests()][-2:] == [f"/api/tasks/{task_id}", "/api/tasks"]
    update = conductor.requests("POST", "/api/tasks")[0].json
    assert update == {
        "workflowInstanceId": workflow_id,
        "taskId": task_id,
        "status": "FAILED",
        "outputData": {
            "workflowId": None,
            "taskId": task_id,
            "taskRefName": None,
            "why": "declined",
            "conductor.event.messageId": "local/orders/1/42",
            "conductor.event.name": "kafka:local:orders",
        },
        "reasonForIncompletion": "customer c-9 declined",
    }
    assert result == {"taskId": task_id, "workflowId": workflow_id, "status": "FAILED"}
    assert conductor.workflows[workflow_id]["status"] == "FAILED"


def test_fail_task_by_reference_with_a_reason_finds_the_task_id(
    conductor: ConductorServer,
) -> None:
    workflow_id = start(conductor)
    config, request = render(
        conductor,
        {
            "action": "fail_task",
            "fail_task": {
                "workflowId": "${wf}",
                "taskRefName": "approve_ref",
                "reasonForIncompletion": "timeout",
            },
        },
        {**ORDER, "wf": workflow_id},
    )
    deliver_all(config, request)
    assert conductor.requests("GET", f"/api/workflow/{workflow_id}")[0].query == {
        "includeTasks": "true"
    }
    task = conductor.workflows[workflow_id]["tasks"][0]
    assert (task["status"], task["reasonForIncompletion"]) == ("FAILED", "timeout")


def test_unknown_task_is_a_permanent_failure(conductor: ConductorServer) -> None:
    config, request = render(
        conductor, {"action": "complete_task", "complete_task": {"taskId": "no-such-task"}}
    )
    (result,) = deliver_all(config, request)
    assert isinstance(result, DeliveryError) and not result.retryable


def test_a_task_action_without_any_task_is_dead_lettered_at_the_source(
    conductor: ConductorServer,
) -> None:
    config = HeraldConfig.model_validate(
        {
            "integrations": [{"name": "local", "bootstrapServers": "localhost:9092"}],
            "targets": [target(conductor)],
            "eventHandlers": [
                {
                    "name": "orders",
                    "event": "kafka:local:orders",
                    "active": True,
                    "actions": [
                        {"action": "complete_task", "complete_task": {"workflowId": "${wf}"}}
                    ],
                }
            ],
        }
    )
    envelope = Envelope(value=ORDER, topic="orders", partition=0, offset=1, integration="local")
    evaluation = route(compile_all(config, file="herald.yaml"), envelope)
    (letter,) = evaluation.dead_letters
    assert letter.stage == "template"
    assert "complete_task found no task" in letter.reason


# --------------------------------------------------------------------------- workflows


def test_terminate_workflow_with_reason(conductor: ConductorServer) -> None:
    workflow_id = start(conductor)
    config, request = render(
        conductor,
        {
            "action": "terminate_workflow",
            "terminate_workflow": {"workflowId": "${wf}", "terminationReason": "order ${orderId}"},
        },
        {**ORDER, "wf": workflow_id},
    )
    first, again = deliver_all(config, request, request)
    (call, _) = conductor.requests("DELETE", f"/api/workflow/{workflow_id}")
    assert call.query == {"reason": "order o-17"}
    assert first == {"workflowId": workflow_id, "terminated": True}
    assert conductor.workflows[workflow_id]["status"] == "TERMINATED"
    assert isinstance(again, DeliveryError) and again.status == 409 and not again.retryable


def test_update_workflow_variables_appends_arrays_when_asked(conductor: ConductorServer) -> None:
    workflow_id = start(conductor)
    conductor.workflows[workflow_id]["variables"] = {"seen": ["a"], "count": 1}
    replace = {"workflowId": "${wf}", "variables": {"count": "${items[0]}", "last": "${orderId}"}}
    append = {"workflowId": "${wf}", "variables": {"seen": ["${orderId}"]}, "appendArray": True}
    message = {**ORDER, "wf": workflow_id}
    config, set_vars = render(
        conductor,
        {"action": "update_workflow_variables", "update_workflow_variables": replace},
        message,
    )
    _, add_vars = render(
        conductor,
        {"action": "update_workflow_variables", "update_workflow_variables": append},
        message,
    )
    results = deliver_all(config, set_vars, add_vars)

    posts = conductor.requests("POST", f"/api/workflow/{workflow_id}/variables")
    assert [p.json for p in posts] == [{"count": 1, "last": "o-17"}, {"seen": ["a", "o-17"]}]
    assert conductor.workflows[workflow_id]["variables"] == {
        "seen": ["a", "o-17"],
        "count": 1,
        "last": "o-17",
    }
    assert results[1] == {"workflowId": workflow_id, "variables": ["seen"]}


# --------------------------------------------------------------------------- tokens


def test_expired_token_is_renewed_once_and_the_call_retried(conductor: ConductorServer) -> None:
    config, request = render(
        conductor, {"action": "start_workflow", "start_workflow": {"name": "order_flow"}}
    )
    _, other = render(
        conductor,
        {"action": "start_workflow", "start_workflow": {"name": "order_flow"}},
        {**ORDER, "orderId": "o-18"},
        offset=43,
    )

    async def go() -> list[Any]:
        by_name = {t.name: t for t in config.targets}
        async with aiohttp.ClientSession() as session, Http1Client() as http:
            ctx = DeliveryContext(http=http, session=session, targets=by_name, publish=_no_publish)
            first = await START.deliver(request, ctx, by_name["conductor"])
            conductor.expire_tokens()  # the server says the cached token expired
            second = await START.deliver(other, ctx, by_name["conductor"])
            return [first, second, token_cache().requests]

    first, second, token_requests = asyncio.run(go())
    assert first != second
    starts = conductor.requests("POST", "/api/workflow")
    assert [s.status for s in starts] == [200, 401, 200]
    assert starts[1].header("X-Authorization") == starts[0].header("X-Authorization")
    assert starts[2].header("X-Authorization") != starts[1].header("X-Authorization")
    assert token_requests == 2


def test_token_is_renewed_before_it_expires() -> None:
    # Tokens valid for 30 s are inside the 60 s renewal margin: each call renews first.
    with ConductorServer(auth=True, token_ttl=30).define_workflow("order_flow") as server:
        config, request = render(
            server, {"action": "start_workflow", "start_workflow": {"name": "order_flow"}}
        )
        deliver_all(config, request, request)
        assert [c.path for c in server.requests()] == [
            "/api/token",
            "/api/workflow",
            "/api/token",
            "/api/workflow",
        ]
        assert all(c.status == 200 for c in server.requests())


def test_without_credentials_no_token_is_asked_for() -> None:
    with ConductorServer(auth=False).define_workflow("order_flow") as server:
        config, request = render(
            server,
            {"action": "start_workflow", "start_workflow": {"name": "order_flow"}},
            target_extra={"keyId": None, "keySecret": None},
        )
        (result,) = deliver_all(config, request)
        assert "workflowId" in result
        assert [c.path for c in server.requests()] == ["/api/workflow"]
        assert server.requests()[0].header("X-Authorization") is None


def test_credentials_against_a_server_without_auth_send_no_token() -> None:
    with ConductorServer(auth=False).define_workflow("order_flow") as server:
        config, request = render(
            server, {"action": "start_workflow", "start_workflow": {"name": "order_flow"}}
        )
        results = deliver_all(config, request, request)
        assert all("workflowId" in r for r in results)
        calls = server.requests()
        assert [(c.path, c.status) for c in calls] == [
            ("/api/token", 404),
            ("/api/workflow", 200),
            ("/api/workflow", 200),  # the 404 is remembered: no second token request
        ]
        assert all(c.header("X-Authorization") is None for c in calls)


def test_wrong_credentials_fail_permanently(conductor: ConductorServer) -> None:
    config, request = render(
        conductor,
        {"action": "start_workflow", "start_workflow": {"name": "order_flow"}},
        target_extra={"keySecret": "wrong"},
    )
    (result,) = deliver_all(config, request)
    assert isinstance(result, DeliveryError) and not result.retryable
    assert "token request" in str(result) and "wrong" not in str(result)


def test_jwt_expiry_and_api_base() -> None:
    assert jwt_expiry("not-a-jwt") is None
    assert jwt_expiry("a.e30.b") is None  # {} has no exp
    header, body = "eyJhbGciOiJIUzI1NiJ9", "eyJleHAiOjE3MDAwMDAwMDB9"  # {"exp":1700000000}
    assert jwt_expiry(f"{header}.{body}.sig") == 1_700_000_000
    base = {"name": "c", "type": "conductor"}
    assert api_base(Target.model_validate({**base, "baseUrl": "http://c:8080"})) == (
        "http://c:8080/api"
    )
    assert api_base(Target.model_validate({**base, "baseUrl": "https://x/api/"})) == (
        "https://x/api"
    )


# --------------------------------------------------------------------------- configuration


def _config(actions: list[dict[str, Any]], *, targets: list[dict[str, Any]], active: bool = True):
    return HeraldConfig.model_validate(
        {
            "integrations": [{"name": "local", "bootstrapServers": "localhost:9092"}],
            "targets": targets,
            "eventHandlers": [
                {"name": "h", "event": "kafka:local:t", "active": active, "actions": actions}
            ],
        }
    )


def test_an_active_conductor_action_needs_a_conductor_target() -> None:
    action = {"action": "start_workflow", "start_workflow": {"name": "f"}}
    with pytest.raises(ConfigError) as caught:
        compile_all(_config([action], targets=[]), file="herald.yaml")
    assert caught.value.problems == [
        "herald.yaml: eventHandlers[0](name=h).actions[0].start_workflow: needs a conductor "
        "target; define one under targets (type: conductor)"
    ]
    compile_all(_config([action], targets=[], active=False), file="herald.yaml")  # inactive: ok


def test_conductor_target_validation() -> None:
    base = {"name": "c", "type": "conductor"}
    with pytest.raises(ValueError, match="needs baseUrl"):
        Target.model_validate(base)
    with pytest.raises(ValueError, match="both keyId and keySecret"):
        Target.model_validate({**base, "baseUrl": "http://c", "keyId": "k"})
    with pytest.raises(ValueError, match="for conductor targets only"):
        Target.model_validate({"name": "i", "type": "ilert", "baseUrl": "http://i", "keyId": "k"})


def test_conductor_params_are_checked_at_load() -> None:
    targets = [{"name": "c", "type": "conductor", "baseUrl": "http://c"}]
    bad = [
        {"action": "start_workflow", "start_workflow": {"version": 1}},
        {"action": "start_workflow", "start_workflow": {"name": "f", "idempotencyStrategy": "X"}},
        {"action": "complete_task", "complete_task": {"taskId": "t", "reasonForIncompletion": "r"}},
    ]
    with pytest.raises(ConfigError) as caught:
        compile_all(_config(bad, targets=targets), file="f")
    assert [line.split(": ", 2)[1] for line in caught.value.problems] == [
        "eventHandlers[0](name=h).actions[0].start_workflow.name",
        "eventHandlers[0](name=h).actions[1].start_workflow.idempotencyStrategy",
        "eventHandlers[0](name=h).actions[2].complete_task.reasonForIncompletion",
    ]


def test_a_server_that_turns_authentication_on_gets_a_token() -> None:
    with ConductorServer(auth=False).define_workflow("order_flow") as server:
        config, request = render(
            server, {"action": "start_workflow", "start_workflow": {"name": "order_flow"}}
        )
        _, later = render(
            server,
            {"action": "start_workflow", "start_workflow": {"name": "order_flow"}},
            offset=43,
        )
        by_name = {t.name: t for t in config.targets}

        async def go() -> list[Any]:
            async with aiohttp.ClientSession() as session, Http1Client() as http:
                ctx = DeliveryContext(
                    http=http, session=session, targets=by_name, publish=_no_publish
                )
                first = await START.deliver(request, ctx, by_name["conductor"])
                server.auth = True  # the remembered "no authentication" is now wrong
                second = await START.deliver(later, ctx, by_name["conductor"])
                return [first, second]

        first, second = asyncio.run(go())
        assert first != second
        assert [(c.path, c.status) for c in server.requests()] == [
            ("/api/token", 404),
            ("/api/workflow", 200),
            ("/api/workflow", 401),
            ("/api/token", 200),
            ("/api/workflow", 200),
        ]
