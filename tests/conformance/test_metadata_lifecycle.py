"""Conformance suite for the data-lifecycle calls of the metadata store, on both backends.

``enforce_retention`` (time and size retention), dead segments (marked by retention,
DeleteRecords, delete_topic and ``mark_unreferenced_segments``), ``dead_segments``,
``forget_segments`` and ``known_segments``, each test once on SQLite and once on PostgreSQL
(a fresh database of the session's throwaway cluster, tests/conftest.py). At the end: a
commit racing retention on PostgreSQL from threads, and the AsyncMetadata wrappers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import apsw
import psycopg
import pytest

from metadata import (
    BatchRef,
    CommitBlock,
    DeadSegment,
    MetadataStore,
    RetentionMove,
    migrations,
    postgres_migrations,
)
from metadata import store as metadata_store
from metadata.async_store import AsyncMetadata
from metadata.postgres import PostgresMetadataStore
from tests.conformance.conftest import Opener, Store
from tests.conformance.old_schema import ADD_RAW_LENGTH, DROP_RAW_LENGTH, old_schema_sql

DAY_MS = 86_400_000


def _block(topic_id: int, partition: int, records: int, size: int, ts: int) -> CommitBlock:
    return CommitBlock(topic_id, partition, 0, size, ts, [BatchRef(records)])


def _log(
    store: Store, topic_id: int, blocks: list[tuple[int, int, int]], partition: int = 0
) -> list[str]:
    """Commit one segment per ``(records, byte_length, max_timestamp)`` to the partition, in
    order; return the segment keys."""
    keys = []
    for i, (records, size, ts) in enumerate(blocks):
        key = f"segments/t{topic_id}-p{partition}-{i:04d}"
        store.commit_segment(key, size, [_block(topic_id, partition, records, size, ts)])
        keys.append(key)
    return keys


def _starts(store: Store, topic_id: int, partition: int = 0) -> tuple[int, int, list[int]]:
    """(log start, high watermark, base offsets of the block rows left)."""
    state = store.get_partition(topic_id, partition)
    assert state is not None
    bases = [b.base_offset for b in store.find_blocks(topic_id, partition, 0, 1000)]
    return state.log_start_offset, state.high_watermark, bases


def _dead(store: Store) -> dict[str, int]:
    return {d.key: d.dead_since_ms for d in store.dead_segments(2**62, 100_000)}


# --------------------------------------------------------------------------- retention by time


def test_time_retention_drops_whole_old_blocks_oldest_first(store: Store) -> None:
    """retention.ms: blocks whose max timestamp is below now - retention.ms go (whole blocks);
    the log start moves to the end of the last one dropped; their segments die at now."""
    t = store.create_topic("timed", 1, {"retention.ms": "1500"})
    keys = _log(store, t.topic_id, [(3, 100, 1000), (2, 100, 2000), (4, 100, 2600), (1, 100, 9)])
    # cut-off 4000 - 1500 = 2500: blocks at 1000 and 2000 go; 2600 stays and stops it (the
    # fourth block's old timestamp does not matter: it comes after one that must stay).
    moves = store.enforce_retention(4000)
    assert moves == [RetentionMove(t.topic_id, 0, 0, 5, 2, 200)]
    assert _starts(store, t.topic_id) == (5, 10, [5, 9])
    assert _dead(store) == {keys[0]: 4000, keys[1]: 4000}
    assert store.enforce_retention(4000) == []  # idempotent


def test_time_retention_stops_at_the_first_block_that_must_stay(store: Store) -> None:
    t = store.create_topic("stops", 1, {"retention.ms": "1000"})
    _log(store, t.topic_id, [(1, 10, 100), (1, 10, 5000), (1, 10, 100), (1, 10, 100)])
    moves = store.enforce_retention(3000)  # cut-off 2000: only the first block may go
    assert [(m.new_log_start, m.blocks_removed) for m in moves] == [(1, 1)]
    assert _starts(store, t.topic_id) == (1, 4, [1, 2, 3])


def test_a_block_exactly_at_the_cutoff_stays_and_zero_retention_drops_all_older(
    store: Store,
) -> None:
    t = store.create_topic("edge", 1, {"retention.ms": "0"})
    _log(store, t.topic_id, [(2, 10, 999), (2, 10, 1000)])
    store.enforce_retention(1000)  # max_timestamp < 1000 goes; == 1000 stays
    assert _starts(store, t.topic_id) == (2, 4, [2])
    store.enforce_retention(1001)  # everything: the log start reaches the HWM, not past it
    assert _starts(store, t.topic_id) == (4, 4, [])


def test_a_block_without_timestamps_is_as_old_as_its_commit(store: Store) -> None:
    """max_timestamp -1 (records without timestamps): the segment's commit time counts, as
    Kafka falls back to the segment file's time; the block is not dropped at once."""
    t = store.create_topic("untimed", 1, {"retention.ms": "1000"})
    _log(store, t.topic_id, [(1, 10, -1), (1, 10, -1)])
    committed = int(time.time() * 1000)
    assert store.enforce_retention(committed + 500) == []
    assert [m.new_log_start for m in store.enforce_retention(committed + 2000)] == [2]


def test_default_retention_is_seven_days(store: Store) -> None:
    t = store.create_topic("default", 1)
    now = 100 * DAY_MS
    _log(store, t.topic_id, [(1, 10, now - 8 * DAY_MS), (1, 10, now - 6 * DAY_MS)])
    assert [m.new_log_start for m in store.enforce_retention(now)] == [1]
    assert _starts(store, t.topic_id) == (1, 2, [1])


# --------------------------------------------------------------------------- retention by size


@pytest.mark.parametrize(
    ("retention_bytes", "dropped"),
    [
        # blocks of 100, 200, 300, 400 bytes (1,000 in all); Kafka's rule: the oldest goes
        # while total - its size >= retention.bytes.
        (600, 2),  # 1000-100=900 >= 600, 900-200=700 >= 600, 700-300=400 < 600
        (700, 2),  # ... 700 >= 700 still goes
        (701, 1),
        (900, 1),
        (901, 0),
        (1000, 0),
        (0, 4),  # everything goes: 1000-...-400 = 0 >= 0
        (400, 3),
    ],
)
def test_size_retention_follows_kafkas_rule(
    store: Store, retention_bytes: int, dropped: int
) -> None:
    t = store.create_topic("sized", 1, {"retention.bytes": str(retention_bytes)})
    now = 10_000
    keys = _log(store, t.topic_id, [(1, 100, now), (1, 200, now), (1, 300, now), (1, 400, now)])
    moves = store.enforce_retention(now)
    sizes = [100, 200, 300, 400]
    if dropped:
        assert moves == [RetentionMove(t.topic_id, 0, 0, dropped, dropped, sum(sizes[:dropped]))]
    else:
        assert moves == []
    assert _starts(store, t.topic_id) == (dropped, 4, list(range(dropped, 4)))
    assert set(_dead(store)) == set(keys[:dropped])


def test_time_and_size_retention_combined_drop_the_longer_prefix(store: Store) -> None:
    t = store.create_topic("both", 2, {"retention.ms": "1000", "retention.bytes": "500"})
    # Partition 0: time drops 1 block (ts 100), size drops 2 (1000-100=900, 900-200=700 >= 500).
    _log(store, t.topic_id, [(1, 100, 100), (1, 200, 5000), (1, 300, 5000), (1, 400, 5000)], 0)
    # Partition 1: time drops 3 blocks, size only 1.
    _log(store, t.topic_id, [(1, 100, 100), (1, 200, 100), (1, 300, 100), (1, 400, 5000)], 1)
    moves = store.enforce_retention(3000)
    assert moves == [
        RetentionMove(t.topic_id, 0, 0, 2, 2, 300),
        RetentionMove(t.topic_id, 1, 0, 3, 3, 600),
    ]


def test_minus_one_keeps_forever(store: Store) -> None:
    t = store.create_topic("forever", 1, {"retention.ms": "-1", "retention.bytes": "-1"})
    _log(store, t.topic_id, [(1, 10**6, 0), (1, 10**6, 1)])
    assert store.enforce_retention(10**15) == []
    assert _starts(store, t.topic_id) == (0, 2, [0, 1])


@pytest.mark.parametrize(
    ("policy", "applies"), [("compact", False), ("compact,delete", True), ("delete", True)]
)
def test_cleanup_policy_without_delete_is_untouched(
    store: Store, policy: str, applies: bool
) -> None:
    t = store.create_topic(
        "policy", 1, {"cleanup.policy": policy, "retention.ms": "0", "retention.bytes": "0"}
    )
    _log(store, t.topic_id, [(1, 10, 0), (1, 10, 0)])
    moves = store.enforce_retention(10)
    assert bool(moves) is applies
    assert _starts(store, t.topic_id) == ((2, 2, []) if applies else (0, 2, [0, 1]))


def test_retention_follows_config_changes(store: Store) -> None:
    t = store.create_topic("changing", 1, {"retention.ms": "-1"})
    _log(store, t.topic_id, [(1, 10, 0), (1, 10, 5000)])
    assert store.enforce_retention(6000) == []
    store.update_topic_config("changing", {"retention.ms": "2000"})
    assert [m.new_log_start for m in store.enforce_retention(6000)] == [1]


# --------------------------------------------------------------------------- log start


def test_log_start_never_moves_backwards(store: Store) -> None:
    """DeleteRecords moved the log start into the third block; retention that would drop only
    the first block leaves the log start where it is (and removes that block's row)."""
    t = store.create_topic("forward", 1, {"retention.ms": "1000"})
    keys = _log(store, t.topic_id, [(3, 10, 0), (3, 10, 9000), (3, 10, 9000), (3, 10, 9000)])
    store.set_log_start_offset(t.topic_id, 0, 7)
    # DeleteRecords removed the rows entirely below 7 (blocks 0-3 and 3-6) at once.
    assert _starts(store, t.topic_id) == (7, 12, [6, 9])
    assert set(_dead(store)) == {keys[0], keys[1]}
    assert store.enforce_retention(5000) == []
    assert _starts(store, t.topic_id) == (7, 12, [6, 9])
    # Time retention dropping the block that holds the log start moves it to that block's end.
    store.update_topic_config("forward", {"retention.ms": "0"})
    moves = store.enforce_retention(9001)
    assert moves == [RetentionMove(t.topic_id, 0, 7, 12, 2, 20)]
    assert _starts(store, t.topic_id) == (12, 12, [])


def test_delete_records_then_size_retention_counts_only_what_is_above_the_log_start(
    store: Store,
) -> None:
    t = store.create_topic("sizes", 1, {"retention.bytes": "250"})
    _log(store, t.topic_id, [(1, 100, 0), (1, 100, 0), (1, 100, 0), (1, 100, 0)])
    store.set_log_start_offset(t.topic_id, 0, 1)
    # Above the log start: 300 bytes; 300-100 = 200 < 250: nothing more goes.
    assert store.enforce_retention(10) == []
    store.update_topic_config("sizes", {"retention.bytes": "200"})
    assert store.enforce_retention(10) == [RetentionMove(t.topic_id, 0, 1, 2, 1, 100)]


def test_empty_partitions_and_topics_are_left_alone(store: Store) -> None:
    t = store.create_topic("empty", 3, {"retention.ms": "0", "retention.bytes": "0"})
    assert store.enforce_retention(10**12) == []
    assert [p.log_start_offset for p in store.list_partitions(t.topic_id)] == [0, 0, 0]


def test_batches_of_partitions_give_the_same_result(open_store: Opener) -> None:
    """max_partitions bounds each transaction, not the work: with 1 partition per
    transaction every partition of every topic is still done, in (topic, partition) order."""
    store = open_store()
    topics = [store.create_topic(f"b{i}", 3, {"retention.ms": "100"}) for i in range(3)]
    for t in topics:
        for p in range(3):
            _log(store, t.topic_id, [(1, 10, 0), (1, 10, 0), (1, 10, 10**6)], p)
    moves = store.enforce_retention(1000, max_partitions=1)
    assert [(m.topic_id, m.partition, m.new_log_start) for m in moves] == [
        (t.topic_id, p, 2) for t in topics for p in range(3)
    ]
    assert store.enforce_retention(1000, max_partitions=2) == []


def test_transactions_change_a_bounded_number_of_partitions(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With at most 2 partitions changed per transaction (RETENTION_WORK_BATCH) and 100
    scanned, all 7 partitions with something to drop are still done, in order, the empty
    and the kept ones left alone."""
    monkeypatch.setattr(metadata_store, "RETENTION_WORK_BATCH", 2)
    t = store.create_topic("capped", 9, {"retention.ms": "100"})
    for p in range(7):
        _log(store, t.topic_id, [(1, 10, 0), (1, 10, 10**6)], p)
    _log(store, t.topic_id, [(1, 10, 10**6)], 8)
    moves = store.enforce_retention(1000, max_partitions=100)
    assert [(m.partition, m.new_log_start) for m in moves] == [(p, 1) for p in range(7)]
    assert [s.log_start_offset for s in store.list_partitions(t.topic_id)] == [1] * 7 + [0, 0]


def test_a_segment_shared_by_partitions_dies_with_its_last_block(store: Store) -> None:
    t = store.create_topic("shared", 2, {"retention.ms": "1000"})
    store.commit_segment(
        "segments/shared",
        30,
        [_block(t.topic_id, 0, 1, 10, 0), _block(t.topic_id, 1, 1, 20, 5000)],
    )
    store.commit_segment("segments/next", 10, [_block(t.topic_id, 0, 1, 10, 9000)])
    assert [m.partition for m in store.enforce_retention(3000)] == [0]
    assert _dead(store) == {}  # partition 1 still reads from it
    assert [m.partition for m in store.enforce_retention(7000)] == [1]
    assert _dead(store) == {"segments/shared": 7000}


# --------------------------------------------------------------------------- dead segments


def test_delete_topic_and_delete_records_mark_the_segments_they_empty(store: Store) -> None:
    gone = store.create_topic("gone", 1)
    kept = store.create_topic("kept", 1)
    now = int(time.time() * 1000)
    _log(store, gone.topic_id, [(1, 10, now), (1, 10, now)])
    store.commit_segment(
        "segments/mixed",
        20,
        [_block(gone.topic_id, 0, 1, 10, now), _block(kept.topic_id, 0, 1, 10, now)],
    )
    kept_keys = _log(store, kept.topic_id, [(5, 10, now), (5, 10, now)])
    before = int(time.time() * 1000)
    store.delete_topic("gone")
    after = int(time.time() * 1000)
    dead = _dead(store)
    assert set(dead) == {f"segments/t{gone.topic_id}-p0-0000", f"segments/t{gone.topic_id}-p0-0001"}
    assert all(before <= ms <= after for ms in dead.values())
    store.set_log_start_offset(kept.topic_id, 0, 6)  # the mixed block (0-1) and 1-6 go
    dead = _dead(store)
    assert {"segments/mixed", kept_keys[0]} <= set(dead)
    assert kept_keys[1] not in dead  # 6-11: still read from
    assert store.mark_unreferenced_segments(10**13) == 0  # nothing was left unmarked


def test_mark_unreferenced_segments_marks_segments_without_block_rows(store: Store) -> None:
    """A segment committed with only duplicate batches has no block row from the start: the
    next mark_unreferenced_segments gives it the given now, once."""
    t = store.create_topic("dups", 1)
    batch = BatchRef(2, producer_id=7, producer_epoch=0, base_sequence=0)
    store.commit_segment("segments/first", 10, [CommitBlock(t.topic_id, 0, 0, 10, 5, [batch])])
    result = store.commit_segment(
        "segments/retry", 10, [CommitBlock(t.topic_id, 0, 0, 10, 5, [batch])]
    )
    assert result[0][0].duplicate
    assert _dead(store) == {}
    assert store.mark_unreferenced_segments(1234) == 1
    assert store.mark_unreferenced_segments(5678) == 0
    assert store.dead_segments(10**13) == [DeadSegment("segments/retry", 10, 1234)]


def test_dead_segments_are_listed_oldest_first_up_to_the_cutoff(store: Store) -> None:
    t = store.create_topic("order", 1, {"retention.ms": "0"})
    keys = _log(store, t.topic_id, [(1, 11, 0), (1, 22, 1), (1, 33, 2), (1, 44, 3), (1, 5, 10**12)])
    store.enforce_retention(2)  # block at ts 0 and 1 die at 2 (same time: commit order)
    store.enforce_retention(3)  # the block at ts 2 dies at 3
    store.enforce_retention(4)  # the block at ts 3 dies at 4
    assert store.dead_segments(1) == []
    assert store.dead_segments(2) == [DeadSegment(keys[0], 11, 2), DeadSegment(keys[1], 22, 2)]
    assert store.dead_segments(3) == [
        DeadSegment(keys[0], 11, 2),
        DeadSegment(keys[1], 22, 2),
        DeadSegment(keys[2], 33, 3),
    ]
    assert [d.key for d in store.dead_segments(10**12)] == keys[:4]
    assert [d.key for d in store.dead_segments(10**12, limit=3)] == keys[:3]


def test_forget_segments_forgets_only_dead_ones(store: Store) -> None:
    t = store.create_topic("forget", 1, {"retention.ms": "0"})
    keys = _log(store, t.topic_id, [(1, 10, 0), (1, 10, 0), (1, 10, 10**12)])
    store.enforce_retention(1)
    assert store.known_segments(keys + ["segments/never"]) == set(keys)
    # A live segment and an unknown key are ignored; a dead one goes.
    assert store.forget_segments([keys[0], keys[2], "segments/never"]) == 1
    assert store.known_segments(keys) == {keys[1], keys[2]}
    assert store.forget_segments([keys[0]]) == 0  # already forgotten
    assert store.forget_segments([keys[1], keys[1]]) == 1
    assert store.known_segments(keys) == {keys[2]}
    assert store.dead_segments(10**13) == []
    assert store.find_blocks(t.topic_id, 0, 0)[0].segment_key == keys[2]
    assert store.forget_segments([]) == 0
    assert store.known_segments([]) == set()


def test_bad_arguments_are_refused(store: Store) -> None:
    for bad in (-1, "5", 1.5, True, 2**63):
        with pytest.raises(ValueError, match="now_ms"):
            store.enforce_retention(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="now_ms"):
            store.mark_unreferenced_segments(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="dead_before_ms"):
            store.dead_segments(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_partitions"):
        store.enforce_retention(1, max_partitions=0)
    with pytest.raises(ValueError, match="limit"):
        store.dead_segments(1, limit=0)
    for keys in ("segments/a", b"x", None, ["ok", ""], ["ok", 3]):
        with pytest.raises(ValueError, match="segment keys"):
            store.forget_segments(keys)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="segment keys"):
            store.known_segments(keys)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_commits_racing_retention_never_deadlock_or_lose_a_block_that_stays(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Writer threads commit segments spanning all partitions (timestamps old and new) while
    retention threads run over and over with a cut-off between them. No call fails (no
    deadlock, no lock timeout), and afterwards every block with a new timestamp is still
    indexed, every old one before it is gone, the log start sits right after the last old
    block, and every segment whose blocks all went is dead."""
    if backend == "sqlite":
        target: str = str(tmp_path / "race.db")

        def opener() -> Store:
            return MetadataStore(target, busy_timeout_ms=30_000)
    else:
        dsn: str = request.getfixturevalue("postgres_dsn")

        def opener() -> Store:
            return PostgresMetadataStore(dsn, busy_timeout_ms=30_000)

    admin = opener()
    partitions = 6
    t = admin.create_topic("race", partitions, {"retention.ms": "1000"})
    now, old, new = 10_000, 1, 9_500  # cut-off 9,000: old blocks go, new ones stay
    writers, rounds = 3, 25
    errors: list[BaseException] = []
    stop = threading.Event()
    stores: list[Store] = []

    def write(w: int) -> None:
        s = opener()
        stores.append(s)
        try:
            for r in range(rounds):
                # Old-then-new within each segment's partitions order varies by writer, so
                # the commits' partition sets overlap in different orders.
                order = list(range(partitions))[w % partitions :] + list(range(w % partitions))
                ts = old if r < rounds // 2 else new
                blocks = [_block(t.topic_id, p, 1, 10, ts) for p in order]
                s.commit_segment(f"segments/w{w}-r{r}", 10 * partitions, blocks)
        except BaseException as exc:
            errors.append(exc)

    def retain() -> None:
        s = opener()
        stores.append(s)
        try:
            while not stop.is_set():
                s.enforce_retention(now, max_partitions=2)
                s.mark_unreferenced_segments(now)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    retainers = [threading.Thread(target=retain) for _ in range(2)]
    for th in threads + retainers:
        th.start()
    for th in threads:
        th.join(timeout=120)
    stop.set()
    for th in retainers:
        th.join(timeout=120)
    try:
        assert not any(th.is_alive() for th in threads + retainers)
        assert errors == []
        admin.enforce_retention(now)
        for p in range(partitions):
            state = admin.get_partition(t.topic_id, p)
            assert state is not None
            assert state.high_watermark == writers * rounds
            blocks = admin.find_blocks(t.topic_id, p, 0, 1000)
            # Old blocks were committed before new ones (per writer) but writers interleave:
            # the log start is the end of the last old block before the first new one.
            assert all(b.max_timestamp == new for b in blocks[:1])
            assert blocks[0].base_offset == state.log_start_offset
            assert blocks[-1].end_offset == state.high_watermark
            # No gap: every offset from the log start on is indexed.
            assert [b.base_offset for b in blocks[1:]] == [b.end_offset for b in blocks[:-1]]
            # Every new block committed stays: count them.
            assert sum(1 for b in blocks if b.max_timestamp == new) == writers * (
                rounds - rounds // 2
            )
        dead = {d.key for d in admin.dead_segments(now)}
        live = {
            b.segment_key
            for p in range(partitions)
            for b in admin.find_blocks(t.topic_id, p, 0, 1000)
        }
        every = {f"segments/w{w}-r{r}" for w in range(writers) for r in range(rounds)}
        assert admin.known_segments(sorted(every)) == every
        assert dead | live == every and not dead & live
    finally:
        for s in stores:
            s.close()
        admin.close()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_concurrent_removals_of_a_segments_last_blocks_always_mark_it_dead(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Every segment holds one block of each of 3 partitions; three threads move the three
    log starts forward (DeleteRecords) in small steps at the same time, so the last block row
    of a segment often goes in two transactions at once. Without mark_unreferenced_segments,
    every segment ends dead (the removal that commits second sees the first one), once."""
    if backend == "sqlite":
        target: str = str(tmp_path / "marks.db")

        def opener() -> Store:
            return MetadataStore(target, busy_timeout_ms=30_000)
    else:
        target = request.getfixturevalue("postgres_dsn")

        def opener() -> Store:
            return PostgresMetadataStore(target, busy_timeout_ms=30_000)

    admin = opener()
    parts, segments = 3, 120
    t = admin.create_topic("marks", parts)
    admin.commit_segments(
        [
            (f"segments/m{i:03d}", 30, [_block(t.topic_id, p, 1, 10, 0) for p in range(parts)])
            for i in range(segments)
        ]
    )
    errors: list[BaseException] = []
    stores: list[Store] = []

    def delete_records(partition: int) -> None:
        s = opener()
        stores.append(s)
        try:
            for offset in range(1, segments + 1):
                s.set_log_start_offset(t.topic_id, partition, offset)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=delete_records, args=(p,)) for p in range(parts)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    try:
        assert not any(th.is_alive() for th in threads)
        assert errors == []
        dead = admin.dead_segments(2**62, 10_000)
        assert sorted(d.key for d in dead) == [f"segments/m{i:03d}" for i in range(segments)]
        assert admin.mark_unreferenced_segments(2**62) == 0
    finally:
        for s in stores:
            s.close()
        admin.close()


# --------------------------------------------------------------------------- AsyncMetadata


def test_async_metadata_wraps_the_lifecycle_calls(open_store: Opener) -> None:
    """The lifecycle calls through AsyncMetadata, with the loop guard on (any call that
    reached the store on the loop thread would raise)."""
    store = open_store(forbid_loop_calls=True)

    async def main() -> None:
        meta = AsyncMetadata(store)
        t = await meta.create_topic("async", 1, {"retention.ms": "0"})
        await meta.commit_segment("segments/a", 10, [_block(t.topic_id, 0, 1, 10, 0)])
        await meta.commit_segment("segments/b", 10, [_block(t.topic_id, 0, 1, 10, 10**12)])
        moves = await meta.enforce_retention(5)
        assert moves == [RetentionMove(t.topic_id, 0, 0, 1, 1, 10)]
        assert await meta.mark_unreferenced_segments(6) == 0
        assert await meta.dead_segments(5) == [DeadSegment("segments/a", 10, 5)]
        assert await meta.known_segments(("segments/a", "segments/z")) == {"segments/a"}
        assert await meta.forget_segments(("segments/a", "segments/b")) == 1
        assert await meta.known_segments(["segments/a", "segments/b"]) == {"segments/b"}
        await meta.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- schema upgrade


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_from_the_schema_before_dead_segments_reclaims_what_it_left(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database of the schema before dead segments (no dead_since_ms) with a segment that
    has no block row and block rows below a log start moved by the old DeleteRecords (which
    left them) is upgraded on open: every segment starts live, and the first retention and
    mark_unreferenced_segments reclaim both."""
    if backend == "sqlite":
        path = tmp_path / "old.db"
        monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
        old: Store = MetadataStore(path)

        def raw(sql: str) -> None:
            db = apsw.Connection(str(path))
            db.execute(sql)
            db.close()

        def reopen() -> Store:
            return MetadataStore(path)
    else:
        dsn: str = request.getfixturevalue("postgres_dsn")
        monkeypatch.setattr(postgres_migrations, "MIGRATIONS", postgres_migrations.MIGRATIONS[:3])
        old = PostgresMetadataStore(dsn)

        def raw(sql: str) -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql)  # type: ignore[arg-type]

        def reopen() -> Store:
            return PostgresMetadataStore(dsn)

    old_schema_sql(path if backend == "sqlite" else dsn, ADD_RAW_LENGTH)
    with old:
        t = old.create_topic("old", 1, {"retention.ms": "-1"})
        keys = _log(old, t.topic_id, [(2, 10, 0), (2, 10, 0), (2, 10, 0)])
        old.commit_segment("segments/empty", 5, [])
    raw(f"UPDATE partitions SET log_start_offset = 4 WHERE topic_id = {t.topic_id}")
    raw(DROP_RAW_LENGTH)
    monkeypatch.undo()
    with reopen() as store:
        assert store.dead_segments(2**62) == []
        assert store.known_segments([*keys, "segments/empty"]) == {*keys, "segments/empty"}
        assert store.enforce_retention(100) == [RetentionMove(t.topic_id, 0, 4, 4, 2, 20)]
        assert store.mark_unreferenced_segments(200) == 1
        assert _dead(store) == {keys[0]: 100, keys[1]: 100, "segments/empty": 200}
        assert _starts(store, t.topic_id) == (4, 6, [4])
