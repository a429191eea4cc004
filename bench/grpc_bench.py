"""End-to-end gRPC benchmark: produce and consume through a whole StreamHouse stack.

By default it starts its own stack (supervisord + ingest/segmenter/uploader/reader, with the
production ring and cache sizes, see `stack_env`) on a temporary directory, runs the load, prints
a table and stops the stack. With ``--address`` it drives a server that is already running.

    python bench/grpc_bench.py --duration 60 --consume-mode catchup          # max throughput
    python bench/grpc_bench.py --duration 60 --rate 120000 --consume-mode live  # fixed load
    python bench/grpc_bench.py --records 1000000 --json                        # machine-readable

Phases (``--consume-mode``):
- produce: ``--producers`` processes, each with ``--inflight`` threads doing blocking
  ProduceBatch calls of ``--batch-size`` records, for ``--duration`` seconds or ``--records``
  records, as fast as possible or paced to ``--rate`` records/s in total.
- live (``live``/``both``): ``--consumers`` processes tail the partitions *while* producing and
  measure end-to-end latency (client produce time -> time the consumer receives the record).
- catch-up (``catchup``/``both``): after producing, ``--consumers`` processes read back
  everything produced in this run as fast as possible: the consume throughput.

The client is built to stay out of the server's way (the two share the machine's cores):
requests are serialized once and reused for every call (only the partition and the first
record's timestamp change, joined in as bytes: ``PreSerializedBatch``), so producing costs the
client no per-record work, every producer and consumer is its own spawned process with its own
channel, and consumers count records from
``next_offset`` and read only the records they sample for latency (the first record of every
produced batch; upb parses the response in C, Python objects are made for those records only).
Consume calls (the default) measured a little faster than Subscribe streams for catch-up reads
and the same when tailing (bench/RESULTS.md). Since the reader renders records a batch at a time
in C (streamhouse/_recordwire.c) no server process is at a full core during a catch-up; the
consumer processes take about as much CPU as the reader (bench/HARNESS_RESULTS.md).

Latency: "produce" is the ProduceBatch round trip, i.e. until the batch is durable (segmented,
uploaded and committed). "end-to-end" is from the moment the client stamps a batch's first record
(just before the call) to the moment a consumer receives it. Batches are aligned to offsets
(every batch has --batch-size records, the topic is fresh), so the consumer finds the stamped
record of each batch at offsets that are multiples of --batch-size. The other records carry
timestamp 0, which the server replaces with its own clock.

RSS: a sampler reads psutil RSS of the four StreamHouse processes every 0.5 s; "anon" is RSS
minus shared pages (the rings are shared memory, and pages of them a process touched count in its
RSS). CPU% is the process's CPU time over the phase's wall time (100% = one core).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
import psutil  # noqa: E402

from streamhouse.proto import streamhouse_pb2 as pb  # noqa: E402
from streamhouse.proto import streamhouse_pb2_grpc as pb_grpc  # noqa: E402

PROGRAMS = ("ingest", "segmenter", "uploader", "reader")
MAX_MESSAGE = 256 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]
RSS_INTERVAL_S = 0.5
RETRIABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
)
MACHINE = "(machine)"
BENCH_MAIN = "(bench main)"
STEAL = "(steal)"


# -- helpers shared by parent and children ------------------------------------------------------


def open_stub(address: str) -> tuple[grpc.Channel, pb_grpc.StreamHouseStub]:
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    grpc.channel_ready_future(channel).result(timeout=30)
    return channel, pb_grpc.StreamHouseStub(channel)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def latency_summary(values_s: list[float]) -> dict[str, float]:
    values = sorted(v * 1000 for v in values_s)
    return {
        "samples": len(values),
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "max_ms": values[-1] if values else float("nan"),
    }


# -- producer child -----------------------------------------------------------------------------


class PreSerializedBatch:
    """One thread's ProduceBatchRequest as bytes, serialized once: each call joins the topic,
    the partition field, a freshly stamped first record and the other records' bytes, so the
    client spends no time building or serializing records (protobuf allows the fields in any
    order, and the server reads them as one message)."""

    def __init__(self, topic: str, batch: int, record_size: int, partitions: list[int]) -> None:
        values = [os.urandom(record_size) for _ in range(min(batch, 64))]
        self.head = pb.ProduceBatchRequest(topic=topic).SerializeToString()
        self.partition = {
            p: pb.ProduceBatchRequest(partition=p).SerializeToString() for p in partitions
        }
        self.first = pb.ProduceBatchRequest(records=[pb.Record(value=values[0])])
        rest = [pb.Record(value=values[i % len(values)]) for i in range(1, batch)]
        self.rest = pb.ProduceBatchRequest(records=rest).SerializeToString()

    def build(self, partition: int, first_timestamp_ms: int) -> bytes:
        """The request's bytes; the other records carry timestamp 0 (server time)."""
        self.first.records[0].timestamp_ms = first_timestamp_ms
        first = self.first.SerializeToString()
        return b"".join((self.head, self.partition[partition], first, self.rest))


def producer_main(index: int, cfg: dict, progress, ready, go, start_at, result_q) -> None:
    """One producer process: `inflight` threads sharing one channel, blocking ProduceBatch."""
    try:
        channel, _ = open_stub(cfg["address"])
        produce_batch = channel.unary_unary(
            "/streamhouse.v1.StreamHouse/ProduceBatch",
            request_serializer=None,  # the requests are bytes already
            response_deserializer=pb.ProduceBatchResponse.FromString,
        )
        batch = cfg["batch_size"]
        partitions = cfg["partitions"]
        inflight = cfg["inflight"]
        # One pre-serialized request per thread; they differ only in the random values.
        requests = [
            PreSerializedBatch(cfg["topic"], batch, cfg["record_size"], partitions)
            for _ in range(inflight)
        ]
        quota = cfg["batches_per_producer"]  # 0: run for the duration
        rate = cfg["rate"] / cfg["producers"] if cfg["rate"] else 0.0
        interval = batch / rate if rate else 0.0
        slots = itertools.count()  # batch numbers of this process (next() is atomic in CPython)
        errors: dict[str, int] = {}
        errors_lock = threading.Lock()
        per_thread: list[dict] = [{} for _ in range(inflight)]
        ready.put(index)
        go.wait()
        cpu0 = sum(os.times()[:2])
        start = start_at.value
        deadline = start + cfg["duration"] if cfg["duration"] else float("inf")

        def worker(tid: int) -> None:
            request = requests[tid]
            lat: list[tuple[float, float]] = []
            sent = 0
            t_first = t_last = 0.0
            while True:
                slot = next(slots)
                if quota and slot >= quota:
                    break
                if interval:
                    send_at = start + slot * interval
                    if send_at >= deadline:
                        break
                    delay = send_at - time.time()
                    if delay > 0:
                        time.sleep(delay)
                elif time.time() >= deadline:
                    break
                partition = partitions[(slot + index) % len(partitions)]
                # A failed call is counted and sent again (same slot) for up to 2 minutes.
                acked = False
                first_failure = 0.0
                while not acked:
                    now = time.time()
                    data = request.build(partition, int(now * 1000))
                    t0 = time.perf_counter()
                    try:
                        produce_batch(data, timeout=60)
                        acked = True
                    except grpc.RpcError as exc:
                        with errors_lock:
                            key = exc.code().name if hasattr(exc, "code") else "ERROR"
                            errors[key] = errors.get(key, 0) + 1
                        first_failure = first_failure or now
                        if time.time() - first_failure > 120:
                            break
                        time.sleep(0.1)
                if not acked:
                    break
                elapsed = time.perf_counter() - t0
                lat.append((now, elapsed))
                sent += batch
                progress[index * inflight + tid] = sent
                if not t_first:
                    t_first = now
                t_last = now + elapsed
            per_thread[tid] = {"lat": lat, "records": sent, "t_first": t_first, "t_last": t_last}

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(inflight)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        channel.close()
        firsts = [p["t_first"] for p in per_thread if p.get("t_first")]
        result_q.put(
            {
                "kind": "producer",
                "records": sum(p.get("records", 0) for p in per_thread),
                "lat": [x for p in per_thread for x in p.get("lat", [])],
                "t_first": min(firsts) if firsts else 0.0,
                "t_last": max((p.get("t_last", 0.0) for p in per_thread), default=0.0),
                "errors": errors,
                "cpu_s": sum(os.times()[:2]) - cpu0,
            }
        )
    except Exception:
        result_q.put({"kind": "producer", "fatal": traceback.format_exc()})


# -- consumer child -----------------------------------------------------------------------------


def consumer_main(
    index: int,
    cfg: dict,
    assigned: list[int],
    start_offsets,
    end_offsets,
    progress,
    ready,
    go,
    result_q,
) -> None:
    """One consumer process: a thread per assigned partition, reading until end_offsets[p]."""
    try:
        channel, stub = open_stub(cfg["address"])
        batch = cfg["batch_size"]
        sample = cfg["sample_latency"]
        api = cfg["consume_api"]
        hard_deadline_box = [float("inf")]
        calls: dict[int, grpc.Future] = {}
        done_parts: set[int] = set()
        lock = threading.Lock()
        results: dict[int, dict] = {}
        errors: dict[str, int] = {}
        ready.put(index)
        go.wait()
        cpu0 = sum(os.times()[:2])

        def finished(p: int, offset: int) -> bool:
            end = end_offsets[p]
            return (end >= 0 and offset >= end) or time.time() > hard_deadline_box[0]

        def take(p: int, offset: int, resp: pb.ConsumeResponse, lat: list[float]) -> int:
            n = resp.next_offset - offset
            if sample and n > 0:
                now_ms = time.time() * 1000
                records = resp.records
                # The client-stamped record of each batch sits at offsets k * batch.
                for i in range((-offset) % batch, n, batch):
                    ts = records[i].timestamp_ms
                    if ts:
                        lat.append((now_ms - ts) / 1000)
            return n

        def read_partition(p: int) -> None:
            offset = start_offsets[p]
            count = 0
            lat: list[float] = []
            t_first = t_last = 0.0
            try:
                while not finished(p, offset):
                    try:
                        if api == "subscribe":
                            call = stub.Subscribe(
                                pb.SubscribeRequest(
                                    topic=cfg["topic"],
                                    partition=p,
                                    offset=offset,
                                    max_records=cfg["max_records"],
                                    max_bytes=cfg["max_bytes"],
                                )
                            )
                            with lock:
                                calls[p] = call
                            if finished(p, offset):
                                call.cancel()
                            for resp in call:
                                n = take(p, offset, resp, lat)
                                if n:
                                    t_last = time.time()
                                    t_first = t_first or t_last
                                count += n
                                offset = resp.next_offset
                                progress[p] = offset
                                if finished(p, offset):
                                    call.cancel()
                                    break
                        else:
                            request = pb.ConsumeRequest(
                                topic=cfg["topic"],
                                partition=p,
                                offset=offset,
                                max_records=cfg["max_records"],
                                max_bytes=cfg["max_bytes"],
                                max_wait_ms=cfg["max_wait_ms"],
                            )
                            resp = stub.Consume(request, timeout=60 + cfg["max_wait_ms"] / 1000)
                            n = take(p, offset, resp, lat)
                            if n:
                                t_last = time.time()
                                t_first = t_first or t_last
                            count += n
                            offset = resp.next_offset
                            progress[p] = offset
                    except grpc.RpcError as exc:
                        code = exc.code()
                        if code == grpc.StatusCode.CANCELLED and finished(p, offset):
                            break
                        if code not in RETRIABLE:
                            raise
                        # Counted and retried from where this partition stopped.
                        with lock:
                            errors[code.name] = errors.get(code.name, 0) + 1
                        time.sleep(0.1)
            finally:
                with lock:
                    done_parts.add(p)
                results[p] = {"records": count, "lat": lat, "t_first": t_first, "t_last": t_last}

        def watchdog() -> None:
            # Ends Subscribe streams that sit at the end (no message will come to end them).
            while len(done_parts) < len(assigned):
                with lock:
                    for p, call in calls.items():
                        if p not in done_parts and finished(p, progress[p]):
                            call.cancel()
                time.sleep(0.05)

        threads = [threading.Thread(target=read_partition, args=(p,)) for p in assigned]
        for p in assigned:
            progress[p] = start_offsets[p]
        hard_deadline_box[0] = time.time() + cfg["consume_timeout"]
        for t in threads:
            t.start()
        dog = threading.Thread(target=watchdog, daemon=True)
        dog.start()
        for t in threads:
            t.join()
        channel.close()
        firsts = [r["t_first"] for r in results.values() if r["t_first"]]
        result_q.put(
            {
                "kind": "consumer",
                "errors": errors,
                "records": sum(r["records"] for r in results.values()),
                "lat": [x for r in results.values() for x in r["lat"]],
                "t_first": min(firsts) if firsts else 0.0,
                "t_last": max((r["t_last"] for r in results.values()), default=0.0),
                "cpu_s": sum(os.times()[:2]) - cpu0,
            }
        )
    except Exception:
        result_q.put({"kind": "consumer", "fatal": traceback.format_exc()})


# -- server processes: pids, RSS, CPU -----------------------------------------------------------


def discover_pids(address: str) -> dict[str, int]:
    """Finds the StreamHouse processes of a running server by its gRPC address (same host)."""
    port = address.rsplit(":", 1)[-1]
    candidates: dict[str, list[psutil.Process]] = {p: [] for p in PROGRAMS}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if len(cmd) >= 3 and cmd[-2] == "-m" and cmd[-1] in PROGRAMS:
            candidates[cmd[-1]].append(proc)
    data_dir = None
    pids: dict[str, int] = {}
    for proc in candidates["ingest"]:
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        if env.get("STREAMHOUSE_GRPC_LISTEN", "127.0.0.1:50051").rsplit(":", 1)[-1] == port:
            data_dir = env.get("STREAMHOUSE_DATA_DIR")
            pids["ingest"] = proc.pid
            break
    for name in PROGRAMS[1:]:
        for proc in candidates[name]:
            try:
                if proc.environ().get("STREAMHOUSE_DATA_DIR") == data_dir:
                    pids[name] = proc.pid
                    break
            except psutil.Error:
                continue
    return pids


class ServerMonitor:
    """Samples RSS of the server processes every 0.5 s; CPU time at phase marks."""

    def __init__(self, pids: dict[str, int], resolve=None, csv_path: str | None = None) -> None:
        self.pids = dict(pids)
        self.resolve = resolve  # name -> pid, used when a process restarted
        self.procs = {n: psutil.Process(p) for n, p in self.pids.items() if p}
        self.samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
        self.restarts: dict[str, int] = {}
        self.marks: dict[str, tuple[float, dict[str, float]]] = {}
        self.snapshots: dict[str, dict[int, tuple[str, float, float, bool]]] = {}
        self._stop = threading.Event()
        self._csv = open(csv_path, "w") if csv_path else None
        if self._csv:
            cols = ",".join(f"{n}_rss,{n}_anon" for n in PROGRAMS)
            self._csv.write(f"time_s,{cols}\n")
        self._t0 = time.time()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ServerMonitor:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        if self._csv:
            self._csv.close()

    def _proc(self, name: str) -> psutil.Process | None:
        proc = self.procs.get(name)
        if proc is not None and proc.is_running():
            return proc
        if self.resolve is None:
            return None
        pid = self.resolve(name)
        if not pid:
            return None
        if pid != self.pids.get(name):
            self.restarts[name] = self.restarts.get(name, 0) + 1
        self.pids[name] = pid
        self.procs[name] = psutil.Process(pid)
        return self.procs[name]

    def sample(self) -> None:
        now = time.time()
        row: dict[str, tuple[int, int]] = {}
        for name in PROGRAMS:
            try:
                proc = self._proc(name)
                if proc is None:
                    continue
                mem = proc.memory_info()
                row[name] = (mem.rss, mem.rss - mem.shared)
            except psutil.Error:
                continue
        self.samples.append((now, row))
        if self._csv:
            cells = []
            for name in PROGRAMS:
                rss, anon = row.get(name, (0, 0))
                cells.append(f"{rss},{anon}")
            self._csv.write(f"{now - self._t0:.1f},{','.join(cells)}\n")

    def _run(self) -> None:
        while not self._stop.wait(RSS_INTERVAL_S):
            self.sample()

    def cpu_times(self) -> dict[str, float]:
        """CPU seconds so far of each server process, of the machine and of this process."""
        machine = psutil.cpu_times()
        out = {
            MACHINE: sum(machine)
            - machine.idle
            - getattr(machine, "iowait", 0.0)
            - getattr(machine, "steal", 0.0)
            - getattr(machine, "guest", 0.0)
            - getattr(machine, "guest_nice", 0.0),
            STEAL: getattr(machine, "steal", 0.0),
            BENCH_MAIN: sum(os.times()[:2]),
        }
        for name in PROGRAMS:
            try:
                proc = self._proc(name)
                if proc is not None:
                    t = proc.cpu_times()
                    out[name] = t.user + t.system
            except psutil.Error:
                pass
        return out

    def mark(self, label: str) -> None:
        self.marks[label] = (time.time(), self.cpu_times())
        self.snapshots[label] = all_process_cpu()

    def cpu_percent(self, start: str, end: str) -> dict[str, float]:
        (t0, c0), (t1, c1) = self.marks[start], self.marks[end]
        wall = max(t1 - t0, 1e-9)
        return {n: 100 * (c1[n] - c0[n]) / wall for n in c1 if n in c0}

    def machine_split(self, start: str, end: str, client_cpu_s: float) -> dict[str, float]:
        """Where the machine's CPU went between two marks (100% = one core)."""
        cpu = self.cpu_percent(start, end)
        wall = max(self.marks[end][0] - self.marks[start][0], 1e-9)
        machine = cpu.pop(MACHINE)
        steal = cpu.pop(STEAL)
        client = 100 * client_cpu_s / wall + cpu.pop(BENCH_MAIN)
        server = sum(cpu.values())
        others = self._other_processes(start, end, wall)
        return {
            "top_other_processes": others,
            "cores": psutil.cpu_count(),
            "busy_pct": machine,
            "server_pct": server,
            "bench_client_pct": client,
            "other_pct": max(0.0, machine - server - client),
            "steal_pct": steal,
        }

    def _other_processes(self, start: str, end: str, wall: float) -> list[tuple[str, float]]:
        """The busiest processes that are neither the server nor this bench (100% = a core)."""
        t_start = self.marks[start][0]
        before, after = self.snapshots[start], self.snapshots[end]
        ours = set(self.pids.values())
        busy: list[tuple[str, float]] = []
        for pid, (name, created, cpu, mine) in after.items():
            if pid in ours or mine or before.get(pid, ("", 0, 0, False))[3]:
                continue
            if pid in before and before[pid][1] == created:
                delta = cpu - before[pid][2]
            elif created >= t_start:
                delta = cpu
            else:
                continue
            if delta > 0.01 * wall:
                busy.append((f"{pid} {name}", 100 * delta / wall))
        return sorted(busy, key=lambda x: x[1], reverse=True)[:5]

    def rss_report(self, t_start: float | None = None, t_end: float | None = None) -> dict:
        """RSS at the first sample at/after t_start, peak, and last sample at/before t_end."""
        rows = [
            (t, r)
            for t, r in self.samples
            if (t_start is None or t >= t_start - RSS_INTERVAL_S)
            and (t_end is None or t <= t_end + RSS_INTERVAL_S)
        ] or self.samples
        out = {}
        for name in PROGRAMS:
            series = [(t, r[name]) for t, r in rows if name in r]
            if not series:
                continue
            out[name] = {
                "rss_start": series[0][1][0],
                "rss_peak": max(v[0] for _, v in series),
                "rss_end": series[-1][1][0],
                "anon_start": series[0][1][1],
                "anon_peak": max(v[1] for _, v in series),
                "anon_end": series[-1][1][1],
            }
        return out


def all_process_cpu() -> dict[int, tuple[str, float, float, bool]]:
    """pid -> (short command line, create time, CPU seconds, is this bench or its child)."""
    me = psutil.Process()
    mine = {me.pid} | {c.pid for c in me.children(recursive=True)}
    out = {}
    for proc in psutil.process_iter(["cmdline", "name", "create_time", "cpu_times"]):
        info = proc.info
        if info["cpu_times"] is None:
            continue
        cmd = " ".join(info["cmdline"] or [info["name"] or "?"])
        cpu = info["cpu_times"].user + info["cpu_times"].system
        out[proc.pid] = (cmd[:80], info["create_time"], cpu, proc.pid in mine)
    return out


def start_profilers(
    pids: dict[str, int], seconds: int, out_dir: Path, rate: int, phase: str
) -> list:
    """py-spy record (collapsed stacks, no pausing of the target) on every server process."""
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in pids.items():
        out = out_dir / f"{phase}-{name}.txt"
        cmd = ["py-spy", "record", "--nonblocking", "-r", str(rate), "-d", str(seconds)]
        cmd += ["-f", "raw", "-o", str(out), "--pid", str(pid)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append((phase, name, out, proc))
    return procs


class Profiling:
    """Starts py-spy on the server processes `delay` s into a phase, if asked to."""

    def __init__(self, args: argparse.Namespace, monitor: ServerMonitor) -> None:
        self.args = args
        self.monitor = monitor
        self.procs: list = []
        self.timers: list[threading.Timer] = []

    def phase_started(self, phase: str) -> None:
        a = self.args
        if not a.profile or a.profile_phase not in (phase, "both"):
            return
        timer = threading.Timer(
            a.profile_delay,
            lambda: self.procs.extend(
                start_profilers(
                    self.monitor.pids, a.profile, Path(a.profile_dir), a.profile_rate, phase
                )
            ),
        )
        timer.start()
        self.timers.append(timer)

    def finish(self) -> dict:
        for timer in self.timers:
            timer.cancel()
        out: dict = {}
        for phase, name, path, proc in self.procs:
            try:
                proc.wait(timeout=self.args.profile + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out.setdefault(phase, {})[name] = summarize_profile(
                path, self.args.profile, self.args.profile_rate
            )
        return out


def summarize_profile(path: Path, seconds: float, rate: int, top: int = 12) -> dict:
    """Top functions (and lines) by own time from a py-spy raw (collapsed stacks) file.

    `pct_wall` is the share of wall time a function was at the top of a sampled stack (100% =
    one core busy in it). py-spy samples every thread that is not idle, so a process's total can
    exceed 100%; time in C code is charged to the Python frame that called it (for instance
    `Runner.run` is the uvloop/grpc C event loop, `Thread.run` grpc's completion-queue poller).
    """
    own: dict[str, int] = {}
    lines: dict[str, int] = {}
    total = 0
    if not path.exists():
        return {"functions": [], "lines": [], "samples": 0, "pct_wall": 0.0}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        func, _, loc = leaf.partition(" (")
        file, _, lineno = loc.rstrip(")").rpartition(":")
        key = f"{func} ({_short(file)})"
        own[key] = own.get(key, 0) + n
        where = f"{_short(file)}:{lineno} {func}"
        lines[where] = lines.get(where, 0) + n
    expected = max(seconds * rate, 1)

    def ranked(table: dict[str, int], limit: int) -> list[dict]:
        rows = sorted(table.items(), key=lambda kv: kv[1], reverse=True)[:limit]
        return [{"where": k, "samples": v, "pct_wall": 100 * v / expected} for k, v in rows]

    return {
        "functions": ranked(own, top),
        "lines": ranked(lines, 6),
        "samples": total,
        "pct_wall": 100 * total / expected,
    }


def _short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


# -- the run ------------------------------------------------------------------------------------


def code_version() -> str:
    """`git describe --always --dirty` of the repo this bench runs from ("" when unknown)."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _merge_errors(items: list[dict]) -> dict[str, int]:
    errors: dict[str, int] = {}
    for item in items:
        for code, n in item.get("errors", {}).items():
            errors[code] = errors.get(code, 0) + n
    return errors


def _servers_only(cpu: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in cpu.items() if k in PROGRAMS}


def stack_env(args: argparse.Namespace) -> dict[str, str]:
    """Production defaults (streamhouse.testing shrinks rings and cache for tests)."""
    from streamhouse.config import Settings
    from streamhouse.testing import TEST_SETTINGS

    defaults = Settings()
    env = {}
    for key in TEST_SETTINGS:
        field = key.removeprefix("STREAMHOUSE_").lower()
        env[key] = str(getattr(defaults, field))
    env["STREAMHOUSE_FLUSH_INTERVAL_MS"] = str(args.flush_interval_ms)
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def run(args: argparse.Namespace) -> dict:
    ctx = mp.get_context("spawn")
    stack = None
    tmp = None
    result: dict = {"config": {k: v for k, v in vars(args).items()}, "code": code_version()}
    try:
        if args.address:
            address = args.address
            if args.pids:
                pids = {k: int(v) for k, v in (p.split("=") for p in args.pids)}
                resolve = None
            else:
                pids = discover_pids(address)

                def resolve(name: str, address: str = address) -> int:
                    return discover_pids(address).get(name, 0)
        else:
            from streamhouse.testing import Stack

            tmp = tempfile.mkdtemp(prefix="sh-bench-", dir=args.data_root)
            stack = Stack(tmp, env=stack_env(args))
            log(args, f"starting a stack in {tmp} ...")
            stack.start()
            address = stack.grpc_address
            pids = {p: stack.pid(p) for p in PROGRAMS}
            resolve = stack.pid
            result["config"]["stack_env"] = stack_env(args)
        result["address"] = address
        result["pids"] = pids
        log(args, f"server {address}, pids {pids}")

        topic = args.topic or f"bench-{int(time.time())}-{os.getpid()}"
        channel, stub = open_stub(address)
        try:
            stub.CreateTopic(pb.CreateTopicRequest(name=topic, partitions=args.partitions))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        info = stub.GetTopic(pb.GetTopicRequest(name=topic)).topic
        partitions = info.partitions
        hwm0 = {p.partition: p.high_watermark for p in info.partition_info}
        result["topic"] = topic

        monitor = ServerMonitor(pids, resolve, args.rss_csv).start()
        batches_total = math.ceil(args.records / args.batch_size) if args.records else 0
        cfg = {
            "address": address,
            "topic": topic,
            "partitions": list(range(partitions)),
            "batch_size": args.batch_size,
            "record_size": args.record_size,
            "producers": args.producers,
            "inflight": args.inflight,
            "rate": args.rate,
            "duration": 0 if args.records else args.duration,
            "batches_per_producer": math.ceil(batches_total / args.producers)
            if batches_total
            else 0,
            "consume_api": args.consume_api,
            "max_records": args.max_records,
            "max_bytes": args.max_bytes,
            "max_wait_ms": args.max_wait_ms,
            "consume_timeout": args.consume_timeout,
        }
        live = args.consume_mode in ("live", "both") and args.consumers > 0
        catchup = args.consume_mode in ("catchup", "both") and args.consumers > 0
        assignment = [
            [p for p in range(partitions) if p % args.consumers == c % partitions]
            for c in range(args.consumers)
        ]

        # ---- produce (+ live consumers) ----
        prod_progress = ctx.RawArray("q", args.producers * args.inflight)
        start_at = ctx.RawValue("d", 0.0)
        go = ctx.Event()
        ready = ctx.Queue()
        results = ctx.Queue()
        children = []
        for i in range(args.producers):
            children.append(
                ctx.Process(
                    target=producer_main,
                    args=(i, cfg, prod_progress, ready, go, start_at, results),
                )
            )
        start_offsets = ctx.RawArray("q", [hwm0.get(p, 0) for p in range(partitions)])
        end_offsets = ctx.RawArray("q", [-1] * partitions)
        live_progress = ctx.RawArray("q", [hwm0.get(p, 0) for p in range(partitions)])
        if live:
            # Live consumers run while producing, then up to --consume-timeout to catch up.
            produce_time = args.duration if not args.records else args.consume_timeout
            live_cfg = dict(
                cfg, sample_latency=True, consume_timeout=produce_time + args.consume_timeout
            )
            for c in range(args.consumers):
                children.append(
                    ctx.Process(
                        target=consumer_main,
                        args=(
                            c,
                            live_cfg,
                            assignment[c],
                            start_offsets,
                            end_offsets,
                            live_progress,
                            ready,
                            go,
                            results,
                        ),
                    )
                )
        for child in children:
            child.start()
        for _ in children:
            ready.get(timeout=120)
        monitor.mark("produce_start")
        start_at.value = time.time() + 0.1
        go.set()
        profiling = Profiling(args, monitor)
        profiling.phase_started("produce")
        produced = []
        consumed_live = []
        last_report = time.time()
        last_total = 0
        n_prod = args.producers
        while len(produced) < n_prod:
            try:
                item = results.get(timeout=1.0)
            except Exception:
                item = None
            if item is not None:
                if "fatal" in item:
                    raise RuntimeError(f"{item['kind']} failed:\n{item['fatal']}")
                (produced if item["kind"] == "producer" else consumed_live).append(item)
            if args.progress and time.time() - last_report >= args.progress:
                total = sum(prod_progress)
                rate = (total - last_total) / (time.time() - last_report)
                seen = sum(live_progress[p] - start_offsets[p] for p in range(partitions))
                lag = f" live-consumed {seen:,}" if live else ""
                rss = {n: v[0] >> 20 for n, v in monitor.samples[-1][1].items()}
                log(
                    args,
                    f"  t={time.time() - start_at.value:6.1f}s produced {total:>12,} "
                    f"({rate:,.0f} rec/s){lag}  RSS MiB {rss}",
                )
                last_report, last_total = time.time(), total
        monitor.mark("produce_end")
        t_prod_end = time.time()
        info = stub.GetTopic(pb.GetTopicRequest(name=topic)).topic
        hwm1 = {p.partition: p.high_watermark for p in info.partition_info}
        for p in range(partitions):
            end_offsets[p] = hwm1.get(p, 0)
        while len(consumed_live) < (args.consumers if live else 0):
            item = results.get(timeout=args.consume_timeout + 60)
            if "fatal" in item:
                raise RuntimeError(f"{item['kind']} failed:\n{item['fatal']}")
            consumed_live.append(item)
        monitor.mark("live_end")
        for child in children:
            child.join(timeout=30)

        p_records = sum(r["records"] for r in produced)
        p_t0 = min(r["t_first"] for r in produced if r["t_first"]) if p_records else 0
        p_t1 = max(r["t_last"] for r in produced) if p_records else 0
        p_secs = max(p_t1 - p_t0, 1e-9)
        warm_until = p_t0 + args.warmup
        prod_lat = [lat for r in produced for (t, lat) in r["lat"] if t >= warm_until]
        errors = _merge_errors(produced)
        result["produce"] = {
            "records": p_records,
            "seconds": p_secs,
            "records_per_s": p_records / p_secs,
            "mb_per_s": p_records * args.record_size / p_secs / 1e6,
            "target_records_per_s": args.rate,
            "errors": errors,
            "latency": latency_summary(prod_lat),
            "client_cpu_pct": 100 * sum(r["cpu_s"] for r in produced) / p_secs,
        }
        result["server_cpu_pct_produce"] = _servers_only(
            monitor.cpu_percent("produce_start", "produce_end")
        )
        client_s = sum(r["cpu_s"] for r in produced) + sum(r["cpu_s"] for r in consumed_live)
        result["machine_produce"] = monitor.machine_split("produce_start", "live_end", client_s)
        if live:
            c_records = sum(r["records"] for r in consumed_live)
            c_t0 = min((r["t_first"] for r in consumed_live if r["t_first"]), default=0)
            c_t1 = max((r["t_last"] for r in consumed_live), default=0)
            c_secs = max(c_t1 - c_t0, 1e-9)
            e2e = [x for r in consumed_live for x in r["lat"]]
            result["consume_live"] = {
                "records": c_records,
                "seconds": c_secs,
                "records_per_s": c_records / c_secs,
                "mb_per_s": c_records * args.record_size / c_secs / 1e6,
                "latency_e2e": latency_summary(e2e),
                "tail_after_produce_s": max(0.0, c_t1 - t_prod_end),
                "client_cpu_pct": 100 * sum(r["cpu_s"] for r in consumed_live) / c_secs,
                "errors": _merge_errors(consumed_live),
            }
        result["rss_produce"] = monitor.rss_report(p_t0, p_t1)

        # ---- catch-up consume ----
        if catchup:
            c_children = []
            ready = ctx.Queue()
            results = ctx.Queue()
            go = ctx.Event()
            progress = ctx.RawArray("q", partitions)
            ccfg = dict(cfg, sample_latency=False)
            for c in range(args.consumers):
                c_children.append(
                    ctx.Process(
                        target=consumer_main,
                        args=(
                            c,
                            ccfg,
                            assignment[c],
                            start_offsets,
                            end_offsets,
                            progress,
                            ready,
                            go,
                            results,
                        ),
                    )
                )
            for child in c_children:
                child.start()
            for _ in c_children:
                ready.get(timeout=120)
            monitor.mark("catchup_start")
            t_go = time.time()
            go.set()
            profiling.phase_started("catchup")
            items = []
            last_report = time.time()
            while len(items) < len(c_children):
                try:
                    item = results.get(timeout=1.0)
                except Exception:
                    item = None
                if item is not None:
                    if "fatal" in item:
                        raise RuntimeError(f"consumer failed:\n{item['fatal']}")
                    items.append(item)
                if args.progress and time.time() - last_report >= args.progress:
                    done = sum(progress[p] - start_offsets[p] for p in range(partitions))
                    log(args, f"  catch-up t={time.time() - t_go:6.1f}s consumed {done:>12,}")
                    last_report = time.time()
            monitor.mark("catchup_end")
            for child in c_children:
                child.join(timeout=30)
            c_records = sum(r["records"] for r in items)
            c_t1 = max(r["t_last"] for r in items)
            c_secs = max(c_t1 - t_go, 1e-9)
            result["consume_catchup"] = {
                "records": c_records,
                "seconds": c_secs,
                "records_per_s": c_records / c_secs,
                "mb_per_s": c_records * args.record_size / c_secs / 1e6,
                "client_cpu_pct": 100 * sum(r["cpu_s"] for r in items) / c_secs,
                "errors": _merge_errors(items),
            }
            result["server_cpu_pct_catchup"] = _servers_only(
                monitor.cpu_percent("catchup_start", "catchup_end")
            )
            result["machine_catchup"] = monitor.machine_split(
                "catchup_start", "catchup_end", sum(r["cpu_s"] for r in items)
            )
        monitor.stop()
        result["rss"] = monitor.rss_report()
        result["restarts"] = monitor.restarts
        if args.profile:
            result["profile"] = profiling.finish()
        channel.close()
        return result
    finally:
        if stack is not None:
            log(args, "stopping the stack ...")
            stack.stop()
        if tmp and args.save_logs:
            shutil.copytree(Path(tmp) / "logs", args.save_logs, dirs_exist_ok=True)
        if tmp and not args.keep_data:
            shutil.rmtree(tmp, ignore_errors=True)


def log(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr, flush=True)


def mib(n: int) -> str:
    return f"{n / (1 << 20):7.1f}"


def print_table(r: dict) -> None:
    c = r["config"]
    rate = f"{c['rate']:,} rec/s target" if c["rate"] else "max rate"
    print(
        f"StreamHouse gRPC bench @ {r['address']}: {c['record_size']} B records, batches of "
        f"{c['batch_size']}, {c['partitions']} partitions, {c['producers']} producers x "
        f"{c['inflight']} in flight, {c['consumers']} consumers ({c['consume_api']}), {rate}, "
        + (f"flush {c['flush_interval_ms']} ms" if not c["address"] else "external server")
        + (f"; code {r['code']}" if r.get("code") else "")
    )
    print()
    head = f"{'phase':<22}{'records':>14}{'seconds':>9}{'records/s':>13}{'MB/s':>9}"
    print(f"{head}{'client cpu':>12}")
    for key, label in (
        ("produce", "produce"),
        ("consume_live", "consume (live tail)"),
        ("consume_catchup", "consume (catch-up)"),
    ):
        if key in r:
            x = r[key]
            print(
                f"{label:<22}{x['records']:>14,}{x['seconds']:>9.1f}{x['records_per_s']:>13,.0f}"
                f"{x['mb_per_s']:>9.1f}{x['client_cpu_pct']:>11.0f}%"
            )
    for key in ("produce", "consume_live", "consume_catchup"):
        if r.get(key, {}).get("errors"):
            print(f"{key} errors (retried): {r[key]['errors']}")
    print()
    print(f"{'latency (ms)':<26}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}{'samples':>9}")
    rows = [("produce (ProduceBatch)", r["produce"]["latency"])]
    if "consume_live" in r:
        rows.append(("end-to-end", r["consume_live"]["latency_e2e"]))
    for label, s in rows:
        print(
            f"{label:<26}{s['p50_ms']:>8.1f}{s['p90_ms']:>8.1f}{s['p99_ms']:>8.1f}"
            f"{s['max_ms']:>8.1f}{s['samples']:>9,}"
        )
    print()
    cpu_p = r.get("server_cpu_pct_produce", {})
    cpu_c = r.get("server_cpu_pct_catchup", {})
    print(
        f"{'process':<11}{'RSS start':>10}{'peak':>9}{'end':>9}{'anon peak':>11}"
        f"{'cpu% prod':>11}{'cpu% c-up':>11}   (MiB)"
    )
    for name, m in r["rss"].items():
        cu = f"{cpu_c[name]:>10.0f}%" if name in cpu_c else f"{'-':>11}"
        print(
            f"{name:<11}{mib(m['rss_start']):>10}{mib(m['rss_peak']):>9}{mib(m['rss_end']):>9}"
            f"{mib(m['anon_peak']):>11}{cpu_p.get(name, 0):>10.0f}%{cu}"
        )
    for key, label in (("machine_produce", "produce"), ("machine_catchup", "catch-up")):
        if key in r:
            m = r[key]
            print(
                f"machine CPU during {label}: {m['busy_pct']:.0f}% busy of "
                f"{100 * m['cores']}% = server {m['server_pct']:.0f}% + bench client "
                f"{m['bench_client_pct']:.0f}% + other processes {m['other_pct']:.0f}% "
                f"(hypervisor steal {m['steal_pct']:.0f}%)"
            )
            for name, pct in m["top_other_processes"]:
                print(f"    other: {pct:4.0f}%  {name}")
    if r.get("restarts"):
        print(f"restarted during the run: {r['restarts']}")
    for phase, procs in r.get("profile", {}).items():
        for name, prof in procs.items():
            print()
            print(
                f"py-spy {name} during {phase}: {prof['pct_wall']:.0f}% of a core sampled busy; "
                "top functions by own time (% of wall time)"
            )
            for row in prof["functions"]:
                print(f"  {row['pct_wall']:6.1f}%  {row['where']}")
            print("  hottest lines:")
            for row in prof["lines"]:
                print(f"  {row['pct_wall']:6.1f}%  {row['where']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Produce and consume over gRPC against a StreamHouse stack.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    load = ap.add_argument_group("load")
    amount = load.add_mutually_exclusive_group()
    amount.add_argument("--records", type=int, default=0, help="total records to produce")
    amount.add_argument(
        "--duration", type=float, default=30.0, help="seconds to produce (ignored with --records)"
    )
    load.add_argument("--record-size", type=int, default=100, help="value bytes per record")
    load.add_argument("--batch-size", type=int, default=1000, help="records per ProduceBatch")
    load.add_argument("--partitions", type=int, default=3)
    load.add_argument("--producers", type=int, default=2, help="producer processes")
    load.add_argument(
        "--inflight",
        type=int,
        default=16,
        help="concurrent ProduceBatch calls (threads) per producer process",
    )
    load.add_argument(
        "--consumers",
        type=int,
        default=3,
        help="consumer processes (partition p goes to consumer p %% consumers; "
        "more consumers than partitions read partitions more than once)",
    )
    load.add_argument(
        "--rate",
        type=int,
        default=0,
        help="target records/s over all producers (0 = as fast as possible)",
    )
    load.add_argument(
        "--consume-mode",
        choices=("both", "live", "catchup", "none"),
        default="both",
        help="live: tail while producing (end-to-end latency); catchup: read "
        "everything back after producing (consume throughput)",
    )
    load.add_argument(
        "--consume-api",
        choices=("consume", "subscribe"),
        default="consume",
        help="Consume calls (measured faster) or one Subscribe stream per partition",
    )
    load.add_argument(
        "--max-records",
        type=int,
        default=100_000,
        help="max_records per Consume / Subscribe message",
    )
    load.add_argument(
        "--max-bytes",
        type=int,
        default=8 << 20,
        help="max_bytes per Consume / Subscribe message (server caps it)",
    )
    load.add_argument("--max-wait-ms", type=int, default=200, help="Consume long-poll wait")
    load.add_argument(
        "--consume-timeout",
        type=float,
        default=600,
        help="consumers give up this long after the catch-up starts or producing ends",
    )
    load.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="produce latencies of batches sent in the first N s are not counted",
    )
    load.add_argument("--topic", default="", help="topic (default: a fresh bench-* topic)")
    srv = ap.add_argument_group("server")
    srv.add_argument(
        "--address", default="", help="host:port of a running server (default: start a stack)"
    )
    srv.add_argument(
        "--pids",
        nargs="*",
        default=[],
        help="with --address: NAME=PID of the server processes (default: found by the gRPC port)",
    )
    srv.add_argument(
        "--flush-interval-ms",
        type=int,
        default=50,
        help="STREAMHOUSE_FLUSH_INTERVAL_MS of the started stack",
    )
    srv.add_argument(
        "--env",
        action="append",
        default=[],
        help="extra STREAMHOUSE_X=Y for the started stack (repeatable)",
    )
    srv.add_argument("--data-root", default=None, help="where the temporary data dir goes")
    srv.add_argument("--keep-data", action="store_true", help="keep the stack's data dir")
    srv.add_argument("--save-logs", default=None, help="copy the stack's logs to this dir")
    out = ap.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the result as JSON")
    out.add_argument(
        "--progress", type=float, default=10.0, help="progress line every N s on stderr (0: none)"
    )
    out.add_argument("--quiet", action="store_true", help="no progress on stderr")
    out.add_argument("--rss-csv", default=None, help="write every RSS sample to this CSV")
    out.add_argument(
        "--profile",
        type=int,
        default=0,
        help="py-spy record every server process for N s during the produce phase",
    )
    out.add_argument(
        "--profile-delay",
        type=float,
        default=5.0,
        help="seconds into a phase before profiling starts",
    )
    out.add_argument("--profile-rate", type=int, default=50, help="py-spy samples per second")
    out.add_argument(
        "--profile-phase",
        choices=("produce", "catchup", "both"),
        default="produce",
        help="which phase --profile samples",
    )
    out.add_argument(
        "--profile-dir",
        default="/tmp/streamhouse-bench-profiles",
        help="where the py-spy collapsed stacks are written",
    )
    args = ap.parse_args(argv)
    if args.producers < 1 or args.inflight < 1 or args.batch_size < 1 or args.partitions < 1:
        ap.error("--producers, --inflight, --batch-size and --partitions must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
