"""The segmenter process: produce ring in, sealed segments out (see segmenter.builder).

Three tasks share one SegmentBuilder and one SealPolicy (segmenter.policy: when to seal):

- the intake reads the produce ring (`async for`) and seals when a segment is full or the
  next frame would not fit; it feeds the policy's rate estimate and whether more frames of a
  request follow, and wakes the sealer when the buffer reaches the size the sealer waits for;
- the progress reader takes the uploader's reports from the upload-progress ring
  (streamhouse/upload_progress.py) into the policy and wakes the sealer;
- the sealer asks the policy whether to seal now (uploader idle and the cost rule met, or the
  flush interval up, or full) and otherwise sleeps until the policy's deadline or a wake-up.
  Before each decision it compares the sealed ring's reader epoch with the last one seen: an
  uploader restart ends every segment in flight (upload_progress rule 4).

All are spawned through `streamhouse.process.spawn`, so if one dies the process exits and is
restarted.
"""

from __future__ import annotations

import asyncio
import logging
import time

from segmenter.builder import SegmentBuilder, SegmentObject
from segmenter.policy import SealPolicy
from streamhouse import rings
from streamhouse.config import Settings
from streamhouse.frames import SealedSegment, header_encoder
from streamhouse.process import run_process, spawn
from streamhouse.upload_progress import decode_progress

log = logging.getLogger("segmenter")


async def run_segmenter(settings: Settings, stop: asyncio.Event) -> None:
    produce = rings.open_reader(settings, rings.PRODUCE)
    sealed_ring = rings.open_writer(settings, rings.SEALED)
    progress_ring = rings.open_reader(settings, rings.UPLOAD_PROGRESS)
    epoch = time.time_ns()
    # Sealed objects go into the sealed ring as their parts: one copy, no joined object first.
    builder = SegmentBuilder(
        epoch, settings.max_segment_bytes, sealed_ring.max_frame_size, joined=False
    )
    policy = SealPolicy(
        epoch,
        settings.flush_interval_ms * 1_000_000,
        settings.max_segment_bytes,
        settings.seal_target_bytes,
        settings.seal_cost_rate_bytes_per_second,
        settings.seal_uploads_in_flight,
        settings.seal_max_puts_per_second,
    )
    wake = asyncio.Event()  # the sealer decides again
    wake_bytes: int | None = 1  # ... once the buffer holds this many bytes (None: not for size)
    uploader_epoch = sealed_ring.peer_epoch()
    log.info(
        "segmenter ready: seal when the uploader is idle and %d bytes (less below %d bytes/s) "
        "are buffered, after %d ms at the latest, or at %d bytes",
        settings.seal_target_bytes,
        settings.seal_cost_rate_bytes_per_second,
        settings.flush_interval_ms,
        settings.max_segment_bytes,
    )

    async def send(sealed: SealedSegment, obj: SegmentObject) -> None:
        policy.sealed(sealed.sequence, time.monotonic_ns())
        await sealed_ring.write(header_encoder.encode(sealed), obj)
        if sealed.error.code:
            log.debug("sent a refusal for %d batch refs", len(sealed.batches))
        else:
            log.debug("sealed segment %d", sealed.sequence)

    async def intake() -> None:
        async for header, payload in produce:
            now = time.monotonic_ns()
            policy.observe(now, len(payload))
            for sealed, obj in builder.take(header, payload, now):
                await send(sealed, obj)
            request_ended = policy.in_request and not builder.following
            policy.in_request = builder.following > 0
            if request_ended or (wake_bytes is not None and builder.buffered_bytes >= wake_bytes):
                wake.set()

    async def progress() -> None:
        async for header, _ in progress_ring:
            report = decode_progress(header)
            if report is not None:
                policy.progress(report)
                wake.set()

    async def sealer() -> None:
        nonlocal wake_bytes, uploader_epoch
        while True:
            wake.clear()
            if sealed_ring.peer_epoch() != uploader_epoch:
                uploader_epoch = sealed_ring.peer_epoch()
                policy.uploader_restarted()
                log.info("uploader restarted: no segment of ours is in flight any more")
            decision = policy.decide(time.monotonic_ns(), builder.buffered_bytes, builder.oldest_ns)
            if decision.seal:
                log.debug("sealing (%s): %d bytes", decision.reason, builder.buffered_bytes)
                await send(*builder.seal())
                continue
            wake_bytes = decision.until_bytes
            if decision.until_ns is None:
                await wake.wait()
                continue
            try:
                async with asyncio.timeout((decision.until_ns - time.monotonic_ns()) / 1e9):
                    await wake.wait()
            except TimeoutError:
                pass

    tasks = [
        spawn(intake(), "produce-ring intake"),
        spawn(progress(), "upload-progress intake"),
        spawn(sealer(), "segment sealer"),
    ]
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
        progress_ring.close()


def main() -> None:
    run_process("segmenter", run_segmenter)


if __name__ == "__main__":
    main()
