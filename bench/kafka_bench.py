"""Kafka benchmark: produce and consume through a whole StreamHouse with confluent-kafka.

By default it starts its own stack (production ring, cache and flush settings, see `stack_env`)
on a temporary directory, runs the load, prints the numbers and stops the stack. With
``--address HOST:PORT`` (a Kafka listener) it drives a running server instead; the server's
processes are then found by their STREAMHOUSE_KAFKA_LISTEN on this host, for RSS and CPU.

    python bench/kafka_bench.py --partitions 12 --record-size 1024 --seconds 25
    python bench/kafka_bench.py --address 127.0.0.1:9092 --partitions 1 --record-size 100

Phases, on a fresh topic of ``--partitions`` partitions:
- produce: one producer with a lean loop — ``producer.produce(topic, value)`` in a tight loop,
  ``poll(0)`` every 1000 records, no per-message callback (``delivery.report.only.error``: only
  failures call back), linger.ms 5, batch.size 1 MiB, acks=all, null keys (librdkafka's sticky
  partitioner spreads them) — for ``--seconds``, then ``flush()``. Throughput is records
  acknowledged over the time from the first produce to the end of the flush.
- latency probe, during the produce phase: a separate process with its own producer (acks=all,
  linger.ms 0) sends ``--probe-rate`` records/s to the same topic and timestamps each delivery
  report: p50/p99/max produce latency under the load (send -> durable acknowledgement).
- consume: one consumer assigned every partition from the beginning reads back everything
  (``consume(num_messages=10000)`` batches): records and value bytes over the wall time.

MB is 10^6 bytes of record values (keys are null; batch and protocol overheads not counted).
RSS: psutil samples the four StreamHouse processes every 0.25 s; peak over the whole run.
Pages of the shared-memory rings a process touched count in its RSS. CPU% is a process's CPU
time over the phase's wall time (100% = one core); "client" is this process (the producer or
consumer with librdkafka's threads, not the probe). The client shares the machine's cores with
the server.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402
from confluent_kafka import (  # noqa: E402
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

PROGRAMS = ("ingest", "segmenter", "uploader", "reader")
MB = 1_000_000
MiB = 1024 * 1024


# -- the server ---------------------------------------------------------------------------------


def stack_env(extra: list[str]) -> dict[str, str]:
    """Production defaults (streamhouse.testing shrinks rings and cache for tests)."""
    from streamhouse.config import Settings
    from streamhouse.testing import TEST_SETTINGS

    defaults = Settings()
    env = {}
    for key in TEST_SETTINGS:
        env[key] = str(getattr(defaults, key.removeprefix("STREAMHOUSE_").lower()))
    for item in extra:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def discover_pids(kafka_address: str) -> dict[str, int]:
    """The StreamHouse processes (this host) whose stack listens for Kafka on that port."""
    port = kafka_address.rsplit(":", 1)[-1]
    found: dict[str, list[psutil.Process]] = {p: [] for p in PROGRAMS}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if len(cmd) >= 3 and cmd[-2] == "-m" and cmd[-1] in PROGRAMS:
            found[cmd[-1]].append(proc)
    pids: dict[str, int] = {}
    data_dir = None
    for proc in found["ingest"]:
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        if env.get("STREAMHOUSE_KAFKA_LISTEN", "127.0.0.1:9092").rsplit(":", 1)[-1] == port:
            pids["ingest"] = proc.pid
            data_dir = env.get("STREAMHOUSE_DATA_DIR")
    for name in PROGRAMS[1:]:
        for proc in found[name]:
            try:
                if proc.environ().get("STREAMHOUSE_DATA_DIR") == data_dir:
                    pids[name] = proc.pid
            except psutil.Error:
                continue
    return pids


class Monitor:
    """Peak RSS per program (sampled in a thread) and CPU time per phase."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(self.procs, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while True:
            for name, proc in self.procs.items():
                try:
                    self.peak[name] = max(self.peak[name], proc.memory_info().rss)
                except psutil.Error:
                    pass
            if self._stop.wait(0.25):  # the sampling period
                return

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each server process and of this client process."""
        out = {}
        for name, proc in [*self.procs.items(), ("client", psutil.Process())]:
            try:
                times = proc.cpu_times()
                out[name] = times.user + times.system
            except psutil.Error:
                out[name] = 0.0
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# -- the latency probe (its own process: no GIL shared with the tight produce loop) -------------


def probe_main(bootstrap: str, topic: str, rate: float, value: bytes, conn: Connection) -> None:
    latencies: list[float] = []
    errors: list[str] = []
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0, "enable.idempotence": False}
    )

    def report(sent: float) -> Any:
        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            if err is None:
                latencies.append(time.perf_counter() - sent)
            else:
                errors.append(str(err))

        return on_delivery

    conn.send("ready")
    interval = 1 / rate
    next_send = time.perf_counter()
    while not conn.poll():
        now = time.perf_counter()
        if now >= next_send:
            producer.produce(topic, value, callback=report(now))
            next_send += interval
        producer.poll(max(0.0, next_send - time.perf_counter()))  # serves reports at once
    producer.flush(60)
    conn.send((latencies, errors))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- phases -------------------------------------------------------------------------------------


def produce_phase(bootstrap: str, topic: str, value: bytes, seconds: float) -> dict[str, Any]:
    failures: list[str] = []

    def on_error(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 5,
            "batch.size": 1048576,
            "message.max.bytes": 2 * 1048576,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 512 * 1024,
            "delivery.report.only.error": True,
            "on_delivery": on_error,
        }
    )
    produce = producer.produce
    poll = producer.poll
    count = 0
    chunk = 0  # records of the current 1000 already queued (a BufferError may cut a chunk)
    full_waits = 0  # times the local queue was full: the server is then the limit
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        try:
            while chunk < 1000:
                produce(topic, value)
                chunk += 1
        except BufferError:
            full_waits += 1
            poll(0.005)  # the local queue is full: backpressure
            continue
        count += chunk
        chunk = 0
        poll(0)
        if time.perf_counter() >= deadline:
            break
    remaining = producer.flush(300)
    elapsed = time.perf_counter() - started
    failed = len(failures) + remaining
    if remaining:
        failures.append(f"{remaining} records not acknowledged after flush(300)")
    return {
        "records": count - failed,
        "elapsed": elapsed,
        "failures": failures,
        "queue_full_waits": full_waits,
    }


def consume_phase(bootstrap: str, topic: str, partitions: int, record_size: int) -> dict[str, Any]:
    """Reads the whole topic back. Every record of the run's fresh topic has a value of
    record_size bytes, so bytes are counted as records x record_size (no value() copies)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "kafka-bench",
            "enable.auto.commit": False,
            "max.partition.fetch.bytes": 8 * MiB,
            "fetch.max.bytes": 64 * MiB,
            # librdkafka's defaults (100,000 queued records, then a 1 s fetch backoff) stall a
            # client that receives 70,000 small records per 8 MiB fetch.
            "queued.min.messages": 1_000_000,
            "queued.max.messages.kbytes": 256 * 1024,
            "fetch.queue.backoff.ms": 10,
        }
    )
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    expected = sum(consumer.get_watermark_offsets(tp, timeout=30)[1] for tp in tps)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    count = 0
    errors = 0
    started = time.perf_counter()
    deadline = started + 600
    while count < expected and time.perf_counter() < deadline:
        # consume() returns at num_messages or at the timeout: never ask for more than is left.
        for message in consumer.consume(num_messages=min(10_000, expected - count), timeout=1):
            if message.error() is not None:
                errors += 1
                continue
            count += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return {
        "records": count,
        "expected": expected,
        "bytes": count * record_size,
        "elapsed": elapsed,
        "errors": errors,
    }


# -- the run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    stack = None
    tmp = None
    try:
        if args.address:
            bootstrap = args.address
            pids = discover_pids(bootstrap)
        else:
            from streamhouse.testing import Stack

            tmp = tempfile.TemporaryDirectory(prefix="kafka-bench-")
            stack = Stack(Path(tmp.name) / "data", env=stack_env(args.env)).start()
            bootstrap = f"127.0.0.1:{stack.kafka_port}"
            pids = {name: stack.pid(name) for name in PROGRAMS}
        monitor = Monitor(pids)
        topic = args.topic or f"kbench-{args.partitions}p-{args.record_size}b-{os.getpid()}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, args.partitions, 1)])[topic].result(timeout=30)
        value = os.urandom(args.record_size)

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        probe = ctx.Process(
            target=probe_main, args=(bootstrap, topic, args.probe_rate, value, child), daemon=True
        )
        probe.start()
        assert parent.recv() == "ready"
        load_before = os.getloadavg()
        cpu0 = monitor.cpu()
        produced = produce_phase(bootstrap, topic, value, args.seconds)
        cpu1 = monitor.cpu()
        parent.send("stop")
        latencies, probe_errors = parent.recv()
        probe.join(30)
        consumed = consume_phase(bootstrap, topic, args.partitions, args.record_size)
        cpu2 = monitor.cpu()
        monitor.stop()
        return {
            "partitions": args.partitions,
            "record_size": args.record_size,
            "produce": produced,
            "consume": consumed,
            "latency": {
                "count": len(latencies),
                "p50_ms": percentile(latencies, 0.50) * 1000 if latencies else None,
                "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else None,
                "max_ms": max(latencies) * 1000 if latencies else None,
                "mean_ms": statistics.fmean(latencies) * 1000 if latencies else None,
                "errors": probe_errors,
            },
            "rss_peak": monitor.peak,
            "loadavg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "cpu_produce": {n: (cpu1[n] - cpu0[n]) / produced["elapsed"] * 100 for n in cpu0},
            "cpu_consume": {n: (cpu2[n] - cpu1[n]) / consumed["elapsed"] * 100 for n in cpu0},
        }
    finally:
        if stack is not None:
            stack.stop()
        if tmp is not None:
            tmp.cleanup()


def report(r: dict[str, Any]) -> str:
    p, c, lat = r["produce"], r["consume"], r["latency"]
    size = r["record_size"]
    lines = [
        f"partitions={r['partitions']} record_size={size}",
        f"produce  {p['records'] / p['elapsed']:>12,.0f} msgs/s "
        f"{p['records'] * size / MB / p['elapsed']:>8.1f} MB/s   "
        f"({p['records']:,} records in {p['elapsed']:.1f}s, failures {len(p['failures'])}, "
        f"queue-full waits of 5 ms {p['queue_full_waits']})",
        f"consume  {c['records'] / c['elapsed']:>12,.0f} msgs/s "
        f"{c['bytes'] / MB / c['elapsed']:>8.1f} MB/s   "
        f"({c['records']:,} of {c['expected']:,} records in {c['elapsed']:.1f}s, "
        f"errors {c['errors']})",
    ]
    if lat["count"]:
        lines.append(
            f"produce latency (probe, {lat['count']} records): p50 {lat['p50_ms']:.1f} ms, "
            f"p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms, "
            f"errors {len(lat['errors'])}"
        )
    lines.append(
        "peak RSS MiB: "
        + ", ".join(f"{n} {v / MiB:.0f}" for n, v in r["rss_peak"].items())
        + f" (total {sum(r['rss_peak'].values()) / MiB:.0f})"
    )
    for phase in ("cpu_produce", "cpu_consume"):
        lines.append(
            f"{phase.replace('_', ' ')} %: "
            + ", ".join(f"{n} {v:.0f}" for n, v in r[phase].items())
        )
    lines.append(
        "machine load average (1 min) before / after: "
        + " / ".join(f"{v:.2f}" for v in r["loadavg_1m"])
    )
    if p["failures"]:
        lines.append(f"produce failures (first 5): {p['failures'][:5]}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--record-size", type=int, default=100, help="value bytes per record")
    parser.add_argument("--seconds", type=float, default=25, help="length of the produce phase")
    parser.add_argument("--address", help="Kafka HOST:PORT of a running server (else own stack)")
    parser.add_argument("--topic", help="topic to create (default: a fresh kbench-… name)")
    parser.add_argument("--probe-rate", type=float, default=100, help="latency probe records/s")
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the own stack (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        import json

        print(json.dumps(result, indent=2))
    else:
        print(report(result))
    if (
        result["produce"]["failures"]
        or result["consume"]["records"] != result["consume"]["expected"]
    ):
        sys.exit(1)


if __name__ == "__main__":
    main()
