"""Webhook action: an HTTP call with templated url, method, headers and body.

Every call carries `Idempotency-Key` (the delivery id) so a receiver can recognise a repeat
after a redelivery.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin

import orjson
from multidict import CIMultiDict

from streams.actions.base import (
    TEMPLATED,
    ActionInputError,
    ActionRequest,
    Delivery,
    DeliveryContext,
    Origin,
    ParamsModel,
    Renderer,
    static_value,
)
from streams.config.models import Target
from streams.delivery import http_request
from streams.http1 import InvalidURL, check_url
from streams.targets.webhook import address

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _method(value: Any) -> str:
    """The HTTP method sent for a rendered `method` (POST when empty); ValueError if none."""
    method = str(value or "POST").upper()
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not supported; use one of {', '.join(METHODS)}")
    return method


class WebhookParams(ParamsModel):
    target: str | None = None
    url: Any = None
    method: Any = "POST"
    headers: dict[str, Any] = {}
    body: Any = None


class Webhook(Renderer[WebhookParams]):
    """An HTTP call rendered from a message: the URL joined to the target's, the method."""

    name = "webhook"
    Params = WebhookParams
    target_type = "webhook"

    def finish(self, rendered: dict[str, Any], origin: Origin) -> dict[str, Any]:
        try:
            url = self._url(rendered.get("url"))
            method = _method(rendered.get("method"))
        except ValueError as exc:
            raise ActionInputError(f"webhook {exc}") from None
        headers = {
            str(k): "" if v is None else str(v) for k, v in (rendered.get("headers") or {}).items()
        }
        return {"url": url, "method": method, "headers": headers, "body": rendered.get("body")}

    def static_problems(self, *, target_resolved: bool = True) -> Iterator[tuple[str, str]]:
        """A url (joined to the target's) or a method written without a template, checked as
        `finish` checks them once rendered."""
        checks = [("method", _method)]
        if target_resolved:  # the url is joined to the target's
            checks.insert(0, ("url", self._url))
        for name, check in checks:
            value = static_value(getattr(self.params, name))
            if value is TEMPLATED:
                continue
            try:
                check(value)
            except ValueError as exc:
                yield name, str(exc).removeprefix(f"{name} ")

    def _url(self, value: Any) -> str:
        """The URL called: `value` joined to the target's url, or the target's url alone."""
        base = address(self.target) if self.target else None
        url = (urljoin(base, str(value)) if base else str(value)) if value else base
        if not url:
            raise ValueError("url is not set; set it, or name a webhook target that has a url")
        try:
            check_url(url)
        except InvalidURL:
            raise ValueError(
                f"url {url!r} is not an absolute http(s) URL; write http(s)://host/path, or a "
                "path joined to the url of a webhook target"
            ) from None
        return url


class WebhookDelivery(Delivery):
    """Make the rendered call, with the target's headers under the action's own."""

    async def deliver(
        self, request: ActionRequest, ctx: DeliveryContext, target: Target | None
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
            timeout=self.timeout(target),
            data=data,
            headers=dict(headers),
        )
        return {"status": status, "response": text[:500]}
