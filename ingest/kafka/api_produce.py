"""Kafka Produce: validate the batches as produced, send them down the pipeline, answer after
the durable commit (acks 1 and all) or not at all (acks 0).

Batches are validated as Kafka's LogValidator does (``streamhouse.recordbatch.validate_batches``
with the topic's ``batch_rules``: header, CRC-32C, attributes, producer fields, every record's
framing, offset deltas and timestamps, compressed batches inflated with a hard bound; inline
on the event loop, not in a thread, so that pipelined Produce requests of one connection
reach the pipeline in the order they were sent) and stored byte for byte — compressed
batches stay compressed — except on a topic with
message.timestamp.type=LogAppendTime, where each batch is stamped as Kafka does: the
timestamp-type bit set, maxTimestamp the broker's time, the CRC recomputed (readers then give
every record that time), and the response carries it as log_append_time_ms.

Per-partition errors are Kafka's: UNKNOWN_TOPIC_OR_PARTITION, CORRUPT_MESSAGE, INVALID_RECORD
and INVALID_TIMESTAMP (with ``record_errors`` naming the record, v8+), RECORD_LIST_TOO_LARGE,
UNSUPPORTED_FOR_MESSAGE_FORMAT, MESSAGE_TOO_LARGE, OUT_OF_ORDER_SEQUENCE_NUMBER,
INVALID_PRODUCER_EPOCH. The pipeline answers within the request's budget (the request's
``timeout_ms``, at most ``produce_timeout_ms``; see ingest/pipeline.py "Produce deadlines"):
data it certainly did not write is answered NOT_ENOUGH_REPLICAS or KAFKA_STORAGE_ERROR
(retriable, and "not persisted" to librdkafka, so an idempotent producer retries without
bumping its epoch), and REQUEST_TIMED_OUT only when the outcome is genuinely unknown.

Transactional batches (attributes bit 4, with the producer id of a transactional producer)
are checked like idempotent ones and verified against the transaction coordinator's durable
state (``txn_verify.py``: one catalog read per request, only when it carries a transactional
batch): the request must name the transactional id (else every partition is refused with
TRANSACTIONAL_ID_AUTHORIZATION_FAILED, as Kafka does), and the batch's producer id and epoch
must be that id's current ones with the partition added to its ongoing transaction (else
INVALID_PRODUCER_ID_MAPPING, INVALID_PRODUCER_EPOCH, INVALID_TXN_STATE, or NOT_ENOUGH_REPLICAS
while it completes). Their slot's BatchMeta carries the bit, and the metadata commit opens
the producer's transaction on the partition (``metadata/transactions.py``). Control batches
(transaction markers) are refused (INVALID_RECORD): only the log writes them
(``ingest/txn_markers.py``).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import TYPE_CHECKING

import crc32c
import msgspec

from ingest.kafka import errors, txn_shell, txn_verify
from ingest.kafka.connection import NO_RESPONSE
from ingest.kafka.txn_coordinator import TxnRecord
from ingest.pipeline import BatchOutcome, PipelineUnavailable, ProduceSlot
from metadata.async_store import TopicLookup, TopicState
from metadata.errors import MetadataUnavailableError
from streamhouse.frames import BatchMeta
from streamhouse.kafka.messages import ProduceRequest, ProduceResponse, RequestHeader
from streamhouse.recordbatch import (
    TIMESTAMP_TYPE_MASK,
    TRANSACTIONAL_MASK,
    BatchInfo,
    BatchRules,
    InvalidBatchError,
    validate_batches,
)
from streamhouse.topic_config import batch_rules

if TYPE_CHECKING:
    from ingest.kafka.broker import KafkaBroker

log = logging.getLogger("ingest.kafka.produce")

R = ProduceResponse
# Batch header fields rewritten for LogAppendTime (offsets inside a batch).
_CRC_AT, _ATTRIBUTES_AT, _MAX_TIMESTAMP_AT = 17, 21, 35
_INT16 = struct.Struct(">h")
_UINT32 = struct.Struct(">I")
_INT64 = struct.Struct(">q")


def _stamp_log_append_time(data: memoryview, infos: list[BatchInfo], now_ms: int) -> bytearray:
    """A copy of the batches marked LogAppendTime with maxTimestamp `now_ms` (Kafka's
    DefaultRecordBatch.setMaxTimestamp): base timestamps and records stay as produced."""
    out = bytearray(data)
    for info in infos:
        at = info.position
        _INT16.pack_into(out, at + _ATTRIBUTES_AT, info.attributes | TIMESTAMP_TYPE_MASK)
        _INT64.pack_into(out, at + _MAX_TIMESTAMP_AT, now_ms)
        crc = crc32c.crc32c(memoryview(out)[at + _ATTRIBUTES_AT : at + info.length])
        _UINT32.pack_into(out, at + _CRC_AT, crc)
    return out


def _admit(
    topic_id: int,
    partition: int,
    records: object,
    rules: BatchRules,
    append_time: int | None,
    now_ms: int,
) -> tuple[ProduceSlot | None, int, str | None, tuple[tuple[int, str], ...]]:
    """A ProduceSlot for one partition's records, or (None, error code, message, record
    errors). With an `append_time` the batches are stamped with it (LogAppendTime)."""
    if records is None:
        return None, errors.CORRUPT_MESSAGE, "no records", ()
    data = records if isinstance(records, memoryview) else memoryview(records)  # type: ignore[arg-type]
    try:
        infos = validate_batches(data, rules, now_ms)
    except InvalidBatchError as exc:
        return None, exc.code.kafka_code, exc.message, exc.record_errors
    metas = []
    lengths = []
    for info in infos:
        metas.append(
            BatchMeta(
                info.record_count,
                info.producer_id,
                info.producer_epoch,
                info.base_sequence,
                info.base_timestamp if append_time is None else append_time,
                info.max_timestamp if append_time is None else append_time,
                info.attributes & TRANSACTIONAL_MASK,
            )
        )
        lengths.append(info.length)
    if append_time is not None:
        data = memoryview(_stamp_log_append_time(data, infos, append_time))
    return ProduceSlot(topic_id, partition, metas, lengths, data), 0, None, ()


async def produce(
    broker: KafkaBroker, header: RequestHeader, request: ProduceRequest
) -> ProduceResponse | object:
    """Answers one Produce request (see the module docstring)."""
    if request.acks not in (-1, 0, 1):
        return all_failed(request, errors.INVALID_REQUIRED_ACKS, f"acks={request.acks} is invalid")
    slots: list[ProduceSlot] = []
    # (topic name, partition) -> (slot index or -1, error, message)
    outcome: dict[tuple[str, int], tuple[int, int, str | None]] = {}
    # (topic name, partition) -> per-record errors of a refused batch (Produce v8+)
    record_errors: dict[tuple[str, int], tuple[tuple[int, str], ...]] = {}
    # topic name -> the time its batches were stamped with (LogAppendTime topics only)
    append_times: dict[str, int] = {}
    now_ms = int(time.time() * 1000)
    # The transactional id's stored state, read once when a transactional batch needs it.
    txn: tuple[TxnRecord | None, bool] | None = None
    no_txn_id = False
    # Every topic and partition state the request needs, in one metadata call (off the loop).
    found = await broker.meta.topic_states(
        [TopicLookup(t.name, None, [p.index for p in t.partition_data]) for t in request.topic_data]
    )
    states = {t.name: f for t, f in zip(request.topic_data, found, strict=True) if f is not None}
    for topic_data in request.topic_data:
        known = states.get(topic_data.name)
        topic, error = (known.topic, 0) if known else await broker.topic_or_create(topic_data.name)
        if known is None and topic is not None:  # auto-created: every partition starts at 0
            states[topic_data.name] = TopicState(topic, {})
        append_time: int | None = None
        if topic is not None:
            rules = batch_rules(topic.config, broker.settings.max_batch_bytes)
            if rules.log_append_time:
                append_time = append_times[topic_data.name] = now_ms
        for part in topic_data.partition_data:
            key = (topic_data.name, part.index)
            if topic is None or not 0 <= part.index < topic.partitions:
                outcome[key] = (-1, error or errors.UNKNOWN_TOPIC_OR_PARTITION, None)
                continue
            slot, code, message, bad_records = _admit(
                topic.topic_id, part.index, part.records, rules, append_time, now_ms
            )
            if slot is None:
                log.info("refused produce to %s[%d]: %s", topic.name, part.index, message)
                outcome[key] = (-1, code, message)
                record_errors[key] = bad_records
                continue
            if any(m.attributes & TRANSACTIONAL_MASK for m in slot.batches):
                if request.transactional_id is None:
                    no_txn_id = True
                    continue
                if txn is None:
                    txn = await _txn_record(broker, request.transactional_id)
                code, message = _verify(txn, request.transactional_id, slot)
                if code != errors.NONE:
                    log.info("refused produce to %s[%d]: %s", topic.name, part.index, message)
                    outcome[key] = (-1, code, message)
                    continue
            outcome[key] = (len(slots), 0, None)
            slots.append(slot)
    if no_txn_id:
        log.info("refused a produce of transactional batches without a transactional id")
        refused = all_failed(
            request,
            errors.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            "transactional batches need the request's transactional id (the producer's "
            "transactional.id)",
        )
        return NO_RESPONSE if request.acks == 0 else refused
    if request.acks == 0:
        if slots:
            task = asyncio.ensure_future(broker.pipeline.produce(slots))
            task.add_done_callback(_ignore_outcome)
        return NO_RESPONSE
    results: list[list[BatchOutcome]] = []
    unavailable: PipelineUnavailable | None = None
    if slots:
        try:
            results = await broker.pipeline.produce(slots, request.timeout_ms)
        except PipelineUnavailable as exc:
            unavailable = exc
    response = ProduceResponse(responses=[])
    for topic_data in request.topic_data:
        partitions = []
        for part in topic_data.partition_data:
            index, code, message = outcome[(topic_data.name, part.index)]
            base_offset = -1
            if index >= 0:
                if unavailable is not None:
                    code, message = unavailable.code.kafka_code, unavailable.message
                else:
                    # The partition's first failed batch decides its error (Kafka answers
                    # per partition); its offset is the first batch's.
                    base_offset = results[index][0].base_offset
                    failed = next((r.error for r in results[index] if r.error), None)
                    if failed is not None:
                        code, message = failed.code.kafka_code, failed.message
                        base_offset = -1
            partitions.append(
                R.PartitionProduceResponse(
                    index=part.index,
                    error_code=code,
                    base_offset=base_offset,
                    log_append_time_ms=append_times.get(topic_data.name, -1) if code == 0 else -1,
                    log_start_offset=_log_start(states, topic_data.name, part.index),
                    error_message=message,
                    record_errors=[
                        R.BatchIndexAndErrorMessage(batch_index=i, batch_index_error_message=text)
                        for i, text in record_errors.get((topic_data.name, part.index), ())
                    ],
                )
            )
        response.responses.append(
            R.TopicProduceResponse(name=topic_data.name, partition_responses=partitions)
        )
    return response


async def _txn_record(broker: KafkaBroker, transactional_id: str) -> tuple[TxnRecord | None, bool]:
    """(the stored record of ``transactional_id`` or None, whether metadata answered)."""
    try:
        blob = await broker.meta.get_catalog_entry(
            txn_shell.CATALOG_KIND, txn_shell.catalog_name(transactional_id)
        )
    except MetadataUnavailableError as exc:
        log.warning("transactional id %r: cannot verify its produce: %s", transactional_id, exc)
        return None, False
    if blob is None:
        return None, True
    try:
        return txn_shell.decode(blob), True
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None, True  # unreadable: no producer to match (txn_shell logs and resets it)


def _verify(
    txn: tuple[TxnRecord | None, bool], transactional_id: str, slot: ProduceSlot
) -> tuple[int, str | None]:
    """The first refusal among a slot's transactional batches, else (NONE, None)."""
    record, answered = txn
    if not answered:
        return errors.NOT_ENOUGH_REPLICAS, (
            "the transaction coordinator's state could not be read (metadata unavailable); retry"
        )
    for meta in slot.batches:
        if meta.attributes & TRANSACTIONAL_MASK:
            code, message = txn_verify.verify(
                record,
                transactional_id,
                meta.producer_id,
                meta.producer_epoch,
                (slot.topic_id, slot.partition),
            )
            if code != errors.NONE:
                return code, message
    return errors.NONE, None


def _log_start(states: dict[str, TopicState], topic_name: str, partition: int) -> int:
    known = states.get(topic_name)
    if known is None or not 0 <= partition < known.topic.partitions:
        return -1
    state = known.partitions.get(partition)
    return state.log_start_offset if state is not None else 0


def all_failed(request: ProduceRequest, code: int, message: str) -> ProduceResponse:
    """A response failing every partition of ``request`` with ``code`` and ``message``."""
    return ProduceResponse(
        responses=[
            R.TopicProduceResponse(
                name=t.name,
                partition_responses=[
                    R.PartitionProduceResponse(
                        index=p.index, error_code=code, base_offset=-1, error_message=message
                    )
                    for p in t.partition_data
                ],
            )
            for t in request.topic_data
        ]
    )


def _ignore_outcome(task: asyncio.Future[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("acks=0 produce was not stored: %s", task.exception())
