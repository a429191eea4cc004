"""The segmenter process: produce ring in, sealed segments out (see segmenter.builder)."""

from __future__ import annotations

import asyncio
import logging
import time

from segmenter.builder import SegmentBuilder
from streamhouse import rings
from streamhouse.config import Settings
from streamhouse.frames import ProduceFrame, decoder_for, header_encoder
from streamhouse.process import run_process

log = logging.getLogger("segmenter")


async def run_segmenter(settings: Settings, stop: asyncio.Event) -> None:
    produce = rings.open_reader(settings, rings.PRODUCE)
    sealed_ring = rings.open_writer(settings, rings.SEALED)
    decode = decoder_for(ProduceFrame).decode
    builder = SegmentBuilder(time.time_ns(), settings.max_segment_bytes)
    flush_ns = settings.flush_interval_ms * 1_000_000
    log.info(
        "segmenter ready: flush every %d ms or at %d bytes",
        settings.flush_interval_ms,
        settings.max_segment_bytes,
    )

    async def seal() -> None:
        header, obj = builder.seal()
        await sealed_ring.write(header_encoder.encode(header), obj)
        log.debug("sealed segment %d: %d bytes", header.sequence, len(obj))

    stop_task = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            frames = produce.read_frames()
            if frames:
                now = time.monotonic_ns()
                for header, payload in frames:
                    builder.add(decode(header), payload, now)
                    if builder.full:
                        await seal()
            if not builder.empty and builder.oldest_ns is not None:
                remaining = builder.oldest_ns + flush_ns - time.monotonic_ns()
                if remaining <= 0:
                    await seal()
                    continue
                timeout: float | None = remaining / 1e9
            else:
                timeout = None
            if frames:
                continue  # drain before sleeping
            wait = asyncio.ensure_future(produce.wait_readable())
            await asyncio.wait({wait, stop_task}, timeout=timeout, return_when="FIRST_COMPLETED")
            if not wait.done():
                wait.cancel()
    finally:
        stop_task.cancel()
        if not builder.empty:
            # Ingest stops first (supervisord priorities), so this is the last of the data.
            try:
                await asyncio.wait_for(seal(), timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("dropped unsealed data at shutdown; it was never acknowledged")
        produce.close()
        sealed_ring.close()


def main() -> None:
    run_process("segmenter", run_segmenter)


if __name__ == "__main__":
    main()
