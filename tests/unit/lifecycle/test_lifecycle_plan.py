"""The lifecycle's I/O-free decisions: orphan selection, chunking, the delete budget, backoff."""

from __future__ import annotations

import pytest

from lifecycle.plan import (
    MAX_KEYS_PER_DELETE,
    Backoff,
    DeleteBudget,
    chunk_size,
    chunks,
    orphan_candidates,
    orphans,
)
from streamhouse.objectstore import ObjectInfo

GRACE = 600_000
NOW = 1_800_000_000_000


def test_only_objects_older_than_the_grace_period_are_candidates() -> None:
    page = [
        ObjectInfo("segments/old", 10, NOW - GRACE - 1),
        ObjectInfo("segments/edge", 10, NOW - GRACE),  # exactly at the cutoff: kept
        ObjectInfo("segments/young", 10, NOW - 5),
        ObjectInfo("segments/future", 10, NOW + 60_000),  # a skewed clock: kept
    ]
    assert orphan_candidates(page, NOW, GRACE) == ["segments/old"]
    assert orphan_candidates(page, NOW + 10 * GRACE, GRACE) == [
        "segments/old",
        "segments/edge",
        "segments/young",
        "segments/future",
    ]


def test_known_objects_are_never_orphans() -> None:
    candidates = ["segments/a", "segments/b", "segments/c"]
    assert orphans(candidates, {"segments/b"}) == ["segments/a", "segments/c"]
    assert orphans(candidates, set(candidates)) == []
    assert orphans([], {"segments/a"}) == []


@pytest.mark.parametrize(
    ("rate", "concurrency", "expected"),
    [(200, 4, 50), (3, 4, 1), (1, 1, 1), (100_000, 2, MAX_KEYS_PER_DELETE), (10, 1, 10)],
)
def test_chunk_size_spreads_the_budget_over_the_requests(
    rate: int, concurrency: int, expected: int
) -> None:
    assert chunk_size(rate, concurrency) == expected


def test_chunks_keep_order_and_cover_every_key() -> None:
    keys = [f"k{i}" for i in range(7)]
    assert chunks(keys, 3) == [["k0", "k1", "k2"], ["k3", "k4", "k5"], ["k6"]]
    assert chunks([], 3) == []
    with pytest.raises(ValueError, match="positive"):
        chunks(keys, 0)


def test_the_budget_paces_requests_to_the_rate() -> None:
    budget = DeleteBudget(200)
    waits = [budget.reserve(50, 0.0) for _ in range(8)]
    assert waits == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
    # 400 objects were booked over 2 s; a request at t=10 (budget idle since) goes at once.
    assert budget.reserve(50, 10.0) == 0.0
    assert budget.reserve(50, 10.0) == pytest.approx(0.25)


def test_the_budget_never_exceeds_its_rate_over_any_window() -> None:
    rate = 7
    budget = DeleteBudget(rate)
    now = 0.0
    sends: list[tuple[float, int]] = []
    for count in [1, 5, 3, 7, 2, 2, 9, 1, 4]:
        now += 0.1
        sends.append((now + budget.reserve(count, now), count))
    first = sends[0][0]
    for at, _ in sends:
        before = sum(c for t, c in sends if t < at)
        # Everything sent before `at` was paid for by `at`: at most rate * elapsed objects.
        assert before <= rate * (at - first) + 1e-9


def test_the_budget_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        DeleteBudget(0)
    with pytest.raises(ValueError, match="reserve"):
        DeleteBudget(1).reserve(-1, 0.0)


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(1.0, 10.0)
    assert [backoff.failed() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    backoff.succeeded()
    assert backoff.failed() == 1.0
    with pytest.raises(ValueError, match="backoff"):
        Backoff(0.0, 1.0)
