"""Conformance suite for the rewrite calls of the metadata store, on both backends.

``live_segments``, ``blocks_of_segments``, ``partition_blocks`` and ``replace_blocks`` (the
switch of a rewritten object's rows: small-object compaction, partly-live rewrites, key
compaction), each test once on SQLite and once on PostgreSQL. ``replace_blocks`` must never
lose or duplicate an offset: it is tested against commits, retention, DeleteRecords,
delete_topic and another rewrite of the same rows, sequentially and from threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from metadata import (
    BatchRef,
    BlockRewrite,
    CleanState,
    CommitBlock,
    DuplicateSegmentError,
    MetadataStore,
    NewBlock,
    SegmentUsage,
    StoredBlock,
    migrations,
    postgres_migrations,
)
from metadata.async_store import AsyncMetadata
from metadata.postgres import PostgresMetadataStore
from tests.conformance.old_schema import ADD_RAW_LENGTH, DROP_RAW_LENGTH, old_schema_sql

Store = MetadataStore | PostgresMetadataStore
Opener = Callable[..., Store]


def _commit(
    store: Store, key: str, topic_id: int, parts: Sequence[int], records: int = 2, size: int = 10
) -> None:
    """One segment ``key`` holding one block of ``records`` records (``size`` bytes, max
    timestamp 1000 + partition) for each partition of ``parts``, laid out back to back."""
    blocks = [
        CommitBlock(topic_id, p, i * size, size, 1000 + p, [BatchRef(records)])
        for i, p in enumerate(parts)
    ]
    store.commit_segment(key, size * len(parts), blocks)


def _merged(
    key: str, rows: Sequence[StoredBlock], *, records: dict[int, int] | None = None
) -> BlockRewrite:
    """A rewrite of ``rows`` into one object ``key``: one new block per partition spanning
    its rows (holding ``records[partition]`` records, default all of them), 7 bytes each."""
    by_tp: dict[tuple[int, int], list[StoredBlock]] = {}
    for r in rows:
        by_tp.setdefault((r.topic_id, r.partition), []).append(r)
    news = []
    for i, ((t, p), rs) in enumerate(sorted(by_tp.items())):
        count = sum(r.record_count for r in rs)
        news.append(
            NewBlock(
                t,
                p,
                min(r.base_offset for r in rs),
                max(r.end_offset for r in rs),
                i * 7,
                7,
                (records or {}).get(p, count),
                max(r.max_timestamp for r in rs),
            )
        )
    return BlockRewrite(key, 7 * len(news), 5, tuple(rows), tuple(news))


def _index(store: Store, topic_id: int, partition: int) -> list[tuple[int, int, str, int]]:
    """(base, end, segment key, record count) of every block row of the partition."""
    return [
        (b.base_offset, b.end_offset, b.segment_key, b.record_count)
        for b in store.find_blocks(topic_id, partition, 0, 10_000)
    ]


def _dead(store: Store) -> dict[str, int]:
    return {d.key: d.dead_since_ms for d in store.dead_segments(2**62, 100_000)}


def _live(store: Store) -> dict[str, SegmentUsage]:
    return {u.key: u for u in store.live_segments(0, 100_000)}


# --------------------------------------------------------------------------- reading


def test_live_segments_report_usage_by_segment_id_and_page(store: Store) -> None:
    t = store.create_topic("usage", 3)
    _commit(store, "segments/a", t.topic_id, [0, 1, 2])
    _commit(store, "segments/b", t.topic_id, [1])
    store.commit_segment("segments/empty", 4, [])
    store.set_log_start_offset(t.topic_id, 0, 2)  # a's block of partition 0 goes
    usage = store.live_segments()
    assert [(u.key, u.size, u.live_bytes, u.block_count) for u in usage] == [
        ("segments/a", 30, 20, 2),
        ("segments/b", 10, 10, 1),
        ("segments/empty", 4, 0, 0),
    ]
    assert [u.segment_id for u in usage] == sorted(u.segment_id for u in usage)
    assert all(u.created_ms > 0 for u in usage)
    # Paging: after the first id, one at a time.
    page = store.live_segments(usage[0].segment_id, 1)
    assert [u.key for u in page] == ["segments/b"]
    assert store.live_segments(usage[-1].segment_id) == []
    # Dead segments are not live.
    store.mark_unreferenced_segments(50)
    assert [u.key for u in store.live_segments()] == ["segments/a", "segments/b"]


def test_blocks_of_segments_and_partition_blocks(store: Store) -> None:
    t = store.create_topic("rows", 2)
    _commit(store, "segments/a", t.topic_id, [1, 0], records=3)
    _commit(store, "segments/b", t.topic_id, [0, 1], records=2)
    ids = {u.key: u.segment_id for u in store.live_segments()}
    rows = store.blocks_of_segments([ids["segments/b"], ids["segments/a"], 10**9])
    assert [(r.partition, r.base_offset, r.end_offset, r.segment_key) for r in rows] == [
        (0, 0, 3, "segments/a"),
        (0, 3, 5, "segments/b"),
        (1, 0, 3, "segments/a"),
        (1, 3, 5, "segments/b"),
    ]
    first = rows[0]
    assert first == StoredBlock(
        t.topic_id, 0, 0, 3, ids["segments/a"], "segments/a", 10, 10, 3, 1000, ()
    )
    assert store.blocks_of_segments([]) == []
    part = store.partition_blocks(t.topic_id, 1)
    assert [(r.base_offset, r.segment_key) for r in part] == [(0, "segments/a"), (3, "segments/b")]
    assert [r.base_offset for r in store.partition_blocks(t.topic_id, 1, 3)] == [3]
    assert [r.base_offset for r in store.partition_blocks(t.topic_id, 1, 2, limit=1)] == [0]
    assert store.partition_blocks(t.topic_id, 1, 5) == []
    assert store.partition_blocks(t.topic_id, 7) == []


def test_reading_calls_refuse_bad_arguments(store: Store) -> None:
    for bad in (-1, True, "1"):
        with pytest.raises(ValueError, match="after_segment_id"):
            store.live_segments(bad)  # type: ignore[arg-type]
    for limit in (0, 100_001):
        with pytest.raises(ValueError, match="limit"):
            store.live_segments(0, limit)
        with pytest.raises(ValueError, match="limit"):
            store.partition_blocks(1, 0, 0, limit)
    with pytest.raises(ValueError, match="from_offset"):
        store.partition_blocks(1, 0, -1)
    with pytest.raises(ValueError, match="segment id"):
        store.blocks_of_segments([0])
    with pytest.raises(ValueError, match="sequence"):
        store.blocks_of_segments(5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- replace_blocks


def test_replace_merges_small_objects_and_readers_find_the_new_rows(store: Store) -> None:
    """Two objects' rows of two partitions become one object: find_blocks, partition_blocks,
    find_block_by_timestamp and find_max_timestamp_block answer with the new rows; the old
    objects are dead since now_ms; high watermarks and log starts do not move."""
    t = store.create_topic("merge", 2)
    _commit(store, "segments/a", t.topic_id, [0, 1], records=2)
    _commit(store, "segments/b", t.topic_id, [0, 1], records=3)
    _commit(store, "segments/c", t.topic_id, [0], records=1)  # stays where it is
    ids = {u.key: u.segment_id for u in store.live_segments()}
    rows = store.blocks_of_segments([ids["segments/a"], ids["segments/b"]])
    rewrite = _merged("segments/m", rows)
    assert store.replace_blocks(rewrite, 777) is True
    assert _index(store, t.topic_id, 0) == [(0, 5, "segments/m", 5), (5, 6, "segments/c", 1)]
    assert _index(store, t.topic_id, 1) == [(0, 5, "segments/m", 5)]
    assert _dead(store) == {"segments/a": 777, "segments/b": 777}
    live = _live(store)
    assert set(live) == {"segments/c", "segments/m"}
    assert (live["segments/m"].size, live["segments/m"].created_ms) == (14, 5)
    assert (live["segments/m"].live_bytes, live["segments/m"].block_count) == (14, 2)
    m = store.find_blocks(t.topic_id, 1, 3, 8)[0]
    assert (m.segment_key, m.byte_offset, m.byte_length, m.skipped_batches) == (
        "segments/m",
        7,
        7,
        (),
    )
    by_ts = store.find_block_by_timestamp(t.topic_id, 0, 1000, 2)
    assert by_ts is not None and (by_ts.segment_key, by_ts.base_offset) == ("segments/m", 0)
    top = store.find_max_timestamp_block(t.topic_id, 1, 0)
    assert top is not None and top.segment_key == "segments/m"
    for p, hwm in ((0, 6), (1, 5)):
        state = store.get_partition(t.topic_id, p)
        assert state is not None and (state.log_start_offset, state.high_watermark) == (0, hwm)
    assert [r.segment_key for r in store.partition_blocks(t.topic_id, 0)] == [
        "segments/m",
        "segments/c",
    ]


def test_a_partly_replaced_object_stays_live(store: Store) -> None:
    """Rewriting only one partition's row of a shared object leaves the object live (its
    other rows still point into it)."""
    t = store.create_topic("partly", 2)
    _commit(store, "segments/a", t.topic_id, [0, 1])
    row = store.partition_blocks(t.topic_id, 0)
    assert store.replace_blocks(_merged("segments/p0", row), 10) is True
    assert _dead(store) == {}
    live = _live(store)
    assert (live["segments/a"].live_bytes, live["segments/a"].block_count) == (10, 1)
    assert _index(store, t.topic_id, 0) == [(0, 2, "segments/p0", 2)]
    assert _index(store, t.topic_id, 1) == [(0, 2, "segments/a", 2)]


def test_key_compaction_keeps_offsets_with_fewer_records(store: Store) -> None:
    """A key-compacted row holds fewer records than its span, and rows may leave gaps: the
    offsets kept are where they were, find_blocks skips the gap to the next row."""
    t = store.create_topic("compacted", 1, {"cleanup.policy": "compact"})
    for i in range(3):
        _commit(store, f"segments/k{i}", t.topic_id, [0], records=4)
    rows = store.partition_blocks(t.topic_id, 0)
    rewrite = BlockRewrite(
        "segments/k",
        20,
        9,
        tuple(rows[:2]),
        (
            NewBlock(t.topic_id, 0, 1, 3, 0, 10, 1, 1000),  # offsets 0 and 3 are gone
            NewBlock(t.topic_id, 0, 5, 8, 10, 10, 2, 1000),  # 4 gone; 5..7 with one gone
        ),
    )
    assert store.replace_blocks(rewrite, 99) is True
    assert _index(store, t.topic_id, 0) == [
        (1, 3, "segments/k", 1),
        (5, 8, "segments/k", 2),
        (8, 12, "segments/k2", 4),
    ]
    # A fetch from a removed offset starts at the next row that holds anything after it.
    assert store.find_blocks(t.topic_id, 0, 3, 1)[0].base_offset == 5
    assert store.find_blocks(t.topic_id, 0, 0, 1)[0].base_offset == 1
    state = store.get_partition(t.topic_id, 0)
    assert state is not None and state.high_watermark == 12
    # A second compaction of the compacted rows (fewer records than span) works the same.
    again = store.partition_blocks(t.topic_id, 0, 0, 2)
    assert [r.record_count for r in again] == [1, 2]
    assert store.replace_blocks(_merged("segments/k'", again, records={0: 2}), 100) is True
    assert _index(store, t.topic_id, 0)[0] == (1, 8, "segments/k'", 2)
    assert _dead(store) == {"segments/k0": 99, "segments/k1": 99, "segments/k": 100}


def test_replace_after_a_commit_to_the_same_partition_keeps_the_commit(store: Store) -> None:
    """Rows read, then a commit appends to the partition, then the switch: the commit's
    block is untouched, every offset is indexed once."""
    t = store.create_topic("appended", 1)
    _commit(store, "segments/a", t.topic_id, [0])
    _commit(store, "segments/b", t.topic_id, [0])
    rows = store.partition_blocks(t.topic_id, 0)
    _commit(store, "segments/c", t.topic_id, [0], records=5)
    assert store.replace_blocks(_merged("segments/m", rows), 3) is True
    assert _index(store, t.topic_id, 0) == [(0, 4, "segments/m", 4), (4, 9, "segments/c", 5)]
    state = store.get_partition(t.topic_id, 0)
    assert state is not None and state.high_watermark == 9


@pytest.mark.parametrize("race", ["retention", "delete_records", "delete_topic", "rewrite"])
def test_replace_after_another_change_to_its_rows_changes_nothing(store: Store, race: str) -> None:
    """Retention, DeleteRecords, delete_topic or another rewrite removed a replaced row
    first: replace_blocks returns False, the index is as the other change left it, and the
    new object's segment row is there, dead since now_ms (the normal dead path reclaims
    it)."""
    t = store.create_topic("raced", 2, {"retention.ms": "1000"})
    _commit(store, "segments/a", t.topic_id, [0, 1])
    _commit(store, "segments/b", t.topic_id, [0, 1])
    ids = {u.key: u.segment_id for u in store.live_segments()}
    rows = store.blocks_of_segments([ids["segments/a"], ids["segments/b"]])
    if race == "retention":
        # Old timestamps (1000, 1001): a pass far in the future drops everything.
        assert store.enforce_retention(10**9)
    elif race == "delete_records":
        store.set_log_start_offset(t.topic_id, 1, 2)
    elif race == "delete_topic":
        store.delete_topic("raced")
    else:
        assert store.replace_blocks(_merged("segments/first", rows), 40) is True
    before = {p: _index(store, t.topic_id, p) for p in (0, 1)}
    dead_before = _dead(store)
    assert store.replace_blocks(_merged("segments/late", rows), 50) is False
    assert {p: _index(store, t.topic_id, p) for p in (0, 1)} == before
    assert _dead(store) == {**dead_before, "segments/late": 50}
    assert store.known_segments(["segments/late"]) == {"segments/late"}
    assert "segments/late" not in _live(store)
    if race == "rewrite":
        assert before[0] == [(0, 4, "segments/first", 4)]


def test_a_rewrite_over_a_deleted_and_recreated_topic_changes_nothing(store: Store) -> None:
    t = store.create_topic("reborn", 1)
    _commit(store, "segments/a", t.topic_id, [0])
    rows = store.partition_blocks(t.topic_id, 0)
    store.delete_topic("reborn")
    t2 = store.create_topic("reborn", 1)
    _commit(store, "segments/a2", t2.topic_id, [0])
    assert store.replace_blocks(_merged("segments/m", rows), 8) is False
    assert _index(store, t2.topic_id, 0) == [(0, 2, "segments/a2", 2)]


def test_malformed_rewrites_are_refused_and_change_nothing(store: Store) -> None:
    t = store.create_topic("bugs", 2)
    for i in range(4):
        _commit(store, f"segments/s{i}", t.topic_id, [0, 1])  # rows [0,2) [2,4) [4,6) [6,8)
    p0 = store.partition_blocks(t.topic_id, 0)
    p1 = store.partition_blocks(t.topic_id, 1)
    tid = t.topic_id

    def rewrite(replaced: Sequence[StoredBlock], *news: NewBlock, size: int = 100) -> BlockRewrite:
        return BlockRewrite("segments/bad", size, 1, tuple(replaced), tuple(news))

    def nb(p: int, base: int, end: int, records: int = 1, at: int = 0) -> NewBlock:
        return NewBlock(tid, p, base, end, at, 10, records, 0)

    cases = {
        "replaces no block row": rewrite([]),
        "twice": rewrite([p0[0], p0[0]], nb(0, 0, 2)),
        "overlap": rewrite(p0[:2], nb(0, 0, 3), nb(0, 2, 4, at=10)),
        "leaves": rewrite(p0[:2], nb(0, 0, 5)),
        "none of whose rows": rewrite(p0[:1], nb(0, 0, 2), nb(1, 0, 2, at=10)),
        "empty or negative span": rewrite(p0[:1], nb(0, 1, 1)),
        "records": rewrite(p0[:1], nb(0, 0, 2, records=3)),
        "past the object": rewrite(p0[:1], nb(0, 0, 2, at=95)),
        # Rows [0,2) and [4,6) replaced, [2,4) kept: a new row across it is refused.
        "does not replace": rewrite([p0[0], p0[2]], nb(0, 0, 5)),
    }
    # Colliding end offsets are overlapping rows too.
    cases["overlap "] = rewrite(p1[:2], nb(1, 0, 4), nb(1, 3, 4, at=10))
    before = {p: _index(store, tid, p) for p in (0, 1)}
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=message.strip()):
            store.replace_blocks(bad, 10)
    with pytest.raises(ValueError, match="BlockRewrite"):
        store.replace_blocks("segments/x", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="now_ms"):
        store.replace_blocks(rewrite(p0[:1], nb(0, 0, 2)), -1)
    assert {p: _index(store, tid, p) for p in (0, 1)} == before
    assert store.known_segments(["segments/bad"]) == set()
    # A key that already has a segment row.
    with pytest.raises(DuplicateSegmentError, match="segments/s3"):
        store.replace_blocks(BlockRewrite("segments/s3", 10, 1, tuple(p0[:1]), (nb(0, 0, 2),)), 10)
    assert {p: _index(store, tid, p) for p in (0, 1)} == before
    assert _dead(store) == {}
    # Replacing rows that leave a gap is fine when no new row crosses the kept one.
    ok = rewrite([p0[0], p0[2]], nb(0, 0, 2), nb(0, 4, 6, at=10))
    assert store.replace_blocks(ok, 11) is True
    assert [(b, e, k) for b, e, k, _ in _index(store, tid, 0)] == [
        (0, 2, "segments/bad"),
        (2, 4, "segments/s1"),
        (4, 6, "segments/bad"),
        (6, 8, "segments/s3"),
    ]


def test_a_rewrite_that_drops_every_record_leaves_its_object_dead(store: Store) -> None:
    """No new row at all (every record of the replaced rows was removed): the rows go and
    the new object, which holds nothing anyone can look up, is dead at once."""
    t = store.create_topic("emptied", 1)
    _commit(store, "segments/a", t.topic_id, [0])
    _commit(store, "segments/b", t.topic_id, [0])
    rows = store.partition_blocks(t.topic_id, 0, 0, 1)
    assert store.replace_blocks(BlockRewrite("segments/nothing", 0, 1, tuple(rows), ()), 12)
    assert _index(store, t.topic_id, 0) == [(2, 4, "segments/b", 2)]
    assert _dead(store) == {"segments/a": 12, "segments/nothing": 12}


# --------------------------------------------------------------------------- concurrency


def test_rewrites_racing_commits_and_retention_never_lose_or_repeat_an_offset(
    backend_opener: Opener,
) -> None:
    """A writer thread commits segments spanning three partitions while a rewriter thread
    merges the oldest rows of each partition into new objects over and over, a third thread
    moves the log start of partition 2 (DeleteRecords) and a fourth runs size retention
    (150 bytes per partition) with a batch of two partitions. No call fails (no deadlock,
    no lock timeout); afterwards every partition's rows tile [log start, HWM) exactly, hold
    every record committed above the log start, and every segment is either live with rows
    or dead, never both."""
    opener = backend_opener
    admin = opener()
    parts, rounds = 3, 60
    t = admin.create_topic("race", parts, {"retention.ms": "-1", "retention.bytes": "150"})
    errors: list[BaseException] = []
    stop = threading.Event()
    outcomes: list[bool] = []
    tried = threading.Condition()
    committed: list[int] = []
    took: list[float] = []

    @contextlib.contextmanager
    def timed() -> Iterator[None]:
        started = time.monotonic()
        yield
        took.append(time.monotonic() - started)

    def write() -> None:
        s = opener()
        try:
            for r in range(rounds):
                order = [(r + i) % parts for i in range(parts)]
                with timed():
                    _commit(s, f"segments/w{r:03d}", t.topic_id, order, records=1 + r % 3)
                committed.append(1 + r % 3)
                # Keep the rewriter in the race (a busy writer can starve SQLite's lock
                # waiters): every 4th commit, wait until it has tried r / 4 switches.
                with tried:
                    tried.wait_for(lambda r=r: len(outcomes) >= r // 4, timeout=10)
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    def rewrite() -> None:
        s = opener()
        n = 0
        try:
            # On after the writer stops until 5 switches went through (the others refuse many).
            while not stop.is_set() or (outcomes.count(True) < 5 and n < 500):
                rows = [r for p in range(parts) for r in s.partition_blocks(t.topic_id, p, 0, 4)]
                if rows:
                    with timed():
                        switched = s.replace_blocks(_merged(f"segments/r{n:04d}", rows), n)
                    with tried:
                        outcomes.append(switched)
                        tried.notify_all()
                    n += 1
        except BaseException as exc:
            errors.append(exc)

    def delete_records() -> None:
        s = opener()
        try:
            while not stop.is_set():
                state = s.get_partition(t.topic_id, 2)
                assert state is not None
                with timed():
                    s.set_log_start_offset(t.topic_id, 2, max(state.high_watermark - 3, 0))
        except BaseException as exc:
            errors.append(exc)

    def retain() -> None:
        s = opener()
        try:
            while not stop.is_set():
                with timed():
                    s.enforce_retention(10**6, max_partitions=2)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (write, rewrite, delete_records, retain)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=180)
    assert not any(th.is_alive() for th in threads)
    assert errors == []
    if isinstance(admin, PostgresMetadataStore):
        # No call waited out PostgreSQL's deadlock detection (deadlock_timeout, 1 s) and was
        # retried: they lock in one order (a loaded machine may stall one call). SQLite's
        # writers queue for one lock, so a long wait there is no deadlock.
        assert sum(1 for d in took if d >= 0.95) <= 1, sorted(took)[-3:]
    assert outcomes.count(True) >= 5  # rewrites switched while the others ran
    # One last retention pass: on a loaded machine the retention thread may not have run
    # after the writer's last commits (it stops with the writer).
    admin.enforce_retention(10**6, max_partitions=parts)
    for p in range(parts):
        state = admin.get_partition(t.topic_id, p)
        assert state is not None
        assert state.high_watermark == sum(committed)
        rows = admin.partition_blocks(t.topic_id, p, 0, 10_000)
        # Rows tile the log from (at most) the log start to the HWM: no gap, no overlap.
        assert rows[0].base_offset <= state.log_start_offset < rows[0].end_offset
        assert [r.base_offset for r in rows[1:]] == [r.end_offset for r in rows[:-1]]
        assert rows[-1].end_offset == state.high_watermark
        # Merged rows hold every record of their span (no compaction here).
        assert all(r.record_count == r.end_offset - r.base_offset for r in rows)
        assert sum(r.byte_length for r in rows) < 150 + 7 * 20  # retention kept up
    live = _live(admin)
    dead = _dead(admin)
    assert not set(live) & set(dead)
    assert all(u.block_count > 0 for u in live.values())
    keys_with_rows = {
        r.segment_key
        for p in range(parts)
        for r in admin.partition_blocks(t.topic_id, p, 0, 10_000)
    }
    assert keys_with_rows == set(live)


# --------------------------------------------------------------------------- AsyncMetadata


def test_async_metadata_wraps_the_rewrite_calls(open_store: Opener) -> None:
    """The rewrite calls through AsyncMetadata with the loop guard on; read_plans answers
    with the new rows after a switch."""
    store = open_store(forbid_loop_calls=True)

    async def main() -> None:
        meta = AsyncMetadata(store)
        t = await meta.create_topic("async", 1)
        for key in ("segments/a", "segments/b"):
            await meta.commit_segment(
                key, 10, [CommitBlock(t.topic_id, 0, 0, 10, 1, [BatchRef(2)])]
            )
        usage = await meta.live_segments(0, 10)
        assert [u.key for u in usage] == ["segments/a", "segments/b"]
        rows = await meta.blocks_of_segments([u.segment_id for u in usage])
        assert rows == await meta.partition_blocks(t.topic_id, 0, 0, 10)
        assert await meta.replace_blocks(_merged("segments/m", rows), 20) is True
        plans = await meta.read_plans([(t.topic_id, 0, 1)], 8)
        assert [(b.segment_key, b.base_offset, b.end_offset) for b in plans[0].blocks] == [
            ("segments/m", 0, 4)
        ]
        await meta.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- clean offsets


def test_clean_offsets_are_stored_per_partition_and_go_with_the_topic(store: Store) -> None:
    t = store.create_topic("keys", 3, {"cleanup.policy": "compact"})
    other = store.create_topic("other", 1, {"cleanup.policy": "compact"})
    assert store.get_clean_offsets(t.topic_id) == {}
    store.set_clean_offset(t.topic_id, 2, 40, 1000)
    store.set_clean_offset(t.topic_id, 0, 10, 1001)
    store.set_clean_offset(other.topic_id, 0, 5, 1002)
    assert store.get_clean_offsets(t.topic_id) == {0: CleanState(10, 1001), 2: CleanState(40, 1000)}
    store.set_clean_offset(t.topic_id, 0, 25, 2000)  # replaces
    assert store.get_clean_offsets(t.topic_id)[0] == CleanState(25, 2000)
    # A partition that does not exist gets no checkpoint.
    store.set_clean_offset(t.topic_id, 3, 1, 1)
    store.set_clean_offset(10**6, 0, 1, 1)
    assert sorted(store.get_clean_offsets(t.topic_id)) == [0, 2]
    assert store.get_clean_offsets(10**6) == {}
    store.delete_topic("keys")
    assert store.get_clean_offsets(t.topic_id) == {}
    # The name reused: a new topic id, no checkpoint; the other topic keeps its own.
    again = store.create_topic("keys", 3, {"cleanup.policy": "compact"})
    assert store.get_clean_offsets(again.topic_id) == {}
    assert store.get_clean_offsets(other.topic_id) == {0: CleanState(5, 1002)}
    for bad in (-1, 1.5, "3"):
        with pytest.raises(ValueError, match="clean_offset"):
            store.set_clean_offset(other.topic_id, 0, bad, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="now_ms"):
        store.set_clean_offset(other.topic_id, 0, 1, -5)
    assert store.get_clean_offsets(other.topic_id) == {0: CleanState(5, 1002)}


def test_async_metadata_wraps_the_clean_offsets(open_store: Opener) -> None:
    store = open_store(forbid_loop_calls=True)

    async def main() -> None:
        meta = AsyncMetadata(store)
        t = await meta.create_topic("async-keys", 1, {"cleanup.policy": "compact"})
        await meta.set_clean_offset(t.topic_id, 0, 7, 70)
        assert await meta.get_clean_offsets(t.topic_id) == {0: CleanState(7, 70)}
        await meta.close()

    asyncio.run(main())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_from_the_schema_before_rewrites_keeps_everything(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database of the previous schema version (no clean_offsets, no catalog) with data is
    upgraded on open: its log is intact, rewrites and checkpoints work on it."""
    opener: Callable[[], Store]
    if backend == "sqlite":
        path = tmp_path / "old.db"
        monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:3])

        def opener() -> Store:
            return MetadataStore(path)
    else:
        dsn: str = request.getfixturevalue("postgres_dsn")
        monkeypatch.setattr(postgres_migrations, "MIGRATIONS", postgres_migrations.MIGRATIONS[:4])

        def opener() -> Store:
            return PostgresMetadataStore(dsn)

    target = path if backend == "sqlite" else dsn
    with opener() as old:
        old_schema_sql(target, ADD_RAW_LENGTH)
        t = old.create_topic("old", 1)
        _commit(old, "segments/o1", t.topic_id, [0])
        _commit(old, "segments/o2", t.topic_id, [0])
    old_schema_sql(target, DROP_RAW_LENGTH)
    monkeypatch.undo()
    with opener() as store:
        assert _index(store, t.topic_id, 0) == [(0, 2, "segments/o1", 2), (2, 4, "segments/o2", 2)]
        rows = store.partition_blocks(t.topic_id, 0)
        assert store.replace_blocks(_merged("segments/n", rows), 9) is True
        assert _index(store, t.topic_id, 0) == [(0, 4, "segments/n", 4)]
        store.set_clean_offset(t.topic_id, 0, 4, 10)
        assert store.get_clean_offsets(t.topic_id) == {0: CleanState(4, 10)}
