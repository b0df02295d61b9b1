"""Generated poison input never stops a worker, and nothing of it disappears (issue 10).

Hypothesis generates records: good events, random bytes, empty and null values, values of
megabytes, JSON nested deeper than any parser's limit, text that is not UTF-8, keys and
headers that are not UTF-8, in batches of every codec Kafka defines, and now and then a
record batch whose CRC is wrong. One real worker (`unreadableBatches: skip`) consumes them
all. The expected outcome of each record is stated here independently of Herald's code:

- a value that is UTF-8 text (JSON or not, null included) and not nested too deep is
  delivered: the handler has no condition and its webhook carries the record's partition
  and offset, so each delivery names its record;
- a value that is not UTF-8, or JSON nested deeper than 1024 levels, is dead-lettered at the
  decode stage with a reason;
- the records of a corrupt batch are skipped with a `fetch` dead letter covering them (on
  tansu only: Apache Kafka refuses a corrupt batch when it is produced).

After each example the worker must still run. The test prints the counts.
"""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.embedded.broker import EmbeddedBroker, create_topics
from agents.embedded.receiver import Receiver
from tests.support.brokers import is_tansu
from tests.support.herald import HeraldDeployment, webhook_target
from tests.support.kafka import consume
from tests.support.rawbatch import build_batch, corrupt_crc, produce_batches

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
PARTITIONS = 3


def deep_json(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@st.composite
def poison(draw: st.DrawFn) -> tuple[str, bytes | None]:
    """(kind, value): the kind says what the record is and so what must become of it."""
    kind = draw(
        st.sampled_from(
            ["good", "good", "good", "bytes", "empty", "null", "huge", "deep", "latin1", "text"]
        )
    )
    if kind == "good":
        return kind, orjson.dumps(
            {"type": "ALARM", "n": draw(st.integers(-(2**53), 2**53)), "ok": True}
        )
    if kind == "bytes":
        return kind, draw(st.binary(min_size=1, max_size=300))
    if kind == "empty":
        return kind, b""
    if kind == "null":
        return kind, None
    if kind == "huge":  # megabytes of valid JSON; the webhook carries only its coordinates
        return kind, orjson.dumps({"blob": "z" * draw(st.integers(1_000_000, 2_500_000))})
    if kind == "deep":
        return kind, deep_json(draw(st.integers(1_025, 12_000)))
    if kind == "latin1":  # text in another encoding: not UTF-8
        return kind, "Störung bei Förderband Ä".encode("latin-1")
    return kind, draw(st.text(max_size=200)).encode("utf-8")


def must_decode(kind: str, value: bytes | None) -> bool:
    """The expected rule, independent of Herald: UTF-8, and not nested past 1024 levels."""
    if kind == "deep" or value is None:
        return kind != "deep"
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


record_strategy = st.tuples(
    poison(),
    st.sampled_from(CODECS),
    st.one_of(st.none(), st.binary(max_size=16), st.text(max_size=16).map(str.encode)),
    st.lists(st.tuples(st.text(min_size=1, max_size=8), st.binary(max_size=16)), max_size=3),
)


def produce_all(bootstrap: str, topic: str, records: list) -> list[tuple[int, int]]:
    """Produce with librdkafka (confluent-kafka), each record with its codec; the
    (partition, offset) of each."""
    producers = {
        codec: Producer(
            {
                "bootstrap.servers": bootstrap,
                "compression.type": codec,
                "linger.ms": 5,
                "message.max.bytes": 10_000_000,
            }
        )
        for codec in {record[1] for record in records}
    }
    where: list[tuple[int, int] | None] = [None] * len(records)

    def delivered(index: int):
        def callback(error, message) -> None:
            assert error is None, error
            where[index] = (message.partition(), message.offset())

        return callback

    for index, ((_kind, value), codec, key, headers) in enumerate(records):
        producers[codec].produce(
            topic, value=value, key=key, headers=headers or None, on_delivery=delivered(index)
        )
        producers[codec].poll(0)
    for producer in producers.values():
        assert producer.flush(60) == 0
    assert all(w is not None for w in where)
    return where  # type: ignore[return-value]


@pytest.mark.timeout(900)
def test_generated_poison_never_stops_the_worker_and_nothing_disappears(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    topic = unique_topic("poison")
    # Values of megabytes: the topic takes them (Kafka's default max.message.bytes is 1 MiB).
    create_topics(
        broker.bootstrap,
        {topic: PARTITIONS},
        configs={topic: {"max.message.bytes": "10000000", "segment.bytes": "16777216"}},
    )
    handler = {
        "name": "everything",
        "event": f"kafka:local:{topic}",
        "active": True,
        "actions": [
            {
                "action": "webhook",
                "webhook": {
                    "url": "n",
                    "body": {"p": "${_kafka.partition}", "o": "${_kafka.offset}"},
                },
            }
        ],
    }
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[handler],
        targets=[webhook_target(receiver.url)],
        settings={"unreadableBatches": "skip"},
        source_partitions=PARTITIONS,
    )
    totals: collections.Counter[str] = collections.Counter()
    expect_delivered: set[tuple[int, int]] = set()
    expect_decode_letter: set[tuple[int, int]] = set()
    expect_skipped: set[tuple[int, int]] = set()
    try:
        worker = herald.start_worker()

        @settings(
            max_examples=int(os.environ.get("HERALD_POISON_EXAMPLES", "10")),
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            records=st.lists(record_strategy, min_size=5, max_size=40),
            # Kafka refuses a corrupt batch when it is produced (CORRUPT_MESSAGE); tansu keeps it
            corrupt=st.booleans() if is_tansu(broker.bootstrap) else st.just(False),
        )
        def example(records: list, corrupt: bool) -> None:
            where = produce_all(broker.bootstrap, topic, records)
            totals["examples"] += 1
            for ((kind, value), codec, _k, _h), coordinates in zip(records, where, strict=True):
                totals[kind] += 1
                totals[f"codec {codec}"] += 1
                (expect_delivered if must_decode(kind, value) else expect_decode_letter).add(
                    coordinates
                )
            if corrupt:
                partition = len(records) % PARTITIONS
                first, after = produce_batches(
                    broker.bootstrap,
                    topic,
                    partition,
                    [corrupt_crc(build_batch([{"n": i} for i in range(3)])), build_batch([{}])],
                )
                expect_skipped.update((partition, o) for o in range(first, first + 3))
                expect_delivered.add((partition, after))
                totals["corrupt batch records"] += 3
            print(f"example {totals['examples']}: {len(records)} records, corrupt={corrupt}")
            missing = settle(
                receiver, herald, expect_delivered, expect_decode_letter, expect_skipped
            )
            assert worker.running, worker.log_text()[-3000:]
            assert not missing, missing

        example()
        print(f"\ngenerated: {dict(totals)}")
        print(
            f"outcome: {len(expect_delivered)} delivered, {len(expect_decode_letter)} "
            f"dead-lettered at decode, {len(expect_skipped)} skipped as unreadable "
            f"(fetch dead letters); worker running: {worker.running}"
        )
        assert worker.running
    finally:
        herald.stop()


def settle(
    receiver: Receiver,
    herald: HeraldDeployment,
    delivered: set[tuple[int, int]],
    decode_letters: set[tuple[int, int]],
    skipped: set[tuple[int, int]],
    timeout: float = 120.0,
) -> dict[str, list]:
    """Wait until every expectation so far is met; what is still missing after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = {(r.json["p"], r.json["o"]) for r in receiver.requests if r.status == 202}
        letters = _letters(herald)
        decode = {
            (s["partition"], s["offset"])
            for stage, s, reason in letters
            if stage == "decode" and reason
        }
        fetch = {
            (s["partition"], o)
            for stage, s, reason in letters
            if stage == "fetch" and reason
            for o in range(s["offset"], s["endOffset"])
        }
        missing = {
            "delivered": sorted(delivered - got)[:10],
            "decode dead letter": sorted(decode_letters - decode)[:10],
            "skipped": sorted(skipped - fetch)[:10],
            "delivered but should not be": sorted((decode_letters | skipped) & got)[:10],
        }
        if not any(missing.values()):
            return {}
        if time.monotonic() >= deadline:
            return {k: v for k, v in missing.items() if v}
        time.sleep(0.5)


def _letters(herald: HeraldDeployment) -> list[tuple[str, dict, str]]:
    records = consume(herald.bootstrap, herald.dlq_topic, 10**9, timeout=1.0)
    return [
        (r["json"]["stage"], r["json"]["source"], r["json"]["reason"]) for r in records if r["json"]
    ]
