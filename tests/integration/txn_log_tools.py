"""Helpers of the transactions-in-the-log integration tests (test_txn_log_*.py): topics,
hand-built transactional produces, markers written through a stack's pipeline, ListOffsets by
isolation level and confluent-kafka reads at an isolation level."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from ingest.kafka import txn_shell
from ingest.kafka.txn_coordinator import TxnRecord, TxnState
from ingest.pipeline import Pipeline
from ingest.txn_markers import write_txn_markers
from metadata import MetadataStore
from streamhouse.errors import ErrorCode
from streamhouse.kafka.messages import ListOffsetsRequest, ProduceRequest
from streamhouse.recordbatch import TRANSACTIONAL_MASK, encode_batch
from streamhouse.testing import Stack, kafka_call, wait_until

DEADLINE_S = 30.0


def create_topic(stack: Stack, name: str, partitions: int = 1) -> int:
    admin = AdminClient({"bootstrap.servers": stack.kafka_address})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(DEADLINE_S)
    with MetadataStore(stack.settings.metadata_path) as meta:
        topic = meta.get_topic(name)
    assert topic is not None
    return topic.topic_id


def begin_txn(stack: Stack, transactional_id: str, pid: int, topic: str, partition: int) -> None:
    """Stores the coordinator's record of ``transactional_id`` as producer ``pid`` (epoch 0)
    with an Ongoing transaction that includes the partition (what InitProducerId and
    AddPartitionsToTxn would leave), so that Produce admits its transactional batches; the
    timeout is long enough that the coordinator's sweeper never aborts it during a test."""
    now = int(time.time() * 1000)
    with MetadataStore(stack.settings.metadata_path) as meta:
        info = meta.get_topic(topic)
        assert info is not None
        name = txn_shell.catalog_name(transactional_id)
        blob = meta.get_catalog_entry(txn_shell.CATALOG_KIND, name)
        partitions = set(txn_shell.decode(blob).partitions) if blob is not None else set()
        partitions.add((info.topic_id, partition))
        record = TxnRecord(
            transactional_id=transactional_id,
            producer_id=pid,
            producer_epoch=0,
            state=TxnState.ONGOING,
            timeout_ms=24 * 3600 * 1000,
            start_ms=now,
            updated_ms=now,
            partitions=tuple(sorted(partitions)),
        )
        meta.put_catalog_entry(
            txn_shell.CATALOG_KIND, name, txn_shell.encode(record), now, replace=True
        )


def produce_txn(
    stack: Stack, topic: str, partition: int, values: Sequence[bytes], pid: int, seq: int
) -> int:
    """Produces one transactional batch of ``values`` as producer ``pid`` (epoch 0) over the
    Kafka protocol, as transactional id ``txn-<pid>`` (its coordinator record made first:
    ``begin_txn``); returns its base offset."""
    begin_txn(stack, f"txn-{pid}", pid, topic, partition)
    now = int(time.time() * 1000)
    batch = encode_batch(
        [None] * len(values),
        list(values),
        [[] for _ in values],
        [now] * len(values),
        producer_id=pid,
        producer_epoch=0,
        base_sequence=seq,
        attributes=TRANSACTIONAL_MASK,
    )
    P = ProduceRequest
    request = P(
        transactional_id=f"txn-{pid}",
        acks=-1,
        timeout_ms=10_000,
        topic_data=[
            P.TopicProduceData(
                name=topic, partition_data=[P.PartitionProduceData(index=partition, records=batch)]
            )
        ],
    )
    body = kafka_call(stack.kafka_address, 0, 7, request)
    (answer,) = body.responses[0].partition_responses
    assert answer.error_code == 0, answer.error_message
    return int(answer.base_offset)


def produce_plain(stack: Stack, topic: str, partition: int, values: Sequence[bytes]) -> None:
    producer = Producer({"bootstrap.servers": stack.kafka_address, "linger.ms": 0})
    failures: list[str] = []
    for value in values:
        producer.produce(
            topic,
            value,
            partition=partition,
            on_delivery=lambda err, _m: failures.append(str(err)) if err else None,
        )
    assert producer.flush(DEADLINE_S) == 0
    assert failures == []


def write_markers(
    stack: Stack, partitions: Sequence[tuple[int, int]], pid: int, commit: bool, epoch: int = 0
) -> list[ErrorCode | None]:
    """Writes markers through the stack's pipeline while its ingest is stopped (module doc)."""
    stack.supervisorctl("stop", "ingest")
    wait_until(lambda: stack.pid("ingest") == 0, DEADLINE_S, "ingest stopped")

    async def write() -> list[ErrorCode | None]:
        pipeline = Pipeline(stack.settings)
        pipeline.start()
        try:
            return await write_txn_markers(pipeline, partitions, pid, epoch, commit, 0, 10_000)
        finally:
            await pipeline.close()

    try:
        return asyncio.run(write())
    finally:
        stack.supervisorctl("start", "ingest")
        stack.wait_ready(DEADLINE_S)


def offsets(stack: Stack, topic: str, partition: int, isolation: int, timestamp: int = -1) -> int:
    """ListOffsets at ``isolation``: LATEST (-1, the default) is the high watermark at 0
    (read_uncommitted) and the last stable offset at 1 (read_committed); a timestamp gives
    the first offset at or after it (-1: none visible)."""
    L = ListOffsetsRequest
    request = L(
        replica_id=-1,
        isolation_level=isolation,
        topics=[
            L.ListOffsetsTopic(
                name=topic,
                partitions=[L.ListOffsetsPartition(partition_index=partition, timestamp=timestamp)],
            )
        ],
    )
    body = kafka_call(stack.kafka_address, 2, 5, request)
    (answer,) = body.topics[0].partitions
    assert answer.error_code == 0
    return int(answer.offset)


def consume(
    stack: Stack, topic: str, partition: int, isolation: str, until_offset: int
) -> tuple[list[bytes], int]:
    """Every record value a confluent-kafka consumer at ``isolation`` gets from the start of
    the partition until its position reaches ``until_offset``; and that position."""
    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_address,
            "group.id": f"txn-log-{isolation}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "enable.partition.eof": False,
        }
    )
    tp = TopicPartition(topic, partition, OFFSET_BEGINNING)
    consumer.assign([tp])
    values: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while True:
            position = consumer.position([TopicPartition(topic, partition)])[0].offset
            if position >= until_offset:
                return values, position
            assert time.monotonic() < deadline, f"stuck at {position} < {until_offset}: {values}"
            for message in consumer.consume(num_messages=100, timeout=0.5):
                assert message.error() is None, message.error()
                values.append(message.value())
    finally:
        consumer.close()
