"""Where the CPU goes when one client produces to a broker on the same 2-core machine.

``python bench/client_share.py --record-size 100 --duration 10 --runs 3`` starts StreamHouse
(local folder) and Tansu (in memory) in turn, as the harness does (bench/harness/servers.py),
and runs the harness's lean confluent-kafka producer (bench/harness/kafka_load.py, no probe)
against each. Over a window in the middle of the load it samples /proc:

- the client's threads (the Python thread calling ``produce()`` and librdkafka's broker
  thread), in cores: when the client thread gets less than a whole core, the client is being
  crowded off the CPU by the broker's processes;
- each broker process's user and system CPU, in cores;
- the broker's context switches per second (all threads).

With a one-partition produce at 100 B the client's Python thread is the limit for either
broker, so a broker's rate follows the share of a core it leaves that thread.
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import kafka_load  # noqa: E402
from bench.harness.run import create_topic, high_watermarks  # noqa: E402
from bench.harness.servers import ObjectStore, Server, StreamHouseServer, TansuServer  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of `pid`, by 'tid:name'."""
    out = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            fields = Path(task, "stat").read_text().rsplit(")", 1)[1].split()
            name = Path(task, "comm").read_text().strip()
        except OSError:
            continue
        out[f"{Path(task).name}:{name}"] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def process_cpu(pid: int) -> tuple[float, float, int]:
    """(user s, system s, context switches) of a process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    switches = 0
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            for line in Path(task, "status").read_text().splitlines():
                if "ctxt_switches" in line:
                    switches += int(line.split()[1])
        except OSError:
            continue
    return int(fields[11]) / TICK, int(fields[12]) / TICK, switches


def one_run(server: Server, size: int, seconds: float) -> dict[str, Any]:
    topic = f"share-{size}b-{time.time_ns()}"
    create_topic(server.bootstrap, topic, 1)
    high_watermarks(server.bootstrap, topic, 1)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    counter = ctx.RawValue("q", 0)
    load = ctx.Process(
        target=kafka_load.producer_main,
        args=(server.bootstrap, topic, size, "all", "none", seconds, 0, 0, counter, child, 5.0),
        daemon=True,
    )
    load.start()
    if parent.recv() != "ready":
        raise RuntimeError("the producer did not start")
    parent.send("go")
    window = seconds * 0.6
    time.sleep(seconds * 0.2)
    client0 = thread_cpu(load.pid)
    broker0 = {name: process_cpu(pid) for name, pid in server.pids().items()}
    time.sleep(window)
    client1 = thread_cpu(load.pid)
    broker1 = {name: process_cpu(pid) for name, pid in server.pids().items()}
    result = parent.recv()
    load.join()
    threads = {k: (v - client0.get(k, 0.0)) / window for k, v in client1.items()}
    busy = {k.split(":", 1)[1]: round(v, 2) for k, v in threads.items() if v >= 0.02}
    per_process = {
        name: {
            "user": round((broker1[name][0] - broker0[name][0]) / window, 3),
            "system": round((broker1[name][1] - broker0[name][1]) / window, 3),
            "switches_per_s": round((broker1[name][2] - broker0[name][2]) / window),
        }
        for name in broker1
    }
    seconds_taken = result["t_last"] - result["t_first"]
    return {
        "records_per_s": result["records"] / seconds_taken,
        "client_threads_cores": busy,
        "client_cores": round(sum(threads.values()), 2),
        "broker": per_process,
        "broker_cores": round(sum(p["user"] + p["system"] for p in per_process.values()), 2),
        "broker_switches_per_s": sum(p["switches_per_s"] for p in per_process.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--record-size", type=int, default=100)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3, help="runs per broker, alternating")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="client-share-"))
    store = ObjectStore("local", workdir).start()
    runs: dict[str, list[dict[str, Any]]] = {"streamhouse": [], "tansu": []}
    try:
        for _ in range(args.runs):
            for name in runs:
                server: Server = (
                    StreamHouseServer(store, workdir, {})
                    if name == "streamhouse"
                    else TansuServer(store, workdir)
                ).start()
                try:
                    run = one_run(server, args.record_size, args.duration)
                finally:
                    server.stop()
                runs[name].append(run)
                print(
                    f"{name:11s} {run['records_per_s']:>11,.0f} rec/s  client "
                    f"{run['client_cores']:.2f} cores {run['client_threads_cores']}  broker "
                    f"{run['broker_cores']:.2f} cores, {run['broker_switches_per_s']:,} "
                    "switches/s",
                    flush=True,
                )
                for process, cpu in run["broker"].items():
                    if cpu["user"] + cpu["system"] >= 0.01:
                        print(
                            f"    {process:10s} user {cpu['user']:.3f}  system {cpu['system']:.3f}"
                        )
    finally:
        store.stop()
    rates = {name: statistics.median(r["records_per_s"] for r in rs) for name, rs in runs.items()}
    print(
        f"median: streamhouse {rates['streamhouse']:,.0f} rec/s, tansu {rates['tansu']:,.0f} "
        f"rec/s, ratio {rates['streamhouse'] / rates['tansu']:.3f}"
    )


if __name__ == "__main__":
    main()
