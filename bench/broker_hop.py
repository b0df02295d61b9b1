"""The broker alone: one bare aiokafka hop's latency, over time, for several fetch waits.

    python -m bench.broker_hop [--broker kafka|tansu] [--messages 60000] [--rate 1000]
                               [--waits 10,100,500]

Starts its own broker (Apache Kafka by default, as ``bench.run`` does; ``--broker tansu`` for
the embedded one), produces ``--messages`` records at ``--rate`` per second (no linger, keys
over 8 partitions), each carrying its send time, to a fresh topic per fetch wait, and reads
them with a bare aiokafka consumer using that ``fetch_max_wait_ms``. Prints p50/p99 for each
sixth of the run and overall, and the broker's CPU per record. On tansu 0.6 this shows two
things Herald's latency figures there inherit: a waiting fetch is answered late (the median
grows with the wait), and latency grows as records accumulate in its in-memory store. Kafka
answers a waiting fetch as soon as records arrive, so there the wait should not matter: this
is how to check which ``fetchMaxWaitMs`` a broker needs.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agents.embedded.broker import create_topics
from bench.broker import KAFKA, KINDS, BenchBroker
from bench.harness import cpu_seconds, percentile


async def hop(bootstrap: str, topic: str, count: int, rate: float, wait_ms: int) -> list[float]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="latest",
        fetch_max_wait_ms=wait_ms,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await consumer.start()
    await producer.start()
    await asyncio.sleep(1.0)
    latencies: list[float] = []

    async def read() -> None:
        while len(latencies) < count:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                now = time.time() * 1000
                latencies.extend(now - float(record.value) for record in records)

    reader = asyncio.ensure_future(read())
    started = time.monotonic()
    try:
        for i in range(count):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            await producer.send(topic, str(time.time() * 1000).encode(), key=b"%d" % (i % 64))
        await asyncio.wait_for(reader, timeout=120)
    finally:
        reader.cancel()
        await consumer.stop()
        await producer.stop()
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--waits", default="10,100,500", help="fetch_max_wait_ms values")
    parser.add_argument("--broker", choices=KINDS, default=KAFKA)
    parser.add_argument("--kafka-version", default=None)
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="herald-hop-") as workdir,
        BenchBroker(args.broker, Path(workdir), kafka_version=args.kafka_version) as broker,
    ):
        print(f"broker: {broker.describe()}")
        for wait in (int(w) for w in args.waits.split(",")):
            topic = f"hop-{wait}"
            create_topics(broker.bootstrap, {topic: 8})
            cpu_before = cpu_seconds(broker.pid)
            lat = asyncio.run(hop(broker.bootstrap, topic, args.messages, args.rate, wait))
            cpu_after = cpu_seconds(broker.pid)
            cpu = ""
            if cpu_before is not None and cpu_after is not None and lat:
                cpu = f"; broker CPU {(cpu_after - cpu_before) / len(lat) * 1e6:.0f} us/record"
            sixth = len(lat) // 6
            parts = [lat[i * sixth : (i + 1) * sixth] for i in range(6)]
            by_sixth = " ".join(
                f"{percentile(p, 50):.0f}/{percentile(p, 99):.0f}" for p in parts if p
            )
            print(
                f"fetch wait {wait} ms, {len(lat)} records at {args.rate:g}/s: "
                f"p50 {percentile(lat, 50):.1f} ms, p99 {percentile(lat, 99):.1f} ms, "
                f"max {max(lat):.1f} ms; p50/p99 by sixth: {by_sixth} ms{cpu}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
