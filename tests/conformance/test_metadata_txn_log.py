"""Conformance: transactions in the log on both metadata backends — open transactions move the
last stable offset, markers end them in the commit that stores them, aborts are listed for
read_committed fetches, and retention, DeleteRecords and topic deletion drop what they cover
(metadata/transactions.py)."""

from __future__ import annotations

import itertools

from metadata import BatchRef, BatchResult, CommitBlock, OffsetOutOfRangeError
from metadata.transactions import AbortedTxn
from tests.conformance.conftest import Store

TXN = 0x10
CONTROL = 0x30
ABORT, COMMIT = 0, 1
_keys = itertools.count()


def data(count: int, pid: int = -1, epoch: int = -1, seq: int = -1, txn: bool = False) -> BatchRef:
    return BatchRef(count, pid, epoch, seq, TXN if txn else 0)


def marker(pid: int, epoch: int, commit: bool) -> BatchRef:
    return BatchRef(1, pid, epoch, -1, CONTROL, COMMIT if commit else ABORT)


def commit(store: Store, tid: int, *batches: BatchRef, partition: int = 0) -> list[BatchResult]:
    block = CommitBlock(tid, partition, 8, 100, 0, list(batches))
    return store.commit_segment(f"segments/txn-{next(_keys)}", 200, [block])[0]


def stable(store: Store, tid: int, partition: int = 0) -> tuple[int, int]:
    state = store.get_partition(tid, partition)
    assert state is not None
    return state.high_watermark, state.last_stable_offset


def test_an_open_transaction_holds_the_last_stable_offset_until_its_commit_marker(
    store: Store,
) -> None:
    tid = store.create_topic("t", 2).topic_id
    assert stable(store, tid) == (0, 0)
    commit(store, tid, data(3))  # plain data: stable at once
    assert stable(store, tid) == (3, 3)
    r = commit(store, tid, data(2, 7, 0, 0, txn=True))
    assert r == [BatchResult(3)]
    assert stable(store, tid) == (5, 3)
    commit(store, tid, data(4), data(1, 7, 0, 2, txn=True))  # others write on; same txn goes on
    assert stable(store, tid) == (10, 3)
    assert commit(store, tid, marker(7, 0, commit=True)) == [BatchResult(10)]
    assert stable(store, tid) == (11, 11)
    assert store.aborted_transactions(tid, 0, 0, 11) == []
    # the other partition never saw the transaction
    assert stable(store, tid, 1) == (0, 0)
    assert [p.last_stable_offset for p in store.list_partitions(tid)] == [11, 0]


def test_an_abort_marker_records_the_aborted_range(store: Store) -> None:
    tid = store.create_topic("t", 1).topic_id
    commit(store, tid, data(2, 3, 1, 0, txn=True), data(1))
    commit(store, tid, data(2, 4, 0, 0, txn=True))  # a second producer's transaction
    assert stable(store, tid) == (5, 0)
    commit(store, tid, marker(3, 1, commit=False))
    assert stable(store, tid) == (6, 3)  # the second one still holds it
    assert store.aborted_transactions(tid, 0, 0, 6) == [AbortedTxn(3, 0, 5)]
    assert store.aborted_transactions(tid, 0, 5, 6) == [AbortedTxn(3, 0, 5)]
    assert store.aborted_transactions(tid, 0, 6, 100) == []  # ended before the range
    commit(store, tid, marker(4, 0, commit=True))
    assert stable(store, tid) == (7, 7)
    # a new transaction of the first producer starts a new range
    commit(store, tid, data(1, 3, 1, 2, txn=True), marker(3, 1, commit=False))
    assert store.aborted_transactions(tid, 0, 0, 100) == [AbortedTxn(3, 0, 5), AbortedTxn(3, 7, 8)]
    assert store.aborted_transactions(tid, 0, 6, 7) == []


def test_markers_without_an_open_transaction_change_nothing_and_repeat_safely(
    store: Store,
) -> None:
    tid = store.create_topic("t", 1).topic_id
    assert commit(store, tid, marker(9, 0, commit=False)) == [BatchResult(0)]
    assert stable(store, tid) == (1, 1)
    assert store.aborted_transactions(tid, 0, 0, 10) == []
    commit(store, tid, data(2, 9, 0, 0, txn=True))
    commit(store, tid, marker(9, 0, commit=False), marker(9, 0, commit=False))
    assert stable(store, tid) == (5, 5)
    assert store.aborted_transactions(tid, 0, 0, 10) == [AbortedTxn(9, 1, 3)]


def test_a_marker_of_an_older_epoch_is_fenced_and_a_newer_one_resets_the_sequence(
    store: Store,
) -> None:
    tid = store.create_topic("t", 1).topic_id
    commit(store, tid, data(2, 5, 2, 0, txn=True))
    r = commit(store, tid, marker(5, 1, commit=True))
    assert r[0].error == "INVALID_PRODUCER_EPOCH"
    assert stable(store, tid) == (2, 0)  # still open
    # the coordinator aborts with a bumped epoch (timeout): ends it, sequences start over
    assert commit(store, tid, marker(5, 3, commit=False)) == [BatchResult(2)]
    assert stable(store, tid) == (3, 3)
    assert commit(store, tid, data(1, 5, 2, 2, txn=True))[0].error == "INVALID_PRODUCER_EPOCH"
    assert commit(store, tid, data(1, 5, 3, 0, txn=True)) == [BatchResult(3)]
    assert stable(store, tid) == (4, 3)


def test_a_duplicate_transactional_batch_does_not_open_a_transaction_again(store: Store) -> None:
    tid = store.create_topic("t", 1).topic_id
    commit(store, tid, data(2, 1, 0, 0, txn=True), marker(1, 0, commit=True))
    assert stable(store, tid) == (3, 3)
    r = commit(store, tid, data(2, 1, 0, 0, txn=True))  # a retry of the committed batch
    assert r == [BatchResult(0, duplicate=True)]
    assert stable(store, tid) == (3, 3)


def test_delete_records_and_retention_drop_aborted_rows_below_the_log_start(
    store: Store,
) -> None:
    tid = store.create_topic("t", 1).topic_id
    commit(store, tid, data(2, 1, 0, 0, txn=True), marker(1, 0, commit=False))  # 0..2
    commit(store, tid, data(2, 1, 0, 2, txn=True), marker(1, 0, commit=False))  # 3..5
    assert len(store.aborted_transactions(tid, 0, 0, 10)) == 2
    store.set_log_start_offset(tid, 0, 3)
    assert store.aborted_transactions(tid, 0, 0, 10) == [AbortedTxn(1, 3, 5)]
    try:
        store.set_log_start_offset(tid, 0, 99)
    except OffsetOutOfRangeError:
        pass
    else:
        raise AssertionError("a log start past the high watermark was accepted")


def test_deleting_a_topic_forgets_its_transactions(store: Store) -> None:
    t = store.create_topic("t", 1)
    commit(store, t.topic_id, data(1, 1, 0, 0, txn=True), marker(1, 0, commit=False))
    commit(store, t.topic_id, data(1, 2, 0, 0, txn=True))
    store.delete_topic("t")
    again = store.create_topic("t", 1)
    assert stable(store, again.topic_id) == (0, 0)
    assert store.aborted_transactions(t.topic_id, 0, 0, 10) == []


def test_one_commit_of_several_segments_carries_transactions_from_one_to_the_next(
    store: Store,
) -> None:
    tid = store.create_topic("t", 1).topic_id
    segments = [
        ("segments/a", 10, [CommitBlock(tid, 0, 8, 10, 0, [data(2, 6, 0, 0, txn=True)])]),
        ("segments/b", 10, [CommitBlock(tid, 0, 8, 10, 0, [marker(6, 0, commit=False)])]),
        ("segments/c", 10, [CommitBlock(tid, 0, 8, 10, 0, [data(1, 6, 0, 2, txn=True)])]),
    ]
    results = store.commit_segments(segments)
    assert [r[0][0].base_offset for r in results] == [0, 2, 3]
    assert stable(store, tid) == (4, 3)
    assert store.aborted_transactions(tid, 0, 0, 10) == [AbortedTxn(6, 0, 2)]
