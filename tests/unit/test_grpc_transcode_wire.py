"""ingest/_grpcproduce.c reads protobuf wire bytes as upb (protobuf's parser) does.

Differential: on hand-made and mutated requests, ``RawProduceBatch`` accepts exactly what
``pb.ProduceBatchRequest.FromString`` accepts, reads the same scalar fields, and the batches
it transcodes are those of the records upb parsed. Random and cut bytes never crash it.
"""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError

from ingest import _grpcproduce
from ingest.produce import (
    MalformedRequest,
    Partitioner,
    RawProduceBatch,
    plan_produce,
    plan_request,
)
from streamhouse.proto import streamhouse_pb2 as pb

BIG = 1 << 40


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def ld(field: int, payload: bytes) -> bytes:
    return tag(field, 2) + varint(len(payload)) + payload


def upb(data: bytes) -> pb.ProduceBatchRequest | None:
    try:
        return pb.ProduceBatchRequest.FromString(data)
    except DecodeError:
        return None


def ours(data: bytes) -> RawProduceBatch | None:
    try:
        return RawProduceBatch(data)
    except MalformedRequest:
        return None


def assert_same_reading(data: bytes) -> None:
    """Accepted by both or refused by both; when accepted, the same fields and batches."""
    want = upb(data)
    got = ours(data)
    assert (got is None) == (want is None), (data, want)
    if got is None or want is None:
        return
    assert got.topic == want.topic
    assert got.partition == (want.partition if want.HasField("partition") else None)
    assert got.producer_id == (want.producer_id if want.HasField("producer_id") else None)
    assert (got.producer_epoch, got.base_sequence) == (want.producer_epoch, want.base_sequence)
    assert got.record_count == len(want.records)
    if not want.records:
        return
    # Records as upb read them (re-serialized canonically) give the same batches as ours.
    expected = plan_produce(7, 5, list(want.records), None, Partitioner(), BIG, BIG)
    actual = plan_request(7, 5, data, got.record_count, None, Partitioner(), BIG, BIG)
    assert [(s.partition, s.batches[0].record_count) for s in actual] == [
        (s.partition, s.batches[0].record_count) for s in expected
    ]
    # Timestamps of 0 become "now", read twice: compare the bytes only when none is 0.
    if all(r.timestamp_ms for r in want.records):
        assert [s.payload for s in actual] == [s.payload for s in expected]


RECORD = ld(1, b"key") + ld(2, b"value") + ld(3, ld(1, b"h") + ld(2, b"hv")) + tag(4, 0) + varint(5)
VALID = (
    ld(1, b"topic")
    + tag(2, 0)
    + varint(1)
    + ld(3, RECORD)
    + ld(3, ld(2, b"v2") + tag(4, 0) + varint(9))
)

HAND_MADE = {
    "valid": VALID,
    "empty message": b"",
    "unknown varint field": VALID + tag(9, 0) + varint(300),
    "unknown fixed64 and fixed32": tag(10, 1) + b"\x00" * 8 + tag(11, 5) + b"\x00" * 4 + VALID,
    "unknown length-delimited holding garbage": ld(12, b"\xff\xff\xff") + VALID,
    "unknown group": tag(7, 3) + tag(1, 0) + varint(1) + ld(2, b"x") + tag(7, 4) + VALID,
    "nested unknown groups": tag(7, 3) + tag(8, 3) + tag(8, 4) + tag(7, 4) + VALID,
    "group ended by another number": tag(7, 3) + tag(8, 4) + VALID,
    "group never ended": VALID + tag(7, 3) + tag(1, 0) + varint(1),
    "lone group end": tag(7, 4) + VALID,
    "wire type 6": VALID + tag(5, 6),
    "wire type 7": VALID + tag(5, 7),
    "field number 0": VALID + tag(0, 0) + varint(1),
    "largest field number": VALID + tag((1 << 29) - 1, 0) + varint(1),
    "tag above 32 bits": VALID + b"\xf8\xff\xff\xff\x1f\x01",
    "non-canonical 5-byte tag": VALID + b"\x88\x80\x80\x80\x00\x01",
    "10-byte varint": VALID + tag(4, 0) + b"\xff" * 9 + b"\x7f",
    "11-byte varint": VALID + tag(4, 0) + b"\xff" * 10 + b"\x01",
    "int32 partition from a 64-bit varint": VALID + tag(2, 0) + varint(-7),
    "partition truncated to 32 bits": VALID + tag(2, 0) + varint(1 << 35 | 4),
    "producer id negative": VALID + tag(4, 0) + varint(-(2**63)),
    "epoch and sequence": VALID + tag(5, 0) + varint(70_000) + tag(6, 0) + varint(-1),
    "topic as varint (wrong wire type: unknown)": tag(1, 0) + varint(3) + VALID,
    "partition as bytes (wrong wire type: unknown)": tag(2, 2) + b"\x01\x05" + VALID,
    "records as varint (wrong wire type: unknown)": tag(3, 0) + varint(1) + VALID,
    "topic twice (last wins)": VALID + ld(1, b"other"),
    "partition twice (last wins)": VALID + tag(2, 0) + varint(3),
    "invalid UTF-8 topic": ld(1, b"\xff") + VALID,
    "surrogate in topic": ld(1, b"\xed\xa0\x80"),
    "overlong in topic": ld(1, b"\xc0\x80"),
    "code point above U+10FFFF": ld(1, b"\xf4\x90\x80\x80"),
    "4-byte UTF-8 topic": ld(1, "\U0001f600".encode()),
    "NUL in topic": ld(1, b"a\x00b"),
    "truncated UTF-8 topic": ld(1, b"\xe2\x82"),
    "invalid UTF-8 header key": ld(3, ld(3, ld(1, b"\x80"))),
    "invalid UTF-8 header key overwritten": ld(3, ld(3, ld(1, b"\x80") + ld(1, b"ok"))),
    "invalid header value bytes are fine": ld(3, ld(3, ld(1, b"k") + ld(2, b"\x80"))),
    "length past the end": VALID + tag(12, 2) + varint(5) + b"ab",
    "6-byte length": ld(1, b"a") + tag(12, 2) + b"\x81\x80\x80\x80\x80\x00" + b"a",
    "5-byte length": tag(12, 2) + b"\x81\x80\x80\x80\x00" + b"a" + VALID,
    "length of 2^32": VALID + tag(12, 2) + varint(1 << 32),
    "record key twice (last wins)": ld(3, ld(1, b"a") + ld(1, b"bb") + tag(4, 0) + varint(3)),
    "record key as varint (unknown)": ld(3, tag(1, 0) + varint(1) + tag(4, 0) + varint(3)),
    "record with unknown fields of every kind": ld(
        3,
        tag(20, 0)
        + varint(1)
        + tag(21, 1)
        + b"\x00" * 8
        + ld(22, b"zz")
        + tag(23, 3)
        + tag(23, 4)
        + tag(24, 5)
        + b"\x00" * 4
        + ld(2, b"v")
        + tag(4, 0)
        + varint(11),
    ),
    "record truncated inside": ld(3, ld(1, b"abc")[:-1]),
    "header with unknown fields": ld(
        3,
        ld(3, tag(9, 0) + varint(1) + ld(1, b"k") + tag(9, 3) + tag(9, 4)) + tag(4, 0) + varint(1),
    ),
    "header truncated": ld(3, ld(3, ld(1, b"key")[:-1])),
    "header key and value twice": ld(
        3, ld(3, ld(1, b"a") + ld(2, b"1") + ld(1, b"b") + ld(2, b"22")) + tag(4, 0) + varint(1)
    ),
    "headers between key and value": ld(
        3,
        ld(3, ld(1, b"h1"))
        + ld(1, b"k")
        + ld(3, ld(1, b"h2"))
        + ld(2, b"v")
        + tag(4, 0)
        + varint(1),
    ),
    "empty records": ld(3, b"") + ld(3, b""),
    "offset field ignored": ld(3, tag(5, 0) + varint(-1) + tag(4, 0) + varint(8)),
    "timestamp negative": ld(3, tag(4, 0) + varint(-5)),
}


@pytest.mark.parametrize("name", list(HAND_MADE))
def test_hand_made_request_read_as_upb_reads_it(name: str) -> None:
    assert_same_reading(HAND_MADE[name])


@pytest.mark.parametrize("depth", [97, 98, 99, 100, 101, 102])
def test_nesting_limit_is_upb_s(depth: int) -> None:
    """Groups nested at the top, in a record and in a header: refused past upb's 100 levels."""
    groups = tag(7, 3) * depth + tag(7, 4) * depth
    assert_same_reading(groups)
    assert_same_reading(ld(3, groups))
    assert_same_reading(ld(3, ld(3, groups)))


def test_malformed_bytes_are_refused_saying_where() -> None:
    with pytest.raises(
        MalformedRequest, match=r"record 1: header 0: the key is not valid UTF-8 at byte \d+"
    ):
        RawProduceBatch(ld(3, b"") + ld(3, ld(3, ld(1, b"\xff"))))
    with pytest.raises(
        MalformedRequest, match="a length runs past the end of its message at byte 1"
    ):
        RawProduceBatch(ld(1, b"abc")[:-1])
    with pytest.raises(MalformedRequest, match="the topic is not valid UTF-8"):
        RawProduceBatch(ld(1, b"\xc0\x80"))
    with pytest.raises(MalformedRequest, match="messages nest more than 100 deep"):
        RawProduceBatch(tag(7, 3) * 101 + tag(7, 4) * 101)


def mutations(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(5)
        if kind == 0 and buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif kind == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif kind == 2:
            del buf[rng.randrange(len(buf) + 1) :]
        elif kind == 3:
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = rng.randbytes(rng.randrange(1, 6))
        elif buf:
            at = rng.randrange(len(buf))
            del buf[at : at + rng.randrange(1, 6)]
    return bytes(buf)


def sample_request(rng: random.Random) -> bytes:
    records = []
    for _ in range(rng.randrange(1, 6)):
        rec = pb.Record(timestamp_ms=rng.choice([1, 5, 1 << 40, -3]))
        if rng.random() < 0.5:
            rec.key = rng.randbytes(rng.randrange(0, 20))
        if rng.random() < 0.8:
            rec.value = rng.randbytes(rng.randrange(0, 150))
        for _ in range(rng.randrange(0, 3)):
            h = rec.headers.add(key=rng.choice(["a", "é", "trace-id"]))
            if rng.random() < 0.5:
                h.value = rng.randbytes(rng.randrange(0, 10))
        records.append(rec)
    message = pb.ProduceBatchRequest(topic=rng.choice(["t", "tópico"]), records=records)
    if rng.random() < 0.5:
        message.partition = rng.randrange(0, 5)
    if rng.random() < 0.3:
        message.producer_id = rng.randrange(0, 1 << 50)
        message.producer_epoch = rng.randrange(0, 100)
    return message.SerializeToString()


def test_mutated_requests_read_as_upb_reads_them() -> None:
    """Bit flips, overwrites, cuts, insertions and deletions of valid requests: the same
    accept/refuse decision and the same reading as upb, thousands of times."""
    rng = random.Random(1234)
    accepted = refused = 0
    for _ in range(4_000):
        data = mutations(rng, sample_request(rng))
        assert_same_reading(data)
        if upb(data) is None:
            refused += 1
        else:
            accepted += 1
    assert accepted > 300 and refused > 300


def test_every_cut_of_a_request_is_read_as_upb_reads_it() -> None:
    data = sample_request(random.Random(7)) + VALID
    for end in range(len(data) + 1):
        assert_same_reading(data[:end])


def test_random_bytes_never_crash() -> None:
    """Random bytes: refused with a message or read; transcoding what is read never fails
    other than by a refusal."""
    rng = random.Random(99)
    for _ in range(20_000):
        data = rng.randbytes(rng.randrange(0, 64))
        try:
            raw = RawProduceBatch(data)
        except MalformedRequest as exc:
            assert " at byte " in str(exc)
            continue
        if raw.record_count:
            keyless, batches = _grpcproduce.transcode(
                data, 3, -1, 1, BIG, BIG, -1, -1, -1, False, 1, -(2**63), 2**63 - 1, False, BIG
            )
            assert sum(b[2] for b in batches) == raw.record_count
            assert isinstance(keyless, bool)
