"""Unit tests for metadata.store / metadata.migrations (one SQLite file under tmp_path)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import apsw
import pytest

from metadata import (
    INVALID_PRODUCER_EPOCH,
    OUT_OF_ORDER_SEQUENCE_NUMBER,
    UNKNOWN_TOPIC_OR_PARTITION,
    BatchRef,
    BatchResult,
    CommitBlock,
    DuplicateSegmentError,
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    MetadataError,
    MetadataStore,
    MetadataUnavailableError,
    OffsetOutOfRangeError,
    SchemaTooNewError,
    TopicExistsError,
    UnknownTopicError,
    migrations,
)
from streamhouse.errors import ErrorCode, StreamHouseError

INT32_MAX = 2**31 - 1


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "meta.db"


@pytest.fixture
def store(db_path: Path):
    s = MetadataStore(db_path)
    yield s
    s.close()


def block(
    topic_id: int, partition: int, batches: list[BatchRef], byte_offset: int = 0, ts: int = 1000
) -> CommitBlock:
    return CommitBlock(
        topic_id=topic_id,
        partition=partition,
        byte_offset=byte_offset,
        byte_length=100 * len(batches),
        max_timestamp=ts,
        batches=batches,
    )


def idem(count: int, pid: int, epoch: int, seq: int) -> BatchRef:
    return BatchRef(record_count=count, producer_id=pid, producer_epoch=epoch, base_sequence=seq)


def offsets(results: list[BatchResult]) -> list[int]:
    return [r.base_offset for r in results]


# --------------------------------------------------------------------------- migrations


def test_migrates_empty_file_to_latest(db_path: Path) -> None:
    with MetadataStore(db_path):
        pass
    db = apsw.Connection(str(db_path))
    assert migrations.schema_version(db) == migrations.latest_version()
    assert db.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
    assert db.execute("PRAGMA application_id").fetchall()[0][0] == migrations.APPLICATION_ID
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert {
        "topics",
        "partitions",
        "segments",
        "segment_blocks",
        "group_offsets",
        "producer_ids",
        "producer_state",
        "deleted_topics",
    } <= tables
    db.close()


def test_migration_versions_are_consecutive() -> None:
    assert [m.version for m in migrations.MIGRATIONS] == list(
        range(1, len(migrations.MIGRATIONS) + 1)
    )


def test_reopen_keeps_data(db_path: Path) -> None:
    with MetadataStore(db_path) as s:
        t = s.create_topic("orders", 2, {"retention.ms": "1000"})
        s.commit_segment("seg-1", 10, [block(t.topic_id, 1, [BatchRef(4)])])
        s.commit_offset("g", t.topic_id, 1, 3, "meta")
    with MetadataStore(db_path) as s:
        assert s.get_topic("orders") == t
        assert s.get_partition(t.topic_id, 1).high_watermark == 4
        assert s.get_offset("g", t.topic_id, 1) == (3, "meta")
        assert [b.segment_key for b in s.find_blocks(t.topic_id, 1, 0)] == ["seg-1"]


def test_newer_schema_is_refused(db_path: Path) -> None:
    MetadataStore(db_path).close()
    db = apsw.Connection(str(db_path))
    db.execute(f"PRAGMA user_version = {migrations.latest_version() + 1}")
    db.close()
    with pytest.raises(SchemaTooNewError, match="schema version"):
        MetadataStore(db_path)


def test_foreign_sqlite_file_is_refused(db_path: Path) -> None:
    db = apsw.Connection(str(db_path))
    db.execute("PRAGMA application_id = 1234")
    db.close()
    with pytest.raises(MetadataError, match="not a StreamHouse"):
        MetadataStore(db_path)


def test_old_file_is_upgraded(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with MetadataStore(db_path) as s:
        s.create_topic("t", 1)
    step = migrations.Migration(
        len(migrations.MIGRATIONS) + 1,
        "test step",
        "CREATE TABLE extra (x INTEGER) STRICT; INSERT INTO extra VALUES (42);",
    )
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, step))
    with MetadataStore(db_path) as s:
        assert s.get_topic("t") is not None
    db = apsw.Connection(str(db_path))
    assert migrations.schema_version(db) == step.version
    assert db.execute("SELECT x FROM extra").fetchall() == [(42,)]
    db.close()


def test_failed_migration_rolls_back(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    MetadataStore(db_path).close()
    before = migrations.latest_version()

    def broken(db: apsw.Connection) -> None:
        db.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    step = migrations.Migration(before + 1, "broken", broken)
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, step))
    with pytest.raises(RuntimeError, match="boom"):
        MetadataStore(db_path)
    db = apsw.Connection(str(db_path))
    assert migrations.schema_version(db) == before
    assert not db.execute("SELECT 1 FROM sqlite_schema WHERE name = 'half_done'").fetchall()
    db.close()


def test_concurrent_first_open_migrates_once(db_path: Path) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def opener() -> None:
        try:
            barrier.wait()
            with MetadataStore(db_path) as s:
                s.allocate_producer_id()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    with MetadataStore(db_path) as s:
        assert s.allocate_producer_id() == (4, 0)


# --------------------------------------------------------------------------- topics


def test_topic_crud(store: MetadataStore) -> None:
    t = store.create_topic("orders", 3, {"cleanup.policy": "delete"})
    assert t.name == "orders" and t.partitions == 3 and len(t.uuid) == 16
    assert t.config == {"cleanup.policy": "delete"}
    assert store.get_topic("orders") == t
    assert store.get_topic_by_id(t.topic_id) == t
    assert store.get_topic_by_uuid(t.uuid) == t
    assert store.get_topic("nope") is None
    assert [p.partition for p in store.list_partitions(t.topic_id)] == [0, 1, 2]
    assert all(
        p.log_start_offset == 0 and p.high_watermark == 0 for p in store.list_partitions(t.topic_id)
    )

    with pytest.raises(TopicExistsError):
        store.create_topic("orders", 1)

    u = store.create_topic("alpha", 1)
    assert u.topic_id != t.topic_id and u.uuid != t.uuid
    assert [x.name for x in store.list_topics()] == ["alpha", "orders"]

    t2 = store.add_partitions("orders", 5)
    assert t2.partitions == 5 and store.get_topic("orders").partitions == 5
    assert len(store.list_partitions(t.topic_id)) == 5
    with pytest.raises(InvalidTopicError):
        store.add_partitions("orders", 5)
    with pytest.raises(InvalidPartitionsError):
        store.add_partitions("orders", 2)
    with pytest.raises(UnknownTopicError):
        store.add_partitions("nope", 9)

    t3 = store.update_topic_config("orders", {"retention.ms": "5"})
    assert t3.config == {"retention.ms": "5"}
    assert store.get_topic("orders").config == {"retention.ms": "5"}
    with pytest.raises(UnknownTopicError):
        store.update_topic_config("nope", {})

    deleted = store.delete_topic("orders")
    assert deleted.topic_id == t.topic_id
    assert store.get_topic("orders") is None
    assert store.get_topic_by_id(t.topic_id) is None
    assert store.list_partitions(t.topic_id) == []
    assert [d.topic_id for d in store.list_deleted_topics()] == [t.topic_id]
    with pytest.raises(UnknownTopicError):
        store.delete_topic("orders")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        (".", '"."'),
        ("..", '".."'),
        ("a" * 250, "250 characters"),
        ("has space", "character"),
        ("slash/name", "character"),
        ("ünïcode", "character"),
        ("trailing\n", "character"),
    ],
)
def test_bad_topic_names(store: MetadataStore, name: str, why: str) -> None:
    with pytest.raises(InvalidTopicError, match=why):
        store.create_topic(name, 1)
    assert store.list_topics() == []


def test_good_topic_names(store: MetadataStore) -> None:
    for name in ["a" * 249, "a.b_c-D9", "...", "_", "-"]:
        assert store.create_topic(name, 1).name == name


@pytest.mark.parametrize("partitions", [0, -1, 10_001])
def test_bad_partition_counts(store: MetadataStore, partitions: int) -> None:
    with pytest.raises(InvalidTopicError, match="partition count"):
        store.create_topic("t", partitions)


def test_bad_config(store: MetadataStore) -> None:
    with pytest.raises(InvalidConfigError):
        store.create_topic("t", 1, {"retention.ms": 5})  # type: ignore[dict-item]
    assert store.get_topic("t") is None


def test_name_reuse_after_delete_gets_new_id_and_no_old_data(store: MetadataStore) -> None:
    old = store.create_topic("t", 1)
    pid, epoch = store.allocate_producer_id()
    store.commit_segment("s1", 10, [block(old.topic_id, 0, [BatchRef(5), idem(1, pid, epoch, 0)])])
    store.commit_offset("g", old.topic_id, 0, 5, "")
    store.delete_topic("t")

    new = store.create_topic("t", 1)
    assert new.topic_id != old.topic_id and new.topic_id > old.topic_id
    assert new.uuid != old.uuid
    assert store.get_partition(new.topic_id, 0).high_watermark == 0
    assert store.find_blocks(new.topic_id, 0, 0) == []
    assert store.find_blocks(old.topic_id, 0, 0) == []
    assert store.get_offset("g", new.topic_id, 0) is None
    assert store.get_offset("g", old.topic_id, 0) is None
    assert store.list_group_offsets("g") == []
    # Producer state went with the old topic: the same producer starts fresh at offset 0.
    res = store.commit_segment("s2", 10, [block(new.topic_id, 0, [idem(1, pid, epoch, 1)])])
    assert res == [[BatchResult(0)]]


def test_topic_ids_never_reused_even_for_highest_id(store: MetadataStore) -> None:
    a = store.create_topic("a", 1)
    store.delete_topic("a")
    b = store.create_topic("b", 1)
    assert b.topic_id > a.topic_id


# --------------------------------------------------------------------------- commit_segment


def test_offsets_contiguous_across_blocks_and_segments(store: MetadataStore) -> None:
    t = store.create_topic("t", 2)
    tid = t.topic_id
    r1 = store.commit_segment(
        "s1",
        1000,
        [
            block(tid, 0, [BatchRef(3), BatchRef(2)]),
            block(tid, 1, [BatchRef(1)]),
            block(tid, 0, [BatchRef(4)], byte_offset=500),
        ],
    )
    assert [offsets(r) for r in r1] == [[0, 3], [0], [5]]
    r2 = store.commit_segment(
        "s2", 10, [block(tid, 1, [BatchRef(2)]), block(tid, 0, [BatchRef(1)])]
    )
    assert [offsets(r) for r in r2] == [[1], [9]]
    assert store.get_partition(tid, 0).high_watermark == 10
    assert store.get_partition(tid, 1).high_watermark == 3
    assert all(r.error is None for rs in r1 + r2 for r in rs)

    blocks = store.find_blocks(tid, 0, 0)
    assert [(b.segment_key, b.base_offset, b.end_offset, b.byte_offset) for b in blocks] == [
        ("s1", 0, 5, 0),
        ("s1", 5, 9, 500),
        ("s2", 9, 10, 0),
    ]
    assert [b.record_count for b in blocks] == [5, 4, 1]


def test_commit_to_deleted_topic_is_unknown(store: MetadataStore) -> None:
    t = store.create_topic("t", 1)
    keep = store.create_topic("keep", 1)
    store.delete_topic("t")
    res = store.commit_segment(
        "s1",
        10,
        [
            block(t.topic_id, 0, [BatchRef(1), BatchRef(2)]),
            block(keep.topic_id, 0, [BatchRef(3)]),
            block(keep.topic_id, 7, [BatchRef(3)]),  # partition that never existed
        ],
    )
    assert res == [
        [BatchResult(-1, UNKNOWN_TOPIC_OR_PARTITION)] * 2,
        [BatchResult(0)],
        [BatchResult(-1, UNKNOWN_TOPIC_OR_PARTITION)],
    ]
    assert store.find_blocks(t.topic_id, 0, 0) == []
    assert store.find_blocks(keep.topic_id, 7, 0) == []
    assert len(store.find_blocks(keep.topic_id, 0, 0)) == 1


def test_duplicate_segment_key_is_rejected_without_changes(store: MetadataStore) -> None:
    t = store.create_topic("t", 1)
    store.commit_segment("s1", 10, [block(t.topic_id, 0, [BatchRef(1)])])
    with pytest.raises(DuplicateSegmentError):
        store.commit_segment("s1", 10, [block(t.topic_id, 0, [BatchRef(1)])])
    assert store.get_partition(t.topic_id, 0).high_watermark == 1


def test_invalid_batch_rolls_back_whole_commit(store: MetadataStore) -> None:
    t = store.create_topic("t", 1)
    with pytest.raises(ValueError):
        store.commit_segment(
            "s1", 10, [block(t.topic_id, 0, [BatchRef(1)]), block(t.topic_id, 0, [BatchRef(0)])]
        )
    assert store.get_partition(t.topic_id, 0).high_watermark == 0
    assert store.find_blocks(t.topic_id, 0, 0) == []
    # The key was not recorded either, so the uploader may retry it.
    assert store.commit_segment("s1", 10, [block(t.topic_id, 0, [BatchRef(1)])]) == [
        [BatchResult(0)]
    ]


def test_empty_segment_is_recorded(store: MetadataStore) -> None:
    assert store.commit_segment("empty", 0, []) == []
    with pytest.raises(DuplicateSegmentError):
        store.commit_segment("empty", 0, [])


# --------------------------------------------------------------------------- idempotence


def test_duplicate_of_committed_batch_returns_original_offset(store: MetadataStore) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    pid, epoch = store.allocate_producer_id()
    r1 = store.commit_segment(
        "s1", 10, [block(tid, 0, [BatchRef(2), idem(3, pid, epoch, 0), idem(2, pid, epoch, 3)])]
    )
    assert offsets(r1[0]) == [0, 2, 5]
    # Retry of both batches (e.g. lost ack) plus a new one.
    r2 = store.commit_segment(
        "s2",
        10,
        [block(tid, 0, [idem(3, pid, epoch, 0), idem(2, pid, epoch, 3), idem(1, pid, epoch, 5)])],
    )
    assert r2 == [[BatchResult(2, duplicate=True), BatchResult(5, duplicate=True), BatchResult(7)]]
    assert store.get_partition(tid, 0).high_watermark == 8
    b = store.find_blocks(tid, 0, 7)
    assert len(b) == 1
    assert (b[0].segment_key, b[0].base_offset, b[0].end_offset) == ("s2", 7, 8)
    assert b[0].skipped_batches == (0, 1)
    assert store.find_blocks(tid, 0, 0)[0].skipped_batches == ()


def test_duplicate_within_same_segment(store: MetadataStore) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    res = store.commit_segment(
        "s1",
        10,
        [
            block(tid, 0, [idem(2, 9, 0, 0), idem(2, 9, 0, 0)]),
            block(tid, 0, [idem(2, 9, 0, 2), idem(2, 9, 0, 0)]),
        ],
    )
    assert res == [
        [BatchResult(0), BatchResult(0, duplicate=True)],
        [BatchResult(2), BatchResult(0, duplicate=True)],
    ]
    blocks = store.find_blocks(tid, 0, 0)
    assert [(b.base_offset, b.end_offset, b.skipped_batches) for b in blocks] == [
        (0, 2, (1,)),
        (2, 4, (1,)),
    ]


def test_block_with_only_duplicates_is_not_indexed(store: MetadataStore) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    store.commit_segment("s1", 10, [block(tid, 0, [idem(2, 9, 0, 0)])])
    res = store.commit_segment("s2", 10, [block(tid, 0, [idem(2, 9, 0, 0)])])
    assert res == [[BatchResult(0, duplicate=True)]]
    assert [b.segment_key for b in store.find_blocks(tid, 0, 0)] == ["s1"]
    assert store.get_partition(tid, 0).high_watermark == 2


def test_only_last_five_batches_are_remembered(store: MetadataStore) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    batches = [idem(1, 4, 0, seq) for seq in range(6)]
    store.commit_segment("s1", 10, [block(tid, 0, batches)])
    # seq 1..5 are within the window -> duplicates; seq 0 fell out -> out of order.
    res = store.commit_segment("s2", 10, [block(tid, 0, [idem(1, 4, 0, 5), idem(1, 4, 0, 1)])])
    assert res == [[BatchResult(5, duplicate=True), BatchResult(1, duplicate=True)]]
    res = store.commit_segment("s3", 10, [block(tid, 0, [idem(1, 4, 0, 0)])])
    assert res == [[BatchResult(-1, OUT_OF_ORDER_SEQUENCE_NUMBER)]]


def test_sequence_gap_is_out_of_order(store: MetadataStore) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    store.commit_segment("s1", 10, [block(tid, 0, [idem(2, 1, 0, 0)])])
    res = store.commit_segment(
        "s2", 10, [block(tid, 0, [idem(1, 1, 0, 5), BatchRef(1), idem(1, 1, 0, 2)])]
    )
    assert res == [[BatchResult(-1, OUT_OF_ORDER_SEQUENCE_NUMBER), BatchResult(2), BatchResult(3)]]
    [b] = store.find_blocks(tid, 0, 2)
    assert (b.base_offset, b.end_offset, b.skipped_batches) == (2, 4, (0,))


def test_old_epoch_is_fenced_and_new_epoch_must_start_at_zero(store: MetadataStore) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    store.commit_segment("s1", 10, [block(tid, 0, [idem(1, 3, 1, 0), idem(1, 3, 1, 1)])])
    res = store.commit_segment("s2", 10, [block(tid, 0, [idem(1, 3, 0, 2)])])
    assert res == [[BatchResult(-1, INVALID_PRODUCER_EPOCH)]]
    res = store.commit_segment("s3", 10, [block(tid, 0, [idem(1, 3, 2, 2)])])
    assert res == [[BatchResult(-1, OUT_OF_ORDER_SEQUENCE_NUMBER)]]
    res = store.commit_segment(
        "s4", 10, [block(tid, 0, [idem(1, 3, 2, 0), idem(1, 3, 1, 2), idem(1, 3, 2, 1)])]
    )
    assert res == [[BatchResult(2), BatchResult(-1, INVALID_PRODUCER_EPOCH), BatchResult(3)]]
    # The epoch bump forgot the old epoch's batches: a retry of an epoch-1 batch is fenced.
    res = store.commit_segment("s5", 10, [block(tid, 0, [idem(1, 3, 1, 0)])])
    assert res == [[BatchResult(-1, INVALID_PRODUCER_EPOCH)]]
    assert store.get_partition(tid, 0).high_watermark == 4


def test_unknown_producer_accepts_any_sequence(store: MetadataStore) -> None:
    # Kafka accepts any sequence from a producer without state (e.g. after state expiry).
    t = store.create_topic("t", 1)
    res = store.commit_segment("s1", 10, [block(t.topic_id, 0, [idem(1, 8, 0, 41)])])
    assert res == [[BatchResult(0)]]
    res = store.commit_segment("s2", 10, [block(t.topic_id, 0, [idem(1, 8, 0, 43)])])
    assert res == [[BatchResult(-1, OUT_OF_ORDER_SEQUENCE_NUMBER)]]


def test_negative_epoch_or_sequence_with_producer_id_is_rejected(store: MetadataStore) -> None:
    t = store.create_topic("t", 1)
    res = store.commit_segment(
        "s1", 10, [block(t.topic_id, 0, [idem(1, 8, -1, 0), idem(1, 8, 0, -1)])]
    )
    assert res == [
        [BatchResult(-1, INVALID_PRODUCER_EPOCH), BatchResult(-1, OUT_OF_ORDER_SEQUENCE_NUMBER)]
    ]
    assert store.get_partition(t.topic_id, 0).high_watermark == 0


def test_int32_sequence_wraps_to_zero(store: MetadataStore) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    res = store.commit_segment(
        "s1",
        10,
        [
            block(
                tid,
                0,
                [
                    idem(1, 2, 0, 0),  # establishes state at epoch 0
                    idem(INT32_MAX - 3, 2, 0, 1),  # last seq = INT32_MAX - 3
                    idem(5, 2, 0, INT32_MAX - 2),  # MAX-2, MAX-1, MAX, 0, 1: last seq = 1
                    idem(1, 2, 0, 2),
                ],
            )
        ],
    )
    base_wrap = 1 + INT32_MAX - 3
    assert offsets(res[0]) == [0, 1, base_wrap, base_wrap + 5]
    # The wrapping batch is recognised as a duplicate by (first, last) = (MAX-2, 1).
    res = store.commit_segment("s2", 10, [block(tid, 0, [idem(5, 2, 0, INT32_MAX - 2)])])
    assert res == [[BatchResult(base_wrap, duplicate=True)]]
    res = store.commit_segment("s3", 10, [block(tid, 0, [idem(1, 2, 0, 3)])])
    assert res == [[BatchResult(base_wrap + 6)]]


def test_int32_successor_of_max_is_zero(store: MetadataStore) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    store.commit_segment("s1", 10, [block(tid, 0, [idem(1, 2, 0, INT32_MAX)])])
    res = store.commit_segment("s2", 10, [block(tid, 0, [idem(1, 2, 0, 0)])])
    assert res == [[BatchResult(1)]]


def test_producer_state_is_per_partition(store: MetadataStore) -> None:
    t = store.create_topic("t", 2)
    tid = t.topic_id
    res = store.commit_segment(
        "s1", 10, [block(tid, 0, [idem(1, 5, 0, 0)]), block(tid, 1, [idem(1, 5, 0, 0)])]
    )
    assert res == [[BatchResult(0)], [BatchResult(0)]]


# --------------------------------------------------------------------------- find_blocks


def test_find_blocks(store: MetadataStore) -> None:
    t = store.create_topic("t", 2)
    tid = t.topic_id
    for i in range(10):
        store.commit_segment(
            f"s{i}",
            1000,
            [
                block(tid, 0, [BatchRef(5), BatchRef(5)], byte_offset=0, ts=100 + i),
                block(tid, 1, [BatchRef(1)], byte_offset=700),
            ],
        )
    found = store.find_blocks(tid, 0, 0)
    assert len(found) == 8  # default limit
    assert [b.base_offset for b in found] == list(range(0, 80, 10))
    assert found[0].segment_key == "s0" and found[0].max_timestamp == 100
    assert found[0].byte_length == 200

    # An offset inside a block returns that block first; its end is exclusive.
    assert [b.segment_key for b in store.find_blocks(tid, 0, 37, limit=2)] == ["s3", "s4"]
    assert store.find_blocks(tid, 0, 39, limit=1)[0].segment_key == "s3"
    assert store.find_blocks(tid, 0, 40, limit=1)[0].segment_key == "s4"
    assert store.find_blocks(tid, 0, 99, limit=5)[0].segment_key == "s9"
    assert store.find_blocks(tid, 0, 100) == []
    assert [b.byte_offset for b in store.find_blocks(tid, 1, 3, limit=3)] == [700] * 3
    assert store.find_blocks(tid, 5, 0) == []
    assert store.find_blocks(999, 0, 0) == []


def test_set_log_start_offset(store: MetadataStore) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    store.commit_segment("s1", 10, [block(tid, 0, [BatchRef(10)])])
    assert store.set_log_start_offset(tid, 0, 4).log_start_offset == 4
    assert store.set_log_start_offset(tid, 0, 2).log_start_offset == 4  # never backwards
    assert store.set_log_start_offset(tid, 0, 10).log_start_offset == 10
    assert store.get_partition(tid, 0).log_start_offset == 10
    with pytest.raises(OffsetOutOfRangeError):
        store.set_log_start_offset(tid, 0, 11)
    with pytest.raises(UnknownTopicError):
        store.set_log_start_offset(tid, 3, 0)


# --------------------------------------------------------------------------- group offsets


def test_group_offsets(store: MetadataStore) -> None:
    t = store.create_topic("t", 3)
    tid = t.topic_id
    assert store.get_offset("g1", tid, 0) is None
    store.commit_offset("g1", tid, 0, 10, "first")
    store.commit_offset("g1", tid, 2, 7, "")
    store.commit_offset("g2", tid, 0, 99, "other group")
    store.commit_offset("g1", tid, 0, 12, "second")
    assert store.get_offset("g1", tid, 0) == (12, "second")
    assert store.get_offset("g1", tid, 2) == (7, "")
    assert store.get_offset("g1", tid, 1) is None
    assert store.get_offset("g3", tid, 0) is None
    listed = store.list_group_offsets("g1")
    assert [(o.topic_id, o.partition, o.offset, o.metadata) for o in listed] == [
        (tid, 0, 12, "second"),
        (tid, 2, 7, ""),
    ]
    assert store.list_group_offsets("nobody") == []
    with pytest.raises(UnknownTopicError):
        store.commit_offset("g1", tid, 3, 1, "")
    assert store.commit_offsets("g1", [(tid, 1, 5, "m"), (tid + 100, 0, 1, "")]) == [True, False]
    assert store.get_offset("g1", tid, 1) == (5, "m")


# --------------------------------------------------------------------------- processes sharing


def test_two_stores_see_each_others_commits(db_path: Path) -> None:
    with MetadataStore(db_path) as a, MetadataStore(db_path) as b:
        t = a.create_topic("t", 1)
        assert b.get_topic("t") == t
        b.commit_segment("s1", 10, [block(t.topic_id, 0, [BatchRef(3)])])
        assert a.get_partition(t.topic_id, 0).high_watermark == 3
        res = a.commit_segment("s2", 10, [block(t.topic_id, 0, [BatchRef(2)])])
        assert res == [[BatchResult(3)]]
        assert [x.segment_key for x in b.find_blocks(t.topic_id, 0, 0)] == ["s1", "s2"]
        a.commit_offset("g", t.topic_id, 0, 4, "x")
        assert b.get_offset("g", t.topic_id, 0) == (4, "x")
        b.delete_topic("t")
        assert a.get_topic("t") is None
        assert a.commit_segment("s3", 1, [block(t.topic_id, 0, [BatchRef(1)])]) == [
            [BatchResult(-1, UNKNOWN_TOPIC_OR_PARTITION)]
        ]


def test_concurrent_writers_wait_and_stay_consistent(db_path: Path) -> None:
    with MetadataStore(db_path) as s:
        t = s.create_topic("t", 1)
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            with MetadataStore(db_path) as s:
                for i in range(30):
                    s.commit_segment(f"{name}-{i}", 10, [block(t.topic_id, 0, [BatchRef(2)])])
                    s.allocate_producer_id()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    with MetadataStore(db_path) as s:
        assert s.get_partition(t.topic_id, 0).high_watermark == 180
        blocks = s.find_blocks(t.topic_id, 0, 0, limit=1000)
        assert [(b.base_offset, b.end_offset) for b in blocks] == [
            (i, i + 2) for i in range(0, 180, 2)
        ]
        assert s.allocate_producer_id() == (90, 0)


def test_busy_timeout_raises_metadata_error(db_path: Path) -> None:
    with MetadataStore(db_path, busy_timeout_ms=50) as s:
        t = s.create_topic("t", 1)
        blocker = apsw.Connection(str(db_path))
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(MetadataError, match="locked"):
                s.commit_segment("s1", 1, [block(t.topic_id, 0, [BatchRef(1)])])
            # Readers are not blocked by a writer in WAL mode.
            assert s.get_partition(t.topic_id, 0).high_watermark == 0
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert s.commit_segment("s1", 1, [block(t.topic_id, 0, [BatchRef(1)])]) == [
            [BatchResult(0)]
        ]


def test_allocate_producer_id_unique(db_path: Path) -> None:
    with MetadataStore(db_path) as a, MetadataStore(db_path) as b:
        ids = [s.allocate_producer_id() for _ in range(50) for s in (a, b)]
    assert len({pid for pid, _ in ids}) == 100
    assert all(epoch == 0 for _, epoch in ids)
    with MetadataStore(db_path) as c:
        assert c.allocate_producer_id()[0] == 100


def test_closed_store_raises(db_path: Path) -> None:
    s = MetadataStore(db_path)
    s.close()
    s.close()
    with pytest.raises(MetadataError, match="closed"):
        s.get_topic("t")


# --------------------------------------------------------------------------- busy, locked, full


def test_write_waits_for_a_lock_held_by_another_connection(db_path: Path) -> None:
    """A commit that meets another connection's write lock waits (it is not an error) and
    completes as soon as the lock is released."""
    with MetadataStore(db_path, busy_timeout_ms=30_000) as s:
        t = s.create_topic("t", 1)
        blocker = apsw.Connection(str(db_path))
        blocker.execute("BEGIN IMMEDIATE")
        done = threading.Event()
        outcome: list[object] = []

        def commit() -> None:
            try:
                outcome.append(s.commit_segment("s1", 1, [block(t.topic_id, 0, [BatchRef(3)])]))
            except BaseException as exc:
                outcome.append(exc)
            done.set()

        worker = threading.Thread(target=commit)
        worker.start()
        try:
            assert not done.wait(0.3), f"commit did not wait for the lock: {outcome}"
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert done.wait(10), "commit did not finish after the lock was released"
        worker.join()
        assert outcome == [[[BatchResult(0)]]]
        assert s.get_partition(t.topic_id, 0).high_watermark == 3


def test_lock_held_past_the_busy_timeout_is_a_retriable_error(db_path: Path) -> None:
    with MetadataStore(db_path, busy_timeout_ms=300) as s:
        t = s.create_topic("t", 1)
        blocker = apsw.Connection(str(db_path))
        blocker.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            with pytest.raises(MetadataUnavailableError, match="locked by another writer") as err:
                s.commit_segment("s1", 1, [block(t.topic_id, 0, [BatchRef(1)])])
            waited = time.monotonic() - started
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert 0.25 <= waited < 5, waited
        assert err.value.code is ErrorCode.REQUEST_TIMED_OUT
        assert err.value.retriable
        assert isinstance(err.value, StreamHouseError) and isinstance(err.value, MetadataError)
        # Nothing was written; the same call succeeds now, on the same connection.
        assert s.commit_segment("s1", 1, [block(t.topic_id, 0, [BatchRef(1)])]) == [
            [BatchResult(0)]
        ]


class _BusyAtBegin:
    """A connection whose first ``fail`` BEGIN IMMEDIATEs fail at once, as SQLite does when it
    will not run the busy handler (e.g. SQLITE_BUSY_RECOVERY) or for SQLITE_LOCKED."""

    def __init__(self, db: apsw.Connection, fail: int, error: type[apsw.Error]) -> None:
        self.db = db
        self.fail = fail
        self.error = error
        self.begins = 0

    def execute(self, sql: str, *args: object) -> object:
        if sql == "BEGIN IMMEDIATE":
            self.begins += 1
            if self.begins <= self.fail:
                raise self.error("database is locked")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)


@pytest.mark.parametrize("error", [apsw.BusyError, apsw.LockedError])
def test_busy_or_locked_without_the_busy_handler_is_retried(
    db_path: Path, error: type[apsw.Error]
) -> None:
    with MetadataStore(db_path, busy_timeout_ms=5_000) as s:
        t = s.create_topic("t", 1)
        flaky = _BusyAtBegin(s._db, 4, error)  # type: ignore[arg-type]
        s._db = flaky  # type: ignore[assignment]
        assert s.commit_segment("s1", 1, [block(t.topic_id, 0, [BatchRef(2)])]) == [
            [BatchResult(0)]
        ]
        assert flaky.begins == 5
        s._db = flaky.db


def test_full_database_is_a_retriable_storage_error_and_recovers(db_path: Path) -> None:
    """SQLITE_FULL (here from max_page_count, as from a full disk) fails the call with
    KAFKA_STORAGE_ERROR, rolls it back, and the store works again once there is room."""
    with MetadataStore(db_path) as s:
        t = s.create_topic("t", 1)
        pages = s._db.execute("PRAGMA page_count").fetchall()[0][0]  # type: ignore[union-attr]
        s._db.execute(f"PRAGMA max_page_count = {pages}")  # type: ignore[union-attr]
        many = [block(t.topic_id, 0, [BatchRef(1)] * 2000)]
        with pytest.raises(MetadataUnavailableError, match="disk is full") as err:
            for i in range(200):
                s.commit_segment(f"fill-{i}", 1, many)
        assert err.value.code is ErrorCode.KAFKA_STORAGE_ERROR and err.value.retriable
        hwm = s.get_partition(t.topic_id, 0).high_watermark
        assert hwm % 2000 == 0  # whole commits only
        s._db.execute("PRAGMA max_page_count = 1073741823")  # type: ignore[union-attr]
        s.commit_segment("after", 1, [block(t.topic_id, 0, [BatchRef(1)])])
        assert s.get_partition(t.topic_id, 0).high_watermark == hwm + 1


def test_reads_do_not_queue_behind_a_write_waiting_for_the_lock(db_path: Path) -> None:
    """A write of this store waiting (in a worker thread) for another connection's lock does
    not hold up this store's reads: they have their own connection and lock."""
    with MetadataStore(db_path, busy_timeout_ms=30_000) as s:
        t = s.create_topic("t", 1)
        blocker = apsw.Connection(str(db_path))
        blocker.execute("BEGIN IMMEDIATE")
        done = threading.Event()
        worker = threading.Thread(
            target=lambda: (
                s.commit_segment("s1", 1, [block(t.topic_id, 0, [BatchRef(1)])]),
                done.set(),
            )
        )
        worker.start()
        try:
            assert not done.wait(0.2)  # the write is waiting for the lock
            started = time.monotonic()
            assert s.get_partition(t.topic_id, 0).high_watermark == 0
            assert [x.name for x in s.list_topics()] == ["t"]
            assert time.monotonic() - started < 0.5
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert done.wait(10)
        worker.join()
        # The read connection sees the write as soon as it is committed.
        assert s.get_partition(t.topic_id, 0).high_watermark == 1


def test_read_connection_cannot_write(store: MetadataStore) -> None:
    with pytest.raises(MetadataError, match="readonly|query_only|read-only|attempt to write"):
        with store._read() as db:
            db.execute("DELETE FROM topics")
