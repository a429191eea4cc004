"""``python3 bench/nexmark.py plan``: the Nexmark queries' operators alone, events per CPU second.

    python3 bench/nexmark.py plan [--events N] [--rate EV_PER_S] [--batch-rows R]
        [--queries q0,q1,...] [--json]

Generates ``N`` events in memory (``bench/nexmark/generator.py``), turns each stream into the
Arrow batches a source hands a continuous query (declared columns plus ``_partition``,
``_offset``, ``_timestamp``; ``R`` rows each, merged across streams in event-time order),
and feeds them to each query's compiled plan (``sql.continuous.plan.plan_continuous``) in
this one process. It reports, per query, the events of the whole generated stream (persons,
auctions and bids, as Nexmark counts them, whatever the query reads) per CPU second of the
process while the plan ran: the speed of the planner's stages, with no reading, JSON
decoding or writing. End to end (topic to topic) is ``python3 bench/nexmark.py run``.

Beside each figure is Apache Flink's published per-core figure for the query (Flink with
RocksDB state and exactly-once checkpoints, Nexmark's own benchmark on 8 cores, events/s
divided by cores), as the issue names it.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sql.catalog import Relation
from sql.continuous.pipeline import PlanError
from sql.continuous.plan import plan_continuous
from sql.statements import CreateRelation, parse_statement

from .generator import Generator, create_stream_sql
from .model import ModelConfig
from .queries import QUERIES

__all__ = ["FLINK_PER_CORE", "declared_relations", "run_plan_bench", "source_batches"]

FLINK_PER_CORE = {
    "q0": 155_000,
    "q1": 158_000,
    "q2": 175_000,
    "q3": 152_000,
    "q4": 34_000,
    "q5": 22_000,
    "q7": 12_000,
    "q8": 146_000,
}
STREAMS = ("person", "auction", "bid")


def declared_relations() -> dict[str, Relation]:
    """The three Nexmark streams as ``create_stream_sql`` declares them."""
    out = {}
    for kind in STREAMS:
        stmt = parse_statement(create_stream_sql(kind))
        assert isinstance(stmt, CreateRelation)
        out[kind] = Relation(
            kind=stmt.kind,
            name=stmt.name,
            topic=stmt.options["topic"],
            format=stmt.options["format"],
            columns=stmt.columns,
            watermark=stmt.watermark,
        )
    return out


def source_batches(
    tables: dict[str, pa.Table], batch_rows: int
) -> list[tuple[str, pa.RecordBatch]]:
    """Every stream cut into batches of ``batch_rows`` with the record columns a source adds
    (one partition each), merged by first event time."""
    items = []
    for order, kind in enumerate(STREAMS):
        table = tables[kind]
        n = table.num_rows
        full = table.append_column("_partition", pa.array([0] * n, pa.int32()))
        full = full.append_column("_offset", pa.array(range(n), pa.int64()))
        stamps = pc.cast(table.column("dateTime"), pa.timestamp("ms", tz="UTC"))
        full = full.append_column("_timestamp", stamps).combine_chunks()
        for batch in full.to_batches(max_chunksize=batch_rows):
            first = batch.column("dateTime").cast(pa.int64())[0].as_py()
            items.append((first, order, kind, batch))
    items.sort(key=lambda item: (item[0], item[1]))
    return [(kind, batch) for _, _, kind, batch in items]


def run_plan_bench(
    events: int, rate: int, batch_rows: int, queries: list[str], seed: int = 0
) -> list[dict[str, Any]]:
    chunks = list(Generator(seed, ModelConfig(rate=rate)).chunks(events))
    tables = {kind: pa.concat_tables([getattr(c, kind) for c in chunks]) for kind in STREAMS}
    relations = declared_relations()
    report = []
    for name in queries:
        query = QUERIES[name]
        row: dict[str, Any] = {
            "query": name,
            "events": events,
            "flink_per_core": FLINK_PER_CORE.get(name),
        }
        try:
            plan = plan_continuous(query.sql, relations, set())
        except PlanError as exc:
            row["error"] = str(exc)
            report.append(row)
            continue
        feed = [(k, b) for k, b in source_batches(tables, batch_rows) if k in query.streams]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        out_rows = 0
        for kind, batch in feed:
            for result in plan.process(kind, batch):
                out_rows += result.num_rows
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        row.update(
            cpu_s=round(cpu, 3),
            wall_s=round(wall, 3),
            rows_out=out_rows,
            events_per_cpu_s=round(events / cpu) if cpu > 0 else None,
        )
        report.append(row)
    return report


def format_report(report: list[dict[str, Any]]) -> str:
    lines = [
        f"{'query':<6}{'events/s/core':>15}{'Flink/core':>12}{'ratio':>8}{'rows out':>10}"
        f"{'CPU s':>8}"
    ]
    for row in report:
        flink = row.get("flink_per_core")
        if "error" in row:
            lines.append(f"{row['query']:<6} refused: {row['error']}")
            continue
        ours = row["events_per_cpu_s"]
        ratio = f"{ours / flink:.2f}x" if flink and ours else "-"
        lines.append(
            f"{row['query']:<6}{ours:>15,}{(flink or 0):>12,}{ratio:>8}{row['rows_out']:>10,}"
            f"{row['cpu_s']:>8}"
        )
    return "\n".join(lines)
