"""Calls to a worker's admin API from integration tests: one request helper and the token
exchange, shared by the admin API, dry-run, history and status-page tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, NamedTuple


class Answer(NamedTuple):
    """One answer: its status, its JSON body (None when empty) and the body's text."""

    status: int
    body: Any
    text: str


def call(
    worker: Any,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    *,
    timeout: float = 30.0,
) -> Answer:
    """One call to `worker`'s web port; an HTTP error status is an answer, not an exception."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{worker.web_url}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("X-Authorization", token)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    return Answer(status, json.loads(text) if text else None, text)


def raw(
    worker: Any, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    """(status, JSON body) of one call."""
    answer = call(worker, method, path, body, token)
    return answer.status, answer.body


def token_for(worker: Any, key_id: str, secret: str) -> str:
    """A token for an access key, from `POST /api/token`."""
    status, body = raw(worker, "POST", "/api/token", {"keyId": key_id, "keySecret": secret})
    assert status == 200, body
    return body["token"]
