"""Runs one SQL statement: catalog statements here, queries on DataFusion over the log.

A query runs in two passes over one DataFusion ``SessionContext``:

1. every declared stream and table and every topic is registered as an empty placeholder
   of its schema (topics by name unless a stream or table of that name shadows them, and
   always as ``topics."name"``); DataFusion parses, resolves and optimises the query
   (errors here are the user's: bad SQL, unknown columns, unknown relations);
2. ``sql.pushdown`` reads the bounds of every scanned relation off the optimised plan, each
   relation is read from the log within its bounds (``sql.scan``) and decoded (raw columns,
   or a JSON stream's declared columns, or a table's latest value per key), replaces its
   placeholder, and the same SQL runs again, this time for real.

Continuous-query statements: ``CREATE MATERIALIZED VIEW`` / ``CREATE STREAM ... AS`` plan the
SELECT once (``sql.continuous.plan.plan_continuous``; a view with ``emit="updates"``, a stream
with ``emit="final"``) so a query that cannot run is refused here, then (stream) create the
output topic if missing and declare the stream over it with the plan's output columns (a
watermark on its output time column), and store the ``QueryDefinition``; ``on_query_change``
tells the sql service to start the runner. DROP removes the definition (the runner stops),
the checkpoint and the query's state/view objects; a stream query's declaration goes, its
topic stays. A materialized view named in a query is registered as a table of its rows as of
its last checkpoint (``sql.continuous.checkpoint.load_view_rows``).

Only queries reach DataFusion, with DDL, DML and ``SET`` refused (``SQLOptions``): nothing a
query does writes anywhere. Relation schemas:

- a topic: ``sql.decode.RAW_SCHEMA`` (partition, offset, timestamp, key, value, headers);
- a stream: its declared columns, then ``_partition``, ``_offset``, ``_timestamp`` (the
  record's); one row per record whose value matches the declaration;
- a table: its declared columns, then ``_key``, ``_partition``, ``_offset``, ``_timestamp``;
  one row per key: the key's latest record (highest offset), unless that is a tombstone
  (null value), which deletes the key. Records without a key are left out and counted.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from datafusion import SessionContext

from metadata import InvalidTopicError, TopicExistsError
from metadata.async_store import AsyncMetadata
from metadata.store import TopicInfo
from sql import acl
from sql.acl import Need, statement_needs
from sql.catalog import KINDS, Catalog, CatalogError, Column, Relation, Watermark
from sql.continuous.definition import CheckpointState, QueryDefinition, decode_checkpoint
from sql.decode import RAW_SCHEMA
from sql.formats import decode_json
from sql.pushdown import BoundColumns, scan_bounds
from sql.scan import ScanBounds, ScanError, ScanStats, scan_topic
from sql.statements import (
    CreateQuery,
    CreateRelation,
    Describe,
    DropQuery,
    DropRelation,
    Query,
    ShowQueries,
    ShowRelations,
    StatementError,
    arrow_type,
    parse_statement,
)

__all__ = [
    "QueryDescription",
    "QueryResult",
    "RunnerStatus",
    "SourceLag",
    "SqlEngine",
    "SqlError",
    "UnknownQueryError",
    "relation_schema",
    "sql_type_of",
]

TOPICS_SCHEMA = "topics"
#: Values parsed per JSON decode call (several small blocks together).
DECODE_GROUP_BYTES = 4 << 20
RAW_BOUNDS = BoundColumns("partition", "offset", "timestamp")
STREAM_BOUNDS = BoundColumns("_partition", "_offset", "_timestamp")
_RECORD_COLUMNS = [
    pa.field("_partition", pa.int32(), nullable=False),
    pa.field("_offset", pa.int64(), nullable=False),
    pa.field("_timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
]
_KEY_COLUMN = pa.field("_key", pa.binary())
_NOT_FOUND = re.compile(r"table '(?:datafusion\.)?(?:public\.)?(.+?)' not found")
_ERROR_PREFIX = re.compile(r"^(?:DataFusion error: )?(?:Error during planning: )?")


class SqlError(Exception):
    """A statement that cannot run; the message says why and what to do."""


class UnknownQueryError(SqlError):
    """No continuous query has the name given (DROP, describe)."""


class QueryResult(msgspec.Struct):
    """A statement's rows (a query, SHOW, DESCRIBE) or its message (CREATE, DROP), and what
    the query read."""

    table: Any = None  # pa.Table
    message: str | None = None
    stats: ScanStats = msgspec.field(default_factory=ScanStats)


class SourceLag(msgspec.Struct, frozen=True):
    """How far a query is behind on one partition of one of its sources: ``lag`` =
    ``high_watermark`` - ``position`` (the next offset the query reads)."""

    source: str
    topic: str
    partition: int
    high_watermark: int
    position: int
    lag: int


class RunnerStatus(msgspec.Struct):
    """The runner process of a query as the sql service sees it. ``state``: ``running``,
    ``backoff`` (exited, restarted after ``backoff_ms``), ``stopped``, ``elsewhere`` (another
    agent's sql service runs it), ``disabled`` (sql_enabled is false) or ``unknown`` (no
    service was asked)."""

    state: str = "unknown"
    pid: int = 0
    restarts: int = 0
    last_exit_code: int | None = None
    last_error: str | None = None
    started_ms: int = 0
    backoff_ms: int = 0


class QueryDescription(msgspec.Struct):
    """What ``streamctl query describe`` shows: the definition, the last checkpoint's
    counters, the input lag per source partition and the runner's state."""

    name: str
    kind: str
    sql: str
    output_topic: str | None
    options: dict[str, str]
    created_ms: int
    generation: int = 0
    step: int = 0
    checkpoint_ms: int = 0
    watermark_ms: int | None = None
    rows_in: int = 0
    rows_out: int = 0
    rows_in_per_s: float = 0.0
    rows_out_per_s: float = 0.0
    decode_errors: int = 0
    late_rows_dropped: int = 0
    dead_lettered: int = 0
    last_error: str | None = None
    lag: int = 0
    sources: list[SourceLag] = []
    runner: RunnerStatus = msgspec.field(default_factory=RunnerStatus)


def sql_type_of(field: pa.Field) -> str:
    """The SQL type (as ``CREATE STREAM`` writes it) of an output column; SqlError for a type
    a declared stream cannot have."""
    t = field.type
    simple = {
        pa.bool_(): "BOOLEAN",
        pa.int8(): "TINYINT",
        pa.int16(): "SMALLINT",
        pa.int32(): "INT",
        pa.int64(): "BIGINT",
        pa.uint8(): "SMALLINT",
        pa.uint16(): "INT",
        pa.uint32(): "BIGINT",
        pa.float16(): "REAL",
        pa.float32(): "REAL",
        pa.float64(): "DOUBLE",
        pa.utf8(): "VARCHAR",
        pa.large_utf8(): "VARCHAR",
        pa.date32(): "DATE",
    }
    if t in simple:
        return simple[t]
    if pa.types.is_string_view(t):
        return "VARCHAR"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP" if t.tz is None else "TIMESTAMPTZ"
    if pa.types.is_decimal(t) and t.precision <= 38:
        return f"DECIMAL({t.precision},{t.scale})"
    if t == pa.uint64():
        return "DECIMAL(20,0)"
    raise SqlError(
        f"output column {field.name!r} has type {t}, which a declared stream cannot hold: "
        "CAST it to BIGINT, DOUBLE, VARCHAR, TIMESTAMP, ..."
    )


def relation_schema(relation: Relation) -> pa.Schema:
    """The columns a declared stream or table has in SQL."""
    fields = [pa.field(c.name, arrow_type(c.type), not c.not_null) for c in relation.columns]
    if relation.kind == "table":
        fields.append(_KEY_COLUMN)
    return pa.schema(fields + _RECORD_COLUMNS)


def _groups(batches: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    """Consecutive batches concatenated into batches of about ``DECODE_GROUP_BYTES`` of
    values, so small blocks do not each pay a parse's fixed cost."""
    out: list[pa.RecordBatch] = []
    group: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        group.append(batch)
        size += batch.column("value").nbytes
        if size >= DECODE_GROUP_BYTES:
            out.append(group[0] if len(group) == 1 else pa.concat_batches(group))
            group, size = [], 0
    if group:
        out.append(group[0] if len(group) == 1 else pa.concat_batches(group))
    return out


# How a plan may write a table registered under a bare name, or under ``topics.<name>``.
_DEFAULT_PREFIXES = (("datafusion.public.", ""), ("public.", ""), ("datafusion.topics.", "topics."))


def _resolve(written: str, sources: dict[str, Any], views: dict[str, Any]) -> list[str] | None:
    """The registered names (keys of ``sources`` or ``views``) a plan's table name ``written``
    can mean, or None when it means none of them. The plan shows names unquoted, so
    ``public.x`` is table ``x`` of the default schema or a table named "public.x": every
    reading that is registered counts (the query is checked against all of them)."""
    candidates = [written]
    for prefix, replacement in _DEFAULT_PREFIXES:
        if written.startswith(prefix):
            candidates.append(replacement + written[len(prefix) :])
    known = [n for n in dict.fromkeys(candidates) if n in sources or n in views]
    return known or None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _clean(exc: Exception, orphans: dict[str, Relation] | None = None) -> str:
    text = str(exc).strip()
    m = _NOT_FOUND.search(text)
    if m:
        orphan = (orphans or {}).get(m[1])
        if orphan is not None:
            return (
                f"{orphan.kind} {orphan.name!r} reads topic {orphan.topic!r}, which no longer "
                f"exists: re-create the topic, or DROP {orphan.kind.upper()} {orphan.name}"
            )
        return (
            f"no stream, table or topic called {m[1]!r}: see SHOW STREAMS, SHOW TABLES and "
            "the topic list (streamctl topic list); quote names with capitals or dashes "
            '("My-Topic")'
        )
    return _ERROR_PREFIX.sub("", text)


class _Source:
    """One queryable name: a raw topic or a declared relation over a topic."""

    __slots__ = ("bounds", "relation", "schema", "topic")

    def __init__(self, topic: TopicInfo, relation: Relation | None) -> None:
        self.topic = topic
        self.relation = relation
        self.schema = RAW_SCHEMA if relation is None else relation_schema(relation)
        self.bounds = RAW_BOUNDS if relation is None else STREAM_BOUNDS


class SqlEngine:
    """Runs statements against one StreamHouse: its metadata, object store and catalog."""

    def __init__(
        self,
        meta: AsyncMetadata,
        store: Any,
        catalog: Catalog,
        *,
        scan_concurrency: int = 8,
        max_inflated: int = 64 << 20,
        max_read_bytes: int | None = None,
        on_query_change: Callable[[str], Awaitable[None]] | None = None,
        authorize: Callable[[list[Need]], None] | None = None,
    ) -> None:
        self.meta = meta
        self.store = store
        self.catalog = catalog
        self.scan_concurrency = scan_concurrency
        self.max_inflated = max_inflated
        self.max_read_bytes = max_read_bytes
        # Called with a query's name after it was created and after its definition was
        # deleted (before its checkpoint is): the sql service starts / stops its runner.
        self.on_query_change = on_query_change
        # The caller's ACL check (sql/acl.py): given what a statement needs, it returns or
        # raises AccessDenied. None (the in-process path, the runners): nothing is checked.
        self.authorize = authorize

    async def execute(self, text: str) -> QueryResult:
        """Runs one statement. Raises SqlError (bad statement, unknown names, unreadable
        data) with a message for the user."""
        try:
            statement = parse_statement(text)
        except StatementError as exc:
            raise SqlError(str(exc)) from None
        if self.authorize is not None:
            self.authorize(statement_needs(statement))
        if isinstance(statement, CreateRelation):
            return await self._create(statement, text)
        if isinstance(statement, DropRelation):
            return await self._drop(statement)
        if isinstance(statement, ShowRelations):
            return await self._show(statement.kind)
        if isinstance(statement, Describe):
            return await self._describe(statement.name)
        if isinstance(statement, CreateQuery):
            return await self._create_query(statement)
        if isinstance(statement, DropQuery):
            return await self.drop_query(statement.name, statement.if_exists, statement.kind)
        if isinstance(statement, ShowQueries):
            return await self._show_queries(statement.kind)
        assert isinstance(statement, Query)
        return await self._query(statement.sql)

    # -- catalog statements --------------------------------------------------------------

    async def _create(self, stmt: CreateRelation, text: str) -> QueryResult:
        query = await self.catalog.get_query(stmt.name)
        if query is not None:
            raise SqlError(_query_exists(query))
        existing = await self.catalog.find(stmt.name)
        if existing is not None:
            if stmt.if_not_exists and existing.kind == stmt.kind:
                return QueryResult(message=f"{stmt.kind} {stmt.name} already exists")
            raise SqlError(
                f"{existing.kind} {stmt.name!r} already exists (over topic "
                f"{existing.topic!r}): DROP {existing.kind.upper()} {stmt.name} first, or "
                "pick another name"
            )
        topic_name = stmt.options["topic"]
        if await self.meta.get_topic(topic_name) is None:
            raise SqlError(
                f"topic {topic_name!r} does not exist: create it first (streamctl topic "
                "create), then declare the " + stmt.kind
            )
        relation = Relation(
            kind=stmt.kind,
            name=stmt.name,
            topic=topic_name,
            format=stmt.options["format"],
            columns=stmt.columns,
            watermark=stmt.watermark,
            sql=text.strip(),
            created_ms=time.time_ns() // 1_000_000,
        )
        try:
            await self.catalog.put(relation)
        except CatalogError as exc:
            raise SqlError(str(exc)) from None
        return QueryResult(message=f"{stmt.kind} {stmt.name} created over topic {topic_name}")

    async def _drop(self, stmt: DropRelation) -> QueryResult:
        if stmt.kind == "stream":
            query = await self.catalog.get_query(stmt.name)
            if query is not None and query.kind == "stream":
                return await self.drop_query(stmt.name, stmt.if_exists, "stream")
        if await self.catalog.get(stmt.kind, stmt.name) is not None:
            readers = await self._readers_of(stmt.name)
            if readers:
                raise SqlError(
                    f"{stmt.kind} {stmt.name} is read by continuous "
                    f"quer{'ies' if len(readers) > 1 else 'y'} {', '.join(readers)}: drop "
                    f"{'them' if len(readers) > 1 else 'it'} first (DROP QUERY name)"
                )
        if await self.catalog.delete(stmt.kind, stmt.name):
            return QueryResult(message=f"{stmt.kind} {stmt.name} dropped")
        if stmt.if_exists:
            return QueryResult(message=f"no {stmt.kind} {stmt.name}: nothing dropped")
        raise SqlError(
            f"no {stmt.kind} called {stmt.name!r} (SHOW {stmt.kind.upper()}S lists them)"
        )

    async def _readers_of(self, name: str) -> list[str]:
        """The continuous queries whose plan reads relation ``name``."""
        readers = []
        for query in await self.catalog.list_queries():
            if query.name == name:
                continue
            try:
                plan = await self.plan(query)
            except SqlError:
                continue  # does not plan any more: it reads nothing
            if name in plan.sources:
                readers.append(query.name)
        return readers

    async def _show(self, kind: str) -> QueryResult:
        rows = []
        for rel in await self.catalog.list(kind):
            wm = rel.watermark
            rows.append(
                {
                    "name": rel.name,
                    "topic": rel.topic,
                    "format": rel.format,
                    "columns": ", ".join(f"{c.name} {c.type}" for c in rel.columns),
                    "watermark": "" if wm is None else f"{wm.column} - {wm.delay_ms} ms",
                }
            )
        schema = pa.schema(
            [(f, pa.utf8()) for f in ("name", "topic", "format", "columns", "watermark")]
        )
        return QueryResult(table=pa.Table.from_pylist(rows, schema=schema))

    async def _describe(self, name: str) -> QueryResult:
        relation = await self.catalog.find(name)
        rows: list[dict[str, str]] = []
        if relation is not None:
            schema = relation_schema(relation)
            wm = relation.watermark
            notes = {
                "_partition": f"partition of topic {relation.topic}",
                "_offset": "the record's offset",
                "_timestamp": "the record's timestamp",
                "_key": "the record key (a table holds the latest value per key)",
            }
            if wm is not None:
                notes[wm.column] = f"watermark: {wm.column} - {wm.delay_ms} ms"
            for c in relation.columns:
                notes.setdefault(c.name, f"{relation.format} field {c.name}")
        else:
            topic = await self.meta.get_topic(name)
            if topic is None:
                raise SqlError(f"no stream, table or topic called {name!r}")
            schema = RAW_SCHEMA
            notes = {"partition": f"of {topic.partitions}", "offset": "", "timestamp": "ms"}
        for field in schema:
            rows.append(
                {
                    "column": field.name,
                    "type": str(field.type) + ("" if field.nullable else " not null"),
                    "note": notes.get(field.name, ""),
                }
            )
        out = pa.schema([("column", pa.utf8()), ("type", pa.utf8()), ("note", pa.utf8())])
        return QueryResult(table=pa.Table.from_pylist(rows, schema=out))

    # -- continuous queries ----------------------------------------------------------------

    async def _relations(self) -> tuple[dict[str, Relation], set[str]]:
        relations = {r.name: r for kind in KINDS for r in await self.catalog.list(kind)}
        topics = {t.name for t in await self.meta.list_topics()}
        return relations, topics

    async def plan(self, definition: QueryDefinition) -> Any:
        """Plans a stored query again (its output schema, its sources); SqlError when it no
        longer plans (a relation it reads was dropped, ...)."""
        relations, topics = await self._relations()
        lateness = int(definition.options.get("allowed_lateness_ms", "0"))
        emit = "updates" if definition.kind == "view" else "final"
        return await asyncio.to_thread(_plan, definition.sql, relations, topics, emit, lateness)

    async def _create_query(self, stmt: CreateQuery) -> QueryResult:
        what = "materialized view" if stmt.kind == "view" else "stream"
        query = await self.catalog.get_query(stmt.name)
        if query is not None:
            if stmt.if_not_exists and query.kind == stmt.kind:
                return QueryResult(message=f"{what} {stmt.name} already exists")
            raise SqlError(_query_exists(query))
        existing = await self.catalog.find(stmt.name)
        if existing is not None:
            raise SqlError(
                f"{existing.kind} {stmt.name!r} already exists (over topic "
                f"{existing.topic!r}): pick another name for the {what}"
            )
        definition = QueryDefinition(
            name=stmt.name,
            kind=stmt.kind,
            sql=stmt.select,
            output_topic=stmt.options.get("topic"),
            output_format=stmt.options.get("format", "json"),
            options={
                k: v
                for k, v in stmt.options.items()
                if k in ("allowed_lateness_ms", "dead_letter_topic")
            },
            created_ms=time.time_ns() // 1_000_000,
        )
        plan = await self.plan(definition)
        notes: list[str] = []
        source_topics = {src.topic for src in plan.sources.values()}
        dead_letter = definition.options.get("dead_letter_topic")
        if self.authorize is not None:
            needs = acl.reads(source_topics)
            for target in (definition.output_topic if stmt.kind == "stream" else None, dead_letter):
                if target is not None:
                    needs.append(acl.writes(target))
                    if await self.meta.get_topic(target) is None:
                        needs.append(acl.create_topic(target))
            self.authorize(needs)
        if dead_letter is not None:
            if dead_letter in source_topics or dead_letter == definition.output_topic:
                raise SqlError(
                    f"dead_letter_topic {dead_letter!r} is read or written by the query: "
                    "name a topic of its own"
                )
            if await self._ensure_topic(dead_letter, 1):
                notes.append(f"dead-letter topic {dead_letter} created")
        declared: Relation | None = None
        if stmt.kind == "stream":
            topic = stmt.options["topic"]
            if topic in source_topics:
                raise SqlError(
                    f"topic {topic!r} is an input of the query: a stream query cannot write "
                    "what it reads; name another topic (WITH (topic = '...'))"
                )
            columns = [Column(f.name, sql_type_of(f)) for f in plan.output_schema]
            for c in columns:
                if c.name.startswith("_"):
                    raise SqlError(
                        f"output column {c.name!r}: names starting with '_' are reserved; "
                        f"rename it (AS {c.name.lstrip('_') or 'x'})"
                    )
            time_column = plan.output_time_column
            watermark = None
            if time_column is not None and any(
                c.name == time_column and c.type.startswith("TIMESTAMP") for c in columns
            ):
                watermark = Watermark(time_column, 0)
            if await self._ensure_topic(topic, int(stmt.options["partitions"])):
                notes.append(f"topic {topic} created")
            declared = Relation(
                kind="stream",
                name=stmt.name,
                topic=topic,
                format=definition.output_format,
                columns=columns,
                watermark=watermark,
                sql=f"CREATE STREAM {stmt.name} AS {stmt.select}",
                created_ms=definition.created_ms,
            )
            try:
                await self.catalog.put(declared)
            except CatalogError as exc:
                raise SqlError(str(exc)) from None
        try:
            await self.catalog.put_query(definition)
        except CatalogError as exc:
            if declared is not None:
                await self.catalog.delete("stream", declared.name)
            raise SqlError(str(exc)) from None
        if self.on_query_change is not None:
            await self.on_query_change(stmt.name)
        target = "" if stmt.kind == "view" else f" writing topic {definition.output_topic}"
        extra = f" ({'; '.join(notes)})" if notes else ""
        return QueryResult(message=f"{what} {stmt.name} created{target}{extra}")

    async def _ensure_topic(self, name: str, partitions: int) -> bool:
        """Creates topic ``name`` if missing; True when it was created."""
        if await self.meta.get_topic(name) is not None:
            return False
        try:
            await self.meta.create_topic(name, partitions, None)
        except TopicExistsError:
            return False
        except InvalidTopicError as exc:
            raise SqlError(f"topic {name!r} cannot be created: {exc}") from None
        return True

    async def drop_query(
        self, name: str, if_exists: bool = False, kind: str | None = None
    ) -> QueryResult:
        """Drops a continuous query: its definition (the runner stops), its checkpoint and
        its state objects; a stream query's stream declaration too (its topic stays)."""
        query = await self.catalog.get_query(name)
        if query is None:
            if if_exists:
                return QueryResult(message=f"no query {name}: nothing dropped")
            listing = "SHOW MATERIALIZED VIEWS" if kind == "view" else "SHOW QUERIES"
            raise UnknownQueryError(f"no {_kind_name(kind)} called {name!r} ({listing} lists them)")
        if kind is not None and query.kind != kind:
            raise SqlError(
                f"{name!r} is a {_kind_name(query.kind)}, not a {_kind_name(kind)}: "
                f"DROP QUERY {name} drops it"
            )
        if query.kind == "stream":
            readers = await self._readers_of(name)
            if readers:
                raise SqlError(
                    f"stream {name} (the output of stream query {name}) is read by continuous "
                    f"quer{'ies' if len(readers) > 1 else 'y'} {', '.join(readers)}: drop "
                    f"{'them' if len(readers) > 1 else 'it'} first"
                )
        await self.catalog.delete_query(name)
        if self.on_query_change is not None:
            await self.on_query_change(name)
        delete_checkpoint = getattr(self.meta, "delete_query_checkpoint", None)
        if delete_checkpoint is not None:
            await delete_checkpoint(name)
        await self._delete_objects(name)
        kept = ""
        if query.kind == "stream":
            declared = await self.catalog.get("stream", name)
            if declared is not None and declared.topic == query.output_topic:
                await self.catalog.delete("stream", name)
            kept = f" (topic {query.output_topic} kept)"
        return QueryResult(message=f"{_kind_name(query.kind)} {name} dropped{kept}")

    async def _delete_objects(self, name: str) -> None:
        """The query's state and view objects (``sql/state/<name>/``, ``sql/views/<name>/``):
        best effort (the next drop or the lifecycle's orphan sweep finds what is left)."""
        from streamhouse import objectstore

        for prefix in (f"sql/state/{name}/", f"sql/views/{name}/"):
            try:
                async for page in objectstore.list_objects(self.store, prefix):
                    await objectstore.delete_many(self.store, [o.key for o in page])
            except Exception:  # noqa: BLE001  (an unreachable store must not fail the drop)
                continue

    async def _show_queries(self, kind: str | None) -> QueryResult:
        rows = []
        for q in await self.catalog.list_queries():
            if kind is not None and q.kind != kind:
                continue
            rows.append(
                {
                    "name": q.name,
                    "kind": _kind_name(q.kind),
                    "output": q.output_topic or "(view)",
                    "sql": q.sql,
                    "options": ", ".join(f"{k}={v}" for k, v in sorted(q.options.items())),
                }
            )
        schema = pa.schema([(f, pa.utf8()) for f in ("name", "kind", "output", "sql", "options")])
        return QueryResult(table=pa.Table.from_pylist(rows, schema=schema))

    async def describe_query(self, name: str) -> QueryDescription:
        """A query's definition, last checkpoint and input lag (no runner state: the sql
        service adds it). SqlError when no query has that name."""
        query = await self.catalog.get_query(name)
        if query is None:
            raise UnknownQueryError(f"no query called {name!r} (streamctl query list shows them)")
        get_checkpoint = getattr(self.meta, "get_query_checkpoint", None)
        row = None if get_checkpoint is None else await get_checkpoint(name)
        state = CheckpointState() if row is None else decode_checkpoint(row.payload)
        out = QueryDescription(
            name=query.name,
            kind=query.kind,
            sql=query.sql,
            output_topic=query.output_topic,
            options=dict(query.options),
            created_ms=query.created_ms,
            generation=0 if row is None else row.generation,
            step=state.step,
            checkpoint_ms=state.updated_ms,
            watermark_ms=state.watermark_ms,
            rows_in=state.rows_in,
            rows_out=state.rows_out,
            rows_in_per_s=state.rows_in_per_s,
            rows_out_per_s=state.rows_out_per_s,
            decode_errors=state.decode_errors,
            late_rows_dropped=state.late_rows_dropped,
            dead_lettered=state.dead_lettered,
            last_error=state.last_error,
        )
        try:
            plan = await self.plan(query)
            topics_of = {n: src.topic for n, src in plan.sources.items()}
        except SqlError as exc:
            out.last_error = out.last_error or f"the query no longer plans: {exc}"
            relations, _ = await self._relations()
            topics_of = {}
            for source in state.positions:
                rel = relations.get(source)
                topics_of[source] = rel.topic if rel is not None else _topic_of(source)
        for source, topic_name in sorted(topics_of.items()):
            topic = await self.meta.get_topic(topic_name)
            if topic is None:
                continue
            positions = state.positions.get(source, {})
            for part in await self.meta.list_partitions(topic.topic_id):
                position = positions.get(part.partition, part.log_start_offset)
                lag = max(0, part.high_watermark - position)
                out.sources.append(
                    SourceLag(
                        source, topic_name, part.partition, part.high_watermark, position, lag
                    )
                )
                out.lag += lag
        return out

    async def _views(self, sql: str) -> dict[str, pa.Table]:
        """The current rows of every materialized view the query text names."""
        views: dict[str, pa.Table] = {}
        for q in await self.catalog.list_queries():
            if q.kind != "view" or not re.search(
                rf"(?<![\w$]){re.escape(q.name)}(?![\w$])", sql, re.I
            ):
                continue
            table = await self._load_view(q.name)
            if table is None:
                plan = await self.plan(q)
                table = plan.output_schema.empty_table()
            views[q.name] = table
        return views

    async def _load_view(self, name: str) -> pa.Table | None:
        try:
            from sql.continuous.checkpoint import load_view_rows
        except ImportError:
            return None  # no runner in this build: no rows were ever committed
        return await load_view_rows(self.meta, self.store, name)

    # -- queries -------------------------------------------------------------------------

    async def _sources(self) -> tuple[dict[str, _Source], dict[str, Relation]]:
        """Every queryable name, by the name DataFusion's plan shows for it; and the declared
        relations whose topic is gone (not queryable)."""
        topics = {t.name: t for t in await self.meta.list_topics()}
        sources: dict[str, _Source] = {}
        orphans: dict[str, Relation] = {}
        for name, topic in topics.items():
            sources[name] = _Source(topic, None)
            sources[f"{TOPICS_SCHEMA}.{name}"] = _Source(topic, None)
        for kind in KINDS:
            for rel in await self.catalog.list(kind):
                topic = topics.get(rel.topic)
                if topic is None:
                    orphans[rel.name] = rel
                    sources.pop(rel.name, None)  # never the topic it shadows by name
                else:
                    sources[rel.name] = _Source(topic, rel)
        return sources, orphans

    @staticmethod
    def _register(
        ctx: SessionContext,
        name: str,
        schema: pa.Schema,
        batches: list[pa.RecordBatch],
        *,
        replace: bool = False,
    ) -> None:
        prefix = TOPICS_SCHEMA + "."
        ref = prefix + _quote(name[len(prefix) :]) if name.startswith(prefix) else _quote(name)
        if replace:
            ctx.deregister_table(ref)
        empty = [pa.RecordBatch.from_pylist([], schema=schema)]
        ctx.register_record_batches(ref, [batches or empty])

    async def _query(self, sql: str) -> QueryResult:
        # DataFusion loads on the first query (the sql service starts without it)
        from datafusion import SessionContext
        from datafusion.context import SQLOptions

        sources, orphans = await self._sources()
        options = (
            SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)
        )
        views = await self._views(sql)
        for name in views:
            sources.pop(name, None)  # a view shadows a topic of its name
        ctx = SessionContext()
        ctx.sql(f"CREATE SCHEMA {TOPICS_SCHEMA}")
        for name, source in sources.items():
            self._register(ctx, name, source.schema, [])
        for name, table in views.items():
            self._register(ctx, name, table.schema, table.to_batches())
        try:
            plan = ctx.sql_with_options(sql, options).optimized_logical_plan()
        except Exception as exc:
            raise SqlError(_clean(exc, orphans)) from None
        scanned = scan_bounds(plan, {n: s.bounds for n, s in sources.items()})
        # The plan names a table as written (``v``, ``public.v``, ``datafusion.public.v``):
        # every name is resolved to the registered ones it can mean before any check.
        bounds: dict[str, ScanBounds] = {}
        for written, wanted in scanned.items():
            resolved = _resolve(written, sources, views)
            if resolved is None:
                if written.endswith("()"):
                    continue  # a built-in table function (range(), generate_series())
                raise SqlError(
                    f"table {written!r} is not a topic, stream, table or materialized view "
                    "of this cluster: use a topic's name or one SHOW STREAMS, SHOW TABLES or SHOW "
                    "MATERIALIZED VIEWS lists"
                )
            for name in resolved:
                bounds[name] = wanted if name not in bounds else bounds[name].union(wanted)
        if self.authorize is not None:
            self.authorize(acl.reads(await self._topics_read(bounds, sources, views)))
        stats = ScanStats()
        explain_only = type(plan.to_variant()).__name__ == "Explain"  # not EXPLAIN ANALYZE
        for name, wanted in bounds.items():
            source = sources.get(name)
            if source is None or explain_only:
                continue  # a view (its rows are registered), or nothing is executed
            stats.scans[name] = wanted
            batches = await self._load(name, source, wanted, stats)
            self._register(ctx, name, source.schema, batches, replace=True)
        try:
            table = await asyncio.to_thread(
                lambda: ctx.sql_with_options(sql, options).to_arrow_table()
            )
        except Exception as exc:
            raise SqlError(_clean(exc)) from None
        return QueryResult(table=table, stats=stats)

    async def _topics_read(
        self, scanned: Iterable[str], sources: dict[str, _Source], views: dict[str, pa.Table]
    ) -> set[str]:
        """The topics behind the tables a plan scans: a source's topic; for a materialized
        view, every topic its query reads (what the view's rows come from)."""
        topics: set[str] = set()
        for name in scanned:
            if name in sources:
                topics.add(sources[name].topic.name)
            elif name in views:
                query = await self.catalog.get_query(name)
                if query is not None:
                    plan = await self.plan(query)
                    topics.update(src.topic for src in plan.sources.values())
        return topics

    async def _load(
        self, name: str, source: _Source, bounds: ScanBounds, stats: ScanStats
    ) -> list[pa.RecordBatch]:
        relation = source.relation
        if relation is not None and relation.kind == "table":
            bounds = ScanBounds()  # the latest value per key needs the whole log
        try:
            raw = await scan_topic(
                self.meta,
                self.store,
                source.topic,
                bounds,
                stats,
                concurrency=self.scan_concurrency,
                max_inflated=self.max_inflated,
                max_read_bytes=self.max_read_bytes,
            )
        except ScanError as exc:
            raise SqlError(str(exc)) from None
        if relation is None:
            return raw
        # parsing values is the CPU-heavy part: off the event loop
        if relation.kind == "stream":
            return await asyncio.to_thread(self._stream, name, relation, source.schema, raw, stats)
        return await asyncio.to_thread(self._latest, name, relation, source.schema, raw, stats)

    def _stream(
        self,
        name: str,
        relation: Relation,
        schema: pa.Schema,
        raw: list[pa.RecordBatch],
        stats: ScanStats,
    ) -> list[pa.RecordBatch]:
        out = []
        for group in _groups(raw):
            batch = self._decode(name, relation, schema, group, stats)
            if batch.num_rows:
                out.append(batch)
        return out

    def _decode(
        self,
        name: str,
        relation: Relation,
        schema: pa.Schema,
        raw: pa.RecordBatch,
        stats: ScanStats,
        key: bool = False,
    ) -> pa.RecordBatch:
        declared = pa.schema(schema.field(c.name) for c in relation.columns)
        # parsed as nullable; a NOT NULL column left null makes the record not match
        decoded = decode_json(
            raw.column("value"), pa.schema(f.with_nullable(True) for f in declared)
        )
        table = decoded.table
        rows = pa.array(decoded.rows, pa.int64())
        errors = decoded.errors
        required = [c.name for c in relation.columns if c.not_null]
        if required and table.num_rows:
            complete = pc.is_valid(table.column(required[0]))
            for column in required[1:]:
                complete = pc.and_(complete, pc.is_valid(table.column(column)))
            kept = table.num_rows
            table = table.filter(complete)
            rows = rows.filter(complete.combine_chunks())
            errors += kept - table.num_rows
        if errors:
            stats.invalid_records[name] = stats.invalid_records.get(name, 0) + errors
        table = table.cast(declared).combine_chunks()
        columns = [
            table.column(i).chunk(0) if table.column(i).num_chunks else pa.array([], f.type)
            for i, f in enumerate(declared)
        ]
        extra = ["key"] if key else []
        columns += [raw.column(c).take(rows) for c in [*extra, "partition", "offset", "timestamp"]]
        return pa.RecordBatch.from_arrays(columns, schema=schema)

    def _latest(
        self,
        name: str,
        relation: Relation,
        schema: pa.Schema,
        raw: list[pa.RecordBatch],
        stats: ScanStats,
    ) -> list[pa.RecordBatch]:
        if not raw:
            return []
        log = pa.Table.from_batches(raw)
        keyless = log.column("key").null_count
        if keyless:
            stats.invalid_records[name] = stats.invalid_records.get(name, 0) + keyless
            log = log.filter(pc.is_valid(log.column("key")))
        if log.num_rows == 0:
            return []
        log = log.sort_by(
            [("key", "ascending"), ("partition", "ascending"), ("offset", "ascending")]
        )
        keys = log.column("key").combine_chunks()
        last = np.ones(len(keys), dtype=bool)
        if len(keys) > 1:
            differs = pc.not_equal(keys.slice(0, len(keys) - 1), keys.slice(1))
            last[:-1] = differs.to_numpy(zero_copy_only=False)
        latest = log.filter(pa.array(last))
        latest = latest.filter(pc.is_valid(latest.column("value")))  # tombstones delete
        batches = []
        for batch in latest.to_batches():
            out = self._decode(name, relation, schema, batch, stats, key=True)
            if out.num_rows:
                batches.append(out)
        return batches


def _plan(
    sql: str, relations: dict[str, Relation], topics: set[str], emit: str, lateness: int
) -> Any:
    """``sql.continuous.plan.plan_continuous`` (loaded on first use), errors as SqlError."""
    try:
        from sql.continuous.pipeline import PlanError
        from sql.continuous.plan import plan_continuous
    except ImportError as exc:
        raise SqlError(
            f"continuous queries cannot be planned by this installation ({exc}): update StreamHouse"
        ) from None
    try:
        return plan_continuous(sql, relations, topics, emit=emit, allowed_lateness_ms=lateness)
    except PlanError as exc:
        raise SqlError(str(exc)) from None
    except Exception as exc:  # a bug of the planner: still the statement's error
        raise SqlError(f"the query could not be planned: {type(exc).__name__}: {exc}") from None


def _kind_name(kind: str | None) -> str:
    return {"view": "materialized view", "stream": "stream query"}.get(kind or "", "query")


def _query_exists(query: QueryDefinition) -> str:
    drop = "DROP MATERIALIZED VIEW" if query.kind == "view" else "DROP QUERY"
    return (
        f"{_kind_name(query.kind)} {query.name!r} already exists: {drop} {query.name} first, "
        "or pick another name"
    )


def _topic_of(source: str) -> str:
    """``topics."name"`` / ``topics.name`` / ``name`` -> the topic's name."""
    name = source[len(TOPICS_SCHEMA) + 1 :] if source.startswith(TOPICS_SCHEMA + ".") else source
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].replace('""', '"')
    return name
