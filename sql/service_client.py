"""A client of the sql service (``sql/service.py``): statements and query management over
gRPC, results as Arrow. Loads no DataFusion (``streamctl`` imports it).

    with SqlClient("127.0.0.1:50053") as client:
        result = client.execute("SELECT count(*) FROM bid")   # result.table: pa.Table
        for query in client.list_queries(): ...

Errors of the service (bad statement, unknown query, ...) raise ``SqlServiceError`` with the
service's message and the gRPC status code's name in ``code``.

A secured service (README "Security") takes the same options as the gRPC client
(streamhouse/client.py): ``tls_ca_file`` (TLS, the server verified against this CA bundle),
``tls_cert_file``/``tls_key_file`` (a client certificate, ``grpc_auth=mtls``) and ``token``
(``grpc_auth=token``; None reads ``STREAMHOUSE_TOKEN``), sent as ``authorization: Bearer``
metadata on every call.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import grpc
import pyarrow as pa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streamhouse.client import TOKEN_ENV, StreamHouseError, open_channel
from streamhouse.proto import sql_pb2 as pb

__all__ = [
    "DEFAULT_SQL_ADDRESS",
    "SQL_ADDRESS_ENV",
    "ExecuteResult",
    "SqlClient",
    "SqlServiceError",
    "default_address",
    "status_to_dict",
]

SQL_ADDRESS_ENV = "STREAMHOUSE_SQL_LISTEN"
DEFAULT_SQL_ADDRESS = "127.0.0.1:50053"
SERVICE = "streamhouse.sql.v1.Sql"
MESSAGE_LIMIT = 64 << 20


def default_address() -> str:
    """Where the sql service of this environment listens (``STREAMHOUSE_SQL_LISTEN``)."""
    return os.environ.get(SQL_ADDRESS_ENV) or DEFAULT_SQL_ADDRESS


class SqlServiceError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ExecuteResult:
    """A statement's rows (``table``) or ``message``, and the service's ``stats`` (what the
    query read: a dict as ``python3 -m sql query --stats`` prints it)."""

    table: pa.Table | None = None
    message: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def _error(exc: grpc.RpcError, address: str) -> SqlServiceError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "UNKNOWN"
    if code == grpc.StatusCode.UNAVAILABLE and "metadata" not in (details or ""):
        return SqlServiceError(
            name,
            f"the sql service at {address} is not reachable ({details}): is the stack up "
            "(streamhouse up)? set STREAMHOUSE_SQL_LISTEN to its sql_listen",
        )
    return SqlServiceError(name, details or name)


class SqlClient:
    def __init__(
        self,
        address: str | None = None,
        timeout: float = 300.0,
        *,
        tls: bool = False,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        token: str | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        self.address = address or default_address()
        self.timeout = timeout
        try:
            self.channel = open_channel(
                self.address,
                MESSAGE_LIMIT,
                tls=tls,
                tls_ca_file=tls_ca_file,
                tls_cert_file=tls_cert_file,
                tls_key_file=tls_key_file,
                tls_server_name=tls_server_name,
            )
        except StreamHouseError as exc:
            raise SqlServiceError(exc.code.name, exc.message) from None
        token = os.environ.get(TOKEN_ENV) if token is None else token
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._execute = self.channel.unary_stream(
            f"/{SERVICE}/Execute",
            request_serializer=pb.ExecuteRequest.SerializeToString,
            response_deserializer=pb.ExecuteResponse.FromString,
        )
        self._list = self.channel.unary_unary(
            f"/{SERVICE}/ListQueries",
            request_serializer=pb.ListQueriesRequest.SerializeToString,
            response_deserializer=pb.ListQueriesResponse.FromString,
        )
        self._describe = self.channel.unary_unary(
            f"/{SERVICE}/DescribeQuery",
            request_serializer=pb.DescribeQueryRequest.SerializeToString,
            response_deserializer=pb.QueryStatus.FromString,
        )
        self._drop = self.channel.unary_unary(
            f"/{SERVICE}/DropQuery",
            request_serializer=pb.DropQueryRequest.SerializeToString,
            response_deserializer=pb.DropQueryResponse.FromString,
        )

    def reachable(self, timeout: float = 1.0) -> bool:
        """The service answers its health check with SERVING within ``timeout`` seconds."""
        try:
            reply = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=timeout
            )
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def execute(self, statement: str, max_read_bytes: int = 0) -> ExecuteResult:
        request = pb.ExecuteRequest(statement=statement, max_read_bytes=max_read_bytes)
        chunks: list[bytes] = []
        result = ExecuteResult()
        try:
            for response in self._execute(request, timeout=self.timeout, metadata=self._metadata):
                if response.ipc:
                    chunks.append(response.ipc)
                if response.message:
                    result.message = response.message
                if response.stats:
                    result.stats = json.loads(response.stats)
        except grpc.RpcError as exc:
            raise _error(exc, self.address) from None
        if chunks:
            result.table = pa.ipc.open_stream(b"".join(chunks)).read_all()
        return result

    def list_queries(self) -> list[pb.QueryStatus]:
        try:
            reply = self._list(
                pb.ListQueriesRequest(), timeout=self.timeout, metadata=self._metadata
            )
            return list(reply.queries)
        except grpc.RpcError as exc:
            raise _error(exc, self.address) from None

    def describe(self, name: str) -> pb.QueryStatus:
        try:
            return self._describe(
                pb.DescribeQueryRequest(name=name), timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _error(exc, self.address) from None

    def drop(self, name: str, if_exists: bool = False) -> str:
        try:
            reply = self._drop(
                pb.DropQueryRequest(name=name, if_exists=if_exists),
                timeout=self.timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise _error(exc, self.address) from None
        return reply.message

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SqlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def status_to_dict(q: pb.QueryStatus) -> dict[str, Any]:
    """A QueryStatus as JSON-able dict (``streamctl query ... --json``)."""
    r = q.runner
    return {
        "name": q.name,
        "kind": q.kind,
        "sql": q.sql,
        "output_topic": q.output_topic or None,
        "options": dict(q.options),
        "created_ms": q.created_ms,
        "generation": q.generation,
        "step": q.step,
        "checkpoint_ms": q.checkpoint_ms,
        "watermark_ms": q.watermark_ms if q.HasField("watermark_ms") else None,
        "rows_in": q.rows_in,
        "rows_out": q.rows_out,
        "rows_in_per_s": q.rows_in_per_s,
        "rows_out_per_s": q.rows_out_per_s,
        "decode_errors": q.decode_errors,
        "late_rows_dropped": q.late_rows_dropped,
        "dead_lettered": q.dead_lettered,
        "last_error": q.last_error or None,
        "lag": q.lag,
        "sources": [
            {
                "source": s.source,
                "topic": s.topic,
                "partition": s.partition,
                "high_watermark": s.high_watermark,
                "position": s.position,
                "lag": s.lag,
            }
            for s in q.sources
        ],
        "runner": {
            "state": r.state,
            "pid": r.pid,
            "restarts": r.restarts,
            "last_exit_code": r.last_exit_code if r.HasField("last_exit_code") else None,
            "last_error": r.last_error or None,
            "started_ms": r.started_ms,
            "backoff_ms": r.backoff_ms,
        },
    }
