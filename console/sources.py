"""Where the console's numbers come from: the stack's own APIs, never its files.

- topics, partitions, offsets, storage and records: the gRPC API (`streamhouse.client.Client`,
  ListTopics / GetTopic / DescribeStorage / Consume), called on worker threads so the event loop
  never blocks;
- consumer groups: the Kafka protocol (console/kafka_admin.py), as Kafka admin tools read them;
- continuous queries and ad-hoc SELECTs: the sql service (`sql.service_client.SqlClient`,
  imported on first use: it loads pyarrow);
- bytes produced per topic: the stack's Prometheus endpoint (`streamhouse_produce_bytes_total`),
  when metrics are on.

Every call here only reads. A failure is raised as `SourceError` whose message names the service,
its address and what to check.

On a secured stack the console is a client like any other, with its own credentials (README
"Security"; the console_* settings): `console_token` on every gRPC and sql call
(grpc_auth=token), `console_tls_cert_file`/`_key_file` as its client certificate
(grpc_auth=mtls), `console_sasl_*` on the Kafka listener; TLS listeners are verified against
`console_tls_ca_file` (else the stack's `tls_ca_file`, else its own `tls_cert_file`, a
self-signed one). Its principal needs DESCRIBE (topics, groups, the cluster) and READ (the
record browser, ad-hoc SELECTs) — or it is a super user. A call refused for want of
credentials or ACLs is a `SourceError` saying which setting or ACL to give.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from console.groups import GroupView
from console.kafka_admin import KafkaAdminError, KafkaSecurity, list_group_views
from streamhouse.client import Client, Record, StreamHouseError
from streamhouse.config import ConfigError, Settings
from streamhouse.proto import streamhouse_pb2 as pb

if TYPE_CHECKING:
    from sql.service_client import ExecuteResult, SqlClient
    from streamhouse.proto import sql_pb2

__all__ = ["SourceError", "StackSources", "local_address"]

PRODUCE_BYTES = "streamhouse_produce_bytes_total"


class SourceError(RuntimeError):
    pass


def local_address(listen: str) -> str:
    """host:port to reach a listener bound to `listen` from this machine (a wildcard bind is
    reached on loopback)."""
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def _hint(code: str) -> str:
    """What to do about a refused call (by gRPC status name)."""
    if code == "UNAUTHENTICATED":
        return (
            "; give the console credentials: STREAMHOUSE_CONSOLE_TOKEN (streamctl token create "
            "console) or STREAMHOUSE_CONSOLE_TLS_CERT_FILE/_KEY_FILE (grpc_auth=mtls)"
        )
    if code == "PERMISSION_DENIED":
        return (
            "; allow the console's principal DESCRIBE and READ (streamctl acl add) or make it a "
            "super user (STREAMHOUSE_SUPER_USERS)"
        )
    return ""


def _console_ca(settings: Settings) -> str:
    return settings.console_tls_ca_file or settings.tls_ca_file or settings.tls_cert_file


def grpc_security(settings: Settings) -> dict[str, Any]:
    """The console's TLS and token options for the gRPC API and the sql service (the same
    listener settings apply to both)."""
    options: dict[str, Any] = {"token": settings.console_token}
    if settings.grpc_tls or settings.grpc_auth == "mtls":
        options["tls"] = True
        options["tls_ca_file"] = _console_ca(settings) or None
        if settings.console_tls_cert_file:
            options["tls_cert_file"] = settings.console_tls_cert_file
            options["tls_key_file"] = settings.console_tls_key_file
    return options


def kafka_security(settings: Settings) -> KafkaSecurity:
    """The console's login on the Kafka listener (TLS context per the listener's protocol)."""
    protocol = settings.kafka_security_protocol
    tls = None
    if protocol in ("SSL", "SASL_SSL"):
        tls = ssl.create_default_context()
        ca = _console_ca(settings)
        try:
            if ca:
                tls.load_verify_locations(cafile=ca)
            if settings.console_tls_cert_file:
                tls.load_cert_chain(settings.console_tls_cert_file, settings.console_tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"the console cannot load its TLS files (CA {ca!r}, certificate "
                f"{settings.console_tls_cert_file!r}): {exc}; check STREAMHOUSE_CONSOLE_TLS_*"
            ) from None
    return KafkaSecurity(
        protocol=protocol,
        mechanism=settings.console_sasl_mechanism,
        username=settings.console_sasl_username,
        password=settings.console_sasl_password,
        tls=tls,
    )


class StackSources:
    """The stack's read APIs, as the console uses them (one per console process)."""

    def __init__(self, settings: Settings, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.grpc_address = local_address(settings.grpc_listen)
        self.kafka_address = local_address(settings.kafka_listen)
        self.sql_address = local_address(settings.sql_listen)
        self.metrics_address = local_address(settings.metrics_listen)
        self._grpc_security = grpc_security(settings)
        self._client = Client(self.grpc_address, timeout=timeout_s, **self._grpc_security)
        self._kafka_security = kafka_security(settings)
        self._sql: SqlClient | None = None

    def close(self) -> None:
        self._client.close()
        if self._sql is not None:
            self._sql.close()

    async def _grpc(self, what: str, call: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(call, *args)
        except StreamHouseError as exc:
            hint = _hint(exc.code.name)
            if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                hint = "; is ingest up (streamhouse status)?"
            raise SourceError(
                f"{what} from the gRPC API at {self.grpc_address} failed: {exc.message} "
                f"({exc.code.name}){hint}"
            ) from exc

    # -- gRPC -------------------------------------------------------------------------------

    async def topics(self) -> list[pb.Topic]:
        topics = await self._grpc("ListTopics", self._client.list_topics)
        return sorted(topics, key=lambda t: t.name)

    async def topic(self, name: str) -> pb.Topic:
        return await self._grpc(f"topic {name!r}", self._client.get_topic, name)

    async def storage(self) -> pb.DescribeStorageResponse:
        return await self._grpc("DescribeStorage", self._client.describe_storage)

    async def records(
        self, topic: str, partition: int, offset: int, limit: int
    ) -> tuple[list[Record], int, int, int]:
        """Up to `limit` records from `offset`: (records, next offset, high watermark, log
        start); no long-poll."""
        return await self._grpc(
            f"records of {topic}[{partition}] from offset {offset}",
            lambda: self._client.consume(topic, partition, offset, max_records=limit),
        )

    # -- Kafka ------------------------------------------------------------------------------

    async def groups(
        self, high_watermarks: dict[tuple[str, int], int]
    ) -> tuple[list[GroupView], list[str]]:
        """Every group (console/kafka_admin.py) and the agents that did not answer."""
        try:
            return await list_group_views(
                self.kafka_address, high_watermarks, self.timeout_s, self._kafka_security
            )
        except KafkaAdminError as exc:
            raise SourceError(str(exc)) from exc

    # -- sql service ------------------------------------------------------------------------

    def _sql_client(self) -> SqlClient:
        if self._sql is None:
            from sql.service_client import SqlClient

            self._sql = SqlClient(
                self.sql_address, timeout=self.timeout_s * 3, **self._grpc_security
            )
        return self._sql

    async def _sql_call(self, what: str, call: Any, *args: Any) -> Any:
        from sql.service_client import SqlServiceError

        try:
            return await asyncio.to_thread(call, *args)
        except SqlServiceError as exc:
            raise SourceError(
                f"{what} (sql service at {self.sql_address}): {exc.message}{_hint(exc.code)}"
            ) from exc

    async def queries(self) -> list[sql_pb2.QueryStatus]:
        client = self._sql_client()
        found = await self._sql_call("ListQueries", client.list_queries)
        return sorted(found, key=lambda q: q.name)

    async def execute(self, statement: str) -> ExecuteResult:
        client = self._sql_client()
        return await self._sql_call("the statement failed", client.execute, statement)

    # -- metrics ----------------------------------------------------------------------------

    async def produced_bytes(self) -> dict[str, float]:
        """Topic -> bytes produced so far, from the stack's metrics; empty with metrics off."""
        if not self.settings.metrics_enabled:
            return {}
        return await asyncio.to_thread(self._scrape_produced_bytes)

    def _scrape_produced_bytes(self) -> dict[str, float]:
        url = f"http://{self.metrics_address}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                text = response.read().decode()
        except (OSError, urllib.error.URLError) as exc:
            raise SourceError(
                f"metrics at {url} not readable ({exc}); is ingest up, or set "
                "STREAMHOUSE_METRICS_ENABLED=false?"
            ) from exc
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == PRODUCE_BYTES and "topic" in sample.labels:
                    topic = sample.labels["topic"]
                    out[topic] = out.get(topic, 0.0) + sample.value
        return out
