"""gRPC produce admission (sans-I/O): validate records, pick partitions, encode v2 batches.

Rules:
- An explicit partition must exist; otherwise keyed records go to Kafka's default partition
  (murmur2 of the key) and keyless records of one request go together to the next partition
  in a round robin, so a request's keyless records get consecutive offsets.
- timestamp_ms 0 means server time; on a LogAppendTime topic every record gets server time.
- Limits: a record (key + value + headers) at most max_record_bytes, a request at most
  max_batch_bytes in total, at least one record; each encoded batch at most the topic's
  max.message.bytes.
- Timestamps are checked at the edge as the Kafka path checks them (``batch_rules`` of the
  topic config): on a CreateTime topic within
  [now - message.timestamp.before.max.ms, now + message.timestamp.after.max.ms].
- An idempotent request (producer_id set) names its partition; its records become one batch
  carrying the producer id, epoch and base sequence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ingest.pipeline import ProduceSlot
from streamhouse.frames import BatchMeta
from streamhouse.proto import streamhouse_pb2 as pb
from streamhouse.recordbatch import default_partition, encode_batch
from streamhouse.topic_config import batch_rules


class ProduceRejected(ValueError):
    """The request is invalid; the message says what to change."""


class Partitioner:
    """Round robin for keyless records, per topic."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}

    def next_partition(self, topic_id: int, partition_count: int) -> int:
        value = self._next.get(topic_id, 0)
        self._next[topic_id] = value + 1
        return value % partition_count


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
    """One ProduceSlot (one v2 batch) per partition written, in partition order.

    ``topic_config`` (the topic's configs) sets the timestamp bounds and max.message.bytes;
    a LogAppendTime topic there implies ``log_append_time``.
    """
    if not records:
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
    log_append_time = log_append_time or rules.log_append_time
    ts_low = max(-(2**63), now_ms - rules.timestamp_before_ms)
    ts_high = min(2**63 - 1, now_ms + rules.timestamp_after_ms)
    keyless = partition if partition is not None else None
    groups: dict[int, tuple[list, list, list, list]] = {}
    total = 0
    for index, rec in enumerate(records):
        key = rec.key if rec.HasField("key") else None
        if key is None and rules.key_required:
            raise ProduceRejected(
                f"record {index} has no key: a compacted topic (cleanup.policy=compact) keeps "
                "the latest record of each key, so every record needs one"
            )
        value = rec.value if rec.HasField("value") else None
        size = (len(key) if key is not None else 0) + (len(value) if value is not None else 0)
        headers: list[tuple[str, bytes | None]] = []
        if rec.headers:
            for h in rec.headers:
                hv = h.value if h.HasField("value") else None
                headers.append((h.key, hv))
                size += len(h.key.encode()) + (len(hv) if hv is not None else 0)
        if size > max_record_bytes:
            raise ProduceRejected(
                f"record {index} is {size} bytes, over the {max_record_bytes}-byte limit"
            )
        total += size
        if partition is not None:
            target = partition
        elif key is not None:
            target = default_partition(key, partition_count)
        else:
            if keyless is None:
                keyless = partitioner.next_partition(topic_id, partition_count)
            target = keyless
        group = groups.get(target)
        if group is None:
            group = groups[target] = ([], [], [], [])
        group[0].append(key)
        group[1].append(value)
        group[2].append(headers)
        if log_append_time:
            timestamp = now_ms
        else:
            timestamp = rec.timestamp_ms or now_ms
            if not ts_low <= timestamp <= ts_high:
                raise ProduceRejected(
                    f"record {index}: timestamp_ms {timestamp} is out of range; the topic "
                    f"accepts {ts_low}..{ts_high} (message.timestamp.before.max.ms / "
                    "after.max.ms around the server's clock): fix the producer's clock or "
                    "send 0 for server time"
                )
        group[3].append(timestamp)
    if total > max_batch_bytes:
        raise ProduceRejected(
            f"the batch is {total} bytes, over the {max_batch_bytes}-byte limit: split it"
        )
    pid, epoch, seq = producer if producer is not None else (-1, -1, -1)
    slots = []
    encoded = 0
    for target in sorted(groups):
        keys, values, headers_list, timestamps = groups[target]
        batch = encode_batch(
            keys,
            values,
            headers_list,
            timestamps,
            producer_id=pid,
            producer_epoch=epoch,
            base_sequence=seq,
        )
        encoded += len(batch)
        if encoded > max_batch_bytes:
            raise ProduceRejected(
                f"the batch encodes to over {max_batch_bytes} bytes (the limit): split it"
            )
        if len(batch) > rules.max_message_bytes:
            raise ProduceRejected(
                f"the records for partition {target} encode to {len(batch)} bytes, over the "
                f"topic's max.message.bytes {rules.max_message_bytes}: split the batch"
            )
        meta = BatchMeta(len(keys), pid, epoch, seq, min(timestamps), max(timestamps))
        slots.append(ProduceSlot(topic_id, target, [meta], [len(batch)], batch))
    return slots
