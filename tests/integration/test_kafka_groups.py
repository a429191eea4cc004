"""Kafka consumer groups against a whole StreamHouse, with confluent-kafka (librdkafka) clients.

- three members (each its own process) share a 6-partition topic: every partition is assigned
  exactly once; a member that closes is rebalanced away, a member SIGKILLed is taken over after
  its session timeout; every record is consumed at least once and the committed offsets end at
  the high watermarks;
- committed offsets survive a restart of the whole stack and a new member resumes there;
- a static member (group.instance.id) that comes back takes its partitions without a rebalance;
- a lone consumer's first join takes about the initial rebalance delay.

One stack for the module, with a short initial rebalance delay and the minimum session timeout
lowered so that the consumers' small session timeouts are accepted.
"""

from __future__ import annotations

import json
import pathlib
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer, ConsumerGroupState, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamhouse.kafka.framing import decode_response, encode_request
from streamhouse.kafka.messages import LeaveGroupRequest, LeaveGroupResponse, RequestHeader
from streamhouse.testing import Stack

UNKNOWN_MEMBER_ID = 25
INITIAL_DELAY_MS = 1000
SESSION_MS = 6000
MEMBER_SCRIPT = pathlib.Path(__file__).with_name("kafka_group_member.py")


@pytest.fixture(scope="module")
def group_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "STREAMHOUSE_GROUP_INITIAL_REBALANCE_DELAY_MS": str(INITIAL_DELAY_MS),
        "STREAMHOUSE_GROUP_MIN_SESSION_TIMEOUT_MS": "1000",
    }
    with Stack(tmp_path_factory.mktemp("kafka-groups") / "data", env=env) as running:
        yield running


def bootstrap(stack: Stack) -> str:
    return f"127.0.0.1:{stack.kafka_port}"


def create_topic(stack: Stack, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap(stack)})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(timeout=30)


def produce(stack: Stack, topic: str, partitions: int, count: int, tag: str) -> None:
    """`count` records spread round-robin over the partitions, all acknowledged."""
    failed: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap(stack), "linger.ms": 5, "acks": "all"})
    for i in range(count):
        producer.produce(topic, f"{tag}-{i}".encode(), partition=i % partitions)
        producer.poll(0)
    assert producer.flush(60) == 0, "records still unacknowledged after 60 s"
    assert not failed, failed[:5]


def high_watermarks(stack: Stack, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap(stack), "group.id": "hwm-probe"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def committed_offsets(stack: Stack, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap(stack), "group.id": group})
    try:
        got = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in got}
    finally:
        consumer.close()


def describe(stack: Stack, group: str) -> tuple[ConsumerGroupState, dict[str, list[int]]]:
    """The coordinator's view: group state and client id -> assigned partitions."""
    admin = AdminClient({"bootstrap.servers": bootstrap(stack)})
    (future,) = admin.describe_consumer_groups([group], request_timeout=10).values()
    description = future.result(timeout=15)
    return description.state, {
        m.client_id: sorted(tp.partition for tp in m.assignment.topic_partitions)
        for m in description.members
    }


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls an observable state (a server answer) until it holds, within a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout}s"
        time.sleep(0.1)  # poll interval of a server-side state, not a synchronisation


class Members:
    """Member processes and what they reported, behind one condition the test waits on."""

    def __init__(self, stack: Stack, group: str, topic: str, assignor: str) -> None:
        self.stack, self.group, self.topic, self.assignor = stack, group, topic, assignor
        self.cond = threading.Condition()
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.assignment: dict[str, set[int]] = {}
        self.consumed: set[tuple[int, int]] = set()
        self.closed: set[str] = set()
        self.killed: set[str] = set()
        self.crashed: set[str] = set()
        self.revocations: dict[str, int] = {}

    def start(self, name: str) -> None:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(MEMBER_SCRIPT),
                bootstrap(self.stack),
                self.group,
                self.topic,
                name,
                str(SESSION_MS),
                self.assignor,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        with self.cond:
            self.procs[name] = proc
            self.assignment[name] = set()
            self.revocations[name] = 0
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
                        self.consumed.update((p, o) for p, o in event["items"])
                    case "closed":
                        self.closed.add(name)
                self.cond.notify_all()
        with self.cond:
            self.assignment[name] = set()  # the process is gone
            if name not in self.closed and name not in self.killed:
                self.crashed.add(name)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate() or self.crashed, timeout)
            assert not self.crashed, f"member processes {self.crashed} died (see stderr)"
        assert ok, f"{what}: not reached within {timeout}s; assignment {self.assignment}"

    def covers_exactly(self, names: list[str], partitions: int) -> bool:
        """Each named member holds partitions, none twice, all of them together (call with the
        condition held)."""
        sets = [self.assignment[n] for n in names]
        if not all(sets):
            return False
        return sum(map(len, sets)) == partitions and set().union(*sets) == set(range(partitions))

    def wait_stable(self, names: list[str], partitions: int, timeout: float) -> None:
        """The named members split all partitions, as they say and as the coordinator says."""
        self.wait(
            lambda: self.covers_exactly(names, partitions),
            timeout,
            f"{names} splitting {partitions} partitions",
        )

        def coordinator_agrees() -> bool:
            state, members = describe(self.stack, self.group)
            with self.cond:
                mine = {n: sorted(self.assignment[n]) for n in names}
            return state == ConsumerGroupState.STABLE and members == mine

        wait_until(coordinator_agrees, 15, "the coordinator describing the same assignment")

    def close(self, name: str) -> None:
        proc = self.procs[name]
        assert proc.stdin is not None
        proc.stdin.write("close\n")
        proc.stdin.flush()
        assert proc.wait(30) == 0
        self.wait(lambda: name in self.closed, 5, f"{name} closed")

    def kill(self, name: str) -> None:
        with self.cond:
            self.killed.add(name)
        self.procs[name].kill()
        self.procs[name].wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("assignor", ["range", "cooperative-sticky"])
def test_group_of_three_rebalances_on_leave_and_on_kill(group_stack: Stack, assignor: str) -> None:
    topic, group, partitions = f"orders-{assignor}", f"billing-{assignor}", 6
    create_topic(group_stack, topic, partitions)
    produce(group_stack, topic, partitions, 1200, "a")
    members = Members(group_stack, group, topic, assignor)
    try:
        for name in ("m1", "m2", "m3"):
            members.start(name)
        members.wait_stable(["m1", "m2", "m3"], partitions, 60)
        assert all(len(members.assignment[n]) == 2 for n in ("m1", "m2", "m3"))
        hwm = high_watermarks(group_stack, topic, partitions)
        members.wait(
            lambda: all((p, o) in members.consumed for p in hwm for o in range(hwm[p])),
            60,
            "the first 1200 records consumed",
        )

        # A clean leave: the other two take over its partitions.
        members.close("m3")
        members.wait_stable(["m1", "m2"], partitions, 30)
        produce(group_stack, topic, partitions, 600, "b")

        # A SIGKILLed member: its partitions move once its session has expired.
        killed_at = time.monotonic()
        members.kill("m2")
        members.wait_stable(["m1"], partitions, SESSION_MS / 1000 + 20)
        took = time.monotonic() - killed_at
        assert took >= SESSION_MS / 1000 - 1, f"taken over after {took:.1f}s, before the session"
        produce(group_stack, topic, partitions, 600, "c")

        hwm = high_watermarks(group_stack, topic, partitions)
        assert sum(hwm.values()) == 2400
        members.wait(
            lambda: all((p, o) in members.consumed for p in hwm for o in range(hwm[p])),
            60,
            "all 2400 records consumed",
        )
        members.close("m1")
    finally:
        members.stop_all()
    assert committed_offsets(group_stack, group, topic, partitions) == hwm
    state, left = describe(group_stack, group)
    assert state == ConsumerGroupState.EMPTY and not left


def _consume_until(consumer: Consumer, want: int, timeout: float) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of the first `want` messages, within the deadline."""
    got: list[tuple[int, int, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        assert time.monotonic() < deadline, f"only {len(got)} of {want} messages in {timeout}s"
        for message in consumer.consume(num_messages=want - len(got), timeout=0.5):
            assert message.error() is None, message.error()
            got.append((message.partition(), message.offset(), message.value()))
    return got


def _consumer(stack: Stack, group: str, **extra: object) -> Consumer:
    config: dict[str, object] = {
        "bootstrap.servers": bootstrap(stack),
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": SESSION_MS,
        "heartbeat.interval.ms": 300,
        "max.poll.interval.ms": 30_000,
    }
    config.update(extra)
    return Consumer(config)


def test_committed_offsets_survive_a_restart(group_stack: Stack) -> None:
    topic, group = "resume", "resumers"
    create_topic(group_stack, topic, 1)
    produce(group_stack, topic, 1, 100, "before")
    first = _consumer(group_stack, group)
    first.subscribe([topic])
    try:
        got = _consume_until(first, 60, 30)
        assert [o for _, o, _ in got] == list(range(60))
        first.commit(offsets=[TopicPartition(topic, 0, 60)], asynchronous=False)
    finally:
        first.close()

    group_stack.restart()
    produce(group_stack, topic, 1, 10, "after")
    assert committed_offsets(group_stack, group, topic, 1) == {0: 60}
    second = _consumer(group_stack, group)
    second.subscribe([topic])
    try:
        got = _consume_until(second, 50, 30)
    finally:
        second.close()
    assert [o for _, o, _ in got] == list(range(60, 110)), "resumed at the committed offset"
    assert [v for _, _, v in got] == [f"before-{i}".encode() for i in range(60, 100)] + [
        f"after-{i}".encode() for i in range(10)
    ]


def test_static_member_rejoins_without_rebalance(group_stack: Stack) -> None:
    topic, group, partitions = "static-4", "statics", 4
    create_topic(group_stack, topic, partitions)
    revoked: dict[str, int] = {"x": 0, "x2": 0, "y": 0}
    assigned: dict[str, list[int]] = {}

    def callbacks(name: str) -> dict[str, Callable[[Consumer, list[TopicPartition]], None]]:
        def on_assign(_c: Consumer, tps: list[TopicPartition]) -> None:
            assigned[name] = sorted(tp.partition for tp in tps)

        def on_revoke(_c: Consumer, tps: list[TopicPartition]) -> None:
            revoked[name] += 1
            assigned.pop(name, None)

        return {"on_assign": on_assign, "on_revoke": on_revoke}

    def poll_until(consumers: list[Consumer], predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        while not predicate():
            assert time.monotonic() < deadline, f"{what} not reached in 30s: {assigned}"
            for c in consumers:
                c.consume(num_messages=100, timeout=0.05)  # serves the rebalance callbacks

    x = _consumer(group_stack, group, **{"group.instance.id": "static-x", "client.id": "x"})
    y = _consumer(group_stack, group, **{"group.instance.id": "static-y", "client.id": "y"})
    x2: Consumer | None = None
    try:
        x.subscribe([topic], **callbacks("x"))
        y.subscribe([topic], **callbacks("y"))
        both = lambda: (  # noqa: E731
            "x" in assigned
            and "y" in assigned
            and sorted(assigned["x"] + assigned["y"]) == list(range(partitions))
        )
        poll_until([x, y], both, "x and y sharing the partitions")
        before = dict(assigned)
        revoked_before = dict(revoked)
        state, described = describe(group_stack, group)
        assert state == ConsumerGroupState.STABLE and described == before

        # A static member's close sends no LeaveGroup; its comeback within the session
        # timeout gets its old partitions and the other member sees no rebalance.
        x.close()
        x2 = _consumer(group_stack, group, **{"group.instance.id": "static-x", "client.id": "x"})
        x2.subscribe([topic], **callbacks("x2"))
        poll_until([x2, y], lambda: "x2" in assigned, "the static member back")
        assert assigned["x2"] == before["x"]
        # y went on heartbeating through all this: give it a heartbeat round to hear of any
        # rebalance, observed as the coordinator describing the group Stable as before.
        state, described = describe(group_stack, group)
        assert state == ConsumerGroupState.STABLE
        assert described == {"x": before["x"], "y": before["y"]}
        for _ in range(10):
            y.consume(num_messages=100, timeout=0.1)
        assert revoked["y"] == revoked_before["y"], "the other member was rebalanced"
        assert assigned["y"] == before["y"]
    finally:
        if x2 is not None:
            x2.close()
        y.close()


def test_lone_consumer_joins_within_the_initial_delay(group_stack: Stack) -> None:
    topic = "lonely"
    create_topic(group_stack, topic, 2)
    joined = threading.Event()
    consumer = _consumer(group_stack, "loner")
    try:
        started = time.monotonic()
        consumer.subscribe([topic], on_assign=lambda _c, _tps: joined.set())
        while not joined.is_set():
            assert time.monotonic() - started < INITIAL_DELAY_MS / 1000 + 5, "first join too slow"
            consumer.consume(num_messages=1, timeout=0.1)
        took = time.monotonic() - started
    finally:
        consumer.close()
    assert took < INITIAL_DELAY_MS / 1000 + 5


def _call(stack: Stack, api_key: int, version: int, request: object) -> object:
    """One request on its own raw connection; the decoded response body."""
    header = RequestHeader(
        request_api_key=api_key, request_api_version=version, correlation_id=1, client_id="raw"
    )
    with socket.create_connection(("127.0.0.1", stack.kafka_port), timeout=10) as sock:
        sock.sendall(encode_request(header, request))
        reader = sock.makefile("rb")
        (size,) = struct.unpack(">i", reader.read(4))
        _, body = decode_response(reader.read(size), api_key, version)
    return body


@pytest.mark.parametrize("version", [1, 3])
def test_leave_group_of_an_unknown_member_is_refused(group_stack: Stack, version: int) -> None:
    """LeaveGroup v0-2 carry one member and one error code: an unknown member gets
    UNKNOWN_MEMBER_ID there, as v3+ gets it per member."""
    if version < 3:
        request = LeaveGroupRequest(group_id="nobody-here", member_id="ghost")
    else:
        request = LeaveGroupRequest(
            group_id="nobody-here", members=[LeaveGroupRequest.MemberIdentity(member_id="ghost")]
        )
    response = _call(group_stack, 13, version, request)
    assert isinstance(response, LeaveGroupResponse)
    if version < 3:
        assert response.error_code == UNKNOWN_MEMBER_ID
    else:
        assert response.error_code == 0
        assert [m.error_code for m in response.members] == [UNKNOWN_MEMBER_ID]
