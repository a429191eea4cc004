"""Groups produced batches from many partitions into one segment per flush (sans-I/O).

Rules:
- Batches of one partition keep their produce order inside the partition's block.
- A segment is sealed when the buffered bytes reach `max_segment_bytes` or the oldest
  buffered batch has waited `flush_interval` — whichever comes first.
- Blocks are laid out in (topic_id, partition) order so segments are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamhouse.frames import ProduceFrame, SealedBatch, SealedSegment
from streamhouse.segment import SegmentWriter


@dataclass
class _PartitionBuffer:
    batches: list[bytes] = field(default_factory=list)
    # (request_id, slot, ordinal, record_count, producer_id, producer_epoch, base_sequence)
    refs: list[tuple[int, int, int, int, int, int, int]] = field(default_factory=list)
    record_count: int = 0
    min_timestamp: int = 2**63 - 1
    max_timestamp: int = -(2**63)


class SegmentBuilder:
    """Accumulates ProduceFrames and seals them into SealedSegment + object bytes."""

    def __init__(self, epoch: int, max_segment_bytes: int) -> None:
        self.epoch = epoch
        self.max_segment_bytes = max_segment_bytes
        self._sequence = 0
        self._partitions: dict[tuple[int, int], _PartitionBuffer] = {}
        self.buffered_bytes = 0
        self.oldest_ns: int | None = None

    def add(self, frame: ProduceFrame, payload: bytes, now_ns: int) -> None:
        """Buffers the batches of one frame (the payload is split by the frame's lengths)."""
        buf = self._partitions.get((frame.topic_id, frame.partition))
        if buf is None:
            buf = self._partitions[(frame.topic_id, frame.partition)] = _PartitionBuffer()
        pos = 0
        view = memoryview(payload)
        pairs = zip(frame.batches, frame.batch_lengths, strict=True)
        for ordinal, (meta, length) in enumerate(pairs):
            count, pid, epoch, seq, min_ts, max_ts = meta
            buf.batches.append(view[pos : pos + length])
            pos += length
            buf.refs.append((frame.request_id, frame.slot, ordinal, count, pid, epoch, seq))
            buf.record_count += count
            if min_ts < buf.min_timestamp:
                buf.min_timestamp = min_ts
            if max_ts > buf.max_timestamp:
                buf.max_timestamp = max_ts
        self.buffered_bytes += len(payload)
        if self.oldest_ns is None:
            self.oldest_ns = now_ns

    @property
    def full(self) -> bool:
        return self.buffered_bytes >= self.max_segment_bytes

    @property
    def empty(self) -> bool:
        return not self._partitions

    def seal(self) -> tuple[SealedSegment, bytes]:
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
            for request_id, slot, ordinal, count, pid, epoch, seq in buf.refs:
                batches.append(
                    SealedBatch(request_id, slot, ordinal, block_index, count, pid, epoch, seq)
                )
        obj, entries = writer.finish()
        blocks = [(e.topic_id, e.partition, e.offset, e.length, e.max_timestamp) for e in entries]
        sealed = SealedSegment(self.epoch, self._sequence, blocks, batches)
        self._sequence += 1
        self._partitions = {}
        self.buffered_bytes = 0
        self.oldest_ns = None
        return sealed, obj
