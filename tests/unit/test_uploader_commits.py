"""The uploader commits uploaded segments waiting in seal order together, in one transaction."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator

import pytest

from metadata import MetadataStore
from segmenter.builder import SegmentBuilder
from streamhouse import rings
from streamhouse.config import Settings, load_settings
from streamhouse.errors import ErrorCode
from streamhouse.frames import AckFrame, AckResult, BatchMeta, ProduceFrame, decoder_for
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
    segments = [sealed_segment(100 + i, i + 1) for i in range(n)]

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
    assert [a.request_id for a in acks] == [100 + i for i in range(n)]
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
    segments = [sealed_segment(200 + i, 2) for i in range(4)]
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
    assert [a.request_id for a in acks] == [200, 201, 202, 203]
    failed = [a for a in acks if a.error.code != 0]
    assert [a.request_id for a in failed] == [202]
    assert failed[0].error.code == ErrorCode.KAFKA_STORAGE_ERROR.kafka_code
    assert [a.base_offset for a in acks if a.error.code == 0] == [0, 2, 4]
