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

import enum
import time
from collections import deque


class Ticket:
    """One batch handed out: records `first`..`last` of a partition. `done()` when finished.

    A ticket is finished by one `done()`, or, after `expect(n)`, by the n-th: the sink finishes
    each record of a batch on its own (its lanes deliver them out of order), and the batch is
    done only with the last of them.
    """

    __slots__ = ("_progress", "end", "finished", "_remaining")

    def __init__(self, progress: PartitionProgress, end: int) -> None:
        self._progress = progress
        self.end = end  # the offset after the batch's last record
        self.finished = False
        self._remaining = 1

    def expect(self, parts: int) -> None:
        """The ticket is finished by the `parts`-th call of `done()` (at least one)."""
        self._remaining = max(parts, 1)

    @property
    def stale(self) -> bool:
        """The partition moved away (a rebalance): its new owner reads this batch again from
        the committed offset, so working on it here would only repeat, or reorder, that."""
        return self._progress.revoked

    def done(self) -> None:
        """The batch's work (or one expected part of it) is durably done: produced,
        delivered or dead-lettered."""
        if self.finished:
            return
        self._remaining -= 1
        if self._remaining <= 0:
            self.finished = True
            self._progress.advance()


class Verdict(enum.Enum):
    """What the ledger does with a fetched batch of a partition (`PartitionProgress.admit`)."""

    TAKE = "take"  # starts at (or, where the log has no records in between, past) next_offset
    TRIM = "trim"  # starts before next_offset: hand over only the records from next_offset on
    REPEAT = "repeat"  # ends before next_offset: every record was handed out already
    STALE = "stale"  # fetched under another assignment (generation) or after the revoke
    UNANCHORED = "unanchored"  # this assignment has not been sought to its committed offset yet
    SEEKING = "seeking"  # a batch was dropped: nothing is taken until sought back to next_offset


class PartitionProgress:
    """One partition in one assignment: where its next batch must start, the batches handed
    out in order, and the committable offset.

    The rule it enforces: a partition is committed only up to the end of a run of finished
    batches that starts at the offset committed when the partition was assigned (`anchor`).
    Until it is anchored no batch is taken; a batch fetched under another generation is
    never taken; a batch that starts before `next_offset` is trimmed to it. So the tickets
    of an assignment cover [anchor, next_offset) with no hole the consumer could skip.
    """

    __slots__ = (
        "_open",
        "_committable",
        "revoked",
        "generation",
        "next_offset",
        "anchored_at",
        "unsettled",
        "last_progress",
    )

    def __init__(self, generation: int = 0) -> None:
        self._open: deque[Ticket] = deque()
        self._committable: int | None = None
        self.revoked = False
        self.generation = generation
        self.next_offset: int | None = None  # None: not anchored in this assignment yet
        self.anchored_at: int | None = None
        self.unsettled = False  # a batch was dropped and the partition not yet sought back
        self.last_progress = time.monotonic()

    @property
    def anchored(self) -> bool:
        return self.next_offset is not None

    def anchor(self, offset: int) -> None:
        """The partition was sought to `offset`, its committed offset in this assignment (or
        the log start when nothing was committed): batches are taken from there on."""
        if self.next_offset is None and not self._open:
            self.next_offset = self.anchored_at = offset
            self.unsettled = False  # the anchoring seek is the seek back
            self.last_progress = time.monotonic()

    def admit(self, first: int, last: int, generation: int | None) -> Verdict:
        """Decide about a fetched batch of offsets `first`..`last`, fetched while the consumer
        was in `generation` (None: the generation changed during the fetch)."""
        if self.revoked or generation != self.generation:
            return Verdict.STALE
        expected = self.next_offset
        if expected is None:
            return Verdict.UNANCHORED
        if self.unsettled:
            return Verdict.SEEKING
        if last < expected:
            return Verdict.REPEAT
        if first < expected:
            return Verdict.TRIM
        # first > expected happens only where the log itself has no records (compaction,
        # transaction markers) or the offsets were committed further by another member: the
        # position of one assignment moves forward only over what the broker returned.
        return Verdict.TAKE

    def unsettle(self) -> None:
        """A batch of this partition was dropped, so the consumer's position is past records
        nobody took: take nothing until the partition was sought back to `next_offset`."""
        self.unsettled = True

    def settle(self) -> None:
        """The partition was sought back to `next_offset`."""
        self.unsettled = False

    def revoke(self) -> None:
        """The partition was revoked: every ticket handed out is stale."""
        self.revoked = True

    def open(self, last_offset: int) -> Ticket:
        """A batch ending at `last_offset` is handed out (after every earlier one)."""
        ticket = Ticket(self, last_offset + 1)
        self._open.append(ticket)
        self.next_offset = last_offset + 1
        self.last_progress = time.monotonic()
        return ticket

    def advance(self) -> None:
        pending = self._open
        moved = False
        while pending and pending[0].finished:
            self._committable = pending.popleft().end
            moved = True
        if moved:
            self.last_progress = time.monotonic()

    @property
    def committable(self) -> int | None:
        """The offset to commit (the next record to read), None before any batch is done.

        Faust asks on every commit and itself skips an offset it has already committed.
        """
        return self._committable

    @property
    def position(self) -> int | None:
        """Everything before this offset is done in this assignment (None: not known yet)."""
        return self._committable if self._committable is not None else self.anchored_at

    @property
    def in_flight(self) -> int:
        """Batches handed out and not yet done."""
        return len(self._open)
