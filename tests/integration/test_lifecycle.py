"""The lifecycle process against real stacks: a local folder and SeaweedFS S3.

`python3 -m lifecycle --once --now-ms MS` is the movable clock: a pass at the real time
deletes nothing younger than the grace period; a pass at `now + grace + 1` reclaims every
dead segment's object and every orphan. The stacks run with the supervised lifecycle turned
off (so only the passes a test runs happen), except the test of the supervised loop.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    OffsetSpec,
    ResourceType,
)

from metadata.interface import open_store
from streamhouse import objectstore
from streamhouse.kafka.messages import FetchRequest
from streamhouse.testing import (
    Deliveries,
    Stack,
    kafka_call,
    log_problems,
    read_kafka_log,
    wait_until,
)
from tests.faults import lifecycle_tools

DEADLINE_S = 30.0
# `python3 -m lifecycle` runs from the repository, as supervisord runs it (supervisord.conf).
REPO = pathlib.Path(__file__).resolve().parents[2]
GRACE_MS = 600_000  # the default lifecycle_grace_ms
DAY_MS = 86_400_000
OFFSET_OUT_OF_RANGE = 1

# Only the passes a test runs itself, and no rewrites (these tests count the objects as
# produced; tests/integration/test_compaction.py has the rewrites).
QUIET = {
    "STREAMHOUSE_LIFECYCLE_ENABLED": "false",
    "STREAMHOUSE_LIFECYCLE_COMPACTION_ENABLED": "false",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def past_grace() -> int:
    """A pass clock past the grace period of everything dead so far, and of what a pass
    starting within the next minute sees dead (it dates a death by the real time it saw it)."""
    return now_ms() + GRACE_MS + 60_000


@pytest.fixture(params=["folder", "s3"])
def store_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Object-store settings of a stack: its own local folder, or its own prefix of the
    session's SeaweedFS bucket (other tests share that bucket)."""
    if request.param == "folder":
        yield {}
        return
    seaweed = request.getfixturevalue("seaweed")
    env = seaweed.env()
    env["STREAMHOUSE_OBJECT_STORE"] = f"s3://{seaweed.bucket}/lifecycle-{uuid.uuid4().hex[:12]}"
    yield env


def open_objects(stack: Stack) -> object:
    """The stack's object store, opened in the test process (S3 keys from the stack's env)."""
    return lifecycle_tools.open_objects(stack.env, stack.settings.object_store_url)


def segment_keys(stack: Stack) -> set[str]:
    store = open_objects(stack)

    async def listing() -> set[str]:
        return {
            info.key async for page in objectstore.list_objects(store, "segments/") for info in page
        }

    return asyncio.run(listing())


def put_object(stack: Stack, key: str, data: bytes) -> None:
    asyncio.run(objectstore.put(open_objects(stack), key, data))


def lifecycle_command(at_ms: int | None) -> list[str]:
    command = [sys.executable, "-m", "lifecycle", "--once"]
    if at_ms is not None:
        command += ["--now-ms", str(at_ms)]
    return command


def run_pass(
    stack: Stack, at_ms: int | None = None, env: Mapping[str, str] | None = None
) -> dict[str, int]:
    """One `python3 -m lifecycle --once` with the stack's settings; its JSON report."""
    done = subprocess.run(
        lifecycle_command(at_ms),
        env={**stack.env, **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"lifecycle pass failed ({done.returncode}): {done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def produce(
    bootstrap: str, topic: str, values: list[bytes], timestamp_ms: int | None = None
) -> Deliveries:
    """Produces `values` to partition 0 and waits for every acknowledgement (one flush: one
    batch, one segment)."""
    deliveries = Deliveries()
    # A linger far longer than the loop: the batch goes whole at flush() (which ignores it).
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 60_000})
    try:
        for value in values:
            kwargs = {} if timestamp_ms is None else {"timestamp": timestamp_ms}
            producer.produce(topic, value=value, partition=0, on_delivery=deliveries, **kwargs)
        assert producer.flush(DEADLINE_S) == 0
    finally:
        producer.close()
    assert deliveries.failed == [], deliveries.failed
    assert deliveries.count() == len(values)
    return deliveries


def create_topics(bootstrap: str, *names: str) -> None:
    from confluent_kafka.admin import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, 1) for n in names]).values():
        future.result(DEADLINE_S)


def delete_topics(bootstrap: str, *names: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics(list(names), request_timeout=DEADLINE_S).values():
        future.result(DEADLINE_S)


def earliest(bootstrap: str, topic: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    answer = admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.earliest()})
    return answer[TopicPartition(topic, 0)].result(DEADLINE_S).offset


def consume_all(bootstrap: str, topic: str, expected: int) -> list[tuple[int, bytes]]:
    """(offset, value) of every record from the earliest offset to the high watermark."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "lifecycle-test", "enable.auto.commit": False}
    )
    out: list[tuple[int, bytes]] = []
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + DEADLINE_S
        while len(out) < expected:
            assert time.monotonic() < deadline, f"read {len(out)} of {expected} records"
            for message in consumer.consume(num_messages=expected - len(out), timeout=1):
                if message.error() is not None:
                    raise KafkaException(message.error())
                out.append((message.offset(), message.value()))
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=DEADLINE_S)
        assert not out or high == out[-1][0] + 1, f"records past {out[-1][0]} up to {high}"
    finally:
        consumer.close()
    return out


def fetch_error(address: str, topic: str, offset: int) -> tuple[int, int]:
    """(error code, log start offset) of a raw Kafka Fetch (v11) of partition 0 at `offset`."""
    request = FetchRequest(
        max_wait_ms=0,
        min_bytes=1,
        max_bytes=1 << 20,
        topics=[
            FetchRequest.FetchTopic(
                topic=topic,
                partitions=[
                    FetchRequest.FetchPartition(
                        partition=0, fetch_offset=offset, partition_max_bytes=1 << 20
                    )
                ],
            )
        ],
    )
    body = kafka_call(address, 1, 11, request)
    part = body.responses[0].partitions[0]
    return part.error_code, part.log_start_offset


def metadata_view(stack: Stack, keys: set[str]) -> tuple[set[str], list[str]]:
    """(which of `keys` metadata knows, every dead segment row whatever its age)."""
    store = open_store(stack.settings.metadata_target)
    try:
        known = store.known_segments(sorted(keys))
        dead = [d.key for d in store.dead_segments(now_ms() + 100 * DAY_MS, 100_000)]
    finally:
        store.close()
    return known, dead


# --------------------------------------------------------------------------------- tests


def test_deleted_topics_leave_no_objects(tmp_path: pathlib.Path, store_env: dict[str, str]) -> None:
    with Stack(tmp_path / "data", env={**store_env, **QUIET}) as stack:
        bootstrap = stack.kafka_address
        topics = [f"doomed-{i}" for i in range(3)]
        create_topics(bootstrap, *topics)
        for round_ in range(2):
            for topic in topics:
                produce(bootstrap, topic, [f"{topic}-{round_}-{i}".encode() for i in range(20)])
        written = segment_keys(stack)
        assert len(written) >= 6, written  # one segment per flush at least
        delete_topics(bootstrap, *topics)

        # Within the grace period nothing goes: a read that looked a block up just before the
        # delete must still find its object.
        report = run_pass(stack)
        assert report["dead_objects_deleted"] == report["orphans_deleted"] == 0, report
        assert segment_keys(stack) == written

        report = run_pass(stack, past_grace())
        assert report["dead_objects_deleted"] == len(written), report
        assert report["segments_forgotten"] == len(written), report
        assert segment_keys(stack) == set()
        known, dead = metadata_view(stack, written)
        assert (known, dead) == (set(), [])

        # A second pass finds nothing to do.
        again = run_pass(stack, past_grace())
        assert again["dead_objects_deleted"] == again["orphans_deleted"] == 0


def test_retention_by_time_keeps_whole_batches(
    tmp_path: pathlib.Path, store_env: dict[str, str]
) -> None:
    with Stack(tmp_path / "data", env={**store_env, **QUIET}) as stack:
        bootstrap = stack.kafka_address
        topic = "retained"
        create_topics(bootstrap, topic)
        start = now_ms()
        old, new = [], []
        # Three batches two days old, then two current ones: each flush is its own segment.
        for b in range(3):
            values = [f"old-{b}-{i}".encode() for i in range(5)]
            produce(bootstrap, topic, values, timestamp_ms=start - 2 * DAY_MS + b)
            old += values
        for b in range(2):
            values = [f"new-{b}-{i}".encode() for i in range(5)]
            produce(bootstrap, topic, values, timestamp_ms=start + b)
            new += values
        written = segment_keys(stack)
        assert earliest(bootstrap, topic) == 0

        admin = AdminClient({"bootstrap.servers": bootstrap})
        resource = ConfigResource(
            ResourceType.TOPIC,
            topic,
            incremental_configs=[
                ConfigEntry(
                    "retention.ms", str(DAY_MS), incremental_operation=AlterConfigOpType.SET
                )
            ],
        )
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(DEADLINE_S)

        report = run_pass(stack)
        assert report["blocks_removed"] == 3, report
        # Kafka keeps the first batch whose newest record is within retention.ms: offset 15.
        assert earliest(bootstrap, topic) == len(old)
        assert consume_all(bootstrap, topic, len(new)) == [
            (len(old) + i, value) for i, value in enumerate(new)
        ]
        assert fetch_error(stack.kafka_address, topic, 0) == (OFFSET_OUT_OF_RANGE, len(old))
        assert fetch_error(stack.kafka_address, topic, len(old) - 1)[0] == OFFSET_OUT_OF_RANGE
        assert fetch_error(stack.kafka_address, topic, len(old))[0] == 0
        # The dropped batches' objects stay for the grace period.
        assert segment_keys(stack) == written

        report = run_pass(stack, past_grace())
        assert report["dead_objects_deleted"] == 3, report
        kept = segment_keys(stack)
        assert kept < written and len(kept) == len(written) - 3
        assert earliest(bootstrap, topic) == len(old)

        # Cold reads: every kept record comes from the object store.
        stack.restart()
        assert consume_all(stack.kafka_address, topic, len(new)) == [
            (len(old) + i, value) for i, value in enumerate(new)
        ]


def test_orphans_are_deleted_only_after_the_grace_period(
    tmp_path: pathlib.Path, store_env: dict[str, str]
) -> None:
    with Stack(tmp_path / "data", env={**store_env, **QUIET}) as stack:
        bootstrap = stack.kafka_address
        create_topics(bootstrap, "live")
        values = [f"live-{i}".encode() for i in range(10)]
        produce(bootstrap, "live", values)
        live = segment_keys(stack)
        orphan = "segments/00000000000000000001-deadbeefdeadbeef.seg"
        put_object(stack, orphan, b"an upload whose commit never happened")
        assert segment_keys(stack) == live | {orphan}

        report = run_pass(stack)
        assert report["orphans_deleted"] == 0
        assert report["objects_listed"] == len(live) + 1
        assert segment_keys(stack) == live | {orphan}

        report = run_pass(stack, past_grace())
        assert report["orphans_deleted"] == 1, report
        assert segment_keys(stack) == live
        stack.restart()
        assert consume_all(stack.kafka_address, "live", len(values)) == list(enumerate(values))


def test_kill_9_mid_delete_then_one_clean_pass(
    tmp_path: pathlib.Path, store_env: dict[str, str]
) -> None:
    with Stack(tmp_path / "data", env={**store_env, **QUIET}) as stack:
        bootstrap = stack.kafka_address
        create_topics(bootstrap, "kept", "doomed")
        acked: dict[bytes, tuple[int, int]] = {}
        for b in range(30):
            produce(bootstrap, "doomed", [f"doomed-{b}-{i}".encode() for i in range(3)])
            if b % 10 == 0:
                kept = produce(bootstrap, "kept", [f"kept-{b}-{i}".encode() for i in range(5)])
                acked |= kept.acked
        before = segment_keys(stack)
        delete_topics(bootstrap, "doomed")
        for orphan in range(5):
            put_object(stack, f"segments/0000000000000000000{orphan}-orphan.seg", b"orphan")

        # A slow pass (4 objects a second, one request at a time), SIGKILLed mid-delete.
        slow = {
            "STREAMHOUSE_LIFECYCLE_DELETES_PER_SECOND": "4",
            "STREAMHOUSE_LIFECYCLE_DELETE_CONCURRENCY": "1",
        }
        at = past_grace()
        for kill in range(3):
            left = segment_keys(stack)
            proc = subprocess.Popen(
                lifecycle_command(at),
                env={**stack.env, **slow},
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_until(
                    lambda left=left: len(segment_keys(stack)) < len(left),
                    60,
                    f"kill {kill}: the lifecycle pass deleting",
                )
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
            assert proc.returncode == -signal.SIGKILL, "the pass ended before it was killed"

        report = run_pass(stack, at)
        assert report["dead_objects_deleted"] >= 1, report
        remaining = segment_keys(stack)
        assert remaining, "the kept topic's segments must remain"
        assert remaining < before
        known, dead = metadata_view(stack, remaining)
        assert known == remaining, f"objects metadata does not know: {remaining - known}"
        assert dead == [], f"dead segment rows left after a clean pass: {dead[:5]}"

        stack.restart()  # cold reads only
        log = read_kafka_log(stack.kafka_address, "kept", 1)
        assert log_problems(log, acked) == []
        assert len(log[0]) == len(acked)


# The supervised loop with a short grace period (which must outlast produce, read and store
# requests in flight, so those are shortened too).
FAST_LIFECYCLE = {
    "STREAMHOUSE_LIFECYCLE_ENABLED": "true",
    "STREAMHOUSE_LIFECYCLE_INTERVAL_MS": "300",
    "STREAMHOUSE_LIFECYCLE_GRACE_MS": "5000",
    "STREAMHOUSE_PRODUCE_TIMEOUT_MS": "4000",
    "STREAMHOUSE_READER_MAX_WAIT_MS": "1000",
    "STREAMHOUSE_STORE_TIMEOUT_MS": "4000",
}


def test_the_supervised_lifecycle_reclaims_a_deleted_topic(tmp_path: pathlib.Path) -> None:
    with Stack(tmp_path / "data", env=FAST_LIFECYCLE) as stack:
        wait_until(lambda: stack.pid("lifecycle") != 0, 30, "the lifecycle program running")
        bootstrap = stack.kafka_address
        create_topics(bootstrap, "short-lived", "kept")
        produce(bootstrap, "kept", [b"stays"])
        kept = segment_keys(stack)
        for b in range(5):
            produce(bootstrap, "short-lived", [f"v{b}".encode()])
        assert len(segment_keys(stack)) == len(kept) + 5
        deleted_at = time.monotonic()
        delete_topics(bootstrap, "short-lived")
        wait_until(lambda: segment_keys(stack) == kept, 60, "the deleted topic's objects gone")
        # Not before the grace period.
        assert time.monotonic() - deleted_at >= 5.0
        assert consume_all(bootstrap, "kept", 1) == [(0, b"stays")]
        # Its metadata calls ran off the event loop (the stack's loop-call guard is on) and no
        # pass failed.
        text = (stack.data_dir / "logs" / "lifecycle.log").read_text()
        assert " ERROR " not in text and "pass stopped" not in text, text[-2000:]
        assert "lifecycle ready" in text
        # A killed lifecycle comes back.
        old = stack.kill("lifecycle")
        stack.wait_restarted("lifecycle", old)


def test_every_agent_runs_a_lifecycle_on_shared_postgresql_and_s3(make_cluster) -> None:  # noqa: ANN001
    """Two agents, each with its supervised lifecycle passing every 300 ms over the same
    PostgreSQL and bucket: a deleted topic's objects and an orphan are reclaimed once, the
    kept topic's records all stay readable, and no pass fails (both logs are clean)."""
    cluster = make_cluster(2, env=FAST_LIFECYCLE)
    bootstrap = cluster.kafka_bootstrap
    create_topics(bootstrap, "doomed", "kept")
    acked: dict[bytes, tuple[int, int]] = {}
    for b in range(10):
        produce(bootstrap, "doomed", [f"doomed-{b}-{i}".encode() for i in range(3)])
        acked |= produce(bootstrap, "kept", [f"kept-{b}-{i}".encode() for i in range(3)]).acked
    agent = cluster[0]
    before = segment_keys(agent)
    put_object(agent, "segments/00000000000000000000-orphan.seg", b"orphan")
    delete_topics(bootstrap, "doomed")

    def reclaimed() -> bool:
        left = segment_keys(agent)
        known, dead = metadata_view(agent, left)
        return left == known and dead == []

    wait_until(reclaimed, 60, "the deleted topic's objects and the orphan reclaimed")
    left = segment_keys(agent)
    assert left and len(left) <= len(before) - 10, "the doomed topic's 10+ segments must go"
    assert "segments/00000000000000000000-orphan.seg" not in left
    log = read_kafka_log(bootstrap, "kept", 1)
    assert log_problems(log, acked) == []
    for stack in cluster:
        text = (stack.data_dir / "logs" / "lifecycle.log").read_text()
        assert "pass stopped" not in text and " ERROR " not in text, text[-2000:]
