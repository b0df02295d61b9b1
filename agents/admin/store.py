"""The admin API's state in Kafka: records of the rules topic under a reserved prefix.

Applications, access keys (salted hashes only), groups and grants are records of the rules
topic (compacted, one partition, read by every worker as the rules GlobalTable), each under a
key starting with `ADMIN_PREFIX`; handlers are the rules topic's handler records as always. So
Herald still needs nothing but Kafka, every worker answers from the same state, and a change
(a revoked key, say) reaches every worker as fast as a handler put does.

A write is produced to the rules topic with acks=all and answered only once this worker's own
table holds it, so a client that writes then reads (as conductor-python's tests do) sees its
write on the worker it asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from agents.tables import RESERVED_PREFIX, RulesTable
from streams.access import AccessState

ADMIN_PREFIX = RESERVED_PREFIX + b"admin:"
_SEP = "\x1f"  # between the parts of a grant's key: no name contains it

#: How long a write waits for this worker's table to hold it.
VISIBLE_TIMEOUT_SECONDS = 15.0

Send = Callable[[bytes, bytes | None], Awaitable[None]]


def app_key(application_id: str) -> bytes:
    return ADMIN_PREFIX + b"app:" + application_id.encode()


def access_key_key(key_id: str) -> bytes:
    return ADMIN_PREFIX + b"key:" + key_id.encode()


def group_key(group_id: str) -> bytes:
    return ADMIN_PREFIX + b"group:" + group_id.encode()


def grant_key(target_type: str, target_id: str, subject_type: str, subject_id: str) -> bytes:
    parts = _SEP.join((target_type, target_id, subject_type, subject_id))
    return ADMIN_PREFIX + b"grant:" + parts.encode()


class AdminStore:
    """Reads the admin records from the rules table (rebuilt when the table changed) and
    writes them through the rules topic."""

    def __init__(self, table: RulesTable, send: Send, superusers: frozenset[str]) -> None:
        self.table = table
        self.superusers = superusers
        self._send = send
        self._version = -1
        self._state = AccessState()
        self._lock = asyncio.Lock()

    def state(self) -> AccessState:
        version = getattr(self.table, "version", 0)
        if version != self._version:
            self._state = self._read()
            self._version = version
        return self._state

    def _read(self) -> AccessState:
        state = AccessState(superusers=self.superusers)
        for key, blob in list(self.table.items()):
            if blob is None or not key.startswith(ADMIN_PREFIX):
                continue
            kind, _, rest = key[len(ADMIN_PREFIX) :].partition(b":")
            try:
                value = orjson.loads(blob)
            except orjson.JSONDecodeError:
                continue
            name = rest.decode()
            if kind == b"app":
                state.applications[name] = value
            elif kind == b"key":
                state.keys[name] = value
            elif kind == b"group":
                state.groups[name] = value
            elif kind == b"grant":
                parts = name.split(_SEP)
                if len(parts) == 4 and value.get("access"):
                    state.grants[(parts[0], parts[1], parts[2], parts[3])] = value["access"]
        return state

    def handler(self, name: str) -> dict[str, Any] | None:
        blob = self.table.get(name.encode())
        return None if blob is None else orjson.loads(blob)

    def handlers(self) -> list[dict[str, Any]]:
        out = []
        for key, blob in list(self.table.items()):
            if blob is not None and not key.startswith(RESERVED_PREFIX):
                out.append(orjson.loads(blob))
        return sorted(out, key=lambda h: str(h.get("name")))

    async def write(self, records: list[tuple[bytes, bytes | None]]) -> None:
        """Produce the records, then wait until this worker's table holds them all."""
        async with self._lock:  # one writer per worker: read-modify-write stays ordered
            for key, value in records:
                await self._send(key, value)
            deadline = asyncio.get_running_loop().time() + VISIBLE_TIMEOUT_SECONDS
            while any(self.table.get(key) != value for key, value in records):
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError("the change was written but is not visible yet")
                await asyncio.sleep(0.02)


def encode(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
