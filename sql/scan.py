"""Reading what the log holds now, bounded by pushed-down predicates.

A scan of a topic, given ``ScanBounds`` (partitions, an offset range, a lowest timestamp):

1. one metadata call for the partitions' states (log start, last stable offset): offsets
   below the log start or at/after the last stable offset (LSO: the high watermark, or the
   first offset of the oldest open transaction) are never read;
2. per partition, with a lowest timestamp, ``find_block_by_timestamp`` gives the first block
   whose max timestamp reaches it (blocks before it hold only older records), then
   ``find_blocks`` pages through the block rows from there up to the end of the offset range;
   a block whose max timestamp is below the bound is skipped (timestamps need not grow with
   offsets, so later blocks are checked one by one);
3. each block is one range GET of exactly its bytes (as the reader does), ``scan_concurrency``
   at a time, checksum-verified and decompressed (``streamhouse.segment.decode_block``), and
   decoded to Arrow (``sql.decode``), skipping batches outside the bounds and, read
   committed, the batches of aborted transactions (``aborted_ranges``: the partition's
   aborted transactions overlapping the offsets read, one metadata call per partition read,
   paged when there are more than ``MAX_ABORTED_LISTED``).

Bounds only ever make a scan read less: the SQL engine applies the full predicates to what is
read, so a bound that cannot be derived exactly is simply not derived.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from metadata import BlockLocation
from metadata.async_store import AsyncMetadata
from metadata.store import MAX_ABORTED_LISTED, TopicInfo
from sql.decode import AbortedRanges, BatchFilter, BlockDecodeError, decode_block_records
from streamhouse import objectstore
from streamhouse.segment import SegmentCorruptError, decode_block

__all__ = ["ScanBounds", "ScanError", "ScanStats", "aborted_ranges", "scan_topic"]

#: Block rows asked of metadata per call.
BLOCK_PAGE = 256


class ScanError(RuntimeError):
    """A block that could not be read or decoded; the message names it and says why."""


class ScanBounds(msgspec.Struct, frozen=True):
    """What a scan may be limited to: ``partitions`` (None: all), offsets in
    ``[from_offset, to_offset)`` (``to_offset`` None: to the end), records with a timestamp
    of at least ``min_timestamp`` ms (None: any)."""

    partitions: frozenset[int] | None = None
    from_offset: int = 0
    to_offset: int | None = None
    min_timestamp: int | None = None

    def union(self, other: ScanBounds) -> ScanBounds:
        """Bounds that let through everything either does (two scans of one relation)."""
        parts = (
            None
            if self.partitions is None or other.partitions is None
            else self.partitions | other.partitions
        )
        to = (
            None
            if self.to_offset is None or other.to_offset is None
            else max(self.to_offset, other.to_offset)
        )
        ts = (
            None
            if self.min_timestamp is None or other.min_timestamp is None
            else min(self.min_timestamp, other.min_timestamp)
        )
        return ScanBounds(parts, min(self.from_offset, other.from_offset), to, ts)


class ScanStats(msgspec.Struct):
    """What a query read: block rows looked at, blocks fetched and their bytes, batches and
    records decoded, records that did not match their stream's schema (by relation), and the
    bounds each relation was read within."""

    partitions: int = 0
    blocks_listed: int = 0
    blocks_read: int = 0
    bytes_read: int = 0
    batches_decoded: int = 0
    records_decoded: int = 0
    invalid_records: dict[str, int] = msgspec.field(default_factory=dict)
    scans: dict[str, ScanBounds] = msgspec.field(default_factory=dict)  # bounds by relation


async def aborted_ranges(
    meta: AsyncMetadata, topic_id: int, partition: int, start: int, stop: int
) -> AbortedRanges:
    """The partition's aborted transactions overlapping offsets ``[start, stop)``, paged past
    metadata's cap per call. Raises ScanError in the pathological case of more than the cap
    of aborted transactions sharing one first offset (paging cannot move on)."""
    found: list[tuple[int, int, int]] = []
    cursor = start
    while cursor < stop:
        page = await meta.aborted_transactions(topic_id, partition, cursor, stop)
        found.extend((a.producer_id, a.first_offset, a.last_offset) for a in page)
        if len(page) < MAX_ABORTED_LISTED:
            break
        if page[-1].first_offset <= cursor:
            raise ScanError(
                f"partition {partition}: over {MAX_ABORTED_LISTED} aborted transactions "
                f"overlap offset {cursor}; read a narrower offset range"
            )
        cursor = page[-1].first_offset
    return AbortedRanges(found)


async def _list_blocks(
    meta: AsyncMetadata, topic_id: int, partition: int, start: int, stop: int, bounds: ScanBounds
) -> tuple[list[BlockLocation], int]:
    """The partition's blocks holding offsets in ``[start, stop)`` that may hold a record at
    or after the lowest timestamp; and how many block rows were looked at."""
    if bounds.min_timestamp is not None:
        first = await meta.find_block_by_timestamp(topic_id, partition, bounds.min_timestamp, start)
        if first is None:
            return [], 0
        start = max(start, first.base_offset)
    found: list[BlockLocation] = []
    listed = 0
    pos = start
    while pos < stop:
        page = await meta.find_blocks(topic_id, partition, pos, BLOCK_PAGE)
        if not page:
            break
        for loc in page:
            if loc.base_offset >= stop:
                return found, listed
            listed += 1
            if bounds.min_timestamp is None or loc.max_timestamp >= bounds.min_timestamp:
                found.append(loc)
        pos = page[-1].end_offset
    return found, listed


async def scan_topic(
    meta: AsyncMetadata,
    store: Any,
    topic: TopicInfo,
    bounds: ScanBounds,
    stats: ScanStats,
    *,
    concurrency: int = 8,
    max_inflated: int = 64 << 20,
    max_read_bytes: int | None = None,
) -> list[pa.RecordBatch]:
    """The raw-column record batches of ``topic`` within ``bounds`` (a superset: rows are
    not filtered by the bounds, only blocks and batches), one per block read, in partition
    and offset order. Raises ScanError when a block cannot be read or decoded, or when the
    blocks to read would take ``stats.bytes_read`` past ``max_read_bytes`` (checked before
    any is read)."""
    states = {s.partition: s for s in await meta.list_partitions(topic.topic_id)}
    wanted: Sequence[int] = (
        sorted(p for p in bounds.partitions if p in states)
        if bounds.partitions is not None
        else sorted(states)
    )
    # (partition, first wanted offset, end (the LSO or the bound), block)
    plan: list[tuple[int, int, int, BlockLocation]] = []
    aborted: dict[int, AbortedRanges] = {}
    for partition in wanted:
        state = states[partition]
        start = max(state.log_start_offset, bounds.from_offset)
        stop = state.last_stable_offset  # read committed: never past an open transaction
        if bounds.to_offset is not None:
            stop = min(stop, bounds.to_offset)
        stats.partitions += 1
        if start >= stop:
            continue
        locs, listed = await _list_blocks(meta, topic.topic_id, partition, start, stop, bounds)
        stats.blocks_listed += listed
        if locs:
            aborted[partition] = await aborted_ranges(meta, topic.topic_id, partition, start, stop)
        plan.extend((partition, start, stop, loc) for loc in locs)
    planned = sum(loc.byte_length for _p, _s, _e, loc in plan)
    if max_read_bytes is not None and stats.bytes_read + planned > max_read_bytes:
        raise ScanError(
            f"the query would read {(stats.bytes_read + planned) / 1e6:.1f} MB of stored blocks "
            f"(topic {topic.name!r}: {planned / 1e6:.1f} MB in {len(plan)} blocks), over the "
            f"limit of {max_read_bytes / 1e6:.1f} MB: narrow it with WHERE bounds on the "
            "partition, offset or timestamp columns, or raise the limit (--max-read-mb)"
        )
    gate = asyncio.Semaphore(max(1, concurrency))

    async def read(partition: int, start: int, stop: int, loc: BlockLocation) -> pa.RecordBatch:
        async with gate:
            try:
                raw = await objectstore.get_range(
                    store, loc.segment_key, loc.byte_offset, loc.byte_length
                )
            except Exception as exc:
                raise ScanError(
                    f"topic {topic.name!r} partition {partition}: block "
                    f"{loc.segment_key}@{loc.byte_offset} could not be read ({exc}); retry the "
                    "query"
                ) from exc
        try:
            data = decode_block(raw)
            batch, decoded = decode_block_records(
                data,
                partition,
                loc.base_offset,
                loc.skipped_batches,
                loc.end_offset,
                BatchFilter(start, stop, bounds.min_timestamp),
                max_inflated=max_inflated,
                aborted=aborted[partition],
            )
        except (SegmentCorruptError, BlockDecodeError) as exc:
            raise ScanError(
                f"topic {topic.name!r} partition {partition}: stored block "
                f"{loc.segment_key}@{loc.byte_offset} (offsets {loc.base_offset}.."
                f"{loc.end_offset - 1}) does not decode: {exc}"
            ) from None
        stats.blocks_read += 1
        stats.bytes_read += loc.byte_length
        stats.batches_decoded += decoded
        stats.records_decoded += batch.num_rows
        if loc.base_offset < start and batch.num_rows:
            # below the log start (DeleteRecords inside a block): never visible
            batch = batch.filter(pc.greater_equal(batch.column("offset"), start))
        return batch

    return list(await asyncio.gather(*(read(*item) for item in plan)))
