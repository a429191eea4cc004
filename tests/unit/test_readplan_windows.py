"""Cold reads by window GETs: the sans-I/O plan (`reader/readplan.py`) and the ReadEngine
reading a segment object of many partitions with one GET (`window_bytes`).

Store requests are counted by wrapping the objectstore functions the engine calls; every
test drives the engine with `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pathlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from metadata import BatchRef, CommitBlock, MetadataStore
from reader import engine as engine_module
from reader.cache import BlockCache
from reader.engine import ReadEngine
from reader.readplan import Window, split_blocks, window_for
from streamhouse import objectstore
from streamhouse.errors import RING_OK, ErrorCode
from streamhouse.frames import FORMAT_KAFKA, FetchPart, FetchRequest
from streamhouse.recordbatch import decode_records, encode_batch, scan_batches
from streamhouse.segment import HEADER_SIZE, BlockEntry, SegmentWriter

MiB = 1 << 20
_keys = itertools.count()


def mk(prefix: str, n: int, size: int = 10) -> bytes:
    """A v2 batch of n records whose values start with `prefix` (padded to `size` bytes)."""
    values = [f"{prefix}{i}".encode().ljust(size, b".") for i in range(n)]
    return encode_batch([None] * n, values, [[] for _ in range(n)], [1_000] * n)


def mk_random(prefix: str, n: int, size: int) -> bytes:
    """As `mk`, padded with random bytes (which do not compress) after a '.'."""
    values = [f"{prefix}{i}.".encode() + os.urandom(size) for i in range(n)]
    return encode_batch([None] * n, values, [[] for _ in range(n)], [1_000] * n)


def segment(blocks: list[tuple[int, list[bytes]]]) -> tuple[bytes, list[BlockEntry]]:
    writer = SegmentWriter()
    for partition, batches in blocks:
        infos = [scan_batches(b)[0] for b in batches]
        writer.add_block(
            1, partition, batches, len(batches), sum(i.record_count for i in infos), 1_000, 1_000
        )
    return writer.finish()


# ----------------------------------------------------------------------------- the plan


def test_window_of_a_block_near_the_start_is_the_object_from_byte_zero() -> None:
    assert window_for(8, 100, 16 * MiB) == Window(0, 16 * MiB, HEADER_SIZE)
    assert window_for(16 * MiB - 100, 100, 16 * MiB) == Window(0, 16 * MiB, HEADER_SIZE)


def test_window_of_a_block_far_into_a_large_object_starts_at_the_block() -> None:
    """However large the object, a GET is at most max(window, block)."""
    assert window_for(100 * MiB, 1000, 16 * MiB) == Window(100 * MiB, 16 * MiB, 100 * MiB)
    assert window_for(16 * MiB - 10, 100, 16 * MiB) == Window(
        16 * MiB - 10, 16 * MiB, 16 * MiB - 10
    )
    assert window_for(100 * MiB, 40 * MiB, 16 * MiB) == Window(100 * MiB, 40 * MiB, 100 * MiB)


def test_window_zero_reads_the_block_alone() -> None:
    assert window_for(1234, 56, 0) == Window(1234, 56, 1234)


def test_window_refuses_what_is_not_a_block() -> None:
    with pytest.raises(ValueError, match="not a block"):
        window_for(-1, 10, MiB)
    with pytest.raises(ValueError, match="not a block"):
        window_for(8, 0, MiB)


def test_split_of_a_whole_object_finds_exactly_its_blocks() -> None:
    obj, entries = segment([(p, [mk(f"p{p}-", 5 + p)]) for p in range(6)])
    found = split_blocks(obj, Window(0, MiB, HEADER_SIZE))
    assert sorted(found) == [e.offset for e in entries]
    for e in entries:
        assert found[e.offset] == obj[e.offset : e.offset + e.length]


def test_split_keeps_a_large_block_as_a_view_and_copies_small_ones() -> None:
    """A block of at least half the window's bytes is a view of them (no copy); smaller ones
    are copies, which do not keep the window alive."""
    obj, entries = segment([(0, [mk_random("big-", 200, 200)]), (1, [mk("s-", 3)])])
    found = split_blocks(obj, Window(0, MiB, HEADER_SIZE))
    big, small = found[entries[0].offset], found[entries[1].offset]
    assert isinstance(big, memoryview) and big.obj is obj
    assert type(small) is bytes
    assert big == obj[entries[0].offset : entries[0].offset + entries[0].length]


def test_split_of_a_cut_window_keeps_only_whole_blocks() -> None:
    obj, entries = segment([(p, [mk(f"p{p}-", 20)]) for p in range(4)])
    cut = entries[2].offset + entries[2].length - 1  # the third block lacks its last byte
    found = split_blocks(obj[:cut], Window(0, cut, HEADER_SIZE))
    assert sorted(found) == [entries[0].offset, entries[1].offset]


def test_split_from_a_block_offset_takes_that_block_and_those_after() -> None:
    obj, entries = segment([(p, [mk(f"p{p}-", 3)]) for p in range(5)])
    start = entries[2].offset
    found = split_blocks(obj[start:], Window(start, len(obj) - start, start))
    assert sorted(found) == [e.offset for e in entries[2:]]


def test_split_stops_at_a_corrupt_block_and_caches_nothing_unverified() -> None:
    obj, entries = segment([(p, [mk(f"p{p}-", 8)]) for p in range(4)])
    bad = bytearray(obj)
    bad[entries[1].offset + 30] ^= 0xFF  # a stored byte of the second block
    found = split_blocks(bytes(bad), Window(0, len(bad), HEADER_SIZE))
    assert sorted(found) == [entries[0].offset]


def test_split_takes_nothing_from_an_object_that_is_not_a_segment() -> None:
    obj, _entries = segment([(0, [mk("a", 3)])])
    assert split_blocks(b"XXXX" + obj[4:], Window(0, len(obj), HEADER_SIZE)) == {}


# ----------------------------------------------------------------------------- the engine


@dataclass
class Rig:
    meta: MetadataStore
    store: Any
    cache: BlockCache
    engine: ReadEngine
    topic_id: int
    gets: list[tuple[str, int, int]] = field(default_factory=list)

    async def commit(self, blocks: list[tuple[int, list[bytes]]]) -> tuple[str, bytes]:
        """PUTs one segment of (partition, batches) blocks and commits it (as the uploader)."""
        writer = SegmentWriter()
        refs = []
        for partition, batches in blocks:
            infos = [scan_batches(b)[0] for b in batches]
            refs.append([BatchRef(i.record_count, -1, -1, -1) for i in infos])
            count = sum(i.record_count for i in infos)
            writer.add_block(self.topic_id, partition, batches, len(batches), count, 1_000, 1_000)
        obj, entries = writer.finish()
        key = f"segments/{next(_keys):020d}.seg"
        await objectstore.put(self.store, key, obj)
        self.meta.commit_segment(
            key,
            len(obj),
            [
                CommitBlock(e.topic_id, e.partition, e.offset, e.length, e.max_timestamp, r)
                for e, r in zip(entries, refs, strict=True)
            ],
        )
        return key, obj


@pytest.fixture(params=["memory", "file"])
def rig(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Rig]:
    """An engine with 1 MiB windows and no prefetch over a 6-partition topic."""
    meta = MetadataStore(tmp_path / "meta.sqlite", synchronous="NORMAL")
    topic = meta.create_topic("events", 6)
    url = "memory://" if request.param == "memory" else (tmp_path / "objects").as_uri()
    store = objectstore.open_object_store(url)
    cache = BlockCache(64 * MiB)
    engine = ReadEngine(meta, store, cache, 0, window_bytes=MiB)
    out = Rig(meta, store, cache, engine, topic.topic_id)
    real_upto, real_range = objectstore.get_range_upto, objectstore.get_range

    async def upto(store: Any, key: str, start: int, length: int) -> bytes:
        out.gets.append((key, start, length))
        return await real_upto(store, key, start, length)

    async def exact(store: Any, key: str, start: int, length: int) -> bytes:
        out.gets.append((key, start, length))
        return await real_range(store, key, start, length)

    monkeypatch.setattr(engine_module.objectstore, "get_range_upto", upto)
    monkeypatch.setattr(engine_module.objectstore, "get_range", exact)
    yield out
    meta.close()


def fetch_all(rig: Rig, partitions: range, offset: int = 0) -> FetchRequest:
    parts = [FetchPart(rig.topic_id, p, offset, MiB) for p in partitions]
    return FetchRequest(1, 0, 0, 64 * MiB, FORMAT_KAFKA, parts)


def values(payload: bytes) -> list[bytes]:
    out = []
    for info in scan_batches(payload):
        batch = payload[info.position : info.position + info.length]
        out.extend(r[3].rstrip(b".") for r in decode_records(batch))
    return out


def test_a_catch_up_of_six_partitions_costs_one_get_per_object(rig: Rig) -> None:
    """One fetch of 6 partitions over 3 objects holding a block of each: 3 GETs, not 18;
    every record comes back in order."""

    async def go() -> None:
        keys = [
            (await rig.commit([(p, [mk(f"s{s}p{p}-", 4)]) for p in range(6)]))[0] for s in range(3)
        ]
        resp, payload = await rig.engine.fetch(fetch_all(rig, range(6)))
        assert [g[0] for g in rig.gets] == keys
        assert all(g[1:] == (0, MiB) for g in rig.gets)
        assert all(p.error == RING_OK and p.record_count == 12 for p in resp.parts)
        want = [f"s{s}p{p}-{i}".encode() for p in range(6) for s in range(3) for i in range(4)]
        assert values(payload) == want
        # Read again (another consumer): all from the cache.
        _resp, again = await rig.engine.fetch(fetch_all(rig, range(6)))
        assert again == payload and len(rig.gets) == 3

    asyncio.run(go())


def test_concurrent_fetches_of_one_object_share_its_get(rig: Rig) -> None:
    """Six consumers of one partition each, at once: one GET of the object."""

    async def go() -> None:
        await rig.commit([(p, [mk(f"p{p}-", 3)]) for p in range(6)])
        answers = await asyncio.gather(
            *(rig.engine.fetch(fetch_all(rig, range(p, p + 1))) for p in range(6))
        )
        assert len(rig.gets) == 1
        for p, (_resp, payload) in enumerate(answers):
            assert values(payload) == [f"p{p}-{i}".encode() for i in range(3)]

    asyncio.run(go())


def test_a_large_object_is_read_in_windows_never_whole(rig: Rig) -> None:
    """Blocks of ~300 KiB in a ~1.8 MiB object with 1 MiB windows: every GET is at most
    1 MiB (or one block), and the far block is read from its own offset."""

    async def go() -> None:
        key, obj = await rig.commit([(p, [mk_random(f"p{p}-", 300, 1000)]) for p in range(6)])
        assert len(obj) > MiB
        _resp, payload = await rig.engine.fetch(fetch_all(rig, range(5, 6)))
        assert [v.split(b".")[0] for v in values(payload)[:2]] == [b"p5-0", b"p5-1"]
        ((got_key, start, length),) = rig.gets
        assert got_key == key and start > 0 and length == MiB
        _resp, payload = await rig.engine.fetch(fetch_all(rig, range(0, 1)))
        assert values(payload)[-1].split(b".")[0] == b"p0-299"
        assert rig.gets[1][1:] == (0, MiB)
        assert all(length <= MiB for _k, _s, length in rig.gets)

    asyncio.run(go())


def test_a_corrupt_block_is_refused_with_the_checksum_error(rig: Rig) -> None:
    """A flipped byte in partition 2's block: the other partitions are served from the one
    window GET; partition 2 answers KAFKA_STORAGE_ERROR naming the checksum mismatch, and
    nothing corrupt is cached."""

    async def go() -> None:
        key, obj = await rig.commit([(p, [mk(f"p{p}-", 5)]) for p in range(6)])
        (loc,) = rig.meta.find_blocks(rig.topic_id, 2, 0, 1)
        bad = bytearray(obj)
        bad[loc.byte_offset + loc.byte_length - 3] ^= 0x5A
        await objectstore.put(rig.store, key, bytes(bad))
        resp, _payload = await rig.engine.fetch(fetch_all(rig, range(6)))
        codes = [p.error.code for p in resp.parts]
        assert codes[2] == ErrorCode.KAFKA_STORAGE_ERROR.kafka_code
        assert "checksum mismatch" in resp.parts[2].error.message
        assert [c for i, c in enumerate(codes) if i != 2] == [RING_OK.code] * 5
        assert (key, loc.byte_offset) not in rig.cache
        # Blocks before the corrupt one came from the window; the rest were read alone.
        assert rig.gets[0][1:] == (0, MiB)

    asyncio.run(go())


def test_window_zero_keeps_single_block_gets(tmp_path: pathlib.Path) -> None:
    """With windows off each cold block is one range GET of exactly its bytes."""
    meta = MetadataStore(tmp_path / "meta.sqlite", synchronous="NORMAL")
    try:
        topic = meta.create_topic("events", 3)
        store = objectstore.open_object_store("memory://")
        cache = BlockCache(64 * MiB)
        rig = Rig(meta, store, cache, ReadEngine(meta, store, cache, 0), topic.topic_id)

        async def go() -> None:
            await rig.commit([(p, [mk(f"p{p}-", 2)]) for p in range(3)])
            await rig.engine.fetch(fetch_all(rig, range(3)))
            assert rig.engine.window_gets == 0
            assert len(rig.cache) == 3

        asyncio.run(go())
    finally:
        meta.close()


@pytest.mark.parametrize("window", [MiB, 0])
def test_prefetch_after_cold_partitions_is_one_metadata_call(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    """A fetch of 6 partitions over two objects, each partition limited to its first block:
    the next blocks are prefetched with one metadata call for all the cold partitions (never
    one per partition). With windows, partition 0's block was not cached and the others were
    read for the first time after its window cached them: all count as cold, and the next
    object is one GET. Without, each of the six blocks of each object is a GET."""
    meta = MetadataStore(tmp_path / "meta.sqlite", synchronous="NORMAL")
    try:
        topic = meta.create_topic("events", 6)
        store = objectstore.open_object_store("memory://")
        cache = BlockCache(64 * MiB)
        engine = ReadEngine(meta, store, cache, 2, window_bytes=window)
        rig = Rig(meta, store, cache, engine, topic.topic_id)
        calls: list[int] = []
        real_plans = engine.meta.read_plans

        async def counted(parts: list[tuple[int, int, int]], limit: int) -> Any:
            calls.append(len(parts))
            return await real_plans(parts, limit)

        async def no_find_blocks(*args: Any) -> Any:
            raise AssertionError("a metadata call per partition")

        monkeypatch.setattr(engine.meta, "read_plans", counted)
        monkeypatch.setattr(engine.meta, "find_blocks", no_find_blocks)
        gets: list[str] = []
        real_upto, real_range = objectstore.get_range_upto, objectstore.get_range

        async def upto(store: Any, key: str, start: int, length: int) -> bytes:
            gets.append(key)
            return await real_upto(store, key, start, length)

        async def exact(store: Any, key: str, start: int, length: int) -> bytes:
            gets.append(key)
            return await real_range(store, key, start, length)

        monkeypatch.setattr(engine_module.objectstore, "get_range_upto", upto)
        monkeypatch.setattr(engine_module.objectstore, "get_range", exact)

        async def go() -> None:
            first_batches = [mk(f"a{p}-", 3) for p in range(6)]
            first, _ = await rig.commit([(p, [first_batches[p]]) for p in range(6)])
            second, _ = await rig.commit([(p, [mk(f"b{p}-", 3)]) for p in range(6)])
            parts = [FetchPart(topic.topic_id, p, 0, len(first_batches[p])) for p in range(6)]
            request = FetchRequest(1, 0, 0, 64 * MiB, FORMAT_KAFKA, parts)
            resp, _payload = await engine.fetch(request)
            assert [p.next_offset for p in resp.parts] == [3] * 6
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.gather(*others)
            if window:
                assert calls == [6, 6] and gets == [first, second]
            else:
                assert calls == [6, 6] and sorted(gets) == [first] * 6 + [second] * 6
            for p in range(6):
                (loc,) = meta.find_blocks(topic.topic_id, p, 3, 1)
                assert (second, loc.byte_offset) in cache

        asyncio.run(go())
    finally:
        meta.close()


def test_a_catch_up_reading_prefetched_blocks_keeps_prefetching(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefetch 1, one object per fetch: reading the prefetched object (all cache hits)
    still prefetches, so the loads stay two objects ahead of the fetches."""
    meta = MetadataStore(tmp_path / "meta.sqlite", synchronous="NORMAL")
    try:
        topic = meta.create_topic("events", 2)
        store = objectstore.open_object_store("memory://")
        cache = BlockCache(64 * MiB)
        engine = ReadEngine(meta, store, cache, 1, window_bytes=MiB)
        rig = Rig(meta, store, cache, engine, topic.topic_id)
        gets: list[str] = []
        real_upto = objectstore.get_range_upto

        async def upto(store: Any, key: str, start: int, length: int) -> bytes:
            gets.append(key)
            return await real_upto(store, key, start, length)

        monkeypatch.setattr(engine_module.objectstore, "get_range_upto", upto)

        async def settle() -> None:
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.gather(*others)

        async def go() -> None:
            batch = mk("x", 3)
            keys = [(await rig.commit([(p, [batch]) for p in range(2)]))[0] for _ in range(4)]
            for n in range(3):
                parts = [FetchPart(topic.topic_id, p, 3 * n, len(batch)) for p in range(2)]
                resp, _ = await engine.fetch(FetchRequest(1, 0, 0, MiB, FORMAT_KAFKA, parts))
                assert [p.next_offset for p in resp.parts] == [3 * n + 3] * 2
                await settle()
                # each object read once, in order: the two after this fetch's already loaded
                assert gets == keys[: min(n + 3, len(keys))]

        asyncio.run(go())
    finally:
        meta.close()


def test_a_fetch_starts_the_gets_of_all_its_cold_objects_at_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Partition 0 in one object, partition 1 in another: one fetch of both has both GETs in
    flight together (its parts are read in order, their objects are not loaded in order)."""
    in_flight = 0
    peak = 0
    real_upto = objectstore.get_range_upto

    async def upto(store: Any, key: str, start: int, length: int) -> bytes:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(200):  # yield so that another GET can start meanwhile
            if in_flight > 1:
                break
            await asyncio.sleep(0)
        try:
            return await real_upto(store, key, start, length)
        finally:
            in_flight -= 1

    monkeypatch.setattr(engine_module.objectstore, "get_range_upto", upto)

    async def go() -> None:
        await rig.commit([(0, [mk("a", 3)])])
        await rig.commit([(1, [mk("b", 3)])])
        resp, payload = await rig.engine.fetch(fetch_all(rig, range(2)))
        assert values(payload) == [b"a0", b"a1", b"a2", b"b0", b"b1", b"b2"]
        assert peak == 2 and rig.engine.window_gets == 2

    asyncio.run(go())


def test_windows_give_way_to_single_blocks_when_unread_blocks_fill_half_the_cache(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One partition read far ahead of the other five in a small cache: once the blocks
    windows cached and nobody read reach half the cache, cold blocks are read alone (a
    window's blocks would be evicted before the other partitions came for them)."""
    meta = MetadataStore(tmp_path / "meta.sqlite", synchronous="NORMAL")
    try:
        topic = meta.create_topic("events", 6)
        store = objectstore.open_object_store("memory://")
        cache = BlockCache(200_000)
        engine = ReadEngine(meta, store, cache, 0, window_bytes=MiB)
        rig = Rig(meta, store, cache, engine, topic.topic_id)
        real_upto, real_range = objectstore.get_range_upto, objectstore.get_range

        async def upto(store: Any, key: str, start: int, length: int) -> bytes:
            rig.gets.append((key, start, length))
            return await real_upto(store, key, start, length)

        async def exact(store: Any, key: str, start: int, length: int) -> bytes:
            rig.gets.append((key, start, length))
            return await real_range(store, key, start, length)

        monkeypatch.setattr(engine_module.objectstore, "get_range_upto", upto)
        monkeypatch.setattr(engine_module.objectstore, "get_range", exact)

        async def go() -> None:
            for s in range(6):
                await rig.commit([(p, [mk_random(f"s{s}p{p}-", 100, 100)]) for p in range(6)])
            got = []
            for s in range(6):  # one object per fetch
                parts = [FetchPart(topic.topic_id, 0, 100 * s, 1)]
                _resp, payload = await engine.fetch(FetchRequest(1, 0, 0, MiB, 0, parts))
                got.extend(v.split(b".")[0] for v in values(payload))
            assert got == [f"s{s}p0-{i}".encode() for s in range(6) for i in range(100)]
            windows = [g for g in rig.gets if g[1:] == (0, MiB)]
            alone = [g for g in rig.gets if g[1:] != (0, MiB)]
            assert 1 <= len(windows) < 6 and len(windows) + len(alone) == 6
            assert engine.window_skipped == len(alone)
            for key, start, length in alone:  # exactly partition 0's block
                (loc,) = [
                    b for b in meta.find_blocks(topic.topic_id, 0, 0, 10) if b.segment_key == key
                ]
                assert (start, length) == (loc.byte_offset, loc.byte_length)

        asyncio.run(go())
    finally:
        meta.close()


def test_without_window_budget_reads_are_single_blocks_and_nothing_extra(rig: Rig) -> None:
    """With the budget spent (here: none), a fetch loads no block ahead and reads each cold
    block alone, once."""

    async def go() -> None:
        for s in range(4):
            await rig.commit([(p, [mk(f"s{s}p{p}-", 3)]) for p in range(6)])
        rig.engine.ahead_limit = 0
        _resp, payload = await rig.engine.fetch(fetch_all(rig, range(1)))
        assert values(payload) == [f"s{s}p0-{i}".encode() for s in range(4) for i in range(3)]
        assert rig.engine.window_gets == 0 and len(rig.gets) == 4
        blocks = rig.meta.find_blocks(rig.topic_id, 0, 0, 10)
        assert rig.gets == [(b.segment_key, b.byte_offset, b.byte_length) for b in blocks]

    asyncio.run(go())


def test_get_range_upto_returns_what_the_object_has(tmp_path: pathlib.Path) -> None:
    """The window read of both store kinds: up to the end of the object; a start past the end
    is an error."""

    async def go() -> None:
        for url in ("memory://", (tmp_path / "o").as_uri()):
            store = objectstore.open_object_store(url)
            await objectstore.put(store, "k", b"0123456789")
            assert await objectstore.get_range_upto(store, "k", 2, 5) == b"23456"
            assert await objectstore.get_range_upto(store, "k", 4, 100) == b"456789"
            with pytest.raises(Exception, match="ends before|range|Range"):
                await objectstore.get_range_upto(store, "k", 10, 5)

    asyncio.run(go())


def test_struct_layout_matches_the_segment_module() -> None:
    """readplan parses block headers itself: its layout must be segment.py's."""
    obj, entries = segment([(0, [mk("a", 2)])])
    codec, raw_len, stored_len, _sum = struct.unpack_from("<B3xIIQ", obj, entries[0].offset)
    assert codec in (0, 1) and raw_len > 0 and stored_len == entries[0].length - 20
