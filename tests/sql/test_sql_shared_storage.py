"""SQL against a stack on PostgreSQL metadata and SeaweedFS S3: blocks come by S3 range GETs,
the catalog lives in the metadata store (so any machine with the same settings sees it), and
"the last minute" reads only the last minute's blocks."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from metadata.interface import open_store
from streamhouse.testing import Stack

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def shared_stack(tmp_path: pathlib.Path, postgres_dsn: str, seaweed: Any) -> Iterator[Stack]:
    env = seaweed.env()
    env["STREAMHOUSE_OBJECT_STORE"] = f"s3://{seaweed.bucket}/sql-{uuid.uuid4().hex[:12]}"
    env["STREAMHOUSE_METADATA"] = postgres_dsn
    with Stack(tmp_path / "data", env=env) as running:
        yield running


def run_sql(env: dict[str, str], sql: str, *args: str) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "sql", "query", sql, *args],
        env=full,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{sql!r} failed: {proc.stderr}"
    return proc


def produce(stack: Stack, topic: str, records: list[tuple[int, bytes, int]]) -> None:
    p = Producer({"bootstrap.servers": stack.kafka_address, "linger.ms": 5})
    failed: list[str] = []
    acked: list[int] = []

    def done(err: Any, msg: Any) -> None:
        (failed.append(str(err)) if err else acked.append(msg.offset()))

    for partition, value, ts in records:
        p.produce(topic, value=value, partition=partition, timestamp=ts, on_delivery=done)
    assert p.flush(60) == 0
    assert failed == [] and len(acked) == len(records)


def test_last_minute_reads_only_the_last_minutes_blocks_over_s3(
    shared_stack: Stack, tmp_path: pathlib.Path
) -> None:
    admin = AdminClient({"bootstrap.servers": shared_stack.kafka_address})
    for fut in admin.create_topics([NewTopic("clicks", 2, 1)]).values():
        fut.result(timeout=30)
    now = time.time_ns() // 1_000_000
    old = [
        (i % 2, json.dumps({"page": f"p{i % 5}", "ms": i}).encode(), now - 600_000 + i)
        for i in range(400)
    ]
    for start in range(0, len(old), 100):  # a few blocks of old records
        produce(shared_stack, "clicks", old[start : start + 100])
    recent = [
        (i % 2, json.dumps({"page": f"p{i % 3}", "ms": i}).encode(), now + i) for i in range(60)
    ]
    produce(shared_stack, "clicks", recent)

    run_sql(
        shared_stack.env,
        "CREATE STREAM clicks_s (page VARCHAR, ms BIGINT) WITH (topic = 'clicks')",
    )
    proc = run_sql(
        shared_stack.env,
        "SELECT page, count(*) AS n FROM clicks_s "
        "WHERE _timestamp > now() - INTERVAL '1 minute' GROUP BY page ORDER BY page",
        "--format",
        "jsonl",
        "--stats",
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert rows == [{"page": f"p{k}", "n": 20} for k in range(3)]
    stats = json.loads(proc.stderr.splitlines()[-1])

    store = open_store(shared_stack.settings.metadata_target)
    try:
        topic = store.get_topic("clicks")
        assert topic is not None
        blocks = [b for p in range(2) for b in store.find_blocks(topic.topic_id, p, 0, 10_000)]
        # the catalog entry is in the metadata store, not in a local file
        entries = dict(store.list_catalog_entries("stream"))
        assert json.loads(entries["clicks_s"])["topic"] == "clicks"
    finally:
        store.close()
    recent_blocks = [b for b in blocks if b.max_timestamp >= now]
    assert 0 < len(recent_blocks) < len(blocks)
    assert stats["blocks_read"] == len(recent_blocks)
    assert stats["bytes_read"] == sum(b.byte_length for b in recent_blocks)

    # another machine with the same settings but its own data dir sees the stream
    elsewhere = dict(shared_stack.env)
    elsewhere["STREAMHOUSE_DATA_DIR"] = str(tmp_path / "elsewhere")
    proc = run_sql(elsewhere, "SELECT count(*) AS n FROM clicks_s", "--format", "jsonl")
    assert json.loads(proc.stdout) == {"n": 460}
