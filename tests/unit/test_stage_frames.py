"""No stage trusts its ring: each stage's frame handling fed garbage and lies, sans-I/O where
the code is (segmenter builder, reader request parsing and response fitting, frame checks),
over real rings in a temp dir where it is not (uploader intake, ingest's ack and response
handling). Every bad frame is answered or dropped with a log line; nothing raises."""

from __future__ import annotations

import asyncio
import pathlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ingest.pipeline import BatchOutcome, Pipeline, PipelineUnavailable, ProduceSlot
from reader.engine import error_response, fit_response, parse_request
from segmenter.builder import SegmentBuilder
from streamhouse import rings
from streamhouse.config import load_settings
from streamhouse.errors import RING_OK, ErrorCode, RingError, StreamHouseError
from streamhouse.frames import (
    ALL_BATCHES,
    MAX_ERROR_MESSAGE,
    AckFrame,
    AckResult,
    BatchMeta,
    FetchPart,
    FetchPartResult,
    FetchRequest,
    FetchResponse,
    FrameError,
    ProduceFrame,
    SealedBatch,
    SealedBlock,
    SealedSegment,
    ack_headers,
    check_fetch_response,
    check_sealed,
    decoder_for,
    header_encoder,
    ring_error,
    salvage_ids,
)
from streamhouse.recordbatch import encode_batch, scan_batches
from uploader.__main__ import Uploader

encode = header_encoder.encode
# Headers from which not even a request id can be read.
GARBAGE = [b"", b"\xc1", b"\xff" * 40, b"\x93\x01\x02", encode({"a": 1}), encode(["x", 1])]


def batches(n: int) -> bytes:
    return b"".join(
        encode_batch([None], [f"v{i}".encode()], [[]], [1_700_000_000_000]) for i in range(n)
    )


def produce_frame(payload: bytes, request_id: int = 7, slot: int = 0) -> ProduceFrame:
    infos = scan_batches(payload)
    metas = [
        BatchMeta(i.record_count, -1, -1, -1, i.base_timestamp, i.max_timestamp) for i in infos
    ]
    return ProduceFrame(request_id, slot, 1, 0, metas, [i.length for i in infos])


# -- frame checks and helpers ---------------------------------------------------------------


def test_ack_headers_split_large_acks_into_frames_that_fit_in_order() -> None:
    results = [AckResult(1 << 59, 0, i, i, RING_OK) for i in range(100_000)]
    headers = list(ack_headers(results, 64 * 1024))
    assert len(headers) > 1
    assert all(len(h) <= 64 * 1024 for h in headers)
    decode = decoder_for(AckFrame).decode
    got = [r for h in headers for r in decode(h).results]
    assert got == results


ack_results = st.lists(
    st.builds(
        AckResult,
        st.integers(0, 2**63 - 1),
        st.integers(0, 2**31),
        st.integers(-1, 2**31),
        st.integers(-1, 2**62),
        st.builds(ring_error, st.integers(-1, 120), st.text(max_size=2 * MAX_ERROR_MESSAGE)),
    ),
    max_size=300,
)


@given(results=ack_results, limit=st.integers(2 * MAX_ERROR_MESSAGE, 64 * 1024))
@hypothesis_settings(max_examples=200, deadline=None)
def test_ack_headers_always_fit_and_keep_every_result_in_order(
    results: list[AckResult], limit: int
) -> None:
    headers = list(ack_headers(results, limit))
    assert all(len(h) <= limit for h in headers)
    decode = decoder_for(AckFrame).decode
    assert [r for h in headers for r in decode(h).results] == results


def test_ring_error_messages_are_cut_to_a_byte_bound() -> None:
    error = ring_error(2, "é" * MAX_ERROR_MESSAGE)
    assert len(error.message.encode()) <= MAX_ERROR_MESSAGE
    assert error.message.endswith("...") and error.code == 2
    assert ring_error(2, "short") == RingError(2, "short")


def test_ack_headers_keep_small_acks_in_one_frame() -> None:
    results = [AckResult(1, 0, 0, 5, RingError(3, "m" * 100))]
    assert list(ack_headers(results, 4096)) == [encode(AckFrame(results))]


def test_salvage_ids_reads_leading_integers_only() -> None:
    assert salvage_ids(encode([5, 2, "junk", 9]), 2) == (5, 2)
    for header in (b"\xc1", encode([5]), encode(["5", 2]), encode({"a": 1}), encode([True, 1])):
        assert salvage_ids(header, 2) is None


def test_sealed_checks_catch_blocks_outside_the_object_and_dangling_batches() -> None:
    block = SealedBlock(1, 0, 8, 100, 0)
    batch = SealedBatch(1, 0, 0, 0, 1, -1, -1, -1)
    check_sealed(SealedSegment(1, 0, [block], [batch]), 200)
    lies = [
        (SealedSegment(1, 0, [block], [batch]), 50),  # block past the end
        (SealedSegment(1, 0, [block], [msgspec.structs.replace(batch, block=1)]), 200),
        (SealedSegment(1, 0, [block], [msgspec.structs.replace(batch, record_count=0)]), 200),
        (SealedSegment(1, 0, [block, block], [batch]), 200),  # block without batches
        (SealedSegment(1, 0, [], []), 0),
        (SealedSegment(1, 0, [block], [batch], RingError(2, "refused")), 200),
    ]
    for segment, size in lies:
        with pytest.raises(FrameError):
            check_sealed(segment, size)


def test_fetch_response_check_needs_every_part_and_exact_lengths() -> None:
    part = FetchPartResult(1, 0, RING_OK, 5, 0, 10, 5, 1)
    check_fetch_response(FetchResponse(1, [part]), 1, 10)
    for response, parts, size in [
        (FetchResponse(1, [part]), 2, 10),
        (FetchResponse(1, [part]), 1, 11),
        (FetchResponse(1, [msgspec.structs.replace(part, length=-1)]), 1, -1),
    ]:
        with pytest.raises(FrameError):
            check_fetch_response(response, parts, size)
    check_fetch_response(FetchResponse(1, [], RingError(42, "refused")), 3, 0)


# -- segmenter -------------------------------------------------------------------------------


def refusals(out: list[tuple[SealedSegment, bytes]]) -> list[tuple[int, int, int]]:
    return [
        (s.batches[0].request_id, s.batches[0].slot, s.error.code) for s, _ in out if s.error.code
    ]


def test_segmenter_drops_headers_that_do_not_decode() -> None:
    builder = SegmentBuilder(1, 1 << 20)
    for header in GARBAGE:
        assert builder.take(header, b"payload", 0) == []
    assert builder.empty


def test_segmenter_refuses_the_slot_named_by_a_header_that_does_not_decode() -> None:
    builder = SegmentBuilder(1, 1 << 20)
    out = builder.take(encode([41, 3, "not a topic id"]), b"x", 0)
    assert refusals(out) == [(41, 3, ErrorCode.CORRUPT_MESSAGE.kafka_code)]
    assert out[0][0].batches[0].ordinal == ALL_BATCHES and out[0][1] == b""


def test_segmenter_refuses_frames_whose_contents_do_not_add_up() -> None:
    payload = batches(3)
    good = produce_frame(payload)
    r = msgspec.structs.replace
    lies = [
        (r(good, batch_lengths=good.batch_lengths[:2]), payload),  # fewer lengths than batches
        (r(good, batch_lengths=[1, 2, 3]), payload),  # lengths do not add up
        (good, payload[:-1]),  # payload shorter than the lengths
        (r(good, batches=[], batch_lengths=[]), b""),
        (good, b"\x00" * len(payload)),  # right length, not batches
        (r(good, batches=[r(m, record_count=2) for m in good.batches]), payload),
        (r(good, batch_lengths=[good.batch_lengths[0] * 2, 0, good.batch_lengths[2]]), payload),
    ]
    builder = SegmentBuilder(1, 1 << 20)
    for frame, data in lies:
        out = builder.take(encode(frame), data, 0)
        assert refusals(out) == [(7, 0, ErrorCode.CORRUPT_MESSAGE.kafka_code)], frame
    assert builder.empty
    assert builder.take(encode(good), payload, 0) == []
    assert not builder.empty


def test_segmenter_seals_before_a_frame_would_overflow_the_sealed_frame() -> None:
    payload = batches(50)
    builder = SegmentBuilder(1, 1 << 30, max_frame_bytes=len(payload) * 2 + 8 * 1024)
    out: list[tuple[SealedSegment, bytes]] = []
    for i in range(6):
        out += builder.take(encode(produce_frame(payload, request_id=i)), payload, 0)
    out.append(builder.seal())
    assert len(out) >= 3 and not refusals(out)
    for sealed, obj in out:
        assert len(encode(sealed)) + len(obj) <= builder.max_frame_bytes
    assert sorted(b.request_id for s, _ in out for b in s.batches) == sorted(
        i for i in range(6) for _ in range(50)
    )


def test_segmenter_refuses_a_frame_that_could_never_fit() -> None:
    payload = batches(50)
    builder = SegmentBuilder(1, 1 << 30, max_frame_bytes=len(payload))
    out = builder.take(encode(produce_frame(payload)), payload, 0)
    assert refusals(out) == [(7, 0, ErrorCode.RECORD_LIST_TOO_LARGE.kafka_code)]
    assert "send fewer" in out[0][0].error.message


# -- reader ----------------------------------------------------------------------------------


def fetch_request(parts: int = 1, **fields: int) -> FetchRequest:
    request = FetchRequest(9, 0, 0, 1000, 0, [FetchPart(1, p, 0, 1000) for p in range(parts)])
    return msgspec.structs.replace(request, **fields)


def test_reader_drops_or_refuses_requests_that_do_not_decode() -> None:
    for header in GARBAGE:
        assert parse_request(header, 100) is None
    refused = parse_request(encode([77, "bad"]), 100)
    assert isinstance(refused, FetchResponse)
    assert refused.request_id == 77
    assert refused.error.code == ErrorCode.INVALID_REQUEST.kafka_code


def test_reader_refuses_requests_it_cannot_serve_as_asked() -> None:
    lies = [
        fetch_request(0),
        fetch_request(5),  # over the partition limit below
        fetch_request(format=7),
        fetch_request(max_wait_ms=-1),
        fetch_request(max_records=-1),
        msgspec.structs.replace(fetch_request(), parts=[FetchPart(1, 0, -5, 10)]),
    ]
    for request in lies:
        refused = parse_request(encode(request), 4)
        assert isinstance(refused, FetchResponse), request
        assert refused.error.code == ErrorCode.INVALID_REQUEST.kafka_code
    assert parse_request(encode(fetch_request(4)), 4) == fetch_request(4)


def test_reader_trims_a_response_to_its_ring_and_keeps_a_payload_prefix() -> None:
    request = fetch_request(3)
    parts = [FetchPartResult(1, p, RING_OK, 100, 0, 400, 50, 4) for p in range(3)]
    payload = b"a" * 400 + b"b" * 400 + b"c" * 400
    header, data = fit_response(request, FetchResponse(9, parts), payload, 1000)
    assert len(header) + len(data) <= 1000
    response = decoder_for(FetchResponse).decode(header)
    assert [p.length for p in response.parts] == [400, 400, 0]
    assert response.parts[2].next_offset == 0  # fetch that partition again from its offset
    assert data == payload[:800]
    check_fetch_response(response, 3, len(data))


def test_reader_fails_a_fetch_whose_first_part_cannot_fit() -> None:
    request = fetch_request(1)
    parts = [FetchPartResult(1, 0, RING_OK, 100, 0, 5000, 50, 4)]
    header, data = fit_response(request, FetchResponse(9, parts), b"x" * 5000, 1000)
    response = decoder_for(FetchResponse).decode(header)
    assert data == b"" and response.error.code == ErrorCode.MESSAGE_TOO_LARGE.kafka_code
    assert "fetch_response_ring_bytes" in response.error.message


def test_error_response_round_trips() -> None:
    response = error_response(3, ErrorCode.KAFKA_STORAGE_ERROR, "retry")
    assert decoder_for(FetchResponse).decode(encode(response)) == response


# -- stages over real rings --------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: pathlib.Path):  # type: ignore[no-untyped-def]
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
        "STREAMHOUSE_MAX_PARTITIONS_PER_REQUEST": "8",
        "STREAMHOUSE_MAX_BATCHES_PER_PARTITION": "10",
    }
    s = load_settings(env)
    yield s
    rings.unlink_all(s)


def test_uploader_answers_refused_and_inconsistent_sealed_frames(settings) -> None:  # type: ignore[no-untyped-def]
    async def go() -> list[AckResult]:
        uploader = Uploader(settings)
        acks = rings.open_reader(settings, rings.ACK)
        try:
            for header in GARBAGE:
                assert await uploader.take(header, b"obj") is None
            refused = SegmentBuilder(1, 100).refusal(5, 1, ErrorCode.CORRUPT_MESSAGE, "lies")
            assert await uploader.take(encode(refused), b"") is None
            lying = SealedSegment(
                1,
                0,
                [SealedBlock(1, 0, 0, 500, 0)],
                [SealedBatch(6, 0, 0, 0, 1, -1, -1, -1), SealedBatch(6, 0, 1, 0, 1, -1, -1, -1)],
            )
            assert await uploader.take(encode(lying), b"short") is None
            good = msgspec.structs.replace(lying, blocks=[SealedBlock(1, 0, 0, 5, 0)])
            assert await uploader.take(encode(good), b"short") == good
            decode = decoder_for(AckFrame).decode
            return [r for h, _ in acks.read_frames() for r in decode(h).results]
        finally:
            acks.close()
            uploader.close()

    results = asyncio.run(go())
    assert [(r.request_id, r.slot, r.ordinal, r.base_offset) for r in results] == [
        (5, 1, ALL_BATCHES, -1),
        (6, 0, 0, -1),
        (6, 0, 1, -1),
    ]
    assert results[0].error == RingError(ErrorCode.CORRUPT_MESSAGE.kafka_code, "lies")
    assert "segment refused" in results[1].error.message


def test_uploader_chunks_acks_larger_than_its_ring(settings) -> None:  # type: ignore[no-untyped-def]
    async def go() -> int:
        uploader = Uploader(settings)
        acks = rings.open_reader(settings, rings.ACK)
        try:
            n = 40_000  # ~1 MB of acks for a 256 KiB ring
            results = [AckResult(1 << 59, 0, i, i, RING_OK) for i in range(n)]
            sent = asyncio.ensure_future(uploader.ack(results))
            got = 0
            decode = decoder_for(AckFrame).decode
            while got < n:
                await acks.wait_readable()
                for header, _ in acks.read_frames():
                    assert len(header) <= acks.max_frame_size
                    got += len(decode(header).results)
            await sent
            return got
        finally:
            acks.close()
            uploader.close()

    assert asyncio.run(go()) == 40_000


def slot(n_batches: int, topic_id: int = 1, partition: int = 0) -> ProduceSlot:
    payload = batches(n_batches)
    frame = produce_frame(payload)
    return ProduceSlot(topic_id, partition, frame.batches, frame.batch_lengths, payload)


def test_pipeline_refuses_slots_that_could_not_be_acknowledged(settings) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        pipeline = Pipeline(settings)
        segmenter = rings.open_reader(settings, rings.PRODUCE)
        try:
            # Too many partitions: every slot fails, nothing is sent.
            outcome = await pipeline.produce([slot(1, partition=p) for p in range(9)])
            assert {o.error.code for s in outcome for o in s} == {ErrorCode.INVALID_REQUEST}
            assert "max_partitions_per_request" in outcome[0][0].error.message
            # Too many batches for one partition, or lengths that lie: that slot only.
            lying = slot(2)
            lying.batch_lengths = [lying.batch_lengths[0], 1]
            ask = asyncio.ensure_future(pipeline.produce([slot(11), lying, slot(2, partition=1)]))
            await segmenter.wait_readable()
            (frame_bytes,) = segmenter.read_frames()
            frame = decoder_for(ProduceFrame).decode(frame_bytes[0])
            assert (frame.slot, frame.partition) == (2, 1)
            ack = AckFrame([AckResult(frame.request_id, 2, ALL_BATCHES, 40)])
            pipeline.on_ack(encode(ack))
            outcome = await ask
            assert outcome[0][0].error.code is ErrorCode.RECORD_LIST_TOO_LARGE
            assert "max_batches_per_partition" in outcome[0][0].error.message
            assert outcome[1][0].error.code is ErrorCode.CORRUPT_MESSAGE
            assert outcome[2] == [BatchOutcome(40, None), BatchOutcome(40, None)]
            # A fetch over the partition limit is refused before it is sent.
            with pytest.raises(StreamHouseError) as refused:
                await pipeline.fetch(fetch_request(9))
            assert refused.value.code is ErrorCode.INVALID_REQUEST
        finally:
            segmenter.close()
            await pipeline.close()

    asyncio.run(go())


def test_pipeline_survives_bad_acks_and_responses(settings) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        pipeline = Pipeline(settings)
        segmenter = rings.open_reader(settings, rings.PRODUCE)
        reader = rings.open_reader(settings, rings.FETCH_REQUEST)
        try:
            ask = asyncio.ensure_future(pipeline.produce([slot(2)]))
            await segmenter.wait_readable()
            frame = decoder_for(ProduceFrame).decode(segmenter.read_frames()[0][0])
            rid = frame.request_id
            for header in GARBAGE:
                pipeline.on_ack(header)
            # Results naming slots or batches the request does not have are ignored.
            pipeline.on_ack(encode(AckFrame([AckResult(rid, 5, 0, 1), AckResult(rid, 0, 9, 1)])))
            pipeline.on_ack(encode(AckFrame([AckResult(rid + 1, 0, 0, 1)])))
            assert not ask.done()
            error = RingError(ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER.kafka_code, "gap")
            pipeline.on_ack(
                encode(AckFrame([AckResult(rid, 0, 0, 3), AckResult(rid, 0, 1, -1, error)]))
            )
            outcome = await ask
            assert outcome[0][0] == BatchOutcome(3, None)
            assert outcome[0][1].error.code is ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER

            # Fetch responses: garbage is dropped; a response that does not add up or does
            # not decode (but names the request) fails that fetch retriably.
            for bad in (
                lambda rid: (encode([rid, "junk"]), b""),
                lambda rid: (encode(FetchResponse(rid, [])), b""),
                lambda rid: (
                    encode(FetchResponse(rid, [FetchPartResult(1, 0, RING_OK, 1, 0, 9, 1, 1)])),
                    b"short",
                ),
            ):
                asked = asyncio.ensure_future(pipeline.fetch(fetch_request(1)))
                await reader.wait_readable()
                sent = decoder_for(FetchRequest).decode(reader.read_frames()[0][0])
                for header in GARBAGE:
                    pipeline.on_response(header, b"")
                assert not asked.done()
                pipeline.on_response(*bad(sent.request_id))
                with pytest.raises(PipelineUnavailable, match="reader"):
                    await asked
            # A refusal by the reader reaches the caller with its code.
            asked = asyncio.ensure_future(pipeline.fetch(fetch_request(1)))
            await reader.wait_readable()
            sent = decoder_for(FetchRequest).decode(reader.read_frames()[0][0])
            refusal = error_response(sent.request_id, ErrorCode.INVALID_REQUEST, "no")
            pipeline.on_response(encode(refusal), b"")
            with pytest.raises(StreamHouseError) as refused:
                await asked
            assert refused.value.code is ErrorCode.INVALID_REQUEST
        finally:
            segmenter.close()
            reader.close()
            await pipeline.close()

    asyncio.run(go())


def test_a_peer_attaching_fails_only_the_requests_sent_before_it(settings) -> None:  # type: ignore[no-untyped-def]
    """Ingest starts before its reader and segmenter: a fetch or produce sent before they
    attached was dropped by their attach (ring rule 7) and fails retriably; one sent after
    is theirs and waits for its answer, even when the watchdog looks only afterwards."""
    decode_fetch = decoder_for(FetchRequest).decode

    async def go() -> None:
        pipeline = Pipeline(settings)
        try:
            lost_fetch = asyncio.ensure_future(pipeline.fetch(fetch_request(1)))
            lost_produce = asyncio.ensure_future(pipeline.produce([slot(1)]))
            await asyncio.sleep(0)  # both written into the rings, nobody reading them yet
            reader_in = rings.open_reader(settings, rings.FETCH_REQUEST)
            reader_out = rings.open_writer(settings, rings.FETCH_RESPONSE)
            segmenter = rings.open_reader(settings, rings.PRODUCE)
            uploader = rings.open_writer(settings, rings.ACK)
            try:
                kept_fetch = asyncio.ensure_future(pipeline.fetch(fetch_request(1)))
                kept_produce = asyncio.ensure_future(pipeline.produce([slot(1)]))
                await reader_in.wait_readable()
                ((header, _),) = reader_in.read_frames()  # the first was dropped at attach
                request = decode_fetch(header)
                await segmenter.wait_readable()
                ((produced, _),) = segmenter.read_frames()
                frame = decoder_for(ProduceFrame).decode(produced)

                pipeline.check_peers()
                for lost in (lost_fetch, lost_produce):
                    with pytest.raises(PipelineUnavailable, match="restarted"):
                        await lost
                assert not kept_fetch.done() and not kept_produce.done()

                part = FetchPartResult(1, 0, RING_OK, 0, 0, 0, 0, 0)
                pipeline.on_response(encode(FetchResponse(request.request_id, [part])), b"")
                response, _ = await kept_fetch
                assert response.parts == [part]
                ack = AckFrame([AckResult(frame.request_id, 0, ALL_BATCHES, 7)])
                pipeline.on_ack(encode(ack))
                assert (await kept_produce) == [[BatchOutcome(7, None)]]
            finally:
                for ring in (reader_in, reader_out, segmenter, uploader):
                    ring.close()
        finally:
            await pipeline.close()

    asyncio.run(go())
