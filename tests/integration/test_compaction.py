"""Small-object compaction and partly-live rewrites against real stacks (a local folder and
SeaweedFS S3), driven by `python3 -m lifecycle --once --now-ms MS`.

Many small objects of several topics and partitions (one per 50 ms flush) are merged by one
pass at a clock past the compaction age: fewer objects, and every partition read from the
beginning through Kafka (raw Fetch v11 bytes and a confluent-kafka consumer) and gRPC returns
exactly what it returned before, batch bytes, offsets and timestamps included. An object kept
alive by a few blocks after DeleteRecords is rewritten and deleted after the grace period. An
idempotent producer's retry of an already-committed batch is still deduplicated after the
batches moved to a new object. Of a two-agent cluster (PostgreSQL), only one agent's
lifecycle rewrites. A topic with a small segment.ms keeps, after compaction and retention,
no more than Kafka would keep of the same batches (its segments simulated in the test).
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from metadata.interface import open_store
from streamhouse import objectstore
from streamhouse.client import Client, IdempotentProducer, Record
from streamhouse.kafka.messages import FetchRequest
from streamhouse.recordbatch import scan_batches
from streamhouse.testing import Cluster, Deliveries, Stack, kafka_call, read_kafka_log
from tests.faults import lifecycle_tools

DEADLINE_S = 30.0
REPO = pathlib.Path(__file__).resolve().parents[2]
GRACE_MS = 600_000  # the default lifecycle_grace_ms
MIN_AGE_MS = 60_000  # the default lifecycle_compaction_min_age_ms
QUIET = {"STREAMHOUSE_LIFECYCLE_ENABLED": "false"}
TOPICS = {"cmp-a": 3, "cmp-b": 2}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def old_enough() -> int:
    """A clock at which everything written so far is old enough to merge, while nothing dead
    is past its grace period."""
    return now_ms() + MIN_AGE_MS + 5_000


def past_grace() -> int:
    return now_ms() + GRACE_MS + 60_000


@pytest.fixture(params=["folder", "s3"])
def store_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    if request.param == "folder":
        yield {}
        return
    seaweed = request.getfixturevalue("seaweed")
    env = seaweed.env()
    env["STREAMHOUSE_OBJECT_STORE"] = f"s3://{seaweed.bucket}/compaction-{uuid.uuid4().hex[:12]}"
    yield env


def open_objects(stack: Stack) -> object:
    return lifecycle_tools.open_objects(stack.env, stack.settings.object_store_url)


def stored(stack: Stack) -> dict[str, int]:
    """Every segment object in the stack's store: key -> size."""
    store = open_objects(stack)

    async def listing() -> dict[str, int]:
        return {
            info.key: info.size
            async for page in objectstore.list_objects(store, "segments/")
            for info in page
        }

    return asyncio.run(listing())


def live_objects(stack: Stack) -> set[str]:
    meta = open_store(stack.settings.metadata_target)
    try:
        return {s.key for s in meta.live_segments(0, 100_000)}
    finally:
        meta.close()


def run_pass(stack: Stack, at_ms: int, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "--once", "--now-ms", str(at_ms)],
        env={**stack.env, **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"lifecycle pass failed ({done.returncode}): {done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def create_topics(bootstrap: str, topics: Mapping[str, int]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, p) for n, p in topics.items()]).values():
        future.result(DEADLINE_S)


def produce_rounds(bootstrap: str, rounds: int) -> None:
    """`rounds` flushes of an idempotent producer to every partition of TOPICS, each round
    a few batches with keys, headers and distinct timestamps: about one object per round."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 2, "enable.idempotence": True}
    )
    deliveries = Deliveries()
    base = now_ms() - 3_600_000
    try:
        for r in range(rounds):
            for topic, partitions in TOPICS.items():
                for p in range(partitions):
                    for i in range(3 + (r + p) % 4):
                        producer.produce(
                            topic,
                            key=f"k{r}-{i}".encode(),
                            value=f"{topic}/{p} round {r} record {i} ".encode() * (1 + i),
                            headers=[("round", str(r).encode()), ("empty", None)],
                            partition=p,
                            timestamp=base + r * 1000 + i,
                            on_delivery=deliveries,
                        )
            assert producer.flush(DEADLINE_S) == 0
    finally:
        producer.close()
    assert deliveries.failed == [], deliveries.failed


def raw_log(address: str, topic: str, partition: int) -> list[bytes]:
    """Every record batch of a partition, from offset 0 to the high watermark, exactly as a
    Kafka Fetch (v11) returns it (absolute baseOffset, every other byte as stored)."""
    out: list[bytes] = []
    offset = 0
    deadline = time.monotonic() + DEADLINE_S
    while True:
        assert time.monotonic() < deadline, f"{topic}[{partition}] not read in {DEADLINE_S}s"
        request = FetchRequest(
            max_wait_ms=0,
            min_bytes=1,
            max_bytes=1 << 20,
            topics=[
                FetchRequest.FetchTopic(
                    topic=topic,
                    partitions=[
                        FetchRequest.FetchPartition(
                            partition=partition, fetch_offset=offset, partition_max_bytes=1 << 20
                        )
                    ],
                )
            ],
        )
        part = kafka_call(address, 1, 11, request).responses[0].partitions[0]
        assert part.error_code == 0, (topic, partition, offset, part.error_code)
        if offset >= part.high_watermark:
            return out
        records = bytes(part.records or b"")
        for info in scan_batches(records):
            first = int.from_bytes(records[info.position : info.position + 8], "big", signed=True)
            if first + info.last_offset_delta < offset:
                continue  # a batch before the asked offset, sent again
            out.append(records[info.position : info.position + info.length])
            offset = first + info.last_offset_delta + 1


def grpc_log(address: str, topic: str, partition: int, offset: int = 0) -> list[tuple[Any, ...]]:
    """Every record of a partition from `offset` through gRPC Consume: offset, key, value,
    headers, time."""
    out: list[tuple[Any, ...]] = []
    with Client(address) as client:
        while True:
            records, offset, high, _ = client.consume(topic, partition, offset)
            out += [(r.offset, r.key, r.value, list(r.headers), r.timestamp_ms) for r in records]
            if offset >= high:
                return out


def everything(stack: Stack) -> dict[str, Any]:
    """What every reader sees of every partition of TOPICS."""
    view: dict[str, Any] = {}
    for topic, partitions in TOPICS.items():
        view[f"kafka/{topic}"] = read_kafka_log(stack.kafka_address, topic, partitions)
        for p in range(partitions):
            view[f"raw/{topic}/{p}"] = raw_log(stack.kafka_address, topic, p)
            view[f"grpc/{topic}/{p}"] = grpc_log(stack.grpc_address, topic, p)
    return view


def test_small_objects_merge_and_every_reader_sees_the_same_log(
    tmp_path: pathlib.Path, store_env: dict[str, str]
) -> None:
    with Stack(tmp_path / "data", env={**store_env, **QUIET}) as stack:
        create_topics(stack.kafka_address, TOPICS)
        produce_rounds(stack.kafka_address, 12)
        before = everything(stack)
        assert sum(len(v) for k, v in before.items() if k.startswith("raw/")) >= 60
        objects = stored(stack)
        assert len(objects) >= 10, objects

        # At the real clock nothing is old enough to merge.
        report = run_pass(stack, now_ms())
        assert report["rewriter"] is True, report
        assert report["compaction"]["groups_rewritten"] == 0, report
        assert set(stored(stack)) == set(objects)

        report = run_pass(stack, old_enough())
        c = report["compaction"]
        assert c["objects_replaced"] == len(objects), report
        assert c["objects_written"] == 1 and c["switches_refused"] == 0, report
        assert c["bytes_after"] < c["bytes_before"], report
        live = live_objects(stack)
        assert len(live) == 1 and not live & set(objects), live
        # One block per partition in the merged object (they are far below 2 MiB).
        assert c["blocks_written"] == sum(TOPICS.values()), report
        # Readers that looked up the old rows still find the old objects: kept for the grace.
        assert set(stored(stack)) == set(objects) | live
        assert everything(stack) == before

        report = run_pass(stack, past_grace())
        assert report["dead_objects_deleted"] == len(objects), report
        assert set(stored(stack)) == live
        assert everything(stack) == before

        # The stack restarted (the reader's cache empty): still the same log.
        stack.restart()
        assert everything(stack) == before


def topics_by_object(stack: Stack) -> dict[str, set[str]]:
    """The topics each live object holds blocks of."""
    meta = open_store(stack.settings.metadata_target)
    try:
        names = {t.topic_id: t.name for t in meta.list_topics()}
        keys = {s.segment_id: s.key for s in meta.live_segments(0, 100_000)}
        out: dict[str, set[str]] = {key: set() for key in keys.values()}
        for row in meta.blocks_of_segments(list(keys)):
            out[keys[row.segment_id]].add(names.get(row.topic_id, "?"))
        return out
    finally:
        meta.close()


def test_a_partly_live_object_is_rewritten_and_its_old_object_deleted(
    tmp_path: pathlib.Path, store_env: dict[str, str]
) -> None:
    with Stack(tmp_path / "data", env={**store_env, **QUIET}) as stack:
        bootstrap = stack.kafka_address
        create_topics(bootstrap, {"bulky": 1, "kept": 1})
        # Sent at flush() (which ignores the linger): each round is one request.
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 60_000})
        deliveries = Deliveries()
        try:
            # Rounds of one flush holding both topics, until an object holds both (the
            # producer sends them in one request, which is almost always one object).
            for round_ in range(10):
                for _ in range(100):
                    producer.produce(
                        "bulky", value=os.urandom(400), partition=0, on_delivery=deliveries
                    )
                producer.produce(
                    "kept", value=f"stays {round_}".encode(), partition=0, on_delivery=deliveries
                )
                assert producer.flush(DEADLINE_S) == 0
                if any(t == {"bulky", "kept"} for t in topics_by_object(stack).values()):
                    break
        finally:
            producer.close()
        assert deliveries.failed == []
        mixed = {k for k, t in topics_by_object(stack).items() if t == {"bulky", "kept"}}
        assert mixed, topics_by_object(stack)
        bulky_end = (round_ + 1) * 100
        kept_before = read_kafka_log(bootstrap, "kept", 1)
        kept_raw = raw_log(bootstrap, "kept", 0)
        objects = stored(stack)

        # DeleteRecords takes all of "bulky": the mixed objects are kept alive by "kept".
        admin = AdminClient({"bootstrap.servers": bootstrap})
        futures = admin.delete_records([TopicPartition("bulky", 0, bulky_end)])
        for future in futures.values():
            future.result(DEADLINE_S)

        # Only the partly-live rule (small objects: under 1 KiB, and none is old enough at
        # the real clock).
        report = run_pass(stack, now_ms(), {"STREAMHOUSE_LIFECYCLE_SMALL_OBJECT_BYTES": "1024"})
        c = report["compaction"]
        assert c["partly_live_objects"] == len(mixed), report
        assert c["objects_replaced"] == len(mixed) and c["objects_written"] == 1, report
        live = live_objects(stack)
        assert not live & mixed
        assert len(live - set(objects)) == 1, live
        assert read_kafka_log(bootstrap, "kept", 1) == kept_before
        assert raw_log(bootstrap, "kept", 0) == kept_raw
        # Still stored through the grace period, then gone.
        assert set(objects) <= set(stored(stack))
        report = run_pass(stack, past_grace())
        now_stored = stored(stack)
        assert set(now_stored) == live_objects(stack), report
        assert not set(now_stored) & mixed
        assert sum(now_stored.values()) * 20 < sum(objects.values()), (now_stored, objects)
        assert read_kafka_log(bootstrap, "kept", 1) == kept_before
        assert raw_log(bootstrap, "kept", 0) == kept_raw


def test_an_idempotent_retry_after_compaction_is_still_deduplicated(
    tmp_path: pathlib.Path,
) -> None:
    with Stack(tmp_path / "data", env=QUIET) as stack:
        with Client(stack.grpc_address) as client:
            client.create_topic("idem", 1)
            producer = IdempotentProducer(client)
            batches = [
                [Record(value=f"batch {b} record {i}".encode()) for i in range(3)] for b in range(3)
            ]
            offsets = [producer.produce_batch("idem", 0, batch).base_offset for batch in batches]
            assert offsets == [0, 3, 6]
            before = grpc_log(stack.grpc_address, "idem", 0)

            report = run_pass(stack, old_enough())
            assert report["compaction"]["objects_replaced"] >= 2, report
            assert len(live_objects(stack)) == 1

            # The same producer id and epoch send their first batch again, sequence 0: the
            # server answers with its original offset and writes nothing.
            again = IdempotentProducer(
                client, producer_id=producer.producer_id, producer_epoch=producer.producer_epoch
            )
            assert again.produce_batch("idem", 0, batches[0]).base_offset == 0
            assert grpc_log(stack.grpc_address, "idem", 0) == before
            # And the producer goes on where it was.
            assert producer.produce_batch("idem", 0, [Record(value=b"next")]).base_offset == 9


def test_one_agent_of_a_cluster_rewrites(tmp_path: pathlib.Path, postgres_dsn: str) -> None:
    objects = tmp_path / "objects"
    objects.mkdir()
    with Cluster(tmp_path / "cluster", 2, postgres_dsn, f"file://{objects}", QUIET) as cluster:
        cluster.wait_brokers(2)
        bootstrap = cluster.kafka_bootstrap
        create_topics(bootstrap, TOPICS)
        produce_rounds(bootstrap, 6)
        before = {t: read_kafka_log(bootstrap, t, n) for t, n in TOPICS.items()}
        written = live_objects(cluster[0])
        assert len(written) >= 5

        clock = old_enough()
        reports = [run_pass(agent, clock) for agent in cluster.agents]
        assert sorted(r["rewriter"] for r in reports) == [False, True], reports
        rewriter = next(r for r in reports if r["rewriter"])
        other = next(r for r in reports if not r["rewriter"])
        assert other["compaction"] is None and "rewrites" in other["rewriter_reason"], other
        assert rewriter["compaction"]["objects_replaced"] == len(written), rewriter
        assert len(live_objects(cluster[1])) == 1
        for agent in cluster.agents:
            got = {t: read_kafka_log(agent.kafka_address, t, n) for t, n in TOPICS.items()}
            assert got == before


# --------------------------------------------------------------------------- segment.ms

SEGMENT_MS = 10_000
RETENTION_MS = 3_600_000


class KafkaLog:
    """Kafka's segments of a partition, as its log rolls them (no jitter): a batch starts a
    new segment when its max timestamp is more than segment.ms past the max timestamp of the
    segment's first batch (rollingBasedTimestamp; segment.bytes is never reached here).
    Retention deletes segments from the oldest while their largest timestamp is older than
    now - retention.ms."""

    def __init__(self, segment_ms: int) -> None:
        self.segment_ms = segment_ms
        self.segments: list[list[int]] = []  # [base offset, rolling base, largest timestamp]
        self.end = 0

    def append(self, timestamps: list[int]) -> None:
        newest = max(timestamps)
        if not self.segments or newest - self.segments[-1][1] > self.segment_ms:
            self.segments.append([self.end, newest, newest])
        else:
            self.segments[-1][2] = max(self.segments[-1][2], newest)
        self.end += len(timestamps)

    def log_start(self, cutoff_ms: int) -> int:
        """The log start offset after retention with cutoff now - retention.ms."""
        return next((base for base, _, largest in self.segments if largest >= cutoff_ms), self.end)


def test_a_small_segment_ms_bounds_what_compaction_and_retention_keep(
    tmp_path: pathlib.Path,
) -> None:
    # Bursts of 2-4 flushes 1.5 s apart, every 25 s of record time: Kafka rolls a segment
    # at each burst (segment.ms 10 s). Compaction merges every object into one; without the
    # segment.ms rule all rows would be one block, kept until its newest record expires.
    base = now_ms() - 1_800_000
    flushes: list[list[int]] = []
    for burst in range(8):
        for row in range(2 + burst % 3):
            first = base + burst * 25_000 + row * 1_500
            flushes.append([first + i for i in range(3 + row)])
    kafka = KafkaLog(SEGMENT_MS)
    for timestamps in flushes:
        kafka.append(timestamps)
    assert len(kafka.segments) == 8
    stamps = [ts for timestamps in flushes for ts in timestamps]

    with Stack(tmp_path / "data", env=QUIET) as stack:
        admin = AdminClient({"bootstrap.servers": stack.kafka_address})
        config = {"segment.ms": str(SEGMENT_MS), "retention.ms": str(RETENTION_MS)}
        for future in admin.create_topics([NewTopic("seg", 1, config=config)]).values():
            future.result(DEADLINE_S)
        producer = Producer({"bootstrap.servers": stack.kafka_address, "linger.ms": 5})
        deliveries = Deliveries()
        try:
            for n, timestamps in enumerate(flushes):
                for i, ts in enumerate(timestamps):
                    producer.produce(
                        "seg",
                        value=f"{n}/{i}".encode(),
                        partition=0,
                        timestamp=ts,
                        on_delivery=deliveries,
                    )
                assert producer.flush(DEADLINE_S) == 0
        finally:
            producer.close()
        assert deliveries.failed == [], deliveries.failed
        # One object per flush; a flush the client sent as two requests (its linger ran out
        # mid-flush on a loaded machine) may be two.
        objects = len(stored(stack))
        assert objects >= len(flushes)

        # Compaction (retention drops nothing at this clock: the records are 30 min old).
        report = run_pass(stack, old_enough())
        c = report["compaction"]
        assert c["objects_replaced"] == objects and c["objects_written"] == 1, report
        assert c["blocks_written"] == len(kafka.segments), report

        meta = open_store(stack.settings.metadata_target)
        try:
            topic = meta.get_topic("seg")
            assert topic is not None
            for cutoff in (base + 3 * 25_000 + 1_000, base + 6 * 25_000 + 10):
                report = run_pass(stack, cutoff + RETENTION_MS)
                state = meta.get_partition(topic.topic_id, 0)
                assert state is not None
                expected_start = kafka.log_start(cutoff)
                # No more than Kafka keeps ...
                assert state.log_start_offset >= expected_start, (cutoff - base, report)
                # ... and never a record within retention.ms.
                young = min(o for o, ts in enumerate(stamps) if ts >= cutoff)
                assert state.log_start_offset <= young, (cutoff - base, report)
                # What is kept beyond retention.ms is at most segment.ms older than allowed.
                kept = grpc_log(stack.grpc_address, "seg", 0, state.log_start_offset)
                assert [(r[0], r[4]) for r in kept] == [
                    (o, stamps[o]) for o in range(state.log_start_offset, len(stamps))
                ]
                assert min(r[4] for r in kept) >= cutoff - SEGMENT_MS
                assert state.log_start_offset == expected_start  # the blocks are its segments
        finally:
            meta.close()
