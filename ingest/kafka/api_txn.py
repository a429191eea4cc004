"""Transactions (exactly-once): the Kafka APIs of the transaction coordinator.

``APIS`` maps an API key to (name, lowest and highest advertised version, handler); the broker
merges it into what it advertises and dispatches. InitProducerId (22) with a transactional id
is answered by api_cluster.init_producer_id through ``init_transactional``; FindCoordinator
key type 1 names the agent coordinating a transactional id (the same rendezvous as groups).

Served:
- AddPartitionsToTxn (24) v0-3: partitions join the transaction. A partition of an unknown
  topic (or beyond its count) gets UNKNOWN_TOPIC_OR_PARTITION and then none is added: the
  others get OPERATION_NOT_ATTEMPTED, as in Kafka. v4+ (brokers batching for each other,
  KIP-890) is not advertised.
- AddOffsetsToTxn (25) v0-3: the group's offsets will be committed with the transaction.
- EndTxn (26) v0-3: commit or abort; answered once the outcome is durable (the markers are
  normally written before the answer; after a failure the sweeper writes them, and requests of
  that transactional id get CONCURRENT_TRANSACTIONS until then).
- TxnOffsetCommit (28) v0-3: offsets pending in the transaction, applied to the group's
  committed offsets on commit, dropped on abort. Sent to the group's coordinator (which need
  not be the transaction's: the state is in metadata); a member id or generation given (v3+)
  is checked against the group as OffsetCommit checks them.
- DescribeTransactions (65) v0: state, producer, timeout, start and partitions of each id
  (TRANSACTIONAL_ID_NOT_FOUND for an unknown one, NOT_COORDINATOR for another agent's).
- ListTransactions (66) v0-1: the ids this agent coordinates, filtered by state, producer id
  and (v1) how long the transaction has been open; unknown state names are echoed back.
v4 of AddOffsetsToTxn, EndTxn and TxnOffsetCommit (KIP-890's TRANSACTION_ABORTABLE) is not
advertised. Every request but TxnOffsetCommit is answered by the agent coordinating the
transactional id, others answer NOT_COORDINATOR. Errors: txn_coordinator.py's rules.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

from ingest.kafka import errors
from ingest.kafka import txn_coordinator as tc
from ingest.kafka.txn_coordinator import PendingOffset, TxnState
from ingest.kafka.txn_shell import TxnShell, pipeline_markers
from streamhouse.kafka.messages import (
    AddOffsetsToTxnRequest,
    AddOffsetsToTxnResponse,
    AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse,
    DescribeTransactionsRequest,
    DescribeTransactionsResponse,
    EndTxnRequest,
    EndTxnResponse,
    ListTransactionsRequest,
    ListTransactionsResponse,
    RequestHeader,
    TxnOffsetCommitRequest,
    TxnOffsetCommitResponse,
)
from streamhouse.process import spawn

if TYPE_CHECKING:
    from ingest.kafka.broker import KafkaBroker

log = logging.getLogger("ingest.kafka.txn")

_SHELLS: weakref.WeakKeyDictionary[KafkaBroker, TxnShell] = weakref.WeakKeyDictionary()


def shell(broker: KafkaBroker) -> TxnShell:
    """The broker's transaction coordinator, made on first use."""
    found = _SHELLS.get(broker)
    if found is None:
        found = _SHELLS[broker] = TxnShell(
            broker.meta,
            pipeline_markers(broker.pipeline),
            max_timeout_ms=broker.settings.transaction_max_timeout_ms,
            expiration_ms=broker.settings.transactional_id_expiration_ms,
            owns=broker.cluster.is_coordinator,
        )
    return found


_SWEEPERS: weakref.WeakKeyDictionary[KafkaBroker, asyncio.Task[None]] = weakref.WeakKeyDictionary()


def start(broker: KafkaBroker) -> None:
    """Starts the sweeper: recovery of interrupted transactions now, timeouts from then on."""
    interval = broker.settings.transaction_check_interval_ms / 1000
    _SWEEPERS[broker] = spawn(shell(broker).run(interval), "transaction coordinator sweeper")


def stop(broker: KafkaBroker) -> None:
    task = _SWEEPERS.pop(broker, None)
    if task is not None:
        task.cancel()


def _gate(broker: KafkaBroker, transactional_id: str) -> int:
    """NONE when this agent coordinates the transactional id."""
    if not transactional_id:
        return errors.INVALID_REQUEST
    if not broker.cluster.is_coordinator(transactional_id):
        return errors.NOT_COORDINATOR
    return errors.NONE


async def init_transactional(
    broker: KafkaBroker,
    transactional_id: str,
    timeout_ms: int,
    producer_id: int,
    producer_epoch: int,
    version: int,
) -> tuple[int, int, int]:
    """(error, producer id, epoch) of InitProducerId with a transactional id."""
    error = _gate(broker, transactional_id)
    if error != errors.NONE:
        return error, -1, -1
    error, pid, epoch = await shell(broker).init_producer_id(
        transactional_id, timeout_ms, producer_id, producer_epoch
    )
    if error == tc.PRODUCER_FENCED:
        error = tc.fenced(22, version)
    return error, pid, epoch


def _fencing(error: int, api_key: int, version: int) -> int:
    return tc.fenced(api_key, version) if error == tc.PRODUCER_FENCED else error


async def add_partitions_to_txn(
    broker: KafkaBroker, header: RequestHeader, request: AddPartitionsToTxnRequest
) -> AddPartitionsToTxnResponse:
    R = AddPartitionsToTxnResponse
    tid = request.v3_and_below_transactional_id
    error = _gate(broker, tid)
    wanted: list[tuple[str, int, int | None]] = []  # (topic, partition, topic id if it exists)
    for t in request.v3_and_below_topics:
        topic = await broker.topic(t.name)
        for p in t.partitions:
            exists = topic is not None and 0 <= p < topic.partitions
            wanted.append((t.name, p, topic.topic_id if topic is not None and exists else None))
    codes: list[int]
    if error != errors.NONE:
        codes = [error] * len(wanted)
    elif any(topic_id is None for _, _, topic_id in wanted):
        codes = [
            errors.UNKNOWN_TOPIC_OR_PARTITION
            if topic_id is None
            else errors.OPERATION_NOT_ATTEMPTED
            for _, _, topic_id in wanted
        ]
    else:
        pairs = [(topic_id, p) for _, p, topic_id in wanted if topic_id is not None]
        error = await shell(broker).add_partitions(
            tid, request.v3_and_below_producer_id, request.v3_and_below_producer_epoch, pairs
        )
        codes = [_fencing(error, 24, header.request_api_version)] * len(wanted)
    by_topic: dict[str, list[R.AddPartitionsToTxnPartitionResult]] = {}
    for (name, p, _), code in zip(wanted, codes, strict=True):
        by_topic.setdefault(name, []).append(
            R.AddPartitionsToTxnPartitionResult(partition_index=p, partition_error_code=code)
        )
    return R(
        results_by_topic_v3_and_below=[
            R.AddPartitionsToTxnTopicResult(name=name, results_by_partition=results)
            for name, results in by_topic.items()
        ]
    )


async def add_offsets_to_txn(
    broker: KafkaBroker, header: RequestHeader, request: AddOffsetsToTxnRequest
) -> AddOffsetsToTxnResponse:
    error = _gate(broker, request.transactional_id)
    if error == errors.NONE and not request.group_id:
        error = errors.INVALID_GROUP_ID
    if error == errors.NONE:
        error = await shell(broker).add_offsets(
            request.transactional_id, request.producer_id, request.producer_epoch, request.group_id
        )
    return AddOffsetsToTxnResponse(error_code=_fencing(error, 25, header.request_api_version))


async def end_txn(
    broker: KafkaBroker, header: RequestHeader, request: EndTxnRequest
) -> EndTxnResponse:
    error = _gate(broker, request.transactional_id)
    if error == errors.NONE:
        error = await shell(broker).end_txn(
            request.transactional_id, request.producer_id, request.producer_epoch, request.committed
        )
    return EndTxnResponse(error_code=_fencing(error, 26, header.request_api_version))


async def txn_offset_commit(
    broker: KafkaBroker, header: RequestHeader, request: TxnOffsetCommitRequest
) -> TxnOffsetCommitResponse:
    from ingest.kafka.api_groups import shell as group_shell

    R = TxnOffsetCommitResponse
    version = header.request_api_version
    # Sent to the group's coordinator, which need not coordinate the transactional id: the
    # transaction's state is read from metadata wherever it is coordinated.
    error = errors.INVALID_REQUEST if not request.transactional_id else errors.NONE
    if error == errors.NONE:
        error = (
            await group_shell(broker).ensure(request.group_id)
            if request.group_id
            else errors.INVALID_GROUP_ID
        )
    if error == errors.NONE and (request.member_id or request.generation_id >= 0):
        error = broker.coordinator.validate_offset_commit(
            request.group_id, request.generation_id, request.member_id, request.group_instance_id
        )
    rows: list[tuple[str, int, int]] = []  # (topic, partition, code)
    pending: list[PendingOffset] = []
    for t in request.topics:
        topic = await broker.topic(t.name)
        for p in t.partitions:
            code = error
            if code == errors.NONE and (
                topic is None or not 0 <= p.partition_index < topic.partitions
            ):
                code = errors.UNKNOWN_TOPIC_OR_PARTITION
            if code == errors.NONE and topic is not None:
                pending.append(
                    PendingOffset(
                        group=request.group_id,
                        topic_id=topic.topic_id,
                        partition=p.partition_index,
                        offset=p.committed_offset,
                        leader_epoch=max(p.committed_leader_epoch, -1),
                        metadata=p.committed_metadata or "",
                    )
                )
            rows.append((t.name, p.partition_index, code))
    if pending:
        stored = await shell(broker).txn_offset_commit(
            request.transactional_id,
            request.producer_id,
            request.producer_epoch,
            request.group_id,
            pending,
        )
        stored = _fencing(stored, 28, version)
        rows = [(n, p, stored if code == errors.NONE else code) for n, p, code in rows]
    by_topic: dict[str, list[R.TxnOffsetCommitResponsePartition]] = {}
    for name, p, code in rows:
        by_topic.setdefault(name, []).append(
            R.TxnOffsetCommitResponsePartition(partition_index=p, error_code=code)
        )
    return R(
        topics=[
            R.TxnOffsetCommitResponseTopic(name=name, partitions=parts)
            for name, parts in by_topic.items()
        ]
    )


async def hold_unstable_offsets(broker: KafkaBroker, group_id: str, topics: list[Any]) -> None:
    """OffsetFetch with require_stable: the partitions of ``topics`` (OffsetFetch response
    topic entries, changed in place) with an offset of ``group_id`` pending in an open
    transaction answer UNSTABLE_OFFSET_COMMIT (retriable: clients ask again after the
    transaction ends) and no offset, as in Kafka."""
    pending = await shell(broker).pending_offsets(group_id)
    if not pending:
        return
    names = await broker.meta.topics_by_id(topic_id for topic_id, _ in pending)
    held = {(names[t].name, p) for t, p in pending if t in names}
    for topic in topics:
        for partition in topic.partitions:
            if (topic.name, partition.partition_index) in held:
                partition.committed_offset = -1
                partition.committed_leader_epoch = -1
                partition.metadata = ""
                partition.error_code = errors.UNSTABLE_OFFSET_COMMIT


async def describe_transactions(
    broker: KafkaBroker, header: RequestHeader, request: DescribeTransactionsRequest
) -> DescribeTransactionsResponse:
    R = DescribeTransactionsResponse
    states: list[R.TransactionState] = []
    for tid in request.transactional_ids:
        error = _gate(broker, tid)
        record = await shell(broker).load(tid) if error == errors.NONE else None
        if error == errors.NONE and record is None:
            error = errors.TRANSACTIONAL_ID_NOT_FOUND
        if record is None:
            states.append(R.TransactionState(error_code=error, transactional_id=tid))
            continue
        names = await broker.meta.topics_by_id({t for t, _ in record.partitions})
        by_topic: dict[str, list[int]] = {}
        for topic_id, partition in record.partitions:
            if topic_id in names:
                by_topic.setdefault(names[topic_id].name, []).append(partition)
        states.append(
            R.TransactionState(
                error_code=errors.NONE,
                transactional_id=tid,
                transaction_state=record.state.value,
                transaction_timeout_ms=record.timeout_ms,
                transaction_start_time_ms=record.start_ms,
                producer_id=record.producer_id,
                producer_epoch=record.producer_epoch,
                topics=[R.TopicData(topic=n, partitions=ps) for n, ps in by_topic.items()],
            )
        )
    return R(transaction_states=states)


async def list_transactions(
    broker: KafkaBroker, header: RequestHeader, request: ListTransactionsRequest
) -> ListTransactionsResponse:
    """The transactional ids this agent coordinates (each agent lists its share, as each Kafka
    broker lists its share of __transaction_state), filtered by state, producer id and (v1)
    how long the transaction has been open."""
    R = ListTransactionsResponse
    known = {s.value for s in TxnState}
    unknown = [f for f in request.state_filters if f not in known]
    wanted = set(request.state_filters) & known
    producers = set(request.producer_id_filters)
    now = shell(broker).now_ms()
    listed: list[R.TransactionState] = []
    if not (request.state_filters and not wanted):
        for record in await shell(broker).coordinated():
            if wanted and record.state.value not in wanted:
                continue
            if producers and record.producer_id not in producers:
                continue
            if request.duration_filter >= 0 and (
                record.start_ms < 0 or now - record.start_ms < request.duration_filter
            ):
                continue
            listed.append(
                R.TransactionState(
                    transactional_id=record.transactional_id,
                    producer_id=record.producer_id,
                    transaction_state=record.state.value,
                )
            )
    return R(error_code=errors.NONE, unknown_state_filters=unknown, transaction_states=listed)


APIS: dict[int, tuple[str, int, int, Any]] = {
    24: ("AddPartitionsToTxn", 0, 3, add_partitions_to_txn),
    25: ("AddOffsetsToTxn", 0, 3, add_offsets_to_txn),
    26: ("EndTxn", 0, 3, end_txn),
    28: ("TxnOffsetCommit", 0, 3, txn_offset_commit),
    65: ("DescribeTransactions", 0, 0, describe_transactions),
    66: ("ListTransactions", 0, 1, list_transactions),
}
