"""Authentication on a plaintext stack: the Kafka listener requires SASL (SASL_PLAINTEXT) and
the gRPC service a token (grpc_auth=token).

confluent-kafka, kafka-python and aiokafka log in with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512
and are refused with a wrong password; a client that does not authenticate is disconnected;
the SCRAM credential admin APIs (Alter/DescribeUserScramCredentials) add, describe and delete
users that can then (not) log in; `streamctl user` and `streamctl token` manage the stores;
gRPC calls need a valid token, the health service does not; SaslHandshake v0 with raw tokens
works. One stack for the module.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import grpc
import pytest
from auth_kafka_clients import CLIENTS, MECHANISMS, Auth, refused, round_trip
from auth_stack_tools import streamctl
from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streamhouse.client import Client, StreamHouseError
from streamhouse.kafka.framing import decode_response, encode_request
from streamhouse.kafka.messages import MetadataRequest, RequestHeader, SaslHandshakeRequest
from streamhouse.testing import Stack, wait_until

PROTOCOL = "SASL_PLAINTEXT"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("auth-sasl-plaintext") / "data"
    env = {"STREAMHOUSE_KAFKA_SECURITY_PROTOCOL": PROTOCOL, "STREAMHOUSE_GRPC_AUTH": "token"}
    with Stack(data, env=env) as stack:
        # Bootstrapping: the first user goes straight to the metadata store (the stack's env).
        added = streamctl(stack, "user", "add", "alice", "--password-stdin", stdin="alice-pw\n")
        assert added.returncode == 0, added.stderr
        yield stack


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("client", CLIENTS)
def test_clients_authenticate(stack: Stack, client: str, mechanism: str) -> None:
    topic = f"sasl-{client}-{mechanism}".lower()
    value = f"{client} {mechanism}".encode()
    auth = Auth(PROTOCOL, mechanism, "alice", "alice-pw")
    assert round_trip(client, stack.kafka_address, auth, topic, value) == value


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("client", CLIENTS)
def test_wrong_password_is_refused(stack: Stack, client: str, mechanism: str) -> None:
    error = refused(client, stack.kafka_address, Auth(PROTOCOL, mechanism, "alice", "nope"))
    assert f"invalid credentials with SASL mechanism {mechanism}" in error


def test_unknown_user_is_refused_like_a_wrong_password(stack: Stack) -> None:
    error = refused("aiokafka", stack.kafka_address, Auth(PROTOCOL, "SCRAM-SHA-256", "x", "y"))
    assert "invalid credentials with SASL mechanism SCRAM-SHA-256" in error


def test_client_without_sasl_is_disconnected(stack: Stack) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_address, "socket.timeout.ms": 3000})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=3)
    log = stack.data_dir / "logs" / "ingest.log"
    wait_until(
        lambda: "before SASL authentication completed" in log.read_text(),
        10,
        "ingest logging why it closed the connection",
    )


def _admin(stack: Stack, mechanism: str = "SCRAM-SHA-512") -> AdminClient:
    conf = Auth(PROTOCOL, mechanism, "alice", "alice-pw").confluent(stack.kafka_address)
    return AdminClient(conf)


def test_scram_credential_admin_apis(stack: Stack) -> None:
    admin = _admin(stack)
    sha256 = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096)
    futures = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion("bob", sha256, b"bob-pw", b"some-salt")]
    )
    futures["bob"].result(timeout=20)
    described = admin.describe_user_scram_credentials(["alice", "bob"])
    bob = described["bob"].result(timeout=20)
    assert [(i.mechanism, i.iterations) for i in bob.scram_credential_infos] == [
        (ScramMechanism.SCRAM_SHA_256, 4096)
    ]
    alice = described["alice"].result(timeout=20)
    assert {i.mechanism for i in alice.scram_credential_infos} == {
        ScramMechanism.SCRAM_SHA_256,
        ScramMechanism.SCRAM_SHA_512,
    }
    # bob logs in with SCRAM-SHA-256 and (checked against that credential) PLAIN, not 512.
    for mechanism in ("SCRAM-SHA-256", "PLAIN"):
        auth = Auth(PROTOCOL, mechanism, "bob", "bob-pw")
        assert round_trip("aiokafka", stack.kafka_address, auth, "bob-topic", b"b") == b"b"
    error = refused(
        "aiokafka", stack.kafka_address, Auth(PROTOCOL, "SCRAM-SHA-512", "bob", "bob-pw")
    )
    assert "invalid credentials" in error

    deletion = UserScramCredentialDeletion("bob", ScramMechanism.SCRAM_SHA_256)
    admin.alter_user_scram_credentials([deletion])["bob"].result(timeout=20)
    error = refused(
        "aiokafka", stack.kafka_address, Auth(PROTOCOL, "SCRAM-SHA-256", "bob", "bob-pw")
    )
    assert "invalid credentials" in error
    with pytest.raises(KafkaException, match="does not exist"):
        admin.alter_user_scram_credentials([deletion])["bob"].result(timeout=20)
    with pytest.raises(KafkaException, match="does not exist"):
        admin.describe_user_scram_credentials(["bob"])["bob"].result(timeout=20)
    too_few = UserScramCredentialUpsertion(
        "carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 1000), b"pw", b"salt"
    )
    with pytest.raises(KafkaException, match="iterations"):
        admin.alter_user_scram_credentials([too_few])["carol"].result(timeout=20)


def test_streamctl_user_list_and_delete(stack: Stack) -> None:
    added = streamctl(
        stack,
        "user",
        "add",
        "dave",
        "--mechanism",
        "SCRAM-SHA-512",
        "--password-stdin",
        stdin="dave-pw\n",
    )
    assert added.returncode == 0, added.stderr
    auth = Auth(PROTOCOL, "SCRAM-SHA-512", "dave", "dave-pw")
    assert round_trip("confluent", stack.kafka_address, auth, "dave-topic", b"d") == b"d"
    listed = streamctl(stack, "user", "list")
    assert "dave\tSCRAM-SHA-512 (8192 iterations)" in listed.stdout
    assert "dave-pw" not in listed.stdout
    assert streamctl(stack, "user", "delete", "dave").returncode == 0
    assert "invalid credentials" in refused("aiokafka", stack.kafka_address, auth)
    again = streamctl(stack, "user", "delete", "dave")
    assert again.returncode == 1 and "no such credential" in again.stderr


def test_grpc_needs_a_token(stack: Stack) -> None:
    made = streamctl(stack, "token", "create", "alice")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    with Client(stack.grpc_address, token=token) as client:
        client.create_topic("grpc-token-topic")
        assert "grpc-token-topic" in {t.name for t in client.list_topics()}
    for bad in ("", "sht_not-a-token"):
        with Client(stack.grpc_address, token=bad) as client:
            with pytest.raises(StreamHouseError) as err:
                client.list_topics()
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert "token" in err.value.message
    # streamctl passes the token from --token (or STREAMHOUSE_TOKEN).
    listed = streamctl(stack, "--server", stack.grpc_address, "--token", token, "topic", "list")
    assert listed.returncode == 0 and "grpc-token-topic" in listed.stdout, listed.stderr
    without = streamctl(stack, "--server", stack.grpc_address, "topic", "list")
    assert without.returncode == 1 and "UNAUTHENTICATED" in without.stderr
    # The health service answers without a token (supervisord, status checks).
    with grpc.insecure_channel(stack.grpc_address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # A deleted token stops working within the cache TTL.
    listed = streamctl(stack, "token", "list")
    assert token not in listed.stdout
    token_id = next(
        line.split("\t")[0] for line in listed.stdout.splitlines() if "\talice\t" in line
    )
    assert streamctl(stack, "token", "delete", token_id).returncode == 0
    with Client(stack.grpc_address, token=token) as client:

        def refused_now() -> bool:
            try:
                client.list_topics()
            except StreamHouseError as exc:
                return exc.code == grpc.StatusCode.UNAUTHENTICATED
            return False

        wait_until(refused_now, 10, "the deleted token being refused")


def _raw_v0_login(stack: Stack, password: str) -> tuple[socket.socket, bytes]:
    """SaslHandshake v0, then a PLAIN token without Kafka framing; returns the socket and
    the raw answer (b"" when the server closed the connection)."""
    host, _, port = stack.kafka_address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    header = RequestHeader(request_api_key=17, request_api_version=0, correlation_id=7)
    sock.sendall(encode_request(header, SaslHandshakeRequest(mechanism="PLAIN")))
    _, answer = decode_response(_read_frame(sock), 17, 0)
    assert answer.error_code == 0 and "PLAIN" in answer.mechanisms
    token = f"\0alice\0{password}".encode()
    sock.sendall(struct.pack(">i", len(token)) + token)
    return sock, _read_exactly(sock, 4)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return data
        data += chunk
    return data


def _read_frame(sock: socket.socket) -> bytes:
    (size,) = struct.unpack(">i", _read_exactly(sock, 4))
    return _read_exactly(sock, size)


def test_handshake_v0_raw_tokens(stack: Stack) -> None:
    sock, answer = _raw_v0_login(stack, "alice-pw")
    with sock:
        assert answer == b"\0\0\0\0"  # PLAIN's empty server token, length-prefixed
        # Authenticated: Kafka requests are served on the same connection.
        header = RequestHeader(request_api_key=3, request_api_version=1, correlation_id=8)
        sock.sendall(encode_request(header, MetadataRequest(topics=[])))
        _, metadata = decode_response(_read_frame(sock), 3, 1)
        assert [b.port for b in metadata.brokers] == [stack.kafka_port]
    sock, answer = _raw_v0_login(stack, "wrong")
    with sock:
        assert answer == b""  # a failed v0 login just closes the connection
