"""A consumer group outlives the agent that coordinates it.

Two agents (stacks) share one PostgreSQL database (fixture ``postgres_dsn``) and one file://
object-store folder. A confluent-kafka group of two members, each bootstrapped from a different
agent, consumes a topic and commits after every batch. The agent coordinating the group (as
FindCoordinator says) is SIGKILLed (or stopped cleanly); once its lease lapses (or it has
deregistered) the other agent coordinates the group, restores it from the state saved in
metadata and the members carry on at their generation without a rebalance: everything produced
afterwards is consumed, nothing committed before the kill is consumed again, the committed
offsets reach the high watermarks, all within 10 s of the kill.

With two agents, only a group's coordinator answers for it: the other answers NOT_COORDINATOR
to every group API, and ListGroups names each group on exactly one agent.
"""

from __future__ import annotations

import collections
import json
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer, ConsumerGroupState, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamhouse.kafka.messages import (
    DescribeGroupsRequest,
    FindCoordinatorRequest,
    HeartbeatRequest,
    JoinGroupRequest,
    ListGroupsRequest,
    OffsetCommitRequest,
    OffsetFetchRequest,
)
from streamhouse.testing import Cluster, kafka_call, wait_until

GROUP_ENV = {
    "STREAMHOUSE_GROUP_INITIAL_REBALANCE_DELAY_MS": "500",
    "STREAMHOUSE_GROUP_MIN_SESSION_TIMEOUT_MS": "1000",
}
SESSION_MS = 6000
PARTITIONS = 6
FAILOVER_S = 10.0  # from the kill (or the start of the clean stop) to everything committed
MEMBER_SCRIPT = pathlib.Path(__file__).with_name("kafka_group_member.py")


@pytest.fixture
def two_agents(tmp_path: pathlib.Path, postgres_dsn: str) -> Iterator[Cluster]:
    objects = tmp_path / "objects"
    objects.mkdir()
    cluster = Cluster(tmp_path / "cluster", 2, postgres_dsn, f"file://{objects}", GROUP_ENV)
    with cluster:
        yield cluster


class Members:
    """Member processes (kafka_group_member.py) and every record batch they report, with the
    time it was reported, behind one condition."""

    def __init__(self, group: str, topic: str) -> None:
        self.group, self.topic = group, topic
        self.cond = threading.Condition()
        self.procs: list[subprocess.Popen[str]] = []
        self.assignment: dict[str, set[int]] = {}
        self.revocations: collections.Counter[str] = collections.Counter()
        self.batches: list[tuple[float, list[tuple[int, int]]]] = []
        self.crashed: list[str] = []
        self.stopping = False

    def start(self, name: str, bootstrap: str) -> None:
        proc = subprocess.Popen(
            [sys.executable, str(MEMBER_SCRIPT), bootstrap, self.group, self.topic, name,
             str(SESSION_MS), "range"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        with self.cond:
            self.procs.append(proc)
            self.assignment[name] = set()
        threading.Thread(target=self._read, args=(name, proc), daemon=True).start()

    def _read(self, name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            with self.cond:
                match event["event"]:
                    case "assigned":
                        self.assignment[name] = set(event["partitions"])
                    case "revoked":
                        self.assignment[name] = set(event["partitions"])
                        self.revocations[name] += 1
                    case "records":
                        items = [(p, o) for p, o in event["items"]]
                        self.batches.append((time.monotonic(), items))
                self.cond.notify_all()
        code = proc.wait()
        with self.cond:
            if code != 0 and not self.stopping:
                self.crashed.append(name)
            self.cond.notify_all()

    def consumed(self, since: float = 0.0) -> collections.Counter[tuple[int, int]]:
        with self.cond:
            return collections.Counter(
                item for at, items in self.batches if at >= since for item in items
            )

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate() or bool(self.crashed), timeout)
            assert not self.crashed, f"member processes {self.crashed} died (see stderr)"
        assert ok, f"{what}: not reached within {timeout}s; assignment {self.assignment}"

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def produce(bootstrap: str, topic: str, count: int, tag: str) -> None:
    failed: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    for i in range(count):
        producer.produce(
            topic, f"{tag}-{i}".encode(), partition=i % PARTITIONS, on_delivery=on_delivery
        )
        producer.poll(0)
    assert producer.flush(60) == 0, "records still unacknowledged after 60 s"
    assert not failed, failed[:5]


def high_watermarks(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "hwm-probe"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(PARTITIONS)
        }
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        got = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return {tp.partition: tp.offset for tp in got}
    finally:
        consumer.close()


def coordinator_node(address: str, group: str) -> int:
    answer = kafka_call(address, 10, 1, FindCoordinatorRequest(key=group))
    assert answer.error_code == 0, answer
    return int(answer.node_id)


def describe(bootstrap: str, group: str) -> tuple[ConsumerGroupState, dict[str, list[int]]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    (future,) = admin.describe_consumer_groups([group], request_timeout=10).values()
    description = future.result(timeout=15)
    return description.state, {
        m.client_id: sorted(tp.partition for tp in m.assignment.topic_partitions)
        for m in description.members
    }


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_group_keeps_consuming_when_its_coordinator_goes(two_agents: Cluster, how: str) -> None:
    """`kill`: SIGKILL (the others notice when its lease lapses); `stop`: a clean stop (it
    deregisters, the others notice at their next heartbeat)."""
    cluster = two_agents
    brokers = cluster.wait_brokers(2)
    topic, group = "failover-orders", "failover-billing"
    admin = AdminClient({"bootstrap.servers": cluster.kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        future.result(timeout=30)
    produce(cluster.kafka_bootstrap, topic, 1200, "a")

    members = Members(group, topic)
    try:
        members.start("m0", cluster.kafka_addresses[0])
        members.start("m1", cluster.kafka_addresses[1])
        hwm = high_watermarks(cluster.kafka_bootstrap, topic)
        assert sum(hwm.values()) == 1200
        members.wait(
            lambda: (
                all(len(members.assignment[n]) == PARTITIONS // 2 for n in ("m0", "m1"))
                and all((p, o) in members.consumed() for p in hwm for o in range(hwm[p]))
            ),
            90,
            "both members assigned and the first 1200 records consumed",
        )
        wait_until(
            lambda: committed(cluster.kafka_bootstrap, group, topic) == hwm,
            30,
            "the group's committed offsets at the high watermarks",
        )
        # Every agent names the same coordinator; it is the one to kill.
        nodes = {coordinator_node(a, group) for a in cluster.kafka_addresses}
        assert len(nodes) == 1, nodes
        doomed = cluster.agent_by_kafka_address(brokers[nodes.pop()])
        survivor = cluster.kafka_addresses[1 - doomed]
        with members.cond:
            before = {n: set(a) for n, a in members.assignment.items()}

        killed_at = time.monotonic()
        if how == "kill":
            cluster.kill_agent(doomed)
        else:
            cluster.stop_agent(doomed)
        produce(survivor, topic, 600, "b")
        hwm_after = high_watermarks(survivor, topic)
        assert sum(hwm_after.values()) == 1800
        members.wait(
            lambda: all(
                (p, o) in members.consumed() for p in hwm_after for o in range(hwm_after[p])
            ),
            FAILOVER_S + 20,
            "the records produced after the kill consumed",
        )
        wait_until(
            lambda: committed(survivor, group, topic) == hwm_after,
            FAILOVER_S + 20,
            "the committed offsets at the new high watermarks",
        )
        took = time.monotonic() - killed_at
        print(f"group consuming and committing on the surviving agent {took:.1f} s after {how}")
        assert took <= FAILOVER_S, f"the group took {took:.1f} s to carry on after the kill"

        # Nothing committed before the kill was consumed again, nothing was lost.
        again = [(p, o) for (p, o) in members.consumed(since=killed_at) if o < hwm[p]]
        assert not again, f"records committed before the kill consumed again: {again[:10]}"
        all_consumed = members.consumed()
        assert all((p, o) in all_consumed for p in hwm_after for o in range(hwm_after[p]))

        # The survivor coordinates the group now, restored at its generation: same members,
        # same assignment, no rebalance.
        survivor_node = next(n for n, a in brokers.items() if a == survivor)
        assert coordinator_node(survivor, group) == survivor_node
        state, described = describe(survivor, group)
        assert state == ConsumerGroupState.STABLE
        assert {n: set(a) for n, a in described.items()} == before
        with members.cond:
            assert dict(members.revocations) == {}, members.revocations
    finally:
        members.stop()


NOT_COORDINATOR = 16


def test_only_the_coordinator_answers_for_a_group(two_agents: Cluster) -> None:
    cluster = two_agents
    brokers = cluster.wait_brokers(2)
    admin = AdminClient({"bootstrap.servers": cluster.kafka_bootstrap})
    for future in admin.create_topics([NewTopic("ledger", 1, 1)]).values():
        future.result(timeout=30)
    # One group per agent, by what FindCoordinator answers.
    owned: dict[int, str] = {}
    for i in range(200):
        node = coordinator_node(cluster.kafka_addresses[0], f"ledger-{i}")
        owned.setdefault(cluster.agent_by_kafka_address(brokers[node]), f"ledger-{i}")
        if len(owned) == 2:
            break
    assert len(owned) == 2, f"200 group ids all hash to one agent: {owned}"

    def commit(address: str, group: str) -> int:
        R = OffsetCommitRequest
        body = kafka_call(address, 8, 8, R(
            group_id=group, generation_id_or_member_epoch=-1, member_id="",
            topics=[R.OffsetCommitRequestTopic(name="ledger", partitions=[
                R.OffsetCommitRequestPartition(partition_index=0, committed_offset=7)])],
        ))  # fmt: skip
        return int(body.topics[0].partitions[0].error_code)

    for agent, group in owned.items():
        mine, other = cluster.kafka_addresses[agent], cluster.kafka_addresses[1 - agent]
        assert commit(other, group) == NOT_COORDINATOR
        assert commit(mine, group) == 0
        heartbeat = HeartbeatRequest(group_id=group, generation_id=1, member_id="m")
        assert kafka_call(other, 12, 3, heartbeat).error_code == NOT_COORDINATOR
        join = JoinGroupRequest(
            group_id=group, session_timeout_ms=6000, rebalance_timeout_ms=6000, member_id="",
            protocol_type="consumer",
            protocols=[JoinGroupRequest.JoinGroupRequestProtocol(name="range", metadata=b"")],
        )  # fmt: skip
        assert kafka_call(other, 11, 7, join).error_code == NOT_COORDINATOR
        (described,) = kafka_call(other, 15, 5, DescribeGroupsRequest(groups=[group])).groups
        assert described.error_code == NOT_COORDINATOR
        fetch = OffsetFetchRequest(groups=[OffsetFetchRequest.OffsetFetchRequestGroup(
            group_id=group, topics=None)])  # fmt: skip
        (fetched,) = kafka_call(other, 9, 8, fetch).groups
        assert fetched.error_code == NOT_COORDINATOR
        (fetched,) = kafka_call(mine, 9, 8, fetch).groups
        assert fetched.error_code == 0
        assert fetched.topics[0].partitions[0].committed_offset == 7

    # ListGroups is per agent: each group (known only by its committed offsets) on exactly one.
    for agent, address in enumerate(cluster.kafka_addresses):
        listed = {g.group_id for g in kafka_call(address, 16, 4, ListGroupsRequest()).groups}
        assert listed == {owned[agent]}, (agent, listed)
    # A group with members (stored state) as well: listed by its coordinator only, Stable.
    consumer = Consumer({
        "bootstrap.servers": cluster.kafka_bootstrap, "group.id": "ledger-readers",
        "session.timeout.ms": 6000, "auto.offset.reset": "earliest",
    })  # fmt: skip
    try:
        consumer.subscribe(["ledger"])
        readers = cluster.agent_by_kafka_address(
            brokers[coordinator_node(cluster.kafka_addresses[0], "ledger-readers")]
        )

        def listed_on(address: str) -> dict[str, str]:
            answer = kafka_call(address, 16, 4, ListGroupsRequest())
            return {g.group_id: g.group_state for g in answer.groups}

        def stable_on_coordinator_only() -> bool:
            consumer.poll(0.1)
            return listed_on(cluster.kafka_addresses[readers]).get("ledger-readers") == "Stable"

        wait_until(stable_on_coordinator_only, 30, "ledger-readers Stable on its coordinator")
        assert "ledger-readers" not in listed_on(cluster.kafka_addresses[1 - readers])
    finally:
        consumer.close()
