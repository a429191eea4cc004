"""render_batch (streamhouse/_recordwire.c) against the Python reference, byte for byte.

The reference is what the reader did before the C renderer: ``decode_records`` of the whole
batch, then ``render_records``. Batches are generated with every shape the record format
allows (null and empty keys and values, headers with null values and non-ASCII keys, offset
gaps of compacted batches, negative and large timestamps, LogAppendTime, every codec,
non-minimal varints), rendered from every interesting first offset and limit; damaged batches
must be refused by both, with the same error class, and never crash.
"""

from __future__ import annotations

import random
import struct
import zlib

import crc32c
import pytest
from streamhouse._recordwire import RenderError, render

from streamhouse.errors import ErrorCode
from streamhouse.proto import streamhouse_pb2 as pb
from streamhouse.record_wire import render_batch, render_records
from streamhouse.recordbatch import (
    CODEC_GZIP,
    CODEC_LZ4,
    CODEC_NONE,
    CODEC_SNAPPY,
    CODEC_ZSTD,
    TIMESTAMP_TYPE_MASK,
    InvalidBatchError,
    decode_records,
    deflate,
    encode_batch,
    encode_control_batch,
)

Header = tuple[bytes, bytes | None]  # raw key bytes (may be invalid UTF-8), value
Rec = tuple[int, int, bytes | None, bytes | None, list[Header]]  # od, td, key, value, headers

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def zigzag(n: int, pad: int = 0) -> bytes:
    """Zigzag LEB128 of n; `pad` extra continuation bytes make a valid non-minimal varint."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    for _ in range(pad):
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


def record_bytes(rec: Rec, pad: int = 0) -> bytes:
    od, td, key, value, headers = rec
    body = bytearray(b"\x00")
    body += zigzag(td, pad if abs(td) < 1 << 40 else 0)
    body += zigzag(od, pad if od < 1 << 20 else 0)
    body += zigzag(-1) if key is None else zigzag(len(key), pad) + key
    body += zigzag(-1) if value is None else zigzag(len(value)) + value
    body += zigzag(len(headers))
    for hkey, hvalue in headers:
        body += zigzag(len(hkey)) + hkey
        body += zigzag(-1) if hvalue is None else zigzag(len(hvalue), pad) + hvalue
    return zigzag(len(body)) + bytes(body)


def build_batch(
    records: list[Rec],
    *,
    base_ts: int = 1_700_000_000_000,
    max_ts: int = 1_700_000_000_999,
    attributes: int = 0,
    pad: int = 0,
    count: int | None = None,
    raw: bytes | None = None,
) -> bytes:
    """A stored batch (baseOffset 0, CRC valid) holding `records`, or the `raw` record bytes."""
    data = raw if raw is not None else b"".join(record_bytes(r, pad) for r in records)
    codec = attributes & 0x07
    if codec != CODEC_NONE:
        data = deflate(codec, data)
    last_delta = max((r[0] for r in records), default=0)
    body = (
        struct.pack(
            ">hiqqqhii",
            attributes,
            last_delta,
            base_ts,
            max_ts,
            -1,
            -1,
            -1,
            len(records) if count is None else count,
        )
        + data
    )
    return struct.pack(">qiibI", 0, len(body) + 9, -1, 2, crc32c.crc32c(body)) + body


def reference(
    batch: bytes, base: int, first: int, limit: int, verify_crc: bool = True
) -> tuple[bytes, int, int]:
    """What the reader rendered before: decode_records + render_records, and the offset after
    the last record rendered."""
    records = decode_records(batch, verify_crc=verify_crc)
    wire, n = render_records(records, base, first, limit)
    taken = [d for d, *_ in records if base + d >= first][:n]
    return wire, n, (base + taken[-1] + 1) if taken else first


def random_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(n))


def random_records(rng: random.Random, n: int) -> list[Rec]:
    """n records with rising offset deltas (gaps sometimes, as key compaction leaves)."""
    out: list[Rec] = []
    od = rng.choice((0, 0, 3))
    for _ in range(n):
        shape = rng.random()
        key = None if shape < 0.3 else b"" if shape < 0.4 else random_bytes(rng, rng.randrange(40))
        kind = rng.random()
        if kind < 0.1:
            value = None
        elif kind < 0.2:
            value = b""
        elif kind < 0.25:
            value = random_bytes(rng, rng.randrange(16_384, 20_000))  # 3-byte lengths
        else:
            value = random_bytes(rng, rng.randrange(1, 300))
        headers: list[Header] = []
        if rng.random() < 0.3:
            for _ in range(rng.randrange(1, 4)):
                hkey = rng.choice((b"", b"trace", "clé-ü".encode(), b"k" * 200))
                hval = rng.choice((None, b"", b"v", random_bytes(rng, 150)))
                headers.append((hkey, hval))
        td = rng.choice((0, 0, 0, 1, 7, -1, 5_000, -(2**40), 2**45))
        out.append((od, td, key, value, headers))
        od += rng.choice((1, 1, 1, 2, 50, 70_000))
    return out


CODECS = (CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD)


@pytest.mark.parametrize("seed", range(40))
def test_generated_batches_render_exactly_as_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    records = random_records(rng, rng.choice((1, 2, 5, 30, 200)))
    attributes = CODECS[seed % len(CODECS)] | (TIMESTAMP_TYPE_MASK if seed % 7 == 3 else 0)
    base_ts = rng.choice((0, 1_700_000_000_000, -5, 2**50))
    batch = build_batch(
        records, base_ts=base_ts, max_ts=base_ts + 10, attributes=attributes, pad=seed % 3
    )
    base = rng.choice((0, 1, 127, 128, 10_000, 2**40, 2**62))
    last = base + records[-1][0]
    firsts = {0, base, base + 1, last, last + 1, rng.randrange(base, last + 2)}
    limits = {0, 1, 2, len(records) - 1, len(records), 1 << 62}
    for first in firsts:
        for limit in limits:
            expected = reference(batch, base, first, limit)
            assert render_batch(batch, base, first, limit) == expected, (first, limit)


def test_encode_batch_output_and_a_control_batch_render_as_the_reference() -> None:
    """The produce path's batches (encode_batch) and a transaction marker, as stored."""
    keys = [None, b"k", b""] * 400
    values = [b"x" * 100, None, b""] * 400
    headers: list[list[tuple[str, bytes | None]]] = [[], [("h", b"1"), ("h", None)], []] * 400
    timestamps = [1_700_000_000_000 + (i % 3) for i in range(1200)]
    batch = encode_batch(keys, values, headers, timestamps)
    marker = encode_control_batch(True, 7, 1, 3, 1_700_000_000_000)
    for b in (batch, marker):
        for first, limit in ((0, 1 << 30), (5_000_400, 17), (5_000_000, 1200)):
            assert render_batch(b, 5_000_000, first, limit) == reference(b, 5_000_000, first, limit)


def test_the_rendered_bytes_parse_as_consume_response_records() -> None:
    records: list[Rec] = [
        (0, 0, None, b"a", []),
        (1, -(1_700_000_000_001), b"", None, [(b"x", None), ("ü".encode(), b"")]),
        (9, 3, b"key", b"v" * 20_000, []),
    ]
    batch = build_batch(records, base_ts=1_700_000_000_000)
    wire, n, after = render_batch(batch, 2**40, 0, 100)
    assert (n, after) == (3, 2**40 + 10)
    got = pb.ConsumeResponse.FromString(wire).records
    assert [(r.offset, r.timestamp_ms) for r in got] == [
        (2**40, 1_700_000_000_000),
        (2**40 + 1, -1),
        (2**40 + 9, 1_700_000_000_003),
    ]
    assert not got[0].HasField("key") and got[1].HasField("key") and not got[1].HasField("value")
    assert [(h.key, h.HasField("value")) for h in got[1].headers] == [("x", False), ("ü", True)]
    assert got[2].value == b"v" * 20_000


def test_log_append_time_gives_every_record_the_max_timestamp() -> None:
    batch = build_batch(
        [(0, 5, None, b"a", []), (1, -3, None, b"b", [])],
        base_ts=100,
        max_ts=777,
        attributes=TIMESTAMP_TYPE_MASK,
    )
    wire, n, _ = render_batch(batch, 0, 0, 10)
    assert [r.timestamp_ms for r in pb.ConsumeResponse.FromString(wire).records] == [777, 777]


# -- damaged input ------------------------------------------------------------------------


def good_batch() -> bytes:
    return build_batch(random_records(random.Random(7), 20))


def with_records(batch: bytes, data: bytes) -> bytes:
    """`batch` with its record bytes replaced and batchLength and CRC made to match."""
    body = batch[21:61] + data
    return struct.pack(">qiibI", 0, len(body) + 9, -1, 2, crc32c.crc32c(body)) + body


def test_every_truncation_of_the_records_is_refused_by_both() -> None:
    batch = good_batch()
    for cut in range(61, len(batch)):
        damaged = with_records(batch, batch[61:cut])
        with pytest.raises(InvalidBatchError):
            decode_records(damaged)
        with pytest.raises(InvalidBatchError) as info:
            render_batch(damaged, 0, 0, 1 << 30)
        assert info.value.code == ErrorCode.INVALID_RECORD
        assert "record" in info.value.message


def test_random_damage_is_refused_or_rendered_exactly_as_the_reference() -> None:
    """Flipped, inserted and removed bytes: both refuse, or both render the same bytes."""
    rng = random.Random(2026)
    originals = [good_batch(), build_batch(random_records(random.Random(3), 5), pad=1)]
    refused = 0
    for trial in range(4000):
        data = bytearray(originals[trial % 2][61:])
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(data))
            action = rng.random()
            if action < 0.6:
                data[at] = rng.getrandbits(8)
            elif action < 0.8:
                data.insert(at, rng.getrandbits(8))
            else:
                del data[at]
        damaged = with_records(originals[trial % 2], bytes(data))
        try:
            expected = reference(damaged, 3, 0, 1 << 30)
        except InvalidBatchError:
            expected = None
        try:
            got = render_batch(damaged, 3, 0, 1 << 30)
        except InvalidBatchError as exc:
            assert exc.code == ErrorCode.INVALID_RECORD
            refused += 1
            if expected is not None:  # only a value past int64 may part them
                assert "overflows" in exc.message, (trial, exc.message)
            continue
        assert got == expected, trial
    assert refused > 2000  # the damage did hit the records


def test_a_header_key_that_is_not_utf8_is_refused() -> None:
    batch = build_batch([(0, 0, None, b"v", [(b"\xff\xfe", b"x")])])
    with pytest.raises(InvalidBatchError):
        decode_records(batch)
    with pytest.raises(InvalidBatchError, match="record 0: header key is not UTF-8"):
        render_batch(batch, 0, 0, 10)


def test_a_timestamp_past_int64_is_refused() -> None:
    batch = build_batch([(0, 2**62, None, b"v", [])], base_ts=2**62)
    with pytest.raises(InvalidBatchError, match="record 0: timestamp delta .* overflows"):
        render_batch(batch, 0, 0, 10)


def test_records_are_checked_past_the_limit_as_decode_records_does() -> None:
    records = random_records(random.Random(11), 10)
    data = b"".join(record_bytes(r) for r in records) + b"\x00"  # one stray byte at the end
    batch = with_records(build_batch(records), data)
    with pytest.raises(InvalidBatchError, match="1 bytes left after the 10 records"):
        render_batch(batch, 0, 0, 1)


@pytest.mark.parametrize(
    ("damage", "code", "message"),
    [
        (lambda b: b[:60], ErrorCode.CORRUPT_MESSAGE, "shorter than the 61-byte header"),
        (lambda b: b[:16] + b"\x01" + b[17:], ErrorCode.UNSUPPORTED_FOR_MESSAGE_FORMAT, "magic 1"),
        (lambda b: b + b"\x00", ErrorCode.CORRUPT_MESSAGE, "batchLength"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), ErrorCode.CORRUPT_MESSAGE, "CRC-32C mismatch"),
        (
            lambda b: with_records(b[:57] + struct.pack(">i", -1) + b[61:], b[61:]),
            ErrorCode.INVALID_RECORD,
            "negative recordsCount",
        ),
        (
            lambda b: with_records(b[:57] + struct.pack(">i", 21) + b[61:], b[61:]),
            ErrorCode.INVALID_RECORD,
            "record 20: batch ends after 20 of 21 records",
        ),
    ],
)
def test_a_bad_header_is_refused_with_its_reason(damage, code: ErrorCode, message: str) -> None:
    with pytest.raises(InvalidBatchError) as info:
        render_batch(damage(good_batch()), 0, 0, 10)
    assert info.value.code == code
    assert message in info.value.message


def test_compressed_records_are_bounded_by_max_inflated() -> None:
    batch = build_batch([(0, 0, None, b"\x00" * 100_000, [])], attributes=CODEC_LZ4)
    with pytest.raises(InvalidBatchError) as info:
        render_batch(batch, 0, 0, 10, max_inflated=10_000)
    assert info.value.code == ErrorCode.MESSAGE_TOO_LARGE
    gz = build_batch([(0, 0, None, b"v", [])], attributes=CODEC_GZIP)
    broken = with_records(gz, zlib.compress(b"not gzip"))
    with pytest.raises(InvalidBatchError) as info:
        render_batch(broken, 0, 0, 10)
    assert info.value.code == ErrorCode.CORRUPT_MESSAGE


def test_the_c_entry_point_refuses_a_compressed_batch_without_its_records() -> None:
    batch = build_batch([(0, 0, None, b"v", [])], attributes=CODEC_LZ4)
    with pytest.raises(ValueError, match="needs its decompressed records"):
        render(batch, None, 0, 0, 10)
    with pytest.raises(RenderError) as info:
        render(batch[:30], None, 0, 0, 10)
    assert info.value.args[0] == "CORRUPT_MESSAGE"
