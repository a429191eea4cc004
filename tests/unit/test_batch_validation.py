"""validate_batches: produced RecordBatch v2 checked as Kafka's LogValidator checks it.

Each hostile batch below tells one lie with a correct CRC (so the lie, not the CRC, is what
must be caught): record framing, offset deltas, lengths, counts, timestamps, attributes,
producer fields, sizes, and compressed data that is truncated or inflates past the bound.
Property tests mutate valid batches and require the validator to answer only with
InvalidBatchError, quickly.
"""

from __future__ import annotations

import struct
import time
import tracemalloc
import zlib

import cramjam
import crc32c
import lz4.frame
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatchBuilder

from streamhouse import _batchcheck
from streamhouse.errors import ErrorCode
from streamhouse.recordbatch import (
    BatchRules,
    InvalidBatchError,
    decode_records,
    encode_batch,
    validate_batches,
)
from streamhouse.topic_config import batch_rules

NOW = 1_700_000_000_000
MiB = 1 << 20
RULES = BatchRules(
    max_message_bytes=16 * MiB, max_records_bytes=16 * MiB, max_inflated_bytes=16 * MiB
)
GiB_OF_ZEROS = 1 << 30
CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


# ------------------------------------------------------------------------------------------
# building batches by hand


def zz(n: int) -> bytes:
    """Zigzag varint (Kafka's varint/varlong)."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def record(
    offset_delta: int,
    *,
    ts_delta: int = 0,
    key: bytes | None = b"k",
    value: bytes | None = b"v",
    headers: list[tuple[bytes, bytes | None]] = (),  # type: ignore[assignment]
    key_len: int | None = None,
    value_len: int | None = None,
    header_count: int | None = None,
    length_adjust: int = 0,
) -> bytes:
    """One record; the *_len / header_count / length_adjust arguments tell lies."""
    body = bytearray(b"\x00" + zz(ts_delta) + zz(offset_delta))
    body += zz(key_len if key_len is not None else (-1 if key is None else len(key)))
    body += key or b""
    body += zz(value_len if value_len is not None else (-1 if value is None else len(value)))
    body += value or b""
    body += zz(header_count if header_count is not None else len(headers))
    for hk, hv in headers:
        body += zz(len(hk)) + hk + zz(-1 if hv is None else len(hv)) + (hv or b"")
    return zz(len(body) + length_adjust) + bytes(body)


def batch(
    records: bytes,
    count: int,
    *,
    base_ts: int = NOW,
    max_ts: int | None = None,
    attributes: int = 0,
    last_offset_delta: int | None = None,
    producer: tuple[int, int, int] = (-1, -1, -1),
) -> bytes:
    """A batch around raw (possibly compressed) record bytes, with a correct CRC."""
    pid, epoch, seq = producer
    body = (
        struct.pack(
            ">hiqqqhii",
            attributes,
            count - 1 if last_offset_delta is None else last_offset_delta,
            base_ts,
            base_ts if max_ts is None else max_ts,
            pid,
            epoch,
            seq,
            count,
        )
        + records
    )
    return struct.pack(">qiibI", 0, len(body) + 9, -1, 2, crc32c.crc32c(body)) + body


def records_of(n: int, *, value: bytes = b"v") -> bytes:
    return b"".join(record(i, value=value) for i in range(n))


def refused(code: ErrorCode, data: bytes, rules: BatchRules = RULES, match: str | None = None):
    with pytest.raises(InvalidBatchError, match=match) as info:
        validate_batches(data, rules, NOW)
    assert info.value.code is code, str(info.value)
    return info.value


def kafka_python_batch(codec: int, n: int = 50, value_size: int = 100) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    for i in range(n):
        builder.append(
            i,
            timestamp=NOW + i,
            key=None if i % 3 == 0 else b"key-%d" % i,
            value=bytes([i % 256]) * value_size,
            headers=[("h", b"x")] if i % 2 else [],
        )
    return bytes(builder.build())


def compress(codec: int, data: bytes) -> bytes:
    if codec == 1:
        c = zlib.compressobj(6, zlib.DEFLATED, 31)
        return c.compress(data) + c.flush()
    if codec == 2:
        return bytes(cramjam.snappy.compress_raw(data))
    if codec == 3:
        return lz4.frame.compress(data)
    return zstandard.ZstdCompressor().compress(data)


# ------------------------------------------------------------------------------------------
# valid batches pass


def test_encode_batch_output_passes_and_infos_match() -> None:
    data = encode_batch(
        [b"a", None, b"c"],
        [b"1", b"2", None],
        [[("h", b"x"), ("h", None)], [], [("\u00e9", b"")]],
        [NOW, NOW + 7, NOW - 3],
    )
    (info,) = validate_batches(data, RULES, NOW)
    assert (info.record_count, info.max_timestamp, info.length) == (3, NOW + 7, len(data))


@pytest.mark.parametrize("codec", [0, 1, 2, 3, 4], ids=["none", *CODECS])
def test_kafka_python_batches_pass_for_every_codec(codec: int) -> None:
    data = kafka_python_batch(codec) + kafka_python_batch(codec, n=3)
    infos = validate_batches(data, RULES, NOW)
    assert [i.record_count for i in infos] == [50, 3]


def test_compressed_batch_built_by_hand_passes() -> None:
    for codec in CODECS.values():
        assert validate_batches(
            batch(compress(codec, records_of(5)), 5, attributes=codec), RULES, NOW
        )


def test_check_records_reports_max_timestamp() -> None:
    recs = record(0, ts_delta=5) + record(1, ts_delta=-2) + record(2, ts_delta=9)
    assert _batchcheck.check_records(recs, 3, 100, -(2**63), 2**63 - 1, False) == (
        -1,
        0,
        None,
        109,
        (),
    )


# ------------------------------------------------------------------------------------------
# one lie at a time


@pytest.mark.parametrize(
    ("recs", "count", "index", "match"),
    [
        # record framing
        (record(0) + record(1, length_adjust=50), 2, 1, "length 58 is invalid"),
        (record(0, length_adjust=-2) + b"\x00\x00", 1, 0, "value of 1 bytes runs past"),
        (record(0, length_adjust=1) + b"\x00", 1, 0, "end 1 bytes before its declared length"),
        (record(0, key=b"abc", key_len=40), 1, 0, "key of 40 bytes runs past"),
        (record(0, value=b"abc", value_len=40), 1, 0, "value of 40 bytes runs past"),
        # lengths below -1
        (record(0, key=None, key_len=-2), 1, 0, "key length -2"),
        (record(0, value=None, value_len=-5), 1, 0, "value length -5"),
        (record(0, header_count=-1), 1, 0, "header count -1 is negative"),
        (record(0, headers=[(b"h", b"v")], header_count=9), 1, 0, "header count 9 cannot fit"),
        # a header key is never null, and is UTF-8
        (
            record(0, headers=[(b"", None)]).replace(b"\x02\x00\x01", b"\x02\x01\x01"),
            1,
            0,
            "never null",
        ),
        (record(0, headers=[(b"\xff\xfe", b"v")]), 1, 0, "not valid UTF-8"),
        (
            record(0, headers=[(b"h", b"v")]).replace(b"\x02h\x02v", b"\x02h\x09v"),
            1,
            0,
            "header 0 value length -5",
        ),
        # offset deltas: a gap, duplicates, out of order, not starting at 0
        (record(0) + record(2), 2, 1, "offset delta 2, expected 1"),
        (record(0) + record(0), 2, 1, "offset delta 0, expected 1"),
        (record(1) + record(0), 2, 0, "offset delta 1, expected 0"),
        # count lies (recordsCount = lastOffsetDelta + 1, CRC fine)
        (records_of(2, value=b"x" * 10), 3, 2, "ends after 2 of its 3 records"),
        (records_of(3), 2, 1, "bytes are left after the batch's 2 records"),
        # trailing bytes
        (records_of(2) + b"\x00\x00\x00", 2, 1, "3 bytes are left"),
        # overlong varints
        (b"\x80\x80\x80\x80\x80\x01" + record(0)[1:], 1, 0, "overlong varint"),
        (record(0)[:2] + b"\xff" * 10 + record(0)[3:], 1, 0, ""),
    ],
)
def test_record_lies_are_invalid_record_naming_the_record(
    recs: bytes, count: int, index: int, match: str
) -> None:
    err = refused(ErrorCode.INVALID_RECORD, batch(recs, count), match=match or None)
    assert [i for i, _ in err.record_errors] == [index]
    assert err.message.startswith("batch 0 at byte 0: record ") or "left after" in err.message


def test_max_timestamp_lie() -> None:
    recs = record(0) + record(1, ts_delta=10)
    refused(ErrorCode.INVALID_RECORD, batch(recs, 2, max_ts=NOW + 5), match="maxTimestamp")
    assert validate_batches(batch(recs, 2, max_ts=NOW + 10), RULES, NOW)


def test_last_offset_delta_lie_is_refused_by_the_header() -> None:
    refused(
        ErrorCode.INVALID_RECORD, batch(records_of(2), 2, last_offset_delta=5), match="does not"
    )


@pytest.mark.parametrize(
    ("attributes", "code", "match"),
    [
        (0x20, ErrorCode.INVALID_RECORD, "control batches"),
        (0x10, ErrorCode.INVALID_RECORD, "transactional"),
        (0x08, ErrorCode.INVALID_TIMESTAMP, "LogAppendTime"),
        (0x07, ErrorCode.INVALID_RECORD, "unknown compression codec 7"),
    ],
)
def test_attributes(attributes: int, code: ErrorCode, match: str) -> None:
    refused(code, batch(records_of(1), 1, attributes=attributes), match=match)


@pytest.mark.parametrize("producer", [(5, -1, 0), (5, 0, -1), (-2, -1, -1)])
def test_inconsistent_producer_fields(producer: tuple[int, int, int]) -> None:
    refused(ErrorCode.INVALID_RECORD, batch(records_of(1), 1, producer=producer), match="producer")


def test_idempotent_producer_fields_pass() -> None:
    assert validate_batches(batch(records_of(1), 1, producer=(7, 0, 12)), RULES, NOW)


def test_without_producer_id_epoch_and_sequence_are_ignored_as_in_kafka() -> None:
    """aiokafka's non-idempotent batches carry baseSequence 0 with producerId -1."""
    assert validate_batches(batch(records_of(1), 1, producer=(-1, -1, 0)), RULES, NOW)
    assert validate_batches(batch(records_of(1), 1, producer=(-1, 0, -1)), RULES, NOW)


def test_timestamps_against_the_topic_configs() -> None:
    rules = batch_rules(
        {"message.timestamp.before.max.ms": "1000", "message.timestamp.after.max.ms": "500"},
        16 * MiB,
    )
    recs = record(0) + record(1, ts_delta=-1001) + record(2, ts_delta=-2000)
    err = refused(ErrorCode.INVALID_TIMESTAMP, batch(recs, 3, max_ts=NOW), rules)
    assert [i for i, _ in err.record_errors] == [1, 2]  # every bad record, as Kafka lists them
    assert err.message.startswith(f"batch 0 at byte 0: record 1: timestamp {NOW - 1001} is out")
    assert err.record_errors[1][1].startswith(f"record 2: timestamp {NOW - 2000} is out of range")
    late = record(0, ts_delta=501)
    refused(ErrorCode.INVALID_TIMESTAMP, batch(late, 1, max_ts=NOW + 501), rules)
    edge = record(0, ts_delta=-1000) + record(1, ts_delta=500)
    assert validate_batches(batch(edge, 2, max_ts=NOW + 500), rules, NOW)


def test_difference_max_ms_applies_both_ways_unless_overridden() -> None:
    rules = batch_rules({"message.timestamp.difference.max.ms": "100"}, 16 * MiB)
    assert (rules.timestamp_before_ms, rules.timestamp_after_ms) == (100, 100)
    rules = batch_rules(
        {"message.timestamp.difference.max.ms": "100", "message.timestamp.after.max.ms": "5"},
        16 * MiB,
    )
    assert (rules.timestamp_before_ms, rules.timestamp_after_ms) == (100, 5)


def test_log_append_time_topic_skips_timestamp_checks() -> None:
    rules = batch_rules(
        {"message.timestamp.type": "LogAppendTime", "message.timestamp.before.max.ms": "0"},
        16 * MiB,
    )
    recs = record(0, ts_delta=-(10**9)) + record(1)
    assert validate_batches(batch(recs, 2, max_ts=0), rules, NOW)


def test_timestamp_overflow_is_invalid_timestamp() -> None:
    recs = record(0, ts_delta=2**62)
    err = refused(ErrorCode.INVALID_TIMESTAMP, batch(recs, 1, base_ts=2**62, max_ts=2**62))
    assert err.record_errors == ((0, "record 0: timestamp overflows"),)


def test_timestamp_errors_are_capped_at_64_records() -> None:
    rules = batch_rules({"message.timestamp.before.max.ms": "0"}, 16 * MiB)
    recs = b"".join(record(i, ts_delta=-1 - i) for i in range(100))
    err = refused(ErrorCode.INVALID_TIMESTAMP, batch(recs, 100, max_ts=NOW - 1), rules)
    assert [i for i, _ in err.record_errors] == list(range(64))


def test_framing_errors_win_over_timestamp_errors() -> None:
    rules = batch_rules({"message.timestamp.before.max.ms": "0"}, 16 * MiB)
    recs = record(0, ts_delta=-5) + record(2)
    err = refused(ErrorCode.INVALID_RECORD, batch(recs, 2), rules)
    assert [i for i, _ in err.record_errors] == [1]


def test_compacted_topic_needs_keys() -> None:
    rules = batch_rules({"cleanup.policy": "compact"}, 16 * MiB)
    err = refused(ErrorCode.INVALID_RECORD, batch(record(0) + record(1, key=None), 2), rules)
    assert err.record_errors[0][0] == 1


def test_sizes() -> None:
    one = batch(records_of(10, value=b"x" * 100), 10)
    rules = batch_rules({"max.message.bytes": str(len(one) - 1)}, 16 * MiB)
    refused(ErrorCode.MESSAGE_TOO_LARGE, one, rules, match="max.message.bytes")
    assert validate_batches(one, batch_rules({"max.message.bytes": str(len(one))}, 16 * MiB), NOW)
    rules = batch_rules({}, 2 * len(one) - 1)
    refused(ErrorCode.RECORD_LIST_TOO_LARGE, one + one, rules, match="one partition")
    rules = batch_rules({"segment.bytes": str(2 * len(one) - 1)}, 16 * MiB)
    refused(ErrorCode.RECORD_LIST_TOO_LARGE, one + one, rules)


def test_second_batch_lie_names_its_batch() -> None:
    good = batch(records_of(2), 2)
    err = refused(ErrorCode.INVALID_RECORD, good + batch(record(1), 1))
    assert err.message.startswith(f"batch 1 at byte {len(good)}: record 0: offset delta 1")


# ------------------------------------------------------------------------------------------
# compressed batches


@pytest.mark.parametrize("codec", list(CODECS.values()), ids=list(CODECS))
def test_lies_inside_compressed_batches(codec: int) -> None:
    bad = record(0) + record(0)
    err = refused(ErrorCode.INVALID_RECORD, batch(compress(codec, bad), 2, attributes=codec))
    assert err.record_errors[0][0] == 1
    trailing = compress(codec, records_of(2) + b"\x00")
    refused(ErrorCode.INVALID_RECORD, batch(trailing, 2, attributes=codec), match="left after")


@pytest.mark.parametrize("codec", list(CODECS.values()), ids=list(CODECS))
def test_truncated_and_garbage_compressed_data_is_corrupt(codec: int) -> None:
    whole = compress(codec, records_of(200, value=bytes(range(256))))
    for cut in (len(whole) // 2, len(whole) - 1):
        refused(ErrorCode.CORRUPT_MESSAGE, batch(whole[:cut], 200, attributes=codec))
    refused(ErrorCode.CORRUPT_MESSAGE, batch(b"\x01garbage\xff" * 5, 1, attributes=codec))


def _gzip_bomb() -> bytes:
    # 64 members of 16 MiB of zeros each: 1 GiB once inflated (members are followed)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    member = c.compress(bytes(16 * MiB)) + c.flush()
    return member * (GiB_OF_ZEROS // (16 * MiB))


def _gzip_one_member_bomb() -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = bytes(MiB)
    return b"".join([c.compress(chunk) for _ in range(128)] + [c.flush()])


def _lz4_bomb() -> bytes:
    c = lz4.frame.LZ4FrameCompressor()
    chunk = bytes(MiB)
    return c.begin() + b"".join(c.compress(chunk) for _ in range(GiB_OF_ZEROS // MiB)) + c.flush()


def _zstd_bomb() -> bytes:
    c = zstandard.ZstdCompressor().compressobj()  # streamed: no content size in the frame
    chunk = bytes(MiB)
    return b"".join([c.compress(chunk) for _ in range(GiB_OF_ZEROS // MiB)] + [c.flush()])


def _zstd_sized_bomb() -> bytes:
    return zstandard.ZstdCompressor().compress(bytes(64 * MiB))  # states its content size


def _snappy_preamble_bomb() -> bytes:
    # a raw snappy block whose preamble claims 1 GiB
    return bytes((0x80, 0x80, 0x80, 0x80, 0x04)) + b"\x00" * 64


def _snappy_raw_bomb() -> bytes:
    return bytes(cramjam.snappy.compress_raw(bytes(64 * MiB)))


def _xerial_bomb() -> bytes:
    block = bytes(cramjam.snappy.compress_raw(bytes(MiB)))
    framed = struct.pack(">i", len(block)) + block
    return b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1) + framed * 64


BOMBS = {
    "gzip-1GiB-members": (1, _gzip_bomb),
    "gzip-one-member": (1, _gzip_one_member_bomb),
    "lz4-1GiB": (3, _lz4_bomb),
    "zstd-1GiB-streamed": (4, _zstd_bomb),
    "zstd-sized": (4, _zstd_sized_bomb),
    "snappy-raw-preamble-1GiB": (2, _snappy_preamble_bomb),
    "snappy-raw": (2, _snappy_raw_bomb),
    "snappy-xerial": (2, _xerial_bomb),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_compression_bombs_are_refused_within_the_bound(name: str) -> None:
    codec, build = BOMBS[name]
    data = batch(build(), 1, attributes=codec)
    assert len(data) < 8 * MiB  # the test itself stays small
    limit = 4 * MiB
    rules = BatchRules(
        max_message_bytes=16 * MiB, max_records_bytes=16 * MiB, max_inflated_bytes=limit
    )
    tracemalloc.start()
    try:
        started = time.monotonic()
        refused(ErrorCode.MESSAGE_TOO_LARGE, data, rules, match="inflate past 4194304 bytes")
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * limit + len(data) + MiB, f"peak {peak} bytes"
    assert elapsed < 5


def test_decode_records_bounds_a_stored_bomb() -> None:
    data = batch(_lz4_bomb(), 1, attributes=3)
    with pytest.raises(InvalidBatchError, match="inflate past") as info:
        decode_records(data, max_inflated=8 * MiB)
    assert info.value.code is ErrorCode.MESSAGE_TOO_LARGE
    with pytest.raises(InvalidBatchError):
        decode_records(data)  # the default bound (64 MiB) holds too


# ------------------------------------------------------------------------------------------
# properties


def _valid_batches() -> list[bytes]:
    out = [kafka_python_batch(codec, n=8, value_size=20) for codec in range(5)]
    out.append(
        encode_batch(
            [b"k", None], [None, b"v" * 300], [[("a", b"b")], [("c", None)]], [NOW, NOW - 5]
        )
    )
    return out


VALID = _valid_batches()


def _recrc(data: bytearray) -> bytes:
    """Recompute the CRC so mutations reach the record walk."""
    if len(data) >= 61:
        struct.pack_into(">I", data, 17, crc32c.crc32c(bytes(data[21:])))
    return bytes(data)


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(VALID) - 1),
    edits=st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from("sdi")),
        min_size=1,
        max_size=6,
    ),
    fix_crc=st.booleans(),
)
def test_mutated_batches_only_raise_invalid_batch_error(
    which: int, edits: list[tuple[int, int, str]], fix_crc: bool
) -> None:
    data = bytearray(VALID[which])
    for at, byte, kind in edits:
        at %= len(data) + 1
        if kind == "s" and at < len(data):
            data[at] = byte
        elif kind == "d" and at < len(data):
            del data[at]
        else:
            data.insert(at, byte)
    mutated = _recrc(data) if fix_crc else bytes(data)
    started = time.monotonic()
    try:
        validate_batches(mutated, RULES, NOW)
    except InvalidBatchError as exc:
        assert exc.code in {
            ErrorCode.CORRUPT_MESSAGE,
            ErrorCode.INVALID_RECORD,
            ErrorCode.INVALID_TIMESTAMP,
            ErrorCode.MESSAGE_TOO_LARGE,
            ErrorCode.UNSUPPORTED_FOR_MESSAGE_FORMAT,
        }
        assert exc.message
    assert time.monotonic() - started < 1


@settings(max_examples=150, deadline=2000)
@given(
    st.lists(
        st.tuples(
            st.none() | st.binary(max_size=40),
            st.none() | st.binary(max_size=400),
            st.lists(st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=8)), max_size=3),
            st.integers(NOW - 10**6, NOW + 10**6),
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([0, 1, 2, 3, 4]),
)
def test_valid_batches_always_pass(records: list, codec: int) -> None:
    keys, values, headers, timestamps = (list(c) for c in zip(*records, strict=True))
    ours = encode_batch(keys, values, headers, timestamps)
    (info,) = validate_batches(ours, RULES, NOW)
    assert info.record_count == len(records)
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    for i, (k, v, h, ts) in enumerate(records):
        builder.append(i, timestamp=ts, key=k, value=v, headers=h)
    (info,) = validate_batches(bytes(builder.build()), RULES, NOW)
    assert info.max_timestamp == max(timestamps)
