"""The executions topic's retention: `herald.executionRetentionSeconds`, and what the broker has.

The worker creates `<prefix>-executions` with `retention.ms` = executionRetentionSeconds
(agents.topics). A topic that already exists keeps the retention it has: Herald does not
change it, because Kafka's AlterConfigs replaces every dynamic setting of the topic at once
(an operator's `max.message.bytes`, say) and IncrementalAlterConfigs is not in aiokafka's
admin client. Instead, at start the worker reads the topic's `retention.ms` (DescribeConfigs,
as agents.limits reads `max.message.bytes`) and, when it differs, says so in the log with the
`kafka-configs` command that sets it. A broker that does not answer DescribeConfigs (the
embedded tansu) is only noted.
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

log = logging.getLogger("herald.retention")

RETENTION_MS = "retention.ms"


def retention_ms(seconds: float) -> int:
    """retention.ms for a retention in seconds, as Faust creates the topic with it."""
    return max(1, int(seconds * 1000))


def parse_retention(responses: Iterable[Any], topic: str) -> int | None:
    """The topic's retention.ms from DescribeConfigs responses; None when not given."""
    for response in responses:
        for resource in response.resources:
            error_code, _message, _type, name, entries = resource[:5]
            if error_code or name != topic:
                continue
            for entry in entries:
                if entry[0] == RETENTION_MS and entry[1] is not None:
                    try:
                        return int(entry[1])
                    except ValueError:
                        return None
    return None


def mismatch(topic: str, have_ms: int, want_ms: int, bootstrap: str) -> str | None:
    """The warning for a topic whose retention is not the configured one; None when it is."""
    if have_ms == want_ms:
        return None
    return (
        f"topic {topic} keeps records {_human(have_ms)} (retention.ms={have_ms}), but "
        f"herald.executionRetentionSeconds says {_human(want_ms)}: the topic existed before "
        "and Herald does not change an existing topic's configuration; to apply it, run "
        f"kafka-configs.sh --bootstrap-server {bootstrap} --alter --entity-type topics "
        f"--entity-name {topic} --add-config retention.ms={want_ms}"
    )


def _human(ms: int) -> str:
    if ms < 0:
        return "for ever"
    seconds = ms / 1000
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


async def check_retention(
    integration: Integration, topic: str, want_seconds: float, timeout: float = 10.0
) -> int | None:
    """Compare the topic's retention.ms with the configured one and log a difference; the
    topic's retention.ms, or None when the broker did not say."""
    want = retention_ms(want_seconds)
    admin = AIOKafkaAdminClient(
        request_timeout_ms=int(timeout * 1000), **aiokafka_kwargs(integration)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, {RETENTION_MS: None})
        responses = await asyncio.wait_for(admin.describe_configs([resource]), timeout)
        have = parse_retention(responses, topic)
    except Exception as exc:  # not every broker answers DescribeConfigs (tansu does not)
        log.info(
            "the broker did not give the retention of %s (%s); it was created with "
            "retention.ms=%d if Herald created it",
            topic,
            exc.__class__.__name__,
            want,
        )
        return None
    finally:
        try:
            await admin.close()
        except Exception:
            pass
    if have is None:
        return None
    warning = mismatch(topic, have, want, integration.bootstrapServers)
    if warning:
        log.warning("%s", warning)
    else:
        log.info("topic %s keeps execution records %s", topic, _human(have))
    return have
