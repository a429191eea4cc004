"""A cluster of three agents (PostgreSQL metadata, SeaweedFS objects) loses a whole agent, or
its metadata service, while idempotent Kafka producers (confluent-kafka, acks=all) and a
consumer group run.

- kill -9 of every process of one agent (supervisord and its four programs at once) that leads
  partitions: producers resume on the dead agent's partitions within 10 s of the kill (the time
  to the first acknowledged produce on each of them is printed), the group keeps consuming and
  reads every acknowledged record, and the log read back by partition from a surviving agent
  holds every acknowledged record exactly once, at its acknowledged offset, offsets without
  gaps. STREAMHOUSE_FAILOVER_ROUNDS=N (default 1) kills N times, starting the dead agent again
  between rounds (the long variant).
- the PostgreSQL server restarted under load: while it is down produces fail with retriable
  errors (seen by a gRPC producer that does its own retrying) and Kafka clients retry; after it
  is back every producer resumes and nothing acknowledged is lost or duplicated, and no agent
  drops another from its live set (every agent's lease lapsed during the outage, but none
  died), so partition leadership never moves.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamhouse.client import RETRYABLE_CODES, Client, IdempotentProducer, Record, StreamHouseError
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

ROUNDS = int(os.environ.get("STREAMHOUSE_FAILOVER_ROUNDS", "1"))
FAILOVER_BOUND_S = 10.0
PARTITIONS = 6
RATE = 800  # records/s per producer: in flight at every kill, little to read back
GROUP = "survivors"
GROUP_ENV = {
    "STREAMHOUSE_GROUP_INITIAL_REBALANCE_DELAY_MS": "500",
    "STREAMHOUSE_GROUP_MIN_SESSION_TIMEOUT_MS": "1000",
}
CLIENT_TUNING = {
    # librdkafka re-reads metadata quickly after a broker is lost; these bound the rest.
    "topic.metadata.refresh.interval.ms": 1000,
    "reconnect.backoff.max.ms": 1000,
    "socket.connection.setup.timeout.ms": 3000,
}


class NumberedProducer:
    """An idempotent confluent-kafka producer (acks=all) sending "<name>-<n>" at RATE records/s,
    round robin over the partitions, in its own thread."""

    def __init__(self, name: str, bootstrap: str, topic: str, deliveries: Deliveries) -> None:
        self.name = name
        self.topic = topic
        self.deliveries = deliveries
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": name,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                **CLIENT_TUNING,
            }
        )
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set():
            ahead = self.sent / RATE - (time.monotonic() - started)
            if ahead > 0:
                self.producer.poll(min(ahead, 0.05))  # paces the load and serves delivery reports
                continue
            self.producer.produce(
                self.topic,
                f"{self.name}-{self.sent}".encode(),
                partition=self.sent % PARTITIONS,
                on_delivery=self.deliveries,
            )
            self.sent += 1

    def finish(self, timeout: float = 60) -> int:
        """Stops producing and waits for every outstanding acknowledgement; returns how many
        are still outstanding (0 when all were delivered or failed)."""
        self.stop.set()
        self.thread.join(10)
        return self.producer.flush(timeout)


class GroupMember:
    """One member of the consumer group, in a thread: records every (partition, offset, value)
    it consumes and commits after each batch."""

    def __init__(self, name: str, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": name,
                "group.id": GROUP,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 300,
                **CLIENT_TUNING,
            }
        )
        self.lock = threading.Lock()
        self.values: set[bytes] = set()
        self.owned: set[int] = set()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.consumer.subscribe(
            [topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _assigned(self, _c: Consumer, tps: list[TopicPartition]) -> None:
        with self.lock:
            self.owned = {tp.partition for tp in tps}

    def _revoked(self, _c: Consumer, _tps: list[TopicPartition]) -> None:
        with self.lock:
            self.owned = set()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                got = []
                for message in self.consumer.consume(num_messages=500, timeout=0.2):
                    if message.error() is None:
                        got.append(message.value())
                    elif message.error().code() != KafkaError._PARTITION_EOF:
                        self.errors.append(str(message.error()))
                if got:
                    with self.lock:
                        self.values.update(got)
                    try:
                        self.consumer.commit(asynchronous=False)
                    except (
                        Exception
                    ) as exc:  # a commit failing during failover is retried next batch
                        self.errors.append(f"commit: {exc}")
        finally:
            self.consumer.close()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(30)


def consumed(members: list[GroupMember]) -> set[bytes]:
    out: set[bytes] = set()
    for member in members:
        with member.lock:
            out |= member.values
    return out


def owned(members: list[GroupMember]) -> list[set[int]]:
    out = []
    for member in members:
        with member.lock:
            out.append(set(member.owned))
    return out


def create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        future.result(timeout=30)


def leaders_by_agent(cluster: Cluster, via: int, topic: str) -> dict[int, list[int]]:
    """agent index -> partitions it leads, as agent `via` tells clients."""
    view = kafka_metadata(cluster.kafka_addresses[via], topic)
    out: dict[int, list[int]] = {}
    for partition, node in sorted(view.leaders.items()):
        out.setdefault(cluster.agent_by_kafka_address(view.brokers[node]), []).append(partition)
    return out


def coordinator_agent(cluster: Cluster, via: int) -> int:
    body = kafka_call(cluster.kafka_addresses[via], 10, 1, FindCoordinatorRequest(key=GROUP))
    return cluster.agent_by_kafka_address(f"{body.host}:{body.port}")


def test_kill_agent_while_producing_and_consuming(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3, env=GROUP_ENV)
    topic = "failover"
    create_topic(cluster.kafka_bootstrap, topic)
    cluster.wait_brokers(3)

    deliveries = Deliveries()
    producers = [
        NumberedProducer(f"p{i}", cluster.kafka_bootstrap, topic, deliveries) for i in range(2)
    ]
    members = [GroupMember(f"m{i}", cluster.kafka_addresses[i], topic) for i in range(2)]
    failovers: list[dict[str, Any]] = []
    try:
        wait_until(
            lambda: set().union(*owned(members)) == set(range(PARTITIONS)),
            60,
            "the group owning every partition",
        )
        wait_until(lambda: deliveries.count() >= 1000, 60, "1000 records acknowledged")
        for round_no in range(ROUNDS):
            alive = cluster.running_indices()
            leaders = leaders_by_agent(cluster, alive[0], topic)
            coordinator = coordinator_agent(cluster, alive[0])
            # The coordinator if it leads partitions (both fail over at once), else the agent
            # leading the most.
            victim = (
                coordinator
                if leaders.get(coordinator)
                else max(leaders, key=lambda a: len(leaders[a]))
            )
            lost = leaders[victim]
            consumed_before = len(consumed(members))
            killed_at = time.monotonic()
            cluster.kill_agent(victim)
            # Only records produced once every process of the agent is gone count: an earlier
            # one may have been answered by the victim and merely reported late.
            marks = {p.name: p.sent for p in producers}

            def after_kill(value: bytes, marks: dict[str, int] = marks) -> bool:
                name, _, n = value.decode().partition("-")
                return int(n) >= marks[name]

            def first_ack(partition: int, since: float = killed_at) -> float | None:
                return deliveries.first_ack_after(partition, since, after_kill)

            wait_until(
                lambda lost=lost: all(first_ack(p) is not None for p in lost),
                60,
                f"produces acknowledged again on partitions {lost}",
            )
            per_partition = {p: first_ack(p) - killed_at for p in lost}  # type: ignore[operator]
            failovers.append(
                {
                    "round": round_no,
                    "victim": victim,
                    "coordinator": coordinator == victim,
                    "partitions": lost,
                    "first_s": min(per_partition.values()),
                    "all_s": max(per_partition.values()),
                }
            )
            print(
                f"failover round {round_no}: agent {victim} (coordinator: {coordinator == victim})"
                f" killed; first produce acknowledged on its partitions {lost} after "
                f"{min(per_partition.values()):.2f} s, on all of them after "
                f"{max(per_partition.values()):.2f} s"
            )
            # The group keeps consuming what is produced after the kill.
            wait_until(
                lambda n=consumed_before: len(consumed(members)) > n + 2 * RATE,
                60,
                "the group consuming after the kill",
            )
            if round_no + 1 < ROUNDS:
                cluster.start_agent(victim)
                cluster.wait_brokers(3)
        outstanding = [p.finish() for p in producers]
        assert outstanding == [0, 0], f"records unacknowledged 60 s after the end: {outstanding}"
        assert not deliveries.failed, deliveries.failed[:5]
        acked = dict(deliveries.acked)
        assert len(acked) == sum(p.sent for p in producers)
        wait_until(
            lambda: consumed(members) >= acked.keys(), 60, "the group consuming every record"
        )
    finally:
        for producer in producers:
            producer.stop.set()
        for member in members:
            member.finish()
    survivor = cluster.running_indices()[0]
    log = read_kafka_log(cluster.kafka_addresses[survivor], topic, PARTITIONS)
    assert log_problems(log, acked) == []
    assert sum(len(records) for records in log.values()) == len(acked)
    for failover in failovers:
        assert failover["all_s"] < FAILOVER_BOUND_S, failovers


def test_metadata_restart_under_load(make_cluster: Callable[..., Cluster], postgres: Any) -> None:
    """PostgreSQL stopped (fast shutdown: every connection cut) while producing, started again
    once a produce has failed: the failures are retriable and every producer resumes."""
    cluster = make_cluster(3, env={"STREAMHOUSE_PRODUCE_TIMEOUT_MS": "5000"})
    topic = "outage"
    create_topic(cluster.kafka_bootstrap, topic)

    deliveries = Deliveries()
    producers = [
        NumberedProducer(f"p{i}", cluster.kafka_addresses[i], topic, deliveries) for i in range(2)
    ]
    # A gRPC producer through agent 2 that retries by itself, to see each failure's status.
    codes: list[grpc.StatusCode] = []
    grpc_acked: dict[bytes, tuple[int, int]] = {}
    stop = threading.Event()

    def grpc_producer() -> None:
        with Client(cluster.grpc_addresses[2], timeout=10) as client:
            producer = IdempotentProducer(client, max_attempts=1)
            n = 0
            deadline = None
            while not stop.is_set() or deadline is not None:
                records = [Record(value=f"g-{n}-{i}".encode()) for i in range(10)]
                try:
                    response = producer.produce_batch(topic, n % PARTITIONS, records)
                except StreamHouseError as exc:
                    codes.append(exc.code)
                    # The same batch again (the producer did not advance its sequence), even
                    # after stop, so that nothing is left written but unacknowledged.
                    deadline = deadline or time.monotonic() + 60
                    if time.monotonic() > deadline:
                        return
                    continue
                deadline = None
                for i, record in enumerate(records):
                    grpc_acked[record.value] = (n % PARTITIONS, response.base_offset + i)  # type: ignore[index]
                n += 1

    # Every agent's Kafka metadata, sampled throughout: which brokers each one lists.
    brokers_seen: list[tuple[float, int, frozenset[int]]] = []

    def sample_brokers() -> None:
        while not stop.is_set():
            for i, address in enumerate(cluster.kafka_addresses):
                try:
                    view = kafka_metadata(address)
                except Exception:  # metadata down: the agent cannot answer; nothing to see
                    continue
                brokers_seen.append((time.monotonic(), i, frozenset(view.brokers)))
            stop.wait(0.2)

    grpc_thread = threading.Thread(target=grpc_producer, daemon=True)
    grpc_thread.start()
    sampler = threading.Thread(target=sample_brokers, daemon=True)
    sampler.start()
    try:
        wait_until(lambda: deliveries.count() >= 1000 and grpc_acked, 60, "records acknowledged")
        postgres.stop_server()
        down_at = time.monotonic()
        try:
            wait_until(
                lambda: len(codes) > 0, 60, "a gRPC produce failing while PostgreSQL is down"
            )
        finally:
            postgres.start_server()
        up_at = time.monotonic()
        marks = {p.name: p.sent for p in producers}  # records produced after the restart count
        print(f"PostgreSQL down for {up_at - down_at:.1f} s; gRPC failures: {sorted(set(codes))}")

        def after_restart(value: bytes) -> bool:
            name, _, n = value.decode().partition("-")
            return int(n) >= marks[name]

        def first_ack(partition: int) -> float | None:
            return deliveries.first_ack_after(partition, up_at, after_restart)

        wait_until(
            lambda: all(first_ack(p) is not None for p in range(PARTITIONS)),
            60,
            "Kafka produces acknowledged on every partition after the restart",
        )
        resumed = [first_ack(p) - up_at for p in range(PARTITIONS)]  # type: ignore[operator]
        print(
            f"Kafka produces acknowledged again {min(resumed):.2f} s after the restart "
            f"(every partition after {max(resumed):.2f} s)"
        )
        grpc_before = len(grpc_acked)
        wait_until(lambda: len(grpc_acked) > grpc_before, 60, "gRPC produces resuming")
        outstanding = [p.finish() for p in producers]
        assert outstanding == [0, 0], f"records unacknowledged 60 s after the end: {outstanding}"
        # Watch the live sets until two leases (4 s each) after the restart.
        wait_until(
            lambda: any(at > up_at + 8 for at, _, _ in brokers_seen),
            60,
            "Kafka metadata sampled 8 s after the restart",
        )
    finally:
        stop.set()
        for producer in producers:
            producer.stop.set()
        grpc_thread.join(30)
        sampler.join(30)
    assert not deliveries.failed, deliveries.failed[:5]
    assert codes and set(codes) <= RETRYABLE_CODES, codes
    # No agent dropped another (leadership would have moved while clients retried).
    after = [(at, i) for at, i, _ in brokers_seen if at > up_at]
    assert {i for _, i in after} == {0, 1, 2}, "an agent never answered Metadata after the restart"
    everyone = frozenset(range(3))
    dropped = [
        (f"{at - up_at:+.1f} s", i, sorted(seen))
        for at, i, seen in brokers_seen
        if seen != everyone
    ]
    assert dropped == [], f"agents left a live set after the outage: {dropped[:10]}"
    acked = {**deliveries.acked, **grpc_acked}
    log = read_kafka_log(cluster.kafka_bootstrap, topic, PARTITIONS)
    assert log_problems(log, acked) == []
    # Nothing written that was not acknowledged: every Kafka record was acknowledged in the
    # end, and a gRPC batch that failed was sent again until it was.
    assert sum(len(records) for records in log.values()) == len(acked)
