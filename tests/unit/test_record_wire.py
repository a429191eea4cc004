"""record_wire: hand-built ConsumeResponse bytes must parse exactly like protobuf's own."""

from __future__ import annotations

import pytest

from streamhouse.proto import streamhouse_pb2 as pb
from streamhouse.record_wire import consume_response_tail, render_records, varint
from streamhouse.recordbatch import decode_records, encode_batch

Rec = tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]


def parse(
    records: list[Rec], base: int, first: int = 0, limit: int = 1 << 30
) -> pb.ConsumeResponse:
    """Render and parse back with the generated protobuf class."""
    data, _n = render_records(records, base, first, limit)
    return pb.ConsumeResponse.FromString(data)


def as_tuple(r: pb.Record) -> tuple:
    """A consumed record as (offset, ts, key, value, headers) with None for absent fields."""
    return (
        r.offset,
        r.timestamp_ms,
        r.key if r.HasField("key") else None,
        r.value if r.HasField("value") else None,
        [(h.key, h.value if h.HasField("value") else None) for h in r.headers],
    )


@pytest.mark.parametrize(
    "value", [0, 1, 127, 128, 300, 16_383, 16_384, 2**31, 2**63 - 1, -1, -2, -(2**63)]
)
def test_varint_matches_protobuf_int64(value: int) -> None:
    """varint() encodes int64 exactly as protobuf does (negative values in ten bytes)."""
    expected = pb.Record(offset=value).SerializeToString()
    if value == 0:
        assert expected == b""  # proto3 omits defaults; varint(0) is still one byte
        assert varint(0) == b"\x00"
    else:
        assert b"\x28" + varint(value) == expected
    if value < 0:
        assert len(varint(value)) == 10


def test_null_and_empty_keys_and_values_are_distinct() -> None:
    """Null key/value are absent fields; empty ones are present and empty."""
    records: list[Rec] = [
        (0, 1, None, None, []),
        (1, 1, b"", b"", []),
        (2, 1, b"k", None, []),
        (3, 1, None, b"v", []),
    ]
    resp = parse(records, base=10)
    assert [as_tuple(r) for r in resp.records] == [
        (10, 1, None, None, []),
        (11, 1, b"", b"", []),
        (12, 1, b"k", None, []),
        (13, 1, None, b"v", []),
    ]


def test_headers_keep_order_duplicates_and_null_values() -> None:
    """Headers come back in order, duplicates kept, null vs empty values distinct, UTF-8 keys."""
    headers: list[tuple[str, bytes | None]] = [
        ("trace", b"1"),
        ("trace", b"2"),
        ("empty", b""),
        ("null", None),
        ("", b"no-key"),
        ("clé-ü", b"\x00\xff"),
        ("trace", None),
    ]
    resp = parse([(0, 5, b"k", b"v", headers)], base=0)
    (rec,) = resp.records
    assert as_tuple(rec)[4] == headers


@pytest.mark.parametrize("ts", [0, 1, -1, -1_000_000, 1_700_000_000_000, 2**63 - 1, -(2**63)])
def test_timestamps_round_trip(ts: int) -> None:
    """Zero, negative and extreme int64 timestamps parse back unchanged."""
    (rec,) = parse([(0, ts, None, b"v", [])], base=3).records
    assert rec.timestamp_ms == ts


def test_offsets_are_base_plus_delta_including_zero() -> None:
    """Each record's offset is base_offset + offset_delta; offset 0 is the proto default."""
    records: list[Rec] = [(d, 7, None, str(d).encode(), []) for d in range(4)]
    assert [r.offset for r in parse(records, base=0).records] == [0, 1, 2, 3]
    big = 2**40
    assert [r.offset for r in parse(records, base=big).records] == [big + d for d in range(4)]


def test_first_offset_filters_earlier_records() -> None:
    """Records below first_offset are dropped; the count says how many were rendered."""
    records: list[Rec] = [(d, 1, None, bytes([65 + d]), []) for d in range(5)]
    data, n = render_records(records, 100, 102, 1 << 30)
    resp = pb.ConsumeResponse.FromString(data)
    assert n == 3
    assert [(r.offset, r.value) for r in resp.records] == [(102, b"C"), (103, b"D"), (104, b"E")]
    data, n = render_records(records, 100, 105, 1 << 30)
    assert (data, n) == (b"", 0)


def test_limit_caps_rendered_records() -> None:
    """At most `limit` records are rendered, counted from first_offset."""
    records: list[Rec] = [(d, 1, None, bytes([65 + d]), []) for d in range(6)]
    data, n = render_records(records, 0, 2, 3)
    assert n == 3
    assert [r.offset for r in pb.ConsumeResponse.FromString(data).records] == [2, 3, 4]
    assert render_records(records, 0, 0, 0) == (b"", 0)


def test_large_fields_use_multibyte_lengths() -> None:
    """Keys, values and headers over 127 bytes (multi-byte length varints) parse back."""
    key, value, hval = b"k" * 200, b"v" * 70_000, b"h" * 130
    (rec,) = parse([(0, 1, key, value, [("x" * 150, hval)])], base=0).records
    assert as_tuple(rec) == (0, 1, key, value, [("x" * 150, hval)])


@pytest.mark.parametrize(
    ("hwm", "lso", "nxt"),
    [(0, 0, 0), (10, 0, 10), (10, 3, 7), (2**40, 2**39, 2**40), (-1, -1, 5)],
)
def test_tail_fields(hwm: int, lso: int, nxt: int) -> None:
    """consume_response_tail appended after the records yields the scalar fields."""
    records: list[Rec] = [(0, 9, b"a", b"b", [("h", None)]), (1, 9, None, None, [])]
    data, _n = render_records(records, 4, 0, 10)
    resp = pb.ConsumeResponse.FromString(data + consume_response_tail(hwm, lso, nxt))
    assert (resp.high_watermark, resp.log_start_offset, resp.next_offset) == (hwm, lso, nxt)
    assert [as_tuple(r) for r in resp.records] == [
        (4, 9, b"a", b"b", [("h", None)]),
        (5, 9, None, None, []),
    ]


def test_tail_alone_is_a_valid_empty_response() -> None:
    """With no records the tail alone parses to an empty record list."""
    resp = pb.ConsumeResponse.FromString(consume_response_tail(8, 2, 8))
    assert list(resp.records) == []
    assert (resp.high_watermark, resp.log_start_offset, resp.next_offset) == (8, 2, 8)


def test_matches_protobuf_serialisation_byte_for_byte() -> None:
    """The rendered bytes equal protobuf's own serialisation of the same message."""
    records: list[Rec] = [
        (0, -5, None, b"v", [("a", None), ("a", b"")]),
        (1, 0, b"", None, []),
        (2, 123, b"key", b"value", [("z", b"1")]),
    ]
    data, _n = render_records(records, 41, 0, 10)
    data += consume_response_tail(44, 1, 44)
    expected = pb.ConsumeResponse(high_watermark=44, log_start_offset=1, next_offset=44)
    for delta, ts, key, value, headers in records:
        rec = expected.records.add(timestamp_ms=ts, offset=41 + delta)
        if key is not None:
            rec.key = key
        if value is not None:
            rec.value = value
        for hk, hv in headers:
            h = rec.headers.add(key=hk)
            if hv is not None:
                h.value = hv
    assert data == expected.SerializeToString(deterministic=True)


def test_rendering_decoded_batch_round_trips() -> None:
    """Records decoded from a real v2 batch render to the same records."""
    keys: list[bytes | None] = [None, b"", b"k2"]
    values: list[bytes | None] = [b"v0", None, b""]
    headers: list[list[tuple[str, bytes | None]]] = [[], [("h", None), ("h", b"x")], [("e", b"")]]
    timestamps = [-3, 0, 1_700_000_000_000]
    batch = encode_batch(keys, values, headers, timestamps)
    resp = parse(decode_records(batch), base=1_000)
    assert [as_tuple(r) for r in resp.records] == [
        (1_000 + i, timestamps[i], keys[i], values[i], headers[i]) for i in range(3)
    ]
