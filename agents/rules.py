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
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import ValidationError

from agents.tables import RESERVED_PREFIX, SEED_PREFIX, RulesTable
from streams import secrets
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
    """Compiled handlers from the rules table, rebuilt when the table's version moves.

    Seeds this worker writes are used at once from a local overlay, not only once the rules
    table has read them back: the table follows its changelog through the same consumer as the
    source topics, so on a first start with a backlog it may not catch up before the source
    agent needs the handlers. An overlay entry is dropped once the table holds the seed marker
    written after it (same partition, so the handler record before it is applied too, and any
    later runtime change wins).

    `compiled` are the configuration's handlers as the configuration check compiled them
    (`streams.config.checked.Checked.handlers`): while the table holds a handler exactly as
    the configuration has it, that compiled handler is used instead of compiling it again.
    """

    def __init__(
        self,
        config: HeraldConfig,
        table: RulesTable,
        topic_name: str,
        *,
        compiled: Sequence[CompiledHandler] = (),
    ) -> None:
        self.config = config
        self.table = table
        self.topic_name = topic_name
        self.ready = asyncio.Event()
        self._version: tuple[int, int] = (-1, -1)
        self._index = HandlerIndex([])
        self._compiled: dict[bytes, CompiledHandler | None] = {  # by blob hash
            blob_hash(handler_blob(handler.spec)): handler for handler in compiled
        }
        # name -> (blob, seed hash); (None, None) for a handler being removed
        self._overlay: dict[bytes, tuple[bytes | None, bytes | None]] = {}
        self._overlay_generation = 0

    def index(self) -> HandlerIndex:
        version = (getattr(self.table, "version", 0), self._overlay_generation)
        if version != self._version:
            self._index = HandlerIndex(self._compile_table())
            self._version = (getattr(self.table, "version", 0), self._overlay_generation)
        return self._index

    def _compile_table(self) -> list[CompiledHandler]:
        entries: dict[bytes, bytes] = {}
        for key, blob in list(self.table.items()):
            if not key.startswith(RESERVED_PREFIX) and blob is not None:
                entries[key] = blob
        for name, (blob, digest) in list(self._overlay.items()):
            if self.table.get(SEED_PREFIX + name) == digest:
                del self._overlay[name]  # the table has caught up with this seed
            elif blob is None:
                entries.pop(name, None)  # removed from the configuration
            else:
                entries[name] = blob
        handlers: list[CompiledHandler] = []
        for key, blob in entries.items():
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
            # A handler put at runtime may carry credentials (headers, secret-named fields)
            # the configuration did not: the scrubber must know them before anything logs.
            secrets.register_config(handler)
            compiled = compile_handler(handler, self.config, f"rules[{name}]", file=self.topic_name)
        except ConfigError as exc:
            for line in exc.problems:
                log.error("rule %r ignored: %s", name, line)
        except (ValidationError, orjson.JSONDecodeError, ValueError) as exc:
            log.error("rule %r ignored: not a valid EventHandler: %s", name, _short(exc))
        self._compiled[digest] = compiled
        return compiled

    async def seed(self, send: Any) -> None:
        """Publish configuration handlers that are new or changed, and use them at once.

        Called once the rules table is recovered. A handler is written only when its
        configuration changed since it was last seeded, so a runtime change survives restarts.
        """
        configured = set()
        for handler in self.config.eventHandlers:
            blob = handler_blob(handler)
            name = handler.name.encode()
            configured.add(name)
            digest = blob_hash(blob)
            if self.table.get(SEED_PREFIX + name) != digest:
                log.info("seeding handler %r from the configuration", handler.name)
                await send(name, blob)
                await send(SEED_PREFIX + name, digest)
                self._overlay[name] = (blob, digest)
        # A handler seeded from an earlier configuration and no longer in it is removed;
        # handlers added at runtime (they have no seed marker) stay.
        for key in [k for k in list(self.table.keys()) if k.startswith(SEED_PREFIX)]:
            name = key[len(SEED_PREFIX) :]
            if name not in configured:
                log.info("removing handler %r: no longer in the configuration", name.decode())
                await send(name, None)
                await send(key, None)
                self._overlay[name] = (None, None)
        self._overlay_generation += 1
        self.ready.set()


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
