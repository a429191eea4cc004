"""Issue 11's admin calls across two agents (one PostgreSQL metadata database, one objects
folder), through kafka-python's and confluent-kafka's admin clients, which send per-broker
calls to each broker: every agent answers DescribeLogDirs with its one log dir holding the
partitions it leads (so the union over brokers holds every partition once, with the sizes the
block rows add up to), each agent describes its own broker configs under its node id, and a
replica assignment may name either agent."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import psycopg
import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType
from kafka.admin import KafkaAdminClient

from streamhouse.testing import Cluster

DEADLINE_S = 30.0
QUIET = {"STREAMHOUSE_GROUP_INITIAL_REBALANCE_DELAY_MS": "0"}


@pytest.fixture
def cluster(tmp_path: pathlib.Path, postgres_dsn: str) -> Iterator[Cluster]:
    objects = tmp_path / "objects"
    objects.mkdir()
    with Cluster(tmp_path / "cluster", 2, postgres_dsn, objects.as_uri(), QUIET) as running:
        running.wait_brokers(2)
        yield running


def stored_bytes(dsn: str, topic: str) -> dict[int, int]:
    """Per partition, the byte_length of its block rows, straight from PostgreSQL."""
    with psycopg.connect(dsn) as db:
        rows = db.execute(
            "SELECT b.partition, SUM(b.byte_length) FROM segment_blocks b "
            "JOIN topics t ON t.topic_id = b.topic_id WHERE t.name = %s GROUP BY b.partition",
            (topic,),
        ).fetchall()
    return {int(p): int(n) for p, n in rows}


def test_log_dirs_broker_configs_and_assignments_across_agents(
    cluster: Cluster, postgres_dsn: str
) -> None:
    bootstrap = cluster.kafka_bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = "spread"
    admin.create_topics([NewTopic(topic, 8)])[topic].result(DEADLINE_S)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    failed: list[KafkaError] = []
    for p in range(8):
        for i in range(10):
            producer.produce(
                topic,
                value=f"{p}-{i}".encode() * 20,
                partition=p,
                on_delivery=lambda err, _m: failed.append(err) if err else None,
            )
    assert producer.flush(DEADLINE_S) == 0 and not failed
    reference = stored_bytes(postgres_dsn, topic)
    assert set(reference) == set(range(8))

    kp = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        answers = kp.describe_log_dirs({topic: list(range(8))})
        per_broker: dict[int, dict[int, int]] = {}
        for answer in answers:
            (log_dir,) = answer["log_dirs"]
            assert log_dir["log_dir"] == cluster.object_store_url
            per_broker[answer["broker"]] = {
                p["partition_index"]: p["partition_size"]
                for t in log_dir["topics"]
                if t["name"] == topic
                for p in t["partitions"]
            }
        assert sorted(per_broker) == [0, 1]
        # Each partition on exactly one agent (its leader), with its stored size.
        union = [p for sizes in per_broker.values() for p in sizes]
        assert sorted(union) == list(range(8))
        assert {p: s for sizes in per_broker.values() for p, s in sizes.items()} == reference
        metadata = admin.list_topics(topic, timeout=DEADLINE_S).topics[topic]
        leaders = {p: m.leader for p, m in metadata.partitions.items()}
        for node, sizes in per_broker.items():
            assert all(leaders[p] == node for p in sizes)
    finally:
        kp.close()

    # Each agent describes itself under its node id (the client sends it to that broker).
    for node in (0, 1):
        entries = admin.describe_configs([ConfigResource(ResourceType.BROKER, str(node))])
        (future,) = entries.values()
        described = future.result(DEADLINE_S)
        assert described["node.id"].value == str(node)
        address = cluster.wait_brokers(2)[node]  # node id -> its Kafka address
        assert described["advertised.listeners"].value == f"PLAINTEXT://{address}"

    # A replica assignment may name both agents.
    assigned = "assigned-both"
    admin.create_topics([NewTopic(assigned, 2, replica_assignment=[[0, 1], [1, 0]])])[
        assigned
    ].result(DEADLINE_S)
    (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, assigned)]).values()
    assert future.result(DEADLINE_S)["streamhouse.replica.assignment"].value == "0:0|1,1:1|0"
