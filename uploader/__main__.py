"""The uploader process: sealed segments in; PUT, commit in order, ack ingest, feed the reader.

Rules:
- Segments are PUT concurrently (up to `upload_concurrency`) but committed strictly in the
  order they were sealed, one metadata transaction each; offsets are assigned by that commit.
- A segment whose PUT still fails after `upload_attempts` tries (with exponential backoff) is
  not committed; its batches are acknowledged with a retriable error. Nothing is acknowledged
  before its commit.
- The committed segment is offered to the reader's cache; if that ring is full (or the frame
  would not fit it) the reader simply reads it from the object store later.
- Acks are split into as many AckFrames as it takes for each to fit the ack ring.
- Commit deadlines: every batch carries the time after which it must not be committed (its
  request id, see ingest/pipeline.py "Produce deadlines"); ingest answers the produce a grace
  period after it. A segment is committed only before the earliest deadline of its batches,
  and each commit attempt waits for the metadata store (its busy timeout) only for what is
  left of that deadline, so the definite outcome reaches ingest before ingest answers. A
  segment past its deadline is not committed; its batches fail with NOT_ENOUGH_REPLICAS.
- Error codes of the acks say whether the data may have been written: NOT_ENOUGH_REPLICAS
  and KAFKA_STORAGE_ERROR when it certainly was not (the deadline passed, the metadata store
  was unavailable and changed nothing, the PUT failed; the object is deleted), which Kafka
  clients treat as "not persisted" and retry without fencing themselves; REQUEST_TIMED_OUT
  when the commit's outcome is unknown (a COMMIT lost on the wire whose fate the store could
  not learn; the object is kept).
- No frame can stop the uploader: a sealed frame that does not decode is dropped with one log
  line (its produces time out and are retried); one whose blocks and batches do not add up,
  a refusal from the segmenter, and a commit that fails are answered with an error ack for
  the batches they carry.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections import deque

import msgspec

from metadata import BatchRef, CommitBlock, MetadataError, MetadataUnavailableError
from metadata.async_store import AsyncMetadata
from metadata.interface import open_store
from metadata.store import BatchResult
from streamhouse import metrics, objectstore, rings
from streamhouse.config import Settings
from streamhouse.errors import RING_OK, ErrorCode, RingError, StreamHouseError
from streamhouse.frames import (
    COMMITTED_HEADERS_ONLY,
    AckResult,
    CommittedBlock,
    CommittedSegment,
    FrameError,
    SealedBatch,
    SealedSegment,
    ack_headers,
    check_sealed,
    commit_deadline,
    decoder_for,
    header_encoder,
    ring_error,
)
from streamhouse.process import run_process, spawn
from streamhouse.segment_keys import SegmentKeys
from streamhouse.upload_progress import ProgressReporter

log = logging.getLogger("uploader")

# A block header's raw_length field (streamhouse.segment's block layout: u32 at byte 4).
_RAW_LENGTH = struct.Struct("<I")
# Largest AckFrame header written (several are written for more results).
MAX_ACK_FRAME_BYTES = 1024 * 1024


# This process's segment keys (streamhouse/segment_keys.py: one writer, sequences in the
# order segments are taken, which is the order they are committed and handed to the reader).
SEGMENT_KEYS = SegmentKeys()


#: A sealed segment's bytes: a page-aligned copy out of the sealed ring
#: (objectstore.page_aligned_copy), or plain bytes (tests).
SegmentBytes = bytes | memoryview

#: Sealed frames taken out of the ring at a time.
RECEIVE_BATCH = 64


def _copy_sealed(header: memoryview, payload: memoryview) -> tuple[bytes, memoryview]:
    """A sealed frame out of the ring: its header, and its segment as a page-aligned copy."""
    return bytes(header), objectstore.page_aligned_copy(payload)


def new_segment_key() -> str:
    """Object key of a new segment: time-ordered, unique, and free of user-supplied text."""
    return SEGMENT_KEYS.new_key()


async def put_with_retries(store: object, key: str, obj: SegmentBytes, settings: Settings) -> bool:
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


def commit_blocks(sealed: SealedSegment, obj: SegmentBytes) -> list[CommitBlock]:
    """The metadata commit request for a sealed segment (batches grouped by block); each
    block's raw length (its batches' bytes, which retention.bytes counts) is read from its
    block header in the object ``obj`` (streamhouse.segment: u32 ``raw_length`` at byte 4)."""
    refs: list[list[BatchRef]] = [[] for _ in sealed.blocks]
    for b in sealed.batches:
        refs[b.block].append(
            BatchRef(
                b.record_count,
                b.producer_id,
                b.producer_epoch,
                b.base_sequence,
                b.attributes,
                b.control_type,
            )
        )
    return [
        CommitBlock(
            b.topic_id,
            b.partition,
            b.byte_offset,
            b.byte_length,
            b.max_timestamp,
            refs[i],
            _RAW_LENGTH.unpack_from(obj, b.byte_offset + 4)[0],
        )
        for i, b in enumerate(sealed.blocks)
    ]


def batch_error(result: BatchResult, block: CommitBlock) -> RingError:
    """The ring error for one batch's commit outcome, with a message saying what to do."""
    if result.error is None:
        return RING_OK
    code = ErrorCode.from_name(result.error)
    where = f"topic id {block.topic_id} partition {block.partition}"
    if code is ErrorCode.UNKNOWN_TOPIC_OR_PARTITION:
        message = f"{where} does not exist (deleted while producing?)"
    elif code is ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER:
        message = f"out-of-order sequence number for {where}: a batch is missing"
    elif code is ErrorCode.INVALID_PRODUCER_EPOCH:
        message = "producer epoch is fenced by a newer one: initialise the producer again"
    else:
        message = f"commit of a batch for {where} failed: {result.error}"
    return ring_error(code.kafka_code, message)


def segment_deadline(sealed: SealedSegment) -> float:
    """The earliest commit deadline (monotonic seconds) of the segment's batches."""
    return min((commit_deadline(b.request_id) for b in sealed.batches), default=math.inf)


def unavailable_error(exc: MetadataUnavailableError) -> RingError:
    """The ack error for a commit that changed nothing: retriable and "not persisted" to
    Kafka clients (REQUEST_TIMED_OUT would tell them the data may have been written)."""
    code = exc.code
    if code is ErrorCode.REQUEST_TIMED_OUT:
        code = ErrorCode.NOT_ENOUGH_REPLICAS
    return ring_error(code.kafka_code, f"{exc.message} (nothing was written)")


def outcome_unknown(exc: BaseException) -> bool:
    """True if a failed commit may still have taken effect: the store raises a plain
    MetadataError when it lost a COMMIT and could not learn its fate (see
    metadata/postgres.py rule 4); its subclasses are definite refusals."""
    return type(exc) is MetadataError


def failed_acks(batches: list[SealedBatch], error: RingError) -> list[AckResult]:
    """The same error for every batch listed."""
    return [AckResult(b.request_id, b.slot, b.ordinal, -1, error) for b in batches]


#: Most segments committed in one metadata transaction (uploaded segments waiting in seal
#: order behind the one being committed go with it).
MAX_SEGMENTS_PER_COMMIT = 16


def _uploaded(task: asyncio.Task[bool]) -> bool:
    """True if the upload finished and stored its object."""
    return task.done() and not task.cancelled() and task.exception() is None and task.result()


class Uploader:
    def __init__(self, settings: Settings, meta: AsyncMetadata | None = None) -> None:
        """`meta` is opened off the loop by the process (see run_uploader); without it (unit
        tests) the store is opened here, and closed by :meth:`close`."""
        self.settings = settings
        self.store = objectstore.open_object_store(
            settings.object_store_url, settings.store_timeout_ms
        )
        # A commit that meets a locked database waits up to the produce timeout, then fails.
        self._owns_meta = meta is None
        self.meta = meta or AsyncMetadata(
            open_store(settings.metadata_target, busy_timeout_ms=settings.produce_timeout_ms)
        )
        self.sealed = rings.open_reader(settings, rings.SEALED)
        self.acks = rings.open_writer(settings, rings.ACK)
        self.committed = rings.open_writer(settings, rings.COMMITTED)
        # The key writer's hello (no blocks, no object), so the reader knows which segments
        # its committed ring will deliver before the first one (segment_keys rules).
        self.committed.try_write(
            header_encoder.encode(CommittedSegment(SEGMENT_KEYS.hello_key(), []))
        )
        # Group-commit feedback to the segmenter (streamhouse/upload_progress.py): opened after
        # the sealed ring, so its hello follows the sealed ring's new reader epoch.
        self.progress = ProgressReporter(rings.open_writer(settings, rings.UPLOAD_PROGRESS))
        self._received: tuple[int, int] | None = None  # last segment taken (epoch, sequence)
        self._committing: list[SealedSegment] = []  # taken off in_order, not yet acked
        self.slots = asyncio.Semaphore(settings.upload_concurrency)
        self.in_order: deque[tuple[SealedSegment, SegmentBytes, str, asyncio.Task[bool]]] = deque()
        self.work = asyncio.Event()
        self._decode = decoder_for(SealedSegment).decode

    async def upload(self, key: str, obj: SegmentBytes) -> bool:
        async with self.slots:
            started = time.perf_counter()
            stored = await put_with_retries(self.store, key, obj, self.settings)
            if stored:  # the put stage of produce latency: the upload with its retries
                metrics.child(metrics.PRODUCE_STAGE, "put").observe(time.perf_counter() - started)
            return stored

    async def receive(self, stop: asyncio.Event) -> None:
        """Starts an upload for every sealed segment, queued in seal order."""
        # Each segment is copied out of the ring once, into page-aligned memory that a
        # local-folder PUT writes to disk without the page cache (objectstore).
        async for header, obj in self.sealed.frames(RECEIVE_BATCH, _copy_sealed):
            sealed = await self.take(header, obj)
            if sealed is None:
                self._report_progress()  # a refused segment is done
                continue
            key = new_segment_key()
            # Bound the work in flight: wait for an upload slot before taking more.
            while len(self.in_order) >= 4 * self.settings.upload_concurrency:
                await self._drained()
            task = asyncio.ensure_future(self.upload(key, obj))
            self.in_order.append((sealed, obj, key, task))
            task.add_done_callback(self._report_progress)
            self.work.set()
            if stop.is_set():
                return

    async def take(self, header: bytes, obj: SegmentBytes) -> SealedSegment | None:
        """The sealed segment to upload, or None after answering a refused or bad frame."""
        try:
            sealed = self._decode(header)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error(
                "dropped a sealed frame whose header does not decode (%s); its produces time "
                "out and are retried",
                exc,
            )
            return None
        if sealed.sequence >= 0:
            self._received = (sealed.segmenter_epoch, sealed.sequence)
        try:
            check_sealed(sealed, len(obj))
        except FrameError as exc:
            log.error("refusing a sealed segment that does not add up: %s", exc)
            error = ring_error(ErrorCode.CORRUPT_MESSAGE.kafka_code, f"segment refused: {exc}")
            await self.ack(failed_acks(sealed.batches, error))
            return None
        if sealed.error.code:
            await self.ack(failed_acks(sealed.batches, sealed.error))
            return None
        return sealed

    async def ack(self, results: list[AckResult]) -> None:
        """Sends the results to ingest in as many AckFrames as it takes to fit the ring."""
        limit = min(MAX_ACK_FRAME_BYTES, self.acks.max_frame_size)
        for header in ack_headers(results, limit):
            await self.acks.write(header)

    def _report_progress(self, _done: object = None) -> None:
        """Tells the segmenter how far the segments are (upload_progress rule 2)."""
        pending = [(s.segmenter_epoch, s.sequence, True) for s in self._committing]
        pending += [(s.segmenter_epoch, s.sequence, t.done()) for s, _, _, t in self.in_order]
        self.progress.report(self._received, pending)

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
            self._committing.append(sealed)
            if uploaded:
                # Segments behind it that are uploaded already go in the same transaction:
                # when commits are the bottleneck, one lock round and one durable commit
                # serve many segments (still in seal order, as if committed one by one).
                group = [(sealed, obj, key)]
                while (
                    self.in_order
                    and len(group) < MAX_SEGMENTS_PER_COMMIT
                    and _uploaded(self.in_order[0][3])
                ):
                    next_sealed, next_obj, next_key, _ = self.in_order.popleft()
                    group.append((next_sealed, next_obj, next_key))
                    self._committing.append(next_sealed)
                await self.commit_group(group)
            else:
                log.error("segment %s could not be stored; failing its produce requests", key)
                error = ring_error(
                    ErrorCode.KAFKA_STORAGE_ERROR.kafka_code,
                    f"the object store did not take segment {key} after "
                    f"{self.settings.upload_attempts} attempts; retry",
                )
                await self.ack(failed_acks(sealed.batches, error))
            self._committing.clear()
            self._report_progress()

    def _time_left(self, group: list[tuple[SealedSegment, SegmentBytes, str]]) -> float:
        """Seconds left to commit the group: to the earliest deadline of its batches, at most
        the produce timeout (a request id of another format cannot stretch it)."""
        deadline = min(segment_deadline(sealed) for sealed, _, _ in group)
        return min(deadline - time.monotonic(), self.settings.produce_timeout_ms / 1000)

    async def _in_time(
        self, group: list[tuple[SealedSegment, SegmentBytes, str]]
    ) -> list[tuple[SealedSegment, SegmentBytes, str]]:
        """The segments of the group that can still be committed; the others (past their
        deadline) are failed as not written and their objects deleted."""
        now = time.monotonic()
        live = []
        for sealed, obj, key in group:
            if segment_deadline(sealed) > now:
                live.append((sealed, obj, key))
                continue
            log.error("segment %s is past its produce deadline; not committing it", key)
            error = ring_error(
                ErrorCode.NOT_ENOUGH_REPLICAS.kafka_code,
                "the data could not be committed before the produce deadline (metadata store "
                "slow or unavailable?); nothing was written; retry",
            )
            await self.ack(failed_acks(sealed.batches, error))
            await self._delete(key)
        return live

    def _bound_commit(self, seconds: float) -> None:
        """The next commit waits for the metadata store at most `seconds` (the uploader commits
        one transaction at a time, so the store's busy timeout is this commit's)."""
        self.meta.store.busy_timeout_ms = max(int(seconds * 1000), 1)

    async def _unknown(self, sealed: SealedSegment, key: str, exc: BaseException) -> None:
        log.error(
            "segment %s: the commit's outcome is unknown (%s); keeping the object, answering "
            "its produces that the data may have been written",
            key,
            exc,
        )
        error = ring_error(
            ErrorCode.REQUEST_TIMED_OUT.kafka_code,
            f"the metadata commit's outcome is unknown ({exc}); the data may have been "
            "written; retry (an idempotent producer is deduplicated)",
        )
        await self.ack(failed_acks(sealed.batches, error))

    async def _delete(self, key: str) -> None:
        try:
            await asyncio.wait_for(
                objectstore.delete(self.store, key), self.settings.store_timeout_ms / 1000
            )
        except Exception as delete_error:  # the lifecycle job reclaims it later
            log.warning("could not delete uncommitted segment %s: %s", key, delete_error)

    async def commit_group(self, group: list[tuple[SealedSegment, SegmentBytes, str]]) -> None:
        """Commits uploaded segments in one transaction (all or nothing), each as if committed
        alone, then acks them. Segments past their commit deadline are failed, not committed.
        If a transaction of several fails for a reason other than the metadata being
        unavailable or its outcome being unknown, each segment is committed on its own, so one
        bad segment fails only its own produces."""
        group = await self._in_time(group)
        if not group:
            return
        blocks = [commit_blocks(sealed, obj) for sealed, obj, _ in group]
        self._bound_commit(self._time_left(group))
        started = time.perf_counter()
        try:
            per_segment = await self.meta.commit_segments(
                [(key, len(obj), b) for (_, obj, key), b in zip(group, blocks, strict=True)]
            )
        except MetadataUnavailableError as exc:
            for sealed, _, key in group:
                await self._commit_unavailable(sealed, key, exc)
            return
        except Exception as exc:
            if outcome_unknown(exc):
                for sealed, _, key in group:
                    await self._unknown(sealed, key, exc)
            elif len(group) > 1:
                log.warning(
                    "commit of %d segments together failed (%s); committing them one by one",
                    len(group),
                    exc,
                )
                for segment in group:
                    await self.commit_group([segment])
            else:
                await self._refused(group[0][0], group[0][2], exc)
            return
        # The commit stage of produce latency (each segment of the transaction observes it),
        # and the segments now stored and committed.
        commit_s = time.perf_counter() - started
        commit_stage = metrics.child(metrics.PRODUCE_STAGE, "commit")
        uploaded = metrics.child(metrics.SEGMENTS_UPLOADED, "uploader")
        uploaded_bytes = metrics.child(metrics.SEGMENT_BYTES_UPLOADED, "uploader")
        for _, obj, _ in group:
            commit_stage.observe(commit_s)
            uploaded.inc()
            uploaded_bytes.inc(len(obj))
        for (sealed, obj, key), segment_blocks, per_block in zip(
            group, blocks, per_segment, strict=True
        ):
            await self._committed(sealed, obj, key, segment_blocks, per_block)

    async def _commit_unavailable(
        self, sealed: SealedSegment, key: str, exc: MetadataUnavailableError
    ) -> None:
        # Nothing was committed (the object is an orphan, never served): fail retriably,
        # then delete the object, which no row refers to (a full disk gets its space back).
        log.error("segment %s could not be committed: %s", key, exc)
        await self.ack(failed_acks(sealed.batches, unavailable_error(exc)))
        await self._delete(key)

    async def _refused(self, sealed: SealedSegment, key: str, exc: Exception) -> None:
        # Any other failure of the store is a refusal: nothing was committed.
        log.error("commit of segment %s failed: %s; failing its produce requests", key, exc)
        if isinstance(exc, StreamHouseError):
            error = ring_error(exc.code.kafka_code, exc.message)
        else:
            error = ring_error(
                ErrorCode.KAFKA_STORAGE_ERROR.kafka_code,
                f"the metadata commit of the data failed ({exc}); retry",
            )
        await self.ack(failed_acks(sealed.batches, error))

    async def commit(self, sealed: SealedSegment, obj: SegmentBytes, key: str) -> None:
        """Commits one uploaded segment (:meth:`commit_group` of one)."""
        await self.commit_group([(sealed, obj, key)])

    async def _committed(
        self,
        sealed: SealedSegment,
        obj: SegmentBytes,
        key: str,
        blocks: list[CommitBlock],
        per_block: list[list[BatchResult]],
    ) -> None:
        """Acks a committed segment's batches and offers it to the reader's cache."""
        results: list[AckResult] = []
        committed: list[CommittedBlock] = []
        batch_iter = iter(sealed.batches)
        for block, block_results in zip(blocks, per_block, strict=True):
            base = end = -1
            skipped: list[int] = []
            for ordinal, result in enumerate(block_results):
                ref = next(batch_iter)
                results.append(
                    AckResult(
                        ref.request_id,
                        ref.slot,
                        ref.ordinal,
                        result.base_offset,
                        batch_error(result, block),
                    )
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
        await self.ack(results)
        if committed:
            header = header_encoder.encode(CommittedSegment(key, committed))
            if self.committed.reader_hint() == COMMITTED_HEADERS_ONLY:
                obj = b""  # the reader reads no partition now: the commit without the object
            if len(header) + len(obj) > self.committed.max_frame_size:
                log.debug("segment %s is too large for the committed ring; reader reads it", key)
            elif not self.committed.try_write(header, obj):
                log.debug("committed ring full; reader will read %s from the object store", key)

    def close(self) -> None:
        self.sealed.close()
        self.acks.close()
        self.committed.close()
        self.progress.close()
        if self._owns_meta:
            self.meta.close_blocking()


async def run_uploader(settings: Settings, stop: asyncio.Event) -> None:
    # A commit that meets a locked database waits up to the produce timeout, then fails.
    meta = await AsyncMetadata.open(
        settings.metadata_target,
        busy_timeout_ms=settings.produce_timeout_ms,
        forbid_loop_calls=settings.debug_loop_calls,
    )
    uploader = Uploader(settings, meta)
    log.info(
        "uploader ready: object store %s, %d concurrent uploads",
        settings.object_store_url,
        settings.upload_concurrency,
    )
    # A death of either task fails the process (streamhouse.process); they end only at stop.
    receive = spawn(uploader.receive(stop), "sealed-ring intake", forever=False)
    commit = spawn(uploader.commit_loop(stop), "commit loop", forever=False)
    stop_task = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({receive, commit, stop_task}, return_when="FIRST_COMPLETED")
        receive.cancel()
        uploader.work.set()
        # Finish what is already uploading so its producers get their acks.
        await asyncio.wait_for(commit, timeout=settings.store_timeout_ms / 1000)
    finally:
        stop_task.cancel()
        uploader.close()
        await meta.close()


def main() -> None:
    run_process("uploader", run_uploader)


if __name__ == "__main__":
    main()
