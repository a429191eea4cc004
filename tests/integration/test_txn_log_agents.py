"""Transactions in the log on a cluster (two agents, PostgreSQL metadata, SeaweedFS): a
read_committed consumer waiting at an open transaction is woken by the marker's commit, made
by whichever agent coordinates the transaction, and never sees aborted records; a
read_uncommitted consumer sees every data record."""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamhouse.testing import Cluster

DEADLINE_S = 60.0
TOPIC = "txn-agents"


def reader(cluster: Cluster, isolation: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": cluster.kafka_bootstrap,
            "group.id": f"agents-{isolation}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    consumer.assign([TopicPartition(TOPIC, 0, OFFSET_BEGINNING)])
    return consumer


def take(consumer: Consumer, want: int, seconds: float) -> list[bytes]:
    """Values consumed until ``want`` arrived or ``seconds`` passed."""
    values: list[bytes] = []
    deadline = time.monotonic() + seconds
    while len(values) < want and time.monotonic() < deadline:
        for message in consumer.consume(num_messages=100, timeout=0.5):
            assert message.error() is None, message.error()
            values.append(message.value())
    return values


def test_read_committed_across_agents_waits_for_the_marker(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(2)
    admin = AdminClient({"bootstrap.servers": cluster.kafka_bootstrap})
    for future in admin.create_topics([NewTopic(TOPIC, 1, 1)]).values():
        future.result(DEADLINE_S)
    producer = Producer(
        {"bootstrap.servers": cluster.kafka_bootstrap, "transactional.id": "agents-1"}
    )
    producer.init_transactions(DEADLINE_S)
    committed = reader(cluster, "read_committed")
    uncommitted = reader(cluster, "read_uncommitted")
    try:
        producer.begin_transaction()
        producer.produce(TOPIC, b"aborted", partition=0)
        producer.flush(DEADLINE_S)
        producer.abort_transaction(DEADLINE_S)
        producer.begin_transaction()
        producer.produce(TOPIC, b"kept", partition=0)
        producer.flush(DEADLINE_S)
        assert take(uncommitted, 2, DEADLINE_S) == [b"aborted", b"kept"]
        # stable up to the open transaction: the aborted one is skipped, "kept" waits
        assert take(committed, 1, 3) == []
        producer.commit_transaction(DEADLINE_S)
        assert take(committed, 1, DEADLINE_S) == [b"kept"]
    finally:
        committed.close()
        uncommitted.close()
