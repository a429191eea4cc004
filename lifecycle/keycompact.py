"""Key compaction of topics with cleanup.policy compact (or compact,delete): the I/O step.

:func:`compact_keys` runs once per lifecycle pass on the rewriting agent, after retention
(which also applies to compact,delete topics: ``enforce_retention`` handles every policy that
contains delete). The rules (what is cleanable, when a partition is due, which records go,
tombstones and their delete horizon) are :mod:`lifecycle.keyplan`'s; the per-record work is
``streamhouse/_keycompact.c``. Per due partition:

1. its block rows (``partition_blocks``) and clean offset (``get_clean_offsets``) give the
   plan: the dirty cleanable blocks;
2. those blocks are read (paced, :meth:`RewriteContext.get_blocks`, a few at a time) and their
   keys put into a key map of ``lifecycle_key_map_bytes``; when it fills the pass stops at the
   last offset put (the next pass goes on from there);
3. every block from the log start up to the map's last offset is read again and filtered;
   blocks that lose nothing are left alone, the others are written, a group of about
   ``lifecycle_target_object_bytes`` at a time, into a new segment object
   (:meth:`RewriteContext.put_object`) and switched in one transaction
   (:meth:`RewriteContext.switch`, ``replace_blocks``) with the rows they replace; a block
   that lost every batch only loses its row. A group whose blocks all emptied carries the
   partition's newest block (copied as it is) so that it has an object;
4. when every group switched, the clean offset moves to the end of what the map covered
   (``set_clean_offset``).

Offsets never move and nothing is written before the switch: a switch refused by
``replace_blocks`` (retention, DeleteRecords, DeleteTopics or another rewriter got there first)
ends the partition for this pass with its clean offset unchanged, and the next pass starts
again from the rows as they are. An unreadable block (checksum) leaves the partition alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from lifecycle.keyplan import (
    FilterStats,
    OffsetMap,
    compaction_config,
    filter_block,
    is_compacted,
    plan_partition,
    put_block,
)
from lifecycle.rewrite import BlockData, BlockUnreadableError, RewriteContext, block_data
from metadata.transactions import AbortedTxn
from streamhouse.recordbatch import InvalidBatchError, encode_block, walk_block

if TYPE_CHECKING:
    from metadata import StoredBlock, TopicInfo

__all__ = ["KeyCompactionReport", "compact_keys"]

log = logging.getLogger("lifecycle")

#: Blocks read per request group while building the map and filtering.
READ_CHUNK = 16
#: Block rows looked up per metadata call.
ROWS_PER_LOOKUP = 1000


class KeyCompactionReport(msgspec.Struct):
    """What one key-compaction step did."""

    partitions_checked: int = 0
    partitions_compacted: int = 0
    partitions_map_full: int = 0  # the key map filled: the rest waits for the next pass
    records_removed: int = 0
    tombstones_removed: int = 0
    batches_removed: int = 0
    blocks_rewritten: int = 0
    blocks_removed: int = 0
    objects_written: int = 0
    switches_refused: int = 0
    blocks_unreadable: int = 0


async def compact_keys(ctx: RewriteContext, now_ms: int) -> KeyCompactionReport:
    """Key-compacts every due partition of every compacted topic (module docstring).

    Raises ``ObjectStoreFailure`` when a request to the object store fails (the pass stops;
    whatever switched before stays switched, nothing half-done is visible)."""
    report = KeyCompactionReport()
    for topic in await ctx.meta.list_topics():
        if not is_compacted(topic.config):
            continue
        clean = await ctx.meta.get_clean_offsets(topic.topic_id)
        for partition in range(topic.partitions):
            state = clean.get(partition)
            await _compact_partition(
                ctx, topic, partition, state.clean_offset if state else 0, now_ms, report
            )
    return report


async def _rows(ctx: RewriteContext, topic_id: int, partition: int) -> list[StoredBlock]:
    rows: list[StoredBlock] = []
    offset = 0
    while True:
        page = await ctx.meta.partition_blocks(topic_id, partition, offset, ROWS_PER_LOOKUP)
        rows += page
        if len(page) < ROWS_PER_LOOKUP:
            return rows
        offset = page[-1].end_offset


def _chunks(rows: Sequence[StoredBlock]) -> list[Sequence[StoredBlock]]:
    return [rows[i : i + READ_CHUNK] for i in range(0, len(rows), READ_CHUNK)]


async def _compact_partition(
    ctx: RewriteContext,
    topic: TopicInfo,
    partition: int,
    clean_offset: int,
    now_ms: int,
    report: KeyCompactionReport,
) -> None:
    config = compaction_config(topic.config)
    rows = await _rows(ctx, topic.topic_id, partition)
    report.partitions_checked += 1
    if not rows:
        return
    state = await ctx.meta.get_partition(topic.topic_id, partition)
    if state is None:
        return
    plan = plan_partition(rows, clean_offset, now_ms, config, state.last_stable_offset)
    where = f"topic {topic.name!r} partition {partition}"
    if not plan.due:
        log.debug("key compaction of %s not due: %s", where, plan.reason)
        return
    start = max(clean_offset, rows[0].base_offset)
    # aborted transactions anywhere in what may be filtered (from the log start)
    aborted = await ctx.meta.aborted_transactions(
        topic.topic_id, partition, rows[0].base_offset, plan.cleanable_end
    )
    dirty = [r for r in rows if r.end_offset > start and r.base_offset < plan.cleanable_end]
    # As large as the dirty records could need (24-byte slots, at most 3/4 used, rounded down
    # to a power of two), never more than lifecycle_key_map_bytes.
    dirty_records = sum(r.record_count for r in dirty)
    omap = OffsetMap(min(ctx.settings.lifecycle_key_map_bytes, 64 * dirty_records + 384))
    full = False
    try:
        for chunk in _chunks(dirty):
            for row, data in zip(chunk, await ctx.get_blocks(chunk), strict=True):
                if not put_block(
                    omap,
                    data,
                    row.base_offset,
                    row.skipped_batches,
                    start,
                    plan.cleanable_end,
                    aborted,
                ):
                    full = True
                    break
            if full:
                break
        end = omap.latest_offset + 1 if full else plan.cleanable_end
        if full:
            report.partitions_map_full += 1
            log.info(
                "key compaction of %s: the key map (%d keys) filled at offset %d; the rest of "
                "its dirty range waits for the next pass (raise lifecycle_key_map_bytes to "
                "clean more per pass)",
                where,
                omap.size,
                end,
            )
        done = await _rewrite(
            ctx, topic, partition, rows, omap, config.delete_retention_ms, now_ms, report, aborted
        )
    except (BlockUnreadableError, InvalidBatchError) as exc:
        # bad stored bytes: never copied, never half-compacted; readers get their error
        report.blocks_unreadable += 1
        log.error("key compaction of %s skipped: %s", where, exc)
        return
    if not done:
        return
    await ctx.meta.set_clean_offset(topic.topic_id, partition, end, now_ms)
    report.partitions_compacted += 1
    log.info("key compaction of %s: clean up to offset %d (%s)", where, end, plan.reason)


def _copy(row: StoredBlock, data: bytes) -> BlockData:
    """A block copied as it is (its skipped batches left out)."""
    walked = walk_block(data, row.base_offset, row.skipped_batches)
    if row.skipped_batches:
        mv = memoryview(data)
        pairs = [
            (mv[b.info.position : b.info.position + b.info.length], b.first_offset) for b in walked
        ]
        data = encode_block(pairs, row.base_offset)
        walked = walk_block(data, row.base_offset)
    return block_data(row.topic_id, row.partition, row.base_offset, data, walked, row.max_timestamp)


async def _rewrite(
    ctx: RewriteContext,
    topic: TopicInfo,
    partition: int,
    rows: list[StoredBlock],
    omap: OffsetMap,
    delete_retention_ms: int,
    now_ms: int,
    report: KeyCompactionReport,
    aborted: Sequence[AbortedTxn] = (),
) -> bool:
    """Filters the blocks up to the map's last offset (dropping aborted transactions' records)
    and switches the changed ones; False when a switch was refused."""
    latest = omap.latest_offset
    targets = [r for r in rows if r.base_offset <= latest]
    stats = FilterStats()
    replaced: list[StoredBlock] = []
    new: list[BlockData] = []
    pending = 0
    target_bytes = ctx.settings.lifecycle_target_object_bytes

    async def flush() -> bool:
        nonlocal replaced, new, pending
        if not replaced:
            return True
        obj = await ctx.put_object(new)
        report.objects_written += 1
        from metadata import BlockRewrite

        rewrite = BlockRewrite(
            key=obj.key,
            size=obj.size,
            created_ms=int(time.time() * 1000),
            replaced=tuple(replaced),
            blocks=obj.blocks,
        )
        ok = await ctx.switch(rewrite, now_ms)
        if not ok:
            report.switches_refused += 1
            log.info(
                "key compaction of topic %r partition %d: a replaced block changed first "
                "(retention, DeleteRecords or another rewriter); the next pass starts again",
                topic.name,
                partition,
            )
        replaced, new, pending = [], [], 0
        return ok

    for chunk in _chunks(targets):
        for row, data in zip(chunk, await ctx.get_blocks(chunk), strict=True):
            result = filter_block(
                omap,
                data,
                row.base_offset,
                row.skipped_batches,
                now_ms,
                delete_retention_ms,
                stats,
                aborted,
            )
            if result is None:
                continue
            replaced.append(row)
            block, walked = result
            if not walked:
                report.blocks_removed += 1
                continue
            report.blocks_rewritten += 1
            new.append(block_data(topic.topic_id, partition, row.base_offset, block, walked))
            pending += len(block)
            if pending >= target_bytes and not await flush():
                return False
    if replaced and not new:
        # every changed block emptied: the partition's newest block (never emptied: its last
        # record always stays) carries the new object
        carrier = rows[-1]
        if carrier in replaced:  # cannot happen: it would have a batch left
            raise RuntimeError(f"topic {topic.name!r} partition {partition} would end in a gap")
        (data,) = await ctx.get_blocks([carrier])
        replaced.append(carrier)
        new.append(_copy(carrier, data))
    ok = await flush()
    report.records_removed += stats.records_removed
    report.tombstones_removed += stats.tombstones_removed
    report.batches_removed += stats.batches_removed
    return ok
