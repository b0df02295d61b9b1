"""Source topics follow the handlers (agents.subscriptions): a handler put at runtime on a
topic no worker consumes is consumed by every worker of the group within seconds, without a
restart or extraSourceTopics; removing the last handler of a topic stops consuming it and
keeps its committed offset. Real broker, two real workers, a real receiver."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from agents.cli import main as herald
from agents.embedded.broker import create_topics, run_sync
from agents.embedded.receiver import Receiver
from tests.support.herald import deploy, put_rule, wait_until, webhook_target
from tests.support.kafka import produce


def assignment(worker: Any) -> dict[str, list[int]]:
    try:
        with urllib.request.urlopen(f"{worker.web_url}/ready", timeout=5) as response:
            return json.loads(response.read())["assignment"]
    except urllib.error.HTTPError as exc:  # 503 while not ready: the body says the same
        return json.loads(exc.read())["assignment"]


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The offsets `group` committed on each partition of `topic` (0 where none)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read() -> list[int]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            out = []
            for p in range(partitions):
                offset = await consumer.committed(TopicPartition(topic, p))
                out.append(offset if offset is not None and offset > 0 else 0)
            return out
        finally:
            await consumer.stop()

    return run_sync(read)


def handler(name: str, topic: str) -> dict[str, Any]:
    return {
        "name": name,
        "event": f"kafka:local:{topic}",
        "active": True,
        "condition": "true",
        "actions": [
            {"action": "webhook", "webhook": {"url": name, "body": {"n": "${n}", "t": topic}}}
        ],
    }


def test_a_handler_put_at_runtime_on_a_new_topic_is_consumed_by_the_group_and_dropped_again(
    broker: Any, receiver: Receiver, unique_topic, tmp_path, deployments
) -> None:
    first, later = unique_topic("first"), unique_topic("later")
    herald_ = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[handler("first", first)],
        targets=[webhook_target(receiver.url)],
        extra_topics={later: 4},
    )
    workers = [herald_.start_worker(), herald_.start_worker()]
    wait_until(
        lambda: all(first in assignment(w) for w in workers) or None,
        60,
        "both workers sharing the first topic",
    )
    put_rule(herald_, tmp_path, handler("later", later))

    # Every worker subscribes; the group's partitions of the new topic are all assigned.
    for worker in workers:
        worker.wait_for_log(rf"source topics changed with the handlers: added {later}", 30)
    wait_until(
        lambda: sorted(p for w in workers for p in assignment(w).get(later, [])) == [0, 1, 2, 3],
        60,
        f"the group consuming all of {later}",
    )
    produce(broker.bootstrap, later, [{"key": f"k{n}", "value": {"n": n}} for n in range(20)])
    wait_until(
        lambda: len({r.json["n"] for r in receiver.requests if r.path == "/hooks/later"}) == 20,
        60,
        "the 20 events of the new topic delivered",
    )
    assert all(w.running for w in workers)

    # The last handler of the topic goes: it is dropped by every worker, its offsets kept.
    assert herald(["rules", "--config", str(herald_.config_path), "delete", "later"]) == 0
    for worker in workers:
        worker.wait_for_log(rf"added none, removed {later}", 30)
    wait_until(
        lambda: not any(later in assignment(w) for w in workers),
        60,
        f"the group no longer consuming {later}",
    )
    kept = committed(broker.bootstrap, herald_.group, later, 4)
    produce(broker.bootstrap, later, [{"key": "after", "value": {"n": 99}}])
    produce(broker.bootstrap, first, [{"key": "still", "value": {"n": 100}}])
    wait_until(
        lambda: any(r.path == "/hooks/first" for r in receiver.requests),
        60,
        "the remaining handler still delivering",
    )
    time.sleep(3)  # time the dropped topic would need to be delivered if it were consumed
    assert not any(r.json["n"] == 99 for r in receiver.requests)
    assert sum(kept) == 20  # every delivered record committed, and that commit kept
    assert committed(broker.bootstrap, herald_.group, later, 4) == kept


def test_a_handler_on_a_topic_created_after_it_is_consumed_once_the_topic_exists(
    broker: Any, receiver: Receiver, unique_topic, tmp_path, deployments
) -> None:
    first, ghost = unique_topic("first"), unique_topic("ghost")
    herald_ = deploy(
        deployments,
        tmp_path,
        broker,
        handlers=[handler("first", first)],
        targets=[webhook_target(receiver.url)],
    )
    worker = herald_.start_worker()
    put_rule(herald_, tmp_path, handler("ghost", ghost))
    worker.wait_for_log(rf"source topics changed with the handlers: added {ghost}", 30)
    time.sleep(2)  # subscribed while the topic does not exist yet

    create_topics(broker.bootstrap, {ghost: 2})
    produce(broker.bootstrap, ghost, [{"key": f"k{n}", "value": {"n": n}} for n in range(5)])
    wait_until(
        lambda: len({r.json["n"] for r in receiver.requests if r.path == "/hooks/ghost"}) == 5,
        90,
        "the events of the topic created after its handler delivered",
    )
    assert worker.running
