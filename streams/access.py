"""Who may do what through the admin API: Orkes' access-control model, as plain data.

Orkes Conductor grants access to *subjects* on *targets*:

- a subject is an application's user (`USER` `app:<application id>`, the identity its access
  keys authenticate as) or a `GROUP` of such users;
- a target is an `INTEGRATION` (a Kafka integration, by name) or an `EVENT_HANDLER` (by name);
- an access is `CREATE`, `READ`, `UPDATE`, `DELETE` or `EXECUTE`.

Roles are on applications and groups: `ADMIN` may do everything (and is the only role that
manages applications, keys, groups and grants); `METADATA_MANAGER` has every access to every
event handler (its integrations still need `EXECUTE`). A subject's effective access is its own
grants, its groups' grants and its roles and its groups' roles.

What a handler change needs (`needed_for_handler`): `UPDATE` (or `CREATE` for a new one) on the
handler, `DELETE` to remove it, `READ` to see it; and `EXECUTE` on every integration the handler
consumes from or publishes to. The creator of a handler is granted every access to it, and so
is each of its groups whose `defaultAccess` names `EVENT_HANDLER`.

Everything here is pure: the state comes from the admin records every worker reads
(agents/admin), and the functions answer from it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ACCESS = ("CREATE", "READ", "UPDATE", "DELETE", "EXECUTE")
TARGET_TYPES = ("INTEGRATION", "EVENT_HANDLER")
SUBJECT_TYPES = ("USER", "GROUP")
ROLES = ("ADMIN", "USER", "WORKER", "METADATA_MANAGER", "WORKFLOW_MANAGER")
ADMIN = "ADMIN"
METADATA_MANAGER = "METADATA_MANAGER"

#: scrypt parameters for access-key secrets: ~20 ms per check here, 16 MiB of memory.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


def app_user(application_id: str) -> str:
    """The user id an application's keys authenticate as (Orkes: `app:<id>`)."""
    return f"app:{application_id}"


def new_secret() -> str:
    """An access key's secret, shown once at creation."""
    return secrets.token_urlsafe(32)


def new_id() -> str:
    return secrets.token_hex(8)


def hash_secret(secret: str, salt: bytes | None = None) -> tuple[str, str]:
    """(salt hex, scrypt hash hex) of a secret: only these are stored."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)
    return salt.hex(), digest.hex()


def secret_matches(secret: str, salt_hex: str, hash_hex: str) -> bool:
    _, digest = hash_secret(secret, bytes.fromhex(salt_hex))
    return hmac.compare_digest(digest, hash_hex)


@dataclass
class AccessState:
    """Applications, keys, groups and grants, as the admin records have them."""

    applications: dict[str, dict[str, Any]] = field(default_factory=dict)  # id → application
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # key id → access key
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # id → group
    # (target type, target id, subject type, subject id) → accesses
    grants: dict[tuple[str, str, str, str], list[str]] = field(default_factory=dict)
    #: Users with the ADMIN role that no record holds (the configuration's admin key).
    superusers: frozenset[str] = frozenset()

    def groups_of(self, user: str) -> list[str]:
        return sorted(g for g, group in self.groups.items() if user in group.get("members", ()))

    def roles_of(self, user: str) -> set[str]:
        roles: set[str] = {ADMIN} if user in self.superusers else set()
        if user.startswith("app:"):
            application = self.applications.get(user[4:])
            if application is not None:
                roles.update(application.get("roles", ()))
        for group in self.groups_of(user):
            roles.update(self.groups[group].get("roles", ()))
        return roles

    def subjects_of(self, user: str) -> list[tuple[str, str]]:
        return [("USER", user), *(("GROUP", g) for g in self.groups_of(user))]

    def accesses(self, user: str, target_type: str, target_id: str) -> set[str]:
        """Every access `user` has on the target, through grants and roles."""
        roles = self.roles_of(user)
        if ADMIN in roles or (target_type == "EVENT_HANDLER" and METADATA_MANAGER in roles):
            return set(ACCESS)
        found: set[str] = set()
        for subject_type, subject_id in self.subjects_of(user):
            found.update(self.grants.get((target_type, target_id, subject_type, subject_id), ()))
        return found

    def may(self, user: str, access: str, target_type: str, target_id: str) -> bool:
        return access in self.accesses(user, target_type, target_id)

    def is_admin(self, user: str) -> bool:
        return ADMIN in self.roles_of(user)

    def permissions_on(self, target_type: str, target_id: str) -> dict[str, list[dict[str, str]]]:
        """Orkes' `GET /auth/authorization/{type}/{id}`: access → subjects holding it."""
        out: dict[str, list[dict[str, str]]] = {}
        for (t_type, t_id, s_type, s_id), granted in sorted(self.grants.items()):
            if (t_type, t_id) == (target_type, target_id):
                for access in granted:
                    out.setdefault(access, []).append({"type": s_type, "id": s_id})
        return out

    def granted_to(self, subject_type: str, subject_id: str) -> list[dict[str, Any]]:
        """Orkes' GrantedPermission list of a subject: target and accesses."""
        return [
            {"target": {"type": t_type, "id": t_id}, "access": sorted(granted)}
            for (t_type, t_id, s_type, s_id), granted in sorted(self.grants.items())
            if (s_type, s_id) == (subject_type, subject_id)
        ]

    def owner_grants(self, user: str, handler: str) -> list[tuple[str, str, list[str]]]:
        """What creating `handler` grants: every access to its creator, and to each group of
        the creator its `defaultAccess` for EVENT_HANDLER. (subject type, id, accesses)."""
        out = [("USER", user, list(ACCESS))]
        for group in self.groups_of(user):
            default = self.groups[group].get("defaultAccess") or {}
            accesses = [a for a in default.get("EVENT_HANDLER", ()) if a in ACCESS]
            if accesses:
                out.append(("GROUP", group, accesses))
        return out


def handler_integrations(
    handler: dict[str, Any], home: str, all_integrations: Iterable[str]
) -> set[str]:
    """The integrations a handler consumes from (its event) or publishes to (each publish's
    `to`); a templated destination could be any integration, so it counts as all of them."""
    used: set[str] = set()
    event = str(handler.get("event") or "")
    parts = event.split(":")
    if len(parts) == 3:
        used.add(parts[1])
    elif len(parts) == 2:
        used.add(home)
    for action in handler.get("actions") or ():
        if not isinstance(action, dict) or action.get("action") != "publish":
            continue
        to = str((action.get("publish") or {}).get("to") or "")
        bits = to.split(":")
        if len(bits) == 3 and "${" not in bits[1]:
            used.add(bits[1])
        elif len(bits) == 2 and "${" not in to:
            used.add(home)
        else:
            used.update(all_integrations)
    return used


def missing_for_handler(
    state: AccessState,
    user: str,
    handler: dict[str, Any],
    access: str,
    home: str,
    all_integrations: Iterable[str],
) -> list[str]:
    """What `user` lacks to `access` (CREATE, UPDATE) `handler`: one line per missing grant,
    empty when allowed."""
    name = str(handler.get("name") or "")
    missing: list[str] = []
    if access != "CREATE" and not state.may(user, access, "EVENT_HANDLER", name):
        missing.append(f"{access} on EVENT_HANDLER {name!r}")
    for integration in sorted(handler_integrations(handler, home, all_integrations)):
        if not state.may(user, "EXECUTE", "INTEGRATION", integration):
            missing.append(f"EXECUTE on INTEGRATION {integration!r}")
    return missing
