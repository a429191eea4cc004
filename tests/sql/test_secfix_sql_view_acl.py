"""A query's READ check covers every table it scans however the name is written: a
materialized view named bare, as ``public.v`` or ``datafusion.public.v`` needs READ on the
topics its query reads, before any of its rows are returned (sql/engine.py ``_resolve``).
The engine runs DataFusion for real; its catalog, sources and the view's rows are stand-ins."""

from __future__ import annotations

import asyncio
import types

import pyarrow as pa
import pytest

from sql.acl import AccessDenied, SqlAccess
from sql.engine import SqlEngine, SqlError, _resolve
from streamhouse.acl import (
    AclBinding,
    AclOperation,
    Authorizer,
    PatternType,
    Permission,
    ResourceType,
)

VIEW_ROWS = pa.table({"secret": ["s3cr3t"]})


class _Catalog:
    async def get_query(self, name: str) -> object:
        return object()


def _engine(*bindings: AclBinding) -> SqlEngine:
    access = SqlAccess(Authorizer(bindings, frozenset()), "User:mallory", "127.0.0.1")
    engine = SqlEngine(None, None, _Catalog(), authorize=access.check)  # type: ignore[arg-type]

    async def sources() -> tuple[dict[str, object], dict[str, object]]:
        return {}, {}

    async def views(sql: str) -> dict[str, pa.Table]:
        return {"myview": VIEW_ROWS}

    async def plan(query: object) -> object:
        return types.SimpleNamespace(sources={"x": types.SimpleNamespace(topic="secret_topic")})

    engine._sources, engine._views, engine.plan = sources, views, plan  # type: ignore[method-assign]
    return engine


QUERIES = [
    "SELECT * FROM myview",
    "SELECT * FROM public.myview",
    "SELECT * FROM datafusion.public.myview",
    'SELECT * FROM "public"."myview"',
    "SELECT (SELECT max(secret) FROM public.myview)",
]


@pytest.mark.parametrize("query", QUERIES)
def test_a_view_needs_read_on_its_source_topics_however_it_is_named(query: str) -> None:
    with pytest.raises(AccessDenied, match="secret_topic"):
        asyncio.run(_engine()._query(query))


@pytest.mark.parametrize("query", QUERIES[:3])
def test_a_view_is_read_with_read_on_its_source_topics(query: str) -> None:
    grant = AclBinding(
        ResourceType.TOPIC,
        "secret_topic",
        PatternType.LITERAL,
        "User:mallory",
        "*",
        AclOperation.READ,
        Permission.ALLOW,
    )
    result = asyncio.run(_engine(grant)._query(query))
    assert result.table.to_pylist() == [{"secret": "s3cr3t"}]


def test_names_resolve_to_every_registered_reading() -> None:
    sources = {"t": 1, "topics.t": 1, "public.x": 1}
    views = {"x": 1}
    assert _resolve("t", sources, views) == ["t"]
    assert _resolve("public.t", sources, views) == ["t"]
    assert _resolve("datafusion.public.t", sources, views) == ["t"]
    assert _resolve("datafusion.topics.t", sources, views) == ["topics.t"]
    # unquoted in the plan, "public.x" may be either table: both are checked
    assert _resolve("public.x", sources, views) == ["public.x", "x"]
    assert _resolve("other.t", sources, views) is None


def test_a_scanned_table_that_is_not_ours_is_refused() -> None:
    engine = _engine()

    async def views(sql: str) -> dict[str, pa.Table]:
        return {}

    engine._views = views  # type: ignore[method-assign]
    # A table DataFusion knows but the engine did not register (none exists in a normal
    # session): simulate one by planning against a context holding an extra table.
    from datafusion import SessionContext

    real_sql = SessionContext.sql_with_options

    def sql_with_options(self: SessionContext, sql: str, options: object) -> object:
        if "stray" not in self.catalog().schema().names():
            self.register_record_batches("stray", [[pa.RecordBatch.from_pylist([{"a": 1}])]])
        return real_sql(self, sql, options)

    SessionContext.sql_with_options = sql_with_options  # type: ignore[method-assign]
    try:
        with pytest.raises(SqlError, match="'stray' is not a topic"):
            asyncio.run(engine._query("SELECT * FROM stray"))
    finally:
        SessionContext.sql_with_options = real_sql  # type: ignore[method-assign]


def test_table_functions_need_no_topic() -> None:
    result = asyncio.run(_engine()._query("SELECT count(*) AS n FROM range(3)"))
    assert result.table.to_pylist() == [{"n": 3}]
