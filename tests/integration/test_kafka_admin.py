"""Kafka admin APIs against a real StreamHouse, through confluent-kafka's AdminClient and
kafka-python's KafkaAdminClient: CreateTopics, DeleteTopics, CreatePartitions,
DescribeConfigs, AlterConfigs, IncrementalAlterConfigs, DescribeCluster, ListGroups,
DescribeGroups, DeleteGroups, OffsetDelete, DeleteRecords and topic listing.

One stack serves the whole module; every test uses its own topics and groups.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import kafka.errors as kerr
import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourceType,
)
from kafka import TopicPartition as KpTopicPartition
from kafka.admin import ConfigResource as KpConfigResource
from kafka.admin import ConfigResourceType, KafkaAdminClient
from kafka.admin._configs import AlterConfigOp

from streamhouse.client import Client, StreamHouseError
from streamhouse.testing import (
    Stack,
    admin_error,
    admin_result,
    only_future,
    poll_until,
    produce_values,
    topic_configs,
)
from streamhouse.topic_config import TOPIC_CONFIGS

DEADLINE_S = 20.0
TS0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("kafka-admin") / "data"
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
    # Per test: an AdminClient has no close(), it goes when the last reference does.
    return AdminClient({"bootstrap.servers": bootstrap})


@pytest.fixture(scope="module")
def kp_admin(bootstrap: str) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=bootstrap)
    yield client
    client.close()


# -- helpers ----------------------------------------------------------------------------------


def error_code(futures: dict[Any, Future[Any]]) -> int:
    """The Kafka error code the only future of a confluent admin call failed with."""
    return int(admin_error(only_future(futures)).code())


def produce(bootstrap: str, topic: str, count: int, partition: int = 0, tag: str = "") -> None:
    """`count` records `<tag><i>` to one partition, timestamped TS0 + i seconds."""
    values = [f"{tag}{i}".encode() for i in range(count)]
    produce_values(bootstrap, topic, partition, values, [TS0 + 1000 * i for i in range(count)])


def consume_from(
    bootstrap: str, topic: str, partition: int, count: int, start: int = OFFSET_BEGINNING
) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"assign-only-{topic}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        out: list[Message] = []

        def enough() -> bool | None:
            msg = consumer.poll(0.5)
            if msg is not None:
                if msg.error():
                    raise KafkaException(msg.error())
                out.append(msg)
            return True if len(out) >= count else None

        poll_until(enough, f"{count} records of {topic}[{partition}]")
        return out
    finally:
        consumer.close()


def partition_count(admin: AdminClient, topic: str) -> int:
    meta = admin.list_topics(topic=topic, timeout=DEADLINE_S)
    assert meta.topics[topic].error is None
    return len(meta.topics[topic].partitions)


def uuid_of(topic_id: Any) -> uuid.UUID:
    """A confluent-kafka Uuid as a uuid.UUID."""
    high = topic_id.get_most_significant_bits() & (2**64 - 1)
    low = topic_id.get_least_significant_bits() & (2**64 - 1)
    return uuid.UUID(int=high << 64 | low)


def topic_exists(grpc: Client, name: str) -> bool:
    try:
        grpc.get_topic(name)
        return True
    except StreamHouseError:
        return False


def set_configs(entries: dict[str, ConfigEntry]) -> dict[str, str]:
    return {
        name: e.value
        for name, e in entries.items()
        if e.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    }


# -- topics -----------------------------------------------------------------------------------


def test_create_topics_confluent(admin: AdminClient, grpc: Client) -> None:
    configs = {"retention.ms": "3600000", "cleanup.policy": "compact"}
    # validate_only checks everything and creates nothing.
    assert (
        admin_result(
            admin.create_topics([NewTopic("ck-new", 3, 1, config=configs)], validate_only=True)
        )
        is None
    )
    assert not topic_exists(grpc, "ck-new")
    assert admin_result(admin.create_topics([NewTopic("ck-new", 3, 1, config=configs)])) is None
    assert partition_count(admin, "ck-new") == 3
    assert set_configs(topic_configs(admin, "ck-new")) == configs

    assert error_code(admin.create_topics([NewTopic("ck-new", 1, 1)])) == (
        KafkaError.TOPIC_ALREADY_EXISTS
    )
    assert error_code(admin.create_topics([NewTopic("ck-new", 1, 1)], validate_only=True)) == (
        KafkaError.TOPIC_ALREADY_EXISTS
    )
    for bad in ("bad name", "a/b", "x" * 250, ".."):
        assert error_code(admin.create_topics([NewTopic(bad, 1, 1)])) == KafkaError.TOPIC_EXCEPTION
        assert error_code(admin.create_topics([NewTopic(bad, 1, 1)], validate_only=True)) == (
            KafkaError.TOPIC_EXCEPTION
        )
    assert error_code(admin.create_topics([NewTopic("ck-badcfg", 1, 1, config={"nope": "1"})])) == (
        KafkaError.INVALID_CONFIG
    )
    assert (
        error_code(
            admin.create_topics([NewTopic("ck-badcfg", 1, 1, config={"retention.ms": "soon"})])
        )
        == KafkaError.INVALID_CONFIG
    )
    assert not topic_exists(grpc, "ck-badcfg")
    for validate_only in (True, False):
        too_many = admin.create_topics(
            [NewTopic("ck-huge", 20_000, 1)], validate_only=validate_only
        )
        assert error_code(too_many) == KafkaError.INVALID_PARTITIONS
    assert not topic_exists(grpc, "ck-huge")
    # The broker's default partition count and replication factor.
    assert admin_result(admin.create_topics([NewTopic("ck-defaults")])) is None
    assert partition_count(admin, "ck-defaults") == 1


def test_create_topics_kafka_python(
    kp_admin: KafkaAdminClient, grpc: Client, admin: AdminClient
) -> None:
    spec = {"num_partitions": 4, "replication_factor": 1, "configs": {"retention.bytes": "1000"}}
    answer = kp_admin.create_topics({"kp-new": spec}, validate_only=True)
    assert answer["topics"][0]["error_code"] == 0
    assert not topic_exists(grpc, "kp-new")
    answer = kp_admin.create_topics({"kp-new": spec})
    (created,) = answer["topics"]
    assert (created["name"], created["error_code"], created["num_partitions"]) == ("kp-new", 0, 4)
    assert created["configs"]["retention.bytes"]["value"] == "1000"
    assert created["configs"]["retention.bytes"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    assert created["configs"]["retention.ms"]["config_source"] == "DEFAULT_CONFIG"
    assert grpc.get_topic("kp-new").partitions == 4
    with pytest.raises(kerr.TopicAlreadyExistsError):
        kp_admin.create_topics({"kp-new": {"num_partitions": 1}})
    answer = kp_admin.create_topics({"kp-new": {"num_partitions": 1}}, raise_errors=False)
    (failed,) = answer["topics"]
    assert failed["error_code"] == kerr.TopicAlreadyExistsError.errno
    assert (failed["num_partitions"], failed["replication_factor"]) == (-1, -1)
    assert not failed.get("configs")
    with pytest.raises(kerr.InvalidTopicError):
        kp_admin.create_topics({"kp bad": {"num_partitions": 1}})
    with pytest.raises(kerr.InvalidConfigurationError):
        kp_admin.create_topics({"kp-bad-cfg": {"configs": {"cleanup.policy": "sometimes"}}})
    assert "kp-new" in kp_admin.list_topics()
    description = admin_result(
        admin.describe_topics(TopicCollection(["kp-new"]), request_timeout=DEADLINE_S)
    )
    assert description.name == "kp-new"
    assert uuid_of(description.topic_id) == uuid.UUID(grpc.get_topic("kp-new").topic_id)
    assert uuid.UUID(created["topic_id"]) == uuid_of(description.topic_id)
    assert [(p.id, p.leader.id, [r.id for r in p.replicas]) for p in description.partitions] == [
        (i, 0, [0]) for i in range(4)
    ]
    (described,) = kp_admin.describe_topics(["kp-new"])
    assert [p["partition_index"] for p in described["partitions"]] == [0, 1, 2, 3]
    assert all(p["leader_id"] == 0 for p in described["partitions"])


def test_delete_topic_and_recreate_has_no_old_data(
    admin: AdminClient, kp_admin: KafkaAdminClient, bootstrap: str, grpc: Client
) -> None:
    topic = "recreated"
    assert admin_result(admin.create_topics([NewTopic(topic, 2, 1)])) is None
    produce(bootstrap, topic, 5, tag="old-")

    assert admin_result(admin.delete_topics([topic])) is None
    assert not topic_exists(grpc, topic)
    assert topic not in kp_admin.list_topics()
    assert error_code(admin.delete_topics([topic])) == KafkaError.UNKNOWN_TOPIC_OR_PART
    with pytest.raises(kerr.UnknownTopicOrPartitionError):
        kp_admin.delete_topics([topic])

    # The same name again (through kafka-python), with another partition count.
    kp_admin.create_topics({topic: {"num_partitions": 1, "replication_factor": 1}})
    assert partition_count(admin, topic) == 1
    assert watermarks(bootstrap, topic) == (0, 0)
    produce(bootstrap, topic, 2, tag="new-")
    assert watermarks(bootstrap, topic) == (0, 2)
    got = consume_from(bootstrap, topic, 0, 2)
    assert [(m.offset(), m.value()) for m in got] == [(0, b"new-0"), (1, b"new-1")]
    # kafka-python deletes too.
    kp_admin.delete_topics([topic])
    assert not topic_exists(grpc, topic)


def watermarks(bootstrap: str, topic: str, partition: int = 0) -> tuple[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"watermarks-{topic}"})
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=DEADLINE_S
        )
        return low, high
    finally:
        consumer.close()


def test_create_partitions(
    admin: AdminClient, kp_admin: KafkaAdminClient, bootstrap: str, grpc: Client
) -> None:
    topic = "grows"
    grpc.create_topic(topic, 2)
    assert (
        admin_result(admin.create_partitions([NewPartitions(topic, 4)], validate_only=True)) is None
    )
    assert partition_count(admin, topic) == 2
    assert admin_result(admin.create_partitions([NewPartitions(topic, 4)])) is None
    assert partition_count(admin, topic) == 4
    produce(bootstrap, topic, 3, partition=3)
    assert [m.offset() for m in consume_from(bootstrap, topic, 3, 3)] == [0, 1, 2]
    assert error_code(admin.create_partitions([NewPartitions(topic, 3)])) == (
        KafkaError.INVALID_PARTITIONS
    )
    assert error_code(admin.create_partitions([NewPartitions(topic, 4)])) == (
        KafkaError.INVALID_PARTITIONS
    )
    for validate_only in (True, False):
        too_many = admin.create_partitions(
            [NewPartitions(topic, 20_000)], validate_only=validate_only
        )
        assert error_code(too_many) == KafkaError.INVALID_PARTITIONS
    assert error_code(admin.create_partitions([NewPartitions("no-such-topic", 4)])) == (
        KafkaError.UNKNOWN_TOPIC_OR_PART
    )
    kp_admin.create_partitions({topic: 6})
    assert grpc.get_topic(topic).partitions == 6
    with pytest.raises(kerr.InvalidPartitionsError):
        kp_admin.create_partitions({topic: 5})


# -- configs ----------------------------------------------------------------------------------


def test_describe_configs_lists_every_topic_config(
    admin: AdminClient, kp_admin: KafkaAdminClient, grpc: Client
) -> None:
    topic = "described"
    grpc.create_topic(topic, 1, {"retention.ms": "1000", "max.message.bytes": "5000"})
    entries = topic_configs(admin, topic)
    assert set(entries) == set(TOPIC_CONFIGS)
    for name, (default, _, _) in TOPIC_CONFIGS.items():
        entry = entries[name]
        # The recorded replica assignment is set by CreateTopics/CreatePartitions only.
        assert entry.is_read_only == (name == "streamhouse.replica.assignment")
        assert not entry.is_sensitive
        if name in ("retention.ms", "max.message.bytes"):
            assert entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
            assert not entry.is_default
        else:
            assert (entry.value, entry.is_default) == (default, True), name
            assert entry.source == ConfigSource.DEFAULT_CONFIG.value, name
    assert entries["retention.ms"].value == "1000"
    assert entries["max.message.bytes"].value == "5000"

    only = admin_result(
        admin.describe_configs(
            [ConfigResource(ResourceType.TOPIC, topic, set_config={"cleanup.policy": ""})]
        )
    )
    assert "cleanup.policy" in only

    answer = kp_admin.describe_configs(
        [KpConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all"
    )
    described = answer["topic"][topic]
    assert set(described) == set(TOPIC_CONFIGS)
    assert described["retention.ms"]["value"] == "1000"
    assert described["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    assert described["retention.bytes"]["config_source"] == "DEFAULT_CONFIG"
    assert described["retention.bytes"]["value"] == TOPIC_CONFIGS["retention.bytes"][0]
    assert described["retention.ms"]["config_type"] == "LONG"
    assert described["cleanup.policy"]["config_type"] == "LIST"
    assert described["delete.retention.ms"]["config_type"] == "LONG"
    assert described["min.compaction.lag.ms"]["config_type"] == "LONG"
    assert described["max.compaction.lag.ms"]["config_type"] == "LONG"
    assert described["min.cleanable.dirty.ratio"]["config_type"] == "DOUBLE"
    modified = kp_admin.describe_configs([KpConfigResource(ConfigResourceType.TOPIC, topic)])
    assert set(modified["topic"][topic]) == {"retention.ms", "max.message.bytes"}

    assert (
        error_code(admin.describe_configs([ConfigResource(ResourceType.TOPIC, "no-such-topic")]))
        == KafkaError.UNKNOWN_TOPIC_OR_PART
    )
    broker = admin_result(admin.describe_configs([ConfigResource(ResourceType.BROKER, "0")]))
    assert broker["num.partitions"].value == "1"
    assert broker["auto.create.topics.enable"].value == "true"


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated")
def test_alter_configs_replaces_the_whole_config(admin: AdminClient, grpc: Client) -> None:
    topic = "altered"
    grpc.create_topic(topic, 1, {"retention.ms": "1000"})
    resource = ConfigResource(
        ResourceType.TOPIC, topic, set_config={"cleanup.policy": "compact", "segment.ms": "60000"}
    )
    assert admin_result(admin.alter_configs([resource], validate_only=True)) is None
    assert set_configs(topic_configs(admin, topic)) == {"retention.ms": "1000"}
    assert admin_result(admin.alter_configs([resource])) is None
    # AlterConfigs is not incremental: retention.ms went back to its default.
    entries = topic_configs(admin, topic)
    assert set_configs(entries) == {"cleanup.policy": "compact", "segment.ms": "60000"}
    assert entries["retention.ms"].value == TOPIC_CONFIGS["retention.ms"][0]
    bad = ConfigResource(ResourceType.TOPIC, topic, set_config={"segment.ms": "-5"})
    assert error_code(admin.alter_configs([bad])) == KafkaError.INVALID_CONFIG
    unknown = ConfigResource(ResourceType.TOPIC, topic, set_config={"no.such.key": "1"})
    assert error_code(admin.alter_configs([unknown])) == KafkaError.INVALID_CONFIG
    missing = ConfigResource(ResourceType.TOPIC, "no-such-topic", set_config={"segment.ms": "1"})
    assert error_code(admin.alter_configs([missing])) == KafkaError.UNKNOWN_TOPIC_OR_PART
    assert set_configs(topic_configs(admin, topic)) == {
        "cleanup.policy": "compact",
        "segment.ms": "60000",
    }


def test_incremental_alter_configs(
    admin: AdminClient, kp_admin: KafkaAdminClient, grpc: Client
) -> None:
    topic = "incremental"
    grpc.create_topic(topic, 1, {"retention.ms": "1000", "segment.ms": "2000"})

    def incremental(*entries: ConfigEntry, validate_only: bool = False) -> dict[Any, Future[Any]]:
        resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=list(entries))
        return admin.incremental_alter_configs([resource], validate_only=validate_only)

    set_op, delete_op = AlterConfigOpType.SET, AlterConfigOpType.DELETE
    assert (
        admin_result(
            incremental(
                ConfigEntry("retention.bytes", "4096", incremental_operation=set_op),
                validate_only=True,
            )
        )
        is None
    )
    assert set_configs(topic_configs(admin, topic)) == {
        "retention.ms": "1000",
        "segment.ms": "2000",
    }
    assert (
        admin_result(
            incremental(
                ConfigEntry("retention.bytes", "4096", incremental_operation=set_op),
                ConfigEntry("retention.ms", None, incremental_operation=delete_op),
            )
        )
        is None
    )
    entries = topic_configs(admin, topic)
    assert set_configs(entries) == {"retention.bytes": "4096", "segment.ms": "2000"}
    assert entries["retention.ms"].value == TOPIC_CONFIGS["retention.ms"][0]
    assert entries["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    assert (
        error_code(
            incremental(ConfigEntry("retention.bytes", "lots", incremental_operation=set_op))
        )
        == KafkaError.INVALID_CONFIG
    )

    # kafka-python uses IncrementalAlterConfigs when the broker has it.
    answer = kp_admin.alter_configs(
        [KpConfigResource(ConfigResourceType.TOPIC, topic, configs={"cleanup.policy": "compact"})]
    )
    assert answer == {"topic": {topic: "OK"}}
    answer = kp_admin.alter_configs(
        [
            KpConfigResource(
                ConfigResourceType.TOPIC,
                topic,
                configs={"segment.ms": (AlterConfigOp.DELETE, None)},
            )
        ]
    )
    assert answer == {"topic": {topic: "OK"}}
    assert set_configs(topic_configs(admin, topic)) == {
        "retention.bytes": "4096",
        "cleanup.policy": "compact",
    }
    # ... and plain AlterConfigs when asked (it sends the other set keys along).
    answer = kp_admin.alter_configs(
        [KpConfigResource(ConfigResourceType.TOPIC, topic, configs={"segment.ms": "7000"})],
        incremental=False,
    )
    assert answer == {"topic": {topic: "OK"}}
    assert set_configs(topic_configs(admin, topic)) == {
        "retention.bytes": "4096",
        "cleanup.policy": "compact",
        "segment.ms": "7000",
    }
    # (An empty dict resets every key that is set.)
    kp_admin.reset_configs([KpConfigResource(ConfigResourceType.TOPIC, topic, configs={})])
    assert set_configs(topic_configs(admin, topic)) == {}


# -- cluster and topic listing ----------------------------------------------------------------


def test_describe_cluster(admin: AdminClient, kp_admin: KafkaAdminClient, stack: Stack) -> None:
    described = admin.describe_cluster(request_timeout=DEADLINE_S).result(DEADLINE_S)
    assert described.cluster_id
    assert described.controller.id == 0
    assert [(n.id, n.host, n.port) for n in described.nodes] == [(0, "127.0.0.1", stack.kafka_port)]
    kp = kp_admin.describe_cluster()
    assert kp["cluster_id"] == described.cluster_id
    assert kp["controller_id"] == 0
    assert [(b["broker_id"], b["host"], b["port"]) for b in kp["brokers"]] == [
        (0, "127.0.0.1", stack.kafka_port)
    ]


def test_list_topics_kafka_python_and_kcat(
    kp_admin: KafkaAdminClient, grpc: Client, bootstrap: str
) -> None:
    grpc.create_topic("listed-a", 1)
    grpc.create_topic("listed-b", 3)
    listed = kp_admin.list_topics()
    assert {"listed-a", "listed-b"} <= set(listed)
    assert set(listed) == {t.name for t in grpc.list_topics()}
    if shutil.which("kcat"):
        out = subprocess.run(
            ["kcat", "-b", bootstrap, "-L"], capture_output=True, text=True, timeout=DEADLINE_S
        )
        assert out.returncode == 0, out.stderr
        assert 'topic "listed-b" with 3 partitions' in out.stdout


def list_all_topics(bootstrap: str) -> Any:
    """Cluster metadata, or the error as text (no traceback keeps the AdminClient alive)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        return admin.list_topics(timeout=DEADLINE_S)
    except KafkaException as exc:
        return str(exc)


def test_list_topics_confluent(bootstrap: str, grpc: Client) -> None:
    """librdkafka 2.x asks for all topics with a Metadata v12 request that carries 3 bytes
    after its body (an array-count placeholder left unshrunk); Kafka ignores trailing bytes."""
    grpc.create_topic("listed-c", 2)
    meta = list_all_topics(bootstrap)
    assert not isinstance(meta, str), meta
    assert "listed-c" in meta.topics
    assert len(meta.topics["listed-c"].partitions) == 2
    assert set(meta.topics) == {t.name for t in grpc.list_topics()}
    assert list(meta.brokers) == [0]


# -- groups -----------------------------------------------------------------------------------


def group_consumer(bootstrap: str, group: str, topic: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    return consumer


def consume_and_commit(consumer: Consumer, count: int) -> None:
    got: list[Message] = []

    def enough() -> bool | None:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            got.append(msg)
        return True if len(got) >= count else None

    poll_until(enough, f"{count} records through the group")
    consumer.commit(asynchronous=False)


def wait_assigned(consumer: Consumer) -> None:
    def assigned() -> bool | None:
        msg = consumer.poll(0.2)
        assert msg is None or msg.error(), "no records were expected"
        return True if consumer.assignment() else None

    poll_until(assigned, "the group member's assignment")


def listed_groups(admin: AdminClient, **kwargs: Any) -> dict[str, ConsumerGroupState]:
    listing = admin.list_consumer_groups(request_timeout=DEADLINE_S, **kwargs).result(DEADLINE_S)
    assert not listing.errors
    return {g.group_id: g.state for g in listing.valid}


def describe_group(admin: AdminClient, group: str) -> Any:
    return admin_result(admin.describe_consumer_groups([group], request_timeout=DEADLINE_S))


def empty_group(described: Any) -> Any:
    return described if described.state == ConsumerGroupState.EMPTY else None


def kp_wait_empty(kp_admin: KafkaAdminClient, group: str) -> None:
    """Waits until the group's last member has left (consumers leave when closed)."""

    def empty() -> bool | None:
        state = kp_admin.describe_groups([group])[group]["group_state"]
        return True if state == "Empty" else None

    poll_until(empty, f"group {group} to become empty")


def test_list_describe_delete_groups_confluent(
    admin: AdminClient, bootstrap: str, grpc: Client
) -> None:
    topic = "grouped-ck"
    grpc.create_topic(topic, 2)
    produce(bootstrap, topic, 4, partition=0)
    produce(bootstrap, topic, 4, partition=1)
    consumer = group_consumer(bootstrap, "admin-g1", topic)
    try:
        consume_and_commit(consumer, 8)
        assert listed_groups(admin)["admin-g1"] == ConsumerGroupState.STABLE
        stable = listed_groups(admin, states={ConsumerGroupState.STABLE})
        assert "admin-g1" in stable
        assert "admin-g1" not in listed_groups(admin, states={ConsumerGroupState.EMPTY})
        described = describe_group(admin, "admin-g1")
        assert described.group_id == "admin-g1"
        assert described.state == ConsumerGroupState.STABLE
        assert not described.is_simple_consumer_group
        assert described.coordinator.id == 0
        (member,) = described.members
        assert sorted((tp.topic, tp.partition) for tp in member.assignment.topic_partitions) == [
            (topic, 0),
            (topic, 1),
        ]
        # A group with members cannot be deleted.
        assert error_code(admin.delete_consumer_groups(["admin-g1"])) == KafkaError.NON_EMPTY_GROUP
    finally:
        consumer.close()

    described = poll_until(
        lambda: empty_group(describe_group(admin, "admin-g1")), "the group to become empty"
    )
    assert described.members == []
    assert listed_groups(admin)["admin-g1"] == ConsumerGroupState.EMPTY
    committed = admin_result(
        admin.list_consumer_group_offsets(
            [
                ConsumerGroupTopicPartitions(
                    "admin-g1", [TopicPartition(topic, 0), TopicPartition(topic, 1)]
                )
            ]
        )
    )
    assert sorted((tp.partition, tp.offset) for tp in committed.topic_partitions) == [
        (0, 4),
        (1, 4),
    ]
    assert admin_result(admin.delete_consumer_groups(["admin-g1"])) is None
    assert "admin-g1" not in listed_groups(admin)
    assert error_code(admin.delete_consumer_groups(["admin-g1"])) == KafkaError.GROUP_ID_NOT_FOUND


def test_groups_kafka_python_and_offset_delete(
    kp_admin: KafkaAdminClient, admin: AdminClient, bootstrap: str, grpc: Client
) -> None:
    topic = "grouped-kp"
    grpc.create_topic(topic, 1)
    produce(bootstrap, topic, 3)
    consumer = group_consumer(bootstrap, "admin-g2", topic)
    try:
        consume_and_commit(consumer, 3)
        groups = {g["group_id"]: g for g in kp_admin.list_groups()}
        assert groups["admin-g2"]["protocol_type"] == "consumer"
        assert groups["admin-g2"]["group_state"] == "Stable"
        described = kp_admin.describe_groups(["admin-g2"])["admin-g2"]
        assert described["group_state"] == "Stable"
        assert described["protocol_type"] == "consumer"
        assert len(described["members"]) == 1
        # Offsets of a topic the group's members consume cannot be deleted.
        answer = kp_admin.delete_group_offsets("admin-g2", [KpTopicPartition(topic, 0)])
        assert answer == {KpTopicPartition(topic, 0): kerr.GroupSubscribedToTopicError}
        assert kp_admin.delete_groups(["admin-g2"]) == {"admin-g2": "NonEmptyGroupError"}
    finally:
        consumer.close()
    kp_wait_empty(kp_admin, "admin-g2")

    offsets = kp_admin.list_group_offsets({"admin-g2": None})["admin-g2"]
    assert {tp: om.offset for tp, om in offsets.items()} == {KpTopicPartition(topic, 0): 3}
    # Offsets of an empty group go at once.
    answer = kp_admin.delete_group_offsets("admin-g2", [KpTopicPartition(topic, 0)])
    assert answer == {KpTopicPartition(topic, 0): kerr.NoError}
    assert kp_admin.list_group_offsets({"admin-g2": None})["admin-g2"] == {}
    with pytest.raises(kerr.GroupIdNotFoundError):
        kp_admin.delete_group_offsets("no-such-group", [KpTopicPartition(topic, 0)])
    # A new member starts from auto.offset.reset again.
    consumer = group_consumer(bootstrap, "admin-g2", topic)
    try:
        consume_and_commit(consumer, 3)
    finally:
        consumer.close()
    kp_wait_empty(kp_admin, "admin-g2")
    assert kp_admin.delete_groups(["admin-g2"]) == {"admin-g2": "OK"}
    assert "admin-g2" not in {g["group_id"] for g in kp_admin.list_groups()}
    assert "admin-g2" not in listed_groups(admin)


def test_offset_delete_of_a_topic_no_member_consumes(
    kp_admin: KafkaAdminClient, bootstrap: str, grpc: Client
) -> None:
    consumed, dropped = "offset-delete-consumed", "offset-delete-dropped"
    grpc.create_topic(consumed, 1)
    grpc.create_topic(dropped, 1)
    produce(bootstrap, dropped, 2)
    consumer = group_consumer(bootstrap, "admin-g3", dropped)
    try:
        consume_and_commit(consumer, 2)
    finally:
        consumer.close()
    consumer = group_consumer(bootstrap, "admin-g3", consumed)
    try:
        wait_assigned(consumer)
        answer = kp_admin.delete_group_offsets(
            "admin-g3", [KpTopicPartition(consumed, 0), KpTopicPartition(dropped, 0)]
        )
        assert answer[KpTopicPartition(consumed, 0)] is kerr.GroupSubscribedToTopicError
        assert answer[KpTopicPartition(dropped, 0)] is kerr.NoError
    finally:
        consumer.close()


# -- DeleteRecords ----------------------------------------------------------------------------


def test_delete_records(
    admin: AdminClient, kp_admin: KafkaAdminClient, bootstrap: str, grpc: Client
) -> None:
    topic = "truncated"
    grpc.create_topic(topic, 2)
    produce(bootstrap, topic, 10)  # one batch: timestamps TS0, TS0 + 1000, ...
    tp = TopicPartition(topic, 0, 4)
    deleted = admin_result(admin.delete_records([tp], request_timeout=DEADLINE_S))
    assert deleted.low_watermark == 4

    def listed(spec: OffsetSpec) -> tuple[int, int]:
        answer = admin_result(admin.list_offsets({TopicPartition(topic, 0): spec}))
        return answer.offset, answer.timestamp

    assert listed(OffsetSpec.earliest())[0] == 4
    assert listed(OffsetSpec.latest())[0] == 10
    # Timestamp lookups never answer a deleted record (they sit in the same batch).
    assert listed(OffsetSpec.for_timestamp(0)) == (4, TS0 + 4000)
    assert listed(OffsetSpec.for_timestamp(TS0 + 2500)) == (4, TS0 + 4000)
    assert listed(OffsetSpec.for_timestamp(TS0 + 6500)) == (7, TS0 + 7000)
    assert listed(OffsetSpec.max_timestamp()) == (9, TS0 + 9000)

    # A consumer from the beginning starts at the log start offset ...
    assert [m.offset() for m in consume_from(bootstrap, topic, 0, 6)] == list(range(4, 10))
    # ... and one asking for a deleted offset is reset there by auto.offset.reset=earliest.
    assert consume_from(bootstrap, topic, 0, 1, start=1)[0].offset() == 4
    _, _, _, log_start = grpc.consume(topic, 0, 4)
    assert log_start == 4

    # kafka-python; an offset at or below the start changes nothing, past the end fails.
    answer = kp_admin.delete_records({KpTopicPartition(topic, 0): 6})
    assert answer[KpTopicPartition(topic, 0)]["low_watermark"] == 6
    answer = kp_admin.delete_records({KpTopicPartition(topic, 0): 2})
    assert answer[KpTopicPartition(topic, 0)]["low_watermark"] == 6
    assert error_code(admin.delete_records([TopicPartition(topic, 0, 11)])) == (
        KafkaError.OFFSET_OUT_OF_RANGE
    )
    # (The clients check partitions against metadata; partition_leader_id makes kafka-python
    # ask the broker all the same.)
    for unknown in (KpTopicPartition(topic, 5), KpTopicPartition("no-such-topic", 0)):
        with pytest.raises(kerr.UnknownTopicOrPartitionError):
            kp_admin.delete_records({unknown: 1}, partition_leader_id=0)
    # -1 deletes everything up to the high watermark.
    assert admin_result(admin.delete_records([TopicPartition(topic, 0, -1)])).low_watermark == 10
    assert listed(OffsetSpec.earliest())[0] == 10
    assert listed(OffsetSpec.max_timestamp())[0] == -1
    assert listed(OffsetSpec.for_timestamp(0))[0] == -1
    produce(bootstrap, topic, 1, tag="after-")
    assert [(m.offset(), m.value()) for m in consume_from(bootstrap, topic, 0, 1)] == [
        (10, b"after-0")
    ]
