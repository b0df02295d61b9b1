"""No resolved secret leaves a real worker, whatever text carries it (issue 10).

Seen before the central scrubber: a webhook receiver that echoes the request in its 400 body
put `Authorization: Bearer <token>` into the worker log, the dead letter's reason and the
execution record's error. Here the target's header is `Bearer ${env:SOME_TOKEN}`, the
receiver answers 400 with the request's headers in its body, and the token must appear in
none of the worker's log, the dead letters, the execution records and the web answers.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from agents.embedded.broker import EmbeddedBroker
from agents.embedded.receiver import Receiver, RecordedRequest, Reply
from tests.support.herald import HeraldDeployment, stats, webhook_target
from tests.support.kafka import consume, produce


class EchoingReceiver(Receiver):
    """A receiver whose replies carry the request's headers in the body, as some servers'
    error pages do (`400 Bad Request` with a dump of what was received)."""

    def _build(self, reply: Reply, record: RecordedRequest) -> web.Response:
        lines = [f"{name}: {value}" for name, value in record.headers.items()]
        lines.sort(key=lambda line: not line.lower().startswith("authorization"))
        body = "bad request; received:\n" + "\n".join(lines)
        return web.Response(status=reply.status, text=body)


@pytest.fixture
def echoing() -> Iterator[EchoingReceiver]:
    server = EchoingReceiver(default=Reply(400))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_for(predicate, timeout: float, what: str):  # noqa: ANN001, ANN201 - a test helper
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def test_a_token_echoed_by_a_receiver_appears_in_no_log_letter_record_or_answer(
    broker: EmbeddedBroker, echoing: EchoingReceiver, unique_topic, tmp_path: Path
) -> None:
    token = f"tok-{uuid.uuid4().hex}"
    topic = unique_topic("secrets")
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[
            {
                "name": "to-hooks",
                "event": f"kafka:local:{topic}",
                "active": True,
                "actions": [{"action": "webhook", "webhook": {"url": "x", "body": {"n": "${n}"}}}],
            }
        ],
        targets=[
            webhook_target(echoing.url, headers={"Authorization": "Bearer ${env:SOME_TOKEN}"})
        ],
    )
    try:
        worker = herald.worker()
        worker.env["SOME_TOKEN"] = token
        herald.start_worker(worker)
        produce(broker.bootstrap, topic, [{"key": "k", "value": {"n": 1}}])

        [request] = echoing.wait_for(1, timeout=60, answered=True)
        assert request.header("Authorization") == f"Bearer {token}"  # it was sent, and echoed
        letters = wait_for(
            lambda: consume(broker.bootstrap, herald.dlq_topic, 1, timeout=2),
            60,
            "the dead letter",
        )
        records = wait_for(
            lambda: [
                r
                for r in consume(broker.bootstrap, herald.executions_topic, 10, timeout=2)
                if r["json"] and r["json"]["status"] == "DEAD_LETTERED"
            ],
            60,
            "the DEAD_LETTERED execution record",
        )
        worker.wait_for_log(r"dead-lettered webhook", timeout=30)
        answers = json.dumps(stats(worker))
        with urllib.request.urlopen(f"{worker.web_url}/ready", timeout=5) as response:
            answers += response.read().decode()
        log = worker.log_text()
    finally:
        herald.stop()

    [letter] = letters
    reason = letter["json"]["reason"]
    print(f"\ndead letter reason: {reason[:160]!r}")
    exposed = {
        "worker log": token in log,
        "dead letter": token.encode() in (letter["value"] or b"")
        or any(token.encode() in value for value in letter["headers"].values()),
        "execution records": any(token.encode() in (r["value"] or b"") for r in records),
        "web answers": token in answers,
    }
    assert not any(exposed.values()), exposed
    assert reason.startswith("HTTP 400: bad request; received:\nAuthorization: ***\n")
    assert "Authorization: ***" in log  # the log line is there, masked
    assert "Authorization: ***" in records[0]["json"]["error"]
