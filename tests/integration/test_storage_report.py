"""Storage visibility against a real stack: gRPC DescribeStorage, `streamctl storage` (table,
--json, --cost) and the numbers checked against the object store itself (its listing) and
against what was produced."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from streamhouse import objectstore
from streamhouse.client import Client, Record, StreamHouseError
from streamhouse.cost import Prices, Usage, estimate
from streamhouse.testing import Stack
from tests.faults import lifecycle_tools

REPO = pathlib.Path(__file__).resolve().parents[2]
GRACE_MS = 600_000  # the default lifecycle_grace_ms
# Only the passes a test runs, and no rewrites: every object stays as produced.
QUIET = {
    "STREAMHOUSE_LIFECYCLE_ENABLED": "false",
    "STREAMHOUSE_LIFECYCLE_COMPACTION_ENABLED": "false",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("storage") / "data", env=QUIET) as running:
        yield running


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.grpc_address) as c:
        yield c


def objects_in_store(stack: Stack) -> dict[str, int]:
    store = lifecycle_tools.open_objects(stack.env, stack.settings.object_store_url)

    async def listing() -> dict[str, int]:
        return {
            info.key: info.size
            async for page in objectstore.list_objects(store, "segments/")
            for info in page
        }

    return asyncio.run(listing())


def streamctl(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "STREAMHOUSE_ADDR"}
    return subprocess.run(
        [sys.executable, "-m", "streamhouse.streamctl", "--server", stack.grpc_address, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def storage_json(stack: Stack, *args: str) -> dict[str, Any]:
    done = streamctl(stack, "storage", "--json", *args)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0])


def run_pass(stack: Stack, at_ms: int) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "--once", "--now-ms", str(at_ms)],
        env=stack.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def produce(client: Client, topic: str, partition: int, count: int, ts: int, tag: str) -> None:
    records = [
        Record(key=f"k{i % 3}".encode(), value=f"{tag}-{i}".encode() * 20, timestamp_ms=ts)
        for i in range(count)
    ]
    response = client.produce_batch(topic, records, partition=partition)
    assert response.record_count == count


def test_an_empty_stack_reports_nothing_stored(client: Client) -> None:
    report = client.describe_storage()
    assert list(report.topics) == []
    assert (report.objects, report.bytes_stored, report.bytes_live) == (0, 0, 0)
    assert (report.dead_objects, report.small_objects, report.segments_created_last_hour) == (
        0,
        0,
        0,
    )
    assert report.small_object_bytes == 8 * 1024 * 1024  # the server's setting
    assert report.answered_by
    assert abs(report.now_ms - now_ms()) < 60_000


def test_storage_per_topic_and_in_total_matches_the_bucket(stack: Stack, client: Client) -> None:
    t0 = now_ms() - 3_600_000
    client.create_topic("alpha", partitions=2)
    client.create_topic("beta", partitions=1)
    client.create_topic("gamma", partitions=1, config={"cleanup.policy": "compact"})
    # Each produce is acknowledged before the next one: a segment object each.
    produce(client, "alpha", 0, 10, t0 + 5, "a0")
    produce(client, "alpha", 1, 20, t0 + 7, "a1")
    produce(client, "alpha", 0, 5, t0 + 9, "a0b")
    produce(client, "beta", 0, 8, t0 + 3, "b")
    produce(client, "gamma", 0, 6, t0 + 11, "g")

    bucket = objects_in_store(stack)
    assert len(bucket) == 5, bucket
    report = client.describe_storage()
    assert report.objects == 5
    assert report.bytes_stored == sum(bucket.values())
    assert 0 < report.bytes_live < report.bytes_stored  # object headers, index and footer
    assert report.dead_objects == report.dead_bytes == 0
    assert report.segments_created_last_hour == 5
    assert report.bytes_created_last_hour == report.bytes_stored
    assert (report.small_objects, report.small_bytes) == (5, report.bytes_stored)

    topics = {t.name: t for t in report.topics}
    assert [t.name for t in report.topics] == ["alpha", "beta", "gamma"]
    alpha, beta, gamma = topics["alpha"], topics["beta"], topics["gamma"]
    assert (alpha.partitions, alpha.objects, alpha.records) == (2, 3, 35)
    assert (beta.partitions, beta.objects, beta.records) == (1, 1, 8)
    assert (gamma.objects, gamma.records) == (1, 6)
    assert [t.oldest_offset for t in report.topics] == [0, 0, 0]
    # The oldest of the first blocks' newest timestamps.
    assert (alpha.oldest_timestamp_ms, beta.oldest_timestamp_ms) == (t0 + 5, t0 + 3)
    assert (alpha.cleanup_policy, gamma.cleanup_policy) == ("delete", "compact")
    # Nothing is key-compacted yet: a compacted topic's backlog is all of it.
    assert (alpha.dirty_bytes, gamma.dirty_bytes) == (0, gamma.bytes_live)
    assert sum(t.bytes_live for t in report.topics) == report.bytes_live
    # Each object belongs to one topic here, so the shares add up to the objects' sizes.
    assert sum(t.bytes_stored for t in report.topics) == report.bytes_stored
    assert {t.topic_id for t in report.topics} == {
        client.get_topic(name).topic_id for name in topics
    }

    # A threshold below every object: none is small.
    small = client.describe_storage(small_object_bytes=1)
    assert (small.small_objects, small.small_bytes, small.small_object_bytes) == (0, 0, 1)

    # streamctl --json says the same.
    shown = storage_json(stack)
    assert shown["total"]["objects"] == 5
    assert shown["total"]["bytes_stored"] == report.bytes_stored
    assert shown["total"]["bytes_live"] == report.bytes_live
    assert shown["total"]["dirty_bytes"] == gamma.dirty_bytes
    assert [t["name"] for t in shown["topics"]] == ["alpha", "beta", "gamma"]
    assert shown["topics"][0]["records"] == 35

    # The table: a row per topic and the total.
    done = streamctl(stack, "storage")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.strip()}
    assert rows["alpha"][1:3] == ["2", "3"] and rows["beta"][1:3] == ["1", "1"]
    assert rows["TOTAL"][2] == "5"
    assert "dead objects awaiting deletion: 0" in done.stdout


def test_cost_estimate_is_computed_from_the_report(stack: Stack, client: Client) -> None:
    client.create_topic("costly", partitions=1)
    produce(client, "costly", 0, 50, now_ms(), "c")
    shown = storage_json(stack, "--cost", "--gets-per-second", "2.5", "--disk-fill", "1")
    total = shown["total"]
    expected = estimate(
        Usage(
            bytes_stored=total["bytes_stored"],
            dead_bytes=total["dead_bytes"],
            bytes_live=total["bytes_live"],
            objects_created_last_hour=total["segments_created_last_hour"],
            bytes_written_per_hour=total["bytes_created_last_hour"],
            gets_per_second=2.5,
        ),
        Prices(disk_fill=1.0),
    )
    cost = shown["cost"]
    assert cost["streamhouse_monthly_usd"] == round(expected.streamhouse_monthly_usd, 4)
    assert cost["kafka_monthly_usd"] == round(expected.kafka_monthly_usd, 4)
    assert [line["item"] for line in cost["streamhouse"]] == ["S3 storage", "S3 PUT", "S3 GET"]
    puts = cost["streamhouse"][1]
    assert puts["quantity"] == total["segments_created_last_hour"] * 730 / 1000
    assert cost["prices"]["s3_put_per_1000_usd"] == 0.005
    assert cost["prices"]["disk_fill"] == 1.0

    # Prices are flags; the table names both systems and the basis.
    done = streamctl(stack, "storage", "--cost", "--s3-put-per-1000-usd", "0.01")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "replicated Kafka" in done.stdout and "basis:" in done.stdout
    assert "GETs are not counted by StreamHouse" in done.stdout
    assert "0.01" in done.stdout


def test_a_deleted_topic_shows_as_dead_bytes_until_reclaimed(stack: Stack, client: Client) -> None:
    client.create_topic("doomed", partitions=1)
    produce(client, "doomed", 0, 5, now_ms(), "d1")
    produce(client, "doomed", 0, 5, now_ms(), "d2")
    before = client.describe_storage()
    doomed = next(t for t in before.topics if t.name == "doomed")
    assert doomed.objects == 2
    client.delete_topic("doomed")
    after = client.describe_storage()
    assert "doomed" not in [t.name for t in after.topics]
    assert after.objects == before.objects - 2
    assert after.dead_objects == before.dead_objects + 2
    assert after.dead_bytes == before.dead_bytes + doomed.bytes_stored
    assert after.bytes_stored == before.bytes_stored - doomed.bytes_stored

    report = run_pass(stack, now_ms() + GRACE_MS + 60_000)
    assert report["dead_objects_deleted"] >= 2, report
    reclaimed = client.describe_storage()
    assert (reclaimed.dead_objects, reclaimed.dead_bytes) == (0, 0)
    assert reclaimed.bytes_stored == sum(objects_in_store(stack).values())


def test_bad_requests_are_refused(stack: Stack, client: Client) -> None:
    with pytest.raises(StreamHouseError) as caught:
        client.describe_storage(small_object_bytes=-1)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "small_object_bytes -1" in caught.value.message
    done = streamctl(stack, "storage", "--small-object-bytes", "-1")
    assert done.returncode == 2 and done.stderr.startswith("streamctl: error:"), done.stderr
    done = streamctl(stack, "storage", "--cost", "--disk-fill", "0")
    assert done.returncode == 2 and "--disk-fill" in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1


def objects_in_s3(agent: Stack) -> dict[str, int]:
    return objects_in_store(agent)


def test_every_agent_of_a_cluster_reports_the_same_storage(make_cluster: Any) -> None:
    """Two agents on PostgreSQL and SeaweedFS: the report is the shared metadata's, whichever
    agent answers, and matches the bucket."""
    cluster = make_cluster(2, env=QUIET)
    with Client(cluster[0].grpc_address) as first, Client(cluster[1].grpc_address) as second:
        first.create_topic("shared", partitions=2)
        produce(first, "shared", 0, 10, now_ms(), "x")
        produce(second, "shared", 1, 12, now_ms(), "y")
        produce(second, "shared", 0, 3, now_ms(), "z")
        reports = [first.describe_storage(), second.describe_storage()]
    bucket = objects_in_s3(cluster[0])
    assert len(bucket) == 3, bucket
    assert reports[0].answered_by != reports[1].answered_by  # each agent answered itself
    for report in reports:
        assert (report.objects, report.bytes_stored) == (3, sum(bucket.values()))
        [shared] = report.topics
        assert (shared.name, shared.partitions, shared.records, shared.objects) == (
            "shared",
            2,
            25,
            3,
        )
        assert shared.bytes_live == report.bytes_live
