"""The source agent's batch work without a broker: a batch is finished only once every record
it produced is acknowledged, a failed produce is sent again, a record the broker refuses as
too large becomes a dead letter (agents.sources), and a condition that crashes or stalls its
evaluator process dead-letters its own record and no other (agents.evaluator_process).

The runner is given a real configuration and compiled handlers, a real evaluator process, and
a producer stand-in whose acknowledgements the test resolves.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import orjson
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from faust.types import TP

from agents.batches import Batch
from agents.counters import Counters
from agents.evaluator_process import EvaluatorProcess
from agents.sources import SourceRunner
from streams.config.checked import load_checked
from streams.handlers import HandlerIndex
from streams.offsets import PartitionProgress

CONFIG = """\
integrations:
  - {name: home, bootstrapServers: "127.0.0.1:9"}
targets:
  - {name: hook, type: webhook, url: "http://127.0.0.1:9/hook"}
eventHandlers:
  - name: alarms
    event: kafka:home:src
    active: true
    condition: "$.type == 'ALARM'"
    actions: [{action: webhook, webhook: {target: hook, body: {id: "${id}"}}}]
"""
SRC = TP("src", 0)


class Producer:
    """Faust's producer `send` as the runner calls it; each send's acknowledgement is a
    future the test resolves (or fails)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, asyncio.Future]] = []
        self.alone: list[int] = []  # which of `sent` went in a batch of their own

    async def send(self, topic: str, key: Any, value: bytes, *rest: Any) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.sent.append((topic, key, value, fut))
        return fut

    async def send_alone(self, topic: str, key: Any, value: bytes, *rest: Any) -> asyncio.Future:
        self.alone.append(len(self.sent))
        return await self.send(topic, key, value, *rest)


def runner(tmp_path: Path, producer: Producer, config: str = CONFIG) -> SourceRunner:
    path = tmp_path / "herald.yaml"
    path.write_text(config)
    checked = load_checked(path)
    index = HandlerIndex(list(checked.handlers))
    topics = SimpleNamespace(
        actions=SimpleNamespace(get_topic_name=lambda: "herald-actions"),
        dlq=lambda name: SimpleNamespace(get_topic_name=lambda: f"{name}-dlq"),
    )
    runtime = SimpleNamespace(
        config=checked.config,
        home="home",
        topics=topics,
        app=SimpleNamespace(
            producer=producer, conf=SimpleNamespace(producer_max_request_size=1 << 20)
        ),
        rules=SimpleNamespace(index=lambda: index),
        codecs=SimpleNamespace(for_records=lambda name: None),
        counters=Counters(),
        evaluator=EvaluatorProcess(),
    )
    EVALUATORS.append(runtime.evaluator)
    return SourceRunner(runtime, channel=None)  # type: ignore[arg-type]


EVALUATORS: list[EvaluatorProcess] = []
T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    """`asyncio.run(scenario())`, ending the evaluator processes the runners started."""

    async def main() -> T:
        try:
            return await scenario()
        finally:
            while EVALUATORS:
                await EVALUATORS.pop().close()

    return asyncio.run(main())


def rec(offset: int, value: dict) -> SimpleNamespace:
    return SimpleNamespace(
        topic="src",
        partition=0,
        offset=offset,
        key=b"k",
        value=orjson.dumps(value),
        headers=[],
        timestamp=1_700_000_000_000,
    )


def test_a_batch_is_finished_only_when_every_produced_record_is_acknowledged(
    tmp_path: Path,
) -> None:
    async def scenario() -> list[int | None]:
        producer = Producer()
        source = runner(tmp_path, producer)
        progress = PartitionProgress()
        progress.anchor(0)
        records = [
            rec(0, {"type": "ALARM", "id": 1}),
            rec(1, {"type": "OK"}),
            rec(2, {"type": "ALARM", "id": 2}),
        ]
        await source.process(Batch(SRC, records, progress.open(2)))
        seen = [progress.committable]
        assert [topic for topic, *_ in producer.sent] == ["herald-actions", "herald-actions"]
        producer.sent[1][3].set_result(None)
        await asyncio.sleep(0.01)
        seen.append(progress.committable)
        producer.sent[0][3].set_result(None)
        await asyncio.sleep(0.01)
        seen.append(progress.committable)
        return seen

    assert run(scenario) == [None, None, 3]


def test_a_failed_produce_is_sent_again_and_the_batch_waits_for_it(tmp_path: Path) -> None:
    async def scenario() -> tuple[int | None, int | None, int]:
        producer = Producer()
        source = runner(tmp_path, producer)
        progress = PartitionProgress()
        progress.anchor(0)
        await source.process(Batch(SRC, [rec(0, {"type": "ALARM", "id": 1})], progress.open(0)))
        producer.sent[0][3].set_exception(KafkaTimeoutError())
        await asyncio.sleep(0.7)  # the first resend waits 0.5 s
        while_failing = progress.committable
        assert len(producer.sent) == 2 and producer.sent[1][2] == producer.sent[0][2]
        producer.sent[1][3].set_result(None)
        await asyncio.sleep(0.05)
        return while_failing, progress.committable, len(producer.sent)

    while_failing, after, sends = run(scenario)
    assert while_failing is None
    assert after == 1
    assert sends == 2


def test_a_record_refused_as_too_large_becomes_a_dead_letter(tmp_path: Path) -> None:
    """Refused in its batch, then refused again alone: the record itself is too large."""

    async def scenario() -> tuple[list[str], list[int], dict, int | None, Counters]:
        producer = Producer()
        source = runner(tmp_path, producer)
        progress = PartitionProgress()
        progress.anchor(0)
        await source.process(Batch(SRC, [rec(0, {"type": "ALARM", "id": 1})], progress.open(0)))
        producer.sent[0][3].set_exception(MessageSizeTooLargeError())
        await asyncio.sleep(0.05)
        producer.sent[1][3].set_exception(MessageSizeTooLargeError())
        await asyncio.sleep(0.05)
        producer.sent[2][3].set_result(None)
        await asyncio.sleep(0.05)
        letter = orjson.loads(producer.sent[2][2])
        topics = [t for t, *_ in producer.sent]
        return topics, producer.alone, letter, progress.committable, source.runtime.counters

    topics, alone, letter, committable, counters = run(scenario)
    assert topics == ["herald-actions", "herald-actions", "home-dlq"]
    assert alone == [1]
    assert letter["stage"] == "size" and "refused" in letter["reason"]
    assert letter["source"]["offset"] == 0
    assert committable == 1
    assert counters.dead_lettered == 1


def test_records_refused_with_a_batch_are_written_alone_not_dead_lettered(
    tmp_path: Path,
) -> None:
    """The broker refuses a batch as a whole when one record in it is over a limit lowered
    at runtime: each record of it is sent again in a batch of its own, and one the broker
    takes that way is written, not dead-lettered."""

    async def scenario() -> tuple[list[str], list[int], int | None, Counters]:
        producer = Producer()
        source = runner(tmp_path, producer)
        progress = PartitionProgress()
        progress.anchor(0)
        records = [rec(n, {"type": "ALARM", "id": n}) for n in range(3)]
        await source.process(Batch(SRC, records, progress.open(2)))
        for _topic, _key, _value, fut in producer.sent:
            fut.set_exception(MessageSizeTooLargeError())
        for n in range(3):
            await asyncio.sleep(0.05)
            producer.sent[3 + n][3].set_result(None)
        await asyncio.sleep(0.05)
        topics = [t for t, *_ in producer.sent]
        return topics, producer.alone, progress.committable, source.runtime.counters

    topics, alone, committable, counters = run(scenario)
    assert topics == ["herald-actions"] * 6
    assert alone == [3, 4, 5]
    assert committable == 3
    assert counters.dead_lettered == 0


def test_a_revoked_batch_is_left_to_the_partitions_next_owner(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int]:
        producer = Producer()
        source = runner(tmp_path, producer)
        progress = PartitionProgress()
        progress.anchor(0)
        ticket = progress.open(0)
        progress.revoke()
        await source.process(Batch(SRC, [rec(0, {"type": "ALARM", "id": 1})], ticket))
        return len(producer.sent), source.runtime.counters.consumed

    assert run(scenario) == (0, 0)


HOSTILE = (
    CONFIG
    + """\
  - name: hostile
    event: kafka:home:src
    active: true
    condition: >-
      $.stall ? /^(a+)+$/.test($.stall)
      : $.oom ? (function () { var a = []; for (;;) a.push(new Array(100).fill(1)); })()
      : false
    actions: [{action: webhook, webhook: {target: hook, body: {id: "${id}"}}}]
herald: {conditionMemoryLimitMb: 1, conditionTimeLimitMs: 100}
"""
)
#: What QuickJS does with the out-of-memory pattern depends on its heap: at some limits it
#: crashes on its out-of-memory path (a use-after-free, SIGSEGV), at others it reports the limit.
OOM_REASONS = ("crashed the condition evaluator (signal SIGSEGV)", "exceeded its memory limit")


async def crash_when_evaluating(evaluator: EvaluatorProcess, label: str) -> None:
    """Send the evaluator process SIGSEGV once it is evaluating `label` (a regular expression
    that backtracks for hours, so it is still at it): a crash, at a moment the test knows."""
    while evaluator.evaluating() != label:
        await asyncio.sleep(0.01)
    assert evaluator.pid is not None
    os.kill(evaluator.pid, signal.SIGSEGV)


def test_a_condition_that_crashes_or_stalls_its_evaluator_dead_letters_only_its_record(
    tmp_path: Path,
) -> None:
    """A crash during one evaluation, a stall past the deadline and the out-of-memory pattern
    each become their record's `condition` dead letter; the other records and handlers are
    evaluated as usual (the ones after the crash in a fresh process), and the batch finishes."""

    async def scenario() -> tuple[list[tuple[str, Any]], int | None, EvaluatorProcess]:
        producer = Producer()
        source = runner(tmp_path, producer, HOSTILE)
        evaluator = source.runtime.evaluator
        progress = PartitionProgress()
        progress.anchor(0)
        backtracking = "a" * 40 + "b"
        records = [
            rec(0, {"type": "ALARM", "id": 1}),
            rec(1, {"type": "ALARM", "id": 2, "stall": backtracking}),  # crashed by the test
            rec(2, {"type": "ALARM", "id": 3}),
            rec(3, {"type": "OK", "stall": backtracking}),  # stopped by the deadline
            rec(4, {"type": "ALARM", "id": 4, "oom": True}),
        ]
        crash = asyncio.ensure_future(
            crash_when_evaluating(evaluator, "handler 'hostile' on src/0@1")
        )
        await source.process(Batch(SRC, records, progress.open(4)))
        await crash
        for *_, fut in producer.sent:
            fut.set_result(None)
        await asyncio.sleep(0.01)
        sent = [(topic, orjson.loads(value)) for topic, _, value, _ in producer.sent]
        return sent, progress.committable, evaluator

    sent, committable, evaluator = run(scenario)
    actions = sorted(v["payload"]["body"]["id"] for t, v in sent if t == "herald-actions")
    letters = {v["source"]["offset"]: v for t, v in sent if t == "home-dlq"}
    assert actions == [1, 2, 3, 4]  # `alarms` matched every ALARM, the hostile ones too
    assert sorted(letters) == [1, 3, 4]
    assert {v["stage"] for v in letters.values()} == {"condition"}
    assert {v["handler"] for v in letters.values()} == {"hostile"}
    assert "crashed the condition evaluator (signal SIGSEGV)" in letters[1]["reason"]
    assert "ran past its 2 s deadline" in letters[3]["reason"]
    assert any(reason in letters[4]["reason"] for reason in OOM_REASONS), letters[4]["reason"]
    assert committable == 5
    assert evaluator.crashes >= 2 and evaluator.started == evaluator.crashes + 1
