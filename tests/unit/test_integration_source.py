"""The consumer of a non-home integration (agents.integration_source) without a broker: a fake
aiokafka consumer stands in for the cluster, so what is committed where, and when, can be
seen exactly. The source runner is not run: tests finish tickets themselves, as its produce
acknowledgements would."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from agents import integration_source
from agents.integration_source import IntegrationSource
from streams.config.models import HeraldConfig

TPA = TopicPartition("orders", 0)


class FakeConsumer:
    """What IntegrationSource uses of AIOKafkaConsumer, with a scripted log."""

    instances: list[FakeConsumer] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.started = self.stopped = False
        self.listener: Any = None
        self.topics_subscribed: list[str] = []
        self.assigned: set[TopicPartition] = set()
        self.committed_offsets: dict[TopicPartition, int] = {TPA: 5}
        self.commits: list[dict[TopicPartition, int]] = []
        self.positions: dict[TopicPartition, int] = {}
        self.log: list[Any] = []  # records to hand out
        FakeConsumer.instances.append(self)

    async def start(self) -> None:
        self.started = True
        self._fetcher = SimpleNamespace(_records={})

    async def stop(self) -> None:
        self.stopped = True

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.topics_subscribed, self.listener = topics, listener

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offsets.get(tp)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 0 for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def getmany(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(0)
        out = {}
        for tp in self.assigned:
            records = [r for r in self.log if r.offset >= self.positions.get(tp, 0)]
            if records:
                out[tp] = records
                self.positions[tp] = records[-1].offset + 1
        return out

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.log) + 5 for tp in tps}

    async def topics(self) -> set[str]:
        return set()

    def pause(self, *tps: Any) -> None: ...
    def resume(self, *tps: Any) -> None: ...


def rec(offset: int) -> SimpleNamespace:
    return SimpleNamespace(
        topic="orders", partition=0, offset=offset, key=b"k", value=b"{}", headers=(), timestamp=0
    )


@pytest.fixture
def source(monkeypatch: pytest.MonkeyPatch) -> IntegrationSource:
    FakeConsumer.instances.clear()
    monkeypatch.setattr(integration_source, "AIOKafkaConsumer", FakeConsumer)
    monkeypatch.setattr(integration_source.fetchguard, "install", lambda c, r: None)
    config = HeraldConfig.model_validate(
        {
            "herald": {"commitIntervalSeconds": 0.01},
            "integrations": [
                {"name": "home", "bootstrapServers": "home:9092"},
                {"name": "cloud", "bootstrapServers": "cloud:9092", "consumerGroupId": "g"},
            ],
        }
    )
    ready = asyncio.Event()
    ready.set()
    runtime: Any = SimpleNamespace(
        config=config,
        home="home",
        rules=SimpleNamespace(ready=ready),
        topics=SimpleNamespace(actions=SimpleNamespace(get_topic_name=lambda: "h-actions")),
        app=SimpleNamespace(conf=SimpleNamespace(producer_max_request_size=1_048_576)),
    )
    wanted = {"topics": {"orders"}}
    made = IntegrationSource(runtime, config.integration("cloud"), lambda: wanted["topics"])
    made.wanted = wanted  # type: ignore[attr-defined] # the test changes the handlers
    return made


async def turn(source: IntegrationSource, times: int = 3) -> None:
    for _ in range(times):
        await asyncio.sleep(0.03)


def test_commits_on_its_cluster_only_what_is_done_and_at_revocation(
    source: IntegrationSource,
) -> None:
    asyncio.run(_commits(source))


async def _commits(src: IntegrationSource) -> None:
    loop_task = asyncio.ensure_future(src.run())
    await turn(src)
    consumer = FakeConsumer.instances[0]
    assert consumer.kwargs["group_id"] == "g" and consumer.topics_subscribed == ["orders"]
    consumer.assigned = {TPA}
    await consumer.listener.on_partitions_assigned({TPA})
    consumer.log = [rec(3), rec(4), rec(5), rec(6), rec(7)]  # 3 and 4 were committed
    await turn(src)
    batch = await asyncio.wait_for(src.channel.get(), 1)
    assert [r.offset for r in batch.records] == [5, 6, 7]  # anchored at the committed 5
    assert consumer.commits == []  # nothing done yet: nothing committed
    batch.ticket.done()
    await turn(src)
    assert consumer.commits[-1] == {TPA: 8}
    consumer.log.append(rec(8))
    await turn(src)
    second = await asyncio.wait_for(src.channel.get(), 1)
    await consumer.listener.on_partitions_revoked({TPA})  # not done: not committed
    second.ticket.done()
    assert consumer.commits[-1] == {TPA: 8}
    assert second.ticket.stale
    src.wanted["topics"] = set()  # the last handler went: the consumer leaves
    await turn(src, 50)
    assert consumer.stopped and src.state == "idle"
    loop_task.cancel()
