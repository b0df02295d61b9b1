"""The test harness itself works: broker, Kafka helpers, HTTP receiver, worker subprocess.

Every other integration test trusts these pieces, so they are checked against the real broker
and real sockets here first.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agents.embedded.broker import BrokerStartError, EmbeddedBroker, create_topics
from agents.embedded.receiver import Delay, Hang, Receiver, Reply
from agents.embedded.worker import REPO_ROOT, WorkerProcess
from tests.support.kafka import consume, create_topic, produce


def http(
    method: str, url: str, body: Any = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """One request with the standard library; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


# --------------------------------------------------------------------------- broker


def test_broker_round_trip_on_three_partitions(
    broker: EmbeddedBroker, unique_topic: Callable[[str], str]
) -> None:
    topic = unique_topic("events")
    create_topic(broker.bootstrap, topic, partitions=3)
    records = [
        {"key": "a", "value": {"n": 0}, "headers": {"h": "v"}, "partition": 0},
        {"key": b"b", "value": "text", "partition": 1},
        {"key": None, "value": b"\x00raw", "partition": 2},
    ]

    acks = produce(broker.bootstrap, topic, records)
    got = consume(broker.bootstrap, topic, count=3, timeout=20)

    assert sorted(p for p, _ in acks) == [0, 1, 2]
    by_partition = {r["partition"]: r for r in got}
    assert set(by_partition) == {0, 1, 2}
    assert by_partition[0]["key"] == b"a"
    assert by_partition[0]["json"] == {"n": 0}
    assert by_partition[0]["headers"] == {"h": b"v"}
    assert by_partition[1]["value"] == b"text"
    assert by_partition[2]["key"] is None
    assert by_partition[2]["value"] == b"\x00raw"


def test_create_topics_is_idempotent(
    broker: EmbeddedBroker, unique_topic: Callable[..., str]
) -> None:
    first, second = unique_topic("a"), unique_topic("b")

    assert sorted(create_topics(broker.bootstrap, {first: 2, second: 1})) == sorted([first, second])
    assert create_topics(broker.bootstrap, {first: 2}) == []


def test_consume_returns_what_it_has_at_timeout(
    broker: EmbeddedBroker, unique_topic: Callable[..., str]
) -> None:
    topic = unique_topic()
    create_topic(broker.bootstrap, topic, partitions=1)
    produce(broker.bootstrap, topic, [{"value": "only"}])

    got = consume(broker.bootstrap, topic, count=5, timeout=1)

    assert [r["value"] for r in got] == [b"only"]


def test_broker_start_failure_quotes_its_log(tmp_path: Path) -> None:
    broken = EmbeddedBroker(binary="/bin/false", log_path=tmp_path / "tansu.log")

    with pytest.raises(BrokerStartError, match="exited with code 1"):
        broken.start()
    assert not broken.running


# --------------------------------------------------------------------------- receiver


def test_receiver_records_json_and_answers_its_script(receiver: Receiver) -> None:
    receiver.respond("/api/events", Reply(503), Reply(429, headers={"Retry-After": "1"}))
    event = {"integrationKey": "il1", "eventType": "ALERT", "summary": "disk", "alertKey": "h1"}

    answers = [http("POST", f"{receiver.url}/api/events?src=t", event) for _ in range(3)]

    assert [status for status, _, _ in answers] == [503, 429, 202]
    assert answers[1][1]["Retry-After"] == "1"
    assert json.loads(answers[2][2])["incidentKey"] == "h1"
    recorded = receiver.wait_for(3, path="/api/events", answered=True)
    assert [r.status for r in recorded] == [503, 429, 202]
    assert all(r.json == event and r.method == "POST" for r in recorded)
    assert recorded[0].query == {"src": "t"}
    assert recorded[0].header("content-type") == "application/json"
    assert [r.index for r in recorded] == sorted(r.index for r in recorded)
    assert all(r.time > 0 and r.answered_at is not None for r in recorded)


def test_receiver_default_paths_and_prefix_routing(receiver: Receiver) -> None:
    receiver.respond("/api/v1/heartbeats/", Reply(404, body={"error": "unknown key"}))

    assert http("GET", f"{receiver.url}/api/v1/heartbeats/hb1")[0] == 404
    assert http("GET", f"{receiver.url}/api/heartbeats/hb1")[0] == 202
    assert http("POST", f"{receiver.url}/api/v1/events/kafka/il1", {"eventType": "ALERT"})[0] == 202
    assert http("PUT", f"{receiver.url}/any/webhook", {"x": 1})[0] == 202
    paths = [(r.method, r.path, r.status) for r in receiver.wait_for(4, answered=True)]
    assert paths == [
        ("GET", "/api/v1/heartbeats/hb1", 404),
        ("GET", "/api/heartbeats/hb1", 202),
        ("POST", "/api/v1/events/kafka/il1", 202),
        ("PUT", "/any/webhook", 202),
    ]


def test_receiver_delay_then_reply(receiver: Receiver) -> None:
    receiver.respond(None, Delay(0.2, then=Reply(200, body="late")))

    status, _, body = http("POST", f"{receiver.url}/hook", {"a": 1})

    assert (status, body) == (200, b"late")


def test_receiver_hang_times_out_the_client(receiver: Receiver) -> None:
    receiver.respond(None, Hang())

    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        http("POST", f"{receiver.url}/api/events", {"eventType": "ALERT"}, timeout=0.5)

    hung = receiver.wait_for(1)[0]
    assert hung.json == {"eventType": "ALERT"}
    assert http("POST", f"{receiver.url}/api/events", {"eventType": "ALERT"})[0] == 202


def test_receiver_wait_for_reports_what_arrived(receiver: Receiver) -> None:
    http("GET", f"{receiver.url}/one")

    with pytest.raises(TimeoutError, match="/one"):
        receiver.wait_for(2, timeout=0.3)


def test_receiver_cli_prints_one_json_line_per_request() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "agents.embedded.receiver", "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None and process.stdout is not None
        banner = process.stderr.readline()
        url = banner.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")

        assert http("POST", f"{url}/api/events", {"summary": "s"})[0] == 202
        line = json.loads(process.stdout.readline())
    finally:
        process.terminate()
        process.wait(timeout=10)

    assert line["method"] == "POST"
    assert line["path"] == "/api/events"
    assert line["json"] == {"summary": "s"}
    assert line["status"] == 202


# --------------------------------------------------------------------------- worker

TINY_APP = textwrap.dedent(
    '''
    """A throwaway Faust app, written by the harness test into its tmp dir."""
    import os

    import faust

    app = faust.App(
        os.environ["TINY_APP_ID"],
        broker="kafka://" + os.environ["TINY_BOOTSTRAP"],
        store="rocksdb://",
        topic_partitions=2,
        # tansu completes a group's first join after half the session timeout.
        broker_session_timeout=2.0,
        broker_heartbeat_interval=0.5,
    )
    source = app.topic(os.environ["TINY_IN"], value_serializer="raw")
    sink = app.topic(os.environ["TINY_OUT"], value_serializer="raw")
    counts = app.Table("counts", default=int, partitions=2)


    @app.agent(source)
    async def count(stream):
        async for event in stream.events():
            counts[event.key] += 1
            await sink.send(key=event.key, value=b"%d" % counts[event.key])
    '''
)


def test_worker_process_runs_a_faust_app(
    broker: EmbeddedBroker, unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    source, sink = unique_topic("in"), unique_topic("out")
    create_topics(broker.bootstrap, {source: 2, sink: 2})
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "tiny_harness_app.py").write_text(TINY_APP)
    env = {
        "TINY_APP_ID": unique_topic("app"),
        "TINY_BOOTSTRAP": broker.bootstrap,
        "TINY_IN": source,
        "TINY_OUT": sink,
    }
    worker = WorkerProcess(
        app_module="tiny_harness_app",
        env=env,
        pythonpath=[tmp_path / "app"],
        workdir=tmp_path / "worker",
    )
    try:
        worker.start()
        worker.wait_ready(timeout=120)
        produce(broker.bootstrap, source, [{"key": "k", "value": "x"}, {"key": "k", "value": "y"}])
        out = consume(broker.bootstrap, sink, count=2, timeout=60)

        assert sorted(r["value"] for r in out) == [b"1", b"2"]
        assert "[^Worker]: Ready" in worker.log_text()
        assert (worker.datadir / "v1" / "tables").is_dir()

        worker.kill()
        assert worker.returncode == -9
    finally:
        worker.stop()
