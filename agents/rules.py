"""The live handler set: seeded from the configuration, changed at runtime via the rules topic.

Each worker compiles the handlers it finds in the rules table and rebuilds its index only when
the table changed. At start, a handler from the configuration is written to the rules topic
when the table lacks it or when its configuration changed since it was last seeded; a runtime
change to a handler therefore survives restarts until the configuration of that handler itself
changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import orjson
from pydantic import ValidationError

from agents.tables import SEED_PREFIX, RulesTable
from streams.config.models import EventHandler, HeraldConfig
from streams.errors import ConfigError
from streams.handlers import CompiledHandler, HandlerIndex, compile_handler

log = logging.getLogger("herald.rules")


def handler_blob(handler: EventHandler) -> bytes:
    """The JSON written to the rules topic for a handler (Conductor's shape)."""
    data = handler.model_dump(mode="json", exclude_none=True)
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def blob_hash(blob: bytes) -> bytes:
    return hashlib.sha256(blob).hexdigest().encode()


class RuleSet:
    """Compiled handlers from the rules table, rebuilt when the table's version moves."""

    def __init__(self, config: HeraldConfig, table: RulesTable, topic_name: str) -> None:
        self.config = config
        self.table = table
        self.topic_name = topic_name
        self.ready = asyncio.Event()
        self._version = -1
        self._index = HandlerIndex([])
        self._compiled: dict[bytes, CompiledHandler | None] = {}  # by blob hash

    def index(self) -> HandlerIndex:
        version = getattr(self.table, "version", 0)
        if version != self._version:
            self._version = version
            self._index = HandlerIndex(self._compile_table())
        return self._index

    def _compile_table(self) -> list[CompiledHandler]:
        handlers: list[CompiledHandler] = []
        for key, blob in list(self.table.items()):
            if key.startswith(SEED_PREFIX) or blob is None:
                continue
            compiled = self._compile(key.decode("utf-8", errors="replace"), blob)
            if compiled is not None:
                handlers.append(compiled)
        return handlers

    def _compile(self, name: str, blob: bytes) -> CompiledHandler | None:
        digest = blob_hash(blob)
        if digest in self._compiled:
            return self._compiled[digest]
        compiled: CompiledHandler | None = None
        try:
            handler = EventHandler.model_validate(orjson.loads(blob))
            compiled = compile_handler(handler, self.config, f"rules[{name}]", file=self.topic_name)
        except ConfigError as exc:
            for line in exc.problems:
                log.error("rule %r ignored: %s", name, line)
        except (ValidationError, orjson.JSONDecodeError, ValueError) as exc:
            log.error("rule %r ignored: not a valid EventHandler: %s", name, _short(exc))
        self._compiled[digest] = compiled
        return compiled

    async def seed(self, send: Any, timeout: float = 60.0) -> None:
        """Write configuration handlers that are new or changed, then wait to see them."""
        wanted: dict[bytes, bytes] = {}
        for handler in self.config.eventHandlers:
            blob = handler_blob(handler)
            name = handler.name.encode()
            seed_key = SEED_PREFIX + name
            if self.table.get(seed_key) != blob_hash(blob):
                log.info("seeding handler %r from the configuration", handler.name)
                await send(name, blob)
                await send(seed_key, blob_hash(blob))
                wanted[name] = blob
        deadline = asyncio.get_running_loop().time() + timeout
        while any(self.table.get(k) != v for k, v in wanted.items()):
            if asyncio.get_running_loop().time() > deadline:
                log.error("seeded handlers did not appear in the rules table within %ss", timeout)
                break
            await asyncio.sleep(0.05)
        self.ready.set()


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
