"""The ``sql`` program (``python3 -m sql serve``, under supervisord): a gRPC service for
statements and continuous queries, and the supervisor of the queries' runner processes.

gRPC (``streamhouse.sql.v1.Sql``, ``streamhouse/proto/sql.proto``, on ``sql_listen``, with the
standard health service and reflection):

- ``Execute(statement)``: any statement ``python3 -m sql query`` takes. Rows stream back as
  Arrow IPC: the schema message, then record batch messages of at most ``IPC_CHUNK_BYTES``
  each, the last chunk ending the stream (``b"".join(ipc)`` is one Arrow IPC stream);
  ``message`` for statements without rows; the last response carries ``stats`` (JSON).
  Errors are gRPC statuses with the user's message: INVALID_ARGUMENT (bad statement, unknown
  column or relation, a query that cannot run continuously), NOT_FOUND (no such query),
  UNAVAILABLE (metadata store down: retry). At most ``MAX_CONCURRENT_QUERIES`` statements run
  at once (a query holds what it reads in memory); the others wait their turn. A statement
  reads at most the request's ``max_read_bytes`` of stored blocks (0:
  ``DEFAULT_MAX_READ_BYTES``) and is refused before reading when it would read more.
- ``ListQueries`` / ``DescribeQuery(name)``: each query's definition, last checkpoint
  (step, watermark, rows in/out in total and per second, decode errors, late rows, last
  error), input lag per source partition (high watermark - the checkpoint's position) and
  its runner's state (running, backoff, restarts, last exit code and error line).
- ``DropQuery(name)``: as ``DROP QUERY name``.

Security (README "Security"): the listener takes the same TLS settings as ingest's gRPC
listener (``grpc_tls``, ``grpc_auth=mtls``; streamhouse/tls.py) and the same authentication
(``grpc_auth``: a bearer token or a client certificate names the caller; streamhouse/
grpc_auth.py): a call without it fails with UNAUTHENTICATED. With ``authorizer=acl`` every
statement and method is checked against the Kafka ACLs as sql/acl.py tables (READ on the
topics a query reads, ALTER on the cluster to change the catalog, DESCRIBE on the cluster to
list it); a refusal is PERMISSION_DENIED naming principal, operation and resource. The health
service and reflection are not checked.

Runners (``RunnerSupervisor``, only with ``sql_enabled``): every ``RECONCILE_S`` (and at once
after a CREATE or DROP through this service) the catalog's queries are compared with the
children: a query without a runner gets ``python3 -m sql.continuous run NAME``; a runner whose
query is gone (or now belongs to another agent) gets SIGTERM (SIGKILL after
``STOP_GRACE_S``); a runner that exited is started again after ``sql_restart_backoff_ms``,
doubled by every exit in a row up to ``MAX_BACKOFF_MS`` (a run of ``STABLE_RUN_S`` resets
it). A runner that exits fenced (``EXIT_FENCED``: another runner claimed the query) waits at
least ``FENCED_BACKOFF_MS`` and its run time never resets the count (two runners of one
query would otherwise take it from each other every half second); its status is
``backoff`` with a last error that says it was fenced. A runner's stderr lines are copied
to this process's log prefixed ``query NAME:``; the last one is the runner's last error.
SIGTERM stops every runner before the service exits; runners are started with a
parent-death signal (``setpriv --pdeathsig TERM``) so a killed service leaves none behind
(and a runner the new service starts fences any survivor).

In a cluster every agent runs an ``sql`` program: a query runs on one of them only, the
live agent (metadata agent registry) that rendezvous hashing of the query name picks; when
agents come or go the queries of the changed agents move (the new runner claims the query,
which fences the old one). With no live agent registered (an ``sql serve`` beside no
ingest), this service runs every query.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import msgspec
import pyarrow as pa
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from metadata.async_store import AsyncMetadata
from metadata.errors import MetadataError
from sql.acl import AccessDenied, Need, SqlAccess, cluster
from sql.catalog import Catalog
from sql.continuous.runner import EXIT_FENCED
from sql.engine import QueryDescription, RunnerStatus, SqlEngine, SqlError, UnknownQueryError
from streamhouse import objectstore
from streamhouse.acl import AclOperation
from streamhouse.acl_cache import AclCache, acl_cache
from streamhouse.config import Settings
from streamhouse.grpc_auth import AuthenticationFailed, GrpcAuthenticator, peer_host
from streamhouse.grpc_options import server_options
from streamhouse.principal import current_principal
from streamhouse.process import spawn
from streamhouse.proto import sql_pb2 as pb
from streamhouse.tls import grpc_server_credentials

__all__ = [
    "RunnerSupervisor",
    "SERVICE",
    "SqlService",
    "description_to_proto",
    "ipc_chunks",
    "run_sql",
    "start_sql_server",
]

log = logging.getLogger("sql.service")

SERVICE = "streamhouse.sql.v1.Sql"
RECONCILE_S = 1.0
MAX_BACKOFF_MS = 30_000
STABLE_RUN_S = 30.0
#: The least wait before a fenced runner (exit ``EXIT_FENCED``) is started again.
FENCED_BACKOFF_MS = 5_000
STOP_GRACE_S = 10.0
IPC_CHUNK_BYTES = 1 << 20
MAX_CONCURRENT_QUERIES = 4
#: Stored block bytes one statement may read unless the request says otherwise (as
#: ``python3 -m sql query --max-read-mb``'s default).
DEFAULT_MAX_READ_BYTES = 2_000_000_000
#: gRPC message limit of the sql service (a chunk is ~IPC_CHUNK_BYTES; one huge row more).
MESSAGE_LIMIT = 64 << 20
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
_STDERR_LINES = 20
#: A runner's stderr line is cut at this length (in the log and as the last error).
MAX_LINE_BYTES = 8192


# --------------------------------------------------------------------------- runners


def runner_command(name: str) -> list[str]:
    """The command that runs query ``name`` (with a parent-death signal where setpriv is)."""
    command = [sys.executable, "-m", "sql.continuous", "run", name]
    setpriv = shutil.which("setpriv")
    if setpriv is not None and sys.platform.startswith("linux"):
        return [setpriv, "--pdeathsig", "TERM", *command]
    return command


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Child:
    name: str
    status: RunnerStatus = field(default_factory=RunnerStatus)
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    failures: int = 0
    next_start: float = 0.0
    lines: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=_STDERR_LINES)
    )
    watcher: asyncio.Task[None] | None = None


class RunnerSupervisor:
    """One runner process per owned query (see the module docstring)."""

    def __init__(
        self,
        list_queries: Callable[[], Awaitable[list[str]]],
        *,
        command: Callable[[str], list[str]] = runner_command,
        env: dict[str, str] | None = None,
        backoff_ms: int = 500,
        interval_s: float = RECONCILE_S,
        owned: Callable[[list[str]], Awaitable[set[str]]] | None = None,
        fenced_backoff_ms: int = FENCED_BACKOFF_MS,
    ) -> None:
        self.list_queries = list_queries
        self.command = command
        self.env = env
        self.backoff_ms = max(1, backoff_ms)
        self.fenced_backoff_ms = max(1, fenced_backoff_ms)
        self.interval_s = interval_s
        self.owned = owned
        self.children: dict[str, _Child] = {}
        self.elsewhere: set[str] = set()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closed = False

    def status(self, name: str) -> RunnerStatus:
        child = self.children.get(name)
        if child is not None:
            return child.status
        if name in self.elsewhere:
            return RunnerStatus(state="elsewhere")
        return RunnerStatus(state="stopped")

    async def run(self) -> None:
        """Reconciles every ``interval_s`` or when poked, until cancelled."""
        while True:
            try:
                await self.reconcile()
            except Exception as exc:  # noqa: BLE001  (a store outage must not end the service)
                log.warning(
                    "cannot compare the queries with their runners (%s: %s); trying again",
                    type(exc).__name__,
                    exc,
                )
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except TimeoutError:
                pass

    async def sync(self, _name: str = "") -> None:
        """Reconciles now (after a CREATE or DROP): a dropped query's runner has stopped
        when this returns."""
        await self.reconcile()

    async def reconcile(self) -> None:
        async with self._lock:
            if self._closed:
                return
            names = await self.list_queries()
            mine = set(names) if self.owned is None else await self.owned(names)
            self.elsewhere = set(names) - mine
            for name in [n for n in self.children if n not in mine]:
                await self._stop(self.children.pop(name))
                log.info("query %s: runner stopped (the query is gone or runs elsewhere)", name)
            now = time.monotonic()
            for name in sorted(mine):
                child = self.children.setdefault(name, _Child(name))
                if child.proc is None and now >= child.next_start:
                    await self._start(child)

    async def _start(self, child: _Child) -> None:
        argv = self.command(child.name)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
            )
        except OSError as exc:
            self._exited(child, None, f"cannot start {argv[0]}: {exc}")
            return
        child.proc = proc
        child.started = time.monotonic()
        child.lines.clear()
        restarts = child.status.restarts + (1 if child.status.started_ms else 0)
        child.status = RunnerStatus(
            state="running",
            pid=proc.pid,
            restarts=restarts,
            last_exit_code=child.status.last_exit_code,
            last_error=child.status.last_error,
            started_ms=_now_ms(),
        )
        log.info("query %s: runner started (pid %d)", child.name, proc.pid)
        child.watcher = spawn(self._watch(child, proc), f"runner of {child.name}", forever=False)

    async def _watch(self, child: _Child, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        pending = b""
        while True:
            try:
                data = await proc.stderr.read(1 << 16)
            except Exception as exc:  # noqa: BLE001  (the pipe broke: only the copy stops)
                log.warning("query %s: cannot read the runner's stderr: %s", child.name, exc)
                data = b""
            if not data:
                break
            *lines, pending = (pending + data).split(b"\n")
            if len(pending) > MAX_LINE_BYTES:  # a line without end: cut it
                lines.append(pending)
                pending = b""
            for raw in lines:
                self._line(child, raw)
        if pending:
            self._line(child, pending)
        code = await proc.wait()
        if child.proc is proc:
            self._exited(child, code, child.lines[-1] if child.lines else None)
            self._wake.set()

    def _line(self, child: _Child, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()[:MAX_LINE_BYTES]
        if line:
            child.lines.append(line)
            print(f"query {child.name}: {line}", file=sys.stderr, flush=True)

    def _exited(self, child: _Child, code: int | None, error: str | None) -> None:
        ran = time.monotonic() - child.started if child.started else 0.0
        fenced = code == EXIT_FENCED
        child.failures = 1 if ran >= STABLE_RUN_S and not fenced else child.failures + 1
        backoff = min(MAX_BACKOFF_MS, self.backoff_ms * 2 ** (child.failures - 1))
        if fenced:
            backoff = max(self.fenced_backoff_ms, backoff)
            error = (
                f"fenced (exit {code}): another runner claimed the query; this one starts "
                f"again in {backoff} ms and then claims it back"
                + (f" (runner said: {error})" if error else "")
            )
        child.proc = None
        child.next_start = time.monotonic() + backoff / 1000
        child.status = RunnerStatus(
            state="backoff",
            pid=0,
            restarts=child.status.restarts,
            last_exit_code=code,
            last_error=error if code else child.status.last_error,
            started_ms=child.status.started_ms,
            backoff_ms=backoff,
        )
        log.warning(
            "query %s: runner exited with %s%s; starting it again in %d ms",
            child.name,
            "no start" if code is None else f"status {code}",
            f" ({error})" if error and code else "",
            backoff,
        )

    async def _stop(self, child: _Child) -> None:
        proc = child.proc
        child.proc = None  # its exit is expected, not a failure
        if proc is None or proc.returncode is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                log.warning("query %s: runner ignored SIGTERM; killing it", child.name)
                proc.kill()
                await proc.wait()
        except ProcessLookupError:
            pass
        if child.watcher is not None:
            await asyncio.wait({child.watcher}, timeout=1)

    async def stop_all(self) -> None:
        async with self._lock:
            self._closed = True
            children = list(self.children.values())
            self.children.clear()
            await asyncio.gather(*(self._stop(c) for c in children))


def rendezvous_owner(name: str, agents: Sequence[str]) -> str:
    """The agent that runs query ``name``: highest hash of (agent, name)."""
    return max(agents, key=lambda a: hashlib.sha256(f"{a}\0{name}".encode()).digest())


# --------------------------------------------------------------------------- Arrow IPC


def ipc_chunks(table: pa.Table, chunk_bytes: int = IPC_CHUNK_BYTES) -> list[bytes]:
    """``table`` as Arrow IPC stream bytes in pieces: the schema message, then record batch
    messages grouped up to about ``chunk_bytes``; the last piece ends with the end-of-stream
    marker. Dictionary columns are decoded first (every message stands alone)."""
    if any(pa.types.is_dictionary(f.type) for f in table.schema):
        table = table.cast(
            pa.schema(
                f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
                for f in table.schema
            )
        )
    chunks = [table.schema.serialize().to_pybytes()]
    pending: list[bytes] = []
    size = 0
    for batch in table.to_batches():
        if batch.num_rows == 0:
            continue
        per_row = max(1, batch.nbytes // batch.num_rows)
        rows = max(1, chunk_bytes // per_row)
        for start in range(0, batch.num_rows, rows):
            data = batch.slice(start, rows).serialize().to_pybytes()
            pending.append(data)
            size += len(data)
            if size >= chunk_bytes:
                chunks.append(b"".join(pending))
                pending, size = [], 0
    pending.append(_EOS)
    chunks.append(b"".join(pending))
    return chunks


# --------------------------------------------------------------------------- gRPC


def description_to_proto(d: QueryDescription) -> pb.QueryStatus:
    r = d.runner
    runner = pb.RunnerStatus(
        state=r.state,
        pid=r.pid,
        restarts=r.restarts,
        last_error=r.last_error or "",
        started_ms=r.started_ms,
        backoff_ms=r.backoff_ms,
    )
    if r.last_exit_code is not None:
        runner.last_exit_code = r.last_exit_code
    out = pb.QueryStatus(
        name=d.name,
        kind=d.kind,
        sql=d.sql,
        output_topic=d.output_topic or "",
        options=d.options,
        created_ms=d.created_ms,
        generation=d.generation,
        step=d.step,
        checkpoint_ms=d.checkpoint_ms,
        rows_in=d.rows_in,
        rows_out=d.rows_out,
        rows_in_per_s=d.rows_in_per_s,
        rows_out_per_s=d.rows_out_per_s,
        decode_errors=d.decode_errors,
        late_rows_dropped=d.late_rows_dropped,
        dead_lettered=d.dead_lettered,
        last_error=d.last_error or "",
        lag=d.lag,
        sources=[
            pb.SourceLag(
                source=s.source,
                topic=s.topic,
                partition=s.partition,
                high_watermark=s.high_watermark,
                position=s.position,
                lag=s.lag,
            )
            for s in d.sources
        ],
        runner=runner,
    )
    if d.watermark_ms is not None:
        out.watermark_ms = d.watermark_ms
    return out


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _status_of(exc: Exception) -> _Abort:
    if isinstance(exc, _Abort):
        return exc
    if isinstance(exc, AccessDenied):
        return _Abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    if isinstance(exc, UnknownQueryError):
        return _Abort(grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, SqlError):
        return _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, MetadataError):
        return _Abort(
            grpc.StatusCode.UNAVAILABLE,
            f"the metadata store failed: {exc}; retry when it is back",
        )
    log.error("internal error", exc_info=exc)
    return _Abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see sql.log")


class SqlService:
    """The handlers of ``streamhouse.sql.v1.Sql``."""

    def __init__(
        self,
        settings: Settings,
        meta: AsyncMetadata,
        store: Any,
        supervisor: RunnerSupervisor | None,
        *,
        max_read_bytes: int | None = None,
    ) -> None:
        self.settings = settings
        self.meta = meta
        self.store = store
        self.catalog = Catalog(meta)
        self.supervisor = supervisor
        self.max_read_bytes = max_read_bytes
        self.slots = asyncio.Semaphore(MAX_CONCURRENT_QUERIES)
        self.authenticator = GrpcAuthenticator(settings, meta)  # streamhouse/grpc_auth.py
        self.acls: AclCache | None = (
            acl_cache(settings, meta) if settings.authorizer == "acl" else None
        )

    async def access(self, context: Any) -> SqlAccess | None:
        """Who is calling and what they may do (None: no authorizer, everything is allowed).
        Raises _Abort(UNAUTHENTICATED) when the call carries no valid token or certificate."""
        try:
            principal = await self.authenticator.principal(context)
        except AuthenticationFailed as exc:
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None
        current_principal.set(principal)
        if self.acls is None:
            return None
        return SqlAccess(await self.acls.snapshot(), principal, peer_host(context.peer()))

    def engine(
        self, max_read_bytes: int | None = None, access: SqlAccess | None = None
    ) -> SqlEngine:
        return SqlEngine(
            self.meta,
            self.store,
            self.catalog,
            max_inflated=self.settings.max_batch_bytes,
            max_read_bytes=max_read_bytes or self.max_read_bytes,
            on_query_change=None if self.supervisor is None else self.supervisor.sync,
            authorize=None if access is None else access.check,
        )

    def runner_status(self, name: str) -> RunnerStatus:
        if self.supervisor is None:
            return RunnerStatus(state="disabled")
        return self.supervisor.status(name)

    async def Execute(
        self, request: pb.ExecuteRequest, access: SqlAccess | None
    ) -> AsyncIterator[pb.ExecuteResponse]:
        if not request.statement.strip():
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "the statement is empty")
        if request.max_read_bytes < 0:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "max_read_bytes must be >= 0")
        async with self.slots:
            engine = self.engine(request.max_read_bytes or None, access)
            result = await engine.execute(request.statement)
        stats = msgspec.json.encode(result.stats).decode()
        if result.table is None:
            yield pb.ExecuteResponse(message=result.message or "", stats=stats)
            return
        chunks = ipc_chunks(result.table)
        for chunk in chunks[:-1]:
            yield pb.ExecuteResponse(ipc=chunk)
        yield pb.ExecuteResponse(ipc=chunks[-1], message=result.message or "", stats=stats)

    async def _describe(self, name: str) -> pb.QueryStatus:
        description = await self.engine().describe_query(name)
        description.runner = self.runner_status(name)
        return description_to_proto(description)

    async def ListQueries(
        self, request: pb.ListQueriesRequest, access: SqlAccess | None
    ) -> pb.ListQueriesResponse:
        _require(access, cluster(AclOperation.DESCRIBE))
        out = []
        for definition in await self.catalog.list_queries():
            try:
                out.append(await self._describe(definition.name))
            except UnknownQueryError:
                continue  # dropped meanwhile
        return pb.ListQueriesResponse(queries=out)

    async def DescribeQuery(
        self, request: pb.DescribeQueryRequest, access: SqlAccess | None
    ) -> pb.QueryStatus:
        _require(access, cluster(AclOperation.DESCRIBE))
        if not request.name:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "name the query to describe")
        return await self._describe(request.name)

    async def DropQuery(
        self, request: pb.DropQueryRequest, access: SqlAccess | None
    ) -> pb.DropQueryResponse:
        _require(access, cluster(AclOperation.ALTER))
        if not request.name:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "name the query to drop")
        result = await self.engine().drop_query(request.name, request.if_exists)
        return pb.DropQueryResponse(message=result.message or "")


def _require(access: SqlAccess | None, need: Need) -> None:
    if access is not None:
        access.check([need])


def _parser(kind: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return kind.FromString(data)
        except DecodeError as exc:
            return _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid {kind.DESCRIPTOR.full_name}: {exc}",
            )

    return parse


def _unary(
    service: SqlService, fn: Callable[[Any, SqlAccess | None], Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            access = await service.access(context)
            if isinstance(request, _Abort):
                raise request
            return await fn(request, access)
        except Exception as exc:
            status = _status_of(exc)
            await context.abort(status.code, status.message)

    return handler


def _stream(
    service: SqlService, fn: Callable[[Any, SqlAccess | None], AsyncIterator[Any]]
) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            access = await service.access(context)
            if isinstance(request, _Abort):
                raise request
            async for item in fn(request, access):
                yield item
        except Exception as exc:
            status = _status_of(exc)
            await context.abort(status.code, status.message)

    return handler


def method_handlers(service: SqlService) -> grpc.GenericRpcHandler:
    unary = {
        "ListQueries": (pb.ListQueriesRequest, pb.ListQueriesResponse),
        "DescribeQuery": (pb.DescribeQueryRequest, pb.QueryStatus),
        "DropQuery": (pb.DropQueryRequest, pb.DropQueryResponse),
    }
    handlers: dict[str, grpc.RpcMethodHandler] = {
        name: grpc.unary_unary_rpc_method_handler(
            _unary(service, getattr(service, name)),
            request_deserializer=_parser(req),
            response_serializer=resp.SerializeToString,
        )
        for name, (req, resp) in unary.items()
    }
    handlers["Execute"] = grpc.unary_stream_rpc_method_handler(
        _stream(service, service.Execute),
        request_deserializer=_parser(pb.ExecuteRequest),
        response_serializer=pb.ExecuteResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


async def start_sql_server(settings: Settings, service: SqlService) -> grpc.aio.Server:
    """Starts the gRPC server on settings.sql_listen with health and reflection. Limits as
    the main gRPC server's (connections, concurrent RPCs, idle and handshake timeouts), and
    messages up to ``MESSAGE_LIMIT``."""
    server = grpc.aio.server(
        options=server_options(settings, send_limit=MESSAGE_LIMIT),
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
    )
    server.add_generic_rpc_handlers((method_handlers(service),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    # TLS (and mTLS) as ingest's gRPC listener; the health service is served without a token.
    credentials = grpc_server_credentials(settings)
    if credentials is None:
        bound = server.add_insecure_port(settings.sql_listen)
    else:
        bound = server.add_secure_port(settings.sql_listen, credentials)
    if bound == 0:
        raise OSError(f"cannot listen on sql_listen {settings.sql_listen} (in use?)")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    return server


async def run_sql(settings: Settings, stop: asyncio.Event) -> None:
    """The sql program: the gRPC service, and (sql_enabled) the runners of the queries."""
    store = objectstore.open_object_store(settings.object_store_url, settings.store_timeout_ms)
    meta = await AsyncMetadata.open(
        settings.metadata_target,
        busy_timeout_ms=settings.produce_timeout_ms,
        forbid_loop_calls=settings.debug_loop_calls,
    )
    catalog = Catalog(meta)
    supervisor: RunnerSupervisor | None = None
    server: grpc.aio.Server | None = None
    me = settings.agent_name

    async def names() -> list[str]:
        return [q.name for q in await catalog.list_queries()]

    async def owned(queries: list[str]) -> set[str]:
        alive = [a.agent_id for a in await meta.list_agents() if a.alive]
        if not alive:
            return set(queries)
        if me not in alive:
            return set()
        return {q for q in queries if rendezvous_owner(q, alive) == me}

    try:
        if settings.sql_enabled:
            supervisor = RunnerSupervisor(
                names,
                env=dict(os.environ),
                backoff_ms=settings.sql_restart_backoff_ms,
                owned=owned,
            )
        service = SqlService(
            settings, meta, store, supervisor, max_read_bytes=DEFAULT_MAX_READ_BYTES
        )
        server = await start_sql_server(settings, service)
        if supervisor is not None:
            spawn(supervisor.run(), "query runner supervisor")
        log.info(
            "sql ready: gRPC on %s, continuous queries %s",
            settings.sql_listen,
            "on" if supervisor is not None else "off (sql_enabled=false: ad-hoc queries only)",
        )
        await stop.wait()
    finally:
        log.info("shutting down: stopping the query runners and the gRPC server")
        if server is not None:
            await server.stop(grace=2)
        if supervisor is not None:
            await supervisor.stop_all()
        await meta.close()
