"""Publishing to Kafka for `publish` actions: to the home cluster or any other integration.

The home integration's records go through the worker's own (Faust's) producer; another
integration gets an aiokafka producer of its own, with its security settings, started on first
use. Every publish waits for the broker's acknowledgement, and every failure becomes a
`DeliveryError` saying whether a retry can help: the sink's retries and dead letters apply to
publishing as to any other delivery.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from aiokafka import AIOKafkaProducer

from agents.idempotence import client_settings, supports_idempotence
from agents.producer import send_alone, too_large
from streams.actions.base import Headers
from streams.avro.codec import AvroSpec, EncodeError
from streams.avro.codecs import AvroCodecs
from streams.config.models import HeraldConfig, SendingProtocol
from streams.errors import DeliveryError
from streams.security import aiokafka_kwargs, probe

log = logging.getLogger("herald")


class Publisher:
    def __init__(self, app: faust.App, config: HeraldConfig, codecs: AvroCodecs) -> None:
        self._app = app
        self._config = config
        self._codecs = codecs
        self._producers: dict[str, AIOKafkaProducer] = {}

    async def publish(
        self,
        integration: str | None,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        *,
        avro: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Publish and wait for the broker's acknowledgement. With `avro` (the value as data
        and how to write it) the value is written as Confluent Avro when the format says so or
        the integration's sendingProtocol is AVRO."""
        name = integration or self._config.home.name
        try:
            if avro is not None:
                encoded = await self._encode_avro(name, topic, avro)
                if encoded is not None:
                    value = encoded
            meta = await self._send(name, topic, key, value, headers)
        except DeliveryError:
            raise
        except LookupError:
            raise DeliveryError(
                f"publish: no integration named {name!r}", retryable=False
            ) from None
        except Exception as exc:
            if not too_large(exc):  # the client's errors: all transient from our point of view
                raise DeliveryError(
                    f"publish to {name}:{topic} failed: {exc.__class__.__name__}: {exc}",
                    retryable=True,
                ) from exc
            # the producer's or the broker's limit, the record alone
            size = len(value or b"") + len(key or b"")
            raise DeliveryError(
                f"publish to {name}:{topic}: the record ({size} bytes) is over the size limit "
                f"(the integration's maxRequestSize or the topic's max.message.bytes): {exc}",
                retryable=False,
            ) from None
        return {"topic": meta.topic, "partition": meta.partition, "offset": meta.offset}

    async def _send(
        self, name: str, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> Any:
        """Send and wait; a refusal as too large is checked with the record alone
        (agents.producer) before it is taken to be the record's own."""
        home = name == self._config.home.name
        producer: Any = self._app.producer if home else await self._producer(name)
        try:
            if home:  # Faust's producer
                return await producer.send_and_wait(
                    topic, key, value, partition=None, timestamp=None, headers=headers
                )
            return await producer.send_and_wait(topic, value, key=key, headers=headers)
        except Exception as exc:
            if not too_large(exc):
                raise
        if home:
            fut = await producer.send_alone(topic, key, value, None, None, headers)
        else:
            fut = await send_alone(producer, topic, key, value, headers=headers)
        return await fut

    async def _encode_avro(self, name: str, topic: str, avro: dict[str, Any]) -> bytes | None:
        """Avro bytes for a publish, or None when it is to be written as JSON/text (format
        auto to an integration whose sendingProtocol is STRING)."""
        integration = self._config.integration(name)
        explicit = avro.get("format") == "avro"
        if not explicit and integration.sendingProtocol is not SendingProtocol.AVRO:
            return None
        codec = self._codecs.get(name)
        if codec is None:
            raise DeliveryError(
                f"publish: integration {name!r} has no schemaRegistry to write Avro with",
                retryable=False,
            )
        try:
            return await codec.encode(topic, avro.get("value"), AvroSpec.from_dict(avro))
        except EncodeError as exc:
            raise DeliveryError(
                f"publish to {name}:{topic}: {exc}", retryable=exc.retryable
            ) from None

    async def _producer(self, name: str) -> AIOKafkaProducer:
        producer = self._producers.get(name)
        if producer is None:
            integration = self._config.integration(name)
            kwargs = aiokafka_kwargs(integration)
            idempotent = False
            if self._config.herald.idempotentProducer:  # opt-in: see agents.idempotence
                try:
                    idempotent = await supports_idempotence(client_settings(kwargs))
                except Exception:  # unreachable: the start below fails and says why
                    idempotent = False
            producer = AIOKafkaProducer(
                acks="all",
                enable_idempotence=idempotent,
                compression_type=integration.producer_compression,
                max_request_size=integration.maxRequestSize,
                **kwargs,
            )
            try:
                await producer.start()
            except Exception:
                await producer.stop()
                # The client only says it could not bootstrap: find out why, in words.
                result = await probe(integration, timeout=10.0)
                raise DeliveryError(
                    f"publish: {result.summary}", retryable=not result.permanent
                ) from None
            self._producers[name] = producer
        return producer

    async def close(self) -> None:
        for producer in self._producers.values():
            await producer.stop()
        self._producers.clear()
