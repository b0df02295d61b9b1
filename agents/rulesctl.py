"""`herald rules put|delete`: change handlers at runtime through the rules topic.

A put validates the handlers exactly as the worker will (unknown fields, conditions,
templates, targets) before publishing, so a broken rule never reaches the workers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from agents.rules import handler_blob
from agents.topics import rules_name
from streams.config.models import EventHandler, HeraldConfig
from streams.errors import ConfigError
from streams.handlers import compile_handler
from streams.security import aiokafka_kwargs


def load_handlers(config: HeraldConfig, file: str) -> list[EventHandler]:
    """Read one handler or a list of handlers (JSON or YAML); raise ConfigError on problems."""
    try:
        data: Any = yaml.safe_load(Path(file).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{file}: cannot read handlers: {exc}"]) from None
    items = data if isinstance(data, list) else [data]
    problems: list[str] = []
    handlers: list[EventHandler] = []
    for i, item in enumerate(items):
        try:
            handler = EventHandler.model_validate(item)
            compile_handler(handler, config, f"[{i}]", file=file)
            handlers.append(handler)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                problems.append(f"{file}: [{i}].{loc}: {err['msg']}")
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return handlers


def put_rules(config: HeraldConfig, config_path: str, file: str) -> int:
    try:
        handlers = load_handlers(config, file)
    except ConfigError as exc:
        for line in exc.problems:
            print(line)
        return 2
    records = [(h.name.encode(), handler_blob(h)) for h in handlers]
    asyncio.run(_publish(config, records))
    for handler in handlers:
        print(f"published handler {handler.name!r} to {rules_name(config)}")
    return 0


def delete_rule(config: HeraldConfig, name: str) -> int:
    asyncio.run(_publish(config, [(name.encode(), None)]))
    print(f"deleted handler {name!r} from {rules_name(config)}")
    return 0


async def _publish(config: HeraldConfig, records: list[tuple[bytes, bytes | None]]) -> None:
    producer = AIOKafkaProducer(acks="all", **aiokafka_kwargs(config.home))
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(rules_name(config), value, key=key, partition=0)
    finally:
        await producer.stop()


__all__ = ["delete_rule", "load_handlers", "put_rules"]
