"""Hostile Kafka frames against a live listener: only that connection is affected.

Hypothesis draws, per example, a fresh connection and one to three frames on it: valid
requests of the versions the broker advertises (defaults, and produce/fetch/metadata with real
content), mutated (bit flips, cuts, lying int32/int16/varint lengths, splices), random bytes
behind a correct size prefix, or a lying size prefix. The properties:

  - the listener answers each frame or closes the connection, within a bounded time, and every
    response frame it sends carries the correlation id of a request sent on that connection;
  - a bystander connection opened before the first example keeps working after every one
    (ApiVersions and an acks=all produce on the same socket);
  - at the end, no process of the stack has restarted, and gRPC produce and consume work.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamhouse.client import Client
from streamhouse.kafka import messages
from streamhouse.kafka.framing import decode_response, encode_request
from streamhouse.kafka.messages import RequestHeader
from streamhouse.recordbatch import encode_batch
from streamhouse.testing import PROGRAMS, Stack

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
from kafka_strategies import API_MESSAGES, MessageStrategies  # noqa: E402

sys.path.pop(0)

TOPIC = "fuzz"
PARTITIONS = 2
ANSWER_SECONDS = 10.0


def scaled(n: int) -> int:
    return max(1, n * settings.default.max_examples // 100)


class Connection:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_SECONDS)

    def close(self) -> None:
        self.sock.close()

    def read_frame(self) -> bytes | None:
        """The next frame's payload; None once the server closed the connection."""
        size = self._exactly(4)
        if size is None:
            return None
        payload = self._exactly(struct.unpack(">i", size)[0])
        assert payload is not None, "the server closed the connection inside a response frame"
        return payload

    def _exactly(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                assert not data, "the server closed the connection inside a frame"
                return None
            data += chunk
        return data

    def call(self, api_key: int, version: int, request: Any, correlation_id: int = 1) -> Any:
        header = RequestHeader(
            request_api_key=api_key,
            request_api_version=version,
            correlation_id=correlation_id,
            client_id="fuzz-bystander",
        )
        self.sock.sendall(encode_request(header, request))
        frame = self.read_frame()
        assert frame is not None, f"API {api_key} v{version}: the bystander was disconnected"
        response_header, response = decode_response(frame, api_key, version)
        assert response_header.correlation_id == correlation_id
        return response


def one_batch(value: bytes) -> bytes:
    return encode_batch([None], [value], [[]], [1_700_000_000_000])


def bystander_works(conn: Connection) -> None:
    versions = conn.call(18, 0, messages.ApiVersionsRequest())
    assert versions.error_code == 0
    produce = messages.ProduceRequest(
        acks=-1,
        timeout_ms=30_000,
        topic_data=[
            messages.ProduceRequest.TopicProduceData(
                name=TOPIC,
                partition_data=[
                    messages.ProduceRequest.PartitionProduceData(
                        index=0, records=one_batch(b"bystander")
                    )
                ],
            )
        ],
    )
    response = conn.call(0, 9, produce, correlation_id=2)
    assert response.responses[0].partition_responses[0].error_code == 0


def sample_requests() -> dict[int, Any]:
    """Requests with content, by API key (others use their defaults)."""
    batch = one_batch(b"fuzz")
    return {
        0: messages.ProduceRequest(
            acks=-1,
            timeout_ms=5_000,
            topic_data=[
                messages.ProduceRequest.TopicProduceData(
                    name=TOPIC,
                    partition_data=[
                        messages.ProduceRequest.PartitionProduceData(index=p, records=batch)
                        for p in range(PARTITIONS)
                    ],
                )
            ],
        ),
        1: messages.FetchRequest(
            max_wait_ms=100,
            min_bytes=1,
            max_bytes=1 << 20,
            topics=[
                messages.FetchRequest.FetchTopic(
                    topic=TOPIC,
                    partitions=[
                        messages.FetchRequest.FetchPartition(
                            partition=0, fetch_offset=0, partition_max_bytes=1 << 20
                        )
                    ],
                )
            ],
        ),
        3: messages.MetadataRequest(
            topics=[messages.MetadataRequest.MetadataRequestTopic(name=TOPIC)]
        ),
    }


LIES = [
    struct.pack(">i", 0x7FFFFFFF),
    struct.pack(">i", -2),
    struct.pack(">h", 0x7FFF),
    struct.pack(">h", -2),
    b"\xff\xff\xff\xff\x0f",
]


@st.composite
def hostile_frame(draw: st.DrawFn, advertised: list[tuple[int, int]], correlation_id: int) -> bytes:
    """One frame (size prefix included) a hostile client could send."""
    kind = draw(st.sampled_from(["mutated", "mutated", "random", "prefix"]))
    if kind == "prefix":
        size = draw(st.sampled_from([-1, -(2**31), 2**31 - 1, 1 << 30]))
        return struct.pack(">i", size) + draw(st.binary(max_size=16))
    api_key, version = draw(st.sampled_from(advertised))
    if kind == "random":
        payload = struct.pack(">hhi", api_key, version, correlation_id) + draw(
            st.binary(max_size=120)
        )
        return struct.pack(">i", len(payload)) + payload
    header = RequestHeader(
        request_api_key=api_key,
        request_api_version=version,
        correlation_id=correlation_id,
        client_id=draw(st.sampled_from(["fuzz", "", None])),
    )
    request = sample_requests().get(api_key) or messages.REQUEST_TYPES[api_key]()
    try:
        payload = bytearray(encode_request(header, request)[4:])
    except ValueError:  # a sample field this version lacks
        payload = bytearray(encode_request(header, messages.REQUEST_TYPES[api_key]())[4:])
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(8, len(payload)))  # keep api key, version, correlation id
        mutation = draw(st.sampled_from(["flip", "cut", "lie", "splice"]))
        if mutation == "flip" and pos < len(payload):
            payload[pos] ^= 1 << draw(st.integers(0, 7))
        elif mutation == "cut":
            del payload[pos:]
        elif mutation == "lie":
            lie = draw(st.sampled_from(LIES))
            payload[pos : pos + len(lie)] = lie
        else:
            payload[pos : pos + draw(st.integers(0, 4))] = draw(st.binary(max_size=8))
    return struct.pack(">i", len(payload)) + bytes(payload)


def assert_no_tracebacks(stack: Stack) -> None:
    """No process logged an exception (a handler failing on the input logs one and answers
    INTERNAL or closes the connection: both are bugs for these inputs)."""
    for program in PROGRAMS:
        for log in sorted((stack.data_dir / "logs").glob(f"{program}*.log*")):
            text = log.read_text(errors="replace")
            assert "Traceback" not in text, (
                f"{log.name}:\n{text[max(0, text.index('Traceback') - 300) :][:3000]}"
            )


@pytest.fixture
def kafka_stack(stack: Stack) -> Iterator[tuple[Stack, Connection, list[tuple[int, int]]]]:
    with Client(stack.grpc_address) as client:
        client.create_topic(TOPIC, PARTITIONS)
    pids = {program: stack.pid(program) for program in PROGRAMS}
    bystander = Connection(stack.kafka_port)
    try:
        versions = bystander.call(18, 0, messages.ApiVersionsRequest())
        advertised = [
            (k.api_key, v)
            for k in versions.api_keys
            for v in range(k.min_version, k.max_version + 1)
            if (k.api_key, v) in messages.REQUEST_ENCODERS
        ]
        assert advertised
        yield stack, bystander, advertised
        bystander_works(bystander)
    finally:
        bystander.close()
    assert {program: stack.pid(program) for program in PROGRAMS} == pids, "a process restarted"
    assert_no_tracebacks(stack)
    with Client(stack.grpc_address) as client:
        _, offset = client.produce(TOPIC, b"still here", partition=1)
        assert client.consume(TOPIC, 1, offset)[0][0].value == b"still here"


def test_hostile_frames_close_only_their_connection(
    kafka_stack: tuple[Stack, Connection, list[tuple[int, int]]],
) -> None:
    stack, bystander, advertised = kafka_stack
    outcomes: dict[str, int] = {"answered": 0, "closed": 0}

    @settings(
        max_examples=scaled(60),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def property_(data: st.DataObject) -> None:
        frames = [
            data.draw(hostile_frame(advertised, correlation_id), label=f"frame {correlation_id}")
            for correlation_id in range(1, data.draw(st.integers(1, 3)) + 1)
        ]
        conn = Connection(stack.kafka_port)
        try:
            try:
                conn.sock.sendall(b"".join(frames))
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed already, on an earlier frame
            sent_ids = set(range(1, len(frames) + 1))
            for _ in frames:
                try:
                    frame = conn.read_frame()
                except TimeoutError:  # e.g. acks=0 produces get no answer: nothing more comes
                    break
                if frame is None:
                    outcomes["closed"] += 1
                    break
                (correlation_id,) = struct.unpack_from(">i", frame)
                assert correlation_id in sent_ids, f"answer to correlation id {correlation_id}"
                outcomes["answered"] += 1
        finally:
            conn.close()
        bystander_works(bystander)

    property_()
    print(outcomes)
    assert outcomes["answered"] and outcomes["closed"], outcomes


# APIs left out of the well-formed fuzz: DeleteTopics would delete the bystander's topic.
SPARED_APIS = {20}


def test_well_formed_hostile_requests_are_answered(
    kafka_stack: tuple[Stack, Connection, list[tuple[int, int]]],
) -> None:
    """Requests that decode (any advertised API and version, every field drawn: hostile ints,
    odd names, the real topic, garbage or valid record batches) are answered with a response
    that decodes as that API's response and carries the request's correlation id, or, for
    acks=0 produces and long polls, not answered in time; the connection is not closed, and
    no handler logs an exception (checked by the fixture)."""
    stack, bystander, advertised = kafka_stack
    apis: dict[int, list[int]] = {}
    for api_key, version in advertised:
        if api_key not in SPARED_APIS:
            apis.setdefault(api_key, []).append(version)
    requests = {m.api_key: m for m in API_MESSAGES if m.kind == "request"}
    strategies = MessageStrategies(
        strings=st.just(TOPIC) | st.sampled_from(["", "missing", "x" * 300]) | st.text(max_size=8),
        records=st.just(one_batch(b"fuzz")) | st.binary(max_size=80),
    )
    outcomes: dict[str, int] = {"answered": 0, "no answer": 0}

    @settings(
        max_examples=scaled(80),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def property_(data: st.DataObject) -> None:
        api_key = data.draw(st.sampled_from(sorted(apis)), label="api")
        version, request = data.draw(
            strategies.message(requests[api_key], apis[api_key]), label="request"
        )
        conn = Connection(stack.kafka_port)
        conn.sock.settimeout(3.0)
        try:
            header = RequestHeader(
                request_api_key=api_key,
                request_api_version=version,
                correlation_id=77,
                client_id="fuzz",
            )
            conn.sock.sendall(encode_request(header, request))
            try:
                frame = conn.read_frame()
            except TimeoutError:
                outcomes["no answer"] += 1
                return
            assert frame is not None, f"API {api_key} v{version}: connection closed"
            response_header, _ = decode_response(frame, api_key, version)
            assert response_header.correlation_id == 77
            outcomes["answered"] += 1
        finally:
            conn.close()

    property_()
    print(outcomes)
    bystander_works(bystander)
    assert outcomes["answered"], outcomes
