"""Frame headers exchanged between the StreamHouse processes over the shared-memory rings.

Every ring frame is `header | payload` (see `streamhouse.ring`). The header is one of the
structs below, msgpack-encoded by msgspec as an array (field order is the wire order, so only
append fields at the end, with defaults). The payload is raw bytes whose meaning the header
states; records are never turned into Python objects on the way through.

Ring           direction               header            payload
-------------  ----------------------  ----------------  ------------------------------------
produce        ingest -> segmenter     ProduceFrame      Kafka RecordBatch v2 bytes (1+ batches)
sealed         segmenter -> uploader   SealedSegment     the whole segment object
ack            uploader -> ingest      AckFrame          empty
committed      uploader -> reader      CommittedSegment  the whole segment object
fetch-request  ingest -> reader        FetchRequest      empty
fetch-response reader -> ingest        FetchResponse     the parts' data, concatenated
"""

from __future__ import annotations

import msgspec


class ProduceFrame(msgspec.Struct, array_like=True, frozen=True):
    """One partition's batches of one produce request.

    `request_id` and `slot` route the acknowledgement back: a request that writes several
    partitions sends one frame per partition, slots 0..n-1.
    """

    request_id: int
    slot: int
    topic_id: int
    partition: int
    # Per batch in the payload: (record_count, producer_id, producer_epoch, base_sequence,
    # min_timestamp, max_timestamp), in payload order.
    batches: list[tuple[int, int, int, int, int, int]]
    batch_lengths: list[int]


class SealedBatch(msgspec.Struct, array_like=True, frozen=True):
    """Where one produced batch sits in a sealed segment and whom to acknowledge."""

    request_id: int
    slot: int
    ordinal: int  # position of the batch within its ProduceFrame
    block: int  # index into the segment's block list
    record_count: int
    producer_id: int
    producer_epoch: int
    base_sequence: int


class SealedSegment(msgspec.Struct, array_like=True, frozen=True):
    """A segment object ready to upload, with its blocks and the batches that make them up.

    `sequence` increases by one per segment from one segmenter run; `segmenter_epoch`
    changes when the segmenter restarts, which restarts the sequence at 0.
    """

    segmenter_epoch: int
    sequence: int
    # Per block: (topic_id, partition, byte_offset, byte_length, max_timestamp)
    blocks: list[tuple[int, int, int, int, int]]
    batches: list[SealedBatch]  # in block order, then produce order


class AckFrame(msgspec.Struct, array_like=True, frozen=True):
    """Outcome of produced batches once their segment is durable and committed (or failed).

    results: (request_id, slot, batch ordinal within the slot, base_offset, error) where error is
    "" on success or a Kafka error name.
    """

    results: list[tuple[int, int, int, int, str]]


class CommittedBlock(msgspec.Struct, array_like=True, frozen=True):
    topic_id: int
    partition: int
    byte_offset: int
    byte_length: int
    base_offset: int
    end_offset: int
    skipped_batches: tuple[int, ...] = ()


class CommittedSegment(msgspec.Struct, array_like=True, frozen=True):
    """A segment that is durable and committed; its payload is the object, for the cache."""

    key: str
    blocks: list[CommittedBlock]


class FetchPart(msgspec.Struct, array_like=True, frozen=True):
    topic_id: int
    partition: int
    offset: int
    max_bytes: int


FORMAT_KAFKA = 0  # stored batches with baseOffset patched
FORMAT_RECORDS = 1  # protobuf `repeated Record records = 1` wire bytes (gRPC ConsumeResponse)


class FetchRequest(msgspec.Struct, array_like=True, frozen=True):
    request_id: int
    max_wait_ms: int
    min_bytes: int
    max_bytes: int
    format: int
    parts: list[FetchPart]
    max_records: int = 0  # FORMAT_RECORDS only: 0 means no limit


class FetchPartResult(msgspec.Struct, array_like=True, frozen=True):
    """Result for one FetchPart; `length` bytes of the payload belong to it, in part order."""

    topic_id: int
    partition: int
    error: str  # "" or a Kafka error name
    high_watermark: int
    log_start_offset: int
    length: int
    next_offset: int
    record_count: int


class FetchResponse(msgspec.Struct, array_like=True, frozen=True):
    request_id: int
    parts: list[FetchPartResult]


header_encoder = msgspec.msgpack.Encoder()


def decoder_for(kind: type) -> msgspec.msgpack.Decoder:
    """A reusable decoder for one frame header type."""
    return msgspec.msgpack.Decoder(kind)
