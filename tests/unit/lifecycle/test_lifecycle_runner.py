"""One lifecycle pass (lifecycle.runner.LifecyclePass) against real metadata stores (SQLite,
and PostgreSQL from the `postgres_dsn` fixture) and a real local-folder object store: what a
pass deletes and forgets, what it keeps, what a failing object store leaves, and two passes
racing each other."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Iterator

import pytest

from lifecycle.runner import LifecyclePass, ObjectStoreFailure
from metadata import BatchRef, CommitBlock
from metadata.async_store import AsyncMetadata
from metadata.interface import MetadataBackend, open_store
from streamhouse import objectstore
from streamhouse.config import Settings, load_settings

GRACE = 600_000
DAY = 86_400_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def later() -> int:
    """A clock past the grace period of everything dead or written so far, and of what the
    pass itself sees dead (it dates those by the real time, within the next minute)."""
    return now_ms() + GRACE + 60_000


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "metadata.sqlite")
    else:
        yield request.getfixturevalue("postgres_dsn")


def settings_for(tmp_path: pathlib.Path, **extra: str) -> Settings:
    # The objects here are stand-ins, not segments: no rewrites (test_compaction_runner.py
    # has those, with real segment objects).
    env = {
        "STREAMHOUSE_DATA_DIR": str(tmp_path / "data"),
        "STREAMHOUSE_LIFECYCLE_COMPACTION_ENABLED": "false",
    }
    env.update({f"STREAMHOUSE_{k.upper()}": v for k, v in extra.items()})
    return load_settings(env)


class World:
    """A metadata store and an object store with committed segments in both."""

    def __init__(self, tmp_path: pathlib.Path, target: str) -> None:
        self.settings = settings_for(tmp_path)
        self.store = objectstore.open_object_store(self.settings.object_store_url)
        self.meta: MetadataBackend = open_store(target)
        self.target = target
        self.serial = 0

    def commit(self, topic: str, partition: int = 0, timestamp: int | None = None) -> str:
        """Commits (and PUTs) one segment holding one block of 5 records of `topic`."""
        info = self.meta.get_topic(topic)
        assert info is not None
        self.serial += 1
        key = f"segments/{self.serial:020d}-test.seg"
        asyncio.run(objectstore.put(self.store, key, b"s" * 100))
        block = CommitBlock(
            topic_id=info.topic_id,
            partition=partition,
            byte_offset=0,
            byte_length=100,
            max_timestamp=now_ms() if timestamp is None else timestamp,
            batches=[BatchRef(5)],
        )
        self.meta.commit_segment(key, 100, [block])
        return key

    def keys(self) -> set[str]:
        async def listing() -> set[str]:
            return {
                i.key async for p in objectstore.list_objects(self.store, "segments/") for i in p
            }

        return asyncio.run(listing())

    def run(self, now_ms: int, store: object | None = None, passes: int = 1) -> list[object]:
        """`passes` LifecyclePass.run(now_ms) at once, each on its own AsyncMetadata."""

        async def scenario() -> list[object]:
            metas = [
                await AsyncMetadata.open(self.target, forbid_loop_calls=True) for _ in range(passes)
            ]
            try:
                runners = [LifecyclePass(self.settings, m, store or self.store) for m in metas]
                return await asyncio.gather(*(r.run(now_ms) for r in runners))
            finally:
                for m in metas:
                    await m.close()

        return asyncio.run(scenario())

    def close(self) -> None:
        self.meta.close()


@pytest.fixture
def world(tmp_path: pathlib.Path, target: str) -> Iterator[World]:
    w = World(tmp_path, target)
    try:
        yield w
    finally:
        w.close()


def test_a_deleted_topic_is_reclaimed_after_the_grace_period(world: World) -> None:
    world.meta.create_topic("doomed", 2)
    world.meta.create_topic("kept", 1)
    doomed = {world.commit("doomed", p % 2) for p in range(6)}
    kept = {world.commit("kept") for _ in range(2)}
    world.meta.delete_topic("doomed")

    (report,) = world.run(now_ms())
    assert report.dead_objects_deleted == report.orphans_deleted == 0
    assert world.keys() == doomed | kept

    (report,) = world.run(later())
    assert report.dead_objects_deleted == report.segments_forgotten == len(doomed)
    assert report.dead_bytes_deleted == 100 * len(doomed)
    assert world.keys() == kept
    assert world.meta.known_segments(sorted(doomed | kept)) == kept
    assert world.meta.dead_segments(now_ms() + 100 * DAY) == []


def test_retention_drops_old_blocks_and_then_their_objects(world: World) -> None:
    world.meta.create_topic("aged", 1, {"retention.ms": str(DAY)})
    old = [world.commit("aged", timestamp=now_ms() - 2 * DAY + i) for i in range(3)]
    new = [world.commit("aged", timestamp=now_ms() - i) for i in range(2)]

    (report,) = world.run(now_ms())
    assert (report.partitions_moved, report.blocks_removed) == (1, 3)
    assert report.bytes_removed == 300
    topic = world.meta.get_topic("aged")
    assert topic is not None
    state = world.meta.get_partition(topic.topic_id, 0)
    assert state is not None and state.log_start_offset == 15
    assert world.keys() == set(old) | set(new)  # the grace period first

    (report,) = world.run(later())
    assert report.dead_objects_deleted == 3
    assert world.keys() == set(new)


def test_orphans_go_only_once_older_than_the_grace_period(world: World) -> None:
    world.meta.create_topic("t", 1)
    live = world.commit("t")
    asyncio.run(objectstore.put(world.store, "segments/orphan.seg", b"never committed"))
    (report,) = world.run(now_ms())  # the orphan is younger than the grace period
    assert report.orphans_deleted == 0
    (report,) = world.run(later())
    assert (report.orphans_deleted, report.objects_listed) == (1, 2)
    assert world.keys() == {live}


def test_a_failing_object_store_forgets_nothing(world: World) -> None:
    world.meta.create_topic("doomed", 1)
    doomed = {world.commit("doomed") for _ in range(3)}
    world.meta.delete_topic("doomed")
    # A real S3 client pointed at a port nobody listens on: every request is refused.
    refused = open_refusing_store()
    with pytest.raises(ObjectStoreFailure, match="deleting .* dead segment objects"):
        world.run(later(), store=refused)
    assert {d.key for d in world.meta.dead_segments(now_ms() + DAY)} == doomed
    assert world.keys() == doomed

    (report,) = world.run(later())
    assert report.segments_forgotten == 3
    assert world.keys() == set()


def test_two_passes_at_once_reclaim_everything_once(world: World) -> None:
    world.meta.create_topic("doomed", 4)
    world.meta.create_topic("kept", 1)
    doomed = {world.commit("doomed", p % 4) for p in range(40)}
    kept = {world.commit("kept") for _ in range(3)}
    asyncio.run(objectstore.put(world.store, "segments/orphan.seg", b"x"))
    world.meta.delete_topic("doomed")
    first, second = world.run(later(), passes=2)
    assert first.segments_forgotten + second.segments_forgotten == len(doomed)  # type: ignore[attr-defined]
    assert world.keys() == kept
    assert world.meta.dead_segments(now_ms() + DAY) == []
    assert world.meta.known_segments(sorted(kept)) == kept


def open_refusing_store() -> object:
    import os
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: connections to it are refused
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "nobody",
            "AWS_SECRET_ACCESS_KEY": "nothing",
        }
    )
    try:
        return objectstore.open_object_store("s3://no-such-bucket", timeout_ms=2000)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
