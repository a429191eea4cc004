"""Produce's topic cache (ingest/kafka/produce_topics.py) on a real stack: with produces
keeping the cache warm, a topic deleted, recreated with fewer partitions, repartitioned and
reconfigured through the agent's admin API is seen by the very next Produce request (raw
requests, so no client retry hides a stale answer)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from ingest.kafka import errors
from streamhouse.kafka.messages import ProduceRequest, ProduceResponse
from streamhouse.kafka_connection import BlockingKafkaConnection
from streamhouse.recordbatch import encode_batch
from streamhouse.testing import Stack, admin_result

P = ProduceRequest
PRODUCE = 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("ingestcpu") / "data"
    with Stack(data, env={"STREAMHOUSE_KAFKA_AUTO_CREATE_TOPICS": "false"}) as running:
        yield running


def produce(
    conn: BlockingKafkaConnection, topic: str, partition: int, count: int = 3
) -> ProduceResponse.PartitionProduceResponse:
    now = int(time.time() * 1000)
    batch = encode_batch(
        [None] * count, [b"v%d" % i for i in range(count)], [[]] * count, [now] * count
    )
    request = P(
        acks=-1,
        timeout_ms=20_000,
        topic_data=[
            P.TopicProduceData(
                name=topic, partition_data=[P.PartitionProduceData(index=partition, records=batch)]
            )
        ],
    )
    response: ProduceResponse = conn.call(PRODUCE, 9, request)
    return response.responses[0].partition_responses[0]


def test_topic_changes_through_the_agent_reach_the_next_produce(stack: Stack) -> None:
    bootstrap = f"127.0.0.1:{stack.kafka_port}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = "ingestcpu-recreated"
    assert admin_result(admin.create_topics([NewTopic(topic, 2, 1)])) is None

    # Load: another connection produces to both partitions until told to stop.
    stop = threading.Event()
    load_codes: list[int] = []

    def load() -> None:
        with BlockingKafkaConnection(bootstrap) as conn:
            while not stop.is_set():
                for partition in (0, 1):
                    load_codes.append(produce(conn, topic, partition).error_code)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        with BlockingKafkaConnection(bootstrap) as conn:
            for _ in range(5):  # the cache is warm: these are answered from it
                assert produce(conn, topic, 1).error_code == errors.NONE
            assert errors.NONE in load_codes

            assert admin_result(admin.delete_topics([topic])) is None
            gone = produce(conn, topic, 0)
            assert gone.error_code == errors.UNKNOWN_TOPIC_OR_PARTITION
            assert gone.base_offset == -1

            assert admin_result(admin.create_topics([NewTopic(topic, 1, 1)])) is None
            assert produce(conn, topic, 1).error_code == errors.UNKNOWN_TOPIC_OR_PARTITION
            stop.set()
            loader.join(30)
            assert not loader.is_alive()
            # The load's produces to partition 0 of the new topic were acknowledged too.
            fresh = produce(conn, topic, 0)
            assert fresh.error_code == errors.NONE
            acknowledged_after = fresh.base_offset

            result = admin.create_partitions([NewPartitions(topic, 2)])
            assert admin_result(result) is None
            added = produce(conn, topic, 1)
            assert (added.error_code, added.base_offset) == (errors.NONE, 0)

            entry = ConfigEntry(
                "message.timestamp.type",
                "LogAppendTime",
                incremental_operation=AlterConfigOpType.SET,
            )
            resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
            assert admin_result(admin.incremental_alter_configs([resource])) is None
            stamped = produce(conn, topic, 0)
            assert stamped.error_code == errors.NONE
            assert stamped.log_append_time_ms > 0
            assert stamped.base_offset == acknowledged_after + 3
    finally:
        stop.set()
        loader.join(30)
