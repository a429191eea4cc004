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
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datafusion import SessionContext
from datafusion.context import SQLOptions

from metadata.async_store import AsyncMetadata
from metadata.store import TopicInfo
from sql.catalog import KINDS, Catalog, CatalogError, Relation
from sql.decode import RAW_SCHEMA
from sql.formats import decode_json
from sql.pushdown import BoundColumns, scan_bounds
from sql.scan import ScanBounds, ScanError, ScanStats, scan_topic
from sql.statements import (
    CreateRelation,
    Describe,
    DropRelation,
    Query,
    ShowRelations,
    StatementError,
    arrow_type,
    parse_statement,
)

__all__ = ["QueryResult", "SqlEngine", "SqlError", "relation_schema"]

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


class QueryResult(msgspec.Struct):
    """A statement's rows (a query, SHOW, DESCRIBE) or its message (CREATE, DROP), and what
    the query read."""

    table: Any = None  # pa.Table
    message: str | None = None
    stats: ScanStats = msgspec.field(default_factory=ScanStats)


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
    ) -> None:
        self.meta = meta
        self.store = store
        self.catalog = catalog
        self.scan_concurrency = scan_concurrency
        self.max_inflated = max_inflated
        self.max_read_bytes = max_read_bytes

    async def execute(self, text: str) -> QueryResult:
        """Runs one statement. Raises SqlError (bad statement, unknown names, unreadable
        data) with a message for the user."""
        try:
            statement = parse_statement(text)
        except StatementError as exc:
            raise SqlError(str(exc)) from None
        if isinstance(statement, CreateRelation):
            return await self._create(statement, text)
        if isinstance(statement, DropRelation):
            return await self._drop(statement)
        if isinstance(statement, ShowRelations):
            return await self._show(statement.kind)
        if isinstance(statement, Describe):
            return await self._describe(statement.name)
        assert isinstance(statement, Query)
        return await self._query(statement.sql)

    # -- catalog statements --------------------------------------------------------------

    async def _create(self, stmt: CreateRelation, text: str) -> QueryResult:
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
        if await self.catalog.delete(stmt.kind, stmt.name):
            return QueryResult(message=f"{stmt.kind} {stmt.name} dropped")
        if stmt.if_exists:
            return QueryResult(message=f"no {stmt.kind} {stmt.name}: nothing dropped")
        raise SqlError(
            f"no {stmt.kind} called {stmt.name!r} (SHOW {stmt.kind.upper()}S lists them)"
        )

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
        sources, orphans = await self._sources()
        options = (
            SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)
        )
        ctx = SessionContext()
        ctx.sql(f"CREATE SCHEMA {TOPICS_SCHEMA}")
        for name, source in sources.items():
            self._register(ctx, name, source.schema, [])
        try:
            plan = ctx.sql_with_options(sql, options).optimized_logical_plan()
        except Exception as exc:
            raise SqlError(_clean(exc, orphans)) from None
        bounds = scan_bounds(plan, {n: s.bounds for n, s in sources.items()})
        stats = ScanStats()
        explain_only = type(plan.to_variant()).__name__ == "Explain"  # not EXPLAIN ANALYZE
        for name, wanted in bounds.items():
            source = sources.get(name)
            if source is None or explain_only:
                continue  # not ours (information_schema...), or nothing is executed
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
