"""Conformance (SQLite and PostgreSQL) of what the transactions follow-up added to the metadata
store: the catalog's compare-and-set (``swap_catalog_entry``, which the transaction
coordinator writes its state with) and compare-and-delete, and idle producer-state expiry
sparing producers with an open transaction."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from metadata import BatchRef, CommitBlock
from tests.conformance.conftest import Opener, Store

TXN = 0x10
CONTROL = 0x30
_keys = itertools.count()


def test_swap_stores_only_over_the_definition_it_expects(store: Store) -> None:
    assert store.swap_catalog_entry("kafka-txn", "t", b"v1", 1, expect=None) is True
    assert store.swap_catalog_entry("kafka-txn", "t", b"x", 2, expect=None) is False  # exists
    assert store.get_catalog_entry("kafka-txn", "t") == b"v1"
    assert store.swap_catalog_entry("kafka-txn", "t", b"v2", 3, expect=b"v1") is True
    assert store.swap_catalog_entry("kafka-txn", "t", b"v3", 4, expect=b"v1") is False  # stale
    assert store.get_catalog_entry("kafka-txn", "t") == b"v2"
    # An entry that is gone matches no expected definition; other names are untouched.
    assert store.swap_catalog_entry("kafka-txn", "u", b"v", 5, expect=b"v2") is False
    assert store.get_catalog_entry("kafka-txn", "u") is None
    assert store.list_catalog_entries("kafka-txn") == [("t", b"v2")]
    with pytest.raises(ValueError, match="expected catalog definition must be bytes"):
        store.swap_catalog_entry("kafka-txn", "t", b"v", 6, expect="v2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="catalog name"):
        store.swap_catalog_entry("kafka-txn", "", b"v", 6, expect=None)


def test_delete_with_an_expected_definition_deletes_only_that(store: Store) -> None:
    store.put_catalog_entry("kafka-txn", "idle", b"old", 1)
    assert store.delete_catalog_entry("kafka-txn", "idle", expect=b"older") is False
    assert store.get_catalog_entry("kafka-txn", "idle") == b"old"
    assert store.delete_catalog_entry("kafka-txn", "idle", expect=b"old") is True
    assert store.get_catalog_entry("kafka-txn", "idle") is None
    assert store.delete_catalog_entry("kafka-txn", "idle", expect=b"old") is False
    with pytest.raises(ValueError, match="expected catalog definition must be bytes"):
        store.delete_catalog_entry("kafka-txn", "idle", expect=1)  # type: ignore[arg-type]


def test_concurrent_swaps_from_one_definition_store_exactly_one(backend_opener: Opener) -> None:
    """Four stores swap the same entry from the same definition at once: exactly one lands."""
    stores = [backend_opener() for _ in range(4)]
    stores[0].put_catalog_entry("kafka-txn", "race", b"start", 1)
    won: list[int] = []
    barrier = threading.Barrier(len(stores))

    def swap(i: int) -> None:
        barrier.wait(timeout=30)
        if stores[i].swap_catalog_entry("kafka-txn", "race", f"{i}".encode(), 2, expect=b"start"):
            won.append(i)

    threads = [threading.Thread(target=swap, args=(i,)) for i in range(len(stores))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert len(won) == 1
    assert stores[0].get_catalog_entry("kafka-txn", "race") == f"{won[0]}".encode()


def _commit(store: Store, topic_id: int, partition: int, *batches: BatchRef) -> None:
    block = CommitBlock(topic_id, partition, 8, 100, 0, list(batches))
    results = store.commit_segment(f"segments/fu-{next(_keys)}", 200, [block])[0]
    assert all(r.error is None for r in results), results


def _cut() -> int:
    """A cut-off after every producer-state stamp made so far."""
    start = time.time_ns() // 1_000_000
    deadline = time.monotonic() + 1
    while time.time_ns() // 1_000_000 <= start:
        assert time.monotonic() < deadline, "the clock did not move in a second"
    return time.time_ns() // 1_000_000


def test_expiry_spares_a_producer_with_an_open_transaction_in_any_partition(
    store: Store,
) -> None:
    tid = store.create_topic("eos", 2).topic_id
    # Producer 7: idempotent state on partition 0, a transaction open on partition 1.
    _commit(store, tid, 0, BatchRef(2, 7, 0, 0))
    _commit(store, tid, 1, BatchRef(1, 7, 0, 2, TXN))
    # Producer 8: plain idempotent state on partition 0, no transaction.
    _commit(store, tid, 0, BatchRef(1, 8, 0, 0))
    cut = _cut()
    assert store.expire_producer_state(cut) == 1  # only producer 8's row
    assert store.expire_producer_state(cut) == 0
    # Once its transaction ends (the COMMIT marker), producer 7 may expire like any other.
    _commit(store, tid, 1, BatchRef(1, 7, 0, -1, CONTROL, 1))
    assert store.expire_producer_state(_cut()) == 2
