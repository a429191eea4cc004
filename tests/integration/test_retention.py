"""Retention as Kafka applies it, changed at runtime three ways (IncrementalAlterConfigs and
AlterConfigs from confluent-kafka's AdminClient, ``streamctl topic alter-config``), then
enforced by lifecycle passes at a moved clock (``python3 -m lifecycle --once --now-ms``).

Each produce below is one batch and, since it waits for its acknowledgement, one segment: one
block per batch, and the test's reference treats each batch as Kafka would treat a segment of
one batch (Kafka drops whole segments; with one batch each that is whole batches):

- retention.ms: from the oldest, a batch goes while ``now - its max timestamp > retention.ms``
  and the first batch that stays stops the walk (a newer batch keeps older ones behind it);
- retention.bytes: from the oldest, a batch goes while the partition's size minus its size
  stays ``>= retention.bytes`` (Kafka's ``UnifiedLog.deleteRetentionSizeBreachedSegments``).

Kafka counts a segment's size as its batches' bytes, and so does StreamHouse: each block
row keeps its raw (batch) length beside its stored, possibly LZ4-compressed, length, and size
retention sums the raw lengths. The test at the end checks that with compressible values,
where the two lengths differ most.

Then ListOffsets earliest and a group consumer with ``auto.offset.reset=earliest`` (with no
committed offset, and with one committed below the new log start) start at the new log start,
and a fetch below it is answered OFFSET_OUT_OF_RANGE. Against SeaweedFS: retention, then every
topic deleted and a pass past the grace period leave nothing at all under the stack's prefix.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import random
import struct
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping

import grpc
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from streamhouse import objectstore
from streamhouse.client import EARLIEST, Client, StreamHouseError
from streamhouse.kafka.messages import FetchRequest
from streamhouse.testing import Deliveries, Stack, kafka_call
from streamhouse.topic_config import TOPIC_CONFIGS
from tests.faults import lifecycle_tools

DEADLINE_S = 30.0
REPO = pathlib.Path(__file__).resolve().parents[2]
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
GRACE_MS = 600_000  # the default lifecycle_grace_ms
OFFSET_OUT_OF_RANGE = 1
# Only the passes a test runs; no small-object compaction, which merges a partition's
# consecutive small blocks into one (so retention then drops them together, as Kafka drops a
# whole segment of many batches): here every batch stays a block, Kafka's segment of one.
# New groups join at once (no initial rebalance delay): every check reads with two of them.
QUIET = {
    "STREAMHOUSE_LIFECYCLE_ENABLED": "false",
    "STREAMHOUSE_LIFECYCLE_COMPACTION_ENABLED": "false",
    "STREAMHOUSE_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
}
VALUE_BYTES = 300


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ------------------------------------------------------------------------------ reference


def kafka_time_retention(timestamps: list[int], retention_ms: int, now: int) -> int:
    """How many batches (oldest first) Kafka's time retention drops."""
    dropped = 0
    for ts in timestamps:
        if now - ts <= retention_ms:
            break
        dropped += 1
    return dropped


def kafka_size_retention(sizes: list[int], retention_bytes: int) -> int:
    """How many batches (oldest first) Kafka's size retention drops."""
    total = sum(sizes)
    if total < retention_bytes:
        return 0
    diff = total - retention_bytes
    dropped = 0
    for size in sizes:
        if diff - size < 0:
            break
        diff -= size
        dropped += 1
    return dropped


def test_the_reference_is_kafkas_rule() -> None:
    # Time: strictly older than retention goes; the first batch that stays stops the walk.
    assert kafka_time_retention([0, 10, 50, 5], 40, 60) == 2
    assert kafka_time_retention([0, 10, 50, 5], 50, 60) == 1  # 60 - 10 = 50: stays
    # Size: a batch goes only if what remains is still at least retention.bytes.
    assert kafka_size_retention([10, 20, 30], 30) == 2
    assert kafka_size_retention([10, 20, 30], 31) == 1
    assert kafka_size_retention([10, 20, 30], 61) == 0
    assert kafka_size_retention([10, 20, 30], 0) == 3


# ------------------------------------------------------------------------------ the stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("retention") / "data", env=QUIET) as running:
        yield running


def run_pass(stack: Stack, at_ms: int | None = None) -> dict[str, int]:
    """One `python3 -m lifecycle --once [--now-ms]` with the stack's settings; its report."""
    command = [sys.executable, "-m", "lifecycle", "--once"]
    if at_ms is not None:
        command += ["--now-ms", str(at_ms)]
    done = subprocess.run(
        command, env=stack.env, cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"lifecycle pass failed ({done.returncode}): {done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1)]).values():
        future.result(DEADLINE_S)


def produce_batch(bootstrap: str, topic: str, values: list[bytes], timestamp_ms: int) -> None:
    """`values` as one batch to partition 0, all at `timestamp_ms`; waits for the acks."""
    deliveries = Deliveries()
    # A linger far longer than the loop below: the batch goes at flush() (which ignores the
    # linger), whole, however slowly a loaded host runs this loop.
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 60_000})
    try:
        for value in values:
            producer.produce(
                topic, value=value, partition=0, timestamp=timestamp_ms, on_delivery=deliveries
            )
        assert producer.flush(DEADLINE_S) == 0
    finally:
        producer.close()
    assert deliveries.failed == [] and deliveries.count() == len(values), deliveries.failed


def raw_fetch(address: str, topic: str, offset: int) -> tuple[int, int, bytes]:
    """(error code, log start offset, record batches) of a Kafka Fetch v11 of partition 0."""
    request = FetchRequest(
        max_wait_ms=0,
        min_bytes=1,
        max_bytes=1 << 24,
        topics=[
            FetchRequest.FetchTopic(
                topic=topic,
                partitions=[
                    FetchRequest.FetchPartition(
                        partition=0, fetch_offset=offset, partition_max_bytes=1 << 24
                    )
                ],
            )
        ],
    )
    part = kafka_call(address, 1, 11, request).responses[0].partitions[0]
    return part.error_code, part.log_start_offset, bytes(part.records or b"")


def batch_spans(records: bytes) -> list[tuple[int, int, int]]:
    """(base offset, record count, size in bytes) of each batch of a fetched record set."""
    spans = []
    pos = 0
    while pos + 12 <= len(records):
        base, length = struct.unpack_from(">qi", records, pos)
        last_delta = struct.unpack_from(">i", records, pos + 23)[0]
        spans.append((base, last_delta + 1, 12 + length))
        pos += 12 + length
    return spans


def earliest(bootstrap: str, topic: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    answer = admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.earliest()})
    return answer[TopicPartition(topic, 0)].result(DEADLINE_S).offset


def group_read(bootstrap: str, topic: str, group: str, expected: int) -> list[tuple[int, bytes]]:
    """What a subscribing group consumer with auto.offset.reset=earliest reads."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    out: list[tuple[int, bytes]] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + DEADLINE_S
        while len(out) < expected:
            assert time.monotonic() < deadline, f"read {len(out)} of {expected}: {out[:3]}"
            for message in consumer.consume(num_messages=expected - len(out), timeout=1):
                if message.error() is not None:
                    raise KafkaException(message.error())
                out.append((message.offset(), message.value()))
    finally:
        consumer.close()
    return out


def commit_offset(bootstrap: str, topic: str, group: str, offset: int) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


# ---------------------------------------------------------------- three ways to change it


def alter_incremental(stack: Stack, topic: str, name: str, value: str) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_address})
    entry = ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(DEADLINE_S)


def alter_whole(stack: Stack, topic: str, name: str, value: str) -> None:
    """AlterConfigs: replaces the topic's whole config (the others go back to defaults)."""
    admin = AdminClient({"bootstrap.servers": stack.kafka_address})
    resource = ConfigResource(ResourceType.TOPIC, topic, set_config={name: value})
    with warnings.catch_warnings():
        # confluent-kafka deprecates AlterConfigs; Kafka clients still send it: tested on purpose.
        warnings.simplefilter("ignore", DeprecationWarning)
        futures = admin.alter_configs([resource])
    for future in futures.values():
        future.result(DEADLINE_S)


def alter_streamctl(stack: Stack, topic: str, name: str, value: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "STREAMHOUSE_ADDR"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamhouse.streamctl",
            "--server",
            stack.grpc_address,
            "--output",
            "json",
            "topic",
            "alter-config",
            topic,
            "--set",
            f"{name}={value}",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert json.loads(done.stdout)["config"][name] == value


WAYS: dict[str, Callable[[Stack, str, str, str], None]] = {
    "incremental": alter_incremental,
    "alter-configs": alter_whole,
    "streamctl": alter_streamctl,
}


def described(stack: Stack, topic: str, name: str) -> str:
    admin = AdminClient({"bootstrap.servers": stack.kafka_address})
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(DEADLINE_S)
    return entries[name].value


# -------------------------------------------------------------------------------- checks


def check_log_start(
    stack: Stack, topic: str, values: list[list[bytes]], dropped: int, tag: str
) -> None:
    """The log starts at batch `dropped` for every reader, and not a byte before."""
    start = sum(len(v) for v in values[:dropped])
    kept = [(start + i, v) for i, v in enumerate(x for b in values[dropped:] for x in b)]
    bootstrap = stack.kafka_address
    assert earliest(bootstrap, topic) == start
    code, log_start, records = raw_fetch(bootstrap, topic, start)
    assert (code, log_start) == (0, start)
    assert batch_spans(records)[0][0] == start
    if start > 0:
        assert raw_fetch(bootstrap, topic, 0)[:2] == (OFFSET_OUT_OF_RANGE, start)
        assert raw_fetch(bootstrap, topic, start - 1)[:2] == (OFFSET_OUT_OF_RANGE, start)
    # gRPC: earliest is the log start; below it is OUT_OF_RANGE.
    with Client(stack.grpc_address) as client:
        records, _, high, log_start_grpc = client.consume(topic, 0, EARLIEST)
        assert (records[0].offset, log_start_grpc, high) == (start, start, kept[-1][0] + 1)
        if start > 0:
            with pytest.raises(StreamHouseError) as caught:
                client.consume(topic, 0, start - 1)
            assert caught.value.code == grpc.StatusCode.OUT_OF_RANGE, caught.value
    # A new group and one whose committed offset fell below the log start both begin there.
    assert group_read(bootstrap, topic, f"{tag}-new", len(kept)) == kept
    if start > 0:
        commit_offset(bootstrap, topic, f"{tag}-behind", start - 1)
        assert group_read(bootstrap, topic, f"{tag}-behind", len(kept)) == kept


def random_values(rng: random.Random, batch: int, count: int) -> list[bytes]:
    return [f"{batch}-{i}-".encode() + rng.randbytes(VALUE_BYTES) for i in range(count)]


# --------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("way", list(WAYS))
def test_time_retention_changed_at_runtime(stack: Stack, way: str) -> None:
    topic = f"time-{way}"
    bootstrap = stack.kafka_address
    create_topic(bootstrap, topic)
    rng = random.Random(way)
    start = now_ms()
    # Out of order on purpose: batch 3 is older than batch 2, and Kafka keeps it while 2 stays.
    timestamps = [start - 50 * HOUR_MS, start - 49 * HOUR_MS, start - 10 * HOUR_MS]
    timestamps += [start - 48 * HOUR_MS, start - HOUR_MS]
    values = [random_values(rng, b, 3 + b) for b in range(len(timestamps))]
    for batch, ts in zip(values, timestamps, strict=True):
        produce_batch(bootstrap, topic, batch, ts)

    # The default (7 days) keeps everything.
    run_pass(stack)
    assert earliest(bootstrap, topic) == 0

    retention = DAY_MS
    WAYS[way](stack, topic, "retention.ms", str(retention))
    assert described(stack, topic, "retention.ms") == str(retention)

    # A clock at which batch 2 is exactly retention.ms old: it stays, so 3 stays behind it.
    at = timestamps[2] + retention
    assert kafka_time_retention(timestamps, retention, at) == 2
    report = run_pass(stack, at)
    assert report["blocks_removed"] >= 2, report
    check_log_start(stack, topic, values, 2, f"{topic}-a")

    # One millisecond later batches 2 and 3 go; batch 4 (an hour old at the start) stays.
    assert kafka_time_retention(timestamps, retention, at + 1) == 4
    run_pass(stack, at + 1)
    check_log_start(stack, topic, values, 4, f"{topic}-b")


@pytest.mark.parametrize("way", list(WAYS))
def test_size_retention_changed_at_runtime(stack: Stack, way: str) -> None:
    topic = f"size-{way}"
    bootstrap = stack.kafka_address
    create_topic(bootstrap, topic)
    rng = random.Random(way)
    counts = [4, 1, 6, 2, 5, 3]
    values = [random_values(rng, b, n) for b, n in enumerate(counts)]
    for batch in values:
        produce_batch(bootstrap, topic, batch, now_ms())
    spans = batch_spans(raw_fetch(bootstrap, topic, 0)[2])
    assert [n for _, n, _ in spans] == counts
    sizes = [size for _, _, size in spans]

    # Exactly the last three batches' bytes: Kafka keeps those three.
    retention = sum(sizes[3:])
    assert kafka_size_retention(sizes, retention) == 3
    WAYS[way](stack, topic, "retention.bytes", str(retention))
    assert described(stack, topic, "retention.bytes") == str(retention)
    report = run_pass(stack, now_ms() + HOUR_MS)
    assert report["blocks_removed"] >= 3, report
    check_log_start(stack, topic, values, 3, f"{topic}-a")

    # The last batch and half the one before it: Kafka keeps those two.
    retention = sizes[5] + sizes[4] // 2
    assert kafka_size_retention(sizes, retention) == 4
    WAYS[way](stack, topic, "retention.bytes", str(retention))
    run_pass(stack, now_ms() + HOUR_MS)
    check_log_start(stack, topic, values, 4, f"{topic}-b")

    # -1: forever again; nothing more goes.
    WAYS[way](stack, topic, "retention.bytes", "-1")
    run_pass(stack, now_ms() + HOUR_MS)
    assert earliest(bootstrap, topic) == sum(counts[:4])


# ------------------------------------------------------------------------------ SeaweedFS


def list_everything(stack: Stack) -> dict[str, int]:
    """Every object under the stack's bucket prefix (not only segments/), key -> size."""
    store = lifecycle_tools.open_objects(stack.env, stack.settings.object_store_url)

    async def listing() -> dict[str, int]:
        return {
            info.key: info.size
            async for page in objectstore.list_objects(store, "")
            for info in page
        }

    return asyncio.run(listing())


def list_topic_names(bootstrap: str) -> list[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return sorted(admin.list_topics(timeout=DEADLINE_S).topics)


def test_seaweedfs_retention_then_every_topic_deleted_leaves_an_empty_bucket(
    tmp_path: pathlib.Path, seaweed: object
) -> None:
    env: Mapping[str, str] = seaweed.env()  # type: ignore[attr-defined]
    prefix = f"retention-{uuid.uuid4().hex[:12]}"
    env = {**env, **QUIET, "STREAMHOUSE_OBJECT_STORE": f"s3://{seaweed.bucket}/{prefix}"}  # type: ignore[attr-defined]
    with Stack(tmp_path / "data", env=env) as stack:
        bootstrap = stack.kafka_address
        rng = random.Random(7)
        start = now_ms()
        create_topic(bootstrap, "s3-time")
        timestamps = [start - 3 * DAY_MS, start - 2 * DAY_MS, start - HOUR_MS]
        values = [random_values(rng, b, 2) for b in range(3)]
        for batch, ts in zip(values, timestamps, strict=True):
            produce_batch(bootstrap, "s3-time", batch, ts)
        for name in ("s3-a", "s3-b"):
            create_topic(bootstrap, name)
            for b in range(3):
                produce_batch(bootstrap, name, random_values(rng, b, 3), now_ms())
        objects = list_everything(stack)
        assert len(objects) >= 9, objects

        alter_incremental(stack, "s3-time", "retention.ms", str(DAY_MS))
        report = run_pass(stack)
        assert report["blocks_removed"] == 2, report
        check_log_start(stack, "s3-time", values, 2, "s3-time")
        # The dropped batches' objects wait out the grace period, then go.
        assert list_everything(stack) == objects
        report = run_pass(stack, now_ms() + GRACE_MS + 60_000)
        assert report["dead_objects_deleted"] == 2, report
        assert len(list_everything(stack)) == len(objects) - 2

        topics = list_topic_names(bootstrap)
        assert set(topics) >= {"s3-time", "s3-a", "s3-b"}
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.delete_topics(topics, request_timeout=DEADLINE_S).values():
            future.result(DEADLINE_S)
        assert list_topic_names(bootstrap) == []
        # Within the grace period nothing goes; after it, nothing is left at all.
        run_pass(stack)
        assert len(list_everything(stack)) == len(objects) - 2
        report = run_pass(stack, now_ms() + GRACE_MS + 60_000)
        assert report["dead_objects_deleted"] == len(objects) - 2, report
        assert list_everything(stack) == {}


def test_alter_topic_config_over_grpc_and_streamctl_refuses_bad_input(stack: Stack) -> None:
    with Client(stack.grpc_address) as client:
        client.create_topic("configured", partitions=1, config={"retention.ms": "1000"})

        def refused(code: grpc.StatusCode, words: str, **kwargs: object) -> None:
            with pytest.raises(StreamHouseError) as caught:
                client.alter_topic_config(**kwargs)  # type: ignore[arg-type]
            assert caught.value.code == code, caught.value
            assert words in caught.value.message, caught.value.message

        refused(grpc.StatusCode.NOT_FOUND, "'nowhere' does not exist", name="nowhere")
        refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            "retention.bytes",
            name="configured",
            set_entries={"retention.bytes": "lots"},
        )
        refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            "both set and deleted",
            name="configured",
            set_entries={"retention.ms": "5"},
            delete_entries=["retention.ms"],
        )
        # validate_only answers the config it would store and changes nothing.
        checked = client.alter_topic_config(
            "configured", {"retention.bytes": "4096"}, ["retention.ms"], validate_only=True
        )
        assert checked.config["retention.bytes"] == "4096"
        assert checked.config["retention.ms"] == TOPIC_CONFIGS["retention.ms"][0]
        assert client.get_topic("configured").config["retention.ms"] == "1000"
        # The real change: other entries stay, deleted ones go back to their defaults.
        client.alter_topic_config("configured", {"segment.ms": "60000"})
        changed = client.alter_topic_config(
            "configured", {"retention.bytes": "4096"}, ["retention.ms"]
        )
        assert changed.config["retention.bytes"] == "4096"
        assert changed.config["segment.ms"] == "60000"
        assert described(stack, "configured", "retention.ms") == TOPIC_CONFIGS["retention.ms"][0]

    done = subprocess.run(
        [sys.executable, "-m", "streamhouse.streamctl", "--server", stack.grpc_address]
        + ["topic", "alter-config", "configured"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    assert done.stderr.startswith("streamctl: error:") and "--set" in done.stderr, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "streamhouse.streamctl", "--server", stack.grpc_address]
        + ["topic", "alter-config", "configured", "--set", "retention.ms=soon"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "INVALID_ARGUMENT" in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_size_retention_counts_the_batches_bytes_even_when_they_compress(stack: Stack) -> None:
    topic = "size-compressible"
    bootstrap = stack.kafka_address
    create_topic(bootstrap, topic)
    values = [[f"{b}-{i}-".encode() + b"a" * VALUE_BYTES for i in range(5)] for b in range(6)]
    for batch in values:
        produce_batch(bootstrap, topic, batch, now_ms())
    sizes = [size for _, _, size in batch_spans(raw_fetch(bootstrap, topic, 0)[2])]
    retention = sum(sizes[3:])
    assert kafka_size_retention(sizes, retention) == 3
    alter_incremental(stack, topic, "retention.bytes", str(retention))
    run_pass(stack, now_ms() + HOUR_MS)
    assert earliest(bootstrap, topic) == sum(len(v) for v in values[:3])
