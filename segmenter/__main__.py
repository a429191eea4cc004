"""The segmenter process: produce ring in, sealed segments out (see segmenter.builder).

Two tasks share one SegmentBuilder: the intake reads the produce ring (`async for`) and
seals when a segment is full or the next frame would not fit; the flusher seals the buffered
batches `flush_interval_ms` after the first of them arrived. Both are spawned through
`streamhouse.process.spawn`, so if either dies the process exits and is restarted.
"""

from __future__ import annotations

import asyncio
import logging
import time

from segmenter.builder import SegmentBuilder
from streamhouse import rings
from streamhouse.config import Settings
from streamhouse.frames import SealedSegment, header_encoder
from streamhouse.process import run_process, spawn

log = logging.getLogger("segmenter")


async def run_segmenter(settings: Settings, stop: asyncio.Event) -> None:
    produce = rings.open_reader(settings, rings.PRODUCE)
    sealed_ring = rings.open_writer(settings, rings.SEALED)
    builder = SegmentBuilder(time.time_ns(), settings.max_segment_bytes, sealed_ring.max_frame_size)
    flush_ns = settings.flush_interval_ms * 1_000_000
    buffered = asyncio.Event()  # set when the builder goes from empty to holding batches
    log.info(
        "segmenter ready: flush every %d ms or at %d bytes",
        settings.flush_interval_ms,
        settings.max_segment_bytes,
    )

    async def send(sealed: SealedSegment, obj: bytes) -> None:
        await sealed_ring.write(header_encoder.encode(sealed), obj)
        if sealed.error.code:
            log.debug("sent a refusal for %d batch refs", len(sealed.batches))
        else:
            log.debug("sealed segment %d: %d bytes", sealed.sequence, len(obj))

    async def intake() -> None:
        async for header, payload in produce:
            was_empty = builder.empty
            for sealed, obj in builder.take(header, payload, time.monotonic_ns()):
                await send(sealed, obj)
            if was_empty and not builder.empty:
                buffered.set()

    async def flusher() -> None:
        while True:
            if builder.empty or builder.oldest_ns is None:
                buffered.clear()
                await buffered.wait()
                continue
            remaining = builder.oldest_ns + flush_ns - time.monotonic_ns()
            if remaining > 0:
                # Woken early only to re-check: a seal by the intake moves oldest_ns.
                buffered.clear()
                try:
                    await asyncio.wait_for(buffered.wait(), remaining / 1e9)
                except TimeoutError:
                    pass
                continue
            await send(*builder.seal())

    tasks = [spawn(intake(), "produce-ring intake"), spawn(flusher(), "segment flusher")]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not builder.empty:
            # Ingest stops first (supervisord priorities), so this is the last of the data.
            try:
                await asyncio.wait_for(send(*builder.seal()), timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("dropped unsealed data at shutdown; it was never acknowledged")
        produce.close()
        sealed_ring.close()


def main() -> None:
    run_process("segmenter", run_segmenter)


if __name__ == "__main__":
    main()
