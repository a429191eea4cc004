"""Kafka cluster APIs over a cluster view: Metadata brokers, leaders (with zones), controller and
epochs; DescribeCluster; FindCoordinator v0-v4. The handlers run against a real KafkaBroker on
a real (SQLite) metadata store; no listener or pipeline is needed for these APIs."""

from __future__ import annotations

import asyncio
import collections
import pathlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from ingest.cluster import ClusterView
from ingest.kafka import api_cluster
from ingest.kafka.broker import CLUSTER_ID, LEADER_EPOCH, KafkaBroker
from metadata import AgentInfo
from metadata.async_store import AsyncMetadata
from streamhouse.config import load_settings
from streamhouse.kafka.messages import (
    DescribeClusterRequest,
    FindCoordinatorRequest,
    MetadataRequest,
    RequestHeader,
)

T = TypeVar("T")

INVALID_REQUEST = 42


def agent(node_id: int, zone: str = "", alive: bool = True) -> AgentInfo:
    return AgentInfo(
        agent_id=f"agent-{node_id}",
        node_id=node_id,
        kafka_host=f"host{node_id}",
        kafka_port=9090 + node_id,
        grpc_address=f"host{node_id}:50051",
        zone=zone,
        started_at_ms=1,
        heartbeat_at_ms=2,
        lease_until_ms=3 if not alive else 10**13,
        alive=alive,
    )


def header(api_key: int, version: int, client_id: str | None = "test") -> RequestHeader:
    return RequestHeader(
        request_api_key=api_key, request_api_version=version, correlation_id=1, client_id=client_id
    )


def run_with_broker(
    tmp_path: pathlib.Path,
    cluster: ClusterView,
    body: Callable[[KafkaBroker], Awaitable[T]],
) -> T:
    settings = load_settings(
        {"STREAMHOUSE_DATA_DIR": str(tmp_path), "STREAMHOUSE_KAFKA_AUTO_CREATE_TOPICS": "false"}
    )

    async def scenario() -> T:
        meta = await AsyncMetadata.open(tmp_path / "metadata.sqlite", forbid_loop_calls=True)
        try:
            await meta.create_topic("events", 30, {})
            broker = KafkaBroker(settings, meta, None, cluster)  # type: ignore[arg-type]
            try:
                return await body(broker)
            finally:
                await broker.stop()
        finally:
            await meta.close()

    return asyncio.run(scenario())


def three_agents() -> ClusterView:
    """Agent 1's view of agents 0 (zone a), 1 (zone a), 2 (zone b) and a dead 3 (zone b)."""
    view = ClusterView(agent(1, "a"))
    view.update([agent(0, "a"), agent(1, "a"), agent(2, "b"), agent(3, "b", alive=False)])
    return view


def metadata_request(topics: list[str] | None) -> MetadataRequest:
    if topics is None:
        return MetadataRequest(topics=None)
    return MetadataRequest(topics=[MetadataRequest.MetadataRequestTopic(name=t) for t in topics])


def test_metadata_lists_live_agents_and_spreads_leaders(tmp_path: pathlib.Path) -> None:
    view = three_agents()

    async def body(broker: KafkaBroker) -> Any:
        topic = await broker.meta.get_topic("events")
        response = await api_cluster.metadata(broker, header(3, 12), metadata_request(["events"]))
        return response, topic

    response, events = run_with_broker(tmp_path, view, body)
    assert [(b.node_id, b.host, b.port, b.rack) for b in response.brokers] == [
        (0, "host0", 9090, "a"),
        (1, "host1", 9091, "a"),
        (2, "host2", 9092, "b"),
    ]
    assert response.controller_id == 0
    assert response.cluster_id == CLUSTER_ID
    (topic,) = response.topics
    assert topic.error_code == 0 and len(topic.partitions) == 30
    leaders = [p.leader_id for p in topic.partitions]
    assert set(leaders) == {0, 1, 2}
    for p in topic.partitions:
        assert p.replica_nodes == [p.leader_id] == p.isr_nodes
        assert p.offline_replicas == []
        assert p.leader_epoch == api_cluster.METADATA_LEADER_EPOCH == -1
    # The leaders are the view's rendezvous choices for this topic.
    assert leaders == [a.node_id for a in view.leaders(events.topic_id, 30)]
    assert collections.Counter(leaders).most_common(1)[0][1] <= 20


def test_metadata_leaders_follow_the_clients_zone(tmp_path: pathlib.Path) -> None:
    view = three_agents()

    async def body(broker: KafkaBroker) -> list[list[int]]:
        out = []
        for client_id in ("app,streamhouse_az=a", "streamhouse_az=b", "streamhouse_az=c", None):
            response = await api_cluster.metadata(
                broker, header(3, 9, client_id), metadata_request(None)
            )
            assert len(response.brokers) == 3  # every live agent, whatever the zone
            (topic,) = response.topics
            out.append([p.leader_id for p in topic.partitions])
        return out

    in_a, in_b, in_c, no_zone = run_with_broker(tmp_path, view, body)
    assert set(in_a) == {0, 1}
    assert set(in_b) == {2}  # agent 3 of zone b is dead
    assert in_c == no_zone and set(no_zone) == {0, 1, 2}


def test_single_agent_is_node_0_everywhere(tmp_path: pathlib.Path) -> None:
    view = ClusterView.single(agent(0))

    async def body(broker: KafkaBroker) -> Any:
        md = await api_cluster.metadata(broker, header(3, 1), metadata_request(["events", "nope"]))
        described = await api_cluster.describe_cluster(
            broker, header(60, 0), DescribeClusterRequest()
        )
        found = await api_cluster.find_coordinator(
            broker, header(10, 2), FindCoordinatorRequest(key="g", key_type=0)
        )
        return md, described, found

    md, described, found = run_with_broker(tmp_path, view, body)
    assert [(b.node_id, b.rack) for b in md.brokers] == [(0, None)]
    assert md.controller_id == 0
    events, nope = md.topics
    assert {p.leader_id for p in events.partitions} == {0}
    assert nope.error_code == 3  # UNKNOWN_TOPIC_OR_PARTITION (auto-creation off)
    assert [(b.broker_id, b.host, b.port) for b in described.brokers] == [(0, "host0", 9090)]
    assert described.controller_id == 0
    assert (found.error_code, found.node_id, found.host, found.port) == (0, 0, "host0", 9090)


def test_describe_cluster_lists_live_agents(tmp_path: pathlib.Path) -> None:
    async def body(broker: KafkaBroker) -> Any:
        return await api_cluster.describe_cluster(broker, header(60, 1), DescribeClusterRequest())

    response = run_with_broker(tmp_path, three_agents(), body)
    assert response.error_code == 0 and response.controller_id == 0
    assert [(b.broker_id, b.rack) for b in response.brokers] == [(0, "a"), (1, "a"), (2, "b")]


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_find_coordinator_answers_the_groups_coordinator(
    tmp_path: pathlib.Path, version: int
) -> None:
    view = three_agents()
    groups = [f"g{i}" for i in range(30)]

    async def body(broker: KafkaBroker) -> list[Any]:
        return [
            await api_cluster.find_coordinator(
                broker, header(10, version, "streamhouse_az=b"), FindCoordinatorRequest(key=g)
            )
            for g in groups
        ]

    answers = run_with_broker(tmp_path, view, body)
    for group, answer in zip(groups, answers, strict=True):
        expected = view.coordinator_for(group)
        assert answer.error_code == 0
        assert (answer.node_id, answer.host, answer.port) == (
            expected.node_id,
            expected.kafka_host,
            expected.kafka_port,
        )
    assert {a.node_id for a in answers} == {0, 1, 2}  # zones play no part


def test_find_coordinator_v4_batches_and_answers_transactions(tmp_path: pathlib.Path) -> None:
    view = three_agents()

    async def body(broker: KafkaBroker) -> Any:
        groups = await api_cluster.find_coordinator(
            broker, header(10, 4), FindCoordinatorRequest(key_type=0, coordinator_keys=["x", "y"])
        )
        txn = await api_cluster.find_coordinator(
            broker, header(10, 4), FindCoordinatorRequest(key_type=1, coordinator_keys=["t", ""])
        )
        txn_v3 = await api_cluster.find_coordinator(
            broker, header(10, 3), FindCoordinatorRequest(key="t", key_type=1)
        )
        share = await api_cluster.find_coordinator(
            broker, header(10, 3), FindCoordinatorRequest(key="s", key_type=2)
        )
        return groups, txn, txn_v3, share

    groups, txn, txn_v3, share = run_with_broker(tmp_path, view, body)
    assert [(c.key, c.node_id, c.error_code) for c in groups.coordinators] == [
        ("x", view.coordinator_for("x").node_id, 0),
        ("y", view.coordinator_for("y").node_id, 0),
    ]
    # A transactional id has the coordinator of the same rendezvous; an empty one has none.
    t, empty = txn.coordinators
    assert (t.key, t.node_id, t.error_code) == ("t", view.coordinator_for("t").node_id, 0)
    assert (empty.node_id, empty.error_code) == (-1, INVALID_REQUEST)
    assert (txn_v3.error_code, txn_v3.node_id) == (0, view.coordinator_for("t").node_id)
    # Share groups (key type 2) are not served: refused with the reason.
    assert (share.error_code, share.node_id) == (INVALID_REQUEST, -1)
    assert "key type 2" in share.error_message


def test_the_log_keeps_leader_epoch_0() -> None:
    """ListOffsets and OffsetForLeaderEpoch answer epoch 0 (a -1 there makes librdkafka reset
    the consumer's offset), while Metadata says the leader epoch is unknown."""
    assert LEADER_EPOCH == 0
    assert api_cluster.METADATA_LEADER_EPOCH == -1
