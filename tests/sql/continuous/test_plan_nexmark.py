"""Nexmark q0-q8 (bench/nexmark/queries.py) planned by plan_continuous and fed the generated
streams a batch at a time, against the module's references (computed in Python from the
generated tables, knowing nothing of the planner).

The streams are interleaved batch by batch, as a runner reading several topics would feed
them; a windowed query is compared once every row is read, with the watermark the
references assume (each stream's largest event time minus 4 s). An updating query (q4) is
compared as the view its upserts make (the latest row per key).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sql.catalog import Relation
from sql.continuous.plan import plan_continuous
from sql.statements import parse_statement

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.nexmark.generator import Generator, create_stream_sql  # noqa: E402
from bench.nexmark.model import ModelConfig  # noqa: E402
from bench.nexmark.queries import QUERIES, canonical_rows, final_watermark_ms  # noqa: E402

STREAMS = ("person", "auction", "bid")
EVENTS = 150_000
BATCH_EVENTS = 10_000


def relation(kind: str) -> Relation:
    st = parse_statement(create_stream_sql(kind))
    return Relation(
        kind="stream",
        name=st.name,
        topic=kind,
        format="json",
        columns=st.columns,
        watermark=st.watermark,
    )


RELATIONS = {k: relation(k) for k in STREAMS}


def stream_batch(table: pa.Table) -> pa.RecordBatch:
    n = table.num_rows
    table = table.append_column("_partition", pa.array(np.zeros(n, np.int32)))
    table = table.append_column("_offset", pa.array(np.arange(n, dtype=np.int64)))
    ts = pc.cast(pc.cast(table.column("dateTime"), pa.int64()), pa.timestamp("ms", tz="UTC"))
    table = table.append_column("_timestamp", ts)
    return table.combine_chunks().to_batches()[0]


@pytest.fixture(scope="module")
def generated() -> tuple[dict[str, pa.Table], list[tuple[str, pa.RecordBatch]]]:
    """The tables, and the feed: per chunk of events, each stream's rows of that chunk."""
    gen = Generator(11, ModelConfig(rate=2_000))
    tables: dict[str, list[pa.Table]] = {k: [] for k in STREAMS}
    feed: list[tuple[str, pa.RecordBatch]] = []
    for chunk in gen.chunks(EVENTS):
        for kind in STREAMS:
            t = getattr(chunk, kind)
            tables[kind].append(t)
            for i in range(0, t.num_rows, BATCH_EVENTS):
                feed.append((kind, stream_batch(t.slice(i, BATCH_EVENTS))))
    return {k: pa.concat_tables(v) for k, v in tables.items()}, feed


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_nexmark_query(
    name: str, generated: tuple[dict[str, pa.Table], list[tuple[str, pa.RecordBatch]]]
) -> None:
    query = QUERIES[name]
    tables, feed = generated
    plan = plan_continuous(query.sql, RELATIONS, set())
    assert set(plan.sources) == set(query.streams)
    assert tuple(plan.output_schema.names) == query.columns
    out: list[pa.RecordBatch] = []
    for kind, batch in feed:
        if kind in plan.sources:
            out += plan.process(kind, batch)
    got = pa.Table.from_batches(out, schema=plan.output_schema)
    expected = query.reference(tables, final_watermark_ms(tables, query.streams))
    if query.updating:
        assert plan.key_columns
        keys = [query.columns.index(k) for k in plan.key_columns]
        latest: dict[tuple, tuple] = {}  # in emission order: the last row per key wins
        cols = [got.column(c).to_pylist() for c in query.columns]
        for row in zip(*cols, strict=True):
            latest[tuple(row[i] for i in keys)] = row
        view = pa.Table.from_pylist(
            [dict(zip(query.columns, r, strict=True)) for r in latest.values()],
            schema=plan.output_schema,
        )
        assert canonical_rows(view, query.columns) == expected
    else:
        assert plan.key_columns == ()
        assert canonical_rows(got, query.columns) == expected
    assert expected, "the reference is empty: the test would prove nothing"
