"""Throughput of continuous-query plans (sql/continuous/plan.py) on Nexmark bids, no I/O.

    taskset -c 0 python3 bench/sql_continuous.py [--events 2000000] [--batch-rows 8192]
        [--query stateless,tumble,q5,...]

The Nexmark generator (bench/nexmark, seed 0, 10,000 events per second of event time so
windows close as the watermark moves) makes ``--events`` events; their bids (46 in 50) are
made into the batches a declared stream ``bid`` delivers (declared columns, then
``_partition``, ``_offset``, ``_timestamp``), cut into ``--batch-rows`` rows, and fed to
each plan with ``plan.process("bid", batch)``. Generation is not timed. Queries:

- ``stateless``: a projection with arithmetic, CASE and a string function, and a filter
  (``SELECT auction, 0.908 * price AS euro, CASE ... END AS band, upper(channel) ...
  WHERE auction % 7 <> 0``).
- ``tumble``: per auction and 10 s tumbling window COUNT(*), MAX(price), SUM(price).
- ``updating``: per auction (no window) COUNT(*) and MAX(price), upserts after each batch
  (its state grows with the auctions: the whole state is re-aggregated with each batch).
- ``q0`` .. ``q7``: those of bench/nexmark/queries.py that read only bids (q0, q1, q2, q5,
  q7).

For each, prints rows/s over wall time and over CPU time (process time: all threads, so
DataFusion's own threads count), and the rows emitted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.nexmark.generator import Generator, create_stream_sql  # noqa: E402
from bench.nexmark.model import ModelConfig  # noqa: E402
from bench.nexmark.queries import QUERIES  # noqa: E402
from sql.catalog import Relation  # noqa: E402
from sql.continuous.plan import plan_continuous  # noqa: E402
from sql.statements import parse_statement  # noqa: E402

SQL = {
    "stateless": (
        "SELECT auction, bidder, 0.908 * price AS euro, CASE WHEN price > 10000000 THEN 'high' "
        "WHEN price > 1000000 THEN 'mid' ELSE 'low' END AS band, upper(channel) AS channel, "
        '"dateTime" FROM bid WHERE auction % 7 <> 0'
    ),
    "tumble": (
        "SELECT auction, COUNT(*) AS n, MAX(price) AS top, SUM(price) AS total, "
        "TUMBLE_START(\"dateTime\", INTERVAL '10' SECOND) AS ws FROM bid "
        "GROUP BY auction, TUMBLE(\"dateTime\", INTERVAL '10' SECOND)"
    ),
    "updating": "SELECT auction, COUNT(*) AS n, MAX(price) AS top FROM bid GROUP BY auction",
}
for _name, _query in QUERIES.items():
    if _query.streams == ("bid",):
        SQL[_name] = _query.sql


def bid_batches(events: int, rows: int) -> list[pa.RecordBatch]:
    gen = Generator(0, ModelConfig(rate=10_000))
    table = pa.concat_tables(chunk.bid for chunk in gen.chunks(events))
    n = table.num_rows
    table = table.append_column("_partition", pa.array(np.zeros(n, np.int32)))
    table = table.append_column("_offset", pa.array(np.arange(n, dtype=np.int64)))
    ts = pc.cast(pc.cast(table.column("dateTime"), pa.int64()), pa.timestamp("ms", tz="UTC"))
    table = table.append_column("_timestamp", ts).combine_chunks()
    return table.to_batches(max_chunksize=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--batch-rows", type=int, default=8192)
    parser.add_argument("--query", default="stateless,tumble", help=f"of {', '.join(SQL)}")
    args = parser.parse_args()
    names = args.query.split(",")
    unknown = [n for n in names if n not in SQL]
    if unknown:
        parser.error(f"unknown query {', '.join(unknown)}: one of {', '.join(SQL)}")
    st = parse_statement(create_stream_sql("bid"))
    relation = Relation(
        kind="stream",
        name="bid",
        topic="bid",
        format="json",
        columns=st.columns,
        watermark=st.watermark,
    )
    batches = bid_batches(args.events, args.batch_rows)
    rows = sum(b.num_rows for b in batches)
    print(f"{rows:,} bids in batches of {args.batch_rows}")
    for name in names:
        plan = plan_continuous(SQL[name], {"bid": relation}, set())
        emitted = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            for out in plan.process("bid", batch):
                emitted += out.num_rows
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        stages = ", ".join(type(s).__name__ for s in plan.stages.values())
        print(
            f"{name:10s} {rows / wall:>12,.0f} rows/s wall {rows / cpu:>12,.0f} rows/s CPU  "
            f"{emitted:>9,} rows out  [{stages}]"
        )


if __name__ == "__main__":
    main()
