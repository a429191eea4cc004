"""Small-object compaction and rewrites of partly-live objects (a rewriting step of a pass).

Which objects (:mod:`lifecycle.plan`):
- *small*: live objects under ``lifecycle_small_object_bytes`` committed at least
  ``lifecycle_compaction_min_age_ms`` before the pass's clock;
- *partly live*: objects whose live bytes (the block rows still pointing into them) are under
  ``lifecycle_min_live_percent`` of their size (after retention, DeleteRecords, DeleteTopics
  or key compaction took some of their blocks), whatever their size or age.
They are taken in commit (segment id) order and grouped into about
``lifecycle_target_object_bytes`` of live bytes; a group of two objects or more, or holding a
partly-live one, is rewritten into ONE new object when that pays
(:meth:`lifecycle.plan.RewriteGroup.selection`): at most ``lifecycle_small_object_bytes / 4``
live bytes copied per object done away with, or the largest object weighing no more than the
others together; otherwise the largest is left out and the rest tried again. So a lone small
object is left alone, and an object already merged is not copied again for every small
newcomer: those merge among themselves, and with it once they weigh as much (write
amplification stays bounded, as in a size-tiered LSM tree).

The new object's layout (:func:`merge_partition`): its blocks in (topic id, partition, base
offset) order; the consecutive rows of one partition (no row of another object between them)
become one block, holding their batches in offset order, except that a block closes before a
row that would take it past the limits of its topic (:func:`lifecycle.plan.block_limits`):
- ``MERGED_BLOCK_BYTES`` (2 MiB) of batch bytes: a reader fetches and caches whole blocks,
  so a cold read of a partition's history costs about one GET per 2 MiB and a block never
  costs the cache more than that;
- the topic's ``segment.bytes`` of batch bytes, and ``segment.ms`` of record time: from the
  oldest record timestamp of its batches (a batch's ``base_timestamp``, or its
  ``max_timestamp`` under LogAppendTime, which is every record's time then; negative
  timestamps, "none", count for nothing) to the newest ``max_timestamp`` of its rows.
  Rows are never split, so each new block's ``max_timestamp`` is the max of the rows it
  merges, and time retention drops whole blocks: a record outlives ``retention.ms`` by at
  most the span of its block, ``segment.ms``, as a Kafka record outlives it by at most its
  segment's (Kafka rolls a segment after ``segment.ms`` of record time; its default, 7 days,
  leaves the 2 MiB cap the only limit of a topic that does not set it). Likewise
  ``retention.bytes`` keeps to within one block, at most ``segment.bytes``. The span is
  measured from the oldest record rather than from the previous row's ``max_timestamp``:
  it bounds exactly how much longer than its own timestamp says any record of the block is
  kept, and it needs nothing outside the block.
A row already beyond a limit alone stays one block of its own. ListOffsets by time sees
block-grained values as before. Skipped (duplicate)
batches are dropped; every other batch is copied byte for byte except its stored
``baseOffset`` field, rewritten by the gap rule (``streamhouse.recordbatch.encode_block``,
outside the batch CRC), so every offset, timestamp and byte a consumer sees stays the same.
The new rows tile the replaced ones: a block starts at the ``base_offset`` of its first row
and ends at the end offset of its last. Idempotence state (producer ids, sequences) lives in
metadata and is not touched.

The new segment row's ``created_ms`` is the newest of the replaced objects' (retention's
fallback for a block without timestamps is its segment's commit time: dating the merged object
by its newest part keeps such a block at least as long as before, never shorter, as Kafka dates
a segment by its newest time). A row without timestamps is never merged with another row, so
it never takes another row's ``max_timestamp``.

Each group is one RewriteContext rewrite (read, PUT, switch; see :mod:`lifecycle.rewrite` for
why killing the process at any point loses nothing). A group whose switch is refused (a row
changed meanwhile) is counted and left for the next pass; a group with an unreadable block is
logged and left as it is. A step starts no new group once it has run ``STEP_SECONDS``, so
the pass goes on to its deletes; the next pass continues.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from itertools import groupby

import msgspec

from lifecycle.plan import (
    BlockLimits,
    RewriteGroup,
    RewriteGrouper,
    block_limits,
    is_partly_live,
    is_small,
)
from lifecycle.rewrite import BlockData, BlockUnreadableError, RewriteContext, block_data
from metadata.store import BlockRewrite, SegmentUsage, StoredBlock
from streamhouse.errors import ErrorCode
from streamhouse.recordbatch import (
    TIMESTAMP_TYPE_MASK,
    BlockBatch,
    InvalidBatchError,
    encode_block,
    walk_block,
)

__all__ = [
    "MERGED_BLOCK_BYTES",
    "STEP_SECONDS",
    "CompactionReport",
    "compact_objects",
    "merge_partition",
    "oldest_timestamp",
]

log = logging.getLogger("lifecycle")

#: A merged block holds at most this many batch bytes, unless one row alone is larger (rows
#: are never split); less when its topic's segment.bytes is smaller.
MERGED_BLOCK_BYTES = 2 * 1024 * 1024
#: Merged blocks of a topic whose config was not found (it went meanwhile: the switch is
#: refused anyway): the defaults.
DEFAULT_LIMITS = block_limits({}, MERGED_BLOCK_BYTES)
#: A merge pays when it copies at most lifecycle_small_object_bytes / MERGE_COPY_DIVISOR live
#: bytes per object it does away with, or when its largest object weighs no more than the
#: others together (plan.RewriteGroup.selection).
MERGE_COPY_DIVISOR = 4
#: Live segments fetched from metadata at a time.
SEGMENT_PAGE = 1000
#: A compaction step starts no new group after running this long (the pass must get on to its
#: deletes; the next pass continues where this one stopped).
STEP_SECONDS = 120.0


class CompactionReport(msgspec.Struct, kw_only=True):
    """What the small-object compaction step did in one pass."""

    segments_scanned: int = 0  # live objects looked at
    small_objects: int = 0  # candidates by size and age
    partly_live_objects: int = 0  # candidates by live share
    groups_rewritten: int = 0
    objects_replaced: int = 0  # old objects whose rows moved to a new object
    objects_written: int = 0  # new objects switched in
    rows_replaced: int = 0
    blocks_written: int = 0
    bytes_before: int = 0  # size of the objects replaced
    bytes_after: int = 0  # size of the objects switched in
    bytes_read: int = 0  # read from the object store (paced)
    bytes_written: int = 0  # PUT to the object store (paced; refused switches included)
    duplicate_batches_dropped: int = 0
    switches_refused: int = 0  # a replaced row changed first: left for the next pass
    groups_unreadable: int = 0  # a block failed its checksum (or a bug): left as it is
    stopped_early: bool = False  # STEP_SECONDS ran out; the next pass continues
    duration_ms: int = 0


def oldest_timestamp(batches: Sequence[BlockBatch]) -> int:
    """The oldest record timestamp of the batches (-1: none has one): a batch's
    base_timestamp, or its max_timestamp under LogAppendTime (every record's time then)."""
    oldest = -1
    for b in batches:
        info = b.info
        ts = info.max_timestamp if info.attributes & TIMESTAMP_TYPE_MASK else info.base_timestamp
        if ts >= 0 and (oldest < 0 or ts < oldest):
            oldest = ts
    return oldest


def _earliest(a: int, b: int) -> int:
    """The older of two timestamps, -1 meaning none."""
    return b if a < 0 else a if b < 0 else min(a, b)


def merge_partition(
    rows: Sequence[tuple[StoredBlock, bytes]],
    follows: Sequence[bool],
    limits: BlockLimits = DEFAULT_LIMITS,
) -> tuple[list[BlockData], int]:
    """The new blocks of one partition's rows of a group, and how many duplicate batches were
    dropped.

    `rows`: the partition's block rows with their decoded bytes, by base offset; `follows[i]`
    says whether row i directly follows row i-1 in the partition (no other row between them;
    ``follows[0]`` is ignored). Consecutive rows merge into one block while it keeps within
    `limits`: batch bytes, and record time from its oldest record to its newest max_timestamp
    (see the module docstring). Raises InvalidBatchError when a row's bytes do not hold the
    offsets the row says."""
    out: list[BlockData] = []
    dropped = 0
    pieces: list[tuple[memoryview, int]] = []
    batches: list[BlockBatch] = []
    size = 0
    base = 0
    newest = -1
    oldest = -1
    first_row: StoredBlock | None = None

    def close() -> None:
        assert first_row is not None
        data = encode_block(pieces, base)
        out.append(block_data(first_row.topic_id, first_row.partition, base, data, batches, newest))

    for i, (row, data) in enumerate(rows):
        view = memoryview(data)
        walked = walk_block(view, row.base_offset, row.skipped_batches, end_offset=row.end_offset)
        if not walked or walked[-1].last_offset + 1 != row.end_offset:
            end = walked[-1].last_offset + 1 if walked else row.base_offset
            raise InvalidBatchError(
                ErrorCode.CORRUPT_MESSAGE,
                f"block row of topic id {row.topic_id} partition {row.partition} at "
                f"{row.segment_key}@{row.byte_offset} says offsets {row.base_offset}.."
                f"{row.end_offset} but its batches end at {end}",
            )
        dropped += len(row.skipped_batches)
        row_bytes = sum(b.info.length for b in walked)
        row_oldest = oldest_timestamp(walked)
        if first_row is not None and (
            not follows[i]
            # A row without timestamps is dated by its segment's commit time (retention's
            # fallback): merged, it would take another row's max_timestamp and could expire
            # early. It stays a block of its own.
            or row.max_timestamp < 0
            or newest < 0
            or not limits.admits(
                size + row_bytes,
                _earliest(oldest, row_oldest),
                max(newest, row.max_timestamp),
            )
        ):
            close()
            first_row = None
        if first_row is None:
            first_row, pieces, batches, size = row, [], [], 0
            base, newest, oldest = row.base_offset, row.max_timestamp, -1
        for b in walked:
            pieces.append((view[b.info.position : b.info.position + b.info.length], b.first_offset))
        batches.extend(walked)
        size += row_bytes
        newest = max(newest, row.max_timestamp)
        oldest = _earliest(oldest, row_oldest)
    if first_row is not None:
        close()
    return out, dropped


async def compact_objects(
    ctx: RewriteContext, now_ms: int, monotonic: Callable[[], float] = time.monotonic
) -> CompactionReport:
    """The compaction step of a pass at clock `now_ms` (see the module docstring). Raises
    ObjectStoreFailure (the pass stops; nothing half-done is visible) or the metadata
    store's errors."""
    settings = ctx.settings
    report = CompactionReport()
    started = monotonic()
    read, written = ctx.bytes_read, ctx.bytes_written

    def done() -> CompactionReport:
        report.bytes_read = ctx.bytes_read - read
        report.bytes_written = ctx.bytes_written - written
        report.duration_ms = int((monotonic() - started) * 1000)
        return report

    grouper = RewriteGrouper(settings.lifecycle_target_object_bytes)
    after = 0
    while True:
        page = await ctx.meta.live_segments(after, SEGMENT_PAGE)
        if not page:
            break
        after = page[-1].segment_id
        report.segments_scanned += len(page)
        for segment in page:
            partly = is_partly_live(segment, settings.lifecycle_min_live_percent)
            small = is_small(
                segment,
                now_ms,
                settings.lifecycle_small_object_bytes,
                settings.lifecycle_compaction_min_age_ms,
            )
            if not (partly or small):
                continue
            report.partly_live_objects += partly
            report.small_objects += small and not partly
            for group in grouper.add(segment, partly):
                await _rewrite(ctx, group, report)
                if monotonic() - started > STEP_SECONDS:
                    report.stopped_early = True
                    return done()
        if len(page) < SEGMENT_PAGE:
            break
    for group in grouper.finish():
        await _rewrite(ctx, group, report)
    return done()


async def _rewrite(ctx: RewriteContext, group: RewriteGroup, report: CompactionReport) -> None:
    chosen = group.selection(ctx.settings.lifecycle_small_object_bytes // MERGE_COPY_DIVISOR)
    if not chosen:
        return
    segments: dict[int, SegmentUsage] = {s.segment_id: s for s in chosen}
    rows = await ctx.meta.blocks_of_segments(list(segments))
    if not rows:
        return  # their rows went meanwhile; the segments are marked dead by this pass
    follows = await _follows(ctx, rows)
    topics = await ctx.meta.topics_by_id({r.topic_id for r in rows})
    limits = {
        topic_id: block_limits(topic.config, MERGED_BLOCK_BYTES)
        for topic_id, topic in topics.items()
    }
    try:
        datas = await ctx.get_blocks(rows)
    except BlockUnreadableError as exc:
        report.groups_unreadable += 1
        log.error("compaction: group of %d objects left as it is: %s", len(segments), exc)
        return

    def layout() -> tuple[list[BlockData], int]:
        blocks: list[BlockData] = []
        dropped = 0
        start = 0
        for _, members in groupby(rows, key=lambda r: (r.topic_id, r.partition)):
            count = len(list(members))
            part = [(rows[i], datas[i]) for i in range(start, start + count)]
            topic_limits = limits.get(part[0][0].topic_id, DEFAULT_LIMITS)
            new, n = merge_partition(part, follows[start : start + count], topic_limits)
            blocks.extend(new)
            dropped += n
            start += count
        return blocks, dropped

    try:
        blocks, dropped = await asyncio.to_thread(layout)
    except (InvalidBatchError, ValueError) as exc:
        report.groups_unreadable += 1
        log.error(
            "compaction: group of %d objects (%s...) left as it is: %s",
            len(segments),
            chosen[0].key,
            exc,
        )
        return
    new = await ctx.put_object(blocks)
    used = {r.segment_id for r in rows}
    rewrite = BlockRewrite(
        key=new.key,
        size=new.size,
        created_ms=max(segments[s].created_ms for s in used),
        replaced=tuple(rows),
        blocks=new.blocks,
    )
    try:
        switched = await ctx.switch(rewrite)
    except ValueError as exc:
        # replace_blocks found the new rows malformed (overlapping a row they do not
        # replace): a bug, not a race. Nothing changed; the object is an orphan the orphan
        # scan deletes after the grace period; the pass goes on.
        report.groups_unreadable += 1
        log.error(
            "compaction: switching %d objects to %s was refused as malformed (nothing "
            "changed; please report this): %s",
            len(used),
            new.key,
            exc,
        )
        return
    if not switched:
        report.switches_refused += 1
        log.info(
            "compaction: rows of %d objects changed during their rewrite; %s is dead and the "
            "next pass tries again",
            len(used),
            new.key,
        )
        return
    report.groups_rewritten += 1
    report.objects_replaced += len(used)
    report.objects_written += 1
    report.rows_replaced += len(rows)
    report.blocks_written += len(blocks)
    report.bytes_before += sum(segments[s].size for s in used)
    report.bytes_after += new.size
    report.duplicate_batches_dropped += dropped
    log.info(
        "compaction: %d objects (%d bytes, %d rows) -> %s (%d bytes, %d blocks)",
        len(used),
        sum(segments[s].size for s in used),
        len(rows),
        new.key,
        new.size,
        len(blocks),
    )


async def _follows(ctx: RewriteContext, rows: Sequence[StoredBlock]) -> list[bool]:
    """For each row (ordered by topic, partition, base offset), whether it directly follows
    the row before it in its partition: ends meet, or (a gap left by key compaction) the
    partition's next row after the earlier one is this one."""
    out = [False] * len(rows)
    for i in range(1, len(rows)):
        prev, row = rows[i - 1], rows[i]
        if (prev.topic_id, prev.partition) != (row.topic_id, row.partition):
            continue
        if prev.end_offset == row.base_offset:
            out[i] = True
            continue
        nxt = await ctx.meta.partition_blocks(prev.topic_id, prev.partition, prev.end_offset, 1)
        out[i] = bool(nxt) and (nxt[0].segment_id, nxt[0].base_offset) == (
            row.segment_id,
            row.base_offset,
        )
    return out
