"""Kafka Fetch, ListOffsets and OffsetForLeaderEpoch, served through the reader.

Fetch relays every partition of a request to the reader in one FetchRequest (Kafka format:
stored batches with `baseOffset` patched); the reader honours max_wait_ms, min_bytes,
max_bytes and partition_max_bytes. Fetch sessions are not kept: every response is a full
one with session id 0, which Kafka clients accept.

Transactions: every partition answers its last stable offset (LSO: the first offset of its
oldest open transaction, else the high watermark; ``metadata/transactions.py``). A fetch
with isolation_level 1 (read_committed) returns only batches below the LSO and lists the
aborted transactions (producer id, first offset) overlapping the returned range, so the
client drops their records up to each ABORT marker; control batches are returned as stored
(clients skip them). isolation_level 0 reads up to the high watermark and lists none.
ListOffsets LATEST answers the LSO for isolation_level 1, the high watermark otherwise; a
timestamp lookup at isolation_level 1 answers no offset (-1) at or past the LSO.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ingest.kafka import errors
from ingest.kafka.broker import LEADER_EPOCH
from ingest.pipeline import PipelineUnavailable
from metadata import BlockLocation
from metadata.async_store import TopicLookup
from streamhouse.errors import StreamHouseError
from streamhouse.frames import FORMAT_KAFKA, FetchPart
from streamhouse.frames import FetchRequest as ReaderFetch
from streamhouse.kafka.messages import (
    FetchRequest,
    FetchResponse,
    ListOffsetsRequest,
    ListOffsetsResponse,
    OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
    RequestHeader,
)
from streamhouse.recordbatch import decode_records, scan_batches

if TYPE_CHECKING:
    from ingest.kafka.broker import KafkaBroker

F = FetchResponse
LATEST = -1
EARLIEST = -2
MAX_TIMESTAMP = -3
READ_COMMITTED = 1  # isolation_level of Fetch and ListOffsets


async def fetch(broker: KafkaBroker, header: RequestHeader, request: FetchRequest) -> FetchResponse:
    # Kafka knows 0 (read_uncommitted) and 1 (read_committed); anything else reads as 0.
    read_committed = request.isolation_level == READ_COMMITTED
    parts: list[FetchPart] = []
    # per requested partition: (topic name, topic id uuid, partition, index into parts or error)
    layout: list[tuple[int, list[tuple[int, int]]]] = []
    # Every topic, by name or else by id, in one metadata call (off the loop).
    found = await broker.meta.topic_states(
        [TopicLookup(t.topic, t.topic_id.bytes if t.topic_id else None) for t in request.topics]
    )
    topics_meta = [f.topic if f is not None else None for f in found]
    for t_index, wanted in enumerate(request.topics):
        topic = topics_meta[t_index]
        entries: list[tuple[int, int]] = []
        for p in wanted.partitions:
            if topic is None or not 0 <= p.partition < topic.partitions:
                entries.append((p.partition, -1))
                continue
            entries.append((p.partition, len(parts)))
            parts.append(
                FetchPart(
                    topic.topic_id, p.partition, p.fetch_offset, max(p.partition_max_bytes, 0)
                )
            )
        layout.append((t_index, entries))
    results = []
    payload = memoryview(b"")
    failed_code = errors.NOT_LEADER_OR_FOLLOWER
    if parts:
        max_bytes = min(
            request.max_bytes or broker.settings.max_fetch_bytes, broker.settings.max_fetch_bytes
        )
        reader_request = ReaderFetch(
            request_id=0,
            max_wait_ms=max(request.max_wait_ms, 0),
            min_bytes=max(request.min_bytes, 0),
            max_bytes=max_bytes,
            format=FORMAT_KAFKA,
            parts=parts,
            isolation_level=READ_COMMITTED if read_committed else 0,
        )
        try:
            answer, data = await broker.pipeline.fetch(reader_request)
            results = answer.parts
            payload = memoryview(data)
        except PipelineUnavailable:
            results = []  # the reader restarted or is slow: NOT_LEADER_OR_FOLLOWER, retry
        except StreamHouseError as exc:  # refused as asked: every partition gets its code
            results = []
            failed_code = exc.code.kafka_code
    positions = []
    pos = 0
    for r in results:
        positions.append(pos)
        pos += r.length
    response = FetchResponse(error_code=0, session_id=0, responses=[])
    for t_index, entries in layout:
        wanted = request.topics[t_index]
        topic = topics_meta[t_index]
        partitions = []
        for partition, index in entries:
            if index < 0:
                partitions.append(
                    F.PartitionData(
                        partition_index=partition,
                        error_code=errors.UNKNOWN_TOPIC_OR_PARTITION
                        if not (wanted.topic_id and wanted.topic_id.int and topic is None)
                        else errors.UNKNOWN_TOPIC_ID,
                        high_watermark=-1,
                        last_stable_offset=-1,
                        log_start_offset=-1,
                        # Empty, never null, as Kafka answers: librdkafka rejects the whole
                        # response for a null record set ("invalid MessageSetSize -1").
                        records=b"",
                    )
                )
                continue
            if index >= len(results):  # the fetch failed as a whole
                partitions.append(
                    F.PartitionData(
                        partition_index=partition,
                        error_code=failed_code,
                        high_watermark=-1,
                        last_stable_offset=-1,
                        log_start_offset=-1,
                        records=b"",
                    )
                )
                continue
            r = results[index]
            code = r.error.code  # the Kafka code (streamhouse.errors.RingError)
            start = positions[index]
            partitions.append(
                F.PartitionData(
                    partition_index=partition,
                    error_code=code,
                    high_watermark=r.high_watermark,
                    last_stable_offset=r.last_stable_offset
                    if r.last_stable_offset >= 0
                    else r.high_watermark,
                    log_start_offset=r.log_start_offset,
                    aborted_transactions=[
                        F.AbortedTransaction(producer_id=pid, first_offset=first)
                        for pid, first in r.aborted
                    ]
                    if read_committed
                    else None,
                    records=payload[start : start + r.length],
                )
            )
        response.responses.append(
            F.FetchableTopicResponse(
                topic=wanted.topic if topic is None else topic.name,
                topic_id=wanted.topic_id,
                partitions=partitions,
            )
        )
    return response


async def _offset_for_timestamp(
    broker: KafkaBroker, topic_id: int, partition: int, timestamp: int, log_start: int, hwm: int
) -> tuple[int, int]:
    """(offset, timestamp) of the first record at or after `timestamp`, or of the record with
    the largest timestamp for MAX_TIMESTAMP; (-1, -1) when there is none. Records below the
    log start offset (removed by DeleteRecords) are never answered."""
    if timestamp == MAX_TIMESTAMP:
        return await _max_timestamp(broker, topic_id, partition, log_start)
    start = log_start
    while start < hwm:
        loc = await broker.meta.find_block_by_timestamp(topic_id, partition, timestamp, start)
        if loc is None:
            break
        for base, batch in await _block_batches(broker, topic_id, partition, loc, start):
            if scan_batches(batch, verify_crc=False)[0].max_timestamp < timestamp:
                continue
            for delta, ts, *_ in decode_records(batch):
                if ts >= timestamp and base + delta >= start:
                    return base + delta, ts
        # The block's matching records are all below the log start: look further on.
        start = loc.end_offset
    return -1, -1


async def _max_timestamp(
    broker: KafkaBroker, topic_id: int, partition: int, log_start: int
) -> tuple[int, int]:
    """(offset, timestamp) of the earliest record with the largest timestamp at or after
    `log_start`; (-1, -1) for an empty partition."""
    loc = await broker.meta.find_max_timestamp_block(topic_id, partition, log_start)
    if loc is None:
        return -1, -1
    best = await _max_in_block(broker, topic_id, partition, loc, log_start)
    if loc.base_offset < log_start:
        # The block straddles the log start, so its largest timestamp may have been deleted:
        # the best of the later blocks may beat what is left of it (ties keep the earlier).
        later = await broker.meta.find_max_timestamp_block(topic_id, partition, loc.end_offset)
        if later is not None:
            other = await _max_in_block(broker, topic_id, partition, later, later.base_offset)
            if other[1] > best[1]:
                best = other
    return best


async def _max_in_block(
    broker: KafkaBroker, topic_id: int, partition: int, loc: BlockLocation, start: int
) -> tuple[int, int]:
    best = (-1, -1)
    for base, batch in await _block_batches(broker, topic_id, partition, loc, start):
        if scan_batches(batch, verify_crc=False)[0].max_timestamp <= best[1]:
            continue
        for delta, ts, *_ in decode_records(batch):
            if ts > best[1] and base + delta >= start:
                best = (base + delta, ts)
    return best


async def _block_batches(
    broker: KafkaBroker, topic_id: int, partition: int, loc: BlockLocation, start: int
) -> list[tuple[int, memoryview]]:
    """The committed batches of one block holding offsets at or after `start`, with their base
    offsets, read through the reader (which refuses offsets below the log start)."""
    out: list[tuple[int, memoryview]] = []
    offset = max(loc.base_offset, start)
    while offset < loc.end_offset:
        request = ReaderFetch(
            request_id=0,
            max_wait_ms=0,
            min_bytes=0,
            max_bytes=broker.settings.max_fetch_bytes,
            format=FORMAT_KAFKA,
            parts=[FetchPart(topic_id, partition, offset, broker.settings.max_fetch_bytes)],
        )
        answer, data = await broker.pipeline.fetch(request)
        part = answer.parts[0]
        if part.error.code or part.length == 0:
            break
        view = memoryview(data)[: part.length]
        for info in scan_batches(view, verify_crc=False):
            base = int.from_bytes(view[info.position : info.position + 8], "big", signed=True)
            if base >= loc.end_offset:
                return out
            out.append((base, view[info.position : info.position + info.length]))
        offset = part.next_offset
    return out


async def list_offsets(
    broker: KafkaBroker, header: RequestHeader, request: ListOffsetsRequest
) -> ListOffsetsResponse:
    L = ListOffsetsResponse
    response = ListOffsetsResponse(topics=[])
    found = await broker.meta.topic_states(
        [
            TopicLookup(t.name, None, [p.partition_index for p in t.partitions])
            for t in request.topics
        ]
    )
    for wanted, known in zip(request.topics, found, strict=True):
        topic = known.topic if known is not None else None
        partitions = []
        for p in wanted.partitions:
            state = known.partitions.get(p.partition_index) if known is not None else None
            if state is None or topic is None:
                partitions.append(
                    L.ListOffsetsPartitionResponse(
                        partition_index=p.partition_index,
                        error_code=errors.UNKNOWN_TOPIC_OR_PARTITION,
                        timestamp=-1,
                        offset=-1,
                    )
                )
                continue
            ts, offset = -1, -1
            if p.timestamp == LATEST:
                offset = (
                    state.last_stable_offset
                    if request.isolation_level == READ_COMMITTED
                    else state.high_watermark
                )
            elif p.timestamp == EARLIEST:
                offset = state.log_start_offset
            else:
                try:
                    offset, ts = await _offset_for_timestamp(
                        broker,
                        topic.topic_id,
                        p.partition_index,
                        p.timestamp,
                        state.log_start_offset,
                        state.high_watermark,
                    )
                except StreamHouseError:  # the reader could not answer: no offset found
                    offset, ts = -1, -1
                if request.isolation_level == READ_COMMITTED and offset >= state.last_stable_offset:
                    offset, ts = -1, -1  # not visible to read_committed yet (as Kafka)
            partitions.append(
                L.ListOffsetsPartitionResponse(
                    partition_index=p.partition_index,
                    error_code=0,
                    old_style_offsets=[offset]
                    if offset >= 0 and header.request_api_version == 0
                    else [],
                    timestamp=ts,
                    offset=offset,
                    leader_epoch=LEADER_EPOCH,
                )
            )
        response.topics.append(L.ListOffsetsTopicResponse(name=wanted.name, partitions=partitions))
    return response


async def offset_for_leader_epoch(
    broker: KafkaBroker, header: RequestHeader, request: OffsetForLeaderEpochRequest
) -> OffsetForLeaderEpochResponse:
    # One epoch (0) forever: its end offset is the high watermark.
    E = OffsetForLeaderEpochResponse
    response = E(topics=[])
    found = await broker.meta.topic_states(
        [TopicLookup(t.topic, None, [p.partition for p in t.partitions]) for t in request.topics]
    )
    for wanted, known in zip(request.topics, found, strict=True):
        partitions = []
        for p in wanted.partitions:
            state = known.partitions.get(p.partition) if known is not None else None
            if state is None:
                partitions.append(
                    E.EpochEndOffset(
                        error_code=errors.UNKNOWN_TOPIC_OR_PARTITION,
                        partition=p.partition,
                        leader_epoch=-1,
                        end_offset=-1,
                    )
                )
                continue
            partitions.append(
                E.EpochEndOffset(
                    error_code=0,
                    partition=p.partition,
                    leader_epoch=LEADER_EPOCH,
                    end_offset=state.high_watermark,
                )
            )
        response.topics.append(
            E.OffsetForLeaderTopicResult(topic=wanted.topic, partitions=partitions)
        )
    return response
