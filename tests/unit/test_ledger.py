"""The offset ledger: every sequence of assignment, fetch, revocation and finish that could
commit past a record no batch carried (issue 9), driven without Kafka."""

from __future__ import annotations

from dataclasses import dataclass

from faust.types import TP

from agents.fetchguard import Unreadable
from agents.ledger import OffsetLedger
from streams.offsets import PartitionProgress, Verdict

P0 = TP("source", 0)


@dataclass
class Rec:
    offset: int


def batch(first: int, last: int) -> list[Rec]:
    return [Rec(o) for o in range(first, last + 1)]


def anchored_ledger(at: int = 100, generation: int = 1) -> OffsetLedger:
    ledger = OffsetLedger()
    ledger.assign({P0}, generation)
    anchor, _ = ledger.repositions()
    ledger.anchored(P0, anchor[P0], at)
    return ledger


def test_nothing_is_taken_before_the_assignment_is_anchored_at_the_committed_offset() -> None:
    ledger = OffsetLedger()
    ledger.assign({P0}, generation=1)
    assert ledger.admit(P0, batch(150, 159), 1, True) is None
    anchor, seek = ledger.repositions()
    assert list(anchor) == [P0] and seek == {}
    ledger.anchored(P0, anchor[P0], 100)
    taken = ledger.admit(P0, batch(100, 109), 1, True)
    assert taken is not None and taken.records[0].offset == 100


def test_revoke_then_reassign_of_the_same_partition_with_batches_in_flight() -> None:
    """The loss of issue 9: the worker had batches up to 300 in flight, the partition came
    back in a new generation, and a fetch from before the rebalance arrived first."""
    ledger = anchored_ledger(at=100, generation=1)
    old = [ledger.admit(P0, batch(100 + i * 50, 149 + i * 50), 1, True) for i in range(4)]
    revoked: list[set[TP]] = []
    ledger.on_revoke(revoked.append)
    ledger.assign({P0}, generation=2)  # eager: revoked and handed back
    assert revoked == [{P0}]
    assert all(t is not None and t.ticket.stale for t in old)
    # the fetch that was on its way across the rebalance: generation 1, past the commit
    assert ledger.admit(P0, batch(300, 349), 1, True) is None
    # the same records seen as generation 2 (fetched before the anchoring seek): not taken
    assert ledger.admit(P0, batch(300, 349), 2, True) is None
    for t in old:
        t.ticket.done()  # the old assignment's work finishing commits nothing now
    assert ledger.committable(P0) is None
    anchor, _ = ledger.repositions()
    ledger.anchored(P0, anchor[P0], 100)  # the committed offset
    first = ledger.admit(P0, batch(100, 149), 2, True)
    assert first is not None
    first.ticket.done()
    assert ledger.committable(P0) == 150


def test_a_fetch_whose_generation_changed_meanwhile_is_not_taken_and_is_sought_back() -> None:
    ledger = anchored_ledger(at=0)
    taken = ledger.admit(P0, batch(0, 9), 1, True)
    assert taken is not None
    assert ledger.admit(P0, batch(10, 19), None, True) is None
    _, seek = ledger.repositions()
    assert seek == {P0: 10}
    assert ledger.admit(P0, batch(20, 29), 1, True) is None  # still not sought back
    ledger.sought(P0, 10)
    again = ledger.admit(P0, batch(10, 19), 1, True)
    assert again is not None and again.records[0].offset == 10


def test_stale_batches_dropped_by_the_agents_never_count_as_finished() -> None:
    ledger = anchored_ledger(at=0)
    first = ledger.admit(P0, batch(0, 9), 1, True)
    second = ledger.admit(P0, batch(10, 19), 1, True)
    assert first is not None and second is not None
    ledger.revoke({P0})
    second.ticket.done()
    first.ticket.done()
    assert ledger.committable(P0) is None
    assert list(ledger.committable_tps()) == []


def test_a_fetch_that_resumes_past_the_committed_offset_after_assignment_is_sought_back() -> None:
    ledger = OffsetLedger()
    ledger.assign({P0}, 3)
    # the position kept from before the rebalance: dropped, anchoring seeks to committed
    assert ledger.admit(P0, batch(500, 599), 3, True) is None
    anchor, _ = ledger.repositions()
    ledger.anchored(P0, anchor[P0], 400)
    taken = ledger.admit(P0, batch(400, 499), 3, True)
    assert taken is not None
    taken.ticket.done()
    assert ledger.committable(P0) == 500


def test_a_gap_inside_a_run_stops_the_commit_at_the_unfinished_batch() -> None:
    ledger = anchored_ledger(at=0)
    a = ledger.admit(P0, batch(0, 9), 1, True)
    b = ledger.admit(P0, batch(10, 19), 1, True)
    c = ledger.admit(P0, batch(20, 29), 1, True)
    assert a and b and c
    a.ticket.done()
    c.ticket.done()
    assert ledger.committable(P0) == 10
    b.ticket.done()
    assert ledger.committable(P0) == 30


def test_a_batch_fetched_while_paused_or_stopped_is_dropped_and_sought_back() -> None:
    ledger = anchored_ledger(at=0)
    assert ledger.admit(P0, batch(0, 9), 1, True)
    assert ledger.admit(P0, batch(10, 19), 1, False) is None  # flow stopped
    assert ledger.repositions()[1] == {P0: 10}
    assert ledger.admit(P0, batch(20, 29), 1, True) is None  # never past the dropped batch
    ledger.sought(P0, 10)
    assert ledger.admit(P0, batch(10, 19), 1, True)


def test_an_overlapping_fetch_is_trimmed_and_a_repeat_is_ignored() -> None:
    ledger = anchored_ledger(at=0)
    assert ledger.admit(P0, batch(0, 9), 1, True)
    # Faust's own seek to the committed offset (0) makes the next fetch repeat records
    assert ledger.admit(P0, batch(0, 4), 1, True) is None
    trimmed = ledger.admit(P0, batch(5, 14), 1, True)
    assert trimmed is not None and [r.offset for r in trimmed.records] == [10, 11, 12, 13, 14]
    assert ledger.repositions() == ({}, {})


def test_offsets_the_log_does_not_have_are_passed_over() -> None:
    """Compaction and transaction markers leave offsets no record has."""
    progress = PartitionProgress(1)
    progress.anchor(0)
    progress.open(9)
    assert progress.admit(12, 20, 1) is Verdict.TAKE


def test_a_partition_of_another_worker_is_never_committed() -> None:
    ledger = OffsetLedger()
    assert ledger.admit(P0, batch(0, 9), 1, True) is None
    assert ledger.committable(P0) is None


def test_a_partition_without_progress_and_with_lag_is_reported_as_stalled() -> None:
    ledger = anchored_ledger(at=0)
    taken = ledger.admit(P0, batch(0, 9), 1, True)
    assert taken is not None
    assert ledger.stalls(lambda tp: 100, after=3600) == []
    stalls = ledger.stalls(lambda tp: 100, after=0)
    assert [s.tp for s in stalls] == [P0] and stalls[0].lag == 100
    assert ledger.stall_count == 1
    ledger.stalls(lambda tp: 100, after=0)
    assert ledger.stall_count == 1  # one episode, counted once
    taken.ticket.done()
    assert ledger.stalls(lambda tp: 10, after=0) == []  # caught up: no lag, nothing in flight


def unreadable(offset: int, end: int | None) -> Unreadable:
    return Unreadable("source", 0, offset, end, "CorruptRecordException: Invalid CRC")


def test_an_unreadable_batch_stops_the_partition_and_a_skip_is_committed_only_when_recorded() -> (
    None
):
    ledger = anchored_ledger(at=100)
    first = ledger.admit(P0, batch(100, 109), 1, True)
    assert first is not None
    assert ledger.stop(P0, unreadable(110, 115))
    assert not ledger.stop(P0, unreadable(110, 115))  # the same report again is no news
    assert ledger.caught_up(P0)
    # A fetch that reaches past the stop (aiokafka moved on after a too-large record) is cut.
    assert ledger.admit(P0, batch(110, 130), 1, True) is None
    _, seek = ledger.repositions()
    ledger.sought(P0, seek[P0])
    first.ticket.done()
    assert ledger.committable(P0) == 110
    ticket = ledger.skip(P0, 110, 115)
    assert ticket is not None and ledger.stopped() == {}
    _, seek = ledger.repositions()
    assert seek == {P0: 115}  # the consumer seeks past the range before the next fetch
    ledger.sought(P0, 115)
    after = ledger.admit(P0, batch(115, 120), 1, True)
    assert after is not None
    after.ticket.done()
    assert ledger.committable(P0) == 110  # the skipped range is not recorded yet
    ticket.done()
    assert ledger.committable(P0) == 121


def test_records_before_the_unreadable_batch_are_taken_and_a_skip_waits_for_them() -> None:
    ledger = anchored_ledger(at=100)
    assert ledger.stop(P0, unreadable(110, None))
    assert not ledger.caught_up(P0)
    assert ledger.skip(P0, 110, 111) is None  # 100..109 are not handed out yet
    taken = ledger.admit(P0, batch(100, 120), 1, True)
    assert taken is not None and taken.records[-1].offset == 109
    assert ledger.caught_up(P0)
    assert unreadable(110, None).skip_to == 111  # a header that could not be read either
    assert ledger.skip(P0, 110, 111) is not None


def test_a_stale_report_and_a_revoked_partition_are_not_stopped() -> None:
    ledger = anchored_ledger(at=100)
    ledger.admit(P0, batch(100, 119), 1, True)
    assert not ledger.stop(P0, unreadable(110, 115))  # behind what was handed out already
    assert ledger.stop(P0, unreadable(120, 125))
    ledger.revoke({P0})
    assert ledger.stopped() == {}
