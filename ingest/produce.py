"""gRPC produce admission (sans-I/O): validate records, pick partitions, encode v2 batches.

The request's protobuf bytes go to ``ingest/_grpcproduce.c`` as they came off the wire: it
walks them twice (check and size each record, then write it; no memory per record) and
returns the batches. Its header gives the wire layout it reads and the batch layout it
writes: the bytes ``recordbatch.encode_batch`` writes for the same records. No Python object
is made per record. :class:`RawProduceBatch` is what the gRPC handlers
get for ProduceBatch and ProduceStream: the request's scalar fields and its bytes.

Rules:
- An explicit partition must exist; otherwise keyed records go to Kafka's default partition
  (murmur2 of the key) and keyless records of one request go together to the next partition
  in a round robin, so a request's keyless records get consecutive offsets. The round robin
  moves on only when a request with keyless records is accepted.
- timestamp_ms 0 means server time; on a LogAppendTime topic every record gets server time.
- Limits: a record (key + value + headers) at most max_record_bytes, a request at most
  max_batch_bytes in total, at least one record; each encoded batch at most the topic's
  max.message.bytes.
- Timestamps are checked at the edge as the Kafka path checks them (``batch_rules`` of the
  topic config): on a CreateTime topic within
  [now - message.timestamp.before.max.ms, now + message.timestamp.after.max.ms]; the
  timestamps of one partition's records in a request are at most 2^63 - 1 ms apart.
- An idempotent request (producer_id set) names its partition; its records become one batch
  carrying the producer id, epoch and base sequence.
- Refusals are checked in this order, the first one answering: no records, partition out of
  range, idempotent without a partition, then each record in request order (key on a
  compacted topic, size, timestamp), the request's total size, then each partition's batch in
  partition order (encoded total, max.message.bytes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ingest import _grpcproduce
from ingest.pipeline import ProduceSlot
from streamhouse.frames import BatchMeta
from streamhouse.proto import streamhouse_pb2 as pb
from streamhouse.topic_config import batch_rules


class MalformedRequest(ValueError):
    """The bytes are not a valid ProduceBatchRequest; the message says what and where."""


class RawProduceBatch:
    """A ProduceBatchRequest as received: its scalar fields, read in C, and its bytes.

    ``partition`` and ``producer_id`` are None when the request leaves them out.
    """

    __slots__ = (
        "data",
        "topic",
        "partition",
        "producer_id",
        "producer_epoch",
        "base_sequence",
        "record_count",
    )

    def __init__(self, data: bytes) -> None:
        """Raises :class:`MalformedRequest` when ``data`` is not a valid request."""
        try:
            fields = _grpcproduce.scan(data)
        except ValueError as exc:
            raise MalformedRequest(str(exc)) from None
        self.data = data
        self.topic: str = fields[0]
        self.partition: int | None = fields[1]
        self.producer_id: int | None = fields[2]
        self.producer_epoch: int = fields[3]
        self.base_sequence: int = fields[4]
        self.record_count: int = fields[5]


class ProduceRejected(ValueError):
    """The request is invalid; the message says what to change."""


class Partitioner:
    """Round robin for keyless records, per topic."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}

    def next_partition(self, topic_id: int, partition_count: int) -> int:
        value = self.peek(topic_id, partition_count)
        self.advance(topic_id)
        return value

    def peek(self, topic_id: int, partition_count: int) -> int:
        """The partition the topic's next keyless records go to."""
        return self._next.get(topic_id, 0) % partition_count

    def advance(self, topic_id: int) -> None:
        self._next[topic_id] = self._next.get(topic_id, 0) + 1


def plan_produce(
    topic_id: int,
    partition_count: int,
    records: Sequence[pb.Record],
    partition: int | None,
    partitioner: Partitioner,
    max_record_bytes: int,
    max_batch_bytes: int,
    producer: tuple[int, int, int] | None = None,
    log_append_time: bool = False,
    topic_config: dict[str, str] | None = None,
) -> list[ProduceSlot]:
    """:func:`plan_request` for records given as protobuf objects (the Produce call)."""
    data = pb.ProduceBatchRequest(records=records).SerializeToString()
    return plan_request(
        topic_id,
        partition_count,
        data,
        len(records),
        partition,
        partitioner,
        max_record_bytes,
        max_batch_bytes,
        producer,
        log_append_time,
        topic_config,
    )


def plan_request(
    topic_id: int,
    partition_count: int,
    data: bytes,
    record_count: int,
    partition: int | None,
    partitioner: Partitioner,
    max_record_bytes: int,
    max_batch_bytes: int,
    producer: tuple[int, int, int] | None = None,
    log_append_time: bool = False,
    topic_config: dict[str, str] | None = None,
) -> list[ProduceSlot]:
    """One ProduceSlot (one v2 batch) per partition written, in partition order, from the
    bytes of a ProduceBatchRequest holding ``record_count`` records (its other fields are not
    read: ``partition`` and ``producer`` say what they said).

    ``topic_config`` (the topic's configs) sets the timestamp bounds and max.message.bytes;
    a LogAppendTime topic there implies ``log_append_time``. Raises :class:`ProduceRejected`
    naming the first rule broken (see the module docstring for the order).
    """
    if record_count == 0:
        raise ProduceRejected("the batch is empty: send at least one record")
    if partition is not None and not 0 <= partition < partition_count:
        raise ProduceRejected(
            f"partition {partition} is out of range: "
            f"the topic has partitions 0..{partition_count - 1}"
        )
    if producer is not None and partition is None:
        raise ProduceRejected("an idempotent produce (producer_id set) must name its partition")
    now_ms = int(time.time() * 1000)
    rules = batch_rules(topic_config or {}, max_batch_bytes)
    pid, epoch, seq = producer if producer is not None else (-1, -1, -1)
    try:
        keyless_used, batches = _grpcproduce.transcode(
            data,
            partition_count,
            -1 if partition is None else partition,
            partitioner.peek(topic_id, partition_count),
            max_record_bytes,
            max_batch_bytes,
            pid,
            epoch,
            seq,
            log_append_time or rules.log_append_time,
            now_ms,
            max(-(2**63), now_ms - rules.timestamp_before_ms),
            min(2**63 - 1, now_ms + rules.timestamp_after_ms),
            rules.key_required,
            rules.max_message_bytes,
        )
    except ValueError as exc:
        raise ProduceRejected(str(exc)) from None
    if keyless_used:
        partitioner.advance(topic_id)
    return [
        ProduceSlot(
            topic_id,
            target,
            [BatchMeta(count, pid, epoch, seq, min_ts, max_ts)],
            [len(batch)],
            batch,
        )
        for target, batch, count, min_ts, max_ts in batches
    ]
