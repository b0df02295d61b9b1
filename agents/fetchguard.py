"""Fetched record batches that cannot be read stop their own partition, never the worker.

aiokafka decodes a partition's record batches lazily, while `getmany` hands records out
(`PartitionRecords._unpack_records`). A batch it cannot read (a CRC mismatch, a codec it does
not know, a compressed payload that does not decompress, a malformed record) raises out of
`getmany`, through Faust's fetch loop, and the worker exits: again after every restart, since
the batch is still there (issue 10). aiokafka also drops the records it had already decoded
in that `getmany` while moving the partition's position past them.

`FetchGuard` wraps each partition's fetched records as the fetcher stores them (its
`_records` map is the one place they pass through): records before the unreadable batch are
handed out as usual, and the partition's iteration ends at the batch, so its position stays
at the first offset not read. The guard reports an `Unreadable` (partition, first offset,
the batch's end offset where its header says, the error) to its owner, Herald's consumer,
which stops that partition until the operator skips the range (`herald skip`) or
`herald.unreadableBatches: skip` does it at once (agents.unreadable).

The fetcher runs in the consumer's thread; reports cross to the main thread through a deque
(`append` and `popleft` are atomic).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka.consumer.fetcher import FetchResult

log = logging.getLogger("herald.fetch")


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A range of a partition that cannot be read: [offset, end), `end` None when unknown."""

    topic: str
    partition: int
    offset: int
    end: int | None
    reason: str
    seen_at: float = 0.0  # time.time() when first found

    @property
    def skip_to(self) -> int:
        """Where reading resumes when the range is skipped: the batch's end, or the next
        offset when the batch's header could not be read either."""
        return self.end if self.end is not None and self.end > self.offset else self.offset + 1

    def describe(self) -> str:
        span = f"{self.offset}..{self.end - 1}" if self.end else f"{self.offset}"
        return f"{self.topic}/{self.partition} offsets {span}: {self.reason}"


class _BatchTracker:
    """MemoryRecords, remembering the batch handed out last: when reading it fails, the guard
    knows where it ends."""

    __slots__ = ("_records", "current")

    def __init__(self, records: Any) -> None:
        self._records = records
        self.current: Any = None

    def has_next(self) -> bool:
        return self._records.has_next()

    def next_batch(self) -> Any:
        self.current = None  # a header that fails to parse leaves no batch to point at
        self.current = self._records.next_batch()
        return self.current

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)


def _batch_end(batch: Any, start: int, highwater: int | None) -> int | None:
    """The end offset a failed batch's header gives, when it is plausible."""
    try:
        end = int(batch.next_offset)
    except Exception:
        return None
    if end <= start or (highwater is not None and highwater >= 0 and end > highwater):
        return None  # a corrupt header: do not believe it
    return end


class FetchGuard(collections.OrderedDict):
    """The fetcher's `_records` map (tp → FetchResult | FetchError), wrapping every
    FetchResult's records so that an unreadable batch ends its partition's iteration and is
    reported instead of raised."""

    def __init__(self, reports: collections.deque[tuple[Any, Unreadable]], *args: Any) -> None:
        super().__init__(*args)
        self._reports = reports

    def __setitem__(self, tp: Any, value: Any) -> None:
        if type(value) is FetchResult:
            self._guard(tp, value)
        super().__setitem__(tp, value)

    def _guard(self, tp: Any, result: FetchResult) -> None:
        records = result._partition_records
        if records is None or isinstance(records._records, _BatchTracker):
            return
        # The iterator is a generator that has not started: it reads `_records` on its first
        # step, so it will read through the tracker.
        tracker = _BatchTracker(records._records)
        records._records = tracker
        highwater = None
        try:
            highwater = result._assignment.state_value(tp).highwater
        except Exception:
            pass
        records._records_iterator = self._guarded(
            tp, records, tracker, records._records_iterator, highwater
        )

    def _guarded(
        self, tp: Any, records: Any, tracker: _BatchTracker, inner: Iterator[Any], hw: int | None
    ) -> Iterator[Any]:
        try:
            yield from inner
        except Exception as exc:  # anything a batch can make the decoder raise
            start = records.next_fetch_offset
            batch = tracker.current
            unreadable = Unreadable(
                topic=tp.topic,
                partition=tp.partition,
                offset=start,
                end=_batch_end(batch, start, hw) if batch is not None else None,
                reason=f"{exc.__class__.__name__}: {exc}"[:1000],
                seen_at=time.time(),
            )
            self._reports.append((tp, unreadable))


def skip_command(unreadable: Unreadable, integration: str | None = None) -> str:
    """The `herald skip` an operator runs for it (`integration`: None for the home one)."""
    which = f"--integration {integration} " if integration else ""
    return (
        f"herald skip {which}--topic {unreadable.topic} --partition {unreadable.partition} "
        f"--offset {unreadable.offset}"
    )


def log_stopped(integration: str, unreadable: Unreadable, skip: str) -> None:
    """The error line of a partition stopped at an unreadable batch, with its `skip`."""
    log.error(
        "unreadable record batch on integration %s: %s. Partition %s/%s is stopped at offset "
        "%d; other partitions keep flowing. To skip the range (its offsets and this reason go "
        "to the dead-letter topic): %s, or set herald.unreadableBatches: skip",
        integration,
        unreadable.describe(),
        unreadable.topic,
        unreadable.partition,
        unreadable.offset,
        skip,
    )


def install(consumer: Any, reports: collections.deque[tuple[Any, Unreadable]]) -> None:
    """Put a FetchGuard in place of a started aiokafka consumer's fetcher map."""
    fetcher = consumer._fetcher
    fetcher._records = FetchGuard(reports, fetcher._records)


def record_too_large(exc: Exception) -> tuple[Any, int] | None:
    """The (tp, offset) of aiokafka's RecordTooLargeError ("messages at tp=offset whose size
    is larger than the fetch size"): aiokafka has moved the position one past it already."""
    args = getattr(exc, "args", ())
    if len(args) >= 3 and hasattr(args[1], "topic") and isinstance(args[2], int):
        return args[1], args[2]
    return None
