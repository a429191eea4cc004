"""Conformance: committed group offsets keep the consumer's leader epoch (both backends), and
the schema step that added it (with continuous queries' checkpoints) keeps older data."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from metadata import (
    BatchRef,
    BatchResult,
    CommitBlock,
    GroupOffset,
    MetadataStore,
    QueryCheckpoint,
    UnknownTopicError,
    migrations,
    postgres_migrations,
)
from metadata.async_store import AsyncMetadata
from metadata.postgres import PostgresMetadataStore
from tests.conformance.conftest import Opener, Store
from tests.conformance.old_schema import ADD_OPEN_TXNS, DROP_OPEN_TXNS, old_schema_sql


def test_a_committed_leader_epoch_comes_back(store: Store) -> None:
    tid = store.create_topic("t", 3).topic_id
    assert store.commit_offsets("g", [(tid, 0, 10, "m", 5), (tid, 1, 20, "")]) == [True, True]
    assert store.get_offset_epoch("g", tid, 0) == (10, "m", 5)
    assert store.get_offset_epoch("g", tid, 1) == (20, "", -1)
    assert store.get_offset_epoch("g", tid, 2) is None
    assert store.get_offset("g", tid, 0) == (10, "m")
    listed = store.list_group_offsets("g")
    assert [(o.partition, o.offset, o.metadata, o.leader_epoch) for o in listed] == [
        (0, 10, "m", 5),
        (1, 20, "", -1),
    ]
    assert all(isinstance(o, GroupOffset) and o.commit_ms > 0 for o in listed)
    # A later commit replaces the epoch too, also back to "unknown".
    store.commit_offsets("g", [(tid, 0, 11, "n")])
    assert store.get_offset_epoch("g", tid, 0) == (11, "n", -1)
    store.commit_offset("g", tid, 2, 30, "x", leader_epoch=2**31 - 1)
    assert store.get_offset_epoch("g", tid, 2) == (30, "x", 2**31 - 1)
    store.commit_offset("g", tid, 2, 31, "y")
    assert store.get_offset_epoch("g", tid, 2) == (31, "y", -1)
    with pytest.raises(UnknownTopicError):
        store.commit_offset("g", tid, 9, 1, "", leader_epoch=3)


@pytest.mark.parametrize(
    "entry, match",
    [
        ((1, 0, 5, "", -2), "leader_epoch must be between -1"),
        ((1, 0, 5, "", 2**31), "leader_epoch must be between -1"),
        ((1, 0, 5, "", "5"), "leader_epoch must be an integer"),
        ((1, 0, 5), "got 3 fields"),
        ((1, 0, 5, "", 1, 2), "got 6 fields"),
    ],
)
def test_malformed_offset_commits_are_refused_whole(
    store: Store, entry: tuple[object, ...], match: str
) -> None:
    tid = store.create_topic("t", 1).topic_id
    good = (tid, 0, 1, "", 4)
    bad = (tid, *entry[1:])
    with pytest.raises(ValueError, match=match):
        store.commit_offsets("g", [good, bad])  # type: ignore[list-item]
    assert store.get_offset_epoch("g", tid, 0) is None


def test_async_metadata_passes_the_leader_epoch(open_store: Opener) -> None:
    store = open_store(forbid_loop_calls=True)
    tid = store.create_topic("t", 2).topic_id

    async def main() -> None:
        meta = AsyncMetadata(store)
        try:
            assert await meta.commit_offsets("g", [(tid, 0, 7, "a", 9)]) == [True]
            await meta.commit_offset("g", tid, 1, 8, "b", 3)
            assert await meta.get_offset_epoch("g", tid, 0) == (7, "a", 9)
            assert await meta.get_offset("g", tid, 1) == (8, "b")
            got = await meta.group_offsets("g")
            assert {k: v.leader_epoch for k, v in got.items()} == {(tid, 0): 9, (tid, 1): 3}
        finally:
            await meta.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- schema upgrade


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_to_query_checkpoints_keeps_offsets_and_the_log(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at the schema before query checkpoints (SQLite 5, PostgreSQL 6) with a
    topic, a committed segment and group offsets is upgraded on open: the log and the offsets
    are as they were (their leader epoch unknown, -1), and the new calls work."""
    target: Path | str
    opener: Callable[[], Store]
    if backend == "sqlite":
        path = target = tmp_path / "old.db"
        monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:5])

        def opener() -> Store:
            return MetadataStore(path)
    else:
        dsn = target = request.getfixturevalue("postgres_dsn")
        monkeypatch.setattr(postgres_migrations, "MIGRATIONS", postgres_migrations.MIGRATIONS[:6])

        def opener() -> Store:
            return PostgresMetadataStore(dsn)

    blocks = [
        CommitBlock(0, 0, 0, 100, 1000, [BatchRef(3), BatchRef(2)], 90),
        CommitBlock(0, 1, 100, 50, 1001, [BatchRef(4)], 40),
    ]
    with opener() as old:
        tid = old.create_topic("old", 2).topic_id
        blocks = [msgspec.structs.replace(b, topic_id=tid) for b in blocks]
        first = old.commit_segment("segments/old", 150, blocks)
        # Today's offset commit writes the new column: write these as the old code did.
        old_schema_sql(
            target,
            'INSERT INTO group_offsets (group_id, topic_id, partition, "offset", metadata, '
            f"commit_ms) VALUES ('g', {tid}, 0, 5, 'meta', 123), ('g', {tid}, 1, 4, '', 124)",
        )
        before_blocks = [old.find_blocks(tid, p, 0) for p in range(2)]
        old_schema_sql(target, ADD_OPEN_TXNS)
        before_parts = old.list_partitions(tid)
        old_schema_sql(target, DROP_OPEN_TXNS)
    monkeypatch.undo()
    with opener() as store:
        assert first == [[BatchResult(0), BatchResult(3)], [BatchResult(0)]]
        assert [store.find_blocks(tid, p, 0) for p in range(2)] == before_blocks
        assert store.list_partitions(tid) == before_parts
        assert store.list_group_offsets("g") == [
            GroupOffset(tid, 0, 5, "meta", 123, -1),
            GroupOffset(tid, 1, 4, "", 124, -1),
        ]
        assert store.get_offset_epoch("g", tid, 0) == (5, "meta", -1)
        store.commit_offsets("g", [(tid, 0, 6, "new", 2)])
        assert store.get_offset_epoch("g", tid, 0) == (6, "new", 2)
        assert store.list_query_checkpoints() == []
        gen = store.claim_query("q", 10).generation
        seg = ("segments/q1", 10, [CommitBlock(tid, 0, 0, 10, 5, [BatchRef(1)])])
        assert store.commit_query_step("q", gen, 1, b"p", seg, 11) == [[BatchResult(5)]]
        assert store.get_query_checkpoint("q") == QueryCheckpoint("q", 1, 1, b"p", 11)
