"""The sql listener and the web console on a secured stack: Kafka SASL_SSL, gRPC over TLS with
tokens, ACLs on (``User:admin`` and the console's ``User:console`` super users).

- The sql service speaks TLS only, asks for a token (UNAUTHENTICATED without one), and checks
  ACLs: bob is refused a SELECT until READ on the topic is granted, and refused query
  management and listing (ALTER / DESCRIBE on the cluster) with PERMISSION_DENIED naming him,
  the operation and the resource; `streamctl --tls-ca --token sql` and `streamctl query list`
  go through it.
- The console logs in with its own settings (console_token, console_sasl_*, the CA): before
  its token and SASL user exist its pages say so (503, not 500), afterwards its topics page
  lists the topic, its groups page shows a live consumer group, and its queries page the
  view; its pages ask for HTTP Basic credentials (console_http_password).

One stack for the module; certificates are made at test time.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import grpc
import pytest
from auth_tls_material import Material, make_material
from confluent_kafka import Consumer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from console.sources import SourceError, StackSources
from metadata.interface import open_store
from sql.service_client import SqlClient, SqlServiceError
from streamhouse.client import Client, channel_credentials
from streamhouse.config import load_settings
from streamhouse.grpc_auth import CATALOG_KIND, new_token, token_hash, token_record
from streamhouse.testing import Stack, wait_until

CONSOLE_TOKEN = new_token()
CONSOLE_PASSWORD = "console-pw"
HTTP_PASSWORD = "http-pw"
TOPIC = "orders"
REFRESH_WAIT_S = 20.0
COUNTS = f"SELECT partition, count(*) AS n FROM {TOPIC} GROUP BY partition"


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(tmp_path_factory.mktemp("secure-sql-certs"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, material: Material) -> Iterator[Stack]:
    env = {
        "STREAMHOUSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMHOUSE_TLS_CERT_FILE": str(material.server.cert),
        "STREAMHOUSE_TLS_KEY_FILE": str(material.server.key),
        "STREAMHOUSE_TLS_CA_FILE": str(material.ca.cert),
        "STREAMHOUSE_GRPC_TLS": "true",
        "STREAMHOUSE_GRPC_AUTH": "token",
        "STREAMHOUSE_AUTHORIZER": "acl",
        "STREAMHOUSE_SUPER_USERS": "User:admin;User:console",
        "STREAMHOUSE_CONSOLE_TOKEN": CONSOLE_TOKEN,
        "STREAMHOUSE_CONSOLE_SASL_USERNAME": "console",
        "STREAMHOUSE_CONSOLE_SASL_PASSWORD": CONSOLE_PASSWORD,
        "STREAMHOUSE_CONSOLE_HTTP_PASSWORD": HTTP_PASSWORD,
        "STREAMHOUSE_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    }
    data = tmp_path_factory.mktemp("secure-sql") / "data"
    with Stack(data, env=env, grpc_credentials=channel_credentials(str(material.ca.cert))) as s:
        s.wait_sql_ready()
        yield s


def streamctl(stack: Stack, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamhouse.streamctl", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", **stack.env},
    )


def make_token(stack: Stack, user: str) -> str:
    made = streamctl(stack, "token", "create", user)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def sql(stack: Stack, material: Material, token: str | None) -> SqlClient:
    return SqlClient(
        stack.sql_address, timeout=60, tls_ca_file=str(material.ca.cert), token=token or ""
    )


def page(stack: Stack, path: str, password: str | None = HTTP_PASSWORD) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{stack.console_address}{path}")
    if password is not None:
        basic = base64.b64encode(f"admin:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def admin(stack: Stack, material: Material) -> str:
    """admin's token, after the topic exists with three JSON records."""
    token = make_token(stack, "admin")
    with Client(stack.grpc_address, tls_ca_file=str(material.ca.cert), token=token) as client:
        client.create_topic(TOPIC, partitions=1)
        for n in range(3):
            client.produce(TOPIC, f'{{"n": {n}}}', partition=0)
    return token


def test_sql_listener_needs_tls_and_a_token(stack: Stack, material: Material, admin: str) -> None:
    with SqlClient(stack.sql_address, timeout=5, token=admin) as plaintext:
        assert not plaintext.reachable(2.0)
        with pytest.raises(SqlServiceError) as err:
            plaintext.execute(f"SELECT count(*) AS n FROM {TOPIC}")
        assert err.value.code == "UNAVAILABLE"
    for token in ("", "sht_not-a-token"):
        with sql(stack, material, token) as client:
            assert client.reachable(5.0)  # health needs no token
            with pytest.raises(SqlServiceError) as err:
                client.execute(f"SELECT count(*) AS n FROM {TOPIC}")
            assert err.value.code == "UNAUTHENTICATED" and "token" in err.value.message
    with sql(stack, material, admin) as client:
        result = client.execute(f"SELECT count(*) AS n FROM {TOPIC}")
        assert result.table is not None and result.table.column("n").to_pylist() == [3]


def test_sql_acls_name_principal_operation_and_resource(
    stack: Stack, material: Material, admin: str
) -> None:
    bob = make_token(stack, "bob")
    with sql(stack, material, bob) as client:
        with pytest.raises(SqlServiceError) as err:
            client.execute(f"SELECT count(*) AS n FROM {TOPIC}")
        assert err.value.code == "PERMISSION_DENIED"
        assert "User:bob" in err.value.message and f"READ TOPIC '{TOPIC}'" in err.value.message
        with pytest.raises(SqlServiceError) as err:
            client.list_queries()
        assert err.value.code == "PERMISSION_DENIED"
        assert "DESCRIBE CLUSTER 'kafka-cluster'" in err.value.message
        added = streamctl(
            stack,
            *("acl", "add", "--metadata", str(stack.settings.metadata_path)),
            *("--allow-principal", "User:bob", "--operation", "Read", "--topic", TOPIC),
        )
        assert added.returncode == 0, added.stderr

        def bob_reads() -> bool:
            try:
                result = client.execute(f"SELECT count(*) AS n FROM {TOPIC}")
            except SqlServiceError as exc:
                assert exc.code == "PERMISSION_DENIED", exc
                return False
            assert result.table is not None and result.table.column("n").to_pylist() == [3]
            return True

        wait_until(bob_reads, REFRESH_WAIT_S, "bob's READ ACL applies to the sql service")
        # Reading does not make bob a manager of the catalog.
        view = f"CREATE MATERIALIZED VIEW bob_view AS {COUNTS}"
        with pytest.raises(SqlServiceError) as err:
            client.execute(view)
        assert err.value.code == "PERMISSION_DENIED" and "ALTER CLUSTER" in err.value.message
    with sql(stack, material, admin) as client:
        client.execute(f"CREATE MATERIALIZED VIEW orders_count AS {COUNTS}")
        assert "orders_count" in {q.name for q in client.list_queries()}
    with sql(stack, material, bob) as client:
        with pytest.raises(SqlServiceError) as err:
            client.drop("orders_count")
        assert err.value.code == "PERMISSION_DENIED" and "User:bob" in err.value.message
    # A view is read through the topics its query reads.
    with sql(stack, material, make_token(stack, "carol")) as client:
        with pytest.raises(SqlServiceError) as err:
            client.execute("SELECT * FROM orders_count")
        assert err.value.code == "PERMISSION_DENIED"
        assert "User:carol" in err.value.message and f"READ TOPIC '{TOPIC}'" in err.value.message
    # With ALTER on the cluster bob may manage queries, but a stream query also needs WRITE
    # (and, for a missing topic, CREATE) on what it writes.
    added = streamctl(
        stack,
        *("acl", "add", "--metadata", str(stack.settings.metadata_path)),
        *("--allow-principal", "User:bob", "--operation", "Alter", "--cluster"),
    )
    assert added.returncode == 0, added.stderr
    stream = f"CREATE STREAM bob_out WITH (topic = 'bob-out') AS SELECT value FROM {TOPIC}"
    with sql(stack, material, bob) as client:

        def refused_write() -> bool:
            try:
                client.execute(stream)
            except SqlServiceError as exc:
                assert exc.code == "PERMISSION_DENIED", exc
                return "WRITE TOPIC 'bob-out'" in exc.message
            raise AssertionError("bob created a stream writing a topic he may not write")

        wait_until(refused_write, REFRESH_WAIT_S, "bob's ALTER applies; WRITE is still missing")


def test_streamctl_sql_and_query_with_tls_and_token(
    stack: Stack, material: Material, admin: str
) -> None:
    security = ("--tls-ca", str(material.ca.cert), "--token", admin)
    done = streamctl(
        stack, *security, "sql", f"SELECT count(*) AS n FROM {TOPIC}", "--via", "service"
    )
    assert done.returncode == 0, done.stderr
    assert "3" in done.stdout.split()
    listed = streamctl(stack, "query", "list", "--sql-server", stack.sql_address, *security)
    assert listed.returncode == 0, listed.stderr
    refused = streamctl(
        stack, "--tls-ca", str(material.ca.cert), "sql", "SELECT 1", "--via", "service"
    )
    assert refused.returncode != 0 and "token" in refused.stderr


def test_console_without_credentials_says_what_to_give(stack: Stack, material: Material) -> None:
    bare = load_settings(
        {**stack.env, "STREAMHOUSE_CONSOLE_TOKEN": "", "STREAMHOUSE_CONSOLE_SASL_USERNAME": ""}
    )
    sources = StackSources(bare, timeout_s=10)
    try:
        with pytest.raises(SourceError) as err:
            asyncio.run(sources.topics())
        assert "UNAUTHENTICATED" in str(err.value) and "STREAMHOUSE_CONSOLE_TOKEN" in str(err.value)
        with pytest.raises(SourceError) as err:
            asyncio.run(sources.groups({}))
        assert "needs a SASL login" in str(err.value)
        assert "STREAMHOUSE_CONSOLE_SASL_USERNAME" in str(err.value)
    finally:
        sources.close()
    # The console's own token and SASL user do not exist yet: its pages say so, not a 500.
    status, body = page(stack, "/topics")
    assert status == 503 and "token is not valid" in body, body
    assert "STREAMHOUSE_CONSOLE_TOKEN" in body
    status, body = page(stack, "/groups")
    assert status == 503 and "STREAMHOUSE_CONSOLE_TOKEN" in body, body
    configured = StackSources(load_settings(stack.env), timeout_s=10)
    try:
        with pytest.raises(SourceError) as err:
            asyncio.run(configured.groups({}))
        assert "refused the console's SASL login as 'console'" in str(err.value)
    finally:
        configured.close()


def test_console_pages_need_http_credentials(stack: Stack) -> None:
    assert page(stack, "/topics", password=None)[0] == 401
    assert page(stack, "/topics", password="wrong")[0] == 401
    assert page(stack, "/healthz", password=None) == (200, "ok")


def test_console_with_its_credentials_lists_topics_groups_and_queries(
    stack: Stack, material: Material, admin: str
) -> None:
    added = streamctl(stack, "user", "add", "console", "--password-stdin", stdin=CONSOLE_PASSWORD)
    assert added.returncode == 0, added.stderr
    added = streamctl(stack, "user", "add", "admin", "--password-stdin", stdin="admin-pw")
    assert added.returncode == 0, added.stderr
    store = open_store(str(stack.settings.metadata_target))
    try:
        now = int(time.time() * 1000)
        store.put_catalog_entry(
            CATALOG_KIND, token_hash(CONSOLE_TOKEN), token_record("console", now), now
        )
    finally:
        store.close()

    def topic_listed() -> bool:
        status, body = page(stack, "/topics")
        return status == 200 and TOPIC in body

    wait_until(topic_listed, REFRESH_WAIT_S, "the console's topics page lists the topic")
    group = f"secure-group-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_address,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": "admin",
            "sasl.password": "admin-pw",
            "ssl.ca.location": str(material.ca.cert),
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([TOPIC])
        deadline = time.monotonic() + 30
        message = None
        while message is None and time.monotonic() < deadline:
            message = consumer.poll(0.5)
        assert message is not None and message.error() is None, message
        consumer.commit(message=message, asynchronous=False)

        def group_shown() -> bool:
            status, body = page(stack, "/groups")
            return status == 200 and group in body

        wait_until(group_shown, REFRESH_WAIT_S, "the console's groups page shows the group")
    finally:
        consumer.close()
    with sql(stack, material, admin) as client:
        client.execute(f"CREATE MATERIALIZED VIEW IF NOT EXISTS console_view AS {COUNTS}")
    status, body = page(stack, "/queries")
    assert status == 200 and "console_view" in body, body


def test_health_of_the_sql_listener_is_served_over_tls(stack: Stack, material: Material) -> None:
    with grpc.secure_channel(
        stack.sql_address, channel_credentials(str(material.ca.cert))
    ) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
