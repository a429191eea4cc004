"""Cluster benchmark: aggregate Kafka throughput of 1, 2 and 3 agents, SQLite vs PostgreSQL for
one agent, and the failover time after kill -9 of an agent.

    python bench/cluster_bench.py                       # every configuration, 25 s each
    python bench/cluster_bench.py --configs pg-1,pg-3 --seconds 20 --failover-rounds 0
    python bench/cluster_bench.py --store file --json /tmp/cluster.json

Everything runs on this machine: a throwaway PostgreSQL (tests/conftest.py's PostgresCluster,
with fsync ON, as a real metadata service would run), a SeaweedFS S3 server (`--store s3`, the
default; `--store file` shares one local folder instead), and N agents
(`streamhouse.testing.Cluster`: each its own supervisord, four processes, ports and data dir)
with the production ring, cache and flush settings (`kafka_bench.stack_env`) and the production
agent heartbeat and lease (1 s / 4 s; `--heartbeat-ms`, `--lease-ms`).

Configurations (`--configs`): `sqlite-1` (one agent, embedded SQLite metadata), `pg-1`, `pg-2`,
`pg-3` (N agents sharing one PostgreSQL database). Each gets a fresh database and object prefix
and a fresh topic of `--partitions` partitions (default 12: leadership spreads over the agents).

- produce: `--producers` processes (default 2, the same for every configuration so that the
  client side costs the same), each bootstrapped on every agent, each running kafka_bench's
  lean loop (`produce_phase`: linger.ms 5, batch.size 1 MiB, acks=all, null keys, 100-byte
  values, `poll(0)` every 1000 records) for `--seconds`. Aggregate records/s = records
  acknowledged by all producers / the longest producer's time (first produce to end of flush).
- consume: `--consumers` processes (default 2), each assigned every other partition from the
  beginning, read everything back (`consume(num_messages=10000)`); aggregate = records / the
  longest consumer's time.
- failover (`--failover-rounds`, default 3, on `pg-3`'s cluster after its throughput phases):
  one producer (acks=all, idempotent) sends 2000 records/s round robin over the partitions;
  each round kills -9 (every process at once) an agent that leads partitions, measures the time
  from the kill to the first acknowledged produce, on each partition it led, of a record
  produced after the kill (first and last partition), then starts the agent again and waits
  until all three are brokers again.

Prints a table and writes every number (with the configuration and machine load) as JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from bench.kafka_bench import produce_phase, stack_env  # noqa: E402
from streamhouse.config import Settings  # noqa: E402
from streamhouse.testing import (  # noqa: E402
    PROGRAMS,
    Cluster,
    Deliveries,
    kafka_metadata,
    wait_until,
)

MiB = 1024 * 1024
MB = 1_000_000
FAILOVER_RATE = 2000  # records/s during the failover rounds


def load_conftest() -> Any:
    """tests/conftest.py as a module: its PostgresCluster and SeaweedS3 start the servers."""
    spec = importlib.util.spec_from_file_location("_sh_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- load processes (spawned: no GIL shared with the bench or each other) -----------------------


def producer_main(bootstrap: str, topic: str, size: int, seconds: float, conn: Connection) -> None:
    value = os.urandom(size)
    Producer({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=30)  # warm metadata
    conn.send("ready")
    conn.recv()  # start together
    cpu0 = time.process_time()
    result = produce_phase(bootstrap, topic, value, seconds)
    result["cpu_s"] = time.process_time() - cpu0  # every thread of this process (librdkafka's)
    conn.send(result)


def consumer_main(bootstrap: str, topic: str, partitions: list[int], conn: Connection) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "cluster-bench",
            "enable.auto.commit": False,
            "max.partition.fetch.bytes": 8 * MiB,
            "fetch.max.bytes": 64 * MiB,
            "queued.min.messages": 1_000_000,
            "queued.max.messages.kbytes": 256 * 1024,
            "fetch.queue.backoff.ms": 10,
        }
    )
    expected = sum(
        consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions
    )
    conn.send("ready")
    conn.recv()
    cpu0 = time.process_time()
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    count = errors = 0
    started = time.perf_counter()
    deadline = started + 600
    while count < expected and time.perf_counter() < deadline:
        for message in consumer.consume(num_messages=min(10_000, expected - count), timeout=1):
            if message.error() is not None:
                errors += 1
                continue
            count += 1
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    consumer.close()
    conn.send(
        {"records": count, "expected": expected, "elapsed": elapsed, "errors": errors, "cpu_s": cpu}
    )


def run_processes(targets: list[tuple[Any, tuple[Any, ...]]]) -> list[dict[str, Any]]:
    """Starts one process per (function, args), releases them together once all are ready,
    returns their results."""
    ctx = mp.get_context("spawn")
    procs, pipes = [], []
    for target, args in targets:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=target, args=(*args, child), daemon=True)
        proc.start()
        procs.append(proc)
        pipes.append(parent)
    for pipe in pipes:
        if not pipe.poll(120):
            raise RuntimeError("a load process did not get ready in 120 s")
        assert pipe.recv() == "ready"
    for pipe in pipes:
        pipe.send("go")
    results = [pipe.recv() for pipe in pipes]
    for proc in procs:
        proc.join(30)
    return results


# -- CPU accounting ------------------------------------------------------------------------------


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    idle = fields[3] + fields[4]
    return (total - idle) / ticks, total / ticks


class ServerCpu:
    """CPU seconds of every agent process of a cluster, by program."""

    def __init__(self, cluster: Cluster) -> None:
        self.procs: dict[str, list[psutil.Process]] = {p: [] for p in PROGRAMS}
        for agent in cluster.agents:
            for program in PROGRAMS:
                pid = agent.pid(program)
                if pid:
                    self.procs[program].append(psutil.Process(pid))

    def sample(self) -> dict[str, float]:
        out = {}
        for program, procs in self.procs.items():
            total = 0.0
            for proc in procs:
                try:
                    times = proc.cpu_times()
                    total += times.user + times.system
                except psutil.Error:
                    pass
            out[program] = total
        return out


def phase_cpu(
    before: tuple[dict[str, float], tuple[float, float]],
    after: tuple[dict[str, float], tuple[float, float]],
    clients_s: float,
    records: int,
) -> dict[str, Any]:
    """Server CPU by program, machine busy, client and other processes' CPU over a phase, and
    the server's CPU µs per record (the cost that does not depend on how busy the machine is)."""
    server = {p: after[0][p] - before[0][p] for p in PROGRAMS}
    busy = after[1][0] - before[1][0]
    server_s = sum(server.values())
    return {
        "server_s": server,
        "server_total_s": server_s,
        "client_s": clients_s,
        "machine_busy_s": busy,
        "machine_total_s": after[1][1] - before[1][1],
        "other_s": max(0.0, busy - server_s - clients_s),
        "server_us_per_record": server_s / records * 1e6 if records else None,
    }


# -- one configuration --------------------------------------------------------------------------


def throughput(cluster: Cluster, args: argparse.Namespace, name: str) -> dict[str, Any]:
    topic = f"cbench-{uuid.uuid4().hex[:8]}"
    bootstrap = cluster.kafka_bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, args.partitions, 1)])[topic].result(timeout=30)
    load0 = os.getloadavg()[0]
    cpu = ServerCpu(cluster)
    mark0 = (cpu.sample(), machine_cpu())
    produced = run_processes(
        [
            (producer_main, (bootstrap, topic, args.record_size, args.seconds))
            for _ in range(args.producers)
        ]
    )
    records = sum(p["records"] for p in produced)
    p_elapsed = max(p["elapsed"] for p in produced)
    failures = [f for p in produced for f in p["failures"]]
    mark1 = (cpu.sample(), machine_cpu())
    shares = [list(range(i, args.partitions, args.consumers)) for i in range(args.consumers)]
    consumed = run_processes([(consumer_main, (bootstrap, topic, share)) for share in shares])
    mark2 = (cpu.sample(), machine_cpu())
    c_records = sum(c["records"] for c in consumed)
    c_elapsed = max(c["elapsed"] for c in consumed)
    leaders = kafka_metadata(cluster.kafka_addresses[0], topic).leaders
    return {
        "config": name,
        "agents": len(cluster),
        "produce_records": records,
        "produce_seconds": p_elapsed,
        "produce_rps": records / p_elapsed,
        "produce_mbps": records * args.record_size / MB / p_elapsed,
        "produce_failures": failures[:5],
        "produce_failure_count": len(failures),
        "consume_records": c_records,
        "consume_expected": sum(c["expected"] for c in consumed),
        "consume_seconds": c_elapsed,
        "consume_rps": c_records / c_elapsed,
        "consume_errors": sum(c["errors"] for c in consumed),
        "leaders_per_node": {
            str(n): sum(1 for v in leaders.values() if v == n) for n in set(leaders.values())
        },
        "loadavg_1m_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
        # The phases include process start-up and the consumers' metadata requests (the
        # producers' too): a few hundred ms of the machine, counted in "other".
        "cpu_produce": phase_cpu(mark0, mark1, sum(p["cpu_s"] for p in produced), records),
        "cpu_consume": phase_cpu(mark1, mark2, sum(c["cpu_s"] for c in consumed), c_records),
    }


def failover(cluster: Cluster, args: argparse.Namespace) -> list[dict[str, Any]]:
    topic = f"cfail-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": cluster.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, args.partitions, 1)])[topic].result(timeout=30)
    deliveries = Deliveries()
    producer = Producer(
        {
            "bootstrap.servers": cluster.kafka_bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "topic.metadata.refresh.interval.ms": 1000,
            "reconnect.backoff.max.ms": 1000,
            "socket.connection.setup.timeout.ms": 3000,
        }
    )
    sent = [0]
    stop = threading.Event()

    def produce() -> None:
        started = time.monotonic()
        while not stop.is_set():
            ahead = sent[0] / FAILOVER_RATE - (time.monotonic() - started)
            if ahead > 0:
                producer.poll(min(ahead, 0.05))
                continue
            producer.produce(
                topic, b"%d" % sent[0], partition=sent[0] % args.partitions, on_delivery=deliveries
            )
            sent[0] += 1

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    rounds: list[dict[str, Any]] = []
    try:
        wait_until(lambda: deliveries.count() >= 2000, 60, "2000 records acknowledged")
        for round_no in range(args.failover_rounds):
            view = kafka_metadata(cluster.kafka_addresses[0], topic)
            by_agent: dict[int, list[int]] = {}
            for partition, node in view.leaders.items():
                agent = cluster.agent_by_kafka_address(view.brokers[node])
                by_agent.setdefault(agent, []).append(partition)
            # A different agent each round where possible (never agent 0: it answers Metadata).
            candidates = [a for a in sorted(by_agent) if a != 0] or sorted(by_agent)
            victim = candidates[round_no % len(candidates)]
            lost = sorted(by_agent[victim])
            killed_at = time.monotonic()
            cluster.kill_agent(victim)
            mark = sent[0]

            def first(partition: int, since: float = killed_at, mark: int = mark) -> float | None:
                return deliveries.first_ack_after(partition, since, lambda v: int(v) >= mark)

            wait_until(lambda lost=lost: all(first(p) for p in lost), 120, "produces resuming")
            times = [first(p) - killed_at for p in lost]  # type: ignore[operator]
            rounds.append(
                {
                    "round": round_no,
                    "victim": victim,
                    "partitions": lost,
                    "first_s": min(times),
                    "all_s": max(times),
                }
            )
            print(
                f"  failover round {round_no}: agent {victim} killed, partitions {lost}: first "
                f"acknowledged produce after {min(times):.2f} s, all after {max(times):.2f} s",
                flush=True,
            )
            cluster.start_agent(victim)
            cluster.wait_brokers(len(cluster), timeout=60)
    finally:
        stop.set()
        thread.join(10)
        producer.flush(60)
    if deliveries.failed:
        print(f"  failover: {len(deliveries.failed)} produce failures: {deliveries.failed[:3]}")
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="sqlite-1,pg-1,pg-2,pg-3")
    parser.add_argument("--seconds", type=float, default=25, help="produce phase length")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--record-size", type=int, default=100)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--store", choices=("s3", "file"), default="s3")
    parser.add_argument("--failover-rounds", type=int, default=3)
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the configurations this many times, in turn"
    )
    defaults = Settings()
    parser.add_argument("--heartbeat-ms", type=int, default=defaults.agent_heartbeat_ms)
    parser.add_argument("--lease-ms", type=int, default=defaults.agent_lease_ms)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every agent")
    parser.add_argument("--json", help="write the results here (default: a temp file)")
    args = parser.parse_args()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for config in configs:
        kind, _, n = config.partition("-")
        if kind not in ("sqlite", "pg") or not n.isdigit() or (kind == "sqlite" and n != "1"):
            parser.error(f"unknown configuration {config!r}: sqlite-1, pg-1, pg-2, pg-3, ...")

    conftest = load_conftest()
    tmp = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    postgres = conftest.PostgresCluster(fsync=True)
    seaweed = conftest.SeaweedS3(tmp / "s3") if args.store == "s3" else None
    env = stack_env(args.env)
    env["STREAMHOUSE_AGENT_HEARTBEAT_MS"] = str(args.heartbeat_ms)
    env["STREAMHOUSE_AGENT_LEASE_MS"] = str(args.lease_ms)
    results: dict[str, Any] = {
        "args": vars(args),
        "cpus": os.cpu_count(),
        "throughput": [],
        "failover": [],
    }
    try:
        postgres.start()
        if seaweed is not None:
            (tmp / "s3").mkdir()
            seaweed.start()
            env.update({k: v for k, v in seaweed.env().items() if k != "STREAMHOUSE_OBJECT_STORE"})
        failover_done = False
        for config in [c for _ in range(args.repeat) for c in configs]:
            kind, _, n = config.partition("-")
            metadata = postgres.dsn(postgres.create_database()) if kind == "pg" else ""
            prefix = uuid.uuid4().hex[:12]
            store = (
                f"s3://{seaweed.bucket}/{prefix}"
                if seaweed is not None
                else (tmp / "objects" / prefix).as_uri()
            )
            cluster = Cluster(tmp / config, int(n), metadata, store, env)
            print(f"{config}: starting {n} agent(s)", flush=True)
            cluster.start()
            try:
                cluster.wait_brokers(int(n), timeout=60)
                row = throughput(cluster, args, config)
                print(
                    f"  produce {row['produce_rps']:,.0f} rec/s "
                    f"({row['cpu_produce']['server_us_per_record']:.2f} server CPU µs/rec, "
                    f"other processes {row['cpu_produce']['other_s']:.0f} CPU s), consume "
                    f"{row['consume_rps']:,.0f} rec/s "
                    f"({row['cpu_consume']['server_us_per_record']:.2f} µs/rec), "
                    f"leaders per node {row['leaders_per_node']}",
                    flush=True,
                )
                results["throughput"].append(row)
                if config == "pg-3" and args.failover_rounds and not failover_done:
                    results["failover"] = failover(cluster, args)
                    failover_done = True
            finally:
                cluster.stop()
    finally:
        if seaweed is not None:
            seaweed.stop()
        postgres.stop()
    out = Path(args.json) if args.json else tmp / "cluster_bench.json"
    out.write_text(json.dumps(results, indent=2))
    print(report(results))
    print(f"JSON: {out}")


def report(results: dict[str, Any]) -> str:
    """One line per configuration: medians over its runs (all runs listed in the JSON)."""
    by_config: dict[str, list[dict[str, Any]]] = {}
    for r in results["throughput"]:
        by_config.setdefault(r["config"], []).append(r)

    def med(rows: list[dict[str, Any]], key: Any) -> float:
        return statistics.median(key(r) for r in rows)

    base = by_config.get("pg-1")
    lines = [
        "config   runs   produce rec/s  server µs/rec   consume rec/s  server µs/rec   "
        "vs pg-1 prod/cons   other CPU s (prod)  failures",
    ]
    for name, rows in by_config.items():
        prod = med(rows, lambda r: r["produce_rps"])
        cons = med(rows, lambda r: r["consume_rps"])
        ratio = (
            f"{prod / med(base, lambda r: r['produce_rps']):.2f} / "
            f"{cons / med(base, lambda r: r['consume_rps']):.2f}"
            if base
            else "-"
        )
        short = sum(r["consume_records"] != r["consume_expected"] for r in rows)
        lines.append(
            f"{name:<8} {len(rows):>4} {prod:>15,.0f} "
            f"{med(rows, lambda r: r['cpu_produce']['server_us_per_record']):>14.2f} "
            f"{cons:>15,.0f} "
            f"{med(rows, lambda r: r['cpu_consume']['server_us_per_record']):>14.2f}   "
            f"{ratio:<17} {med(rows, lambda r: r['cpu_produce']['other_s']):>18.0f}  "
            f"{sum(r['produce_failure_count'] for r in rows)}"
            + (f"  ({short} consume runs short!)" if short else "")
        )
    if results["failover"]:
        firsts = [f["first_s"] for f in results["failover"]]
        alls = [f["all_s"] for f in results["failover"]]
        lines.append(
            f"failover (kill -9 -> first acknowledged produce on the dead agent's partitions), "
            f"{len(firsts)} rounds: first {', '.join(f'{t:.2f}' for t in firsts)} s "
            f"(median {statistics.median(firsts):.2f}); all partitions "
            f"{', '.join(f'{t:.2f}' for t in alls)} s (max {max(alls):.2f})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
