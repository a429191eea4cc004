"""Produce verifies transactional batches against the transaction coordinator's state
(ingest/kafka/txn_verify.py): a raw Produce with the transactional bit set but no
transactional id, an unknown producer id, a stale epoch or a partition never added to the
transaction is refused, and read_committed's last stable offset stays at the high watermark
(no transaction is left hanging). A properly begun transaction is accepted and, once committed,
read_committed reaches it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from streamhouse.kafka.messages import (
    AddPartitionsToTxnRequest,
    CreateTopicsRequest,
    EndTxnRequest,
    InitProducerIdRequest,
    ListOffsetsRequest,
    ProduceRequest,
)
from streamhouse.recordbatch import TRANSACTIONAL_MASK, encode_batch
from streamhouse.testing import Stack, kafka_call, wait_until

NONE = 0
INVALID_PRODUCER_EPOCH = 47
INVALID_TXN_STATE = 48
INVALID_PRODUCER_ID_MAPPING = 49
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53

P = ProduceRequest
L = ListOffsetsRequest


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("secfix-txn") / "data"
    with Stack(data) as running:
        yield running.kafka_address


def new_topic(bootstrap: str) -> str:
    name = f"secfix-{uuid.uuid4().hex[:8]}"
    C = CreateTopicsRequest
    answer = kafka_call(
        bootstrap,
        19,
        5,
        C(
            topics=[C.CreatableTopic(name=name, num_partitions=1, replication_factor=1)],
            timeout_ms=10_000,
        ),
    )
    assert [t.error_code for t in answer.topics] == [NONE]
    return name


def produce(
    bootstrap: str,
    topic: str,
    value: bytes,
    *,
    transactional_id: str | None = None,
    attributes: int = 0,
    pid: int = -1,
    epoch: int = -1,
    seq: int = -1,
) -> tuple[int, int]:
    batch = encode_batch(
        [None],
        [value],
        [[]],
        [int(time.time() * 1000)],
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=seq,
        attributes=attributes,
    )
    request = P(
        transactional_id=transactional_id,
        acks=-1,
        timeout_ms=10_000,
        topic_data=[
            P.TopicProduceData(
                name=topic, partition_data=[P.PartitionProduceData(index=0, records=batch)]
            )
        ],
    )
    answer = kafka_call(bootstrap, 0, 9, request)
    ((part,),) = [t.partition_responses for t in answer.responses]
    return part.error_code, part.base_offset


def latest(bootstrap: str, topic: str, isolation: int) -> int:
    request = L(
        replica_id=-1,
        isolation_level=isolation,
        topics=[
            L.ListOffsetsTopic(
                name=topic, partitions=[L.ListOffsetsPartition(partition_index=0, timestamp=-1)]
            )
        ],
    )
    ((part,),) = [t.partitions for t in kafka_call(bootstrap, 2, 5, request).topics]
    assert part.error_code == NONE
    return part.offset


def init(bootstrap: str, tid: str) -> tuple[int, int]:
    answer = kafka_call(
        bootstrap, 22, 4, InitProducerIdRequest(transactional_id=tid, transaction_timeout_ms=60_000)
    )
    assert answer.error_code == NONE
    return answer.producer_id, answer.producer_epoch


def add_partition(bootstrap: str, tid: str, pid: int, epoch: int, topic: str) -> int:
    A = AddPartitionsToTxnRequest
    request = A(
        v3_and_below_transactional_id=tid,
        v3_and_below_producer_id=pid,
        v3_and_below_producer_epoch=epoch,
        v3_and_below_topics=[A.AddPartitionsToTxnTopic(name=topic, partitions=[0])],
    )
    answer = kafka_call(bootstrap, 24, 3, request)
    ((result,),) = [t.results_by_partition for t in answer.results_by_topic_v3_and_below]
    return result.partition_error_code


def test_transactional_batch_without_transactional_id_is_refused(bootstrap: str) -> None:
    topic = new_topic(bootstrap)
    assert produce(bootstrap, topic, b"a") == (NONE, 0)
    refused = produce(
        bootstrap, topic, b"b", attributes=TRANSACTIONAL_MASK, pid=424242, epoch=0, seq=0
    )
    assert refused == (TRANSACTIONAL_ID_AUTHORIZATION_FAILED, -1)
    assert produce(bootstrap, topic, b"c") == (NONE, 1)
    # Nothing hangs: read_committed's last stable offset is the high watermark.
    assert latest(bootstrap, topic, 0) == 2
    assert latest(bootstrap, topic, 1) == 2


def test_transactional_batch_must_match_the_coordinator(bootstrap: str) -> None:
    topic = new_topic(bootstrap)
    tid = f"secfix-{uuid.uuid4().hex[:8]}"

    def txn_produce(value: bytes, pid: int, epoch: int, seq: int, name: str = tid) -> int:
        return produce(
            bootstrap,
            topic,
            value,
            transactional_id=name,
            attributes=TRANSACTIONAL_MASK,
            pid=pid,
            epoch=epoch,
            seq=seq,
        )[0]

    assert txn_produce(b"x", 424242, 0, 0, name=f"unknown-{tid}") == INVALID_PRODUCER_ID_MAPPING
    pid, epoch = init(bootstrap, tid)
    assert txn_produce(b"x", pid + 1000, epoch, 0) == INVALID_PRODUCER_ID_MAPPING
    assert txn_produce(b"x", pid, epoch + 1, 0) == INVALID_PRODUCER_EPOCH
    assert txn_produce(b"x", pid, epoch, 0) == INVALID_TXN_STATE  # partition not added
    assert latest(bootstrap, topic, 0) == 0
    assert latest(bootstrap, topic, 1) == 0

    assert add_partition(bootstrap, tid, pid, epoch, topic) == NONE
    assert txn_produce(b"x", pid, epoch, 0) == NONE
    assert latest(bootstrap, topic, 0) == 1
    assert latest(bootstrap, topic, 1) == 0  # open transaction
    end = EndTxnRequest(transactional_id=tid, producer_id=pid, producer_epoch=epoch, committed=True)
    assert kafka_call(bootstrap, 26, 3, end).error_code == NONE
    # The commit marker takes offset 1; read_committed reaches the end.
    wait_until(lambda: latest(bootstrap, topic, 1) == 2, 30, "read_committed to pass the commit")
    # After the commit the partition is no longer in a transaction.
    assert txn_produce(b"y", pid, epoch, 1) == INVALID_TXN_STATE
