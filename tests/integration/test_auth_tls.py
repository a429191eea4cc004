"""TLS on both listeners, certificates made at test time: the Kafka listener speaks SASL_SSL,
the gRPC service requires a client certificate (grpc_auth=mtls).

confluent-kafka, kafka-python and aiokafka log in over TLS with PLAIN, SCRAM-SHA-256 and
SCRAM-SHA-512 (verifying the server against the test CA) and are refused with a wrong
password; a plaintext client gets nowhere; kcat produces and consumes over SASL_SSL; a gRPC
client with a certificate of the CA is served, one without a certificate, with one of another
CA, or without TLS is not, and the certificate's CN is the caller's principal (ACLs on, alice
the only super user); `streamhouse status` still sees the health check. One stack.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from auth_kafka_clients import CLIENTS, MECHANISMS, Auth, refused, round_trip
from auth_tls_material import Material, make_material
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streamhouse.client import Client, StreamHouseError, channel_credentials
from streamhouse.testing import Stack

PROTOCOL = "SASL_SSL"


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(tmp_path_factory.mktemp("auth-tls-certs"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, material: Material) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("auth-tls") / "data"
    env = {
        "STREAMHOUSE_KAFKA_SECURITY_PROTOCOL": PROTOCOL,
        "STREAMHOUSE_TLS_CERT_FILE": str(material.server.cert),
        "STREAMHOUSE_TLS_KEY_FILE": str(material.server.key),
        "STREAMHOUSE_TLS_CA_FILE": str(material.ca.cert),
        "STREAMHOUSE_GRPC_AUTH": "mtls",
        # ACLs on, alice a super user, nobody else allowed anything: what a principal may do
        # shows which principal the listener made of the password or certificate.
        "STREAMHOUSE_AUTHORIZER": "acl",
        "STREAMHOUSE_SUPER_USERS": "User:alice",
    }
    health = channel_credentials(
        str(material.ca.cert), str(material.alice.cert), str(material.alice.key)
    )
    with Stack(data, env=env, grpc_credentials=health) as stack:
        added = subprocess.run(
            [sys.executable, "-m", "streamhouse.streamctl", "user", "add", "alice"]
            + ["--password-stdin"],
            input="alice-pw\n",
            text=True,
            capture_output=True,
            env=stack.env,
            timeout=60,
        )
        assert added.returncode == 0, added.stderr
        yield stack


def _auth(material: Material, mechanism: str, password: str = "alice-pw") -> Auth:
    return Auth(PROTOCOL, mechanism, "alice", password, str(material.ca.cert))


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("client", CLIENTS)
def test_clients_authenticate_over_tls(
    stack: Stack, material: Material, client: str, mechanism: str
) -> None:
    topic = f"tls-{client}-{mechanism}".lower()
    value = f"{client} {mechanism} over TLS".encode()
    got = round_trip(client, stack.kafka_address, _auth(material, mechanism), topic, value)
    assert got == value


@pytest.mark.parametrize(
    "client,mechanism",
    list(zip(CLIENTS, ("SCRAM-SHA-512", "PLAIN", "SCRAM-SHA-256"), strict=True)),
)
def test_wrong_password_is_refused_over_tls(
    stack: Stack, material: Material, client: str, mechanism: str
) -> None:
    error = refused(client, stack.kafka_address, _auth(material, mechanism, "wrong"))
    assert f"invalid credentials with SASL mechanism {mechanism}" in error


def test_plaintext_client_gets_nowhere(stack: Stack, material: Material) -> None:
    conf = _auth(material, "PLAIN").confluent(stack.kafka_address)
    conf["security.protocol"] = "SASL_PLAINTEXT"
    with pytest.raises(KafkaException):
        AdminClient(conf).list_topics(timeout=3)


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")
def test_kcat_over_tls(stack: Stack, material: Material) -> None:
    common = [
        "kcat",
        "-b",
        stack.kafka_address,
        "-X",
        "security.protocol=SASL_SSL",
        "-X",
        "sasl.mechanisms=SCRAM-SHA-256",
        "-X",
        "sasl.username=alice",
        "-X",
        "sasl.password=alice-pw",
        "-X",
        f"ssl.ca.location={material.ca.cert}",
        "-t",
        "kcat-tls",
        "-p",
        "0",
    ]
    produced = subprocess.run(
        [*common, "-P"], input="one\ntwo\n", text=True, capture_output=True, timeout=60
    )
    assert produced.returncode == 0, produced.stderr
    consumed = subprocess.run(
        [*common, "-C", "-o", "beginning", "-e", "-f", "%s\\n"],
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.split() == ["one", "two"]
    wrong = subprocess.run(
        [*common[:-4], "-X", "sasl.password=nope", "-L", "-m", "5"],
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert wrong.returncode != 0
    assert "invalid credentials" in wrong.stderr


def test_grpc_needs_a_client_certificate_of_the_ca(stack: Stack, material: Material) -> None:
    ca = str(material.ca.cert)
    with Client(
        stack.grpc_address,
        tls_ca_file=ca,
        tls_cert_file=str(material.alice.cert),
        tls_key_file=str(material.alice.key),
    ) as client:
        client.create_topic("mtls-topic")
        assert "mtls-topic" in {t.name for t in client.list_topics()}
    # bob's certificate is valid, so bob is authenticated, as User:bob (not a super user).
    with Client(
        stack.grpc_address,
        tls_ca_file=ca,
        tls_cert_file=str(material.bob.cert),
        tls_key_file=str(material.bob.key),
    ) as client:
        with pytest.raises(StreamHouseError) as denied:
            client.create_topic("mtls-bob-topic")
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "User:bob" in denied.value.message
    refused_clients = [
        Client(stack.grpc_address, timeout=5, tls_ca_file=ca),  # no client certificate
        Client(
            stack.grpc_address,
            timeout=5,
            tls_ca_file=ca,
            tls_cert_file=str(material.rogue.cert),  # CN=alice, but another CA
            tls_key_file=str(material.rogue.key),
        ),
        Client(stack.grpc_address, timeout=5),  # no TLS at all
    ]
    for client in refused_clients:
        with client, pytest.raises(StreamHouseError) as err:
            client.list_topics()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_status_sees_the_health_check_through_mtls(stack: Stack) -> None:
    status = subprocess.run(
        [sys.executable, "-m", "streamhouse.cli", "status", "--json"],
        text=True,
        capture_output=True,
        env=stack.env,
        timeout=60,
    )
    assert '"SERVING"' in status.stdout, status.stdout + status.stderr
    json.loads(status.stdout)


def test_streamctl_over_mtls(stack: Stack, material: Material) -> None:
    base = [sys.executable, "-m", "streamhouse.streamctl", "--server", stack.grpc_address]
    tls = ["--tls-ca", str(material.ca.cert)]
    cert = ["--tls-cert", str(material.alice.cert), "--tls-key", str(material.alice.key)]
    ok = subprocess.run(
        [*base, *tls, *cert, "topic", "create", "streamctl-mtls", "--partitions", "1"],
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    no_cert = subprocess.run(
        [*base, *tls, "topic", "list"], text=True, capture_output=True, timeout=60
    )
    assert no_cert.returncode == 1 and "UNAVAILABLE" in no_cert.stderr
