"""Protobuf wire bytes of consumed records, built without protobuf objects.

The reader renders `repeated Record records = 1` of `streamhouse.v1.ConsumeResponse` straight
from stored batches; ingest appends the scalar fields and sends the bytes as they are.

Wire layout (proto3, see streamhouse/proto/streamhouse.proto):
  ConsumeResponse: 0x0A len Record (repeated) | 0x10 varint high_watermark
                   | 0x18 varint log_start_offset | 0x20 varint next_offset
  Record:          0x0A len key (only when not null) | 0x12 len value (only when not null)
                   | 0x1A len Header (repeated) | 0x20 varint timestamp_ms | 0x28 varint offset
  Header:          0x0A len key (utf-8) | 0x12 len value (only when not null)
Negative int64 varints take ten bytes (two's complement), as protobuf does.
"""

from __future__ import annotations

_SMALL = [bytes([i]) for i in range(128)]


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of an int64 (negative values as 64-bit two's complement)."""
    if 0 <= value < 128:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64
    # Unrolled for the common sizes (offsets, millisecond timestamps): the loop below costs
    # microseconds per call in CPython, and every consumed record needs two of these.
    if value < 1 << 14:
        return bytes((value & 127 | 128, value >> 7))
    if value < 1 << 21:
        return bytes((value & 127 | 128, value >> 7 & 127 | 128, value >> 14))
    if value < 1 << 28:
        return bytes(
            (value & 127 | 128, value >> 7 & 127 | 128, value >> 14 & 127 | 128, value >> 21)
        )
    if value < 1 << 35:
        return bytes(
            (
                value & 127 | 128,
                value >> 7 & 127 | 128,
                value >> 14 & 127 | 128,
                value >> 21 & 127 | 128,
                value >> 28,
            )
        )
    if value < 1 << 42:
        return bytes(
            (
                value & 127 | 128,
                value >> 7 & 127 | 128,
                value >> 14 & 127 | 128,
                value >> 21 & 127 | 128,
                value >> 28 & 127 | 128,
                value >> 35,
            )
        )
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def render_records(
    records: list[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    base_offset: int,
    first_offset: int,
    limit: int,
) -> tuple[bytes, int]:
    """Wire bytes of the records with offset >= first_offset, at most `limit` of them.

    `records` are (offset_delta, timestamp_ms, key, value, headers) of one batch whose first
    offset is `base_offset`. Returns (bytes, number rendered).
    """
    parts: list[bytes] = []
    count = 0
    last_ts, ts_field = 0, b""
    for delta, ts, key, value, headers in records:
        offset = base_offset + delta
        if offset < first_offset:
            continue
        if count >= limit:
            break
        body: list[bytes] = []
        if key is not None:
            body.append(b"\x0a" + varint(len(key)) + key)
        if value is not None:
            body.append(b"\x12" + varint(len(value)) + value)
        for hkey, hvalue in headers:
            hk = hkey.encode()
            h = b"\x0a" + varint(len(hk)) + hk
            if hvalue is not None:
                h += b"\x12" + varint(len(hvalue)) + hvalue
            body.append(b"\x1a" + varint(len(h)) + h)
        if ts:
            if ts != last_ts:  # records of a batch usually share their timestamp
                last_ts, ts_field = ts, b"\x20" + varint(ts)
            body.append(ts_field)
        if offset:
            body.append(b"\x28" + varint(offset))
        rec = b"".join(body)
        parts.append(b"\x0a" + varint(len(rec)) + rec)
        count += 1
    return b"".join(parts), count


def consume_response_tail(high_watermark: int, log_start_offset: int, next_offset: int) -> bytes:
    """The scalar fields of ConsumeResponse, appended after the rendered records."""
    out = []
    if high_watermark:
        out.append(b"\x10" + varint(high_watermark))
    if log_start_offset:
        out.append(b"\x18" + varint(log_start_offset))
    if next_offset:
        out.append(b"\x20" + varint(next_offset))
    return b"".join(out)
