"""Issue 11's admin calls against a real StreamHouse, through the Kafka clients' own admin APIs
(confluent-kafka AdminClient, kafka-python KafkaAdminClient, aiokafka):

- every topic config Kafka defines (file.delete.delay.ms, an empty cleanup.policy, ...) is
  accepted, typed and described with its source and whether StreamHouse acts on it;
- broker configs are described truthfully and refused (read-only) with the setting to change;
  group configs are described and refused;
- DescribeLogDirs, AlterReplicaLogDirs, ListPartitionReassignments,
  AlterPartitionReassignments and ElectLeaders answer as one agent on object storage;
- CreateTopics with a manual replica assignment is accepted and its assignment described;
- a consumer's Metadata request that allows auto-creation creates the topic;
- kafka-python infers a modern broker version from ApiVersions;
- ListGroups v5 filters by type and state; authorized operations are answered.

One stack serves the module; every test uses its own topics and groups.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import struct
from collections.abc import Iterator
from typing import Any

import kafka.errors as kerr
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin import NewTopic as AioNewTopic
from aiokafka.admin.config_resource import ConfigResource as AioConfigResource
from aiokafka.admin.config_resource import ConfigResourceType as AioConfigResourceType
from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    ConsumerGroupType,
    ElectionType,
    KafkaError,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import (
    AclOperation,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    ResourceType,
)
from kafka import KafkaConsumer
from kafka import TopicPartition as KpTopicPartition
from kafka.admin import ConfigResource as KpConfigResource
from kafka.admin import ConfigResourceType, KafkaAdminClient
from kafka.structs import OffsetAndMetadata

from streamhouse.client import Client
from streamhouse.kafka.framing import encode_request
from streamhouse.kafka.messages import (
    DescribeConfigsRequest,
    DescribeLogDirsRequest,
    OffsetCommitRequest,
    OffsetFetchRequest,
    RequestHeader,
)
from streamhouse.testing import (
    Stack,
    admin_error,
    admin_result,
    kafka_call,
    only_future,
    poll_until,
    produce_values,
    topic_configs,
)
from streamhouse.topic_config import NOT_ACTED_ON, TOPIC_CONFIG_TYPES, TOPIC_CONFIGS

DEADLINE_S = 20.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("kafka-admin-cluster") / "data"
    with Stack(data, env={"STREAMHOUSE_GROUP_INITIAL_REBALANCE_DELAY_MS": "0"}) as running:
        yield running


@pytest.fixture(scope="module")
def bootstrap(stack: Stack) -> str:
    return f"127.0.0.1:{stack.kafka_port}"


@pytest.fixture(scope="module")
def grpc(stack: Stack) -> Iterator[Client]:
    with Client(stack.grpc_address) as client:
        yield client


@pytest.fixture
def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


@pytest.fixture(scope="module")
def kp_admin(bootstrap: str) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=bootstrap)
    yield client
    client.close()


# -- helpers ----------------------------------------------------------------------------------


def stored_bytes(stack: Stack, topic: str) -> dict[int, int]:
    """Per partition, the byte_length of its block rows, read from the SQLite file itself
    (read-only): the reference for DescribeLogDirs' partition sizes."""
    uri = f"file:{stack.data_dir / 'metadata.sqlite'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        rows = db.execute(
            "SELECT b.partition, SUM(b.byte_length) FROM segment_blocks b "
            "JOIN topics t ON t.topic_id = b.topic_id WHERE t.name = ? GROUP BY b.partition",
            (topic,),
        ).fetchall()
    return {int(p): int(n) for p, n in rows}


# -- topic configs ----------------------------------------------------------------------------


def test_every_kafka_topic_config_is_accepted_typed_and_described(
    admin: AdminClient, kp_admin: KafkaAdminClient, stack: Stack
) -> None:
    topic = "all-configs"
    configs = {
        "file.delete.delay.ms": "120000",
        "cleanup.policy": "",
        "preallocate": "true",
        "flush.messages": "10",
        "segment.index.bytes": "4096",
        "leader.replication.throttled.replicas": "*",
        "compression.zstd.level": "7",
        "min.insync.replicas": "2",
    }
    admin_result(admin.create_topics([NewTopic(topic, 1, config=configs)]))
    entries = topic_configs(admin, topic)
    assert set(entries) == set(TOPIC_CONFIGS)
    for key, value in configs.items():
        assert entries[key].value == value, key
        assert entries[key].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, key
        assert not entries[key].is_default
    assert entries["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    # Unset, max.message.bytes is what produce applies: the broker's message.max.bytes, an
    # agent setting (STREAMHOUSE_MAX_BATCH_BYTES).
    assert entries["max.message.bytes"].value == str(stack.settings.max_batch_bytes)
    assert entries["max.message.bytes"].source == ConfigSource.STATIC_BROKER_CONFIG.value
    assert set(entries["retention.ms"].synonyms) == {"log.retention.ms"}
    with_value = entries["file.delete.delay.ms"].synonyms
    assert [(s.name, s.value) for s in with_value.values()] == [("file.delete.delay.ms", "120000")]

    # kafka-python shows the Kafka type and the documentation, which says what is ignored.
    described = kp_admin.describe_configs(
        [KpConfigResource(ConfigResourceType.TOPIC, topic)],
        config_filter="all",
        include_synonyms=True,
    )["topic"][topic]
    assert described["segment.ms"]["synonyms"] == [
        {"name": "log.roll.ms", "value": TOPIC_CONFIGS["segment.ms"][0], "source": "DEFAULT_CONFIG"}
    ]
    assert [s["name"] for s in described["file.delete.delay.ms"]["synonyms"]] == [
        "file.delete.delay.ms"
    ]
    for key in TOPIC_CONFIGS:
        assert described[key]["config_type"] == TOPIC_CONFIG_TYPES[key], key
        doc = described[key]["documentation"]
        assert ("not acted on" in doc) == (key in NOT_ACTED_ON), (key, doc)
    assert "file.delete.delay.ms" in NOT_ACTED_ON
    assert "not acted on" in described["file.delete.delay.ms"]["documentation"]
    assert "not acted on" not in described["retention.ms"]["documentation"]
    assert described["preallocate"]["config_type"] == "BOOLEAN"

    # Values are checked against their Kafka type; nothing is stored on a refusal.
    for key, bad in [
        ("file.delete.delay.ms", "soon"),
        ("preallocate", "maybe"),
        ("compression.gzip.level", "12"),
        ("cleanup.policy", "delete,"),
        ("no.such.config", "1"),
    ]:
        resource = ConfigResource(
            ResourceType.TOPIC,
            topic,
            incremental_configs=[
                ConfigEntry(key, bad, incremental_operation=AlterConfigOpType.SET)
            ],
        )
        error = admin_error(only_future(admin.incremental_alter_configs([resource])))
        assert error.code() == KafkaError.INVALID_CONFIG, key
        assert key in error.str(), error.str()
    assert topic_configs(admin, topic)["file.delete.delay.ms"].value == "120000"


def test_empty_cleanup_policy_by_subtracting_both(admin: AdminClient) -> None:
    """APPEND/SUBTRACT on the LIST config may leave it empty: neither delete nor compact."""
    topic = "policy-emptied"
    admin_result(
        admin.create_topics([NewTopic(topic, 1, config={"cleanup.policy": "compact,delete"})])
    )
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(
                "cleanup.policy", "compact,delete", incremental_operation=AlterConfigOpType.SUBTRACT
            )
        ],
    )
    assert admin_result(admin.incremental_alter_configs([resource])) is None
    entry = topic_configs(admin, topic)["cleanup.policy"]
    assert (entry.value, entry.source) == ("", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)


# -- broker and group configs -----------------------------------------------------------------


def test_broker_configs_are_truthful_and_read_only(
    admin: AdminClient, kp_admin: KafkaAdminClient, stack: Stack
) -> None:
    entries = admin_result(admin.describe_configs([ConfigResource(ResourceType.BROKER, "0")]))
    settings = stack.settings
    expected = {
        "node.id": "0",
        "auto.create.topics.enable": str(settings.kafka_auto_create_topics).lower(),
        "num.partitions": str(settings.default_partitions),
        "message.max.bytes": str(settings.max_batch_bytes),
        "listeners": f"PLAINTEXT://127.0.0.1:{stack.kafka_port}",
        "log.retention.ms": TOPIC_CONFIGS["retention.ms"][0],
        "default.replication.factor": "1",
    }
    for key, value in expected.items():
        assert entries[key].value == value, key
    assert all(e.is_read_only for e in entries.values())
    assert entries["num.partitions"].source == ConfigSource.STATIC_BROKER_CONFIG.value
    assert entries["default.replication.factor"].source == ConfigSource.DEFAULT_CONFIG.value
    # A change is refused with the setting to change; an unknown key as unknown.
    for key, hint in [
        ("num.partitions", "STREAMHOUSE_DEFAULT_PARTITIONS"),
        ("log.retention.ms", "fixed in StreamHouse"),
        ("no.such.broker.config", "unknown broker config"),
    ]:
        resource = ConfigResource(
            ResourceType.BROKER,
            "0",
            incremental_configs=[
                ConfigEntry(key, "5", incremental_operation=AlterConfigOpType.SET)
            ],
        )
        error = admin_error(only_future(admin.incremental_alter_configs([resource])))
        assert error.code() == KafkaError.INVALID_CONFIG, key
        assert hint in error.str(), error.str()
    after = admin_result(admin.describe_configs([ConfigResource(ResourceType.BROKER, "0")]))
    assert after["num.partitions"].value == expected["num.partitions"]

    # kafka-python: describe; it refuses to alter a config the broker marks read-only itself.
    kp = kp_admin.describe_configs(
        [KpConfigResource(ConfigResourceType.BROKER, "0")], config_filter="all"
    )["broker"]["0"]
    assert kp["num.partitions"]["value"] == expected["num.partitions"]
    assert kp["num.partitions"]["read_only"] is True
    with pytest.raises(ValueError, match="num.partitions"):
        kp_admin.alter_configs(
            [KpConfigResource(ConfigResourceType.BROKER, "0", configs={"num.partitions": "4"})]
        )


def test_group_configs_described_and_refused(
    kp_admin: KafkaAdminClient, admin: AdminClient
) -> None:
    group = "configured-group"
    described = kp_admin.describe_configs(
        [KpConfigResource(ConfigResourceType.GROUP, group)], config_filter="all"
    )["group"][group]
    assert described["consumer.session.timeout.ms"]["value"] == "45000"
    assert described["consumer.session.timeout.ms"]["read_only"] is True
    assert "classic" in described["consumer.session.timeout.ms"]["documentation"]
    resource = ConfigResource(
        ResourceType.GROUP,
        group,
        incremental_configs=[
            ConfigEntry(
                "consumer.session.timeout.ms", "60000", incremental_operation=AlterConfigOpType.SET
            )
        ],
    )
    error = admin_error(only_future(admin.incremental_alter_configs([resource])))
    assert error.code() == KafkaError.INVALID_CONFIG
    assert "classic groups" in error.str()


# -- log dirs, reassignments, elections -------------------------------------------------------


def test_describe_log_dirs_one_dir_with_partition_sizes(
    kp_admin: KafkaAdminClient, bootstrap: str, stack: Stack, grpc: Client
) -> None:
    topic = "log-dirs"
    grpc.create_topic(topic, 3, {})
    produce_values(bootstrap, topic, 0, [b"x" * 500 for _ in range(40)])
    produce_values(bootstrap, topic, 2, [b"y" * 100 for _ in range(5)])
    reference = stored_bytes(stack, topic)
    assert set(reference) == {0, 2}
    (broker,) = kp_admin.describe_log_dirs({topic: [0, 1, 2]})
    assert broker["broker"] == 0
    (log_dir,) = broker["log_dirs"]
    assert log_dir["error_code"] == 0
    assert log_dir["log_dir"] == stack.settings.object_store_url
    assert (log_dir["total_bytes"], log_dir["usable_bytes"]) == (-1, -1)
    assert _sizes(log_dir, topic) == {0: reference[0], 1: 0, 2: reference[2]}
    (everything,) = kp_admin.describe_log_dirs()
    (whole,) = everything["log_dirs"]
    assert _sizes(whole, topic) == {0: reference[0], 1: 0, 2: reference[2]}


def _sizes(log_dir: dict[str, Any], topic: str) -> dict[int, int]:
    """{partition: size} of `topic` in one log dir of a describe_log_dirs answer."""
    sizes: dict[int, int] = {}
    for t in log_dir["topics"]:
        if t["name"] == topic:
            for p in t["partitions"]:
                assert p["offset_lag"] == 0
                sizes[p["partition_index"]] = p["partition_size"]
    return sizes


def test_alter_replica_log_dirs(kp_admin: KafkaAdminClient, grpc: Client, stack: Stack) -> None:
    topic = "replica-dirs"
    grpc.create_topic(topic, 1, {})
    path = stack.settings.object_store_url
    moved = kp_admin.alter_replica_log_dirs({(topic, 0, 0): path})
    assert list(moved.values()) == [kerr.NoError]
    elsewhere = kp_admin.alter_replica_log_dirs({(topic, 0, 0): "/somewhere/else"})
    assert list(elsewhere.values()) == [kerr.LogDirNotFoundError]
    unknown = kp_admin.alter_replica_log_dirs({("no-such-topic", 0, 0): path})
    assert list(unknown.values()) == [kerr.UnknownTopicOrPartitionError]


def test_partition_reassignments(kp_admin: KafkaAdminClient, grpc: Client) -> None:
    topic = "reassigned"
    grpc.create_topic(topic, 2, {})
    assert kp_admin.list_partition_reassignments() == {}
    assert kp_admin.list_partition_reassignments({topic: [0, 1]}) == {}
    answer = kp_admin.alter_partition_reassignments(
        {
            KpTopicPartition(topic, 0): [0],
            KpTopicPartition(topic, 1): [0, 5],
            KpTopicPartition(topic, 9): [0],
        }
    )
    assert answer[KpTopicPartition(topic, 0)] is None
    assert answer[KpTopicPartition(topic, 1)] is kerr.InvalidReplicationAssignmentError
    assert answer[KpTopicPartition(topic, 9)] is kerr.UnknownTopicOrPartitionError
    cancel = kp_admin.alter_partition_reassignments({KpTopicPartition(topic, 0): None})
    assert cancel[KpTopicPartition(topic, 0)] is kerr.NoReassignmentInProgressError
    assert kp_admin.list_partition_reassignments() == {}


def test_elect_leaders(admin: AdminClient, kp_admin: KafkaAdminClient, grpc: Client) -> None:
    topic = "elected"
    grpc.create_topic(topic, 2, {})
    # confluent: the preferred leader already leads -> ELECTION_NOT_NEEDED per partition.
    done = admin.elect_leaders(
        ElectionType.PREFERRED, [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    ).result(DEADLINE_S)
    assert {tp.partition: err.code() for tp, err in done.items() if err is not None} == {
        0: KafkaError.ELECTION_NOT_NEEDED,
        1: KafkaError.ELECTION_NOT_NEEDED,
    }
    unclean = admin.elect_leaders(ElectionType.UNCLEAN, [TopicPartition(topic, 0)]).result(
        DEADLINE_S
    )
    assert [err.code() for err in unclean.values()] == [KafkaError.ELECTION_NOT_NEEDED]
    missing = admin.elect_leaders(ElectionType.PREFERRED, [TopicPartition("no-such", 0)]).result(
        DEADLINE_S
    )
    assert [err.code() for err in missing.values()] == [KafkaError.UNKNOWN_TOPIC_OR_PART]
    # kafka-python ignores ELECTION_NOT_NEEDED; for None it names every partition it knows.
    kp_admin.elect_leaders(0, {topic: [0, 1]})
    everything = kp_admin.elect_leaders(0, None)
    codes = {
        (r.topic, p.partition_id): p.error_code
        for r in everything.replica_election_results
        for p in r.partition_result
    }
    assert codes[(topic, 0)] == codes[(topic, 1)] == KafkaError.ELECTION_NOT_NEEDED
    assert set(codes.values()) == {KafkaError.ELECTION_NOT_NEEDED}


# -- topics -----------------------------------------------------------------------------------


def test_create_topic_with_replica_assignment(
    admin: AdminClient, kp_admin: KafkaAdminClient, grpc: Client
) -> None:
    topic = "assigned"
    admin_result(admin.create_topics([NewTopic(topic, 3, replica_assignment=[[0], [0], [0]])]))
    assert grpc.get_topic(topic).partitions == 3
    entry = topic_configs(admin, topic)["streamhouse.replica.assignment"]
    assert entry.value == "0:0,1:0,2:0"
    assert entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    # CreatePartitions extends the recorded assignment; unknown brokers are refused.
    admin_result(admin.create_partitions([NewPartitions(topic, 5, replica_assignment=[[0], [0]])]))
    assert grpc.get_topic(topic).partitions == 5
    assert topic_configs(admin, topic)["streamhouse.replica.assignment"].value == (
        "0:0,1:0,2:0,3:0,4:0"
    )
    bad_growth = admin.create_partitions([NewPartitions(topic, 6, replica_assignment=[[3]])])
    assert admin_error(only_future(bad_growth)).code() == KafkaError.INVALID_REPLICA_ASSIGNMENT
    # It is read-only: only those requests set it.
    altered = admin.incremental_alter_configs(
        [
            ConfigResource(
                ResourceType.TOPIC,
                topic,
                incremental_configs=[
                    ConfigEntry(
                        "streamhouse.replica.assignment",
                        None,
                        incremental_operation=AlterConfigOpType.DELETE,
                    )
                ],
            )
        ]
    )
    assert admin_error(only_future(altered)).code() == KafkaError.INVALID_CONFIG
    assert entry.is_read_only
    refused = admin.create_topics([NewTopic("assigned-bad", 2, replica_assignment=[[0], [4]])])
    assert admin_error(only_future(refused)).code() == KafkaError.INVALID_REPLICA_ASSIGNMENT
    twice = admin.create_topics([NewTopic("assigned-twice", 1, replica_assignment=[[0, 0]])])
    assert admin_error(only_future(twice)).code() == KafkaError.INVALID_REPLICA_ASSIGNMENT
    # aiokafka with an assignment dict.

    async def aio() -> None:
        client = AIOKafkaAdminClient(bootstrap_servers=kp_bootstrap(kp_admin))
        await client.start()
        try:
            await client.create_topics(
                [AioNewTopic("assigned-aio", -1, -1, replica_assignments={0: [0], 1: [0]})]
            )
        finally:
            await client.close()

    asyncio.run(aio())
    assert grpc.get_topic("assigned-aio").partitions == 2
    assert grpc.get_topic("assigned-aio").config["streamhouse.replica.assignment"] == "0:0,1:0"


def kp_bootstrap(kp_admin: KafkaAdminClient) -> str:
    servers = kp_admin.config["bootstrap_servers"]
    return servers if isinstance(servers, str) else servers[0]


def test_consumer_metadata_auto_creates_topics(bootstrap: str, grpc: Client) -> None:
    """A consumer's Metadata with allow_auto_topic_creation creates the topic (auto-creation
    is on by default: STREAMHOUSE_KAFKA_AUTO_CREATE_TOPICS)."""
    topic = "auto-by-consumer"
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, allow_auto_create_topics=True, group_id=None
    )
    try:
        consumer.subscribe([topic])
        poll_until(
            lambda: (
                True
                if (consumer.poll(timeout_ms=200) is not None and _exists(grpc, topic))
                else None
            ),
            f"topic {topic} auto-created by kafka-python",
        )
    finally:
        consumer.close()
    assert grpc.get_topic(topic).partitions == 1
    # (librdkafka 2.16's consumer sends allow_auto_topic_creation=false in its Metadata even
    # with allow.auto.create.topics=true, so it is not a client that can show this.)


def _exists(grpc: Client, topic: str) -> bool:
    return any(t.name == topic for t in grpc.list_topics())


def test_kafka_python_infers_a_modern_broker(kp_admin: KafkaAdminClient, bootstrap: str) -> None:
    """kafka-python picks its broker version from the advertised API set: a 3.x release."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        inferred = consumer.config["api_version"]
        assert inferred is not None and tuple(inferred) >= (3, 8), inferred
    finally:
        consumer.close()


# -- groups and authorized operations ---------------------------------------------------------


def test_list_groups_by_type_and_state(
    admin: AdminClient, kp_admin: KafkaAdminClient, bootstrap: str, grpc: Client
) -> None:
    topic, group = "typed-groups", "typed-group"
    grpc.create_topic(topic, 1, {})
    produce_values(bootstrap, topic, 0, [b"a"])
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    try:

        def got_one() -> bool | None:
            msg = consumer.poll(0.5)
            return True if msg is not None and not msg.error() else None

        poll_until(got_one, "a record through the group")

        def listed(**kwargs: Any) -> set[str]:
            answer = admin.list_consumer_groups(request_timeout=DEADLINE_S, **kwargs)
            return {g.group_id for g in answer.result(DEADLINE_S).valid}

        assert group in listed(types={ConsumerGroupType.CLASSIC})
        assert group not in listed(types={ConsumerGroupType.CONSUMER})
        assert group in listed(states={ConsumerGroupState.STABLE})
        assert group not in listed(states={ConsumerGroupState.EMPTY})
        typed = admin.list_consumer_groups(request_timeout=DEADLINE_S).result(DEADLINE_S)
        (mine,) = [g for g in typed.valid if g.group_id == group]
        assert mine.type == ConsumerGroupType.CLASSIC

        kp = kp_admin.list_groups(types_filter=["classic"])
        assert group in {g["group_id"] if isinstance(g, dict) else g[0] for g in kp}
        assert kp_admin.list_groups(types_filter=["share"]) == []
    finally:
        consumer.close()


def test_authorized_operations_without_acls_are_everything(
    admin: AdminClient, grpc: Client, bootstrap: str
) -> None:
    topic, group = "authorized", "authorized-group"
    grpc.create_topic(topic, 2, {})
    described = admin_result(
        admin.describe_topics(TopicCollection([topic]), include_authorized_operations=True)
    )
    assert set(described.authorized_operations) == {
        AclOperation.READ,
        AclOperation.WRITE,
        AclOperation.CREATE,
        AclOperation.DELETE,
        AclOperation.ALTER,
        AclOperation.DESCRIBE,
        AclOperation.DESCRIBE_CONFIGS,
        AclOperation.ALTER_CONFIGS,
    }
    assert len(described.partitions) == 2
    cluster = admin.describe_cluster(include_authorized_operations=True).result(DEADLINE_S)
    assert set(cluster.authorized_operations) == {
        AclOperation.CREATE,
        AclOperation.ALTER,
        AclOperation.DESCRIBE,
        AclOperation.CLUSTER_ACTION,
        AclOperation.DESCRIBE_CONFIGS,
        AclOperation.ALTER_CONFIGS,
        AclOperation.IDEMPOTENT_WRITE,
    }
    plain = admin.describe_cluster().result(DEADLINE_S)
    assert not plain.authorized_operations
    produce_values(bootstrap, topic, 0, [b"g"])
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    try:
        poll_until(
            lambda: True if (m := consumer.poll(0.5)) is not None and not m.error() else None,
            "a record through the group",
        )
        groups = admin.describe_consumer_groups([group], include_authorized_operations=True)
        g = admin_result(groups)
        assert set(g.authorized_operations) == {
            AclOperation.READ,
            AclOperation.DELETE,
            AclOperation.DESCRIBE,
        }
    finally:
        consumer.close()


def test_describe_topic_partitions_paginates(kp_admin: KafkaAdminClient, grpc: Client) -> None:
    grpc.create_topic("paged-a", 3, {})
    grpc.create_topic("paged-b", 2, {})
    seen: list[tuple[str, int]] = []
    cursor = None
    pages = 0
    while True:
        answer = kp_admin.describe_topic_partitions(
            ["paged-b", "paged-a"], response_partition_limit=2, cursor=cursor
        )
        pages += 1
        for t in answer["topics"]:
            assert t["error_code"] == 0
            assert t["topic_authorized_operations"] > 0
            seen += [(t["name"], p["partition_index"]) for p in t["partitions"]]
        cursor = answer.get("next_cursor")
        if not cursor:
            break
        assert pages < 10
    assert seen == [("paged-a", 0), ("paged-a", 1), ("paged-a", 2), ("paged-b", 0), ("paged-b", 1)]
    assert pages == 3


# -- committed leader epochs ------------------------------------------------------------------


def test_committed_leader_epoch_is_kept(
    admin: AdminClient, kp_admin: KafkaAdminClient, bootstrap: str, grpc: Client
) -> None:
    topic = "epochs"
    grpc.create_topic(topic, 2, {})
    produce_values(bootstrap, topic, 0, [b"e"] * 5)

    # The wire versions the issue names: OffsetCommit v9 with epoch 1 -> OffsetFetch v8.
    C, F = OffsetCommitRequest, OffsetFetchRequest
    committed = kafka_call(
        bootstrap,
        8,
        9,
        C(
            group_id="epoch-raw",
            generation_id_or_member_epoch=-1,
            member_id="",
            topics=[
                C.OffsetCommitRequestTopic(
                    name=topic,
                    partitions=[
                        C.OffsetCommitRequestPartition(
                            partition_index=0, committed_offset=3, committed_leader_epoch=1
                        ),
                        C.OffsetCommitRequestPartition(
                            partition_index=1, committed_offset=0, committed_leader_epoch=-1
                        ),
                    ],
                )
            ],
        ),
    )
    assert [p.error_code for t in committed.topics for p in t.partitions] == [0, 0]
    fetched = kafka_call(
        bootstrap,
        9,
        8,
        F(
            groups=[
                F.OffsetFetchRequestGroup(
                    group_id="epoch-raw",
                    topics=[F.OffsetFetchRequestTopics(name=topic, partition_indexes=[0, 1])],
                )
            ]
        ),
    )
    (group,) = fetched.groups
    assert group.error_code == 0
    got = {
        p.partition_index: (p.committed_offset, p.committed_leader_epoch)
        for t in group.topics
        for p in t.partitions
    }
    assert got == {0: (3, 1), 1: (0, -1)}

    # confluent-kafka's admin alter / list group offsets.
    group_id = "epoch-confluent"
    request = ConsumerGroupTopicPartitions(
        group_id, [TopicPartition(topic, 0, 4, leader_epoch=2), TopicPartition(topic, 1, 1)]
    )
    admin_result(admin.alter_consumer_group_offsets([request]))
    listed = admin_result(
        admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group_id)])
    )
    epochs = {tp.partition: (tp.offset, tp.leader_epoch) for tp in listed.topic_partitions}
    assert epochs[0] == (4, 2)
    assert epochs[1][0] == 1 and epochs[1][1] in (None, -1)
    # A consumer of the group resumes there: its offset validation with the committed epoch
    # (OffsetForLeaderEpoch) finds no truncation.
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    try:

        def first_of_partition_0() -> int | None:
            msg = consumer.poll(0.5)
            if msg is None:
                return None
            assert not msg.error(), msg.error()
            return msg.offset() if msg.partition() == 0 else None

        assert poll_until(first_of_partition_0, "the group's consumer resuming") == 4
    finally:
        consumer.close()

    # kafka-python's alter / list group offsets.
    kp_admin.alter_group_offsets(
        "epoch-kp", {KpTopicPartition(topic, 0): OffsetAndMetadata(2, "m", 5)}
    )
    kp = kp_admin.list_group_offsets({"epoch-kp": None})["epoch-kp"]
    assert kp[KpTopicPartition(topic, 0)] == OffsetAndMetadata(2, "m", 5)


def test_broker_logger_levels(kp_admin: KafkaAdminClient, stack: Stack) -> None:
    """kafka-configs' broker-loggers: the ingest process's loggers, changed until it restarts."""
    resource = KpConfigResource(ConfigResourceType.BROKER_LOGGER, "0")
    levels = kp_admin.describe_configs([resource], config_filter="all")["broker_logger"]["0"]
    assert levels["root"]["value"] == stack.settings.log_level.upper().replace("WARNING", "WARN")
    assert "ingest.kafka.admin" in levels
    kp_admin.alter_configs(
        [
            KpConfigResource(
                ConfigResourceType.BROKER_LOGGER, "0", configs={"ingest.kafka.admin": "DEBUG"}
            )
        ]
    )
    after = kp_admin.describe_configs([resource], config_filter="all")["broker_logger"]["0"]
    assert after["ingest.kafka.admin"]["value"] == "DEBUG"
    assert after["root"]["value"] == levels["root"]["value"]


def test_aiokafka_admin_configs_and_groups(bootstrap: str, grpc: Client) -> None:
    """aiokafka's admin client: Kafka-only topic configs, broker configs, alterations."""
    topic = "aio-configs"

    async def scenario() -> tuple[dict[str, str], dict[str, tuple[str, bool]], Any]:
        client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await client.start()
        try:
            await client.create_topics(
                [AioNewTopic(topic, 1, 1, topic_configs={"file.delete.delay.ms": "1000"})]
            )
            await client.alter_configs(
                [AioConfigResource(AioConfigResourceType.TOPIC, topic, {"flush.ms": "500"})]
            )
            (topic_answer,) = await client.describe_configs(
                [AioConfigResource(AioConfigResourceType.TOPIC, topic)]
            )
            (broker_answer,) = await client.describe_configs(
                [AioConfigResource(AioConfigResourceType.BROKER, "0")]
            )
            refused = await client.alter_configs(
                [AioConfigResource(AioConfigResourceType.BROKER, "0", {"num.partitions": "3"})]
            )
        finally:
            await client.close()
        (t,) = topic_answer.resources
        (b,) = broker_answer.resources
        return (
            {e[0]: e[1] for e in t[4]},
            {e[0]: (e[1], e[2]) for e in b[4]},
            refused,
        )

    topic_configs, broker_configs, refused = asyncio.run(scenario())
    # AlterConfigs replaced the topic's configs: only flush.ms is set now.
    assert topic_configs["flush.ms"] == "500"
    assert topic_configs["file.delete.delay.ms"] == TOPIC_CONFIGS["file.delete.delay.ms"][0]
    assert grpc.get_topic(topic).config["flush.ms"] == "500"
    assert broker_configs["node.id"] == ("0", True)
    (resource,) = [r for response in refused for r in response.resources]
    assert resource[0] == KafkaError.INVALID_CONFIG and "num.partitions" in resource[1]


# -- dropped connections ----------------------------------------------------------------------


def test_clients_dropping_with_answers_pending_leave_no_error(
    stack: Stack, bootstrap: str, grpc: Client
) -> None:
    """Connections reset (RST) right after pipelining admin requests whose handlers wait for
    metadata: ingest keeps serving and logs no traceback or unretrieved task error. (The race
    that made the sender pop an empty queue needs a handler finishing despite its
    cancellation; tests/unit/kafka/test_admin_connection_drop.py reproduces it exactly.)"""
    grpc.create_topic("dropped", 4, {})
    log_path = stack.data_dir / "logs" / "ingest.log"
    start = log_path.stat().st_size
    host, port = bootstrap.rsplit(":", 1)
    frames = []
    for i in range(20):
        header = RequestHeader(
            request_api_key=35, request_api_version=4, correlation_id=i, client_id="drop"
        )
        frames.append(encode_request(header, DescribeLogDirsRequest(topics=None)))
        header = RequestHeader(
            request_api_key=32, request_api_version=4, correlation_id=100 + i, client_id="drop"
        )
        frames.append(
            encode_request(
                header,
                DescribeConfigsRequest(
                    resources=[
                        DescribeConfigsRequest.DescribeConfigsResource(
                            resource_type=2, resource_name="dropped", configuration_keys=None
                        )
                    ]
                ),
            )
        )
    payload = b"".join(frames)
    for _ in range(30):
        sock = socket.create_connection((host, int(port)), timeout=DEADLINE_S)
        sock.sendall(payload)
        # SO_LINGER 0: close() resets the connection, answers still pending.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    # Still serving: a full round trip on a new connection.
    answer = kafka_call(bootstrap, 32, 4, DescribeConfigsRequest(resources=[]))
    assert answer.results == []

    # After a further request has gone through the same loop, the log is still clean.
    kafka_call(bootstrap, 35, 4, DescribeLogDirsRequest(topics=None))
    text = log_path.read_bytes()[start:].decode(errors="replace")
    bad = [w for w in ("Traceback", "IndexError", "never retrieved") if w in text]
    assert not bad, text[-4000:]
