"""Delivery policy: backoff, Retry-After, HTTP classification, the retry loop (with a fake clock)
and real HTTP calls against the loopback receiver."""

from __future__ import annotations

import asyncio
import email.utils
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agents.embedded.receiver import Hang, Receiver, Reply
from streams import delivery
from streams.config.models import RetryPolicy
from streams.delivery import (
    Outcome,
    backoff_seconds,
    classify_status,
    http_request,
    parse_retry_after,
    run_with_retry,
)
from streams.errors import DeliveryError
from streams.http1 import Http1Client

# --------------------------------------------------------------------------- backoff


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(initialBackoffMs=100, multiplier=2.0, maxBackoffMs=1000, jitter=0.0)

    delays = [backoff_seconds(policy, attempt) for attempt in range(1, 8)]

    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_backoff_with_another_multiplier() -> None:
    policy = RetryPolicy(initialBackoffMs=200, multiplier=3.0, maxBackoffMs=60_000, jitter=0.0)

    assert [backoff_seconds(policy, a) for a in (1, 2, 3, 4)] == [0.2, 0.6, 1.8, 5.4]


def test_backoff_jitter_is_seeded_and_within_bounds() -> None:
    policy = RetryPolicy(initialBackoffMs=100, multiplier=2.0, maxBackoffMs=1000, jitter=0.2)
    rng = random.Random(1234)
    reference = random.Random(1234)

    delays = [backoff_seconds(policy, attempt, rng) for attempt in range(1, 8)]

    nominal = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert delays == [reference.uniform(n - n * 0.2, min(n + n * 0.2, 1.0)) for n in nominal]
    assert all(n * 0.8 <= d <= min(n * 1.2, 1.0) for d, n in zip(delays, nominal, strict=True))
    assert len(set(delays[4:])) == 3  # jittered even at the cap, below it


def test_backoff_jitter_bounds_over_many_draws() -> None:
    policy = RetryPolicy(initialBackoffMs=500, multiplier=2.0, maxBackoffMs=4000, jitter=0.5)
    rng = random.Random(7)

    for attempt in range(1, 200):
        nominal = min(0.5 * 2 ** (attempt - 1), 4.0)
        assert nominal * 0.5 <= backoff_seconds(policy, attempt, rng) <= min(nominal * 1.5, 4.0)


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(),  # the defaults: 30 s cap, 20 % jitter
        RetryPolicy(initialBackoffMs=500, maxBackoffMs=10_000, jitter=0.2),  # issue 10's run
        RetryPolicy(initialBackoffMs=100, multiplier=3.0, maxBackoffMs=2_000, jitter=1.0),
    ],
)
def test_jitter_never_takes_a_delay_over_the_cap(policy: RetryPolicy) -> None:
    """Issue 10: `retrying in 11.94s` was logged with maxBackoffMs 10000 (jitter was added
    after the cap)."""
    rng = random.Random(10)
    cap = policy.maxBackoffMs / 1000

    delays = [backoff_seconds(policy, attempt, rng) for _ in range(50) for attempt in range(1, 40)]

    assert max(delays) <= cap
    at_cap = [d for d in delays if d >= cap * (1 - policy.jitter)]
    assert min(at_cap) >= cap * (1 - policy.jitter)
    assert len(set(at_cap)) > 100  # still spread out at the cap, not all at one value


def test_backoff_after_very_many_attempts_is_the_cap() -> None:
    policy = RetryPolicy(initialBackoffMs=100, multiplier=2.0, maxBackoffMs=30_000, jitter=0.0)
    no_backoff = RetryPolicy(initialBackoffMs=0, maxBackoffMs=30_000, jitter=0.0)

    assert backoff_seconds(policy, 5000) == 30.0
    assert backoff_seconds(no_backoff, 5000) == 0.0


# --------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("1", 1.0), (" 120 ", 120.0), ("2.5", 2.5), ("-3", 0.0), ("", None), (None, None)],
)
def test_parse_retry_after_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_parse_retry_after_http_date(monkeypatch: pytest.MonkeyPatch) -> None:
    now = 1_700_000_000.0
    monkeypatch.setattr(delivery.time, "time", lambda: now)

    assert parse_retry_after(email.utils.formatdate(now + 120, usegmt=True)) == 120.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:15:20 GMT") == 120.0
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True)) == 0.0


def test_parse_retry_after_garbage_is_none() -> None:
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 99 Foo 2015") is None


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_classify_success(status: int) -> None:
    assert classify_status(status, "", None) is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_classify_permanent(status: int) -> None:
    error = classify_status(status, "bad key", "5")

    assert error is not None
    assert (error.retryable, error.status, error.retry_after) == (False, status, None)
    assert str(error) == f"HTTP {status}: bad key"


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_classify_retryable(status: int) -> None:
    error = classify_status(status, "x" * 400, None)

    assert error is not None
    assert (error.retryable, error.status, error.retry_after) == (True, status, None)
    assert str(error) == f"HTTP {status}: " + "x" * 300


def test_classify_503_keeps_retry_after() -> None:
    error = classify_status(503, "", "7")

    assert error is not None
    assert error.retry_after == 7.0


def test_classify_429_is_retryable_with_retry_after() -> None:
    error = classify_status(429, "slow down", "30")
    without = classify_status(429, "", None)

    assert error is not None and without is not None
    assert (error.retryable, error.status, error.retry_after) == (True, 429, 30.0)
    assert str(error) == "HTTP 429 Too Many Requests: slow down"
    assert (without.retryable, without.retry_after) == (True, None)


# --------------------------------------------------------------------------- retry loop


class FakeTime:
    """A clock that only moves when the code under test sleeps or an attempt takes time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def scripted(
    fake: FakeTime, *outcomes: Any, cost: float = 0.0
) -> tuple[Callable[[], Awaitable[Any]], list[int]]:
    """An attempt function raising or returning the outcomes in turn; counts its calls."""
    calls: list[int] = []

    async def attempt() -> Any:
        calls.append(len(calls) + 1)
        fake.now += cost
        outcome = outcomes[min(len(calls), len(outcomes)) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return attempt, calls


def retryable(status: int = 503, retry_after: float | None = None) -> DeliveryError:
    return DeliveryError(f"HTTP {status}", retryable=True, retry_after=retry_after, status=status)


def run(
    attempt: Callable[[], Awaitable[Any]], policy: RetryPolicy, fake: FakeTime, **kw: Any
) -> Outcome:
    return asyncio.run(run_with_retry(attempt, policy, sleep=fake.sleep, clock=fake.clock, **kw))


POLICY = RetryPolicy(
    maxAttempts=4, initialBackoffMs=100, multiplier=2.0, maxBackoffMs=10_000, jitter=0.0
)


def test_success_at_once() -> None:
    fake = FakeTime()
    attempt, calls = scripted(fake, {"status": 202})

    outcome = run(attempt, POLICY, fake)

    assert outcome == Outcome(ok=True, attempts=1, result={"status": 202})
    assert fake.sleeps == []


def test_retries_until_success() -> None:
    fake = FakeTime()
    attempt, calls = scripted(fake, retryable(), retryable(500), "done")
    seen: list[tuple[int, int | None, float]] = []

    outcome = run(attempt, POLICY, fake, on_retry=lambda n, e, d: seen.append((n, e.status, d)))

    assert (outcome.ok, outcome.attempts, outcome.result) == (True, 3, "done")
    assert fake.sleeps == [0.1, 0.2]
    assert seen == [(1, 503, 0.1), (2, 500, 0.2)]


def test_stops_at_max_attempts() -> None:
    fake = FakeTime()
    error = retryable()
    attempt, calls = scripted(fake, error)

    outcome = run(attempt, POLICY, fake)

    assert (outcome.ok, outcome.attempts, outcome.error) == (False, 4, error)
    assert calls == [1, 2, 3, 4]
    assert fake.sleeps == [0.1, 0.2, 0.4]


def test_stops_when_max_elapsed_would_be_exceeded() -> None:
    policy = RetryPolicy(
        maxAttempts=100,
        initialBackoffMs=1000,
        multiplier=2.0,
        maxBackoffMs=60_000,
        jitter=0.0,
        maxElapsedSeconds=9,
    )
    fake = FakeTime()
    attempt, calls = scripted(fake, retryable())

    outcome = run(attempt, policy, fake)

    # 0+1, 1+2, 3+4 fit in 9 s; 7+8 would not.
    assert (outcome.ok, outcome.attempts) == (False, 4)
    assert fake.sleeps == [1.0, 2.0, 4.0]


def test_elapsed_time_counts_the_attempts_themselves() -> None:
    policy = RetryPolicy(
        maxAttempts=100,
        initialBackoffMs=1000,
        multiplier=2.0,
        maxBackoffMs=60_000,
        jitter=0.0,
        maxElapsedSeconds=9,
    )
    fake = FakeTime()
    attempt, calls = scripted(fake, retryable(), cost=1.0)

    outcome = run(attempt, policy, fake)

    # attempt ends at 1 (+1 ok), at 3 (+2 ok), at 6 (+4 = 10 > 9: stop)
    assert (outcome.ok, outcome.attempts) == (False, 3)
    assert fake.sleeps == [1.0, 2.0]


def test_retry_after_is_the_wait_instead_of_the_backoff() -> None:
    """The README's rule: with Retry-After, the wait is Retry-After, raised to
    initialBackoffMs and capped at maxBackoffMs, not jittered; the backoff is not used."""
    policy = RetryPolicy(initialBackoffMs=100, multiplier=2.0, maxBackoffMs=10_000, jitter=0.5)
    fake = FakeTime()
    attempt, calls = scripted(
        fake,
        retryable(429, retry_after=5.0),  # honoured as given, though the backoff is ~0.1
        retryable(503, retry_after=0.0),  # raised to initialBackoffMs: no busy loop
        retryable(503, retry_after=3600.0),  # capped at maxBackoffMs
        retryable(503, retry_after=0.3),  # smaller than the backoff (~0.8): honoured
        "ok",
    )

    outcome = run(attempt, policy, fake)

    assert (outcome.ok, outcome.attempts) == (True, 5)
    assert fake.sleeps == [5.0, 0.1, 10.0, 0.3]


@pytest.mark.parametrize(
    ("retry_after", "expected"), [(2.0, 2.0), (0.01, 0.2), (0.0, 0.2), (31.0, 30.0), (1e9, 30.0)]
)
def test_retry_delay_with_retry_after_is_clamped_to_the_policy(
    retry_after: float, expected: float
) -> None:
    policy = RetryPolicy()  # initialBackoffMs 200, maxBackoffMs 30000

    for attempt in (1, 5, 50):
        error = retryable(429, retry_after=retry_after)
        assert delivery.retry_delay(policy, attempt, error, random.Random(attempt)) == expected


def test_retry_after_within_the_cap_but_past_the_budget_gives_up() -> None:
    policy = RetryPolicy(initialBackoffMs=100, maxBackoffMs=60_000, maxElapsedSeconds=30)
    fake = FakeTime()
    error = retryable(429, retry_after=45.0)
    attempt, calls = scripted(fake, error)

    outcome = run(attempt, policy, fake)

    assert (outcome.ok, outcome.attempts, outcome.error) == (False, 1, error)
    assert fake.sleeps == []


def test_a_retry_after_over_the_cap_is_asked_again_at_the_cap() -> None:
    policy = RetryPolicy(maxAttempts=10, initialBackoffMs=100, jitter=0.0, maxElapsedSeconds=60)
    fake = FakeTime()
    attempt, calls = scripted(fake, retryable(429, retry_after=120.0), "ok")

    outcome = run(attempt, policy, fake)

    assert (outcome.ok, outcome.attempts) == (True, 2)
    assert fake.sleeps == [30.0]  # the default maxBackoffMs


# --------------------------------------------------------------------------- the defaults


def test_the_default_policy_is_a_time_budget_of_30_minutes() -> None:
    policy = RetryPolicy()

    assert policy.maxAttempts is None
    assert policy.maxElapsedSeconds == 1800
    assert policy.maxBackoffMs == 30_000


@pytest.mark.parametrize(
    ("failure", "cost"),
    [
        (retryable(503), 0.0),  # answered at once with 503
        (DeliveryError("connection failed: refused", retryable=True), 0.0),
        (DeliveryError("timed out after 10 s", retryable=True), 10.0),  # the default timeout
        (retryable(429), 0.0),
    ],
)
@pytest.mark.parametrize("outage_minutes", [1, 5, 15, 25])
def test_the_default_policy_rides_out_an_outage_of_minutes(
    failure: DeliveryError, cost: float, outage_minutes: int
) -> None:
    """Issue 10: with 8 attempts (about 25 s) a 60 s outage dead-lettered 100 of 3,000."""
    fake = FakeTime()
    recovers_at = fake.now + outage_minutes * 60
    calls: list[float] = []

    async def attempt() -> str:
        calls.append(fake.now)
        fake.now += cost
        if fake.now < recovers_at:
            raise failure
        return "delivered"

    outcome = run(attempt, RetryPolicy(), fake)

    assert (outcome.ok, outcome.result) == (True, "delivered")
    assert max(fake.sleeps) <= 30.0
    # delivered within one longest wait (plus an attempt) of the recovery
    assert calls[-1] - recovers_at <= 30.0 + cost


def test_the_default_policy_gives_up_only_after_its_budget() -> None:
    fake = FakeTime()
    started = fake.now
    error = retryable(503)
    attempt, calls = scripted(fake, error)

    outcome = run(attempt, RetryPolicy(), fake)

    assert (outcome.ok, outcome.error) == (False, error)
    assert 1800 - 30 <= fake.now - started <= 1800
    assert len(calls) > 60


def test_the_default_policy_dead_letters_a_permanent_failure_at_once() -> None:
    fake = FakeTime()
    error = DeliveryError("HTTP 400: bad", retryable=False, status=400)
    attempt, calls = scripted(fake, error, "never")

    outcome = run(attempt, RetryPolicy(), fake)

    assert (outcome.ok, outcome.attempts, fake.sleeps) == (False, 1, [])


def test_permanent_failure_returns_at_once() -> None:
    fake = FakeTime()
    error = DeliveryError("HTTP 400: bad", retryable=False, status=400)
    attempt, calls = scripted(fake, error, "never")

    outcome = run(attempt, POLICY, fake)

    assert (outcome.ok, outcome.attempts, outcome.error) == (False, 1, error)
    assert calls == [1]
    assert fake.sleeps == []


# --------------------------------------------------------------------------- real HTTP


def call(url: str, *, timeout: float = 5.0, **kw: Any) -> tuple[int, str]:
    async def go() -> tuple[int, str]:
        async with Http1Client() as client:
            return await http_request(client, "POST", url, timeout=timeout, **kw)

    return asyncio.run(go())


def failure(url: str, **kw: Any) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        call(url, **kw)
    return info.value


def test_http_202_is_ok(receiver: Receiver) -> None:
    status, body = call(
        receiver.url + "/api/events",
        json_body={"alertKey": "k-1"},
        headers={"Idempotency-Key": "abc"},
    )

    assert status == 202
    assert '"alertKey": "k-1"' in body
    [request] = receiver.requests
    assert (request.method, request.path, request.json) == (
        "POST",
        "/api/events",
        {"alertKey": "k-1"},
    )
    assert request.header("Idempotency-Key") == "abc"


def test_http_503_then_202_with_retry(receiver: Receiver) -> None:
    receiver.respond("/api/events", Reply(503, "busy"))
    fake = FakeTime()
    policy = RetryPolicy(maxAttempts=3, initialBackoffMs=100, jitter=0.0)

    async def go() -> Outcome:
        async with Http1Client() as client:
            return await run_with_retry(
                lambda: http_request(client, "POST", receiver.url + "/api/events", timeout=5),
                policy,
                sleep=fake.sleep,
                clock=fake.clock,
            )

    outcome = asyncio.run(go())

    assert (outcome.ok, outcome.attempts, outcome.result[0]) == (True, 2, 202)
    assert fake.sleeps == [0.1]
    assert [r.status for r in receiver.requests] == [503, 202]


def test_http_429_with_retry_after(receiver: Receiver) -> None:
    receiver.respond(None, Reply(429, "rate limited", headers={"Retry-After": "1"}))

    error = failure(receiver.url + "/api/events")

    assert (error.retryable, error.status, error.retry_after) == (True, 429, 1.0)
    assert str(error) == "HTTP 429 Too Many Requests: rate limited"


def test_http_400_is_permanent(receiver: Receiver) -> None:
    receiver.respond(None, Reply(400, {"message": "invalid eventType"}))

    error = failure(receiver.url + "/api/events")

    assert (error.retryable, error.status) == (False, 400)
    assert str(error) == 'HTTP 400: {"message": "invalid eventType"}'


def test_http_hang_is_a_retryable_timeout(receiver: Receiver) -> None:
    receiver.respond(None, Hang())
    url = receiver.url + "/api/events"

    error = failure(url, timeout=0.3)

    assert (error.retryable, error.status) == (True, None)
    assert str(error) == f"timed out after 0.3 s: POST {url}"


def test_http_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # the socket is closed: nothing listens on the port

    error = failure(f"http://127.0.0.1:{port}/api/events")

    assert (error.retryable, error.status) == (True, None)
    assert str(error).startswith("connection failed: ConnectionRefusedError")


def test_http_invalid_url_is_permanent() -> None:
    error = failure("http://")

    assert (error.retryable, str(error)) == (False, "invalid URL http://")
