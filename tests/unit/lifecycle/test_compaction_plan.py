"""The I/O-free decisions of small-object compaction and partly-live rewrites: which objects
are candidates, how they are grouped, and the layout of a merged partition (offsets, skipped
batches, the block size cap, the topic's segment.ms and segment.bytes, breaks where another
object's row sits between)."""

from __future__ import annotations

import msgspec
import pytest

from lifecycle.compaction import MERGED_BLOCK_BYTES, merge_partition, oldest_timestamp
from lifecycle.plan import (
    BlockLimits,
    RewriteGrouper,
    block_limits,
    is_partly_live,
    is_small,
    object_overhead,
)
from metadata.store import SegmentUsage, StoredBlock
from streamhouse.recordbatch import (
    TIMESTAMP_TYPE_MASK,
    encode_batch,
    encode_block,
    walk_block,
)

NOW = 1_800_000_000_000
WEEK_MS = 604_800_000
MIN_AGE = 60_000
SMALL = 8 * 1024 * 1024


def usage(
    segment_id: int = 1,
    size: int = 1000,
    live: int = 900,
    blocks: int = 1,
    created: int = NOW - 3_600_000,
) -> SegmentUsage:
    return SegmentUsage(
        segment_id=segment_id,
        key=f"segments/{segment_id:04d}.seg",
        size=size,
        created_ms=created,
        live_bytes=live,
        block_count=blocks,
    )


# --------------------------------------------------------------------------- candidates


def test_small_objects_are_candidates_once_old_enough() -> None:
    assert is_small(usage(created=NOW - MIN_AGE), NOW, SMALL, MIN_AGE)
    assert not is_small(usage(created=NOW - MIN_AGE + 1), NOW, SMALL, MIN_AGE)
    assert not is_small(usage(size=SMALL, live=SMALL - 100), NOW, SMALL, MIN_AGE)
    assert is_small(usage(size=SMALL - 1, live=SMALL - 100), NOW, SMALL, MIN_AGE)
    # An object without rows is dead (the pass marks it), never merged.
    assert not is_small(usage(live=0, blocks=0), NOW, SMALL, MIN_AGE)


def test_partly_live_objects_are_those_mostly_dead() -> None:
    size = 10_000_000
    assert is_partly_live(usage(size=size, live=4_999_999, blocks=3), 50)
    assert not is_partly_live(usage(size=size, live=5_000_000, blocks=3), 50)
    assert not is_partly_live(usage(size=size, live=1, blocks=1), 0)  # 0: never
    assert not is_partly_live(usage(size=size, live=0, blocks=0), 50)  # dead, not partly live


def test_a_tiny_object_whose_only_waste_is_its_own_index_is_not_rewritten_alone() -> None:
    # 1 block of 60 bytes: header + index + footer make 84 more, so live is 42% of the size,
    # but rewriting it would give the very same object again, pass after pass.
    blocks = 1
    live = 60
    tiny = usage(size=live + object_overhead(blocks), live=live, blocks=blocks)
    assert not is_partly_live(tiny, 50)
    # With a second block gone (its bytes and its index entry), it is partly live.
    before = usage(size=2 * live + object_overhead(2), live=live, blocks=1)
    assert is_partly_live(before, 50)


# --------------------------------------------------------------------------- grouping


def test_groups_close_at_the_target_of_live_bytes() -> None:
    grouper = RewriteGrouper(target_bytes=1000)
    closed = []
    for i in range(1, 8):
        closed += grouper.add(usage(segment_id=i, live=300), partly_live=False)
    closed += grouper.finish()
    assert [[s.segment_id for s in g.segments] for g in closed] == [[1, 2, 3], [4, 5, 6], [7]]
    assert [g.live_bytes for g in closed] == [900, 900, 300]
    assert [len(g.selection(10**6)) for g in closed] == [3, 3, 0]  # a lone one stays


def test_an_oversized_candidate_is_a_group_of_its_own_and_partly_live_alone_is_worth_it() -> None:
    grouper = RewriteGrouper(target_bytes=1000)
    closed = grouper.add(usage(segment_id=1, live=100), partly_live=False)
    closed += grouper.add(usage(segment_id=2, size=10_000, live=2_000, blocks=5), partly_live=True)
    closed += grouper.add(usage(segment_id=3, live=100), partly_live=False)
    closed += grouper.finish()
    assert [[s.segment_id for s in g.segments] for g in closed] == [[1], [2], [3]]
    assert [len(g.selection(10**6)) for g in closed] == [0, 1, 0]
    assert closed[1].partly_live == 1


def test_a_merged_object_is_copied_again_only_once_newcomers_weigh_as_much() -> None:
    merged = usage(segment_id=1, size=6_100_000, live=6_000_000, blocks=40)
    per_object = 2_000_000  # copy at most this much per object done away with

    def chosen(newcomers: list[SegmentUsage]) -> list[int]:
        grouper = RewriteGrouper(target_bytes=64_000_000)
        for s in [merged, *newcomers]:
            assert grouper.add(s, partly_live=False) == []
        (group,) = grouper.finish()
        return [s.segment_id for s in group.selection(per_object)]

    # Two tiny newcomers merge among themselves, not with the big one.
    assert chosen([usage(segment_id=i, live=1_000) for i in (2, 3)]) == [2, 3]
    # Four: 6 MB copied to do away with four objects is within 2 MB per object.
    assert chosen([usage(segment_id=i, live=1_000) for i in range(2, 6)]) == [1, 2, 3, 4, 5]
    # One newcomer as heavy as the merged object: they merge (size-tiered).
    assert chosen([usage(segment_id=2, size=6_200_000, live=6_000_000)]) == [1, 2]
    # One lighter newcomer: nothing pays.
    assert chosen([usage(segment_id=2, size=3_200_000, live=3_000_000)]) == []


def test_objects_just_under_the_small_size_merge() -> None:
    grouper = RewriteGrouper(target_bytes=64_000_000)
    for i in range(1, 9):
        grouper.add(usage(segment_id=i, size=7_900_000, live=7_800_000, blocks=9), False)
    (group,) = grouper.finish()
    assert len(group.selection(2_000_000)) == 8


def test_groups_close_at_the_row_limit() -> None:
    grouper = RewriteGrouper(target_bytes=10**9, max_rows=10)
    closed = []
    for i in range(1, 6):
        closed += grouper.add(usage(segment_id=i, blocks=4), partly_live=False)
    closed += grouper.finish()
    assert [len(g.segments) for g in closed] == [2, 2, 1]


def test_grouper_refuses_a_nonsense_target() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        RewriteGrouper(0)


# --------------------------------------------------------------------------- layout


def batch(first_ts: int, records: int = 3, pid: int = -1, seq: int = -1) -> bytes:
    return encode_batch(
        [f"k{i}".encode() for i in range(records)],
        [f"value-{first_ts}-{i}".encode() * 4 for i in range(records)],
        [[("h", b"x")] for _ in range(records)],
        [first_ts + i for i in range(records)],
        producer_id=pid,
        producer_epoch=0 if pid >= 0 else -1,
        base_sequence=seq,
    )


class Log:
    """A partition's rows as produce writes them: consecutive offsets, one row per flush."""

    def __init__(self) -> None:
        self.next_offset = 0
        self.segment = 0
        self.rows: list[tuple[StoredBlock, bytes]] = []

    def flush(self, batches: list[bytes], skipped: tuple[int, ...] = (), gap: int = 0) -> None:
        self.segment += 1
        base = self.next_offset + gap
        data = b"".join(batches)
        walked = walk_block(data, base, skipped)
        end = walked[-1].last_offset + 1
        row = StoredBlock(
            topic_id=7,
            partition=3,
            base_offset=base,
            end_offset=end,
            segment_id=self.segment,
            segment_key=f"segments/{self.segment}.seg",
            byte_offset=8,
            byte_length=len(data) + 20,
            record_count=sum(b.info.record_count for b in walked),
            max_timestamp=max(b.info.max_timestamp for b in walked),
            skipped_batches=skipped,
        )
        self.rows.append((row, data))
        self.next_offset = end


def offsets_and_bytes(data: bytes, base: int) -> list[tuple[int, int, bytes]]:
    """(first offset, last offset, batch bytes after the baseOffset field) of each batch."""
    return [
        (b.first_offset, b.last_offset, data[b.info.position + 8 : b.info.position + b.info.length])
        for b in walk_block(data, base)
    ]


def expected(log: Log) -> list[tuple[int, int, bytes]]:
    out = []
    for row, data in log.rows:
        for b in walk_block(data, row.base_offset, row.skipped_batches):
            out.append(
                (
                    b.first_offset,
                    b.last_offset,
                    data[b.info.position + 8 : b.info.position + b.info.length],
                )
            )
    return out


def test_consecutive_rows_merge_into_one_block_with_the_same_offsets_and_bytes() -> None:
    log = Log()
    for i in range(5):
        log.flush([batch(1000 + 10 * i), batch(1005 + 10 * i, records=1)])
    blocks, dropped = merge_partition(log.rows, [True] * 5)
    assert dropped == 0
    assert len(blocks) == 1
    (block,) = blocks
    assert (block.topic_id, block.partition) == (7, 3)
    assert (block.base_offset, block.end_offset) == (0, log.next_offset)
    assert block.batch_count == 10
    assert block.record_count == sum(r.record_count for r, _ in log.rows)
    assert block.max_timestamp == max(r.max_timestamp for r, _ in log.rows)
    assert block.min_timestamp == 1000
    assert offsets_and_bytes(block.data, block.base_offset) == expected(log)


def test_skipped_duplicate_batches_are_dropped_and_take_no_offsets() -> None:
    log = Log()
    log.flush([batch(1, pid=5, seq=0), batch(2, pid=5, seq=0), batch(3, pid=5, seq=3)], (1,))
    log.flush([batch(4, pid=5, seq=6)])
    blocks, dropped = merge_partition(log.rows, [True, True])
    assert dropped == 1
    (block,) = blocks
    assert block.batch_count == 3
    assert block.end_offset == 9
    assert offsets_and_bytes(block.data, block.base_offset) == expected(log)


def test_a_row_of_another_object_between_breaks_the_block() -> None:
    log = Log()
    log.flush([batch(1)])
    log.flush([batch(2)])
    log.flush([batch(3)])
    blocks, _ = merge_partition(log.rows, [True, True, False])
    assert [(b.base_offset, b.end_offset) for b in blocks] == [(0, 6), (6, 9)]
    got = [t for b in blocks for t in offsets_and_bytes(b.data, b.base_offset)]
    assert got == expected(log)


def test_merged_blocks_are_capped_at_row_boundaries_and_tile_the_rows() -> None:
    log = Log()
    for i in range(10):
        log.flush([batch(100 * i, records=20)])
    one_row = len(log.rows[0][1])
    cap = 3 * one_row + one_row // 2
    blocks, _ = merge_partition(log.rows, [True] * 10, BlockLimits(cap, WEEK_MS))
    assert [b.batch_count for b in blocks] == [3, 3, 3, 1]
    assert all(len(b.data) <= cap for b in blocks)
    # The new rows tile the old span exactly: each starts where the previous ends.
    assert blocks[0].base_offset == 0
    assert [b.base_offset for b in blocks[1:]] == [b.end_offset for b in blocks[:-1]]
    assert blocks[-1].end_offset == log.next_offset
    # Each block's max timestamp is that of the rows it merged.
    for b in blocks:
        rows = [r for r, _ in log.rows if b.base_offset <= r.base_offset < b.end_offset]
        assert b.max_timestamp == max(r.max_timestamp for r in rows)
    got = [t for b in blocks for t in offsets_and_bytes(b.data, b.base_offset)]
    assert got == expected(log)


def test_a_row_larger_than_the_cap_stays_one_block() -> None:
    log = Log()
    log.flush([batch(1, records=50)])
    log.flush([batch(2)])
    blocks, _ = merge_partition(log.rows, [True, True], BlockLimits(10, WEEK_MS))
    assert [b.batch_count for b in blocks] == [1, 1]


def test_gaps_of_key_compaction_are_kept_by_the_gap_rule() -> None:
    # A row whose first batch starts after its base offset, and a gap between rows
    # (offsets removed by key compaction): the merged block keeps every offset.
    first = encode_block([(batch(1), 2)], 0)  # offsets 2..4 in a row based at 0
    row0 = StoredBlock(7, 3, 0, 5, 1, "segments/1.seg", 8, len(first) + 20, 3, 3, ())
    second = encode_block([(batch(9), 8)], 8)  # next row starts at 8 (5..7 compacted away)
    row1 = StoredBlock(7, 3, 8, 11, 2, "segments/2.seg", 8, len(second) + 20, 3, 11, ())
    blocks, _ = merge_partition([(row0, first), (row1, second)], [True, True])
    (block,) = blocks
    assert (block.base_offset, block.end_offset) == (0, 11)
    assert [(b.first_offset, b.last_offset) for b in walk_block(block.data, 0)] == [
        (2, 4),
        (8, 10),
    ]


def test_a_row_whose_bytes_do_not_match_its_offsets_is_refused() -> None:
    data = batch(1)
    bad = StoredBlock(7, 3, 0, 7, 1, "segments/1.seg", 8, len(data) + 20, 3, 3, ())
    with pytest.raises(ValueError, match="says offsets 0..7 but its batches end at 3"):
        merge_partition([(bad, data)], [True])


# --------------------------------------------------------------------------- segment.ms/bytes


def test_block_limits_come_from_the_topic_config_or_the_defaults() -> None:
    assert block_limits({}, MERGED_BLOCK_BYTES) == BlockLimits(MERGED_BLOCK_BYTES, WEEK_MS)
    config = {"segment.ms": "60000", "segment.bytes": "5000", "retention.ms": "1"}
    assert block_limits(config, MERGED_BLOCK_BYTES) == BlockLimits(5000, 60_000)
    # segment.bytes above the cap: the cap.
    assert block_limits({"segment.bytes": str(1 << 30)}, 4096).max_bytes == 4096


def test_block_limits_admit_by_bytes_and_record_time_span() -> None:
    limits = BlockLimits(max_bytes=100, max_span_ms=1000)
    assert limits.admits(100, 5000, 6000)  # both limits are inclusive
    assert not limits.admits(101, 5000, 5000)
    assert not limits.admits(50, 5000, 6001)
    # Blocks without timestamps (-1) are limited by bytes only.
    assert limits.admits(50, -1, 10**12)
    assert limits.admits(50, 0, -1)


def test_oldest_timestamp_takes_base_timestamps_or_log_append_time() -> None:
    data = batch(5000) + batch(4000)
    assert oldest_timestamp(walk_block(data, 0)) == 4000
    # Under LogAppendTime every record's time is the batch's max_timestamp.
    appended = walk_block(batch(3000), 0)[0]
    info = appended.info.__class__(
        **{
            **{f: getattr(appended.info, f) for f in appended.info.__struct_fields__},
            "attributes": TIMESTAMP_TYPE_MASK,
            "max_timestamp": 9000,
        }
    )
    assert oldest_timestamp([appended.__class__(info, appended.first_offset)]) == 9000
    # No timestamps (-1): none.
    none = walk_block(batch(3000), 0)[0]
    none_info = none.info.__class__(
        **{
            **{f: getattr(none.info, f) for f in none.info.__struct_fields__},
            "base_timestamp": -1,
        }
    )
    assert oldest_timestamp([none.__class__(none_info, 0)]) == -1


def test_a_merged_block_spans_at_most_segment_ms_of_record_time() -> None:
    # One flush a second of 3 records 1 ms apart; segment.ms 10 s: a block holds the rows
    # whose records lie within 10 s of its oldest record.
    log = Log()
    for i in range(30):
        log.flush([batch(1_000_000 + 1000 * i)])
    limits = BlockLimits(MERGED_BLOCK_BYTES, 10_000)
    blocks, _ = merge_partition(log.rows, [True] * 30, limits)
    spans = []
    for b in blocks:
        walked = walk_block(b.data, b.base_offset)
        oldest = min(x.info.base_timestamp for x in walked)
        spans.append(b.max_timestamp - oldest)
    assert all(span <= 10_000 for span in spans), spans
    # 10 rows fit (1,000,000 .. 1,009,002), the 11th would take it to 10,002 ms.
    assert [b.batch_count for b in blocks] == [10, 10, 10]
    # Each block's max timestamp is still that of its rows, and the new rows tile the old.
    assert [b.max_timestamp for b in blocks] == [1_009_002, 1_019_002, 1_029_002]
    assert [b.base_offset for b in blocks[1:]] == [b.end_offset for b in blocks[:-1]]
    got = [t for b in blocks for t in offsets_and_bytes(b.data, b.base_offset)]
    assert got == expected(log)
    # The default (7 days) merges them all.
    (one,) = merge_partition(log.rows, [True] * 30, block_limits({}, MERGED_BLOCK_BYTES))[0]
    assert one.batch_count == 30


def test_the_span_counts_an_older_record_of_a_later_row() -> None:
    # Out-of-order CreateTime timestamps: the third row holds a record older than the
    # first's; merging it would make the block span 11 s.
    log = Log()
    log.flush([batch(10_000)])
    log.flush([batch(15_000)])
    log.flush([batch(4_000), batch(14_000)])
    blocks, _ = merge_partition(log.rows, [True] * 3, BlockLimits(MERGED_BLOCK_BYTES, 10_000))
    assert [b.batch_count for b in blocks] == [2, 2]


def test_a_merged_block_holds_at_most_segment_bytes() -> None:
    log = Log()
    for i in range(6):
        log.flush([batch(1000 + 100 * i, records=5)])
    one_row = len(log.rows[0][1])
    limits = block_limits({"segment.bytes": str(2 * one_row)}, MERGED_BLOCK_BYTES)
    blocks, _ = merge_partition(log.rows, [True] * 6, limits)
    assert [b.batch_count for b in blocks] == [2, 2, 2]
    assert all(len(b.data) <= 2 * one_row for b in blocks)


def test_a_row_spanning_more_than_segment_ms_alone_stays_one_block() -> None:
    log = Log()
    log.flush([batch(0), batch(50_000)])
    log.flush([batch(50_001)])
    blocks, _ = merge_partition(log.rows, [True, True], BlockLimits(MERGED_BLOCK_BYTES, 10_000))
    assert [b.batch_count for b in blocks] == [2, 1]


def test_rows_without_timestamps_stay_blocks_of_their_own() -> None:
    """A row without timestamps (max_timestamp -1: retention dates it by its segment's commit
    time) never merges with another row, so it never takes another row's max_timestamp."""
    log = Log()
    for i in range(5):
        log.flush([batch(1000 + 10 * i)])
    rows = [
        (msgspec.structs.replace(row, max_timestamp=-1) if i in (1, 2) else row, data)
        for i, (row, data) in enumerate(log.rows)
    ]
    blocks, _ = merge_partition(rows, [True] * 5)
    assert [(b.base_offset, b.end_offset) for b in blocks] == [
        (row.base_offset, row.end_offset) for row, _ in rows[:3]
    ] + [(rows[3][0].base_offset, rows[4][0].end_offset)]
    assert [b.max_timestamp for b in blocks][1:3] == [-1, -1]
    got = [t for b in blocks for t in offsets_and_bytes(b.data, b.base_offset)]
    assert got == expected(log)
