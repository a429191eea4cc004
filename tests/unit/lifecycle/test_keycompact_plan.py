"""Key compaction without I/O: the cleanable range, the key map and the record filter."""

from __future__ import annotations

import struct

import crc32c
import pytest
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from lifecycle.keyplan import (
    BlockRow,
    CompactionConfig,
    FilterStats,
    OffsetMap,
    compaction_config,
    filter_block,
    is_compacted,
    plan_partition,
    put_block,
)
from streamhouse.recordbatch import (
    DELETE_HORIZON_MASK,
    decode_records,
    encode_batch,
    encode_block,
    scan_batches,
    walk_block,
)
from streamhouse.topic_config import TopicConfigError, validate_topic_config

NOW = 1_700_000_000_000
DAY = 86_400_000


def batch(records: list[tuple[bytes | None, bytes | None]], ts: int = NOW, **kw: int) -> bytes:
    n = len(records)
    return encode_batch(
        [k for k, _ in records],
        [v for _, v in records],
        [[("h", b"%d" % i)] for i in range(n)],
        [ts + i for i in range(n)],
        **kw,
    )


def block_of(batches: list[bytes]) -> bytes:
    """Produced batches back to back (stored baseOffset 0: consecutive offsets)."""
    return b"".join(batches)


def read_block(data: bytes, base: int) -> list[tuple[int, int, bytes | None, bytes | None, list]]:
    out = []
    for b in walk_block(data, base, verify_crc=True):
        raw = data[b.info.position : b.info.position + b.info.length]
        for delta, ts, key, value, headers in decode_records(raw):
            out.append((b.first_offset + delta, ts, key, value, headers))
    return out


def compact(data: bytes, base: int, *, now: int = NOW, retention: int = DAY, memory: int = 1 << 20):
    omap = OffsetMap(memory)
    assert put_block(omap, data, base, (), base, 1 << 62)
    stats = FilterStats()
    return filter_block(omap, data, base, (), now, retention, stats), stats, omap


def test_latest_record_per_key_survives_with_its_offset_timestamp_and_headers():
    b1 = batch(
        [(b"a", b"1"), (b"b", b"1"), (b"a", b"2")],
        producer_id=7,
        producer_epoch=1,
        base_sequence=10,
    )
    b2 = batch([(b"c", b"1"), (b"b", b"2")], ts=NOW + 100)
    b3 = batch([(b"a", b"3")], ts=NOW + 200)
    data = block_of([b1, b2, b3])
    before = read_block(data, 50)
    result, stats, omap = compact(data, 50)
    assert result is not None
    new, walked = result
    after = read_block(new, 50)
    latest = {}
    for rec in before:
        latest[rec[2]] = rec
    assert after == sorted(latest.values())
    assert [r[0] for r in after] == [53, 54, 55]
    # batch 1 lost every record: dropped; batch 2 kept its lastOffsetDelta with a gap
    assert [w.first_offset for w in walked] == [53, 55]
    assert walked[0].info.last_offset_delta == 1 and walked[0].info.record_count == 2
    assert stats.records_removed == 3 and stats.batches_removed == 1
    assert omap.get(b"a") == 55 and omap.get(b"zz") == -1 and omap.latest_offset == 55


def test_rewritten_batch_keeps_producer_fields_and_crc():
    b1 = batch(
        [(b"a", b"1"), (b"b", b"1"), (b"a", b"2")],
        producer_id=7,
        producer_epoch=3,
        base_sequence=10,
    )
    (new, walked), _, _ = compact(block_of([b1]), 0)
    (w,) = walked
    assert (w.info.producer_id, w.info.producer_epoch, w.info.base_sequence) == (7, 3, 10)
    assert (w.info.last_offset_delta, w.info.record_count) == (2, 2)
    assert w.info.max_timestamp == NOW + 2
    parsed = DefaultRecordBatch(bytearray(new))
    assert parsed.validate_crc()
    assert [(r.offset, r.key) for r in parsed] == [(1, b"b"), (2, b"a")]


def test_nothing_superseded_leaves_the_block_alone():
    data = block_of([batch([(b"a", b"1"), (b"b", b"1")]), batch([(b"c", b"1")])])
    result, stats, _ = compact(data, 0)
    assert result is None and stats.records_removed == 0


def test_keyless_records_are_removed():
    # (up to the map's last offset; Kafka keeps what lies past it)
    data = block_of([batch([(None, b"x"), (b"a", b"1"), (None, b"y"), (b"b", b"1")])])
    (new, _), stats, _ = compact(data, 0)
    assert [(r[0], r[2]) for r in read_block(new, 0)] == [(1, b"a"), (3, b"b")]
    assert stats.records_removed == 2


def test_tombstones_get_a_delete_horizon_then_go_after_delete_retention():
    data = block_of([batch([(b"a", b"1"), (b"b", b"1")]), batch([(b"a", None)], ts=NOW + 50)])
    (first, walked), stats, _ = compact(data, 0, now=NOW + 1000, retention=DAY)
    assert stats.tombstones_removed == 0
    # the tombstone's batch now carries its horizon (KIP-534) and every timestamp is unchanged
    tomb = walked[-1].info
    assert tomb.attributes & DELETE_HORIZON_MASK
    assert tomb.base_timestamp == NOW + 1000 + DAY
    assert [(r[0], r[1], r[2], r[3]) for r in read_block(first, 0)] == [
        (1, NOW + 1, b"b", b"1"),
        (2, NOW + 50, b"a", None),
    ]
    # before the horizon: kept (and not rewritten again)
    result, stats, _ = compact(first, 0, now=NOW + 1000 + DAY - 1)
    assert result is None and stats.tombstones_removed == 0
    # at the horizon: gone, and its key with it
    (gone, walked), stats, _ = compact(first, 0, now=NOW + 1000 + DAY)
    assert stats.tombstones_removed == 1
    assert [(r[0], r[2]) for r in read_block(gone, 0)] == [(1, b"b")]
    assert [w.first_offset for w in walked] == [0]


@pytest.mark.parametrize("codec", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_are_recompressed_with_their_codec(codec):
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    for i in range(200):
        builder.append(i, timestamp=NOW + i, key=b"k%d" % (i % 10), value=b"v%d" % i, headers=[])
    raw = bytes(builder.build())
    (new, walked), stats, _ = compact(raw, 1000)
    (w,) = walked
    assert w.info.attributes & 7 == codec
    assert w.info.record_count == 10 and w.info.last_offset_delta == 199
    assert stats.records_removed == 190
    parsed = DefaultRecordBatch(bytearray(new))
    assert parsed.validate_crc()
    assert [(r.offset, r.value) for r in parsed] == [
        (190 + i, b"v%d" % (190 + i)) for i in range(10)
    ]
    got = read_block(new, 1000)
    assert [(r[0], r[1]) for r in got] == [(1190 + i, NOW + 190 + i) for i in range(10)]


def test_a_full_key_map_stops_where_it_filled_and_later_records_stay():
    records = [(b"key-%d" % i, b"v") for i in range(100)] + [(b"key-0", b"w")]
    data = block_of([batch(records[:60]), batch(records[60:])])
    omap = OffsetMap(16 * 24)  # the smallest map: 12 keys
    assert omap.capacity == 12
    assert not put_block(omap, data, 0, (), 0, 1 << 62)
    assert omap.size == 12 and omap.latest_offset == 11
    stats = FilterStats()
    assert filter_block(omap, data, 0, (), NOW, DAY, stats) is None  # nothing superseded yet
    # a map that holds everything removes the old key-0
    (new, _), stats, _ = compact(data, 0)
    assert stats.records_removed == 1 and read_block(new, 0)[0][0] == 1


def test_put_block_only_puts_the_asked_range():
    data = block_of([batch([(b"a", b"1")]), batch([(b"a", b"2")]), batch([(b"a", b"3")])])
    omap = OffsetMap(1 << 16)
    assert put_block(omap, data, 10, (), 11, 12)
    assert omap.get(b"a") == 11 and omap.latest_offset == 11


def test_skipped_batches_are_dropped_from_a_rewritten_block():
    data = block_of([batch([(b"a", b"1")]), batch([(b"a", b"1")]), batch([(b"b", b"2")])])
    omap = OffsetMap(1 << 16)
    put_block(omap, data, 0, (1,), 0, 1 << 62)
    (new, walked) = filter_block(omap, data, 0, (1,), NOW, DAY, FilterStats())
    assert [(w.first_offset, w.info.record_count) for w in walked] == [(0, 1), (1, 1)]
    assert len(scan_batches(new)) == 2


def test_block_bytes_keep_untouched_batches_byte_for_byte():
    b1, b2 = batch([(b"a", b"1")]), batch([(b"b", b"1"), (b"b", b"2")])
    (new, walked), _, _ = compact(block_of([b1, b2]), 0)
    assert new[: len(b1)] == b1
    assert encode_block([(b1, 0)], 0) == b1


# ------------------------------------------------------------------------------------------
# plan


CONFIG = CompactionConfig(
    delete_retention_ms=DAY, min_lag_ms=0, max_lag_ms=2**63 - 1, min_dirty_ratio=0.5
)


def rows(*spec: tuple[int, int, int, int]) -> list[BlockRow]:
    return [BlockRow(*s) for s in spec]


def test_plan_never_cleans_the_newest_offset_and_respects_min_lag():
    blocks = rows((0, 10, 100, NOW - 500), (10, 20, 100, NOW - 400), (20, 30, 100, NOW - 300))
    plan = plan_partition(blocks, 0, NOW, CONFIG)
    assert plan.due and plan.cleanable_end == 29 and plan.dirty_bytes == 300
    lagged = CompactionConfig(DAY, 450, 2**63 - 1, 0.5)
    assert plan_partition(blocks, 0, NOW, lagged).cleanable_end == 10
    # one block (small-object compaction merged the partition): all but its last offset
    single = plan_partition(rows((0, 10, 100, NOW)), 0, NOW, CONFIG)
    assert single.due and single.cleanable_end == 9
    assert not plan_partition(rows((0, 10, 100, NOW)), 9, NOW, CONFIG).due
    assert not plan_partition(rows((0, 10, 100, NOW + 1)), 0, NOW, CONFIG).due


def test_plan_dirty_ratio_and_max_lag():
    blocks = rows((0, 10, 300, NOW - 500), (10, 20, 100, NOW - 400), (20, 30, 100, NOW))
    # clean up to 10: 100 dirty of 400 cleanable bytes
    plan = plan_partition(blocks, 10, NOW, CONFIG)
    assert not plan.due and "below" in plan.reason
    assert plan_partition(blocks, 10, NOW, CompactionConfig(DAY, 0, 2**63 - 1, 0.25)).due
    due = plan_partition(blocks, 10, NOW, CompactionConfig(DAY, 0, 399, 0.9))
    assert due.due and "max.compaction.lag.ms" in due.reason
    assert not plan_partition(blocks, 20, NOW, CONFIG).due


def test_topic_configs_of_compaction():
    assert is_compacted({"cleanup.policy": "compact,delete"}) and not is_compacted({})
    assert compaction_config({}) == CompactionConfig(DAY, 0, 2**63 - 1, 0.5)
    assert compaction_config({"min.cleanable.dirty.ratio": "0.01"}).min_dirty_ratio == 0.01
    validate_topic_config({"delete.retention.ms": "0", "min.cleanable.dirty.ratio": "1"})
    for bad in (
        {"min.cleanable.dirty.ratio": "1.1"},
        {"max.compaction.lag.ms": "0"},
        {"min.compaction.lag.ms": "-1"},
        {"delete.retention.ms": "x"},
    ):
        with pytest.raises(TopicConfigError, match="invalid"):
            validate_topic_config(bad)


def test_offset_map_hashes_keys_apart_and_refuses_bad_records():
    omap = OffsetMap(1 << 20)
    keys = [b"%d" % i for i in range(5000)]
    data = batch([(k, b"v") for k in keys])
    records = data[61:]
    assert omap.put_records(records, 5000, 0) == 5000
    assert all(omap.get(k) == i for i, k in enumerate(keys))
    with pytest.raises(ValueError, match="record"):
        omap.put_records(records[:-3], 5000, 0)
    omap.clear()
    assert omap.size == 0 and omap.latest_offset == -1
    # a forged compacted batch passes through unchanged when nothing is superseded
    body = struct.pack(">hiqqqhii", 0, 5, NOW, NOW, -1, -1, -1, 0)
    assert crc32c.crc32c(body)  # (header only: 0 records is never written)


def test_malformed_stored_records_are_refused_not_compacted():
    from streamhouse.recordbatch import InvalidBatchError

    good = batch([(b"a", b"1"), (b"a", b"2")])
    body = bytearray(good[21:])
    body[40] = 0x7F  # the first record's length now runs past the batch
    bad = good[:17] + struct.pack(">I", crc32c.crc32c(bytes(body))) + bytes(body)
    with pytest.raises(InvalidBatchError, match="malformed records"):
        put_block(OffsetMap(1 << 16), bad, 0, (), 0, 1 << 62)
    omap = OffsetMap(1 << 16)
    put_block(omap, good, 0, (), 0, 1 << 62)
    with pytest.raises(InvalidBatchError, match="offsets 0..1 has malformed records"):
        filter_block(omap, bad, 0, (), NOW, DAY, FilterStats())


def test_a_tombstone_past_the_maps_range_is_kept_even_after_its_horizon():
    """A pass whose key map ends inside a batch must not drop a tombstone beyond the map's
    latest offset: the map does not know the key's older records the tombstone hides."""
    data = block_of([batch([(b"x", b"1"), (b"a", b"1")]), batch([(b"b", b"1"), (b"a", None)])])
    (first, _), _, _ = compact(data, 0, now=NOW)  # a@1 removed; the tombstone gets a horizon
    assert [(r[0], r[2], r[3]) for r in read_block(first, 0)] == [
        (0, b"x", b"1"),
        (2, b"b", b"1"),
        (3, b"a", None),
    ]
    omap = OffsetMap(1 << 20)
    assert put_block(omap, first, 0, (), 0, 3)  # the map covers offsets 0..2 only
    assert omap.latest_offset == 2
    stats = FilterStats()
    assert filter_block(omap, first, 0, (), NOW + 2 * DAY, DAY, stats) is None
    assert stats.tombstones_removed == 0


def test_delete_retention_forever_caps_the_horizon():
    """delete.retention.ms = Long.MAX (keep tombstones forever) is a horizon at int64 max."""
    data = block_of([batch([(b"a", b"1")]), batch([(b"a", None)])])
    (first, walked), stats, _ = compact(data, 0, retention=(1 << 63) - 1)
    assert walked[-1].info.base_timestamp == (1 << 63) - 1
    assert [(r[0], r[3]) for r in read_block(first, 0)] == [(1, None)]
