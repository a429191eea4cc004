"""``python3 bench/nexmark.py run``: Nexmark queries end to end, topic to topic, per core.

    python3 bench/nexmark.py run [--events N] [--rate EV_PER_S] [--queries q0,q1,...]
        [--partitions P] [--check] [--json] [--keep DIR]

Starts a StreamHouse stack of its own (``streamhouse.testing.Stack``: SQLite metadata, a
local folder as object store, every program under supervisord, the sql service included) in
a temporary folder, generates ``N`` Nexmark events into the topics ``person``, ``auction``
and ``bid`` (``P`` partitions each, default 1, so event time only grows within a stream),
declares the three streams, and then for each query in turn:

1. ``CREATE STREAM <q>_out WITH (topic = '<q>_out') AS <query>`` through the sql service,
   which starts the query's runner process (``python3 -m sql.continuous run``);
2. waits until the runner's committed checkpoint has read every input partition to its high
   watermark (``DescribeQuery``: lag 0) and its output is committed;
3. reads the runner process's CPU time (user + system, from ``/proc`` via psutil) and the
   wall time from the CREATE to that moment;
4. with ``--check``, consumes ``<q>_out`` and compares it with the query's reference
   (``bench/nexmark/queries.py``) — for small ``N`` only: the reference is plain Python;
5. drops the query.

The figure reported is events of the whole generated stream (persons, auctions and bids, as
Nexmark counts them) per CPU second of the runner: one runner is one process on one core, so
this is events/s per core, end to end: reading the blocks from the object store, decoding
JSON into Arrow, the query's operators, encoding the output records, the output segment and
its PUT, and the checkpoint commits. Wall-clock events/s is shown too (it includes the
runner's start, its polling and the checkpoint interval). Flink's published per-core figure
is beside it.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from .plan_bench import FLINK_PER_CORE
from .queries import QUERIES

__all__ = ["run_end_to_end"]

STREAMS = ("person", "auction", "bid")
CAUGHT_UP_TIMEOUT_S = 1800.0
OUTPUT_PARTITIONS = 1


def _runner_cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def _wait_caught_up(sql: Any, name: str, deadline: float) -> Any:
    """The query's status once its checkpoint read every source to its high watermark."""
    status = None
    while time.monotonic() < deadline:
        status = sql.describe(name)
        sources_ready = status.sources and all(s.high_watermark > 0 for s in status.sources)
        if status.last_error and status.runner.state != "running":
            raise RuntimeError(f"query {name} failed: {status.last_error}")
        if sources_ready and status.lag == 0 and status.step > 0:
            return status
        time.sleep(0.05)  # polling a remote process's progress, not synchronisation
    raise RuntimeError(f"query {name} did not catch up within {CAUGHT_UP_TIMEOUT_S:.0f} s")


def run_end_to_end(
    events: int,
    rate: int,
    queries: list[str],
    partitions: int = 1,
    check: bool = False,
    keep: str | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    from sql.service_client import SqlClient
    from streamhouse.testing import Stack

    if keep is None:
        with tempfile.TemporaryDirectory(prefix="nexmark-run-") as scratch:
            return run_end_to_end(events, rate, queries, partitions, check, scratch, seed)
    root = Path(keep)
    report: list[dict[str, Any]] = []
    env = {"STREAMHOUSE_SQL_CHECKPOINT_INTERVAL_MS": "1000"}
    with Stack(root / "data", env=env) as stack:
        stack.wait_sql_ready()
        sql = SqlClient(stack.sql_address)
        try:
            for name in queries:
                report.append(_one_query(sql, stack, name, events, rate, partitions, seed, check))
        finally:
            sql.close()
    return report


def _declare_inputs(sql: Any, stack: Any, prefix: str, partitions: int) -> None:
    """Streams person/auction/bid over the empty topics ``<prefix>person`` etc."""
    from .cli import ensure_topics
    from .generator import create_stream_sql

    ensure_topics(stack.kafka_address, [prefix + kind for kind in STREAMS], partitions)
    for kind in STREAMS:
        sql.execute(f"DROP STREAM IF EXISTS {kind}")
        sql.execute(create_stream_sql(kind, topic=prefix + kind))


def _one_query(
    sql: Any,
    stack: Any,
    name: str,
    events: int,
    rate: int,
    partitions: int,
    seed: int,
    check: bool,
) -> dict[str, Any]:
    """The query is created over empty input topics and its runner's CPU time read once it
    has started (imports and claim done); then the events are produced and the runner's CPU
    time read again once it has caught up: the difference is what the events cost."""
    from .cli import generate_into

    query = QUERIES[name]
    row: dict[str, Any] = {"query": name, "events": events, "flink_per_core": FLINK_PER_CORE[name]}
    out = f"{name}_out"
    _declare_inputs(sql, stack, f"{name}_", partitions)
    try:
        sql.execute(
            f"CREATE STREAM {out} WITH (topic = '{out}', partitions = {OUTPUT_PARTITIONS}) "
            f"AS {query.sql}"
        )
    except Exception as exc:  # the service's message says why (e.g. q4's updates)
        row["error"] = str(exc).splitlines()[0]
        return row
    try:
        pid = _started_runner(sql, out, time.monotonic() + 120)
        cpu0 = _runner_cpu_s(pid)
        t0 = time.monotonic()
        produced = generate_into(stack.kafka_address, events, rate, partitions, seed, f"{name}_")
        produce_s = time.monotonic() - t0
        status = _wait_caught_up(sql, out, time.monotonic() + CAUGHT_UP_TIMEOUT_S)
        wall = time.monotonic() - t0
        if status.runner.pid != pid:
            raise RuntimeError(f"the runner of {out} restarted during the run: see sql.log")
        cpu = _runner_cpu_s(pid) - cpu0
        row.update(
            runner_cpu_s=round(cpu, 2),
            produce_s=round(produce_s, 2),
            wall_s=round(wall, 2),
            rows_in=status.rows_in,
            rows_out=status.rows_out,
            events_per_core_s=round(events / cpu) if cpu > 0 else None,
            events_per_wall_s=round(events / wall) if wall > 0 else None,
        )
        if check:
            row["check"] = _check(stack, query, out, produced)
    finally:
        sql.execute(f"DROP QUERY {out}")
    return row


def _started_runner(sql: Any, name: str, deadline: float) -> int:
    """The pid of the query's runner once it has claimed the query (imports done)."""
    while time.monotonic() < deadline:
        status = sql.describe(name)
        if status.runner.state == "running" and status.runner.pid > 0 and status.generation > 0:
            return int(status.runner.pid)
        time.sleep(0.05)  # polling a remote process's progress, not synchronisation
    raise RuntimeError(f"the runner of {name} did not start within 120 s: see sql.log")


def _check(stack: Any, query: Any, topic: str, produced: dict[str, Any]) -> str:
    """The output topic against the query's reference (small inputs)."""
    import pyarrow as pa
    import pyarrow.json as pj

    from streamhouse.testing import read_kafka_log

    from .queries import canonical_rows, final_watermark_ms

    log = read_kafka_log(stack.kafka_address, topic, OUTPUT_PARTITIONS)
    values = [value for records in log.values() for _offset, value in records]
    if values:
        table = pj.read_json(pa.py_buffer(b"\n".join(values)))
    else:
        table = pa.table({c: pa.array([], pa.int64()) for c in query.columns})
    for column in query.columns:
        if column in ("dateTime", "starttime", "endtime") and table.num_rows:
            table = table.set_column(
                table.schema.get_field_index(column),
                column,
                table.column(column).cast(pa.timestamp("ms")),
            )
    tables = produced["tables"]
    expected = query.reference(tables, final_watermark_ms(tables, query.streams))
    got = canonical_rows(table, query.columns)
    return "ok" if got == expected else f"MISMATCH: {len(got)} rows, reference {len(expected)}"


def format_report(report: list[dict[str, Any]]) -> str:
    lines = [
        f"{'query':<6}{'events/s/core':>15}{'Flink/core':>12}{'ratio':>8}{'events/s wall':>15}"
        f"{'rows out':>10}{'runner CPU s':>14}  check"
    ]
    for row in report:
        if "error" in row:
            lines.append(f"{row['query']:<6} refused: {row['error']}")
            continue
        ours, flink = row["events_per_core_s"], row["flink_per_core"]
        ratio = f"{ours / flink:.2f}x" if ours else "-"
        lines.append(
            f"{row['query']:<6}{ours:>15,}{flink:>12,}{ratio:>8}{row['events_per_wall_s']:>15,}"
            f"{row['rows_out']:>10,}{row['runner_cpu_s']:>14}  {row.get('check', '-')}"
        )
    return "\n".join(lines)


def main_run(args: Any) -> int:
    names = [q.strip() for q in args.queries.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUERIES]
    if unknown:
        known = ", ".join(QUERIES)
        print(f"nexmark: no query {', '.join(unknown)}: one of {known}", file=sys.stderr)
        return 2
    report = run_end_to_end(
        args.events, args.rate, names, args.partitions, args.check, args.keep, args.seed
    )
    print(json.dumps(report) if args.json else format_report(report))
    return 0
