"""The admin API's OpenAPI 3.0 document, served at `GET /api/openapi.json`.

Written by hand next to the views (agents.admin.api) and checked against them by schemathesis
(tests/integration/test_admin_openapi.py): every answer must match it, so a change to a view
that is not made here fails the suite.
"""

from __future__ import annotations

from typing import Any

from agents.counters import HANDLER_COUNTS
from streams.access import ACCESS, ROLES, SUBJECT_TYPES, TARGET_TYPES

_ERROR = {"$ref": "#/components/schemas/Error"}
_JSON = "application/json"


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


def _errors(*codes: int) -> dict[str, Any]:
    texts = {
        400: "Not valid (the body, a field, a handler: see validationErrors)",
        401: "No token, an invalid or expired one",
        403: "The caller lacks a grant or role",
        404: "No such resource",
        409: "Already exists",
        413: "The body is over herald.admin.maxBodyBytes",
        503: "The worker is starting, or a change is not visible yet",
    }
    out: dict[str, Any] = {}
    for code in (401, 503, *codes):
        schema = _ref("AuthError") if code == 401 else _ERROR
        out[str(code)] = _json(schema, texts[code])
    return out


def _empty(description: str = "Done") -> dict[str, Any]:
    return {"description": description}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {_JSON: {"schema": schema}}}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _op(
    summary: str,
    ok: dict[str, Any],
    *codes: int,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": ok, **_errors(*codes)}}
    if body is not None:
        op["requestBody"] = _body(body)
        op["responses"].update(_errors(400, 413, *codes))
    if params:
        op["parameters"] = params
    return op


def document() -> dict[str, Any]:
    app_id, key_id, group_id = _path("application_id"), _path("key_id"), _path("group_id")
    role = {"name": "role", "in": "path", "required": True, "schema": {"enum": list(ROLES)}}
    target = [
        {"name": "target_type", "in": "path", "required": True, "schema": {"type": "string"}},
        _path("target_id"),
    ]
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["status", "message"],
            "properties": {
                "status": {"type": "integer"},
                "message": {"type": "string"},
                "instance": {"type": "string"},
                "retryable": {"type": "boolean"},
                "validationErrors": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"message": {"type": "string"}}},
                },
            },
        },
        "AuthError": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string"},
                "message": {"type": "string"},
            },
        },
        "TokenRequest": {
            "type": "object",
            "required": ["keyId", "keySecret"],
            "properties": {"keyId": {"type": "string"}, "keySecret": {"type": "string"}},
        },
        "Token": {
            "type": "object",
            "required": ["token"],
            "properties": {"token": {"type": "string"}},
        },
        "EventHandler": {
            "type": "object",
            "description": "Conductor's EventHandler; Herald checks it as its configuration",
            "required": ["name", "event", "actions"],
            "properties": {
                "name": {"type": "string"},
                "event": {"type": "string"},
                "condition": {"type": "string"},
                "evaluatorType": {"type": "string"},
                "active": {"type": "boolean"},
                "actions": {"type": "array", "items": {"type": "object"}},
                "description": {"type": "string"},
                "tags": {"type": "array"},
            },
        },
        "Role": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "permissions": {"type": "array"}},
        },
        "Application": {
            "type": "object",
            "required": ["id", "name"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "createdBy": {"type": "string"},
                "createTime": {"type": "integer"},
                "updateTime": {"type": "integer"},
                "updatedBy": {"type": "string"},
            },
        },
        "ApplicationRequest": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}},
        },
        "AccessKey": {
            "type": "object",
            "required": ["id", "createdAt", "status"],
            "properties": {
                "id": {"type": "string"},
                "createdAt": {"type": "integer"},
                "status": {"enum": ["ACTIVE", "INACTIVE"]},
            },
        },
        "CreatedAccessKey": {
            "type": "object",
            "required": ["id", "secret"],
            "properties": {"id": {"type": "string"}, "secret": {"type": "string"}},
        },
        "Group": {
            "type": "object",
            "required": ["id"],
            "properties": {
                "id": {"type": "string"},
                "description": {"type": "string"},
                "roles": _array("Role"),
                "defaultAccess": {"type": "object"},
            },
        },
        "UpsertGroupRequest": {
            "type": "object",
            "properties": {
                "description": {"type": "string"},
                "roles": {"type": "array", "items": {"enum": list(ROLES)}},
                "defaultAccess": {
                    "type": "object",
                    "properties": {
                        t: {"type": "array", "items": {"enum": list(ACCESS)}} for t in TARGET_TYPES
                    },
                    "additionalProperties": False,
                },
            },
        },
        "User": {
            "type": "object",
            "required": ["id"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "roles": _array("Role"),
                "groups": _array("Group"),
                "applicationUser": {"type": "boolean"},
            },
        },
        "Ref": {
            "type": "object",
            "required": ["type", "id"],
            "properties": {"type": {"type": "string"}, "id": {"type": "string"}},
        },
        "AuthorizationRequest": {
            "type": "object",
            "required": ["subject", "target", "access"],
            "properties": {
                "subject": {
                    "type": "object",
                    "required": ["type", "id"],
                    "properties": {
                        "type": {"enum": list(SUBJECT_TYPES)},
                        "id": {"type": "string", "minLength": 1},
                    },
                },
                "target": {
                    "type": "object",
                    "required": ["type", "id"],
                    "properties": {
                        "type": {"enum": list(TARGET_TYPES)},
                        "id": {"type": "string", "minLength": 1},
                    },
                },
                "access": {"type": "array", "minItems": 1, "items": {"enum": list(ACCESS)}},
            },
        },
        "Permissions": {
            "type": "object",
            "description": "access → the subjects holding it",
            "additionalProperties": _array("Ref"),
        },
        "GrantedAccess": {
            "type": "object",
            "required": ["grantedAccess"],
            "properties": {
                "grantedAccess": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"target": _ref("Ref"), "access": {"type": "array"}},
                    },
                }
            },
        },
    }
    users = {"type": "array", "items": {"type": "string"}}
    paths: dict[str, Any] = {
        "/api/token": {
            "post": {
                "summary": "A token for an access key",
                "security": [],
                "requestBody": _body(_ref("TokenRequest")),
                "responses": {
                    "200": _json(_ref("Token")),
                    **_errors(400, 413),
                },
            }
        },
        "/api/token/userInfo": {"get": _op("The caller", _json(_ref("User")))},
        "/api/event": {
            "get": _op("Event handlers the caller may read", _json(_array("EventHandler"))),
            "post": _op("Create an event handler", _empty(), 403, 409, body=_ref("EventHandler")),
            "put": _op("Change an event handler", _empty(), 403, 404, body=_ref("EventHandler")),
        },
        "/api/event/{name}": {
            "parameters": [_path("name")],
            "get": _op(
                "The handlers of an event (the path is the event)",
                _json(_array("EventHandler")),
                params=[{"name": "activeOnly", "in": "query", "schema": {"type": "boolean"}}],
            ),
            "delete": _op("Delete an event handler", _empty(), 403, 404),
        },
        "/api/applications": {
            "get": _op("Applications", _json(_array("Application")), 403),
            "post": _op(
                "Create an application",
                _json(_ref("Application")),
                403,
                body=_ref("ApplicationRequest"),
            ),
        },
        "/api/applications/{application_id}": {
            "parameters": [app_id],
            "get": _op("An application", _json(_ref("Application")), 403, 404),
            "put": _op(
                "Rename an application",
                _json(_ref("Application")),
                403,
                404,
                body=_ref("ApplicationRequest"),
            ),
            "delete": _op("Delete an application and its keys", _empty(), 403, 404),
        },
        "/api/applications/{application_id}/roles/{role}": {
            "parameters": [app_id, role],
            "post": _op("Give an application a role", _empty(), 400, 403, 404),
            "delete": _op("Take a role from an application", _empty(), 400, 403, 404),
        },
        "/api/applications/{application_id}/accessKeys": {
            "parameters": [app_id],
            "get": _op("An application's access keys", _json(_array("AccessKey")), 403, 404),
            "post": _op(
                "Create an access key (its secret is in this answer only)",
                _json(_ref("CreatedAccessKey")),
                403,
                404,
            ),
        },
        "/api/applications/{application_id}/accessKeys/{key_id}": {
            "parameters": [app_id, key_id],
            "delete": _op("Delete an access key", _empty(), 403, 404),
        },
        "/api/applications/{application_id}/accessKeys/{key_id}/status": {
            "parameters": [app_id, key_id],
            "post": _op("Toggle an access key", _json(_ref("AccessKey")), 403, 404),
        },
        "/api/applications/key/{key_id}": {
            "parameters": [key_id],
            "get": _op("The application of an access key", _json(_ref("Application")), 403, 404),
        },
        "/api/groups": {"get": _op("Groups", _json(_array("Group")), 403)},
        "/api/groups/{group_id}": {
            "parameters": [group_id],
            "get": _op("A group", _json(_ref("Group")), 403, 404),
            "put": _op(
                "Create or change a group",
                _json(_ref("Group")),
                403,
                body=_ref("UpsertGroupRequest"),
            ),
            "delete": _op("Delete a group", _empty(), 403, 404),
        },
        "/api/groups/{group_id}/users": {
            "parameters": [group_id],
            "get": _op("A group's members", _json(_array("User")), 403, 404),
            "post": _op("Add members", _empty(), 403, 404, body=users),
            "delete": _op("Remove members", _empty(), 403, 404, body=users),
        },
        "/api/groups/{group_id}/users/{user_id}": {
            "parameters": [group_id, _path("user_id")],
            "post": _op("Add a member", _empty(), 403, 404),
            "delete": _op("Remove a member", _empty(), 403, 404),
        },
        "/api/groups/{group_id}/permissions": {
            "parameters": [group_id],
            "get": _op("A group's grants", _json(_ref("GrantedAccess")), 403, 404),
        },
        "/api/users/{user_id}/permissions": {
            "parameters": [_path("user_id")],
            "get": _op("A user's grants", _json(_ref("GrantedAccess")), 403),
        },
        "/api/auth/authorization": {
            "post": _op("Grant access", _empty(), 403, body=_ref("AuthorizationRequest")),
            "delete": _op("Remove access", _empty(), 403, body=_ref("AuthorizationRequest")),
        },
        "/api/auth/authorization/{target_type}/{target_id}": {
            "parameters": target,
            "get": _op("Who holds which access on a target", _json(_ref("Permissions")), 400, 403),
        },
    }
    # The dry run of handlers (agents.admin.dryrun, streams.dryrun), in one place.
    from streams.deadletter import STAGES

    text, nullable_text = {"type": "string"}, {"type": "string", "nullable": True}
    text_map = {"type": "object", "additionalProperties": {"type": "string"}}
    letter = {
        "type": "object",
        "description": "the dead letter the worker would write: its stage and reason",
        "required": ["stage", "reason"],
        "properties": {"stage": {"enum": list(STAGES)}, "reason": text},
    }
    schemas.update(
        {
            "DryRunRequest": {
                "type": "object",
                "description": "a handler by name, or a topic (of the home integration unless "
                "integration is given); the message as it would arrive",
                "required": ["message"],
                "additionalProperties": False,
                "properties": {
                    "handler": text,
                    "topic": text,
                    "integration": text,
                    "message": {
                        "description": "the record's value: a JSON value (sent as its JSON "
                        "text), a string (the record's text) or null (a tombstone)",
                        "nullable": True,
                    },
                    "key": nullable_text,
                    "headers": text_map,
                    "partition": {"type": "integer", "minimum": 0},
                    "offset": {"type": "integer", "minimum": 0},
                    "timestamp": {"type": "integer", "minimum": 0, "nullable": True},
                },
            },
            "DryRunLetter": letter,
            "DryRunHttpRequest": {
                "type": "object",
                "description": "an HTTP request as it would be sent, secrets masked (***)",
                "required": ["method", "url", "headers", "body"],
                "properties": {
                    "method": text,
                    "url": text,
                    "headers": text_map,
                    "body": {"description": "JSON when sent as JSON, else text", "nullable": True},
                },
            },
            "DryRunRecord": {
                "type": "object",
                "description": "the record a publish would produce",
                "required": ["integration", "topic", "key", "headers", "format", "value"],
                "properties": {
                    "integration": text,
                    "topic": text,
                    "key": nullable_text,
                    "headers": text_map,
                    "format": {"enum": ["text", "json"]},
                    "value": {"nullable": True},
                    "avro": {"type": "object"},
                },
            },
            "DryRunAction": {
                "type": "object",
                "required": ["index", "action"],
                "properties": {
                    "index": {"type": "integer"},
                    "action": text,
                    "target": nullable_text,
                    "deliveryId": text,
                    "orderingKey": text,
                    "dedupe": {
                        "type": "object",
                        "nullable": True,
                        "properties": {"key": text, "windowSeconds": {"type": "number"}},
                    },
                    "payload": {"type": "object", "description": "the action request's payload"},
                    "requests": _array("DryRunHttpRequest"),
                    "publish": _ref("DryRunRecord"),
                    "incomplete": text,
                    "deadLetter": _ref("DryRunLetter"),
                },
            },
            "DryRunHandler": {
                "type": "object",
                "required": ["name", "integration", "topic", "active", "matched", "actions"],
                "properties": {
                    "name": text,
                    "integration": text,
                    "topic": text,
                    "active": {"type": "boolean"},
                    "matched": {
                        "type": "boolean",
                        "nullable": True,
                        "description": "the condition's result; null: not evaluated",
                    },
                    "deadLetter": _ref("DryRunLetter"),
                    "actions": _array("DryRunAction"),
                },
            },
            "DryRun": {
                "type": "object",
                "required": ["delivered", "message", "handlers"],
                "properties": {
                    "delivered": {"type": "boolean", "enum": [False]},
                    "message": {
                        "type": "object",
                        "description": "the record as _kafka shows it, and its decoded value",
                        "required": ["topic", "partition", "offset", "integration", "messageId"],
                        "properties": {
                            "key": nullable_text,
                            "headers": text_map,
                            "topic": text,
                            "partition": {"type": "integer"},
                            "offset": {"type": "integer"},
                            "timestamp": {"type": "integer", "nullable": True},
                            "integration": text,
                            "messageId": text,
                            "value": {"nullable": True},
                        },
                    },
                    "deadLetter": _ref("DryRunLetter"),
                    "handlers": _array("DryRunHandler"),
                },
            },
        }
    )
    paths["/api/herald/try"] = {
        "post": _op(
            "Dry run: what handlers would do with a message, nothing delivered (READ on each)",
            _json(_ref("DryRun")),
            403,
            404,
            body=_ref("DryRunRequest"),
        )
    }
    # The execution history (agents.admin.history_api, streams.history), in one place.
    from streams.deadletter import STAGES as LETTER_STAGES
    from streams.history import STATUSES

    def maybe(schema: dict[str, Any]) -> dict[str, Any]:
        return {**schema, "nullable": True}

    def query(name: str, schema: dict[str, Any], about: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "schema": schema, "description": about}

    ms = {"type": "integer", "minimum": 0}
    since = query("from", ms, "the earliest `created` (ms since the epoch)")
    until = query("to", ms, "the latest `created` (ms since the epoch)")
    limit = query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "default 100")
    schemas.update(
        {
            "EventExecution": {
                "type": "object",
                "description": "Conductor's EventExecution (id, messageId, name: the handler, "
                "event, created, status, action, output) with Herald's fields; kind "
                "deadLetter: a dead letter (stage, reason) instead of an execution record",
                "required": ["id", "created", "status", "kind", "output"],
                "properties": {
                    "id": {"type": "string"},
                    "messageId": maybe({"type": "string"}),
                    "name": maybe({"type": "string"}),
                    "event": maybe({"type": "string"}),
                    "created": {"type": "integer"},
                    "status": {"enum": list(STATUSES)},
                    "action": maybe({"type": "string"}),
                    "output": {"type": "object"},
                    "kind": {"enum": ["execution", "deadLetter"]},
                    "actionIndex": maybe({"type": "integer"}),
                    "attempts": {"type": "integer"},
                    "error": maybe({"type": "string"}),
                    "reason": maybe({"type": "string"}),
                    "result": {"description": "the action's result (any JSON)"},
                    "stage": {"enum": list(LETTER_STAGES)},
                    "deliveryId": maybe({"type": "string"}),
                    "valueMissing": maybe({"type": "string"}),
                    "source": maybe(
                        {
                            "type": "object",
                            "properties": {
                                "integration": maybe({"type": "string"}),
                                "topic": maybe({"type": "string"}),
                                "partition": maybe({"type": "integer"}),
                                "offset": maybe({"type": "integer"}),
                                "timestamp": maybe({"type": "integer"}),
                                "endOffset": {"type": "integer"},
                            },
                        }
                    ),
                },
            },
            "HandlerHistory": {
                "type": "object",
                "required": ["name", "executions", "deadLetters", "outcome", "counts"],
                "properties": {
                    "name": {"type": "string"},
                    "event": maybe({"type": "string"}),
                    "current": {"type": "boolean"},
                    "active": {"type": "boolean"},
                    "executions": _array("EventExecution"),
                    "deadLetters": _array("EventExecution"),
                    "outcome": {"type": "string"},
                    "counts": {
                        "type": "object",
                        "description": "this worker's counts of the handler since it started",
                        "properties": {
                            "matched": maybe({"type": "integer"}),
                            "conditionFalse": maybe({"type": "integer"}),
                            "scope": {"type": "string"},
                        },
                    },
                },
            },
            "SourceHistory": {
                "type": "object",
                "required": [
                    "messageId",
                    "integration",
                    "topic",
                    "partition",
                    "offset",
                    "handlers",
                    "deadLetters",
                ],
                "properties": {
                    "messageId": {"type": "string"},
                    "integration": {"type": "string"},
                    "topic": {"type": "string"},
                    "partition": {"type": "integer"},
                    "offset": {"type": "integer"},
                    "handlers": _array("HandlerHistory"),
                    "deadLetters": _array("EventExecution"),
                },
            },
            "AuditRecord": {
                "type": "object",
                "required": ["id", "at", "user", "operation", "target"],
                "properties": {
                    "id": {"type": "string"},
                    "at": {"type": "integer"},
                    "user": {"type": "string"},
                    "keyId": maybe({"type": "string"}),
                    "operation": {"type": "string"},
                    "target": {"type": "object"},
                    "before": {"description": "the state before, secrets masked"},
                    "after": {"description": "the state after, secrets masked"},
                },
            },
        }
    )
    text = {"type": "string"}
    paths["/api/event/execution"] = {
        "get": _op(
            "Execution records and dead letters of the handlers the caller may read, newest first",
            _json(_array("EventExecution")),
            400,
            params=[
                query("handler", text, "the handler's name"),
                query("status", {"enum": list(STATUSES)}, "the status"),
                since,
                until,
                limit,
            ],
        )
    }
    paths["/api/event/execution/source"] = {
        "get": _op(
            "What happened to one source record, handler by handler",
            _json(_ref("SourceHistory")),
            400,
            params=[
                query("integration", text, "default: the home integration"),
                query("topic", text, "with partition and offset"),
                query("partition", ms, "the record's partition"),
                query("offset", ms, "the record's offset"),
                query("messageId", text, "<integration>/<topic>/<partition>/<offset>"),
            ],
        )
    }
    paths["/api/audit"] = {
        "get": _op(
            "The admin API's audit records, newest first (the ADMIN role)",
            _json(_array("AuditRecord")),
            400,
            403,
            params=[since, until, limit],
        )
    }
    # The status page's summary (agents.admin.status_api), in one place.
    count = {"type": "integer", "minimum": 0}
    schemas.update(
        {
            "IntegrationStatus": {
                "type": "object",
                "required": [
                    "name",
                    "home",
                    "group",
                    "state",
                    "lag",
                    "lagTotal",
                    "consumed",
                    "deadLetters",
                    "stalledPartitions",
                    "unreadablePartitions",
                ],
                "properties": {
                    "name": text,
                    "home": {"type": "boolean"},
                    "group": text,
                    "state": {
                        "enum": ["starting", "idle", "connecting", "consuming", "error", "inactive"]
                    },
                    "error": maybe(text),
                    "lag": {
                        "type": "array",
                        "description": "records not done per partition assigned to this worker",
                        "items": {
                            "type": "object",
                            "required": ["topic", "partition", "lag"],
                            "properties": {"topic": text, "partition": count, "lag": count},
                        },
                    },
                    "lagTotal": count,
                    "consumed": count,
                    "deadLetters": {
                        "type": "object",
                        "required": ["total", "byStage"],
                        "properties": {
                            "total": count,
                            "byStage": {"type": "object", "additionalProperties": count},
                        },
                    },
                    "stalledPartitions": count,
                    "unreadablePartitions": count,
                },
            },
            "HandlerStatus": {
                "type": "object",
                "required": ["name", "integration", "topic", "active", *HANDLER_COUNTS],
                "properties": {
                    "name": text,
                    "integration": text,
                    "topic": text,
                    "active": {"type": "boolean"},
                    **dict.fromkeys(HANDLER_COUNTS, count),
                },
            },
            "HeraldStatus": {
                "type": "object",
                "description": "one worker's counts since it started (worker.id says which)",
                "required": ["worker", "ready", "integrations", "handlers", "history"],
                "properties": {
                    "worker": {
                        "type": "object",
                        "required": ["id", "startedAt", "now"],
                        "properties": {"id": text, "startedAt": count, "now": count},
                    },
                    "ready": {"type": "boolean"},
                    "integrations": _array("IntegrationStatus"),
                    "handlers": _array("HandlerStatus"),
                    "history": maybe(
                        {
                            "type": "object",
                            "required": ["state", "caughtUp", "records"],
                            "properties": {
                                "state": text,
                                "caughtUp": {"type": "boolean"},
                                "records": count,
                            },
                        }
                    ),
                },
            },
        }
    )
    paths["/api/herald/status"] = {
        "get": _op(
            "This worker's integrations, lag, dead letters and the handlers the caller may read",
            _json(_ref("HeraldStatus")),
        )
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Herald admin API",
            "version": "1",
            "description": "Conductor's event-handler resource and Orkes' access control",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "X-Authorization"}
            },
        },
        "security": [{"token": []}],
    }
