"""ProduceBatch and ProduceStream through a whole stack, with requests sent as raw bytes: the
records read back are the ones sent (unknown fields skipped, headers kept), malformed bytes
are refused INVALID_ARGUMENT saying where, and the stack keeps serving."""

from __future__ import annotations

import grpc

from streamhouse.client import Client
from streamhouse.proto import streamhouse_pb2 as pb
from streamhouse.testing import Stack

METHOD = "/streamhouse.v1.StreamHouse/"


def raw_call(channel: grpc.Channel, name: str) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        METHOD + name,
        request_serializer=None,
        response_deserializer=pb.ProduceBatchResponse.FromString,
    )


def ld(field: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([field << 3 | 2, len(payload)]) + payload


def test_raw_requests_round_trip_and_malformed_ones_are_refused(stack: Stack) -> None:
    with Client(stack.grpc_address) as client:
        client.create_topic("raw", 3)
    channel = grpc.insecure_channel(stack.grpc_address)
    try:
        produce = raw_call(channel, "ProduceBatch")
        records = [
            pb.Record(key=b"k1", value=b"v1", timestamp_ms=1_700_000_000_001),
            pb.Record(value=b"v2", timestamp_ms=1_700_000_000_002),
            pb.Record(key=b"", timestamp_ms=1_700_000_000_003),  # null value
        ]
        records[0].headers.add(key="trace", value=b"t")
        records[1].headers.add(key="é")  # null header value
        data = pb.ProduceBatchRequest(topic="raw", partition=1, records=records).SerializeToString()
        # An unknown field (number 15, length-delimited) before and a varint one after.
        answer = produce(ld(15, b"future") + data + bytes([14 << 3, 0x2A]), timeout=30)
        assert (answer.partition, answer.base_offset, answer.record_count) == (1, 0, 3)

        # A stream: two good requests and their answers in order.
        stream = channel.stream_stream(
            METHOD + "ProduceStream",
            request_serializer=None,
            response_deserializer=pb.ProduceBatchResponse.FromString,
        )
        answers = list(stream(iter([data, data]), timeout=30))
        assert [(a.partition, a.base_offset) for a in answers] == [(1, 3), (1, 6)]

        # Malformed: invalid UTF-8 in a header key of the second record.
        bad = ld(1, b"raw") + ld(3, ld(2, b"ok")) + ld(3, ld(3, ld(1, b"\xff")))
        try:
            produce(bad, timeout=30)
            raise AssertionError("a malformed request was accepted")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid streamhouse.v1.ProduceBatchRequest" in exc.details()
            assert "record 1: header 0: the key is not valid UTF-8" in exc.details()
        # Cut short: refused the same way, and the stream refuses it too.
        try:
            list(stream(iter([data[:-3]]), timeout=30))
            raise AssertionError("a truncated request was accepted on a stream")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "runs past the end" in exc.details() or "cut short" in exc.details()
    finally:
        channel.close()

    with Client(stack.grpc_address) as client:
        got, next_offset, _, _ = client.consume("raw", 1, 0, max_wait_ms=5_000)
    assert next_offset == 9
    first = [(r.key, r.value, r.headers, r.timestamp_ms) for r in got[:3]]
    assert first == [
        (b"k1", b"v1", [("trace", b"t")], 1_700_000_000_001),
        (None, b"v2", [("é", None)], 1_700_000_000_002),
        (b"", None, [], 1_700_000_000_003),
    ]
    assert [r.offset for r in got] == list(range(9))
