"""Expiry of idle state against a real stack: Kafka groups run by the real coordinator (so the
group snapshots are the ones ingest saves), an idempotent librdkafka producer, and
``lifecycle.expiry.expire_idle_state`` run from the test process on the stack's metadata at a
moved clock (the lifecycle pass calls the same function as its last step). Past
``offsets.retention.minutes`` and ``producer.id.expiration.ms``: the offsets of a group that
emptied and of offsets committed without membership go, a group with a live member keeps its
offsets (and commits on), and idle idempotent-producer state goes."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from lifecycle.expiry import ExpiryReport, expire_idle_state
from metadata.async_store import AsyncMetadata
from streamhouse.client import Client
from streamhouse.testing import Stack

DEADLINE_S = 30.0
MINUTE_MS = 60_000
QUIET = {
    "STREAMHOUSE_LIFECYCLE_ENABLED": "false",
    "STREAMHOUSE_LIFECYCLE_COMPACTION_ENABLED": "false",
    "STREAMHOUSE_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",  # groups join at once
}
OFFSET_INVALID = -1001  # confluent-kafka: no committed offset


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def stack(tmp_path: pathlib.Path) -> Iterator[Stack]:
    with Stack(tmp_path / "data", env=QUIET) as running:
        yield running


def expire(stack: Stack, at_ms: int) -> ExpiryReport:
    async def run() -> ExpiryReport:
        meta = await AsyncMetadata.open(stack.settings.metadata_target, forbid_loop_calls=True)
        try:
            return await expire_idle_state(meta, stack.settings, at_ms)
        finally:
            await meta.close()

    return asyncio.run(run())


def group_consumer(bootstrap: str, group: str, topic: str, records: int) -> Consumer:
    """A subscribed group member that has read and committed `records` records."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 45_000,
        }
    )
    consumer.subscribe([topic])
    seen = 0
    deadline = time.monotonic() + DEADLINE_S
    while seen < records:
        assert time.monotonic() < deadline, f"{group} read {seen} of {records}"
        for message in consumer.consume(num_messages=records - seen, timeout=1):
            if message.error() is not None:
                raise KafkaException(message.error())
            seen += 1
    consumer.commit(asynchronous=False)
    return consumer


def committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        [part] = consumer.committed([TopicPartition(topic, 0)], timeout=DEADLINE_S)
        return part.offset
    finally:
        consumer.close()


def test_a_pass_expires_idle_producers_and_empty_groups_offsets(stack: Stack) -> None:
    bootstrap = stack.kafka_address
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic("read", 1)]).values():
        future.result(DEADLINE_S)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(10):
        producer.produce("read", value=f"v{i}".encode(), partition=0)
    assert producer.flush(DEADLINE_S) == 0
    producer.close()

    group_consumer(bootstrap, "gone", "read", 10).close()  # left: the group is Empty
    alive = group_consumer(bootstrap, "alive", "read", 10)
    try:
        with Client(stack.grpc_address) as client:
            client.commit_offset("manual", "read", 0, 4)  # no membership at all
            assert client.get_offset("manual", "read", 0)[0] == 4
        assert committed(bootstrap, "gone", "read") == 10

        # At the real clock nothing is idle.
        report = expire(stack, now_ms())
        assert (report.producer_states_expired, report.groups_checked) == (0, 0), report

        settings = stack.settings
        later = now_ms() + settings.offsets_retention_minutes * MINUTE_MS + MINUTE_MS
        assert later - now_ms() > settings.producer_id_expiration_ms
        report = expire(stack, later)
        assert report.producer_states_expired == 1, report
        assert (report.groups_checked, report.groups_expired) == (3, 2), report
        assert report.group_offsets_expired == 2, report
        assert report.groups_kept_with_members == 1, report

        assert committed(bootstrap, "gone", "read") == OFFSET_INVALID
        assert committed(bootstrap, "alive", "read") == 10
        with Client(stack.grpc_address) as client:
            assert client.get_offset("manual", "read", 0)[0] == -1
        # The member still in the group is unaffected: it goes on committing.
        alive.commit(offsets=[TopicPartition("read", 0, 7)], asynchronous=False)
        assert committed(bootstrap, "alive", "read") == 7
    finally:
        alive.close()
