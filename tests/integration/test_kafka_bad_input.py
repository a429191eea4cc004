"""Bad bytes on the Kafka port, over raw sockets: each gives a clear error or a clean disconnect
of that connection only. Two bystanders are open before and during every case and must not
notice anything: a raw connection that produces on the same socket after each case, and a
confluent-kafka producer and consumer that keep producing and consuming in a thread (any
disconnect they see is an error).

One stack for the module, with a small STREAMHOUSE_KAFKA_MAX_REQUEST_BYTES.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamhouse.kafka.framing import decode_response, encode_request
from streamhouse.kafka.messages import (
    ApiVersionsRequest,
    ApiVersionsResponse,
    FetchRequest,
    MetadataRequest,
    ProduceRequest,
    RequestHeader,
)
from streamhouse.recordbatch import encode_batch
from streamhouse.testing import Stack

MAX_REQUEST = 1024 * 1024
TOPIC = "bad-input"
BYSTANDER_TOPIC = "bystander"
UNSUPPORTED_VERSION = 35
CORRUPT_MESSAGE = 2
UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
INVALID_RECORD = 87
PRODUCE_VERSION = 9


def batch(*values: bytes) -> bytes:
    n = len(values)
    return encode_batch([None] * n, list(values), [[] for _ in range(n)], [1_700_000_000_000] * n)


def legacy_message_set(value: bytes) -> bytes:
    """One magic-1 message (the pre-0.11 format): offset, size, crc32, magic, attributes,
    timestamp, key (null), value."""
    body = struct.pack(">bbqi", 1, 0, 1_700_000_000_000, -1) + struct.pack(">i", len(value)) + value
    message = struct.pack(">I", zlib.crc32(body)) + body
    return struct.pack(">qi", 0, len(message)) + message


class RawConnection:
    """One TCP connection speaking Kafka frames built with the generated codec."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.correlation = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def header(self, api_key: int, version: int) -> RequestHeader:
        self.correlation += 1
        return RequestHeader(
            request_api_key=api_key,
            request_api_version=version,
            correlation_id=self.correlation,
            client_id="raw-test",
        )

    def read_frame(self) -> bytes | None:
        """The next response frame's payload, None when the server closed the connection."""
        size = self._read_exactly(4)
        if size is None:
            return None
        (length,) = struct.unpack(">i", size)
        payload = self._read_exactly(length)
        assert payload is not None, "connection closed inside a response frame"
        return payload

    def _read_exactly(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                assert not data, "connection closed inside a response frame"
                return None
            data += chunk
        return data

    def call(self, api_key: int, version: int, request: Any) -> Any:
        header = self.header(api_key, version)
        self.send(encode_request(header, request))
        frame = self.read_frame()
        assert frame is not None, f"API {api_key} v{version}: connection closed"
        response_header, response = decode_response(frame, api_key, version)
        assert response_header.correlation_id == header.correlation_id
        return response

    def expect_closed(self) -> None:
        """The server closes this connection (no response first), within the socket timeout."""
        assert self.read_frame() is None, "expected a disconnect, got a response"

    def produce(self, partitions: dict[int, bytes], topic: str = TOPIC) -> dict[int, int]:
        """Partition -> error code of one acks=all Produce."""
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
        response = self.call(0, PRODUCE_VERSION, request)
        (topic_response,) = response.responses
        return {p.index: p.error_code for p in topic_response.partition_responses}

    def works(self) -> None:
        """This connection still serves requests: ApiVersions and a produce that succeeds."""
        versions = self.call(18, 3, ApiVersionsRequest(client_software_name="raw"))
        assert versions.error_code == 0
        assert self.produce({0: batch(b"still-here")}) == {0: 0}


class Bystander:
    """A confluent-kafka producer and consumer busy in a thread; any delivery failure or
    client-level error (disconnects included) is recorded."""

    def __init__(self, port: int) -> None:
        bootstrap = f"127.0.0.1:{port}"
        self.cond = threading.Condition()
        self.errors: list[str] = []
        self.acked: set[bytes] = set()
        self.consumed: set[bytes] = set()
        self.produced = 0
        self.stop = threading.Event()
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 1,
                "acks": "all",
                "error_cb": self._client_error,
            }
        )
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "bystander",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 100,
                "error_cb": self._client_error,
            }
        )
        self.consumer.assign([TopicPartition(BYSTANDER_TOPIC, 0, 0)])
        self.threads = [
            threading.Thread(target=self._produce, daemon=True),
            threading.Thread(target=self._consume, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _client_error(self, err: KafkaError) -> None:
        with self.cond:
            self.errors.append(str(err))
            self.cond.notify_all()

    def _delivered(self, err: KafkaError | None, msg: Any) -> None:
        with self.cond:
            if err is None:
                self.acked.add(msg.value())
            else:
                self.errors.append(f"delivery: {err}")
            self.cond.notify_all()

    def _produce(self) -> None:
        while not self.stop.is_set():
            with self.cond:
                n = self.produced
                self.produced += 1
            self.producer.produce(BYSTANDER_TOPIC, b"%d" % n, partition=0, callback=self._delivered)
            self.producer.poll(0.02)  # about 50 records/s, and serves delivery reports

    def _consume(self) -> None:
        while not self.stop.is_set():
            for message in self.consumer.consume(num_messages=100, timeout=0.1):
                with self.cond:
                    if message.error() is not None:
                        self.errors.append(f"consume: {message.error()}")
                    else:
                        self.consumed.add(message.value())
                    self.cond.notify_all()

    def keeps_going(self) -> None:
        """Something produced after this call is acknowledged and consumed back, no errors."""
        with self.cond:
            after = self.produced + 1
            marker = b"%d" % after
            ok = self.cond.wait_for(lambda: marker in self.consumed or self.errors, 30)
            assert not self.errors, self.errors
            assert ok, f"record {after} not produced and consumed within 30s"

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        assert self.producer.flush(30) == 0
        self.consumer.close()


@pytest.fixture(scope="module")
def kafka_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"STREAMHOUSE_KAFKA_MAX_REQUEST_BYTES": str(MAX_REQUEST)}
    with Stack(tmp_path_factory.mktemp("kafka-bad-input") / "data", env=env) as running:
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{running.kafka_port}"})
        futures = admin.create_topics([NewTopic(TOPIC, 2, 1), NewTopic(BYSTANDER_TOPIC, 1, 1)])
        for future in futures.values():
            future.result(timeout=30)
        yield running


@pytest.fixture(scope="module")
def bystanders(kafka_stack: Stack) -> Iterator[tuple[RawConnection, Bystander]]:
    raw = RawConnection(kafka_stack.kafka_port)
    raw.works()
    busy = Bystander(kafka_stack.kafka_port)
    busy.keeps_going()
    yield raw, busy
    busy.close()
    raw.works()
    raw.close()
    assert not busy.errors, busy.errors
    assert busy.acked <= busy.consumed, "every acknowledged record was consumed"


@pytest.fixture
def bad(kafka_stack: Stack, bystanders: tuple[RawConnection, Bystander]) -> Iterator[RawConnection]:
    """A fresh connection for the bad input; afterwards both bystanders must be fine."""
    connection = RawConnection(kafka_stack.kafka_port)
    yield connection
    connection.close()
    raw, busy = bystanders
    raw.works()
    busy.keeps_going()


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(frame(bytes(range(200, 256)) * 3), id="garbage-frame"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
        pytest.param(b"\xff\xff\xff\xfe" + b"\x00" * 16, id="negative-size"),
        pytest.param(frame(b"\x00\x03\x00"), id="shorter-than-header"),
    ],
)
def test_garbage_closes_that_connection(bad: RawConnection, data: bytes) -> None:
    bad.send(data)
    bad.expect_closed()


def test_truncated_frame_then_close(bad: RawConnection) -> None:
    request = encode_request(bad.header(3, 12), MetadataRequest(topics=None))
    bad.send(request[: len(request) // 2])
    bad.sock.shutdown(socket.SHUT_WR)
    bad.expect_closed()  # the server sees EOF mid-frame and closes its side, nothing else


def test_request_body_cut_short_closes(bad: RawConnection) -> None:
    request = encode_request(
        bad.header(3, 12), MetadataRequest(topics=[MetadataRequest.MetadataRequestTopic(name="t")])
    )
    payload = request[4:-3]
    bad.send(frame(payload))
    bad.expect_closed()


def test_oversize_frame_closes_before_reading_it(bad: RawConnection) -> None:
    bad.send(struct.pack(">i", MAX_REQUEST + 1) + b"\x00" * 1024)
    bad.expect_closed()


@pytest.mark.parametrize("api_key", [999, 4], ids=["unknown-key", "not-served-key"])
def test_unknown_api_key_closes(bad: RawConnection, api_key: int) -> None:
    header = struct.pack(">hhih", api_key, 0, 7, 3) + b"raw"
    bad.send(frame(header + b"\x00" * 8))
    bad.expect_closed()


def test_unsupported_api_versions_version_answers_v0_with_the_list(bad: RawConnection) -> None:
    # ApiVersions v3 bytes relabelled v5: a version this broker does not know.
    header = bad.header(18, 3)
    request = bytearray(encode_request(header, ApiVersionsRequest(client_software_name="future")))
    struct.pack_into(">h", request, 6, 5)
    bad.send(bytes(request))
    payload = bad.read_frame()
    assert payload is not None
    response_header, response = decode_response(payload, 18, 0)
    assert response_header.correlation_id == header.correlation_id
    assert isinstance(response, ApiVersionsResponse)
    assert response.error_code == UNSUPPORTED_VERSION
    ranges = {k.api_key: (k.min_version, k.max_version) for k in response.api_keys}
    assert ranges[18] == (0, 4)
    assert ranges[0][1] >= 9 and ranges[1][1] >= 12
    # As with Kafka, the client retries at a version it now knows, on the same connection.
    assert bad.call(18, 3, ApiVersionsRequest(client_software_name="ok")).error_code == 0


@pytest.mark.parametrize(
    ("api_key", "version", "request_"),
    [
        pytest.param(3, 12, MetadataRequest(topics=None), id="metadata-v99"),
        pytest.param(1, 13, FetchRequest(max_wait_ms=10, topics=[]), id="fetch-v13"),
        pytest.param(
            0,
            2,
            ProduceRequest(acks=1, timeout_ms=1000, topic_data=[]),
            id="produce-v2",
        ),
    ],
)
def test_unsupported_version_of_another_api_closes(
    bad: RawConnection, api_key: int, version: int, request_: Any
) -> None:
    """A version outside what ApiVersions advertises: Kafka closes the connection (only
    ApiVersions gets an answer). Metadata v99 is unknown to the codec; Fetch v13 and Produce v2
    decode but are not served."""
    data = bytearray(encode_request(bad.header(api_key, version), request_))
    if api_key == 3:
        struct.pack_into(">h", data, 6, 99)
    bad.send(bytes(data))
    bad.expect_closed()


def test_produce_with_wrong_crc_is_corrupt_message_and_connection_survives(
    bad: RawConnection,
) -> None:
    damaged = bytearray(batch(b"first", b"second"))
    damaged[-1] ^= 0xFF  # a record byte: the CRC-32C no longer matches
    errors = bad.produce({0: bytes(damaged), 1: batch(b"fine")})
    assert errors == {0: CORRUPT_MESSAGE, 1: 0}
    bad.works()


def test_produce_magic_1_is_refused_and_connection_survives(bad: RawConnection) -> None:
    """Kafka answers INVALID_RECORD for a magic-1 batch in Produce v3+; StreamHouse documents
    UNSUPPORTED_FOR_MESSAGE_FORMAT. Either is a clear per-partition error."""
    errors = bad.produce({0: legacy_message_set(b"old" * 20), 1: batch(b"new")})
    assert errors[0] in (UNSUPPORTED_FOR_MESSAGE_FORMAT, INVALID_RECORD)
    assert errors[1] == 0
    bad.works()


def test_bad_connections_in_a_burst(kafka_stack: Stack, bystanders: Any) -> None:
    """Many bad connections at once, while the bystanders go on."""
    raw, busy = bystanders
    connections = [RawConnection(kafka_stack.kafka_port) for _ in range(20)]
    started = time.monotonic()
    for i, connection in enumerate(connections):
        connection.send(b"\x7f\xff\xff\xff" if i % 2 else frame(b"\x00" * 9))
    for connection in connections:
        connection.expect_closed()
        connection.close()
    assert time.monotonic() - started < 15
    raw.works()
    busy.keeps_going()
