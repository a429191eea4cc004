"""Key compaction without I/O: which part of a partition is cleaned, and the record filter.

Kafka's log cleaner semantics (cleanup.policy=compact, also with delete), on StreamHouse's
blocks (one block row = one partition's batches in one segment object):

- The *cleanable range* of a partition runs from its log start to the end of the last block
  before the first block that is younger than ``min.compaction.lag.ms`` (by the block's
  max_timestamp; a block without timestamps counts as old), and never includes the
  partition's newest offset: its last record always stays (Kafka never cleans the active
  segment), so the log never ends in a gap that a consumer could not fetch past. (A block is
  the unit because small-object compaction merges a partition's blocks: "the newest block"
  may be the whole partition.)
- Offsets below the partition's *clean offset* (``metadata set_clean_offset``) were cleaned
  by an earlier pass; the blocks at or after it are *dirty*. A partition is due when its dirty
  cleanable bytes are at least ``min.cleanable.dirty.ratio`` of its cleanable bytes, or when
  its first dirty block's max_timestamp is older than ``max.compaction.lag.ms``.
- A pass builds a key map (``streamhouse._keycompact.OffsetMap``: 128-bit key hash -> last
  offset) over the dirty cleanable batches, bounded by ``lifecycle_key_map_bytes``. When it
  fills, the pass cleans up to the last offset it put and the next pass goes on from there.
- Every batch from the log start up to the map's last offset is filtered: a record goes when
  it has no key or the map holds a later offset for its key; a tombstone (null value) that is
  the latest of its key stays until its batch's *delete horizon* has passed. The horizon is
  KIP-534's: the first pass that keeps a tombstone sets attribute bit 6 on its batch and stores
  ``now + delete.retention.ms`` in the batch's baseTimestamp (the kept records' timestamp
  deltas are rewritten relative to it, so every record keeps its timestamp); a later pass
  removes the tombstones of a batch whose horizon is in the past.
- A batch that loses records keeps its baseOffset, lastOffsetDelta, producer id, epoch and
  base sequence, its attributes and codec (recompressed with it), its surviving records byte
  for byte (each keeps its offset delta); its count and maxTimestamp are recomputed (CreateTime)
  and its CRC. A batch that loses every record is dropped, a block that loses every batch too.
  Offsets never move: the gap rule of ``streamhouse.recordbatch`` (``encode_block``) keeps them.
- The new clean offset is the end of what the map covered.
- Transactions (as Kafka's cleaner): the cleanable range never reaches the partition's last
  stable offset (an open transaction may still abort); control batches (transaction
  markers) are neither keyed nor filtered, they stay as they are; the records of aborted
  transactions (``metadata.transactions``: a transactional batch of the aborted producer
  inside an aborted range) are never put in the map and are removed when filtered, so an
  aborted record never hides a committed one of the same key.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from streamhouse._keycompact import OffsetMap, filter_records

from metadata.transactions import AbortedTxn
from streamhouse.errors import ErrorCode
from streamhouse.recordbatch import (
    BATCH_HEADER_SIZE,
    CODEC_MASK,
    CODEC_NONE,
    CONTROL_MASK,
    DELETE_HORIZON_MASK,
    TIMESTAMP_TYPE_MASK,
    TRANSACTIONAL_MASK,
    BlockBatch,
    InvalidBatchError,
    encode_block,
    inflate,
    rebuild_batch,
    walk_block,
)
from streamhouse.topic_config import TOPIC_CONFIGS

#: Largest int64: a delete horizon never goes past it.
INT64_MAX = (1 << 63) - 1

__all__ = [
    "CompactionConfig",
    "FilterStats",
    "OffsetMap",
    "PartitionPlan",
    "batch_records",
    "compaction_config",
    "filter_block",
    "is_compacted",
    "plan_partition",
    "put_block",
]

#: Bound on one batch's decompressed records while compacting (ingest allowed no more).
MAX_INFLATED = 256 * 1024 * 1024


class CompactionConfig(msgspec.Struct, frozen=True):
    """A compacted topic's key-compaction configs (Kafka's names, in ms and a ratio)."""

    delete_retention_ms: int
    min_lag_ms: int
    max_lag_ms: int
    min_dirty_ratio: float


def is_compacted(config: dict[str, str]) -> bool:
    """Whether the topic's cleanup.policy includes compact."""
    return "compact" in config.get("cleanup.policy", TOPIC_CONFIGS["cleanup.policy"][0])


def compaction_config(config: dict[str, str]) -> CompactionConfig:
    """The topic's key-compaction configs, Kafka's defaults where unset."""

    def get(key: str) -> str:
        return config.get(key, TOPIC_CONFIGS[key][0])

    return CompactionConfig(
        delete_retention_ms=int(get("delete.retention.ms")),
        min_lag_ms=int(get("min.compaction.lag.ms")),
        max_lag_ms=int(get("max.compaction.lag.ms")),
        min_dirty_ratio=float(get("min.cleanable.dirty.ratio")),
    )


class BlockRow(msgspec.Struct, frozen=True):
    """What the plan needs of a block row (metadata.StoredBlock has these fields)."""

    base_offset: int
    end_offset: int
    byte_length: int
    max_timestamp: int


class PartitionPlan(msgspec.Struct, frozen=True):
    """Whether a partition is due, and its ranges (offsets)."""

    due: bool
    reason: str
    cleanable_end: int  # offsets below it are cleanable
    dirty_start: int  # the clean offset
    dirty_bytes: int
    cleanable_bytes: int


def plan_partition(
    blocks: Sequence[BlockRow],
    clean_offset: int,
    now_ms: int,
    config: CompactionConfig,
    stable_end: int | None = None,
) -> PartitionPlan:
    """The cleanable range of a partition whose block rows (by base offset) are `blocks`
    and whether it is due (module docstring); `stable_end` is its last stable offset."""
    end = blocks[0].base_offset if blocks else clean_offset
    cleanable_bytes = dirty_bytes = 0
    first_dirty_ts: int | None = None
    young = now_ms - config.min_lag_ms
    for block in blocks:
        if block.max_timestamp > young:
            break
        end = block.end_offset
    if blocks:
        end = min(end, blocks[-1].end_offset - 1)  # never the newest offset
    if stable_end is not None:
        end = min(end, stable_end)  # never an open transaction
    for block in blocks:
        if block.base_offset >= end:
            break
        cleanable_bytes += block.byte_length
        if block.end_offset > clean_offset:
            dirty_bytes += block.byte_length
            if first_dirty_ts is None:
                first_dirty_ts = block.max_timestamp
    if end <= clean_offset:
        dirty_bytes = 0
    plan = {
        "cleanable_end": end,
        "dirty_start": clean_offset,
        "dirty_bytes": dirty_bytes,
        "cleanable_bytes": cleanable_bytes,
    }
    if dirty_bytes == 0:
        return PartitionPlan(due=False, reason="nothing dirty is cleanable", **plan)
    ratio = dirty_bytes / cleanable_bytes
    if ratio >= config.min_dirty_ratio:
        reason = f"dirty ratio {ratio:.2f} >= min.cleanable.dirty.ratio {config.min_dirty_ratio}"
        return PartitionPlan(due=True, reason=reason, **plan)
    assert first_dirty_ts is not None
    if now_ms - first_dirty_ts > config.max_lag_ms:
        reason = f"dirty data older than max.compaction.lag.ms {config.max_lag_ms}"
        return PartitionPlan(due=True, reason=reason, **plan)
    reason = f"dirty ratio {ratio:.2f} below min.cleanable.dirty.ratio {config.min_dirty_ratio}"
    return PartitionPlan(due=False, reason=reason, **plan)


def batch_records(block: bytes | memoryview, batch: BlockBatch) -> bytes | memoryview:
    """The uncompressed record bytes of one batch of a block."""
    info = batch.info
    start = info.position + BATCH_HEADER_SIZE
    end = info.position + info.length
    codec = info.attributes & CODEC_MASK
    raw = memoryview(block)[start:end]
    if codec == CODEC_NONE:
        return raw
    return inflate(codec, raw.tobytes(), MAX_INFLATED)


def is_aborted(batch: BlockBatch, aborted: Sequence[AbortedTxn]) -> bool:
    """Whether the batch holds records of an aborted transaction."""
    info = batch.info
    if not info.attributes & TRANSACTIONAL_MASK or info.attributes & CONTROL_MASK:
        return False
    return any(
        a.producer_id == info.producer_id and a.first_offset <= batch.first_offset <= a.last_offset
        for a in aborted
    )


def put_block(
    omap: OffsetMap,
    block: bytes | memoryview,
    base_offset: int,
    skipped: tuple[int, ...],
    from_offset: int,
    until_offset: int,
    aborted: Sequence[AbortedTxn] = (),
) -> bool:
    """Puts the keys of the block's batches that hold offsets in [from_offset,
    until_offset) into the map (not markers, not aborted records); False when the map
    filled (the map's latest_offset is then where the pass stops)."""
    for batch in walk_block(block, base_offset, skipped):
        if batch.last_offset < from_offset:
            continue
        if batch.first_offset >= until_offset:
            break
        if batch.info.attributes & CONTROL_MASK or is_aborted(batch, aborted):
            continue
        count = batch.info.record_count
        records = batch_records(block, batch)
        try:
            put = omap.put_records(records, count, batch.first_offset, from_offset, until_offset)
        except ValueError as exc:
            raise _corrupt(batch, exc) from None
        if put < count:
            return False
    return True


def _corrupt(batch: BlockBatch, exc: ValueError) -> InvalidBatchError:
    return InvalidBatchError(
        ErrorCode.CORRUPT_MESSAGE,
        f"stored batch at offsets {batch.first_offset}..{batch.last_offset} has malformed "
        f"records ({exc}); the block is left as it is",
    )


class FilterStats(msgspec.Struct):
    """What filtering did (summed over blocks)."""

    records_removed: int = 0
    tombstones_removed: int = 0
    batches_removed: int = 0
    batches_rewritten: int = 0


def filter_block(
    omap: OffsetMap,
    block: bytes | memoryview,
    base_offset: int,
    skipped: tuple[int, ...],
    now_ms: int,
    delete_retention_ms: int,
    stats: FilterStats,
    aborted: Sequence[AbortedTxn] = (),
) -> tuple[bytes, list[BlockBatch]] | None:
    """The block's batches filtered by the map (module docstring): ``(block bytes by the gap
    rule from base_offset, their walk)``; ``None`` when nothing changed (the block stays
    as it is). Bytes with no batch left are ``b""`` with an empty list."""
    latest = omap.latest_offset
    kept: list[tuple[bytes | memoryview, int]] = []
    changed = False
    mv = memoryview(block)
    for batch in walk_block(block, base_offset, skipped):
        info = batch.info
        raw = mv[info.position : info.position + info.length]
        if batch.first_offset > latest or info.attributes & CONTROL_MASK:
            kept.append((raw, batch.first_offset))
            continue
        if is_aborted(batch, aborted):
            changed = True
            stats.records_removed += info.record_count
            stats.batches_removed += 1
            continue
        attributes = info.attributes
        has_horizon = bool(attributes & DELETE_HORIZON_MASK)
        if has_horizon:
            drop_tombstones, rebase_to = now_ms >= info.base_timestamp, info.base_timestamp
        else:
            # Capped: delete.retention.ms may be Kafka's Long.MAX ("keep tombstones forever").
            drop_tombstones, rebase_to = False, min(now_ms + delete_retention_ms, INT64_MAX)
        try:
            records, count, tomb_removed, _tomb_kept, max_ts, rebased = filter_records(
                batch_records(block, batch),
                info.record_count,
                batch.first_offset,
                omap,
                drop_tombstones,
                info.base_timestamp,
                rebase_to,
            )
        except InvalidBatchError:
            raise
        except ValueError as exc:
            raise _corrupt(batch, exc) from None
        if count == info.record_count and not rebased:
            kept.append((raw, batch.first_offset))
            continue
        changed = True
        stats.records_removed += info.record_count - count
        stats.tombstones_removed += tomb_removed
        if count == 0:
            stats.batches_removed += 1
            continue
        stats.batches_rewritten += 1
        if attributes & TIMESTAMP_TYPE_MASK:
            max_ts = info.max_timestamp  # LogAppendTime: the batch's time stays
        new = rebuild_batch(
            raw,
            records,
            count,
            max_timestamp=max_ts,
            base_timestamp=rebase_to if rebased else info.base_timestamp,
            attributes=attributes | DELETE_HORIZON_MASK if rebased else attributes,
        )
        kept.append((new, batch.first_offset))
    if not changed and not skipped:
        return None
    if not kept:
        return b"", []
    data = encode_block(kept, base_offset)
    return data, walk_block(data, base_offset)
