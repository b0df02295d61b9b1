"""The sink's dead letters when the broker refuses them as too large (agents.sink.letters):
a refusal is first taken as the batch's (the letter is sent again alone, agents.producer),
and only a letter refused alone is written without the original value."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from aiokafka.errors import MessageSizeTooLargeError

from agents.counters import Counters
from agents.sink.letters import SinkLetters
from agents.sink.stopping import StopSignal
from streams.config.checked import load_checked
from streams.deadletter import DeadLetter

CONFIG = """\
integrations:
  - {name: home, bootstrapServers: "127.0.0.1:9"}
targets:
  - {name: hook, type: webhook, url: "http://127.0.0.1:9/hook"}
eventHandlers:
  - name: h
    event: kafka:home:src
    active: true
    actions: [{action: webhook, webhook: {target: hook}}]
"""


class DlqTopic:
    """A Faust topic's `send` and its app's producer `send_alone`, as the letters use them.
    The broker refuses a letter over `limit`, and, while `batch_refused`, any letter sent in
    a batch with others."""

    def __init__(self, limit: int, batch_refused: bool) -> None:
        self.limit = limit
        self.batch_refused = batch_refused
        self.calls: list[str] = []
        self.written: list[bytes] = []
        self.app = SimpleNamespace(producer=SimpleNamespace(send_alone=self.send_alone))

    def get_topic_name(self) -> str:
        return "herald-dlq-home"

    async def send(self, *, key: Any, value: bytes, headers: Any, force: bool) -> asyncio.Future:
        return self._ack("send", value, refused=self.batch_refused or len(value) > self.limit)

    async def send_alone(self, topic: str, key: Any, value: bytes, *rest: Any) -> asyncio.Future:
        return self._ack("alone", value, refused=len(value) > self.limit)

    def _ack(self, how: str, value: bytes, refused: bool) -> asyncio.Future:
        self.calls.append(how)
        fut = asyncio.get_running_loop().create_future()
        if refused:
            fut.set_exception(MessageSizeTooLargeError(f"{len(value)} bytes"))
        else:
            self.written.append(value)
            fut.set_result(None)
        return fut


def letter(value: bytes) -> DeadLetter:
    return DeadLetter(
        stage="delivery",
        reason="HTTP 400",
        integration="home",
        source={"topic": "src", "partition": 0, "offset": 7, "key": None, "headers": {}},
        value=base64.b64encode(value).decode(),
    )


def publish(tmp_path: Path, topic: DlqTopic, dead: DeadLetter) -> dict:
    path = tmp_path / "herald.yaml"
    path.write_text(CONFIG)
    config = load_checked(path).config
    letters = SinkLetters(config, lambda name: topic, Counters(), StopSignal())
    asyncio.run(letters._publish(dead))
    (written,) = topic.written
    return orjson.loads(written)


def test_a_letter_refused_with_its_batch_is_written_alone_with_its_value(tmp_path: Path) -> None:
    topic = DlqTopic(limit=100_000, batch_refused=True)
    written = publish(tmp_path, topic, letter(b"original"))
    assert topic.calls == ["send", "alone"]
    assert base64.b64decode(written["value"]) == b"original"


def test_a_letter_too_large_alone_is_written_without_its_value(tmp_path: Path) -> None:
    topic = DlqTopic(limit=2_000, batch_refused=False)
    written = publish(tmp_path, topic, letter(b"x" * 5_000))
    assert topic.calls == ["send", "alone", "alone"]
    assert written["value"] is None and "left out" in written["valueMissing"]
    assert written["source"]["offset"] == 7
