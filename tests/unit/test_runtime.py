"""The worker's shared resources without a broker: the Runtime's delivery context and the
Publisher's answers for each way a publish can fail (agents.runtime, agents.publisher)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from agents.publisher import Publisher
from agents.runtime import Runtime
from streams.avro.codecs import AvroCodecs
from streams.config.checked import load_checked
from streams.config.models import HeraldConfig
from streams.errors import DeliveryError

CONFIG = """\
integrations:
  - {name: home, bootstrapServers: "127.0.0.1:9"}
targets:
  - {name: hook, type: webhook, url: "http://127.0.0.1:9/hook"}
"""


@pytest.fixture
def config(tmp_path: Path) -> HeraldConfig:
    path = tmp_path / "herald.yaml"
    path.write_text(CONFIG)
    return load_checked(path).config


class HomeProducer:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.sent: list[tuple[Any, ...]] = []

    async def send_and_wait(self, topic: str, key: Any, value: Any, **kwargs: Any) -> Any:
        if self.error is not None:
            raise self.error
        self.sent.append((topic, key, value, kwargs["headers"]))
        return SimpleNamespace(topic=topic, partition=3, offset=42)

    async def send_alone(self, topic: str, key: Any, value: Any, *rest: Any) -> Any:
        """A batch of its own (agents.producer): refused alike."""
        if self.error is not None:
            raise self.error
        raise AssertionError("sent alone without a refusal first")


def publisher(config: HeraldConfig, producer: HomeProducer) -> Publisher:
    app = SimpleNamespace(producer=producer)
    return Publisher(app, config, AvroCodecs(config))  # type: ignore[arg-type]


def publish(pub: Publisher, integration: str | None, **kwargs: Any) -> Any:
    return asyncio.run(pub.publish(integration, "out", b"k", b"v", [], **kwargs))


def test_a_publish_to_the_home_integration_uses_the_workers_producer(config: HeraldConfig) -> None:
    producer = HomeProducer()
    result = publish(publisher(config, producer), None)
    assert result == {"topic": "out", "partition": 3, "offset": 42}
    assert producer.sent == [("out", b"k", b"v", [])]


@pytest.mark.parametrize(
    ("error", "retryable", "words"),
    [
        (MessageSizeTooLargeError(), False, "over the size limit"),
        (KafkaConnectionError(), True, "failed: KafkaConnectionError"),
    ],
)
def test_each_failure_says_whether_a_retry_can_help(
    config: HeraldConfig, error: Exception, retryable: bool, words: str
) -> None:
    with pytest.raises(DeliveryError) as caught:
        publish(publisher(config, HomeProducer(error)), "home")
    assert caught.value.retryable is retryable
    assert words in str(caught.value)


def test_an_unknown_integration_or_avro_without_a_registry_is_permanent(
    config: HeraldConfig,
) -> None:
    pub = publisher(config, HomeProducer())
    with pytest.raises(DeliveryError, match="no integration named 'nowhere'") as unknown:
        publish(pub, "nowhere")
    assert not unknown.value.retryable
    with pytest.raises(DeliveryError, match="no schemaRegistry") as avro:
        publish(pub, "home", avro={"format": "avro", "value": {"a": 1}})
    assert not avro.value.retryable


def test_the_runtime_hands_out_one_delivery_context_and_closes_its_clients(
    config: HeraldConfig,
) -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        app = SimpleNamespace(producer=HomeProducer())
        runtime = Runtime(app, config, "herald.yaml", None, None, None)  # type: ignore[arg-type]
        first = runtime.delivery_context()
        same = runtime.delivery_context() is first
        routed = first.publish == runtime.publisher.publish
        await runtime.close()
        return same, routed, first.session.closed

    same, routed, closed = asyncio.run(scenario())
    assert same  # one context: its clients keep the connections alive
    assert routed
    assert closed
