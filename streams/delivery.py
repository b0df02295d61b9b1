"""Retry policy, backoff and failure classification for deliveries.

Transient failures (connection errors, timeouts, 408, 5xx, 429) are retried until the
policy's time budget (`maxElapsedSeconds`, by default 30 minutes) is spent, or `maxAttempts`
when one is set (by default none): an endpoint down for minutes costs waiting, not dead
letters, since Kafka keeps the backlog. Anything else fails at once so it is dead-lettered
without delay.

The wait before each retry is never longer than `maxBackoffMs`:

- without Retry-After, the exponential backoff `initialBackoffMs * multiplier**(n-1)`, capped
  at `maxBackoffMs`, then jittered by +/- `jitter` of itself within the cap (at the cap the
  wait is drawn from `[cap * (1 - jitter), cap]`), so retries of many lanes spread out and
  none waits longer than the cap;
- with a server's Retry-After (on 429, 5xx, 408), the Retry-After itself, not jittered,
  raised to `initialBackoffMs` (a `Retry-After: 0` does not make a busy loop) and capped at
  `maxBackoffMs` (a server asking for an hour is asked again at the cap).

A retry whose wait would end past the budget is not made: the last error is the outcome.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from streams.config.models import RetryPolicy
from streams.errors import DeliveryError
from streams.http1 import Http1Client, InvalidURL

T = TypeVar("T")


@dataclass(slots=True)
class Outcome:
    """How a delivery with retries ended."""

    ok: bool
    attempts: int
    result: Any = None
    error: DeliveryError | None = None


def backoff_seconds(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Delay before retry number `attempt` (1 = first retry): exponential, capped, jittered.

    The jitter never takes a delay over the cap: `maxBackoffMs` is what an operator sizes
    outages and lanes by, so it is the longest any single wait is.
    """
    cap = policy.maxBackoffMs / 1000.0
    try:
        base = policy.initialBackoffMs * (policy.multiplier ** (attempt - 1)) / 1000.0
    except OverflowError:  # a long run of retries: beyond any cap (unless there is no backoff)
        base = float("inf") if policy.initialBackoffMs else 0.0
    nominal = min(base, cap)
    spread = nominal * policy.jitter
    return (rng or random).uniform(nominal - spread, min(nominal + spread, cap))


def retry_delay(
    policy: RetryPolicy, attempt: int, error: DeliveryError, rng: random.Random | None = None
) -> float:
    """The wait before retry number `attempt` after `error`: the server's Retry-After when it
    gave one, within `[initialBackoffMs, maxBackoffMs]`; else the jittered backoff."""
    if error.retry_after is None:
        return backoff_seconds(policy, attempt, rng)
    floor = policy.initialBackoffMs / 1000.0
    return min(max(error.retry_after, floor), policy.maxBackoffMs / 1000.0)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None when absent or unparseable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def classify_status(status: int, body: str, retry_after: str | None) -> DeliveryError | None:
    """None for success (2xx); otherwise the error, retryable or not."""
    if 200 <= status < 300:
        return None
    snippet = body[:300]
    if status == 429:
        return DeliveryError(
            f"HTTP 429 Too Many Requests: {snippet}",
            retryable=True,
            retry_after=parse_retry_after(retry_after),
            status=status,
        )
    if status >= 500 or status == 408:
        return DeliveryError(
            f"HTTP {status}: {snippet}",
            retryable=True,
            retry_after=parse_retry_after(retry_after),
            status=status,
        )
    return DeliveryError(f"HTTP {status}: {snippet}", retryable=False, status=status)


_JSON = {"Content-Type": "application/json"}


def _json_bytes(body: Any) -> bytes:
    try:
        return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # beyond orjson (integers over 64 bits): the standard library's output
        return json.dumps(body).encode()


async def http_request(
    client: Http1Client,
    method: str,
    url: str,
    *,
    timeout: float,
    json_body: Any = None,
    data: bytes | str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """One HTTP call; raises a DeliveryError for any failure, returns (status, body) on 2xx."""
    if json_body is not None:
        # orjson: ~3 µs less per call than the standard library's json.dumps
        data = _json_bytes(json_body)
        headers = {**_JSON, **headers} if headers else _JSON
    body = data.encode() if isinstance(data, str) else data
    try:
        response = await client.request(method, url, body=body, headers=headers, timeout=timeout)
    except TimeoutError:
        raise DeliveryError(
            f"timed out after {timeout:g} s: {method} {url}", retryable=True
        ) from None
    except InvalidURL as exc:
        raise DeliveryError(f"invalid URL {exc}", retryable=False) from exc
    except ValueError as exc:
        raise DeliveryError(f"invalid request: {exc}", retryable=False) from exc
    except OSError as exc:
        raise DeliveryError(
            f"connection failed: {exc.__class__.__name__}: {exc}", retryable=True
        ) from exc
    text = response.text()
    error = classify_status(response.status, text, response.headers.get("retry-after"))
    if error is not None:
        raise error
    return response.status, text


async def run_with_retry(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_retry: Callable[[int, DeliveryError, float], None] | None = None,
) -> Outcome:
    """Call `attempt` until it succeeds, fails permanently, or the policy's bounds are hit.

    `sleep` is how it waits between attempts; the sink passes one that a worker's stop cuts
    short (by raising), so a lane waiting out an outage does not hold the shutdown.
    Never raises DeliveryError: the outcome says what happened, so the caller decides between
    acknowledging and dead-lettering.
    """
    started = clock()
    tries = 0
    while True:
        tries += 1
        try:
            return Outcome(ok=True, attempts=tries, result=await attempt())
        except DeliveryError as error:
            if not error.retryable or (
                policy.maxAttempts is not None and tries >= policy.maxAttempts
            ):
                return Outcome(ok=False, attempts=tries, error=error)
            delay = retry_delay(policy, tries, error)
            if clock() - started + delay > policy.maxElapsedSeconds:
                return Outcome(ok=False, attempts=tries, error=error)
            if on_retry is not None:
                on_retry(tries, error, delay)
            await sleep(delay)
