"""The group-commit signals at each stage, over real rings in a temp dir: ingest marks how many
frames of a request follow each one (refused slots are not counted), the builder passes that
on, and the uploader says hello and reports a refused segment as done."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator

import pytest

from ingest.pipeline import Pipeline, ProduceSlot
from segmenter.builder import SegmentBuilder
from streamhouse import rings
from streamhouse.config import Settings, load_settings
from streamhouse.errors import ErrorCode
from streamhouse.frames import (
    AckFrame,
    AckResult,
    BatchMeta,
    ProduceFrame,
    SealedSegment,
    UploadProgress,
    decoder_for,
    header_encoder,
)
from streamhouse.recordbatch import encode_batch, scan_batches
from streamhouse.upload_progress import HELLO, decode_progress
from uploader.__main__ import Uploader

encode = header_encoder.encode


@pytest.fixture
def settings(tmp_path: pathlib.Path) -> Iterator[Settings]:
    env = {
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
        "STREAMHOUSE_MAX_BATCHES_PER_PARTITION": "10",
    }
    s = load_settings(env)
    yield s
    rings.unlink_all(s)


def payload_of(n: int) -> bytes:
    return b"".join(
        encode_batch([None], [f"v{i}".encode()], [[]], [1_700_000_000_000]) for i in range(n)
    )


def slot(n_batches: int, partition: int) -> ProduceSlot:
    payload = payload_of(n_batches)
    infos = scan_batches(payload)
    metas = [
        BatchMeta(i.record_count, -1, -1, -1, i.base_timestamp, i.max_timestamp) for i in infos
    ]
    return ProduceSlot(1, partition, metas, [i.length for i in infos], payload)


def test_ingest_marks_the_frames_that_follow_and_skips_refused_slots(settings: Settings) -> None:
    decode = decoder_for(ProduceFrame).decode

    async def go() -> list[tuple[int, int]]:
        pipeline = Pipeline(settings)
        segmenter = rings.open_reader(settings, rings.PRODUCE)
        try:
            # Slot 1 has too many batches (refused up front, never sent).
            slots = [slot(1, 0), slot(11, 1), slot(1, 2), slot(1, 3)]
            ask = asyncio.ensure_future(pipeline.produce(slots))
            frames = []
            while len(frames) < 3:
                await segmenter.wait_readable()
                frames += [decode(h) for h, _ in segmenter.read_frames()]
            results = [AckResult(f.request_id, f.slot, 0, 0) for f in frames]
            pipeline.on_ack(encode(AckFrame(results)))
            await ask
            return [(f.slot, f.following) for f in frames]
        finally:
            segmenter.close()
            await pipeline.close()

    assert asyncio.run(go()) == [(0, 2), (2, 1), (3, 0)]


def test_builder_passes_on_what_follows_and_forgets_it_for_bad_frames() -> None:
    payload = payload_of(1)
    info = scan_batches(payload)[0]
    meta = BatchMeta(1, -1, -1, -1, info.base_timestamp, info.max_timestamp)
    builder = SegmentBuilder(1, 1 << 20)
    builder.take(encode(ProduceFrame(9 << 30, 0, 1, 0, [meta], [len(payload)], 0, 2)), payload, 0)
    assert builder.following == 2
    builder.take(b"\xc1", b"", 0)  # does not decode: nothing is known to follow
    assert builder.following == 0
    builder.take(encode(ProduceFrame(9 << 30, 1, 1, 1, [meta], [len(payload)], 0, 1)), payload, 0)
    assert builder.following == 1
    builder.take(encode(ProduceFrame(9 << 30, 2, 1, 2, [meta], [len(payload)])), payload, 0)
    assert builder.following == 0  # frames from older ingests carry no count: 0


def test_uploader_says_hello_and_reports_refused_segments_done(settings: Settings) -> None:
    async def go() -> list[UploadProgress | None]:
        progress = rings.open_reader(settings, rings.UPLOAD_PROGRESS)
        uploader = Uploader(settings)
        try:
            builder = SegmentBuilder(42, 1 << 20)
            # A real segment's sequence with blocks that do not add up: refused, acked with an
            # error, and done as far as the segmenter is concerned.
            lying = SealedSegment(42, 0, [], [])
            assert await uploader.take(encode(lying), b"x") is None
            uploader._report_progress()
            refusal = builder.refusal(5, 0, ErrorCode.CORRUPT_MESSAGE, "bad")
            assert await uploader.take(encode(refusal), b"") is None  # sequence -1: no change
            uploader._report_progress()
            return [decode_progress(h) for h, _ in progress.read_frames()]
        finally:
            uploader.close()
            progress.close()

    assert asyncio.run(go()) == [HELLO, UploadProgress(42, 0, 0)]
