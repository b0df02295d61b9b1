"""State one worker shares between its agents: config, rules, HTTP session, producers."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from agents.idempotence import client_settings, supports_idempotence
from agents.rules import RuleSet
from agents.tables import Tables
from agents.topics import Topics
from streams.actions.base import DeliveryContext, Headers
from streams.avro.codec import AvroCodec, AvroSpec, EncodeError
from streams.avro.registry import RegistryClient
from streams.config.models import HeraldConfig, SendingProtocol, Target
from streams.errors import DeliveryError
from streams.http1 import Http1Client
from streams.security import aiokafka_kwargs, probe

log = logging.getLogger("herald")


@dataclass
class Counters:
    """Plain counters exposed on /stats; cheap enough for the hot path."""

    consumed: int = 0
    matched: int = 0
    actions_produced: int = 0
    dead_lettered: int = 0
    delivered: int = 0
    skipped_duplicates: int = 0
    retries: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Runtime:
    app: faust.App
    config: HeraldConfig
    config_file: str
    topics: Topics
    tables: Tables
    rules: RuleSet
    counters: Counters = field(default_factory=Counters)
    stalls: list[Any] = field(default_factory=list)  # agents.ledger.Stall, refreshed by a timer
    _http: aiohttp.ClientSession | None = None
    _http1: Http1Client | None = None
    _context: DeliveryContext | None = None
    _producers: dict[str, AIOKafkaProducer] = field(default_factory=dict)
    _avro: dict[str, AvroCodec] = field(default_factory=dict)

    @property
    def home(self) -> str:
        return self.config.home.name

    @functools.cached_property
    def targets(self) -> dict[str, Target]:
        return {t.name: t for t in self.config.targets}

    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(limit=max(100, self.config.herald.maxInFlight))
            # No cookies: deliveries are independent calls, and the jar costs time on each.
            self._http = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._http

    def avro(self, name: str) -> AvroCodec | None:
        """The Avro codec (schema registry client) of an integration that has a registry."""
        codec = self._avro.get(name)
        if codec is None:
            integration = self.config.integration(name)
            if integration.schemaRegistry is None:
                return None
            codec = self._avro[name] = AvroCodec(integration, RegistryClient(integration))
        return codec

    def codec_for(self, name: str) -> AvroCodec | None:
        """How records consumed from an integration decode: None for STRING."""
        integration = self.config.integration(name)
        if integration.sendingProtocol is not SendingProtocol.AVRO:
            return None
        return self.avro(name)

    async def _encode_avro(self, name: str, topic: str, avro: dict[str, Any]) -> bytes | None:
        """Avro bytes for a publish, or None when it is to be written as JSON/text (format
        auto to an integration whose sendingProtocol is STRING)."""
        integration = self.config.integration(name)
        explicit = avro.get("format") == "avro"
        if not explicit and integration.sendingProtocol is not SendingProtocol.AVRO:
            return None
        codec = self.avro(name)
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

    def delivery_context(self) -> DeliveryContext:
        """One context for every delivery: its clients hold the kept-alive connections."""
        if self._context is None or self._context.session.closed:
            if self._http1 is None:
                limit = max(100, self.config.herald.maxInFlight)
                self._http1 = Http1Client(limit_per_origin=limit)
            self._context = DeliveryContext(
                http=self._http1,
                session=self.http(),
                targets=self.targets,
                publish=self.publish,
            )
        return self._context

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
        name = integration or self.home
        try:
            if avro is not None:
                encoded = await self._encode_avro(name, topic, avro)
                if encoded is not None:
                    value = encoded
            if name == self.home:
                meta = await self.app.producer.send_and_wait(
                    topic, key, value, partition=None, timestamp=None, headers=headers
                )
            else:
                producer = await self._producer(name)
                meta = await producer.send_and_wait(topic, value, key=key, headers=headers)
        except DeliveryError:
            raise
        except LookupError:
            raise DeliveryError(
                f"publish: no integration named {name!r}", retryable=False
            ) from None
        except MessageSizeTooLargeError as exc:  # the producer's or the broker's limit
            size = len(value or b"") + len(key or b"")
            raise DeliveryError(
                f"publish to {name}:{topic}: the record ({size} bytes) is over the size limit "
                f"(the integration's maxRequestSize or the topic's max.message.bytes): {exc}",
                retryable=False,
            ) from None
        except Exception as exc:  # the client's errors: all transient from our point of view
            raise DeliveryError(
                f"publish to {name}:{topic} failed: {exc.__class__.__name__}: {exc}",
                retryable=True,
            ) from exc
        return {"topic": meta.topic, "partition": meta.partition, "offset": meta.offset}

    async def _producer(self, name: str) -> AIOKafkaProducer:
        producer = self._producers.get(name)
        if producer is None:
            integration = self.config.integration(name)
            kwargs = aiokafka_kwargs(integration)
            idempotent = False
            if self.config.herald.idempotentProducer:  # opt-in: see agents.idempotence
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
        if self._http is not None:
            await self._http.close()
        if self._http1 is not None:
            await self._http1.close()
        for producer in self._producers.values():
            await producer.stop()
        self._producers.clear()
        for codec in self._avro.values():
            await codec.registry.close()
        await asyncio.sleep(0)
