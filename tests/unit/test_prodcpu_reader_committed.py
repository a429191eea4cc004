"""The reader caches a committed segment's large block as a view of the ring's object (no
copy) and copies small blocks, so a small cached block never keeps a large object alive."""

from __future__ import annotations

import random
from typing import Any

from metadata.async_store import AsyncMetadata
from reader.cache import BlockCache
from reader.engine import ReadEngine
from streamhouse.frames import CommittedBlock, CommittedSegment
from streamhouse.segment import SegmentWriter


class _NoMeta:
    """on_committed never touches metadata; anything else would fail loudly."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"on_committed used metadata ({name})")


def committed(sizes: list[int]) -> tuple[CommittedSegment, bytes, list[bytes]]:
    rng = random.Random(sum(sizes))
    w = SegmentWriter()
    raws = []
    for partition, size in enumerate(sizes):
        raw = rng.randbytes(size)
        w.add_block(9, partition, [raw], 1, 1, 0, 0)
        raws.append(raw)
    obj, entries = w.finish()
    blocks = [CommittedBlock(e.topic_id, e.partition, e.offset, e.length, 0, 1) for e in entries]
    return CommittedSegment("segments/x.seg", blocks), obj, raws


def engine(cache: BlockCache) -> ReadEngine:
    return ReadEngine(AsyncMetadata(_NoMeta()), None, cache, 0)  # type: ignore[arg-type]


def test_one_large_block_is_cached_without_a_copy() -> None:
    cache = BlockCache(64 << 20)
    segment, obj, raws = committed([400_000])
    engine(cache).on_committed(segment, obj)
    key = ("segments/x.seg", segment.blocks[0].byte_offset)
    decoded, stored = cache._entries[key]
    assert not decoded
    assert isinstance(stored, memoryview) and stored.obj is obj
    assert cache.size_bytes == segment.blocks[0].byte_length
    assert cache.get(key) == raws[0]  # decodes (and verifies) from the view
    decoded, stored = cache._entries[key]
    # The decoded entry replaced the encoded one; a raw block's records are still a view of
    # the object (no copy on decoding either).
    assert decoded
    assert isinstance(stored, memoryview) and stored.obj is obj
    assert cache.size_bytes == len(raws[0])


def test_small_blocks_of_a_segment_are_copied() -> None:
    cache = BlockCache(64 << 20)
    segment, obj, raws = committed([300_000, 20_000, 50_000])
    engine(cache).on_committed(segment, obj)
    kinds = []
    for block, raw in zip(segment.blocks, raws, strict=True):
        key = ("segments/x.seg", block.byte_offset)
        kinds.append(type(cache._entries[key][1]))
        assert cache.get(key) == raw
    assert kinds == [memoryview, bytes, bytes]
