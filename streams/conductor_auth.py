"""Orkes Conductor's token flow, shared by every Conductor action of a worker.

Orkes Conductor authenticates API calls with a token obtained from `POST /api/token` with
`{"keyId": ..., "keySecret": ...}` (an application access key); the answer is
`{"token": "<JWT>"}` and the token goes in the `X-Authorization` header of every call. This is
what Conductor's own SDKs do (conductor-python `ApiClient`): renew the token before it expires
and, when the server answers 401 with `{"error": "EXPIRED_TOKEN"}` or `"INVALID_TOKEN"`, renew it
once and retry the call.

- Expiry: Orkes tokens are JWTs; their `exp` claim says when they expire. A token that is not a
  JWT (or has no `exp`) is kept for `DEFAULT_TTL_SECONDS` (the SDKs' default of 45 minutes). A
  token is renewed `RENEW_MARGIN_SECONDS` before it expires, so a call never carries a token
  about to lapse in flight.
- A target without `keyId`/`keySecret` talks to an open-source server: no token at all.
- A target with credentials whose server answers 404 on `/api/token` has no authentication
  (open-source Conductor): Herald then sends no token, and asks again after the TTL.
- One token per target per event loop; concurrent deliveries wait for one renewal instead of
  each asking for a token (a lock per target).

Failures of the token request itself are DeliveryErrors like any other: 5xx, 408, 429 and
connection errors are retryable, other 4xx (wrong key id or secret) are permanent.
"""

from __future__ import annotations

import asyncio
import base64
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from streams import secrets
from streams.config.models import Target
from streams.delivery import classify_status
from streams.errors import DeliveryError

DEFAULT_TTL_SECONDS = 45 * 60.0
RENEW_MARGIN_SECONDS = 60.0
RENEW_ON = frozenset({"EXPIRED_TOKEN", "INVALID_TOKEN"})
HEADER = "X-Authorization"


def api_base(target: Target) -> str:
    """The server's API root: `baseUrl` as is when it ends with `/api`, else `baseUrl/api`.

    Conductor's SDKs are configured with the API root (`http://host:8080/api`); people also
    write the server's address (`https://play.orkes.io`). Both are accepted.
    """
    base = (target.baseUrl or "").rstrip("/")
    return base if base.endswith("/api") else base + "/api"


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim (seconds since the epoch) of a JWT, or None when it has none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, orjson.JSONDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def auth_error_code(body: str) -> str:
    """The `error` of a Conductor authorization failure body (`{"error": "EXPIRED_TOKEN"}`)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    code = data.get("error") if isinstance(data, dict) else None
    return code if isinstance(code, str) else ""


@dataclass
class _Entry:
    token: str | None  # None: the server has no authentication
    renew_at: float  # time.time() after which it is renewed before use


@dataclass
class TokenCache:
    """Tokens by target, for one event loop."""

    entries: dict[tuple[str, str, str], _Entry] = field(default_factory=dict)
    locks: dict[tuple[str, str, str], asyncio.Lock] = field(default_factory=dict)
    requests: int = 0  # token requests made (for stats and tests)

    @staticmethod
    def _key(target: Target) -> tuple[str, str, str]:
        key_id = target.keyId.get_secret_value() if target.keyId else ""
        return (target.name, api_base(target), key_id)

    async def headers(self, session: aiohttp.ClientSession, target: Target) -> dict[str, str]:
        """`{X-Authorization: token}` for a call to `target`, renewing the token if due."""
        if not (target.keyId and target.keySecret):
            return {}
        key = self._key(target)
        entry = self.entries.get(key)
        if entry is None or time.time() >= entry.renew_at:
            entry = await self._renew(session, target, stale=entry.token if entry else None)
        return {HEADER: entry.token} if entry.token else {}

    async def renew(
        self, session: aiohttp.ClientSession, target: Target, stale: str | None
    ) -> dict[str, str]:
        """A fresh token after the server rejected `stale`; shared by concurrent callers."""
        entry = await self._renew(session, target, stale=stale, force=True)
        return {HEADER: entry.token} if entry.token else {}

    async def _renew(
        self,
        session: aiohttp.ClientSession,
        target: Target,
        *,
        stale: str | None,
        force: bool = False,
    ) -> _Entry:
        key = self._key(target)
        lock = self.locks.setdefault(key, asyncio.Lock())
        async with lock:
            entry = self.entries.get(key)
            # Another caller renewed while we waited: use its token.
            if entry is not None and entry.token != stale and time.time() < entry.renew_at:
                return entry
            if entry is not None and not force and time.time() < entry.renew_at:
                return entry
            entry = await self._request(session, target)
            self.entries[key] = entry
            return entry

    async def _request(self, session: aiohttp.ClientSession, target: Target) -> _Entry:
        assert target.keyId is not None and target.keySecret is not None
        url = api_base(target) + "/token"
        body = {
            "keyId": target.keyId.get_secret_value(),
            "keySecret": target.keySecret.get_secret_value(),
        }
        self.requests += 1
        try:
            async with session.post(
                url,
                json=body,
                headers={"Accept": "application/json", **target.headers},
                timeout=aiohttp.ClientTimeout(total=target.timeoutSeconds),
            ) as response:
                text = await response.text(errors="replace")
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except TimeoutError:
            raise DeliveryError(
                f"Conductor token request timed out after {target.timeoutSeconds:g} s: {url}",
                retryable=True,
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(
                f"Conductor token request failed: {exc.__class__.__name__}: {exc}",
                retryable=True,
            ) from exc
        now = time.time()
        if status == 404:  # no /api/token: a server without authentication
            return _Entry(token=None, renew_at=now + DEFAULT_TTL_SECONDS)
        error = classify_status(status, text, retry_after)
        if error is not None:
            raise DeliveryError(
                f"Conductor token request to {url} rejected: {error}",
                retryable=error.retryable,
                retry_after=error.retry_after,
                status=status,
            )
        token = _token_of(text)
        if not token:
            raise DeliveryError(
                f"Conductor token response from {url} has no token: {text[:200]}",
                retryable=True,
                status=status,
            )
        secrets.register(token)  # a live credential: masked wherever it might be echoed
        expiry = jwt_expiry(token)
        renew_at = (expiry if expiry is not None else now + DEFAULT_TTL_SECONDS) - (
            RENEW_MARGIN_SECONDS
        )
        return _Entry(token=token, renew_at=renew_at)


def _token_of(text: str) -> str | None:
    try:
        data: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    token = data.get("token") if isinstance(data, dict) else None
    return token if isinstance(token, str) and token else None


_CACHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TokenCache] = (
    weakref.WeakKeyDictionary()
)


def token_cache() -> TokenCache:
    """The token cache of the running event loop (a worker has one loop: one cache)."""
    loop = asyncio.get_running_loop()
    cache = _CACHES.get(loop)
    if cache is None:
        cache = _CACHES[loop] = TokenCache()
    return cache
