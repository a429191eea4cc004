"""Kafka transaction coordinator: the state of one transactional id and its transitions, no I/O.

Every function takes the stored record of a transactional id (``TxnRecord``, None when the id
has never been seen) and the request's values, and returns a ``Step``: an error code, or the
record to store next. The I/O shell (``txn_shell.py``) loads the record from metadata, calls in,
stores what comes back, and, when the stored record is in a Prepare state, writes the markers
(and on commit the pending offsets) and stores ``complete(record)``. Times are wall-clock
milliseconds passed in by the caller.

States (Kafka's TransactionState names)
---------------------------------------
Empty           a producer id and epoch, no transaction open.
Ongoing         partitions and/or consumer groups added; data may be in the log.
PrepareCommit   EndTxn(commit) decided: durable before any marker is written, so the transaction
                commits whatever fails afterwards.
PrepareAbort    EndTxn(abort), a timeout, or a new producer fencing this one decided to abort.
CompleteCommit  the commit markers are durable in every partition and the offsets applied.
CompleteAbort   the abort markers are durable in every partition; the offsets were dropped.

Transitions
-----------
(none)            -> Empty           InitProducerId (new producer id, epoch 0)
Empty, Complete*  -> Empty           InitProducerId (epoch + 1)
Ongoing           -> PrepareAbort    InitProducerId of a new producer instance (epoch + 1: fences
                                     the old one), or the transaction timed out (epoch + 1)
Empty, Complete*  -> Ongoing         AddPartitionsToTxn / AddOffsetsToTxn
Ongoing           -> Ongoing         AddPartitionsToTxn / AddOffsetsToTxn / TxnOffsetCommit
Ongoing           -> Prepare*        EndTxn
Prepare*          -> Complete*       complete(): markers written (commit: offsets applied)

Rules
-----
1. Requests name the producer id and epoch. Another producer id than the record's is
   INVALID_PRODUCER_ID_MAPPING (so is an unknown transactional id); another epoch is
   PRODUCER_FENCED (``fenced`` maps it to INVALID_PRODUCER_EPOCH for request versions from
   before KIP-588: InitProducerId < 4, AddPartitionsToTxn, AddOffsetsToTxn and EndTxn < 2,
   TxnOffsetCommit < 3).
2. While a Prepare state is being completed every request of that transactional id gets
   CONCURRENT_TRANSACTIONS (retriable), except an EndTxn repeating the decision already taken,
   which also gets CONCURRENT_TRANSACTIONS, and one contradicting it, INVALID_TXN_STATE.
3. EndTxn on Empty, or contradicting a Complete state, is INVALID_TXN_STATE; repeating the
   outcome of a Complete state is a retry and succeeds.
4. The transaction timeout (InitProducerId's ``transaction_timeout_ms``) must be 1 ..
   ``max_timeout_ms`` (Kafka's transaction.max.timeout.ms), else INVALID_TRANSACTION_TIMEOUT.
   An Ongoing transaction older than its timeout (from its first AddPartitions/AddOffsets) is
   aborted with the epoch bumped, so the abandoned producer is fenced.
5. Epochs are int16. When the epoch cannot be bumped any more InitProducerId asks for a new
   producer id (``Step.needs_producer_id``) and starts it at epoch 0.
6. InitProducerId v3+ may name the producer id and epoch the client had (KIP-360): they must be
   the record's current ones (or, for a retried InitProducerId, the ones before its bump), else
   PRODUCER_FENCED.
7. TxnOffsetCommit needs an Ongoing transaction that added the group (AddOffsetsToTxn), else
   INVALID_TXN_STATE; its offsets stay pending in the record, applied by complete() of a commit
   and dropped by an abort. A later commit of the same group and partition replaces the earlier.
8. A transactional id idle (Empty or Complete) and unused for longer than Kafka's
   transactional.id.expiration.ms is forgotten; an open or completing one never is.
"""

from __future__ import annotations

import enum

import msgspec

from streamhouse.errors import ErrorCode

NONE = ErrorCode.NONE.kafka_code
CONCURRENT_TRANSACTIONS = ErrorCode.CONCURRENT_TRANSACTIONS.kafka_code
INVALID_PRODUCER_EPOCH = ErrorCode.INVALID_PRODUCER_EPOCH.kafka_code
INVALID_PRODUCER_ID_MAPPING = ErrorCode.INVALID_PRODUCER_ID_MAPPING.kafka_code
INVALID_TRANSACTION_TIMEOUT = ErrorCode.INVALID_TRANSACTION_TIMEOUT.kafka_code
INVALID_TXN_STATE = ErrorCode.INVALID_TXN_STATE.kafka_code
PRODUCER_FENCED = ErrorCode.PRODUCER_FENCED.kafka_code

#: Largest producer epoch (int16).
MAX_EPOCH = 32767

#: First version of each API that answers PRODUCER_FENCED (older ones: INVALID_PRODUCER_EPOCH).
FENCED_SINCE: dict[int, int] = {22: 4, 24: 2, 25: 2, 26: 2, 28: 3}


class TxnState(enum.Enum):
    EMPTY = "Empty"
    ONGOING = "Ongoing"
    PREPARE_COMMIT = "PrepareCommit"
    PREPARE_ABORT = "PrepareAbort"
    COMPLETE_COMMIT = "CompleteCommit"
    COMPLETE_ABORT = "CompleteAbort"


PREPARING = (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT)
#: States whose pending offsets are not decided yet, or decided but not yet applied.
PENDING_OFFSETS_STATES = (TxnState.ONGOING, *PREPARING)
_COMPLETE = (TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT)
_IDLE = (TxnState.EMPTY, *_COMPLETE)


class PendingOffset(msgspec.Struct, frozen=True, kw_only=True):
    """One TxnOffsetCommit entry waiting for the transaction's outcome."""

    group: str
    topic_id: int
    partition: int
    offset: int
    leader_epoch: int = -1
    metadata: str = ""


class TxnRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The durable state of one transactional id (stored msgpack-encoded; see txn_shell.py).

    ``partitions`` are (topic id, partition) pairs, sorted; ``start_ms`` is when the open
    transaction began (-1 when none is open); ``previous_epoch`` the epoch before the last bump
    by an InitProducerId that named its producer (-1: none), which a retry of that
    InitProducerId may still name (rule 6).
    """

    transactional_id: str
    producer_id: int
    producer_epoch: int
    state: TxnState
    timeout_ms: int
    start_ms: int = -1
    updated_ms: int = 0
    previous_epoch: int = -1
    partitions: tuple[tuple[int, int], ...] = ()
    groups: tuple[str, ...] = ()
    offsets: tuple[PendingOffset, ...] = ()

    @property
    def commit(self) -> bool:
        """Whether this Prepare/Complete state is a commit (else an abort)."""
        return self.state in (TxnState.PREPARE_COMMIT, TxnState.COMPLETE_COMMIT)


class Step(msgspec.Struct, frozen=True):
    """What a request does: ``error`` (NONE or a Kafka code) and the record to store next
    (None: nothing changes). ``needs_producer_id``: InitProducerId wants a fresh producer id
    (call ``init_with_producer_id``)."""

    error: int = NONE
    record: TxnRecord | None = None
    needs_producer_id: bool = False


def fenced(api_key: int, version: int) -> int:
    """The fencing error a request of ``api_key`` at ``version`` answers (rule 1)."""
    return PRODUCER_FENCED if version >= FENCED_SINCE[api_key] else INVALID_PRODUCER_EPOCH


def check_timeout(timeout_ms: int, max_timeout_ms: int) -> int:
    return NONE if 0 < timeout_ms <= max_timeout_ms else INVALID_TRANSACTION_TIMEOUT


def init_producer_id(
    record: TxnRecord | None,
    *,
    timeout_ms: int,
    max_timeout_ms: int,
    now_ms: int,
    expected_producer_id: int = -1,
    expected_epoch: int = -1,
) -> Step:
    """InitProducerId with a transactional id. An Ongoing transaction is first aborted at a
    bumped epoch (the returned record is PrepareAbort: complete it, then call again)."""
    error = check_timeout(timeout_ms, max_timeout_ms)
    if error != NONE:
        return Step(error)
    if record is None:
        if expected_producer_id != -1:
            return Step(INVALID_PRODUCER_ID_MAPPING)
        return Step(needs_producer_id=True)
    if record.state in PREPARING:
        return Step(CONCURRENT_TRANSACTIONS)
    if expected_producer_id != -1:
        retried = (
            record.previous_epoch == expected_epoch and record.state in _IDLE
        )  # this very InitProducerId already bumped the epoch
        if expected_producer_id != record.producer_id or not (
            expected_epoch == record.producer_epoch or retried
        ):
            return Step(PRODUCER_FENCED)
        if retried:
            return Step(record=_replace(record, timeout_ms=timeout_ms, updated_ms=now_ms))
    if record.state is TxnState.ONGOING:
        return Step(record=_abort(record, now_ms, bump=True))
    if record.producer_epoch >= MAX_EPOCH - 1:
        return Step(needs_producer_id=True)
    return Step(
        record=_replace(
            record,
            producer_epoch=record.producer_epoch + 1,
            # Only a producer naming its epoch may retry this bump (a new one has none).
            previous_epoch=record.producer_epoch if expected_producer_id != -1 else -1,
            state=TxnState.EMPTY,
            timeout_ms=timeout_ms,
            updated_ms=now_ms,
            start_ms=-1,
            partitions=(),
            groups=(),
            offsets=(),
        )
    )


def init_with_producer_id(
    transactional_id: str, producer_id: int, *, timeout_ms: int, now_ms: int
) -> TxnRecord:
    """The record of a transactional id given a fresh producer id (rule 5)."""
    return TxnRecord(
        transactional_id=transactional_id,
        producer_id=producer_id,
        producer_epoch=0,
        state=TxnState.EMPTY,
        timeout_ms=timeout_ms,
        updated_ms=now_ms,
    )


def _check_producer(record: TxnRecord | None, producer_id: int, epoch: int) -> int:
    if record is None or record.producer_id != producer_id:
        return INVALID_PRODUCER_ID_MAPPING
    if record.producer_epoch != epoch:
        return PRODUCER_FENCED
    return NONE


def _check_addition(record: TxnRecord | None, producer_id: int, epoch: int) -> int:
    """What refuses adding to the transaction: the producer's check, then a transaction
    still being completed (CONCURRENT_TRANSACTIONS)."""
    error = _check_producer(record, producer_id, epoch)
    if error == NONE and record is not None and record.state in PREPARING:
        return CONCURRENT_TRANSACTIONS
    return error


def _begin(record: TxnRecord, now_ms: int) -> TxnRecord:
    """``record`` as Ongoing: a fresh transaction if it was idle."""
    if record.state is TxnState.ONGOING:
        return record
    return _replace(
        record,
        state=TxnState.ONGOING,
        start_ms=now_ms,
        updated_ms=now_ms,
        partitions=(),
        groups=(),
        offsets=(),
    )


def add_partitions(
    record: TxnRecord | None,
    producer_id: int,
    epoch: int,
    partitions: list[tuple[int, int]],
    now_ms: int,
) -> Step:
    """AddPartitionsToTxn: the (topic id, partition) pairs join the transaction."""
    error = _check_addition(record, producer_id, epoch)
    if error != NONE:
        return Step(error)
    assert record is not None
    if record.state is TxnState.ONGOING and set(partitions) <= set(record.partitions):
        return Step()
    ongoing = _begin(record, now_ms)
    merged = tuple(sorted(set(ongoing.partitions) | set(partitions)))
    return Step(record=_replace(ongoing, partitions=merged, updated_ms=now_ms))


def add_offsets(
    record: TxnRecord | None, producer_id: int, epoch: int, group: str, now_ms: int
) -> Step:
    """AddOffsetsToTxn: the consumer group's offsets will be committed with the transaction."""
    error = _check_addition(record, producer_id, epoch)
    if error != NONE:
        return Step(error)
    assert record is not None
    if record.state is TxnState.ONGOING and group in record.groups:
        return Step()
    ongoing = _begin(record, now_ms)
    groups = tuple(sorted({*ongoing.groups, group}))
    return Step(record=_replace(ongoing, groups=groups, updated_ms=now_ms))


def txn_offset_commit(
    record: TxnRecord | None,
    producer_id: int,
    epoch: int,
    group: str,
    offsets: list[PendingOffset],
    now_ms: int,
) -> Step:
    """TxnOffsetCommit: ``offsets`` (all of ``group``) wait for the transaction's outcome."""
    error = _check_addition(record, producer_id, epoch)
    if error != NONE:
        return Step(error)
    assert record is not None
    if record.state is not TxnState.ONGOING or group not in record.groups:
        return Step(INVALID_TXN_STATE)
    replaced = {(o.group, o.topic_id, o.partition) for o in offsets}
    kept = [o for o in record.offsets if (o.group, o.topic_id, o.partition) not in replaced]
    return Step(record=_replace(record, offsets=(*kept, *offsets), updated_ms=now_ms))


def end_txn(
    record: TxnRecord | None, producer_id: int, epoch: int, commit: bool, now_ms: int
) -> Step:
    """EndTxn: Ongoing becomes PrepareCommit or PrepareAbort (rules 2 and 3 for the rest)."""
    error = _check_producer(record, producer_id, epoch)
    if error != NONE:
        return Step(error)
    assert record is not None
    if record.state is TxnState.ONGOING:
        state = TxnState.PREPARE_COMMIT if commit else TxnState.PREPARE_ABORT
        return Step(record=_replace(record, state=state, updated_ms=now_ms))
    if record.state in PREPARING:
        return Step(CONCURRENT_TRANSACTIONS if record.commit == commit else INVALID_TXN_STATE)
    if record.state in _COMPLETE and record.commit == commit:
        return Step()  # a retry of an EndTxn that completed
    return Step(INVALID_TXN_STATE)


def expire(record: TxnRecord, now_ms: int) -> TxnRecord | None:
    """The record aborting an Ongoing transaction older than its timeout, epoch bumped so its
    producer is fenced; None when it has not timed out (rule 4)."""
    if record.state is not TxnState.ONGOING or now_ms - record.start_ms <= record.timeout_ms:
        return None
    return _abort(record, now_ms, bump=True)


def forgotten(record: TxnRecord, now_ms: int, expiration_ms: int) -> bool:
    """Whether an idle transactional id unused for longer than ``expiration_ms`` is forgotten
    (rule 8): its record is deleted; a later InitProducerId starts it with a new producer id."""
    return record.state in _IDLE and now_ms - record.updated_ms > expiration_ms


def complete(record: TxnRecord, now_ms: int) -> TxnRecord:
    """The record once a Prepare state's markers are durable (and a commit's offsets applied)."""
    if record.state not in PREPARING:
        raise ValueError(f"transaction {record.transactional_id!r} is {record.state.value}")
    state = TxnState.COMPLETE_COMMIT if record.commit else TxnState.COMPLETE_ABORT
    return _replace(
        record, state=state, start_ms=-1, updated_ms=now_ms, partitions=(), groups=(), offsets=()
    )


def _abort(record: TxnRecord, now_ms: int, *, bump: bool) -> TxnRecord:
    epoch = record.producer_epoch
    if bump and epoch < MAX_EPOCH:
        epoch += 1
    return _replace(
        record,
        state=TxnState.PREPARE_ABORT,
        producer_epoch=epoch,
        previous_epoch=-1,
        updated_ms=now_ms,
    )


def _replace(record: TxnRecord, **changes: object) -> TxnRecord:
    return msgspec.structs.replace(record, **changes)
