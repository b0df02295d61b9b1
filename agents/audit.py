"""`herald audit`: an independent check that nothing was committed past undone work.

It reads, with its own consumer and without joining the group, what Herald's workers left in
Kafka: the source topics and the actions topic up to the group's committed offsets, the
execution records and the dead letters. Then:

- every source record below the committed offset that the configured handlers match (the
  same pure routing the source agent runs) must have its action requests on the actions topic
  or its dead letter in the dead-letter topic; each integration's topics are read on its own
  cluster, below its own group's committed offsets;
- every action request below the actions topic's committed offset must have a final
  execution record (COMPLETED, SKIPPED or DEAD_LETTERED) or a delivery dead letter;
- every record batch that cannot be read (agents.fetchguard) below the committed offset must
  have its `fetch` dead letter: the audit reads past such a batch instead of failing.

What fails either check is lost: committed, so no worker will ever do it. A request delivered
more than once (several COMPLETED records) is a repeat. The tests run it after their churn and
crash scenarios; operators can run it against a staging deployment (exit code 1 when anything
is lost). Handlers changed at runtime (`herald rules put`) are not seen: it routes with the
configuration file's handlers. Records of AVRO integrations are not re-routed (only the
actions topic is checked for them).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents import fetchguard
from agents.fetchguard import Unreadable
from agents.sources import envelope_of
from streams.actions.base import ActionRequest
from streams.config.checked import Checked
from streams.config.models import Integration, SendingProtocol
from streams.deadletter import DeadLetter
from streams.executions import COMPLETED, DEAD_LETTERED, SKIPPED
from streams.handlers import HandlerIndex
from streams.routing import route
from streams.security import aiokafka_kwargs
from streams.topicnames import actions_name, dlq_name, executions_name

FINAL = {COMPLETED, SKIPPED, DEAD_LETTERED}


@dataclass
class AuditReport:
    """What the audit found; `lost` names each record nobody will ever act on."""

    source_records_checked: int = 0
    actions_checked: int = 0
    delivered: int = 0
    repeated: int = 0
    in_flight: int = 0  # action requests past the committed offset without a final record
    unreadable: int = 0  # record batches that could not be read (each needs its dead letter)
    lost: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.source_records_checked} source records and {self.actions_checked} actions "
            f"below the committed offsets checked; {self.delivered} delivered, "
            f"{self.repeated} repeated, {self.in_flight} still in flight, {len(self.lost)} lost"
            + (f", {self.unreadable} unreadable batch(es) read past" if self.unreadable else "")
        )

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "lost": self.lost[:100], "lostCount": len(self.lost)}


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    # The consumer's own metadata covers only the topics it was assigned: ask for all.
    cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 - no public call
    return sorted(cluster.partitions_for_topic(topic) or ())


async def _read(
    consumer: AIOKafkaConsumer,
    topic: str,
    reports: collections.deque[tuple[Any, Unreadable]],
    upto: dict[int, int] | None = None,
    unreadable: list[Unreadable] | None = None,
) -> AsyncIterator[Any]:
    """Every record of `topic` from the beginning (up to `upto[partition]` when given), until
    the topic is quiet for two seconds. Not bounded by the end offsets: a broker whose high
    watermark lags its writes (tansu) would cut the read short. Batches that cannot be read
    are read past (`reports`: the consumer's FetchGuard), and listed in `unreadable`."""
    partitions = await _partitions(consumer, topic)
    if upto is not None:
        partitions = [p for p in partitions if upto.get(p, 0) > 0]
    todo = {TopicPartition(topic, p) for p in partitions}
    if not todo:
        return
    consumer.assign(sorted(todo))
    await consumer.seek_to_beginning(*todo)
    quiet = 0
    while todo and quiet < 2:
        fetched = await consumer.getmany(*todo, timeout_ms=1000)
        quiet = 0 if fetched or reports else quiet + 1
        while reports:
            tp, found = reports.popleft()
            if tp in todo and (upto is None or found.offset < upto[tp.partition]):
                if unreadable is not None:
                    unreadable.append(found)
                consumer.seek(tp, found.skip_to)
        for tp, records in fetched.items():
            limit = None if upto is None else upto[tp.partition]
            for record in records:
                if limit is not None and record.offset >= limit:
                    todo.discard(tp)
                    break
                yield record
            if limit is not None and records and records[-1].offset + 1 >= limit:
                todo.discard(tp)


async def _guarded_consumer(
    integration: Integration,
) -> tuple[AIOKafkaConsumer, collections.deque[tuple[Any, Unreadable]]]:
    """A started consumer of the integration's group (it never joins: it reads the group's
    commits and assigns partitions itself), reading past unreadable batches."""
    consumer = AIOKafkaConsumer(
        group_id=integration.consumerGroupId,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **aiokafka_kwargs(integration),
    )
    await consumer.start()
    reports: collections.deque[tuple[Any, Unreadable]] = collections.deque()
    fetchguard.install(consumer, reports)
    return consumer, reports


async def _committed(consumer: AIOKafkaConsumer, topic: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for partition in await _partitions(consumer, topic):
        offset = await consumer.committed(TopicPartition(topic, partition))
        out[partition] = offset if offset is not None and offset > 0 else 0
    return out


async def audit(checked: Checked) -> AuditReport:
    """Check the deployment a checked configuration describes (see the module doc), with
    the handlers as it compiled them: every integration a handler consumes, on its cluster."""
    config = checked.config
    home = config.home
    index = HandlerIndex(list(checked.handlers))
    report = AuditReport()
    consumer, reports = await _guarded_consumer(home)
    try:
        requested: dict[str, int] = collections.Counter()
        async for record in _read(consumer, actions_name(config), reports):
            requested[ActionRequest.from_bytes(record.value).id] += 1
        letters_by_request: set[str] = set()
        # (integration, topic, partition, offset) of every dead letter's source record.
        letters_by_source: set[tuple[str, str, int, int]] = set()
        for integration in config.integrations:
            async for record in _read(consumer, dlq_name(config, integration.name), reports):
                letter = DeadLetter.from_bytes(record.value)
                if letter.request:
                    letters_by_request.add(letter.request["id"])
                source = letter.source
                letters_by_source.add(
                    (letter.integration, source["topic"], source["partition"], source["offset"])
                )
        final: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        async for record in _read(consumer, executions_name(config), reports):
            execution = orjson.loads(record.value)
            final[execution["id"]][execution["status"]] += 1

        # Each integration's source topics, read on its own cluster below its own group's
        # committed offsets (the home one with this consumer).
        checks = Sources(index, requested, letters_by_source, report)
        for name in sorted({name for name, _ in index.topics()}):
            integration = config.integration(name)
            if integration.sendingProtocol is SendingProtocol.AVRO:
                continue
            if name == home.name:
                await checks.check(consumer, reports, name)
                continue
            other, other_reports = await _guarded_consumer(integration)
            try:
                await checks.check(other, other_reports, name)
            finally:
                await other.stop()

        actions = actions_name(config)
        committed = await _committed(consumer, actions)
        below: set[str] = set()
        async for record in _read(consumer, actions, reports, committed):
            request = ActionRequest.from_bytes(record.value)
            report.actions_checked += 1
            below.add(request.id)
            statuses = final.get(request.id, {})
            if not FINAL & set(statuses) and request.id not in letters_by_request:
                report.lost.append(
                    f"{actions}/{record.partition}@{record.offset}: action {request.id} "
                    f"({request.handler}, from {request.source.get('messageId')}) committed "
                    "without a final execution record"
                )
        for statuses in final.values():
            completed = statuses.get(COMPLETED, 0)
            report.delivered += 1 if completed else 0
            report.repeated += max(completed - 1, 0)
        report.in_flight = sum(
            1 for rid in requested if rid not in below and not FINAL & set(final.get(rid, {}))
        )
    finally:
        await consumer.stop()
    return report


@dataclass
class Sources:
    """The check of source topics: every record below its group's committed offset that the
    handlers match must have its action requests, or its dead letter, written."""

    index: HandlerIndex
    requested: dict[str, int]
    letters_by_source: set[tuple[str, str, int, int]]
    report: AuditReport

    async def check(
        self,
        consumer: AIOKafkaConsumer,
        reports: collections.deque[tuple[Any, Unreadable]],
        integration: str,
    ) -> None:
        index, report, letters = self.index, self.report, self.letters_by_source
        for topic in sorted(topic for name, topic in index.topics() if name == integration):
            committed = await _committed(consumer, topic)
            unreadable: list[Unreadable] = []
            async for record in _read(consumer, topic, reports, committed, unreadable):
                report.source_records_checked += 1
                envelope = envelope_of(record, integration)
                evaluation = route(index.for_topic(integration, topic), envelope)
                at = f"{integration}:{topic}/{record.partition}@{record.offset}"
                for request in evaluation.requests:
                    if request.id not in self.requested:
                        report.lost.append(
                            f"{at}: action {request.handler}[{request.index}] never requested"
                        )
                key = (integration, topic, record.partition, record.offset)
                if evaluation.dead_letters and key not in letters:
                    report.lost.append(f"{at}: dead letter missing")
            report.unreadable += len(unreadable)
            for found in unreadable:
                if (integration, topic, found.partition, found.offset) not in letters:
                    report.lost.append(
                        f"{integration}: {found.describe()}: committed past without a fetch "
                        "dead letter"
                    )


def run(checked: Checked, as_json: bool) -> int:
    """`herald audit`: print the report; exit code 1 when anything is lost."""
    report = asyncio.run(audit(checked))
    if as_json:
        print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"herald audit: {report.summary()}")
        for line in report.lost[:50]:
            print(f"  lost: {line}")
        if len(report.lost) > 50:
            print(f"  ... and {len(report.lost) - 50} more")
    return 1 if report.lost else 0
