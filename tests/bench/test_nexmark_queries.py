"""Nexmark q0-q8 (bench/nexmark/queries.py) compiled by the continuous-query planner and fed
the generated streams a batch at a time: each query's results equal its reference, computed
independently from the same generated tables.

The streams are fed in event-time order (the generator's order, as one partition per topic
delivers them), interleaved across streams in chunks, so joins see both sides arrive
progressively and windows close as the watermark advances.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sql.catalog import Relation
from sql.continuous.plan import plan_continuous
from sql.statements import CreateRelation, parse_statement

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from nexmark.generator import Generator, create_stream_sql  # noqa: E402
from nexmark.model import ModelConfig  # noqa: E402
from nexmark.queries import (  # noqa: E402
    QUERIES,
    NexmarkQuery,
    canonical_rows,
    final_watermark_ms,
)

EVENTS = 30_000
RATE = 200  # events per second of event time: 30,000 events span 150 s, 15 ten-second windows
FEED_ROWS = 1_000  # rows per batch handed to the plan


@pytest.fixture(scope="module")
def tables() -> dict[str, pa.Table]:
    chunks = list(Generator(11, ModelConfig(rate=RATE)).chunks(EVENTS))
    return {
        kind: pa.concat_tables([getattr(c, kind) for c in chunks])
        for kind in ("person", "auction", "bid")
    }


def _relation(kind: str) -> Relation:
    stmt = parse_statement(create_stream_sql(kind))
    assert isinstance(stmt, CreateRelation)
    return Relation(
        kind=stmt.kind,
        name=stmt.name,
        topic=stmt.options["topic"],
        format=stmt.options["format"],
        columns=stmt.columns,
        watermark=stmt.watermark,
    )


def _source_batches(kind: str, table: pa.Table) -> list[pa.RecordBatch]:
    """The declared columns plus the record columns a source delivers (one partition)."""
    n = table.num_rows
    full = table.append_column("_partition", pa.array([0] * n, pa.int32()))
    full = full.append_column("_offset", pa.array(range(n), pa.int64()))
    full = full.append_column(
        "_timestamp", pc.cast(table.column("dateTime"), pa.timestamp("ms", tz="UTC"))
    )
    return full.combine_chunks().to_batches(max_chunksize=FEED_ROWS)


def _feed_order(
    tables: dict[str, pa.Table], streams: tuple[str, ...]
) -> list[tuple[str, pa.RecordBatch]]:
    """Every stream's batches merged by their first event time (ties: stream order)."""
    items = []
    for kind in streams:
        for batch in _source_batches(kind, tables[kind]):
            first = batch.column("dateTime").cast(pa.int64())[0].as_py()
            items.append((first, streams.index(kind), kind, batch))
    items.sort(key=lambda item: (item[0], item[1]))
    return [(kind, batch) for _, _, kind, batch in items]


def _run(query: NexmarkQuery, tables: dict[str, pa.Table]) -> pa.Table:
    relations = {kind: _relation(kind) for kind in ("person", "auction", "bid")}
    plan = plan_continuous(query.sql, relations, set())
    results: list[pa.RecordBatch] = []
    for kind, batch in _feed_order(tables, query.streams):
        results.extend(plan.process(kind, batch))
    if not results:
        return plan.output_schema.empty_table()
    return pa.Table.from_batches(results, schema=plan.output_schema)


APPEND_ONLY = [name for name, q in QUERIES.items() if not q.updating]


@pytest.mark.parametrize("name", APPEND_ONLY)
def test_query_matches_its_reference(name: str, tables: dict[str, pa.Table]) -> None:
    query = QUERIES[name]
    out = _run(query, tables)
    expected = query.reference(tables, final_watermark_ms(tables, query.streams))
    assert expected, f"{name}: the reference is empty: the input is too small to test it"
    got = canonical_rows(out, query.columns)
    assert len(got) == len(expected), f"{name}: {len(got)} rows, reference {len(expected)}"
    assert got == expected


def test_q4_upserts_converge_to_its_reference(tables: dict[str, pa.Table]) -> None:
    """q4's results are upserts keyed by category (its average moves as auctions' maxima
    do): the latest row per category once everything is read is the reference."""
    query = QUERIES["q4"]
    relations = {kind: _relation(kind) for kind in ("person", "auction", "bid")}
    plan = plan_continuous(query.sql, relations, set())
    assert plan.key_columns == ("category",)
    latest: dict[object, tuple[object, ...]] = {}
    for kind, batch in _feed_order(tables, query.streams):
        for result in plan.process(kind, batch):
            for row in canonical_rows(pa.Table.from_batches([result]), query.columns):
                latest[row[0]] = row
    expected = query.reference(tables, final_watermark_ms(tables, query.streams))
    assert expected
    assert sorted(latest.values(), key=repr) == expected
