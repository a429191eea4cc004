"""ACLs for authenticated users: a stack with SASL on the Kafka listener, tokens on gRPC and
``authorizer = acl`` with ``User:admin`` as super user.

The super user does everything without any ACL (creates topics and ACLs); an ACL for
``User:alice`` lets alice, and not bob, write; alice may not manage ACLs; over gRPC the token's
user is the principal (PERMISSION_DENIED names alice; admin's token passes). One stack.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from auth_stack_tools import produce_error, streamctl
from confluent_kafka import KafkaError, KafkaException
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
from kafka.admin import ACLFilter, KafkaAdminClient, ResourcePatternFilter
from kafka.admin import ACLOperation as KpOperation
from kafka.admin import ACLPermissionType as KpPermission
from kafka.admin import ACLResourcePatternType as KpPatternType
from kafka.admin import ResourceType as KpResourceType

from streamhouse.client import Client, StreamHouseError
from streamhouse.testing import Stack, wait_until

PROTOCOL = "SASL_PLAINTEXT"
MECHANISM = "SCRAM-SHA-256"
WAIT_S = 15.0
TOPIC = "acl-sasl-orders"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("acl-sasl") / "data"
    env = {
        "STREAMHOUSE_KAFKA_SECURITY_PROTOCOL": PROTOCOL,
        "STREAMHOUSE_GRPC_AUTH": "token",
        "STREAMHOUSE_AUTHORIZER": "acl",
        "STREAMHOUSE_SUPER_USERS": "User:admin",
    }
    with Stack(data, env=env) as running:
        for user in ("admin", "alice", "bob"):
            added = streamctl(
                running, "user", "add", user, "--password-stdin", stdin=f"{user}-pw\n"
            )
            assert added.returncode == 0, added.stderr
        yield running


def conf(stack: Stack, user: str) -> dict[str, str]:
    return {
        "bootstrap.servers": stack.kafka_address,
        "security.protocol": PROTOCOL,
        "sasl.mechanism": MECHANISM,
        "sasl.username": user,
        "sasl.password": f"{user}-pw",
    }


def produce_code(stack: Stack, user: str, topic: str = TOPIC) -> int | None:
    error = produce_error(conf(stack, user), topic)
    return None if error is None else int(error.code())


def token(stack: Stack, user: str) -> str:
    made = streamctl(stack, "token", "create", user)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def alice_writes(principal: str = "User:alice") -> AclBinding:
    return AclBinding(
        ResourceType.TOPIC,
        TOPIC,
        ResourcePatternType.LITERAL,
        principal,
        "*",
        AclOperation.WRITE,
        AclPermissionType.ALLOW,
    )


def test_super_user_and_per_user_acls(stack: Stack) -> None:
    admin = AdminClient(conf(stack, "admin"))
    # The super user needs no ACL: it creates the topic and writes to it.
    admin.create_topics([NewTopic(TOPIC, 1)], request_timeout=10)[TOPIC].result()
    assert produce_code(stack, "admin") is None
    assert produce_code(stack, "alice") == KafkaError.TOPIC_AUTHORIZATION_FAILED

    binding = alice_writes()
    admin.create_acls([binding], request_timeout=10)[binding].result()
    wait_until(lambda: produce_code(stack, "alice") is None, WAIT_S, "alice may write")
    assert produce_code(stack, "bob") == KafkaError.TOPIC_AUTHORIZATION_FAILED

    # alice is no administrator.
    alice_admin = AdminClient(conf(stack, "alice"))
    other = alice_writes("User:bob")
    with pytest.raises(KafkaException) as refused:
        alice_admin.create_acls([other], request_timeout=10)[other].result()
    assert refused.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED

    described = admin.describe_acls(
        AclBindingFilter(
            ResourceType.TOPIC,
            TOPIC,
            ResourcePatternType.LITERAL,
            None,
            None,
            AclOperation.ANY,
            AclPermissionType.ANY,
        ),
        request_timeout=10,
    ).result()
    assert described == [binding]

    kp = KafkaAdminClient(
        bootstrap_servers=stack.kafka_address,
        security_protocol=PROTOCOL,
        sasl_mechanism=MECHANISM,
        sasl_plain_username="admin",
        sasl_plain_password="admin-pw",
    )
    try:
        found, _ = kp.describe_acls(
            ACLFilter(
                principal="User:alice",
                host=None,
                operation=KpOperation.ANY,
                permission_type=KpPermission.ANY,
                resource_pattern=ResourcePatternFilter(
                    KpResourceType.TOPIC, TOPIC, KpPatternType.ANY
                ),
            )
        )
        assert [(a.principal, a.operation) for a in found] == [("User:alice", KpOperation.WRITE)]
    finally:
        kp.close()


def test_grpc_principal_is_the_token_user(stack: Stack) -> None:
    with Client(stack.grpc_address, token=token(stack, "admin")) as client:
        client.create_topic("acl-sasl-grpc")
        client.produce("acl-sasl-grpc", b"v")
    with Client(stack.grpc_address, token=token(stack, "alice")) as client:
        with pytest.raises(StreamHouseError) as refused:
            client.consume("acl-sasl-grpc", 0, offset=-2)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "User:alice" in str(refused.value) and "READ" in str(refused.value)
        assert "acl-sasl-grpc" not in {t.name for t in client.list_topics()}


def test_streamctl_acl_through_the_broker_as_a_user(stack: Stack) -> None:
    login = ["--bootstrap-server", stack.kafka_address, "--security-protocol", PROTOCOL]
    as_admin = [*login, "--user", "admin", "--password-stdin", "--sasl-mechanism", MECHANISM]
    added = streamctl(
        stack,
        "acl",
        "add",
        *as_admin,
        "--allow-principal",
        "User:bob",
        "--operation",
        "Read",
        "--group",
        "acl-sasl-cli",
        stdin="admin-pw\n",
    )
    assert added.returncode == 0, added.stderr
    listed = streamctl(
        stack, "acl", "list", *as_admin, "--group", "acl-sasl-cli", "--json", stdin="admin-pw\n"
    )
    assert listed.returncode == 0, listed.stderr
    assert '"principal": "User:bob"' in listed.stdout and '"operation": "READ"' in listed.stdout
    # bob may not manage ACLs: the broker refuses, and streamctl says why.
    as_bob = [*login, "--user", "bob", "--password-stdin", "--sasl-mechanism", "PLAIN"]
    refused = streamctl(stack, "acl", "list", *as_bob, "--group", "acl-sasl-cli", stdin="bob-pw\n")
    assert refused.returncode == 1 and "CLUSTER_AUTHORIZATION_FAILED" in refused.stderr
    wrong = streamctl(stack, "acl", "list", *as_bob, stdin="nope\n")
    assert wrong.returncode == 1 and "SASL authentication" in wrong.stderr
    deleted = streamctl(
        stack,
        "acl",
        "delete",
        *as_admin,
        "--group",
        "acl-sasl-cli",
        "--allow-principal",
        "User:bob",
        stdin="admin-pw\n",
    )
    assert deleted.returncode == 0 and "deleted: ALLOW User:bob READ" in deleted.stdout
