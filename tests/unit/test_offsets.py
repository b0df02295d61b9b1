"""The committable offset of a partition whose batches finish out of order."""

from __future__ import annotations

from streams.offsets import PartitionProgress


def test_nothing_is_committable_before_a_batch_is_done() -> None:
    progress = PartitionProgress()
    progress.open(9)
    assert progress.committable is None
    assert progress.in_flight == 1


def test_the_offset_after_a_finished_batch_is_committable() -> None:
    progress = PartitionProgress()
    progress.open(9).done()
    assert progress.committable == 10
    assert progress.in_flight == 0


def test_a_later_batch_finishing_first_does_not_move_the_offset() -> None:
    progress = PartitionProgress()
    first = progress.open(9)
    second = progress.open(19)
    second.done()
    assert progress.committable is None  # offset 0..9 still in flight: commit nothing
    first.done()
    assert progress.committable == 20


def test_the_offset_stops_at_the_first_unfinished_batch() -> None:
    progress = PartitionProgress()
    tickets = [progress.open(last) for last in (4, 9, 14, 19)]
    tickets[0].done()
    tickets[2].done()
    tickets[3].done()
    assert progress.committable == 5
    tickets[1].done()
    assert progress.committable == 20


def test_done_twice_counts_once() -> None:
    progress = PartitionProgress()
    first = progress.open(4)
    second = progress.open(9)
    first.done()
    first.done()
    assert progress.committable == 5
    assert progress.in_flight == 1
    second.done()
    assert progress.committable == 10


def test_batches_may_skip_offsets() -> None:
    """Compaction and transaction markers leave gaps; the next batch starts later."""
    progress = PartitionProgress()
    progress.open(4).done()
    progress.open(30).done()  # records 17..30 (5..16 never existed)
    assert progress.committable == 31


def test_revoking_makes_every_ticket_stale() -> None:
    progress = PartitionProgress()
    first = progress.open(4)
    assert not first.stale
    progress.revoke()
    assert first.stale and progress.open(9).stale
