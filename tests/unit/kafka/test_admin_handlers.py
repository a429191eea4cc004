"""Issue 11's admin handlers on a cluster view of several agents, against a real (SQLite)
metadata store and a real KafkaBroker (no listener): what only several agents show (each
agent's log dir holds the partitions it leads; broker resources of other agents), request
shapes clients rarely send (the cluster-default broker resource, DescribeTopicPartitions
cursors, ElectLeaders of everything), and the encoded answers of the versions advertised."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from ingest.cluster import ClusterView
from ingest.kafka import api_admin, api_cluster, api_storage
from ingest.kafka.broker import ADVERTISED, KafkaBroker
from metadata import AgentInfo
from metadata.async_store import AsyncMetadata
from streamhouse.config import load_settings
from streamhouse.kafka.framing import encode_response
from streamhouse.kafka.messages import (
    AlterConfigsRequest,
    CreatePartitionsRequest,
    CreateTopicsRequest,
    DescribeClusterRequest,
    DescribeConfigsRequest,
    DescribeLogDirsRequest,
    DescribeTopicPartitionsRequest,
    ElectLeadersRequest,
    IncrementalAlterConfigsRequest,
    MetadataRequest,
    RequestHeader,
)

T = TypeVar("T")
INVALID_REQUEST, INVALID_CONFIG, INVALID_REPLICA_ASSIGNMENT = 42, 40, 39


def agent(node_id: int) -> AgentInfo:
    return AgentInfo(
        agent_id=f"agent-{node_id}",
        node_id=node_id,
        kafka_host=f"host{node_id}",
        kafka_port=9090 + node_id,
        grpc_address=f"host{node_id}:50051",
        zone="",
        started_at_ms=1,
        heartbeat_at_ms=2,
        lease_until_ms=10**13,
        alive=True,
    )


def view_of(me: int, nodes: int = 3) -> ClusterView:
    view = ClusterView(agent(me))
    view.update([agent(n) for n in range(nodes)])
    return view


def header(api_key: int, version: int) -> RequestHeader:
    return RequestHeader(
        request_api_key=api_key, request_api_version=version, correlation_id=1, client_id="t"
    )


def run(
    tmp_path: pathlib.Path,
    views: list[ClusterView],
    body: Callable[[list[KafkaBroker]], Awaitable[T]],
) -> T:
    """`body` with one broker per view, all on one metadata store holding topic events (30
    partitions)."""
    settings = load_settings({"STREAMHOUSE_DATA_DIR": str(tmp_path)})

    async def scenario() -> T:
        meta = await AsyncMetadata.open(tmp_path / "metadata.sqlite", forbid_loop_calls=True)
        brokers: list[KafkaBroker] = []
        try:
            await meta.create_topic("events", 30, {})
            brokers = [KafkaBroker(settings, meta, None, v) for v in views]  # type: ignore[arg-type]
            return await body(brokers)
        finally:
            for b in brokers:
                await b.stop()
            await meta.close()

    return asyncio.run(scenario())


def test_each_agent_describes_the_partitions_it_leads(tmp_path: pathlib.Path) -> None:
    """Summed over the agents (as admin clients do), every partition is counted once."""

    async def body(brokers: list[KafkaBroker]) -> list[Any]:
        return [
            await api_storage.describe_log_dirs(
                b, header(35, 4), DescribeLogDirsRequest(topics=None)
            )
            for b in brokers
        ]

    views = [view_of(n) for n in range(3)]
    answers = run(tmp_path, views, body)
    seen: list[int] = []
    topic_id = _topic_id(tmp_path)
    for me, answer in enumerate(answers):
        (log_dir,) = answer.results
        assert log_dir.log_dir == (tmp_path / "objects").as_uri()
        (topic,) = log_dir.topics
        mine = [p.partition_index for p in topic.partitions]
        seen += mine
        assert all(p.partition_size == 0 and p.offset_lag == 0 for p in topic.partitions)
        assert mine  # 30 partitions over 3 agents: each leads some
        for p in mine:  # the partitions it leads by the view's rendezvous choice
            assert views[me].leader_for(topic_id, p).node_id == me
    assert sorted(seen) == list(range(30))


def _topic_id(tmp_path: pathlib.Path) -> int:
    with sqlite3.connect(f"file:{tmp_path / 'metadata.sqlite'}?mode=ro", uri=True) as db:
        (row,) = db.execute("SELECT topic_id FROM topics WHERE name = 'events'").fetchall()
    return int(row[0])


def test_broker_resources_of_this_agent_and_the_cluster_default(tmp_path: pathlib.Path) -> None:
    R = DescribeConfigsRequest.DescribeConfigsResource

    async def body(brokers: list[KafkaBroker]) -> Any:
        (b,) = brokers
        described = await api_admin.describe_configs(
            b,
            header(32, 4),
            DescribeConfigsRequest(
                resources=[
                    R(resource_type=4, resource_name="1", configuration_keys=["node.id"]),
                    R(resource_type=4, resource_name="", configuration_keys=None),
                    R(resource_type=4, resource_name="2", configuration_keys=None),
                    R(resource_type=32, resource_name="g", configuration_keys=None),
                    R(resource_type=8, resource_name="1", configuration_keys=None),
                ]
            ),
        )
        A = AlterConfigsRequest.AlterConfigsResource
        altered = await api_admin.alter_configs(
            b,
            header(33, 2),
            AlterConfigsRequest(
                resources=[
                    A(resource_type=4, resource_name="1", configs=[]),
                    A(
                        resource_type=4,
                        resource_name="1",
                        configs=[AlterConfigsRequest.AlterableConfig(name="x.y", value="1")],
                    ),
                ]
            ),
        )
        return described, altered

    described, altered = run(tmp_path, [view_of(1)], body)
    own, default, other, group, logger = described.results
    assert [(c.name, c.value, c.read_only) for c in own.configs] == [("node.id", "1", True)]
    assert default.error_code == 0 and len(default.configs) > 20
    assert other.error_code == INVALID_REQUEST and "node 1" in other.error_message
    assert group.error_code == 0 and {c.name for c in group.configs} == set(api_admin.GROUP_CONFIGS)
    assert logger.error_code == 0
    levels = {c.name: c.value for c in logger.configs}
    assert (
        levels["root"]
        == {10: "DEBUG", 20: "INFO", 30: "WARN", 40: "ERROR", 50: "FATAL"}[
            logging.root.getEffectiveLevel()
        ]
    )
    assert "ingest.kafka.admin" in levels
    empty, unknown = altered.responses
    assert empty.error_code == 0  # nothing to change: Kafka accepts it too
    assert unknown.error_code == INVALID_CONFIG and "x.y" in unknown.error_message
    # The answers encode at every advertised version.
    for version in range(ADVERTISED[32][1], ADVERTISED[32][2] + 1):
        encode_response(header(32, version), 32, version, described)


def test_incremental_alter_of_a_broker_config_names_the_setting(tmp_path: pathlib.Path) -> None:
    Inc = IncrementalAlterConfigsRequest

    async def body(brokers: list[KafkaBroker]) -> Any:
        return await api_admin.incremental_alter_configs(
            brokers[0],
            header(44, 1),
            Inc(
                resources=[
                    Inc.AlterConfigsResource(
                        resource_type=4,
                        resource_name="0",
                        configs=[
                            Inc.AlterableConfig(
                                name="message.max.bytes", config_operation=0, value="5"
                            )
                        ],
                    )
                ]
            ),
        )

    (answer,) = run(tmp_path, [view_of(0, 1)], body).responses
    assert answer.error_code == INVALID_CONFIG
    assert "STREAMHOUSE_MAX_BATCH_BYTES" in answer.error_message


@pytest.mark.parametrize(
    ("assignment", "counts", "code"),
    [
        ([[0, 1], [1, 2], [2, 0]], (-1, -1), 0),
        ([[0], [1]], (2, -1), INVALID_REQUEST),  # Kafka: -1 for both with an assignment
        ([[0], [7]], (-1, -1), INVALID_REPLICA_ASSIGNMENT),  # no broker 7
        ([[0, 1], [1]], (-1, -1), INVALID_REPLICA_ASSIGNMENT),  # uneven factor
        ([[]], (-1, -1), INVALID_REPLICA_ASSIGNMENT),
    ],
)
def test_create_topics_with_an_assignment(
    tmp_path: pathlib.Path, assignment: list[list[int]], counts: tuple[int, int], code: int
) -> None:
    C = CreateTopicsRequest

    async def body(brokers: list[KafkaBroker]) -> Any:
        (b,) = brokers
        answer = await api_admin.create_topics(
            b,
            header(19, 7),
            C(
                topics=[
                    C.CreatableTopic(
                        name="assigned",
                        num_partitions=counts[0],
                        replication_factor=counts[1],
                        assignments=[
                            C.CreatableReplicaAssignment(partition_index=i, broker_ids=ids)
                            for i, ids in enumerate(assignment)
                        ],
                    )
                ]
            ),
        )
        return answer, await b.meta.get_topic("assigned")

    answer, topic = run(tmp_path, [view_of(0)], body)
    (result,) = answer.topics
    assert result.error_code == code, result.error_message
    if code == 0:
        assert topic is not None and topic.partitions == len(assignment)
        expected = ",".join(f"{i}:" + "|".join(map(str, ids)) for i, ids in enumerate(assignment))
        assert topic.config["streamhouse.replica.assignment"] == expected
        assert (result.num_partitions, result.replication_factor) == (3, 2)
    else:
        assert topic is None
        assert result.error_message


def test_describe_topic_partitions_cursor_and_unknown_topics(tmp_path: pathlib.Path) -> None:
    D = DescribeTopicPartitionsRequest

    async def body(brokers: list[KafkaBroker]) -> list[Any]:
        (b,) = brokers
        await b.meta.create_topic("after", 2, {})
        return [
            await api_cluster.describe_topic_partitions(
                b,
                header(75, 0),
                D(
                    topics=[D.TopicRequest(name=n) for n in ("events", "after", "missing")],
                    response_partition_limit=25,
                    cursor=cursor,
                ),
            )
            for cursor in (None, D.Cursor(topic_name="events", partition_index=25))
        ] + [
            await api_cluster.describe_topic_partitions(
                b, header(75, 0), D(topics=[], response_partition_limit=100)
            )
        ]

    first, second, everything = run(tmp_path, [view_of(0, 1)], body)
    assert [(t.name, len(t.partitions)) for t in everything.topics] == [
        ("after", 2),
        ("events", 30),
    ]
    # Names in order: after (2), events (30), missing: the first page stops inside events.
    assert [(t.name, len(t.partitions)) for t in first.topics] == [("after", 2), ("events", 23)]
    assert (first.next_cursor.topic_name, first.next_cursor.partition_index) == ("events", 23)
    names = [(t.name, t.error_code) for t in second.topics]
    assert names == [("events", 0), ("missing", 3)]
    assert [p.partition_index for p in second.topics[0].partitions] == [25, 26, 27, 28, 29]
    assert second.next_cursor is None
    encode_response(header(75, 0), 75, 0, first)


def test_authorized_operations_only_when_asked(tmp_path: pathlib.Path) -> None:
    async def body(brokers: list[KafkaBroker]) -> list[Any]:
        (b,) = brokers
        topics = [MetadataRequest.MetadataRequestTopic(name="events")]
        return [
            await api_cluster.metadata(
                b,
                header(3, 10),
                MetadataRequest(
                    topics=topics,
                    include_cluster_authorized_operations=True,
                    include_topic_authorized_operations=True,
                ),
            ),
            await api_cluster.metadata(b, header(3, 12), MetadataRequest(topics=topics)),
            await api_cluster.describe_cluster(
                b, header(60, 1), DescribeClusterRequest(include_cluster_authorized_operations=True)
            ),
        ]

    asked, plain, cluster = run(tmp_path, [view_of(0, 1)], body)
    assert asked.topics[0].topic_authorized_operations == api_cluster.TOPIC_OPERATIONS
    assert asked.cluster_authorized_operations == api_cluster.CLUSTER_OPERATIONS
    assert plain.topics[0].topic_authorized_operations == -(2**31)
    assert cluster.cluster_authorized_operations == api_cluster.CLUSTER_OPERATIONS
    # READ (3) .. ALTER_CONFIGS (11) on topics, without CLUSTER_ACTION (9) or IDEMPOTENT_WRITE.
    assert api_cluster.TOPIC_OPERATIONS == sum(1 << op for op in (3, 4, 5, 6, 7, 8, 10, 11))


def test_elect_leaders_of_everything_elects_nothing(tmp_path: pathlib.Path) -> None:
    async def body(brokers: list[KafkaBroker]) -> Any:
        return await api_storage.elect_leaders(
            brokers[0], header(43, 2), ElectLeadersRequest(election_type=0, topic_partitions=None)
        )

    answer = run(tmp_path, [view_of(0)], body)
    assert (answer.error_code, answer.replica_election_results) == (0, [])


def test_broker_logger_levels_change_until_restart(tmp_path: pathlib.Path) -> None:
    Inc = IncrementalAlterConfigsRequest
    target = logging.getLogger("ingest.kafka.admin")
    before = target.level

    def alter(*configs: tuple[str, int, str | None], validate_only: bool = False) -> Any:
        return Inc(
            validate_only=validate_only,
            resources=[
                Inc.AlterConfigsResource(
                    resource_type=8,
                    resource_name="0",
                    configs=[
                        Inc.AlterableConfig(name=n, config_operation=op, value=v)
                        for n, op, v in configs
                    ],
                )
            ],
        )

    async def body(brokers: list[KafkaBroker]) -> list[Any]:
        (b,) = brokers
        out = []
        for request in (
            alter(("ingest.kafka.admin", 0, "ERROR"), validate_only=True),
            alter(("ingest.kafka.admin", 0, "TRACE")),
            alter(("ingest.kafka.admin", 0, "LOUD")),
            alter(("no.such.logger", 0, "INFO")),
            alter(("root", 1, None)),
        ):
            (answer,) = (
                await api_admin.incremental_alter_configs(b, header(44, 1), request)
            ).responses
            out.append((answer.error_code, answer.error_message, target.level))
        (answer,) = (
            await api_admin.incremental_alter_configs(
                b, header(44, 1), alter(("ingest.kafka.admin", 1, None))
            )
        ).responses
        out.append((answer.error_code, answer.error_message, target.level))
        return out

    try:
        target.setLevel(logging.WARNING)
        validated, traced, loud, unknown, root, deleted = run(tmp_path, [view_of(0, 1)], body)
    finally:
        target.setLevel(before)
    assert validated == (0, None, logging.WARNING)  # validate_only changes nothing
    assert traced == (0, None, logging.DEBUG)
    assert loud[0] == INVALID_CONFIG and "LOUD" in loud[1] and loud[2] == logging.DEBUG
    assert unknown[0] == INVALID_CONFIG and "no.such.logger" in unknown[1]
    assert root[0] == INVALID_CONFIG
    assert deleted == (0, None, logging.NOTSET)


def test_create_partitions_extends_a_recorded_assignment(tmp_path: pathlib.Path) -> None:
    C = CreateTopicsRequest
    P = CreatePartitionsRequest

    def grow(name: str, count: int, assignments: list[list[int]] | None) -> Any:
        return P(
            topics=[
                P.CreatePartitionsTopic(
                    name=name,
                    count=count,
                    assignments=None
                    if assignments is None
                    else [P.CreatePartitionsAssignment(broker_ids=ids) for ids in assignments],
                )
            ]
        )

    async def body(brokers: list[KafkaBroker]) -> Any:
        (b,) = brokers
        await api_admin.create_topics(
            b,
            header(19, 7),
            C(
                topics=[
                    C.CreatableTopic(
                        name="assigned",
                        num_partitions=-1,
                        replication_factor=-1,
                        assignments=[
                            C.CreatableReplicaAssignment(partition_index=0, broker_ids=[1, 2])
                        ],
                    )
                ]
            ),
        )
        codes = []
        for request in (
            grow("assigned", 3, [[2, 0], [0, 1]]),  # given
            grow("assigned", 4, None),  # none given: the first partition's
            grow("assigned", 6, [[0, 1]]),  # one short
            grow("assigned", 5, [[0, 9]]),  # no broker 9
            grow("assigned", 5, [[0]]),  # factor 1 of 2
            grow("events", 31, [[0]]),  # no recorded assignment: brokers still checked
            grow("events", 32, [[5]]),
        ):
            (answer,) = (await api_admin.create_partitions(b, header(37, 3), request)).results
            codes.append(answer.error_code)
        return (
            codes,
            await b.meta.get_topic("assigned"),
            await b.meta.get_topic("events"),
        )

    codes, assigned, events = run(tmp_path, [view_of(0)], body)
    assert codes == [0, 0, INVALID_REPLICA_ASSIGNMENT, INVALID_REPLICA_ASSIGNMENT] + [
        INVALID_REPLICA_ASSIGNMENT,
        0,
        INVALID_REPLICA_ASSIGNMENT,
    ]
    assert assigned.partitions == 4
    assert assigned.config["streamhouse.replica.assignment"] == "0:1|2,1:2|0,2:0|1,3:1|2"
    assert events.partitions == 31
    assert "streamhouse.replica.assignment" not in events.config


def test_the_recorded_assignment_is_read_only(tmp_path: pathlib.Path) -> None:
    C = CreateTopicsRequest
    A = AlterConfigsRequest
    Inc = IncrementalAlterConfigsRequest
    key = "streamhouse.replica.assignment"

    async def body(brokers: list[KafkaBroker]) -> Any:
        (b,) = brokers
        given = await api_admin.create_topics(
            b,
            header(19, 7),
            C(
                topics=[
                    C.CreatableTopic(
                        name="by-config",
                        num_partitions=1,
                        replication_factor=-1,
                        configs=[C.CreatableTopicConfig(name=key, value="0:0")],
                    ),
                    C.CreatableTopic(
                        name="assigned",
                        num_partitions=-1,
                        replication_factor=-1,
                        assignments=[
                            C.CreatableReplicaAssignment(partition_index=0, broker_ids=[0])
                        ],
                    ),
                ]
            ),
        )

        def alter(configs: dict[str, str]) -> Any:
            return A(
                resources=[
                    A.AlterConfigsResource(
                        resource_type=2,
                        resource_name="assigned",
                        configs=[A.AlterableConfig(name=k, value=v) for k, v in configs.items()],
                    )
                ]
            )

        replaced = await api_admin.alter_configs(b, header(33, 2), alter({"retention.ms": "5"}))
        changed = await api_admin.alter_configs(b, header(33, 2), alter({key: "0:1"}))
        incremental = await api_admin.incremental_alter_configs(
            b,
            header(44, 1),
            Inc(
                resources=[
                    Inc.AlterConfigsResource(
                        resource_type=2,
                        resource_name="assigned",
                        configs=[Inc.AlterableConfig(name=key, config_operation=1, value=None)],
                    )
                ]
            ),
        )
        return given, replaced, changed, incremental, await b.meta.get_topic("assigned")

    given, replaced, changed, incremental, topic = run(tmp_path, [view_of(0)], body)
    assert [t.error_code for t in given.topics] == [INVALID_CONFIG, 0]
    assert replaced.responses[0].error_code == 0
    assert changed.responses[0].error_code == INVALID_CONFIG
    assert incremental.responses[0].error_code == INVALID_CONFIG
    # AlterConfigs replaced the dynamic configs but kept the recorded assignment.
    assert topic.config == {"retention.ms": "5", key: "0:0"}
