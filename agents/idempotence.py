"""Idempotent producers where the broker has them (issue 11).

A produce the client retries (a timeout, a leader change, a broker that crashed after writing
but before answering) is written twice by a plain producer, and with more than one request in
flight a retried batch can land after a later one: a key's action requests out of order. An
idempotent producer (KIP-98: a producer id from ``InitProducerId``, a sequence number per
partition in every batch) lets the broker drop the duplicate and refuse the gap, so a retry
can neither duplicate nor reorder.

Not every Kafka-protocol broker has them: tansu (the embedded broker of ``herald demo``)
answers ``InitProducerId`` with an error, and an aiokafka producer with
``enable_idempotence=True`` then never sends anything. So Herald asks the broker once, when
the producer starts (:func:`supports_idempotence`: a real ``InitProducerId`` without a
transactional id, the very request the producer would send first), and turns idempotence on
only if the broker hands out a producer id. The answer is logged, so an operator can see
which one a worker runs with.

**Opt-in** (`herald.idempotentProducer`, default false), because of what an integration test
on Apache Kafka 4.4 showed (tests/integration/test_size_limits.py with the setting on): a
batch the broker refuses for good (a record over a max.message.bytes lowered at runtime) has
used its sequence numbers; the partition's next batch is then refused as
OutOfOrderSequenceNumber, which aiokafka 0.14 treats as fatal: its sender task ends and every
later produce of the worker fails, a stall of everything. Kafka's Java producer recovers by
bumping the epoch (KIP-360); aiokafka does not. Without idempotence a retried produce may be
written twice (the dedupe table and the dead letters' stable ids absorb that) and order
holds, aiokafka sending one batch per partition at a time.

Faust's aiokafka producer enables idempotence only inside transactions
(``Producer._settings_extra``); :class:`HeraldProducer` adds it there, and
:class:`IdempotentHeraldApp` is Herald's app with a transport that builds that producer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.transaction import InitProducerIdRequest
from faust.transport.drivers import aiokafka as aiokafka_driver

from agents.producer import Headers, send_alone
from agents.transport import HeraldApp, HeraldTransport

log = logging.getLogger("herald.producer")

__all__ = ["HeraldProducer", "IdempotentHeraldApp", "client_settings", "supports_idempotence"]

#: aiokafka producer settings an `AIOKafkaClient` takes too (where and how to connect).
_CLIENT_KEYS = (
    "bootstrap_servers",
    "client_id",
    "metadata_max_age_ms",
    "connections_max_idle_ms",
    "api_version",
    "security_protocol",
    "ssl_context",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
    "sasl_kerberos_service_name",
    "sasl_kerberos_domain_name",
    "sasl_oauth_token_provider",
)


def client_settings(producer_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The connection part of aiokafka producer settings, for a probe client (not the
    request timeout: the probe has its own)."""
    return {k: producer_settings[k] for k in _CLIENT_KEYS if k in producer_settings}


async def supports_idempotence(client_kwargs: Mapping[str, Any], timeout: float = 10.0) -> bool:
    """Whether the broker hands out producer ids (``InitProducerId`` without a transactional
    id, which any broker of the cluster answers).

    A broker that refuses it (tansu: an error code; a pre-0.11 broker: no such request) gets
    a plain producer. Retriable answers (Kafka's producer-id manager still loading after a
    start) are asked again until `timeout`; then the answer is no, so a worker on a slow
    broker still starts. A broker that cannot be reached at all raises, as the producer's own
    start would.
    """
    # Its own request timeout: Faust's producer waits up to 20 minutes for an answer.
    client = AIOKafkaClient(**{**client_kwargs, "request_timeout_ms": int(timeout * 1000)})
    deadline = time.monotonic() + timeout
    try:
        await client.bootstrap()
        while True:
            node = client.get_random_node()
            reason: str
            try:
                response = await client.send(node, InitProducerIdRequest(None, 60_000))
            except Exception as exc:  # refused version, dropped connection
                reason = f"{exc.__class__.__name__}: {exc}"
                retriable = bool(getattr(exc, "retriable", False))
            else:
                if response.error_code == 0 and response.producer_id >= 0:
                    return True
                error = for_code(response.error_code)
                reason = f"InitProducerId answered {error.__name__} ({response.error_code})"
                retriable = bool(getattr(error, "retriable", False))
            if not retriable:
                log.info("the broker has no idempotent producers (%s)", reason)
                return False
            if time.monotonic() >= deadline:
                log.warning(
                    "the broker gave no producer id within %.0fs (%s): plain producer",
                    timeout,
                    reason,
                )
                return False
            await asyncio.sleep(0.2)
    finally:
        await client.close()


class HeraldProducer(aiokafka_driver.Producer):
    """Faust's aiokafka producer, idempotent (``enable_idempotence``, ``acks=all``) when the
    broker supports it, and able to send a record alone (`send_alone`)."""

    #: Set by :meth:`on_start` from the broker's answer.
    idempotent: bool = False

    async def on_start(self) -> None:
        runtime = getattr(self.app, "herald", None)
        if runtime is not None and runtime.config.herald.idempotentProducer:
            settings = {**self._settings_default(), **self._settings_auth()}
            self.idempotent = await supports_idempotence(client_settings(settings))
        log.info(
            "producer: idempotence %s",
            "on (enable_idempotence, acks=all)" if self.idempotent else "off",
        )
        await super().on_start()

    def lower_batch_size(self, size: int) -> None:
        """Hold batches under `size` bytes from now on (a topic's max.message.bytes, read after
        the producer started: agents.app.fit_to_topic_limits). The running aiokafka producer
        has no setter: its accumulator's size is what every new batch is built with."""
        self.max_batch_size = size
        accumulator = getattr(self._producer, "_message_accumulator", None)
        if accumulator is not None and hasattr(accumulator, "_batch_size"):
            accumulator._batch_size = size
        log.info("producer batches held under %d bytes (a topic's max.message.bytes)", size)

    async def send_alone(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        timestamp: float | None = None,
        headers: Headers = None,
    ) -> asyncio.Future:
        """Faust's `send`, with the record in a batch of its own (agents.producer: how a
        refusal as too large is told apart from a batch's)."""
        return await send_alone(
            self._ensure_producer(), topic, key, value, partition, timestamp, headers
        )

    def _settings_extra(self) -> Mapping[str, Any]:
        if self.idempotent:
            return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}
        return super()._settings_extra()


class IdempotentTransport(HeraldTransport):
    """Herald's transport with :class:`HeraldProducer`."""

    Producer = HeraldProducer


class IdempotentHeraldApp(HeraldApp):
    """Herald's app on :class:`IdempotentTransport`."""

    def _new_transport(self) -> IdempotentTransport:
        return IdempotentTransport(self.conf.broker_consumer, self)
