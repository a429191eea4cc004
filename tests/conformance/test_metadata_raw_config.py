"""Conformance suite, on both backends, for two things the Kafka-facing layers rely on:

- a block's raw length (``segment_blocks.raw_length``: its record batches' bytes, as a
  consumer receives them) is what retention.bytes counts, as Kafka counts a log's size --
  not the stored, maybe LZ4-compressed, ``byte_length``; commits and rewrites that do not know
  it store ``byte_length`` in its place, and so does the schema upgrade for older rows;
- ``alter_topic_config`` changes some keys of a topic's config in one transaction, so two
  alterations at once of different keys both stay.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from metadata import (
    BatchRef,
    BlockRewrite,
    CommitBlock,
    InvalidConfigError,
    MetadataStore,
    NewBlock,
    RetentionMove,
    UnknownTopicError,
    migrations,
    postgres_migrations,
)
from metadata.async_store import AsyncMetadata
from metadata.postgres import PostgresMetadataStore
from tests.conformance.old_schema import ADD_RAW_LENGTH, DROP_RAW_LENGTH, old_schema_sql

Store = MetadataStore | PostgresMetadataStore
Opener = Callable[..., Store]


def _commit(store: Store, key: str, topic_id: int, stored: int, raw: int = 0) -> None:
    """One segment ``key`` holding one block of 2 records: ``stored`` bytes in the object,
    ``raw`` bytes of batches (0: not given)."""
    block = CommitBlock(topic_id, 0, 8, stored, 1000, [BatchRef(2)], raw)
    store.commit_segment(key, stored + 100, [block])


def _log_start(store: Store, topic_id: int) -> int:
    state = store.get_partition(topic_id, 0)
    assert state is not None
    return state.log_start_offset


# --------------------------------------------------------------------------- raw length


def test_retention_bytes_counts_the_batches_bytes_not_the_stored_ones(store: Store) -> None:
    """Four blocks of 100 batch bytes stored in 10 each: retention.bytes=250 drops the
    oldest (400 - 100 >= 250, then 300 - 100 < 250), as Kafka would; counting the stored 40
    bytes would drop nothing."""
    t = store.create_topic("compressible", 1, {"retention.bytes": "250", "retention.ms": "-1"})
    for i in range(4):
        _commit(store, f"segments/c{i}", t.topic_id, 10, 100)
    report = store.storage_report(2000, 0)
    assert (report.topics[0].bytes_live, report.topics[0].bytes_raw) == (40, 400)
    assert report.bytes_raw == 400
    # bytes_removed stays the stored bytes (what the object store frees).
    assert store.enforce_retention(2000) == [RetentionMove(t.topic_id, 0, 0, 2, 1, 10)]
    assert _log_start(store, t.topic_id) == 2
    assert store.enforce_retention(2001) == []


def test_a_block_without_raw_length_counts_its_stored_bytes(store: Store) -> None:
    """raw_length 0 (not known) stores byte_length: three blocks of 100 stored bytes and one
    of 10 stored / 100 raw, retention.bytes=250: 400 - 100 >= 250, then 300 - 100 < 250."""
    t = store.create_topic("mixed", 1, {"retention.bytes": "250", "retention.ms": "-1"})
    _commit(store, "segments/m0", t.topic_id, 100)
    _commit(store, "segments/m1", t.topic_id, 100)
    _commit(store, "segments/m2", t.topic_id, 10, 100)
    _commit(store, "segments/m3", t.topic_id, 100)
    assert store.storage_report(2000, 0).topics[0].bytes_raw == 400
    assert store.enforce_retention(2000) == [RetentionMove(t.topic_id, 0, 0, 2, 1, 100)]


def _rewrite(store: Store, topic_id: int, key: str, raw: int) -> BlockRewrite:
    rows = store.partition_blocks(topic_id, 0)
    first, last = rows[0], rows[-1]
    records = sum(r.record_count for r in rows)
    block = NewBlock(
        topic_id, 0, first.base_offset, last.end_offset, 8, 30, records, 1000, raw_length=raw
    )
    return BlockRewrite(key, 100, 1, tuple(rows), (block,))


def test_a_rewrite_stores_the_raw_length_it_is_given(store: Store) -> None:
    """Two blocks of 100 batch bytes merged into one of 200 (stored in 30): the merged row
    counts 200; a rewrite that gives no raw length counts its stored 30."""
    t = store.create_topic("merged", 1, {"retention.ms": "-1"})
    _commit(store, "segments/r0", t.topic_id, 10, 100)
    _commit(store, "segments/r1", t.topic_id, 10, 100)
    assert store.replace_blocks(_rewrite(store, t.topic_id, "segments/n1", 200), 5) is True
    assert store.storage_report(2000, 0).topics[0].bytes_raw == 200
    store.update_topic_config("merged", {"retention.bytes": "150", "retention.ms": "-1"})
    assert store.enforce_retention(2000) == []  # 200 - 200 < 150: the one block stays
    assert store.replace_blocks(_rewrite(store, t.topic_id, "segments/n2", 0), 6) is True
    assert store.storage_report(2000, 0).topics[0].bytes_raw == 30
    with pytest.raises(ValueError, match="raw_length -1"):
        store.replace_blocks(_rewrite(store, t.topic_id, "segments/n3", -1), 7)


def test_the_raw_length_goes_through_async_metadata(open_store: Opener) -> None:
    store = open_store(forbid_loop_calls=True)

    async def main() -> int:
        meta = AsyncMetadata(store)
        t = await meta.create_topic("async-raw", 1)
        block = CommitBlock(t.topic_id, 0, 8, 10, 1000, [BatchRef(2)], 123)
        await meta.commit_segment("segments/a", 110, [block])
        report = await meta.storage_report(2000, 0)
        await meta.close()
        return report.bytes_raw

    assert asyncio.run(main()) == 123


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_fills_the_raw_length_of_older_rows_with_their_stored_length(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows written before raw_length existed count their byte_length after the upgrade, and
    retention.bytes works on them as before; new rows carry their raw length."""
    target: Path | str
    opener: Callable[[], Store]
    if backend == "sqlite":
        path = target = tmp_path / "old.db"
        monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:4])

        def opener() -> Store:
            return MetadataStore(path)
    else:
        dsn = target = request.getfixturevalue("postgres_dsn")
        monkeypatch.setattr(postgres_migrations, "MIGRATIONS", postgres_migrations.MIGRATIONS[:5])

        def opener() -> Store:
            return PostgresMetadataStore(dsn)

    with opener() as old:
        old_schema_sql(target, ADD_RAW_LENGTH)
        t = old.create_topic("old", 1, {"retention.ms": "-1"})
        _commit(old, "segments/o0", t.topic_id, 100)
        _commit(old, "segments/o1", t.topic_id, 50)
    old_schema_sql(target, DROP_RAW_LENGTH)
    monkeypatch.undo()
    with opener() as store:
        assert store.storage_report(2000, 0).topics[0].bytes_raw == 150
        _commit(store, "segments/n0", t.topic_id, 10, 100)
        assert store.storage_report(2000, 0).topics[0].bytes_raw == 250
        store.update_topic_config("old", {"retention.bytes": "150", "retention.ms": "-1"})
        # 250 - 100 >= 150 drops o0; 150 - 50 < 150 keeps o1.
        assert store.enforce_retention(2000) == [RetentionMove(t.topic_id, 0, 0, 2, 1, 100)]


# --------------------------------------------------------------------------- topic config


def test_alter_topic_config_sets_deletes_appends_and_subtracts(store: Store) -> None:
    store.create_topic("conf", 1, {"retention.ms": "1000", "segment.bytes": "1048576"})
    topic = store.alter_topic_config("conf", {"retention.bytes": "500"}, ["segment.bytes"])
    assert topic.config == {"retention.ms": "1000", "retention.bytes": "500"}
    assert store.get_topic("conf").config == topic.config  # type: ignore[union-attr]
    # APPEND to a list config not set starts from its default ("delete").
    topic = store.alter_topic_config("conf", {}, [], append={"cleanup.policy": ["compact"]})
    assert topic.config["cleanup.policy"] == "delete,compact"
    topic = store.alter_topic_config("conf", {}, [], subtract={"cleanup.policy": ["delete"]})
    assert topic.config["cleanup.policy"] == "compact"
    # Deleting a key not set is no change; nothing else moves.
    topic = store.alter_topic_config("conf", {}, ["retention.bytes", "min.insync.replicas"])
    assert topic.config == {"retention.ms": "1000", "cleanup.policy": "compact"}


def test_alter_topic_config_validate_only_stores_nothing(store: Store) -> None:
    store.create_topic("dry", 1, {"retention.ms": "1000"})
    topic = store.alter_topic_config("dry", {"retention.bytes": "7"}, ["retention.ms"], True)
    assert topic.config == {"retention.bytes": "7"}
    assert store.get_topic("dry").config == {"retention.ms": "1000"}  # type: ignore[union-attr]


def test_alter_topic_config_refuses_bad_alterations(store: Store) -> None:
    store.create_topic("strict", 1, {"retention.ms": "1000"})
    with pytest.raises(UnknownTopicError, match="'nope' does not exist"):
        store.alter_topic_config("nope", {"retention.ms": "1"}, [])
    with pytest.raises(UnknownTopicError):
        store.alter_topic_config("nope", {}, [], validate_only=True)
    with pytest.raises(InvalidConfigError, match="retention.ms='soon' is invalid"):
        store.alter_topic_config("strict", {"retention.ms": "soon"}, [])
    with pytest.raises(InvalidConfigError, match="unknown topic config 'no.such'"):
        store.alter_topic_config("strict", {"no.such": "1"}, [], validate_only=True)
    with pytest.raises(InvalidConfigError, match="retention.ms is changed more than once"):
        store.alter_topic_config("strict", {"retention.ms": "5"}, ["retention.ms"])
    with pytest.raises(InvalidConfigError, match="must be given a string"):
        store.alter_topic_config("strict", {"retention.ms": 5}, [])  # type: ignore[dict-item]
    with pytest.raises(InvalidConfigError, match="cleanup.policy='delete,bogus' is invalid"):
        store.alter_topic_config("strict", {}, [], append={"cleanup.policy": ["bogus"]})
    assert store.get_topic("strict").config == {"retention.ms": "1000"}  # type: ignore[union-attr]


def test_two_alterations_at_once_of_different_keys_both_stay(backend_opener: Opener) -> None:
    """Two threads, each with its own store, alter one topic at the same moment, round after
    round, each its own key: after every round both values are stored (a read-modify-write
    in two transactions would lose one of them now and then)."""
    setup = backend_opener()
    setup.create_topic("raced", 1)
    stores = [backend_opener(), backend_opener()]
    keys = ["retention.ms", "retention.bytes"]
    rounds = 40
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def alter(n: int) -> None:
        try:
            for r in range(rounds):
                barrier.wait(timeout=30)
                stores[n].alter_topic_config("raced", {keys[n]: str(1000 * r + n)}, [])
                barrier.wait(timeout=30)
                if n == 0:
                    config = setup.get_topic("raced").config  # type: ignore[union-attr]
                    if config != {keys[0]: str(1000 * r), keys[1]: str(1000 * r + 1)}:
                        raise AssertionError(f"round {r}: {config}")
                barrier.wait(timeout=30)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=alter, args=(n,)) for n in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads)
    assert not errors, errors
    assert setup.get_topic("raced").config == {  # type: ignore[union-attr]
        "retention.ms": str(1000 * (rounds - 1)),
        "retention.bytes": str(1000 * (rounds - 1) + 1),
    }


def test_alter_topic_config_goes_through_async_metadata(open_store: Opener) -> None:
    store = open_store(forbid_loop_calls=True)

    async def main() -> tuple[dict[str, str], dict[str, str]]:
        meta = AsyncMetadata(store)
        await meta.create_topic("async-conf", 1, {"retention.ms": "9"})
        dry = await meta.alter_topic_config("async-conf", {"retention.bytes": "1"}, [], True)
        done = await meta.alter_topic_config(
            "async-conf", {}, ["retention.ms"], append={"cleanup.policy": ["compact"]}
        )
        await meta.close()
        return dry.config, done.config

    dry, done = asyncio.run(main())
    assert dry == {"retention.ms": "9", "retention.bytes": "1"}
    assert done == {"cleanup.policy": "delete,compact"}
