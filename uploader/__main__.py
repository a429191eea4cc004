"""The uploader process: sealed segments in; PUT, commit in order, ack ingest, feed the reader.

Rules:
- Segments are PUT concurrently (up to `upload_concurrency`) but committed strictly in the
  order they were sealed, one metadata transaction each; offsets are assigned by that commit.
- A segment whose PUT still fails after `upload_attempts` tries (with exponential backoff) is
  not committed; its batches are acknowledged with a retriable error. Nothing is acknowledged
  before its commit.
- The committed segment is offered to the reader's cache; if that ring is full the reader
  simply reads it from the object store later.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque

from metadata import BatchRef, CommitBlock, MetadataStore, MetadataUnavailableError
from streamhouse import objectstore, rings
from streamhouse.config import Settings
from streamhouse.frames import (
    AckFrame,
    CommittedBlock,
    CommittedSegment,
    SealedSegment,
    decoder_for,
    header_encoder,
)
from streamhouse.process import run_process

log = logging.getLogger("uploader")

STORAGE_ERROR = "KAFKA_STORAGE_ERROR"


def new_segment_key() -> str:
    """Object key of a new segment: time-ordered, random, and free of user-supplied text."""
    return f"segments/{time.time_ns():020d}-{secrets.token_hex(8)}.seg"


async def put_with_retries(store: object, key: str, obj: bytes, settings: Settings) -> bool:
    """PUTs `obj`, retrying with exponential backoff; False when every attempt failed."""
    delay = 0.1
    for attempt in range(1, settings.upload_attempts + 1):
        try:
            await asyncio.wait_for(
                objectstore.put(store, key, obj), timeout=settings.store_timeout_ms / 1000
            )
            return True
        except Exception as exc:  # obstore raises many kinds; all are retried alike
            log.warning(
                "PUT %s failed (attempt %d of %d): %s", key, attempt, settings.upload_attempts, exc
            )
            if attempt == settings.upload_attempts:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    return False


def commit_blocks(sealed: SealedSegment) -> list[CommitBlock]:
    """The metadata commit request for a sealed segment (batches grouped by block)."""
    refs: list[list[BatchRef]] = [[] for _ in sealed.blocks]
    for b in sealed.batches:
        refs[b.block].append(
            BatchRef(b.record_count, b.producer_id, b.producer_epoch, b.base_sequence)
        )
    return [
        CommitBlock(topic_id, partition, offset, length, max_ts, refs[i])
        for i, (topic_id, partition, offset, length, max_ts) in enumerate(sealed.blocks)
    ]


class Uploader:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = objectstore.open_object_store(
            settings.object_store_url, settings.store_timeout_ms
        )
        # A commit that meets a locked database waits up to the produce timeout, then fails.
        self.meta = MetadataStore(
            settings.metadata_path, busy_timeout_ms=settings.produce_timeout_ms
        )
        self.sealed = rings.open_reader(settings, rings.SEALED)
        self.acks = rings.open_writer(settings, rings.ACK)
        self.committed = rings.open_writer(settings, rings.COMMITTED)
        self.slots = asyncio.Semaphore(settings.upload_concurrency)
        self.in_order: deque[tuple[SealedSegment, bytes, str, asyncio.Task[bool]]] = deque()
        self.work = asyncio.Event()

    async def upload(self, key: str, obj: bytes) -> bool:
        async with self.slots:
            return await put_with_retries(self.store, key, obj, self.settings)

    async def receive(self, stop: asyncio.Event) -> None:
        """Starts an upload for every sealed segment, queued in seal order."""
        decode = decoder_for(SealedSegment).decode
        while not stop.is_set():
            frames = self.sealed.read_frames(64)
            if not frames:
                await self.sealed.wait_readable()
                continue
            for header, obj in frames:
                sealed = decode(header)
                key = new_segment_key()
                # Bound the work in flight: wait for an upload slot before taking more.
                while len(self.in_order) >= 4 * self.settings.upload_concurrency:
                    await self._drained()
                task = asyncio.ensure_future(self.upload(key, obj))
                self.in_order.append((sealed, obj, key, task))
                self.work.set()

    async def _drained(self) -> None:
        head = self.in_order[0][3]
        await asyncio.wait({head})
        await asyncio.sleep(0)  # let commit() pop it

    async def commit_loop(self, stop: asyncio.Event) -> None:
        """Commits finished uploads strictly in seal order and acknowledges them."""
        while not stop.is_set() or self.in_order:
            if not self.in_order:
                self.work.clear()
                stop_wait = asyncio.ensure_future(stop.wait())
                work_wait = asyncio.ensure_future(self.work.wait())
                await asyncio.wait({stop_wait, work_wait}, return_when="FIRST_COMPLETED")
                stop_wait.cancel()
                work_wait.cancel()
                continue
            sealed, obj, key, task = self.in_order[0]
            uploaded = await task
            self.in_order.popleft()
            if uploaded:
                await self.commit(sealed, obj, key)
            else:
                log.error("segment %s could not be stored; failing its produce requests", key)
                results = [
                    (b.request_id, b.slot, b.ordinal, -1, STORAGE_ERROR) for b in sealed.batches
                ]
                await self.acks.write(header_encoder.encode(AckFrame(results)))

    async def commit(self, sealed: SealedSegment, obj: bytes, key: str) -> None:
        blocks = commit_blocks(sealed)
        try:
            per_block = await asyncio.to_thread(self.meta.commit_segment, key, len(obj), blocks)
        except MetadataUnavailableError as exc:
            # Nothing was committed (the object is an orphan, never served): fail retriably.
            log.error("segment %s could not be committed: %s", key, exc)
            failed = [(b.request_id, b.slot, b.ordinal, -1, exc.code.name) for b in sealed.batches]
            await self.acks.write(header_encoder.encode(AckFrame(failed)))
            return
        results: list[tuple[int, int, int, int, str]] = []
        committed: list[CommittedBlock] = []
        batch_iter = iter(sealed.batches)
        for block, block_results in zip(blocks, per_block, strict=True):
            base = end = -1
            skipped: list[int] = []
            for ordinal, result in enumerate(block_results):
                ref = next(batch_iter)
                results.append(
                    (ref.request_id, ref.slot, ref.ordinal, result.base_offset, result.error or "")
                )
                if result.error is None and not result.duplicate:
                    if base < 0:
                        base = result.base_offset
                    end = result.base_offset + ref.record_count
                else:
                    skipped.append(ordinal)
            if base >= 0:
                committed.append(
                    CommittedBlock(
                        block.topic_id,
                        block.partition,
                        block.byte_offset,
                        block.byte_length,
                        base,
                        end,
                        tuple(skipped),
                    )
                )
        await self.acks.write(header_encoder.encode(AckFrame(results)))
        if committed and not self.committed.try_write(
            header_encoder.encode(CommittedSegment(key, committed)), obj
        ):
            log.debug("committed ring full; reader will read %s from the object store", key)

    def close(self) -> None:
        self.sealed.close()
        self.acks.close()
        self.committed.close()
        self.meta.close()


async def run_uploader(settings: Settings, stop: asyncio.Event) -> None:
    uploader = Uploader(settings)
    log.info(
        "uploader ready: object store %s, %d concurrent uploads",
        settings.object_store_url,
        settings.upload_concurrency,
    )
    receive = asyncio.ensure_future(uploader.receive(stop))
    commit = asyncio.ensure_future(uploader.commit_loop(stop))
    stop_task = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({receive, commit, stop_task}, return_when="FIRST_COMPLETED")
        for task in done:
            if task is not stop_task:
                task.result()  # surface a crash
        receive.cancel()
        uploader.work.set()
        # Finish what is already uploading so its producers get their acks.
        await asyncio.wait_for(commit, timeout=settings.store_timeout_ms / 1000)
    finally:
        stop_task.cancel()
        uploader.close()


def main() -> None:
    run_process("uploader", run_uploader)


if __name__ == "__main__":
    main()
