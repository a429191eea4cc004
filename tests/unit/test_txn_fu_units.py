"""``metadata.transactions.AbortedRanges``: which (producer, offset) a read committed reader
drops (SQL scans and gRPC's records format)."""

from __future__ import annotations

from metadata.transactions import AbortedRanges


def test_covers_only_the_producers_own_aborted_ranges() -> None:
    ranges = AbortedRanges([(7, 10, 15), (7, 30, 31), (8, 12, 20), (7, 10, 15)])
    assert ranges
    assert [o for o in range(0, 40) if ranges.covers(7, o)] == [*range(10, 16), 30, 31]
    assert [o for o in range(0, 40) if ranges.covers(8, o)] == list(range(12, 21))
    assert not ranges.covers(9, 12)  # another producer's batch inside the range stays


def test_no_aborted_transactions_cover_nothing() -> None:
    ranges = AbortedRanges()
    assert not ranges
    assert not ranges.covers(7, 0)
