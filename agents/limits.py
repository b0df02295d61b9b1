"""How large a record Herald may produce to its own topics.

Two limits refuse a record: the producer's `max.request.size` (the integration's
`maxRequestSize`; aiokafka raises MessageSizeTooLargeError before sending) and the topic's
`max.message.bytes` on the broker (the broker answers MESSAGE_TOO_LARGE), which it applies to
each producer batch as a whole: so the producer's batch size is held under the same limits
(`batch_limit`). Herald must never
let either reach an agent (issue 10), so the source agent fits every action request and dead
letter under the smaller of the two (`agents.sources.fit_to_limit`). The topic's limit is read
with DescribeConfigs where the broker answers it (Apache Kafka does; the embedded tansu does
not, and then the producer's limit alone applies). A broker that still refuses a record
(its limit changed later) gets it as a dead letter instead, in `agents.sources`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.config.models import Integration
from streams.security import aiokafka_kwargs

log = logging.getLogger("herald.limits")

MAX_MESSAGE_BYTES = "max.message.bytes"
#: What a produced record carries besides key and value (record and batch headers), with room.
RECORD_OVERHEAD = 1024


def parse_max_message_bytes(responses: Iterable[Any]) -> dict[str, int]:
    """Each topic's max.message.bytes from DescribeConfigs responses (any version)."""
    limits: dict[str, int] = {}
    for response in responses:
        for resource in response.resources:
            error_code, _message, _type, name, entries = resource[:5]
            if error_code:
                continue
            for entry in entries:
                if entry[0] == MAX_MESSAGE_BYTES and entry[1] is not None:
                    try:
                        limits[name] = int(entry[1])
                    except ValueError:
                        pass
    return limits


async def topic_limits(
    integration: Integration, topics: list[str], timeout: float = 10.0
) -> dict[str, int]:
    """The broker's max.message.bytes of `topics`; empty when the broker does not say."""
    admin = AIOKafkaAdminClient(
        request_timeout_ms=int(timeout * 1000), **aiokafka_kwargs(integration)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, topic, {MAX_MESSAGE_BYTES: None})
            for topic in topics
        ]
        responses = await asyncio.wait_for(admin.describe_configs(resources), timeout)
        return parse_max_message_bytes(responses)
    except Exception as exc:  # not every broker answers DescribeConfigs (tansu does not)
        log.info(
            "the broker did not give max.message.bytes of %s (%s); records are fitted to "
            "the producer's maxRequestSize only",
            ", ".join(topics),
            exc.__class__.__name__,
        )
        return {}
    finally:
        try:
            await admin.close()
        except Exception:
            pass


def record_limit(max_request_size: int, topic_max_bytes: Iterable[int]) -> int:
    """The largest key + value + headers to produce: under the producer's request size and
    every topic's max.message.bytes (a batch of one record adds ~70 bytes of framing)."""
    limits = [max_request_size, *topic_max_bytes]
    return max(min(limits) - RECORD_OVERHEAD, 1024)


def batch_limit(
    batch_bytes: int, max_request_size: int, topic_max_bytes: Iterable[int] = ()
) -> int:
    """The producer's batch size per partition (aiokafka's max_batch_size, Kafka's batch.size):
    `herald.producerBatchBytes`, under what one record may be, since a batch goes to the broker
    as one message set, which it checks against the topic's max.message.bytes."""
    return min(batch_bytes, record_limit(max_request_size, topic_max_bytes))
