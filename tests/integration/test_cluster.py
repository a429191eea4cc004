"""Three agents on one PostgreSQL and one SeaweedFS (S3), driven by real clients.

- a record produced through one agent is consumed through another, over Kafka (confluent-kafka)
  and over gRPC (streamhouse.client), and every agent reports the same high watermarks;
- idempotent producers write through different agents to the same partitions (gRPC: one
  producer whose retry goes through another agent is deduplicated; Kafka: two confluent-kafka
  producers pinned to different agents by zone): every acknowledged record is in its partition
  exactly once, at the offset its acknowledgement named, offsets without gaps;
- every agent is a Kafka broker: each agent's Metadata lists the three agents, the same
  partition leaders and the same coordinator per group, leadership spread over all three;
- a consumer group whose members are connected to different agents consumes everything
  exactly once.

Each test gets a fresh cluster (`make_cluster` in tests/conftest.py): a new PostgreSQL database
and a new prefix of the session's SeaweedFS bucket.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamhouse.client import Client, IdempotentProducer, Record
from streamhouse.kafka.messages import FindCoordinatorRequest
from streamhouse.testing import (
    Cluster,
    Deliveries,
    kafka_call,
    kafka_metadata,
    log_problems,
    read_kafka_log,
    wait_until,
)

ZONES = ("z0", "z1", "z2")
ZONE_ENV = [{"STREAMHOUSE_AGENT_ZONE": zone} for zone in ZONES]
GROUP_ENV = {
    "STREAMHOUSE_GROUP_INITIAL_REBALANCE_DELAY_MS": "500",
    "STREAMHOUSE_GROUP_MIN_SESSION_TIMEOUT_MS": "1000",
}


def zone_client_id(name: str, zone: str) -> str:
    """A Kafka client.id announcing the client's zone (agents then lead its partitions from
    their own zone)."""
    return f"{name},streamhouse_az={zone}"


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(timeout=30)


def read_grpc(address: str, topic: str, partitions: int) -> dict[int, list[tuple[int, bytes]]]:
    """The same over gRPC from one agent."""
    out: dict[int, list[tuple[int, bytes]]] = {}
    with Client(address) as client:
        for p in range(partitions):
            records: list[tuple[int, bytes]] = []
            offset = 0
            end = client.consume(topic, p, 0, max_records=1)[2]
            while offset < end:
                batch, offset, _, _ = client.consume(topic, p, offset)
                records.extend((r.offset, r.value or b"") for r in batch)
            out[p] = records
    return out


def assert_exactly_once(
    log: dict[int, list[tuple[int, bytes]]], acked: dict[bytes, tuple[int, int]]
) -> None:
    """Offsets 0..n-1 without gaps in every partition, no value twice, every acknowledged
    value at its acknowledged partition and offset."""
    problems = log_problems(log, acked)
    assert not problems, problems


# --------------------------------------------------------------------------- tests


def test_produce_on_one_agent_consume_on_another(cluster: Cluster) -> None:
    """gRPC produce on agent 0 and Kafka produce via agent 1; read back over gRPC from agent 2
    and over Kafka bootstrapped on agent 2; every agent reports the same high watermarks."""
    topic, partitions = "across", 6
    grpc0, grpc1, grpc2 = cluster.grpc_addresses
    with Client(grpc0) as client:
        client.create_topic(topic, partitions)
        grpc_acked: dict[bytes, tuple[int, int]] = {}
        for p in range(partitions):
            values = [f"g-{p}-{i}".encode() for i in range(50)]
            response = client.produce_batch(topic, [Record(value=v) for v in values], partition=p)
            for i, value in enumerate(values):
                grpc_acked[value] = (p, response.base_offset + i)

    deliveries = Deliveries()
    producer = Producer(
        {"bootstrap.servers": cluster.kafka_addresses[1], "acks": "all", "linger.ms": 5}
    )
    for i in range(600):
        producer.produce(topic, f"k-{i}".encode(), partition=i % partitions, on_delivery=deliveries)
        producer.poll(0)
    assert producer.flush(60) == 0, "Kafka records unacknowledged after 60 s"
    assert not deliveries.failed, deliveries.failed[:5]
    acked = {**grpc_acked, **deliveries.acked}
    assert len(acked) == 6 * 50 + 600

    via_grpc = read_grpc(grpc2, topic, partitions)
    assert_exactly_once(via_grpc, acked)
    assert sum(len(r) for r in via_grpc.values()) == len(acked)
    via_kafka = read_kafka_log(cluster.kafka_addresses[2], topic, partitions)
    assert via_kafka == via_grpc

    ends = {p: len(via_grpc[p]) for p in range(partitions)}
    for address in (grpc0, grpc1, grpc2):
        with Client(address) as client:
            described = client.get_topic(topic)
            seen = {p.partition: p.high_watermark for p in described.partition_info}
            assert seen == ends, f"agent {address} reports {seen}, expected {ends}"


def test_idempotent_producers_through_different_agents(
    make_cluster: Callable[..., Cluster],
) -> None:
    """The same partitions written through different agents by idempotent producers."""
    cluster = make_cluster(3, agent_env=ZONE_ENV)
    topic, partitions = "idem", 3
    create_topic(cluster.kafka_bootstrap, topic, partitions)

    # gRPC: a batch acknowledged through agent 0, then sent again (same producer id, epoch,
    # sequence) through agent 1 as a client retrying after losing agent 0 would: the retry
    # gets the original offsets and writes nothing.
    clients = [Client(address) for address in cluster.grpc_addresses]
    try:
        first = IdempotentProducer(clients[0])
        records = [Record(value=f"g-0-{i}".encode()) for i in range(10)]
        original = first.produce_batch(topic, 0, records)
        retry = IdempotentProducer(
            clients[1], producer_id=first.producer_id, producer_epoch=first.producer_epoch
        )
        again = retry.produce_batch(topic, 0, records)
        assert again.base_offset == original.base_offset
        grpc_acked = {r.value: (0, original.base_offset + i) for i, r in enumerate(records)}
        # Then the first producer carries on, each batch through the next agent in turn.
        for n in range(1, 31):
            batch = [Record(value=f"g-{n}-{i}".encode()) for i in range(10)]
            partition = n % partitions
            response = clients[n % 3].produce_batch(
                topic, batch, partition=partition, idempotent_as=first
            )
            for i, record in enumerate(batch):
                grpc_acked[record.value] = (partition, response.base_offset + i)  # type: ignore[index]
    finally:
        for client in clients:
            client.close()

    # Kafka: two idempotent producers, each pinned to another agent by its zone (a client of
    # zone z<i> is told that agent i leads every partition), writing the same partitions.
    brokers = cluster.wait_brokers(3)
    node_of = {cluster.agent_by_kafka_address(address): node for node, address in brokers.items()}
    for index in (1, 2):
        client_id = zone_client_id("probe", ZONES[index])
        view = kafka_metadata(cluster.kafka_addresses[0], topic, client_id=client_id)
        assert set(view.leaders.values()) == {node_of[index]}, (index, view)
    deliveries = Deliveries()

    def run(index: int) -> None:
        producer = Producer(
            {
                "bootstrap.servers": cluster.kafka_addresses[index],
                "client.id": zone_client_id(f"idem-{index}", ZONES[index]),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 2,
            }
        )
        for i in range(2000):
            producer.produce(
                topic, f"k{index}-{i}".encode(), partition=i % partitions, on_delivery=deliveries
            )
            if i % 100 == 0:
                producer.poll(0)
        assert producer.flush(60) == 0

    threads = [threading.Thread(target=run, args=(i,)) for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not deliveries.failed, deliveries.failed[:5]
    assert len(deliveries.acked) == 4000

    log = read_kafka_log(cluster.kafka_bootstrap, topic, partitions)
    assert_exactly_once(log, {**grpc_acked, **deliveries.acked})
    assert sum(len(r) for r in log.values()) == len(grpc_acked) + 4000
    # Each Kafka producer's records keep their produce order within a partition.
    for index in (1, 2):
        for p in range(partitions):
            mine = [int(v.split(b"-")[1]) for _, v in log[p] if v.startswith(b"k%d-" % index)]
            assert mine == sorted(mine), f"producer {index} reordered in partition {p}"


def test_every_agent_is_a_kafka_broker(cluster: Cluster) -> None:
    """Every agent's Metadata lists the three agents; all agree on the partition leaders,
    which are spread over all three, and on each group's coordinator."""
    brokers = cluster.wait_brokers(3)
    assert sorted(brokers.values()) == sorted(cluster.kafka_addresses)
    topic = "spread"
    create_topic(cluster.kafka_bootstrap, topic, 30)
    views = [kafka_metadata(address, topic) for address in cluster.kafka_addresses]
    assert all(v.leaders == views[0].leaders for v in views), [v.leaders for v in views]
    assert len(views[0].leaders) == 30
    assert set(views[0].leaders.values()) == set(brokers), "an agent leads no partition"
    assert all(v.controller == min(brokers) for v in views)
    for group in ("g-a", "g-b", "g-c", "g-d"):
        coordinators = {
            kafka_call(address, 10, 1, FindCoordinatorRequest(key=group)).node_id
            for address in cluster.kafka_addresses
        }
        assert len(coordinators) == 1 and coordinators <= set(brokers), (group, coordinators)


def test_group_members_on_different_agents_consume_once(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Three members, each bootstrapped on (and in the zone of) another agent, share a
    6-partition topic: once the group is stable every record is consumed exactly once."""
    cluster = make_cluster(3, env=GROUP_ENV, agent_env=ZONE_ENV)
    topic, partitions, group = "grouped", 6, "spanning"
    create_topic(cluster.kafka_bootstrap, topic, partitions)

    lock = threading.Lock()
    owned: dict[int, set[int]] = {i: set() for i in range(3)}
    consumed: list[tuple[int, int, bytes]] = []
    stop = threading.Event()
    errors: list[str] = []

    def member(index: int) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": cluster.kafka_addresses[index],
                "client.id": zone_client_id(f"member-{index}", ZONES[index]),
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 300,
                "topic.metadata.refresh.interval.ms": 2000,
            }
        )

        def on_assign(_c: Consumer, tps: list[TopicPartition]) -> None:
            with lock:
                owned[index] = {tp.partition for tp in tps}

        def on_revoke(_c: Consumer, _tps: list[TopicPartition]) -> None:
            with lock:
                owned[index] = set()

        consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
        try:
            while not stop.is_set():
                batch = consumer.consume(num_messages=500, timeout=0.2)
                got = []
                for message in batch:
                    if message.error() is None:
                        got.append((message.partition(), message.offset(), message.value()))
                    elif message.error().code() != KafkaError._PARTITION_EOF:
                        errors.append(str(message.error()))
                if got:
                    with lock:
                        consumed.extend(got)
                    consumer.commit(asynchronous=False)
        finally:
            consumer.close()

    threads = [threading.Thread(target=member, args=(i,), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
    try:

        def stable() -> bool:
            with lock:
                sets = list(owned.values())
            return all(len(s) == 2 for s in sets) and set().union(*sets) == set(range(partitions))

        wait_until(stable, 60, "three members each owning two of the six partitions")
        deliveries = Deliveries()
        producer = Producer({"bootstrap.servers": cluster.kafka_bootstrap, "acks": "all"})
        for i in range(3000):
            producer.produce(
                topic, f"r-{i}".encode(), partition=i % partitions, on_delivery=deliveries
            )
            if i % 100 == 0:
                producer.poll(0)
        assert producer.flush(60) == 0
        assert not deliveries.failed, deliveries.failed[:5]

        def all_consumed() -> bool:
            with lock:
                return len(consumed) >= 3000

        wait_until(all_consumed, 60, "the group consuming all 3000 records")
        assert stable(), f"the group rebalanced while consuming: {owned}"
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors, errors[:5]
    seen = [(p, o) for p, o, _ in consumed]
    assert len(seen) == len(set(seen)) == 3000, "a record was consumed twice"
    assert {v: (p, o) for p, o, v in consumed} == deliveries.acked
