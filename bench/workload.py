"""The benchmark's workload: realistic plant events, produced in bulk or at a steady rate.

Every event is about 200 bytes of JSON keyed by its ``mCode``::

    {"type":"TELEMETRY","state":"SET","mCode":"M-1234","comment":"...","severity":3,
     "site":"plant-2","ts":1712345678901.123,"value":12.5,"seq":4711}

``ts`` is the producer's wall clock in epoch milliseconds, taken when the record is handed to
the producer; ``seq`` numbers the events of one topic from 0. One event in ``alarm_every`` has
``"type":"ALARM"`` (``seq % alarm_every == 0``), the others ``TELEMETRY``. ``mCode`` (the
record key, and the ilert ``alertKey`` of the bench's handler) takes ``KEYS`` (10,000)
distinct values, ``M-0`` to ``M-9999``.

``preload_changelog`` fills a Faust table's changelog directly, for the memory case.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from bench.receiver import SEQ, TS

COMMENTS = (
    "Pump 3 discharge pressure reading within configured band",
    "Conveyor belt B speed sample from line controller PLC-7",
    "Cooling loop inlet temperature sampled by sensor TT-204",
    "Compressor vibration RMS from condition monitoring unit",
    "Tank level transmitter reading after filling sequence end",
)
KEYS = 10_000  # distinct mCode values: record keys, alert keys, Herald's ordering keys
SITES = 7


def event(seq: int, alarm_every: int, ts_ms: float | None = None) -> tuple[bytes, bytes]:
    """The key and JSON value of event ``seq``."""
    code = f"M-{seq % KEYS}"
    body: dict[str, Any] = {
        "type": "ALARM" if seq % alarm_every == 0 else "TELEMETRY",
        "state": "SET",
        "mCode": code,
        "comment": COMMENTS[seq % len(COMMENTS)],
        "severity": 1 + seq % 5,
        "site": f"plant-{seq % SITES}",
        "ts": round(ts_ms if ts_ms is not None else time.time() * 1000, 3),
        "value": round(10 + (seq % 1000) / 40, 2),
        "seq": seq,
    }
    return code.encode(), orjson.dumps(body)


def _producer(bootstrap: str, linger_ms: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
    )


async def preload(
    bootstrap: str, topic: str, count: int, alarm_every: int, first_seq: int = 0
) -> float:
    """Produce ``count`` events as fast as the broker takes them; return the seconds it took."""
    producer = _producer(bootstrap, linger_ms=20)
    await producer.start()
    started = time.monotonic()
    try:
        pending: list[asyncio.Future[Any]] = []
        for seq in range(first_seq, first_seq + count):
            key, value = event(seq, alarm_every)
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - started


async def steady(
    bootstrap: str,
    topic: str,
    rate: float,
    seconds: float,
    alarm_every: int,
    first_seq: int,
    *,
    ramp_seconds: float = 0.0,
    on_measured: Callable[[], None] | None = None,
) -> tuple[int, float]:
    """Produce ``rate`` events a second for ``ramp_seconds`` then ``seconds``; return (events
    sent after the ramp, seconds they took).

    Events are released on a 5 ms clock, each stamped (``ts``) just before it is handed to the
    producer, which sends without lingering. The ramp's events come first (``first_seq`` on)
    in the same stream; ``on_measured`` is called as the first event after them is sent.
    """
    ramp = int(rate * ramp_seconds)
    total = ramp + int(rate * seconds)
    producer = _producer(bootstrap, linger_ms=0)
    await producer.start()
    pending: list[asyncio.Future[Any]] = []
    try:
        started = time.monotonic()
        measured_from = started
        sent = 0
        while sent < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                if sent == ramp:
                    measured_from = time.monotonic()
                    if on_measured is not None:
                        on_measured()
                key, value = event(first_seq + sent, alarm_every)
                pending.append(await producer.send(topic, value, key=key))
                sent += 1
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - measured_from
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent - ramp, elapsed


async def steady_with_hop(
    bootstrap: str,
    topic: str,
    rate: float,
    seconds: float,
    first_seq: int,
    fetch_max_wait_ms: int,
    *,
    ramp_seconds: float = 0.0,
    on_measured: Callable[[], None] | None = None,
) -> tuple[int, float, list[float], list[float]]:
    """`steady`, with a bare aiokafka consumer reading the same topic meanwhile: the broker's
    own one-hop latency (receipt - ``ts``, ms) for the same events at the same time, so
    Herald's figure can be read against what the broker alone gives. Returns (events sent
    after the ramp, their seconds, their hop latencies, the ramp's hop latencies)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="latest",
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    await consumer.start()
    await consumer.seek_to_end()
    latencies: list[float] = []
    ramp_latencies: list[float] = []
    measured_seq = first_seq + int(rate * ramp_seconds)
    expected = int(rate * seconds)

    async def read() -> None:
        while len(latencies) < expected:
            batches = await consumer.getmany(timeout_ms=1000)
            now = time.time() * 1000
            for records in batches.values():
                for record in records:
                    seq = SEQ.search(record.value)
                    ts = TS.search(record.value)
                    if seq and ts and int(seq.group(1)) >= first_seq:
                        into = latencies if int(seq.group(1)) >= measured_seq else ramp_latencies
                        into.append(now - float(ts.group(1)))

    reader = asyncio.ensure_future(read())
    try:
        sent, elapsed = await steady(
            bootstrap,
            topic,
            rate,
            seconds,
            1,
            first_seq,
            ramp_seconds=ramp_seconds,
            on_measured=on_measured,
        )
        try:
            await asyncio.wait_for(asyncio.shield(reader), timeout=30)
        except TimeoutError:
            pass
    finally:
        reader.cancel()
        await consumer.stop()
    return sent, elapsed, latencies, ramp_latencies


async def record_timestamps(bootstrap: str, topic: str, since_ms: float) -> dict[int, float]:
    """``seq`` -> Kafka timestamp (ms) of the records of ``topic`` stamped at or after ``since_ms``.

    Used on Herald's ``<prefix>-actions`` topic: an action record is produced by the source
    agent, so its timestamp splits a delivery's latency into the source hop and the sink hop.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    await consumer.start()
    found: dict[int, float] = {}
    try:
        await consumer._client.force_metadata_update()  # noqa: SLF001
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + 60
        while True:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within 60 s")
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for records in batch.values():
                for record in records:
                    if record.timestamp < since_ms or record.value is None:
                        continue
                    match = SEQ.search(record.value)
                    if match is not None:
                        found.setdefault(int(match.group(1)), float(record.timestamp))
    finally:
        await consumer.stop()


def delivery_key(index: int) -> bytes:
    """A key shaped like Herald's delivery ids (32 hex digits), distinct for every index."""
    return hashlib.sha256(f"bench-delivery|{index}".encode()).hexdigest()[:32].encode()


async def preload_changelog(
    bootstrap: str, topic: str, count: int, partitions: int, *, last_alone: bool
) -> float:
    """Write ``count`` dedupe entries (delivery id -> delivered-at ms) to a table's changelog.

    The records are what Herald's sink writes to ``<groupId>-dedupe-changelog``: raw bytes,
    the key a delivery id and the value ``str(epoch ms).encode()``. Each goes to the partition
    of murmur2 of its key (aiokafka's and Kafka's Java client's default partitioner); Faust
    recovers every partition of the changelog into the store of that partition.

    ``last_alone`` is for tansu: tansu 0.6 reports a partition's high watermark as the base
    offset of its last batch + 1, and Faust's recovery reads only up to the high watermark, so
    the rest of a big last batch would not be recovered. The last record of each partition is
    then sent alone, after the others are acknowledged. Kafka's high watermark is the offset
    after the last acknowledged record, so there every record goes in bulk. Returns the
    seconds it took.
    """
    partitioner = DefaultPartitioner()
    every = list(range(partitions))
    producer = _producer(bootstrap, linger_ms=20)
    await producer.start()
    started = time.monotonic()
    value = str(int(time.time() * 1000)).encode()
    last: dict[int, bytes] = {}
    try:
        pending: list[asyncio.Future[Any]] = []
        for index in range(count):
            key = delivery_key(index)
            partition = partitioner(key, every, every)
            if not last_alone:
                pending.append(await producer.send(topic, value, key=key, partition=partition))
                if len(pending) >= 20_000:
                    await asyncio.gather(*pending)
                    pending.clear()
                continue
            held = last.get(partition)
            last[partition] = key
            if held is None:
                continue
            pending.append(await producer.send(topic, value, key=held, partition=partition))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        for partition, key in last.items():
            await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()
    return time.monotonic() - started
