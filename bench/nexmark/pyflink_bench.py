"""Nexmark q0-q8 on PyFlink (Apache Flink from PyPI), on the same generated events as
StreamHouse's benchmark, for putting Flink's numbers from this machine beside ours.

    python3 -m bench.nexmark.pyflink_bench [--events N] [--rate EV_PER_S] [--seed S]
        [--queries q0,q1,...] [--flink-python PATH] [--repeat R] [--check] [--suite-config]
        [--streamhouse]
        [--dir DIR] [--json]

Steps:

1. The events of ``Generator(seed, ModelConfig(rate=R)).chunks(N)`` (the defaults are those of
   ``bench/nexmark.py run``: seed 0, rate 10,000 events per second of event time) are written
   to JSON-lines files, one folder per stream (format below).
2. A worker process, ``<flink-python> -m bench.nexmark.pyflink_bench --worker SPEC``, runs
   in the interpreter that has PyFlink (``--flink-python``, default ``$PYFLINK_PYTHON`` or
   this interpreter; PyFlink pins ``pyarrow<21`` and ``grpcio<1.66``, older than this
   project's, so it belongs in a virtualenv of its own, e.g. ``python3 -m venv
   /tmp/pyflink-venv && /tmp/pyflink-venv/bin/pip install apache-flink psutil``). The
   worker imports only the standard library, psutil, PyFlink and ``flink_sql.py``. It makes
   one ``TableEnvironment`` (streaming mode, ``parallelism.default`` 1, checkpointing off
   unless ``--suite-config``; the local MiniCluster runs inside the JVM PyFlink starts),
   declares the three tables
   (``flink_sql.create_table_sql``: filesystem source, JSON format, watermark 4 s behind
   ``dateTime``), warms the JVM with q0 over the events (its JIT compiles the JSON reader)
   and runs each query into a blackhole sink (``flink_sql.sink_sql``) twice: first over
   empty folders, then over the events (``--repeat R`` times each; the run of least CPU is
   reported). Each run is timed from the statement's submission to the end of its job:
   the CPU time (user + system) of the JVM process plus the worker's own, and the job's
   own runtime (``JobExecutionResult.getNetRuntime``, the wall figure reported). The empty
   run is what planning, code generation and deploying the job cost; the figure reported is
   ``N / (CPU of the full run - CPU of the empty run)``: events per CPU second, i.e. per
   core, with the JVM's start and the query's compilation left out. (The JVM keeps running
   across queries, so later queries run on a JIT-warmer JVM.)
3. With ``--check``, each query instead collects its result rows (``TableResult.collect``,
   the changelog applied: ``+I``/``+U`` add a row, ``-U``/``-D`` take one back) and compares
   them with the query's reference in ``queries.py`` over the same generated tables, for
   small N only (the references are plain Python). A bounded source ends with the maximal
   watermark, so every window fires: the windowed queries' references are taken with the
   watermark at +infinity, not at ``final_watermark_ms``.
4. With ``--streamhouse``, the same events and queries also run end to end on StreamHouse
   (``run_bench.run_end_to_end``, i.e. ``bench/nexmark.py run``) in the same invocation, and
   its events/s per core is printed beside PyFlink's.

Event files (written by ``write_event_files``)
----------------------------------------------
``<dir>/<stream>/part-00000.json`` for stream in person, auction, bid: UTF-8, one event per
line, each line exactly the generator's JSON value (``generator.json_values``: fields in
schema order, no whitespace, ``dateTime`` / ``expires`` as ``"YYYY-MM-DD HH:MM:SS.mmm"``
UTC) followed by ``\\n``; events in generator order, so ``dateTime`` never decreases within a
file. ``<dir>/empty/<stream>/`` are empty folders (the startup run's input).

What is and is not comparable
-----------------------------
- Source: a bounded filesystem source of JSON lines, read by Flink's own JSON format, versus
  StreamHouse's runner reading blocks from object storage (``run_bench.py``) or Flink's
  published suite reading from its ``datagen`` source (no parsing at all). The published
  figures are Flink on a cluster with Kafka-free generated input; these are Flink parsing
  JSON from local files, which costs more per event than datagen and about what
  StreamHouse's JSON decoding costs.
- Events counted: as in ``run_bench.py``, N counts all events (persons, auctions, bids), but
  a query reads only the folders of the streams it names (q0-q2, q5, q7 read only ``bid``,
  92 % of the events and most of the bytes; Flink's suite reads one mixed stream and
  filters it by event type).
- State and checkpoints: by default Flink keeps state on the JVM heap (the default
  ``hashmap`` backend), checkpointing off, no mini-batch. Flink's published suite (its
  ``config.yaml``) keeps state in RocksDB (incremental checkpoints every 3 minutes) and
  turns on mini-batch aggregation (2 s / 50,000 rows), at parallelism 8; ``--suite-config``
  runs with those options (parallelism still 1). Its stateful queries (q4, q5, q7) pay for
  RocksDB's serialisation of every state access. StreamHouse's runner keeps state in memory
  and commits a checkpoint every second (``run_bench.py``), which is part of its CPU.
- Parallelism 1 on a shared 2-core machine: one task slot, but the JVM's other threads (JIT
  compiler, garbage collector, the source's split reader) run beside it and their CPU is
  counted, as it is in Flink's published per-core figures (cluster CPU / cores). Other
  engineers' processes share the machine, so wall times are noisy; CPU times less so.
- Bounded input: the last windows fire at the end of input (maximal watermark) in Flink,
  whereas StreamHouse's runner only closes windows its watermark passes; the outputs of the
  windowed queries differ by those last windows, which is immaterial to throughput.
- Sink: Flink drops results in a blackhole; StreamHouse encodes and writes them to a topic.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cli import _positive, _seed

__all__ = [
    "STREAMS",
    "check_rows",
    "format_report",
    "main",
    "parse_args",
    "run_pyflink",
    "write_event_files",
]

STREAMS = ("person", "auction", "bid")
ALL_QUERIES = ("q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8")
WINDOWED = ("q5", "q7", "q8")
PART_FILE = "part-00000.json"
WORKER_TIMEOUT_S = 7200.0
FLOAT_PLACES = 4  # result floats compare rounded (q1's prices have 3 places; q4's averages)
NO_WATERMARK_MS = 2**62  # the watermark after a bounded source's end: every window closed


# ------------------------------------------------------------------ arguments


def _queries(text: str) -> list[str]:
    names = [q.strip() for q in text.split(",") if q.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no query named: give e.g. q0,q1,q2")
    unknown = [q for q in names if q not in ALL_QUERIES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"no query {', '.join(unknown)}: one of {', '.join(ALL_QUERIES)}"
        )
    return names


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python3 -m bench.nexmark.pyflink_bench",
        description="Nexmark q0-q8 on PyFlink over the generated events (see the docstring)",
    )
    top.add_argument("--events", type=_positive, default=1_000_000)
    top.add_argument("--rate", type=_positive, default=10_000, help="events per s of event time")
    top.add_argument("--seed", type=_seed, default=0)
    top.add_argument("--queries", type=_queries, default=list(ALL_QUERIES), help="q0,q1,...")
    top.add_argument(
        "--flink-python",
        default=os.environ.get("PYFLINK_PYTHON", sys.executable),
        help="a Python with apache-flink and psutil installed (default $PYFLINK_PYTHON or this)",
    )
    top.add_argument("--check", action="store_true", help="compare results with references")
    top.add_argument(
        "--repeat", type=_positive, default=1, help="runs per query; the least CPU is reported"
    )
    top.add_argument(
        "--suite-config",
        action="store_true",
        help="RocksDB state, checkpoints every 3 min, mini-batch: Flink's Nexmark suite's options",
    )
    top.add_argument(
        "--streamhouse", action="store_true", help="also run bench/nexmark.py run, beside"
    )
    top.add_argument("--dir", default=None, help="folder for the event files (default: temp)")
    top.add_argument("--json", action="store_true", help="print the report as JSON")
    top.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return top


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parser().parse_args(argv)


# ------------------------------------------------------------------ event files


def write_event_files(
    directory: Path, events: int, rate: int, seed: int = 0, keep_tables: bool = False
) -> dict[str, Any]:
    """The first ``events`` events into ``<directory>/<stream>/part-00000.json`` (format in
    the module docstring), plus empty ``<directory>/empty/<stream>/`` folders. Returns
    ``{"counts": {stream: rows}, "bytes": {stream: bytes}}`` and, with ``keep_tables``,
    ``"tables"``: the generated Arrow tables (for references)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from .generator import Generator, json_values
    from .model import ModelConfig

    counts = dict.fromkeys(STREAMS, 0)
    sizes = dict.fromkeys(STREAMS, 0)
    parts: dict[str, list[pa.Table]] = {s: [] for s in STREAMS}
    files = {}
    for stream in STREAMS:
        (directory / stream).mkdir(parents=True, exist_ok=True)
        (directory / "empty" / stream).mkdir(parents=True, exist_ok=True)
        files[stream] = open(directory / stream / PART_FILE, "wb")  # noqa: SIM115
    newline = pa.scalar(b"\n", pa.binary())
    try:
        for chunk in Generator(seed, ModelConfig(rate=rate)).chunks(events):
            for stream in STREAMS:
                table = getattr(chunk, stream)
                if table.num_rows == 0:
                    continue
                lines = pc.binary_join_element_wise(
                    json_values(table), newline, pa.scalar(b"", pa.binary())
                )
                # One write of the array's bytes: its values are contiguous in its data buffer.
                offsets = np.frombuffer(lines.buffers()[1], np.int32)
                first, last = lines.offset, lines.offset + len(lines)
                data = lines.buffers()[2]
                files[stream].write(memoryview(data)[offsets[first] : offsets[last]])
                counts[stream] += table.num_rows
                sizes[stream] += int(offsets[last] - offsets[first])
                if keep_tables:
                    parts[stream].append(table)
    finally:
        for handle in files.values():
            handle.close()
    out: dict[str, Any] = {"counts": counts, "bytes": sizes}
    if keep_tables:
        from .generator import AUCTION_SCHEMA, BID_SCHEMA, PERSON_SCHEMA

        schemas = {"person": PERSON_SCHEMA, "auction": AUCTION_SCHEMA, "bid": BID_SCHEMA}
        out["tables"] = {
            s: pa.concat_tables(parts[s]) if parts[s] else schemas[s].empty_table() for s in STREAMS
        }
    return out


# ------------------------------------------------------------------ the worker (PyFlink side)


def _jvm_process(psutil: Any) -> Any:
    javas = [p for p in psutil.Process().children(recursive=True) if p.name() == "java"]
    if len(javas) != 1:
        raise RuntimeError(
            f"expected the one JVM PyFlink starts among this process's children, found "
            f"{len(javas)}: is PyFlink set to use a remote cluster (PYFLINK_GATEWAY_PORT)?"
        )
    return javas[0]


def _cpu_s(psutil: Any, jvm: Any) -> float:
    own = psutil.Process().cpu_times()
    java = jvm.cpu_times()
    return own.user + own.system + java.user + java.system


def _declare(t_env: Any, folder: str) -> None:
    from bench.nexmark.flink_sql import create_table_sql

    for stream in STREAMS:
        t_env.execute_sql(f"DROP TEMPORARY TABLE IF EXISTS `{stream}`")
        t_env.execute_sql(create_table_sql(stream, os.path.join(folder, stream)))


def _timed_job(t_env: Any, psutil: Any, jvm: Any, sink: str, select: str) -> dict[str, Any]:
    from bench.nexmark.flink_sql import sink_sql

    cpu0, wall0 = _cpu_s(psutil, jvm), time.perf_counter()
    result = t_env.execute_sql(sink_sql(sink, select))
    job = result.get_job_client().get_job_execution_result().result()
    wall = time.perf_counter() - wall0
    cpu = _cpu_s(psutil, jvm) - cpu0
    t_env.execute_sql(f"DROP TABLE IF EXISTS `{sink}`")
    return {"cpu_s": cpu, "wall_s": wall, "job_ms": int(job.get_net_runtime())}


def _plain(value: Any) -> Any:
    """A collected value as JSON: timestamps as int ms (UTC), decimals as floats."""
    import calendar
    import datetime
    import decimal

    if isinstance(value, datetime.datetime):  # Flink's TIMESTAMP(3): naive, read as UTC
        return calendar.timegm(value.utctimetuple()) * 1000 + value.microsecond // 1000
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def _collect(t_env: Any, select: str) -> list[list[Any]]:
    """The query's changelog as ``[kind, *values]`` (kind ``+I``, ``-U``, ``+U``, ``-D``).
    Per-row Python: for --check at small N only."""
    out = []
    with t_env.sql_query(select).execute().collect() as rows:
        for row in rows:
            out.append([str(row.get_row_kind()), *(_plain(v) for v in row)])
    return out


def worker(spec_path: str) -> int:
    """Runs the queries of the spec file on PyFlink and writes the results JSON it names."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        import psutil
        from pyflink.table import EnvironmentSettings, TableEnvironment
    except ImportError as exc:
        print(
            f"pyflink_bench worker: {exc}; run it with a Python that has PyFlink "
            "(pip install apache-flink psutil, in a virtualenv: see the module docstring)",
            file=sys.stderr,
        )
        return 3
    from bench.nexmark.flink_sql import FLINK_QUERIES

    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = t_env.get_config()
    config.set("parallelism.default", "1")
    if spec.get("suite_config"):
        for key, value in _suite_options(spec["checkpoints"]).items():
            config.set(key, value)
    jvm = _jvm_process(psutil)
    results: dict[str, Any] = {"flink_version": _flink_version(), "queries": {}}
    if not spec["check"]:  # q0 over the events first warms the JVM (JIT of the JSON reader)
        _declare(t_env, spec["data"])
        _timed_job(t_env, psutil, jvm, "warmup", FLINK_QUERIES["q0"])
    repeat = int(spec.get("repeat", 1))
    for name in spec["queries"]:
        select = FLINK_QUERIES[name]
        row: dict[str, Any] = {}
        try:
            if spec["check"]:
                _declare(t_env, spec["data"])
                row["changelog"] = _collect(t_env, select)
            else:
                runs: dict[str, list[dict[str, Any]]] = {"startup": [], "run": []}
                for _ in range(repeat):  # the best of `repeat` runs of each
                    for phase, folder in (("startup", "empty"), ("run", "")):
                        _declare(t_env, os.path.join(spec["data"], folder))
                        sink = f"{name}_{phase}"
                        runs[phase].append(_timed_job(t_env, psutil, jvm, sink, select))
                for phase, timings in runs.items():
                    row[phase] = min(timings, key=lambda t: t["cpu_s"])
        except Exception as exc:  # PyFlink raises py4j errors carrying Flink's message
            row["error"] = _first_cause(exc)
        results["queries"][name] = row
        Path(spec["out"]).write_text(json.dumps(results))
    return 0


def _suite_options(checkpoints: str) -> dict[str, str]:
    """The state, checkpoint and table options of Flink's Nexmark suite (its config.yaml),
    but parallelism 1 and the checkpoints in a temporary folder."""
    return {
        "state.backend.type": "rocksdb",
        "state.backend.incremental": "true",
        "execution.checkpointing.incremental": "true",
        "state.checkpoints.dir": f"file://{checkpoints}",
        "execution.checkpointing.dir": f"file://{checkpoints}",
        "execution.checkpointing.interval": "180 s",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "table.exec.mini-batch.enabled": "true",
        "table.exec.mini-batch.allow-latency": "2 s",
        "table.exec.mini-batch.size": "50000",
        "table.optimizer.distinct-agg.split.enabled": "true",
    }


def _flink_version() -> str:
    try:
        from pyflink.version import __version__

        return str(__version__)
    except ImportError:
        return "?"


def _first_cause(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if "Exception:" in line]
    return (causes[-1] if causes else lines[0] if lines else repr(exc))[:400]


# ------------------------------------------------------------------ the driver


def run_pyflink(
    data: Path,
    queries: list[str],
    flink_python: str,
    check: bool,
    suite_config: bool = False,
    repeat: int = 1,
) -> dict[str, Any]:
    """Runs the worker in ``flink_python`` over the event files in ``data``; its results.
    ``suite_config``: Flink's state and table options as its Nexmark suite sets them."""
    repo = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="pyflink-bench-") as tmp:
        spec = Path(tmp) / "spec.json"
        out = Path(tmp) / "results.json"
        spec.write_text(
            json.dumps(
                {
                    "data": str(data),
                    "queries": queries,
                    "check": check,
                    "suite_config": suite_config,
                    "repeat": repeat,
                    "checkpoints": str(Path(tmp) / "checkpoints"),
                    "out": str(out),
                }
            )
        )
        env = dict(os.environ, PYTHONPATH=str(repo))
        proc = subprocess.run(
            [flink_python, "-m", "bench.nexmark.pyflink_bench", "--worker", str(spec)],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
            raise RuntimeError(
                f"the PyFlink worker ({flink_python}) exited with {proc.returncode}:\n{tail}"
            )
        return dict(json.loads(out.read_text()))


def _normal(value: Any) -> Any:
    return round(value, FLOAT_PLACES) if isinstance(value, float) else value


def check_rows(name: str, changelog: list[list[Any]], tables: dict[str, Any]) -> str:
    """``ok`` if the changelog's final rows equal the query's reference over ``tables``, else
    what differs. Floats compare rounded to ``FLOAT_PLACES`` places on both sides."""
    from .queries import QUERIES, final_watermark_ms

    query = QUERIES[name]
    rows: Counter[tuple[Any, ...]] = Counter()
    for kind, *values in changelog:
        key = tuple(_normal(v) for v in values)
        if kind in ("+I", "+U", "INSERT", "UPDATE_AFTER"):
            rows[key] += 1
        elif kind in ("-U", "-D", "UPDATE_BEFORE", "DELETE"):
            if rows[key] <= 0:
                return f"MISMATCH: retraction of a row never added: {key!r}"
            rows[key] -= 1
        else:
            return f"MISMATCH: unknown row kind {kind!r}"
    got = sorted(rows.elements(), key=repr)
    mark = NO_WATERMARK_MS if name in WINDOWED else final_watermark_ms(tables, query.streams)
    expected = sorted(
        (tuple(_normal(v) for v in row) for row in query.reference(tables, mark)), key=repr
    )
    if got == expected:
        return f"ok ({len(got)} rows)"
    missing = Counter(expected) - Counter(got)
    extra = Counter(got) - Counter(expected)
    return (
        f"MISMATCH: {len(got)} rows, reference {len(expected)}; "
        f"e.g. missing {next(iter(missing), None)!r}, unexpected {next(iter(extra), None)!r}"
    )


def _report_rows(
    events: int, flink: dict[str, Any], streamhouse: dict[str, Any], check: dict[str, str]
) -> list[dict[str, Any]]:
    from .plan_bench import FLINK_PER_CORE

    report = []
    for name, result in flink["queries"].items():
        row: dict[str, Any] = {
            "query": name,
            "events": events,
            "flink_published_per_core": FLINK_PER_CORE[name],
        }
        if "error" in result:
            row["error"] = result["error"]
        elif "run" in result:
            run, startup = result["run"], result["startup"]
            net_cpu = run["cpu_s"] - startup["cpu_s"]
            row.update(
                pyflink_cpu_s=round(run["cpu_s"], 2),
                pyflink_startup_cpu_s=round(startup["cpu_s"], 2),
                pyflink_events_per_core_s=round(events / net_cpu) if net_cpu > 0 else None,
                pyflink_events_per_wall_s=round(events * 1000 / max(run["job_ms"], 1)),
                pyflink_job_ms=run["job_ms"],
            )
        if name in check:
            row["check"] = check[name]
        ours = streamhouse.get(name)
        if ours is not None:
            row["streamhouse_events_per_core_s"] = ours.get("events_per_core_s")
            if "error" in ours:
                row["streamhouse_error"] = ours["error"]
        report.append(row)
    return report


def format_report(report: list[dict[str, Any]], flink_version: str = "?") -> str:
    """The report as a text table (events/s per core, PyFlink beside StreamHouse and Flink's
    published figure)."""
    lines = [
        f"PyFlink {flink_version}, parallelism 1, events per CPU second (net of a run over "
        "empty input)",
        f"{'query':<6}{'PyFlink/core':>14}{'PyFlink wall/s':>16}{'StreamHouse/core':>18}"
        f"{'Flink published':>17}{'CPU s':>8}{'startup CPU s':>15}  check",
    ]

    def num(value: Any) -> str:
        return f"{value:,}" if isinstance(value, int) else "-"

    for row in report:
        if "error" in row:
            lines.append(f"{row['query']:<6} PyFlink failed: {row['error']}")
            continue
        lines.append(
            f"{row['query']:<6}{num(row.get('pyflink_events_per_core_s')):>14}"
            f"{num(row.get('pyflink_events_per_wall_s')):>16}"
            f"{num(row.get('streamhouse_events_per_core_s')):>18}"
            f"{num(row['flink_published_per_core']):>17}"
            f"{row.get('pyflink_cpu_s', '-'):>8}{row.get('pyflink_startup_cpu_s', '-'):>15}"
            f"  {row.get('check', '-')}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker)
    with tempfile.TemporaryDirectory(prefix="nexmark-pyflink-") as tmp:
        data = Path(args.dir) if args.dir else Path(tmp)
        written = write_event_files(data, args.events, args.rate, args.seed, args.check)
        try:
            flink = run_pyflink(
                data, args.queries, args.flink_python, args.check, args.suite_config, args.repeat
            )
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            print(f"pyflink_bench: {exc}", file=sys.stderr)
            return 1
    check: dict[str, str] = {}
    if args.check:
        for name, result in flink["queries"].items():
            if "changelog" in result:
                check[name] = check_rows(name, result["changelog"], written["tables"])
    streamhouse: dict[str, Any] = {}
    if args.streamhouse:
        from .run_bench import run_end_to_end

        # The stack's folder (its topics hold every query's N events) is removed afterwards.
        with tempfile.TemporaryDirectory(prefix="nexmark-run-") as stack_root:
            for row in run_end_to_end(
                args.events, args.rate, args.queries, seed=args.seed, keep=stack_root
            ):
                streamhouse[row["query"]] = row
    report = _report_rows(args.events, flink, streamhouse, check)
    if args.json:
        print(json.dumps({"flink_version": flink.get("flink_version"), "queries": report}))
    else:
        print(format_report(report, flink.get("flink_version", "?")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
