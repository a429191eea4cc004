"""Rows/s of a continuous query end to end: input topic -> runner -> output topic, one core.

    python3 bench/sql_runner.py [--events 1000000] [--partitions 4] [--core 0]
        [--query passthrough|filter] [--keep DIR]

A stack of its own (SQLite metadata, local folder store, the sql service's runners off) gets
``--events`` Nexmark events (bench/nexmark, seed 0; 46 in 50 are bids) in topics
person/auction/bid, and the stream ``bid`` declared (``create_stream_sql``). Then the query
``q`` (``passthrough``: every bid column, ``SELECT auction, bidder, price, channel, url,
"dateTime", extra FROM bid``; ``filter``: the same WHERE price % 10 < 3) is defined with
output topic ``out`` (``--partitions`` partitions) and one runner, ``python3 -m
sql.continuous run q``, is started pinned to one core (``taskset -c CORE``; ``--core -1``:
not pinned, so reading the next step overlaps processing on another core). The clock runs
from the runner's start to the moment the output topic's high watermarks hold every expected
row (polled every 50 ms from metadata); so the figure includes the runner's start (imports,
claim: about a second), reading and decoding the stored blocks, the plan, JSON encoding,
the output segment PUT and the checkpoint commits (every 1 s).

Prints the bids, the rows out, wall seconds and rows/s (from the runner's start, and from its
claim of the query, i.e. without the process start), and the runner's CPU seconds (user +
system, from /proc, start included) with rows per CPU second; ``--json``: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.nexmark.cli import generate_into  # noqa: E402
from bench.nexmark.generator import create_stream_sql  # noqa: E402
from metadata.interface import open_store  # noqa: E402
from sql.continuous.definition import QueryDefinition, encode_definition  # noqa: E402
from streamhouse.testing import Stack  # noqa: E402

COLUMNS = 'auction, bidder, price, channel, url, "dateTime", extra'
QUERIES = {
    "passthrough": f"SELECT {COLUMNS} FROM bid",
    "filter": f"SELECT {COLUMNS} FROM bid WHERE price % 10 < 3",
}
REPO = pathlib.Path(__file__).resolve().parents[1]


def _cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def _output_rows(store: Any, topic: str) -> int:
    info = store.get_topic(topic)
    return sum(p.high_watermark for p in store.list_partitions(info.topic_id))


def run(args: argparse.Namespace, folder: pathlib.Path) -> dict[str, Any]:
    env = {"STREAMHOUSE_SQL_ENABLED": "false", "STREAMHOUSE_LOG_LEVEL": "WARNING"}
    with Stack(folder / "data", env=env) as stack:
        report = generate_into(stack.kafka_address, args.events, 10_000, args.partitions, 0)
        bids = report["tables"]["bid"]
        expected = bids.num_rows
        if args.query == "filter":
            expected = sum(1 for p in bids.column("price").to_pylist() if p % 10 < 3)
        full_env = dict(os.environ)
        full_env.update(stack.env)
        subprocess.run(
            [sys.executable, "-m", "sql", "query", create_stream_sql("bid")],
            env=full_env,
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        meta = open_store(stack.settings.metadata_target)
        try:
            from confluent_kafka.admin import AdminClient, NewTopic

            admin = AdminClient({"bootstrap.servers": stack.kafka_address})
            for fut in admin.create_topics([NewTopic("out", args.partitions, 1)]).values():
                fut.result(timeout=30)
            definition = QueryDefinition(
                name="q", kind="stream", sql=QUERIES[args.query], output_topic="out"
            )
            meta.put_catalog_entry("query", "q", encode_definition(definition), 0)
            command = [sys.executable, "-m", "sql.continuous", "run", "q"]
            if shutil.which("taskset") and args.core >= 0:
                command = ["taskset", "-c", str(args.core), *command]
            full_env["STREAMHOUSE_LOG_LEVEL"] = args.log_level
            log = open(folder / "runner.log", "wb")
            started = time.monotonic()
            proc = subprocess.Popen(command, env=full_env, cwd=REPO, stdout=log, stderr=log)
            claimed = None
            try:
                while _output_rows(meta, "out") < expected:
                    if claimed is None and meta.get_query_checkpoint("q") is not None:
                        claimed = time.monotonic()
                    if proc.poll() is not None:
                        raise SystemExit(f"the runner exited; see {folder / 'runner.log'}")
                    if time.monotonic() - started > args.timeout:
                        raise SystemExit(f"not done in {args.timeout} s")
                    time.sleep(0.05)
                wall = time.monotonic() - started
                after_claim = time.monotonic() - (claimed or started)
                cpu = _cpu_seconds(proc.pid)
            finally:
                proc.kill()
                proc.wait()
                log.close()
            got = _output_rows(meta, "out")
        finally:
            meta.close()
    return {
        "query": args.query,
        "bids": bids.num_rows,
        "rows_out": got,
        "expected_rows_out": expected,
        "wall_s": round(wall, 3),
        "rows_per_s": round(bids.num_rows / wall),
        "s_after_claim": round(after_claim, 3),
        "rows_per_s_after_claim": round(bids.num_rows / after_claim),
        "runner_cpu_s": round(cpu, 3),
        "rows_per_cpu_s": round(bids.num_rows / cpu) if cpu else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--core", type=int, default=0, help="the runner's core (-1: any)")
    parser.add_argument("--query", choices=sorted(QUERIES), default="passthrough")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--keep", default=None, help="the stack's folder (default: temp)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--log-level", default="WARNING", help="the runner's (runner.log)")
    args = parser.parse_args()
    if args.keep:
        folder = pathlib.Path(args.keep)
        folder.mkdir(parents=True, exist_ok=True)
        result = run(args, folder)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args, pathlib.Path(tmp))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>18}: {value}")
    if result["rows_out"] != result["expected_rows_out"]:
        raise SystemExit("the output topic does not hold the expected number of rows")


if __name__ == "__main__":
    main()
