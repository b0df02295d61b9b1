"""Execution records: one per action of a matched message, as Conductor keeps them.

`{id, messageId, handler, event, action, status, attempts, error, result, payload, at, source}`
with status COMPLETED, FAILED, SKIPPED or DEAD_LETTERED. `id` is the delivery id (the same value
sent as `Idempotency-Key`). Payloads are redacted: no integration keys or other secrets.
`source` is where the action's message came from (`integration`, `topic`, `partition`,
`offset`, `timestamp`), so the execution history (streams.history) finds every record of one
source record; `messageId` is the same coordinates as one text.

`to_bytes` is where a record leaves the process, so it is where secrets are scrubbed by value
(`streams.secrets`): an error that quotes a receiver's answer echoing the request
(`Authorization: Bearer <token>`), a result or a payload holding a resolved secret. It checks
the serialized record once and scrubs field by field only when a secret is in it, so the
common record costs one search, not a walk.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from streams.actions.base import ActionRequest
from streams.secrets import scrub_json

COMPLETED = "COMPLETED"
FAILED = "FAILED"
SKIPPED = "SKIPPED"
DEAD_LETTERED = "DEAD_LETTERED"


def record(
    request: ActionRequest,
    status: str,
    *,
    attempts: int = 0,
    error: str | None = None,
    result: Any = None,
    redacted_payload: dict[str, Any] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    return {
        "id": request.id,
        "messageId": request.source.get("messageId"),
        "handler": request.handler,
        "event": request.event,
        "action": request.action,
        "actionIndex": request.index,
        "status": status,
        "attempts": attempts,
        "error": error,
        "reason": reason,
        "result": result,
        "payload": redacted_payload,
        "at": int(time.time() * 1000),
        "source": _source(request),
    }


def _source(request: ActionRequest) -> dict[str, Any]:
    """The source record's coordinates, without its key and headers (the request has them)."""
    source = request.source
    return {
        "integration": request.integration,
        "topic": source.get("topic"),
        "partition": source.get("partition"),
        "offset": source.get("offset"),
        "timestamp": source.get("timestamp"),
    }


def to_bytes(rec: dict[str, Any]) -> bytes:
    """The record as JSON, with no registered secret value in any of its fields."""
    return scrub_json(rec, orjson.dumps(rec))
