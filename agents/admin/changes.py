"""Every change made through the admin API is an audit record on `<prefix>-audit`.

A record says who (the user and the access key id), what (the operation and its target), when
(ms), and the state before and after, with every secret masked: key secrets and their hashes
never appear, and values of secret fields (and any registered secret value) are masked by
`streams.secrets`. The record is written before the API answers, so an accepted change always
has its record.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from agents.admin.tokens import Caller
from streams.secrets import MASK, SECRET_FIELD_NAMES, is_credential_header, scrub_data

#: Fields of an access key record that are never shown.
HIDDEN = ("salt", "hash", "secret")

Produce = Callable[[bytes, bytes], Awaitable[None]]


def shown(value: Any) -> Any:
    """`value` as an audit record or an API answer may show it: no key secret or hash, the
    values of secret fields and credential headers masked, no registered secret value."""
    return scrub_data(_masked(value))


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (
                MASK
                if isinstance(k, str)
                and (k in SECRET_FIELD_NAMES or is_credential_header(k))
                and isinstance(v, str)
                else _masked(v)
            )
            for k, v in value.items()
            if k not in HIDDEN
        }
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


class ChangeLog:
    def __init__(self, produce: Produce) -> None:
        self._produce = produce

    async def record(
        self,
        caller: Caller,
        operation: str,
        target: dict[str, str],
        before: Any = None,
        after: Any = None,
    ) -> dict[str, Any]:
        entry = {
            "at": int(time.time() * 1000),
            "user": caller.user,
            "keyId": caller.key_id,
            "operation": operation,
            "target": target,
            "before": shown(before),
            "after": shown(after),
        }
        key = f"{target.get('type')}:{target.get('id')}".encode()
        await self._produce(key, orjson.dumps(entry))
        return entry
