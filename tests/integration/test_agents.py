"""Two agents (two whole stacks) sharing one PostgreSQL metadata database and one objects
folder: both register, both appear in `streamctl cluster` and as Kafka brokers, partition
leadership and group coordination are spread over them and agreed by both, zones steer a
client's leaders, and a stopped agent drops out of the other's Metadata within its lease while
a librdkafka producer follows its partitions to the survivor."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from ingest.cluster import Membership
from metadata import open_store
from metadata.async_store import AsyncMetadata
from streamhouse.client import Client
from streamhouse.config import load_settings
from streamhouse.kafka.framing import decode_response, encode_request
from streamhouse.kafka.messages import (
    DescribeClusterRequest,
    DescribeClusterResponse,
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    MetadataRequest,
    MetadataResponse,
    RequestHeader,
)
from streamhouse.testing import PROGRAMS, TEST_SETTINGS, Stack, free_port

T = TypeVar("T")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
HEARTBEAT_MS = 200
LEASE_MS = 1000
DEADLINE_S = 20.0


def poll_until(check: Callable[[], T | None], what: str, timeout: float = DEADLINE_S) -> T:
    """Polls `check` until it returns something truthy; fails naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def agents(tmp_path: pathlib.Path, postgres_dsn: str) -> Iterator[tuple[Stack, Stack]]:
    """Agent a (zone z1) and agent b (zone z2) on one database and one objects folder."""
    shared = {
        "STREAMHOUSE_METADATA": postgres_dsn,
        "STREAMHOUSE_OBJECT_STORE": (tmp_path / "objects").as_uri(),
        "STREAMHOUSE_AGENT_HEARTBEAT_MS": str(HEARTBEAT_MS),
        "STREAMHOUSE_AGENT_LEASE_MS": str(LEASE_MS),
    }
    (tmp_path / "objects").mkdir()
    a = Stack(
        tmp_path / "a", {**shared, "STREAMHOUSE_AGENT_ZONE": "z1", "STREAMHOUSE_AGENT_ID": "a"}
    )
    b = Stack(
        tmp_path / "b", {**shared, "STREAMHOUSE_AGENT_ZONE": "z2", "STREAMHOUSE_AGENT_ID": "b"}
    )
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        b.stop()
        a.stop()


def kafka_call(stack: Stack, api_key: int, version: int, request: Any, client_id: str = "t") -> Any:
    """One request on its own raw connection to the stack's Kafka port; the response body."""
    header = RequestHeader(
        request_api_key=api_key, request_api_version=version, correlation_id=1, client_id=client_id
    )
    with socket.create_connection(("127.0.0.1", stack.kafka_port), timeout=10) as sock:
        sock.sendall(encode_request(header, request))
        reader = sock.makefile("rb")
        (size,) = struct.unpack(">i", reader.read(4))
        _, body = decode_response(reader.read(size), api_key, version)
    return body


def metadata(stack: Stack, topic: str | None = None, client_id: str = "t") -> MetadataResponse:
    topics = None if topic is None else [MetadataRequest.MetadataRequestTopic(name=topic)]
    response = kafka_call(stack, 3, 12, MetadataRequest(topics=topics), client_id)
    assert isinstance(response, MetadataResponse)
    return response


def brokers(response: MetadataResponse) -> dict[int, tuple[str, int, str | None]]:
    return {b.node_id: (b.host, b.port, b.rack) for b in response.brokers}


def leaders(response: MetadataResponse) -> dict[int, int]:
    (topic,) = response.topics
    assert topic.error_code == 0, topic
    return {p.partition_index: p.leader_id for p in topic.partitions}


def streamctl_cluster(stack: Stack) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "STREAMHOUSE_ADDR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "streamhouse.streamctl", "--server", stack.grpc_address]
        + ["cluster", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def both_registered(a: Stack, b: Stack) -> dict[int, tuple[str, int, str | None]] | None:
    """The brokers both agents list once each sees the other (at its next heartbeat)."""
    seen_a, seen_b = brokers(metadata(a)), brokers(metadata(b))
    return seen_a if len(seen_a) == 2 and seen_a == seen_b else None


def test_two_agents_form_one_cluster(agents: tuple[Stack, Stack]) -> None:
    a, b = agents
    listed = poll_until(lambda: both_registered(a, b), "both agents in each one's Metadata")
    # Node ids 0 and 1 (in registration order), advertised addresses, zones as racks.
    assert listed == {
        0: ("127.0.0.1", a.kafka_port, "z1"),
        1: ("127.0.0.1", b.kafka_port, "z2"),
    }
    assert metadata(a).controller_id == metadata(b).controller_id == 0

    # streamctl cluster, through either agent: both alive, with their addresses and zones.
    rows = streamctl_cluster(b)
    assert [(r["agent_id"], r["node_id"], r["state"], r["zone"]) for r in rows] == [
        ("a", 0, "alive", "z1"),
        ("b", 1, "alive", "z2"),
    ]
    assert rows[0]["kafka_address"] == f"127.0.0.1:{a.kafka_port}"
    assert rows[1]["grpc_address"] == b.grpc_address
    assert all(0 <= r["seconds_since_heartbeat"] < LEASE_MS / 1000 for r in rows)
    with Client(a.grpc_address) as client:
        response = client.describe_cluster()
        assert response.answered_by == "a"
        assert [x.agent_id for x in response.agents] == ["a", "b"]

    # DescribeCluster over Kafka lists both too.
    described = kafka_call(a, 60, 0, DescribeClusterRequest())
    assert isinstance(described, DescribeClusterResponse)
    assert sorted(x.broker_id for x in described.brokers) == [0, 1]

    # confluent-kafka sees two brokers and partitions led by both, the same through either.
    with Client(a.grpc_address) as client:
        client.create_topic("spread", partitions=24)
    views = []
    for stack in (a, b):
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{stack.kafka_port}"})
        md = admin.list_topics(topic="spread", timeout=10)
        assert sorted(md.brokers) == [0, 1]
        views.append({p: x.leader for p, x in md.topics["spread"].partitions.items()})
    assert views[0] == views[1]
    counts = collections.Counter(views[0].values())
    assert set(counts) == {0, 1} and min(counts.values()) >= 4, counts
    for p, x in admin.list_topics(topic="spread", timeout=10).topics["spread"].partitions.items():
        assert x.replicas == [views[0][p]] and x.isrs == [views[0][p]]

    # Every group has exactly one coordinator, the same whichever agent is asked (v3 and v4).
    groups = [f"group-{i}" for i in range(40)]
    answers: dict[str, set[int]] = collections.defaultdict(set)
    for stack in (a, b):
        for group in groups[:10]:
            one = kafka_call(stack, 10, 3, FindCoordinatorRequest(key=group, key_type=0))
            assert isinstance(one, FindCoordinatorResponse) and one.error_code == 0
            answers[group].add(one.node_id)
            assert one.port == (a.kafka_port if one.node_id == 0 else b.kafka_port)
        many = kafka_call(stack, 10, 4, FindCoordinatorRequest(key_type=0, coordinator_keys=groups))
        for c in many.coordinators:
            assert c.error_code == 0
            answers[c.key].add(c.node_id)
    assert all(len(nodes) == 1 for nodes in answers.values()), answers
    coordinators = collections.Counter(next(iter(n)) for n in answers.values())
    assert set(coordinators) == {0, 1}, coordinators


def test_zone_in_client_id_steers_leaders(agents: tuple[Stack, Stack]) -> None:
    a, b = agents
    poll_until(lambda: both_registered(a, b), "both agents in each one's Metadata")
    with Client(a.grpc_address) as client:
        client.create_topic("zoned", partitions=16)
    anywhere = leaders(metadata(a, "zoned"))
    assert set(anywhere.values()) == {0, 1}
    in_z1 = leaders(metadata(b, "zoned", client_id="billing,streamhouse_az=z1"))
    in_z2 = leaders(metadata(a, "zoned", client_id="streamhouse_az=z2"))
    assert set(in_z1.values()) == {0} and set(in_z2.values()) == {1}
    # A zone with no live agent: every live agent, as without a zone.
    assert leaders(metadata(a, "zoned", client_id="streamhouse_az=z9")) == anywhere
    # Brokers are listed in full whatever the zone; coordinators ignore it.
    assert len(metadata(a, "zoned", client_id="streamhouse_az=z1").brokers) == 2
    plain = kafka_call(a, 10, 3, FindCoordinatorRequest(key="g", key_type=0))
    zoned = kafka_call(a, 10, 3, FindCoordinatorRequest(key="g", key_type=0), "streamhouse_az=z1")
    zoned_b = kafka_call(b, 10, 3, FindCoordinatorRequest(key="g", key_type=0), "streamhouse_az=z2")
    assert plain.node_id == zoned.node_id == zoned_b.node_id


def test_a_stopped_agent_leaves_and_clients_follow_its_partitions(
    agents: tuple[Stack, Stack],
) -> None:
    a, b = agents
    poll_until(lambda: both_registered(a, b), "both agents in each one's Metadata")
    partitions = 8
    with Client(a.grpc_address) as client:
        client.create_topic("moving", partitions=partitions)
    before = leaders(metadata(a, "moving"))
    assert set(before.values()) == {0, 1}

    producer = Producer(
        {
            "bootstrap.servers": f"127.0.0.1:{a.kafka_port},127.0.0.1:{b.kafka_port}",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 60_000,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )
    delivered: dict[int, int] = collections.Counter()
    failed: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            delivered[msg.partition()] += 1
        else:
            failed.append(str(err))

    def produce_round(tag: str) -> None:
        for p in range(partitions):
            producer.produce(
                "moving", value=f"{tag}-{p}".encode(), partition=p, on_delivery=on_delivery
            )
        remaining = producer.flush(60)
        assert remaining == 0, f"{remaining} records undelivered"

    produce_round("before")
    assert failed == [] and all(delivered[p] == 1 for p in range(partitions)), delivered

    b.stop()  # returns once all of b's processes have exited (b deregistered first)
    # a's Metadata shows only itself within the lease (b deregistered, so sooner).
    only_a = poll_until(
        lambda: (m := metadata(a, "moving")) and len(m.brokers) == 1 and m,
        "agent b gone from agent a's Metadata",
        timeout=LEASE_MS / 1000 + 5,
    )
    assert brokers(only_a) == {0: ("127.0.0.1", a.kafka_port, "z1")}
    assert set(leaders(only_a).values()) == {0}
    assert only_a.controller_id == 0
    rows = {r["agent_id"]: r for r in streamctl_cluster(a)}
    assert rows["a"]["state"] == "alive" and rows["b"]["state"] == "stopped"

    # The producer moves b's partitions to a after its metadata refresh (leader epochs are
    # "unknown", so librdkafka takes the new leader) and every record is delivered.
    produce_round("after")
    assert failed == [], failed
    assert all(delivered[p] == 2 for p in range(partitions)), delivered
    with Client(a.grpc_address) as client:
        for p in range(partitions):
            records, _, high_watermark, _ = client.consume("moving", p, 0, max_records=10)
            assert [r.value for r in records] == [f"before-{p}".encode(), f"after-{p}".encode()]
            assert high_watermark == 2


def test_streamhouse_up_flags_start_an_agent_of_the_cluster(
    tmp_path: pathlib.Path, postgres_dsn: str
) -> None:
    """`streamhouse up --metadata ... --zone ...` as the README runs agents: it registers with
    the flags' id, zone and addresses, and SIGTERM stops it cleanly (state stopped)."""
    kafka_port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMHOUSE_")}
    env.update(TEST_SETTINGS)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    argv = [
        sys.executable, "-m", "streamhouse.cli", "up",
        "--metadata", postgres_dsn,
        "--object-store", (tmp_path / "objects").as_uri(),
        "--data-dir", str(tmp_path / "agent"),
        "--kafka-listen", f"127.0.0.1:{kafka_port}",
        "--grpc-listen", f"127.0.0.1:{grpc_port}",
        "--grpc-advertised", f"localhost:{grpc_port}",
        "--agent-id", "up-agent",
        "--zone", "z7",
    ]  # fmt: skip
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    log.close()
    try:

        def described() -> Any:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            try:
                with Client(f"127.0.0.1:{grpc_port}", timeout=2) as client:
                    return client.describe_cluster()
            except Exception:
                return None

        response = poll_until(described, "the agent started by streamhouse up answering", 60)
        (me,) = response.agents
        assert (me.agent_id, me.node_id, me.zone, me.state) == ("up-agent", 0, "z7", "alive")
        assert me.kafka_address == f"127.0.0.1:{kafka_port}"
        assert me.grpc_address == f"localhost:{grpc_port}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Deregistered on the way out: the row says stopped.
    store = open_store(postgres_dsn)
    try:
        (row,) = store.list_agents()
        assert row.agent_id == "up-agent" and not row.alive
        assert row.lease_until_ms - row.heartbeat_at_ms < 4000  # ended early: a clean stop
    finally:
        store.close()


def test_a_killed_agent_expires_from_the_others_view_within_its_lease(
    agents: tuple[Stack, Stack],
) -> None:
    """kill -9 of every process of agent b (nothing deregisters): agent a drops it once its
    lease runs out, and streamctl shows it expired."""
    a, b = agents
    poll_until(lambda: both_registered(a, b), "both agents in each one's Metadata")
    assert b.proc is not None
    pids = [b.pid(program) for program in PROGRAMS] + [b.proc.pid]
    assert all(pids), pids
    killed_at = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    b.proc.wait(30)
    gone = poll_until(
        lambda: (m := metadata(a)) and len(m.brokers) == 1 and m,
        "the killed agent gone from agent a's Metadata",
        timeout=LEASE_MS / 1000 + 10,
    )
    took = time.monotonic() - killed_at
    print(f"killed agent gone from the other's Metadata after {took:.2f} s (lease {LEASE_MS} ms)")
    # At most a lease plus a heartbeat of a's (with slack for a loaded machine).
    assert took < (LEASE_MS + 2 * HEARTBEAT_MS) / 1000 + 2.0, took
    assert brokers(gone) == {0: ("127.0.0.1", a.kafka_port, "z1")}
    rows = {r["agent_id"]: r for r in streamctl_cluster(a)}
    assert rows["b"]["state"] == "expired" and rows["b"]["alive"] is False
    assert rows["b"]["seconds_since_heartbeat"] >= LEASE_MS / 1000
    # Every group is now coordinated by a.
    for group in ("g1", "g2", "g3", "g4"):
        answer = kafka_call(a, 10, 3, FindCoordinatorRequest(key=group, key_type=0))
        assert (answer.error_code, answer.node_id) == (0, 0)


def test_heartbeats_ride_out_a_metadata_restart(
    tmp_path: pathlib.Path,
    postgres: Any,
    postgres_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL stopped for longer than the lease: the agent logs the outage once, keeps its
    view, and registers anew (a new incarnation, same node id) once the server is back."""
    settings = load_settings(
        {
            "STREAMHOUSE_DATA_DIR": str(tmp_path),
            "STREAMHOUSE_METADATA": postgres_dsn,
            "STREAMHOUSE_AGENT_ID": "survivor",
            "STREAMHOUSE_AGENT_HEARTBEAT_MS": "100",
            "STREAMHOUSE_AGENT_LEASE_MS": "400",
        }
    )

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        async def until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
            deadline = loop.time() + timeout
            while not check():
                assert loop.time() < deadline, what
                await asyncio.sleep(0.02)

        meta = await AsyncMetadata.open(postgres_dsn, busy_timeout_ms=300, forbid_loop_calls=True)
        task: asyncio.Task[None] | None = None
        try:
            membership = Membership(settings, meta)
            view = await membership.join()
            first = view.self_agent
            task = asyncio.ensure_future(membership.run())
            await asyncio.to_thread(postgres.stop_server)
            try:
                await until(lambda: "heartbeat failed" in caplog.text, "a failed heartbeat")
                renewed = membership._last_renewed
                assert renewed is not None
                await until(lambda: loop.time() - renewed > 1.0, "the lease to lapse")
                assert view.live() == [view.self_agent]  # still serving on its last view
            finally:
                await asyncio.to_thread(postgres.start_server)
            await until(lambda: "succeeded again" in caplog.text, "a heartbeat after the restart")
            await until(
                lambda: view.self_agent.started_at_ms > first.started_at_ms,
                "a new registration",
            )
            assert not task.done()
            assert caplog.text.count("heartbeat failed") == 1
            (row,) = await meta.list_agents()
            assert (row.agent_id, row.node_id, row.alive) == ("survivor", first.node_id, True)
        finally:
            if task is not None:
                task.cancel()
            await meta.close()

    with caplog.at_level(logging.INFO, logger="ingest.cluster"):
        asyncio.run(scenario())
