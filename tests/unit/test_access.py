"""Orkes' access model (streams.access) and the admin API's tokens (agents.admin.tokens)."""

from __future__ import annotations

import time

import jwt
import pytest

from agents.admin.tokens import CONFIG_ADMIN_APP, AuthError, Tokens
from streams.access import (
    AccessState,
    app_user,
    handler_integrations,
    hash_secret,
    missing_for_handler,
    secret_matches,
)
from streams.config.models import AdminApi

SETTINGS = AdminApi(keyId="admin", keySecret="a-long-enough-secret-1")


def state_with_key(status: str = "ACTIVE") -> tuple[AccessState, str]:
    salt, digest = hash_secret("key-secret")
    state = AccessState(
        applications={"a1": {"id": "a1", "name": "team", "roles": []}},
        keys={
            "k1": {
                "id": "k1",
                "applicationId": "a1",
                "status": status,
                "salt": salt,
                "hash": digest,
                "createdAt": 0,
            }
        },
        superusers=frozenset({app_user(CONFIG_ADMIN_APP)}),
    )
    return state, "k1"


def test_secrets_are_checked_against_their_salted_hash_only() -> None:
    salt, digest = hash_secret("s3cret")
    assert "s3cret" not in salt + digest
    assert secret_matches("s3cret", salt, digest)
    assert not secret_matches("s3cret!", salt, digest)
    assert hash_secret("s3cret")[1] != digest  # a new salt each time


def test_grants_come_from_the_subject_its_groups_and_roles() -> None:
    user = app_user("a1")
    state = AccessState(
        applications={"a1": {"id": "a1", "roles": []}, "a2": {"id": "a2", "roles": ["ADMIN"]}},
        groups={
            "ops": {
                "id": "ops",
                "members": [user],
                "roles": [],
                "defaultAccess": {"EVENT_HANDLER": ["READ"]},
            }
        },
        grants={
            ("INTEGRATION", "local", "GROUP", "ops"): ["EXECUTE"],
            ("EVENT_HANDLER", "h", "USER", user): ["READ", "UPDATE"],
        },
    )
    assert state.may(user, "EXECUTE", "INTEGRATION", "local")
    assert not state.may(user, "EXECUTE", "INTEGRATION", "other")
    assert state.accesses(user, "EVENT_HANDLER", "h") == {"READ", "UPDATE"}
    assert state.may(app_user("a2"), "DELETE", "EVENT_HANDLER", "anything")  # ADMIN
    assert state.owner_grants(user, "new") == [
        ("USER", user, ["CREATE", "READ", "UPDATE", "DELETE", "EXECUTE"]),
        ("GROUP", "ops", ["READ"]),
    ]
    assert state.permissions_on("INTEGRATION", "local") == {
        "EXECUTE": [{"type": "GROUP", "id": "ops"}]
    }


def test_a_handler_needs_every_integration_it_consumes_or_publishes_to() -> None:
    handler = {
        "name": "h",
        "event": "kafka:local:orders",
        "actions": [
            {"action": "publish", "publish": {"to": "kafka:cloud:copies"}},
            {"action": "webhook", "webhook": {}},
        ],
    }
    assert handler_integrations(handler, "local", ["local", "cloud", "x"]) == {"local", "cloud"}
    templated = {
        "event": "kafka:orders",
        "actions": [{"action": "publish", "publish": {"to": "kafka:${where}:copies"}}],
    }
    assert handler_integrations(templated, "local", ["local", "x"]) == {"local", "x"}
    user = app_user("a1")
    state = AccessState(grants={("INTEGRATION", "local", "USER", user): ["EXECUTE"]})
    assert missing_for_handler(state, user, handler, "CREATE", "local", []) == [
        "EXECUTE on INTEGRATION 'cloud'"
    ]
    assert missing_for_handler(state, user, handler, "UPDATE", "local", []) == [
        "UPDATE on EVENT_HANDLER 'h'",
        "EXECUTE on INTEGRATION 'cloud'",
    ]


def test_a_token_names_its_key_and_ends_with_it() -> None:
    tokens = Tokens(SETTINGS)
    state, key = state_with_key()
    token = tokens.issue(key, "key-secret", state)
    caller = tokens.verify(token, state)
    assert (caller.user, caller.key_id, caller.configured_admin) == ("app:a1", "k1", False)
    state.keys[key]["status"] = "INACTIVE"
    with pytest.raises(AuthError) as gone:
        tokens.verify(token, state)
    assert gone.value.code == "INVALID_TOKEN"
    with pytest.raises(AuthError):
        tokens.issue(key, "key-secret", state)  # an inactive key gets no token
    with pytest.raises(AuthError):
        tokens.issue(key, "wrong", state_with_key()[0])


def test_the_configured_admin_key_and_expiry() -> None:
    tokens = Tokens(SETTINGS)
    state = AccessState(superusers=frozenset({app_user(CONFIG_ADMIN_APP)}))
    caller = tokens.verify(tokens.issue("admin", "a-long-enough-secret-1", state), state)
    assert caller.configured_admin and state.is_admin(caller.user)
    with pytest.raises(AuthError):
        tokens.issue("admin", "a-long-enough-secret-2", state)
    now = int(time.time())
    expired = jwt.encode(
        {"iss": "herald", "sub": caller.user, "kid": "admin", "iat": now - 10, "exp": now - 5},
        tokens._signing_key,  # noqa: SLF001
        algorithm="HS256",
    )
    with pytest.raises(AuthError) as late:
        tokens.verify(expired, state)
    assert late.value.code == "EXPIRED_TOKEN"
    other = Tokens(AdminApi(keyId="admin", keySecret="another-long-secret-9"))
    with pytest.raises(AuthError) as forged:
        other.verify(tokens.issue("admin", "a-long-enough-secret-1", state), state)
    assert forged.value.code == "INVALID_TOKEN"


def test_a_short_admin_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        AdminApi(keyId="admin", keySecret="short")
