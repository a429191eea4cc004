"""`python3 -m sql query "SQL" [--format table|jsonl|csv] [--stats] [--via local|service|auto]`:
one statement, then exit; `python3 -m sql shell [--format ...]`: statements from standard input,
one after another; `python3 -m sql serve`: the sql service (sql/service.py), as supervisord
runs it (program ``sql``).

Statements run against the StreamHouse the environment names (the same ``STREAMHOUSE_*``
settings as every process: metadata store, object store). With ``--via local`` (the default
of ``python3 -m sql``) they run in this process; ``--via service`` sends them to the sql
service at ``--service ADDR`` (default: sql_listen) and reads the rows back as Arrow IPC;
``--via auto`` (what ``streamctl sql`` uses) takes the service when it answers its health
check within a second, else runs locally. Queries print their rows on stdout
in the chosen format; CREATE/DROP print one line. Records that did not match their stream's
schema are reported on stderr. With ``--stats`` a JSON line on stderr says what was read
(partitions, block rows looked at, blocks and bytes read, batches and records decoded,
records that did not match, by stream, and the bounds each relation was read within). A
query that would read more than ``--max-read-mb`` of stored blocks is refused before it
reads any (every block read is held in memory until the query ends).

The shell reads statements ended by ``;`` (a statement may span lines; with a terminal, a
prompt and line editing); a failing statement prints its error and the shell goes on. It
ends at end of input, or on ``\\q``.

Exit status of ``query``: 0 done, 1 the statement failed (the reason is on stderr), 2 a bad
argument or setting. Of ``shell``: 0, or 1 if any statement failed when not on a terminal.
``serve`` runs until SIGTERM (0), or exits 1 when it fails (supervisord restarts it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from metadata.async_store import AsyncMetadata
from metadata.errors import MetadataError
from sql.catalog import Catalog
from sql.engine import QueryResult, SqlEngine, SqlError
from sql.output import FORMATS, write_result
from sql.service_client import SqlClient, SqlServiceError
from streamhouse import objectstore
from streamhouse.config import ConfigError, Settings, load_settings
from streamhouse.objectstore import ObjectStoreConfigError

#: Stored (compressed) block bytes one query may read by default: every block read is held
#: in memory, decoded, until the query ends.
DEFAULT_MAX_READ_MB = 2000.0


class _Session:
    """The stack's metadata and object store, open for the statements of one command."""

    def __init__(self, settings: Settings, max_read_mb: float) -> None:
        self.settings = settings
        self.max_read_bytes = int(max_read_mb * 1e6) if max_read_mb > 0 else None
        self.meta: AsyncMetadata | None = None

    async def __aenter__(self) -> SqlEngine:
        s = self.settings
        store = objectstore.open_object_store(s.object_store_url, s.store_timeout_ms)
        self.meta = await AsyncMetadata.open(
            s.metadata_target,
            busy_timeout_ms=s.produce_timeout_ms,
            forbid_loop_calls=s.debug_loop_calls,
        )
        return SqlEngine(
            self.meta,
            store,
            Catalog(self.meta),
            max_inflated=s.max_batch_bytes,
            max_read_bytes=self.max_read_bytes,
        )

    async def __aexit__(self, *exc: object) -> None:
        if self.meta is not None:
            await self.meta.close()


def _report(result: QueryResult, fmt: str, stats: bool) -> None:
    _print(
        result.table,
        result.message,
        msgspec.to_builtins(result.stats),
        fmt,
        stats,
    )


def _print(
    table: object, message: str | None, stats: dict[str, object], fmt: str, show_stats: bool
) -> None:
    if message:
        print(message)
    if table is not None:
        write_result(table, fmt, sys.stdout)  # type: ignore[arg-type]
    sys.stdout.flush()
    invalid = stats.get("invalid_records") or {}
    assert isinstance(invalid, dict)
    for name, count in sorted(invalid.items()):
        print(
            f"sql: {count} record{'s' if count != 1 else ''} of {name} did not match its "
            "declared schema and were left out",
            file=sys.stderr,
        )
    if show_stats:
        print(msgspec.json.encode(stats).decode(), file=sys.stderr)


class _Remote:
    """Statements through the sql service; the same interface as an engine's ``execute``."""

    def __init__(self, client: SqlClient, max_read_mb: float) -> None:
        self.client = client
        self.max_read_bytes = int(max_read_mb * 1e6) if max_read_mb > 0 else 0

    async def run(self, text: str, fmt: str, stats: bool) -> None:
        try:
            result = await asyncio.to_thread(self.client.execute, text, self.max_read_bytes)
        except SqlServiceError as exc:
            raise SqlError(exc.message) from None
        _print(result.table, result.message, result.stats, fmt, stats)


def _remote(settings: Settings, args: argparse.Namespace) -> _Remote | None:
    """The service to send statements to (per --via), or None to run them here."""
    if args.via == "local":
        return None
    try:
        client = SqlClient(
            args.service or settings.sql_listen,
            tls_ca_file=args.tls_ca,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            token=args.token,
        )
    except SqlServiceError as exc:
        raise SqlError(exc.message) from None
    if client.reachable(1.0 if args.via == "auto" else 10.0):
        return _Remote(client, args.max_read_mb)
    client.close()
    if args.via == "service":
        raise SqlError(
            f"the sql service at {client.address} does not answer: is the stack up "
            "(streamhouse up, program sql)? or use --via local"
        )
    return None


def _failure(exc: Exception) -> str:
    if isinstance(exc, MetadataError):
        return f"sql: the metadata store failed: {exc}; retry when it is back"
    return f"sql: {exc}"


async def _run_one(settings: Settings, args: argparse.Namespace) -> None:
    remote = _remote(settings, args)
    if remote is not None:
        await remote.run(args.sql, args.format, args.stats)
        return
    async with _Session(settings, args.max_read_mb) as engine:
        _report(await engine.execute(args.sql), args.format, args.stats)


def _read_statements(interactive: bool) -> AsyncIterator[str]:
    """Statements from stdin, each ended by ``;`` (or the end of input)."""
    if interactive:
        try:
            import readline  # noqa: F401  (line editing for input())
        except ImportError:
            pass

    def read_line(prompt: str) -> str | None:
        if interactive:
            try:
                return input(prompt) + "\n"
            except EOFError:
                return None
        line = sys.stdin.readline()
        return line or None

    async def statements() -> AsyncIterator[str]:
        pending: list[str] = []
        while True:
            line = await asyncio.to_thread(read_line, "sql> " if not pending else "...> ")
            if line is None:
                break
            if not pending and line.strip() in ("\\q", "quit", "exit"):
                return
            pending.append(line)
            text = "".join(pending).strip()
            if text.endswith(";"):
                pending = []
                if text.strip(";").strip():
                    yield text
        rest = "".join(pending).strip()
        if rest:
            yield rest

    return statements()


async def _shell(settings: Settings, args: argparse.Namespace, interactive: bool) -> int:
    failed = 0
    remote = _remote(settings, args)
    if remote is not None:
        async for text in _read_statements(interactive):
            try:
                await remote.run(text, args.format, args.stats)
            except SqlError as exc:
                failed += 1
                print(_failure(exc), file=sys.stderr)
        return 1 if failed and not interactive else 0
    async with _Session(settings, args.max_read_mb) as engine:
        async for text in _read_statements(interactive):
            try:
                _report(await engine.execute(text), args.format, args.stats)
            except (SqlError, MetadataError) as exc:
                failed += 1
                print(_failure(exc), file=sys.stderr)
    return 1 if failed and not interactive else 0


def _guarded(run: Callable[[], int | None]) -> int:
    try:
        return run() or 0
    except (SqlError, MetadataError) as exc:
        print(_failure(exc), file=sys.stderr)
        return 1
    except ObjectStoreConfigError as exc:
        print(f"sql: object store setting: {exc}", file=sys.stderr)
        return 2


def local_query_command(action: str, name: str | None = None, if_exists: bool = False) -> Any:
    """``streamctl query list|describe|drop`` in this process (the sql service does not
    answer): a list of ``QueryStatus`` (runner state ``unknown``), or drop's message. Raises
    SqlError."""
    from sql.service import description_to_proto

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise SqlError(f"configuration error: {exc}") from None

    async def run() -> Any:
        async with _Session(settings, 0) as engine:
            if action == "drop":
                assert name is not None
                return (await engine.drop_query(name, if_exists)).message
            if action == "describe":
                assert name is not None
                names = [name]
            else:
                names = [q.name for q in await engine.catalog.list_queries()]
            return [description_to_proto(await engine.describe_query(n)) for n in names]

    try:
        return asyncio.run(run())
    except MetadataError as exc:
        raise SqlError(_failure(exc)) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python3 -m sql", description="StreamHouse SQL over topics."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    query = sub.add_parser(
        "query", help="run one statement: SELECT ..., CREATE STREAM/TABLE, DROP, SHOW, DESCRIBE"
    )
    query.add_argument("sql", help="the statement")
    shell = sub.add_parser("shell", help="run statements ended by ';' from standard input")
    sub.add_parser("serve", help="run the sql service (gRPC on sql_listen, query runners)")
    for p in (query, shell):
        p.add_argument(
            "--via",
            choices=("local", "service", "auto"),
            default="local",
            help="run here (local), through the sql service, or the service when it answers "
            "(auto); default local",
        )
        p.add_argument(
            "--service", metavar="ADDR", default=None, help="the sql service (sql_listen)"
        )
        # The secured service's options (README "Security"), as streamctl's.
        p.add_argument("--tls-ca", metavar="FILE", help="TLS: verify the service against this CA")
        p.add_argument("--tls-cert", metavar="FILE", help="client certificate (grpc_auth=mtls)")
        p.add_argument("--tls-key", metavar="FILE", help="the client certificate's key (PEM)")
        p.add_argument(
            "--token", metavar="TOKEN", help="token (grpc_auth=token; default $STREAMHOUSE_TOKEN)"
        )
        p.add_argument("--format", choices=FORMATS, default="table", help="output (table)")
        p.add_argument("--stats", action="store_true", help="what was read, as JSON on stderr")
        p.add_argument(
            "--max-read-mb",
            type=float,
            default=DEFAULT_MAX_READ_MB,
            help="refuse a query that would read more stored MB than this (0: no limit; "
            f"default {DEFAULT_MAX_READ_MB:g})",
        )
    args = parser.parse_args(argv)
    if args.command == "serve":
        from sql.service import run_sql
        from streamhouse.process import run_process

        run_process("sql", run_sql)
        raise SystemExit(0)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"sql: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.command == "query":
        code = _guarded(lambda: asyncio.run(_run_one(settings, args)))
    else:
        interactive = sys.stdin.isatty()
        code = _guarded(lambda: asyncio.run(_shell(settings, args, interactive)))
    raise SystemExit(code)


if __name__ == "__main__":
    main()
