"""Faults only a real broker can have: the broker crashing, a partition leader failing over,
and producers that are idempotent (issue 11).

tansu keeps everything in memory (a stopped tansu loses every topic) and is one node, so a
broker crash that keeps the log, a leader election and producer ids cannot be tested on it.
Each test here starts its own Apache Kafka (tests/support/apache_kafka.py), never the
session's shared broker, because it kills it. Skipped, with the reason, where Java or Maven
is missing.

What is checked after each fault is what README "Delivery guarantees" promises: the workers
ride it out without exiting, nothing is lost (every event delivered, and `herald audit` finds
nothing committed that was not done), repeats are bounded by what was in flight, and each
key's deliveries keep their order apart from a repeat sent in place.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from agents.embedded.broker import create_topics, run_sync
from agents.embedded.receiver import Delay, Receiver, Reply
from agents.embedded.worker import WorkerProcess
from tests.integration.test_guarantees import (
    assert_each_key_in_order,
    messages,
    numbered_handler,
    tally,
)
from tests.support.apache_kafka import KafkaCluster, KafkaNode, unavailable_reason
from tests.support.detector import audit_deployment
from tests.support.herald import HeraldDeployment, stats, webhook_target
from tests.support.kafka import produce
from tests.support.rawbatch import stored_batches

_REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(
    _REASON is not None, reason=f"real Apache Kafka cannot run here: {_REASON}"
)

MAX_IN_FLIGHT = 16
WORKERS = 2
#: What Faust logs when a service crashes; the worker then stops (and exits).
CRASH_LINE = "We experienced a crash"
#: Herald's settings for these tests (on Kafka, Faust's recovery check stays on, its default;
#: HeraldDeployment adds tansu's own settings on the session tansu).
SETTINGS: dict[str, Any] = {"actionPartitions": 4, "maxInFlight": MAX_IN_FLIGHT}


# --------------------------------------------------------------------------- brokers


@pytest.fixture(autouse=True)
def _quiet_test_clients() -> Iterator[None]:
    """The test's own clients (the stream producer, leader lookups) log every refused
    connection to a dead broker, thousands of lines that bury a failure; what matters is in
    the workers' logs, which failure messages quote."""
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        client_log.setLevel(level)


@pytest.fixture
def kafka_node(tmp_path: Path) -> Iterator[KafkaNode]:
    """A Kafka node of the test's own (it gets killed), PLAINTEXT only, no auto-created
    topics: Herald must create every topic it writes, also after a crash."""
    node = KafkaNode(tmp_path / "kafka", listeners=("PLAINTEXT",), auto_create_topics=False)
    node.start()
    try:
        yield node
    finally:
        node.kill()  # its data is thrown away with tmp_path: no controlled shutdown needed


@pytest.fixture
def kafka_cluster(tmp_path: Path) -> Iterator[KafkaCluster]:
    """Three nodes of the test's own: replication 3, min.insync.replicas 2."""
    cluster = KafkaCluster(tmp_path / "cluster", auto_create_topics=False)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.kill_all()


# --------------------------------------------------------------------------- helpers


class StreamProducer(threading.Thread):
    """Produce `events` evenly over `seconds` from a thread with its own event loop, through
    one idempotent producer that outlives broker faults.

    One producer with a long delivery timeout, not a producer per chunk: a chunk sent again
    after a failure would duplicate events in the source topic, and those would count as
    Herald's repeats. Idempotence keeps the producer's own retries from duplicating or
    reordering a key's events across a crash or a leader change.
    """

    def __init__(self, bootstrap: str, topic: str, events: list[dict], seconds: float) -> None:
        super().__init__(daemon=True, name=f"stream-{topic}")
        self.bootstrap = bootstrap
        self.topic = topic
        self.events = events
        self.seconds = seconds
        self.sent = 0  # sends handed to the producer (acknowledged or not yet)
        self.acked: set[int] = set()
        self.errors: list[str] = []

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=180_000,  # aiokafka's delivery timeout too: outlive the fault
        )
        await producer.start()
        try:
            chunk = 25
            pause = self.seconds / (len(self.events) / chunk)
            futures: list[tuple[int, asyncio.Future]] = []
            for start in range(0, len(self.events), chunk):
                for event in self.events[start : start + chunk]:
                    fut = await producer.send(
                        self.topic,
                        value=orjson.dumps(event["value"]),
                        key=event["key"].encode(),
                    )
                    futures.append((event["value"]["n"], fut))
                    self.sent += 1
                await asyncio.sleep(pause)
            for n, fut in futures:
                try:
                    await fut
                    self.acked.add(n)
                except Exception as exc:
                    self.errors.append(f"{n}: {exc!r}")
        finally:
            await producer.stop()


class Watchdog(threading.Thread):
    """Notes every worker that stops running while the test goes on (a crash, an exit)."""

    def __init__(self, workers: list[WorkerProcess]) -> None:
        super().__init__(daemon=True, name="watchdog")
        self.workers = workers
        self.exits: dict[int, int | None] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.2):
            for index, worker in enumerate(self.workers):
                if index not in self.exits and not worker.running:
                    self.exits[index] = worker.returncode

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.2)


def delivered_ns(receiver: Receiver) -> set[int]:
    return {r.json["n"] for r in receiver.requests if r.status == 202}


def wait_each_delivered(receiver: Receiver, expected: set[int], timeout: float) -> set[int]:
    """Until every `n` of `expected` was answered 202, or `timeout`: the missing ones."""
    deadline = time.monotonic() + timeout
    while True:
        missing = expected - delivered_ns(receiver)
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(0.3)


def worker_report(workers: list[WorkerProcess]) -> str:
    """Each worker's state, counters and log tail, for a failure message."""
    parts = []
    for index, worker in enumerate(workers):
        try:
            counters = stats(worker) if worker.running else "not running"
        except Exception as exc:
            counters = f"stats failed: {exc!r}"
        parts.append(f"--- worker {index} ({worker!r}) {counters}\n{worker.log_tail(40)}")
    return "\n".join(parts)


def assert_rode_it_out(watchdog: Watchdog, workers: list[WorkerProcess]) -> None:
    """No worker exited and none logged a Faust crash (no crash loop either)."""
    crashed = [i for i, w in enumerate(workers) if CRASH_LINE in w.log_text()]
    assert not watchdog.exits and all(w.running for w in workers), (
        f"workers exited: {watchdog.exits}\n{worker_report(workers)}"
    )
    assert not crashed, f"workers {crashed} logged {CRASH_LINE!r}\n{worker_report(workers)}"


def sleep_watching(seconds: float, watchdog: Watchdog, workers: list[WorkerProcess]) -> None:
    """Sleep, failing as soon as a worker exits rather than at the end."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not watchdog.exits, f"workers exited: {watchdog.exits}\n{worker_report(workers)}"
        time.sleep(0.2)


def actions_topic(herald: HeraldDeployment) -> str:
    return f"{herald.prefix}-actions"


# --------------------------------------------------------------------------- 1. broker crash


def test_a_broker_crash_mid_stream_loses_nothing(
    kafka_node: KafkaNode, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    """SIGKILL the only broker mid-stream, 15 s down, restart it on the same log dirs.

    The workers see every connection refused for 15 s (fetches, produces of action
    requests and execution records, offset commits, heartbeats: the group coordinator is
    gone too) and must neither exit nor need a restart: they resume on their own once the
    broker is back, and what they delivered before the crash is not delivered again beyond
    what was in flight (maxInFlight per worker)."""
    topic = unique_topic("crash")
    total, keys = 1500, 30
    receiver.set_default(Delay(0.01, then=Reply(202)))
    herald = HeraldDeployment(
        tmp_path,
        kafka_node.bootstrap,
        handlers=[numbered_handler(topic)],
        targets=[webhook_target(receiver.url)],
        source_partitions=4,
        settings=SETTINGS,
    )
    stream = StreamProducer(kafka_node.bootstrap, topic, messages(total, keys), seconds=20)
    workers: list[WorkerProcess] = []
    watchdog = Watchdog(workers)
    try:
        workers.extend(herald.start_worker() for _ in range(WORKERS))
        watchdog.start()
        stream.start()
        wait_until(
            lambda: stream.sent >= total // 3 and len(delivered_ns(receiver)) >= 200,
            60,
            "a third of the stream produced and 200 delivered",
        )
        kafka_node.kill()  # SIGKILL: no controlled shutdown, no flush
        at_kill = len(delivered_ns(receiver))
        sleep_watching(15.0, watchdog, workers)
        kafka_node.start()  # same ports, same log dirs: log recovery after the crash
        stream.join(timeout=180)
        assert not stream.is_alive() and not stream.errors, stream.errors[:10]
        missing = wait_each_delivered(receiver, stream.acked, timeout=120)
        time.sleep(2.0)  # anything still to come would be a repeat: let it arrive
        delivered, counts, repeats = tally(receiver.requests)
        report = audit_deployment(herald, [topic])
        print(
            f"\nbroker crash: {total} events, {at_kill} delivered before the kill; "
            f"lost {len(missing)} / repeated {repeats} (bound {MAX_IN_FLIGHT * WORKERS}); "
            f"audit: {report.summary()}"
        )
        assert_rode_it_out(watchdog, workers)
        assert not missing, (
            f"{len(missing)} never delivered, first {sorted(missing)[:20]}\n"
            f"{worker_report(workers)}"
        )
        assert set(counts) == set(range(total))
        assert repeats <= MAX_IN_FLIGHT * WORKERS
        assert_each_key_in_order(delivered)
        assert report.lost == [], report.summary()
    finally:
        watchdog.stop()
        herald.stop()


# --------------------------------------------------------------------------- 2. failover


def _replicas(bootstrap: str, topics: list[str]) -> dict[str, set[int]]:
    """The replica count of each partition of `topics` (as a set of counts per topic)."""

    async def describe() -> dict[str, set[int]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(topics)
        finally:
            await admin.close()
        return {t["topic"]: {len(p["replicas"]) for p in t["partitions"]} for t in described}

    return run_sync(describe)


def test_leader_failover_mid_stream_loses_nothing(
    kafka_cluster: KafkaCluster, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    """Kill the node that leads source partition 0 and an actions partition mid-stream, keep
    it down while events go on arriving, then bring it back.

    The other two nodes elect new leaders within seconds (min.insync.replicas 2 of 3 still
    holds, so acks=all produces go on). Herald's clients must follow the leadership (a
    NotLeaderOrFollower answer, a dropped connection) without exiting. Repeats are allowed
    (what was in flight on the dead leader), losses and reordering are not."""
    topic = unique_topic("failover")
    total, keys = 1500, 30
    receiver.set_default(Delay(0.01, then=Reply(202)))
    create_topics(kafka_cluster.bootstrap, {topic: 3}, replication_factor=3)
    herald = HeraldDeployment(
        tmp_path,
        kafka_cluster.bootstrap,
        handlers=[numbered_handler(topic)],
        targets=[webhook_target(receiver.url)],
        source_partitions=3,  # already created above, with replication 3
        settings={**SETTINGS, "replicationFactor": 3},
    )
    stream = StreamProducer(kafka_cluster.bootstrap, topic, messages(total, keys), seconds=20)
    workers: list[WorkerProcess] = []
    watchdog = Watchdog(workers)
    try:
        workers.extend(herald.start_worker() for _ in range(WORKERS))
        watchdog.start()
        actions = actions_topic(herald)
        replicas = _replicas(kafka_cluster.bootstrap, [topic, actions, herald.executions_topic])
        assert all(counts == {3} for counts in replicas.values()), replicas
        stream.start()
        wait_until(
            lambda: stream.sent >= total // 3 and len(delivered_ns(receiver)) >= 200,
            60,
            "a third of the stream produced and 200 delivered",
        )
        source_leaders = {p: kafka_cluster.leader_of(topic, p) for p in range(3)}
        action_leaders = {p: kafka_cluster.leader_of(actions, p) for p in range(4)}
        # Kafka spreads leaders round robin: source partition 0's leader leads one of the
        # four actions partitions nearly always; otherwise take a node that leads both kinds.
        candidates = [source_leaders[0]] + sorted(set(source_leaders.values()))
        victim = next((n for n in candidates if n in action_leaders.values()), source_leaders[0])
        kafka_cluster.kill(victim)
        at_kill = len(delivered_ns(receiver))
        sleep_watching(12.0, watchdog, workers)
        moved = {p: kafka_cluster.leader_of(topic, p) for p in range(3)}
        kafka_cluster.restart(victim)
        stream.join(timeout=180)
        assert not stream.is_alive() and not stream.errors, stream.errors[:10]
        missing = wait_each_delivered(receiver, stream.acked, timeout=120)
        time.sleep(2.0)
        delivered, counts, repeats = tally(receiver.requests)
        report = audit_deployment(herald, [topic])
        print(
            f"\nleader failover: killed node {victim} (source leaders {source_leaders}, "
            f"actions leaders {action_leaders}, source leaders while down {moved}); "
            f"{at_kill} delivered before the kill; lost {len(missing)} / repeated {repeats}; "
            f"audit: {report.summary()}"
        )
        assert victim in action_leaders.values() and victim in source_leaders.values()
        assert victim not in moved.values()  # the survivors took its partitions over
        assert_rode_it_out(watchdog, workers)
        assert not missing, (
            f"{len(missing)} never delivered, first {sorted(missing)[:20]}\n"
            f"{worker_report(workers)}"
        )
        assert set(counts) == set(range(total))
        assert_each_key_in_order(delivered)
        assert report.lost == [], report.summary()
    finally:
        watchdog.stop()
        herald.stop()


# --------------------------------------------------------------------------- 3. idempotence


def producer_ids(bootstrap: str, topic: str, partitions: int) -> list[int]:
    """The producer id of every record batch stored in `topic`, read raw."""
    return [b.producer_id for b in stored_batches(bootstrap, topic, partitions)]


@pytest.mark.parametrize("kind", ["kafka", "tansu"])
def test_producers_are_idempotent_where_the_broker_can(
    kind: str, request: pytest.FixtureRequest, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    """With `herald.idempotentProducer: true`, on Kafka every batch Herald writes (action
    requests, execution records) carries a producer id: the broker handed one out
    (InitProducerId) and dedupes a retried batch by its sequence. On tansu, which has no
    idempotent producers, the probe says so and the worker runs with a plain producer (ids
    -1) instead of failing. (Opt-in: see agents/idempotence.py for why it is off by default.)"""
    broker: Any = request.getfixturevalue("kafka_node" if kind == "kafka" else "tansu")
    topic = unique_topic("idem")
    total = 60
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[numbered_handler(topic)],
        targets=[webhook_target(receiver.url)],
        source_partitions=2,
        settings={
            **SETTINGS,
            "idempotentProducer": True,
        },
    )
    try:
        worker = herald.start_worker()
        produce(broker.bootstrap, topic, messages(total, keys=6))
        missing = wait_each_delivered(receiver, set(range(total)), timeout=60)
        assert not missing, f"{sorted(missing)}\n{worker_report([worker])}"
        log = worker.log_text()
        ids = {
            name: producer_ids(broker.bootstrap, name, 4)
            for name in (actions_topic(herald), herald.executions_topic)
        }
        print(f"\nidempotence on {kind}: producer ids { ({k: set(v) for k, v in ids.items()}) }")
        assert all(ids.values()), ids
        if kind == "kafka":
            assert "producer: idempotence on" in log
            assert all(pid >= 0 for batch_ids in ids.values() for pid in batch_ids), ids
        else:
            assert "producer: idempotence off" in log
            assert all(pid == -1 for batch_ids in ids.values() for pid in batch_ids), ids
        assert CRASH_LINE not in log
    finally:
        herald.stop()
