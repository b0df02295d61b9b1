"""The admin API on the workers' web port, in Conductor's and Orkes' paths and JSON.

- `POST /api/token`, `GET /api/token/userInfo`: Orkes' authentication (agents.admin.tokens).
- `/api/event`: Conductor's event-handler resource. A handler is checked exactly as the
  configuration checks one (`streams.config.loader.check_handler_data`: the same messages, as
  the 400's `validationErrors`), then written to the rules topic, which every worker follows.
- `/api/applications`, `/api/groups`, `/api/auth/authorization`: Orkes' access control over
  applications and their access keys, groups and their members, and grants on integrations
  and event handlers (streams.access says who may do what).

Any worker answers and all agree: the state is in Kafka (agents.admin.store). Every change
is an audit record (agents.admin.changes). Answers carry no secret: an access key's secret is
in the answer that creates it and nowhere else (stored as a salted hash only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import orjson
from faust.web import Request, Response, View

from agents.admin import openapi
from agents.admin.changes import ChangeLog, shown
from agents.admin.store import (
    AdminStore,
    access_key_key,
    app_key,
    encode,
    grant_key,
    group_key,
)
from agents.admin.tokens import CONFIG_ADMIN_APP, AuthError, Caller, Tokens
from agents.rules import handler_blob
from agents.runtime import Runtime
from streams import access, secrets
from streams.access import ACCESS, ROLES, SUBJECT_TYPES, TARGET_TYPES, AccessState, app_user
from streams.config.loader import check_handler_data
from streams.config.models import AdminApi
from streams.errors import ConfigError

log = logging.getLogger("herald.admin")


class ApiError(Exception):
    """An answer other than 2xx: Conductor's error body."""

    def __init__(self, status: int, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []

    def body(self, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "message": self.message,
            "instance": path,
            "retryable": False,
        }
        if self.errors:
            out["validationErrors"] = [{"message": line} for line in self.errors]
        return out


class Admin:
    """What the views share: settings, state, tokens, the change log."""

    def __init__(
        self, runtime: Runtime, settings: AdminApi, store: AdminStore, changes: ChangeLog
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.store = store
        self.changes = changes
        self.tokens = Tokens(settings)
        config = runtime.config
        self.home = config.home.name
        self.integrations = [i.name for i in config.integrations]

    # -- requests ------------------------------------------------------------------------

    def caller(self, request: Request) -> Caller:
        token = request.headers.get("X-Authorization")
        return self.tokens.verify(token, self.store.state())

    async def body(self, request: Request) -> Any:
        limit = self.settings.maxBodyBytes
        length = request.content_length
        if length is not None and length > limit:
            raise ApiError(413, f"the body is {length} bytes, over the limit of {limit}")
        try:
            raw = await request.read()
        except Exception:  # aiohttp refuses a body over its own client_max_size
            raise ApiError(413, f"the body is over the limit of {limit} bytes") from None
        if len(raw) > limit:
            raise ApiError(413, f"the body is over the limit of {limit} bytes")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"the body is not JSON: {exc}") from None

    def admin_only(self, caller: Caller) -> None:
        if not self.store.state().is_admin(caller.user):
            raise ApiError(403, f"{caller.user} needs the ADMIN role for this")

    # -- handlers ------------------------------------------------------------------------

    def visible_handlers(self, caller: Caller) -> list[dict[str, Any]]:
        state = self.store.state()
        return [
            h
            for h in self.store.handlers()
            if state.may(caller.user, "READ", "EVENT_HANDLER", str(h.get("name")))
        ]

    def checked_handler(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be one event handler (a JSON object)")
        try:
            (handler,) = check_handler_data(data, self.runtime.config, "request")
        except ConfigError as exc:
            raise ApiError(400, "the event handler is not valid", exc.problems) from None
        return orjson.loads(handler_blob(handler))

    def refuse_unless(self, caller: Caller, handler: dict[str, Any], how: str) -> None:
        missing = access.missing_for_handler(
            self.store.state(), caller.user, handler, how, self.home, self.integrations
        )
        if missing:
            raise ApiError(
                403,
                f"{caller.user} may not {how.lower()} this event handler: needs "
                + ", ".join(missing),
            )

    async def save_handler(
        self, caller: Caller, handler: dict[str, Any], before: dict[str, Any] | None
    ) -> None:
        name = str(handler["name"])
        records: list[tuple[bytes, bytes | None]] = [(name.encode(), encode(handler))]
        if before is None:
            state = self.store.state()
            for subject_type, subject_id, accesses in state.owner_grants(caller.user, name):
                key = grant_key("EVENT_HANDLER", name, subject_type, subject_id)
                records.append((key, encode({"access": accesses})))
        operation = "event_handler.create" if before is None else "event_handler.update"
        target = {"type": "EVENT_HANDLER", "id": name}
        await self.save(caller, operation, target, records, before, handler)

    # -- applications --------------------------------------------------------------------

    def application(self, application_id: str) -> dict[str, Any]:
        found = self.store.state().applications.get(application_id)
        if found is None:
            raise ApiError(404, f"no application {application_id!r}")
        return found

    async def save(
        self,
        caller: Caller,
        operation: str,
        target: dict[str, str],
        records: list[tuple[bytes, bytes | None]],
        before: Any,
        after: Any,
    ) -> None:
        await self.store.write(records)
        await self.changes.record(caller, operation, target, before, after)


def _application_answer(app: dict[str, Any]) -> dict[str, Any]:
    return {k: app[k] for k in ("id", "name", "createdBy", "createTime", "updateTime", "updatedBy")}


def _key_answer(key: dict[str, Any]) -> dict[str, Any]:
    return {"id": key["id"], "createdAt": key["createdAt"], "status": key["status"]}


def _group_answer(group: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": group["id"],
        "description": group.get("description", ""),
        "roles": [{"name": r, "permissions": []} for r in group.get("roles", [])],
        "defaultAccess": group.get("defaultAccess", {}),
    }


def _user_answer(state: AccessState, user: str) -> dict[str, Any]:
    app = state.applications.get(user[4:]) if user.startswith("app:") else None
    name = app["name"] if app else (CONFIG_ADMIN_APP if user in state.superusers else user)
    return {
        "id": user,
        "name": name,
        "roles": [{"name": r, "permissions": []} for r in sorted(state.roles_of(user))],
        "groups": [_group_answer(state.groups[g]) for g in state.groups_of(user)],
        "applicationUser": True,
    }


def _check_roles(roles: Any) -> list[str]:
    if not isinstance(roles, list) or not all(r in ROLES for r in roles):
        raise ApiError(400, f"roles must be a list of {', '.join(ROLES)}")
    return sorted(set(roles))


def _check_ref(value: Any, kinds: tuple[str, ...], what: str) -> tuple[str, str]:
    if (
        not isinstance(value, dict)
        or value.get("type") not in kinds
        or not isinstance(value.get("id"), str)
        or not value["id"]
    ):
        raise ApiError(400, f"{what} must be {{type: {'|'.join(kinds)}, id: <text>}}")
    return value["type"], value["id"]


def _check_access(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(a in ACCESS for a in value):
        raise ApiError(400, f"access must be a non-empty list of {', '.join(ACCESS)}")
    return sorted(set(value), key=ACCESS.index)


Handler = Callable[..., Awaitable[Any]]


def register_admin_api(app: faust.App, runtime: Runtime, settings: AdminApi) -> Admin:
    """Serve the admin API (only when `herald.admin` is configured)."""
    topics = runtime.topics

    async def send_rule(key: bytes, value: bytes | None) -> None:
        fut = await topics.rules.send(key=key, value=value, partition=0, force=True)
        await fut

    async def send_audit(key: bytes, value: bytes) -> None:
        fut = await topics.audit.send(key=key, value=value, force=True)
        await fut

    superusers = frozenset({app_user(CONFIG_ADMIN_APP)})
    store = AdminStore(runtime.tables.rules, send_rule, superusers)
    admin = Admin(runtime, settings, store, ChangeLog(send_audit))
    secrets.SCRUBBER.register(settings.keySecret.get_secret_value())

    def answer(view: View, fn: Handler, authenticated: bool = True) -> Handler:
        async def run(request: Request, **kwargs: Any) -> Response:
            try:
                if not runtime.rules.ready.is_set():
                    raise ApiError(503, "the worker is starting: its handlers are not loaded")
                if authenticated:
                    kwargs["caller"] = admin.caller(request)
                result = await fn(request, **kwargs)
            except AuthError as exc:
                return view.json({"error": exc.code, "message": exc.message}, status=401)
            except ApiError as exc:
                return view.json(exc.body(request.path), status=exc.status)
            except TimeoutError as exc:
                return view.json(ApiError(503, str(exc)).body(request.path), status=503)
            except Exception:  # a bug: logged (scrubbed), answered without details
                log.exception("admin API %s %s failed", request.method, request.path)
                error = ApiError(500, "internal error; the worker's log has the details")
                return view.json(error.body(request.path), status=500)
            if result is None:
                return view.bytes(b"", status=200)
            return view.json(result)

        return run

    @app.page("/api/openapi.json")
    class OpenApi(View):
        async def get(self, request: Request) -> Response:
            return self.json(openapi.document())

    # -- authentication ------------------------------------------------------------------

    @app.page("/api/token")
    class Token(View):
        async def post(self, request: Request) -> Response:
            async def issue(request: Request) -> dict[str, Any]:
                body = await admin.body(request)
                if not isinstance(body, dict) or not all(
                    isinstance(body.get(k), str) for k in ("keyId", "keySecret")
                ):
                    raise ApiError(400, "send {keyId, keySecret}")
                token = admin.tokens.issue(body["keyId"], body["keySecret"], store.state())
                return {"token": token}

            return await answer(self, issue, authenticated=False)(request)

    @app.page("/api/token/userInfo")
    class UserInfo(View):
        async def get(self, request: Request) -> Response:
            async def info(request: Request, caller: Caller) -> dict[str, Any]:
                return _user_answer(store.state(), caller.user)

            return await answer(self, info)(request)

    # -- event handlers (Conductor) ------------------------------------------------------

    @app.page("/api/event")
    class Events(View):
        async def get(self, request: Request) -> Response:
            async def listing(request: Request, caller: Caller) -> list[dict[str, Any]]:
                return [shown(h) for h in admin.visible_handlers(caller)]

            return await answer(self, listing)(request)

        async def post(self, request: Request) -> Response:
            async def create(request: Request, caller: Caller) -> None:
                handler = admin.checked_handler(await admin.body(request))
                if store.handler(handler["name"]) is not None:
                    raise ApiError(409, f"event handler {handler['name']!r} already exists")
                admin.refuse_unless(caller, handler, "CREATE")
                await admin.save_handler(caller, handler, None)

            return await answer(self, create)(request)

        async def put(self, request: Request) -> Response:
            async def update(request: Request, caller: Caller) -> None:
                handler = admin.checked_handler(await admin.body(request))
                before = store.handler(handler["name"])
                if before is None:
                    raise ApiError(404, f"no event handler {handler['name']!r}")
                admin.refuse_unless(caller, handler, "UPDATE")
                await admin.save_handler(caller, handler, before)

            return await answer(self, update)(request)

    @app.page("/api/event/{name}")
    class Event(View):
        async def get(self, request: Request, name: str) -> Response:
            """Conductor's `GET /api/event/{event}`: the handlers of an event."""

            async def for_event(request: Request, caller: Caller) -> list[dict[str, Any]]:
                active_only = request.query.get("activeOnly", "true").lower() != "false"
                return [
                    shown(h)
                    for h in admin.visible_handlers(caller)
                    if h.get("event") == name and (h.get("active") or not active_only)
                ]

            return await answer(self, for_event)(request)

        async def delete(self, request: Request, name: str) -> Response:
            async def remove(request: Request, caller: Caller) -> None:
                before = store.handler(name)
                if before is None:
                    raise ApiError(404, f"no event handler {name!r}")
                if not store.state().may(caller.user, "DELETE", "EVENT_HANDLER", name):
                    raise ApiError(403, f"{caller.user} needs DELETE on EVENT_HANDLER {name!r}")
                state = store.state()
                records: list[tuple[bytes, bytes | None]] = [(name.encode(), None)]
                records += [
                    (grant_key(*key), None)
                    for key in state.grants
                    if key[0] == "EVENT_HANDLER" and key[1] == name
                ]
                target = {"type": "EVENT_HANDLER", "id": name}
                await admin.save(caller, "event_handler.delete", target, records, before, None)

            return await answer(self, remove)(request)

    # -- dry run of handlers (agents.admin.dryrun) ---------------------------------------

    @app.page("/api/herald/try")
    class TryHandlers(View):
        async def post(self, request: Request) -> Response:
            async def dry_run(request: Request, caller: Caller) -> dict[str, Any]:
                from agents.admin import dryrun  # it imports this module's Admin and ApiError

                return await dryrun.answer(admin, caller, await admin.body(request))

            return await answer(self, dry_run)(request)

    # -- applications and access keys (Orkes) --------------------------------------------

    @app.page("/api/applications")
    class Applications(View):
        async def get(self, request: Request) -> Response:
            async def listing(request: Request, caller: Caller) -> list[dict[str, Any]]:
                admin.admin_only(caller)
                apps = store.state().applications.values()
                return [_application_answer(a) for a in sorted(apps, key=lambda a: a["name"])]

            return await answer(self, listing)(request)

        async def post(self, request: Request) -> Response:
            async def create(request: Request, caller: Caller) -> dict[str, Any]:
                admin.admin_only(caller)
                body = await admin.body(request)
                name = body.get("name") if isinstance(body, dict) else None
                if not isinstance(name, str) or not name.strip():
                    raise ApiError(400, "send {name}")
                now = int(time.time() * 1000)
                created = {
                    "id": access.new_id(),
                    "name": name.strip(),
                    "createdBy": caller.user,
                    "createTime": now,
                    "updateTime": now,
                    "updatedBy": caller.user,
                    "roles": [],
                }
                target = {"type": "APPLICATION", "id": created["id"]}
                records: list[tuple[bytes, bytes | None]] = [
                    (app_key(created["id"]), encode(created))
                ]
                await admin.save(caller, "application.create", target, records, None, created)
                return _application_answer(created)

            return await answer(self, create)(request)

    @app.page("/api/applications/{application_id}")
    class Application(View):
        async def get(self, request: Request, application_id: str) -> Response:
            async def one(request: Request, caller: Caller) -> dict[str, Any]:
                admin.admin_only(caller)
                return _application_answer(admin.application(application_id))

            return await answer(self, one)(request)

        async def put(self, request: Request, application_id: str) -> Response:
            async def update(request: Request, caller: Caller) -> dict[str, Any]:
                admin.admin_only(caller)
                before = admin.application(application_id)
                body = await admin.body(request)
                name = body.get("name") if isinstance(body, dict) else None
                if not isinstance(name, str) or not name.strip():
                    raise ApiError(400, "send {name}")
                after = {
                    **before,
                    "name": name.strip(),
                    "updateTime": int(time.time() * 1000),
                    "updatedBy": caller.user,
                }
                target = {"type": "APPLICATION", "id": application_id}
                records: list[tuple[bytes, bytes | None]] = [
                    (app_key(application_id), encode(after))
                ]
                await admin.save(caller, "application.update", target, records, before, after)
                return _application_answer(after)

            return await answer(self, update)(request)

        async def delete(self, request: Request, application_id: str) -> Response:
            async def remove(request: Request, caller: Caller) -> None:
                admin.admin_only(caller)
                before = admin.application(application_id)
                state = store.state()
                user = app_user(application_id)
                records: list[tuple[bytes, bytes | None]] = [(app_key(application_id), None)]
                records += [
                    (access_key_key(k), None)
                    for k, key in state.keys.items()
                    if key["applicationId"] == application_id
                ]
                records += [(grant_key(*g), None) for g in state.grants if g[3] == user]
                for group_id, group in state.groups.items():
                    if user in group.get("members", ()):
                        members = [m for m in group["members"] if m != user]
                        records.append((group_key(group_id), encode({**group, "members": members})))
                target = {"type": "APPLICATION", "id": application_id}
                await admin.save(caller, "application.delete", target, records, before, None)

            return await answer(self, remove)(request)

    @app.page("/api/applications/{application_id}/roles/{role}")
    class ApplicationRole(View):
        async def post(self, request: Request, application_id: str, role: str) -> Response:
            return await answer(self, _role_change(admin, application_id, role, True))(request)

        async def delete(self, request: Request, application_id: str, role: str) -> Response:
            return await answer(self, _role_change(admin, application_id, role, False))(request)

    @app.page("/api/applications/{application_id}/accessKeys")
    class AccessKeys(View):
        async def get(self, request: Request, application_id: str) -> Response:
            async def listing(request: Request, caller: Caller) -> list[dict[str, Any]]:
                admin.admin_only(caller)
                admin.application(application_id)
                keys = store.state().keys.values()
                return [_key_answer(k) for k in keys if k["applicationId"] == application_id]

            return await answer(self, listing)(request)

        async def post(self, request: Request, application_id: str) -> Response:
            async def create(request: Request, caller: Caller) -> dict[str, Any]:
                admin.admin_only(caller)
                admin.application(application_id)
                secret = access.new_secret()
                salt, digest = access.hash_secret(secret)
                key = {
                    "id": access.new_id(),
                    "applicationId": application_id,
                    "createdAt": int(time.time() * 1000),
                    "status": "ACTIVE",
                    "salt": salt,
                    "hash": digest,
                }
                secrets.SCRUBBER.register(secret)  # never in this worker's logs
                target = {"type": "ACCESS_KEY", "id": key["id"]}
                records: list[tuple[bytes, bytes | None]] = [
                    (access_key_key(key["id"]), encode(key))
                ]
                await admin.save(caller, "access_key.create", target, records, None, key)
                return {"id": key["id"], "secret": secret}  # the only time it is shown

            return await answer(self, create)(request)

    @app.page("/api/applications/{application_id}/accessKeys/{key_id}")
    class AccessKey(View):
        async def delete(self, request: Request, application_id: str, key_id: str) -> Response:
            async def remove(request: Request, caller: Caller) -> None:
                before = _own_key(admin, caller, application_id, key_id)
                target = {"type": "ACCESS_KEY", "id": key_id}
                records: list[tuple[bytes, bytes | None]] = [(access_key_key(key_id), None)]
                await admin.save(caller, "access_key.delete", target, records, before, None)

            return await answer(self, remove)(request)

    @app.page("/api/applications/{application_id}/accessKeys/{key_id}/status")
    class AccessKeyStatus(View):
        async def post(self, request: Request, application_id: str, key_id: str) -> Response:
            async def toggle(request: Request, caller: Caller) -> dict[str, Any]:
                before = _own_key(admin, caller, application_id, key_id)
                status = "INACTIVE" if before["status"] == "ACTIVE" else "ACTIVE"
                after = {**before, "status": status}
                target = {"type": "ACCESS_KEY", "id": key_id}
                records: list[tuple[bytes, bytes | None]] = [
                    (access_key_key(key_id), encode(after))
                ]
                await admin.save(caller, "access_key.status", target, records, before, after)
                return _key_answer(after)

            return await answer(self, toggle)(request)

    @app.page("/api/applications/key/{key_id}")
    class ApplicationOfKey(View):
        async def get(self, request: Request, key_id: str) -> Response:
            async def one(request: Request, caller: Caller) -> dict[str, Any]:
                admin.admin_only(caller)
                key = store.state().keys.get(key_id)
                if key is None:
                    raise ApiError(404, f"no access key {key_id!r}")
                return _application_answer(admin.application(key["applicationId"]))

            return await answer(self, one)(request)

    # -- groups (Orkes) ------------------------------------------------------------------

    @app.page("/api/groups")
    class Groups(View):
        async def get(self, request: Request) -> Response:
            async def listing(request: Request, caller: Caller) -> list[dict[str, Any]]:
                admin.admin_only(caller)
                groups = store.state().groups
                return [_group_answer(groups[g]) for g in sorted(groups)]

            return await answer(self, listing)(request)

    @app.page("/api/groups/{group_id}")
    class GroupView(View):
        async def get(self, request: Request, group_id: str) -> Response:
            async def one(request: Request, caller: Caller) -> dict[str, Any]:
                admin.admin_only(caller)
                return _group_answer(_group(admin, group_id))

            return await answer(self, one)(request)

        async def put(self, request: Request, group_id: str) -> Response:
            async def upsert(request: Request, caller: Caller) -> dict[str, Any]:
                admin.admin_only(caller)
                body = await admin.body(request)
                if not isinstance(body, dict):
                    raise ApiError(400, "send {description, roles, defaultAccess}")
                default = body.get("defaultAccess") or {}
                if not isinstance(default, dict) or not all(
                    t in TARGET_TYPES and isinstance(v, list) and all(a in ACCESS for a in v)
                    for t, v in default.items()
                ):
                    raise ApiError(
                        400,
                        "defaultAccess maps a target type "
                        f"({', '.join(TARGET_TYPES)}) to accesses ({', '.join(ACCESS)})",
                    )
                before = store.state().groups.get(group_id)
                after = {
                    "id": group_id,
                    "description": str(body.get("description") or ""),
                    "roles": _check_roles(body.get("roles") or []),
                    "defaultAccess": default,
                    "members": list((before or {}).get("members", [])),
                }
                target = {"type": "GROUP", "id": group_id}
                records: list[tuple[bytes, bytes | None]] = [(group_key(group_id), encode(after))]
                await admin.save(caller, "group.upsert", target, records, before, after)
                return _group_answer(after)

            return await answer(self, upsert)(request)

        async def delete(self, request: Request, group_id: str) -> Response:
            async def remove(request: Request, caller: Caller) -> None:
                admin.admin_only(caller)
                before = _group(admin, group_id)
                state = store.state()
                records: list[tuple[bytes, bytes | None]] = [(group_key(group_id), None)]
                records += [
                    (grant_key(*g), None)
                    for g in state.grants
                    if g[2] == "GROUP" and g[3] == group_id
                ]
                target = {"type": "GROUP", "id": group_id}
                await admin.save(caller, "group.delete", target, records, before, None)

            return await answer(self, remove)(request)

    @app.page("/api/groups/{group_id}/users")
    class GroupUsers(View):
        async def get(self, request: Request, group_id: str) -> Response:
            async def listing(request: Request, caller: Caller) -> list[dict[str, Any]]:
                admin.admin_only(caller)
                state = store.state()
                members = _group(admin, group_id).get("members", [])
                return [_user_answer(state, m) for m in members]

            return await answer(self, listing)(request)

        async def post(self, request: Request, group_id: str) -> Response:
            async def add(request: Request, caller: Caller) -> None:
                users = await admin.body(request)
                await _members(admin, caller, group_id, _user_ids(users), True)

            return await answer(self, add)(request)

        async def delete(self, request: Request, group_id: str) -> Response:
            async def remove(request: Request, caller: Caller) -> None:
                users = await admin.body(request)
                await _members(admin, caller, group_id, _user_ids(users), False)

            return await answer(self, remove)(request)

    @app.page("/api/groups/{group_id}/users/{user_id}")
    class GroupUser(View):
        async def post(self, request: Request, group_id: str, user_id: str) -> Response:
            async def add(request: Request, caller: Caller) -> None:
                await _members(admin, caller, group_id, [user_id], True)

            return await answer(self, add)(request)

        async def delete(self, request: Request, group_id: str, user_id: str) -> Response:
            async def remove(request: Request, caller: Caller) -> None:
                await _members(admin, caller, group_id, [user_id], False)

            return await answer(self, remove)(request)

    @app.page("/api/groups/{group_id}/permissions")
    class GroupPermissions(View):
        async def get(self, request: Request, group_id: str) -> Response:
            async def listing(request: Request, caller: Caller) -> dict[str, Any]:
                admin.admin_only(caller)
                _group(admin, group_id)
                return {"grantedAccess": store.state().granted_to("GROUP", group_id)}

            return await answer(self, listing)(request)

    @app.page("/api/users/{user_id}/permissions")
    class UserPermissions(View):
        async def get(self, request: Request, user_id: str) -> Response:
            async def listing(request: Request, caller: Caller) -> dict[str, Any]:
                if caller.user != user_id:
                    admin.admin_only(caller)
                return {"grantedAccess": store.state().granted_to("USER", user_id)}

            return await answer(self, listing)(request)

    # -- grants (Orkes) ------------------------------------------------------------------

    @app.page("/api/auth/authorization")
    class Authorization(View):
        async def post(self, request: Request) -> Response:
            return await answer(self, _grant(admin, True))(request)

        async def delete(self, request: Request) -> Response:
            return await answer(self, _grant(admin, False))(request)

    @app.page("/api/auth/authorization/{target_type}/{target_id}")
    class Permissions(View):
        async def get(self, request: Request, target_type: str, target_id: str) -> Response:
            async def listing(request: Request, caller: Caller) -> dict[str, Any]:
                admin.admin_only(caller)
                if target_type not in TARGET_TYPES:
                    raise ApiError(400, f"target type must be one of {', '.join(TARGET_TYPES)}")
                return store.state().permissions_on(target_type, target_id)

            return await answer(self, listing)(request)

    # -- the execution history (agents.admin.history_api) --------------------------------

    if runtime.history is not None:
        from agents.admin.history_api import register_history_api

        register_history_api(app, admin, runtime.history, answer, ApiError)

    # -- the status page and its summary (agents.web, agents.admin.status_api) -----------

    from agents.admin.status_api import register_status_api
    from agents.web.page import register_status_page

    register_status_api(app, admin, answer)
    register_status_page(app)

    return admin


def _group(admin: Admin, group_id: str) -> dict[str, Any]:
    group = admin.store.state().groups.get(group_id)
    if group is None:
        raise ApiError(404, f"no group {group_id!r}")
    return group


def _own_key(admin: Admin, caller: Caller, application_id: str, key_id: str) -> dict[str, Any]:
    admin.admin_only(caller)
    key = admin.store.state().keys.get(key_id)
    if key is None or key["applicationId"] != application_id:
        raise ApiError(404, f"application {application_id!r} has no access key {key_id!r}")
    return key


def _user_ids(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(u, str) and u for u in value):
        raise ApiError(400, "send a list of user ids (app:<application id>)")
    return value


async def _members(
    admin: Admin, caller: Caller, group_id: str, users: list[str], add: bool
) -> None:
    admin.admin_only(caller)
    before = _group(admin, group_id)
    state = admin.store.state()
    for user in users:
        if add and not (user.startswith("app:") and user[4:] in state.applications):
            raise ApiError(404, f"no user {user!r} (an application's user is app:<id>)")
    members = list(before.get("members", []))
    if add:
        members += [u for u in users if u not in members]
    else:
        members = [m for m in members if m not in users]
    after = {**before, "members": members}
    target = {"type": "GROUP", "id": group_id}
    records: list[tuple[bytes, bytes | None]] = [(group_key(group_id), encode(after))]
    operation = "group.members.add" if add else "group.members.remove"
    await admin.save(caller, operation, target, records, before, after)


def _role_change(admin: Admin, application_id: str, role: str, add: bool) -> Handler:
    async def change(request: Request, caller: Caller) -> None:
        admin.admin_only(caller)
        before = admin.application(application_id)
        if role not in ROLES:
            raise ApiError(400, f"role must be one of {', '.join(ROLES)}")
        roles = set(before.get("roles", []))
        roles = roles | {role} if add else roles - {role}
        after = {**before, "roles": sorted(roles), "updateTime": int(time.time() * 1000)}
        target = {"type": "APPLICATION", "id": application_id}
        records: list[tuple[bytes, bytes | None]] = [(app_key(application_id), encode(after))]
        operation = "application.role.add" if add else "application.role.remove"
        await admin.save(caller, operation, target, records, before, after)

    return change


def _grant(admin: Admin, add: bool) -> Handler:
    async def change(request: Request, caller: Caller) -> None:
        admin.admin_only(caller)
        body = await admin.body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "send {subject, target, access}")
        subject = _check_ref(body.get("subject"), SUBJECT_TYPES, "subject")
        target = _check_ref(body.get("target"), TARGET_TYPES, "target")
        accesses = _check_access(body.get("access"))
        key = (*target, *subject)
        state = admin.store.state()
        before = sorted(state.grants.get(key, []))
        if add:
            after = sorted(set(before) | set(accesses), key=ACCESS.index)
        else:
            after = [a for a in before if a not in accesses]
        value = encode({"access": after}) if after else None
        ref = {"type": target[0], "id": target[1]}
        operation = "grant.add" if add else "grant.remove"
        subject_ref = {"type": subject[0], "id": subject[1]}
        await admin.save(
            caller,
            operation,
            ref,
            [(grant_key(*key), value)],
            {"subject": subject_ref, "access": before},
            {"subject": subject_ref, "access": after},
        )

    return change
