"""The admin API (agents.admin) driven by the real client, conductor-python, as a Conductor user
drives Orkes: the authorization client creates an application, its access key, a group and
grants; the application's own client creates, lists, updates and deletes an event handler,
which delivers its first event to Conductor within seconds. Then what must be refused is:
401s (no token, a wrong secret, an expired token), 403s (no grant on the integration, a publish
to a forbidden integration, a hidden handler), and a revoked key stops working on both workers.

Real broker, two real workers, the Conductor stand-in as the workflow server (tests/support),
conductor-python 2.x as the client. Where conductor-python has no model (its TargetRef does not
know INTEGRATION or EVENT_HANDLER), its own ApiClient sends Orkes' documented JSON.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from conductor.client.configuration.configuration import Configuration
from conductor.client.configuration.settings.authentication_settings import (
    AuthenticationSettings,
)
from conductor.client.http.api.event_resource_api import EventResourceApi
from conductor.client.http.api_client import ApiClient
from conductor.client.http.models.action import Action
from conductor.client.http.models.create_or_update_application_request import (
    CreateOrUpdateApplicationRequest,
)
from conductor.client.http.models.event_handler import EventHandler
from conductor.client.http.models.start_workflow import StartWorkflow
from conductor.client.http.models.upsert_group_request import UpsertGroupRequest
from conductor.client.http.rest import ApiException
from conductor.client.orkes.orkes_authorization_client import OrkesAuthorizationClient

from agents.admin.tokens import Tokens
from streams.config.models import AdminApi
from tests.support.admin_calls import raw, token_for
from tests.support.conductor_server import ConductorServer
from tests.support.herald import FAST_RETRY, deploy, herald_check_connect
from tests.support.kafka import consume, produce

ADMIN_KEY = "herald-admin-key"
ADMIN_SECRET = "admin-Secret-for-tests-8c1f"


@pytest.fixture
def conductor() -> Iterator[ConductorServer]:
    server = ConductorServer(auth=False).define_workflow("order_flow", ("approve_ref",))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def sdk(worker: Any, key_id: str, secret: str) -> Configuration:
    return Configuration(
        server_api_url=f"{worker.web_url}/api",
        authentication_settings=AuthenticationSettings(key_id=key_id, key_secret=secret),
    )


def orders_handler(name: str, topic: str) -> EventHandler:
    """A Conductor user's handler, in conductor-python's own models."""
    return EventHandler(
        name=name,
        event=f"kafka:local:{topic}",
        active=True,
        actions=[
            Action(
                action="start_workflow",
                start_workflow=StartWorkflow(
                    name="order_flow", version=1, input={"orderId": "${orderId}"}
                ),
            )
        ],
    )


def test_a_conductor_python_script_manages_handlers_and_access_against_herald(
    broker: Any, conductor: ConductorServer, unique_topic, tmp_path, deployments
) -> None:
    topic = unique_topic("orders")
    herald_ = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[],
        targets=[
            {
                "name": "conductor",
                "type": "conductor",
                "baseUrl": conductor.url,
                "retry": FAST_RETRY,
            },
        ],
        extra_topics={topic: 2},
        settings={"admin": {"keyId": ADMIN_KEY, "keySecret": ADMIN_SECRET}},
        integrations=[
            {
                "name": "other",
                "bootstrapServers": broker.bootstrap,
                "consumerGroupId": "other-group",
            }
        ],
    )
    first, second = herald_.start_worker(), herald_.start_worker()

    # The administrator (the configuration's key) sets up an application and its access.
    authz = OrkesAuthorizationClient(sdk(first, ADMIN_KEY, ADMIN_SECRET))
    application = authz.create_application(CreateOrUpdateApplicationRequest(name="orders-team"))
    key = authz.create_access_key(application.id)
    assert key.secret and len(key.secret) >= 32
    listed = authz.get_access_keys(application.id)
    assert [(k.id, k.status.value if hasattr(k.status, "value") else k.status) for k in listed] == [
        (key.id, "ACTIVE")
    ]
    group = authz.upsert_group(UpsertGroupRequest(description="order ops", roles=["USER"]), "ops")
    assert group.id == "ops"
    authz.add_user_to_group("ops", f"app:{application.id}")
    assert [u.id for u in authz.get_users_in_group("ops")] == [f"app:{application.id}"]
    # conductor-python's TargetRef has no INTEGRATION: Orkes' JSON through its own ApiClient.
    authz.authorizationResourceApi.grant_permissions(
        {
            "subject": {"type": "GROUP", "id": "ops"},
            "target": {"type": "INTEGRATION", "id": "local"},
            "access": ["EXECUTE"],
        }
    )
    permissions = authz.authorizationResourceApi.get_permissions("INTEGRATION", "local")
    assert permissions == {"EXECUTE": [{"type": "GROUP", "id": "ops"}]}

    # The application manages its handler with conductor-python's event resource.
    events = EventResourceApi(ApiClient(sdk(second, key.id, key.secret)))
    events.add_event_handler(orders_handler("orders", topic))
    mine = events.get_event_handlers()
    assert [h.name for h in mine] == ["orders"]
    produce(broker.bootstrap, topic, [{"key": "o-1", "value": {"orderId": "o-1"}}])
    (start,) = conductor.wait_for(1, method="POST", path="/api/workflow", timeout=60)
    assert start.json["name"] == "order_flow"
    assert start.json["input"]["orderId"] == "o-1"

    # The operator's check lists the live handler and where it came from.
    check = herald_check_connect(herald_.config_path)
    assert "orders: runtime (herald rules put or the admin API)" in check.stdout, check.stdout

    changed = orders_handler("orders", topic)
    changed.condition = "$.orderId != 'skip-me'"
    events.update_event_handler(changed)
    found = events.get_event_handlers_for_event(f"kafka:local:{topic}", active_only=True)
    assert [h.condition for h in found] == ["$.orderId != 'skip-me'"]

    # A second application with no grant: may not use the integration, does not see the handler.
    stranger = authz.create_application(CreateOrUpdateApplicationRequest(name="stranger"))
    stranger_key = authz.create_access_key(stranger.id)
    theirs = EventResourceApi(ApiClient(sdk(first, stranger_key.id, stranger_key.secret)))
    with pytest.raises(ApiException) as refused:
        theirs.add_event_handler(orders_handler("theirs", topic))
    assert refused.value.status == 403
    assert "EXECUTE on INTEGRATION 'local'" in refused.value.body
    assert theirs.get_event_handlers() == []
    assert theirs.get_event_handlers_for_event(f"kafka:local:{topic}", active_only=False) == []
    with pytest.raises(ApiException) as hidden:
        theirs.remove_event_handler_status("orders")
    assert hidden.value.status == 403

    # Publishing to an integration the application may not use is refused too.
    team_token = token_for(first, key.id, key.secret)
    publisher = {
        "name": "copier",
        "event": f"kafka:local:{topic}",
        "active": True,
        "actions": [{"action": "publish", "publish": {"to": "kafka:other:copies"}}],
    }
    status, body = raw(first, "POST", "/api/event", publisher, team_token)
    assert status == 403 and "EXECUTE on INTEGRATION 'other'" in body["message"], body

    # A handler the configuration would refuse is refused in the configuration's words.
    status, body = raw(
        first, "POST", "/api/event", {"name": "bad", "event": "kafka:nowhere:x"}, team_token
    )
    assert status == 400
    assert any("integration 'nowhere'" in e["message"] for e in body["validationErrors"])
    status, body = raw(
        first,
        "POST",
        "/api/event",
        {
            **publisher,
            "name": "leak",
            "actions": [
                {
                    "action": "start_workflow",
                    "start_workflow": {"name": "x", "input": {"p": "${env:HOME}"}},
                }
            ],
        },
        team_token,
    )
    assert (
        status == 400 and "reference to the environment" in body["validationErrors"][0]["message"]
    )

    events.remove_event_handler_status("orders")
    assert events.get_event_handlers() == []

    # More of the authorization client, as an Orkes administrator's script uses it.
    assert {a.name for a in authz.list_applications()} == {"orders-team", "stranger"}
    authz.update_application(CreateOrUpdateApplicationRequest(name="strangers"), stranger.id)
    assert authz.get_application(stranger.id).name == "strangers"
    authz.add_role_to_application_user(stranger.id, "METADATA_MANAGER")
    assert [g.id for g in authz.list_groups()] == ["ops"]
    assert authz.get_group("ops").description == "order ops"
    authz.remove_user_from_group("ops", f"app:{application.id}")
    assert authz.get_users_in_group("ops") == []
    authz.delete_access_key(stranger.id, stranger_key.id)
    assert authz.get_access_keys(stranger.id) == []
    authz.delete_group("ops")
    assert authz.list_groups() == []
    authz.delete_application(stranger.id)
    assert {a.name for a in authz.list_applications()} == {"orders-team"}

    # Revoking the key: its token stops working on every worker within seconds.
    for worker in (first, second):
        assert raw(worker, "GET", "/api/event", token=team_token)[0] == 200
    authz.toggle_access_key_status(application.id, key.id)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        codes = [raw(w, "GET", "/api/event", token=team_token)[0] for w in (first, second)]
        if codes == [401, 401]:
            break
        time.sleep(0.2)
    assert codes == [401, 401]
    status, body = raw(first, "POST", "/api/token", {"keyId": key.id, "keySecret": key.secret})
    assert status == 401

    # No secret in any log line or audit record.
    audit = consume(broker.bootstrap, f"{herald_.prefix}-audit", 10, timeout=20)
    assert len(audit) >= 10
    text = json.dumps([r["json"] for r in audit])
    logs = first.log_text() + second.log_text()
    for secret in (ADMIN_SECRET, key.secret, stranger_key.secret, team_token):
        assert secret not in text
        assert secret not in logs
    operations = {r["json"]["operation"] for r in audit}
    assert {"application.create", "access_key.create", "event_handler.create"} <= operations
    assert {"event_handler.update", "event_handler.delete", "access_key.status"} <= operations


def test_requests_without_a_valid_token_are_refused_with_orkes_error_codes(
    broker: Any, unique_topic, tmp_path, deployments
) -> None:
    herald_ = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[],
        settings={"admin": {"keyId": ADMIN_KEY, "keySecret": ADMIN_SECRET}},
    )
    worker = herald_.start_worker()
    status, body = raw(worker, "GET", "/api/event")
    assert (status, body["error"]) == (401, "INVALID_TOKEN")
    status, body = raw(worker, "POST", "/api/token", {"keyId": ADMIN_KEY, "keySecret": "wrong"})
    assert status == 401 and ADMIN_SECRET not in json.dumps(body)
    status, body = raw(worker, "GET", "/api/event", token="not.a.jwt")
    assert (status, body["error"]) == (401, "INVALID_TOKEN")

    # A token past its expiry, signed as the workers sign (the operator holds the secret).
    tokens = Tokens(AdminApi(keyId=ADMIN_KEY, keySecret=ADMIN_SECRET))
    now = int(time.time())
    expired = jwt.encode(
        {
            "iss": "herald",
            "sub": "app:herald-admin",
            "kid": ADMIN_KEY,
            "iat": now - 7200,
            "exp": now - 3600,
        },
        tokens._signing_key,  # noqa: SLF001 - the test plays the operator
        algorithm="HS256",
    )
    status, body = raw(worker, "GET", "/api/event", token=expired)
    assert (status, body["error"]) == (401, "EXPIRED_TOKEN")

    good = token_for(worker, ADMIN_KEY, ADMIN_SECRET)
    assert raw(worker, "GET", "/api/event", token=good)[0] == 200
    status, body = raw(worker, "POST", "/api/event", token=good)  # no body at all
    assert status == 400
    request = urllib.request.Request(
        f"{worker.web_url}/api/event", data=b"{not json", method="POST"
    )
    request.add_header("X-Authorization", good)
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(request, timeout=10)
    assert bad.value.code == 400
    huge = urllib.request.Request(
        f"{worker.web_url}/api/event", data=b"[" + b"1," * 400_000 + b"1]", method="POST"
    )
    huge.add_header("X-Authorization", good)
    with pytest.raises(urllib.error.HTTPError) as too_big:
        urllib.request.urlopen(huge, timeout=10)
    assert too_big.value.code == 413
    status, body = raw(
        worker,
        "POST",
        "/api/event",
        {
            "name": "x",
            "event": "kafka:local:t",
            "bogus": 1,
            "actions": [{"action": "publish", "publish": {"to": "kafka:local:y"}}],
        },
        good,
    )
    assert status == 400 and any("bogus" in e["message"] for e in body["validationErrors"])
    assert worker.running
