"""Frame headers exchanged between the StreamHouse processes over the shared-memory rings.

Every ring frame is `header | payload` (see `streamhouse.ring`). The header is one of the
structs below, msgpack-encoded by msgspec as an array (field order is the wire order, so only
append fields at the end, with defaults). The payload is raw bytes whose meaning the header
states; records are never turned into Python objects on the way through.

Ring           direction               header            payload
-------------  ----------------------  ----------------  ------------------------------------
produce        ingest -> segmenter     ProduceFrame      Kafka RecordBatch v2 bytes (1+ batches)
sealed         segmenter -> uploader   SealedSegment     the whole segment object (empty when
                                                         `error` refuses the batches it lists)
ack            uploader -> ingest      AckFrame          empty
committed      uploader -> reader      CommittedSegment  the whole segment object
upload-progress uploader -> segmenter  UploadProgress    empty (streamhouse/upload_progress.py)
fetch-request  ingest -> reader        FetchRequest      empty
fetch-response reader -> ingest        FetchResponse     the parts' data, concatenated

Headers as msgpack arrays (every struct is array-like; `RingError` is `[kafka_code, message]`,
code 0 = success, see `streamhouse.errors`). A produce `request_id` also carries the produce's
commit deadline (bits 63..24, ms of the monotonic clock; :func:`make_request_id`)::

    ProduceFrame      [request_id, slot, topic_id, partition, [BatchMeta...], [length...],
                       admitted_ns, following]
    BatchMeta         [record_count, producer_id, producer_epoch, base_sequence,
                       min_timestamp, max_timestamp, attributes, control_type]
    SealedSegment     [segmenter_epoch, sequence, [SealedBlock...], [SealedBatch...], RingError]
    SealedBlock       [topic_id, partition, byte_offset, byte_length, max_timestamp]
    SealedBatch       [request_id, slot, ordinal, block, record_count, producer_id,
                       producer_epoch, base_sequence, attributes, control_type]
    AckFrame          [[AckResult...]]
    AckResult         [request_id, slot, ordinal, base_offset, RingError]
    CommittedSegment  [key, [CommittedBlock...]]
    UploadProgress    [segmenter_epoch, stored_through, done_through]
    CommittedBlock    [topic_id, partition, byte_offset, byte_length, base_offset, end_offset,
                       [skipped ordinal...]]
    FetchRequest      [request_id, max_wait_ms, min_bytes, max_bytes, format, [FetchPart...],
                       max_records, isolation_level]
    FetchPart         [topic_id, partition, offset, max_bytes]
    FetchResponse     [request_id, [FetchPartResult...], RingError]
    FetchPartResult   [topic_id, partition, RingError, high_watermark, log_start_offset,
                       length, next_offset, record_count, last_stable_offset,
                       [[producer_id, first_offset]...]]

`attributes` are the batch header's transactional (0x10) and control (0x20) bits (the other
bits stay in the bytes; 0 for a plain batch); `control_type` is a control batch's marker type
(0 abort, 1 commit; -1 for data). `isolation_level` 1 (read_committed) stops a fetch at the
last stable offset and lists the aborted transactions ([producer_id, first_offset]) that
overlap the returned range; 0 reads up to the high watermark (the list stays empty).

Rules every stage keeps (no stage trusts its ring):

1. Every frame fits its ring by construction: ingest refuses a produce slot whose frame (or
   whose sealed segment) could not fit before sending anything; the segmenter seals before a
   frame would overflow the sealed ring; acks are split into several AckFrames
   (`ack_headers`); the reader trims a fetch response to its ring.
2. A header that does not decode, or whose contents do not add up (`FrameError` from the
   `check_*` functions below), fails the requests it names (an ack or a fetch response with
   an error; `salvage_ids` recovers the ids from a header that does not decode) with one log
   line, and the stage keeps running.
3. `AckResult.ordinal == ALL_BATCHES` fails every batch of that request's slot: a refused
   frame whose batch list cannot be trusted is still answered.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from streamhouse.errors import RING_OK, RingError

__all__ = [
    "ALL_BATCHES",
    "COMMITTED_HEADERS_ONLY",
    "FORMAT_KAFKA",
    "FORMAT_RECORDS",
    "AckFrame",
    "AckResult",
    "BatchMeta",
    "CommittedBlock",
    "CommittedSegment",
    "FetchPart",
    "FetchPartResult",
    "FetchRequest",
    "FetchResponse",
    "FrameError",
    "ProduceFrame",
    "SealedBatch",
    "SealedBlock",
    "SealedSegment",
    "UploadProgress",
    "ack_headers",
    "check_committed",
    "check_fetch_request",
    "check_fetch_response",
    "check_produce",
    "check_sealed",
    "decoder_for",
    "header_encoder",
    "ring_error",
    "salvage_ids",
    "sealed_cost",
]

# Ordinal of an AckResult that answers every batch of its slot (rule 3).
ALL_BATCHES = -1
# Longest error message carried on a ring, in UTF-8 bytes (longer ones are cut by
# `ring_error`): keeps every AckResult, and so every frame, bounded.
MAX_ERROR_MESSAGE = 1000


#: Low bits of a request id that count requests; the bits above hold the commit deadline.
COUNTER_BITS = 24
_COUNTER_MASK = (1 << COUNTER_BITS) - 1


def make_request_id(deadline: float, counter: int) -> int:
    """A request id carrying ``deadline`` (CLOCK_MONOTONIC seconds, ``time.monotonic()``, in
    bits 63..24 as milliseconds) and the low 24 bits of ``counter``; ingest/pipeline.py
    "Produce deadlines" says what the deadline means."""
    return (max(int(deadline * 1000), 0) << COUNTER_BITS) | (counter & _COUNTER_MASK)


def commit_deadline(request_id: int) -> float:
    """The monotonic time (seconds) after which the uploader must not commit this request's
    batches: the deadline :func:`make_request_id` put into the id."""
    return (request_id >> COUNTER_BITS) / 1000


class FrameError(ValueError):
    """A frame's header does not decode or its contents do not add up; the message says how."""


class BatchMeta(msgspec.Struct, array_like=True, frozen=True):
    """What the segmenter and uploader need of one produced batch, read from its header."""

    record_count: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    min_timestamp: int
    max_timestamp: int
    attributes: int = 0  # TRANSACTIONAL_MASK | CONTROL_MASK bits of the batch header
    control_type: int = -1  # control batches: 0 abort, 1 commit marker; -1 data


class ProduceFrame(msgspec.Struct, array_like=True, frozen=True):
    """One partition's batches of one produce request.

    `request_id` and `slot` route the acknowledgement back: a request that writes several
    partitions sends one frame per partition, slots 0..n-1. `batches[i]` describes the
    `batch_lengths[i]` bytes that follow the previous batches in the payload.
    `admitted_ns` is when ingest admitted the request (`time.monotonic_ns()`, CLOCK_MONOTONIC,
    shared by every process on the host; 0 = unknown): the segmenter measures the ring wait
    from it (metrics only; nothing is decided by it). `following` is how many frames of the
    same request ingest writes right after this one (0: the last or only one): the segmenter
    does not seal early in the middle of a request (segmenter/policy.py), so a request's
    partitions share one segment (one PUT) when they fit.
    """

    request_id: int
    slot: int
    topic_id: int
    partition: int
    batches: list[BatchMeta]
    batch_lengths: list[int]
    admitted_ns: int = 0
    following: int = 0


class SealedBlock(msgspec.Struct, array_like=True, frozen=True):
    """One partition's block inside a sealed segment object."""

    topic_id: int
    partition: int
    byte_offset: int
    byte_length: int
    max_timestamp: int


class SealedBatch(msgspec.Struct, array_like=True, frozen=True):
    """Where one produced batch sits in a sealed segment and whom to acknowledge."""

    request_id: int
    slot: int
    ordinal: int  # position of the batch within its ProduceFrame, or ALL_BATCHES
    block: int  # index into the segment's block list
    record_count: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    attributes: int = 0  # as BatchMeta.attributes
    control_type: int = -1  # as BatchMeta.control_type


class SealedSegment(msgspec.Struct, array_like=True, frozen=True):
    """A segment object ready to upload, with its blocks and the batches that make them up.

    `sequence` increases by one per segment from one segmenter run; `segmenter_epoch`
    changes when the segmenter restarts, which restarts the sequence at 0. A segment with an
    `error` is a refusal: it has no blocks and no object, and the uploader answers the
    batches it lists with that error (nothing is stored).
    """

    segmenter_epoch: int
    sequence: int
    blocks: list[SealedBlock]
    batches: list[SealedBatch]  # in block order, then produce order
    error: RingError = RING_OK


class AckResult(msgspec.Struct, array_like=True, frozen=True):
    """Outcome of one produced batch: its first offset, or an error (base_offset -1)."""

    request_id: int
    slot: int
    ordinal: int  # batch within the slot, or ALL_BATCHES
    base_offset: int
    error: RingError = RING_OK


class AckFrame(msgspec.Struct, array_like=True, frozen=True):
    """Outcomes of produced batches once their segment is durable and committed (or failed)."""

    results: list[AckResult]


class CommittedBlock(msgspec.Struct, array_like=True, frozen=True):
    topic_id: int
    partition: int
    byte_offset: int
    byte_length: int
    base_offset: int
    end_offset: int
    skipped_batches: tuple[int, ...] = ()


#: The reader's hint on the committed ring (``RingReader.set_hint``): it caches no block of
#: any partition now, so the uploader sends committed-segment frames without the object.
COMMITTED_HEADERS_ONLY = 1


class CommittedSegment(msgspec.Struct, array_like=True, frozen=True):
    """A segment that is durable and committed; its payload is the object, for the cache,
    or nothing while the reader hints ``COMMITTED_HEADERS_ONLY`` (it still learns of the
    commit: fetches waiting on these partitions wake and read the object)."""

    key: str
    blocks: list[CommittedBlock]


class UploadProgress(msgspec.Struct, array_like=True, frozen=True):
    """How far the uploader is with one segmenter run's segments (the group-commit feedback;
    streamhouse/upload_progress.py has the rules). Every segment of run `segmenter_epoch` up
    to sequence `stored_through` is done uploading (stored or failed for good), and up to
    `done_through` acknowledged; -1: none yet. `segmenter_epoch` 0 (with -1, -1) is the hello
    of an uploader that has just started: nothing is in flight."""

    segmenter_epoch: int
    stored_through: int
    done_through: int


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
    isolation_level: int = 0  # 1: read_committed (up to the last stable offset)


class FetchPartResult(msgspec.Struct, array_like=True, frozen=True):
    """Result for one FetchPart; `length` bytes of the payload belong to it, in part order."""

    topic_id: int
    partition: int
    error: RingError
    high_watermark: int
    log_start_offset: int
    length: int
    next_offset: int
    record_count: int
    last_stable_offset: int = -1
    #: read_committed: (producer_id, first_offset) of aborted transactions in the range
    aborted: list[tuple[int, int]] = msgspec.field(default_factory=list)


class FetchResponse(msgspec.Struct, array_like=True, frozen=True):
    """The reader's answer; with an `error` the whole fetch failed and `parts` may be empty."""

    request_id: int
    parts: list[FetchPartResult]
    error: RingError = RING_OK


header_encoder = msgspec.msgpack.Encoder()


def decoder_for(kind: type) -> msgspec.msgpack.Decoder:
    """A reusable decoder for one frame header type."""
    return msgspec.msgpack.Decoder(kind)


def ring_error(code: int, message: str) -> RingError:
    """A RingError with the message cut to at most MAX_ERROR_MESSAGE bytes of UTF-8."""
    raw = message.encode()
    if len(raw) > MAX_ERROR_MESSAGE:
        message = raw[: MAX_ERROR_MESSAGE - 3].decode(errors="ignore") + "..."
    return RingError(code, message)


# -- worst-case sizes (rule 1) ----------------------------------------------------------------

# Bytes a sealed frame spends beyond the batches themselves, at worst (msgpack ints take at
# most 9 bytes): per batch one SealedBatch (10 ints); per block one SealedBlock (5 ints) plus
# the segment's block header (20) and index entry (48); per segment the object's header and
# footer (8 + 28) and the SealedSegment envelope with its RingError. LZ4 blocks are stored
# only when smaller than the raw batches, so raw bytes bound stored bytes.
SEALED_PER_BATCH = 1 + 10 * 9
SEALED_PER_BLOCK = (1 + 5 * 9) + 20 + 48
SEALED_PER_SEGMENT = 8 + 28 + 64


def sealed_cost(batch_count: int, payload_length: int) -> int:
    """Worst-case bytes one produce frame adds to a sealed frame (batches, refs, a block)."""
    return payload_length + batch_count * SEALED_PER_BATCH + SEALED_PER_BLOCK


def max_frame_size(ring_capacity: int) -> int:
    """The largest header + payload a ring of this capacity carries (see streamhouse.ring)."""
    return min(ring_capacity - 8, 2**32 - 2)


# -- consistency checks (rule 2) -------------------------------------------------------------


def check_produce(frame: ProduceFrame, payload_length: int) -> None:
    """Raises FrameError unless the batch list and lengths describe exactly the payload."""
    n = len(frame.batches)
    if n == 0:
        raise FrameError("produce frame carries no batches")
    if len(frame.batch_lengths) != n:
        raise FrameError(
            f"produce frame lists {n} batches but {len(frame.batch_lengths)} batch lengths"
        )
    total = 0
    for length in frame.batch_lengths:
        if length <= 0:
            raise FrameError(f"produce frame has a batch length of {length}")
        total += length
    if total != payload_length:
        raise FrameError(
            f"produce frame's batch lengths add up to {total} bytes but the payload is "
            f"{payload_length} bytes"
        )
    for meta in frame.batches:
        if meta.record_count < 1:
            raise FrameError(f"produce frame has a batch of {meta.record_count} records")


def check_sealed(segment: SealedSegment, payload_length: int) -> None:
    """Raises FrameError unless blocks lie inside the object and batches name real blocks."""
    if segment.error.code != 0:
        if payload_length or segment.blocks:
            raise FrameError("a refused sealed segment must carry no blocks and no object")
        return
    if not segment.blocks or not segment.batches:
        raise FrameError("sealed segment has no blocks or no batches")
    for i, block in enumerate(segment.blocks):
        end = block.byte_offset + block.byte_length
        if block.byte_offset < 0 or block.byte_length <= 0 or end > payload_length:
            raise FrameError(
                f"sealed segment block {i} spans bytes {block.byte_offset}..{end} of a "
                f"{payload_length}-byte object"
            )
    last = 0
    for batch in segment.batches:
        if not last <= batch.block < len(segment.blocks):
            raise FrameError(
                f"sealed segment batch names block {batch.block} (out of order or out of range "
                f"0..{len(segment.blocks) - 1})"
            )
        if batch.record_count < 1 or batch.ordinal < 0:
            raise FrameError(
                f"sealed segment batch has {batch.record_count} records, ordinal {batch.ordinal}"
            )
        last = batch.block
    if len({b.block for b in segment.batches}) != len(segment.blocks):
        raise FrameError("sealed segment has a block without batches")


def check_committed(segment: CommittedSegment, payload_length: int) -> None:
    """Raises FrameError unless every block has offsets and lies inside the object (when
    it came: a payload of 0 bytes is a frame sent without its object)."""
    for block in segment.blocks:
        end = block.byte_offset + block.byte_length
        if (
            block.byte_offset < 0
            or block.byte_length <= 0
            or (payload_length and end > payload_length)
        ):
            raise FrameError(
                f"committed block spans bytes {block.byte_offset}..{end} of a "
                f"{payload_length}-byte object"
            )
        if block.end_offset <= block.base_offset or block.base_offset < 0:
            raise FrameError(f"committed block has offsets {block.base_offset}..{block.end_offset}")


def check_fetch_request(request: FetchRequest, max_parts: int) -> None:
    """Raises FrameError for a fetch the reader cannot serve as asked."""
    if not request.parts:
        raise FrameError("fetch request has no partitions")
    if len(request.parts) > max_parts:
        raise FrameError(
            f"fetch request has {len(request.parts)} partitions, more than the limit {max_parts}"
        )
    if request.format not in (FORMAT_KAFKA, FORMAT_RECORDS):
        raise FrameError(f"fetch request has unknown format {request.format}")
    if request.max_wait_ms < 0 or request.min_bytes < 0 or request.max_bytes < 0:
        raise FrameError("fetch request has a negative max_wait_ms, min_bytes or max_bytes")
    if request.max_records < 0:
        raise FrameError(f"fetch request has max_records {request.max_records}")
    if request.isolation_level not in (0, 1):
        raise FrameError(f"fetch request has unknown isolation level {request.isolation_level}")
    for part in request.parts:
        if part.max_bytes < 0 or part.offset < 0:
            raise FrameError(
                f"fetch part {part.topic_id}/{part.partition} has offset {part.offset}, "
                f"max_bytes {part.max_bytes}"
            )


def check_fetch_response(response: FetchResponse, parts: int, payload_length: int) -> None:
    """Raises FrameError unless the response answers `parts` parts and its lengths add up."""
    if response.error.code != 0:
        return
    if len(response.parts) != parts:
        raise FrameError(f"fetch response has {len(response.parts)} parts for a request of {parts}")
    total = 0
    for part in response.parts:
        if part.length < 0:
            raise FrameError(f"fetch response part has length {part.length}")
        total += part.length
    if total != payload_length:
        raise FrameError(
            f"fetch response part lengths add up to {total} bytes but the payload is "
            f"{payload_length} bytes"
        )


def salvage_ids(header: bytes, count: int) -> tuple[int, ...] | None:
    """The first `count` integers of a header that does not decode as its type, if it is at
    least a msgpack array starting with that many integers (request id, slot, ...)."""
    try:
        value = msgspec.msgpack.decode(header)
    except (msgspec.DecodeError, RecursionError):
        return None
    if not isinstance(value, list) or len(value) < count:
        return None
    ids = value[:count]
    if not all(type(i) is int for i in ids):
        return None
    return tuple(ids)


# -- acks in frames that fit (rule 1) ---------------------------------------------------------


def ack_headers(results: list[AckResult], max_bytes: int) -> Iterator[bytes]:
    """Encoded AckFrames carrying `results` in order, each at most `max_bytes` long.

    Splits in halves until every part fits; an AckResult never comes near the limit on its
    own (its message is cut to MAX_ERROR_MESSAGE), so this always terminates.
    """
    encode = header_encoder.encode
    pending = [results]
    while pending:
        chunk = pending.pop()
        header = encode(AckFrame(chunk))
        if len(header) <= max_bytes or len(chunk) <= 1:
            if len(header) > max_bytes:
                raise ValueError(f"one ack result is {len(header)} bytes, over {max_bytes}")
            yield header
            continue
        half = len(chunk) // 2
        pending.append(chunk[half:])  # popped after the first half: order kept
        pending.append(chunk[:half])
