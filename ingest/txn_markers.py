"""Transaction markers: the control batches that end a transaction in each of its partitions.

The transaction coordinator (``ingest/kafka/txn_coordinator.py``) calls
:func:`write_txn_markers` after it decided to commit or abort. Each marker is one control
batch (layout in ``streamhouse/recordbatch.py``, "control batches": key = version 0 + type,
value = version 0 + coordinator epoch; the transaction's producer id and epoch; base sequence
-1; attributes transactional | control) sent as an ordinary produce slot through the
pipeline (produce ring -> segmenter -> uploader -> metadata commit), so it is in the object
store and committed before it counts, like any acknowledged batch. The produce validation
that refuses control batches from clients is at the Kafka edge (``api_produce``), which this
path does not take.

The metadata commit applies a marker in the same transaction that gives it its offset
(``metadata/transactions.py``): it ends the producer's open transaction on the partition
(moving the last stable offset) and, for an ABORT, records the aborted range. A marker for a
producer with no open transaction there is stored but changes nothing, so writing a marker
again after an unknown outcome (a crash, a timeout) is safe: the coordinator retries until
every partition answered None.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ingest.pipeline import Pipeline, PipelineUnavailable, ProduceSlot
from streamhouse.errors import ErrorCode
from streamhouse.frames import BatchMeta
from streamhouse.recordbatch import (
    CONTROL_ABORT,
    CONTROL_COMMIT,
    CONTROL_MASK,
    TRANSACTIONAL_MASK,
    encode_control_batch,
)

__all__ = ["marker_slot", "write_txn_markers"]


def marker_slot(
    topic_id: int,
    partition: int,
    producer_id: int,
    producer_epoch: int,
    commit: bool,
    coordinator_epoch: int,
    now_ms: int,
) -> ProduceSlot:
    """The produce slot of one transaction marker (sans-I/O)."""
    batch = encode_control_batch(commit, producer_id, producer_epoch, coordinator_epoch, now_ms)
    meta = BatchMeta(
        1,
        producer_id,
        producer_epoch,
        -1,
        now_ms,
        now_ms,
        TRANSACTIONAL_MASK | CONTROL_MASK,
        CONTROL_COMMIT if commit else CONTROL_ABORT,
    )
    return ProduceSlot(topic_id, partition, [meta], [len(batch)], batch)


async def write_txn_markers(
    pipeline: Pipeline,
    partitions: Sequence[tuple[int, int]],
    producer_id: int,
    producer_epoch: int,
    commit: bool,
    coordinator_epoch: int = 0,
    timeout_ms: int | None = None,
) -> list[ErrorCode | None]:
    """Writes a COMMIT (``commit``) or ABORT marker of the producer's transaction to each
    ``(topic_id, partition)`` and waits for the durable commit of each.

    Returns per partition, in order, None (the marker is committed: the transaction is over
    there) or the error (UNKNOWN_TOPIC_OR_PARTITION for a partition that does not exist,
    INVALID_PRODUCER_EPOCH when a newer epoch of the producer wrote there, or a retriable
    error such as NOT_ENOUGH_REPLICAS / REQUEST_TIMED_OUT: write the marker again). Raises
    ``ValueError`` for a producer id or epoch no transaction can have.
    """
    now_ms = int(time.time() * 1000)
    slots = [
        marker_slot(t, p, producer_id, producer_epoch, commit, coordinator_epoch, now_ms)
        for t, p in partitions
    ]
    out: list[ErrorCode | None] = []
    step = max(pipeline.settings.max_partitions_per_request, 1)
    for start in range(0, len(slots), step):
        chunk = slots[start : start + step]
        try:
            results = await pipeline.produce(chunk, timeout_ms, protocol="kafka")
        except PipelineUnavailable as exc:
            out += [exc.code] * len(chunk)
            continue
        for outcomes in results:
            error = next((o.error for o in outcomes if o.error is not None), None)
            out.append(error.code if error is not None else None)
    return out
