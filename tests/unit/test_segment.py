"""Segment object format: round trips, codec choice, and detection of every kind of damage."""

from __future__ import annotations

import os
import random
import struct

import pytest
import xxhash

from streamhouse.recordbatch import decode_records, encode_batch, scan_batches
from streamhouse.segment import (
    BLOCK_HEADER_SIZE,
    FOOTER_SIZE,
    HEADER_SIZE,
    INDEX_ENTRY_SIZE,
    SEGMENT_VERSION,
    BlockEntry,
    SegmentCorruptError,
    SegmentWriter,
    decode_block,
    parse_footer,
    parse_index,
    read_index,
)


def compressible(rng: random.Random, n: int) -> bytes:
    words = [b"order", b"customer", b"amount", b"status", b"shipped", b"pending", b"{", b"}"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b'":"' + str(rng.randrange(1000)).encode() + b'",'
    return bytes(out[:n])


def block_of(obj: bytes, entry: BlockEntry) -> bytes:
    return obj[entry.offset : entry.offset + entry.length]


def codec_of(obj: bytes, entry: BlockEntry) -> int:
    return obj[entry.offset]


def decode_all(obj: bytes) -> list[bytes]:
    return [decode_block(block_of(obj, e), e) for e in read_index(obj)]


def small_segment() -> tuple[bytes, list[BlockEntry], list[bytes]]:
    rng = random.Random(1)
    w = SegmentWriter()
    raws = []
    for i, payload in enumerate([compressible(rng, 400), rng.randbytes(120), b"z" * 300]):
        parts = [payload[:50], payload[50:]]
        w.add_block(10 + i, i, parts, 2, 5 + i, 100 * i, 100 * i + 7)
        raws.append(payload)
    obj, entries = w.finish()
    return obj, entries, raws


def test_layout_constants():
    assert SEGMENT_VERSION == 1
    assert (HEADER_SIZE, BLOCK_HEADER_SIZE, INDEX_ENTRY_SIZE, FOOTER_SIZE) == (8, 20, 48, 28)


def test_round_trip_many_partitions_and_multi_block():
    rng = random.Random(42)
    w = SegmentWriter()
    expected = []
    for topic in range(1, 6):
        for partition in range(20):
            # some partitions get several blocks, like a flush that split a big partition
            for _ in range(1 + (partition % 3 == 0)):
                batches = [
                    compressible(rng, rng.randrange(1, 3000))
                    if rng.random() < 0.5
                    else rng.randbytes(rng.randrange(1, 3000))
                    for _ in range(rng.randrange(1, 5))
                ]
                meta = (
                    topic * 2**40 + 7,
                    partition,
                    len(batches),
                    rng.randrange(1, 10_000),
                    -rng.randrange(0, 5),
                    rng.randrange(0, 2**62),
                )
                before = w.size
                w.add_block(meta[0], meta[1], batches, *meta[2:])
                assert w.size > before
                expected.append((meta, b"".join(batches)))
    size = w.size
    obj, entries = w.finish()
    assert len(obj) == size
    assert read_index(obj) == entries
    assert len(entries) == len(expected)
    for entry, (meta, raw) in zip(entries, expected, strict=True):
        assert (
            entry.topic_id,
            entry.partition,
            entry.batch_count,
            entry.record_count,
            entry.min_timestamp,
            entry.max_timestamp,
        ) == meta
        assert decode_block(block_of(obj, entry), entry) == raw
        assert decode_block(memoryview(obj)[entry.offset : entry.offset + entry.length]) == raw


def test_real_record_batches_survive():
    rng = random.Random(5)
    batches = [
        encode_batch(
            [b"k%d" % i for i in range(n)],
            [compressible(rng, 80) for _ in range(n)],
            [[("h", b"v")]] * n,
            [1_700_000_000_000 + i for i in range(n)],
        )
        for n in (1, 10, 100)
    ]
    w = SegmentWriter()
    w.add_block(1, 0, batches, 3, 111, 1_700_000_000_000, 1_700_000_000_099)
    obj, (entry,) = w.finish()
    raw = decode_block(block_of(obj, entry), entry)
    infos = scan_batches(raw)
    assert [i.record_count for i in infos] == [1, 10, 100]
    assert decode_records(raw[infos[2].position :]) == decode_records(batches[2])


def test_codec_choice_random_vs_compressible():
    rng = random.Random(9)
    w = SegmentWriter()
    random_raw = rng.randbytes(64 * 1024)
    text_raw = compressible(rng, 64 * 1024)
    w.add_block(1, 0, [random_raw], 1, 1, 0, 0)
    w.add_block(1, 1, [text_raw], 1, 1, 0, 0)
    obj, (e_random, e_text) = w.finish()
    assert codec_of(obj, e_random) == 0  # stored raw: LZ4 does not pay on random bytes
    assert e_random.length == BLOCK_HEADER_SIZE + len(random_raw)
    assert codec_of(obj, e_text) == 1
    assert e_text.length < BLOCK_HEADER_SIZE + len(text_raw) * 0.9
    assert decode_block(block_of(obj, e_random)) == random_raw
    assert decode_block(block_of(obj, e_text)) == text_raw


def test_compression_threshold():
    rng = random.Random(3)
    # half random, half zeros: LZ4 saves about half
    raw = rng.randbytes(8000) + bytes(8000)
    for threshold, codec in ((0.0, 0), (0.4, 0), (0.6, 1), (1.0, 1)):
        w = SegmentWriter(compression_threshold=threshold)
        w.add_block(1, 0, [raw], 1, 1, 0, 0)
        obj, (entry,) = w.finish()
        assert codec_of(obj, entry) == codec, threshold
        assert decode_block(block_of(obj, entry)) == raw
    with pytest.raises(ValueError):
        SegmentWriter(compression_threshold=1.5)


def test_empty_segment():
    obj, entries = SegmentWriter().finish()
    assert entries == []
    assert len(obj) == HEADER_SIZE + FOOTER_SIZE
    assert read_index(obj) == []


def test_range_read_path():
    obj, entries, raws = small_segment()
    tail = obj[-FOOTER_SIZE:]
    index_offset, index_length = parse_footer(tail, object_size=len(obj))
    assert index_length == len(entries) * INDEX_ENTRY_SIZE
    assert index_offset == entries[-1].offset + entries[-1].length
    assert parse_index(obj[index_offset : index_offset + index_length], tail) == entries
    # a longer tail (e.g. a generous suffix read) works too
    assert parse_footer(obj[-100:]) == (index_offset, index_length)
    assert [decode_block(block_of(obj, e), e) for e in entries] == raws
    with pytest.raises(SegmentCorruptError, match="object has"):
        parse_footer(tail, object_size=len(obj) + 1)
    with pytest.raises(SegmentCorruptError, match="truncated read"):
        parse_index(obj[index_offset : index_offset + index_length - 1], tail)


def test_every_single_byte_corruption_is_detected():
    obj, _, _ = small_segment()
    decode_all(obj)  # intact object decodes
    for pos in range(len(obj)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(obj)
            bad[pos] ^= mask
            with pytest.raises(SegmentCorruptError):
                decode_all(bytes(bad))


def test_corrupt_block_names_block_and_checksum():
    obj, entries, _ = small_segment()
    entry = entries[1]
    bad = bytearray(obj)
    bad[entry.offset + BLOCK_HEADER_SIZE + 3] ^= 0x04
    assert read_index(bytes(bad)) == entries  # the index is intact; block checks are lazy
    with pytest.raises(SegmentCorruptError) as info:
        decode_block(block_of(bytes(bad), entry), entry)
    message = str(info.value)
    assert "checksum mismatch" in message
    assert f"topic {entry.topic_id} partition {entry.partition}" in message


def test_corrupt_block_header_fields():
    obj, entries, _ = small_segment()
    lz4_entry = next(e for e in entries if codec_of(obj, e) == 1)
    raw_entry = next(e for e in entries if codec_of(obj, e) == 0)

    def damaged(entry: BlockEntry, field_offset: int, fmt: str, value: int) -> bytearray:
        block = bytearray(block_of(obj, entry))
        struct.pack_into(fmt, block, field_offset, value)
        return block

    cases = [
        (damaged(lz4_entry, 0, "<B", 7), "unknown codec 7"),
        (damaged(raw_entry, 0, "<B", 1), "LZ4|raw_length"),
        (damaged(lz4_entry, 0, "<B", 0), "raw_length"),
        (damaged(lz4_entry, 1, "<B", 1), "reserved"),
        (damaged(lz4_entry, 4, "<I", 1), "LZ4 decompression failed"),
        (damaged(lz4_entry, 4, "<I", 2**32 - 1), "impossible"),
        (damaged(raw_entry, 4, "<I", 5), "raw_length 5"),
        (damaged(lz4_entry, 8, "<I", 3), "header says 3 stored bytes"),
        (damaged(lz4_entry, 12, "<Q", 1234), "checksum mismatch"),
    ]
    for block, message in cases:
        with pytest.raises(SegmentCorruptError, match=message):
            decode_block(bytes(block))
    # raw_length larger than the real data
    block = damaged(lz4_entry, 4, "<I", lz4_entry.length * 3)
    with pytest.raises(SegmentCorruptError, match="decompressed to"):
        decode_block(bytes(block))


def test_lz4_garbage_with_valid_checksum():
    stored = os.urandom(200)
    block = struct.pack("<B3xIIQ", 1, 1000, len(stored), xxhash.xxh3_64_intdigest(stored)) + stored
    with pytest.raises(SegmentCorruptError, match="LZ4|decompressed to"):
        decode_block(block)


def test_block_length_mismatch_with_entry():
    obj, entries, _ = small_segment()
    entry = entries[0]
    with pytest.raises(SegmentCorruptError, match="index says"):
        decode_block(obj[entry.offset : entry.offset + entry.length + 1], entry)
    with pytest.raises(SegmentCorruptError, match="truncated"):
        decode_block(obj[entry.offset : entry.offset + 10])
    with pytest.raises(SegmentCorruptError, match="stored bytes"):
        decode_block(obj[entry.offset : entry.offset + entry.length - 1])


def test_corrupt_index_and_footer():
    obj, entries, _ = small_segment()
    index_offset = entries[-1].offset + entries[-1].length
    bad = bytearray(obj)
    bad[index_offset + 9] ^= 0x01  # partition of the first entry
    with pytest.raises(SegmentCorruptError, match="index checksum mismatch"):
        read_index(bytes(bad))
    footer = len(obj) - FOOTER_SIZE
    for field_offset, message in [
        (0, "object has"),  # index_offset
        (8, "not a multiple|object has"),  # index_length
        (12, "index checksum mismatch"),  # index hash
        (20, "version"),
        (22, "reserved"),
        (24, "bad footer magic"),
    ]:
        bad = bytearray(obj)
        bad[footer + field_offset] ^= 0x02
        with pytest.raises(SegmentCorruptError, match=message):
            read_index(bytes(bad))


def test_index_that_does_not_tile_the_blocks():
    # a self-consistent index (valid hash) whose ranges are wrong is still refused
    obj, entries, _ = small_segment()
    index_offset, index_length = parse_footer(obj[-FOOTER_SIZE:])
    index = bytearray(obj[index_offset : index_offset + index_length])
    struct.pack_into("<Q", index, INDEX_ENTRY_SIZE + 12, entries[1].offset + 1)
    footer = bytearray(obj[-FOOTER_SIZE:])
    struct.pack_into("<Q", footer, 12, xxhash.xxh3_64_intdigest(bytes(index)))
    with pytest.raises(SegmentCorruptError, match="index entry 1 .* starts at byte"):
        read_index(obj[:index_offset] + bytes(index) + bytes(footer))
    with pytest.raises(SegmentCorruptError, match="index entry 1"):
        parse_index(bytes(index), bytes(footer))


def test_truncated_object():
    obj, _, _ = small_segment()
    for cut in range(len(obj)):
        with pytest.raises(SegmentCorruptError):
            read_index(obj[:cut])
    with pytest.raises(SegmentCorruptError, match="truncated"):
        read_index(obj[:20])
    with pytest.raises(SegmentCorruptError, match="truncated"):
        parse_footer(obj[-10:])


def test_wrong_magic_and_unknown_version():
    obj, _, _ = small_segment()
    with pytest.raises(SegmentCorruptError, match="bad header magic b'PK"):
        read_index(b"PK\x03\x04" + obj[4:])
    with pytest.raises(SegmentCorruptError, match="magic"):
        read_index(os.urandom(len(obj)))
    future = bytearray(obj)
    struct.pack_into("<H", future, 4, 2)
    struct.pack_into("<H", future, len(obj) - 8, 2)
    with pytest.raises(SegmentCorruptError, match="version 2; this reader knows only version 1"):
        read_index(bytes(future))
    with pytest.raises(SegmentCorruptError, match="footer has version 2"):
        parse_footer(bytes(future[-FOOTER_SIZE:]))


def test_writer_validates_input_and_lifecycle():
    w = SegmentWriter()
    with pytest.raises(ValueError):
        w.add_block(1, 0, [b""], 1, 1, 0, 0)
    with pytest.raises(ValueError):
        w.add_block(-1, 0, [b"x"], 1, 1, 0, 0)
    with pytest.raises(ValueError):
        w.add_block(1, 2**32, [b"x"], 1, 1, 0, 0)
    with pytest.raises(ValueError):
        w.add_block(1, 0, [b"x"], 1, 1, 5, 4)
    w.add_block(1, 0, [b"x"], 1, 1, 0, 0)
    w.finish()
    with pytest.raises(RuntimeError):
        w.add_block(1, 0, [b"x"], 1, 1, 0, 0)
    with pytest.raises(RuntimeError):
        w.finish()


def test_decode_block_view_and_verified_options() -> None:
    """``view``: a raw block's records come back as a view of the block (an LZ4 block is
    decompressed as always); ``verified``: the checksum is not computed again, so a flipped
    byte passes only when the caller says it checked these bytes already."""
    obj, entries, raws = small_segment()
    for entry, raw in zip(entries, raws, strict=True):
        block = block_of(obj, entry)
        out = decode_block(block, entry, view=True)
        assert out == raw
        assert isinstance(out, memoryview) == (codec_of(obj, entry) == 0)
        if isinstance(out, memoryview):
            assert out.obj is block
    raw_entry = next(e for e in entries if codec_of(obj, e) == 0)
    flipped = bytearray(block_of(obj, raw_entry))
    flipped[-1] ^= 0xFF
    with pytest.raises(SegmentCorruptError, match="checksum"):
        decode_block(bytes(flipped), raw_entry)
    assert decode_block(bytes(flipped), raw_entry, verified=True)[-1] == flipped[-1]
