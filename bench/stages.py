"""CPU per record of the source and sink stages in-process, without a broker or HTTP.

`python -m bench.stages` runs the source runner over 200,000 records (1% matching an ilert
handler) and the sink runner over 100,000 action records (a delivery that answers at once,
dedupe marks and execution records acknowledged at once), and prints the best of several
rounds in µs per record. It isolates Herald's own Python cost on the hot paths from the
broker and the network, so a refactoring can be compared commit against commit on the same
machine: run it on both and compare (the end-to-end figures are `python -m bench.run`'s).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from faust.types import TP

from agents.batches import Batch, BatchChannel
from agents.counters import Counters
from agents.evaluator_process import EvaluatorProcess
from agents.sink import SinkRunner
from agents.sources import SourceRunner
from streams.actions.base import ActionRequest, Delivery
from streams.config.checked import load_checked
from streams.handlers import HandlerIndex
from streams.offsets import PartitionProgress

CONFIG = """\
integrations:
  - {name: home, bootstrapServers: "127.0.0.1:9"}
targets:
  - {name: ilert, type: ilert, baseUrl: "http://127.0.0.1:9", integrationKey: k}
eventHandlers:
  - name: alarms
    event: kafka:home:src
    active: true
    condition: "$.type == 'ALARM'"
    actions:
      - action: ilert_event
        ilert_event: {target: ilert, eventType: ALERT, summary: "${comment}", alertKey: "${id}"}
"""


class _Acked:
    """A producer whose every send is acknowledged at once."""

    async def send(self, *args: Any) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class _Table(dict):
    """The dedupe table, its changelog writes acknowledged at once."""

    last_changelog: Any = None

    def __setitem__(self, key: bytes, value: bytes) -> None:
        super().__setitem__(key, value)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        self.last_changelog = fut

    async def put_through(self, partition: int, key: bytes, value: bytes) -> asyncio.Future:
        self[key] = value
        return self.last_changelog


class _Instant(Delivery):
    async def deliver(self, request: ActionRequest, ctx: Any, target: Any) -> dict:
        return {"status": 202}


def _runtime(config: Any, index: HandlerIndex) -> SimpleNamespace:
    topics = SimpleNamespace(
        actions=SimpleNamespace(get_topic_name=lambda: "actions"),
        executions=SimpleNamespace(get_topic_name=lambda: "executions"),
        dlq=lambda name: SimpleNamespace(get_topic_name=lambda: "dlq"),
    )
    return SimpleNamespace(
        config=config,
        home="home",
        topics=topics,
        app=SimpleNamespace(
            producer=_Acked(), conf=SimpleNamespace(producer_max_request_size=1 << 20)
        ),
        rules=SimpleNamespace(index=lambda: index),
        codecs=SimpleNamespace(for_records=lambda name: None),
        counters=Counters(),
        evaluator=EvaluatorProcess(),
        tables=SimpleNamespace(dedupe=_Table()),
        targets={},
        delivery_context=lambda: None,
    )


def _record(offset: int, value: bytes, key: bytes, topic: str) -> SimpleNamespace:
    return SimpleNamespace(
        topic=topic, partition=0, offset=offset, key=key, value=value, headers=[], timestamp=1
    )


async def source_cost(runtime: Any, count: int, rounds: int) -> tuple[float, float]:
    """Best (wall, this process's CPU) µs per record: conditions run in the evaluator process,
    so the wall time includes waiting for it and the CPU time is what the worker's core did."""
    records = [
        _record(
            i,
            orjson.dumps(
                {
                    "type": "ALARM" if i % 100 == 0 else "INFO",
                    "id": i,
                    "comment": "pump pressure high",
                    "site": "plant-7",
                }
            ),
            b"k%d" % (i % 1000),
            "src",
        )
        for i in range(count)
    ]
    source = SourceRunner(runtime, channel=None)  # type: ignore[arg-type]
    progress = PartitionProgress()
    progress.anchor(0)
    best = best_cpu = float("inf")
    for _ in range(rounds):
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, count, 500):
            chunk = records[start : start + 500]
            await source.process(Batch(TP("src", 0), chunk, progress.open(chunk[-1].offset)))
        best = min(best, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    await runtime.evaluator.close()
    return best / count * 1e6, best_cpu / count * 1e6


async def sink_cost(runtime: Any, count: int) -> float:
    instant = _Instant()
    channel = BatchChannel(set(), 10**9, pause=lambda tp: None, resume=lambda tp: None)
    sink = SinkRunner(runtime, channel, deliveries=lambda name: instant)
    progress = PartitionProgress()
    progress.anchor(0)
    for start in range(0, count, 500):
        batch = []
        for i in range(start, start + 500):
            request = ActionRequest.create(
                handler="h",
                event="kafka:home:src",
                action="bench_instant",
                payload={"a": 1},
                ordering_key=f"k{i % 1000}",
                id=f"id{i}",
                integration="home",
            )
            batch.append(_record(i, request.to_bytes(), request.ordering_key.encode(), "actions"))
        channel.put(Batch(TP("actions", 0), batch, progress.open(batch[-1].offset)))
    started = time.perf_counter()
    task = asyncio.ensure_future(sink.run())
    while progress.committable != count:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    task.cancel()
    return elapsed / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "herald.yaml"
        path.write_text(CONFIG)
        checked = load_checked(path)
    index = HandlerIndex(list(checked.handlers))

    async def run() -> None:
        source, cpu = await source_cost(_runtime(checked.config, index), args.records, args.rounds)
        sinks = [
            await sink_cost(_runtime(checked.config, index), args.deliveries)
            for _ in range(args.rounds)
        ]
        print(
            f"source: {source:.2f} us/record, {cpu:.2f} us of the worker's CPU "
            f"(1% matching, best of {args.rounds})"
        )
        print(f"sink:   {min(sinks):.2f} us/delivery (best of {args.rounds})")

    # On the worker's event loop (agents.app prefers uvloop): callbacks and futures cost
    # differently on asyncio's own loop, so figures taken on it mislead about the worker.
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency of Herald
        asyncio.run(run())
    else:
        uvloop.run(run())


if __name__ == "__main__":
    main()
