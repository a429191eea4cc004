"""ReadEngine: committed segments in (metadata + object store + cache), fetch responses out.

Every test drives the async engine with `asyncio.run`; long-poll tests synchronise on the
engine's state with event-loop yields, never with timed sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import pathlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kafka.record.default_records import DefaultRecordBatchBuilder

from metadata import BatchRef, CommitBlock, MetadataStore
from metadata.commit_feed import CommitNotice, NoticeBlock
from reader import engine as engine_module
from reader.cache import BlockCache
from reader.engine import ReadEngine
from streamhouse import objectstore
from streamhouse.errors import RING_OK, ErrorCode
from streamhouse.frames import (
    FORMAT_KAFKA,
    FORMAT_RECORDS,
    CommittedBlock,
    CommittedSegment,
    FetchPart,
    FetchPartResult,
    FetchRequest,
    FetchResponse,
)
from streamhouse.proto import streamhouse_pb2 as pb
from streamhouse.record_wire import consume_response_tail, render_records
from streamhouse.recordbatch import InvalidBatchError, decode_records, encode_batch, scan_batches
from streamhouse.segment import SegmentWriter
from streamhouse.segment_keys import SegmentKeys

_keys = itertools.count()


def mk(values: list[bytes], ts: int = 1_000, **producer: int) -> bytes:
    """A v2 batch with one record per value (null keys, no headers)."""
    n = len(values)
    return encode_batch([None] * n, list(values), [[] for _ in range(n)], [ts] * n, **producer)


def vals(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(n)]


@dataclass
class Harness:
    """A ReadEngine over a real MetadataStore, an obstore store and a BlockCache."""

    meta: MetadataStore
    store: Any
    cache: BlockCache
    engine: ReadEngine
    topic_id: int
    range_gets: list[tuple[str, int, int]] = field(default_factory=list)

    async def commit(
        self,
        blocks: list[tuple[int, list[bytes]]],
        *,
        put: bool = True,
        feed: bool = False,
        key: str | None = None,
    ) -> tuple[CommittedSegment, bytes]:
        """Writes one segment of (partition, batches) blocks, PUTs it, commits it to metadata
        (as the uploader does) and optionally hands it to on_committed."""
        writer = SegmentWriter()
        infos = []
        for partition, batches in blocks:
            info = [scan_batches(b)[0] for b in batches]
            infos.append(info)
            writer.add_block(
                self.topic_id,
                partition,
                batches,
                len(batches),
                sum(i.record_count for i in info),
                min(i.max_timestamp for i in info),
                max(i.max_timestamp for i in info),
            )
        obj, entries = writer.finish()
        key = key or f"segments/{next(_keys):020d}.seg"
        if put:
            await objectstore.put(self.store, key, obj)
        commit_blocks = [
            CommitBlock(
                e.topic_id,
                e.partition,
                e.offset,
                e.length,
                e.max_timestamp,
                [
                    BatchRef(i.record_count, i.producer_id, i.producer_epoch, i.base_sequence)
                    for i in info
                ],
            )
            for e, info in zip(entries, infos, strict=True)
        ]
        results = self.meta.commit_segment(key, len(obj), commit_blocks)
        committed = []
        for block, block_results in zip(commit_blocks, results, strict=True):
            accepted = [
                (r.base_offset, ref.record_count)
                for r, ref in zip(block_results, block.batches, strict=True)
                if r.error is None and not r.duplicate
            ]
            skipped = tuple(
                i for i, r in enumerate(block_results) if r.error is not None or r.duplicate
            )
            if accepted:
                committed.append(
                    CommittedBlock(
                        block.topic_id,
                        block.partition,
                        block.byte_offset,
                        block.byte_length,
                        accepted[0][0],
                        accepted[-1][0] + accepted[-1][1],
                        skipped,
                    )
                )
        segment = CommittedSegment(key, committed)
        if feed:
            self.engine.on_committed(segment, obj)
        return segment, obj


@pytest.fixture(params=["memory", "file"])
def h(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    """A harness on a 3-partition topic; range GETs are recorded in `range_gets`."""
    meta = MetadataStore(tmp_path / "meta.sqlite", synchronous="NORMAL")
    topic = meta.create_topic("events", 3)
    url = "memory://" if request.param == "memory" else (tmp_path / "objects").as_uri()
    store = objectstore.open_object_store(url)
    cache = BlockCache(64 << 20)
    harness = Harness(meta, store, cache, ReadEngine(meta, store, cache, 0), topic.topic_id)
    real_get_range = objectstore.get_range

    async def recording_get_range(store: Any, key: str, start: int, length: int) -> bytes:
        harness.range_gets.append((key, start, length))
        return await real_get_range(store, key, start, length)

    monkeypatch.setattr(engine_module.objectstore, "get_range", recording_get_range)
    yield harness
    meta.close()


def request(
    h: Harness,
    offset: int,
    *,
    partition: int = 0,
    fmt: int = FORMAT_KAFKA,
    max_bytes: int = 1 << 20,
    part_max_bytes: int = 1 << 20,
    max_wait_ms: int = 0,
    min_bytes: int = 0,
    max_records: int = 0,
    topic_id: int | None = None,
) -> FetchRequest:
    tid = h.topic_id if topic_id is None else topic_id
    part = FetchPart(tid, partition, offset, part_max_bytes)
    return FetchRequest(1, max_wait_ms, min_bytes, max_bytes, fmt, [part], max_records)


def kafka_batches(payload: bytes) -> list[tuple[int, list[bytes | None]]]:
    """(patched baseOffset, record values) per batch; CRCs are verified by scan_batches."""
    out = []
    for info in scan_batches(payload):
        (base,) = struct.unpack_from(">q", payload, info.position)
        batch = payload[info.position : info.position + info.length]
        out.append((base, [r[3] for r in decode_records(batch)]))
    return out


def consumed(payload: bytes) -> list[tuple[int, bytes]]:
    """(offset, value) of a FORMAT_RECORDS payload parsed as a ConsumeResponse."""
    return [(r.offset, r.value) for r in pb.ConsumeResponse.FromString(payload).records]


def fetch(h: Harness, req: FetchRequest) -> tuple[FetchResponse, bytes]:
    return asyncio.run(h.engine.fetch(req))


async def until(cond: Callable[[], bool], rounds: int = 1_000) -> None:
    """Yields to the event loop until `cond()` holds (no timed waits)."""
    for _ in range(rounds):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


def seed(h: Harness) -> list[bytes]:
    """Two segments on partition 0: [a0 a1 a2] [b0 b1] in one, [c0 c1 c2 c3] in the next
    (offsets 0-2, 3-4, 5-8), plus noise on partition 1."""
    a, b, c = mk(vals("a", 3)), mk(vals("b", 2)), mk(vals("c", 4))

    async def go() -> None:
        await h.commit([(0, [a, b]), (1, [mk(vals("x", 5))])])
        await h.commit([(0, [c])])

    asyncio.run(go())
    return [a, b, c]


# ----------------------------------------------------------------------------- kafka format


def test_kafka_fetch_patches_base_offsets(h: Harness) -> None:
    """Stored batches come back verbatim (CRC valid) with baseOffset set to their offsets."""
    a, b, c = seed(h)
    resp, payload = fetch(h, request(h, 0))
    (part,) = resp.parts
    assert part == FetchPartResult(h.topic_id, 0, RING_OK, 9, 0, len(payload), 9, 9, 9)
    assert kafka_batches(payload) == [(0, vals("a", 3)), (3, vals("b", 2)), (5, vals("c", 4))]
    assert len(payload) == len(a) + len(b) + len(c)
    # Only baseOffset differs from what the producer sent.
    assert payload[8 : len(a)] == a[8:]


def test_partitions_are_independent(h: Harness) -> None:
    """Partition 1's batches get offsets from 0 in its own log."""
    seed(h)
    resp, payload = fetch(h, request(h, 0, partition=1))
    assert kafka_batches(payload) == [(0, vals("x", 5))]
    assert resp.parts[0].high_watermark == 5


@pytest.mark.parametrize("offset", [3, 4])
def test_kafka_fetch_inside_a_batch_returns_the_whole_batch(h: Harness, offset: int) -> None:
    """Starting inside a batch returns that whole batch (from its base offset)."""
    seed(h)
    resp, payload = fetch(h, request(h, offset))
    assert kafka_batches(payload) == [(3, vals("b", 2)), (5, vals("c", 4))]
    assert resp.parts[0].next_offset == 9
    assert resp.parts[0].record_count == 6


def test_kafka_fetch_from_the_second_segment(h: Harness) -> None:
    """An offset inside a later segment skips the earlier blocks entirely."""
    seed(h)
    _resp, payload = fetch(h, request(h, 7))
    assert kafka_batches(payload) == [(5, vals("c", 4))]


def test_kafka_max_bytes_returns_at_least_one_batch(h: Harness) -> None:
    """max_bytes smaller than the first batch still returns that one batch, no more."""
    a, _b, _c = seed(h)
    resp, payload = fetch(h, request(h, 0, part_max_bytes=10))
    assert kafka_batches(payload) == [(0, vals("a", 3))]
    assert resp.parts[0].next_offset == 3
    assert resp.parts[0].length == len(a)
    resp, payload = fetch(h, request(h, 0, max_bytes=1))
    assert kafka_batches(payload) == [(0, vals("a", 3))]


def test_kafka_max_bytes_stops_at_batch_boundary(h: Harness) -> None:
    """Batches are added while they fit; the partition and request limits both count."""
    a, b, c = seed(h)
    for limit in (len(a) + len(b), len(a) + len(b) + len(c) - 1):
        resp, payload = fetch(h, request(h, 0, part_max_bytes=limit))
        assert [base for base, _ in kafka_batches(payload)] == [0, 3]
        assert resp.parts[0].next_offset == 5
        resp, payload = fetch(h, request(h, 0, max_bytes=limit))
        assert [base for base, _ in kafka_batches(payload)] == [0, 3]
    _resp, payload = fetch(h, request(h, 0, max_bytes=len(a) + len(b) + len(c)))
    assert [base for base, _ in kafka_batches(payload)] == [0, 3, 5]


def test_request_max_bytes_bounds_a_multi_partition_response(h: Harness) -> None:
    """Once one batch is in the response, the request's max_bytes bounds the whole response:
    only the first non-empty partition may exceed it (Kafka's FetchRequest max_bytes)."""
    p0, p1 = mk(vals("p0-", 5)), mk(vals("p1-", 5))

    async def go() -> tuple[FetchResponse, bytes]:
        await h.commit([(0, [p0]), (1, [p1])])
        parts = [FetchPart(h.topic_id, 0, 0, 1 << 20), FetchPart(h.topic_id, 1, 0, 1 << 20)]
        max_bytes = len(p0) + 10
        return await h.engine.fetch(FetchRequest(1, 0, 0, max_bytes, FORMAT_KAFKA, parts))

    resp, payload = asyncio.run(go())
    assert resp.parts[0].length == len(p0)
    total, max_bytes = len(payload), len(p0) + 10
    assert total <= max_bytes, (
        f"response of {total} bytes for max_bytes {max_bytes}: partition 1 still "
        f"returned {resp.parts[1].length} bytes"
    )


def test_fetch_at_high_watermark_is_empty(h: Harness) -> None:
    """Offset == high watermark is valid and returns nothing (no wait when max_wait_ms is 0)."""
    seed(h)
    resp, payload = fetch(h, request(h, 9))
    assert payload == b""
    assert resp.parts[0] == FetchPartResult(h.topic_id, 0, RING_OK, 9, 0, 0, 9, 0, 9)


def test_fetch_of_an_empty_partition(h: Harness) -> None:
    resp, payload = fetch(h, request(h, 0, partition=2))
    assert payload == b""
    assert resp.parts[0] == FetchPartResult(h.topic_id, 2, RING_OK, 0, 0, 0, 0, 0, 0)


# ----------------------------------------------------------------------------- errors


def test_offset_above_high_watermark_is_out_of_range(h: Harness) -> None:
    seed(h)
    resp, payload = fetch(h, request(h, 10))
    assert payload == b""
    assert resp.parts[0].error.code == ErrorCode.OFFSET_OUT_OF_RANGE.kafka_code
    assert "0..9" in resp.parts[0].error.message
    assert resp.parts[0] == FetchPartResult(h.topic_id, 0, resp.parts[0].error, 9, 0, 0, 10, 0)


def test_offset_below_log_start_is_out_of_range(h: Harness) -> None:
    """After the log start moves, older offsets are out of range; the start itself reads."""
    seed(h)
    h.meta.set_log_start_offset(h.topic_id, 0, 5)
    resp, payload = fetch(h, request(h, 4))
    assert payload == b""
    assert resp.parts[0].error.code == ErrorCode.OFFSET_OUT_OF_RANGE.kafka_code
    assert (resp.parts[0].high_watermark, resp.parts[0].log_start_offset) == (9, 5)
    resp, payload = fetch(h, request(h, 5))
    assert resp.parts[0].error == RING_OK
    assert resp.parts[0].log_start_offset == 5
    assert kafka_batches(payload) == [(5, vals("c", 4))]


def test_negative_offset_is_out_of_range(h: Harness) -> None:
    seed(h)
    resp, _payload = fetch(h, request(h, -1))
    assert resp.parts[0].error.code == ErrorCode.OFFSET_OUT_OF_RANGE.kafka_code


@pytest.mark.parametrize(("topic_delta", "partition"), [(1000, 0), (0, 3), (0, -1)])
def test_unknown_topic_or_partition(h: Harness, topic_delta: int, partition: int) -> None:
    """An unknown topic id or partition number is UNKNOWN_TOPIC_OR_PARTITION, hwm/lso -1."""
    req = request(h, 0, partition=partition, topic_id=h.topic_id + topic_delta)
    resp, payload = fetch(h, req)
    assert payload == b""
    (part,) = resp.parts
    assert (part.error.code, part.high_watermark, part.log_start_offset) == (
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION.kafka_code,
        -1,
        -1,
    )


def test_error_part_does_not_wait(h: Harness) -> None:
    """A fetch with an error answers at once even with a long max_wait_ms."""

    async def go() -> tuple[FetchResponse, bytes]:
        return await asyncio.wait_for(
            h.engine.fetch(request(h, 0, topic_id=999, max_wait_ms=60_000)), timeout=10
        )

    resp, _payload = asyncio.run(go())
    assert resp.parts[0].error.code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION.kafka_code


def test_missing_object_is_a_storage_error(h: Harness) -> None:
    """A committed block whose object cannot be read (not cached) is KAFKA_STORAGE_ERROR."""

    async def go() -> tuple[FetchResponse, bytes]:
        await h.commit([(0, [mk(vals("a", 2))])], put=False)
        return await h.engine.fetch(request(h, 0))

    resp, payload = asyncio.run(go())
    assert payload == b""
    assert resp.parts[0].error.code == ErrorCode.KAFKA_STORAGE_ERROR.kafka_code
    assert resp.parts[0].high_watermark == 2


# ----------------------------------------------------------------------------- records format


def test_records_format_from_offset_zero(h: Harness) -> None:
    """FORMAT_RECORDS renders every record with its offset; the tail completes the message."""
    seed(h)
    resp, payload = fetch(h, request(h, 0, fmt=FORMAT_RECORDS))
    expected = list(enumerate(vals("a", 3) + vals("b", 2) + vals("c", 4)))
    assert consumed(payload) == expected
    part = resp.parts[0]
    assert (part.length, part.next_offset, part.record_count) == (len(payload), 9, 9)
    full = pb.ConsumeResponse.FromString(payload + consume_response_tail(9, 0, 9))
    assert (full.high_watermark, full.next_offset, len(full.records)) == (9, 9, 9)


@pytest.mark.parametrize("offset", [1, 2, 4, 6])
def test_records_format_inside_a_batch_drops_earlier_records(h: Harness, offset: int) -> None:
    """Starting inside a batch returns only the records from that offset on."""
    seed(h)
    resp, payload = fetch(h, request(h, offset, fmt=FORMAT_RECORDS))
    everything = list(enumerate(vals("a", 3) + vals("b", 2) + vals("c", 4)))
    assert consumed(payload) == everything[offset:]
    assert resp.parts[0].record_count == 9 - offset
    assert resp.parts[0].next_offset == 9


@pytest.mark.parametrize(
    ("offset", "limit", "next_offset"),
    [(0, 1, 1), (0, 3, 3), (0, 4, 4), (1, 2, 3), (4, 3, 7), (6, 100, 9), (2, 1, 3)],
)
def test_records_format_max_records(h: Harness, offset: int, limit: int, next_offset: int) -> None:
    """max_records caps the records, even mid-batch; next_offset resumes right after."""
    seed(h)
    everything = list(enumerate(vals("a", 3) + vals("b", 2) + vals("c", 4)))
    resp, payload = fetch(h, request(h, offset, fmt=FORMAT_RECORDS, max_records=limit))
    assert consumed(payload) == everything[offset:next_offset]
    assert resp.parts[0].next_offset == next_offset
    assert resp.parts[0].record_count == next_offset - offset


def test_records_format_paging_reads_everything_once(h: Harness) -> None:
    """Following next_offset with a small max_records visits every record exactly once."""
    seed(h)
    got: list[tuple[int, bytes]] = []
    offset = 0
    while offset < 9:
        resp, payload = fetch(h, request(h, offset, fmt=FORMAT_RECORDS, max_records=2))
        got += consumed(payload)
        assert resp.parts[0].next_offset > offset
        offset = resp.parts[0].next_offset
    assert got == list(enumerate(vals("a", 3) + vals("b", 2) + vals("c", 4)))


def test_records_format_max_bytes_returns_at_least_one_batch(h: Harness) -> None:
    """A tiny max_bytes still returns the first batch's records."""
    seed(h)
    resp, payload = fetch(h, request(h, 0, fmt=FORMAT_RECORDS, part_max_bytes=1))
    assert consumed(payload) == list(enumerate(vals("a", 3)))
    assert resp.parts[0].next_offset == 3


def test_records_format_respects_max_bytes(h: Harness) -> None:
    """When more than one batch is returned, the rendered records fit in max_bytes.

    Rendered records can be larger than the stored batch (absolute timestamps and offsets
    instead of deltas), so the limit must be checked against what is sent."""
    batches = [mk(vals(f"{i}-", 50), ts=1_700_000_000_000) for i in range(3)]

    async def go() -> tuple[FetchResponse, bytes, int, int]:
        await h.commit([(0, batches)])
        stored = len(batches[0])
        rendered = len(render_records(decode_records(batches[0]), 0, 0, 1 << 30)[0])
        resp, payload = await h.engine.fetch(
            request(h, 0, fmt=FORMAT_RECORDS, part_max_bytes=stored + rendered)
        )
        return resp, payload, stored, rendered

    resp, payload, stored, rendered = asyncio.run(go())
    assert rendered > stored  # the case this test is about
    assert resp.parts[0].record_count == 50  # the second batch's records would not fit
    size, max_bytes = len(payload), stored + rendered
    assert size <= max_bytes, f"{size} bytes of records for max_bytes {max_bytes}"


# ----------------------------------------------------------------------------- duplicates


def test_skipped_duplicate_batches_are_not_returned(h: Harness) -> None:
    """A retried idempotent batch committed again is skipped: readers see it once, and the
    batches around it keep consecutive offsets."""
    first = mk(vals("first", 2), producer_id=7, producer_epoch=0, base_sequence=0)
    retry = mk(vals("first", 2), producer_id=7, producer_epoch=0, base_sequence=0)
    second = mk(vals("second", 3), producer_id=7, producer_epoch=0, base_sequence=2)
    plain = mk(vals("plain", 1))

    async def go() -> CommittedSegment:
        await h.commit([(0, [first])])
        segment, _obj = await h.commit([(0, [retry, second, plain])])
        return segment

    segment = asyncio.run(go())
    assert segment.blocks[0].skipped_batches == (0,)
    assert h.meta.find_blocks(h.topic_id, 0, 2)[0].skipped_batches == (0,)

    resp, payload = fetch(h, request(h, 0))
    assert kafka_batches(payload) == [
        (0, vals("first", 2)),
        (2, vals("second", 3)),
        (5, vals("plain", 1)),
    ]
    assert resp.parts[0].next_offset == 6
    resp, payload = fetch(h, request(h, 2, fmt=FORMAT_RECORDS))
    assert consumed(payload) == [(2, b"second0"), (3, b"second1"), (4, b"second2"), (5, b"plain0")]


# ----------------------------------------------------------------------------- cache


def test_cold_read_uses_one_range_get_then_the_cache(h: Harness) -> None:
    """A block not in the cache is read with one range GET of exactly its bytes; later
    fetches are served from the cache even when the object is gone."""

    async def go() -> None:
        segment, obj = await h.commit([(0, [mk(vals("a", 3))]), (1, [mk(vals("b", 2))])])
        block = segment.blocks[0]
        resp, payload = await h.engine.fetch(request(h, 0))
        assert kafka_batches(payload) == [(0, vals("a", 3))]
        assert h.range_gets == [(segment.key, block.byte_offset, block.byte_length)]
        assert (segment.key, block.byte_offset) in h.cache
        assert resp.parts[0].error == RING_OK

        await objectstore.delete(h.store, segment.key)
        _resp, again = await h.engine.fetch(request(h, 1, fmt=FORMAT_RECORDS))
        assert consumed(again) == [(1, b"a1"), (2, b"a2")]
        assert len(h.range_gets) == 1
        assert len(obj) > block.byte_length  # the whole object was never fetched

    asyncio.run(go())


def test_concurrent_cold_reads_share_one_range_get(h: Harness) -> None:
    """Two fetches missing the same block at once cause a single range GET."""

    async def go() -> None:
        await h.commit([(0, [mk(vals("a", 3))])])
        (r1, p1), (r2, p2) = await asyncio.gather(
            h.engine.fetch(request(h, 0)), h.engine.fetch(request(h, 1))
        )
        assert p1 == p2
        assert len(h.range_gets) == 1

    asyncio.run(go())


def test_on_committed_feeds_the_cache(h: Harness) -> None:
    """A segment handed to on_committed is served without touching the object store."""

    async def go() -> None:
        segment, _obj = await h.commit(
            [(0, [mk(vals("a", 2)), mk(vals("b", 1))]), (1, [mk(vals("x", 4))])],
            put=False,
            feed=True,
        )
        assert all((segment.key, b.byte_offset) in h.cache for b in segment.blocks)
        _r0, p0 = await h.engine.fetch(request(h, 0))
        _r1, p1 = await h.engine.fetch(request(h, 1, partition=1, fmt=FORMAT_RECORDS))
        assert kafka_batches(p0) == [(0, vals("a", 2)), (2, vals("b", 1))]
        assert consumed(p1) == [(1, b"x1"), (2, b"x2"), (3, b"x3")]
        assert h.range_gets == []

    asyncio.run(go())


def test_cold_read_prefetches_next_blocks(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a cold read the next blocks of the partition are loaded in the background."""
    meta = MetadataStore(tmp_path / "meta.sqlite", synchronous="NORMAL")
    try:
        topic = meta.create_topic("events", 1)
        store = objectstore.open_object_store("memory://")
        cache = BlockCache(64 << 20)
        h = Harness(meta, store, cache, ReadEngine(meta, store, cache, 2), topic.topic_id)
        first = mk(vals("a", 2))

        async def go() -> None:
            segments = [
                (await h.commit([(0, [first if i == 0 else mk(vals(f"s{i}-", 2))])]))[0]
                for i in range(4)
            ]
            # Only the first batch fits; blocks 2 and 3 are prefetched after it.
            resp, _payload = await h.engine.fetch(request(h, 0, part_max_bytes=len(first)))
            assert resp.parts[0].next_offset == 2
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.gather(*others)
            cached = [(s.key, s.blocks[0].byte_offset) in h.cache for s in segments]
            assert cached == [True, True, True, False]

        asyncio.run(go())
    finally:
        meta.close()


# ----------------------------------------------------------------------------- long poll


def test_long_poll_is_woken_by_on_committed(h: Harness) -> None:
    """A fetch waiting at the tail returns as soon as a commit for its partition arrives,
    not when max_wait_ms runs out; commits on other partitions do not wake it."""

    async def go() -> None:
        await h.commit([(0, [mk(vals("a", 2))])], feed=True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        task = asyncio.ensure_future(h.engine.fetch(request(h, 2, max_wait_ms=60_000)))
        await until(lambda: (h.topic_id, 0) in h.engine._waiters)
        assert not task.done()

        await h.commit([(1, [mk(vals("other", 1))])], feed=True)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done()

        await h.commit([(0, [mk(vals("b", 3))])], feed=True)
        resp, payload = await asyncio.wait_for(task, timeout=10)
        assert loop.time() - started < 30
        assert kafka_batches(payload) == [(2, vals("b", 3))]
        assert resp.parts[0].high_watermark == 5
        assert h.engine._waiters == {}

    asyncio.run(go())


def test_long_poll_waits_for_min_bytes(h: Harness) -> None:
    """With min_bytes, a commit too small to satisfy it does not end the wait; the next does."""
    small, more = mk(vals("a", 1)), mk(vals("b", 4))

    async def go() -> None:
        tp = (h.topic_id, 0)
        req = request(h, 0, max_wait_ms=60_000, min_bytes=len(small) + 1)
        task = asyncio.ensure_future(h.engine.fetch(req))
        await until(lambda: tp in h.engine._waiters)
        first_wait = next(iter(h.engine._waiters[tp]))

        await h.commit([(0, [small])], feed=True)
        # The fetch wakes, finds too few bytes and waits again on a new future.
        await until(lambda: tp in h.engine._waiters and first_wait not in h.engine._waiters[tp])
        assert not task.done()

        await h.commit([(0, [more])], feed=True)
        resp, payload = await asyncio.wait_for(task, timeout=10)
        assert kafka_batches(payload) == [(0, vals("a", 1)), (1, vals("b", 4))]
        assert resp.parts[0].length == len(small) + len(more)

    asyncio.run(go())


def test_long_poll_returns_empty_after_max_wait(h: Harness) -> None:
    """With nothing committed, the fetch answers empty once max_wait_ms has passed."""

    async def go() -> None:
        await h.commit([(0, [mk(vals("a", 2))])], feed=True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        resp, payload = await asyncio.wait_for(
            h.engine.fetch(request(h, 2, max_wait_ms=100)), timeout=10
        )
        elapsed = loop.time() - started
        assert payload == b""
        assert resp.parts[0] == FetchPartResult(h.topic_id, 0, RING_OK, 2, 0, 0, 2, 0, 2)
        assert elapsed >= 0.09
        assert h.engine._waiters == {}

    asyncio.run(go())


def test_available_data_returns_without_waiting(h: Harness) -> None:
    """A fetch that can be answered at once does not wait for max_wait_ms."""
    seed(h)

    async def go() -> None:
        resp, payload = await asyncio.wait_for(
            h.engine.fetch(request(h, 0, max_wait_ms=60_000)), timeout=10
        )
        assert resp.parts[0].record_count == 9
        assert payload

    asyncio.run(go())


def test_records_format_bounds_decompression_by_the_engine_setting(h: Harness) -> None:
    """A stored gzip batch inflating past `max_inflated` (the reader sets max_batch_bytes) is
    refused when rendered, not decompressed in full; Kafka-format fetches pass it through."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=1,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    builder.append(0, timestamp=1_000, key=None, value=bytes(1 << 20), headers=[])
    asyncio.run(h.commit([(0, [bytes(builder.build())])]))
    h.engine.max_inflated = 256 << 10
    with pytest.raises(InvalidBatchError, match="inflate past 262144 bytes"):
        fetch(h, request(h, 0, fmt=FORMAT_RECORDS, part_max_bytes=2 << 20, max_bytes=2 << 20))
    resp, payload = fetch(h, request(h, 0, part_max_bytes=2 << 20, max_bytes=2 << 20))
    assert resp.parts[0].record_count == 1
    h.engine.max_inflated = 2 << 20
    _resp, payload = fetch(
        h, request(h, 0, fmt=FORMAT_RECORDS, part_max_bytes=4 << 20, max_bytes=4 << 20)
    )
    assert consumed(payload) == [(0, bytes(1 << 20))]


# ----------------------------------------------------------------------------- commit notices


async def eventually(cond: Callable[[], bool], timeout: float = 30) -> None:
    """Polls `cond()` until it holds (metadata reads run on worker threads, so a fetch
    reaches its wait after an unknown number of loop turns); fails after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        await asyncio.sleep(0.001)


def notice_of(segment: CommittedSegment) -> CommitNotice:
    """The commit notification PostgreSQL would deliver for `segment`."""
    return CommitNotice(
        segment.key,
        tuple(
            NoticeBlock(b.topic_id, b.partition, b.byte_offset, b.byte_length, b.end_offset)
            for b in segment.blocks
        ),
    )


def test_notice_loads_the_block_once_and_wakes_every_waiter(h: Harness) -> None:
    """Another agent's commit: N fetches waiting on the partition cost one range GET, the
    block lands in the cache, and every waiter returns the new data."""
    h.engine.own_commit_grace_s = 0

    async def go() -> None:
        waiters = [
            asyncio.ensure_future(h.engine.fetch(request(h, 0, max_wait_ms=60_000)))
            for _ in range(5)
        ]
        await eventually(lambda: h.engine.waiting == 5)
        segment, _obj = await h.commit([(0, [mk(vals("a", 3))]), (1, [mk(vals("x", 1))])])
        h.engine.on_notice(notice_of(segment))
        results = await asyncio.wait_for(asyncio.gather(*waiters), timeout=30)
        for _resp, payload in results:
            assert kafka_batches(payload) == [(0, vals("a", 3))]
        b0 = segment.blocks[0]
        assert h.range_gets == [(segment.key, b0.byte_offset, b0.byte_length)]
        assert h.engine.feed_gets == 1
        assert (segment.key, segment.blocks[0].byte_offset) in h.cache
        # Partition 1 had no waiter: its block was not loaded.
        assert (segment.key, segment.blocks[1].byte_offset) not in h.cache

    asyncio.run(go())


def test_notice_of_an_own_commit_after_its_ring_frame_is_ignored(h: Harness) -> None:
    """The ring delivered the segment first: its notice neither GETs nor wakes anyone."""

    async def go() -> None:
        first, _ = await h.commit([(0, [mk(vals("a", 2))])], put=False, feed=True)
        task = asyncio.ensure_future(h.engine.fetch(request(h, 2, max_wait_ms=60_000)))
        await eventually(lambda: h.engine.waiting == 1)
        h.engine.on_notice(notice_of(first))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done() and h.engine.waiting == 1
        second, _ = await h.commit([(0, [mk(vals("b", 1))])], put=False, feed=True)
        h.engine.on_notice(notice_of(second))  # the double wake: harmless
        _resp, payload = await asyncio.wait_for(task, timeout=30)
        assert kafka_batches(payload) == [(2, vals("b", 1))]
        assert h.range_gets == [] and h.engine.feed_gets == 0

    asyncio.run(go())


def test_notice_of_an_own_commit_before_its_ring_frame_waits_for_the_ring(h: Harness) -> None:
    """The notice overtook the ring frame: the block is taken from the ring when it comes
    within the grace (no GET, objects were never PUT), and the waiter gets it."""
    h.engine.own_commit_grace_s = 60.0

    async def go() -> None:
        task = asyncio.ensure_future(h.engine.fetch(request(h, 0, max_wait_ms=60_000)))
        await eventually(lambda: h.engine.waiting == 1)
        segment, obj = await h.commit([(0, [mk(vals("a", 2))])], put=False)
        h.engine.on_notice(notice_of(segment))
        await eventually(lambda: (segment.key, segment.blocks[0].byte_offset) in h.engine._arrivals)
        h.engine.on_committed(segment, obj)
        _resp, payload = await asyncio.wait_for(task, timeout=30)
        assert kafka_batches(payload) == [(0, vals("a", 2))]
        assert h.range_gets == []
        assert (h.engine.feed_gets, h.engine.feed_cached) == (0, 1)
        assert h.engine._arrivals == {}

    asyncio.run(go())


def test_notice_without_blocks_and_a_gap_wake_every_waiter(h: Harness) -> None:
    """`*` (the block list did not fit) and wake_all (the feed had a gap) wake all waiters:
    each re-reads the metadata and returns what was committed meanwhile."""
    h.engine.own_commit_grace_s = 0

    async def go() -> None:
        offsets = [0, 0]
        for wake in ("star", "gap"):
            p0 = asyncio.ensure_future(h.engine.fetch(request(h, offsets[0], max_wait_ms=60_000)))
            p1 = asyncio.ensure_future(
                h.engine.fetch(request(h, offsets[1], partition=1, max_wait_ms=60_000))
            )
            await eventually(lambda: h.engine.waiting == 2)
            segment, _obj = await h.commit([(0, [mk(vals(wake, 1))]), (1, [mk(vals(wake, 2))])])
            if wake == "star":
                h.engine.on_notice(CommitNotice(segment.key, None))
            else:
                h.engine.wake_all()
            (_r0, d0), (_r1, d1) = await asyncio.wait_for(asyncio.gather(p0, p1), timeout=30)
            assert consumed_values(d0) == vals(wake, 1)
            assert consumed_values(d1) == vals(wake, 2)
            offsets = [offsets[0] + 1, offsets[1] + 2]
        assert h.engine._waiters == {}

    asyncio.run(go())


def test_notice_for_a_partition_nobody_waits_on_loads_nothing(h: Harness) -> None:
    h.engine.own_commit_grace_s = 0

    async def go() -> None:
        segment, _obj = await h.commit([(0, [mk(vals("a", 1))])])
        h.engine.on_notice(notice_of(segment))
        assert h.engine._loads == {}
        for _ in range(20):
            await asyncio.sleep(0)
        assert h.range_gets == [] and len(h.cache) == 0

    asyncio.run(go())


def consumed_values(payload: bytes) -> list[bytes]:
    """Record values of a Kafka-format payload."""
    return [v for _base, values in kafka_batches(payload) for v in values if v is not None]


def test_notifying_backends_are_learned_as_own_or_foreign(h: Harness) -> None:
    """A backend whose notice outlived the grace without a ring frame is another agent's: its
    next notices are loaded at once (a 60 s grace would otherwise hold the fetch). One whose
    segment came over the ring is this agent's: its notices wait for the ring, never GET.
    A pid judged foreign whose segment then comes over the ring is own again (pid reuse)."""

    async def waiting_fetch(offset: int) -> asyncio.Future[tuple[FetchResponse, bytes]]:
        task = asyncio.ensure_future(h.engine.fetch(request(h, offset, max_wait_ms=60_000)))
        await eventually(lambda: h.engine.waiting == 1)
        return task

    async def go() -> None:
        foreign, own = 77, 88
        # Another agent's first commit: waits out a short grace, then GETs.
        h.engine.own_commit_grace_s = 0.01
        task = await waiting_fetch(0)
        s1, _ = await h.commit([(0, [mk(vals("a", 1))])])
        h.engine.on_notice(notice_of(s1)._replace(pid=foreign))
        _r, payload = await asyncio.wait_for(task, timeout=30)
        assert consumed_values(payload) == vals("a", 1)
        assert h.engine._pid_is_own[foreign] is False and h.engine.feed_gets == 1

        # Its next commit is loaded at once, however long the grace.
        h.engine.own_commit_grace_s = 60.0
        task = await waiting_fetch(1)
        s2, _ = await h.commit([(0, [mk(vals("b", 1))])])
        h.engine.on_notice(notice_of(s2)._replace(pid=foreign))
        _r, payload = await asyncio.wait_for(task, timeout=30)
        assert consumed_values(payload) == vals("b", 1) and h.engine.feed_gets == 2

        # This agent's commit, ring first: its backend is learned as own...
        s3, obj3 = await h.commit([(0, [mk(vals("c", 1))])], put=False, feed=True)
        h.engine.on_notice(notice_of(s3)._replace(pid=own))
        assert h.engine._pid_is_own[own] is True
        # ...and its next notice, ahead of the ring, waits for the ring: no GET.
        task = await waiting_fetch(3)
        s4, obj4 = await h.commit([(0, [mk(vals("d", 1))])], put=False)
        h.engine.on_notice(notice_of(s4)._replace(pid=own))
        h.engine.on_committed(s4, obj4)
        _r, payload = await asyncio.wait_for(task, timeout=30)
        assert consumed_values(payload) == vals("d", 1)
        assert h.engine.feed_gets == 2 and h.range_gets == [
            (s.key, s.blocks[0].byte_offset, s.blocks[0].byte_length) for s in (s1, s2)
        ]

        # The foreign pid now commits for this agent (reused): the ring corrects it.
        s5, obj5 = await h.commit([(0, [mk(vals("e", 1))])], put=False)
        h.engine.on_notice(notice_of(s5)._replace(pid=foreign))
        h.engine.on_committed(s5, obj5)
        assert h.engine._pid_is_own[foreign] is True

    asyncio.run(go())


# ----------------------------------------------------------------------------- committed ring


def test_block_of_a_segment_on_its_way_waits_for_the_ring(h: Harness) -> None:
    """A fetch that finds a just-committed segment of this agent's uploader before its ring
    frame waits for the frame (no GET: the objects were never PUT)."""
    keys = SegmentKeys()
    h.engine.ring_grace_s = 60.0

    async def go() -> None:
        await h.commit([(0, [mk(vals("a", 1))])], put=False, feed=True, key=keys.new_key())
        segment, obj = await h.commit([(0, [mk(vals("b", 2))])], put=False, key=keys.new_key())
        task = asyncio.ensure_future(h.engine.fetch(request(h, 1)))
        await eventually(lambda: segment.key in h.engine._ring_waits)
        h.engine.on_committed(segment, obj)
        _resp, payload = await asyncio.wait_for(task, timeout=30)
        assert kafka_batches(payload) == [(1, vals("b", 2))]
        assert h.range_gets == []
        assert (h.engine.ring_waited, h.engine.ring_missed) == (1, 0)
        assert h.engine._ring_waits == {}

    asyncio.run(go())


def test_a_later_ring_frame_releases_a_wait_for_a_segment_it_skipped(h: Harness) -> None:
    """A segment the ring never delivered (it was full) is read by a GET as soon as a frame of
    a later sequence shows it will not come, not after the grace."""
    keys = SegmentKeys()
    h.engine.ring_grace_s = 3600.0

    async def go() -> None:
        await h.commit([(0, [mk(vals("a", 1))])], put=False, feed=True, key=keys.new_key())
        skipped, _ = await h.commit([(0, [mk(vals("b", 2))])], key=keys.new_key())
        later, later_obj = await h.commit([(1, [mk(vals("c", 1))])], put=False, key=keys.new_key())
        task = asyncio.ensure_future(h.engine.fetch(request(h, 1)))
        await eventually(lambda: skipped.key in h.engine._ring_waits)
        h.engine.on_committed(later, later_obj)
        _resp, payload = await asyncio.wait_for(task, timeout=30)
        assert kafka_batches(payload) == [(1, vals("b", 2))]
        assert [get[0] for get in h.range_gets] == [skipped.key]
        assert (h.engine.ring_waited, h.engine.ring_missed) == (0, 1)

    asyncio.run(go())


def test_a_wait_for_the_ring_ends_after_the_grace(h: Harness) -> None:
    """No frame comes at all (the uploader died after its commit): the block is read by a GET
    once `ring_grace_s` has passed."""
    keys = SegmentKeys()
    h.engine.ring_grace_s = 0.02

    async def go() -> None:
        await h.commit([(0, [mk(vals("a", 1))])], put=False, feed=True, key=keys.new_key())
        lost, _ = await h.commit([(0, [mk(vals("b", 2))])], key=keys.new_key())
        _resp, payload = await asyncio.wait_for(h.engine.fetch(request(h, 1)), timeout=30)
        assert kafka_batches(payload) == [(1, vals("b", 2))]
        assert [get[0] for get in h.range_gets] == [lost.key]
        assert (h.engine.ring_waited, h.engine.ring_missed) == (0, 1)
        assert h.engine._ring_waits == {}

    asyncio.run(go())


@pytest.mark.parametrize("case", ["other writer", "delivered before", "no ring yet", "old key"])
def test_blocks_the_ring_will_not_deliver_are_read_at_once(h: Harness, case: str) -> None:
    """Only a later sequence of the writer the ring delivers waits: another writer's segment
    (another agent, a rewrite, a restarted uploader), a sequence at or below the last one
    delivered (evicted since), any segment before the first ring frame, and a key of the old
    random shape are read at once (the grace is an hour: a wait would hang the test)."""
    ours, theirs = SegmentKeys(), SegmentKeys()
    h.engine.ring_grace_s = 3600.0

    async def go() -> None:
        key: str | None = ours.new_key()
        if case == "delivered before":
            # Delivered with none of its blocks cached (as if evicted since).
            h.engine.on_committed(CommittedSegment(key, []), b"")
        elif case != "no ring yet":
            await h.commit([(2, [mk(vals("z", 1))])], put=False, feed=True, key=key)
            key = theirs.new_key() if case == "other writer" else None
        await h.commit([(0, [mk(vals("b", 2))])], key=key)
        _resp, payload = await asyncio.wait_for(h.engine.fetch(request(h, 0)), timeout=30)
        assert kafka_batches(payload) == [(0, vals("b", 2))]
        assert len(h.range_gets) == 1
        assert (h.engine.ring_waited, h.engine.ring_missed) == (0, 0)

    asyncio.run(go())


def test_the_uploaders_hello_makes_its_first_segment_wait_for_the_ring(h: Harness) -> None:
    """The uploader's hello frame (no blocks) names its writer: even its first segment is
    waited for, not read by a GET."""
    keys = SegmentKeys()
    h.engine.ring_grace_s = 60.0

    async def go() -> None:
        h.engine.on_committed(CommittedSegment(keys.hello_key(), []), b"")
        segment, obj = await h.commit([(0, [mk(vals("a", 2))])], put=False, key=keys.new_key())
        task = asyncio.ensure_future(h.engine.fetch(request(h, 0)))
        await eventually(lambda: segment.key in h.engine._ring_waits)
        h.engine.on_committed(segment, obj)
        _resp, payload = await asyncio.wait_for(task, timeout=30)
        assert kafka_batches(payload) == [(0, vals("a", 2))]
        assert h.range_gets == []

    asyncio.run(go())


# ----------------------------------------------------------------------------- tail interest


def test_committed_blocks_are_cached_only_for_partitions_read_lately(h: Harness) -> None:
    """With a tail interest, a committed block is cached only when its partition was fetched
    within it: the others cost no copy and are read from the store if ever asked for."""
    h.engine.tail_interest_s = 60.0

    async def go() -> None:
        before, _ = await h.commit([(0, [mk(vals("a", 1))])], feed=True)
        assert (before.key, before.blocks[0].byte_offset) not in h.cache
        assert h.engine.ring_skipped == 1
        await h.engine.fetch(request(h, 1))  # partition 0 is read at its tail now
        segment, _ = await h.commit([(0, [mk(vals("b", 2))]), (1, [mk(vals("x", 3))])], feed=True)
        cached = [(segment.key, b.byte_offset) in h.cache for b in segment.blocks]
        assert cached == [True, False]
        gets = len(h.range_gets)
        _resp, payload = await h.engine.fetch(request(h, 1))
        assert kafka_batches(payload) == [(1, vals("b", 2))]
        assert len(h.range_gets) == gets  # served from the cache
        _resp, payload = await h.engine.fetch(request(h, 0, partition=1))
        assert kafka_batches(payload) == [(0, vals("x", 3))]
        assert len(h.range_gets) == gets + 1  # the uncached partition: one GET

    asyncio.run(go())


def test_tail_interest_lapses(h: Harness) -> None:
    h.engine.tail_interest_s = 60.0

    async def go() -> None:
        await h.engine.fetch(request(h, 0))
        h.engine._interest[(h.topic_id, 0)] -= 61.0  # last fetched a minute ago
        h.engine._interest_pruned = 0.0
        segment, _ = await h.commit([(0, [mk(vals("a", 1))])], feed=True)
        assert (segment.key, segment.blocks[0].byte_offset) not in h.cache
        assert h.engine._interest == {}

    asyncio.run(go())


def test_committed_objects_are_wanted_only_while_a_partition_is_read(h: Harness) -> None:
    """With a tail interest and nobody reading, the engine wants no committed objects (the
    uploader then sends commits without them); the first fetch of a partition not read yet
    calls `on_interest` at once, later fetches of it do not; once the interest lapses the
    objects are not wanted again. Without a tail interest every object is wanted."""
    calls: list[bool] = []
    h.engine.on_interest = lambda: calls.append(h.engine.wants_committed_objects())
    assert h.engine.wants_committed_objects()  # tail_interest_s 0: every block is cached
    h.engine.tail_interest_s = 60.0

    async def go() -> None:
        assert not h.engine.wants_committed_objects()
        await h.engine.fetch(request(h, 0))
        assert calls == [True] and h.engine.wants_committed_objects()
        await h.engine.fetch(request(h, 0))
        assert calls == [True]  # already read: no call
        await h.engine.fetch(request(h, 0, partition=1))
        assert calls == [True, True]
        for tp in h.engine._interest:
            h.engine._interest[tp] -= 61.0  # both last fetched a minute ago
        h.engine._interest_pruned = 0.0
        assert not h.engine.wants_committed_objects()

    asyncio.run(go())


def test_a_commit_sent_without_its_object_caches_nothing_and_wakes_the_tail(h: Harness) -> None:
    """A committed-segment frame without the object (COMMITTED_HEADERS_ONLY) still wakes a
    long poll on its partition, which then reads the block from the store; nothing is
    cached from it, even for a partition read at its tail."""
    h.engine.tail_interest_s = 60.0

    async def go() -> None:
        first, _ = await h.commit([(0, [mk(vals("a", 1))])], feed=True)
        _resp, payload = await h.engine.fetch(request(h, 0))
        assert kafka_batches(payload) == [(0, vals("a", 1))]
        waiting = asyncio.ensure_future(h.engine.fetch(request(h, 1, max_wait_ms=10_000)))
        await until(lambda: (h.topic_id, 0) in h.engine._waiters)
        assert not waiting.done()
        segment, _ = await h.commit([(0, [mk(vals("b", 2))])])
        gets = len(h.range_gets)
        skipped = h.engine.ring_skipped
        h.engine.on_committed(segment, b"")
        assert (segment.key, segment.blocks[0].byte_offset) not in h.cache
        assert h.engine.ring_skipped == skipped + 1
        _resp, payload = await asyncio.wait_for(waiting, 5)
        assert kafka_batches(payload) == [(1, vals("b", 2))]
        assert len(h.range_gets) > gets  # read from the store
        assert first.key != segment.key

    asyncio.run(go())


def test_a_lent_segment_is_copied_block_by_block(h: Harness) -> None:
    """A segment lent by the ring (a view valid only during the call) leaves copies in the
    cache, never views of the ring, even for a block that is the whole object."""

    async def go() -> None:
        segment, obj = await h.commit([(0, [mk(vals("a", 50))])], put=False)
        lent = memoryview(bytearray(obj))
        h.engine.on_committed(segment, lent, lent=True)
        lent[:] = b"\0" * len(lent)  # the ring reuses the space
        _resp, payload = await h.engine.fetch(request(h, 0))
        assert kafka_batches(payload) == [(0, vals("a", 50))]
        assert h.range_gets == []

    asyncio.run(go())


def test_a_segment_whose_ring_wait_ran_out_is_never_waited_for_again(h: Harness) -> None:
    """One grace per segment, counted from its first wait: fetches that joined the wait late
    go on with the first, and a later cold block of the same segment is read at once."""
    keys = SegmentKeys()
    h.engine.ring_grace_s = 0.02

    async def go() -> None:
        await h.commit([(2, [mk(vals("z", 1))])], put=False, feed=True, key=keys.new_key())
        lost, _ = await h.commit(
            [(0, [mk(vals("a", 2))]), (1, [mk(vals("b", 3))])], key=keys.new_key()
        )
        first = asyncio.ensure_future(h.engine.fetch(request(h, 0)))
        second = asyncio.ensure_future(h.engine.fetch(request(h, 1)))
        (_r0, p0), (_r1, p1) = await asyncio.wait_for(asyncio.gather(first, second), 30)
        assert kafka_batches(p0) == [(0, vals("a", 2))]
        assert kafka_batches(p1) == [(0, vals("a", 2))]  # a fetch inside a batch: all of it
        assert lost.key in h.engine._ring_given_up
        assert h.engine._ring_waits == {}
        missed = h.engine.ring_missed
        _resp, payload = await asyncio.wait_for(h.engine.fetch(request(h, 0, partition=1)), 30)
        assert kafka_batches(payload) == [(0, vals("b", 3))]
        assert h.engine.ring_missed == missed  # read at once: no second wait

    asyncio.run(go())


def test_a_long_poll_keeps_its_partition_cached_past_the_interest(h: Harness) -> None:
    """A fetch waiting at the tail longer than the interest still gets its partition's new
    blocks from the cache."""
    h.engine.tail_interest_s = 60.0

    async def go() -> None:
        task = asyncio.ensure_future(h.engine.fetch(request(h, 0, max_wait_ms=60_000)))
        await eventually(lambda: h.engine.waiting == 1)
        h.engine._interest[(h.topic_id, 0)] -= 61.0
        h.engine._interest_pruned = 0.0
        segment, _ = await h.commit([(0, [mk(vals("a", 2))])], put=False, feed=True)
        _resp, payload = await asyncio.wait_for(task, 30)
        assert kafka_batches(payload) == [(0, vals("a", 2))]
        assert h.range_gets == []

    asyncio.run(go())
