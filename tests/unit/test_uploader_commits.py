"""The uploader commits uploaded segments waiting in seal order together, in one transaction;
it commits a segment only before its batches' commit deadline (carried by the request id) and
waits for the metadata store only for what is left of it."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Iterator

import apsw
import pytest

from metadata import MetadataStore
from segmenter.builder import SegmentBuilder
from streamhouse import objectstore, rings
from streamhouse.config import Settings, load_settings
from streamhouse.errors import ErrorCode
from streamhouse.frames import (
    AckFrame,
    AckResult,
    BatchMeta,
    ProduceFrame,
    decoder_for,
    make_request_id,
)
from streamhouse.recordbatch import encode_batch, scan_batches
from uploader.__main__ import MAX_SEGMENTS_PER_COMMIT, Uploader, new_segment_key


@pytest.fixture
def settings(tmp_path: pathlib.Path) -> Iterator[Settings]:
    s = load_settings(
        {
            "STREAMHOUSE_DATA_DIR": str(tmp_path / "data"),
            "STREAMHOUSE_PRODUCE_RING_BYTES": str(1 << 20),
            "STREAMHOUSE_SEALED_RING_BYTES": str(1 << 20),
            "STREAMHOUSE_COMMITTED_RING_BYTES": str(1 << 20),
            "STREAMHOUSE_ACK_RING_BYTES": str(256 * 1024),
            "STREAMHOUSE_FETCH_REQUEST_RING_BYTES": str(64 * 1024),
            "STREAMHOUSE_FETCH_RESPONSE_RING_BYTES": str(1 << 20),
            "STREAMHOUSE_MAX_SEGMENT_BYTES": str(256 * 1024),
            "STREAMHOUSE_MAX_BATCH_BYTES": str(256 * 1024),
            "STREAMHOUSE_MAX_FETCH_BYTES": str(256 * 1024),
        }
    )
    s.data_path.mkdir(parents=True)
    store = MetadataStore(s.metadata_path)
    assert store.create_topic("t", 1).topic_id == 1
    store.close()
    yield s
    rings.unlink_all(s)


def live_id(n: int, seconds: float = 60.0) -> int:
    """Request id `n` whose commit deadline is `seconds` from now (negative: already past)."""
    return make_request_id(time.monotonic() + seconds, n)


def sealed_segment(request_id: int, records: int) -> tuple[object, bytes]:
    """A sealed segment of one produce request: one batch of `records` records to t/0."""
    payload = encode_batch(
        [None] * records, [b"v"] * records, [[]] * records, [1_700_000_000_000] * records
    )
    info = scan_batches(payload)[0]
    meta = BatchMeta(info.record_count, -1, -1, -1, info.base_timestamp, info.max_timestamp)
    builder = SegmentBuilder(epoch=1, max_segment_bytes=1 << 20)
    builder.add(ProduceFrame(request_id, 0, 1, 0, [meta], [len(payload)]), payload, now_ns=0)
    return builder.seal()


async def commit_all(
    uploader: Uploader, segments: list[tuple[object, bytes]], keys: list[str]
) -> list[AckResult]:
    """Uploads every segment, queues them in seal order, then runs the commit loop to the end
    and returns the acks, in the order they were written."""
    acks = rings.open_reader(uploader.settings, rings.ACK)
    try:
        for (sealed, obj), key in zip(segments, keys, strict=True):
            task = asyncio.ensure_future(uploader.upload(key, obj))
            await task
            uploader.in_order.append((sealed, obj, key, task))  # type: ignore[arg-type]
        stop = asyncio.Event()
        stop.set()
        await uploader.commit_loop(stop)
        decode = decoder_for(AckFrame).decode
        return [r for header, _ in acks.read_frames() for r in decode(header).results]
    finally:
        acks.close()


def counting_commits(uploader: Uploader) -> list[int]:
    """Records the number of segments of every commit_segments call the uploader makes."""
    calls: list[int] = []
    original = uploader.meta.commit_segments

    async def commit_segments(segments):  # type: ignore[no-untyped-def]
        calls.append(len(segments))
        return await original(segments)

    uploader.meta.commit_segments = commit_segments  # type: ignore[method-assign]
    return calls


def test_uploaded_segments_waiting_in_order_commit_in_one_transaction(settings: Settings) -> None:
    n = MAX_SEGMENTS_PER_COMMIT + 3
    ids = [live_id(100 + i) for i in range(n)]
    segments = [sealed_segment(ids[i], i + 1) for i in range(n)]

    async def go() -> tuple[list[AckResult], list[int]]:
        uploader = Uploader(settings)
        try:
            calls = counting_commits(uploader)
            acks = await commit_all(uploader, segments, [new_segment_key() for _ in segments])
            return acks, calls
        finally:
            uploader.close()

    acks, calls = asyncio.run(go())
    # The first segment is committed as the group's head with every segment already uploaded
    # behind it: groups of at most MAX_SEGMENTS_PER_COMMIT, in seal order.
    assert calls == [MAX_SEGMENTS_PER_COMMIT, 3]
    assert [a.request_id for a in acks] == ids
    assert all(a.error.code == 0 for a in acks)
    # Offsets as if committed one by one: segment i holds i + 1 records.
    expected, next_offset = [], 0
    for i in range(n):
        expected.append(next_offset)
        next_offset += i + 1
    assert [a.base_offset for a in acks] == expected
    store = MetadataStore(settings.metadata_path)
    try:
        assert store.get_partition(1, 0).high_watermark == next_offset  # type: ignore[union-attr]
    finally:
        store.close()


def test_a_group_that_cannot_commit_together_commits_one_by_one(settings: Settings) -> None:
    """A segment key committed before makes the group's transaction fail as a whole; the
    uploader then commits each segment alone, so only that segment's produce fails."""
    ids = [live_id(200 + i) for i in range(4)]
    segments = [sealed_segment(ids[i], 2) for i in range(4)]
    keys = [new_segment_key() for _ in segments]
    store = MetadataStore(settings.metadata_path)
    store.commit_segment(keys[2], 10, [])  # the third key is taken already
    store.close()

    async def go() -> tuple[list[AckResult], list[int]]:
        uploader = Uploader(settings)
        try:
            calls = counting_commits(uploader)
            return await commit_all(uploader, segments, keys), calls
        finally:
            uploader.close()

    acks, calls = asyncio.run(go())
    assert calls[0] == 4  # tried together first
    assert [a.request_id for a in acks] == ids
    failed = [a for a in acks if a.error.code != 0]
    assert [a.request_id for a in failed] == [ids[2]]
    assert failed[0].error.code == ErrorCode.KAFKA_STORAGE_ERROR.kafka_code
    assert [a.base_offset for a in acks if a.error.code == 0] == [0, 2, 4]


def high_watermark(settings: Settings) -> int:
    store = MetadataStore(settings.metadata_path)
    try:
        return store.get_partition(1, 0).high_watermark  # type: ignore[union-attr]
    finally:
        store.close()


def test_a_segment_past_its_deadline_is_not_committed(settings: Settings) -> None:
    """Of three segments uploaded in a row the middle one's deadline has passed: it fails as
    not written (NOT_ENOUGH_REPLICAS, "not persisted" to Kafka clients), its object is
    deleted, and the two others are committed."""
    ids = [live_id(1), live_id(2, seconds=-1), live_id(3)]
    segments = [sealed_segment(request_id, 2) for request_id in ids]
    keys = [new_segment_key() for _ in segments]

    async def go() -> tuple[list[AckResult], list[bool]]:
        uploader = Uploader(settings)
        try:
            acks = await commit_all(uploader, segments, keys)
            present = []
            for key in keys:
                try:
                    await objectstore.get(uploader.store, key)
                    present.append(True)
                except Exception:  # missing: the local folder store raises its own error
                    present.append(False)
            return acks, present
        finally:
            uploader.close()

    acks, present = asyncio.run(go())
    # The late segment is answered first (before the others' commit); each by its request id.
    by_id = {a.request_id: a for a in acks}
    assert sorted(by_id) == sorted(ids) and len(acks) == 3
    answered = [by_id[i] for i in ids]
    assert [a.error.code for a in answered] == [0, ErrorCode.NOT_ENOUGH_REPLICAS.kafka_code, 0]
    assert "deadline" in answered[1].error.message
    assert [a.base_offset for a in answered] == [0, -1, 2]
    assert present == [True, False, True]
    assert high_watermark(settings) == 4


def test_a_commit_waits_for_a_locked_store_only_until_the_deadline(settings: Settings) -> None:
    """Another writer holds the database lock: the commit gives up when the batch's deadline
    (1.5 s away) comes, far before the 30 s produce timeout, and answers NOT_ENOUGH_REPLICAS
    (nothing was written) rather than REQUEST_TIMED_OUT (maybe written)."""
    assert settings.produce_timeout_ms >= 10_000
    segments = [sealed_segment(live_id(7, seconds=1.5), 3)]
    locker = apsw.Connection(str(settings.metadata_path))
    locker.execute("BEGIN IMMEDIATE")

    async def go() -> tuple[list[AckResult], float]:
        uploader = Uploader(settings)
        try:
            start = time.monotonic()
            acks = await commit_all(uploader, segments, [new_segment_key()])
            return acks, time.monotonic() - start
        finally:
            uploader.close()

    try:
        acks, took = asyncio.run(go())
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert [a.error.code for a in acks] == [ErrorCode.NOT_ENOUGH_REPLICAS.kafka_code]
    assert "nothing was written" in acks[0].error.message
    assert 1.0 < took < 5.0, took
    assert high_watermark(settings) == 0
