"""Produce latency at a fixed low rate, with the stack's own stage means (group commit).

One confluent-kafka producer (linger 0, acks=all) sends ``--rate`` records/s of ``--size``
bytes for ``--seconds`` to a fresh ``streamhouse.testing.Stack`` (local folder, or SeaweedFS
with ``--s3``); prints the delivery latency p50/p90/p99 and the means of the stack's
``streamhouse_produce_stage_seconds`` (ring wait, seal wait, PUT, commit) and segment sizes, so
the seal wait is seen apart from client and ingest queueing::

    python -m bench.seal_stages --rate 1000 --seconds 8 [--s3] [--env STREAMHOUSE_X=Y ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import shutil
import sys
import tempfile
import time
import urllib.request
from typing import Any

from confluent_kafka import Producer

from streamhouse.client import Client
from streamhouse.testing import Stack

ROOT = pathlib.Path(__file__).resolve().parent.parent
STAGES = ("ring_wait", "seal", "put", "commit")


def seaweed(root: pathlib.Path) -> Any:
    """The tests' SeaweedFS starter (tests/conftest.py), started under ``root``."""
    spec = importlib.util.spec_from_file_location("_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = module.SeaweedS3(root)
    server.root.mkdir(parents=True, exist_ok=True)
    server.start()
    return server


def produce(stack: Stack, rate: float, seconds: float, size: int) -> list[float]:
    """Delivery latencies (seconds) of records sent at ``rate`` for ``seconds``."""
    with Client(stack.grpc_address) as client:
        client.create_topic("seal-stages", 1)
    latencies: list[float] = []
    producer = Producer(
        {
            "bootstrap.servers": stack.kafka_address,
            "linger.ms": 0,
            "acks": "all",
            "enable.idempotence": False,
        }
    )
    producer.list_topics("seal-stages", timeout=30)
    value = b"x" * size
    started = time.perf_counter()
    sent = 0
    while time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        producer.produce(
            "seal-stages",
            value,
            on_delivery=lambda _err, _msg, t0=t0: latencies.append(time.perf_counter() - t0),
        )
        sent += 1
        due = started + sent / rate
        while (ahead := due - time.perf_counter()) > 0:
            producer.poll(ahead)
    producer.flush(60)
    return sorted(latencies)


def stage_means(stack: Stack) -> dict[str, tuple[float, float]]:
    """(mean seconds or bytes, count) per produce stage and for segment sizes."""
    values: dict[str, float] = {}
    url = f"http://{stack.metrics_address}/metrics"
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        if line.startswith(("streamhouse_produce_stage_seconds_", "streamhouse_segment_size")):
            name, _, number = line.rpartition(" ")
            values[name] = float(number)
    out = {}
    for stage in STAGES:
        count = values.get(f'streamhouse_produce_stage_seconds_count{{stage="{stage}"}}', 0.0)
        total = values.get(f'streamhouse_produce_stage_seconds_sum{{stage="{stage}"}}', 0.0)
        out[stage] = (total / count if count else 0.0, count)
    count = values.get('streamhouse_segment_size_bytes_count{role="segmenter"}', 0.0)
    total = values.get('streamhouse_segment_size_bytes_sum{role="segmenter"}', 0.0)
    out["segment_bytes"] = (total / count if count else 0.0, count)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="records per second")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--size", type=int, default=100, help="value bytes")
    ap.add_argument("--s3", action="store_true", help="SeaweedFS instead of a local folder")
    ap.add_argument("--env", action="append", default=[], help="STREAMHOUSE_X=Y (repeatable)")
    args = ap.parse_args()
    if args.rate <= 0 or args.seconds <= 0 or args.size <= 0:
        ap.error("--rate, --seconds and --size must be positive")
    env = {"STREAMHOUSE_FLUSH_INTERVAL_MS": "50"}  # the production default (tests use 20)
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("STREAMHOUSE_"):
            ap.error(f"--env {item!r}: use STREAMHOUSE_X=Y")
        env[key] = value
    work = pathlib.Path(tempfile.mkdtemp(prefix="seal-stages-"))
    store = seaweed(work / "seaweed") if args.s3 else None
    try:
        if store is not None:
            env.update(store.env())
        with Stack(work / "data", env=env) as stack:
            latencies = produce(stack, args.rate, args.seconds, args.size)
            means = stage_means(stack)
    finally:
        if store is not None:
            store.stop()
        shutil.rmtree(work, ignore_errors=True)
    if not latencies:
        sys.exit("no record was acknowledged")

    def pct(q: float) -> float:
        return latencies[min(int(len(latencies) * q), len(latencies) - 1)] * 1000

    print(
        f"{args.rate:,.0f} records/s x {args.size} B, {'SeaweedFS' if args.s3 else 'local'}: "
        f"{len(latencies)} acknowledged, p50 {pct(0.5):.1f} ms, p90 {pct(0.9):.1f} ms, "
        f"p99 {pct(0.99):.1f} ms"
    )
    for stage in STAGES:
        mean, count = means[stage]
        print(f"  {stage:<9} mean {mean * 1000:7.1f} ms over {count:,.0f}")
    mean, count = means["segment_bytes"]
    print(f"  segments  {count:,.0f}, mean {mean:,.0f} bytes")


if __name__ == "__main__":
    main()
