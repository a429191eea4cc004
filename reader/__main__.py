"""The reader process: fetch requests in, batches out; committed segments feed its cache.

No frame can stop the reader: a fetch request that does not decode or does not add up is
answered with an error response (`reader.engine.parse_request`), a fetch that fails is
answered with a retriable error, a response is trimmed to fit its ring
(`reader.engine.fit_response`), and a committed-segment frame that does not add up is
dropped with one log line (readers then read that segment from the object store). The ring
loops are spawned through `streamhouse.process.spawn`: if one dies the process exits and
supervisord restarts it.

With a PostgreSQL metadata store (a cluster of agents) the reader also runs a
`metadata.commit_feed.CommitFeed` (spawned the same way): every agent's segment commits wake
its long-polls and feed its cache (`ReadEngine.on_notice`), and a gap in the feed (the
connection lost and re-established) wakes every waiting fetch (`ReadEngine.wake_all`). An
outage of PostgreSQL does not stop the reader: the feed reconnects by itself.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from metadata.async_store import AsyncMetadata
from metadata.commit_feed import CommitFeed
from metadata.interface import is_postgres_target
from reader.cache import BlockCache
from reader.engine import ReadEngine, error_response, fit_response, parse_request
from streamhouse import objectstore, rings
from streamhouse.config import Settings
from streamhouse.errors import ErrorCode
from streamhouse.frames import (
    COMMITTED_HEADERS_ONLY,
    CommittedSegment,
    FetchResponse,
    FrameError,
    check_committed,
    decoder_for,
    header_encoder,
)
from streamhouse.process import describe_failure, run_process, spawn

log = logging.getLogger("reader")


async def run_reader(settings: Settings, stop: asyncio.Event) -> None:
    meta = await AsyncMetadata.open(
        settings.metadata_target, forbid_loop_calls=settings.debug_loop_calls
    )
    store = objectstore.open_object_store(settings.object_store_url, settings.store_timeout_ms)
    # A window never takes more than a quarter of the cache (a tiny cache reads blocks alone).
    window = min(settings.read_window_bytes, settings.cache_bytes // 4)
    engine = ReadEngine(
        meta, store, BlockCache(settings.cache_bytes), settings.prefetch_blocks, window
    )
    engine.max_waiting = settings.reader_max_waiting_fetches
    engine.max_wait_ms = settings.reader_max_wait_ms
    engine.max_inflated = settings.max_batch_bytes
    engine.tail_interest_s = settings.reader_tail_interest_ms / 1000
    requests = rings.open_reader(settings, rings.FETCH_REQUEST)
    responses = rings.open_writer(settings, rings.FETCH_RESPONSE)
    committed = rings.open_reader(settings, rings.COMMITTED)
    decode_committed = decoder_for(CommittedSegment).decode

    def hint_committed() -> None:
        """Tells the uploader whether committed segments need their objects (the engine
        caches blocks only of partitions read lately: nobody reading, no copy sent)."""
        hint = 0 if engine.wants_committed_objects() else COMMITTED_HEADERS_ONLY
        if committed.hint != hint:
            committed.set_hint(hint)

    engine.on_interest = hint_committed
    hint_committed()
    in_flight: set[asyncio.Task[None]] = set()
    slot_freed = asyncio.Event()

    def finished(task: asyncio.Task[None]) -> None:
        in_flight.discard(task)
        slot_freed.set()

    log.info(
        "reader ready: cache %d bytes, prefetch %d blocks, read window %d bytes",
        settings.cache_bytes,
        settings.prefetch_blocks,
        window,
    )

    async def serve(header: bytes) -> None:
        request = parse_request(header, settings.max_partitions_per_request)
        if request is None:
            return
        if isinstance(request, FetchResponse):  # refused: answer with the error
            await responses.write(header_encoder.encode(request))
            return
        try:
            response, payload = await engine.fetch(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("fetch %d failed: %s", request.request_id, describe_failure(exc))
            response, payload = (
                error_response(
                    request.request_id,
                    ErrorCode.KAFKA_STORAGE_ERROR,
                    f"the reader could not serve the fetch ({exc}); retry",
                ),
                b"",
            )
        header, payload = fit_response(request, response, payload, responses.max_frame_size)
        try:
            await responses.write(header, payload)
        except Exception as exc:  # e.g. the ring closed at shutdown; ingest times it out
            log.error("fetch %d: response not sent: %s", request.request_id, exc)

    async def take_requests() -> None:
        # One frame at a time, so that at the limit the requests stay in the ring: ingest's
        # writes wait (back-pressure) and fail retriably if no fetch finishes in time.
        async for header, _ in requests.frames(batch=1):
            task = asyncio.ensure_future(serve(header))
            in_flight.add(task)
            task.add_done_callback(finished)
            while len(in_flight) >= settings.reader_max_fetches:
                slot_freed.clear()
                await slot_freed.wait()

    def take_one_committed(header: memoryview, obj: memoryview) -> None:
        """One committed-segment frame, lent by the ring: the engine copies the blocks it
        caches (those of partitions read at their tail), nothing else is copied."""
        try:
            segment = decode_committed(header)
            check_committed(segment, len(obj))
        except (msgspec.DecodeError, msgspec.ValidationError, FrameError) as exc:
            log.error("dropped a committed-segment frame that does not add up: %s", exc)
            return
        try:
            engine.on_committed(segment, obj, lent=True)
        except Exception as exc:  # the cache is an optimisation: read from the store
            log.error("committed segment %s not cached: %s", segment.key, exc)

    async def take_committed() -> None:
        while True:
            if not committed.take_frames(take_one_committed):
                await committed.wait_readable()
            else:
                hint_committed()  # interest may have run out meanwhile
                await asyncio.sleep(0)  # fetches run between batches of frames

    tasks = [
        spawn(take_requests(), "fetch-request intake"),
        spawn(take_committed(), "committed-segment intake"),
    ]
    target = settings.metadata_target
    if isinstance(target, str) and is_postgres_target(target):
        feed = CommitFeed(target, engine.on_notice, engine.wake_all)
        tasks.append(spawn(feed.run(), "commit feed"))
    stop_task = asyncio.ensure_future(stop.wait())
    try:
        await stop_task
    finally:
        for task in (*tasks, stop_task, *in_flight):
            task.cancel()
        requests.close()
        responses.close()
        committed.close()
        await meta.close()


def main() -> None:
    run_process("reader", run_reader)


if __name__ == "__main__":
    main()
