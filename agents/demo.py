"""`herald demo`: Herald end to end on this machine, with nothing to set up.

Starts an embedded Kafka-compatible broker (tansu), a local ilert-compatible receiver and a
real worker running `config/example.yaml`; feeds sample alarm messages (including one that is
filtered out and one that cannot be decoded); prints the ilert events and other deliveries the
receiver got, the messages Herald published and the dead letters; then stops everything.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from agents.embedded.broker import EmbeddedBroker, create_topics
from agents.embedded.receiver import Receiver
from agents.embedded.worker import WorkerProcess
from agents.topics import dlq_name
from streams.config.loader import load_config

CONFIG = Path(__file__).resolve().parent.parent / "config" / "example.yaml"

SAMPLES: list[tuple[str | None, bytes]] = [
    (
        "M-17",
        b'{"type":"ALARM","state":"SET","mCode":"M-17","comment":"Pump pressure low",'
        b'"severity":3,"site":"plant-2"}',
    ),
    (
        "M-42",
        b'{"type":"ALARM","state":"SET","mCode":"M-42","comment":"Conveyor stalled",'
        b'"severity":4,"site":"plant-1"}',
    ),
    (
        "M-17",
        b'{"type":"ALARM","state":"ACK","mCode":"M-17","comment":"Technician on site",'
        b'"severity":3,"site":"plant-2"}',
    ),
    (
        "T-1",
        b'{"type":"TELEMETRY","state":"SET","mCode":"T-1","comment":"temperature 21C",'
        b'"severity":1,"site":"plant-2"}',
    ),
    (
        "M-17",
        b'{"type":"ALARM","state":"CLR","mCode":"M-17","comment":"Pressure normal",'
        b'"severity":3,"site":"plant-2"}',
    ),
    ("bad", b"\xff\xfe this is not UTF-8"),
]


def run_demo(messages: int = 0, keep: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="herald-demo-"))
    print(f"herald demo: working in {workdir}")
    broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
    receiver = Receiver().start()
    worker: WorkerProcess | None = None
    env = _demo_env(broker.bootstrap, receiver.url, workdir)
    try:
        config = load_config(CONFIG, environ=env)
        sources = sorted({h.topic for h in config.eventHandlers})
        outputs = sorted(_publish_topics(config))
        create_topics(broker.bootstrap, {t: 3 for t in sources + outputs})
        print(f"broker  {broker.bootstrap}   receiver {receiver.url}")
        worker = WorkerProcess(env=env, workdir=workdir).start()
        print(f"worker  pid {worker.pid}, log {worker.log_path}")
        worker.wait_http_ready(timeout=120)
        print("worker  ready")
        samples = SAMPLES + _generated(messages)
        _produce(broker.bootstrap, sources[0], samples)
        print(f"produced {len(samples)} messages to {sources[0]!r}\n")
        expected_events = 4 + messages
        events = receiver.wait_for(expected_events, timeout=60, path="/api/events")
        time.sleep(2.0)  # let the other actions of the last messages arrive too
        _print_deliveries(receiver)
        _print_topic(broker.bootstrap, outputs, "published by Herald")
        _print_topic(broker.bootstrap, [dlq_name(config, config.home.name)], "dead letters")
        ok = len([e for e in events if e.path == "/api/events"]) >= expected_events
        print(
            f"\n{'OK' if ok else 'FAILED'}: {len(events)} ilert events delivered "
            f"(expected {expected_events})"
        )
        return 0 if ok else 1
    except Exception as exc:  # the demo reports, it does not hide
        print(f"herald demo failed: {exc}", file=sys.stderr)
        if worker is not None:
            print(worker.log_tail(40), file=sys.stderr)
        return 1
    finally:
        if worker is not None:
            worker.stop(timeout=30)
            print("worker stopped")
        receiver.stop()
        broker.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _demo_env(bootstrap: str, receiver_url: str, workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HERALD_CONFIG=str(CONFIG),
        HERALD_BOOTSTRAP=bootstrap,
        ILERT_BASE_URL=receiver_url,
        ILERT_INTEGRATION_KEY="il1demo0000000000000000000000000",
        WEBHOOK_URL=f"{receiver_url}/hooks/alarms",
        HERALD_DATA_DIR=str(workdir / "data"),
    )
    return env


def _publish_topics(config) -> set[str]:  # noqa: ANN001
    topics = set()
    for handler in config.eventHandlers:
        for action in handler.actions:
            if action.action == "publish":
                to = str(action.params.get("to", ""))
                if to.startswith("kafka:") and "${" not in to:
                    topics.add(to.rsplit(":", 1)[-1])
    return topics


def _generated(count: int) -> list[tuple[str | None, bytes]]:
    out = []
    for i in range(count):
        code = f"G-{i % 50}"
        body = {
            "type": "ALARM",
            "state": "SET",
            "mCode": code,
            "comment": f"generated {i}",
            "severity": 2,
            "site": "plant-9",
        }
        out.append((code, json.dumps(body).encode()))
    return out


def _produce(bootstrap: str, topic: str, samples: list[tuple[str | None, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    from agents.embedded.broker import run_sync

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in samples:
                await producer.send_and_wait(topic, value, key=key.encode() if key else None)
        finally:
            await producer.stop()

    run_sync(go)


def _read_topics(bootstrap: str, topics: list[str]) -> list:
    from aiokafka import AIOKafkaConsumer

    from agents.embedded.broker import run_sync

    async def go() -> list:
        consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        records: list = []
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1500)
                if not batch:
                    return records
                for items in batch.values():
                    records.extend(items)
        finally:
            await consumer.stop()

    return run_sync(go)


def _print_deliveries(receiver: Receiver) -> None:
    print("deliveries received by the local ilert/webhook receiver:")
    for req in receiver.requests:
        # JSON is re-printed in one spacing, whatever spacing the client sent it in
        body = json.dumps(req.json, ensure_ascii=False) if req.is_json else req.text
        print(f"  {req.method} {req.path} -> {req.status}  {body}")


def _print_topic(bootstrap: str, topics: list[str], title: str) -> None:
    if not topics:
        return
    records = _read_topics(bootstrap, topics)
    print(f"\n{title} ({', '.join(topics)}): {len(records)}")
    for record in records:
        value = record.value.decode("utf-8", errors="replace") if record.value else None
        if value and len(value) > 300:
            value = value[:300] + "..."
        print(f"  {record.topic}[{record.partition}]@{record.offset} key={record.key!r} {value}")
