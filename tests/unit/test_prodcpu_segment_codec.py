"""The segment writer's codec decision by sample, and its copy-free raw blocks."""

from __future__ import annotations

import random

import lz4.block
import pytest
import xxhash

from streamhouse.segment import (
    BLOCK_HEADER_SIZE,
    SAMPLE_CHUNK,
    SAMPLE_CHUNKS,
    SAMPLE_MIN_BLOCK,
    SegmentWriter,
    _sample,
    decode_block,
    read_index,
    worth_compressing,
)

CODEC_RAW, CODEC_LZ4 = 0, 1


def text(rng: random.Random, n: int) -> bytes:
    words = [b"order", b"customer", b"amount", b"status", b"shipped", b"pending"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b"=" + str(rng.randrange(100)).encode() + b";"
    return bytes(out[:n])


def split(rng: random.Random, data: bytes, pieces: int) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), pieces - 1))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def one_block(parts: list[bytes | bytearray | memoryview]) -> tuple[bytes, int, bytes]:
    """(object, codec of its only block, decoded block)."""
    w = SegmentWriter()
    w.add_block(3, 1, parts, len(parts), 10, 0, 5)
    obj, entries = w.finish()
    (entry,) = read_index(obj)
    assert entries == [entry]
    block = obj[entry.offset : entry.offset + entry.length]
    return obj, block[0], decode_block(block, entry)


@pytest.mark.parametrize("pieces", [1, 2, 7, 40])
def test_sample_takes_evenly_spread_chunks_across_part_boundaries(pieces: int) -> None:
    rng = random.Random(pieces)
    data = rng.randbytes(SAMPLE_MIN_BLOCK + 12_345)
    starts = [i * (len(data) - SAMPLE_CHUNK) // (SAMPLE_CHUNKS - 1) for i in range(SAMPLE_CHUNKS)]
    expected = b"".join(data[s : s + SAMPLE_CHUNK] for s in starts)
    parts = split(rng, data, pieces) if pieces > 1 else [data]
    got = _sample(parts, len(data))
    assert got == expected
    assert got[:SAMPLE_CHUNK] == data[:SAMPLE_CHUNK]  # starts at the block's start
    assert got[-SAMPLE_CHUNK:] == data[-SAMPLE_CHUNK:]  # ends at its end


def test_small_blocks_are_always_compressed_whole() -> None:
    rng = random.Random(2)
    assert worth_compressing([rng.randbytes(SAMPLE_MIN_BLOCK)], SAMPLE_MIN_BLOCK, 0.9)


def test_sample_decides_for_large_blocks() -> None:
    rng = random.Random(3)
    noise = rng.randbytes(SAMPLE_MIN_BLOCK * 2)
    words = text(rng, SAMPLE_MIN_BLOCK * 2)
    assert not worth_compressing([noise], len(noise), 0.9)
    assert worth_compressing(split(rng, words, 9), len(words), 0.9)


def test_incompressible_large_block_is_stored_raw_and_round_trips() -> None:
    rng = random.Random(4)
    data = rng.randbytes(SAMPLE_MIN_BLOCK * 3 + 5)
    parts = split(rng, data, 6)
    obj, codec, decoded = one_block([memoryview(p) for p in parts])
    assert codec == CODEC_RAW
    assert decoded == data
    # the checksum of the parts hashed one by one is that of the stored bytes as one
    assert obj.count(data) == 1
    header_at = obj.index(data) - BLOCK_HEADER_SIZE
    stored_hash = int.from_bytes(obj[header_at + 12 : header_at + 20], "little")
    assert stored_hash == xxhash.xxh3_64_intdigest(data)


def test_compressible_large_block_is_stored_lz4() -> None:
    rng = random.Random(5)
    data = text(rng, SAMPLE_MIN_BLOCK * 3)
    obj, codec, decoded = one_block(split(rng, data, 5))
    assert codec == CODEC_LZ4
    assert decoded == data
    assert len(obj) < len(data) // 2


def test_a_sample_that_compresses_still_needs_the_whole_block_to_pay() -> None:
    # Compressible exactly where the sample looks, random everywhere else: the sample says
    # "try", the whole block does not save 10 %, so it is stored raw.
    rng = random.Random(6)
    total = SAMPLE_MIN_BLOCK * 8
    data = bytearray(rng.randbytes(total))
    for i in range(SAMPLE_CHUNKS):
        start = i * (total - SAMPLE_CHUNK) // (SAMPLE_CHUNKS - 1)
        data[start : start + SAMPLE_CHUNK] = text(rng, SAMPLE_CHUNK)
    data = bytes(data)
    assert worth_compressing([data], total, 0.9)
    assert len(lz4.block.compress(data, store_size=False)) >= total * 0.9
    _, codec, decoded = one_block([data])
    assert codec == CODEC_RAW
    assert decoded == data


def test_mutable_parts_are_copied_when_added() -> None:
    rng = random.Random(7)
    original = rng.randbytes(SAMPLE_MIN_BLOCK * 2)
    mutable = bytearray(original)
    writable_view = memoryview(bytearray(original))
    behind_read_only = bytearray(original)  # changed through the bytearray, not the view
    w = SegmentWriter()
    w.add_block(1, 0, [mutable], 1, 1, 0, 0)
    w.add_block(1, 1, [writable_view], 1, 1, 0, 0)
    w.add_block(1, 2, [memoryview(behind_read_only).toreadonly()], 1, 1, 0, 0)
    w.add_block(1, 3, [memoryview(original).cast("I")], 1, 1, 0, 0)  # 4-byte items
    mutable[:] = bytes(len(mutable))
    writable_view[:] = bytes(len(writable_view))
    behind_read_only[:] = bytes(len(behind_read_only))
    obj, entries = w.finish()
    assert len(entries) == 4
    for e in entries:
        assert decode_block(obj[e.offset : e.offset + e.length], e) == original
