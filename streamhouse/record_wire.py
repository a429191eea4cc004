"""Protobuf wire bytes of consumed records, built without protobuf objects.

The reader renders `repeated Record records = 1` of `streamhouse.v1.ConsumeResponse` straight
from stored batches; ingest appends the scalar fields and sends the bytes as they are.

``render_batch`` does it a whole batch at a time: it checks the CRC and decompresses here
(bounded, ``recordbatch.inflate``), then ``streamhouse/_recordwire.c`` walks and checks every
record and writes the wire bytes of those in range, with no Python object per record.
``render_records`` is the pure-Python reference it must match byte for byte (over the
records ``recordbatch.decode_records`` gives); the tests compare the two on generated
batches. The C walk refuses one thing the reference lets through: a timestamp (base +
delta) or offset that does not fit an int64, which protobuf's int64 cannot carry either.

Wire layout (proto3, see streamhouse/proto/streamhouse.proto):
  ConsumeResponse: 0x0A len Record (repeated) | 0x10 varint high_watermark
                   | 0x18 varint log_start_offset | 0x20 varint next_offset
  Record:          0x0A len key (only when not null) | 0x12 len value (only when not null)
                   | 0x1A len Header (repeated) | 0x20 varint timestamp_ms | 0x28 varint offset
  Header:          0x0A len key (utf-8) | 0x12 len value (only when not null)
Negative int64 varints take ten bytes (two's complement), as protobuf does.
"""

from __future__ import annotations

import crc32c

from streamhouse._recordwire import RenderError, render
from streamhouse.errors import ErrorCode
from streamhouse.recordbatch import (
    BATCH_HEADER_SIZE,
    CODEC_MASK,
    MAX_INFLATED_BYTES,
    InvalidBatchError,
    inflate,
)

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


_LENGTH_AT = 8  # header bytes 8..11: batch_length (int32), the bytes after it
_CRC_AT = 17  # header bytes 17..20: CRC-32C (big-endian) of bytes 21..end
_ATTRIBUTES_LOW_AT = 22  # low byte of the int16 attributes: the codec bits
_MAGIC_AT = 16


def render_batch(
    batch: bytes | memoryview,
    base_offset: int,
    first_offset: int,
    limit: int,
    *,
    max_inflated: int = MAX_INFLATED_BYTES,
    verify_crc: bool = True,
) -> tuple[bytes, int, int]:
    """Wire bytes of the records of one whole stored batch with offset >= ``first_offset``,
    at most ``limit`` of them; ``base_offset`` is the batch's absolute first offset.

    Returns ``(bytes, number rendered, offset after the last one rendered)`` (the last is
    ``first_offset`` when none was). Every record is checked, rendered or not, as
    ``decode_records`` does: ``InvalidBatchError`` for a short or non-v2 header, a length or
    CRC mismatch, records that do not decompress within ``max_inflated`` bytes, and malformed
    records (the message names the record).
    """
    mv = memoryview(batch)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    if (
        len(mv) >= BATCH_HEADER_SIZE
        and mv[_MAGIC_AT] == 2
        and int.from_bytes(mv[_LENGTH_AT : _LENGTH_AT + 4], "big", signed=True) + 12 == len(mv)
    ):
        if verify_crc:
            stored = int.from_bytes(mv[_CRC_AT : _CRC_AT + 4], "big")
            actual = crc32c.crc32c(mv[_CRC_AT + 4 :])
            if actual != stored:
                raise InvalidBatchError(
                    ErrorCode.CORRUPT_MESSAGE,
                    f"CRC-32C mismatch, header says {stored:#010x}, bytes give {actual:#010x}",
                )
        codec = mv[_ATTRIBUTES_LOW_AT] & CODEC_MASK
        records = (
            None if codec == 0 else inflate(codec, mv[BATCH_HEADER_SIZE:].tobytes(), max_inflated)
        )
    else:
        records = None  # the C side refuses the header (short, magic, length) with the reason
    try:
        return render(mv, records, base_offset, first_offset, limit)
    except RenderError as exc:
        code, message = exc.args
        raise InvalidBatchError(ErrorCode[code], message) from None


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
