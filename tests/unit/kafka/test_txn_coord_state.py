"""The transaction coordinator's state machine (ingest/kafka/txn_coordinator.py), on plain
values: every transition, fencing, timeouts and the errors of wrong-order calls."""

from __future__ import annotations

import pytest

from ingest.kafka import txn_coordinator as tc
from ingest.kafka.txn_coordinator import PendingOffset, TxnRecord, TxnState

MAX = 900_000
TID = "app-1"


def fresh(epoch: int = 0, timeout_ms: int = 60_000) -> TxnRecord:
    record = tc.init_with_producer_id(TID, 7, timeout_ms=timeout_ms, now_ms=1000)
    return tc._replace(record, producer_epoch=epoch)


def ongoing(epoch: int = 0) -> TxnRecord:
    step = tc.add_partitions(fresh(epoch), 7, epoch, [(1, 0), (1, 1)], 2000)
    assert step.error == tc.NONE and step.record is not None
    return step.record


def offset(group: str = "g", partition: int = 0, at: int = 10) -> PendingOffset:
    return PendingOffset(group=group, topic_id=1, partition=partition, offset=at)


def test_first_init_asks_for_a_producer_id_then_starts_at_epoch_0() -> None:
    step = tc.init_producer_id(None, timeout_ms=1000, max_timeout_ms=MAX, now_ms=1)
    assert step.needs_producer_id and step.error == tc.NONE and step.record is None
    record = tc.init_with_producer_id(TID, 42, timeout_ms=1000, now_ms=1)
    assert (record.producer_id, record.producer_epoch, record.state) == (42, 0, TxnState.EMPTY)


@pytest.mark.parametrize("timeout", [0, -1, MAX + 1])
def test_init_refuses_a_timeout_out_of_range(timeout: int) -> None:
    step = tc.init_producer_id(fresh(), timeout_ms=timeout, max_timeout_ms=MAX, now_ms=1)
    assert step.error == tc.INVALID_TRANSACTION_TIMEOUT and step.record is None


@pytest.mark.parametrize(
    "state", [TxnState.EMPTY, TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT]
)
def test_init_of_an_idle_id_bumps_the_epoch_and_takes_the_new_timeout(state: TxnState) -> None:
    record = tc._replace(fresh(3), state=state)
    step = tc.init_producer_id(record, timeout_ms=5000, max_timeout_ms=MAX, now_ms=9)
    assert step.error == tc.NONE and step.record is not None
    # A new producer (naming none) cannot be confused with a retry of this bump.
    assert step.record.producer_epoch == 4 and step.record.previous_epoch == -1
    assert step.record.state is TxnState.EMPTY and step.record.timeout_ms == 5000


def test_init_of_an_ongoing_transaction_aborts_it_at_a_fencing_epoch() -> None:
    step = tc.init_producer_id(ongoing(2), timeout_ms=5000, max_timeout_ms=MAX, now_ms=9)
    assert step.record is not None
    aborting = step.record
    assert aborting.state is TxnState.PREPARE_ABORT and aborting.producer_epoch == 3
    assert aborting.partitions == ((1, 0), (1, 1))  # the markers go there
    done = tc.complete(aborting, 10)
    assert done.state is TxnState.COMPLETE_ABORT and done.partitions == ()
    again = tc.init_producer_id(done, timeout_ms=5000, max_timeout_ms=MAX, now_ms=11)
    assert again.record is not None and again.record.producer_epoch == 4
    # The old producer (epoch 2) is fenced everywhere.
    assert tc.end_txn(again.record, 7, 2, True, 12).error == tc.PRODUCER_FENCED
    assert tc.add_partitions(again.record, 7, 2, [(1, 0)], 12).error == tc.PRODUCER_FENCED


@pytest.mark.parametrize("state", tc.PREPARING)
def test_init_while_completing_is_concurrent_transactions(state: TxnState) -> None:
    record = tc._replace(ongoing(), state=state)
    step = tc.init_producer_id(record, timeout_ms=5000, max_timeout_ms=MAX, now_ms=9)
    assert step.error == tc.CONCURRENT_TRANSACTIONS and step.record is None


def test_exhausted_epoch_asks_for_a_new_producer_id() -> None:
    step = tc.init_producer_id(
        fresh(tc.MAX_EPOCH - 1), timeout_ms=5000, max_timeout_ms=MAX, now_ms=9
    )
    assert step.needs_producer_id


def test_init_naming_the_current_producer_bumps_and_a_retry_gets_the_same_epoch() -> None:
    step = tc.init_producer_id(
        fresh(5),
        timeout_ms=5000,
        max_timeout_ms=MAX,
        now_ms=9,
        expected_producer_id=7,
        expected_epoch=5,
    )
    assert step.record is not None and step.record.producer_epoch == 6
    retry = tc.init_producer_id(
        step.record,
        timeout_ms=5000,
        max_timeout_ms=MAX,
        now_ms=10,
        expected_producer_id=7,
        expected_epoch=5,
    )
    assert retry.record is not None and retry.record.producer_epoch == 6
    # A new producer bumps again; the old epoch 5 is then fenced.
    fresh_init = tc.init_producer_id(retry.record, timeout_ms=5000, max_timeout_ms=MAX, now_ms=11)
    assert fresh_init.record is not None and fresh_init.record.producer_epoch == 7
    late = tc.init_producer_id(
        fresh_init.record,
        timeout_ms=5000,
        max_timeout_ms=MAX,
        now_ms=12,
        expected_producer_id=7,
        expected_epoch=5,
    )
    assert late.error == tc.PRODUCER_FENCED


@pytest.mark.parametrize(("pid", "epoch"), [(7, 4), (8, 5), (7, 9)])
def test_init_naming_another_producer_is_fenced(pid: int, epoch: int) -> None:
    step = tc.init_producer_id(
        fresh(5),
        timeout_ms=5000,
        max_timeout_ms=MAX,
        now_ms=9,
        expected_producer_id=pid,
        expected_epoch=epoch,
    )
    assert step.error == tc.PRODUCER_FENCED


def test_init_naming_a_producer_of_an_unknown_id() -> None:
    step = tc.init_producer_id(
        None, timeout_ms=5000, max_timeout_ms=MAX, now_ms=9, expected_producer_id=3
    )
    assert step.error == tc.INVALID_PRODUCER_ID_MAPPING


def test_add_partitions_starts_a_transaction_and_merges() -> None:
    record = ongoing()
    assert record.state is TxnState.ONGOING and record.start_ms == 2000
    step = tc.add_partitions(record, 7, 0, [(2, 0), (1, 0)], 3000)
    assert step.record is not None
    assert step.record.partitions == ((1, 0), (1, 1), (2, 0))
    assert step.record.start_ms == 2000  # the transaction's start does not move
    same = tc.add_partitions(step.record, 7, 0, [(2, 0)], 4000)
    assert same.error == tc.NONE and same.record is None


@pytest.mark.parametrize(
    ("pid", "epoch", "error"),
    [(8, 0, tc.INVALID_PRODUCER_ID_MAPPING), (7, 1, tc.PRODUCER_FENCED)],
)
def test_every_request_checks_the_producer(pid: int, epoch: int, error: int) -> None:
    record = ongoing()
    assert tc.add_partitions(record, pid, epoch, [(1, 0)], 1).error == error
    assert tc.add_offsets(record, pid, epoch, "g", 1).error == error
    assert tc.txn_offset_commit(record, pid, epoch, "g", [offset()], 1).error == error
    assert tc.end_txn(record, pid, epoch, True, 1).error == error


def test_unknown_transactional_id_is_an_invalid_mapping() -> None:
    assert tc.add_partitions(None, 7, 0, [(1, 0)], 1).error == tc.INVALID_PRODUCER_ID_MAPPING
    assert tc.end_txn(None, 7, 0, True, 1).error == tc.INVALID_PRODUCER_ID_MAPPING


@pytest.mark.parametrize("state", tc.PREPARING)
def test_requests_while_completing_are_concurrent_transactions(state: TxnState) -> None:
    record = tc._replace(ongoing(), state=state, groups=("g",))
    assert tc.add_partitions(record, 7, 0, [(1, 0)], 1).error == tc.CONCURRENT_TRANSACTIONS
    assert tc.add_offsets(record, 7, 0, "g", 1).error == tc.CONCURRENT_TRANSACTIONS
    assert tc.txn_offset_commit(record, 7, 0, "g", [], 1).error == tc.CONCURRENT_TRANSACTIONS
    same = state is TxnState.PREPARE_COMMIT
    assert tc.end_txn(record, 7, 0, same, 1).error == tc.CONCURRENT_TRANSACTIONS
    assert tc.end_txn(record, 7, 0, not same, 1).error == tc.INVALID_TXN_STATE


@pytest.mark.parametrize("commit", [True, False])
def test_end_txn_prepares_then_complete_clears(commit: bool) -> None:
    step = tc.add_offsets(ongoing(), 7, 0, "g", 3000)
    assert step.record is not None
    step = tc.txn_offset_commit(step.record, 7, 0, "g", [offset()], 3100)
    assert step.record is not None
    prepared = tc.end_txn(step.record, 7, 0, commit, 4000).record
    assert prepared is not None and prepared.commit == commit
    assert prepared.state is (TxnState.PREPARE_COMMIT if commit else TxnState.PREPARE_ABORT)
    assert prepared.offsets == (offset(),) and prepared.partitions == ((1, 0), (1, 1))
    done = tc.complete(prepared, 5000)
    assert done.state is (TxnState.COMPLETE_COMMIT if commit else TxnState.COMPLETE_ABORT)
    assert (done.partitions, done.groups, done.offsets, done.start_ms) == ((), (), (), -1)
    # A retried EndTxn with the same outcome succeeds; the other outcome is refused.
    assert tc.end_txn(done, 7, 0, commit, 6000) == tc.Step()
    assert tc.end_txn(done, 7, 0, not commit, 6000).error == tc.INVALID_TXN_STATE


def test_end_txn_without_a_transaction_is_invalid_state() -> None:
    assert tc.end_txn(fresh(), 7, 0, True, 1).error == tc.INVALID_TXN_STATE
    assert tc.end_txn(fresh(), 7, 0, False, 1).error == tc.INVALID_TXN_STATE


def test_a_new_transaction_after_completion_starts_clean() -> None:
    prepared = tc.end_txn(ongoing(), 7, 0, True, 4000).record
    assert prepared is not None
    step = tc.add_partitions(tc.complete(prepared, 5000), 7, 0, [(3, 0)], 6000)
    assert step.record is not None
    assert step.record.partitions == ((3, 0),) and step.record.start_ms == 6000


def test_offsets_need_the_group_added_and_replace_per_partition() -> None:
    record = ongoing()
    assert tc.txn_offset_commit(record, 7, 0, "g", [offset()], 1).error == tc.INVALID_TXN_STATE
    assert tc.txn_offset_commit(fresh(), 7, 0, "g", [offset()], 1).error == tc.INVALID_TXN_STATE
    added = tc.add_offsets(record, 7, 0, "g", 3000).record
    assert added is not None and added.groups == ("g",)
    first = tc.txn_offset_commit(added, 7, 0, "g", [offset(at=5), offset(partition=1)], 1)
    assert first.record is not None
    second = tc.txn_offset_commit(first.record, 7, 0, "g", [offset(at=9)], 2)
    assert second.record is not None
    assert set(second.record.offsets) == {offset(partition=1), offset(at=9)}


def test_add_offsets_alone_opens_a_transaction() -> None:
    record = tc.add_offsets(fresh(), 7, 0, "g", 3000).record
    assert record is not None and record.state is TxnState.ONGOING and record.start_ms == 3000
    assert tc.add_offsets(record, 7, 0, "g", 3001).record is None


def test_timeout_aborts_with_a_bumped_epoch() -> None:
    record = ongoing(4)  # started at 2000, timeout 60000
    assert tc.expire(record, 62_000) is None
    aborting = tc.expire(record, 62_001)
    assert aborting is not None
    assert aborting.state is TxnState.PREPARE_ABORT and aborting.producer_epoch == 5
    assert tc.expire(fresh(), 10**12) is None  # nothing open: nothing to abort
    done = tc.complete(aborting, 62_002)
    assert tc.end_txn(done, 7, 4, True, 62_003).error == tc.PRODUCER_FENCED
    # The fenced producer cannot re-initialise naming its old epoch either (Kafka's rule).
    step = tc.init_producer_id(
        done,
        timeout_ms=5000,
        max_timeout_ms=MAX,
        now_ms=1,
        expected_producer_id=7,
        expected_epoch=4,
    )
    assert step.error == tc.PRODUCER_FENCED


def test_complete_refuses_a_state_that_is_not_prepared() -> None:
    with pytest.raises(ValueError, match="Ongoing"):
        tc.complete(ongoing(), 1)


@pytest.mark.parametrize(
    ("api", "version", "error"),
    [
        (22, 3, tc.INVALID_PRODUCER_EPOCH),
        (22, 4, tc.PRODUCER_FENCED),
        (24, 1, tc.INVALID_PRODUCER_EPOCH),
        (24, 2, tc.PRODUCER_FENCED),
        (25, 1, tc.INVALID_PRODUCER_EPOCH),
        (26, 2, tc.PRODUCER_FENCED),
        (28, 2, tc.INVALID_PRODUCER_EPOCH),
        (28, 3, tc.PRODUCER_FENCED),
    ],
)
def test_fencing_error_by_version(api: int, version: int, error: int) -> None:
    assert tc.fenced(api, version) == error


def test_only_idle_ids_are_forgotten() -> None:
    idle = fresh()  # updated at 1000
    assert not tc.forgotten(idle, 61_000, 60_000)
    assert tc.forgotten(idle, 61_001, 60_000)
    assert not tc.forgotten(ongoing(), 10**12, 60_000)
    prepared = tc._replace(ongoing(), state=TxnState.PREPARE_COMMIT)
    assert not tc.forgotten(prepared, 10**12, 60_000)
    assert tc.forgotten(tc.complete(prepared, 5000), 65_001, 60_000)
