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
    """Faust's producer `send` as the execution log calls it: every record acknowledged."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, key: bytes, value: bytes, *rest: Any) -> asyncio.Future:
        self.records.append((topic, key, value))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    send_alone = send


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
    log = ExecutionLog(producer, "executions", stop)
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
    """A producer that refuses a record over `limit`: before sending, as aiokafka's own check
    does (raised by `send`; Faust's producer wraps it in ProducerSendError), or on the
    acknowledgement, as the broker does for a batch over its max.message.bytes; a record sent
    alone is refused only when it is itself over the limit. `fail` fails the first
    `fail_times` acknowledgements."""

    def __init__(
        self,
        limit: int,
        *,
        broker: bool = False,
        faust: bool = False,
        fail: Exception | None = None,
        fail_times: int = 0,
        batch_refused: bool = False,
    ) -> None:
        self.limit = limit
        self.broker = broker
        self.faust = faust
        self.fail = fail
        self.fail_times = fail_times
        self.batch_refused = batch_refused  # a batch refused for another record in it
        self.records: list[bytes] = []
        self.calls: list[str] = []

    async def send(self, topic: str, key: bytes, value: bytes, *rest: Any) -> asyncio.Future:
        return self._send("send", value)

    async def send_alone(self, topic: str, key: bytes, value: bytes, *rest: Any) -> asyncio.Future:
        return self._send("alone", value)

    def _send(self, how: str, value: bytes) -> asyncio.Future:
        self.calls.append(how)
        fut = asyncio.get_running_loop().create_future()
        error: Exception | None = None
        if self.fail is not None and self.fail_times > 0:
            self.fail_times -= 1
            error = self.fail
        elif len(value) > self.limit or (self.batch_refused and how == "send"):
            error = MessageSizeTooLargeError(f"{len(value)} bytes")
            if not self.broker:
                if self.faust:
                    raise ProducerSendError(f"Error while sending: {error!r}") from error
                raise error
        if error is not None:
            fut.set_exception(error)
        else:
            self.records.append(value)
            fut.set_result(None)
        return fut


async def written(log: ExecutionLog, req: ActionRequest, status: str, **fields: Any) -> bool:
    """Write a record and wait (briefly) for it to be in Kafka; whether it is."""
    fut = await log.write(req, status, **fields)
    assert fut is not None
    done, _ = await asyncio.wait([fut], timeout=5)
    return bool(done) and fut.exception() is None


@pytest.mark.parametrize(
    ("broker", "faust"),
    [(False, False), (False, True), (True, False)],
    ids=["aiokafka", "faust", "broker"],
)
def test_an_execution_record_over_the_limit_is_written_without_its_payload(
    broker: bool, faust: bool
) -> None:
    """The delivery it tells of already happened: refusing its record must not raise into
    the sink, which would dead-letter a delivered record as an internal error. The refusal
    comes from the client's own check (Faust's producer wraps aiokafka's in its
    ProducerSendError) or from the broker; the record counts as written once it is."""
    producer = _Limited(limit=2_000, broker=broker, faust=faust)
    log = ExecutionLog(producer, "executions")
    big = request()
    big.payload = {"text": "x" * 5_000}

    assert run(lambda: written(log, big, "COMPLETED", attempts=1, result={"status": 202}))
    (value,) = producer.records
    assert b'"status":"COMPLETED"' in value and b'"payload":null' in value
    assert b"payloadOmitted" in value and b"xxxx" not in value


def test_an_execution_record_refused_with_its_batch_is_written_alone_with_its_payload() -> None:
    """The broker refused the batch for another record in it: alone, the record is taken."""
    producer = _Limited(limit=10_000, broker=True, batch_refused=True)
    log = ExecutionLog(producer, "executions")
    req = request()
    req.payload = {"text": "small"}
    assert run(lambda: written(log, req, "COMPLETED", attempts=1))
    assert producer.calls == ["send", "alone"]
    assert b"small" in producer.records[0]


def test_an_execution_record_the_broker_fails_is_written_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failure after the client's own retries (the broker away): logged, written again
    with backoff; the sink's record waits for it (the offset is not committed meanwhile)."""
    producer = _Limited(limit=10_000, broker=True, fail=KafkaTimeoutError("away"), fail_times=1)
    log = ExecutionLog(producer, "executions")
    assert run(lambda: written(log, request(), "COMPLETED", attempts=1))
    assert len(producer.records) == 1 and producer.calls == ["send", "send"]
    assert "could not write the execution record of d1" in caplog.text


def test_a_stop_leaves_an_unwritten_execution_record_pending() -> None:
    """Stopping while the broker is away: the record is not written, and its sink record
    stays unfinished (uncommitted), so the partition's next owner writes one."""

    async def scenario() -> tuple[bool, list[str]]:
        stop = StopSignal()
        away = KafkaTimeoutError("away")
        producer = _Limited(limit=10_000, broker=True, fail=away, fail_times=9)
        log = ExecutionLog(producer, "executions", stop)
        fut = await log.write(request(), "COMPLETED", attempts=1)
        assert fut is not None
        await asyncio.sleep(0.05)
        stop.set()
        await log.drain(1.0)
        return fut.done(), producer.calls

    done, calls = run(scenario)
    assert not done and calls == ["send"]
