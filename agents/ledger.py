"""The offset ledger: the one place that decides what a batch partition may commit.

Herald's consumer (`agents.transport.HeraldConsumer`) hands every fetch of the source and
actions topics to the ledger, and commits only what the ledger says. The ledger owns, per
partition of the current assignment, a `streams.offsets.PartitionProgress` (its pure core):

1. **Assignment.** A partition assigned in generation G gets a new progress of generation G,
   not anchored. Nothing is taken from it until the consumer has read the group's committed
   offset for it and sought the partition there (`repositions` / `anchored`): the first batch
   of every assignment starts at the committed offset.
2. **Admission.** A fetched batch is taken only if it was fetched in the progress' generation
   and starts at (or past a gap the log itself has) the offset the previous batch ended at;
   records before that offset are trimmed. Anything else is dropped, and the partition is
   sought back to where it was before anything more is taken. So the tickets of one
   assignment cover [committed offset, next offset) without a hole.
3. **Commit.** The committable offset is the end of the finished prefix of those tickets
   (`streams.offsets`): a record is finished when its work is durably done (actions produced,
   delivered with the dedupe mark in the changelog, or dead-lettered).
4. **Revocation.** A revoked partition's progress is dropped and its tickets turn stale; the
   ledger tells every listener (the batch channels, the sink's lanes) in one fan-out.
5. **Unreadable batches** (agents.fetchguard). A partition whose fetched batch cannot be read
   is stopped at the batch's first offset: records before it are taken, nothing from it on,
   until `skip` hands the unreadable range out as a ticket of its own (done once its dead
   letter is acknowledged) and the consumer seeks past it. So even a skipped range is
   committed only once it is recorded.

Why (issue 9): on 32c80f5 the consumer threw away, without rewinding, a fetch answered while
Faust had paused the partitions for an assignment, and created a partition's progress from
whatever batch came first. Faust's seek to the committed offset does nothing for a partition
with no commit (aiokafka seeks only to offsets > 0), so that first batch started after the
hole and the next commit covered it. A fetch crossing a generation could do the same.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from faust.types import TP

from agents.batches import Batch
from agents.fetchguard import Unreadable
from streams.offsets import PartitionProgress, Ticket, Verdict

log = logging.getLogger("herald.ledger")

_offset = attrgetter("offset")


@dataclass(frozen=True, slots=True)
class Stall:
    """A partition with records waiting (or not even anchored) and no progress for a while."""

    tp: TP
    seconds: float
    lag: int | None
    in_flight: int

    def describe(self) -> str:
        lag = "unknown" if self.lag is None else str(self.lag)
        return (
            f"{self.tp.topic}/{self.tp.partition}: no progress for {self.seconds:.0f}s, "
            f"lag {lag}, {self.in_flight} batches in flight"
        )


class OffsetLedger:
    """Tickets, committable offsets and revocation of every batch partition of a worker."""

    def __init__(self) -> None:
        self._progress: dict[TP, PartitionProgress] = {}
        self._revoke_listeners: list[Callable[[set[TP]], None]] = []
        #: Why batches were not taken, by verdict (and "inactive": fetched while the flow was
        #: stopped or the partition paused). Routine around rebalances; shown on /herald/stats.
        self.dropped: Counter[str] = Counter()
        #: Stalls found by `stalls`, counted once per episode.
        self.stall_count = 0
        self._stalled: set[TP] = set()
        #: Partitions stopped at a batch that cannot be read, until it is skipped.
        self._stopped: dict[TP, Unreadable] = {}
        self.unreadable_count = 0
        self.skipped_count = 0
        #: Assignments received: one per rebalance of the group (agents.metrics).
        self.assignments = 0

    # -- assignment and revocation -------------------------------------------------------

    def on_revoke(self, listener: Callable[[set[TP]], None]) -> None:
        """Call `listener(tps)` whenever partitions leave this worker (before reassignment)."""
        self._revoke_listeners.append(listener)

    def revoke(self, tps: Iterable[TP]) -> None:
        """These partitions left the assignment: their tickets turn stale, every listener is
        told, and nothing of theirs is committed any more."""
        gone = set(tps)
        for tp in gone:
            progress = self._progress.pop(tp, None)
            if progress is not None:
                progress.revoke()
            self._stalled.discard(tp)
            self._stopped.pop(tp, None)  # its next owner finds the batch again
        if gone:
            for listener in self._revoke_listeners:
                listener(gone)

    def assign(self, tps: Iterable[TP], generation: int) -> None:
        """A new assignment: each partition starts over, unanchored, in `generation`."""
        fresh = set(tps)
        self.assignments += 1
        self.revoke(fresh)  # an eager rebalance can hand back a partition this worker had
        for tp in fresh:
            self._progress[tp] = PartitionProgress(generation)

    def assigned(self) -> set[TP]:
        """The partitions of the current assignment."""
        return set(self._progress)

    def position(self, tp: TP) -> int | None:
        """Everything of `tp` before this offset is done in this assignment (None: unknown)."""
        progress = self._progress.get(tp)
        return None if progress is None else progress.position

    # -- admission ----------------------------------------------------------------------

    def admit(
        self, tp: TP, records: Sequence[Any], generation: int | None, active: bool
    ) -> Batch | None:
        """Take a fetched batch of `tp` (aiokafka records, in offset order), trimmed to the
        partition's next offset and with its ticket, or drop it.

        `generation`: the consumer generation the fetch ran in, None if it changed meanwhile;
        `active`: the flow was on and the partition not paused when the batch came back.
        """
        progress = self._progress.get(tp)
        if progress is None:
            self.dropped["unassigned"] += 1
            return None
        if not active:
            self._drop(progress, "inactive")
            return None
        stopped = self._stopped.get(tp)
        if stopped is not None:
            records = records[: bisect_left(records, stopped.offset, key=_offset)]
            if not records:
                self._drop(progress, "unreadable")
                return None
        verdict = progress.admit(records[0].offset, records[-1].offset, generation)
        if verdict is Verdict.TRIM:
            records = records[bisect_left(records, progress.next_offset, key=_offset) :]
        elif verdict is not Verdict.TAKE:
            self._drop(progress, verdict.value)
            return None
        return Batch(tp, records, progress.open(records[-1].offset))

    def _drop(self, progress: PartitionProgress, why: str) -> None:
        """Nothing more is taken from the partition until it was sought back (`repositions`)."""
        self.dropped[why] += 1
        if why != Verdict.REPEAT.value:
            progress.unsettle()

    def repositions(self) -> tuple[dict[TP, PartitionProgress], dict[TP, int]]:
        """What the consumer must do before its next fetch: partitions to anchor (read the
        committed offset, seek there) and partitions to seek back to their next offset."""
        anchor: dict[TP, PartitionProgress] = {}
        seek: dict[TP, int] = {}
        for tp, progress in self._progress.items():
            if progress.revoked:
                continue
            if not progress.anchored:
                anchor[tp] = progress
            elif progress.unsettled:
                seek[tp] = progress.next_offset  # type: ignore[assignment]
        return anchor, seek

    def unsettle_all(self) -> None:
        """Seek every anchored partition back to its next offset before anything more is
        taken (after a fetch failed in a way the ledger cannot see)."""
        for progress in self._progress.values():
            if progress.anchored and not progress.revoked:
                progress.unsettle()

    def anchored(self, tp: TP, progress: PartitionProgress, offset: int) -> None:
        """The consumer sought `tp` to its committed `offset` for this assignment."""
        if self._progress.get(tp) is progress:
            progress.anchor(offset)
            log.debug("%s/%s anchored at %d", tp.topic, tp.partition, offset)

    def sought(self, tp: TP, offset: int) -> None:
        """The consumer sought `tp` back to `offset` after dropping a batch."""
        progress = self._progress.get(tp)
        if progress is not None and progress.next_offset == offset:
            progress.settle()

    # -- unreadable batches --------------------------------------------------------------

    def stop(self, tp: TP, unreadable: Unreadable) -> bool:
        """Stop `tp` at an unreadable batch. True when this is news (not already stopped
        there, and the partition is this worker's, anchored and not already past it)."""
        progress = self._progress.get(tp)
        if progress is None or progress.next_offset is None:
            return False
        if unreadable.offset < progress.next_offset:
            return False  # a report of a fetch from before a seek: already handed out
        known = self._stopped.get(tp)
        if known is not None and known.offset == unreadable.offset:
            return False
        self._stopped[tp] = unreadable
        self.unreadable_count += 1
        return True

    def stopped(self) -> dict[TP, Unreadable]:
        return dict(self._stopped)

    def caught_up(self, tp: TP) -> bool:
        """Every record before the unreadable batch of `tp` was handed out."""
        progress = self._progress.get(tp)
        stopped = self._stopped.get(tp)
        return (
            progress is not None
            and stopped is not None
            and not progress.unsettled
            and progress.next_offset == stopped.offset
        )

    def skip(self, tp: TP, offset: int, end: int) -> Ticket | None:
        """Hand out the unreadable range [offset, end) of `tp` as one ticket, for the caller
        to finish once the range is recorded (its dead letter acknowledged), and seek past it.
        None when `tp` is not stopped at `offset` or records before it are still to be read."""
        if not self.caught_up(tp) or self._stopped[tp].offset != offset or end <= offset:
            return None
        progress = self._progress[tp]
        del self._stopped[tp]
        ticket = progress.open(end - 1)
        progress.unsettle()  # the consumer seeks to `end` before anything more is taken
        self.skipped_count += 1
        return ticket

    # -- commits --------------------------------------------------------------------------

    def committable(self, tp: TP) -> int | None:
        progress = self._progress.get(tp)
        return None if progress is None else progress.committable

    def committable_tps(self, topics: Any = None) -> Iterator[TP]:
        for tp, progress in self._progress.items():
            if progress.committable is not None and (
                topics is None or tp in topics or tp.topic in topics
            ):
                yield tp

    # -- stalls ---------------------------------------------------------------------------

    def stalls(self, highwater: Callable[[TP], int | None], after: float) -> list[Stall]:
        """Partitions with records waiting (or never anchored) and no progress for `after`
        seconds. A new stall is logged at error level and counted once."""
        now = time.monotonic()
        found: list[Stall] = []
        for tp, progress in self._progress.items():
            idle = now - progress.last_progress
            position = progress.position
            end = highwater(tp)
            lag = None if position is None or end is None or end < 0 else max(end - position, 0)
            # An unknown high watermark (nothing fetched yet) is not a stall by itself; a
            # partition never anchored is.
            waiting = not progress.anchored or progress.in_flight > 0 or bool(lag)
            if idle >= after and waiting:
                found.append(Stall(tp, idle, lag, progress.in_flight))
        current = {stall.tp for stall in found}
        for stall in found:
            if stall.tp not in self._stalled:
                self.stall_count += 1
                log.error("stalled partition %s", stall.describe())
        for tp in self._stalled - current:
            log.warning("partition %s/%s makes progress again", tp.topic, tp.partition)
        self._stalled = current
        return found

    def as_dict(self) -> dict[str, int]:
        """Counters for /herald/stats."""
        out = {f"ledger_dropped_{why}": count for why, count in sorted(self.dropped.items())}
        out["stalls"] = self.stall_count
        out["stalled_partitions"] = len(self._stalled)
        out["unreadable_batches"] = self.unreadable_count
        out["unreadable_partitions"] = len(self._stopped)
        out["unreadable_skipped"] = self.skipped_count
        return out
