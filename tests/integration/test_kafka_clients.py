"""Real, unmodified Kafka clients against a real StreamHouse: confluent-kafka (librdkafka),
kafka-python, aiokafka and kcat produce and consume every compression codec, headers, null and
empty keys, tombstones and explicit timestamps; keyed records land where Java's default
partitioner puts them; records cross between the Kafka and gRPC protocols; the idempotent
producer writes no duplicates; ListOffsets answers earliest, latest, by timestamp and max
timestamp; a consumer waiting at the tail gets new data.

One stack serves the whole module (every test uses its own topics); the kcat tests are skipped
when kcat is not installed (`apt-get install -y kcat`).
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any, TypeVar

import kafka.errors as kafka_errors
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition as AioTopicPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KpTopicPartition
from kafka.admin import KafkaAdminClient
from kafka.protocol.consumer.offsets import OffsetSpec as KpOffsetSpec

from streamhouse.client import Client, Record
from streamhouse.recordbatch import default_partition
from streamhouse.testing import Stack, poll_until

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
TS0 = 1_700_000_000_000
DEADLINE_S = 20.0

# (key, value, headers, timestamp ms): what a record looks like on the way in and out.
Rec = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int]
T = TypeVar("T")

kcat_missing = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("kafka-clients") / "data"
    # No initial rebalance delay: a lone group consumer gets its assignment at once.
    with Stack(data, env={"STREAMHOUSE_GROUP_INITIAL_REBALANCE_DELAY_MS": "0"}) as running:
        yield running


@pytest.fixture(scope="module")
def bootstrap(stack: Stack) -> str:
    return f"127.0.0.1:{stack.kafka_port}"


@pytest.fixture(scope="module")
def grpc(stack: Stack) -> Iterator[Client]:
    with Client(stack.grpc_address) as client:
        yield client


# -- helpers ----------------------------------------------------------------------------------


def sample_records(tag: str, null_header_values: bool = False) -> list[Rec]:
    """Keyed, null-key, empty-key, tombstone and empty records with repeated headers and
    explicit timestamps, then enough similar records that every codec really compresses."""
    records: list[Rec] = [
        (
            f"key-{tag}".encode(),
            f"value-{tag}".encode(),
            [("h", b"1"), ("other", b"x"), ("h", b"2"), ("h", b"1")],
            TS0 + 1,
        ),
        (None, b"null key", [("h", b"only")], TS0 + 2),
        (b"", b"empty key", [], TS0 + 3),
        (b"tombstone", None, [("why", b"deleted")], TS0 + 4),
        (b"", b"", [("empty", b"")], TS0 + 5),
        (b"binary", bytes(range(256)) * 4, [("bin", bytes(range(256)))], TS0 - 1),
    ]
    if null_header_values:
        records.append((b"null-header", b"v", [("n", None), ("n", b"set")], TS0 + 6))
    for i in range(40):
        records.append(
            (f"k{i % 7}".encode(), (f"{tag} payload {i % 5} " * 20).encode(), [], TS0 + 100 + i)
        )
    return records


def grpc_read(grpc: Client, topic: str, partition: int, start: int = 0) -> list[Record]:
    out: list[Record] = []
    offset = start
    while True:
        got, offset, hwm, _ = grpc.consume(topic, partition, offset, max_records=10_000)
        out.extend(got)
        if offset >= hwm:
            return out


def check_records(got: list[tuple[Rec, int]], want: list[Rec], first_offset: int = 0) -> None:
    """Records equal, in order, at contiguous offsets from `first_offset`."""
    assert [offset for _, offset in got] == list(range(first_offset, first_offset + len(want)))
    assert [rec for rec, _ in got] == want


def ck_produce(
    bootstrap: str,
    topic: str,
    records: list[Rec],
    conf: dict[str, Any] | None = None,
    **kwargs: Any,
) -> list[Message]:
    """Produces with a fresh confluent Producer (`conf` added to its settings, `kwargs` such as
    partition= to every produce call), flushes and closes it; returns the delivery reports in
    delivery order, none failed."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, **(conf or {})})
    delivered: list[Message] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        delivered.append(msg)

    try:
        for key, value, headers, ts in records:
            producer.produce(
                topic,
                key=key,
                value=value,
                headers=headers,
                timestamp=ts,
                on_delivery=on_delivery,
                **kwargs,
            )
        assert producer.flush(DEADLINE_S) == 0
    finally:
        producer.close()
    assert not errors
    assert len(delivered) == len(records)
    return delivered


def ck_consume(
    bootstrap: str, topic: str, partition: int, count: int, start: int = OFFSET_BEGINNING
) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"assign-only-{topic}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        out: list[Message] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(out) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"consumed {len(out)} of {count} records of {topic}"
            msg = consumer.poll(min(remaining, 1.0))
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            out.append(msg)
        return out
    finally:
        consumer.close()


def ck_rec(msg: Message) -> tuple[Rec, int]:
    ts_type, ts = msg.timestamp()
    assert ts_type == 1  # CreateTime
    return (msg.key(), msg.value(), list(msg.headers() or []), ts), msg.offset()


def kp_consume(bootstrap: str, topic: str, partition: int, count: int) -> list[Any]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        tp = KpTopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        out: list[Any] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(out) < count:
            assert time.monotonic() < deadline, f"consumed {len(out)} of {count} from {topic}"
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(batch)
        return out
    finally:
        consumer.close()


def kp_rec(msg: Any) -> tuple[Rec, int]:
    assert msg.timestamp_type == 0
    return (msg.key, msg.value, list(msg.headers), msg.timestamp), msg.offset


def kcat(bootstrap: str, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["kcat", "-b", bootstrap, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_round_trip(bootstrap: str, grpc: Client, codec: str) -> None:
    topic = f"ck-roundtrip-{codec}"
    grpc.create_topic(topic, 3)
    records = sample_records(f"ck-{codec}", null_header_values=True)
    records.append((None, None, [], TS0 + 7))  # a null key and a null value together
    reports = ck_produce(bootstrap, topic, records, {"compression.type": codec}, partition=2)
    assert [(m.partition(), m.offset()) for m in reports] == [(2, i) for i in range(len(records))]
    got = ck_consume(bootstrap, topic, 2, len(records))
    check_records([ck_rec(m) for m in got], records)
    assert {m.partition() for m in got} == {2}


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_round_trip(bootstrap: str, grpc: Client, codec: str) -> None:
    topic = f"kp-roundtrip-{codec}"
    grpc.create_topic(topic, 1)
    records = sample_records(f"kp-{codec}")
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        compression_type=None if codec == "none" else codec,
        linger_ms=20,
    )
    try:
        futures = [
            producer.send(topic, key=k, value=v, headers=h, timestamp_ms=ts, partition=0)
            for k, v, h, ts in records
        ]
        producer.flush(timeout=DEADLINE_S)
        metas = [f.get(timeout=DEADLINE_S) for f in futures]
    finally:
        producer.close()
    assert [m.offset for m in metas] == list(range(len(records)))
    assert [m.timestamp for m in metas] == [ts for *_, ts in records]
    got = kp_consume(bootstrap, topic, 0, len(records))
    check_records([kp_rec(m) for m in got], records)


@pytest.mark.parametrize("codec", CODECS)
def test_aiokafka_round_trip(bootstrap: str, grpc: Client, codec: str) -> None:
    topic = f"aio-roundtrip-{codec}"
    grpc.create_topic(topic, 1)
    records = sample_records(f"aio-{codec}")

    async def run() -> tuple[list[Any], list[Any]]:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            compression_type=None if codec == "none" else codec,
            linger_ms=20,
        )
        await producer.start()
        try:
            futures = [
                await producer.send(topic, key=k, value=v, headers=h, timestamp_ms=ts, partition=0)
                for k, v, h, ts in records
            ]
            metas = list(await asyncio.gather(*futures))
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            tp = AioTopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            got: list[Any] = []
            async with asyncio.timeout(DEADLINE_S):
                while len(got) < len(records):
                    for batch in (await consumer.getmany(timeout_ms=500)).values():
                        got.extend(batch)
        finally:
            await consumer.stop()
        return metas, got

    metas, got = asyncio.run(run())
    assert [m.offset for m in metas] == list(range(len(records)))
    check_records(
        [((m.key, m.value, list(m.headers), m.timestamp), m.offset) for m in got], records
    )


@kcat_missing
@pytest.mark.parametrize("codec", CODECS)
def test_kcat_round_trip(bootstrap: str, grpc: Client, codec: str) -> None:
    topic = f"kcat-roundtrip-{codec}"
    grpc.create_topic(topic, 1)
    lines = [f"key-{i}:value-{codec}-{i}" for i in range(30)] + [":empty key", "empty-value:"]
    kcat(
        bootstrap,
        "-P",
        "-t",
        topic,
        "-p",
        "0",
        "-K:",
        "-z",
        codec,
        "-H",
        "h=1",
        "-H",
        "h=2",
        "-H",
        "e=",
        stdin="\n".join(lines) + "\n",
    )
    out = kcat(
        bootstrap, "-C", "-t", topic, "-e", "-q", "-o", "beginning", "-f", "%k|%s|%h|%T|%o\n"
    )
    rows = [line.split("|") for line in out.splitlines()]
    assert [r[:2] for r in rows] == [line.split(":", 1) for line in lines]
    assert {r[2] for r in rows} == {"h=1,h=2,e="}
    assert [int(r[4]) for r in rows] == list(range(len(lines)))
    # kcat stamps records with the produce time; every record carries one.
    assert all(int(r[3]) > TS0 for r in rows)
    # Empty (not null) keys and values, as kcat produced them without -Z; headers in order.
    got = ck_consume(bootstrap, topic, 0, len(lines))
    assert got[-2].key() == b"" and got[-2].value() == b"empty key"
    assert got[-1].key() == b"empty-value" and got[-1].value() == b""
    assert got[0].headers() == [("h", b"1"), ("h", b"2"), ("e", b"")]


@kcat_missing
def test_kcat_null_keys_and_values(bootstrap: str, grpc: Client) -> None:
    topic = "kcat-nulls"
    grpc.create_topic(topic, 1)
    # -Z sends empty keys and values as NULL.
    kcat(bootstrap, "-P", "-t", topic, "-p", "0", "-K:", "-Z", stdin="k:v\n:null key\ntomb:\n")
    out = kcat(bootstrap, "-C", "-t", topic, "-e", "-q", "-o", "beginning", "-J")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["key"], r["payload"], r["offset"]) for r in rows] == [
        ("k", "v", 0),
        (None, "null key", 1),
        ("tomb", None, 2),
    ]


@kcat_missing
def test_kcat_reads_timestamps_and_headers_from_other_clients(bootstrap: str, grpc: Client) -> None:
    topic = "kcat-reads-confluent"
    grpc.create_topic(topic, 1)
    records: list[Rec] = [
        (b"a", b"1", [("x", b"1"), ("x", b"2")], TS0 + 11),
        (b"b", b"2", [], TS0 + 7),
        (b"c", b"3", [("y", b"z")], TS0 + 99),
    ]
    ck_produce(bootstrap, topic, records, partition=0)
    out = kcat(
        bootstrap, "-C", "-t", topic, "-e", "-q", "-o", "beginning", "-f", "%k|%s|%h|%T|%o\n"
    )
    assert out.splitlines() == [
        f"a|1|x=1,x=2|{TS0 + 11}|0",
        f"b|2||{TS0 + 7}|1",
        f"c|3|y=z|{TS0 + 99}|2",
    ]


@kcat_missing
def test_kcat_metadata(bootstrap: str, grpc: Client, stack: Stack) -> None:
    grpc.create_topic("kcat-metadata", 4)
    out = kcat(bootstrap, "-L", "-J")
    meta = json.loads(out)
    assert meta["brokers"] == [{"id": 0, "name": f"127.0.0.1:{stack.kafka_port}"}]
    topics = {t["topic"]: t for t in meta["topics"]}
    assert "kcat-metadata" in topics
    partitions = topics["kcat-metadata"]["partitions"]
    assert [p["partition"] for p in partitions] == [0, 1, 2, 3]
    assert all(p["leader"] == 0 and p["isrs"] == [{"id": 0}] for p in partitions)
    plain = kcat(bootstrap, "-L", "-t", "kcat-metadata")
    assert 'topic "kcat-metadata" with 4 partitions' in plain


# -- partitioning -----------------------------------------------------------------------------

PARTITIONS = 6
KEYS = [f"user-{i}".encode() for i in range(60)] + [b"", b"\x00\xff", "ünïcode".encode()]


def check_partitioning(grpc: Client, topic: str, keys: list[bytes] = KEYS) -> None:
    """Every key was stored (once) in the partition Java's default partitioner picks."""
    stored: list[bytes] = []
    for partition in range(PARTITIONS):
        for record in grpc_read(grpc, topic, partition):
            assert record.key is not None
            assert default_partition(record.key, PARTITIONS) == partition, record.key
            stored.append(record.key)
    assert sorted(stored) == sorted(keys)


def test_partitioner_confluent_murmur2(bootstrap: str, grpc: Client) -> None:
    topic = "partition-confluent"
    grpc.create_topic(topic, PARTITIONS)
    records: list[Rec] = [(k, b"v", [], TS0) for k in KEYS]
    reports = ck_produce(bootstrap, topic, records, {"partitioner": "murmur2_random"})
    for msg in reports:
        assert msg.partition() == default_partition(msg.key(), PARTITIONS)
    check_partitioning(grpc, topic)


def test_partitioner_kafka_python(bootstrap: str, grpc: Client) -> None:
    topic = "partition-kafka-python"
    grpc.create_topic(topic, PARTITIONS)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        futures = [producer.send(topic, key=k, value=b"v") for k in KEYS]
        producer.flush(timeout=DEADLINE_S)
        metas = [f.get(timeout=DEADLINE_S) for f in futures]
    finally:
        producer.close()
    assert [m.partition for m in metas] == [default_partition(k, PARTITIONS) for k in KEYS]
    check_partitioning(grpc, topic)


def test_partitioner_aiokafka(bootstrap: str, grpc: Client) -> None:
    topic = "partition-aiokafka"
    grpc.create_topic(topic, PARTITIONS)

    async def run() -> list[Any]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(topic, key=k, value=b"v") for k in KEYS]
            return list(await asyncio.gather(*futures))
        finally:
            await producer.stop()

    metas = asyncio.run(run())
    assert [m.partition for m in metas] == [default_partition(k, PARTITIONS) for k in KEYS]
    check_partitioning(grpc, topic)


@kcat_missing
def test_partitioner_kcat_murmur2(bootstrap: str, grpc: Client) -> None:
    topic = "partition-kcat"
    grpc.create_topic(topic, PARTITIONS)
    keys = [k for k in KEYS if k and b"\x00" not in k and b"\n" not in k]
    lines = "".join(f"{k.decode()}\tv\n" for k in keys)
    kcat(
        bootstrap, "-P", "-t", topic, "-K\t", "-X", "topic.partitioner=murmur2_random", stdin=lines
    )
    check_partitioning(grpc, topic, keys)


# -- LogAppendTime ----------------------------------------------------------------------------


def test_log_append_time_topic(bootstrap: str, grpc: Client) -> None:
    """On a message.timestamp.type=LogAppendTime topic the broker's time replaces the
    producer's, for Kafka and gRPC readers alike, and timestamp lookups use it."""
    topic = "log-append-time"
    grpc.create_topic(topic, 1, {"message.timestamp.type": "LogAppendTime"})
    records: list[Rec] = [(b"k", f"v{i}".encode(), [], TS0 + i) for i in range(5)]
    before = int(time.time() * 1000)
    reports = ck_produce(bootstrap, topic, records, {"compression.type": "lz4"}, partition=0)
    after = int(time.time() * 1000)
    stamps = {m.timestamp() for m in reports}
    assert len(stamps) == 1
    ((ts_type, appended),) = stamps
    assert ts_type == 2  # LogAppendTime
    assert before <= appended <= after
    got = ck_consume(bootstrap, topic, 0, len(records))
    assert [(m.value(), m.timestamp()) for m in got] == [
        (v, (2, appended)) for _, v, _, _ in records
    ]
    got_kp = kp_consume(bootstrap, topic, 0, len(records))
    assert {(m.timestamp_type, m.timestamp) for m in got_kp} == {(1, appended)}
    assert {r.timestamp_ms for r in grpc_read(grpc, topic, 0)} == {appended}
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "log-append-time"})
    try:
        (found,) = consumer.offsets_for_times(
            [TopicPartition(topic, 0, TS0 + 3)], timeout=DEADLINE_S
        )
        assert found.offset == 0
        (found,) = consumer.offsets_for_times(
            [TopicPartition(topic, 0, appended + 1)], timeout=DEADLINE_S
        )
        assert found.offset == -1
    finally:
        consumer.close()


# -- Kafka <-> gRPC ---------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_kafka_produced_read_over_grpc(bootstrap: str, grpc: Client, codec: str) -> None:
    topic = f"kafka-to-grpc-{codec}"
    grpc.create_topic(topic, 1)
    records = sample_records(f"to-grpc-{codec}", null_header_values=True)
    ck_produce(bootstrap, topic, records, {"compression.type": codec}, partition=0)
    got = grpc_read(grpc, topic, 0)
    check_records(
        [((r.key, r.value, list(r.headers), r.timestamp_ms), r.offset) for r in got], records
    )


def test_grpc_produced_read_over_kafka(bootstrap: str, grpc: Client) -> None:
    topic = "grpc-to-kafka"
    grpc.create_topic(topic, 1)
    records = sample_records("from-grpc", null_header_values=True)
    records.append((None, None, [], TS0 + 8))
    response = grpc.produce_batch(
        topic,
        [Record(key=k, value=v, headers=h, timestamp_ms=ts) for k, v, h, ts in records],
        partition=0,
    )
    assert response.record_count == len(records)
    got = ck_consume(bootstrap, topic, 0, len(records))
    check_records([ck_rec(m) for m in got], records)
    # kafka-python too (it cannot express null header values: compare the rest).
    got_kp = kp_consume(bootstrap, topic, 0, len(records))
    assert [(m.key, m.value, m.timestamp, m.offset) for m in got_kp] == [
        (k, v, ts, i) for i, (k, v, _, ts) in enumerate(records)
    ]
    assert [len(m.headers) for m in got_kp] == [len(h) for _, _, h, _ in records]


# -- idempotent producer ----------------------------------------------------------------------


def test_confluent_idempotent_producer(bootstrap: str, grpc: Client) -> None:
    topic = "idempotent-confluent"
    grpc.create_topic(topic, 3)
    total = 3000
    records: list[Rec] = [
        (f"key-{i % 50}".encode(), f"value-{i}".encode(), [("seq", str(i).encode())], TS0 + i)
        for i in range(total)
    ]
    conf = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 100,
        "compression.type": "lz4",
    }
    reports = ck_produce(bootstrap, topic, records, conf)
    assert len({(m.partition(), m.offset()) for m in reports}) == total
    partition_of = {m.value(): m.partition() for m in reports}
    seen = 0
    for partition in range(3):
        got = grpc_read(grpc, topic, partition)
        assert [r.offset for r in got] == list(range(len(got)))
        values = [r.value for r in got]
        assert len(values) == len(set(values)), "duplicates stored"
        # Per-partition order is the produce order.
        want = [r for r in records if partition_of[r[1]] == partition]
        assert [(r.key, r.value, list(r.headers), r.timestamp_ms) for r in got] == want
        seen += len(got)
    assert seen == total


def test_idempotent_producers_kafka_python_and_aiokafka(bootstrap: str, grpc: Client) -> None:
    total = 300
    grpc.create_topic("idempotent-kafka-python", 1)
    grpc.create_topic("idempotent-aiokafka", 1)
    producer = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    try:
        futures = [
            producer.send("idempotent-kafka-python", value=f"v{i}".encode()) for i in range(total)
        ]
        producer.flush(timeout=DEADLINE_S)
        assert [f.get(timeout=DEADLINE_S).offset for f in futures] == list(range(total))
    finally:
        producer.close()

    async def run() -> list[Any]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            futures = [
                await producer.send("idempotent-aiokafka", value=f"v{i}".encode())
                for i in range(total)
            ]
            return list(await asyncio.gather(*futures))
        finally:
            await producer.stop()

    assert [m.offset for m in asyncio.run(run())] == list(range(total))
    for topic in ("idempotent-kafka-python", "idempotent-aiokafka"):
        got = grpc_read(grpc, topic, 0)
        assert [(r.offset, r.value) for r in got] == [(i, f"v{i}".encode()) for i in range(total)]


def test_refused_produces(bootstrap: str, grpc: Client) -> None:
    """A batch over the topic's max.message.bytes fails with MESSAGE_TOO_LARGE and is not
    stored."""
    topic = "small-records"
    grpc.create_topic(topic, 1, {"max.message.bytes": "1000"})
    producer = Producer({"bootstrap.servers": bootstrap, "message.send.max.retries": 0})
    errors: list[KafkaError] = []
    try:
        producer.produce(
            topic,
            value=bytes(5000),
            on_delivery=lambda err, _msg: errors.append(err),
        )
        assert producer.flush(DEADLINE_S) == 0
    finally:
        producer.close()
    assert [e.code() for e in errors] == [KafkaError.MSG_SIZE_TOO_LARGE]
    kp = KafkaProducer(bootstrap_servers=bootstrap, retries=0)
    try:
        with pytest.raises(kafka_errors.MessageSizeTooLargeError):
            kp.send(topic, value=bytes(5000)).get(timeout=DEADLINE_S)
        kp.send(topic, value=b"fits").get(timeout=DEADLINE_S)
    finally:
        kp.close()
    assert [(r.offset, r.value) for r in grpc_read(grpc, topic, 0)] == [(0, b"fits")]


# -- ListOffsets and the tail -----------------------------------------------------------------

# Timestamps out of order on purpose: the maximum is at offset 3.
OFFSET_TIMESTAMPS = [TS0 + 1000 * i for i in range(10)]
OFFSET_TIMESTAMPS[3] = TS0 + 50_000


@pytest.fixture(scope="module")
def offsets_topic(bootstrap: str, grpc: Client) -> str:
    topic = "list-offsets"
    grpc.create_topic(topic, 2)
    records: list[Rec] = [(b"k", f"{i}".encode(), [], ts) for i, ts in enumerate(OFFSET_TIMESTAMPS)]
    ck_produce(bootstrap, topic, records, partition=0)
    return topic


def test_list_offsets_confluent(bootstrap: str, offsets_topic: str) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "list-offsets-ck"})
    try:
        assert consumer.get_watermark_offsets(
            TopicPartition(offsets_topic, 0), timeout=DEADLINE_S
        ) == (0, 10)
        assert consumer.get_watermark_offsets(
            TopicPartition(offsets_topic, 1), timeout=DEADLINE_S
        ) == (0, 0)

        def by_time(partition: int, timestamp: int) -> int:
            tp = TopicPartition(offsets_topic, partition, timestamp)
            (found,) = consumer.offsets_for_times([tp], timeout=DEADLINE_S)
            assert found.error is None
            return found.offset

        # The first record (in offset order) stamped at or after the time, as Kafka answers.
        assert by_time(0, 0) == 0
        assert by_time(0, TS0 + 1500) == 2
        assert by_time(0, TS0 + 4500) == 3
        assert by_time(0, TS0 + 50_000) == 3
        assert by_time(0, TS0 + 50_001) == -1  # OFFSET_END: no such record
        assert by_time(1, TS0) == -1  # an empty partition
    finally:
        consumer.close()

    admin = AdminClient({"bootstrap.servers": bootstrap})
    tp = TopicPartition(offsets_topic, 0)

    def answer(spec: OffsetSpec) -> tuple[int, int]:
        futures = admin.list_offsets({tp: spec}, request_timeout=DEADLINE_S)
        result = next(iter(futures.values())).result(DEADLINE_S)
        return result.offset, result.timestamp

    assert answer(OffsetSpec.earliest())[0] == 0
    assert answer(OffsetSpec.latest())[0] == 10
    assert answer(OffsetSpec.max_timestamp()) == (3, TS0 + 50_000)
    assert answer(OffsetSpec.for_timestamp(TS0 + 5500)) == (3, TS0 + 50_000)
    assert answer(OffsetSpec.for_timestamp(TS0 + 4000)) == (3, TS0 + 50_000)
    assert answer(OffsetSpec.for_timestamp(TS0 + 1000)) == (1, TS0 + 1000)
    assert answer(OffsetSpec.for_timestamp(TS0 + 60_000))[0] == -1


def test_list_offsets_kafka_python(bootstrap: str, offsets_topic: str) -> None:
    tp = KpTopicPartition(offsets_topic, 0)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        assert consumer.beginning_offsets([tp]) == {tp: 0}
        assert consumer.end_offsets([tp]) == {tp: 10}
        found = consumer.offsets_for_times({tp: TS0 + 2000})
        assert (found[tp].offset, found[tp].timestamp) == (2, TS0 + 2000)
        assert consumer.offsets_for_times({tp: TS0 + 60_000}) == {tp: None}
    finally:
        consumer.close()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        answers = admin.list_partition_offsets(
            {tp: KpOffsetSpec.MAX_TIMESTAMP, KpTopicPartition(offsets_topic, 1): -2}
        )
        assert (answers[tp].offset, answers[tp].timestamp) == (3, TS0 + 50_000)
        assert answers[KpTopicPartition(offsets_topic, 1)].offset == 0
    finally:
        admin.close()


def test_list_offsets_aiokafka(bootstrap: str, offsets_topic: str) -> None:
    async def run() -> None:
        tp = AioTopicPartition(offsets_topic, 0)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            assert await consumer.beginning_offsets([tp]) == {tp: 0}
            assert await consumer.end_offsets([tp]) == {tp: 10}
            found = await consumer.offsets_for_times({tp: TS0 + 7000})
            assert (found[tp].offset, found[tp].timestamp) == (3, TS0 + 50_000)
            found = await consumer.offsets_for_times({tp: TS0 + 500})
            assert (found[tp].offset, found[tp].timestamp) == (1, TS0 + 1000)
        finally:
            await consumer.stop()

    asyncio.run(run())


def test_consumer_at_tail_gets_new_data(bootstrap: str, grpc: Client) -> None:
    """Consumers parked at the tail with a long fetch.wait.max.ms are woken by new data: it
    arrives well before their fetch would have expired."""
    topic = "tail-wakeup"
    grpc.create_topic(topic, 1)
    grpc.produce(topic, b"old", partition=0)
    long_wait_ms = 60_000
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "tail-ck",
            "fetch.wait.max.ms": long_wait_ms,
            "socket.timeout.ms": 2 * long_wait_ms,
        }
    )
    kp = KafkaConsumer(
        bootstrap_servers=bootstrap,
        fetch_max_wait_ms=long_wait_ms,
        request_timeout_ms=2 * long_wait_ms,
    )
    try:
        consumer.assign([TopicPartition(topic, 0, 1)])
        kp_tp = KpTopicPartition(topic, 0)
        kp.assign([kp_tp])
        kp.seek(kp_tp, 1)

        # Nothing new yet (and both consumers have their long fetch parked at the tail by the
        # time the record is produced, unless the machine is very slow: then it is simply
        # there at once).
        assert consumer.poll(1.0) is None
        assert kp.poll(timeout_ms=200) == {}
        grpc.produce(topic, b"new", partition=0)

        def next_ck() -> Message | None:
            msg = consumer.poll(0.5)
            return msg if msg is not None and not msg.error() else None

        msg = poll_until(next_ck, "the new record over confluent", timeout=DEADLINE_S)
        assert (msg.value(), msg.offset()) == (b"new", 1)

        def next_kp() -> Any:
            for batch in kp.poll(timeout_ms=500).values():
                return batch[0]
            return None

        rec = poll_until(next_kp, "the new record over kafka-python", timeout=DEADLINE_S)
        assert (rec.value, rec.offset) == (b"new", 1)
    finally:
        consumer.close()
        kp.close()


def test_group_consumers_round_trip(bootstrap: str, grpc: Client) -> None:
    """A subscribed consumer of each client gets its partitions, reads, commits, and a new
    member of the group resumes from the committed offsets."""
    topic = "group-round-trip"
    grpc.create_topic(topic, 2)
    for i in range(10):
        grpc.produce(topic, f"v{i}".encode(), partition=i % 2)

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "grp-ck",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        seen: list[tuple[int, int]] = []

        def drained() -> bool | None:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                seen.append((msg.partition(), msg.offset()))
            return True if len(seen) == 10 else None

        poll_until(drained, "10 records through a confluent group consumer")
        assert sorted(seen) == sorted((i % 2, i // 2) for i in range(10))
        committed = consumer.commit(asynchronous=False)
        assert committed is not None
        assert sorted((tp.partition, tp.offset) for tp in committed) == [(0, 5), (1, 5)]
    finally:
        consumer.close()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:

        def left() -> bool | None:
            state = admin.describe_groups(["grp-ck"])["grp-ck"]["group_state"]
            return True if state == "Empty" else None

        poll_until(left, "the confluent member to leave the group")
    finally:
        admin.close()

    grpc.produce(topic, b"after", partition=1)
    kp = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id="grp-ck",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:

        def next_kp() -> Any:
            for batch in kp.poll(timeout_ms=500).values():
                return batch
            return None

        batch = poll_until(next_kp, "the record after the committed offset")
        assert [(r.partition, r.offset, r.value) for r in batch] == [(1, 5, b"after")]
    finally:
        kp.close()

    async def aio() -> None:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id="grp-aio", auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            got: list[Any] = []
            async with asyncio.timeout(DEADLINE_S):
                while len(got) < 11:
                    for batch in (await consumer.getmany(timeout_ms=500)).values():
                        got.extend(batch)
            assert sorted((r.partition, r.offset) for r in got) == sorted(
                [(0, i) for i in range(5)] + [(1, i) for i in range(6)]
            )
            await consumer.commit()
            tp = AioTopicPartition(topic, 1)
            assert await consumer.committed(tp) == 6
        finally:
            await consumer.stop()

    asyncio.run(aio())


def test_ingest_log_has_no_protocol_errors(stack: Stack) -> None:
    """Runs last in this module: no client request was refused as corrupt or unserved."""
    log = pathlib.Path(stack.data_dir, "logs", "ingest.log").read_text()
    bad = [
        line
        for line in log.splitlines()
        if "closing Kafka connection" in line and "connection reset" not in line
    ]
    assert not bad, "\n".join(bad[:10])
