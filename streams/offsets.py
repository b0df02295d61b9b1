"""Which offset of a partition may be committed, when batches of it finish out of order.

Herald hands a partition's records to its agents in batches, in offset order, and the agents
finish them out of order (the source waits for produces, the sink for HTTP calls on many
lanes). An offset may be committed only when every record before it is done; otherwise a
crash would skip a record still in flight. `PartitionProgress` keeps the batches handed out,
in order, and moves the committable offset over the done prefix.

Why not Faust's own acks: Faust commits `batch[-1] + 1` of the first run of consecutive acked
offsets and only refuses when the lowest acked offset is *more than one* past the committed
one (faust-streaming 0.15.3 `Consumer._new_offset`), so a record at exactly the committed offset
that is still in flight is committed over when the records after it finish first. A whole
batch is also one entry here instead of one per record.
"""

from __future__ import annotations

from collections import deque


class Ticket:
    """One batch handed out: records `first`..`last` of a partition. `done()` when finished."""

    __slots__ = ("_progress", "end", "finished")

    def __init__(self, progress: PartitionProgress, end: int) -> None:
        self._progress = progress
        self.end = end  # the offset after the batch's last record
        self.finished = False

    @property
    def stale(self) -> bool:
        """The partition moved away (a rebalance): its new owner reads this batch again from
        the committed offset, so working on it here would only repeat, or reorder, that."""
        return self._progress.revoked

    def done(self) -> None:
        """The batch's work is durably done (produced, delivered or dead-lettered)."""
        if not self.finished:
            self.finished = True
            self._progress.advance()


class PartitionProgress:
    """Batches of one partition handed out in offset order; the committable offset."""

    __slots__ = ("_open", "_committable", "revoked")

    def __init__(self) -> None:
        self._open: deque[Ticket] = deque()
        self._committable: int | None = None
        self.revoked = False

    def revoke(self) -> None:
        """The partition was revoked: every ticket handed out is stale."""
        self.revoked = True

    def open(self, last_offset: int) -> Ticket:
        """A batch ending at `last_offset` is handed out (after every earlier one)."""
        ticket = Ticket(self, last_offset + 1)
        self._open.append(ticket)
        return ticket

    def advance(self) -> None:
        pending = self._open
        while pending and pending[0].finished:
            self._committable = pending.popleft().end

    @property
    def committable(self) -> int | None:
        """The offset to commit (the next record to read), None before any batch is done.

        Faust asks on every commit and itself skips an offset it has already committed.
        """
        return self._committable

    @property
    def in_flight(self) -> int:
        """Batches handed out and not yet done."""
        return len(self._open)
