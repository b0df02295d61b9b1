"""The dedupe stage: is this delivery a repeat, the marks after it, and their durability.

The dedupe table (agents.tables, RocksDB with a changelog, partitioned like the actions topic)
maps a delivery id to its delivered-at time (ms), and `u:<dedupe key>` to the end of a
user-level dedupe window (ms). A record redelivered after a restart finds its mark and is
skipped; one in a window of an earlier delivery of the same user key is skipped too (and
marked, so a redelivery of it is a plain repeat).

A mark counts only once its changelog write is acknowledged: `check` and `mark` hand that write
back (`check` reads it right after the table write and before any await, since other lanes
write to the same table meanwhile; `mark` gets it from `DurableTable.put_through`, the short
way of a write, which the sink's every delivery makes).

Entries expire (agents.sink.expiry): a mark `herald.dedupeRetentionSeconds` after its delivery,
a window's entry once the window is over. Until the sweeper deletes it, an expired mark still
counts (the delivery did happen: skipping its redelivery is right); a window's entry past its
end has no effect, since `check` compares it with the time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from streams.actions.base import ActionRequest


class ChangelogTable(Protocol):
    """What the stage needs of the table: a mapping of bytes, and the changelog write of the
    last change (agents.tables.DurableTable)."""

    last_changelog: Any

    def __contains__(self, key: object) -> bool: ...
    def __getitem__(self, key: bytes) -> bytes: ...
    def __setitem__(self, key: bytes, value: bytes) -> None: ...
    async def put_through(self, partition: int, key: bytes, value: bytes) -> asyncio.Future: ...


#: Keys of user-level dedupe windows; every other key is a delivery id (32 hex digits).
USER_PREFIX = b"u:"
ALREADY_DELIVERED = "already delivered"
IN_WINDOW = "dedupe window"


@dataclass(frozen=True, slots=True)
class Repeat:
    """Why a delivery is skipped, and the write that makes its mark durable, if one was made."""

    reason: str
    durable: asyncio.Future | None


class Dedupe:
    def __init__(self, table: ChangelogTable) -> None:
        self.table = table

    def check(self, request: ActionRequest, now_ms: int) -> Repeat | None:
        """A `Repeat` when this delivery happened already or its user key is within the
        window of an earlier delivery; None when it is to be delivered."""
        table = self.table
        mark = request.id.encode()
        if mark in table:  # `in`: no KeyError raised and caught per new id
            return Repeat(ALREADY_DELIVERED, None)
        user_key = _user_key(request)
        if user_key is not None and user_key in table and int(table[user_key]) > now_ms:
            table[mark] = str(now_ms).encode()
            return Repeat(IN_WINDOW, self._last_write())
        return None

    async def mark(
        self, request: ActionRequest, delivered_ms: int, partition: int
    ) -> asyncio.Future:
        """Mark the delivery done (and open its user key's window) in `partition` (the action
        record's: the table is partitioned like the actions topic); returns the changelog
        write the record waits for before it counts as finished (the mark's, written after
        the window's to the same partition)."""
        table = self.table
        user_key = _user_key(request)
        if user_key is not None and request.dedupe_window_s:
            window_ms = int(request.dedupe_window_s * 1000)
            await table.put_through(partition, user_key, str(delivered_ms + window_ms).encode())
        return await table.put_through(partition, request.id.encode(), str(delivered_ms).encode())

    def _last_write(self) -> asyncio.Future | None:
        return self.table.last_changelog


def _user_key(request: ActionRequest) -> bytes | None:
    return USER_PREFIX + request.dedupe_key.encode() if request.dedupe_key else None
