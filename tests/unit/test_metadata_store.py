"""Unit tests for metadata.store / metadata.migrations (one SQLite file under tmp_path): what is
SQLite's own (the file, WAL, its locks). The behaviour both backends share is tested against both
in tests/conformance/test_metadata_backends.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import apsw
import pytest

from metadata import (
    BatchRef,
    BatchResult,
    CommitBlock,
    MetadataError,
    MetadataStore,
    MetadataUnavailableError,
    SchemaTooNewError,
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


# --------------------------------------------------------------------------- processes sharing


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
