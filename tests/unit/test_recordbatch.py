"""Kafka RecordBatch v2 codec: cross-checked against kafka-python and the Java client's values."""

from __future__ import annotations

import os
import pickle
import random
import struct

import cramjam
import crc32c
import pytest
import zstandard
from kafka.partitioner.default import murmur2 as kafka_python_murmur2
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from streamhouse.errors import ErrorCode
from streamhouse.recordbatch import (
    BATCH_HEADER_SIZE,
    BatchInfo,
    BatchRules,
    InvalidBatchError,
    decode_records,
    default_partition,
    deflate,
    encode_batch,
    encode_block,
    inflate,
    murmur2,
    patch_base_offset,
    rebuild_batch,
    scan_batches,
    validate_batches,
    walk_block,
)

# ------------------------------------------------------------------------------------------
# helpers written independently of the module under test


def zigzag(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        if z < 0x80:
            out.append(z)
            return bytes(out)
        out.append((z & 0x7F) | 0x80)
        z >>= 7


def raw_record(
    offset_delta: int,
    ts_delta: int,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[bytes, bytes | None]] = (),
    *,
    length_adjust: int = 0,
) -> bytes:
    body = bytearray(b"\x00")
    body += zigzag(ts_delta) + zigzag(offset_delta)
    body += zigzag(-1) if key is None else zigzag(len(key)) + key
    body += zigzag(-1) if value is None else zigzag(len(value)) + value
    body += zigzag(len(headers))
    for hk, hv in headers:
        body += zigzag(len(hk)) + hk
        body += zigzag(-1) if hv is None else zigzag(len(hv)) + hv
    return zigzag(len(body) + length_adjust) + bytes(body)


def forge(
    records: bytes,
    *,
    count: int,
    last_offset_delta: int | None = None,
    attributes: int = 0,
    base_ts: int = 1_000,
    max_ts: int = 1_000,
    magic: int = 2,
    base_offset: int = 0,
) -> bytes:
    """A batch with the given header fields and a correct CRC."""
    lod = count - 1 if last_offset_delta is None else last_offset_delta
    body = struct.pack(">hiqqqhii", attributes, lod, base_ts, max_ts, -1, -1, -1, count) + records
    return struct.pack(">qiibI", base_offset, len(body) + 9, -1, magic, crc32c.crc32c(body)) + body


def with_records(batch: bytes, records: bytes, attributes: int) -> bytes:
    """``batch``'s header with other record bytes and attributes, CRC recomputed."""
    (lod, base_ts, max_ts, pid, pepoch, bseq, count) = struct.unpack_from(">iqqqhii", batch, 23)
    body = (
        struct.pack(">hiqqqhii", attributes, lod, base_ts, max_ts, pid, pepoch, bseq, count)
        + records
    )
    return batch[:8] + struct.pack(">iibI", len(body) + 9, -1, 2, crc32c.crc32c(body)) + body


def kafka_python_batch(
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int]],
    compression: int = 0,
) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    for i, (k, v, h, ts) in enumerate(records):
        assert builder.append(i, timestamp=ts, key=k, value=v, headers=h) is not None
    return bytes(builder.build())


def kafka_python_read(batch: bytes) -> list[tuple]:
    parsed = DefaultRecordBatch(bytearray(batch))
    assert parsed.validate_crc()
    return [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in parsed]


def expect_invalid(code: str, fn, *args, match: str | None = None, **kwargs) -> InvalidBatchError:
    with pytest.raises(InvalidBatchError, match=match) as info:
        fn(*args, **kwargs)
    assert info.value.code.name == code, str(info.value)
    return info.value


SAMPLE = [
    (None, b"value-0", [], 1_700_000_000_000),
    (b"", b"", [], 1_700_000_000_000),
    (b"key-2", None, [("h", b"1"), ("h", b"2"), ("other", None), ("h", b"")], 1_700_000_000_005),
    (b"\x00\xff" * 40, os.urandom(300), [("\u00e9t\u00e9", b"x")], 1_699_999_999_000),
    (None, None, [], 1_700_000_100_000),
]


def encode_sample(records=SAMPLE, **kwargs) -> bytes:
    keys, values, headers, timestamps = (list(col) for col in zip(*records, strict=True))
    return encode_batch(keys, values, headers, timestamps, **kwargs)


# ------------------------------------------------------------------------------------------
# murmur2 / partitioner


def test_murmur2_java_client_vectors():
    # org.apache.kafka.common.utils.UtilsTest.testMurmur2
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, expected in cases.items():
        assert murmur2(key) == expected, key


def test_default_partition_matches_java_partitioner():
    # Java DefaultPartitioner with 1000 partitions (kafka-python's compatibility test)
    cases = {b"": 681, b"a": 524, b"ab": 434, b"abc": 107, b"123456789": 566, b"\x00 ": 742}
    for key, expected in cases.items():
        assert default_partition(key, 1000) == expected, key


def test_murmur2_matches_kafka_python_on_random_keys():
    rng = random.Random(7)
    for _ in range(3000):
        key = rng.randbytes(rng.randrange(0, 70))
        h = murmur2(key)
        assert -(2**31) <= h < 2**31
        assert h & 0xFFFFFFFF == kafka_python_murmur2(key)
        n = rng.randrange(1, 500)
        assert default_partition(key, n) == (kafka_python_murmur2(key) & 0x7FFFFFFF) % n


def test_default_partition_rejects_no_partitions():
    with pytest.raises(ValueError):
        default_partition(b"k", 0)


# ------------------------------------------------------------------------------------------
# encode_batch


def test_header_size_and_error_pickles():
    assert BATCH_HEADER_SIZE == 61
    err = pickle.loads(
        pickle.dumps(InvalidBatchError(ErrorCode.INVALID_RECORD, "record 3: bad", ((3, "bad"),)))
    )
    assert (err.code, str(err), err.record_errors) == (
        ErrorCode.INVALID_RECORD,
        "record 3: bad",
        ((3, "bad"),),
    )


def test_encode_round_trip_nulls_empties_headers_and_timestamps():
    batch = encode_sample()
    expected = [(i, ts, k, v, [(hk, hv) for hk, hv in h]) for i, (k, v, h, ts) in enumerate(SAMPLE)]
    assert decode_records(batch) == expected
    # null and empty stay distinct, header order and duplicates are kept
    recs = decode_records(batch)
    assert recs[0][2] is None and recs[1][2] == b""
    assert recs[2][3] is None and recs[1][3] == b""
    assert recs[2][4] == [("h", b"1"), ("h", b"2"), ("other", None), ("h", b"")]


def test_encode_header_fields():
    batch = encode_sample(producer_id=42, producer_epoch=3, base_sequence=1000)
    (info,) = scan_batches(batch)
    assert info == BatchInfo(
        position=0,
        length=len(batch),
        record_count=len(SAMPLE),
        last_offset_delta=len(SAMPLE) - 1,
        base_timestamp=SAMPLE[0][3],
        max_timestamp=max(r[3] for r in SAMPLE),
        producer_id=42,
        producer_epoch=3,
        base_sequence=1000,
        attributes=0,
    )
    base_offset, batch_length, epoch, magic = struct.unpack_from(">qiib", batch, 0)
    assert (base_offset, batch_length, magic) == (0, len(batch) - 12, 2)
    assert epoch in (-1, 0)


def test_encode_is_read_identically_by_kafka_python():
    batch = encode_sample(producer_id=7, producer_epoch=1, base_sequence=5)
    ours = decode_records(batch)
    theirs = kafka_python_read(batch)
    assert theirs == [(o, ts, k, v, h) for o, ts, k, v, h in ours]
    parsed = DefaultRecordBatch(bytearray(batch))
    assert (parsed.producer_id, parsed.producer_epoch, parsed.base_sequence) == (7, 1, 5)
    assert parsed.max_timestamp == max(r[3] for r in SAMPLE)


def test_encode_is_byte_identical_to_kafka_python_builder():
    rng = random.Random(3)
    records = []
    ts = 1_700_000_000_000
    for i in range(300):
        key = None if i % 3 == 0 else rng.randbytes(rng.randrange(0, 40))
        value = None if i % 17 == 0 else rng.randbytes(rng.randrange(0, 200))
        headers = [(f"k{j}", rng.randbytes(5)) for j in range(i % 3)]
        ts += rng.randrange(-50, 5000)
        records.append((key, value, headers, ts))
    ours = encode_sample(records)
    theirs = kafka_python_batch(records)
    # kafka-python writes partitionLeaderEpoch 0; it is outside the CRC
    assert ours[:12] == theirs[:12]
    assert ours[16:] == theirs[16:]


def test_encode_large_values_deltas_and_many_records():
    # varints beyond the precomputed table: big values, big/negative timestamp deltas,
    # more than 16384 records (offset deltas), long header values
    n = 20_000
    values = [b"v%d" % i for i in range(n)]
    values[5] = os.urandom(100_000)
    keys = [None] * n
    keys[7] = os.urandom(20_000)
    headers = [[] for _ in range(n)]
    headers[9] = [("big", os.urandom(70_000)), ("null", None)]
    timestamps = [1_000_000 + (i % 5) * 40_000 for i in range(n)]
    timestamps[11] = -5
    batch = encode_batch(keys, values, headers, timestamps)
    (info,) = scan_batches(batch)
    assert info.record_count == n and info.max_timestamp == 1_160_000
    decoded = decode_records(batch)
    assert [r[0] for r in decoded] == list(range(n))
    assert [r[1] for r in decoded] == timestamps
    assert [r[2] for r in decoded] == keys
    assert [r[3] for r in decoded] == values
    assert [r[4] for r in decoded] == headers
    assert kafka_python_read(batch)[9][4] == headers[9]


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError):
        encode_batch([], [], [], [])
    with pytest.raises(ValueError):
        encode_batch([None], [b"a", b"b"], [[], []], [1, 2])


# ------------------------------------------------------------------------------------------
# scan_batches


def test_scan_concatenated_batches_and_buffer_types():
    batches = [encode_sample(SAMPLE[: i + 1]) for i in range(len(SAMPLE))]
    buf = b"".join(batches)
    for view in (buf, bytearray(buf), memoryview(buf)):
        infos = scan_batches(view)
        assert [i.length for i in infos] == [len(b) for b in batches]
        assert [i.position for i in infos] == [sum(map(len, batches[:k])) for k in range(5)]
        assert [i.record_count for i in infos] == [1, 2, 3, 4, 5]


def test_scan_accepts_kafka_python_batches():
    records = [(b"k", b"v" * 50, [("a", b"b")], 1000 + i) for i in range(10)]
    for codec in (0, 1, 2, 3, 4):
        batch = kafka_python_batch(records, codec)
        (info,) = scan_batches(batch)
        assert info.attributes & 7 == codec
        assert info.record_count == 10 and info.max_timestamp == 1009


def test_scan_detects_every_flipped_bit_under_the_crc():
    batch = encode_sample(SAMPLE[:3])
    for pos in range(21, len(batch)):
        for bit in (0, 3, 7):
            bad = bytearray(batch)
            bad[pos] ^= 1 << bit
            err = expect_invalid("CORRUPT_MESSAGE", scan_batches, bad, match="CRC-32C")
            assert "batch 0 at byte 0" in str(err)
    # the CRC field itself
    bad = bytearray(batch)
    bad[18] ^= 0x10
    expect_invalid("CORRUPT_MESSAGE", scan_batches, bad, match="CRC-32C mismatch")


def test_scan_without_crc_check_accepts_payload_damage():
    bad = bytearray(encode_sample())
    bad[-3] ^= 0xFF
    assert scan_batches(bad, verify_crc=False)[0].record_count == len(SAMPLE)


def test_scan_ignores_fields_outside_the_crc():
    # base offset and partition leader epoch are rewritten by brokers, outside the CRC
    bad = bytearray(encode_sample())
    bad[0:8] = b"\x12" * 8
    bad[12:16] = b"\x00\x00\x00\x07"
    assert scan_batches(bad)[0].record_count == len(SAMPLE)


def test_scan_truncated_anywhere():
    one = encode_sample(SAMPLE[:2])
    buf = one + encode_sample()
    for cut in range(1, len(buf)):
        if cut == len(one):
            assert len(scan_batches(buf[:cut])) == 1
            continue
        err = expect_invalid("CORRUPT_MESSAGE", scan_batches, buf[:cut], match="truncated")
        assert f"at byte {0 if cut < len(one) else len(one)}" in str(err)
    expect_invalid("CORRUPT_MESSAGE", scan_batches, b"", match="empty")


def test_scan_bad_magic():
    bad = bytearray(encode_sample())
    bad[16] = 1
    expect_invalid("UNSUPPORTED_FOR_MESSAGE_FORMAT", scan_batches, bad, match="magic 1")
    second = encode_sample()
    buf = bytearray(encode_sample() + second)
    buf[len(second) + 16] = 3
    err = expect_invalid("UNSUPPORTED_FOR_MESSAGE_FORMAT", scan_batches, buf)
    assert f"batch 1 at byte {len(second)}" in str(err)


def test_scan_bad_batch_length():
    batch = encode_sample()
    for length in (-1, 0, 48):
        bad = bytearray(batch)
        struct.pack_into(">i", bad, 8, length)
        expect_invalid("CORRUPT_MESSAGE", scan_batches, bad, match="batchLength")
    bad = bytearray(batch)
    struct.pack_into(">i", bad, 8, len(batch) - 12 + 1)  # claims one more byte than there is
    expect_invalid("CORRUPT_MESSAGE", scan_batches, bad, match="truncated")
    bad = bytearray(batch)
    struct.pack_into(">i", bad, 8, len(batch) - 12 - 1)  # leaves a 1-byte tail
    expect_invalid("CORRUPT_MESSAGE", scan_batches, bad)


def test_scan_bad_counts():
    recs = raw_record(0, 0, None, b"a") + raw_record(1, 0, None, b"b")
    assert scan_batches(forge(recs, count=2))[0].record_count == 2
    expect_invalid("INVALID_RECORD", scan_batches, forge(b"", count=0), match="recordsCount 0")
    expect_invalid("INVALID_RECORD", scan_batches, forge(recs, count=-3), match="recordsCount -3")
    expect_invalid(
        "INVALID_RECORD",
        scan_batches,
        forge(recs, count=2, last_offset_delta=5),
        match="does not match lastOffsetDelta 5",
    )
    expect_invalid("INVALID_RECORD", scan_batches, forge(recs, count=1000), match="cannot fit")
    expect_invalid(
        "INVALID_RECORD", scan_batches, forge(recs, count=2, attributes=6), match="codec 6"
    )


def test_scan_compacted_accepts_fewer_records_than_the_offset_span():
    # a compacted batch keeps lastOffsetDelta 5 and the deltas of its two surviving records
    recs = raw_record(1, 0, b"a", b"x") + raw_record(5, 0, b"b", b"y")
    batch = forge(recs, count=2, last_offset_delta=5)
    expect_invalid("INVALID_RECORD", scan_batches, batch, match="lastOffsetDelta 5")
    (info,) = scan_batches(batch, compacted=True)
    assert (info.record_count, info.last_offset_delta) == (2, 5)
    # more records than offsets, or none at all, is still refused
    expect_invalid(
        "INVALID_RECORD",
        scan_batches,
        forge(recs, count=2, last_offset_delta=0),
        compacted=True,
        match="or fewer in a compacted block",
    )
    expect_invalid(
        "INVALID_RECORD", scan_batches, forge(b"", count=0), compacted=True, match="recordsCount 0"
    )


# ------------------------------------------------------------------------------------------
# blocks: the gap rule


def test_walk_block_of_produced_batches_takes_consecutive_offsets_and_skips_duplicates():
    a, b, c = encode_sample(SAMPLE[:2]), encode_sample(), encode_sample(SAMPLE[:1])
    block = a + b + c
    walked = walk_block(block, 100)
    assert [(w.first_offset, w.last_offset) for w in walked] == [(100, 101), (102, 106), (107, 107)]
    assert [w.info.position for w in walked] == [0, len(a), len(a) + len(b)]
    # a skipped (duplicate) batch takes no offsets
    walked = walk_block(block, 100, (1,))
    assert [(w.first_offset, w.last_offset) for w in walked] == [(100, 101), (102, 102)]
    assert walked[1].info.position == len(a) + len(b)
    assert walk_block(memoryview(block), 7, (0, 1, 2)) == []


def test_encode_block_round_trips_gaps_and_keeps_crcs():
    recs = raw_record(1, 0, b"a", b"x") + raw_record(5, 0, b"b", b"y")
    compacted = forge(recs, count=2, last_offset_delta=5)  # offsets first .. first + 5
    whole = encode_sample()  # 5 records
    pairs = [(compacted, 1000), (whole, 1006), (compacted, 1020), (memoryview(whole), 1026)]
    block = encode_block(pairs, 990)
    walked = walk_block(block, 990, verify_crc=True)
    assert [w.first_offset for w in walked] == [1000, 1006, 1020, 1026]
    assert [w.last_offset for w in walked] == [1005, 1010, 1025, 1030]
    assert [w.info.record_count for w in walked] == [2, 5, 2, 5]
    # stored baseOffset = gap to the previous batch's end
    stored = [struct.unpack_from(">q", block, w.info.position)[0] for w in walked]
    assert stored == [10, 0, 9, 0]
    # the batches are otherwise byte for byte what was given (baseOffset is outside the CRC)
    for w, (batch, _) in zip(walked, pairs, strict=True):
        got = block[w.info.position : w.info.position + w.info.length]
        assert got[8:] == bytes(batch)[8:]
    # records keep their deltas: the reader's patched view gives the absolute offsets
    view = bytearray(
        block[walked[2].info.position : walked[2].info.position + walked[2].info.length]
    )
    patch_base_offset(view, 0, walked[2].first_offset)
    assert [r.offset for r in DefaultRecordBatch(view)] == [1021, 1025]
    # end_offset bounds the walk
    assert len(walk_block(block, 990, end_offset=1031)) == 4
    expect_invalid("CORRUPT_MESSAGE", walk_block, block, 990, end_offset=1030, match="past")


def test_encode_block_refuses_out_of_order_or_empty():
    whole = encode_sample()
    with pytest.raises(ValueError, match="at least one batch"):
        encode_block([], 0)
    with pytest.raises(ValueError, match="before offset 5"):
        encode_block([(whole, 0), (whole, 3)], 0)
    with pytest.raises(ValueError, match="before offset 10"):
        encode_block([(whole, 9)], 10)


def test_walk_block_refuses_negative_gaps():
    batch = bytearray(encode_sample())
    patch_base_offset(batch, 0, -1)
    expect_invalid("CORRUPT_MESSAGE", walk_block, bytes(batch), 0, match="negative")


def test_validate_refuses_produced_batches_with_a_base_offset():
    rules = BatchRules(
        max_message_bytes=1 << 20, max_records_bytes=1 << 20, max_inflated_bytes=1 << 20
    )
    good = encode_sample(SAMPLE[:1])
    assert len(validate_batches(good, rules, SAMPLE[0][3])) == 1
    bad = bytearray(good)
    patch_base_offset(bad, 0, 42)
    expect_invalid(
        "INVALID_RECORD", validate_batches, good + bytes(bad), rules, SAMPLE[0][3], match="batch 1"
    )


@pytest.mark.parametrize("codec", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])
def test_deflate_inverts_inflate(codec):
    data = os.urandom(1000) + b"x" * 100_000
    assert inflate(codec, deflate(codec, data), len(data)) == data


def test_deflate_snappy_keeps_the_framing_it_is_like():
    data = b"records " * 20_000
    raw = deflate(2, data)
    assert raw[:8] != b"\x82SNAPPY\x00"
    xerial_like = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
    framed = deflate(2, data, like=xerial_like)
    assert framed[:16] == xerial_like
    assert inflate(2, framed, len(data)) == data == inflate(2, raw, len(data))


def test_rebuild_batch_keeps_the_header_and_recomputes_the_crc():
    original = kafka_python_batch([(b"k%d" % i, b"v%d" % i, [], 1_000 + i) for i in range(3)], 3)
    patch = bytearray(original)
    patch_base_offset(patch, 0, 7)
    one = decode_records(original)[2]
    record = b"".join(
        [
            zigzag(
                len(
                    body := b"\x00"
                    + zigzag(2)
                    + zigzag(2)
                    + zigzag(2)
                    + b"k2"
                    + zigzag(2)
                    + b"v2"
                    + zigzag(0)
                )
            ),
            body,
        ]
    )
    rebuilt = rebuild_batch(
        bytes(patch), record, 1, max_timestamp=1_002, base_timestamp=1_000, attributes=3
    )
    (info,) = scan_batches(rebuilt, compacted=True)
    assert (info.record_count, info.last_offset_delta, info.attributes) == (1, 2, 3)
    assert struct.unpack_from(">q", rebuilt)[0] == 7
    assert decode_records(rebuilt) == [one]
    assert [(r.offset, r.key) for r in DefaultRecordBatch(bytearray(rebuilt))] == [(9, b"k2")]


# ------------------------------------------------------------------------------------------
# patch_base_offset


def test_patch_base_offset_keeps_crc_valid():
    first = encode_sample(SAMPLE[:2])
    second = encode_sample()
    buf = bytearray(first + second)
    infos = scan_batches(buf)
    patch_base_offset(buf, infos[0].position, 1000)
    patch_base_offset(memoryview(buf), infos[1].position, 2**40)
    assert scan_batches(buf) == infos
    assert DefaultRecordBatch(buf[: len(first)]).base_offset == 1000
    parsed = DefaultRecordBatch(buf[len(first) :])
    assert parsed.validate_crc()
    assert [r.offset for r in parsed] == [2**40 + i for i in range(len(SAMPLE))]


# ------------------------------------------------------------------------------------------
# decode_records


@pytest.mark.parametrize("codec", [0, 1, 2, 3, 4], ids=["none", "gzip", "snappy", "lz4", "zstd"])
def test_decode_kafka_python_batches(codec):
    rng = random.Random(codec)
    records = []
    for i in range(500):
        key = None if i % 4 == 0 else b"key-%d" % (i % 7)
        value = None if i % 50 == 1 else (b"payload %d " % i) * rng.randrange(0, 20)
        headers = [("trace", b"t%d" % i), ("trace", None)] if i % 5 == 0 else []
        records.append((key, value, headers, 1_700_000_000_000 + i * 3))
    batch = kafka_python_batch(records, codec)
    assert struct.unpack_from(">h", batch, 21)[0] & 7 == codec
    decoded = decode_records(batch)
    assert decoded == [(i, ts, k, v, h) for i, (k, v, h, ts) in enumerate(records)]
    assert decoded == kafka_python_read(batch)


def test_decode_raw_snappy_and_xerial_snappy():
    # librdkafka sends raw snappy, the Java client the xerial framing; accept both
    batch = encode_sample()
    records = batch[BATCH_HEADER_SIZE:]
    raw = with_records(batch, bytes(cramjam.snappy.compress_raw(records)), 2)
    assert decode_records(raw) == decode_records(batch)
    header = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
    half = len(records) // 2
    blocks = b"".join(
        struct.pack(">i", len(c)) + c
        for c in (bytes(cramjam.snappy.compress_raw(p)) for p in (records[:half], records[half:]))
    )
    xerial = with_records(batch, header + blocks, 2)
    assert decode_records(xerial) == decode_records(batch)


def test_decode_log_append_time_uses_max_timestamp():
    batch = encode_sample()
    log_append = with_records(batch, batch[BATCH_HEADER_SIZE:], 0x08)
    max_ts = max(r[3] for r in SAMPLE)
    assert [r[1] for r in decode_records(log_append)] == [max_ts] * len(SAMPLE)
    assert [r[1] for r in kafka_python_read(log_append)] == [max_ts] * len(SAMPLE)


def test_decode_accepts_views_and_patched_offsets():
    batch = bytearray(encode_sample())
    patch_base_offset(batch, 0, 99)
    assert decode_records(memoryview(batch)) == decode_records(bytes(batch))


def test_decode_corruption():
    batch = encode_sample()
    bad = bytearray(batch)
    bad[-1] ^= 1
    expect_invalid("CORRUPT_MESSAGE", decode_records, bad, match="CRC-32C")
    expect_invalid("CORRUPT_MESSAGE", decode_records, batch[:-1], match="batchLength")
    expect_invalid("CORRUPT_MESSAGE", decode_records, batch + batch, match="batchLength")
    expect_invalid("CORRUPT_MESSAGE", decode_records, batch[:60], match="shorter")
    bad = bytearray(batch)
    bad[16] = 0
    expect_invalid("UNSUPPORTED_FOR_MESSAGE_FORMAT", decode_records, bad)
    # damaged compressed data
    lz4_batch = kafka_python_batch([(None, b"x" * 500, [], 5)], 3)
    body = bytearray(lz4_batch[BATCH_HEADER_SIZE:])
    body[len(body) // 2 :] = b"\xff" * (len(body) - len(body) // 2)
    bad = with_records(lz4_batch, bytes(body), 3)
    expect_invalid("CORRUPT_MESSAGE", decode_records, bad, match="decompress")


def test_decode_malformed_records():
    ok = raw_record(0, 0, b"k", b"v", [(b"h", b"x")])
    assert decode_records(forge(ok, count=1)) == [(0, 1000, b"k", b"v", [("h", b"x")])]
    cases = [
        (forge(raw_record(0, 0, b"k", b"v", length_adjust=1), count=1), "record 0: length 9"),
        (
            forge(raw_record(0, 0, b"k", b"v", length_adjust=-1) + b"\x00", count=1),
            "record 0: fields take 8 bytes but its length says 7",
        ),
        (forge(ok, count=2), "record 1: batch ends after 1 of 2 records"),
        (forge(ok + ok, count=1), "13 bytes left after the 1 records"),
        (forge(ok + b"\x00\x00", count=1), "2 bytes left"),
        (forge(zigzag(6) + b"\x00\x00\x00" + zigzag(-2) + b"\x01\x00", count=1), "key length -2"),
        (
            forge(zigzag(6) + b"\x00\x00\x00\x01" + zigzag(50) + b"\x00", count=1),
            "record 0: value of 50 bytes runs past the record",
        ),
        (
            forge(raw_record(0, 0, None, None, [(b"\xff\xfe", None)]), count=1),
            "header key is not UTF-8",
        ),
        (forge(zigzag(6) + b"\x00\x00\x00\x01\x01" + zigzag(1000), count=1), "header count 1000"),
        (forge(ok + b"\xff" * 12, count=2), "record 1: varint at byte 13 is longer than 5 bytes"),
        (  # the header value length is missing at the very end of the data
            forge(ok + zigzag(8) + b"\x00\x00\x00\x01\x01\x02\x02a", count=2),
            "record 1: truncated",
        ),
    ]
    for batch, message in cases:
        expect_invalid("INVALID_RECORD", decode_records, batch, match=message)


def test_decode_zstd_frame_without_content_size():
    # the Java client streams zstd, so its frames do not declare their decompressed size
    batch = encode_sample()
    compressor = zstandard.ZstdCompressor().compressobj()
    frame = compressor.compress(batch[BATCH_HEADER_SIZE:]) + compressor.flush()
    assert zstandard.get_frame_parameters(frame).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert decode_records(with_records(batch, frame, 4)) == decode_records(batch)


def test_decode_random_garbage_never_escapes_as_other_errors():
    rng = random.Random(11)
    good = raw_record(0, 0, b"key", b"value", [(b"h", b"v")])
    for _ in range(2000):
        recs = bytearray(good * 2)
        for _ in range(rng.randrange(1, 4)):
            recs[rng.randrange(len(recs))] = rng.randrange(256)
        batch = forge(bytes(recs), count=2)
        try:
            decode_records(batch)
        except InvalidBatchError as exc:
            assert exc.code is ErrorCode.INVALID_RECORD
