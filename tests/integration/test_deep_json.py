"""JSON nested deeper than the parser's limit is dead-lettered, never taken as text (issue 10).

orjson stops at 1024 levels. Before, such a value (valid JSON, 1,100 or 10,000 levels deep)
was taken as plain text, the condition `$.type == 'ALARM'` was false and the event vanished:
no dead letter, no log line. Now it is a `decode` dead letter with the reason and its bytes,
and the events beside it are delivered.
"""

from __future__ import annotations

import base64
from pathlib import Path

import orjson

from agents.embedded.broker import EmbeddedBroker
from agents.embedded.receiver import Receiver
from tests.integration.test_guarantees import wait_all
from tests.support.herald import HeraldDeployment, webhook_target
from tests.support.kafka import consume, produce


def deep(depth: int, n: int) -> bytes:
    return b'{"type": "ALARM", "n": %d, "deep": ' % n + b"[" * depth + b"]" * depth + b"}"


def test_json_deeper_than_the_parser_goes_is_a_decode_dead_letter_and_the_rest_flows(
    broker: EmbeddedBroker, receiver: Receiver, unique_topic, tmp_path: Path
) -> None:
    topic = unique_topic("deep")
    herald = HeraldDeployment(
        tmp_path,
        broker.bootstrap,
        handlers=[
            {
                "name": "alarms",
                "event": f"kafka:local:{topic}",
                "active": True,
                "condition": "$.type == 'ALARM'",
                "actions": [{"action": "webhook", "webhook": {"url": "n", "body": {"n": "${n}"}}}],
            }
        ],
        targets=[webhook_target(receiver.url)],
        source_partitions=1,
    )
    deep_values = {1: deep(1_100, 1), 2: deep(10_000, 2)}
    records = [
        {"key": "k", "value": orjson.dumps({"type": "ALARM", "n": 0})},
        {"key": "k", "value": deep_values[1]},
        {"key": "k", "value": deep_values[2]},
        {"key": "k", "value": orjson.dumps({"type": "ALARM", "n": 3})},
    ]
    try:
        produce(broker.bootstrap, topic, records)
        worker = herald.start_worker()
        wait_all(receiver, {0, 3}, timeout=60)
        letters = consume(broker.bootstrap, herald.dlq_topic, 2, timeout=30)
        worker.wait_for_log(r"dead-lettered .*\(decode\): value is JSON nested deeper", timeout=30)
    finally:
        herald.stop()

    assert len(letters) == 2, letters
    by_offset = {letter["json"]["source"]["offset"]: letter["json"] for letter in letters}
    assert sorted(by_offset) == [1, 2]
    for offset, letter in by_offset.items():
        assert letter["stage"] == "decode"
        assert "JSON nested deeper than 1024 levels" in letter["reason"]
        assert base64.b64decode(letter["value"]) == deep_values[offset]
    assert sorted(r.json["n"] for r in receiver.requests if r.status == 202) == [0, 3]
