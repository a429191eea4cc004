"""Fuzz target: Kafka RecordBatch v2 scanning, validation (C record walk) and decoding.

    python tests/fuzz/fuzz_batch.py -max_total_time=60

Input: one flags byte, then the batch bytes. Flags bit 0 repairs each batch's length, magic and
CRC-32C after mutation, so the fuzzer reaches the record walk and the decompressors instead of
failing the CRC; bit 1 validates as a LogAppendTime topic, bit 2 as a compacted topic (keys
required), bit 3 with a timestamp window around a fixed clock.

What must hold (anything else is a crash):
  - ``scan_batches``, ``validate_batches`` and ``decode_records`` raise only
    ``InvalidBatchError``, and never use more than the fuzzer's RSS limit (libFuzzer's
    ``-rss_limit_mb``, 2 GiB by default: inflation is bounded by ``max_inflated_bytes``);
  - differential: a buffer ``validate_batches`` accepts decodes with ``decode_records``, batch
    by batch, into exactly ``record_count`` records with offset deltas 0..n-1 and (CreateTime)
    the header's maxTimestamp, and keys when the topic requires them; its infos are
    ``scan_batches``' infos.
"""

from __future__ import annotations

import gzip
import struct
import sys

import harness

with harness.instrumented():
    import crc32c

    from streamhouse.recordbatch import (
        BATCH_HEADER_SIZE,
        BatchRules,
        InvalidBatchError,
        decode_records,
        encode_batch,
        scan_batches,
        validate_batches,
    )

NOW_MS = 1_700_000_000_000
DAY_MS = 86_400_000
LIMIT = 1 << 20
RULES = {
    (log_append, keys, window): BatchRules(
        max_message_bytes=LIMIT,
        max_records_bytes=4 * LIMIT,
        max_inflated_bytes=LIMIT,
        log_append_time=log_append,
        key_required=keys,
        **({"timestamp_before_ms": DAY_MS, "timestamp_after_ms": DAY_MS} if window else {}),
    )
    for log_append in (False, True)
    for keys in (False, True)
    for window in (False, True)
}


def repair(buf: bytearray) -> None:
    """Make every batch's length, magic and CRC consistent with the bytes that are there."""
    pos = 0
    while pos + BATCH_HEADER_SIZE <= len(buf):
        (length,) = struct.unpack_from(">i", buf, pos + 8)
        if length < BATCH_HEADER_SIZE - 12 or pos + 12 + length > len(buf):
            length = len(buf) - pos - 12
            struct.pack_into(">i", buf, pos + 8, length)
        buf[pos + 16] = 2
        end = pos + 12 + length
        struct.pack_into(">I", buf, pos + 17, crc32c.crc32c(bytes(buf[pos + 21 : end])))
        pos = end


def check(data: bytes) -> None:
    if not data:
        return
    flags, buf = data[0], bytearray(data[1:])
    if flags & 1:
        repair(buf)
    batches = bytes(buf)
    rules = RULES[(bool(flags & 2), bool(flags & 4), bool(flags & 8))]
    try:
        scanned = scan_batches(batches)
    except InvalidBatchError:
        scanned = None
    try:
        infos = validate_batches(batches, rules, NOW_MS)
    except InvalidBatchError:
        infos = None
    try:
        decode_records(batches, max_inflated=LIMIT)
    except InvalidBatchError:
        pass
    if infos is None:
        return
    assert infos == scanned, "validate_batches and scan_batches disagree on the batches"
    for info in infos:
        batch = batches[info.position : info.position + info.length]
        records = decode_records(batch, max_inflated=LIMIT)  # must not raise: it validated
        assert len(records) == info.record_count, (len(records), info.record_count)
        assert [r[0] for r in records] == list(range(info.record_count)), "offset deltas"
        if not rules.log_append_time:
            assert max(r[1] for r in records) == info.max_timestamp, "maxTimestamp"
        if rules.key_required:
            assert all(r[2] is not None for r in records), "a record without a key validated"


def with_codec(batch: bytes, codec: int) -> bytes:
    """`batch` (uncompressed, one batch) with its records compressed by `codec`."""
    import cramjam
    import lz4.frame

    records = batch[BATCH_HEADER_SIZE:]
    packed = {
        1: gzip.compress,
        2: lambda b: bytes(cramjam.snappy.compress_raw(b)),
        3: lz4.frame.compress,
        4: lambda b: bytes(cramjam.zstd.compress(b)),
    }[codec](records)
    out = bytearray(batch[:BATCH_HEADER_SIZE] + packed)
    (attributes,) = struct.unpack_from(">h", out, 21)
    struct.pack_into(">h", out, 21, attributes | codec)
    struct.pack_into(">i", out, 8, len(out) - 12)
    struct.pack_into(">I", out, 17, crc32c.crc32c(bytes(out[21:])))
    return bytes(out)


def seeds() -> list[bytes]:
    ts = NOW_MS
    plain = [
        encode_batch([b"k"], [b"v"], [[]], [ts]),
        encode_batch(
            [None, b"k2"], [b"v" * 30, None], [[("h", b"x")], [("a", None)]], [ts, ts + 5]
        ),
        encode_batch([b"k"] * 5, [bytes(range(40))] * 5, [[]] * 5, [ts + i for i in range(5)]),
        encode_batch(
            [b"id"], [b"value"], [[]], [ts], producer_id=7, producer_epoch=0, base_sequence=3
        ),
    ]
    out = []
    for batch in plain:
        out.append(b"\x00" + batch)
        out.append(b"\x01" + batch)
        out.append(b"\x04" + batch)
    out.append(b"\x00" + plain[0] + plain[1])
    for codec in (1, 2, 3, 4):
        out.append(b"\x01" + with_codec(plain[2], codec))
    return out


if __name__ == "__main__":
    sys.setrecursionlimit(10_000)
    harness.main(check, seeds())
