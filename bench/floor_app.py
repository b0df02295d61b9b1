"""The floor: a bare Faust app whose one agent only iterates a topic.

Run as a real worker (``python -m faust -A bench.floor_app worker``) with ``BENCH_BOOTSTRAP``,
``BENCH_TOPIC`` (one topic, or several separated by commas: the benchmark drains the loaded
topic, then feeds a second one at a steady rate for latency), ``BENCH_GROUP`` and
``BENCH_SESSION_TIMEOUT`` in the environment. The topic is
read as raw bytes (as Herald reads its sources) and with the consumer settings Herald uses
(earliest offset, 1 s commit interval, ``stream_wait_empty=False``), so the gap between this
and Herald is Herald's own work. ``GET /bench/stats`` answers
``{"consumed", "first", "last"}``: the count and the epoch times of the first and last message
seen by the agent, measured inside the process. ``GET /bench/latency?since=EPOCH_MS``
answers the p50/p99 of (time consumed - the record's Kafka timestamp) over the records whose
timestamp is at least ``since``: one Kafka hop into a Faust agent, the floor of any latency.
"""

from __future__ import annotations

import os
import time
from array import array

import faust
from faust.web import Request, Response, View

SESSION_TIMEOUT = float(os.environ.get("BENCH_SESSION_TIMEOUT", "6"))

app = faust.App(
    os.environ["BENCH_GROUP"],
    broker=f"kafka://{os.environ['BENCH_BOOTSTRAP']}",
    store="memory://",
    stream_wait_empty=False,
    broker_commit_interval=1.0,
    broker_session_timeout=SESSION_TIMEOUT,
    broker_heartbeat_interval=min(3.0, SESSION_TIMEOUT / 4),
    consumer_auto_offset_reset="earliest",
    autodiscover=False,
)
topic = app.topic(
    *os.environ["BENCH_TOPIC"].split(","),
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
)


class _Seen:
    consumed = 0
    first: float | None = None
    last: float | None = None
    record_ms = array("d")  # Kafka record timestamp of each message, epoch ms
    consumed_ms = array("d")  # when the agent got it, epoch ms


@app.agent(topic, name="bench.floor")
async def floor(stream: faust.StreamT) -> None:
    seen = _Seen
    record_ms = seen.record_ms.append
    consumed_ms = seen.consumed_ms.append
    async for event in stream.events():
        now = time.time()
        if seen.first is None:
            seen.first = now
        seen.last = now
        seen.consumed += 1
        record_ms(event.message.timestamp * 1000)
        consumed_ms(now * 1000)


@app.page("/bench/stats")
class Stats(View):
    async def get(self, request: Request) -> Response:
        return self.json({"consumed": _Seen.consumed, "first": _Seen.first, "last": _Seen.last})


@app.page("/bench/latency")
class Latency(View):
    async def get(self, request: Request) -> Response:
        since = float(request.query.get("since", "0"))
        latencies = sorted(
            c - r for r, c in zip(_Seen.record_ms, _Seen.consumed_ms, strict=True) if r >= since
        )

        def pct(p: float) -> float | None:  # nearest rank
            if not latencies:
                return None
            return latencies[int(max(1, -(-len(latencies) * p // 100))) - 1]

        return self.json(
            {
                "count": len(latencies),
                "p50": pct(50),
                "p90": pct(90),
                "p99": pct(99),
                "max": latencies[-1] if latencies else None,
            }
        )
