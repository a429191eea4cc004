"""Groups produced batches from many partitions into one segment per flush (sans-I/O).

Rules:
- Batches of one partition keep their produce order inside the partition's block.
- A segment is sealed when the buffered bytes reach `max_segment_bytes` or the oldest
  buffered batch has waited `flush_interval` — whichever comes first — and before a frame
  whose batches would make the sealed frame (header + object) larger than `max_frame_bytes`
  (the sealed ring's max frame size): every sealed frame fits its ring by construction.
- Blocks are laid out in (topic_id, partition) order so segments are deterministic.
- A produce frame is checked before anything of it is buffered (`check_frame`): its batch
  list must describe exactly its payload, and the payload must be RecordBatch v2 batches of
  those lengths and record counts. A frame that fails, or that could never fit a sealed
  frame, is answered with a refusal (`refusal`) instead of being stored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import msgspec

from streamhouse import metrics
from streamhouse.errors import ErrorCode
from streamhouse.frames import (
    ALL_BATCHES,
    SEALED_PER_SEGMENT,
    FrameError,
    ProduceFrame,
    SealedBatch,
    SealedBlock,
    SealedSegment,
    check_produce,
    decoder_for,
    ring_error,
    salvage_ids,
    sealed_cost,
)
from streamhouse.recordbatch import (
    CONTROL_MASK,
    TRANSACTIONAL_MASK,
    InvalidBatchError,
    scan_batches,
)
from streamhouse.segment import SegmentWriter

log = logging.getLogger("segmenter")

#: A sealed segment object: bytes, or the buffers that make it in order (``joined=False``).
SegmentObject = bytes | list[bytes | bytearray | memoryview]
_decode_produce = decoder_for(ProduceFrame).decode


@dataclass
class _PartitionBuffer:
    batches: list[memoryview] = field(default_factory=list)
    # (request_id, slot, ordinal, record_count, producer_id, producer_epoch, base_sequence,
    #  attributes, control_type)
    refs: list[tuple[int, int, int, int, int, int, int, int, int]] = field(default_factory=list)
    record_count: int = 0
    min_timestamp: int = 2**63 - 1
    max_timestamp: int = -(2**63)


def check_frame(frame: ProduceFrame, payload: bytes | memoryview) -> None:
    """Raises FrameError unless the frame describes its payload and the payload is batches."""
    check_produce(frame, len(payload))
    try:
        infos = scan_batches(payload, verify_crc=False)
    except InvalidBatchError as exc:
        raise FrameError(f"produce frame payload is not RecordBatch v2 batches: {exc}") from None
    if len(infos) != len(frame.batches):
        raise FrameError(
            f"produce frame lists {len(frame.batches)} batches but its payload holds {len(infos)}"
        )
    for i, (info, meta, length) in enumerate(
        zip(infos, frame.batches, frame.batch_lengths, strict=True)
    ):
        if info.length != length or info.record_count != meta.record_count:
            raise FrameError(
                f"produce frame batch {i}: listed as {length} bytes / {meta.record_count} "
                f"records, the payload has {info.length} bytes / {info.record_count} records"
            )
        txn_bits = info.attributes & (TRANSACTIONAL_MASK | CONTROL_MASK)
        if meta.attributes != txn_bits or (meta.control_type >= 0) != bool(txn_bits & CONTROL_MASK):
            raise FrameError(
                f"produce frame batch {i}: listed with attributes {meta.attributes} and "
                f"control type {meta.control_type}, the payload's batch has attributes "
                f"{info.attributes}"
            )


class SegmentBuilder:
    """Accumulates ProduceFrames and seals them into SealedSegment + object bytes."""

    def __init__(
        self,
        epoch: int,
        max_segment_bytes: int,
        max_frame_bytes: int = 2**32 - 2,
        *,
        joined: bool = True,
    ) -> None:
        """``joined=False``: sealed objects come as the list of buffers that make them
        (`SegmentWriter.finish_parts`), for the sealed ring to copy in without a joined copy
        first; else as bytes."""
        self.epoch = epoch
        self.joined = joined
        self.max_segment_bytes = max_segment_bytes
        self.max_frame_bytes = max_frame_bytes
        self._sequence = 0
        self._partitions: dict[tuple[int, int], _PartitionBuffer] = {}
        self.buffered_bytes = 0
        self.oldest_ns: int | None = None
        self._cost = SEALED_PER_SEGMENT  # worst-case size of the sealed frame so far
        self._taken_ns: list[int] = []  # when each buffered frame was taken (monotonic ns)
        # Frames of the last frame's request still to come (ProduceFrame.following): the seal
        # policy does not seal early in the middle of a request (segmenter/policy.py).
        self.following = 0

    def fits_alone(self, frame: ProduceFrame, payload_length: int) -> bool:
        """Whether the frame fits a sealed frame even in an empty segment."""
        cost = SEALED_PER_SEGMENT + sealed_cost(len(frame.batches), payload_length)
        return cost <= self.max_frame_bytes

    def fits(self, frame: ProduceFrame, payload_length: int) -> bool:
        """Whether the frame can join the buffered segment without overflowing a sealed frame."""
        return self._cost + sealed_cost(len(frame.batches), payload_length) <= self.max_frame_bytes

    def add(self, frame: ProduceFrame, payload: bytes, now_ns: int) -> None:
        """Buffers the batches of one frame (the payload is split by the frame's lengths).

        The caller has checked the frame (`check_frame`) and sealed first unless `fits`.
        """
        key = (frame.topic_id, frame.partition)
        buf = self._partitions.get(key)
        if buf is None:
            buf = self._partitions[key] = _PartitionBuffer()
        pos = 0
        view = memoryview(payload)
        pairs = zip(frame.batches, frame.batch_lengths, strict=True)
        for ordinal, (meta, length) in enumerate(pairs):
            buf.batches.append(view[pos : pos + length])
            pos += length
            buf.refs.append(
                (
                    frame.request_id,
                    frame.slot,
                    ordinal,
                    meta.record_count,
                    meta.producer_id,
                    meta.producer_epoch,
                    meta.base_sequence,
                    meta.attributes,
                    meta.control_type,
                )
            )
            buf.record_count += meta.record_count
            if meta.min_timestamp < buf.min_timestamp:
                buf.min_timestamp = meta.min_timestamp
            if meta.max_timestamp > buf.max_timestamp:
                buf.max_timestamp = meta.max_timestamp
        self.buffered_bytes += len(payload)
        self._cost += sealed_cost(len(frame.batches), len(payload))
        self._taken_ns.append(now_ns)  # the seal-stage metric's start, per frame
        if self.oldest_ns is None:
            self.oldest_ns = now_ns

    @property
    def full(self) -> bool:
        return self.buffered_bytes >= self.max_segment_bytes

    @property
    def empty(self) -> bool:
        return not self._partitions

    def seal(self) -> tuple[SealedSegment, SegmentObject]:
        """Builds the segment object of everything buffered and resets the buffer."""
        writer = SegmentWriter()
        batches: list[SealedBatch] = []
        keys = sorted(self._partitions)
        for block_index, key in enumerate(keys):
            buf = self._partitions[key]
            writer.add_block(
                key[0],
                key[1],
                buf.batches,
                len(buf.batches),
                buf.record_count,
                buf.min_timestamp,
                buf.max_timestamp,
            )
            for request_id, slot, ordinal, count, pid, epoch, seq, attrs, control in buf.refs:
                batches.append(
                    SealedBatch(
                        request_id,
                        slot,
                        ordinal,
                        block_index,
                        count,
                        pid,
                        epoch,
                        seq,
                        attrs,
                        control,
                    )
                )
        size = writer.size
        obj: SegmentObject
        if self.joined:
            obj, entries = writer.finish()
        else:
            obj, entries = writer.finish_parts()
        blocks = [
            SealedBlock(e.topic_id, e.partition, e.offset, e.length, e.max_timestamp)
            for e in entries
        ]
        sealed = SealedSegment(self.epoch, self._sequence, blocks, batches)
        metrics.child(metrics.SEGMENT_SIZE, "segmenter").observe(size)
        sealed_ns = time.monotonic_ns()
        seal_stage = metrics.child(metrics.PRODUCE_STAGE, "seal")
        for taken_ns in self._taken_ns:
            seal_stage.observe((sealed_ns - taken_ns) / 1e9)
        self._taken_ns = []
        self._sequence += 1
        self._partitions = {}
        self.buffered_bytes = 0
        self.oldest_ns = None
        self._cost = SEALED_PER_SEGMENT
        return sealed, obj

    def take(
        self, header: bytes, payload: bytes, now_ns: int
    ) -> list[tuple[SealedSegment, SegmentObject]]:
        """Handles one produce-ring frame; returns the sealed frames to send, in order.

        Never raises for bad input: a frame that does not decode or does not add up becomes
        a refusal for the slot it names (or only a log line when not even that is readable).
        """
        out: list[tuple[SealedSegment, SegmentObject]] = []
        self.following = 0
        try:
            frame = _decode_produce(header)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            ids = salvage_ids(header, 2)
            why = f"produce frame header does not decode: {exc}"
            if ids is None:
                log.error("%s; dropped (its request times out and is retried)", why)
                return out
            log.error("%s; refusing request %d slot %d", why, *ids)
            out.append((self.refusal(ids[0], ids[1], ErrorCode.CORRUPT_MESSAGE, why), b""))
            return out
        self.following = max(frame.following, 0)
        try:
            check_frame(frame, payload)
        except FrameError as exc:
            log.error("refusing request %d slot %d: %s", frame.request_id, frame.slot, exc)
            refused = self.refusal(
                frame.request_id, frame.slot, ErrorCode.CORRUPT_MESSAGE, str(exc)
            )
            out.append((refused, b""))
            return out
        if frame.admitted_ns > 0:
            wait_s = max(now_ns - frame.admitted_ns, 0) / 1e9
            metrics.child(metrics.PRODUCE_STAGE, "ring_wait").observe(wait_s)
        if not self.fits_alone(frame, len(payload)):
            why = (
                f"the {len(payload)} bytes / {len(frame.batches)} batches for one partition do "
                f"not fit a segment frame of {self.max_frame_bytes} bytes; send fewer per request"
            )
            log.error("refusing request %d slot %d: %s", frame.request_id, frame.slot, why)
            refused = self.refusal(
                frame.request_id, frame.slot, ErrorCode.RECORD_LIST_TOO_LARGE, why
            )
            out.append((refused, b""))
            return out
        if not self.empty and not self.fits(frame, len(payload)):
            out.append(self.seal())
        self.add(frame, payload, now_ns)
        if self.full:
            out.append(self.seal())
        return out

    def refusal(self, request_id: int, slot: int, code: ErrorCode, message: str) -> SealedSegment:
        """A sealed frame that tells the uploader to fail every batch of one produce slot."""
        return SealedSegment(
            self.epoch,
            -1,
            [],
            [SealedBatch(request_id, slot, ALL_BATCHES, -1, 0, -1, -1, -1)],
            ring_error(code.kafka_code, message),
        )
