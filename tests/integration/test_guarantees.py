"""At-least-once across crashes and workers: SIGKILL mid-stream, two workers in one group."""

from __future__ import annotations

import collections
import time
from pathlib import Path

from agents.embedded.broker import EmbeddedBroker
from agents.embedded.receiver import Delay, Hang, Receiver, Reply
from tests.support.herald import HeraldDeployment, stats, webhook_target
from tests.support.kafka import produce

MAX_IN_FLIGHT = 16


def numbered_handler(topic: str) -> dict:
    return {
        "name": "numbered",
        "event": f"kafka:local:{topic}",
        "active": True,
        "actions": [
            {
                "action": "webhook",
                "orderingKey": "${k}",
                "webhook": {"url": "n", "body": {"n": "${n}", "k": "${k}"}},
            }
        ],
    }


def messages(count: int, keys: int) -> list[dict]:
    return [{"key": f"k{i % keys}", "value": {"n": i, "k": f"k{i % keys}"}} for i in range(count)]


def wait_delivered(receiver: Receiver, expected: set[int], timeout: float) -> set[int]:
    """Wait until every `n` of `expected` was answered 202, or `timeout`; the missing ones."""
    deadline = time.monotonic() + timeout
    while True:
        missing = expected - {r.json["n"] for r in receiver.requests if r.status == 202}
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(0.2)


def wait_all(receiver: Receiver, expected: set[int], timeout: float) -> list:
    missing = wait_delivered(receiver, expected, timeout)
    if missing:
        raise AssertionError(f"{len(missing)} never delivered, first: {sorted(missing)[:20]}")
    return receiver.requests


def per_key_order(requests: list) -> dict[str, list[int]]:
    order: dict[str, list[int]] = collections.defaultdict(list)
    for request in requests:
        if request.status == 202:
            order[request.json["k"]].append(request.json["n"])
    return order


def assert_each_key_in_order(delivered: list) -> None:
    """Each key's deliveries ascend, apart from a repeat re-sent in place."""
    for key, ns in per_key_order(delivered).items():
        firsts = list(dict.fromkeys(ns))
        assert firsts == sorted(firsts), key


def tally(requests: list) -> tuple[list, collections.Counter[int], int]:
    """The 202-answered requests, how often each `n` was delivered, and the repeats."""
    delivered = [r for r in requests if r.status == 202]
    counts = collections.Counter(r.json["n"] for r in delivered)
    return delivered, counts, sum(c - 1 for c in counts.values())


def test_sigkill_mid_stream_loses_nothing_and_repeats_only_in_flight(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    topic = unique_topic("kill")
    total = 600
    receiver.set_default(Delay(0.01, then=Reply(202)))
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[numbered_handler(topic)],
        targets=[webhook_target(receiver.url)],
        settings={"maxInFlight": MAX_IN_FLIGHT},
    )
    try:
        produce(broker.bootstrap, topic, messages(total, keys=40))
        worker = herald.worker()
        herald.start_worker(worker)
        receiver.wait_for(total // 3, timeout=60, path="/hooks/n")
        worker.kill()  # SIGKILL: no shutdown, no final commit
        at_kill = len(receiver.requests)
        herald.start_worker(worker)  # same data directory: tables recover from RocksDB
        requests = wait_all(receiver, set(range(total)), timeout=120)
        time.sleep(2.0)  # anything still to come would be a repeat: let it arrive
        requests = receiver.requests
        delivered, counts, repeats = tally(requests)
        print(
            f"\nSIGKILL test: {total} messages, {at_kill} requests before the kill, "
            f"{len(delivered)} deliveries in all, {len(counts)} distinct, {repeats} repeated "
            f"(in-flight limit {MAX_IN_FLIGHT})"
        )
        assert set(counts) == set(range(total))  # nothing lost
        assert repeats <= MAX_IN_FLIGHT  # only what was in flight at the kill
        # the repeats carry the same identity, so a receiver can recognise them
        ids: dict[int, set[str]] = collections.defaultdict(set)
        for request in delivered:
            ids[request.json["n"]].add(request.header("Idempotency-Key"))
        assert all(len(v) == 1 for v in ids.values())
        assert_each_key_in_order(delivered)
    finally:
        herald.stop()


def test_offsets_are_not_committed_past_a_delivery_still_in_flight(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    """One partition, its first record's endpoint hangs, the 40 after it are delivered and
    their batch's neighbours committed around it; a SIGKILL then must not lose the first.

    Faust 0.15.3's own acks commit past a record at exactly the committed offset (here offset
    0) once the records after it are acked; Herald's batches commit only finished prefixes.
    """
    topic = unique_topic("slowhead")
    receiver.respond("/hooks/slow", Hang(None))  # the first call never answers; later ones 202
    handler = {
        "name": "per-key",
        "event": f"kafka:local:{topic}",
        "active": True,
        "actions": [
            {
                "action": "webhook",
                "orderingKey": "${k}",
                "webhook": {"url": "${k}", "body": {"n": "${n}", "k": "${k}"}},
            }
        ],
    }
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[handler],
        targets=[webhook_target(receiver.url, timeoutSeconds=60)],
        source_partitions=1,
        settings={"actionPartitions": 1},
    )
    try:
        first = [{"key": "slow", "value": {"n": 0, "k": "slow"}}]
        rest = [{"key": f"k{i % 10}", "value": {"n": i, "k": f"k{i % 10}"}} for i in range(1, 41)]
        produce(broker.bootstrap, topic, first + rest)
        worker = herald.start_worker()
        receiver.wait_for(40, timeout=60, path="/hooks/k")
        receiver.wait_for(1, timeout=10, path="/hooks/slow")  # hanging, in flight
        time.sleep(2.0)  # four commit intervals: whatever may be committed now is
        worker.kill()
        herald.start_worker(worker)
        answered = receiver.wait_for(
            1, timeout=60, path="/hooks/slow", answered=True, predicate=lambda r: r.status == 202
        )
        assert answered[0].json == {"n": 0, "k": "slow"}
    finally:
        herald.stop()


def test_two_workers_in_one_group_share_the_partitions(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    topic = unique_topic("shared")
    total = 300
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[numbered_handler(topic)],
        targets=[webhook_target(receiver.url)],
        source_partitions=4,
        settings={"actionPartitions": 4},
    )
    try:
        first = herald.start_worker()
        second = herald.start_worker()
        # both must have partitions of the source topic before we measure the split
        time.sleep(3.0)
        produce(broker.bootstrap, topic, messages(total, keys=30))
        wait_all(receiver, set(range(total)), timeout=90)
        time.sleep(1.0)
        delivered, counts, _ = tally(receiver.requests)
        one, two = stats(first), stats(second)
        print(
            f"\ntwo workers: consumed {one['consumed']} + {two['consumed']}, "
            f"delivered {one['delivered']} + {two['delivered']}"
        )
        assert set(counts) == set(range(total))
        assert max(counts.values()) == 1  # no failure, so no repeat either
        assert one["consumed"] > 0 and two["consumed"] > 0
        assert one["consumed"] + two["consumed"] == total
        assert one["delivered"] + two["delivered"] == total
    finally:
        herald.stop()


def test_a_second_worker_joining_mid_stream_loses_nothing(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    """A rebalance while batches are in flight: the first worker drops its queued batches and
    unfinished tickets for the partitions it hands over, the new owner reads them again from
    the committed offsets. Nothing is lost, repeats are bounded, per-key order holds."""
    topic = unique_topic("rebalance")
    total = 3000
    # 16 lanes at 40 ms a call: ~400 deliveries/s, so the backlog outlasts the second's join
    receiver.set_default(Delay(0.04, then=Reply(202)))
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[numbered_handler(topic)],
        targets=[webhook_target(receiver.url)],
        source_partitions=4,
        settings={"actionPartitions": 4, "maxInFlight": MAX_IN_FLIGHT},
    )
    try:
        produce(broker.bootstrap, topic, messages(total, keys=40))
        first = herald.start_worker()
        receiver.wait_for(total // 5, timeout=60, path="/hooks/n")
        second = herald.start_worker()  # joins while the first is mid-backlog
        at_join = len(receiver.requests)
        wait_all(receiver, set(range(total)), timeout=120)
        time.sleep(2.0)
        delivered, counts, repeats = tally(receiver.requests)
        one, two = stats(first), stats(second)
        assert at_join < total  # the second joined while the first was still delivering
        print(
            f"\nrebalance: {total} messages, {len(delivered)} deliveries, {repeats} repeated; "
            f"delivered {one['delivered']} + {two['delivered']}"
        )
        assert set(counts) == set(range(total))
        assert two["delivered"] > 0  # the second worker took partitions over
        # each worker may repeat what it had in flight when the partitions moved
        assert repeats <= 2 * MAX_IN_FLIGHT
        assert_each_key_in_order(delivered)
    finally:
        herald.stop()


def test_first_start_on_a_backlog_uses_the_configured_handlers(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    """More records waiting than Faust buffers (4096) must not starve the rules table."""
    topic = unique_topic("backlog")
    total = 6000
    handler = {**numbered_handler(topic), "condition": "$.n % 100 == 0"}
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[handler],
        targets=[webhook_target(receiver.url)],
        source_partitions=2,
    )
    try:
        produce(broker.bootstrap, topic, messages(total, keys=10))
        worker = herald.start_worker()
        wait_all(receiver, set(range(0, total, 100)), timeout=120)
        deadline = time.monotonic() + 30
        while stats(worker)["consumed"] < total and time.monotonic() < deadline:
            time.sleep(0.2)
        counters = stats(worker)
        assert counters["consumed"] == total
        assert counters["matched"] == total // 100
    finally:
        herald.stop()
