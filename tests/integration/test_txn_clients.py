"""Kafka transactions with the real clients against a real StreamHouse: confluent-kafka
(librdkafka), kafka-python and aiokafka transactional producers commit (visible to
read_committed consumers) and abort (invisible to them, visible to read_uncommitted ones);
abort then retry; send_offsets_to_transaction in a consume-transform-produce loop (the group's
offsets appear only with the commit); a second producer with the same transactional.id fences
the first (whose open transaction is aborted); an abandoned transaction is aborted at its
timeout; kafka-python's admin client lists and describes transactions. Raw requests check the
coordinator's refusals (out of order, unknown producer, fencing errors by version, timeouts out
of range) and OffsetFetch's require_stable.

"Invisible" is checked without waiting for nothing to happen: every aborted record is written
to a partition before a committed one, so a consumer that has read the committed record has
passed the aborted one.

One stack serves the module (each test uses its own topics and transactional ids); the
coordinator sweeps for timed-out transactions every 200 ms here.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import kafka.errors as kafka_errors
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KpTopicPartition
from kafka.admin import KafkaAdminClient, TransactionState

from streamhouse.kafka.messages import (
    AddOffsetsToTxnRequest,
    AddPartitionsToTxnRequest,
    EndTxnRequest,
    FindCoordinatorRequest,
    InitProducerIdRequest,
    OffsetFetchRequest,
    TxnOffsetCommitRequest,
)
from streamhouse.testing import Stack, kafka_call

# Kafka error codes the protocol tests expect.
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_REQUEST = 42
INVALID_PRODUCER_EPOCH = 47
INVALID_TXN_STATE = 48
INVALID_PRODUCER_ID_MAPPING = 49
INVALID_TRANSACTION_TIMEOUT = 50
OPERATION_NOT_ATTEMPTED = 55
UNSTABLE_OFFSET_COMMIT = 88
PRODUCER_FENCED = 90

DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("txn-clients") / "data"
    env = {
        "STREAMHOUSE_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "STREAMHOUSE_TRANSACTION_CHECK_INTERVAL_MS": "200",
    }
    with Stack(data, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def bootstrap(stack: Stack) -> str:
    return stack.kafka_address


def new_topic(bootstrap: str, prefix: str, partitions: int = 2) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(DEADLINE_S)
    return name


def txn_producer(bootstrap: str, transactional_id: str, **extra: object) -> Producer:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": transactional_id, **extra}
    )
    producer.init_transactions(DEADLINE_S)
    return producer


def read_values(
    bootstrap: str,
    topic: str,
    partitions: int,
    until: set[bytes],
    isolation: str = "read_committed",
) -> list[bytes]:
    """Every value in the topic from the beginning, read until all of ``until`` were seen
    (fails after DEADLINE_S)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    seen: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not until <= set(seen):
            assert time.monotonic() < deadline, (
                f"{isolation} consumer saw {sorted(set(seen))[:10]}…, still missing "
                f"{sorted(until - set(seen))[:10]}"
            )
            for message in consumer.consume(num_messages=500, timeout=0.5):
                assert message.error() is None, message.error()
                seen.append(message.value())
    finally:
        consumer.close()
    return seen


def values(tag: str, n: int) -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(n)]


def produce_all(producer: Producer, topic: str, items: list[bytes], partitions: int = 2) -> None:
    for i, value in enumerate(items):
        producer.produce(topic, value, partition=i % partitions)
    producer.flush(DEADLINE_S)


# -- confluent-kafka ---------------------------------------------------------------------------


def test_commit_is_visible_and_abort_is_not(bootstrap: str) -> None:
    topic = new_topic(bootstrap, "txn-basic")
    producer = txn_producer(bootstrap, f"basic-{topic}")
    aborted, committed = values("aborted", 20), values("committed", 20)
    producer.begin_transaction()
    produce_all(producer, topic, aborted)
    producer.abort_transaction(DEADLINE_S)
    producer.begin_transaction()
    produce_all(producer, topic, committed)
    producer.commit_transaction(DEADLINE_S)
    seen = read_values(bootstrap, topic, 2, set(committed))
    assert sorted(seen) == sorted(committed)  # each committed record once, no aborted one
    everything = read_values(bootstrap, topic, 2, set(aborted + committed), "read_uncommitted")
    assert sorted(everything) == sorted(aborted + committed)


def test_abort_then_retry_commits_once(bootstrap: str) -> None:
    topic = new_topic(bootstrap, "txn-retry")
    producer = txn_producer(bootstrap, f"retry-{topic}")
    batch = values("batch", 10)
    for attempt in range(3):
        producer.begin_transaction()
        produce_all(producer, topic, batch)
        if attempt < 2:
            producer.abort_transaction(DEADLINE_S)
    producer.commit_transaction(DEADLINE_S)
    marker = values("after", 2)
    producer.begin_transaction()
    produce_all(producer, topic, marker)
    producer.commit_transaction(DEADLINE_S)
    seen = read_values(bootstrap, topic, 2, set(batch + marker))
    assert sorted(seen) == sorted(batch + marker)


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offsets as an admin client reads them (-1001: none)."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, p) for p in range(partitions)]
    )
    result = admin.list_consumer_group_offsets([request])[group].result(DEADLINE_S)
    return [tp.offset for tp in sorted(result.topic_partitions, key=lambda tp: tp.partition)]


def test_consume_transform_produce_commits_offsets_with_the_output(bootstrap: str) -> None:
    source = new_topic(bootstrap, "ctp-in", partitions=1)
    sink = new_topic(bootstrap, "ctp-out", partitions=1)
    group = f"ctp-{source}"
    plain = Producer({"bootstrap.servers": bootstrap})
    inputs = values("in", 30)
    for value in inputs:
        plain.produce(source, value, partition=0)
    plain.flush(DEADLINE_S)

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([source])
    producer = txn_producer(bootstrap, f"ctp-{source}")
    try:
        done = 0
        deadline = time.monotonic() + DEADLINE_S
        while done < len(inputs):
            assert time.monotonic() < deadline, f"only {done} of {len(inputs)} transformed"
            messages = consumer.consume(num_messages=10, timeout=0.5)
            if not messages:
                continue
            producer.begin_transaction()
            for message in messages:
                assert message.error() is None, message.error()
                producer.produce(sink, message.value().upper(), partition=0)
            producer.send_offsets_to_transaction(
                consumer.position(consumer.assignment()),
                consumer.consumer_group_metadata(),
                DEADLINE_S,
            )
            producer.flush(DEADLINE_S)
            if done == 0:
                # Sent but not committed: the group has no offset yet.
                assert committed_offsets(bootstrap, group, source, 1) == [-1001]
            producer.commit_transaction(DEADLINE_S)
            done += len(messages)
            assert committed_offsets(bootstrap, group, source, 1) == [done]
    finally:
        consumer.close()
    out = read_values(bootstrap, sink, 1, {v.upper() for v in inputs})
    assert sorted(out) == sorted(v.upper() for v in inputs)


def test_consume_transform_produce_abort_keeps_the_old_offsets(bootstrap: str) -> None:
    source = new_topic(bootstrap, "ctp-abort-in", partitions=1)
    sink = new_topic(bootstrap, "ctp-abort-out", partitions=1)
    group = f"ctp-abort-{source}"
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    producer = txn_producer(bootstrap, f"ctp-abort-{source}")
    try:
        metadata = consumer.consumer_group_metadata()
        producer.begin_transaction()
        producer.produce(sink, b"dropped", partition=0)
        producer.send_offsets_to_transaction([TopicPartition(source, 0, 5)], metadata, DEADLINE_S)
        # Pending: OffsetFetch asking for stable offsets (v7, v8) is told to retry; one that
        # does not ask sees the group's committed offset (none yet).
        assert stable_offset(bootstrap, group, source, 7) == (-1, UNSTABLE_OFFSET_COMMIT)
        assert stable_offset(bootstrap, group, source, 8) == (-1, UNSTABLE_OFFSET_COMMIT)
        assert stable_offset(bootstrap, group, source, 8, require=False) == (-1, 0)
        producer.abort_transaction(DEADLINE_S)
        assert stable_offset(bootstrap, group, source, 8) == (-1, 0)
        assert committed_offsets(bootstrap, group, source, 1) == [-1001]
        producer.begin_transaction()
        producer.produce(sink, b"kept", partition=0)
        producer.send_offsets_to_transaction([TopicPartition(source, 0, 7)], metadata, DEADLINE_S)
        producer.commit_transaction(DEADLINE_S)
        assert committed_offsets(bootstrap, group, source, 1) == [7]
        assert stable_offset(bootstrap, group, source, 7) == (7, 0)
    finally:
        consumer.close()
    assert read_values(bootstrap, sink, 1, {b"kept"}) == [b"kept"]


def stable_offset(
    bootstrap: str, group: str, topic: str, version: int, require: bool = True
) -> tuple[int, int]:
    """(offset, error) of partition 0 from a raw OffsetFetch with require_stable."""
    if version >= 8:
        request = OffsetFetchRequest(
            groups=[
                OffsetFetchRequest.OffsetFetchRequestGroup(
                    group_id=group,
                    topics=[
                        OffsetFetchRequest.OffsetFetchRequestTopics(
                            name=topic, partition_indexes=[0]
                        )
                    ],
                )
            ],
            require_stable=require,
        )
        (answer,) = kafka_call(bootstrap, 9, version, request).groups
        assert answer.error_code == 0, answer
    else:
        request = OffsetFetchRequest(
            group_id=group,
            topics=[OffsetFetchRequest.OffsetFetchRequestTopic(name=topic, partition_indexes=[0])],
            require_stable=require,
        )
        answer = kafka_call(bootstrap, 9, version, request)
    ((partition,),) = [t.partitions for t in answer.topics]
    return partition.committed_offset, partition.error_code


def fenced(exc: KafkaException) -> bool:
    error = exc.args[0]
    return error.code() in (
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
    ) or bool(error.fatal())


def test_second_producer_fences_the_first(bootstrap: str) -> None:
    topic = new_topic(bootstrap, "txn-zombie")
    tid = f"zombie-{topic}"
    zombie = txn_producer(bootstrap, tid)
    zombie.begin_transaction()
    produce_all(zombie, topic, values("zombie", 10))
    successor = txn_producer(bootstrap, tid)  # fences the zombie, aborting its transaction
    with pytest.raises(KafkaException) as raised:
        zombie.commit_transaction(DEADLINE_S)
    assert fenced(raised.value), raised.value
    successor.begin_transaction()
    produce_all(successor, topic, values("successor", 10))
    successor.commit_transaction(DEADLINE_S)
    seen = read_values(bootstrap, topic, 2, set(values("successor", 10)))
    assert sorted(seen) == sorted(values("successor", 10))


def test_abandoned_transaction_is_aborted_at_its_timeout(bootstrap: str) -> None:
    topic = new_topic(bootstrap, "txn-timeout", partitions=1)
    abandoned = txn_producer(
        bootstrap,
        f"abandoned-{topic}",
        **{"transaction.timeout.ms": 2000, "message.timeout.ms": 2000},
    )
    abandoned.begin_transaction()
    produce_all(abandoned, topic, values("lost", 5), partitions=1)
    # Another producer commits after it in the same partition: read_committed consumers see
    # that only once the abandoned transaction is over (aborted by its timeout).
    other = txn_producer(bootstrap, f"other-{topic}")
    other.begin_transaction()
    produce_all(other, topic, values("later", 5), partitions=1)
    other.commit_transaction(DEADLINE_S)
    seen = read_values(bootstrap, topic, 1, set(values("later", 5)))
    assert sorted(seen) == sorted(values("later", 5))
    with pytest.raises(KafkaException) as raised:
        abandoned.commit_transaction(DEADLINE_S)
    assert fenced(raised.value), raised.value


# -- kafka-python ------------------------------------------------------------------------------


def kp_read_committed(bootstrap: str, topic: str, until: set[bytes]) -> list[bytes]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    consumer.assign([KpTopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    seen: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not until <= set(seen):
            assert time.monotonic() < deadline, f"kafka-python saw {seen}, wanted {until}"
            for records in consumer.poll(timeout_ms=500).values():
                seen.extend(r.value for r in records)
    finally:
        consumer.close()
    return seen


def test_kafka_python_commit_and_abort(bootstrap: str) -> None:
    topic = new_topic(bootstrap, "kp-txn", partitions=1)
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"kp-{topic}")
    try:
        producer.init_transactions()
        producer.begin_transaction()
        for value in values("kp-aborted", 5):
            producer.send(topic, value, partition=0)
        producer.abort_transaction()
        producer.begin_transaction()
        for value in values("kp-committed", 5):
            producer.send(topic, value, partition=0)
        producer.commit_transaction()
    finally:
        producer.close()
    seen = kp_read_committed(bootstrap, topic, set(values("kp-committed", 5)))
    assert seen == values("kp-committed", 5)


# -- aiokafka ----------------------------------------------------------------------------------


async def _aiokafka_commit_and_abort(bootstrap: str, topic: str) -> list[bytes]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"aio-{topic}")
    await producer.start()
    try:

        class Abort(Exception):
            pass

        with pytest.raises(Abort):
            async with producer.transaction():
                for value in values("aio-aborted", 5):
                    await producer.send_and_wait(topic, value, partition=0)
                raise Abort  # leaving the block with an exception aborts
        async with producer.transaction():
            for value in values("aio-committed", 5):
                await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: list[bytes] = []
    want = set(values("aio-committed", 5))
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not want <= set(seen):
            assert time.monotonic() < deadline, f"aiokafka saw {seen}"
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                seen.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return seen


def test_aiokafka_commit_and_abort(bootstrap: str) -> None:
    topic = new_topic(bootstrap, "aio-txn", partitions=1)
    seen = asyncio.run(_aiokafka_commit_and_abort(bootstrap, topic))
    assert seen == values("aio-committed", 5)


# -- the protocol's edges, raw ------------------------------------------------------------------


def init_raw(
    bootstrap: str, tid: str, timeout_ms: int = 60_000, version: int = 4
) -> tuple[int, int, int]:
    answer = kafka_call(
        bootstrap,
        22,
        version,
        InitProducerIdRequest(transactional_id=tid, transaction_timeout_ms=timeout_ms),
    )
    return answer.error_code, answer.producer_id, answer.producer_epoch


def end_raw(bootstrap: str, tid: str, pid: int, epoch: int, commit: bool, version: int = 3) -> int:
    request = EndTxnRequest(
        transactional_id=tid, producer_id=pid, producer_epoch=epoch, committed=commit
    )
    return kafka_call(bootstrap, 26, version, request).error_code


def add_raw(
    bootstrap: str, tid: str, pid: int, epoch: int, topics: dict[str, list[int]]
) -> dict[tuple[str, int], int]:
    request = AddPartitionsToTxnRequest(
        v3_and_below_transactional_id=tid,
        v3_and_below_producer_id=pid,
        v3_and_below_producer_epoch=epoch,
        v3_and_below_topics=[
            AddPartitionsToTxnRequest.AddPartitionsToTxnTopic(name=n, partitions=ps)
            for n, ps in topics.items()
        ],
    )
    answer = kafka_call(bootstrap, 24, 3, request)
    return {
        (t.name, r.partition_index): r.partition_error_code
        for t in answer.results_by_topic_v3_and_below
        for r in t.results_by_partition
    }


def test_find_coordinator_names_the_transaction_coordinator(stack: Stack) -> None:
    v3 = kafka_call(stack.kafka_address, 10, 3, FindCoordinatorRequest(key="t1", key_type=1))
    assert (v3.error_code, v3.port) == (0, stack.kafka_port)
    v4 = kafka_call(
        stack.kafka_address, 10, 4, FindCoordinatorRequest(key_type=1, coordinator_keys=["a", ""])
    )
    assert [(c.error_code, c.port) for c in v4.coordinators] == [
        (0, stack.kafka_port),
        (INVALID_REQUEST, -1),
    ]


def test_init_refuses_a_timeout_beyond_the_maximum(bootstrap: str) -> None:
    assert init_raw(bootstrap, "too-long", 900_001)[0] == INVALID_TRANSACTION_TIMEOUT
    assert init_raw(bootstrap, "too-short", 0)[0] == INVALID_TRANSACTION_TIMEOUT
    error, pid, epoch = init_raw(bootstrap, "in-range", 900_000)
    assert error == 0 and pid >= 0 and epoch == 0
    assert init_raw(bootstrap, "in-range")[1:] == (pid, 1)  # same producer id, epoch bumped


def test_requests_out_of_order_or_from_strangers_are_refused(bootstrap: str) -> None:
    topic = new_topic(bootstrap, "txn-raw", partitions=2)
    tid = f"raw-{topic}"
    # Never initialised: the coordinator does not know the producer.
    assert end_raw(bootstrap, tid, 1234, 0, True) == INVALID_PRODUCER_ID_MAPPING
    error, pid, epoch = init_raw(bootstrap, tid)
    assert error == 0
    # Nothing open: EndTxn is out of order.
    assert end_raw(bootstrap, tid, pid, epoch, True) == INVALID_TXN_STATE
    assert end_raw(bootstrap, tid, pid + 1, epoch, True) == INVALID_PRODUCER_ID_MAPPING
    # An unknown partition: nothing is added, the rest is not attempted.
    assert add_raw(bootstrap, tid, pid, epoch, {topic: [0, 5], "no-such-topic": [0]}) == {
        (topic, 0): OPERATION_NOT_ATTEMPTED,
        (topic, 5): UNKNOWN_TOPIC_OR_PARTITION,
        ("no-such-topic", 0): UNKNOWN_TOPIC_OR_PARTITION,
    }
    assert add_raw(bootstrap, tid, pid, epoch, {topic: [0, 1]}) == {(topic, 0): 0, (topic, 1): 0}
    # Offsets of a group the transaction did not add: out of order.
    offsets = TxnOffsetCommitRequest(
        transactional_id=tid,
        group_id="raw-group",
        producer_id=pid,
        producer_epoch=epoch,
        topics=[
            TxnOffsetCommitRequest.TxnOffsetCommitRequestTopic(
                name=topic,
                partitions=[
                    TxnOffsetCommitRequest.TxnOffsetCommitRequestPartition(
                        partition_index=0, committed_offset=3
                    )
                ],
            )
        ],
    )
    (t,) = kafka_call(bootstrap, 28, 3, offsets).topics
    assert [p.error_code for p in t.partitions] == [INVALID_TXN_STATE]
    add_offsets = AddOffsetsToTxnRequest(
        transactional_id=tid, producer_id=pid, producer_epoch=epoch, group_id="raw-group"
    )
    assert kafka_call(bootstrap, 25, 3, add_offsets).error_code == 0
    (t,) = kafka_call(bootstrap, 28, 3, offsets).topics
    assert [p.error_code for p in t.partitions] == [0]
    # Commit then a contradicting abort; a repeated commit is a retry.
    assert end_raw(bootstrap, tid, pid, epoch, True) == 0
    assert end_raw(bootstrap, tid, pid, epoch, False) == INVALID_TXN_STATE
    assert end_raw(bootstrap, tid, pid, epoch, True) == 0
    assert stable_offset(bootstrap, "raw-group", topic, 8) == (3, 0)


def test_old_epochs_get_the_fencing_error_of_their_version(bootstrap: str) -> None:
    tid = f"fence-{uuid.uuid4().hex[:6]}"
    _, pid, old = init_raw(bootstrap, tid)
    _, pid2, new = init_raw(bootstrap, tid)
    assert (pid2, new) == (pid, old + 1)
    assert end_raw(bootstrap, tid, pid, old, True, version=1) == INVALID_PRODUCER_EPOCH
    assert end_raw(bootstrap, tid, pid, old, True, version=2) == PRODUCER_FENCED
    request = InitProducerIdRequest(
        transactional_id=tid, transaction_timeout_ms=60_000, producer_id=pid, producer_epoch=old
    )
    assert kafka_call(bootstrap, 22, 3, request).error_code == INVALID_PRODUCER_EPOCH
    assert kafka_call(bootstrap, 22, 4, request).error_code == PRODUCER_FENCED


def test_kafka_python_admin_lists_and_describes_transactions(bootstrap: str) -> None:
    topic = new_topic(bootstrap, "txn-admin")
    tid = f"admin-{topic}"
    producer = txn_producer(bootstrap, tid)
    producer.begin_transaction()
    produce_all(producer, topic, values("open", 4))
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_transactions([tid])[tid]
        assert described.state is TransactionState.ONGOING
        assert described.topic_partitions == {
            KpTopicPartition(topic, 0),
            KpTopicPartition(topic, 1),
        }
        assert described.transaction_start_time_ms > 0
        ongoing = admin.list_transactions(state_filters=["Ongoing"])
        listed = {t.transactional_id: t for ts in ongoing.values() for t in ts}
        assert listed[tid].producer_id == described.producer_id
        producer.commit_transaction(DEADLINE_S)
        after = admin.describe_transactions([tid])[tid]
        assert after.state is TransactionState.COMPLETE_COMMIT and not after.topic_partitions
        assert (after.producer_id, after.producer_epoch) == (
            described.producer_id,
            described.producer_epoch,
        )
        still = admin.list_transactions(state_filters=["Ongoing"])
        assert tid not in {t.transactional_id for ts in still.values() for t in ts}
        with pytest.raises(kafka_errors.TransactionalIdNotFoundError):
            admin.describe_transactions([f"never-{topic}"])
    finally:
        admin.close()
