"""Compacted topics (cleanup.policy=compact) against real stacks: a local folder and SeaweedFS S3.

Many updates per key (and tombstones) are produced with confluent-kafka; passes of
`python3 -m lifecycle --once --now-ms MS` (the movable clock) compact them; reading from the
beginning with confluent-kafka AND gRPC gives exactly the latest record of each key at its
original offset. Tombstones go only after delete.retention.ms, nothing younger than
min.compaction.lag.ms is compacted, and a record without a key is refused at the edge.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from streamhouse.client import Client, StreamHouseError
from streamhouse.testing import Stack

DEADLINE_S = 30.0
REPO = pathlib.Path(__file__).resolve().parents[2]
HOUR_MS = 3_600_000
QUIET = {"STREAMHOUSE_LIFECYCLE_ENABLED": "false"}

# (offset, key, value)
Entry = tuple[int, bytes | None, bytes | None]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture(params=["folder", "s3"])
def store_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    if request.param == "folder":
        yield {}
        return
    seaweed = request.getfixturevalue("seaweed")
    env = seaweed.env()
    env["STREAMHOUSE_OBJECT_STORE"] = f"s3://{seaweed.bucket}/compacted-{uuid.uuid4().hex[:12]}"
    yield env


def run_pass(stack: Stack, at_ms: int) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "--once", "--now-ms", str(at_ms)],
        env=stack.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"lifecycle pass failed ({done.returncode}): {done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def create_topic(bootstrap: str, name: str, config: dict[str, str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, 1, config=config)]).values():
        future.result(DEADLINE_S)


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]]) -> list[Entry]:
    """Produces to partition 0 in one flush (one segment); the acknowledged (offset, key, value)."""
    acked: list[Entry] = []
    failed: list[str] = []

    def report(err: object, msg: object) -> None:
        if err is None:
            acked.append((msg.offset(), msg.key(), msg.value()))  # type: ignore[attr-defined]
        else:
            failed.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    try:
        for key, value in records:
            producer.produce(topic, key=key, value=value, partition=0, on_delivery=report)
        assert producer.flush(DEADLINE_S) == 0
    finally:
        producer.close()
    assert failed == [] and len(acked) == len(records), failed
    return sorted(acked)


def kafka_read(bootstrap: str, topic: str) -> list[Entry]:
    """Every record from the beginning to the high watermark, read with confluent-kafka."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    out: list[Entry] = []
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=DEADLINE_S)
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + DEADLINE_S
        while not out or out[-1][0] < high - 1:
            assert time.monotonic() < deadline, f"read up to {out[-1:]} of {high}"
            for message in consumer.consume(num_messages=500, timeout=1):
                if message.error() is not None:
                    raise KafkaException(message.error())
                out.append((message.offset(), message.key(), message.value()))
    finally:
        consumer.close()
    return out


def grpc_read(address: str, topic: str, max_records: int = 0) -> list[Entry]:
    """Every record from offset 0 to the high watermark, read with the gRPC client."""
    out: list[Entry] = []
    with Client(address) as client:
        offset, high = 0, 1
        deadline = time.monotonic() + DEADLINE_S
        while offset < high:
            assert time.monotonic() < deadline, f"gRPC read stuck at offset {offset} of {high}"
            records, offset, high, _ = client.consume(topic, 0, offset, max_records=max_records)
            out += [(r.offset, r.key, r.value) for r in records]
    return out


def latest_per_key(entries: list[Entry], *, drop_tombstones: bool = False) -> list[Entry]:
    last: dict[bytes | None, Entry] = {}
    for entry in entries:
        last[entry[1]] = entry
    return sorted(e for e in last.values() if not (drop_tombstones and e[2] is None))


def rounds(n: int, keys: int, start: int = 0) -> list[list[tuple[bytes, bytes | None]]]:
    return [
        [(b"key-%03d" % k, b"value-%d-%d" % (r, k)) for k in range(keys)]
        for r in range(start, start + n)
    ]


def check_reads(stack: Stack, topic: str, expected: list[Entry]) -> None:
    assert kafka_read(stack.kafka_address, topic) == expected
    assert grpc_read(stack.grpc_address, topic) == expected
    assert grpc_read(stack.grpc_address, topic, max_records=7) == expected


def test_compaction_keeps_the_latest_value_per_key_and_tombstones_for_delete_retention(
    tmp_path: pathlib.Path, store_env: dict[str, str]
) -> None:
    with Stack(tmp_path / "data", env={**store_env, **QUIET}) as stack:
        bootstrap = stack.kafka_address
        topic = "compacted"
        create_topic(
            bootstrap,
            topic,
            {
                "cleanup.policy": "compact",
                "delete.retention.ms": str(HOUR_MS),
                "min.cleanable.dirty.ratio": "0.01",
            },
        )
        produced: list[Entry] = []
        for records in rounds(8, 60):
            produced += produce(bootstrap, topic, records)
        # tombstones for a third of the keys, then more updates of others
        produced += produce(bootstrap, topic, [(b"key-%03d" % k, None) for k in range(0, 60, 3)])
        produced += produce(bootstrap, topic, rounds(1, 30, start=8)[0])
        marker = produce(bootstrap, topic, [(b"marker", b"newest")])  # never cleaned
        assert kafka_read(bootstrap, topic) == produced + marker

        started = now_ms()
        report = run_pass(stack, started + 1000)
        expected = latest_per_key(produced) + marker
        assert len(expected) == 61
        check_reads(stack, topic, expected)
        # tombstones are still there (delete.retention.ms from the first clean); the keys
        # updated after their tombstone have their new value
        assert sum(1 for _, _, v in expected if v is None) == 10
        assert report["key_compaction"]["records_removed"] == len(produced) - 60, report
        assert report["key_compaction"]["tombstones_removed"] == 0, report

        # more updates, and a pass before the tombstones' horizon: they stay
        more = produce(bootstrap, topic, [(b"key-001", b"later")])
        marker2 = produce(bootstrap, topic, [(b"marker", b"newest-2")])
        run_pass(stack, started + HOUR_MS - 60_000)
        before = latest_per_key(produced + marker + more) + marker2
        check_reads(stack, topic, before)

        # past the horizon (and dirty again): the tombstones go
        more2 = produce(bootstrap, topic, [(b"key-002", b"later")])
        marker3 = produce(bootstrap, topic, [(b"marker", b"newest-3")])
        report = run_pass(stack, started + HOUR_MS + 60_000)
        assert report["key_compaction"]["tombstones_removed"] == 10, report
        after = (
            latest_per_key(produced + marker + more + marker2 + more2, drop_tombstones=True)
            + marker3
        )
        assert len(after) == 52  # 50 keys, the marker of the cleaned range and the newest
        check_reads(stack, topic, after)


def test_nothing_younger_than_min_compaction_lag_is_compacted(
    tmp_path: pathlib.Path, store_env: dict[str, str]
) -> None:
    with Stack(tmp_path / "data", env={**store_env, **QUIET}) as stack:
        bootstrap = stack.kafka_address
        topic = "lagged"
        create_topic(
            bootstrap,
            topic,
            {"cleanup.policy": "compact,delete", "min.compaction.lag.ms": str(HOUR_MS)},
        )
        produced: list[Entry] = []
        for records in rounds(4, 20):
            produced += produce(bootstrap, topic, records)
        marker = produce(bootstrap, topic, [(b"marker", b"newest")])
        started = now_ms()
        run_pass(stack, started + HOUR_MS - 60_000)
        check_reads(stack, topic, produced + marker)
        run_pass(stack, started + HOUR_MS + 60_000)
        check_reads(stack, topic, latest_per_key(produced) + marker)
        # compact,delete: retention (retention.ms, 7 days by default) applies as well, to the
        # compacted blocks too
        run_pass(stack, started + 8 * 24 * HOUR_MS)
        with Client(stack.grpc_address) as client:
            (state,) = client.get_topic(topic).partition_info
        assert state.log_start_offset == state.high_watermark == marker[0][0] + 1


def test_records_without_a_key_are_refused(tmp_path: pathlib.Path) -> None:
    with Stack(tmp_path / "data", env=QUIET) as stack:
        bootstrap = stack.kafka_address
        create_topic(bootstrap, "keyed", {"cleanup.policy": "compact"})
        errors: list[str] = []
        producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 5, "message.send.max.retries": 0}
        )
        try:
            producer.produce(
                "keyed",
                value=b"no key",
                partition=0,
                on_delivery=lambda err, _msg: errors.append(err.name() if err else "OK"),
            )
            assert producer.flush(DEADLINE_S) == 0
        finally:
            producer.close()
        assert errors == ["INVALID_RECORD"]
        with Client(stack.grpc_address) as client:
            with pytest.raises(StreamHouseError, match="record 0 has no key: a compacted topic"):
                client.produce("keyed", b"no key", partition=0)
            assert client.produce("keyed", b"with key", key=b"k", partition=0) == (0, 0)


def test_compaction_configs_have_kafkas_defaults_and_are_altered_at_runtime(
    tmp_path: pathlib.Path,
) -> None:
    with Stack(tmp_path / "data", env=QUIET) as stack:
        bootstrap = stack.kafka_address
        create_topic(bootstrap, "configs", {"cleanup.policy": "compact"})
        admin = AdminClient({"bootstrap.servers": bootstrap})
        topic = ConfigResource(ResourceType.TOPIC, "configs")

        def described() -> dict[str, str]:
            (future,) = admin.describe_configs([topic]).values()
            return {name: entry.value for name, entry in future.result(DEADLINE_S).items()}

        defaults = described()
        assert defaults["delete.retention.ms"] == "86400000"
        assert defaults["min.compaction.lag.ms"] == "0"
        assert defaults["max.compaction.lag.ms"] == str(2**63 - 1)
        assert defaults["min.cleanable.dirty.ratio"] == "0.5"

        def alter(name: str, value: str) -> None:
            entry = ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
            resource = ConfigResource(ResourceType.TOPIC, "configs", incremental_configs=[entry])
            for future in admin.incremental_alter_configs([resource]).values():
                future.result(DEADLINE_S)

        for name, bad in (
            ("min.cleanable.dirty.ratio", "1.5"),
            ("delete.retention.ms", "-1"),
            ("max.compaction.lag.ms", "0"),
        ):
            with pytest.raises(KafkaException, match=name):
                alter(name, bad)
        alter("min.cleanable.dirty.ratio", "0.1")
        alter("delete.retention.ms", "60000")
        now = described()
        assert now["min.cleanable.dirty.ratio"] == "0.1" and now["delete.retention.ms"] == "60000"
        with Client(stack.grpc_address) as client:
            with pytest.raises(StreamHouseError, match="min.compaction.lag.ms"):
                client.alter_topic_config("configs", {"min.compaction.lag.ms": "soon"})
            altered = client.alter_topic_config("configs", {"min.compaction.lag.ms": "5000"})
            assert altered.config["min.compaction.lag.ms"] == "5000"
