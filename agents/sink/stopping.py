"""A graceful stop of the sink, seen by every wait of its stages."""

from __future__ import annotations

import asyncio
import contextlib


class Stopping(Exception):
    """Raised in a lane when the worker stops while it waits: the lane ends and its record
    stays unfinished, so its batch is not committed and the record is delivered again by the
    partition's next owner."""


class StopSignal:
    """Set once when the worker stops; `sleep` is the wait every stage uses between tries,
    so a lane waiting out a target's (or the broker's) outage never holds the shutdown."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or raise `Stopping` as soon as the stop is (or was) signalled."""
        if not self._event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), seconds)
        if self._event.is_set():
            raise Stopping
