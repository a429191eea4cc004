"""One scenario on one broker: the load processes, the sampling loop, and the figures of each
phase (see bench/harness/__init__.py for the result format)."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.harness import kafka_load
from bench.harness.servers import ROOT, ObjectStore, Server, cpu_seconds

SCENARIOS = ("produce", "consume", "tail", "e2e")
GB = 1_000_000_000  # GB in the figures per GB: 10^9 bytes of record values
SAMPLE_S = 0.5  # throughput sampling period
PROFILE_RATE = 50  # py-spy samples per second
GRPC_BENCH_PROGRAMS = ("ingest", "segmenter", "uploader", "reader")  # its --pids names


@dataclass
class Config:
    scenario: str
    protocol: str = "kafka"
    record_size: int = 100
    partitions: int = 1
    producers: int = 1
    consumers: int = 1
    duration: float = 20.0
    records: int = 0
    rate: float = 0.0
    linger_ms: float = 5.0  # the load producers' linger.ms
    acks: str = "all"
    compression: str = "none"
    probe_rate: float = 100.0
    sample_every: int = 1000
    progress: float = 2.0
    timeout: float = 600.0
    grpc_args: list[str] = field(default_factory=list)
    profile: float = 0.0  # seconds of py-spy on each StreamHouse process, 1 s into a phase
    profile_dir: str = ""


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "count": len(ordered),
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": ordered[-1],
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _wait(conn: Any, what: str, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError(f"{what} did not answer within {timeout:.0f} s")
    return conn.recv()


def _answer(conn: Any, answered: set[Any], what: str) -> Any:
    answered.add(conn)
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(f"{what} exited without its result (see its traceback above)") from None


def high_watermarks(bootstrap: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "harness-watermarks"})
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(partitions)
        ]
    finally:
        consumer.close()


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=60)


def run_kafka(server: Server, store: ObjectStore, cfg: Config, label: str) -> dict[str, Any]:
    topic = f"harness-{cfg.scenario}-{cfg.partitions}p-{cfg.record_size}b-{int(time.time())}"
    create_topic(server.bootstrap, topic, cfg.partitions)
    high_watermarks(server.bootstrap, topic, cfg.partitions)  # the topic is served
    phases = []
    if cfg.scenario in ("produce", "consume"):
        phases.append(_phase(server, store, cfg, topic, "produce", label, produce=True, tail=False))
        if cfg.scenario == "consume":
            phases.append(
                _phase(server, store, cfg, topic, "consume", label, produce=False, tail=False)
            )
    else:
        phases.append(
            _phase(server, store, cfg, topic, "produce+tail", label, produce=True, tail=True)
        )
    return {"broker": server.name, "label": label, "topic": topic, "phases": phases}


def _phase(
    server: Server,
    store: ObjectStore,
    cfg: Config,
    topic: str,
    name: str,
    label: str,
    *,
    produce: bool,
    tail: bool,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parts = cfg.partitions
    procs: list[Any] = []
    prod_conns: list[Any] = []
    prod_counters: list[Any] = []
    cons_conns: list[Any] = []
    cons_counters: list[Any] = []
    ends = ctx.RawArray("q", [-1] * parts)
    probe_conn = None
    try:
        if produce:
            per_records = -(-cfg.records // cfg.producers) if cfg.records else 0
            for _ in range(cfg.producers):
                parent, child = ctx.Pipe()
                counter = ctx.RawValue("q", 0)
                proc = ctx.Process(
                    target=kafka_load.producer_main,
                    args=(
                        server.bootstrap,
                        topic,
                        cfg.record_size,
                        cfg.acks,
                        cfg.compression,
                        0 if cfg.records else cfg.duration,
                        per_records,
                        cfg.rate / cfg.producers,
                        counter,
                        child,
                        cfg.linger_ms,
                    ),
                    daemon=True,
                )
                procs.append(proc)
                prod_conns.append(parent)
                prod_counters.append(counter)
            if cfg.probe_rate > 0:
                probe_conn, child = ctx.Pipe()
                procs.append(
                    ctx.Process(
                        target=kafka_load.probe_main,
                        args=(
                            server.bootstrap,
                            topic,
                            cfg.probe_rate,
                            cfg.record_size,
                            cfg.acks,
                            child,
                        ),
                        daemon=True,
                    )
                )
        consumers = cfg.consumers if (tail or not produce) else 0
        if consumers:
            hwm = high_watermarks(server.bootstrap, topic, parts)
            for i in range(consumers):
                if tail:  # every consumer reads every partition from where the run starts
                    mine = list(range(parts))
                    start = [hwm[p] for p in mine]
                else:  # catch-up: partitions split; more consumers than partitions read twice
                    mine = [p for p in range(parts) if p % consumers == i] or [i % parts]
                    start = [-2] * len(mine)
                parent, child = ctx.Pipe()
                counter = ctx.RawValue("q", 0)
                procs.append(
                    ctx.Process(
                        target=kafka_load.consumer_main,
                        args=(
                            server.bootstrap,
                            topic,
                            mine,
                            start,
                            ends,
                            cfg.sample_every,
                            cfg.timeout,
                            counter,
                            child,
                        ),
                        daemon=True,
                    )
                )
                cons_conns.append(parent)
                cons_counters.append(counter)
            if not tail:
                for p, h in enumerate(hwm):
                    ends[p] = h
        for proc in procs:
            proc.start()
        for conn in [*prod_conns, *cons_conns]:
            if _wait(conn, "a load process", 120) != "ready":
                raise RuntimeError("a load process did not start")
        if probe_conn is not None and _wait(probe_conn, "the latency probe", 120) != "ready":
            raise RuntimeError("the latency probe did not start")
        pids = server.pids()
        if store.proxy is not None:
            store.proxy.reset()
        cpu0 = cpu_seconds(pids)
        t0 = time.time()
        for conn in [*prod_conns, *cons_conns]:
            conn.send("go")
        spies = _start_profiles(server, cfg, f"{label}-{name}".replace("#", "-").replace("+", "-"))
        timeline: list[list[float]] = []
        prod_results: list[dict[str, Any]] = []
        cons_results: list[dict[str, Any]] = []
        probe: dict[str, Any] = {"samples": [], "errors": [], "error_count": 0}
        answered: set[Any] = set()  # a pipe whose process answered (and exited) reads EOF
        next_log = t0 + cfg.progress
        while len(prod_results) < len(prod_conns) or len(cons_results) < len(cons_conns):
            time.sleep(SAMPLE_S)  # the sampling period of throughput over time
            now = time.time()
            produced = sum(c.value for c in prod_counters)
            consumed = sum(c.value for c in cons_counters)
            timeline.append([now - t0, produced, consumed])
            for conn in prod_conns:
                if conn not in answered and conn.poll():
                    prod_results.append(_answer(conn, answered, "a producer"))
                    if len(prod_results) == len(prod_conns) and probe_conn is not None:
                        probe_conn.send("stop")  # the probe covers the producing only
                        probe = _wait(probe_conn, "the latency probe", 120)
                    if len(prod_results) == len(prod_conns) and tail:
                        for p, h in enumerate(high_watermarks(server.bootstrap, topic, parts)):
                            ends[p] = h
            for conn in cons_conns:
                if conn not in answered and conn.poll():
                    cons_results.append(_answer(conn, answered, "a consumer"))
            if now >= next_log:
                rate_p = rate_c = 0.0
                if len(timeline) >= 2:
                    dt = timeline[-1][0] - timeline[-2][0]
                    rate_p = (timeline[-1][1] - timeline[-2][1]) / dt
                    rate_c = (timeline[-1][2] - timeline[-2][2]) / dt
                log(
                    f"  [{label} {name}] t={now - t0:6.1f}s produced {produced:>12,} "
                    f"({rate_p:>10,.0f}/s) consumed {consumed:>12,} ({rate_c:>10,.0f}/s)"
                )
                next_log = now + cfg.progress
            if now - t0 > cfg.timeout + 330:
                raise RuntimeError(f"{name} on {label} ran past {cfg.timeout + 330:.0f} s")
        cpu1 = cpu_seconds(pids)
        traffic = store.proxy.traffic() if store.proxy is not None else {}
        counts = store.proxy.reset() if store.proxy is not None else {}
    finally:
        for proc in procs:
            if proc.pid is None:
                continue  # never started (an earlier one failed)
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    figures = _figures(
        name, cfg, t0, timeline, prod_results, cons_results, probe, cpu1, cpu0, counts, traffic
    )
    if spies:
        figures["profile"] = _finish_profiles(spies, cfg)
    return figures


def _start_profiles(server: Server, cfg: Config, tag: str) -> list[tuple[str, Path, Any]]:
    """py-spy record (raw collapsed stacks, not pausing the target) on each StreamHouse
    process for cfg.profile seconds, starting 1 s into the phase."""
    if cfg.profile <= 0 or server.name != "streamhouse":
        return []
    out = Path(cfg.profile_dir)
    out.mkdir(parents=True, exist_ok=True)
    spies = []
    for name, pid in server.pids().items():
        if name not in GRPC_BENCH_PROGRAMS:
            continue
        path = out / f"{tag}-{name}.txt"
        cmd = ["py-spy", "record", "--nonblocking", "-r", str(PROFILE_RATE), "-d"]
        cmd += [str(int(cfg.profile)), "-f", "raw", "-o", str(path), "--pid", str(pid)]
        spies.append(
            (
                name,
                path,
                subprocess.Popen(
                    ["sh", "-c", 'sleep 1; exec "$@"', "-", *cmd],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
            )
        )
    return spies


def _finish_profiles(spies: list[tuple[str, Path, Any]], cfg: Config) -> dict[str, Any]:
    from bench.grpc_bench import summarize_profile

    out = {}
    for name, path, proc in spies:
        proc.wait(cfg.profile + 60)
        prof = summarize_profile(path, cfg.profile, PROFILE_RATE, top=8)
        out[name] = {"file": str(path), "pct_wall": prof["pct_wall"], "top": prof["functions"]}
        log(f"  py-spy {name}: {prof['pct_wall']:.0f}% of a core busy; top own time:")
        for row in prof["functions"][:6]:
            log(f"    {row['pct_wall']:5.1f}%  {row['where']}")
    return out


def _figures(
    name: str,
    cfg: Config,
    t0: float,
    timeline: list[list[float]],
    prod: list[dict[str, Any]],
    cons: list[dict[str, Any]],
    probe: dict[str, Any],
    cpu1: dict[str, float],
    cpu0: dict[str, float],
    counts: dict[str, int],
    traffic: dict[str, int],
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "timeline": timeline}
    size = cfg.record_size
    produced_gb = consumed_gb = 0.0
    if prod:
        records = sum(r["records"] for r in prod)
        secs = max(r["t_last"] for r in prod) - min(r["t_first"] for r in prod)
        produced_gb = records * size / GB
        out["produce"] = {
            "records": records,
            "seconds": secs,
            "records_per_s": records / secs,
            "mb_per_s": records * size / 1e6 / secs,
            "failures": [f for r in prod for f in r["failures"]],
            "failure_count": sum(r["failure_count"] for r in prod),
            "client_cpu_s": sum(r["cpu_s"] for r in prod),
        }
        load = sorted(([t - t0, x * 1000] for r in prod for t, x in r["latency"]), key=_first)
        out["load_latency_ms"] = percentiles([x for _, x in load])
        out["load_latency_series"] = load
        lat = [s[1] * 1000 for s in probe["samples"]]
        out["produce_latency_ms"] = percentiles(lat)
        out["produce_latency_series"] = [[s[0] - t0, s[1] * 1000] for s in probe["samples"]]
        out["probe_errors"] = probe["error_count"]
    if cons:
        records = sum(r["records"] for r in cons)
        secs = max(r["t_last"] for r in cons) - t0
        if prod:  # tailing: from the first to the last record received
            secs = max(r["t_last"] for r in cons) - min(r["t_first"] for r in cons if r["t_first"])
        consumed_gb = records * size / GB
        e2e = [x for r in cons for x in r["e2e"]]
        out["consume"] = {
            "records": records,
            "seconds": secs,
            "records_per_s": records / secs,
            "mb_per_s": records * size / 1e6 / secs,
            "consumers": len(cons),
            "complete": all(r["complete"] for r in cons),
            "errors": sum(r["errors"] for r in cons),
            "client_cpu_s": sum(r["cpu_s"] for r in cons),
        }
        if prod:
            out["e2e_latency_ms"] = percentiles([x[1] for x in e2e])
            out["e2e_latency_series"] = [[x[0] - t0, x[1]] for x in e2e]
    out.update(_cost(cpu1, cpu0, counts, traffic, produced_gb, consumed_gb))
    out["store_counted"] = bool(traffic)
    return out


def _first(item: list[float]) -> float:
    return item[0]


def _cost(
    cpu1: dict[str, float],
    cpu0: dict[str, float],
    counts: dict[str, int],
    traffic: dict[str, int],
    produced_gb: float,
    consumed_gb: float,
) -> dict[str, Any]:
    cpu = {n: cpu1[n] - cpu0.get(n, 0.0) for n in cpu1}
    gb = produced_gb or consumed_gb
    return {
        "produced_gb": produced_gb,
        "consumed_gb": consumed_gb,
        "server_cpu_s": cpu,
        "server_cpu_s_per_gb": {n: v / gb for n, v in cpu.items()} if gb else {},
        "requests": counts,
        "requests_per_gb_produced": (
            {k: v / produced_gb for k, v in counts.items()} if produced_gb else {}
        ),
        "requests_per_gb_consumed": (
            {k: v / consumed_gb for k, v in counts.items()} if consumed_gb else {}
        ),
        "bytes_sent_to_store": traffic.get("sent", 0),
        "bytes_read_from_store": traffic.get("received", 0),
    }


def run_grpc(server: Server, store: ObjectStore, cfg: Config, label: str) -> dict[str, Any]:
    """gRPC scenarios run bench/grpc_bench.py against this server (its producers, consumers and
    figures; see bench/README.md): produce -> --consume-mode none, consume -> catchup,
    tail/e2e -> live. The object-store counts cover the whole grpc_bench run."""
    mode = {"produce": "none", "consume": "catchup", "tail": "live", "e2e": "live"}[cfg.scenario]
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "grpc_bench.py"),
        "--address",
        server.grpc_address,
        "--pids",
        *[
            f"{n}={p}"
            for n, p in server.pids().items()
            if n in ("ingest", "segmenter", "uploader", "reader")
        ],
        "--record-size",
        str(cfg.record_size),
        "--partitions",
        str(cfg.partitions),
        "--consumers",
        str(cfg.consumers),
        "--consume-mode",
        mode,
        "--progress",
        str(cfg.progress),
        "--json",
        *(["--records", str(cfg.records)] if cfg.records else ["--duration", str(cfg.duration)]),
        *(["--rate", str(int(cfg.rate))] if cfg.rate else []),
        *cfg.grpc_args,
    ]
    if store.proxy is not None:
        store.proxy.reset()
    pids = server.pids()
    cpu0 = cpu_seconds(pids)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=cfg.timeout + 600)
    if done.returncode != 0:
        raise RuntimeError(f"grpc_bench.py failed ({done.returncode}): {' '.join(cmd)}")
    cpu1 = cpu_seconds(pids)
    raw = json.loads(done.stdout)
    traffic = store.proxy.traffic() if store.proxy is not None else {}
    counts = store.proxy.reset() if store.proxy is not None else {}
    phase: dict[str, Any] = {"name": f"grpc {mode}", "timeline": [], "grpc_bench": raw}
    p = raw["produce"]
    phase["produce"] = {k: p[k] for k in ("records", "seconds", "records_per_s", "mb_per_s")}
    lat = p.get("latency") or {}
    phase["load_latency_ms"] = {  # ProduceBatch round trips of the load itself
        k: lat.get(f"{k}_ms", lat.get(k)) for k in ("p50", "p90", "p99", "max")
    }
    c = raw.get("consume_catchup") or raw.get("consume_live")
    if c:
        phase["consume"] = {k: c[k] for k in ("records", "seconds", "records_per_s", "mb_per_s")}
    produced_gb = p["records"] * cfg.record_size / GB
    consumed_gb = c["records"] * cfg.record_size / GB if c else 0.0
    phase.update(_cost(cpu1, cpu0, counts, traffic, produced_gb, consumed_gb))
    phase["store_counted"] = bool(traffic)
    return {"broker": server.name, "label": label, "topic": raw.get("topic"), "phases": [phase]}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=str))
