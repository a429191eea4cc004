"""The reader process: fetch requests in, batches out; committed segments feed its cache."""

from __future__ import annotations

import asyncio
import logging

from metadata import MetadataStore
from reader.cache import BlockCache
from reader.engine import ReadEngine
from streamhouse import objectstore, rings
from streamhouse.config import Settings
from streamhouse.frames import CommittedSegment, FetchRequest, decoder_for, header_encoder
from streamhouse.process import run_process

log = logging.getLogger("reader")


async def run_reader(settings: Settings, stop: asyncio.Event) -> None:
    meta = MetadataStore(settings.metadata_path)
    store = objectstore.open_object_store(settings.object_store_url, settings.store_timeout_ms)
    engine = ReadEngine(meta, store, BlockCache(settings.cache_bytes), settings.prefetch_blocks)
    engine.max_waiting = settings.reader_max_waiting_fetches
    requests = rings.open_reader(settings, rings.FETCH_REQUEST)
    responses = rings.open_writer(settings, rings.FETCH_RESPONSE)
    committed = rings.open_reader(settings, rings.COMMITTED)
    decode_request = decoder_for(FetchRequest).decode
    decode_committed = decoder_for(CommittedSegment).decode
    in_flight: set[asyncio.Task[None]] = set()
    slot_freed = asyncio.Event()

    def finished(task: asyncio.Task[None]) -> None:
        in_flight.discard(task)
        slot_freed.set()

    log.info(
        "reader ready: cache %d bytes, prefetch %d blocks",
        settings.cache_bytes,
        settings.prefetch_blocks,
    )

    async def serve(request: FetchRequest) -> None:
        try:
            response, payload = await engine.fetch(request)
            await responses.write(header_encoder.encode(response), payload)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Ingest times the request out and answers the client retriably.
            log.exception("fetch %d failed", request.request_id)

    async def take_requests() -> None:
        while True:
            room = settings.reader_max_fetches - len(in_flight)
            if room <= 0:
                # At the limit, requests stay in the ring: ingest's writes wait (back-pressure)
                # and fail retriably if no fetch finishes in time.
                slot_freed.clear()
                await slot_freed.wait()
                continue
            frames = requests.read_frames(room)
            if not frames:
                await requests.wait_readable()
                continue
            for header, _ in frames:
                task = asyncio.ensure_future(serve(decode_request(header)))
                in_flight.add(task)
                task.add_done_callback(finished)

    async def take_committed() -> None:
        while True:
            frames = committed.read_frames(16)
            if not frames:
                await committed.wait_readable()
                continue
            for header, obj in frames:
                engine.on_committed(decode_committed(header), obj)

    tasks = [asyncio.ensure_future(take_requests()), asyncio.ensure_future(take_committed())]
    stop_task = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({*tasks, stop_task}, return_when="FIRST_COMPLETED")
        for task in done:
            if task is not stop_task:
                task.result()
    finally:
        for task in (*tasks, stop_task, *in_flight):
            task.cancel()
        requests.close()
        responses.close()
        committed.close()
        meta.close()


def main() -> None:
    run_process("reader", run_reader)


if __name__ == "__main__":
    main()
