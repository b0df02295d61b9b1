"""`herald rules put|delete`: change handlers at runtime through the rules topic.

A put validates the handlers with the configuration loader's own checks (YAML 1.2 booleans,
unknown fields, strict booleans, conditions, templates, values fixed in the file, targets,
integrations) before publishing, so a rule the configuration would refuse never reaches the
workers.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from agents.rules import handler_blob
from agents.topics import rules_name
from streams.config import loader
from streams.config.models import EventHandler, HeraldConfig
from streams.errors import ConfigError
from streams.security import aiokafka_kwargs


def load_handlers(config: HeraldConfig, file: str) -> list[EventHandler]:
    """Read one handler or a list of handlers (JSON or YAML); raise ConfigError on problems.

    The loader's `load_handlers`, so `herald rules put` refuses exactly what `herald check`
    refuses in a configuration's eventHandlers, in the same words.
    """
    return loader.load_handlers(file, config)


def put_rules(config: HeraldConfig, config_path: str, file: str) -> int:
    try:
        handlers = load_handlers(config, file)
    except ConfigError as exc:
        for line in exc.problems:
            print(line)
        return 2
    records = [(h.name.encode(), handler_blob(h)) for h in handlers]
    asyncio.run(publish_to_rules_topic(config, records))
    for handler in handlers:
        print(f"published handler {handler.name!r} to {rules_name(config)}")
    return 0


def delete_rule(config: HeraldConfig, name: str) -> int:
    asyncio.run(publish_to_rules_topic(config, [(name.encode(), None)]))
    print(f"deleted handler {name!r} from {rules_name(config)}")
    return 0


async def publish_to_rules_topic(
    config: HeraldConfig, records: list[tuple[bytes, bytes | None]]
) -> None:
    """Write records to the rules topic (partition 0, acks=all): handlers, deletions, and
    Herald's own reserved keys (`herald skip`)."""
    producer = AIOKafkaProducer(acks="all", **aiokafka_kwargs(config.home))
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(rules_name(config), value, key=key, partition=0)
    finally:
        await producer.stop()


__all__ = ["delete_rule", "load_handlers", "put_rules"]


async def read_rules_topic(config: HeraldConfig, timeout: float = 10.0) -> dict[bytes, bytes]:
    """The rules topic as the workers' table holds it (latest value per key, deletions
    applied), read from the start to its end offset without joining any group."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(enable_auto_commit=False, **aiokafka_kwargs(config.home))
    await consumer.start()
    table: dict[bytes, bytes] = {}
    try:
        tp = TopicPartition(rules_name(config), 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        deadline = asyncio.get_running_loop().time() + timeout
        while await consumer.position(tp) < end:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"reading {tp.topic} took over {timeout:g} s")
            for record in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                if record.value is None:
                    table.pop(record.key, None)
                else:
                    table[record.key] = record.value
    finally:
        await consumer.stop()
    return table


def live_handler_lines(config: HeraldConfig, table: dict[bytes, bytes]) -> list[str]:
    """One line per handler the workers run, with where it came from: the configuration (as
    seeded, or changed at runtime since) or the rules topic alone (`herald rules put`, the
    admin API)."""
    from agents.rules import blob_hash
    from agents.tables import RESERVED_PREFIX, SEED_PREFIX

    lines = []
    for key in sorted(k for k in table if not k.startswith(RESERVED_PREFIX)):
        seed = table.get(SEED_PREFIX + key)
        if seed is None:
            origin = "runtime (herald rules put or the admin API)"
        elif seed == blob_hash(table[key]):
            origin = "configuration"
        else:
            origin = "configuration, changed at runtime (the file wins when it changes)"
        lines.append(f"{key.decode(errors='replace')}: {origin}")
    return lines
