"""The sink's stages one at a time, without Kafka: lanes, dedupe, delivery, the stop signal."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError
from faust.types import TP

from agents.counters import Counters
from agents.sink.dedupe import ALREADY_DELIVERED, IN_WINDOW, Dedupe
from agents.sink.delivery import Delivery, ExecutionLog
from agents.sink.lanes import Job, Lanes
from agents.sink.stopping import Stopping, StopSignal
from streams.actions.base import ActionRequest
from streams.config.models import RetryPolicy, Target
from streams.errors import DeliveryError
from streams.offsets import PartitionProgress

TPA = TP("actions", 0)


def record(offset: int, key: bytes = b"k") -> SimpleNamespace:
    return SimpleNamespace(key=key, value=b"{}", topic="actions", partition=0, offset=offset)


def request(id: str = "d1", dedupe_key: str | None = None, window: float | None = None):
    return ActionRequest.create(
        id=id,
        integration="home",
        handler="h",
        event="kafka:home:t",
        action="webhook",
        payload={},
        ordering_key="k",
        dedupe_key=dedupe_key,
        dedupe_window_s=window,
    )


# --------------------------------------------------------------------------- lanes


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario())


def test_a_key_is_delivered_in_order_and_keys_in_parallel() -> None:
    async def scenario() -> tuple[list[tuple[bytes, int]], int]:
        order: list[tuple[bytes, int]] = []
        gate = asyncio.Event()

        async def handle(job: Job) -> None:
            if job.record.key == b"slow":
                await gate.wait()
            order.append((job.record.key, job.record.offset))

        lanes = Lanes(10, handle, StopSignal())
        progress = PartitionProgress()
        ticket = progress.open(3)
        ticket.expect(4)
        for offset, key in enumerate([b"slow", b"slow", b"fast", b"fast"]):
            await lanes.add(key, Job(TPA, record(offset, key), ticket))
        await asyncio.sleep(0.01)
        fast_first = list(order)
        gate.set()
        await asyncio.sleep(0.01)
        return fast_first + order, progress.committable

    seen, committable = run(scenario)
    # the slow key held only itself; each key kept its order
    assert seen[:2] == [(b"fast", 2), (b"fast", 3)]
    assert seen[2:] == [(b"fast", 2), (b"fast", 3), (b"slow", 0), (b"slow", 1)]
    assert committable == 4  # the batch finished with its last record


def test_capacity_bounds_the_records_held_until_each_is_durable() -> None:
    async def scenario() -> tuple[bool, int | None, int | None]:
        durable: asyncio.Future = asyncio.get_running_loop().create_future()

        async def handle(job: Job) -> asyncio.Future:
            return durable

        lanes = Lanes(1, handle, StopSignal())
        progress = PartitionProgress()
        first, second = progress.open(0), progress.open(1)
        await lanes.add(b"a", Job(TPA, record(0, b"a"), first))
        blocked = asyncio.ensure_future(lanes.add(b"b", Job(TPA, record(1, b"b"), second)))
        await asyncio.sleep(0.01)
        waiting = not blocked.done()  # the first record's mark is not durable yet
        before = progress.committable
        durable.set_result(None)
        await blocked
        await asyncio.sleep(0.01)
        return waiting, before, progress.committable

    waiting, before, after = run(scenario)
    assert waiting
    assert before is None  # delivered, but its mark not durable: not finished
    assert after == 2


def test_a_stop_leaves_the_waiting_records_unfinished() -> None:
    async def scenario() -> tuple[int | None, dict, bool]:
        stop = StopSignal()

        async def handle(job: Job) -> None:
            await stop.sleep(60)  # a retry wait: cut short by the stop

        lanes = Lanes(4, handle, stop)
        progress = PartitionProgress()
        await lanes.add(b"k", Job(TPA, record(0), progress.open(0)))
        await asyncio.sleep(0.01)
        stop.set()
        await lanes.stop(grace=1.0)
        refused = await lanes.add(b"k", Job(TPA, record(1), progress.open(1)))
        return progress.committable, lanes.queues, refused

    committable, queues, accepted = run(scenario)
    assert committable is None  # redelivered by the next owner, never committed past
    assert queues == {}
    assert accepted is False


def test_records_of_a_revoked_partition_behind_a_lane_are_dropped_not_delivered() -> None:
    async def scenario() -> tuple[list[int], int]:
        delivered: list[int] = []
        gate = asyncio.Event()

        async def handle(job: Job) -> None:
            await gate.wait()
            delivered.append(job.record.offset)

        lanes = Lanes(4, handle, StopSignal())
        old = PartitionProgress()
        await lanes.add(b"k", Job(TPA, record(0), old.open(0)))
        await lanes.add(b"k", Job(TPA, record(1), old.open(1)))
        await asyncio.sleep(0.01)
        old.revoke()
        lanes.revoke({TPA})
        new = PartitionProgress()
        await lanes.add(b"k", Job(TPA, record(0), new.open(0)))  # the new assignment's
        gate.set()
        await asyncio.sleep(0.05)
        return delivered, lanes.free

    delivered, free = run(scenario)
    assert delivered == [0]  # only the new assignment's record
    assert free == 4


# --------------------------------------------------------------------------- dedupe


class Table(dict):
    """The dedupe table as the stage sees it: a mapping and its last changelog write, and
    the short way of a write (`DurableTable.put_through`), by partition."""

    last_changelog: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.partitions: dict[bytes, int] = {}

    def __setitem__(self, key: bytes, value: bytes) -> None:
        super().__setitem__(key, value)
        self.last_changelog = ("write", key)

    async def put_through(self, partition: int, key: bytes, value: bytes) -> Any:
        super().__setitem__(key, value)
        self.partitions[key] = partition
        return ("put", partition, key)


def test_dedupe_marks_a_delivery_and_skips_its_repeat() -> None:
    table = Table()
    dedupe = Dedupe(table)
    assert dedupe.check(request(), now_ms=1_000) is None
    durable = asyncio.run(dedupe.mark(request(), delivered_ms=1_000, partition=3))
    assert durable == ("put", 3, b"d1")  # the write the record waits for, in its partition
    repeat = dedupe.check(request(), now_ms=2_000)
    assert repeat is not None and repeat.reason == ALREADY_DELIVERED
    assert repeat.durable is None  # nothing new written


def test_dedupe_window_skips_another_delivery_of_the_same_user_key_until_it_ends() -> None:
    table = Table()
    dedupe = Dedupe(table)
    asyncio.run(dedupe.mark(request("d1", "db-down", window=60), delivered_ms=1_000, partition=2))
    assert table[b"u:db-down"] == b"61000"
    assert table.partitions == {b"u:db-down": 2, b"d1": 2}  # both in the record's partition

    within = dedupe.check(request("d2", "db-down", window=60), now_ms=30_000)
    assert within is not None and within.reason == IN_WINDOW
    assert within.durable == ("write", b"d2")  # marked, so its redelivery is a plain repeat
    assert dedupe.check(request("d3", "db-down", window=60), now_ms=61_001) is None


# --------------------------------------------------------------------------- delivery


class Producer:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, key: bytes, value: bytes, *rest: Any) -> None:
        self.records.append((topic, key, value))


class Flaky:
    """An action's delivery side that fails `failures` times, transiently."""

    def __init__(self, failures: int, retryable: bool = True) -> None:
        self.failures = failures
        self.retryable = retryable
        self.calls = 0

    async def deliver(self, request: ActionRequest, ctx: Any, target: Any) -> dict:
        self.calls += 1
        if self.calls <= self.failures:
            raise DeliveryError(f"HTTP 503 (call {self.calls})", retryable=self.retryable)
        return {"status": 202}

    @staticmethod
    def redact(payload: dict) -> dict:
        return payload


def delivery_stage(stop: StopSignal, producer: Producer) -> tuple[Delivery, Counters]:
    fast = RetryPolicy(initialBackoffMs=1, maxBackoffMs=2, jitter=0.0)
    targets = {"t": Target(name="t", type="webhook", url="http://127.0.0.1:9/x", retry=fast)}
    counters = Counters()
    log = ExecutionLog(producer.send, "executions")
    return Delivery(targets, lambda: None, log, counters, stop), counters  # type: ignore[arg-type]


def test_delivery_retries_a_transient_failure_and_records_each_failed_attempt() -> None:
    async def scenario() -> tuple[Any, Counters, Producer]:
        producer = Producer()
        stage, counters = delivery_stage(StopSignal(), producer)
        req = request()
        req.target = "t"
        outcome = await stage.attempt(req, Flaky(failures=2))
        await stage._executions.drain(1.0)
        return outcome, counters, producer

    outcome, counters, producer = run(scenario)
    assert outcome.ok and outcome.attempts == 3 and outcome.result == {"status": 202}
    assert counters.retries == 2
    assert [b'"status":"FAILED"' in value for _, _, value in producer.records] == [True, True]


def test_delivery_fails_at_once_on_a_permanent_error() -> None:
    async def scenario() -> Any:
        stage, _ = delivery_stage(StopSignal(), Producer())
        return await stage.attempt(request(), Flaky(failures=1, retryable=False))

    outcome = run(scenario)
    assert not outcome.ok and outcome.attempts == 1
    assert "503" in str(outcome.error)


def test_a_stop_cuts_the_wait_between_attempts_short() -> None:
    async def scenario() -> None:
        stop = StopSignal()
        stage, _ = delivery_stage(stop, Producer())
        slow = RetryPolicy(initialBackoffMs=60_000, maxBackoffMs=60_000, jitter=0.0)
        stage._targets = {"t": Target(name="t", type="webhook", url="http://x/", retry=slow)}
        req = request()
        req.target = "t"
        attempt = asyncio.ensure_future(stage.attempt(req, Flaky(failures=5)))
        await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(attempt, 1.0)

    with pytest.raises(Stopping):
        run(scenario)


class _Limited:
    """A producer that refuses, as aiokafka does before sending, a record over `limit`."""

    def __init__(self, limit: int, fail: Exception | None = None, faust: bool = False) -> None:
        self.limit = limit
        self.fail = fail
        self.faust = faust
        self.records: list[bytes] = []

    async def send(self, topic: str, key: bytes, value: bytes, *rest: Any) -> None:
        if self.fail is not None:
            raise self.fail
        if len(value) > self.limit:
            error = MessageSizeTooLargeError(f"{len(value)} bytes")
            if not self.faust:
                raise error
            raise ProducerSendError(f"Error while sending: {error!r}") from error  # as Faust's
        self.records.append(value)


@pytest.mark.parametrize("faust", [False, True], ids=["aiokafka", "faust"])
def test_an_execution_record_over_the_producers_limit_is_written_without_its_payload(
    faust: bool,
) -> None:
    """The delivery it tells of already happened: refusing its record must not raise into
    the sink, which would dead-letter a delivered record as an internal error. Faust's
    producer wraps aiokafka's refusal in its ProducerSendError."""
    producer = _Limited(limit=2_000, faust=faust)
    log = ExecutionLog(producer.send, "executions")
    big = request()
    big.payload = {"text": "x" * 5_000}

    run(lambda: log.write(big, "COMPLETED", attempts=1, result={"status": 202}))
    (value,) = producer.records
    assert b'"status":"COMPLETED"' in value and b'"payload":null' in value
    assert b"payloadOmitted" in value and b"xxxx" not in value


def test_an_execution_record_the_producer_refuses_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer = _Limited(limit=10_000, fail=KafkaTimeoutError("accumulator full"))
    log = ExecutionLog(producer.send, "executions")
    run(lambda: log.write(request(), "COMPLETED", attempts=1))
    assert producer.records == []
    assert "could not write the execution record of d1" in caplog.text
