"""Parsing of the continuous-query statements (sql/statements.py) and the output types a
CREATE STREAM ... AS declares (sql.engine.sql_type_of); the Arrow IPC pieces the sql service
streams (sql.service.ipc_chunks). No I/O."""

from __future__ import annotations

import decimal

import pyarrow as pa
import pytest

from sql.engine import SqlError, sql_type_of
from sql.service import ipc_chunks
from sql.statements import (
    CreateQuery,
    CreateRelation,
    DropQuery,
    ShowQueries,
    StatementError,
    arrow_type,
    parse_statement,
)


def test_materialized_view_with_options() -> None:
    stmt = parse_statement(
        "create materialized view if not exists Totals "
        "with (allowed_lateness = interval '5' second, dead_letter_topic = 'bad') "
        "as select user, count(*) as n from pay group by user;"
    )
    assert stmt == CreateQuery(
        kind="view",
        name="totals",
        select="select user, count(*) as n from pay group by user",
        options={"allowed_lateness_ms": "5000", "dead_letter_topic": "bad"},
        if_not_exists=True,
    )


@pytest.mark.parametrize(
    ("given", "ms"),
    [("250", 250), ("'2 minutes'", 120_000), ("'3s'", 3_000), ("INTERVAL '1' HOUR", 3_600_000)],
)
def test_allowed_lateness_forms(given: str, ms: int) -> None:
    stmt = parse_statement(
        f"CREATE MATERIALIZED VIEW v WITH (allowed_lateness = {given}) AS SELECT a FROM s"
    )
    assert isinstance(stmt, CreateQuery)
    assert stmt.options["allowed_lateness_ms"] == str(ms)


def test_stream_as_select_defaults_and_options() -> None:
    stmt = parse_statement("CREATE STREAM \"Out\" AS SELECT a, b FROM s WHERE (a > 1) AND b = 'x'")
    assert stmt == CreateQuery(
        kind="stream",
        name="Out",
        select="SELECT a, b FROM s WHERE (a > 1) AND b = 'x'",
        options={"topic": "Out", "format": "json", "partitions": "1"},
        if_not_exists=False,
    )
    stmt = parse_statement(
        "CREATE STREAM o WITH (topic = 'o-topic', partitions = 6) AS WITH x AS (SELECT 1) "
        "SELECT * FROM x"
    )
    assert isinstance(stmt, CreateQuery)
    assert stmt.options == {"topic": "o-topic", "format": "json", "partitions": "6"}
    assert stmt.select.startswith("WITH x AS")


def test_a_declaration_with_a_watermark_is_not_a_query() -> None:
    stmt = parse_statement(
        "CREATE STREAM s (a INT, t TIMESTAMP, WATERMARK FOR t AS t - INTERVAL '1' SECOND) "
        "WITH (topic = 's')"
    )
    assert isinstance(stmt, CreateRelation)
    assert stmt.watermark is not None and stmt.watermark.delay_ms == 1000


def test_drop_and_show() -> None:
    assert parse_statement("DROP MATERIALIZED VIEW IF EXISTS v") == DropQuery("view", "v", True)
    assert parse_statement("drop query q;") == DropQuery(None, "q", False)
    assert parse_statement("SHOW QUERIES") == ShowQueries(None)
    assert parse_statement("show materialized views") == ShowQueries("view")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("CREATE MATERIALIZED VIEW v", "AS SELECT is missing"),
        ("CREATE MATERIALIZED VIEW v AS", "query after AS is missing"),
        ("CREATE MATERIALIZED VIEW v AS DELETE FROM s", "must be followed by a SELECT"),
        ("CREATE MATERIALIZED VIEW v WITH (topic = 'x') AS SELECT 1", "unknown option 'topic'"),
        ("CREATE STREAM o WITH (partitions = 0) AS SELECT 1", "whole number from 1"),
        ("CREATE STREAM o WITH (format = 'avro') AS SELECT 1", "format 'avro'"),
        ("CREATE STREAM o WITH (topic = 'a', topic = 'b') AS SELECT 1", "given twice"),
        ("CREATE STREAM _o AS SELECT 1", "reserved"),
        (
            "CREATE MATERIALIZED VIEW v WITH (allowed_lateness = 'soon') AS SELECT 1",
            "allowed_lateness",
        ),
        ("DROP MATERIALIZED VIEWS v", "expected VIEW"),
        ("SHOW QUERIES now", "after the statement"),
        ("CREATE VIEW v AS SELECT 1", "CREATE MATERIALIZED VIEW"),
    ],
)
def test_bad_statements_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(StatementError) as err:
        parse_statement(text)
    assert words in str(err.value)


@pytest.mark.parametrize(
    "arrow",
    [
        pa.int8(),
        pa.int16(),
        pa.int32(),
        pa.int64(),
        pa.float32(),
        pa.float64(),
        pa.bool_(),
        pa.utf8(),
        pa.date32(),
        pa.timestamp("ms"),
        pa.timestamp("ms", tz="UTC"),
        pa.decimal128(12, 3),
    ],
)
def test_output_types_round_trip_through_a_declaration(arrow: pa.DataType) -> None:
    assert arrow_type(sql_type_of(pa.field("c", arrow))) == arrow


def test_output_types_a_stream_cannot_hold_are_refused() -> None:
    with pytest.raises(SqlError) as err:
        sql_type_of(pa.field("tags", pa.list_(pa.utf8())))
    assert "CAST" in str(err.value) and "tags" in str(err.value)


def test_ipc_chunks_form_one_stream_schema_first() -> None:
    n = 5000
    table = pa.table(
        {
            "i": pa.array(range(n), pa.int64()),
            "s": pa.array([f"row {i} " * 20 for i in range(n)]),
            "d": pa.array([decimal.Decimal(i) / 100 for i in range(n)], pa.decimal128(10, 2)),
            "k": pa.array([f"k{i % 3}" for i in range(n)]).dictionary_encode(),
        }
    )
    chunks = ipc_chunks(table, chunk_bytes=64 * 1024)
    assert len(chunks) > 3
    assert pa.ipc.read_schema(pa.py_buffer(chunks[0])).names == ["i", "s", "d", "k"]
    back = pa.ipc.open_stream(b"".join(chunks)).read_all()
    assert back.column("i").to_pylist() == list(range(n))
    assert back.column("k").to_pylist() == [f"k{i % 3}" for i in range(n)]  # decoded
    assert back.column("d").to_pylist() == table.column("d").to_pylist()
    empty = pa.ipc.open_stream(b"".join(ipc_chunks(table.slice(0, 0)))).read_all()
    assert empty.num_rows == 0 and empty.schema.names == ["i", "s", "d", "k"]
