"""SegmentBuilder: produced frames of many partitions in, one segment object + metadata out."""

from __future__ import annotations

import msgspec
import pytest

from segmenter.builder import SegmentBuilder
from streamhouse.frames import (
    BatchMeta,
    ProduceFrame,
    SealedBatch,
    SealedBlock,
    SealedSegment,
    decoder_for,
    header_encoder,
)
from streamhouse.recordbatch import decode_records, encode_batch, scan_batches
from streamhouse.segment import BlockEntry, decode_block, read_index


def batch(tag: str, n: int = 2, ts: int = 1_000, **producer: int) -> bytes:
    """A real v2 batch of `n` records whose values are `tag-0`, `tag-1`, ..."""
    return encode_batch(
        [None] * n,
        [f"{tag}-{i}".encode() for i in range(n)],
        [[] for _ in range(n)],
        [ts + i for i in range(n)],
        **producer,
    )


def frame(
    request_id: int, slot: int, topic_id: int, partition: int, batches: list[bytes]
) -> tuple[ProduceFrame, bytes]:
    """The ProduceFrame ingest would send for these batches, and its payload."""
    payload = b"".join(batches)
    infos = scan_batches(payload)
    meta = [
        BatchMeta(
            i.record_count,
            i.producer_id,
            i.producer_epoch,
            i.base_sequence,
            i.base_timestamp,
            i.max_timestamp,
        )
        for i in infos
    ]
    return ProduceFrame(request_id, slot, topic_id, partition, meta, [i.length for i in infos]), (
        payload
    )


def block_batches(obj: bytes, entry: BlockEntry) -> list[bytes]:
    """The batches stored in one block of a segment object, in stored order."""
    raw = decode_block(obj[entry.offset : entry.offset + entry.length], entry)
    return [raw[i.position : i.position + i.length] for i in scan_batches(raw)]


def values_of(batches: list[bytes]) -> list[bytes | None]:
    return [rec[3] for b in batches for rec in decode_records(b)]


def test_new_builder_is_empty() -> None:
    """A fresh builder holds nothing, is not full and has no oldest timestamp."""
    b = SegmentBuilder(epoch=7, max_segment_bytes=1000)
    assert b.empty
    assert not b.full
    assert b.buffered_bytes == 0
    assert b.oldest_ns is None


def test_seal_groups_partitions_in_produce_order() -> None:
    """Frames of several partitions and requests become one block per partition, sorted by
    (topic, partition), each holding its batches in produce order."""
    b = SegmentBuilder(epoch=3, max_segment_bytes=1 << 20)
    a1, a2, a3 = batch("a1"), batch("a2", 3), batch("a3", 1)
    c1 = batch("c1")
    d1, d2 = batch("d1", 4), batch("d2")
    # request 1 writes (5, 1) and (2, 0); request 2 writes (5, 1) again and (2, 3).
    b.add(*frame(1, 0, 5, 1, [a1, a2]), now_ns=100)
    b.add(*frame(1, 1, 2, 0, [c1]), now_ns=110)
    b.add(*frame(2, 0, 5, 1, [a3]), now_ns=120)
    b.add(*frame(2, 1, 2, 3, [d1, d2]), now_ns=130)
    assert not b.empty

    sealed, obj = b.seal()

    entries = read_index(obj)
    assert [(e.topic_id, e.partition) for e in entries] == [(2, 0), (2, 3), (5, 1)]
    assert block_batches(obj, entries[0]) == [c1]
    assert block_batches(obj, entries[1]) == [d1, d2]
    assert block_batches(obj, entries[2]) == [a1, a2, a3]
    assert values_of(block_batches(obj, entries[2])) == [
        b"a1-0",
        b"a1-1",
        b"a2-0",
        b"a2-1",
        b"a2-2",
        b"a3-0",
    ]
    assert [(e.batch_count, e.record_count) for e in entries] == [(1, 2), (2, 6), (3, 6)]

    assert sealed.segmenter_epoch == 3
    assert sealed.sequence == 0
    assert sealed.blocks == [
        SealedBlock(e.topic_id, e.partition, e.offset, e.length, e.max_timestamp) for e in entries
    ]
    assert sealed.batches == [
        SealedBatch(1, 1, 0, 0, 2, -1, -1, -1),
        SealedBatch(2, 1, 0, 1, 4, -1, -1, -1),
        SealedBatch(2, 1, 1, 1, 2, -1, -1, -1),
        SealedBatch(1, 0, 0, 2, 2, -1, -1, -1),
        SealedBatch(1, 0, 1, 2, 3, -1, -1, -1),
        SealedBatch(2, 0, 0, 2, 1, -1, -1, -1),
    ]


def test_sealed_batches_carry_producer_state() -> None:
    """Idempotent batches keep their producer id, epoch and base sequence."""
    b = SegmentBuilder(epoch=1, max_segment_bytes=1 << 20)
    first = batch("x", 3, producer_id=42, producer_epoch=2, base_sequence=0)
    second = batch("y", 2, producer_id=42, producer_epoch=2, base_sequence=3)
    b.add(*frame(9, 0, 1, 0, [first, second]), now_ns=0)
    sealed, _obj = b.seal()
    assert sealed.batches == [
        SealedBatch(9, 0, 0, 0, 3, 42, 2, 0),
        SealedBatch(9, 0, 1, 0, 2, 42, 2, 3),
    ]


def test_block_max_timestamp_is_the_largest_batch_max() -> None:
    """The block's max timestamp (index and SealedSegment) is the max over its batches."""
    b = SegmentBuilder(epoch=1, max_segment_bytes=1 << 20)
    b.add(*frame(1, 0, 1, 0, [batch("a", 2, ts=500), batch("b", 3, ts=9_000)]), now_ns=0)
    b.add(*frame(2, 0, 1, 0, [batch("c", 1, ts=-50)]), now_ns=0)
    sealed, obj = b.seal()
    (entry,) = read_index(obj)
    assert entry.max_timestamp == 9_002
    assert sealed.blocks[0].max_timestamp == 9_002
    assert entry.min_timestamp <= entry.max_timestamp


def test_block_min_timestamp_is_a_lower_bound_of_its_records() -> None:
    """The index's min_timestamp is at most the timestamp of every record in the block
    (checked on batches whose records are in timestamp order, so each batch's base timestamp
    is its smallest)."""
    b = SegmentBuilder(epoch=1, max_segment_bytes=1 << 20)
    batches = [batch("a", 3, ts=1_000), batch("b", 2, ts=5_000)]
    b.add(*frame(1, 0, 1, 0, batches), now_ns=0)
    _sealed, obj = b.seal()
    (entry,) = read_index(obj)
    smallest = min(rec[1] for bt in batches for rec in decode_records(bt))
    assert smallest == 1_000
    assert entry.min_timestamp <= smallest, (
        f"index min_timestamp {entry.min_timestamp} is above the block's first record "
        f"timestamp {smallest}"
    )


def test_sealed_segment_survives_the_ring_encoding() -> None:
    """The SealedSegment header round-trips through the frame codec used on the sealed ring."""
    b = SegmentBuilder(epoch=11, max_segment_bytes=1 << 20)
    b.add(*frame(1, 0, 4, 2, [batch("a")]), now_ns=0)
    sealed, _obj = b.seal()
    decoded = decoder_for(SealedSegment).decode(header_encoder.encode(sealed))
    assert msgspec.structs.asdict(decoded) == msgspec.structs.asdict(sealed)


def test_buffered_bytes_full_and_oldest_ns() -> None:
    """buffered_bytes counts payload bytes; full at max_segment_bytes; oldest_ns is the time
    of the first add since the last seal."""
    one = batch("a")
    b = SegmentBuilder(epoch=1, max_segment_bytes=3 * len(one))
    b.add(*frame(1, 0, 1, 0, [one]), now_ns=1_000)
    assert b.buffered_bytes == len(one)
    assert b.oldest_ns == 1_000
    b.add(*frame(2, 0, 1, 1, [one]), now_ns=2_000)
    assert b.buffered_bytes == 2 * len(one)
    assert b.oldest_ns == 1_000
    assert not b.full
    b.add(*frame(3, 0, 1, 0, [one]), now_ns=3_000)
    assert b.buffered_bytes == 3 * len(one)
    assert b.full

    b.seal()
    assert b.empty
    assert not b.full
    assert b.buffered_bytes == 0
    assert b.oldest_ns is None
    b.add(*frame(4, 0, 1, 0, [one]), now_ns=9_000)
    assert b.oldest_ns == 9_000


def test_full_when_one_frame_exceeds_the_limit() -> None:
    """A single frame larger than max_segment_bytes makes the builder full at once."""
    big = batch("big", 50)
    b = SegmentBuilder(epoch=1, max_segment_bytes=len(big) - 1)
    b.add(*frame(1, 0, 1, 0, [big]), now_ns=0)
    assert b.full


def test_sequence_increments_per_seal_and_buffers_reset() -> None:
    """Each seal gets the next sequence; a sealed segment holds only what came after the
    previous seal."""
    b = SegmentBuilder(epoch=5, max_segment_bytes=1 << 20)
    first, second = batch("first"), batch("second")
    b.add(*frame(1, 0, 1, 0, [first]), now_ns=0)
    s0, obj0 = b.seal()
    b.add(*frame(2, 0, 1, 0, [second]), now_ns=0)
    s1, obj1 = b.seal()
    b.add(*frame(3, 0, 8, 8, [first]), now_ns=0)
    s2, obj2 = b.seal()

    assert [s.sequence for s in (s0, s1, s2)] == [0, 1, 2]
    assert {s.segmenter_epoch for s in (s0, s1, s2)} == {5}
    assert block_batches(obj0, read_index(obj0)[0]) == [first]
    assert block_batches(obj1, read_index(obj1)[0]) == [second]
    assert [(e.topic_id, e.partition) for e in read_index(obj2)] == [(8, 8)]
    assert [sb.request_id for sb in s1.batches] == [2]


def test_payload_is_split_by_frame_lengths() -> None:
    """A frame's payload is cut into batches by batch_lengths; every batch lands whole."""
    b = SegmentBuilder(epoch=1, max_segment_bytes=1 << 20)
    parts = [batch("p", n) for n in (1, 7, 2, 30)]
    b.add(*frame(1, 0, 3, 0, parts), now_ns=0)
    sealed, obj = b.seal()
    (entry,) = read_index(obj)
    assert block_batches(obj, entry) == parts
    assert [sb.ordinal for sb in sealed.batches] == [0, 1, 2, 3]
    assert [sb.record_count for sb in sealed.batches] == [1, 7, 2, 30]


def test_compressible_blocks_still_decode() -> None:
    """Large repetitive batches get LZ4-compressed blocks that decode to the same bytes."""
    b = SegmentBuilder(epoch=1, max_segment_bytes=1 << 20)
    big = encode_batch([b"k"] * 200, [b"v" * 100] * 200, [[] for _ in range(200)], [1] * 200)
    b.add(*frame(1, 0, 1, 0, [big]), now_ns=0)
    _sealed, obj = b.seal()
    (entry,) = read_index(obj)
    assert entry.length < len(big)  # stored compressed
    assert block_batches(obj, entry) == [big]


def test_mismatched_frame_lengths_are_refused() -> None:
    """A frame whose batches and batch_lengths disagree in number raises."""
    b = SegmentBuilder(epoch=1, max_segment_bytes=1 << 20)
    good, payload = frame(1, 0, 1, 0, [batch("a")])
    bad = msgspec.structs.replace(good, batch_lengths=[*good.batch_lengths, 5])
    with pytest.raises(ValueError):
        b.add(bad, payload, now_ns=0)


def test_a_builder_that_does_not_join_seals_the_same_object_as_its_parts() -> None:
    """``joined=False`` (the segmenter's: the sealed ring copies the parts in) gives the
    buffers that concatenate to exactly the object a joining builder seals, compressed
    blocks and raw ones alike."""
    compressible = [batch("z" * 200, 50)]  # a block LZ4 keeps compressed
    others = [batch("a1", 3), batch("a2")]
    objects = []
    for joined in (True, False):
        b = SegmentBuilder(epoch=9, max_segment_bytes=1 << 20, joined=joined)
        b.add(*frame(1, 0, 4, 0, compressible), now_ns=10)
        b.add(*frame(1, 1, 2, 5, others), now_ns=20)
        sealed, obj = b.seal()
        if joined:
            assert type(obj) is bytes
        else:
            assert type(obj) is list and len(obj) > 3
            obj = b"".join(obj)
        objects.append((sealed, obj))
    assert objects[0] == objects[1]
    entries = read_index(objects[1][1])
    assert block_batches(objects[1][1], entries[0]) == others
    assert block_batches(objects[1][1], entries[1]) == compressible
