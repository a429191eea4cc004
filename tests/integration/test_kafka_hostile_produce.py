"""Hostile batches over a raw Kafka socket, each with a correct CRC, to a real stack.

Every Produce request carries two partitions: partition 0 gets one hostile batch, partition 1
a good one. The hostile partition gets Kafka's error for it (with ``record_errors`` naming the
record at Produce v8+); the good partition of the same request is stored and readable. After
all of them the four processes have the pids they started with and another client
(confluent-kafka) still produces and consumes.

One stack for the module with STREAMHOUSE_MAX_BATCH_BYTES of 1 MiB (the bound on one
partition's batches per request and on a batch's decompressed records).
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import crc32c
import grpc
import pytest
import zstandard
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamhouse.client import Client
from streamhouse.client import StreamHouseError as ClientError
from streamhouse.kafka.framing import decode_response, encode_request
from streamhouse.kafka.messages import FetchRequest, ProduceRequest, RequestHeader
from streamhouse.recordbatch import decode_records, encode_batch, scan_batches
from streamhouse.testing import PROGRAMS, Stack

MiB = 1 << 20
TOPIC = "hostile"
TS_TOPIC = "hostile-ts"  # timestamps within an hour of the broker's clock
SMALL_TOPIC = "hostile-small"  # max.message.bytes 2000
CORRUPT_MESSAGE, MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE = 2, 10, 18
INVALID_TIMESTAMP, INVALID_RECORD = 32, 87


# ------------------------------------------------------------------------------------------
# batches built by hand (see tests/unit/test_batch_validation.py for the full set of lies)


def zz(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def record(offset_delta: int, *, ts_delta: int = 0, value: bytes = b"v", lie: int = 0) -> bytes:
    body = b"\x00" + zz(ts_delta) + zz(offset_delta) + b"\x01" + zz(len(value)) + value + b"\x00"
    return zz(len(body) + lie) + body


def batch(
    records: bytes, count: int, *, base_ts: int, max_ts: int | None = None, attributes: int = 0
) -> bytes:
    body = (
        struct.pack(
            ">hiqqqhii",
            attributes,
            count - 1,
            base_ts,
            base_ts if max_ts is None else max_ts,
            -1,
            -1,
            -1,
            count,
        )
        + records
    )
    return struct.pack(">qiibI", 0, len(body) + 9, -1, 2, crc32c.crc32c(body)) + body


def now_ms() -> int:
    return int(time.time() * 1000)


def zstd_bomb() -> bytes:
    """1 GiB of zeros as a streamed zstd frame (~32 KB)."""
    c = zstandard.ZstdCompressor().compressobj()
    chunk = bytes(MiB)
    return b"".join([c.compress(chunk) for _ in range(1024)] + [c.flush()])


def gzip_bomb() -> bytes:
    """64 MiB of zeros, gzip (~64 KB)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    return c.compress(bytes(64 * MiB)) + c.flush()


def good(value: bytes) -> bytes:
    return encode_batch([None], [value], [[]], [now_ms()])


# name -> (topic, builder of the hostile partition's bytes, error, record index or None)
CASES: dict[str, tuple[str, Any, int, int | None]] = {
    "record-overruns-batch": (
        TOPIC,
        lambda t: batch(record(0) + record(1, lie=40), 2, base_ts=t),
        INVALID_RECORD,
        1,
    ),
    "record-shorter-than-fields": (
        TOPIC,
        lambda t: batch(record(0, lie=-2) + b"\x00\x00", 1, base_ts=t),
        INVALID_RECORD,
        0,
    ),
    "duplicate-offset-delta": (
        TOPIC,
        lambda t: batch(record(0) + record(0), 2, base_ts=t),
        INVALID_RECORD,
        1,
    ),
    "out-of-order-offset-deltas": (
        TOPIC,
        lambda t: batch(record(1) + record(0), 2, base_ts=t),
        INVALID_RECORD,
        0,
    ),
    "trailing-bytes": (
        TOPIC,
        lambda t: batch(record(0) + b"\x00" * 9, 1, base_ts=t),
        INVALID_RECORD,
        0,
    ),
    "max-timestamp-lie": (
        TOPIC,
        lambda t: batch(record(0) + record(1, ts_delta=9), 2, base_ts=t, max_ts=t + 3),
        INVALID_RECORD,
        None,
    ),
    "control-batch": (
        TOPIC,
        lambda t: batch(record(0), 1, base_ts=t, attributes=0x20),
        INVALID_RECORD,
        None,
    ),
    "timestamp-two-hours-ahead": (
        TS_TOPIC,
        lambda t: batch(
            record(0) + record(1, ts_delta=2 * 3600_000), 2, base_ts=t, max_ts=t + 2 * 3600_000
        ),
        INVALID_TIMESTAMP,
        1,
    ),
    "zstd-bomb-1GiB": (
        TOPIC,
        lambda t: batch(zstd_bomb(), 1, base_ts=t, attributes=4),
        MESSAGE_TOO_LARGE,
        None,
    ),
    "gzip-bomb": (
        TOPIC,
        lambda t: batch(gzip_bomb(), 1, base_ts=t, attributes=1),
        MESSAGE_TOO_LARGE,
        None,
    ),
    "truncated-gzip": (
        TOPIC,
        lambda t: batch(zlib.compress(record(0) * 50)[:-9], 1, base_ts=t, attributes=1),
        CORRUPT_MESSAGE,
        None,
    ),
    "over-max-message-bytes": (
        SMALL_TOPIC,
        lambda t: batch(record(0, value=b"x" * 3000), 1, base_ts=t),
        MESSAGE_TOO_LARGE,
        None,
    ),
    "partition-over-max-batch-bytes": (
        TOPIC,
        lambda t: batch(record(0, value=b"x" * 600_000), 1, base_ts=t) * 2,
        RECORD_LIST_TOO_LARGE,
        None,
    ),
}


# ------------------------------------------------------------------------------------------
# a raw Kafka connection


class RawConnection:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.correlation = 0

    def close(self) -> None:
        self.sock.close()

    def _read_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "the server closed the connection"
            data += chunk
        return data

    def call(self, api_key: int, version: int, request: Any) -> Any:
        self.correlation += 1
        header = RequestHeader(
            request_api_key=api_key,
            request_api_version=version,
            correlation_id=self.correlation,
            client_id="hostile-test",
        )
        self.sock.sendall(encode_request(header, request))
        (length,) = struct.unpack(">i", self._read_exactly(4))
        response_header, response = decode_response(self._read_exactly(length), api_key, version)
        assert response_header.correlation_id == header.correlation_id
        return response

    def produce(self, topic: str, partitions: dict[int, bytes], version: int) -> dict[int, Any]:
        request = ProduceRequest(
            acks=-1,
            timeout_ms=30_000,
            topic_data=[
                ProduceRequest.TopicProduceData(
                    name=topic,
                    partition_data=[
                        ProduceRequest.PartitionProduceData(index=p, records=records)
                        for p, records in partitions.items()
                    ],
                )
            ],
        )
        (topic_response,) = self.call(0, version, request).responses
        return {p.index: p for p in topic_response.partition_responses}

    def fetch_values(self, topic: str, partition: int, offset: int) -> list[bytes | None]:
        request = FetchRequest(
            max_wait_ms=0,
            min_bytes=0,
            max_bytes=MiB,
            topics=[
                FetchRequest.FetchTopic(
                    topic=topic,
                    partitions=[
                        FetchRequest.FetchPartition(
                            partition=partition, fetch_offset=offset, partition_max_bytes=MiB
                        )
                    ],
                )
            ],
        )
        (topic_response,) = self.call(1, 11, request).responses
        (part,) = topic_response.partitions
        assert part.error_code == 0
        data = bytes(part.records or b"")
        values = []
        for info in scan_batches(data):
            (base,) = struct.unpack_from(">q", data, info.position)
            for delta, _ts, _key, value, _headers in decode_records(
                data[info.position : info.position + info.length]
            ):
                if base + delta >= offset:
                    values.append(value)
        return values


@pytest.fixture(scope="module")
def hostile_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"STREAMHOUSE_MAX_BATCH_BYTES": str(MiB)}
    with Stack(tmp_path_factory.mktemp("kafka-hostile") / "data", env=env) as running:
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{running.kafka_port}"})
        futures = admin.create_topics(
            [
                NewTopic(TOPIC, 2, 1),
                NewTopic(
                    TS_TOPIC,
                    2,
                    1,
                    config={
                        "message.timestamp.before.max.ms": "3600000",
                        "message.timestamp.after.max.ms": "3600000",
                    },
                ),
                NewTopic(SMALL_TOPIC, 2, 1, config={"max.message.bytes": "2000"}),
            ]
        )
        for future in futures.values():
            future.result(timeout=30)
        running.pids_at_start = {p: running.pid(p) for p in PROGRAMS}  # type: ignore[attr-defined]
        yield running


@pytest.fixture
def conn(hostile_stack: Stack) -> Iterator[RawConnection]:
    connection = RawConnection(hostile_stack.kafka_port)
    yield connection
    connection.close()


@pytest.mark.parametrize("version", [9, 7])
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_partition_refused_other_partition_stored(
    conn: RawConnection, case: str, version: int
) -> None:
    topic, build, error, index = CASES[case]
    marker = f"{case}-v{version}-{uuid.uuid4()}".encode()
    answers = conn.produce(topic, {0: build(now_ms()), 1: good(marker)}, version)
    bad, ok = answers[0], answers[1]
    assert bad.error_code == error, bad.error_message
    assert bad.base_offset == -1
    if version >= 8:
        assert bad.error_message, "v8+ says what was wrong"
        expected = [] if index is None else [index]
        assert [e.batch_index for e in bad.record_errors] == expected
        assert all(e.batch_index_error_message for e in bad.record_errors)
    assert ok.error_code == 0, ok.error_message
    assert ok.base_offset >= 0
    assert conn.fetch_values(topic, 1, ok.base_offset)[0] == marker
    # the hostile partition stored nothing: its next good batch is readable at its offset
    follow = conn.produce(topic, {0: good(marker)}, version)[0]
    assert follow.error_code == 0
    assert conn.fetch_values(topic, 0, follow.base_offset) == [marker]


def test_grpc_produce_checks_the_same_topic_rules(hostile_stack: Stack) -> None:
    """gRPC records are encoded by ingest, so their inputs are checked at the edge: the
    timestamp bounds and max.message.bytes of the topic give INVALID_ARGUMENT with a message."""
    with Client(hostile_stack.grpc_address) as client:
        with pytest.raises(ClientError) as info:
            client.produce(TS_TOPIC, b"late", partition=0, timestamp_ms=now_ms() + 2 * 3600_000)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "out of range" in str(info.value)
        with pytest.raises(ClientError) as info:
            client.produce(SMALL_TOPIC, b"x" * 3000, partition=0)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "max.message.bytes" in str(info.value)
        partition, offset = client.produce(TS_TOPIC, b"on-time", partition=0)
        assert (partition, offset >= 0) == (0, True)


def test_stack_stays_up_and_serves_other_clients(hostile_stack: Stack) -> None:
    """Runs after the hostile cases (same module stack): no process restarted, and a real
    client produces and consumes."""
    conn = RawConnection(hostile_stack.kafka_port)
    try:
        for build_args in CASES.values():
            topic, build, _, _ = build_args
            conn.produce(topic, {0: build(now_ms())}, 9)
    finally:
        conn.close()
    assert {p: hostile_stack.pid(p) for p in PROGRAMS} == hostile_stack.pids_at_start  # type: ignore[attr-defined]
    bootstrap = f"127.0.0.1:{hostile_stack.kafka_port}"
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    delivered: list[Any] = []
    values = [b"after-%d" % i for i in range(20)]
    for value in values:
        producer.produce(TOPIC, value, partition=1, on_delivery=lambda e, m: delivered.append(e))
    assert producer.flush(30) == 0
    assert delivered == [None] * len(values)
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "hostile-check", "enable.auto.commit": False}
    )
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, 1), timeout=30)
        consumer.assign([TopicPartition(TOPIC, 1, high - len(values))])
        got: list[bytes] = []
        for _ in range(100):
            if len(got) >= len(values):
                break
            message = consumer.poll(1.0)
            if message is not None:
                assert message.error() is None, message.error()
                got.append(message.value())
        assert got == values
    finally:
        consumer.close()
