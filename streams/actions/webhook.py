"""Webhook action: an HTTP call with templated url, method, headers and body.

Every call carries `Idempotency-Key` (the delivery id) so a receiver can recognise a repeat
after a redelivery.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin

import orjson
from multidict import CIMultiDict

from streams.actions.base import (
    ActionInputError,
    ActionRequest,
    ActionType,
    DeliveryContext,
    ParamsModel,
)
from streams.config.models import Target
from streams.delivery import http_request
from streams.message import Envelope

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class WebhookParams(ParamsModel):
    target: str | None = None
    url: Any = None
    method: Any = "POST"
    headers: dict[str, Any] = {}
    body: Any = None


class Webhook(ActionType):
    name = "webhook"
    Params = WebhookParams
    target_type = "webhook"

    def finish(self, rendered: dict[str, Any], envelope: Envelope) -> dict[str, Any]:
        base = (self.target.url or self.target.baseUrl) if self.target else None
        url = rendered.get("url")
        if url:
            url = urljoin(base, str(url)) if base else str(url)
        else:
            url = base
        if not url or not str(url).startswith(("http://", "https://")):
            raise ActionInputError(f"webhook url {url!r} is not an http(s) URL")
        method = str(rendered.get("method") or "POST").upper()
        if method not in METHODS:
            raise ActionInputError(f"webhook method {method!r}; use one of {', '.join(METHODS)}")
        headers = {
            str(k): "" if v is None else str(v) for k, v in (rendered.get("headers") or {}).items()
        }
        return {"url": url, "method": method, "headers": headers, "body": rendered.get("body")}

    @classmethod
    async def deliver(
        cls, request: ActionRequest, ctx: DeliveryContext, target: Target | None
    ) -> Any:
        payload = request.payload
        # Header names are case-insensitive: a user's `content-type` replaces the default one.
        headers = CIMultiDict({"User-Agent": ctx.user_agent, "Idempotency-Key": request.id})
        if target is not None:
            headers.update(target.headers)
        headers.update(payload.get("headers") or {})
        body = payload.get("body")
        data: bytes | None = None
        if isinstance(body, str):
            data = body.encode()
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        elif body is not None:
            data = orjson.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        status, text = await http_request(
            ctx.http,
            payload["method"],
            payload["url"],
            timeout=cls.timeout(target),
            data=data,
            headers=dict(headers),
        )
        return {"status": status, "response": text[:500]}
