"""Kafka ACLs end to end on a real stack with ``authorizer = acl``: an ACL allows exactly what
it says over the Kafka and gRPC listeners, a deny wins, new ACLs apply within the refresh
(wait_until), `streamctl acl` bootstraps the first ones straight into the metadata store, and
confluent-kafka's and kafka-python's admin clients create, describe and delete ACLs.

The listener is open, so every client is ``User:ANONYMOUS`` — a real principal for ACLs,
denied everything until an ACL allows it (allow_everyone_if_no_acl_found is false). One stack
serves the module; every test uses its own topics and groups.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import auth_stack_tools
import grpc
import pytest
from auth_stack_tools import streamctl
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from kafka.admin import ACL, ACLFilter, KafkaAdminClient, ResourcePattern, ResourcePatternFilter
from kafka.admin import ACLOperation as KpOperation
from kafka.admin import ACLPermissionType as KpPermission
from kafka.admin import ACLResourcePatternType as KpPatternType
from kafka.admin import ResourceType as KpResourceType

from streamhouse.client import Client, Record, StreamHouseError
from streamhouse.kafka import messages
from streamhouse.testing import Stack, kafka_call, wait_until

ANON = "User:ANONYMOUS"
REFRESH_WAIT_S = 15.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("acl") / "data"
    env = {
        "STREAMHOUSE_AUTHORIZER": "acl",
        "STREAMHOUSE_SUPER_USERS": "User:admin",
        "STREAMHOUSE_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    }
    with Stack(data, env=env) as running:
        yield running


def streamctl_acl(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return streamctl(stack, "acl", *args)


def bootstrap_acl(stack: Stack, *args: str) -> None:
    done = streamctl_acl(stack, "add", "--metadata", str(stack.settings.metadata_path), *args)
    assert done.returncode == 0, done.stderr


def describe_acls_error(stack: Stack) -> int:
    """The error code of a DescribeAcls (every binding) on a fresh connection. Raw, because
    confluent-kafka's describe_acls reports a refused DescribeAcls as an empty list."""
    request = messages.DescribeAclsRequest(
        resource_type_filter=1,  # ANY
        resource_name_filter=None,
        pattern_type_filter=1,  # ANY
        principal_filter=None,
        host_filter=None,
        operation=1,  # ANY
        permission_type=1,  # ANY
    )
    return int(kafka_call(stack.kafka_address, 29, 2, request).error_code)


@pytest.fixture(scope="module")
def cluster_admin(stack: Stack) -> AdminClient:
    """ANONYMOUS allowed to manage ACLs (ALTER and DESCRIBE on the cluster, not CREATE),
    bootstrapped with `streamctl acl add --metadata` before anyone could call CreateAcls."""
    admin = AdminClient({"bootstrap.servers": stack.kafka_address})
    assert describe_acls_error(stack) == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    binding = topic_acl("t", AclOperation.READ)
    with pytest.raises(KafkaException) as refused:
        admin.create_acls([binding], request_timeout=10)[binding].result()
    assert refused.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    bootstrap_acl(
        stack,
        "--allow-principal",
        ANON,
        "--operation",
        "Alter",
        "--operation",
        "Describe",
        "--cluster",
    )
    wait_until(
        lambda: describe_acls_error(stack) == 0,
        REFRESH_WAIT_S,
        "the bootstrapped cluster ACL applies",
    )
    return admin


def described(
    admin: AdminClient, resource: ResourceType, name: str, pattern: ResourcePatternType
) -> list[AclBinding]:
    """What confluent-kafka's describe_acls answers for the resources ``resource``, ``name``,
    ``pattern`` select (any principal, host, operation and permission)."""
    selection = AclBindingFilter(
        resource, name, pattern, None, None, AclOperation.ANY, AclPermissionType.ANY
    )
    return list(admin.describe_acls(selection, request_timeout=10).result())


def topic_acl(
    name: str,
    operation: AclOperation,
    permission: AclPermissionType = AclPermissionType.ALLOW,
    pattern: ResourcePatternType = ResourcePatternType.LITERAL,
    resource: ResourceType = ResourceType.TOPIC,
) -> AclBinding:
    return AclBinding(resource, name, pattern, ANON, "*", operation, permission)


def create(admin: AdminClient, *bindings: AclBinding) -> None:
    for future in admin.create_acls(list(bindings), request_timeout=10).values():
        assert future.result() is None


def delete(admin: AdminClient, *bindings: AclBinding) -> list[AclBinding]:
    filters = [
        AclBindingFilter(
            b.restype,
            b.name,
            b.resource_pattern_type,
            b.principal,
            b.host,
            b.operation,
            b.permission_type,
        )
        for b in bindings
    ]
    deleted: list[AclBinding] = []
    for future in admin.delete_acls(filters, request_timeout=10).values():
        deleted += future.result()
    return deleted


def new_topic(admin: AdminClient, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    create(admin, topic_acl(name, AclOperation.ALL))
    wait_until(
        lambda: _try_create_topic(admin, name), REFRESH_WAIT_S, f"topic {name} can be created"
    )
    return name


def _try_create_topic(admin: AdminClient, name: str) -> bool:
    try:
        admin.create_topics([NewTopic(name, 1)], request_timeout=10)[name].result()
        return True
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return True
        return False


def produce_error(stack: Stack, topic: str) -> KafkaError | None:
    """The delivery error of one record produced to ``topic`` (None: it was stored)."""
    return auth_stack_tools.produce_error({"bootstrap.servers": stack.kafka_address}, topic)


def produce_refused(stack: Stack, topic: str) -> bool:
    """Is a record produced to ``topic`` refused with TOPIC_AUTHORIZATION_FAILED?"""
    error = produce_error(stack, topic)
    return error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_a_producer_is_denied_until_an_acl_allows_it(
    stack: Stack, cluster_admin: AdminClient
) -> None:
    admin = cluster_admin
    name = new_topic(admin, "acl-produce")
    # The ALL allow was only for creating it: now ANONYMOUS may only describe it.
    assert len(delete(admin, topic_acl(name, AclOperation.ALL))) == 1
    create(admin, topic_acl(name, AclOperation.DESCRIBE))
    wait_until(
        lambda: produce_refused(stack, name),
        REFRESH_WAIT_S,
        "a produce without WRITE is refused with TOPIC_AUTHORIZATION_FAILED",
    )
    create(admin, topic_acl(name, AclOperation.WRITE))
    wait_until(
        lambda: produce_error(stack, name) is None, REFRESH_WAIT_S, "WRITE allows the produce"
    )
    # A deny wins over the allow.
    create(admin, topic_acl(name, AclOperation.WRITE, AclPermissionType.DENY))
    wait_until(
        lambda: produce_refused(stack, name), REFRESH_WAIT_S, "a WRITE deny beats the WRITE allow"
    )


def test_consume_needs_read_on_topic_and_group(stack: Stack, cluster_admin: AdminClient) -> None:
    admin = cluster_admin
    name = new_topic(admin, "acl-consume")
    assert produce_error(stack, name) is None  # ALL on the topic
    group = f"acl-group-{uuid.uuid4().hex[:8]}"

    def consume_error() -> int | None:
        consumer = Consumer(
            {
                "bootstrap.servers": stack.kafka_address,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.subscribe([name])
            for _ in range(20):
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    return int(msg.error().code())
                consumer.commit(msg, asynchronous=False)
                return None
            return -1
        except KafkaException as exc:
            return int(exc.args[0].code())
        finally:
            consumer.close()

    wait_until(
        lambda: consume_error() == KafkaError.GROUP_AUTHORIZATION_FAILED,
        REFRESH_WAIT_S,
        "a consumer without READ on its group is refused",
    )
    create(admin, topic_acl(group, AclOperation.READ, resource=ResourceType.GROUP))
    wait_until(lambda: consume_error() is None, 30, "READ on topic and group allows consuming")


def test_metadata_hides_topics_the_caller_may_not_describe(
    stack: Stack, cluster_admin: AdminClient
) -> None:
    admin = cluster_admin
    seen = new_topic(admin, "acl-seen")
    hidden = new_topic(admin, "acl-hidden")
    delete(admin, topic_acl(hidden, AclOperation.ALL))
    wait_until(
        lambda: hidden not in admin.list_topics(timeout=10).topics,
        REFRESH_WAIT_S,
        "a topic without DESCRIBE is not listed",
    )
    listed = admin.list_topics(timeout=10)
    assert seen in listed.topics
    named = admin.list_topics(topic=hidden, timeout=10).topics[hidden]
    assert named.error is not None and named.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # Auto-creation needs CREATE (on the cluster or the topic): a missing topic is refused.
    missing = f"acl-missing-{uuid.uuid4().hex[:8]}"
    create(admin, topic_acl(missing, AclOperation.DESCRIBE))
    wait_until(
        lambda: (
            (t := admin.list_topics(topic=missing, timeout=10).topics[missing]).error is not None
            and t.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        ),
        REFRESH_WAIT_S,
        "auto-creation without CREATE is refused",
    )
    create(admin, topic_acl(missing, AclOperation.CREATE))
    wait_until(
        lambda: admin.list_topics(topic=missing, timeout=10).topics[missing].error is None,
        REFRESH_WAIT_S,
        "CREATE on the topic lets Metadata create it",
    )


def test_admin_clients_manage_acls(stack: Stack, cluster_admin: AdminClient) -> None:
    admin = cluster_admin
    prefix = f"acl-admin-{uuid.uuid4().hex[:6]}"
    allow = topic_acl(prefix, AclOperation.READ, pattern=ResourcePatternType.PREFIXED)
    deny = AclBinding(
        ResourceType.GROUP,
        prefix,
        ResourcePatternType.LITERAL,
        "User:mallory",
        "10.1.2.3",
        AclOperation.ALL,
        AclPermissionType.DENY,
    )
    create(admin, allow, deny)
    found = described(admin, ResourceType.ANY, prefix, ResourcePatternType.ANY)
    assert sorted(found, key=str) == sorted([allow, deny], key=str)
    # MATCH: what applies to topic <prefix>-x (the prefixed allow, not the group deny).
    matching = described(admin, ResourceType.TOPIC, f"{prefix}-x", ResourcePatternType.MATCH)
    assert allow in matching and deny not in matching
    # An invalid binding is refused with its reason.
    bad = AclBinding(
        ResourceType.TOPIC,
        "t",
        ResourcePatternType.LITERAL,
        ANON,
        "not-an-ip",
        AclOperation.READ,
        AclPermissionType.ALLOW,
    )
    with pytest.raises(KafkaException, match="IP address"):
        admin.create_acls([bad], request_timeout=10)[bad].result()
    assert sorted(delete(admin, allow, deny), key=str) == sorted([allow, deny], key=str)
    assert delete(admin, allow) == []

    # kafka-python speaks the same APIs.
    kp = KafkaAdminClient(bootstrap_servers=stack.kafka_address)
    try:
        kp_acl = ACL(
            principal=ANON,
            host="*",
            operation=KpOperation.WRITE,
            permission_type=KpPermission.ALLOW,
            resource_pattern=ResourcePattern(
                KpResourceType.TOPIC, f"{prefix}-kp", KpPatternType.LITERAL
            ),
        )
        result = kp.create_acls([kp_acl])
        assert result["failed"] == [] and len(result["succeeded"]) == 1
        found, error = kp.describe_acls(
            ACLFilter(
                principal=None,
                host=None,
                operation=KpOperation.ANY,
                permission_type=KpPermission.ANY,
                resource_pattern=ResourcePatternFilter(
                    KpResourceType.TOPIC, f"{prefix}-kp", KpPatternType.LITERAL
                ),
            )
        )
        assert [(a.principal, a.operation, a.resource_pattern.resource_name) for a in found] == [
            (ANON, KpOperation.WRITE, f"{prefix}-kp")
        ]
    finally:
        kp.close()

    # streamctl sees what the admin clients made, in the same store.
    listed = streamctl_acl(
        stack, "list", "--metadata", str(stack.settings.metadata_path), "--topic", f"{prefix}-kp"
    )
    assert listed.returncode == 0, listed.stderr
    assert f"ALLOW {ANON} WRITE on TOPIC {prefix}-kp (LITERAL)" in listed.stdout
    # ... and so does it through the broker (PLAINTEXT: as ANONYMOUS, allowed DESCRIBE).
    wire = streamctl_acl(
        stack, "list", "--bootstrap-server", stack.kafka_address, "--topic", f"{prefix}-kp"
    )
    assert wire.returncode == 0, wire.stderr
    assert wire.stdout == listed.stdout


def test_grpc_is_enforced_with_the_same_acls(stack: Stack, cluster_admin: AdminClient) -> None:
    admin = cluster_admin
    name = new_topic(admin, "acl-grpc")
    with Client(stack.grpc_address) as client:
        assert client.produce(name, b"v", key=b"k") is not None  # ALL on the topic
        other = f"acl-grpc-denied-{uuid.uuid4().hex[:8]}"
        with pytest.raises(StreamHouseError) as refused:
            client.produce(other, b"v")
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert ANON in str(refused.value) and "WRITE" in str(refused.value)
        assert other in str(refused.value)
        with pytest.raises(StreamHouseError) as refused:
            client.get_topic(other)  # refused before "not found": existence is not told
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(StreamHouseError) as refused:
            client.commit_offset("acl-no-such-grant", name, 0, 0)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "GROUP 'acl-no-such-grant'" in str(refused.value)
        assert client.describe_storage().topics is not None  # DESCRIBE on the cluster
        listed = {t.name for t in client.list_topics()}
        assert name in listed
        delete(admin, topic_acl(name, AclOperation.ALL))
        create(admin, topic_acl(name, AclOperation.READ))

        def produce_refused() -> bool:
            try:
                client.produce(name, b"v")
                return False
            except StreamHouseError as exc:
                return exc.code == grpc.StatusCode.PERMISSION_DENIED

        wait_until(produce_refused, REFRESH_WAIT_S, "gRPC produce without WRITE is refused")
        records, *_ = client.consume(name, 0, offset=-2)
        assert records  # READ still allows consuming


def test_host_specific_acls_apply_to_the_client_address(
    stack: Stack, cluster_admin: AdminClient
) -> None:
    admin = cluster_admin
    name = new_topic(admin, "acl-host")
    elsewhere = AclBinding(
        ResourceType.TOPIC,
        name,
        ResourcePatternType.LITERAL,
        ANON,
        "10.9.9.9",
        AclOperation.WRITE,
        AclPermissionType.DENY,
    )
    create(admin, elsewhere)
    assert produce_error(stack, name) is None  # the deny is for another host
    here = AclBinding(
        ResourceType.TOPIC,
        name,
        ResourcePatternType.LITERAL,
        ANON,
        "127.0.0.1",
        AclOperation.WRITE,
        AclPermissionType.DENY,
    )
    create(admin, here)
    wait_until(
        lambda: produce_refused(stack, name),
        REFRESH_WAIT_S,
        "a deny for the client's own address applies",
    )


def test_transactions_need_write_on_the_transactional_id(
    stack: Stack, cluster_admin: AdminClient
) -> None:
    admin = cluster_admin
    name = new_topic(admin, "acl-txn")
    tid = f"acl-tid-{uuid.uuid4().hex[:8]}"

    def producer() -> Producer:
        return Producer(
            {
                "bootstrap.servers": stack.kafka_address,
                "transactional.id": tid,
                "message.timeout.ms": 10_000,
            }
        )

    with pytest.raises(KafkaException) as refused:
        producer().init_transactions(10)
    assert refused.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    create(
        admin,
        topic_acl(tid, AclOperation.WRITE, resource=ResourceType.TRANSACTIONAL_ID),
    )

    def commits() -> bool:
        p = producer()
        try:
            p.init_transactions(10)
        except KafkaException:
            return False
        p.begin_transaction()
        p.produce(name, b"in a transaction")
        p.commit_transaction(10)
        return True

    wait_until(commits, REFRESH_WAIT_S, "WRITE on the transactional id allows transactions")


def test_grpc_streams_are_enforced(stack: Stack, cluster_admin: AdminClient) -> None:
    admin = cluster_admin
    name = new_topic(admin, "acl-grpc-stream")
    denied = f"acl-grpc-stream-denied-{uuid.uuid4().hex[:8]}"
    with Client(stack.grpc_address) as client:
        acks = list(client.produce_stream(name, [[Record(value=b"a")], [Record(value=b"b")]]))
        assert len(acks) == 2
        with pytest.raises(StreamHouseError) as refused:
            list(client.produce_stream(denied, [[Record(value=b"a")]]))
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert denied in str(refused.value)
        stream = client.subscribe(name, 0, offset=-2)
        assert next(stream).value == b"a"
        stream.close()
        with pytest.raises(StreamHouseError) as refused:
            next(client.subscribe(denied, 0, offset=-2))
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_produce_creates_a_missing_topic_only_with_create(
    stack: Stack, cluster_admin: AdminClient
) -> None:
    admin = cluster_admin
    prefix = f"acl-autowrite-{uuid.uuid4().hex[:6]}-"
    name = f"{prefix}t"
    write = topic_acl(prefix, AclOperation.WRITE, pattern=ResourcePatternType.PREFIXED)
    create(admin, write)
    P = messages.ProduceRequest

    def produce_code() -> int:
        request = P(
            acks=-1,
            timeout_ms=10_000,
            topic_data=[
                P.TopicProduceData(
                    name=name, partition_data=[P.PartitionProduceData(index=0, records=b"")]
                )
            ],
        )
        response = kafka_call(stack.kafka_address, 0, 9, request)
        return int(response.responses[0].partition_responses[0].error_code)

    def topic_code() -> int:
        request = messages.MetadataRequest(
            topics=[messages.MetadataRequest.MetadataRequestTopic(name=name)],
            allow_auto_topic_creation=False,
        )
        return int(kafka_call(stack.kafka_address, 3, 9, request).topics[0].error_code)

    wait_until(lambda: produce_code() == 3, REFRESH_WAIT_S, "WRITE alone does not create")
    assert topic_code() == KafkaError.UNKNOWN_TOPIC_OR_PART  # refused, not created
    create(admin, topic_acl(prefix, AclOperation.CREATE, pattern=ResourcePatternType.PREFIXED))
    wait_until(lambda: produce_code() != 3, REFRESH_WAIT_S, "CREATE lets a produce create it")
    assert topic_code() == 0


def test_a_revoked_read_ends_a_grpc_subscription(stack: Stack, cluster_admin: AdminClient) -> None:
    admin = cluster_admin
    name = new_topic(admin, "acl-grpc-revoke")
    create(admin, topic_acl(name, AclOperation.WRITE), topic_acl(name, AclOperation.READ))
    delete(admin, topic_acl(name, AclOperation.ALL))
    with Client(stack.grpc_address) as client:
        client.produce(name, b"before")
        stream = client.subscribe(name, 0, offset=-2)
        try:
            assert next(stream).value == b"before"
            delete(admin, topic_acl(name, AclOperation.READ))
            client.produce(name, b"after")  # WRITE is still allowed
            with pytest.raises(StreamHouseError) as refused:
                next(stream)
            assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        finally:
            stream.close()
